//! `kvscope eval niah|sweep`: evaluation grids (see `crate::eval`).

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;

use super::{KnobArgs, ModelArgs, PromptArgs};
use crate::eval::{grid, niah, prompts, sweep, Ctx};
use crate::eviction::{Method, Settings};
use crate::profile::discover;

#[derive(Subcommand, Debug)]
pub enum EvalCommand {
    /// Needle in a haystack: context lengths x needle depths, per method/budget/window.
    Niah(NiahArgs),
    /// Prompts with expected answers x methods x budgets x windows.
    Sweep(SweepArgs),
    /// Combine the --out folders of `eval niah|sweep --shard` runs into one.
    Merge(MergeArgs),
}

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// The shards' --out folders.
    #[arg(required = true)]
    pub dirs: Vec<PathBuf>,
    /// Where the merged results, tables and figures go (a new or empty folder).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

fn shard_of(c: &CommonArgs) -> Result<Option<crate::shard::Shard>> {
    c.shard
        .as_deref()
        .map(|s| crate::shard::Shard::parse(s, &|k| std::env::var(k).ok()))
        .transpose()
}

/// Flags both evaluations share.
#[derive(Args, Debug)]
pub struct CommonArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Methods to compare, comma-separated, or `all` (the full cache always runs as the
    /// reference).
    #[arg(
        long,
        default_value = "streamingllm,h2o,snapkv,pyramidkv,adakv,compresskv"
    )]
    pub methods: String,
    /// Observation windows to run every method with, comma-separated (METHOD.md: report
    /// more than one; with 8 the question usually lies outside the window).
    #[arg(long, default_value = "8,32")]
    pub windows: String,
    #[command(flatten)]
    pub knobs: KnobArgs,
    /// Profile JSON for compresskv and headkv (default: the profile measured on this model
    /// file, shipped or cached); with none, they are skipped with a notice.
    #[arg(long, value_name = "PATH")]
    pub profile: Option<PathBuf>,
    #[command(flatten)]
    pub prompt_opts: PromptArgs,
    #[command(flatten)]
    pub cache: super::CacheArgs,
    /// Continue the run whose results.jsonl is in --out: finished units are skipped.
    #[arg(long, conflicts_with = "fresh")]
    pub resume: bool,
    /// Delete the results.jsonl in --out and start over.
    #[arg(long)]
    pub fresh: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Run only shard K of N (0 <= K < N) of the cells (niah) or prompts (sweep), or
    /// auto/N to read K from SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX; combine the
    /// shards' --out folders with `kvscope eval merge`.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<String>,
}

#[derive(Args, Debug)]
pub struct NiahArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Context lengths in tokens (prompt including the chat template), comma-separated.
    #[arg(long, default_value = "1024,2048")]
    pub lengths: String,
    /// Needle depths in percent of the haystack, comma-separated.
    #[arg(long, default_value = "0,25,50,75,100")]
    pub depths: String,
    /// Budgets: tokens per layer (64) or percent of the prompt (3%), comma-separated.
    #[arg(long, default_value = "32,64,128", allow_hyphen_values = true)]
    pub budgets: String,
    /// Tokens to generate per run. The default model restates the question before the
    /// number and every digit is a token, so 16 cuts answers short.
    #[arg(long = "max-new", default_value_t = 24)]
    pub max_new: usize,
    /// Output folder.
    #[arg(long, default_value = "eval-out/niah")]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct SweepArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Prompt files or folders (a folder gives its .txt files with a sidecar answer).
    #[arg(default_value = "sample-prompts")]
    pub prompts: Vec<PathBuf>,
    /// Budgets: tokens per layer (64) or percent of the prompt (3%), comma-separated.
    #[arg(long, default_value = "1%,3%,10%", allow_hyphen_values = true)]
    pub budgets: String,
    /// Tokens to generate per run.
    #[arg(long = "max-new", default_value_t = 24)]
    pub max_new: usize,
    /// Output folder.
    #[arg(long, default_value = "eval-out/sweep")]
    pub out: PathBuf,
}

/// The methods to compare (the full cache is always the reference, not a method here).
fn methods(c: &CommonArgs) -> Result<Vec<Method>> {
    let mut m = grid::parse_methods(&c.methods)?;
    m.retain(|&x| x != crate::eviction::full::METHOD);
    if m.is_empty() {
        bail!("no method left to compare with the full cache (--methods)");
    }
    Ok(m)
}

