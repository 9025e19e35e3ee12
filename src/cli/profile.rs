//! `kvscope profile srh|layers|show|compare`: measuring, inspecting and checking the
//! offline profiles.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};

use super::profile_common::{
    check_out, command_line, default_out, ensure_parent, parse_depths, parse_lengths, parse_list,
    LayerStepArgs,
};
use super::progress::{fmt_duration, stop_flag, Progress};
use super::ModelArgs;
use crate::haystack::needles::{NEEDLES, PROFILE_NEEDLES};
use crate::model::fetch::DEFAULT_MODEL;
use crate::profile::srh::{self, SrhConfig};
use crate::profile::{compare, discover, layers, show};
use crate::profile_format::{l1_normalise, rank_best_first, Profile, Provenance, FORMAT_VERSION};

#[derive(Args, Debug)]
pub struct ProfileArgs {
    #[command(subcommand)]
    pub command: ProfileCommand,
}

#[derive(Subcommand, Debug)]
pub enum ProfileCommand {
    /// Measure a whole profile (SRHs and layer errors) in one resumable run: fast shared
    /// protocol by default, shardable over machines.
    Make(super::profile_make::MakeArgs),
    /// Combine the parts folders of `profile make --shard` runs into one profile.
    Merge(super::profile_make::MergeArgs),
    /// Make a profile from the reference implementation's head-ranking and layer-score
    /// files.
    Import(super::profile_make::ImportArgs),
    /// Measure SRH and retrieval-head scores on needle-in-a-haystack prompts.
    Srh(SrhArgs),
    /// Measure per-layer eviction errors and add them to an SRH profile.
    Layers(LayersArgs),
    /// Summarise a profile: SRHs per layer, retrieval-head overlap, layer errors.
    Show(ShowArgs),
    /// Check that a profile helps: compresskv with it vs random SRHs vs uniform budgets
    /// on held-out needle prompts.
    Compare(CompareArgs),
}

#[derive(Args, Debug)]
pub struct SrhArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt lengths in tokens, comma-separated.
    #[arg(long, default_value = "1024,2048,4096")]
    pub lengths: String,
    /// Needle depths in percent of the filler, comma-separated (default 0,10,...,100).
    #[arg(long, default_value = "0,10,20,30,40,50,60,70,80,90,100")]
    pub depths: String,
    /// Use the first N needles (of the profiling set).
    #[arg(long, default_value_t = PROFILE_NEEDLES)]
    pub needles: usize,
    /// Tokens to generate per trial.
    #[arg(long = "max-new", default_value_t = 24)]
    pub max_new: usize,
    /// Where to write the profile (default: the cache's profiles/ folder, named after the
    /// model file).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Print every trial's answer as it finishes.
    #[arg(long)]
    pub verbose: bool,
}

#[derive(Args, Debug)]
pub struct LayersArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The SRH profile (from `kvscope profile srh`) whose SRHs select the kept tokens.
    /// Default: the profile found for the model.
    #[arg(long, value_name = "FILE")]
    pub profile: Option<PathBuf>,
    #[command(flatten)]
    pub layer: LayerStepArgs,
    /// Decode steps per prompt.
    #[arg(long = "max-new", default_value_t = 32)]
    pub max_new: usize,
    /// Where to write (default: back into the --profile file).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    /// Profile file (default: the profile found for the default model).
    pub file: Option<PathBuf>,
    /// SRHs shown per layer.
    #[arg(long = "first-k", default_value_t = 4)]
    pub first_k: usize,
}

#[derive(Args, Debug)]
pub struct CompareArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Profile to check (default: the profile found for the model).
    #[arg(long, value_name = "FILE")]
    pub profile: Option<PathBuf>,
    /// Needle indices (default: the held-out needles, never used for profiling).
    #[arg(long)]
    pub needles: Option<String>,
    #[arg(long, default_value = "1536")]
    pub lengths: String,
    /// Depths in percent.
    #[arg(long, default_value = "5,35,65,95")]
    pub depths: String,
    #[arg(long, default_value = "64,128")]
    pub budgets: String,
    #[arg(long, default_value = "8,32")]
    pub windows: String,
    /// Seeds of the random-SRH profiles (one shuffled ranking per seed).
    #[arg(long = "random-seeds", default_value = "1,2,3")]
    pub random_seeds: String,
    #[arg(long = "max-new", default_value_t = 24)]
    pub max_new: usize,
    #[command(flatten)]
    pub cache: super::CacheArgs,
}

