//! `kvscope [PROMPT_FILE]` / `kvscope tui [PROMPT_FILE]`: flags of the inspector.

use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;

use super::{AllocArgs, KnobArgs, ModelArgs, PromptArgs};
use crate::eviction::{Method, Settings};
use crate::report::SavedReport;

#[derive(Args, Debug, Clone)]
pub struct TuiArgs {
    /// Prompt text file; without one, a picker over sample prompts and recent files.
    pub prompt: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Method to start with (default: compresskv with a profile, else snapkv).
    #[arg(long)]
    pub method: Option<String>,
    #[arg(long, default_value_t = 128)]
    pub budget: usize,
    #[arg(long, default_value_t = 8)]
    pub window: usize,
    #[command(flatten)]
    pub knobs: KnobArgs,
    #[command(flatten)]
    pub alloc: AllocArgs,
    /// Profile JSON (SRH ranking and layer errors) for compresskv and the SRH head map.
    #[arg(long, value_name = "PATH")]
    pub profile: Option<PathBuf>,
    /// Tokens to generate (greedy), for both the full and the compressed cache.
    #[arg(long = "max-new", default_value_t = 32)]
    pub max_new: usize,
    #[command(flatten)]
    pub prompt_opts: PromptArgs,
    #[command(flatten)]
    pub cache: super::CacheArgs,
    /// Culprits the Divergence pane's `R` pins (`,` / `.` change it).
    #[arg(long, value_name = "K", default_value_t = crate::tui::app::RESCUE_K,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=16))]
    pub rescue: usize,
    /// Open with a saved report's settings (`run --json`, or `e` in the inspector): its
    /// method, budget, window, every knob, allocator and manual budgets, pins, --max-new,
    /// the prompt flags and profile replace the flags (an explicit --profile wins).
    /// PROMPT must give the report's prompt tokens and the model must be the report's
    /// (sha256).
    #[arg(long = "from-report", value_name = "FILE")]
    pub from_report: Option<PathBuf>,
}

/// The starting settings, and a note for the status line when the method was chosen
/// for the user.
pub fn settings(a: &TuiArgs) -> Result<(Settings, Option<String>)> {
    let (method, note) = match (&a.method, &a.profile) {
        (Some(m), _) => (m.parse::<Method>()?, None),
        (None, Some(_)) => (crate::eviction::compresskv::METHOD, None),
        (None, None) => (
            crate::eviction::snapkv::METHOD,
            Some(
                "no --profile: starting with snapkv unless a matching profile is found".to_string(),
            ),
        ),
    };
    let s = a.alloc.apply(a.knobs.apply(Settings {
        method,
        budget: a.budget,
        window: a.window,
        ..Settings::default()
    })?)?;
    Ok((s, note))
}

pub fn run(a: &TuiArgs) -> Result<()> {
    super::init_threads(a.model.threads)?;
    crate::tui::run(options(a)?)
}

/// The inspector's options from the flags, or from the report `--from-report` names.
pub fn options(a: &TuiArgs) -> Result<crate::tui::Options> {
    let Some(path) = &a.from_report else {
        let (settings, notice) = settings(a)?;
        return Ok(crate::tui::Options {
            prompt: a.prompt.clone(),
            model: a.model.model.clone(),
            profile: a.profile.clone(),
            prompt_opts: a.prompt_opts.options()?,
            max_new: a.max_new,
            settings,
            expect: None,
            notice,
            prefer_compresskv: a.method.is_none() && a.profile.is_none(),
            rescue_k: a.rescue,
            no_cache: a.cache.no_cache,
        });
    };
    if a.prompt.is_none() {
        bail!("--from-report needs the prompt file the report was made from: kvscope PROMPT --from-report FILE");
    }
    let r = SavedReport::load(path)?;
    let settings = r
        .settings
        .to_settings()
        .with_context(|| format!("report {}", path.display()))?;
    Ok(crate::tui::Options {
        prompt: a.prompt.clone(),
        model: a.model.model.clone(),
        // An explicit --profile wins over the path the report names (it may have moved).
        profile: a
            .profile
            .clone()
            .or_else(|| r.settings.profile.as_ref().map(PathBuf::from)),
        prompt_opts: r.settings.prompt_options(),
        max_new: r.settings.max_new,
        settings,
        expect: Some((r.settings.model_sha256.clone(), r.prompt.ids)),
        notice: Some(match super::report_override_notice(path) {
            Some(n) => format!("settings from report {}; {n}", path.display()),
            None => format!("settings from report {}", path.display()),
        }),
        prefer_compresskv: false,
        rescue_k: a.rescue,
        no_cache: a.cache.no_cache,
    })
}
