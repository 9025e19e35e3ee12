//! What the `profile` subcommands share (`profile srh|layers|compare` in
//! [`super::profile`], `profile make|merge|import` in [`super::profile_make`]): list
//! parsing, the default `--out`, the output checks, the command line for provenance.

use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};

/// The layer-error step's settings (`profile layers`, and `profile make`'s second step).
#[derive(Args, Debug)]
pub struct LayerStepArgs {
    /// Layer step: uniform budget (prompt tokens kept per layer).
    #[arg(long, default_value_t = 64)]
    pub budget: usize,
    /// Layer step: observation window.
    #[arg(long, default_value_t = 8)]
    pub window: usize,
    /// Layer step: SRHs per layer.
    #[arg(long = "first-k", default_value_t = 4)]
    pub first_k: usize,
    /// Layer step: folder of calibration prompts (*.txt), kept apart from evaluation
    /// prompts.
    #[arg(long, default_value = "sample-prompts/calibration")]
    pub calibration: PathBuf,
}

pub(super) fn parse_list<T: std::str::FromStr>(flag: &str, s: &str) -> Result<Vec<T>> {
    let v = s
        .split(',')
        .map(|x| {
            x.trim()
                .parse::<T>()
                .map_err(|_| anyhow::anyhow!("{flag}: '{}' is not a valid number", x.trim()))
        })
        .collect::<Result<Vec<T>>>()?;
    if v.is_empty() {
        bail!("{flag} is empty");
    }
    Ok(v)
}

/// Haystack lengths: what `eval` accepts (64 tokens or more; shorter ones hold no
/// haystack worth the name, and 0 never ends).
pub(super) fn parse_lengths(s: &str) -> Result<Vec<usize>> {
    crate::eval::grid::parse_usizes(s, "--lengths", 64)
}

pub(super) fn parse_depths(s: &str) -> Result<Vec<f64>> {
    let v: Vec<f64> = parse_list("--depths", s)?;
    if let Some(bad) = v.iter().find(|d| !(0.0..=100.0).contains(*d)) {
        bail!("--depths: {bad} is outside 0..100 (percent)");
    }
    Ok(v.into_iter().map(|d| d / 100.0).collect())
}

/// The command line as typed, for provenance (arguments with spaces are quoted).
pub(super) fn command_line() -> String {
    std::env::args()
        .enumerate()
        .map(|(i, a)| {
            let a = if i == 0 { "kvscope".to_string() } else { a };
            if a.contains(char::is_whitespace) {
                format!("'{a}'")
            } else {
                a
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

pub(super) fn default_out(model_path: &Path) -> Result<PathBuf> {
    crate::profile::auto::default_out(model_path)
}

/// Checks `--out` before any measuring (a refusal after an hour of trials would waste
/// it): an existing target must be a regular file, and never one of the command's inputs.
pub(super) fn check_out(out: &Path, inputs: &[(&str, &Path)]) -> Result<()> {
    crate::output::check_target(out, "--out")?;
    crate::output::refuse_input_as_output(out, "--out", inputs)
}

pub(super) fn ensure_parent(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create folder {}", dir.display()))?;
    }
    Ok(())
}
