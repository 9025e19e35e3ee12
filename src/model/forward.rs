//! The forward pass of a llama-architecture GQA model: a chunked prefill that records a
//! [`Trace`], and greedy decoding over a cache that physically holds only the kept
//! prompt entries.

use anyhow::{bail, Result};
use rayon::prelude::*;

use super::config::Config;
use super::kernels::{self, matmul_ab, matmul_abt, matmul_xwt, rms_norm, silu, QVec, Rope};
use super::weights::{Linear, Weights};
use crate::keepset::KeepSet;
use crate::trace::{BlockMap, Dims, LayerTrace, Trace, W_MAX};

/// Which weights the decode path multiplies with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// 8-bit weights and activations (fast, as llama.cpp does for 4-bit models).
    Q8,
    /// f32 weights (bit-for-bit the numbers prefill uses; for tests and checks).
    F32,
}

pub struct Model {
    pub config: Config,
    pub weights: Weights,
    pub rope: Rope,
    pub precision: Precision,
}

impl Model {
    pub fn new(config: Config, weights: Weights) -> Result<Self> {
        config.validate()?;
        let rope = Rope::new(config.head_dim, config.rope_base, config.context_length);
        Ok(Model {
            config,
            weights,
            rope,
            precision: Precision::Q8,
        })
    }

    pub fn dims(&self) -> Dims {
        self.config.dims()
    }

    /// Runs the prompt through the model with the full cache, `chunk` tokens at a time,
    /// and records the Trace. `progress(done, total)` is called after every chunk.
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
        let kvd = nkv * hd;
        let n_rep = nh / nkv;
        let w_max = W_MAX.min(len);
        let (bs, nb) = BlockMap::geometry(len);
        let scale = 1.0 / (hd as f32).sqrt();

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

        let mut c0 = 0;
        while c0 < len {
            let c1 = (c0 + chunk).min(len);
            let t = c1 - c0;
            let mut x = vec![0.0f32; t * d];
            for (row, &id) in x.chunks_exact_mut(d).zip(&ids[c0..c1]) {
                row.copy_from_slice(
                    &self.weights.embed.f32[id as usize * d..(id as usize + 1) * d],
                );
            }
            let mut hn = vec![0.0f32; t * d];
            let mut q = vec![0.0f32; t * d];
            let mut kx = vec![0.0f32; t * kvd];
            let mut vx = vec![0.0f32; t * kvd];
            let mut attn = vec![0.0f32; t * d];
            let mut o = vec![0.0f32; t * d];
            let mut g = vec![0.0f32; t * cfg.d_ff];
            let mut u = vec![0.0f32; t * cfg.d_ff];
            for (li, lw) in self.weights.layers.iter().enumerate() {
                let lt = &mut layers[li];
                for (xr, hr) in x.chunks_exact(d).zip(hn.chunks_exact_mut(d)) {
                    rms_norm(xr, &lw.attn_norm, cfg.rms_eps, hr);
                }
                matmul_xwt(&hn, &lw.wq.f32, &mut q, t, d, d, true);
                matmul_xwt(&hn, &lw.wk.f32, &mut kx, t, d, kvd, true);
                matmul_xwt(&hn, &lw.wv.f32, &mut vx, t, d, kvd, true);
                for r in 0..t {
                    let pos = c0 + r;
                    for h in 0..nh {
                        self.rope
                            .apply(&mut q[r * d + h * hd..r * d + (h + 1) * hd], pos);
                    }
                    for kvh in 0..nkv {
                        let src = r * kvd + kvh * hd;
                        self.rope.apply(&mut kx[src..src + hd], pos);
                        let dst = (kvh * len + pos) * hd;
                        lt.k[dst..dst + hd].copy_from_slice(&kx[src..src + hd]);
                        lt.v[dst..dst + hd].copy_from_slice(&vx[src..src + hd]);
                    }
                    if pos >= len - w_max {
                        let row = pos - (len - w_max);
                        for h in 0..nh {
                            let dst = (h * w_max + row) * hd;
                            lt.q_last[dst..dst + hd]
                                .copy_from_slice(&q[r * d + h * hd..r * d + (h + 1) * hd]);
                        }
                    }
                }
                // Attention, one task per query head; each owns its column sums, block
                // sums and output block, so heads never contend.
                let nk = c1;
                let (kc, vc, qv) = (&lt.k, &lt.v, &q);
                let mut head_out = vec![0.0f32; nh * t * hd];
                lt.col_sums
                    .par_chunks_mut(len)
                    .zip(block_sums[li].par_chunks_mut(nb * nb))
                    .zip(head_out.par_chunks_mut(t * hd))
                    .enumerate()
                    .for_each_init(Vec::new, |s: &mut Vec<f32>, (h, ((cs, bsum), out))| {
                        let kvh = h / n_rep;
                        let kh = &kc[kvh * len * hd..(kvh * len + nk) * hd];
                        let vh = &vc[kvh * len * hd..(kvh * len + nk) * hd];
                        s.resize(t * nk, 0.0);
                        matmul_abt(&qv[h * hd..], d, kh, hd, s, nk, t, hd, nk);
                        for r in 0..t {
                            let pos = c0 + r;
                            let row = &mut s[r * nk..(r + 1) * nk];
                            let (live, masked) = row.split_at_mut(pos + 1);
                            for v in live.iter_mut() {
                                *v *= scale;
                            }
                            kernels::softmax(live);
                            masked.fill(0.0);
                            for (c, &p) in cs.iter_mut().zip(live.iter()) {
                                *c += p;
                            }
                            let qb = pos / bs;
                            for (kb, blk) in live.chunks(bs).enumerate() {
                                bsum[qb * nb + kb] += blk.iter().map(|&p| p as f64).sum::<f64>();
                            }
                        }
                        matmul_ab(s, nk, vh, hd, out, hd, t, nk, hd);
                    });
                for h in 0..nh {
                    for r in 0..t {
                        attn[r * d + h * hd..r * d + (h + 1) * hd]
                            .copy_from_slice(&head_out[(h * t + r) * hd..(h * t + r + 1) * hd]);
                    }
                }
                matmul_xwt(&attn, &lw.wo.f32, &mut o, t, d, d, true);
                for (xv, ov) in x.iter_mut().zip(&o) {
                    *xv += ov;
                }
                for (xr, hr) in x.chunks_exact(d).zip(hn.chunks_exact_mut(d)) {
                    rms_norm(xr, &lw.ffn_norm, cfg.rms_eps, hr);
                }
                matmul_xwt(&hn, &lw.gate.f32, &mut g, t, d, cfg.d_ff, true);
                matmul_xwt(&hn, &lw.up.f32, &mut u, t, d, cfg.d_ff, true);
                for (gv, uv) in g.iter_mut().zip(&u) {
                    *gv = silu(*gv) * uv;
                }
                matmul_xwt(&g, &lw.down.f32, &mut o, t, cfg.d_ff, d, true);
                for (xv, ov) in x.iter_mut().zip(&o) {
                    *xv += ov;
                }
            }
            if c1 == len {
                last_hidden.copy_from_slice(&x[(t - 1) * d..]);
            }
            c0 = c1;
            progress(c0, len);
        }

