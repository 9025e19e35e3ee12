//! The command line: clap definitions and one module per subcommand.

mod bandwidth;
pub mod bench;
mod bench_args;
mod bench_explain;
pub mod cache;
pub mod eval;
pub mod explain;
pub mod models;
pub mod profile;
mod profile_common;
pub mod profile_make;
pub mod progress;
pub mod run;
pub mod synth;
pub mod tui;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};

use crate::eviction::{pins, registry, Allocator, Method, Settings};
use crate::model::{self, fetch, Loaded, PromptOptions, TemplateChoice};

#[derive(Parser, Debug)]
#[command(
    name = "kvscope",
    version,
    about = "Inspect and tune KV-cache eviction (CompressKV and baselines) in GQA language models",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The inspector (when no subcommand is given).
    #[command(flatten)]
    pub tui: tui::TuiArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// One headless run: full-cache and compressed generation, memory, agreement.
    Run(run::RunArgs),
    /// Why a compressed generation diverged: teacher-forced divergence curve, lost
    /// attention, culprits, rescue and the distance from the attention oracle.
    Explain(explain::ExplainArgs),
    /// Where the model cache is and what it holds.
    Models,
    /// The prefill cache: list its entries or clear it.
    Cache(cache::CacheCmd),
    /// Measure prefill and decode speed on the model (Trace capture on).
    Bench(bench_args::BenchArgs),
    /// The inspector (also the default command): `kvscope tui [PROMPT_FILE]`.
    Tui(tui::TuiArgs),
    /// Evaluation grids: needle in a haystack, and method-by-budget sweeps.
    #[command(subcommand)]
    Eval(eval::EvalCommand),
    /// Offline profiles: measure SRHs and layer errors, show or check a profile.
    Profile(profile::ProfileArgs),
    /// Write a GGUF with random weights of a real model's shape (for measurements).
    #[command(hide = true)]
    Synth(synth::SynthArgs),
}

/// Flags shared by every command that loads a model.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A known model's name (smollm2-135m, gemma3-270m: fetched on first use) or a
    /// local GGUF file. Default: smollm2-135m (SmolLM2-135M-Instruct Q4_1).
    #[arg(long, value_name = "NAME|PATH")]
    pub model: Option<PathBuf>,
    /// Worker threads for the forward pass (default: all cores).
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = parse_count)]
    pub threads: Option<usize>,
}

/// The prefill cache flag of the commands that prefill a prompt (run, explain, the
/// inspector, eval, profile compare).
#[derive(Args, Debug, Clone, Default)]
pub struct CacheArgs {
    /// Neither read nor fill the prefill cache ($KVSCOPE_HOME/prefill; see `kvscope cache`).
    #[arg(long = "no-cache")]
    pub no_cache: bool,
}

impl CacheArgs {
    /// The prefill cache of `model_path`, unless `--no-cache`; a notice (one line on
    /// stderr unless `quiet`) when it cannot be used.
    pub fn open(
        &self,
        model_path: &Path,
        quiet: bool,
    ) -> Option<crate::prefill_cache::PrefillCache> {
        let (cache, notice) = crate::prefill_cache::PrefillCache::open(model_path, self.no_cache);
        if let (Some(n), false) = (notice, quiet) {
            eprintln!("kvscope: notice: {n}");
        }
        cache
    }
}

/// Prints the session's prefill cache notice, if any (one line on stderr).
pub fn cache_notice(s: &crate::session::Session) {
    if let Some(n) = s.prefill_cache.as_ref().and_then(|r| r.notice.as_ref()) {
        eprintln!("kvscope: notice: {n}");
    }
}

/// How the prompt file's text becomes the prompt (`run`, the inspector, the evaluations).
#[derive(Args, Debug, Clone, Default)]
pub struct PromptArgs {
    /// Send the text as is: no chat template, and control-token strings in it (such as
    /// <|im_end|>) are control tokens. BOS is still added where the model file asks.
    #[arg(long)]
    pub raw: bool,
    /// Chat template: auto (the model file's, in its built-in form when of a known family;
    /// none when the file has none), file (the file's own, as written), chatml, llama3,
    /// gemma, mistral.
    #[arg(long, value_name = "NAME", conflicts_with = "raw")]
    pub template: Option<String>,
    /// Read control-token strings in the prompt text (e.g. <|im_end|>) as control tokens
    /// inside the chat template; by default they are text.
    #[arg(long = "allow-control-tokens")]
    pub allow_control_tokens: bool,
}

