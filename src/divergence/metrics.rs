//! The per-step numbers of the divergence analysis (METHOD.md, "Divergence analysis"),
//! as pure functions of logits, captured attention and a keep set.

use serde::Serialize;

use crate::eviction::scores::rank_order;
use crate::keepset::KeepSet;

/// Floor of the compressed probability inside the KL's logarithm.
const Q_FLOOR: f64 = 1e-30;

/// How the compressed distribution `q` compares with the full one `p` at one step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Compare {
    /// `KL(p || q)` in nats.
    pub kl: f64,
    /// Whether the arg-maxes agree.
    pub top1_agree: bool,
    /// 1 + the number of tokens `q` ranks above `next`.
    pub rank: usize,
    /// `q(next)`.
    pub prob: f64,
}

/// `ln softmax(x)` in f64.
fn log_softmax(x: &[f32]) -> Vec<f64> {
    let max = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let lse = max + x.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
    x.iter().map(|&v| v as f64 - lse).collect()
}

/// First index of the largest value (the decoder's greedy choice).
fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

/// Compares the full (`p`) and compressed (`q`) next-token logits; `next` is the token
/// the full cache generated next.
pub fn compare(full: &[f32], comp: &[f32], next: u32) -> Compare {
    let lp = log_softmax(full);
    let lq = log_softmax(comp);
    let ln_floor = Q_FLOOR.ln();
    let kl = lp
        .iter()
        .zip(&lq)
        .map(|(&a, &b)| {
            let p = a.exp();
            if p > 0.0 {
                p * (a - b.max(ln_floor))
            } else {
                0.0
            }
        })
        .sum::<f64>()
        .max(0.0);
    let n = next as usize;
    let qn = comp.get(n).copied().unwrap_or(f32::NEG_INFINITY);
    Compare {
        kl,
        top1_agree: argmax(full) == argmax(comp),
        rank: 1 + comp.iter().filter(|&&v| v > qn).count(),
        prob: lq.get(n).map_or(0.0, |l| l.exp()),
    }
}

/// `[layer][kv_head][pos]`: whether the keep set evicted prompt position `pos`.
pub fn evicted_masks(keep: &KeepSet, len: usize) -> Vec<Vec<Vec<bool>>> {
    keep.positions
        .iter()
        .map(|heads| {
            heads
                .iter()
                .map(|kept| {
                    let mut m = vec![true; len];
                    kept.iter()
                        .filter(|&&p| p < len)
                        .for_each(|&p| m[p] = false);
                    m
                })
                .collect()
        })
        .collect()
}

/// `[layer][query head]`: the full-cache attention mass each query head put on prompt
/// positions its KV head (`h / n_rep`) evicted. `attn` is `[layer][head][pos]` over the
/// prompt entries of the full cache.
pub fn lost_mass(
    attn: &[Vec<Vec<f32>>],
    evicted: &[Vec<Vec<bool>>],
    n_rep: usize,
) -> Vec<Vec<f64>> {
    attn.iter()
        .zip(evicted)
        .map(|(heads, ev)| {
            heads
                .iter()
                .enumerate()
                .map(|(h, row)| {
                    let m = &ev[h / n_rep];
                    row.iter()
                        .zip(m)
                        .filter(|(_, &e)| e)
                        .map(|(&a, _)| a as f64)
                        .sum()
                })
                .collect()
        })
        .collect()
}

/// An evicted prompt position and the full-cache attention it received at one step from
/// the (layer, query head) pairs whose KV head evicted it.
#[derive(Debug, Clone, PartialEq)]
pub struct CulpritMass {
    pub pos: usize,
    pub mass: f64,
    /// Per layer (0 where no KV head of the layer evicted it).
    pub per_layer: Vec<f64>,
}

/// Every prompt position evicted by at least one KV head of some layer, ranked by the
/// mass it lost (ties: lower position first).
pub fn culprits(
    attn: &[Vec<Vec<f32>>],
    evicted: &[Vec<Vec<bool>>],
    n_rep: usize,
    len: usize,
) -> Vec<CulpritMass> {
    let n_layers = attn.len();
    let mut per = vec![vec![0f64; n_layers]; len];
    let mut any = vec![false; len];
    for (l, (heads, ev)) in attn.iter().zip(evicted).enumerate() {
        for m in ev {
            for (a, &e) in any.iter_mut().zip(m) {
                *a |= e;
            }
        }
        for (h, row) in heads.iter().enumerate() {
            let m = &ev[h / n_rep];
            for (p, (&a, &e)) in row.iter().zip(m).enumerate().take(len) {
                if e {
                    per[p][l] += a as f64;
                }
            }
        }
    }
    let mut out: Vec<CulpritMass> = per
        .into_iter()
        .enumerate()
        .filter(|(p, _)| any[*p])
        .map(|(pos, per_layer)| CulpritMass {
            pos,
            mass: per_layer.iter().sum(),
            per_layer,
        })
        .collect();
    out.sort_by(|a, b| b.mass.total_cmp(&a.mass).then(a.pos.cmp(&b.pos)));
    out
}

