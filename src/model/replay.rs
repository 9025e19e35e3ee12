//! Replays of a prompt's cache over a generation's tokens (teacher forcing): the full
//! cache with attention capture ([`FullPass`]), a compressed cache's logits
//! ([`forced_logits`]), its attention-output error against the full cache
//! ([`attn_errors`]), and a compressed cache's free-running and teacher-forced decodes
//! at once ([`decode_both`]). They sit with the model because they are decode loops
//! over [`DecodeState`]; the analyses built on them live in `crate::divergence`.

use anyhow::{bail, Result};

use super::forward::{DecodeState, Model, Observer};
use super::kernels;
use crate::keepset::KeepSet;
use crate::trace::Trace;

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
    /// Bytes held: the generation's ids, each step's logits and the attention on the
    /// prompt (steps x layers x query heads x prompt length f32: most of it).
    pub fn bytes(&self) -> usize {
        let f = std::mem::size_of::<f32>();
        self.ids.len() * std::mem::size_of::<u32>()
            + self.logits.iter().map(|l| l.len() * f).sum::<usize>()
            + self
                .attn
                .iter()
                .flatten()
                .flatten()
                .map(|h| h.len() * f)
                .sum::<usize>()
            + self.held_from.len() * std::mem::size_of::<usize>()
    }

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
        let all = crate::keepset::full_keep(trace);
        let steps = ids.len().saturating_sub(1);
        let mut state = DecodeState::new(model, trace, &all, steps)?;
        let mut logits = Vec::with_capacity(steps);
        let mut attn = Vec::with_capacity(steps);
        let mut errors = shadow.map(|_| Vec::with_capacity(steps));
        for &tok in &ids[..steps] {
            let mut cap = Vec::with_capacity(1);
            let lg = match (shadow, errors.as_mut()) {
                (Some(keep), Some(errs)) => {
                    let mut e = Vec::with_capacity(dims.n_layers);
                    let lg = state.step(
                        tok,
                        Observer {
                            attention: Some(&mut cap),
                            shadow: Some((keep, &mut e)),
                        },
                    )?;
                    errs.push(e);
                    lg
                }
                _ => state.step(tok, Observer::attention(&mut cap))?,
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
    let all = crate::keepset::full_keep(trace);
    let steps = ids.len().saturating_sub(1);
    let mut state = DecodeState::new(model, trace, &all, steps)?;
    let mut out = Vec::with_capacity(steps);
    for &tok in &ids[..steps] {
        let mut e = Vec::new();
        state.step(tok, Observer::shadow(keep, &mut e))?;
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
    let mut state = DecodeState::new(model, trace, keep, steps)?;
    ids[..steps]
        .iter()
        .map(|&tok| state.step(tok, Observer::none()).map(<[f32]>::to_vec))
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
    decode_free(model, trace, keep, full_ids, max_new, stop_ids)?.finish(full_ids)
}

/// The free-running half of [`decode_both`]: the generation is complete, the
/// teacher-forced steps it shared are in, and the rest continue from `rest`
/// ([`FreeRun::finish`]). The inspector shows the generation before finishing.
pub struct FreeRun<'m> {
    /// Exactly what [`Model::generate`] gives for this keep set.
    pub ids: Vec<u32>,
    /// The teacher-forced logits so far: the steps shared with the free-running decode,
    /// then those decoded beside it after the fork.
    forced: Vec<Vec<f32>>,
    /// Teacher-forced steps that came free from the free-running decode.
    shared: usize,
    /// The teacher-forced decode after `forced` (forked off the free-running one before
    /// the first token that differs from the full generation), else the free-running
    /// state where it stopped.
    rest: DecodeState<'m>,
    /// Bytes the decode caches held at most (two when the teacher-forced one forked).
    pub held_bytes: usize,
}

/// [`decode_both`] up to the end of the free-running decode. After the fork the two
/// decodes step side by side, one pass over the weights for both
/// ([`DecodeState::step_pair`], exactly each one's own step), until the free-running one
/// ends; the teacher-forced steps left then are [`FreeRun::finish`]'s.
pub fn decode_free<'m>(
    model: &'m Model,
    trace: &Trace,
    keep: &KeepSet,
    full_ids: &[u32],
    max_new: usize,
    stop_ids: &[u32],
) -> Result<FreeRun<'m>> {
    let steps = full_ids.len().saturating_sub(1);
    let mut ids = Vec::with_capacity(max_new);
    let mut forced = Vec::with_capacity(steps);
    let mut state = DecodeState::new(model, trace, keep, max_new.max(full_ids.len()))?;
    let mut fork: Option<DecodeState> = None;
    let mut shared = 0;
    if max_new > 0 {
        let mut tok = kernels::argmax(&trace.last_logits) as u32;
        ids.push(tok);
        while ids.len() < max_new && !stop_ids.contains(&tok) {
            // Not forked: `forced.len()` steps fed exactly `full_ids[..forced.len()]`.
            if fork.is_none() && forced.len() < steps && tok != full_ids[forced.len()] {
                shared = forced.len();
                fork = Some(state.clone());
            }
            let logits = match fork.as_mut() {
                Some(f) if forced.len() < steps => {
                    let [free, teacher] = state.step_pair(f, [tok, full_ids[forced.len()]])?;
                    forced.push(teacher.to_vec());
                    free
                }
                Some(_) => state.step(tok, Observer::none())?,
                None => {
                    let logits = state.step(tok, Observer::none())?;
                    if forced.len() < steps {
                        forced.push(logits.to_vec());
                    }
                    logits
                }
            };
            tok = kernels::argmax(logits) as u32;
            ids.push(tok);
        }
    }
    if fork.is_none() {
        shared = forced.len();
    }
    let held_bytes = state.held_bytes() * if fork.is_some() { 2 } else { 1 };
    Ok(FreeRun {
        ids,
        forced,
        shared,
        held_bytes,
        rest: fork.unwrap_or(state),
    })
}

impl FreeRun<'_> {
    /// The rest of the teacher-forced steps on `full_ids` (the same ones given to
    /// [`decode_free`]): from the fork, or (the free-running decode stopped first, on
    /// the full generation's tokens) from where it stopped.
    pub fn finish(self, full_ids: &[u32]) -> Result<Decoded> {
        let steps = full_ids.len().saturating_sub(1);
        let FreeRun {
            ids,
            mut forced,
            shared,
            rest: mut st,
            ..
        } = self;
        for &tok in &full_ids[forced.len().min(steps)..steps] {
            forced.push(st.step(tok, Observer::none())?.to_vec());
        }
        Ok(Decoded {
            ids,
            forced,
            shared,
        })
    }
}