pub fn run(a: &ProfileArgs) -> Result<()> {
    match &a.command {
        ProfileCommand::Make(a) => super::profile_make::run_make(a),
        ProfileCommand::Merge(a) => super::profile_make::run_merge(a),
        ProfileCommand::Import(a) => super::profile_make::run_import(a),
        ProfileCommand::Srh(a) => run_srh(a),
        ProfileCommand::Layers(a) => run_layers(a),
        ProfileCommand::Show(a) => run_show(a),
        ProfileCommand::Compare(a) => run_compare(a),
    }
}

fn run_srh(a: &SrhArgs) -> Result<()> {
    super::init_threads(a.model.threads)?;
    let lengths = parse_lengths(&a.lengths)?;
    let depths = parse_depths(&a.depths)?;
    if a.needles == 0 || a.needles > NEEDLES.len() {
        bail!(
            "--needles must be 1..={} (got {})",
            NEEDLES.len(),
            a.needles
        );
    }
    if a.max_new == 0 {
        bail!("--max-new must be at least 1");
    }
    let cfg = SrhConfig {
        lengths,
        depths,
        needles: (0..a.needles).collect(),
        max_new: a.max_new,
    };
    let model_path = super::resolve_model_path(a.model.model.as_deref())?;
    let out = match &a.out {
        Some(p) => p.clone(),
        None => default_out(&model_path)?,
    };
    check_out(&out, &[("--model", &model_path)])?;
    let loaded = crate::model::load(&model_path)?;
    let sha = discover::model_sha256(&model_path)?;
    let stop = stop_flag();
    let plan = cfg.plan();
    // Prefill dominates and slows with length; weigh trials by their length (plus the
    // decode, which costs roughly four prefill tokens per generated token).
    let weight = |len: usize| (len + 4 * cfg.max_new) as f64;
    let total: f64 = plan.iter().map(|t| weight(t.length)).sum();
    eprintln!(
        "kvscope: SRH profile of {}: {} trials ({} lengths x {} depths x {} needles)",
        loaded.model.config.name,
        plan.len(),
        cfg.lengths.len(),
        cfg.depths.len(),
        cfg.needles.len()
    );
    let mut bar = Progress::new("srh", total);
    let (mut done, mut counted) = (0.0, 0);
    bar.update(0.0, "");
    let totals = srh::measure(&loaded.model, &loaded.tok, &cfg, &stop, &mut |o, i, n| {
        done += weight(o.spec.length);
        counted += o.counted as usize;
        if a.verbose {
            eprintln!(
                "\rtrial {i}/{n}: needle {} len {} depth {:.0}% recall {:.2}: {:?}",
                o.spec.needle,
                o.prompt_tokens,
                o.spec.depth * 100.0,
                o.recall,
                o.text.trim()
            );
        }
        bar.update(done, &format!("trial {i}/{n}, {counted} retrieved"));
    })?;
    let took = bar.finish();
    if totals.counted == 0 {
        bail!(
            "no trial retrieved its answer ({} trials), so no head can be scored; try shorter --lengths",
            totals.trials
        );
    }
    let srh_scores = totals.srh_scores();
    let profile = Profile {
        format_version: FORMAT_VERSION,
        model: discover::fingerprint(&loaded.model.config, &sha),
        srh_ranking: srh_scores.iter().map(|s| rank_best_first(s)).collect(),
        srh_scores,
        retrieval_scores: totals.retrieval_scores(),
        layer_errors: None,
        provenance: Provenance {
            command: command_line(),
            settings: serde_json::json!({
                "srh": {
                    "lengths": cfg.lengths,
                    "depths_percent": cfg.depths.iter().map(|d| d * 100.0).collect::<Vec<_>>(),
                    "needles": cfg.needles,
                    "max_new": cfg.max_new,
                    "trials": totals.trials,
                    "copy_steps": totals.copy_steps,
                    "rouge1_recall_threshold": 0.5,
                    "seconds": took.as_secs(),
                }
            }),
            trials_counted: totals.counted,
            kvscope_version: env!("CARGO_PKG_VERSION").into(),
        },
    };
    ensure_parent(&out)?;
    profile.save(&out)?;
    eprintln!(
        "kvscope: {} of {} trials retrieved the answer; took {}; wrote {}",
        totals.counted,
        totals.trials,
        fmt_duration(took),
        out.display()
    );
    Ok(())
}

