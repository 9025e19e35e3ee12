//! The eviction debugger (METHOD.md, "Divergence analysis"): why a compressed generation
//! diverged from the full-cache one, which evicted prompt entries it missed, and whether
//! keeping them brings the output back.
//!
//! Data flow: the full-cache generation `y_1..y_T` (from the [`Session`]) is replayed
//! once through the full cache with attention capture ([`FullPass`], once per prompt);
//! for a keep set, the compressed cache is replayed over the same tokens (teacher
//! forcing, [`forced_logits`]) and the full cache measures the attention-output error of
//! that keep set ([`attn_errors`], or both at once in [`FullPass::compute`]). Those
//! replays are decode loops and live with the model ([`crate::model::replay`]);
//! everything after them ([`metrics`], [`oracle`], culprits, rescue pins) is pure.

pub mod metrics;
pub mod oracle;
pub mod report;

use anyhow::{bail, Result};

use crate::eviction::types::FutureAttention;
use crate::eviction::Settings;
use crate::keepset::KeepSet;
use crate::model::replay::FullPass;
use crate::trace::Trace;
use metrics::{Compare, CulpritMass};

impl FullPass {
    /// What the `oracle` method selects from: this replay's attention summed per KV head.
    pub fn future(&self, dims: &crate::trace::Dims) -> FutureAttention {
        FutureAttention::from_attn(&self.attn, dims, self.prompt_len)
    }
}

/// `[layer][kv_head][pos]`: entries the full cache holds and `keep` does not.
fn evicted(full: &FullPass, keep: &KeepSet) -> Vec<Vec<Vec<bool>>> {
    let mut ev = metrics::evicted_masks(keep, full.prompt_len);
    for (layer, &first) in ev.iter_mut().zip(&full.held_from) {
        for m in layer.iter_mut() {
            let n = first.min(m.len());
            m[..n].fill(false);
        }
    }
    ev
}

/// One teacher-forced step's numbers.
#[derive(Debug, Clone)]
pub struct Step {
    /// 1-based; predicts the full generation's token `t` (0-based index), so it lines
    /// up with the run report's `first_divergence`.
    pub t: usize,
    pub input_id: u32,
    pub full_next_id: u32,
    pub cmp: Compare,
    /// `[layer][query head]`
    pub lost_mass: Vec<Vec<f64>>,
    /// `[layer]`; empty when not measured.
    pub attn_err: Vec<f32>,
}

/// The divergence curve of one keep set.
pub fn steps(
    full: &FullPass,
    comp_logits: &[Vec<f32>],
    errors: Option<&[Vec<f32>]>,
    keep: &KeepSet,
) -> Vec<Step> {
    use rayon::prelude::*;
    let evicted = evicted(full, keep);
    // Steps are independent (a softmax over the vocabulary and a pass over the prompt
    // each): in parallel, in order.
    (0..full.steps().min(comp_logits.len()))
        .into_par_iter()
        .map(|i| Step {
            t: i + 1,
            input_id: full.ids[i],
            full_next_id: full.ids[i + 1],
            cmp: metrics::compare(&full.logits[i], &comp_logits[i], full.ids[i + 1]),
            lost_mass: metrics::lost_mass(&full.attn[i], &evicted, full.n_rep),
            attn_err: errors.and_then(|e| e.get(i)).cloned().unwrap_or_default(),
        })
        .collect()
}

/// The step to explain: `requested` (1-based, checked), else the default (the first top-1
/// disagreement, else the largest KL). `None` when the generation has no steps.
/// `ended_early`: the full generation stopped at an end-of-text token before --max-new,
/// so a larger --max-new would not give more steps.
pub fn chosen_step(
    steps: &[Step],
    requested: Option<usize>,
    ended_early: bool,
) -> Result<Option<usize>> {
    if let Some(t) = requested {
        if t == 0 || t > steps.len() {
            let advice = if ended_early {
                "the full-cache generation ended at an end-of-text token there; pick another step"
            } else {
                "raise --max-new or pick another step"
            };
            bail!(
                "--step {t} is outside the generation's teacher-forced steps (1-{}); {advice}",
                steps.len()
            );
        }
        return Ok(Some(t));
    }
    let cmps: Vec<Compare> = steps.iter().map(|s| s.cmp).collect();
    Ok(metrics::default_step(&cmps).map(|i| i + 1))
}

/// Culprits of step `t` (1-based) for `keep`, best first.
pub fn culprits_at(full: &FullPass, keep: &KeepSet, t: usize) -> Vec<CulpritMass> {
    let Some(attn) = t.checked_sub(1).and_then(|i| full.attn.get(i)) else {
        return Vec::new();
    };
    let evicted = evicted(full, keep);
    metrics::culprits(attn, &evicted, full.n_rep, full.prompt_len)
}

/// [`culprits_at`] of every step `1..=steps` (the masks built once, the steps in
/// parallel).
pub fn culprits_all(full: &FullPass, keep: &KeepSet, steps: usize) -> Vec<Vec<CulpritMass>> {
    use rayon::prelude::*;
    let evicted = evicted(full, keep);
    (0..steps)
        .into_par_iter()
        .map(|i| match full.attn.get(i) {
            Some(attn) => metrics::culprits(attn, &evicted, full.n_rep, full.prompt_len),
            None => Vec::new(),
        })
        .collect()
}

/// The settings of a rescue: the user's pins plus the top `k` culprits (skipping any the
/// user pinned to evict).
pub fn rescue_settings(
    settings: &Settings,
    culprits: &[CulpritMass],
    k: usize,
) -> (Settings, Vec<usize>) {
    let pins: Vec<usize> = culprits
        .iter()
        .map(|c| c.pos)
        .filter(|p| !settings.pin_evict.contains(p))
        .take(k)
        .collect();
    let mut keep = settings.pin_keep.clone();
    keep.extend(&pins);
    keep.sort_unstable();
    keep.dedup();
    (
        Settings {
            pin_keep: keep,
            ..settings.clone()
        },
        pins,
    )
}

/// The oracle's keep set (the registry's `oracle`, [`crate::eviction::oracle`]) at the
/// per-layer budgets `budgets` (the compared method's) and window `window`; a sliding
/// layer keeps its window where the method did, and evicts inside it where the method
/// did (`--evict-sliding`), so both follow the same sliding-layer rules.
pub fn oracle_keep(full: &FullPass, trace: &Trace, budgets: &[usize], window: usize) -> KeepSet {
    let future = FutureAttention::from_attn(&full.attn, &trace.dims, full.prompt_len);
    let windowed = crate::keepset::full_keep(trace);
    let positions = budgets
        .iter()
        .enumerate()
        .map(|(l, &b)| {
            if let Some(s) = trace.window(l) {
                // A sliding layer follows the compared method's rule: its whole window
                // when the method kept it (budget min(L, S)), else the oracle's choice
                // inside the window at the same budget (`--evict-sliding`).
                let from = trace.len.saturating_sub(s);
                if b >= trace.len - from || s <= window {
                    windowed.positions[l].clone()
                } else {
                    crate::eviction::oracle::choose(&future.tail(from), l, b, window)
                        .keep
                        .into_iter()
                        .map(|h| h.into_iter().map(|p| p + from).collect())
                        .collect()
                }
            } else {
                crate::eviction::oracle::choose(&future, l, b, window).keep
            }
        })
        .collect();
    KeepSet { positions }
}
