//! `kvscope [PROMPT_FILE]` / `kvscope tui [PROMPT_FILE]`: flags of the inspector.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

use super::{AllocArgs, KnobArgs, ModelArgs, PromptArgs};
use crate::eviction::{Method, Settings};

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
    /// Culprits the Divergence pane's `R` pins (`,` / `.` change it).
    #[arg(long, value_name = "K", default_value_t = crate::tui::app::RESCUE_K,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=16))]
    pub rescue: usize,
}

/// The starting settings, and a note for the status line when the method was chosen
/// for the user.
pub fn settings(a: &TuiArgs) -> Result<(Settings, Option<String>)> {
    let (method, note) = match (&a.method, &a.profile) {
        (Some(m), _) => (m.parse::<Method>()?, None),
        (None, Some(_)) => (Method::CompressKv, None),
        (None, None) => (
            Method::SnapKv,
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
    let (settings, notice) = settings(a)?;
    crate::tui::run(crate::tui::Options {
        prompt: a.prompt.clone(),
        model: a.model.model.clone(),
        profile: a.profile.clone(),
        prompt_opts: a.prompt_opts.options()?,
        max_new: a.max_new,
        settings,
        notice,
        prefer_compresskv: a.method.is_none() && a.profile.is_none(),
        rescue_k: a.rescue,
    })
}