fn run_with(
    c: &CommonArgs,
    budgets: &str,
    max_new: usize,
    f: impl FnOnce(&Ctx, Vec<grid::Combo>) -> Result<()>,
) -> Result<()> {
    super::init_threads(c.model.threads)?;
    let budgets = grid::parse_budgets(budgets)?;
    let windows = grid::parse_usizes(&c.windows, "--windows", 1)?;
    let mut methods = methods(c)?;
    if max_new == 0 {
        bail!("--max-new must be at least 1 (the answer is read from the generated text)");
    }
    let base = c.knobs.apply(Settings::default())?;
    let model_path = super::resolve_model_path(c.model.model.as_deref())?;
    let loaded = crate::model::load(&model_path)?;
    let dims = loaded.model.config.dims();
    // As `kvscope run`: without --profile, the profile measured on this model file (shipped
    // or cached) if there is one; compresskv is skipped only when there is none.
    let wanted = methods.iter().any(|m| m.def().needs_profile.is_some());
    let mut profile_path = None;
    let profile = match discover::resolve(
        c.profile.as_deref(),
        &model_path,
        &loaded.model.config,
        wanted,
    )? {
        Some((path, p)) => {
            eprintln!("kvscope: profile {}", path.display());
            profile_path = Some(path.display().to_string());
            Some(p)
        }
        None => None,
    };
    if profile.is_none() && wanted {
        let skipped: Vec<&str> = methods
            .iter()
            .filter(|m| m.def().needs_profile.is_some())
            .map(|m| m.name())
            .collect();
        methods.retain(|m| m.def().needs_profile.is_none());
        eprintln!(
            "kvscope: notice: {} skipped: no profile for this model (--profile FILE, made with `kvscope profile`); running the other methods",
            skipped.join(", ")
        );
        if methods.is_empty() {
            bail!("no method left to compare with the full cache (--methods)");
        }
    }
    // Check every combo's knobs up front (at a budget no prompt can push below the
    // window), so a bad flag fails before minutes of prefill.
    for &m in &methods {
        for &w in &windows {
            Settings {
                method: m,
                window: w,
                budget: w,
                ..base.clone()
            }
            .validate(&dims)?;
        }
    }
    let cache = c.cache.open(&model_path, false);
    let ctx = Ctx {
        loaded: &loaded,
        cache: cache.as_ref(),
        profile,
        base,
        max_new,
        prompt: c.prompt_opts.options()?,
        prov: crate::report::Provenance::new(
            profile_path,
            discover::model_sha256(&model_path).ok(),
            &c.prompt_opts.options()?,
            None,
        ),
    };
    f(&ctx, grid::combos(&methods, &budgets, &windows))
}

pub fn run(cmd: &EvalCommand) -> Result<()> {
    match cmd {
        EvalCommand::Merge(a) => crate::eval::merge::merge(&a.dirs, &a.out),
        EvalCommand::Niah(a) => {
            let lengths = grid::parse_usizes(&a.lengths, "--lengths", 64)?;
            let shard = shard_of(&a.common)?;
            let depths = grid::parse_depths(&a.depths)?;
            let c = &a.common;
            run_with(c, &a.budgets, a.max_new, |ctx, combos| {
                let longest = lengths.iter().copied().max().unwrap_or(0);
                if let Some(n) = ctx
                    .profile
                    .as_ref()
                    .and_then(|p| crate::profile::lengths::length_notice(p, longest))
                {
                    eprintln!("kvscope: notice: compresskv: {n}");
                }
                niah::run(
                    ctx,
                    &niah::NiahSpec {
                        lengths,
                        depths,
                        combos,
                        out: a.out.clone(),
                        resume: c.resume,
                        fresh: c.fresh,
                        quiet: c.quiet,
                        shard,
                    },
                )
            })
        }
        EvalCommand::Sweep(a) => {
            let shard = shard_of(&a.common)?;
            let prompts = prompts::collect(&a.prompts)?;
            let c = &a.common;
            run_with(c, &a.budgets, a.max_new, |ctx, combos| {
                // The longest prompt, for the profile-length notice (a prompt that does
                // not read or tokenize is reported by the sweep itself).
                let longest = prompts
                    .iter()
                    .filter_map(|p| {
                        let text = crate::input::read_prompt(&p.path).ok()?;
                        Some(ctx.loaded.tok.prompt(&text, &ctx.prompt).ok()?.ids.len())
                    })
                    .max()
                    .unwrap_or(0);
                if let Some(n) = ctx
                    .profile
                    .as_ref()
                    .and_then(|p| crate::profile::lengths::length_notice(p, longest))
                {
                    eprintln!("kvscope: notice: compresskv: {n}");
                }
                sweep::run(
                    ctx,
                    &sweep::SweepSpec {
                        prompts,
                        combos,
                        out: a.out.clone(),
                        resume: c.resume,
                        fresh: c.fresh,
                        quiet: c.quiet,
                        shard,
                    },
                )
            })
        }
    }
}