impl PromptArgs {
    pub fn options(&self) -> Result<PromptOptions> {
        Ok(PromptOptions {
            raw: self.raw,
            template: self
                .template
                .as_deref()
                .map(str::parse::<TemplateChoice>)
                .transpose()
                .context("--template")?,
            allow_control_tokens: self.allow_control_tokens,
        })
    }
}

/// The knobs of every registered method and allocator (`eviction::registry`), one flag
/// each (`--kernel`, `--adakv-floor`, ...). `run`, the inspector and the evaluations share
/// them. Only the flags given are kept; the rest keep the base settings' values.
#[derive(Debug, Clone, Default)]
pub struct KnobArgs {
    /// (knob name, text given), in registry order.
    pub given: Vec<(&'static str, String)>,
}

impl KnobArgs {
    /// `base` with these knobs.
    pub fn apply(&self, mut base: Settings) -> Result<Settings> {
        for (name, text) in &self.given {
            if let Some(k) = registry::knob(name) {
                // Named as the user typed it: `--headkv-temp must be ...`.
                let flagged = |e: anyhow::Error| {
                    let msg = format!("{e:#}");
                    match msg.strip_prefix(k.flag) {
                        Some(rest) => anyhow::anyhow!("--{}{rest}", k.flag),
                        None => anyhow::anyhow!("--{}: {msg}", k.flag),
                    }
                };
                let v = k.parse(text).map_err(flagged)?;
                k.set(&mut base, v).map_err(flagged)?;
            }
        }
        Ok(base)
    }
}

impl clap::FromArgMatches for KnobArgs {
    fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let mut k = KnobArgs::default();
        k.update_from_arg_matches(m)?;
        Ok(k)
    }

    fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
        for k in registry::all_knobs() {
            if let Ok(Some(v)) = m.try_get_one::<String>(k.name) {
                self.given.retain(|(n, _)| *n != k.name);
                self.given.push((k.name, v.clone()));
            }
        }
        Ok(())
    }
}

impl Args for KnobArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        registry::all_knobs().into_iter().fold(cmd, |c, k| {
            c.arg(
                clap::Arg::new(k.name)
                    .long(k.flag)
                    .value_name("VALUE")
                    .help(registry::knob_help(k))
                    // Every spelling of a value reaches the knob's own check, which
                    // names the flag: `-1`, and `-inf` / `-NaN` too (not numbers to
                    // clap's negative-number test, so "unexpected argument" before).
                    .allow_hyphen_values(true),
            )
        })
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

/// How the total budget is split over layers (`run` and the inspector).
#[derive(Args, Debug, Clone)]
pub struct AllocArgs {
    #[arg(long, help = registry::allocator_help())]
    pub allocator: Option<String>,
    /// Explicit per-layer budgets: a,b,c,... (one per layer), or @FILE / @NAME for a
    /// JSON list saved from the inspector.
    #[arg(long = "layer-budgets", value_name = "LIST")]
    pub layer_budgets: Option<String>,
}

impl AllocArgs {
    /// `base` with this allocator and these explicit per-layer budgets.
    pub fn apply(&self, base: Settings) -> Result<Settings> {
        Ok(Settings {
            allocator: self
                .allocator
                .as_deref()
                .map(str::parse::<Allocator>)
                .transpose()?,
            layer_budgets: self
                .layer_budgets
                .as_deref()
                .map(parse_budget_list)
                .transpose()?,
            ..base
        })
    }
}

