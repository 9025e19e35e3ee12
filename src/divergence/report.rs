//! The divergence report of `kvscope explain --json` (DESIGN.md, "The divergence
//! report": field names are a contract). It extends the run report.

use serde::Serialize;

use super::metrics::{score_rank, CulpritMass};
use super::Step;
use crate::eviction::Selection;
use crate::report::Report;
use crate::session::Agreement;

#[derive(Serialize)]
pub struct StepPart {
    pub t: usize,
    pub input_id: u32,
    pub full_next_id: u32,
    pub kl: f64,
    pub top1_agree: bool,
    pub rank: usize,
    pub prob: f64,
    pub lost_mass: Vec<Vec<f64>>,
    pub attn_err: Vec<f32>,
}

impl From<&Step> for StepPart {
    fn from(s: &Step) -> Self {
        StepPart {
            t: s.t,
            input_id: s.input_id,
            full_next_id: s.full_next_id,
            kl: s.cmp.kl,
            top1_agree: s.cmp.top1_agree,
            rank: s.cmp.rank,
            prob: s.cmp.prob,
            lost_mass: s.lost_mass.clone(),
            attn_err: s.attn_err.clone(),
        }
    }
}

/// Why one layer dropped (or kept) a culprit.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct CulpritLayer {
    pub layer: usize,
    /// Per KV head: whether it kept the position.
    pub kept_by_kv_heads: Vec<bool>,
    /// Attention the position lost in this layer at the chosen step.
    pub mass: f64,
    /// The KV head `score` / `rank` / `cutoff_rank` describe: the evicting head whose
    /// query heads attended most to the position (any head if none evicted it).
    pub kv_head: usize,
    /// The method's score of the position for that head (null: no scores, e.g.
    /// streamingllm, or a layer that kept everything).
    pub score: Option<f32>,
    /// 1-based rank among the scored candidates (null without scores).
    pub rank: Option<usize>,
    /// How many candidates (outside the window) that head kept: a rank above it is
    /// evicted.
    pub cutoff_rank: usize,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct CulpritPart {
    pub pos: usize,
    pub text: String,
    pub mass: f64,
    pub per_layer: Vec<CulpritLayer>,
}

/// Per-layer detail of a culprit (`attn`: the chosen step's `[layer][head][pos]`).
pub fn culprit_part(
    c: &CulpritMass,
    text: String,
    sel: &Selection,
    attn: &[Vec<Vec<f32>>],
    n_rep: usize,
    len: usize,
    window: usize,
) -> CulpritPart {
    let prefix = len.saturating_sub(window);
    let per_layer = sel
        .keep
        .positions
        .iter()
        .enumerate()
        .map(|(l, heads)| {
            let kept: Vec<bool> = heads
                .iter()
                .map(|k| k.binary_search(&c.pos).is_ok())
                .collect();
            let group_mass = |g: usize| -> f32 {
                attn.get(l).map_or(0.0, |hs| {
                    hs.iter()
                        .skip(g * n_rep)
                        .take(n_rep)
                        .map(|r| r.get(c.pos).copied().unwrap_or(0.0))
                        .sum()
                })
            };
            let best = |only_evicting: bool| {
                (0..heads.len())
                    .filter(|&g| !only_evicting || !kept[g])
                    .max_by(|&a, &b| group_mass(a).total_cmp(&group_mass(b)).then(b.cmp(&a)))
            };
            let g = best(true).or_else(|| best(false)).unwrap_or(0);
            let scores = sel
                .scores
                .get(l)
                .and_then(|s| s.get(g))
                .filter(|s| s.len() == prefix);
            CulpritLayer {
                layer: l,
                kept_by_kv_heads: kept,
                mass: c.per_layer.get(l).copied().unwrap_or(0.0),
                kv_head: g,
                score: scores.and_then(|s| s.get(c.pos).copied()),
                rank: scores.and_then(|s| score_rank(s, c.pos)),
                cutoff_rank: heads
                    .get(g)
                    .map_or(0, |k| k.iter().filter(|&&p| p < prefix).count()),
            }
        })
        .collect();
    CulpritPart {
        pos: c.pos,
        text,
        mass: c.mass,
        per_layer,
    }
}

#[derive(Serialize)]
pub struct RescueGeneration {
    pub ids: Vec<u32>,
    pub text: String,
    pub kv_bytes: usize,
}

#[derive(Serialize)]
pub struct RescuePart {
    pub k: usize,
    /// The culprits pinned (the user's own pins stay in force as well).
    pub pins: Vec<usize>,
    pub compressed: RescueGeneration,
    pub agreement: Agreement,
}

#[derive(Serialize)]
pub struct OracleGap {
    /// Fraction of the oracle's choices (outside the window, every layer and KV head, at
    /// the same per-layer budgets) that the compressed keep set also made.
    pub kept_overlap_with_oracle: f64,
    /// The oracle's own free-running generation and its agreement with the full cache:
    /// how well the best one-shot selection of this size does on this prompt.
    pub oracle_text: String,
    pub oracle_agreement: Agreement,
}

#[derive(Serialize)]
pub struct DivergenceReport {
    #[serde(flatten)]
    pub run: Report,
    pub steps: Vec<StepPart>,
    pub chosen_step: Option<usize>,
    pub culprits: Vec<CulpritPart>,
    pub rescue: Option<RescuePart>,
    pub oracle_gap: OracleGap,
}
