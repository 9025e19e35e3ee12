//! What a decode step reports besides its logits, asked for with one [`Observer`]:
//! every head's attention rows ([`StepAttention`]) and the shadow-eviction probe (the
//! attention-output error a keep set would cause, measured on the full cache).

use anyhow::{bail, Result};

use super::Model;
use crate::keepset::KeepSet;
use crate::model::kvcache::HeadCache;
use crate::model::linear::Linear;
use crate::model::quant::QVec;

/// What a decode step collects besides its logits. The default asks for nothing, and
/// the step then computes no attention rows at all (the plain path costs what it did).
#[derive(Default)]
pub struct Observer<'a> {
    /// Every head's attention probabilities of the step, appended.
    pub attention: Option<&'a mut Vec<StepAttention>>,
    /// The shadow-eviction probe, on a full cache: per layer, how far the attention
    /// output (after the output projection) would move if the layer attended only to the
    /// prompt entries the keep set keeps (plus all generated tokens):
    /// `||o_kept - o_full|| / (||o_full|| + 1e-5)` (METHOD.md, eviction error of a
    /// layer). Attention restricted to a subset is the full softmax renormalised over
    /// it, so the full probabilities give it exactly. One error per layer is appended.
    pub shadow: Option<(&'a KeepSet, &'a mut Vec<f32>)>,
}

impl<'a> Observer<'a> {
    /// Nothing but the logits.
    pub fn none() -> Self {
        Observer::default()
    }

    /// Every head's attention rows.
    pub fn attention(rows: &'a mut Vec<StepAttention>) -> Self {
        Observer {
            attention: Some(rows),
            shadow: None,
        }
    }

    /// The shadow-eviction error of `keep`, one per layer into `errors`.
    pub fn shadow(keep: &'a KeepSet, errors: &'a mut Vec<f32>) -> Self {
        Observer {
            attention: None,
            shadow: Some((keep, errors)),
        }
    }
}

/// Every query head's attention probabilities at one decode step, over the cache
/// entries it attended (kept prompt positions in order, then the generated tokens;
/// entries outside a sliding layer's window have probability 0).
#[derive(Debug, Clone)]
pub struct StepAttention {
    /// Position of the token fed in at this step.
    pub pos: usize,
    /// `[layer][head][entry]`
    pub probs: Vec<Vec<Vec<f32>>>,
}

/// `[layer][kv_head][prompt position]`: whether a shadow eviction keeps the entry.
pub(super) type ShadowMasks = Vec<Vec<Vec<bool>>>;

/// The shadow keep set as masks, checked (with the cache being full) before anything is
/// pushed, so a refused call leaves the decode state as it was. Full: every head holds
/// every prompt position its layer can see (all of them, or a sliding layer's last
/// min(L, S)), in order.
pub(super) fn shadow_masks(
    model: &Model,
    cache: &[Vec<HeadCache>],
    len: usize,
    shadow: &KeepSet,
) -> Result<ShadowMasks> {
    shadow.validate(&model.dims(), len)?;
    let windows = model.config.windows();
    let full = len > 0
        && cache.iter().zip(&windows).all(|(layer, w)| {
            let first = w.map_or(0, |s| len.saturating_sub(s));
            layer.iter().all(|hc| {
                hc.positions.first() == Some(&first)
                    && hc.positions.get(len - 1 - first) == Some(&(len - 1))
            })
        });
    if !full {
        bail!("shadow eviction error needs a full cache");
    }
    Ok(shadow
        .positions
        .iter()
        .map(|heads| {
            heads
                .iter()
                .map(|pos| {
                    let mut m = vec![false; len];
                    for &p in pos {
                        if p < m.len() {
                            m[p] = true;
                        }
                    }
                    m
                })
                .collect()
        })
        .collect())
}

/// Relative error of one layer's attention output when each KV head attends only to the
/// prompt entries its mask keeps. The cache must be full (every prompt position the
/// layer can see, in order); `DecodeState::step` checks that before the step.
pub(super) fn shadow_error(
    layer: &[HeadCache],
    masks: &[Vec<bool>],
    probs: &[Vec<f32>],
    attn_full: &[f32],
    n_rep: usize,
    wo: &Linear,
    prompt_len: usize,
) -> f32 {
    let hd = layer.first().map_or(0, |h| h.head_dim());
    let mut attn_kept = vec![0.0f32; attn_full.len()];
    for (h, p) in probs.iter().enumerate() {
        let g = h / n_rep;
        let (hc, mask) = (&layer[g], &masks[g]);
        let keep = |j: usize| {
            let p = hc.positions[j];
            p >= prompt_len || mask[p]
        };
        let z: f32 = p
            .iter()
            .enumerate()
            .filter(|&(j, _)| keep(j))
            .map(|(_, &w)| w)
            .sum();
        let out = &mut attn_kept[h * hd..(h + 1) * hd];
        if z > 0.0 {
            for (j, &w) in p.iter().enumerate() {
                if keep(j) {
                    hc.add_value(j, w / z, out);
                }
            }
        }
    }
    // One thread of the team computes this while the others wait; f32 on purpose (the
    // error compares two nearby outputs).
    let mut o_full = vec![0.0f32; wo.rows];
    let mut o_kept = vec![0.0f32; wo.rows];
    wo.matvec_rows(attn_full, &QVec::default(), false, 0, &mut o_full);
    wo.matvec_rows(&attn_kept, &QVec::default(), false, 0, &mut o_kept);
    let diff = o_full
        .iter()
        .zip(&o_kept)
        .map(|(a, b)| (a - b) * (a - b))
        .sum::<f32>()
        .sqrt();
    let norm = o_full.iter().map(|a| a * a).sum::<f32>().sqrt();
    diff / (norm + 1e-5)
}