/// The step to explain by default: the first whose top-1 disagrees, else the one of
/// largest KL (the first of equals). Index into `steps`; `None` when there are none.
pub fn default_step(steps: &[Compare]) -> Option<usize> {
    steps.iter().position(|c| !c.top1_agree).or_else(|| {
        (0..steps.len()).reduce(|best, i| {
            if steps[i].kl > steps[best].kl {
                i
            } else {
                best
            }
        })
    })
}

/// 1-based rank of `pos` among the scored candidates (by the selection's order: higher
/// score, then lower position).
pub fn score_rank(scores: &[f32], pos: usize) -> Option<usize> {
    let s = *scores.get(pos)?;
    Some(
        1 + scores
            .iter()
            .enumerate()
            .filter(|&(q, &x)| rank_order(x, q, s, pos).is_lt())
            .count(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_logits_have_zero_kl_and_agree() {
        let x = [1.0, 3.0, -2.0, 0.5];
        let c = compare(&x, &x, 1);
        assert!(c.kl.abs() < 1e-12);
        assert!(c.top1_agree);
        assert_eq!(c.rank, 1);
        let e: f64 = x.iter().map(|&v| (v as f64).exp()).sum();
        assert!((c.prob - 3f64.exp() / e).abs() < 1e-12);
    }

    #[test]
    fn kl_by_hand() {
        // p = (1/2, 1/2), q = (1/4 .. ) via logits ln 1, ln 3: q = (1/4, 3/4).
        let c = compare(&[0.0, 0.0], &[0.0, 3f32.ln()], 0);
        let want = 0.5 * (0.5f64 / 0.25).ln() + 0.5 * (0.5f64 / 0.75).ln();
        assert!((c.kl - want).abs() < 1e-6, "{} vs {want}", c.kl);
        // Arg-max of p is 0 (first of equals), of q is 1.
        assert!(!c.top1_agree);
        assert_eq!(c.rank, 2);
        assert!((c.prob - 0.25).abs() < 1e-6);
    }

    #[test]
    fn lost_mass_sums_the_evicted_positions_of_the_kv_group() {
        // One layer, two query heads sharing one KV head; 4 prompt positions.
        let attn = vec![vec![vec![0.1, 0.2, 0.3, 0.4], vec![0.5, 0.0, 0.25, 0.25]]];
        let keep = KeepSet {
            positions: vec![vec![vec![0, 3]]],
        };
        let ev = evicted_masks(&keep, 4);
        let lm = lost_mass(&attn, &ev, 2);
        assert!((lm[0][0] - 0.5).abs() < 1e-6);
        assert!((lm[0][1] - 0.25).abs() < 1e-6);
        let c = culprits(&attn, &ev, 2, 4);
        assert_eq!(c.iter().map(|c| c.pos).collect::<Vec<_>>(), vec![2, 1]);
        assert!((c[0].mass - 0.55).abs() < 1e-6);
    }

    #[test]
    fn default_step_prefers_the_first_disagreement() {
        let s = |kl, top1_agree| Compare {
            kl,
            top1_agree,
            rank: 1,
            prob: 1.0,
        };
        assert_eq!(
            default_step(&[s(0.1, true), s(2.0, true), s(0.5, false)]),
            Some(2)
        );
        assert_eq!(
            default_step(&[s(0.1, true), s(2.0, true), s(2.0, true)]),
            Some(1)
        );
        assert_eq!(default_step(&[]), None);
    }

    #[test]
    fn score_rank_breaks_ties_by_position() {
        let s = [1.0, 3.0, 3.0, 2.0];
        assert_eq!(score_rank(&s, 1), Some(1));
        assert_eq!(score_rank(&s, 2), Some(2));
        assert_eq!(score_rank(&s, 0), Some(4));
        assert_eq!(score_rank(&s, 9), None);
    }
}
