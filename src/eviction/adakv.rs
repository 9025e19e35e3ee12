//! adakv (Ada-SnapKV): snapkv's per-KV-head scores, but the layer's `n_kv * (B - w)`
//! slots go to the best scores pooled across its KV heads, so a head whose attention is
//! concentrated keeps more tokens and a diffuse one fewer. Each KV head keeps at least a
//! floor of `floor(adakv_floor * (B - w))` tokens (plus the window).
//!
//! Choices where METHOD.md is silent:
//! - The floor rounds down (the reference's `int(...)`), computed from the fraction as
//!   the user wrote it in decimal so `0.7 * 10` is 7, not 6.
//! - Filling first gives every head its own top `floor`, then the remaining slots go to
//!   the best remaining scores of any head. Equal scores go to the lower position, then
//!   the lower KV head.

use super::layer::{per_layer, with_window};
use super::scores::{rank_order, top_k, KERNEL, POOLING};
use super::snapkv;
use super::types::field;
use super::types::{
    Allocator, Input, Keeps, Knob, KnobKind, KnobValue, LayerChoice, Method, MethodDef, Picked,
    Scorer, Settings,
};
use anyhow::Result;

/// Registry entry.
pub const DEF: MethodDef = MethodDef::new(
    "adakv",
    "snapkv's score; a layer's budget flows to the KV heads that need it",
    Allocator::Uniform,
    pick,
)
.with_knobs(&[&KERNEL, &POOLING, &FLOOR])
.keeping(Keeps::LayerTotal);

/// This method's handle.
pub const METHOD: Method = Method::of(&DEF);

/// `adakv_floor`: the fraction of its even share every KV head keeps at least.
pub const FLOOR: Knob = Knob::new(
    "adakv_floor",
    "adakv-floor",
    "AdaKV: fraction of its even share every KV head keeps at least.",
    KnobKind::Float {
        min: 0.0,
        max: 1.0,
        open_min: false,
    },
    |_| KnobValue::Float(0.2),
    field!(adakv_floor),
)
.stepping(0.05);

fn pick(i: &Input) -> Result<Picked> {
    Ok(wrap(i, snapkv::scorer))
}

/// adakv's allocation over any [`Scorer`]: each evicting layer's `n_kv * (B - w)` slots
/// go to the best of `scorer`'s scores pooled across its KV heads.
pub fn wrap(i: &Input, scorer: Scorer) -> Picked {
    per_layer(i, |layer, b| {
        choose(scorer(i, layer), b, i.trace.len, i.settings)
    })
}

/// The layer's choice from its `[kv_head][pos]` scores at budget `budget`.
fn choose(scores: Vec<Vec<f32>>, budget: usize, len: usize, settings: &Settings) -> LayerChoice {
    let chosen = allocate(&scores, budget - settings.window, settings.adakv_floor);
    let keep = chosen
        .into_iter()
        .map(|c| with_window(c, len, settings.window))
        .collect();
    LayerChoice { keep, scores }
}

/// Chooses `scores.len() * per_head` positions in all from `[kv_head][pos]` scores, at
/// least `floor(floor_frac * per_head)` per head. Returns each head's chosen positions,
/// sorted ascending. Needs `per_head <= positions per head`.
pub fn allocate(scores: &[Vec<f32>], per_head: usize, floor_frac: f32) -> Vec<Vec<usize>> {
    let floor = floor_tokens(per_head, floor_frac);
    let mut chosen: Vec<Vec<usize>> = scores.iter().map(|s| top_k(s, floor)).collect();

    // Every (head, position) not yet chosen competes for the remaining slots.
    let mut rest: Vec<(usize, usize)> = Vec::new();
    for (g, s) in scores.iter().enumerate() {
        let mut taken = vec![false; s.len()];
        chosen[g].iter().for_each(|&p| taken[p] = true);
        rest.extend((0..s.len()).filter(|&p| !taken[p]).map(|p| (g, p)));
    }
    let extra = (scores.len() * (per_head - floor)).min(rest.len());
    let order = |&(ga, pa): &(usize, usize), &(gb, pb): &(usize, usize)| {
        rank_order(scores[ga][pa], pa, scores[gb][pb], pb).then(ga.cmp(&gb))
    };
    if extra < rest.len() {
        rest.select_nth_unstable_by(extra, order);
    }
    for &(g, p) in &rest[..extra] {
        chosen[g].push(p);
    }
    chosen.iter_mut().for_each(|c| c.sort_unstable());
    chosen
}