fn run_layers(a: &LayersArgs) -> Result<()> {
    super::init_threads(a.model.threads)?;
    if a.max_new == 0 {
        bail!("--max-new must be at least 1 (the layer error compares generated tokens)");
    }
    let model_path = super::resolve_model_path(a.model.model.as_deref())?;
    let loaded = crate::model::load(&model_path)?;
    let cfg = &loaded.model.config;
    let (profile_path, mut profile) =
        discover::resolve(a.profile.as_deref(), &model_path, cfg, true)?.with_context(|| {
            format!(
                "no profile found for {}; run `kvscope profile srh` first or pass --profile",
                model_path.display()
            )
        })?;
    let settings = layers::srh_uniform_settings(a.layer.budget, a.layer.window, a.layer.first_k);
    settings.validate(&cfg.dims())?;
    let files = layers::calibration_files(&a.layer.calibration)?;
    // The profile itself may be the output (that is the default: the layer errors are
    // added to it, and it is rewritten whole through a temporary file).
    let out = a.out.clone().unwrap_or_else(|| profile_path.clone());
    let mut inputs: Vec<(&str, &Path)> = vec![("--model", &model_path)];
    inputs.extend(files.iter().map(|f| ("calibration prompt", f.as_path())));
    check_out(&out, &inputs)?;
    let mut prompts = Vec::new();
    for f in &files {
        let text = crate::input::read_prompt(f)?;
        let ids = loaded
            .tok
            .encode(&loaded.tok.apply_template(&text, false))?;
        if ids.len().saturating_add(a.max_new) > cfg.context_length {
            bail!(
                "calibration prompt {} has {} tokens, too long for the model's context",
                f.display(),
                ids.len()
            );
        }
        prompts.push(ids);
    }
    let total: f64 = prompts
        .iter()
        .map(|p| (p.len() + 4 * a.max_new) as f64)
        .sum();
    eprintln!(
        "kvscope: layer errors of {} on {} calibration prompts ({}), uniform budget {} with the SRHs of {}",
        cfg.name,
        prompts.len(),
        prompts
            .iter()
            .map(|p| p.len().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        a.layer.budget,
        profile_path.display()
    );
    let stop = stop_flag();
    let mut bar = Progress::new("layers", total);
    bar.update(0.0, "");
    let mut done = 0.0;
    let sums = layers::measure(
        &loaded.model,
        &loaded.tok,
        &prompts,
        &profile,
        &layers::LayerConfig {
            settings,
            max_new: a.max_new,
        },
        &stop,
        &mut |i, n| {
            done += (prompts[i - 1].len() + 4 * a.max_new) as f64;
            bar.update(done, &format!("prompt {i}/{n}"));
        },
    )?;
    let took = bar.finish();
    let errors = l1_normalise(&sums).context(
        "every layer's eviction error is zero (the prompts may be shorter than the budget); use longer calibration prompts",
    )?;
    profile.layer_errors = Some(errors);
    profile.provenance.command = format!("{} && {}", profile.provenance.command, command_line());
    if let Some(obj) = profile.provenance.settings.as_object_mut() {
        obj.insert(
            "layers".into(),
            serde_json::json!({
                "budget": a.layer.budget,
                "window": a.layer.window,
                "first_k": a.layer.first_k,
                "allocator": "uniform",
                "max_new": a.max_new,
                "calibration": files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
                "prompt_tokens": prompts.iter().map(Vec::len).collect::<Vec<_>>(),
                "raw_error_sums": sums,
                "seconds": took.as_secs(),
            }),
        );
    }
    ensure_parent(&out)?;
    profile.save(&out)?;
    eprintln!(
        "kvscope: layer errors measured in {}; wrote {}",
        fmt_duration(took),
        out.display()
    );
    Ok(())
}

fn run_show(a: &ShowArgs) -> Result<()> {
    let (path, profile) = match &a.file {
        Some(p) => (p.clone(), Profile::load(p)?),
        None => discover::profile_dirs()
            .iter()
            .find_map(|d| find_by_sha(d, DEFAULT_MODEL.sha256))
            .context(
                "no profile for the default model found in ./profiles or the cache; pass a FILE",
            )?,
    };
    println!("profile: {}", path.display());
    if let Err(e) = profile.check_layer_errors() {
        // Shown anyway (it is for looking at), but said: `run` refuses this file.
        let line = format!("warning: {e:#}; `kvscope run` refuses this profile");
        eprintln!("kvscope: {line}");
        println!("{line}");
    }
    print!("{}", show::render(&profile, a.first_k));
    Ok(())
}

/// A profile in `dir` measured on the model file with this sha256 (no model needed).
fn find_by_sha(dir: &Path, sha: &str) -> Option<(PathBuf, Profile)> {
    let dirs = [dir.to_path_buf()];
    let found =
        discover::profiles_in(&dirs).find(|(_, p)| p.model.sha256.eq_ignore_ascii_case(sha));
    found
}

fn run_compare(a: &CompareArgs) -> Result<()> {
    super::init_threads(a.model.threads)?;
    if a.max_new == 0 {
        bail!("--max-new must be at least 1 (the answer is read from the generated text)");
    }
    parse_lengths(&a.lengths)?;
    let model_path = super::resolve_model_path(a.model.model.as_deref())?;
    let loaded = crate::model::load(&model_path)?;
    let cfg = &loaded.model.config;
    let (profile_path, profile) = discover::resolve(a.profile.as_deref(), &model_path, cfg, true)?
        .context("no profile found for the model; pass --profile")?;
    let needles: Vec<usize> = match &a.needles {
        Some(s) => parse_list("--needles", s)?,
        None => (PROFILE_NEEDLES..NEEDLES.len()).collect(),
    };
    if let Some(bad) = needles.iter().find(|&&n| n >= NEEDLES.len()) {
        bail!("--needles: there is no needle {bad} (0..{})", NEEDLES.len());
    }
    let plan = compare::Plan {
        needles,
        lengths: parse_lengths(&a.lengths)?,
        depths: parse_depths(&a.depths)?,
        budgets: parse_list("--budgets", &a.budgets)?,
        windows: parse_list("--windows", &a.windows)?,
        seeds: parse_list("--random-seeds", &a.random_seeds)?,
        max_new: a.max_new,
    };
    let n = plan.prompts().len();
    eprintln!(
        "kvscope: comparing on {n} held-out needle prompts with profile {}",
        profile_path.display()
    );
    let stop = stop_flag();
    let mut bar = Progress::new("compare", n as f64);
    bar.update(0.0, "");
    let cache = a.cache.open(&model_path, false);
    let result = compare::run(
        &loaded,
        &profile,
        &plan,
        cache.as_ref(),
        &stop,
        &mut |i, n| {
            bar.update(i as f64, &format!("prompt {i}/{n}"));
        },
    )?;
    let took = bar.finish();
    for n in &result.cache_notices {
        eprintln!("kvscope: notice: {n}");
    }
    if cache.is_some() {
        eprintln!(
            "kvscope: prefill cache: {} of {n} prompts read from it",
            result.cache_hits
        );
    }
    println!("{}", compare::markdown(&result));
    println!(
        "\n{} prompts, {} tokens each (approx.); took {}; command: `{}`",
        n,
        plan.lengths
            .iter()
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
            .join("/"),
        fmt_duration(took),
        command_line()
    );
    Ok(())
}
