//! Running the layer-error measurement (METHOD.md, "Eviction error of a layer"): each
//! calibration prompt is decoded greedily with the full cache while every layer also
//! measures how far its attention output would move under SRH selection at a uniform
//! budget. Errors are summed over steps and prompts, then L1-normalised.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use super::srh::Interrupted;
use crate::eviction::{self, Allocator, Settings};
use crate::model::PREFILL_CHUNK;
use crate::model::{kernels, DecodeState, Model, Observer, Tok};
use crate::profile_format::Profile;

/// The selection the errors are measured under: compresskv's one index set per layer
/// from the profile's SRHs, with every layer at the same budget.
pub fn srh_uniform_settings(budget: usize, window: usize, first_k: usize) -> Settings {
    Settings {
        method: crate::eviction::compresskv::METHOD,
        budget,
        window,
        first_k,
        allocator: Some(Allocator::Uniform),
        ..Settings::default()
    }
}

/// Adds one step's per-layer errors to the running sums.
pub fn accumulate(sums: &mut [f64], step: &[f32]) {
    for (s, &e) in sums.iter_mut().zip(step) {
        *s += e as f64;
    }
}

/// The calibration prompt files of a folder (`*.txt`, sorted by name).
pub fn calibration_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read calibration folder {}", dir.display()))?;
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("calibration folder {} holds no .txt prompts", dir.display());
    }
    Ok(files)
}

/// Summed per-layer errors of one templated prompt over up to `max_new` decode steps.
pub fn prompt_errors(
    model: &Model,
    tok: &Tok,
    ids: &[u32],
    profile: &Profile,
    settings: &Settings,
    max_new: usize,
) -> Result<Vec<f64>> {
    let trace = model.prefill_without_summaries(ids, PREFILL_CHUNK, &mut |_, _| {})?;
    let d = trace.dims;
    let shadow =
        eviction::select(&eviction::Request::new(&trace, settings).profile(Some(profile)))?.keep;
    // The full cache as decoding holds it (a sliding layer: its last min(L, S)).
    let all = crate::keepset::full_keep(&trace);
    let mut state = DecodeState::new(model, &trace, &all, max_new)?;
    let mut sums = vec![0.0f64; d.n_layers];
    let mut errs = Vec::with_capacity(d.n_layers);
    let mut tok_id = kernels::argmax(&trace.last_logits) as u32;
    let mut n = 1;
    // The first token comes from prefill (full attention everywhere); every token fed
    // after it is a decode step whose errors count.
    while n < max_new && !tok.stop_ids.contains(&tok_id) {
        errs.clear();
        let logits = state.step(tok_id, Observer::shadow(&shadow, &mut errs))?;
        accumulate(&mut sums, &errs);
        tok_id = kernels::argmax(logits) as u32;
        n += 1;
    }
    Ok(sums)
}

/// How the errors are measured: the selection and the decode steps per prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerConfig {
    pub settings: Settings,
    pub max_new: usize,
}

/// Runs every prompt and returns the summed (not yet normalised) errors per layer.
/// `progress(done, total)` after each prompt; `stop` is checked between prompts.
pub fn measure(
    model: &Model,
    tok: &Tok,
    prompts: &[Vec<u32>],
    profile: &Profile,
    cfg: &LayerConfig,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<f64>> {
    let mut sums = vec![0.0f64; model.dims().n_layers];
    for (i, ids) in prompts.iter().enumerate() {
        if stop.load(Ordering::SeqCst) {
            bail!(Interrupted);
        }
        let e = prompt_errors(model, tok, ids, profile, &cfg.settings, cfg.max_new)?;
        for (s, x) in sums.iter_mut().zip(&e) {
            *s += x;
        }
        progress(i + 1, prompts.len());
    }
    Ok(sums)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accumulate_then_normalise() {
        let mut s = vec![0.0; 3];
        accumulate(&mut s, &[0.5, 1.0, 0.5]);
        accumulate(&mut s, &[0.5, 1.0, 1.5]);
        assert_eq!(s, vec![1.0, 2.0, 2.0]);
        let n = crate::profile_format::l1_normalise(&s).unwrap();
        assert_eq!(n, vec![0.2, 0.4, 0.4]);
        assert!((n.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn settings_are_srh_selection_at_a_uniform_budget() {
        let s = srh_uniform_settings(64, 8, 4);
        assert_eq!(s.method, crate::eviction::compresskv::METHOD);
        assert_eq!(s.effective_allocator(), Allocator::Uniform);
        assert_eq!((s.budget, s.window, s.first_k), (64, 8, 4));
    }
}