/// `floor(frac * per_head)`. The fraction is an f32 the user typed as a decimal;
/// widening it as is would turn 0.7 into 0.69999998 and floor 0.7 * 10 to 6, so it is
/// widened through its shortest decimal form instead.
fn floor_tokens(per_head: usize, frac: f32) -> usize {
    let frac: f64 = frac.to_string().parse().unwrap_or(f64::from(frac));
    ((per_head as f64 * frac).floor() as usize).min(per_head)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::{select, Request};
    use super::*;

    const SCORES: [[f32; 4]; 2] = [[0.9, 0.8, 0.7, 0.6], [0.1, 0.05, 0.2, 0.0]];

    fn scores() -> Vec<Vec<f32>> {
        SCORES.iter().map(|s| s.to_vec()).collect()
    }

    #[test]
    fn concentrated_head_takes_the_slots_without_a_floor() {
        // 2 per head, 4 in all, floor(0.2 * 2) = 0: head 0's four scores beat all of
        // head 1's.
        assert_eq!(allocate(&scores(), 2, 0.2), vec![vec![0, 1, 2, 3], vec![]]);
    }

    #[test]
    fn floor_guarantees_each_head_some() {
        // floor(0.5 * 2) = 1: head 1 keeps its best (position 2); head 0 its best (0)
        // and then the two remaining slots go to 0.8 and 0.7.
        assert_eq!(allocate(&scores(), 2, 0.5), vec![vec![0, 1, 2], vec![2]]);
        // Floor 1.0 is snapkv: each head its own top 2.
        assert_eq!(allocate(&scores(), 2, 1.0), vec![vec![0, 1], vec![0, 2]]);
    }

    #[test]
    fn floor_rounds_down_from_the_decimal() {
        assert_eq!(floor_tokens(2, 0.2), 0);
        assert_eq!(floor_tokens(10, 0.2), 2);
        assert_eq!(floor_tokens(10, 0.7), 7);
        assert_eq!(floor_tokens(8000, 0.7), 5600);
        assert_eq!(floor_tokens(9, 0.5), 4);
        assert_eq!(floor_tokens(9, 1.0), 9);
        assert_eq!(floor_tokens(0, 0.5), 0);
    }

    #[test]
    fn ties_go_to_lower_position_then_lower_head() {
        let s = vec![vec![1.0, 0.0, 1.0], vec![1.0, 1.0, 0.0]];
        // 1 per head, floor 0: two slots among four 1.0s at (0,0),(0,2),(1,0),(1,1):
        // lowest positions first -> (0,0) and (1,0).
        assert_eq!(allocate(&s, 1, 0.0), vec![vec![0], vec![0]]);
        let s = vec![vec![0.0, 1.0, 1.0], vec![0.0, 1.0, 0.0]];
        // Two slots among three 1.0s: (0,1) and (1,1) at position 1 beat (0,2).
        assert_eq!(allocate(&s, 1, 0.0), vec![vec![1], vec![1]]);
    }

    #[test]
    fn layer_total_is_kept_through_select() {
        let dims = dims(2, 4, 2, 4);
        let t = random_trace(dims, 30, 3);
        let s = Settings {
            method: crate::eviction::adakv::METHOD,
            budget: 12,
            window: 4,
            adakv_floor: 0.5,
            kernel: 3,
            ..Settings::default()
        };
        let sel = select(&Request::new(&t, &s)).unwrap();
        assert_eq!(sel.keep.kept_per_layer(), vec![24, 24]);
        for heads in &sel.keep.positions {
            // At least the window plus floor(0.5 * 8) = 4 each.
            assert!(heads.iter().all(|h| h.len() >= 8));
        }
    }
}
