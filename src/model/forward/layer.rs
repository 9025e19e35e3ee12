//! The layer body, written once for prefill and decode: what differs between them comes
//! through a [`Pass`].

use super::Model;
use crate::model::config::{Activation, Config};
use crate::model::kernels::{self, rms_norm, silu};
use crate::model::linear::Linear;
use crate::model::rope::Angles;

/// What a layer needs from the pass running it; everything else in [`layer`] is the
/// same for prefill and decode.
pub(super) trait Pass {
    /// `out = [x W_0^T | x W_1^T | ...]` for the `t` rows of `x`: the block of matrix
    /// `i` is `[t][W_i.rows]`, the blocks one after another.
    fn linear(&mut self, ws: &[&Linear], x: &[f32], out: &mut [f32]);
    /// Attention of layer `li` for the `t` rows: `q` is `[t][n_heads * head_dim]`, `k`
    /// and `v` are `[t][n_kv_heads * head_dim]` (after RoPE); writes `out` like `q`.
    fn attend(&mut self, li: usize, q: &[f32], k: &[f32], v: &[f32], out: &mut [f32]);
}

/// Buffers of the layer body for `t` rows.
pub(super) struct Scratch {
    pub(super) hn: Vec<f32>,
    pub(super) qkv: Vec<f32>,
    pub(super) attn: Vec<f32>,
    pub(super) o: Vec<f32>,
    pub(super) gu: Vec<f32>,
    pub(super) act: Vec<f32>,
    /// One row, for norms in place.
    pub(super) tmp: Vec<f32>,
    /// `[rope variant][row]`: the angles of the rows' positions.
    pub(super) angles: Vec<Vec<Angles>>,
}

impl Scratch {
    pub(super) fn new(cfg: &Config, t: usize) -> Self {
        let mut s = Scratch {
            hn: Vec::new(),
            qkv: Vec::new(),
            attn: Vec::new(),
            o: Vec::new(),
            gu: Vec::new(),
            act: Vec::new(),
            tmp: vec![0.0; cfg.d_model.max(cfg.head_dim)],
            angles: Vec::new(),
        };
        s.resize(cfg, t);
        s
    }

    pub(super) fn resize(&mut self, cfg: &Config, t: usize) {
        let (d, qd, kvd, ff) = (cfg.d_model, cfg.q_dim(), cfg.kv_dim(), cfg.d_ff);
        self.hn.resize(t * d, 0.0);
        self.qkv.resize(t * (qd + 2 * kvd), 0.0);
        self.attn.resize(t * qd, 0.0);
        self.o.resize(t * d, 0.0);
        self.gu.resize(t * 2 * ff, 0.0);
        self.act.resize(t * ff, 0.0);
    }
}

/// RMSNorm of every `w.len()`-wide row of `x` into `out`.
fn norm_rows(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    for (xr, or) in x.chunks_exact(w.len()).zip(out.chunks_exact_mut(w.len())) {
        rms_norm(xr, w, eps, or);
    }
}

/// RMSNorm of every `w.len()`-wide row of `x` in place.
fn norm_rows_in_place(x: &mut [f32], w: &[f32], eps: f32, tmp: &mut [f32]) {
    let tmp = &mut tmp[..w.len()];
    for xr in x.chunks_exact_mut(w.len()) {
        rms_norm(xr, w, eps, tmp);
        xr.copy_from_slice(tmp);
    }
}

/// Adds `b` to every `b.len()`-wide row of `x`.
fn add_rows(x: &mut [f32], b: &[f32]) {
    for xr in x.chunks_exact_mut(b.len()) {
        add_into(xr, b);
    }
}

/// GELU, tanh approximation, written as `x * sigmoid(2y)` (the identity
/// `0.5 (1 + tanh y) = sigmoid(2y)`) so it needs one `fast_exp` and no libm `tanhf`,
/// which took ~12% of Gemma 3's prefill; the loop over it vectorises.
#[inline]
fn gelu_tanh(x: f32) -> f32 {
    const C2: f32 = 2.0 * 0.797_884_6; // 2 sqrt(2 / pi)
    x / (1.0 + kernels::fast_exp(-C2 * (x + 0.044_715 * x * x * x)))
}

