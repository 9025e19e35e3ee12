//! Hand-made and random Traces for the eviction tests (no model involved).

use crate::profile_format::{Fingerprint, Profile, Provenance, FORMAT_VERSION};
use crate::trace::{Dims, LayerTrace, Trace, W_MAX};

/// One-layer trace whose attention is easy to work out by hand: KV head `g`'s key at
/// position `j` is `ln(ratios[g][j]) / sqrt(head_dim)` in every dimension, and every
/// query row of head `h` is `q[h]` in every dimension. So head `h`'s logit on key `j` is
/// `q[h] * ln(ratios[g][j])`: with `q = 1` attention is proportional to the ratios, with
/// `q = 0` it is uniform. Column sums are zero.
pub fn ratio_trace(ratios: &[&[f32]], q: &[f32]) -> Trace {
    ratio_trace_dim(ratios, q, 1)
}

pub fn ratio_trace_dim(ratios: &[&[f32]], q: &[f32], head_dim: usize) -> Trace {
    let len = ratios[0].len();
    let dims = Dims {
        n_layers: 1,
        n_heads: q.len(),
        n_kv_heads: ratios.len(),
        head_dim,
    };
    let norm = (head_dim as f32).sqrt();
    let k: Vec<f32> = ratios
        .iter()
        .flat_map(|r| r.iter())
        .flat_map(|&a| std::iter::repeat_n(a.ln() / norm, head_dim))
        .collect();
    let w_max = len.min(W_MAX);
    let q_last: Vec<f32> = q
        .iter()
        .flat_map(|&x| std::iter::repeat_n(x, w_max * head_dim))
        .collect();
    let layer = LayerTrace {
        v: vec![0.0; k.len()],
        k,
        q_last,
        col_sums: vec![0.0; dims.n_heads * len],
        maps: Vec::new(),
    };
    Trace {
        dims,
        len,
        w_max,
        ids: vec![0; len],
        layers: vec![layer],
        last_logits: Vec::new(),
        windows: Vec::new(),
    }
}

/// A one-layer trace with the given per-query-head column sums and nothing else.
pub fn col_sum_trace(n_kv: usize, col_sums: &[&[f32]]) -> Trace {
    let len = col_sums[0].len();
    let ones = vec![1.0f32; len];
    let ratios: Vec<&[f32]> = vec![&ones; n_kv];
    let mut t = ratio_trace(&ratios, &vec![0.0; col_sums.len()]);
    t.layers[0].col_sums = col_sums.iter().flat_map(|c| c.iter().copied()).collect();
    t
}

/// Deterministic pseudo-random numbers in [0, 1) (splitmix64), so a proptest seed
/// fixes the whole trace.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_f32(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32
    }
}

pub fn random_trace(dims: Dims, len: usize, seed: u64) -> Trace {
    let mut rng = Rng::new(seed);
    let w_max = len.min(W_MAX);
    let mut vals = |n: usize, scale: f32| -> Vec<f32> {
        (0..n)
            .map(|_| (rng.next_f32() * 2.0 - 1.0) * scale)
            .collect()
    };
    let layers = (0..dims.n_layers)
        .map(|_| LayerTrace {
            k: vals(dims.n_kv_heads * len * dims.head_dim, 3.0),
            v: vals(dims.n_kv_heads * len * dims.head_dim, 1.0),
            q_last: vals(dims.n_heads * w_max * dims.head_dim, 3.0),
            // Coarse values so ties happen.
            col_sums: vals(dims.n_heads * len, 2.0)
                .into_iter()
                .map(|x| x.abs().round())
                .collect(),
            maps: Vec::new(),
        })
        .collect();
    Trace {
        dims,
        len,
        w_max,
        ids: vec![0; len],
        layers,
        last_logits: Vec::new(),
        windows: Vec::new(),
    }
}

/// A valid profile for `dims` with random scores and layer errors.
pub fn random_profile(dims: Dims, seed: u64) -> Profile {
    let mut rng = Rng::new(seed);
    let srh_scores: Vec<Vec<f64>> = (0..dims.n_layers)
        .map(|_| (0..dims.n_heads).map(|_| rng.next_f32() as f64).collect())
        .collect();
    let retrieval_scores = srh_scores.clone();
    let raw: Vec<f64> = (0..dims.n_layers)
        .map(|_| rng.next_f32() as f64 + 0.01)
        .collect();
    Profile {
        format_version: FORMAT_VERSION,
        model: Fingerprint {
            arch: "llama".into(),
            n_layers: dims.n_layers,
            n_heads: dims.n_heads,
            n_kv_heads: dims.n_kv_heads,
            head_dim: dims.head_dim,
            sha256: "0".repeat(64),
        },
        srh_ranking: srh_scores
            .iter()
            .map(|s| crate::profile_format::rank_best_first(s))
            .collect(),
        srh_scores,
        retrieval_scores,
        layer_errors: crate::profile_format::l1_normalise(&raw),
        provenance: Provenance {
            command: "test".into(),
            settings: serde_json::Value::Null,
            trials_counted: 1,
            kvscope_version: env!("CARGO_PKG_VERSION").into(),
        },
    }
}

/// The oracle's future attention for a prompt of `len` tokens with random (coarse, so
/// ties happen) sums.
pub fn random_future(dims: Dims, len: usize, seed: u64) -> super::types::FutureAttention {
    let mut rng = Rng::new(seed);
    let sums = (0..dims.n_layers)
        .map(|_| {
            (0..dims.n_kv_heads)
                .map(|_| (0..len).map(|_| (rng.next_f32() * 4.0).round()).collect())
                .collect()
        })
        .collect();
    super::types::FutureAttention {
        len,
        steps: 1,
        sums,
    }
}

/// `n_layers` layers of `n_heads` query heads over `n_kv_heads` KV heads of `head_dim`.
pub fn dims(n_layers: usize, n_heads: usize, n_kv_heads: usize, head_dim: usize) -> Dims {
    Dims {
        n_layers,
        n_heads,
        n_kv_heads,
        head_dim,
    }
}
