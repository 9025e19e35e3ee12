//! The eviction debugger (METHOD.md, "Divergence analysis"): why a compressed generation
//! diverged from the full-cache one, which evicted prompt entries it missed, and whether
//! keeping them brings the output back.
//!
//! Data flow: the full-cache generation `y_1..y_T` (from the [`Session`]) is replayed
//! once through the full cache with attention capture ([`FullPass`], once per prompt);
//! for a keep set, the compressed cache is replayed over the same tokens (teacher
//! forcing, [`forced_logits`]) and the full cache measures the attention-output error of
//! that keep set ([`attn_errors`], or both at once in [`FullPass::compute`]). Everything
//! after that ([`metrics`], [`oracle`], culprits, rescue pins) is pure.

pub mod metrics;
pub mod oracle;
pub mod report;

use anyhow::{bail, Result};

use crate::eviction::Settings;
use crate::keepset::KeepSet;
use crate::model::Model;
use crate::trace::Trace;
use metrics::{Compare, CulpritMass};

/// The full cache replayed over its own generation, with every head's attention over
/// the prompt captured. Step `t` (1-based, `t < T`) feeds `y_t` and predicts `y_{t+1}`;
/// index `t - 1` in the vectors.
pub struct FullPass {
    pub prompt_len: usize,
    pub n_rep: usize,
    /// `y_1..y_T`.
    pub ids: Vec<u32>,
    /// Next-token logits after each step.
    pub logits: Vec<Vec<f32>>,
    /// `[step][layer][query head][prompt pos]`: attention probabilities on the prompt
    /// entries (generated entries are never evicted, so they are not kept).
    pub attn: Vec<Vec<Vec<Vec<f32>>>>,
}

impl FullPass {
    /// Replays `ids` (the full generation) through the full cache of `trace`. With
    /// `shadow`, the same steps also measure that keep set's attention-output error per
    /// layer (`[step][layer]`).
    pub fn compute(
        model: &Model,
        trace: &Trace,
        ids: &[u32],
        shadow: Option<&KeepSet>,
    ) -> Result<(FullPass, Option<Vec<Vec<f32>>>)> {
        let dims = model.dims();
        let all = KeepSet::all(&dims, trace.len);
        let steps = ids.len().saturating_sub(1);
        let mut state = crate::model::DecodeState::new(model, trace, &all, steps)?;
        let mut logits = Vec::with_capacity(steps);
        let mut attn = Vec::with_capacity(steps);
        let mut errors = shadow.map(|_| Vec::with_capacity(steps));
        for &tok in &ids[..steps] {
            let mut cap = Vec::with_capacity(1);
            let lg = match (shadow, errors.as_mut()) {
                (Some(keep), Some(errs)) => {
                    let mut e = Vec::with_capacity(dims.n_layers);
                    let lg = state.step_shadow_capture(tok, keep, &mut e, &mut cap)?;
                    errs.push(e);
                    lg
                }
                _ => state.step(tok, Some(&mut cap))?,
            };
            logits.push(lg.to_vec());
            let Some(step) = cap.pop() else {
                bail!("the decoder captured no attention");
            };
            let rows = step
                .probs
                .into_iter()
                .map(|heads| {
                    heads
                        .into_iter()
                        .map(|mut row| {
                            row.truncate(trace.len);
                            row
                        })
                        .collect()
                })
                .collect();
            attn.push(rows);
        }
        Ok((
            FullPass {
                prompt_len: trace.len,
                n_rep: dims.n_rep(),
                ids: ids.to_vec(),
                logits,
                attn,
            },
            errors,
        ))
    }

    /// Teacher-forced steps (`T - 1`).
    pub fn steps(&self) -> usize {
        self.logits.len()
    }
}

/// `[step][layer]`: attention-output error of `keep` along the full generation (the full
/// cache replayed without capture).
pub fn attn_errors(
    model: &Model,
    trace: &Trace,
    ids: &[u32],
    keep: &KeepSet,
) -> Result<Vec<Vec<f32>>> {
    let all = KeepSet::all(&model.dims(), trace.len);
    let steps = ids.len().saturating_sub(1);
    let mut state = crate::model::DecodeState::new(model, trace, &all, steps)?;
    let mut out = Vec::with_capacity(steps);
    for &tok in &ids[..steps] {
        let mut e = Vec::new();
        state.step_shadow(tok, keep, &mut e)?;
        out.push(e);
    }
    Ok(out)
}

/// The compressed cache `keep` fed the full generation's tokens: logits after each step.
pub fn forced_logits(
    model: &Model,
    trace: &Trace,
    keep: &KeepSet,
    ids: &[u32],
) -> Result<Vec<Vec<f32>>> {
    let steps = ids.len().saturating_sub(1);
    let mut state = crate::model::DecodeState::new(model, trace, keep, steps)?;
    ids[..steps]
        .iter()
        .map(|&tok| state.step(tok, None).map(<[f32]>::to_vec))
        .collect()
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
    let evicted = metrics::evicted_masks(keep, full.prompt_len);
    (0..full.steps().min(comp_logits.len()))
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
pub fn chosen_step(steps: &[Step], requested: Option<usize>) -> Result<Option<usize>> {
    if let Some(t) = requested {
        if t == 0 || t > steps.len() {
            bail!(
                "--step {t} is outside the generation's teacher-forced steps (1-{}); raise --max-new or pick another step",
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
    let evicted = metrics::evicted_masks(keep, full.prompt_len);
    metrics::culprits(attn, &evicted, full.n_rep, full.prompt_len)
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

/// The oracle's keep set at the per-layer budgets `budgets`.
pub fn oracle_keep(full: &FullPass, budgets: &[usize], n_kv: usize, window: usize) -> KeepSet {
    let len = full.prompt_len;
    let s = oracle::scores(
        &full.attn,
        budgets.len(),
        n_kv,
        full.n_rep,
        len.saturating_sub(window),
    );
    oracle::select(&s, budgets, len, window)
}
