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

use crate::eviction::oracle::FutureAttention;
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
    /// `[layer]`: the first prompt position the layer's full cache holds (0, or a
    /// sliding layer's `L - min(L, S)`): what lies before it was never there to evict.
    pub held_from: Vec<usize>,
}

impl FullPass {
    /// What the `oracle` method selects from: this replay's attention summed per KV head.
    pub fn future(&self, dims: &crate::trace::Dims) -> FutureAttention {
        FutureAttention::from_attn(&self.attn, dims, self.prompt_len)
    }
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
        // The full cache as the session decoded it: a sliding layer holds only its last
        // min(L, S) prompt entries, so its cache entry j is prompt position
        // `all.positions[l][g][j]`, not j.
        let all = crate::eviction::sliding::full_keep(trace);
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
            attn.push(by_prompt_position(
                &step.probs,
                &all,
                dims.n_rep(),
                trace.len,
            ));
        }
        Ok((
            FullPass {
                prompt_len: trace.len,
                n_rep: dims.n_rep(),
                ids: ids.to_vec(),
                logits,
                attn,
                held_from: all
                    .positions
                    .iter()
                    .map(|heads| heads.first().and_then(|h| h.first()).copied().unwrap_or(0))
                    .collect(),
            },
            errors,
        ))
    }

    /// Teacher-forced steps (`T - 1`).
    pub fn steps(&self) -> usize {
        self.logits.len()
    }
}

/// `[layer][head][prompt position]` from one step's captured rows, whose entry `j` is the
/// `j`-th entry of the head's cache (`keep`'s kept positions, then the generated tokens);
/// positions the cache does not hold get 0.
fn by_prompt_position(
    probs: &[Vec<Vec<f32>>],
    keep: &KeepSet,
    n_rep: usize,
    len: usize,
) -> Vec<Vec<Vec<f32>>> {
    probs
        .iter()
        .zip(&keep.positions)
        .map(|(heads, kv)| {
            heads
                .iter()
                .enumerate()
                .map(|(h, row)| {
                    let mut out = vec![0f32; len];
                    if let Some(pos) = kv.get(h / n_rep.max(1)) {
                        for (&p, &x) in pos.iter().zip(row) {
                            out[p] = x;
                        }
                    }
                    out
                })
                .collect()
        })
        .collect()
}

/// `[step][layer]`: attention-output error of `keep` along the full generation (the full
/// cache replayed without capture).
pub fn attn_errors(
    model: &Model,
    trace: &Trace,
    ids: &[u32],
    keep: &KeepSet,
) -> Result<Vec<Vec<f32>>> {
    let all = crate::eviction::sliding::full_keep(trace);
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

/// The compressed cache's free-running generation and its teacher-forced logits along
/// the full generation, from one decode where they agree.
pub struct Decoded {
    /// Exactly what [`Model::generate`] gives for this keep set.
    pub ids: Vec<u32>,
    /// Exactly what [`forced_logits`] gives for the full generation.
    pub forced: Vec<Vec<f32>>,
    /// Teacher-forced steps that came free from the free-running decode.
    pub shared: usize,
}

/// Decodes the compressed cache `keep` free-running (up to `max_new` tokens or a stop
/// token) and teacher-forced on `full_ids` at once. Both feed the same tokens until the
/// free-running generation first differs from the full one, so their states and logits
/// are identical up to there: the teacher-forced decode is forked off the free-running
/// one at that step (a copy of the cache) instead of starting again from the prompt. An
/// edit whose generation matches the full cache then costs one decode, not two.
pub fn decode_both(
    model: &Model,
    trace: &Trace,
    keep: &KeepSet,
    full_ids: &[u32],
    max_new: usize,
    stop_ids: &[u32],
) -> Result<Decoded> {
    let steps = full_ids.len().saturating_sub(1);
    let mut ids = Vec::with_capacity(max_new);
    let mut forced = Vec::with_capacity(steps);
    let mut state =
        crate::model::DecodeState::new(model, trace, keep, max_new.max(full_ids.len()))?;
    let mut fork = None;
    if max_new > 0 {
        let mut tok = crate::model::kernels::argmax(&trace.last_logits) as u32;
        ids.push(tok);
        while ids.len() < max_new && !stop_ids.contains(&tok) {
            // Not forked: `forced.len()` steps fed exactly `full_ids[..forced.len()]`.
            let joined = fork.is_none() && forced.len() < steps;
            if joined && tok != full_ids[forced.len()] {
                fork = Some(state.clone());
            }
            let logits = state.step(tok, None)?;
            if fork.is_none() && forced.len() < steps {
                forced.push(logits.to_vec());
            }
            tok = crate::model::kernels::argmax(logits) as u32;
            ids.push(tok);
        }
    }
    let shared = forced.len();
    // The rest of the teacher-forced steps: from the fork, or (the free-running decode
    // stopped first, on the full generation's tokens) from where it stopped.
    let mut st = fork.unwrap_or(state);
    for &tok in &full_ids[shared..steps] {
        forced.push(st.step(tok, None)?.to_vec());
    }
    Ok(Decoded {
        ids,
        forced,
        shared,
    })
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
    let evicted = evicted(full, keep);
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
/// per-layer budgets `budgets` and window `window`; sliding layers keep their window, as
/// every method's do.
pub fn oracle_keep(full: &FullPass, trace: &Trace, budgets: &[usize], window: usize) -> KeepSet {
    let future = FutureAttention::from_attn(&full.attn, &trace.dims, full.prompt_len);
    let windowed = crate::eviction::sliding::full_keep(trace);
    let positions = budgets
        .iter()
        .enumerate()
        .map(|(l, &b)| {
            if trace.window(l).is_some() {
                windowed.positions[l].clone()
            } else {
                crate::eviction::oracle::choose(&future, l, b, window).keep
            }
        })
        .collect();
    KeepSet { positions }
}