/// Eviction knobs (METHOD.md). Every one has the reference default.
#[derive(Args, Debug, Clone)]
pub struct EvictionArgs {
    #[arg(long, default_value = "compresskv", help = registry::method_help())]
    pub method: String,
    /// Prompt tokens kept per layer and KV head (at or above the prompt length: keep
    /// everything).
    #[arg(long, default_value_t = 128, allow_negative_numbers = true, value_parser = parse_budget)]
    pub budget: usize,
    /// Observation window (1..=64), always kept.
    #[arg(long, default_value_t = 8, allow_negative_numbers = true, value_parser = parse_count)]
    pub window: usize,
    #[command(flatten)]
    pub knobs: KnobArgs,
    #[command(flatten)]
    pub alloc: AllocArgs,
    /// Profile JSON (SRH ranking and layer errors) for compresskv / error-aware budgets.
    #[arg(long, value_name = "PATH")]
    pub profile: Option<PathBuf>,
    /// Prompt positions every layer keeps inside its budget: a,b,c-d (METHOD.md, Pins).
    #[arg(long = "pin-keep", value_name = "LIST")]
    pub pin_keep: Option<String>,
    /// Prompt positions no layer may keep (the window is always kept): a,b,c-d.
    #[arg(long = "pin-evict", value_name = "LIST")]
    pub pin_evict: Option<String>,
}

impl EvictionArgs {
    pub fn settings(&self) -> Result<Settings> {
        let pins = |s: &Option<String>, flag: &str| -> Result<Vec<usize>> {
            s.as_deref()
                .map_or(Ok(Vec::new()), pins::parse_list)
                .with_context(|| format!("--{flag}"))
        };
        self.alloc.apply(self.knobs.apply(Settings {
            method: self.method.parse::<Method>()?,
            budget: self.budget,
            window: self.window,
            pin_keep: pins(&self.pin_keep, "pin-keep")?,
            pin_evict: pins(&self.pin_evict, "pin-evict")?,
            ..Settings::default()
        })?)
    }
}

/// A count (tokens, threads) on the command line. A negative number is named as such (clap
/// would read `-1` as a flag and suggest `-- -1`, which fails too), and a number too
/// large for this machine says what to use instead.
pub fn parse_count(s: &str) -> std::result::Result<usize, String> {
    let t = s.trim();
    if let Ok(n) = t.parse::<usize>() {
        return Ok(n);
    }
    if let Some(digits) = t.strip_prefix('-') {
        if !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()) {
            return Err(format!("expected a whole number, 0 or more; got {t}"));
        }
    }
    if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!("{t} is larger than {}", usize::MAX));
    }
    Err(format!("expected a whole number; got '{t}'"))
}

/// [`parse_count`] for `--budget`: a number too large says that a smaller one already
/// keeps everything.
pub fn parse_budget(s: &str) -> std::result::Result<usize, String> {
    parse_count(s).map_err(|e| {
        if e.contains("is larger than") {
            format!("{e}; a budget at or above the prompt length already keeps everything")
        } else {
            e
        }
    })
}

pub fn parse_budget_list(s: &str) -> Result<Vec<usize>> {
    if let Some(r) = s.strip_prefix('@') {
        return crate::tui::files::resolve_budget_ref(r);
    }
    s.split(',')
        .map(|x| {
            x.trim()
                .parse::<usize>()
                .with_context(|| format!("--layer-budgets: '{x}' is not a whole number of tokens (expected a,b,c,... one per layer)"))
        })
        .collect()
}

