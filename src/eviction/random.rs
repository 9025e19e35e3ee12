//! random (kvpress `RandomPress`): every prefix position gets a pseudo-random score from
//! the seed; each KV head keeps its top `B_l - w` plus the window. The floor every method
//! must beat. A position's score depends only on (seed, layer, KV head, position), so the
//! same seed gives the same choice on every run and nested choices as the budget grows.

use super::layer::{per_head_top, per_layer};
use super::types::field;
use super::types::{
    Allocator, Input, Knob, KnobKind, KnobValue, LayerChoice, Method, MethodDef, Picked,
};
use crate::trace::Trace;
use anyhow::Result;

/// Registry entry.
pub const DEF: MethodDef = MethodDef::new(
    "random",
    "seeded random scores per KV head (the floor every method must beat)",
    Allocator::Uniform,
    pick,
)
.with_knobs(&[&SEED]);

/// This method's handle.
pub const METHOD: Method = Method::of(&DEF);

/// `random_seed`.
pub const SEED: Knob = Knob::new(
    "random_seed",
    "random-seed",
    "random: seed of the scores.",
    KnobKind::Int {
        min: 0,
        max: i64::MAX,
    },
    |_| KnobValue::Int(0),
    field!(random_seed),
);

fn pick(i: &Input) -> Result<Picked> {
    let seed = SEED.f64(i.settings) as u64;
    Ok(per_layer(i, |layer, b| {
        select_layer(i.trace, layer, b, i.settings.window, seed)
    }))
}

/// One layer that evicts (`L > budget`).
pub fn select_layer(
    trace: &Trace,
    layer: usize,
    budget: usize,
    window: usize,
    seed: u64,
) -> LayerChoice {
    let prefix = trace.len - window;
    let scores = (0..trace.dims.n_kv_heads)
        .map(|g| (0..prefix).map(|j| score(seed, layer, g, j)).collect())
        .collect();
    per_head_top(scores, trace.len, budget, window)
}

/// A uniform number in [0, 1) from (seed, layer, KV head, position): splitmix64's
/// finaliser over a mix of the four.
pub fn score(seed: u64, layer: usize, kv_head: usize, pos: usize) -> f32 {
    let mut z = seed
        ^ (layer as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ (kv_head as u64).wrapping_mul(0xc2b2_ae3d_27d4_eb4f)
        ^ (pos as u64).wrapping_mul(0x1656_67b1_9e37_79f9);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    // 24 random bits: exactly representable in f32.
    (z >> 40) as f32 / (1u64 << 24) as f32
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    fn trace() -> Trace {
        let dims = dims(2, 4, 2, 4);
        random_trace(dims, 200, 3)
    }

    #[test]
    fn same_seed_same_choice_other_seed_other_choice() {
        let t = trace();
        let a = select_layer(&t, 1, 40, 4, 7);
        assert_eq!(a, select_layer(&t, 1, 40, 4, 7));
        assert_ne!(a.keep, select_layer(&t, 1, 40, 4, 8).keep);
        // KV heads and layers draw differently.
        assert_ne!(a.keep[0], a.keep[1]);
        assert_ne!(a.keep, select_layer(&t, 0, 40, 4, 7).keep);
    }

    #[test]
    fn scores_look_uniform() {
        let n = 20_000;
        let xs: Vec<f32> = (0..n).map(|p| score(1, 0, 0, p)).collect();
        assert!(xs.iter().all(|&x| (0.0..1.0).contains(&x)));
        let mean = xs.iter().map(|&x| f64::from(x)).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
        let low = xs.iter().filter(|&&x| x < 0.25).count() as f64 / n as f64;
        assert!((low - 0.25).abs() < 0.02, "quartile {low}");
    }

    #[test]
    fn larger_budget_keeps_a_superset() {
        let t = trace();
        let small = select_layer(&t, 0, 20, 4, 5);
        let big = select_layer(&t, 0, 60, 4, 5);
        for (s, b) in small.keep.iter().zip(&big.keep) {
            assert!(s.iter().all(|p| b.contains(p)));
        }
    }
}
