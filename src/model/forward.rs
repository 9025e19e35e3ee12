//! The forward pass of a GQA transformer: a chunked prefill that records a [`Trace`], and
//! greedy decoding over a cache that physically holds only the kept prompt entries.
//!
//! The layer body ([`layer`]) is written once, against the architecture facts in
//! [`Config`]; prefill and decode run it through a [`Pass`], which supplies the only two
//! things that differ between them: how a linear layer multiplies (batched GEMM over a
//! chunk of rows, or a matrix-vector product shared by the decode team) and how
//! attention reads the keys (the prompt so far, recording the Trace, or the kept cache).

use anyhow::{bail, Result};
use rayon::prelude::*;

use super::config::Activation;
use super::config::Config;
use super::kernels::{self, matmul_ab, matmul_abt, rms_norm, silu, QVec};
use super::kvcache::{combine, HeadCache, KvDtype, Partial, TILE};
use super::rope::{Angles, Ropes};
use super::team::{self, Member, Shared};
use super::weights::{Linear, Weights};
use crate::keepset::KeepSet;
use crate::trace::{BlockMap, Dims, LayerTrace, Trace, W_MAX};

/// Which weights the decode path multiplies with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// 8-bit weights and activations and an f16 KV cache (fast, as llama.cpp does for
    /// 4-bit models).
    Q8,
    /// f32 weights and an f32 KV cache (the numbers prefill uses, to float rounding; for
    /// tests and checks).
    F32,
}

pub struct Model {
    pub config: Config,
    pub weights: Weights,
    pub ropes: Ropes,
    pub precision: Precision,
}

impl Model {
    pub fn new(config: Config, weights: Weights) -> Result<Self> {
        config.validate()?;
        let ropes = Ropes::new(&config, weights.rope_freqs.as_deref());
        Ok(Model {
            config,
            weights,
            ropes,
            precision: Precision::Q8,
        })
    }

    pub fn dims(&self) -> Dims {
        self.config.dims()
    }

    /// The token embeddings of `ids`, one row each, scaled as the architecture says.
    fn embed(&self, ids: &[u32], x: &mut [f32]) {
        let d = self.config.d_model;
        let scale = self.config.opts.embed_scale;
        for (row, &id) in x.chunks_exact_mut(d).zip(ids) {
            self.weights.embed.row_into(id as usize, row);
            if scale != 1.0 {
                for v in row.iter_mut() {
                    *v *= scale;
                }
            }
        }
    }

    /// The RoPE angles of positions `pos0..pos0 + t`, `[variant][row]`.
    fn angles(&self, pos0: usize, t: usize, out: &mut Vec<Vec<Angles>>) {
        let nv = self.ropes.variants.len();
        out.resize_with(nv, Vec::new);
        for (r, rows) in self.ropes.variants.iter().zip(out.iter_mut()) {
            rows.resize_with(t, Angles::default);
            for (i, a) in rows.iter_mut().enumerate() {
                r.angles(pos0 + i, a);
            }
        }
    }