/// Starts the worker threads: `--threads N`, capped at the cores available. The decode
/// team waits at spinning barriers, so more threads than cores do not add speed, they
/// take turns (16 on 2 cores ran 4x slower; 1000 never finished).
pub fn init_threads(threads: Option<usize>) -> Result<()> {
    if let Some(asked) = threads {
        if asked == 0 {
            bail!("--threads must be at least 1");
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let n = capped_threads(asked, cores);
        if n < asked {
            eprintln!(
                "kvscope: --threads {asked} is more than the {cores} cores available; using {n}"
            );
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("cannot start the worker threads")?;
    }
    Ok(())
}

/// Threads to start when `asked` were asked for on a machine with `cores` cores.
pub fn capped_threads(asked: usize, cores: usize) -> usize {
    asked.min(cores.max(1))
}

/// `--model` (a path or a known model's name), or the cached default model (fetching
/// a known model if needed).
pub fn resolve_model_path(path: Option<&Path>) -> Result<PathBuf> {
    fetch::resolve(path, &mut |m| eprintln!("kvscope: {m}"))
}

/// Resolves `--model` or the cached default model (fetching it if needed) and loads it.
pub fn load_model(path: Option<&Path>) -> Result<Loaded> {
    model::load(&resolve_model_path(path)?)
}

/// A command line clap refused: `--help` and `--version` print as usual; a mistake
/// becomes one line `kvscope: error: ...` (clap's own first line, which names the flag
/// and the value) with the pointer to `--help`, like every other kvscope error.
/// The command line, with every value-taking flag reading `-1` as its value (so the
/// flag's own check names the limit) instead of as an unknown flag `-1`.
pub fn command() -> clap::Command {
    // Numbers (and shard specs) take any value that starts with `-`, so `-inf` or
    // `-1/3` reaches the flag's own check instead of "unexpected argument '-i'".
    fn numeric(a: &clap::Arg) -> bool {
        use std::any::TypeId;
        let t = a.get_value_parser().type_id();
        let numbers = [
            TypeId::of::<usize>(),
            TypeId::of::<u64>(),
            TypeId::of::<u32>(),
            TypeId::of::<u16>(),
            TypeId::of::<i64>(),
            TypeId::of::<f64>(),
            TypeId::of::<f32>(),
        ];
        numbers.iter().any(|id| t == *id) || a.get_long() == Some("shard")
    }
    fn negatives(cmd: clap::Command) -> clap::Command {
        cmd.mut_args(|a| {
            if a.get_action().takes_values() && numeric(&a) {
                a.allow_hyphen_values(true)
            } else if a.get_action().takes_values() {
                a.allow_negative_numbers(true)
            } else {
                a
            }
        })
        .mut_subcommands(negatives)
    }
    use clap::CommandFactory;
    negatives(Cli::command())
}

/// The flags a `--from-report` replaces with the report's values (an explicit
/// `--profile` is not among them: it wins over the report's path).
fn report_replaces(long: &str) -> bool {
    const FIXED: [&str; 11] = [
        "method",
        "budget",
        "window",
        "allocator",
        "layer-budgets",
        "pin-keep",
        "pin-evict",
        "max-new",
        "raw",
        "template",
        "allow-control-tokens",
    ];
    FIXED.contains(&long) || registry::all_knobs().iter().any(|k| k.flag == long)
}

/// The flags typed on this process's command line that `--from-report` overrides,
/// as `--name`, in command-line order of definition; empty when none (or when the
/// command line cannot be read again).
pub fn flags_overridden_by_report() -> Vec<String> {
    overridden_in(std::env::args_os())
}

fn overridden_in<I, T>(args: I) -> Vec<String>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let mut cmd = command();
    let Ok(m) = cmd.try_get_matches_from_mut(args) else {
        return Vec::new();
    };
    let (sub, m) = match m.subcommand() {
        Some((name, sm)) => match cmd.find_subcommand(name) {
            Some(c) => (c.clone(), sm.clone()),
            None => return Vec::new(),
        },
        None => (cmd.clone(), m.clone()),
    };
    sub.get_arguments()
        .filter_map(|a| {
            let long = a.get_long()?;
            let typed =
                m.value_source(a.get_id().as_str()) == Some(clap::parser::ValueSource::CommandLine);
            (typed && report_replaces(long)).then(|| format!("--{long}"))
        })
        .collect()
}

/// One line naming the flags a `--from-report FILE` overrode, if any.
pub fn report_override_notice(path: &std::path::Path) -> Option<String> {
    let flags = flags_overridden_by_report();
    (!flags.is_empty()).then(|| {
        format!(
            "{} ignored: --from-report {} sets {} from the report",
            flags.join(", "),
            path.display(),
            if flags.len() == 1 { "it" } else { "them" }
        )
    })
}

/// Parses `args` (the program name first) with [`command`].
pub fn parse_args<I, T>(args: I) -> std::result::Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::FromArgMatches;
    let mut cmd = command();
    let m = cmd.try_get_matches_from_mut(args)?;
    Cli::from_arg_matches(&m).map_err(|e| e.format(&mut cmd))
}