/// One transformer layer over the rows of `x` (positions as in `s.angles`): norm ->
/// Q, K, V (+ bias, + per-head norm) -> RoPE -> attention -> output (+ post norm) ->
/// residual -> norm -> gated MLP (+ post norm) -> residual.
pub(super) fn layer<P: Pass>(m: &Model, li: usize, pass: &mut P, x: &mut [f32], s: &mut Scratch) {
    let cfg = &m.config;
    let o = &cfg.opts;
    let lw = &m.weights.layers[li];
    let (d, hd, eps) = (cfg.d_model, cfg.head_dim, cfg.rms_eps);
    let (qd, kvd, ff) = (cfg.q_dim(), cfg.kv_dim(), cfg.d_ff);
    let t = x.len() / d;

    norm_rows(x, &lw.attn_norm, eps, &mut s.hn[..t * d]);
    let qkv = &mut s.qkv[..t * (qd + 2 * kvd)];
    pass.linear(&[&lw.wq, &lw.wk, &lw.wv], &s.hn[..t * d], qkv);
    let (q, kv) = qkv.split_at_mut(t * qd);
    let (k, v) = kv.split_at_mut(t * kvd);
    if let Some([bq, bk, bv]) = &lw.extra.qkv_bias {
        add_rows(q, bq);
        add_rows(k, bk);
        add_rows(v, bv);
    }
    if let Some(w) = &lw.extra.q_norm {
        norm_rows_in_place(q, w, eps, &mut s.tmp);
    }
    if let Some(w) = &lw.extra.k_norm {
        norm_rows_in_place(k, w, eps, &mut s.tmp);
    }
    let vi = m.ropes.of_layer[li];
    let rope = &m.ropes.variants[vi];
    let nr = o.rope_dims;
    for (r, a) in s.angles[vi].iter().take(t).enumerate() {
        for head in q[r * qd..(r + 1) * qd].chunks_exact_mut(hd) {
            rope.apply(&mut head[..nr], a);
        }
        for head in k[r * kvd..(r + 1) * kvd].chunks_exact_mut(hd) {
            rope.apply(&mut head[..nr], a);
        }
    }
    let attn = &mut s.attn[..t * qd];
    pass.attend(li, q, k, v, attn);
    let out = &mut s.o[..t * d];
    pass.linear(&[&lw.wo], attn, out);
    if let Some(w) = &lw.extra.post_attn_norm {
        norm_rows_in_place(out, w, eps, &mut s.tmp);
    }
    add_into(x, out);

    norm_rows(x, &lw.ffn_norm, eps, &mut s.hn[..t * d]);
    let gu = &mut s.gu[..t * 2 * ff];
    pass.linear(&[&lw.gate, &lw.up], &s.hn[..t * d], gu);
    let (g, u) = gu.split_at(t * ff);
    let act = &mut s.act[..t * ff];
    match o.activation {
        Activation::Silu => {
            for ((a, &g), &u) in act.iter_mut().zip(g).zip(u) {
                *a = silu(g) * u;
            }
        }
        Activation::GeluTanh => {
            for ((a, &g), &u) in act.iter_mut().zip(g).zip(u) {
                *a = gelu_tanh(g) * u;
            }
        }
    }
    pass.linear(&[&lw.down], act, out);
    if let Some(w) = &lw.extra.post_ffn_norm {
        norm_rows_in_place(out, w, eps, &mut s.tmp);
    }
    add_into(x, out);
}

/// First key position a query at `pos` attends to in a layer with `window`.
#[inline]
pub(super) fn first_visible(pos: usize, window: Option<usize>) -> usize {
    window.map_or(0, |w| (pos + 1).saturating_sub(w))
}

pub(super) fn add_into(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sigmoid form of GELU-tanh equals the textbook tanh form (with libm) to f32
    /// rounding over the range activations take, and saturates without NaN.
    #[test]
    fn gelu_tanh_matches_the_tanh_form() {
        let reference = |x: f32| {
            let x = x as f64;
            0.5 * x * (1.0 + (0.797_884_560_802_865_4 * (x + 0.044_715 * x * x * x)).tanh())
        };
        let mut x = -30.0f32;
        while x < 30.0 {
            let (a, b) = (gelu_tanh(x) as f64, reference(x));
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "gelu({x}): {a} vs {b}"
            );
            x += 0.0071;
        }
        assert_eq!(gelu_tanh(-1e4), 0.0);
        assert_eq!(gelu_tanh(1e4), 1e4);
        assert_eq!(gelu_tanh(0.0), 0.0);
    }
}