    /// Runs the prompt through the model with the full cache, `chunk` tokens at a time,
    /// and records the Trace. `progress(done, total)` is called once with `done = 0`,
    /// after every layer of a chunk with the chunk's tokens counted in proportion to the
    /// layers done (a 512-token chunk of an 8B model takes minutes on two cores, so a
    /// per-chunk report would leave the user without a progress bar or ETA), and with
    /// `done = total` exactly once, at the end.
    pub fn prefill(
        &self,
        ids: &[u32],
        chunk: usize,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Trace> {
        let cfg = &self.config;
        let len = ids.len();
        if len == 0 {
            bail!("the prompt is empty");
        }
        if len > cfg.context_length {
            bail!(
                "the prompt has {len} tokens but the model's context is {} tokens; shorten the prompt",
                cfg.context_length
            );
        }
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= cfg.vocab_size) {
            bail!(
                "token id {bad} is outside the vocabulary ({} tokens)",
                cfg.vocab_size
            );
        }
        let chunk = chunk.max(1);
        let (d, hd, nh, nkv) = (cfg.d_model, cfg.head_dim, cfg.n_heads, cfg.n_kv_heads);
        let w_max = W_MAX.min(len);
        let (bs, nb) = BlockMap::geometry(len);

        let mut layers: Vec<LayerTrace> = (0..cfg.n_layers)
            .map(|_| LayerTrace {
                k: vec![0.0; nkv * len * hd],
                v: vec![0.0; nkv * len * hd],
                q_last: vec![0.0; nh * w_max * hd],
                col_sums: vec![0.0; nh * len],
                maps: Vec::new(),
            })
            .collect();
        // Block sums in f64 so that chunking changes them only by f32 rounding of inputs.
        let mut block_sums: Vec<Vec<f64>> = vec![vec![0.0; nh * nb * nb]; cfg.n_layers];
        let mut last_hidden = vec![0.0f32; d];
        let mut scratch = Scratch::new(cfg, chunk.min(len));

        let mut c0 = 0;
        progress(0, len);
        while c0 < len {
            let c1 = (c0 + chunk).min(len);
            let t = c1 - c0;
            let mut x = vec![0.0f32; t * d];
            self.embed(&ids[c0..c1], &mut x);
            scratch.resize(cfg, t);
            self.angles(c0, t, &mut scratch.angles);
            let mut pass = PrefillPass {
                model: self,
                layers: &mut layers,
                block_sums: &mut block_sums,
                c0,
                len,
                w_max,
                bs,
                nb,
            };
            for li in 0..cfg.n_layers {
                layer(self, li, &mut pass, &mut x, &mut scratch);
                if li + 1 < cfg.n_layers {
                    progress(c0 + t * (li + 1) / cfg.n_layers, len);
                }
            }
            if c1 == len {
                last_hidden.copy_from_slice(&x[(t - 1) * d..]);
            }
            c0 = c1;
            progress(c0, len);
        }

        // By value: each layer's f64 sums are freed as soon as its maps exist (peak memory).
        for (lt, bsum) in layers.iter_mut().zip(block_sums) {
            lt.maps = (0..nh)
                .map(|h| {
                    let mut map = BlockMap {
                        len,
                        block_size: bs,
                        blocks: nb,
                        mean: vec![0.0; nb * nb],
                    };
                    for qb in 0..nb {
                        for kb in 0..nb {
                            let n = (map.block_span(qb).len() * map.block_span(kb).len()) as f64;
                            map.mean[qb * nb + kb] = (bsum[h * nb * nb + qb * nb + kb] / n) as f32;
                        }
                    }
                    map
                })
                .collect();
        }
        let last_logits = self.logits_f32(&last_hidden);
        Ok(Trace {
            dims: self.dims(),
            len,
            w_max,
            ids: ids.to_vec(),
            layers,
            last_logits,
            windows: cfg.windows(),
        })
    }

    fn logits_f32(&self, hidden: &[f32]) -> Vec<f32> {
        let mut hn = vec![0.0; hidden.len()];
        rms_norm(hidden, &self.weights.out_norm, self.config.rms_eps, &mut hn);
        let head = self.weights.lm_head();
        let mut out = vec![0.0; head.rows];
        match self.precision {
            Precision::Q8 => head.matvec_q8(&hn, &mut out),
            Precision::F32 => head.matvec(&hn, &mut out),
        }
        self.softcap(&mut out);
        out
    }

    /// Final logit soft-capping, where the architecture has it.
    fn softcap(&self, logits: &mut [f32]) {
        if let Some(c) = self.config.opts.final_softcap {
            for v in logits.iter_mut() {
                *v = c * (*v / c).tanh();
            }
        }
    }

    /// Greedy decoding over the kept prompt entries. The first token comes from the
    /// prefill logits (eviction happens after prefill); generation stops after
    /// `max_new` tokens or at a stop id (which is included).
    pub fn generate(
        &self,
        trace: &Trace,
        keep: &KeepSet,
        max_new: usize,
        stop_ids: &[u32],
        mut capture: Option<&mut Vec<StepAttention>>,
    ) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(max_new);
        if max_new == 0 {
            return Ok(out);
        }
        let mut tok = kernels::argmax(&trace.last_logits) as u32;
        out.push(tok);
        let mut state = DecodeState::new(self, trace, keep, max_new)?;
        while out.len() < max_new && !stop_ids.contains(&tok) {
            let logits = state.step(tok, capture.as_deref_mut())?;
            tok = kernels::argmax(logits) as u32;
            out.push(tok);
        }
        Ok(out)
    }
}

/// What a layer needs from the pass running it; everything else in [`layer`] is the
/// same for prefill and decode.
trait Pass {
    /// `out = [x W_0^T | x W_1^T | ...]` for the `t` rows of `x`: the block of matrix
    /// `i` is `[t][W_i.rows]`, the blocks one after another.
    fn linear(&mut self, ws: &[&Linear], x: &[f32], out: &mut [f32]);
    /// Attention of layer `li` for the `t` rows: `q` is `[t][n_heads * head_dim]`, `k`
    /// and `v` are `[t][n_kv_heads * head_dim]` (after RoPE); writes `out` like `q`.
    fn attend(&mut self, li: usize, q: &[f32], k: &[f32], v: &[f32], out: &mut [f32]);
}