/// A negative number given to a flag that counts: one line naming the flag and the limit,
/// whatever parser the flag has (clap's own says "invalid digit found in string").
fn negative_value_line(e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if e.kind() != ErrorKind::ValueValidation {
        return None;
    }
    let value = match e.get(ContextKind::InvalidValue)? {
        ContextValue::String(s) => s.clone(),
        _ => return None,
    };
    let digits = value.trim().strip_prefix('-')?;
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return None;
    }
    let flag = match e.get(ContextKind::InvalidArg)? {
        ContextValue::String(s) => s.split_whitespace().next().unwrap_or(s).to_string(),
        _ => return None,
    };
    Some(format!("{flag} must be 0 or more; got {value}"))
}

fn usage_error(e: clap::Error) -> i32 {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return e.exit_code();
    }
    if let Some(line) = negative_value_line(&e) {
        eprintln!("kvscope: error: {line}; see --help");
        return e.exit_code();
    }
    let text = e.render().to_string();
    let first = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid command line");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let hint = text
        .lines()
        .map(str::trim)
        // clap's "use '-- -1'" does not work for a flag's value; leave it out.
        .find(|l| l.starts_with("tip:") && !l.contains("'-- "))
        .map_or(String::new(), |t| format!(" ({t})"));
    eprintln!("kvscope: error: {first}{hint}; see --help");
    e.exit_code()
}

/// Entry point of the binary; returns the process exit code.
pub fn main() -> i32 {
    crate::signals::default_sigpipe();
    let cli = match parse_args(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let result = match cli.command {
        Some(Command::Run(a)) => run::run(&a),
        Some(Command::Explain(a)) => explain::run(&a),
        Some(Command::Models) => models::run(),
        Some(Command::Cache(a)) => cache::run(&a),
        Some(Command::Bench(a)) => bench::run(&a),
        Some(Command::Tui(a)) => tui::run(&a),
        Some(Command::Eval(c)) => eval::run(&c),
        Some(Command::Profile(a)) => profile::run(&a),
        Some(Command::Synth(a)) => synth::run(&a),
        None => tui::run(&cli.tui),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("kvscope: error: {e:#}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every flag that takes a value reads `-1` as its value, so its own check (not
    /// clap's "unexpected argument '-1'") answers.
    #[test]
    fn every_value_flag_reads_negative_numbers() {
        fn walk(cmd: &clap::Command, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
            for a in cmd.get_arguments() {
                if let (Some(long), true) = (a.get_long(), a.get_action().takes_values()) {
                    let mut args = vec!["kvscope".to_string()];
                    args.extend(path.iter().cloned());
                    args.push(format!("--{long}"));
                    args.push("-1".into());
                    out.push(args);
                }
            }
            for sc in cmd.get_subcommands() {
                path.push(sc.get_name().to_string());
                walk(sc, path, out);
                path.pop();
            }
        }
        let mut cases = Vec::new();
        walk(&command(), &mut Vec::new(), &mut cases);
        assert!(cases.len() > 40, "only {} flags found", cases.len());
        for args in cases {
            if let Err(e) = parse_args(&args) {
                let text = e.render().to_string();
                assert!(
                    !text.contains("unexpected argument '-1'"),
                    "{args:?}: {text}"
                );
            }
        }
    }

    #[test]
    fn report_notice_names_only_typed_flags_it_replaces() {
        let got = overridden_in([
            "kvscope",
            "run",
            "p.txt",
            "--from-report",
            "r.json",
            "--method",
            "h2o",
            "--budget",
            "64",
            "--cake-gamma",
            "2",
            "--profile",
            "x.json",
        ]);
        assert_eq!(got, ["--method", "--budget", "--cake-gamma"]);
        assert!(overridden_in(["kvscope", "run", "p.txt", "--from-report", "r.json"]).is_empty());
    }
}