        for (lt, bsum) in layers.iter_mut().zip(&block_sums) {
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
        })
    }

    fn logits_f32(&self, hidden: &[f32]) -> Vec<f32> {
        let mut hn = vec![0.0; hidden.len()];
        rms_norm(hidden, &self.weights.out_norm, self.config.rms_eps, &mut hn);
        let head = self.weights.lm_head();
        let mut out = vec![0.0; head.rows];
        kernels::matvec_f32(&head.f32, &hn, &mut out);
        out
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

/// Every query head's attention probabilities at one decode step, over the cache
/// entries it attended (kept prompt positions in order, then the generated tokens).
#[derive(Debug, Clone)]
pub struct StepAttention {
    /// Position of the token fed in at this step.
    pub pos: usize,
    /// `[layer][head][entry]`
    pub probs: Vec<Vec<Vec<f32>>>,
}

/// The cache of one KV head: only the entries it keeps, plus what decoding appends.
/// Keys are stored dimension-major (`kt[dim][entry]`, row length `cap`) so a head's
/// scores over all entries are `head_dim` contiguous axpys with no horizontal sums;
/// values are entry-major (`v[entry][dim]`) so the output is one axpy per entry.
#[derive(Debug, Clone)]
pub struct HeadCache {
    /// Original position of every entry (kept prompt positions, then generated ones).
    pub positions: Vec<usize>,
    cap: usize,
    head_dim: usize,
    kt: Vec<f32>,
    v: Vec<f32>,
}

impl HeadCache {
    fn with_capacity(cap: usize, head_dim: usize) -> Self {
        HeadCache {
            positions: Vec::with_capacity(cap),
            cap,
            head_dim,
            kt: vec![0.0; cap * head_dim],
            v: Vec::with_capacity(cap * head_dim),
        }
    }

    pub fn len(&self) -> usize {
        self.positions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    fn push(&mut self, pos: usize, k: &[f32], v: &[f32]) -> Result<()> {
        let n = self.positions.len();
        if n >= self.cap {
            bail!(
                "decode cache is full ({} entries); raise the token allowance",
                self.cap
            );
        }
        for (i, &kv) in k.iter().enumerate() {
            self.kt[i * self.cap + n] = kv;
        }
        self.v.extend_from_slice(v);
        self.positions.push(pos);
        Ok(())
    }

    /// Adds `scale * q_h . k_j` for entries `j0..j0 + p.len()` to each query head's
    /// score slice, reading every key once for all heads of the group.
    fn scores_chunk(&self, qs: &[&[f32]], scale: f32, j0: usize, ps: &mut [&mut [f32]]) {
        for i in 0..self.head_dim {
            let row = &self.kt[i * self.cap + j0..];
            for (q, p) in qs.iter().zip(ps.iter_mut()) {
                let n = p.len();
                kernels::axpy(p, q[i] * scale, &row[..n]);
            }
        }
    }

    /// `out_h += sum_j p_h[j] * v[j0 + j]` for each query head of the group.
    fn values_chunk(&self, ps: &[&[f32]], j0: usize, out: &mut [f32]) {
        let hd = self.head_dim;
        let n = ps.first().map_or(0, |p| p.len());
        for j in 0..n {
            let vr = &self.v[(j0 + j) * hd..(j0 + j + 1) * hd];
            for (h, p) in ps.iter().enumerate() {
                kernels::axpy(&mut out[h * hd..(h + 1) * hd], p[j], vr);
            }
        }
    }
}

/// Entries per parallel task in decode attention.
const ATTN_CHUNK: usize = 256;

/// Decode attention for one layer. Work is split into (KV head, chunk of entries) tasks
/// so both cores share long caches, and each key and value is read once for all the
/// query heads of its group (GQA) instead of once per query head.
fn attend_layer(
    layer: &[HeadCache],
    q: &[f32],
    n_rep: usize,
    scale: f32,
    probs: &mut [Vec<f32>],
    out: &mut [f32],
) {
    let hd = layer.first().map_or(0, |h| h.head_dim);
    for (h, p) in probs.iter_mut().enumerate() {
        p.clear();
        p.resize(layer[h / n_rep].len(), 0.0);
    }
    // Scores: tasks own disjoint chunks of every head's score vector.
    {
        let mut tasks: Vec<(usize, usize, Vec<&mut [f32]>)> = Vec::new();
        for (g, group) in probs.chunks_mut(n_rep).enumerate() {
            let mut iters: Vec<_> = group.iter_mut().map(|p| p.chunks_mut(ATTN_CHUNK)).collect();
            let mut c = 0;
            loop {
                let parts: Vec<&mut [f32]> = iters.iter_mut().filter_map(|it| it.next()).collect();
                if parts.len() < n_rep {
                    break;
                }
                tasks.push((g, c * ATTN_CHUNK, parts));
                c += 1;
            }
        }
        tasks.into_par_iter().for_each(|(g, j0, mut parts)| {
            let qs: Vec<&[f32]> = (0..n_rep)
                .map(|r| &q[(g * n_rep + r) * hd..(g * n_rep + r + 1) * hd])
                .collect();
            layer[g].scores_chunk(&qs, scale, j0, &mut parts);
        });
    }
    // Sequential: a few thousand vectorised exps per head cost less than waking threads.
    for p in probs.iter_mut() {
        kernels::softmax(p);
    }
    // Values: each task sums its chunk into a private buffer; the buffers are added up.
    let tasks: Vec<(usize, usize)> = layer
        .iter()
        .enumerate()
        .flat_map(|(g, hc)| (0..hc.len().div_ceil(ATTN_CHUNK)).map(move |c| (g, c * ATTN_CHUNK)))
        .collect();
    let partials: Vec<(usize, Vec<f32>)> = tasks
        .into_par_iter()
        .map(|(g, j0)| {
            let hc = &layer[g];
            let j1 = (j0 + ATTN_CHUNK).min(hc.len());
            let ps: Vec<&[f32]> = probs[g * n_rep..(g + 1) * n_rep]
                .iter()
                .map(|p| &p[j0..j1])
                .collect();
            let mut acc = vec![0.0f32; n_rep * hd];
            hc.values_chunk(&ps, j0, &mut acc);
            (g, acc)
        })
        .collect();
    out.fill(0.0);
    for (g, acc) in partials {
        for (o, a) in out[g * n_rep * hd..(g + 1) * n_rep * hd]
            .iter_mut()
            .zip(&acc)
        {
            *o += a;
        }
    }
}

/// `[layer][kv_head][prompt position]`: whether a shadow eviction keeps the entry.
type ShadowMasks = Vec<Vec<Vec<bool>>>;

/// A decoding session over a (possibly compressed) cache.
pub struct DecodeState<'m> {
    model: &'m Model,
    /// `[layer][kv_head]`
    pub cache: Vec<Vec<HeadCache>>,
    pub pos: usize,
    /// Prompt length of the trace this cache was built from.
    pub prompt_len: usize,
    logits: Vec<f32>,
    scratch: Scratch,
}

#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    hn: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    o: Vec<f32>,
    g: Vec<f32>,
    u: Vec<f32>,
    qv: QVec,
    /// Attention probabilities of the current layer, per query head.
    probs: Vec<Vec<f32>>,
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
        if trace.len + extra > model.config.context_length {
            bail!(
                "prompt ({}) + new tokens ({extra}) exceed the model's context of {} tokens; lower --max-new",
                trace.len,
                model.config.context_length
            );
        }
        let hd = dims.head_dim;
        let cache = keep
            .positions
            .iter()
            .enumerate()
            .map(|(l, heads)| {
                heads
                    .iter()
                    .enumerate()
                    .map(|(g, pos)| {
                        let mut hc = HeadCache::with_capacity(pos.len() + extra, hd);
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
            scratch: Scratch::default(),
        })
    }

    /// Cache entries held now, summed over layers and KV heads.
    pub fn entries(&self) -> usize {
        self.cache.iter().flatten().map(|h| h.positions.len()).sum()
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
        let masks: ShadowMasks = shadow
            .positions
            .iter()
            .map(|heads| {
                heads
                    .iter()
                    .map(|pos| {
                        let mut m = vec![false; self.prompt_len];
                        for &p in pos {
                            if p < m.len() {
                                m[p] = true;
                            }
                        }
                        m
                    })
                    .collect()
            })
            .collect();
        self.step_inner(token, None, Some((&masks, errors)))
    }

    fn step_inner(
        &mut self,
        token: u32,
        capture: Option<&mut Vec<StepAttention>>,
        mut shadow: Option<(&ShadowMasks, &mut Vec<f32>)>,
    ) -> Result<&[f32]> {
        let m = self.model;
        let cfg = &m.config;
        if token as usize >= cfg.vocab_size {
            bail!("token id {token} is outside the vocabulary");
        }
        if self.pos >= m.rope.max_pos() {
            bail!(
                "position {} is past the model's context of {} tokens",
                self.pos,
                cfg.context_length
            );
        }
        let (d, hd, nh, nkv) = (cfg.d_model, cfg.head_dim, cfg.n_heads, cfg.n_kv_heads);
        let n_rep = nh / nkv;
        let pos = self.pos;
        let s = &mut self.scratch;
        let prec = m.precision;
        s.x.clear();
        s.x.extend_from_slice(&m.weights.embed.f32[token as usize * d..(token as usize + 1) * d]);
        s.hn.resize(d, 0.0);
        s.q.resize(d, 0.0);
        s.k.resize(nkv * hd, 0.0);
        s.v.resize(nkv * hd, 0.0);
        s.attn.resize(d, 0.0);
        s.o.resize(d, 0.0);
        s.g.resize(cfg.d_ff, 0.0);
        s.u.resize(cfg.d_ff, 0.0);
        let scale = 1.0 / (hd as f32).sqrt();
        let mut probs_all: Option<Vec<Vec<Vec<f32>>>> =
            capture.as_ref().map(|_| Vec::with_capacity(cfg.n_layers));

        for (li, lw) in m.weights.layers.iter().enumerate() {
            rms_norm(&s.x, &lw.attn_norm, cfg.rms_eps, &mut s.hn);
            let quant = prec == Precision::Q8;
            if quant {
                s.qv.quantize_into(&s.hn);
            }
            linear_many(
                &mut [(&lw.wq, &mut s.q), (&lw.wk, &mut s.k), (&lw.wv, &mut s.v)],
                &s.hn,
                &s.qv,
                quant,
            );
            for h in 0..nh {
                m.rope.apply(&mut s.q[h * hd..(h + 1) * hd], pos);
            }
            let layer = &mut self.cache[li];
            for (g, hc) in layer.iter_mut().enumerate() {
                m.rope.apply(&mut s.k[g * hd..(g + 1) * hd], pos);
                hc.push(pos, &s.k[g * hd..(g + 1) * hd], &s.v[g * hd..(g + 1) * hd])?;
            }
            s.probs.resize(nh, Vec::new());
            attend_layer(
                &self.cache[li],
                &s.q,
                n_rep,
                scale,
                &mut s.probs,
                &mut s.attn,
            );
            if let Some(pa) = probs_all.as_mut() {
                pa.push(s.probs.clone());
            }
            if let Some((masks, errors)) = shadow.as_mut() {
                errors.push(shadow_error(
                    &self.cache[li],
                    &masks[li],
                    &s.probs,
                    &s.attn,
                    n_rep,
                    &lw.wo,
                    self.prompt_len,
                )?);
            }
            if quant {
                s.qv.quantize_into(&s.attn);
            }
            linear(&lw.wo, &s.attn, &s.qv, quant, &mut s.o);
            for (xv, ov) in s.x.iter_mut().zip(&s.o) {
                *xv += ov;
            }
            rms_norm(&s.x, &lw.ffn_norm, cfg.rms_eps, &mut s.hn);
            if quant {
                s.qv.quantize_into(&s.hn);
            }
            linear_many(
                &mut [(&lw.gate, &mut s.g), (&lw.up, &mut s.u)],
                &s.hn,
                &s.qv,
                quant,
            );
            for (gv, uv) in s.g.iter_mut().zip(&s.u) {
                *gv = silu(*gv) * uv;
            }
            if quant {
                s.qv.quantize_into(&s.g);
            }
            linear(&lw.down, &s.g, &s.qv, quant, &mut s.o);
            for (xv, ov) in s.x.iter_mut().zip(&s.o) {
                *xv += ov;
            }
        }
        rms_norm(&s.x, &m.weights.out_norm, cfg.rms_eps, &mut s.hn);
        let head = m.weights.lm_head();
        self.logits.resize(head.rows, 0.0);
        let quant = prec == Precision::Q8;
        if quant {
            s.qv.quantize_into(&s.hn);
        }
        linear(head, &s.hn, &s.qv, quant, &mut self.logits);
        if let (Some(c), Some(pa)) = (capture, probs_all) {
            c.push(StepAttention { pos, probs: pa });
        }
        self.pos += 1;
        Ok(&self.logits)
    }
}

/// Relative error of one layer's attention output when each KV head attends only to the
/// prompt entries its mask keeps (the entries of a full cache are positions in order).
fn shadow_error(
    layer: &[HeadCache],
    masks: &[Vec<bool>],
    probs: &[Vec<f32>],
    attn_full: &[f32],
    n_rep: usize,
    wo: &Linear,
    prompt_len: usize,
) -> Result<f32> {
    let hd = layer.first().map_or(0, |h| h.head_dim);
    let mut attn_kept = vec![0.0f32; attn_full.len()];
    for (h, p) in probs.iter().enumerate() {
        let g = h / n_rep;
        let (hc, mask) = (&layer[g], &masks[g]);
        if hc.positions.first().copied() != Some(0)
            || hc.positions.get(prompt_len.saturating_sub(1)).copied() != Some(prompt_len - 1)
        {
            bail!("shadow eviction error needs a full cache");
        }
        let keep = |j: usize| j >= prompt_len || mask[j];
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
                    kernels::axpy(out, w / z, &hc.v[j * hd..(j + 1) * hd]);
                }
            }
        }
    }
    let mut o_full = vec![0.0f32; wo.rows];
    let mut o_kept = vec![0.0f32; wo.rows];
    kernels::matvec_f32(&wo.f32, attn_full, &mut o_full);
    kernels::matvec_f32(&wo.f32, &attn_kept, &mut o_kept);
    let diff = o_full
        .iter()
        .zip(&o_kept)
        .map(|(a, b)| (a - b) * (a - b))
        .sum::<f32>()
        .sqrt();
    let norm = o_full.iter().map(|a| a * a).sum::<f32>().sqrt();
    Ok(diff / (norm + 1e-5))
}

/// Products of several layers with one input, fused into one parallel region when all
/// have 8-bit weights.
fn linear_many(jobs: &mut [(&Linear, &mut [f32])], x: &[f32], qx: &QVec, quant: bool) {
    if quant && jobs.iter().all(|(w, _)| w.q.is_some()) {
        let mut qjobs: Vec<(&kernels::QMat, &mut [f32])> = jobs
            .iter_mut()
            .filter_map(|(w, out)| w.q.as_ref().map(|q| (q, &mut **out)))
            .collect();
        kernels::matvec_q_many(&mut qjobs, qx);
    } else {
        for (w, out) in jobs.iter_mut() {
            linear(w, x, qx, quant, out);
        }
    }
}

fn linear(w: &Linear, x: &[f32], qx: &QVec, quant: bool, out: &mut [f32]) {
    match (&w.q, quant) {
        (Some(qm), true) => kernels::matvec_q(qm, qx, out),
        _ => kernels::matvec_f32(&w.f32, x, out),
    }
}