/// Buffers of the layer body for `t` rows.
struct Scratch {
    hn: Vec<f32>,
    qkv: Vec<f32>,
    attn: Vec<f32>,
    o: Vec<f32>,
    gu: Vec<f32>,
    act: Vec<f32>,
    /// One row, for norms in place.
    tmp: Vec<f32>,
    /// `[rope variant][row]`: the angles of the rows' positions.
    angles: Vec<Vec<Angles>>,
}

impl Scratch {
    fn new(cfg: &Config, t: usize) -> Self {
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

    fn resize(&mut self, cfg: &Config, t: usize) {
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
fn layer<P: Pass>(m: &Model, li: usize, pass: &mut P, x: &mut [f32], s: &mut Scratch) {
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
fn first_visible(pos: usize, window: Option<usize>) -> usize {
    window.map_or(0, |w| (pos + 1).saturating_sub(w))
}

/// Prefill of one chunk: batched GEMMs, attention over the prompt so far, Trace capture.
struct PrefillPass<'a> {
    model: &'a Model,
    layers: &'a mut [LayerTrace],
    block_sums: &'a mut [Vec<f64>],
    c0: usize,
    len: usize,
    w_max: usize,
    bs: usize,
    nb: usize,
}

impl Pass for PrefillPass<'_> {
    fn linear(&mut self, ws: &[&Linear], x: &[f32], out: &mut [f32]) {
        // In Precision::Q8 the K-quant matrices multiply 8-bit (Q8_K) activations,
        // quantised once for all of `ws` (they share the input), as decode and llama.cpp
        // do; F32 keeps the f32 GEMM on dequantised panels (the exact reference).
        let int8 = self.model.precision == Precision::Q8;
        // Only the K-quants: their integer sums run over 256 values per float step and
        // beat the f32 GEMM (benches/matmul.rs, one thread, 1024 x 2048 x 64: Q4_K 4.5
        // vs 4.9 ms, Q6_K 4.2 vs 5.4 ms); the 32-value formats (Q4_0, Q4_1, Q5_0, Q8_0)
        // need a float step every 32 values and stay faster in f32 (Q5_0 9.3 vs 7.6 ms).
        let kinds: Vec<Option<bool>> = ws.iter().map(|w| w.q8_kind().filter(|&k| k)).collect();
        let qs = if int8 && kinds.iter().any(Option::is_some) {
            let cols = ws[0].cols;
            let (k, b32) = (kinds.contains(&Some(true)), kinds.contains(&Some(false)));
            x.par_chunks(cols)
                .map(|r| {
                    let mut q = QVec::default();
                    if b32 {
                        q.quantize_into(r);
                    }
                    if k {
                        q.quantize_k_into(r);
                    }
                    q
                })
                .collect()
        } else {
            Vec::new()
        };
        let mut off = 0;
        for (w, kind) in ws.iter().zip(&kinds) {
            let t = x.len() / w.cols;
            if int8 && kind.is_some() {
                w.matmul_q8(&qs, &mut out[off..off + t * w.rows]);
            } else {
                w.matmul(x, t, &mut out[off..off + t * w.rows]);
            }
            off += t * w.rows;
        }
    }

    fn attend(&mut self, li: usize, q: &[f32], k: &[f32], v: &[f32], out: &mut [f32]) {
        let cfg = &self.model.config;
        let (hd, nh, nkv) = (cfg.head_dim, cfg.n_heads, cfg.n_kv_heads);
        let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
        let n_rep = nh / nkv;
        let (c0, len, w_max, bs, nb) = (self.c0, self.len, self.w_max, self.bs, self.nb);
        let t = q.len() / qd;
        let scale = cfg.opts.attn_scale;
        let window = cfg.layers[li].window;
        let lt = &mut self.layers[li];
        for r in 0..t {
            let pos = c0 + r;
            for kvh in 0..nkv {
                let src = r * kvd + kvh * hd;
                let dst = (kvh * len + pos) * hd;
                lt.k[dst..dst + hd].copy_from_slice(&k[src..src + hd]);
                lt.v[dst..dst + hd].copy_from_slice(&v[src..src + hd]);
            }
            if pos >= len - w_max {
                let row = pos - (len - w_max);
                for h in 0..nh {
                    let dst = (h * w_max + row) * hd;
                    lt.q_last[dst..dst + hd]
                        .copy_from_slice(&q[r * qd + h * hd..r * qd + (h + 1) * hd]);
                }
            }
        }
        // One task per query head; each owns its column sums, block sums and output
        // block, so heads never contend.
        let nk = c0 + t;
        // A sliding layer's rows see no key before the chunk's first row's window, so
        // the products start there: at 2K tokens with a 512 window this skips ~30% of
        // the attention work of such a layer (all keys [k0, nk) in chunk-local columns).
        let k0 = first_visible(c0, window);
        let w = nk - k0;
        let (kc, vc) = (&lt.k, &lt.v);
        let mut head_out = vec![0.0f32; nh * t * hd];
        lt.col_sums
            .par_chunks_mut(len)
            .zip(self.block_sums[li].par_chunks_mut(nb * nb))
            .zip(head_out.par_chunks_mut(t * hd))
            .enumerate()
            .for_each_init(Vec::new, |s: &mut Vec<f32>, (h, ((cs, bsum), out))| {
                let kvh = h / n_rep;
                let kh = &kc[(kvh * len + k0) * hd..(kvh * len + nk) * hd];
                let vh = &vc[(kvh * len + k0) * hd..(kvh * len + nk) * hd];
                s.resize(t * w, 0.0);
                matmul_abt(&q[h * hd..], qd, kh, hd, s, w, t, hd, w);
                for r in 0..t {
                    let pos = c0 + r;
                    let lo = first_visible(pos, window);
                    let row = &mut s[r * w..(r + 1) * w];
                    let (llo, lpos) = (lo - k0, pos - k0);
                    let live = &mut row[llo..lpos + 1];
                    for v in live.iter_mut() {
                        *v *= scale;
                    }
                    kernels::softmax(live);
                    row[..llo].fill(0.0);
                    row[lpos + 1..].fill(0.0);
                    for (c, &p) in cs[lo..=pos].iter_mut().zip(&row[llo..=lpos]) {
                        *c += p;
                    }
                    let qb = pos / bs;
                    for kb in lo / bs..=pos / bs {
                        let (a, b) = ((kb * bs).max(lo), ((kb + 1) * bs).min(pos + 1));
                        bsum[qb * nb + kb] +=
                            row[a - k0..b - k0].iter().map(|&p| p as f64).sum::<f64>();
                    }
                }
                matmul_ab(s, w, vh, hd, out, hd, t, w, hd);
            });
        for h in 0..nh {
            for r in 0..t {
                out[r * qd + h * hd..r * qd + (h + 1) * hd]
                    .copy_from_slice(&head_out[(h * t + r) * hd..(h * t + r + 1) * hd]);
            }
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
type ShadowMasks = Vec<Vec<Vec<bool>>>;

/// Rows per unit of shared work in a decode matrix-vector product: big enough that
/// taking a unit (one atomic add) is rare, small enough to even out the threads.
const MV_ROWS: usize = 64;
/// The output matrix has ~50k rows; larger units for it.
const HEAD_ROWS: usize = 512;

/// A decoding session over a (possibly compressed) cache. A clone is an independent
/// copy of the cache at this step (the divergence analysis forks the teacher-forced
/// decode off the free-running one where their inputs first differ).
#[derive(Clone)]
pub struct DecodeState<'m> {
    model: &'m Model,
    /// `[layer][kv_head]`
    pub cache: Vec<Vec<HeadCache>>,
    pub pos: usize,
    /// Prompt length of the trace this cache was built from.
    pub prompt_len: usize,
    logits: Vec<f32>,
}

impl Model {
    /// How the decode cache stores K and V: f16 on the fast path (as llama.cpp does),
    /// f32 when decoding must match prefill to float rounding.
    pub fn kv_dtype(&self) -> KvDtype {
        match self.precision {
            Precision::Q8 => KvDtype::F16,
            Precision::F32 => KvDtype::F32,
        }
    }
}

impl<'m> DecodeState<'m> {
    /// Builds a cache holding exactly the kept entries of `trace`, with room for `extra`
    /// generated tokens.
    pub fn new(model: &'m Model, trace: &Trace, keep: &KeepSet, extra: usize) -> Result<Self> {
        let dims = model.dims();
        if trace.dims != dims {
            bail!(
                "the trace was recorded with another model ({:?} vs {:?})",
                trace.dims,
                dims
            );
        }
        keep.validate(&dims, trace.len)?;
        if trace.len.saturating_add(extra) > model.config.context_length {
            bail!(
                "prompt ({}) + new tokens ({extra}) exceed the model's context of {} tokens; lower --max-new",
                trace.len,
                model.config.context_length
            );
        }
        let hd = dims.head_dim;
        let dtype = model.kv_dtype();
        let cache = keep
            .positions
            .iter()
            .enumerate()
            .map(|(l, heads)| {
                heads
                    .iter()
                    .enumerate()
                    .map(|(g, pos)| {
                        let mut hc = HeadCache::with_capacity(pos.len() + extra, hd, dtype);
                        for &p in pos {
                            hc.push(p, trace.key(l, g, p), trace.value(l, g, p))?;
                        }
                        Ok(hc)
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(DecodeState {
            model,
            cache,
            pos: trace.len,
            prompt_len: trace.len,
            logits: Vec::new(),
        })
    }

    /// Cache entries held now, summed over layers and KV heads.
    pub fn entries(&self) -> usize {
        self.cache.iter().flatten().map(|h| h.positions.len()).sum()
    }

    /// Bytes of K and V the cache physically holds now (entries at the storage type).
    pub fn kv_bytes(&self) -> usize {
        self.cache.iter().flatten().map(|h| h.bytes()).sum()
    }

    /// Feeds one token at the next position; returns the logits for the token after it.
    pub fn step(&mut self, token: u32, capture: Option<&mut Vec<StepAttention>>) -> Result<&[f32]> {
        self.step_inner(token, capture, None)
    }

    /// Like [`step`](Self::step) on a full cache, and also measures, per layer, how far
    /// the attention output (after the output projection) would move if the layer
    /// attended only to the prompt entries `shadow` keeps (plus all generated tokens):
    /// `||o_kept - o_full|| / (||o_full|| + 1e-5)` (METHOD.md, eviction error of a layer).
    /// Attention restricted to a subset is the full softmax renormalised over it, so the
    /// full probabilities give it exactly. Errors are appended to `errors`, one per layer.
    pub fn step_shadow(
        &mut self,
        token: u32,
        shadow: &KeepSet,
        errors: &mut Vec<f32>,
    ) -> Result<&[f32]> {
        let masks = self.shadow_masks(shadow)?;
        self.step_inner(token, None, Some((&masks, errors)))
    }

    /// [`step_shadow`](Self::step_shadow) that also captures every head's attention
    /// probabilities: the divergence analysis needs both from the same full-cache step.
    pub fn step_shadow_capture(
        &mut self,
        token: u32,
        shadow: &KeepSet,
        errors: &mut Vec<f32>,
        capture: &mut Vec<StepAttention>,
    ) -> Result<&[f32]> {
        let masks = self.shadow_masks(shadow)?;
        self.step_inner(token, Some(capture), Some((&masks, errors)))
    }

    /// The shadow keep set as masks, checked (with the cache being full) before anything
    /// is pushed, so a refused call leaves the state as it was. Full: every head holds
    /// every prompt position its layer can see (all of them, or a sliding layer's last
    /// min(L, S)), in order.
    fn shadow_masks(&self, shadow: &KeepSet) -> Result<ShadowMasks> {
        let len = self.prompt_len;
        shadow.validate(&self.model.dims(), len)?;
        let windows = self.model.config.windows();
        let full = len > 0
            && self.cache.iter().zip(&windows).all(|(layer, w)| {
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

    fn step_inner(
        &mut self,
        token: u32,
        capture: Option<&mut Vec<StepAttention>>,
        shadow: Option<(&ShadowMasks, &mut Vec<f32>)>,
    ) -> Result<&[f32]> {
        let m = self.model;
        let cfg = &m.config;
        if token as usize >= cfg.vocab_size {
            bail!("token id {token} is outside the vocabulary");
        }
        if self.pos >= cfg.context_length {
            bail!(
                "position {} is past the model's context of {} tokens",
                self.pos,
                cfg.context_length
            );
        }
        if self.cache.iter().flatten().any(|hc| hc.is_full()) {
            bail!("decode cache is full; raise the token allowance");
        }
        let (nh, nkv, hd) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
        let threads = rayon::current_num_threads().max(1);
        // Entries each head will attend to after this step's push, and where its
        // probabilities sit in the shared buffer of a layer.
        let longest = self
            .cache
            .iter()
            .map(|l| l.iter().map(|hc| hc.len() + 1).sum::<usize>())
            .max()
            .unwrap_or(0);
        // Two buffers for the outputs of the shared linear layers, used in turn: a
        // member may start writing the next product while a slower one still copies
        // the previous one out, never the one before (a barrier lies between).
        let lin_len = (cfg.q_dim() + 2 * cfg.kv_dim())
            .max(2 * cfg.d_ff)
            .max(cfg.d_model);
        let mut lin_a = vec![0f32; lin_len];
        let mut lin_b = vec![0f32; lin_len];
        self.logits.resize(m.weights.lm_head().rows, 0.0);
        let mut probs = vec![0f32; longest * (nh / nkv)];
        let mut parts = vec![Partial { max: 0.0, sum: 0.0 }; threads * nh];
        let mut accs = vec![0f32; threads * nh * hd];
        let want_probs = capture.is_some() || shadow.is_some();
        let record = std::sync::Mutex::new(Record {
            probs: capture.as_ref().map(|_| Vec::with_capacity(cfg.n_layers)),
            shadow,
        });
        let failure = std::sync::Mutex::new(None);
        // The team borrows the buffers only inside this block.
        {
            let bufs = Buffers {
                cache: Shared::new(&mut self.cache),
                lin: [Shared::new(&mut lin_a), Shared::new(&mut lin_b)],
                logits: Shared::new(&mut self.logits),
                probs: Shared::new(&mut probs),
                parts: Shared::new(&mut parts),
                accs: Shared::new(&mut accs),
            };
            let step = Step {
                model: m,
                token,
                pos: self.pos,
                prompt_len: self.prompt_len,
                want_probs,
                bufs: &bufs,
                record: &record,
                failure: &failure,
            };
            team::run(threads, 4 * cfg.n_layers + 1, |mb| step.run(mb)).map_err(|e| {
                anyhow::anyhow!("cannot start {threads} decode threads ({e}); try fewer --threads")
            })?;
        }
        if let Some(e) = failure.into_inner().unwrap_or(None) {
            return Err(e);
        }
        let rec = record.into_inner().expect("decode record");
        if let (Some(c), Some(pa)) = (capture, rec.probs) {
            c.push(StepAttention {
                pos: self.pos,
                probs: pa,
            });
        }
        m.softcap(&mut self.logits);
        self.pos += 1;
        Ok(&self.logits)
    }
}

/// What member 0 collects during a step (attention rows, shadow eviction errors).
struct Record<'a> {
    probs: Option<Vec<Vec<Vec<f32>>>>,
    shadow: Option<(&'a ShadowMasks, &'a mut Vec<f32>)>,
}

/// The buffers the team shares during one step.
struct Buffers<'a> {
    cache: Shared<'a, Vec<HeadCache>>,
    /// Outputs of the shared linear layers, used in turn.
    lin: [Shared<'a, f32>; 2],
    logits: Shared<'a, f32>,
    /// `exp(score - max)` of every query head over its group's entries (one layer).
    probs: Shared<'a, f32>,
    /// `[thread][query head]` partial softmax statistics.
    parts: Shared<'a, Partial>,
    /// `[thread][query head][dim]` partial weighted value sums.
    accs: Shared<'a, f32>,
}

/// One decode step as every member of the team runs it.
struct Step<'a, 'r> {
    model: &'a Model,
    token: u32,
    pos: usize,
    prompt_len: usize,
    want_probs: bool,
    bufs: &'a Buffers<'a>,
    record: &'a std::sync::Mutex<Record<'r>>,
    failure: &'a std::sync::Mutex<Option<anyhow::Error>>,
}

/// One member's view of the decode step, as the [`Pass`] of the layer body.
struct DecodePass<'s, 'a, 'r, 'm> {
    step: &'s Step<'a, 'r>,
    mb: &'s Member<'m>,
    quant: bool,
    qv: QVec,
    /// Which of the two shared linear buffers the next product writes.
    turn: usize,
}

impl Pass for DecodePass<'_, '_, '_, '_> {
    fn linear(&mut self, ws: &[&Linear], x: &[f32], out: &mut [f32]) {
        if self.quant {
            quantize_for(&mut self.qv, ws, x);
        }
        let buf = &self.step.bufs.lin[self.turn % 2];
        self.turn += 1;
        shared_linear(self.mb, ws, x, &self.qv, self.quant, buf, MV_ROWS);
        self.mb.sync();
        // SAFETY: complete after the barrier; rewritten only two products later, after
        // another barrier that every member passes after this copy.
        out.copy_from_slice(&unsafe { buf.read() }[..out.len()]);
    }

    fn attend(&mut self, li: usize, q: &[f32], k: &[f32], v: &[f32], out: &mut [f32]) {
        self.step.attend(self.mb, li, q, k, v, out);
    }
}

impl Step<'_, '_> {
    fn run(&self, mb: &Member) {
        let m = self.model;
        let cfg = &m.config;
        let b = self.bufs;
        let quant = m.precision == Precision::Q8;
        // Private copies: the residual stream and everything derived from it element by
        // element is recomputed by every member (cheaper than another barrier).
        let mut x = vec![0f32; cfg.d_model];
        m.embed(&[self.token], &mut x);
        let mut s = Scratch::new(cfg, 1);
        m.angles(self.pos, 1, &mut s.angles);
        let mut pass = DecodePass {
            step: self,
            mb,
            quant,
            qv: QVec::default(),
            turn: 0,
        };
        for li in 0..cfg.n_layers {
            layer(m, li, &mut pass, &mut x, &mut s);
        }
        let mut hn = vec![0f32; cfg.d_model];
        rms_norm(&x, &m.weights.out_norm, cfg.rms_eps, &mut hn);
        let mut qv = pass.qv;
        if quant {
            quantize_for(&mut qv, &[m.weights.lm_head()], &hn);
        }
        shared_linear(
            mb,
            &[m.weights.lm_head()],
            &hn,
            &qv,
            quant,
            &b.logits,
            HEAD_ROWS,
        );
    }

    /// Attention of layer `li` for the new token: member 0 appends its K and V to the
    /// cache, every member attends over its share of each KV head's entries (from the
    /// first one inside a sliding layer's window), and the partial results combine into
    /// every member's `out`.
    fn attend(&self, mb: &Member, li: usize, q: &[f32], k: &[f32], v: &[f32], out: &mut [f32]) {
        let m = self.model;
        let cfg = &m.config;
        let b = self.bufs;
        let (hd, nh) = (cfg.head_dim, cfg.n_heads);
        let n_rep = nh / cfg.n_kv_heads;
        let scale = cfg.opts.attn_scale;
        if mb.index == 0 {
            // SAFETY: only member 0 touches the cache between these two barriers.
            let layer = unsafe { &mut b.cache.part(li, li + 1)[0] };
            for (g, hc) in layer.iter_mut().enumerate() {
                if let Err(e) =
                    hc.push(self.pos, &k[g * hd..(g + 1) * hd], &v[g * hd..(g + 1) * hd])
                {
                    self.failure.lock().expect("failure slot").get_or_insert(e);
                }
            }
        }
        mb.sync();
        // SAFETY: nobody writes the cache until the next layer's push.
        let layer = unsafe { &b.cache.read()[li] };
        let from = first_visible(self.pos, cfg.layers[li].window);
        let starts: Vec<usize> = layer
            .iter()
            .map(|hc| hc.positions.partition_point(|&p| p < from))
            .collect();
        let offsets = prob_offsets(layer, n_rep);
        let ranges = thread_ranges(layer, &starts, mb.size);
        for (g, hc) in layer.iter().enumerate() {
            let (a, z) = ranges[g][mb.index];
            let qs: Vec<&[f32]> = (g * n_rep..(g + 1) * n_rep)
                .map(|h| &q[h * hd..(h + 1) * hd])
                .collect();
            // SAFETY: each member writes its own entry range of every head, its own
            // row of the partials.
            let mut ps: Vec<&mut [f32]> = (g * n_rep..(g + 1) * n_rep)
                .map(|h| unsafe { b.probs.part(offsets[h] + a, offsets[h] + z) })
                .collect();
            let row = mb.index * nh + g * n_rep;
            let parts = unsafe { b.parts.part(row, row + n_rep) };
            let acc = unsafe { b.accs.part(row * hd, (row + n_rep) * hd) };
            hc.attend_part_from(&qs, scale, (a, z), starts[g], &mut ps, parts, acc);
        }
        mb.sync();
        // SAFETY: the partials are complete and not written again this layer.
        let (parts, accs) = unsafe { (b.parts.read(), b.accs.read()) };
        let mut factors = Vec::with_capacity(nh);
        for h in 0..nh {
            let ph: Vec<Partial> = (0..mb.size).map(|t| parts[t * nh + h]).collect();
            let ah: Vec<&[f32]> = (0..mb.size)
                .map(|t| &accs[(t * nh + h) * hd..(t * nh + h + 1) * hd])
                .collect();
            factors.push(combine(&ph, &ah, &mut out[h * hd..(h + 1) * hd]));
        }
        if self.want_probs {
            if mb.index == 0 {
                // SAFETY: every member is past its writes of this layer's probs.
                let probs = unsafe { b.probs.read() };
                let rows: Vec<Vec<f32>> = (0..nh)
                    .map(|h| {
                        let g = h / n_rep;
                        let mut row = probs[offsets[h]..offsets[h] + layer[g].len()].to_vec();
                        // Entries before the window were not attended.
                        let first = ranges[g].first().map_or(0, |r| r.0);
                        row[..first].fill(0.0);
                        for (t, &(a, z)) in ranges[g].iter().enumerate() {
                            for p in &mut row[a..z] {
                                *p *= factors[h][t];
                            }
                        }
                        row
                    })
                    .collect();
                let mut rec = self.record.lock().expect("decode record");
                if let Some((masks, errors)) = rec.shadow.as_mut() {
                    errors.push(shadow_error(
                        layer,
                        &masks[li],
                        &rows,
                        out,
                        n_rep,
                        &m.weights.layers[li].wo,
                        self.prompt_len,
                    ));
                }
                if let Some(pa) = rec.probs.as_mut() {
                    pa.push(rows);
                }
            }
            // Member 0 reads the probabilities until here.
            mb.sync();
        }
    }
}

fn add_into(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Start of each query head's probabilities in the layer's shared buffer.
fn prob_offsets(layer: &[HeadCache], n_rep: usize) -> Vec<usize> {
    let mut offsets = Vec::with_capacity(layer.len() * n_rep);
    let mut at = 0;
    for hc in layer {
        for _ in 0..n_rep {
            offsets.push(at);
            at += hc.len();
        }
    }
    offsets
}

/// `[kv_head][member]`: the entries each member attends to, split by whole key tiles,
/// from the tile holding entry `starts[kv_head]` (the first one a sliding layer sees).
fn thread_ranges(
    layer: &[HeadCache],
    starts: &[usize],
    members: usize,
) -> Vec<Vec<(usize, usize)>> {
    layer
        .iter()
        .zip(starts)
        .map(|(hc, &start)| {
            let n = hc.len();
            let first = start / TILE;
            let tiles = n.div_ceil(TILE).saturating_sub(first);
            (0..members)
                .map(|t| {
                    let (ta, tb) = (
                        first + tiles * t / members,
                        first + tiles * (t + 1) / members,
                    );
                    ((ta * TILE).min(n), (tb * TILE).min(n))
                })
                .collect()
        })
        .collect()
}

/// `x` quantised to 8 bits in the blocks `ws` multiply against: blocks of 32 for the
/// 32-value formats, Q8_K blocks of 256 for the K-quants (float formats need neither).
fn quantize_for(qv: &mut QVec, ws: &[&Linear], x: &[f32]) {
    let kinds = ws.iter().map(|w| w.q8_kind());
    let (k, b32) = kinds.fold((false, false), |(k, b), kind| {
        (k || kind == Some(true), b || kind == Some(false))
    });
    if b32 {
        qv.quantize_into(x);
    }
    if k {
        qv.quantize_k_into(x);
    }
}

/// Several matrix-vector products with the same input, written one after another into
/// `out`, split among the team in units of at most about `unit` rows. Each matrix is cut
/// into a multiple of the team's size of equal units (576 rows in units of 64 gave one
/// member 5 units and the other 4, a tenth of the product waiting), of an even number of
/// rows (the row kernels work in pairs).
fn shared_linear(
    mb: &Member,
    ws: &[&Linear],
    x: &[f32],
    qx: &QVec,
    quant: bool,
    out: &Shared<f32>,
    unit: usize,
) {
    // (matrix, first row, last row, offset of the matrix in `out`)
    let mut units = Vec::new();
    let mut off = 0;
    for (wi, w) in ws.iter().enumerate() {
        let n = w.rows.div_ceil(unit * mb.size) * mb.size;
        let step = w.rows.div_ceil(n.max(1)).max(1).next_multiple_of(2);
        for r0 in (0..w.rows).step_by(step) {
            units.push((wi, r0, (r0 + step).min(w.rows), off));
        }
        off += w.rows;
    }
    assert!(off <= out.len());
    mb.share(units.len(), |u| {
        let (wi, r0, r1, off) = units[u];
        // SAFETY: every unit is a distinct row range of `out`.
        let dst = unsafe { out.part(off + r0, off + r1) };
        ws[wi].matvec_rows(x, qx, quant, r0, dst);
    });
}

/// Relative error of one layer's attention output when each KV head attends only to the
/// prompt entries its mask keeps. The cache must be full (every prompt position the
/// layer can see, in order); `step_shadow` checks that before the step.
fn shadow_error(
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
