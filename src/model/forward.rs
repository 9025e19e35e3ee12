//! The forward pass of a llama-architecture GQA model: a chunked prefill that records a
//! [`Trace`], and greedy decoding over a cache that physically holds only the kept
//! prompt entries.

use anyhow::{bail, Result};
use rayon::prelude::*;

use super::config::Config;
use super::kernels::{self, matmul_ab, matmul_abt, rms_norm, silu, QVec, Rope};
use super::kvcache::{combine, HeadCache, KvDtype, Partial, TILE};
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
                self.weights.embed.row_into(id as usize, row);
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
                lw.wq.matmul(&hn, t, &mut q);
                lw.wk.matmul(&hn, t, &mut kx);
                lw.wv.matmul(&hn, t, &mut vx);
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
                lw.wo.matmul(&attn, t, &mut o);
                for (xv, ov) in x.iter_mut().zip(&o) {
                    *xv += ov;
                }
                for (xr, hr) in x.chunks_exact(d).zip(hn.chunks_exact_mut(d)) {
                    rms_norm(xr, &lw.ffn_norm, cfg.rms_eps, hr);
                }
                lw.gate.matmul(&hn, t, &mut g);
                lw.up.matmul(&hn, t, &mut u);
                for (gv, uv) in g.iter_mut().zip(&u) {
                    *gv = silu(*gv) * uv;
                }
                lw.down.matmul(&g, t, &mut o);
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
        head.matvec(&hn, &mut out);
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

/// `[layer][kv_head][prompt position]`: whether a shadow eviction keeps the entry.
type ShadowMasks = Vec<Vec<Vec<bool>>>;

/// Rows per unit of shared work in a decode matrix-vector product: big enough that
/// taking a unit (one atomic add) is rare, small enough to even out the threads.
const MV_ROWS: usize = 64;
/// The output matrix has ~50k rows; larger units for it.
const HEAD_ROWS: usize = 512;

/// A decoding session over a (possibly compressed) cache.
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
        // Checked before anything is pushed, so a refused call leaves the state as it was.
        shadow.validate(&self.model.dims(), self.prompt_len)?;
        let full = self.prompt_len > 0
            && self.cache.iter().flatten().all(|hc| {
                hc.positions.first() == Some(&0)
                    && hc.positions.get(self.prompt_len - 1) == Some(&(self.prompt_len - 1))
            });
        if !full {
            bail!("shadow eviction error needs a full cache");
        }
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

    /// [`step_shadow`](Self::step_shadow) that also captures every head's attention
    /// probabilities: the divergence analysis needs both from the same full-cache step.
    pub fn step_shadow_capture(
        &mut self,
        token: u32,
        shadow: &KeepSet,
        errors: &mut Vec<f32>,
        capture: &mut Vec<StepAttention>,
    ) -> Result<&[f32]> {
        shadow.validate(&self.model.dims(), self.prompt_len)?;
        let n = self.prompt_len;
        let full = n > 0
            && self.cache.iter().flatten().all(|hc| {
                hc.positions.first() == Some(&0) && hc.positions.get(n - 1) == Some(&(n - 1))
            });
        if !full {
            bail!("shadow eviction error needs a full cache");
        }
        let masks: ShadowMasks = shadow
            .positions
            .iter()
            .map(|heads| {
                heads
                    .iter()
                    .map(|pos| {
                        let mut m = vec![false; self.prompt_len];
                        pos.iter().for_each(|&p| m[p] = true);
                        m
                    })
                    .collect()
            })
            .collect();
        self.step_inner(token, Some(capture), Some((&masks, errors)))
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
        if self.pos >= m.rope.max_pos() {
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
        let mut qkv = vec![0f32; (nh + 2 * nkv) * hd];
        let mut o = vec![0f32; cfg.d_model];
        let mut gu = vec![0f32; 2 * cfg.d_ff];
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
                qkv: Shared::new(&mut qkv),
                o: Shared::new(&mut o),
                gu: Shared::new(&mut gu),
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
    /// q, k, v projections of the new token, in that order.
    qkv: Shared<'a, f32>,
    /// Output of the attention output projection, then of the MLP down projection.
    o: Shared<'a, f32>,
    /// Gate and up projections.
    gu: Shared<'a, f32>,
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

impl Step<'_, '_> {
    fn run(&self, mb: &Member) {
        let m = self.model;
        let cfg = &m.config;
        let b = self.bufs;
        let (d, hd, nh, nkv) = (cfg.d_model, cfg.head_dim, cfg.n_heads, cfg.n_kv_heads);
        let n_rep = nh / nkv;
        let quant = m.precision == Precision::Q8;
        let scale = 1.0 / (hd as f32).sqrt();
        let tok = self.token as usize;
        // Private copies: the residual stream and everything derived from it element by
        // element is recomputed by every member (cheaper than another barrier).
        let mut x = vec![0f32; d];
        m.weights.embed.row_into(tok, &mut x);
        let mut hn = vec![0f32; d];
        let mut q = vec![0f32; nh * hd];
        let mut attn = vec![0f32; d];
        let mut act = vec![0f32; cfg.d_ff];
        let mut qv = QVec::default();
        let (k_off, v_off) = (nh * hd, (nh + nkv) * hd);

        for (li, lw) in m.weights.layers.iter().enumerate() {
            rms_norm(&x, &lw.attn_norm, cfg.rms_eps, &mut hn);
            if quant {
                qv.quantize_into(&hn);
            }
            shared_linear(
                mb,
                &[&lw.wq, &lw.wk, &lw.wv],
                &hn,
                &qv,
                quant,
                &b.qkv,
                MV_ROWS,
            );
            mb.sync();
            // SAFETY: written before the barrier, not written again until the next layer.
            let qkv = unsafe { b.qkv.read() };
            q.copy_from_slice(&qkv[..k_off]);
            for h in 0..nh {
                m.rope.apply(&mut q[h * hd..(h + 1) * hd], self.pos);
            }
            if mb.index == 0 {
                // SAFETY: only member 0 touches the cache between these two barriers.
                let layer = unsafe { &mut b.cache.part(li, li + 1)[0] };
                for (g, hc) in layer.iter_mut().enumerate() {
                    let mut k = qkv[k_off + g * hd..k_off + (g + 1) * hd].to_vec();
                    m.rope.apply(&mut k, self.pos);
                    if let Err(e) =
                        hc.push(self.pos, &k, &qkv[v_off + g * hd..v_off + (g + 1) * hd])
                    {
                        self.failure.lock().expect("failure slot").get_or_insert(e);
                    }
                }
            }
            mb.sync();
            // SAFETY: nobody writes the cache until the next layer's push.
            let layer = unsafe { &b.cache.read()[li] };
            let offsets = prob_offsets(layer, n_rep);
            let ranges = thread_ranges(layer, mb.size);
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
                hc.attend_part(&qs, scale, (a, z), &mut ps, parts, acc);
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
                factors.push(combine(&ph, &ah, &mut attn[h * hd..(h + 1) * hd]));
            }
            if self.want_probs {
                if mb.index == 0 {
                    // SAFETY: every member is past its writes of this layer's probs.
                    let probs = unsafe { b.probs.read() };
                    let rows: Vec<Vec<f32>> = (0..nh)
                        .map(|h| {
                            let g = h / n_rep;
                            let mut row = probs[offsets[h]..offsets[h] + layer[g].len()].to_vec();
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
                            &attn,
                            n_rep,
                            &lw.wo,
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
            if quant {
                qv.quantize_into(&attn);
            }
            shared_linear(mb, &[&lw.wo], &attn, &qv, quant, &b.o, MV_ROWS);
            mb.sync();
            // SAFETY: complete after the barrier; rewritten only after the next one.
            add_into(&mut x, unsafe { b.o.read() });
            rms_norm(&x, &lw.ffn_norm, cfg.rms_eps, &mut hn);
            if quant {
                qv.quantize_into(&hn);
            }
            shared_linear(mb, &[&lw.gate, &lw.up], &hn, &qv, quant, &b.gu, MV_ROWS);
            mb.sync();
            // SAFETY: as above.
            let gu = unsafe { b.gu.read() };
            for ((a, g), u) in act.iter_mut().zip(&gu[..cfg.d_ff]).zip(&gu[cfg.d_ff..]) {
                *a = silu(*g) * u;
            }
            if quant {
                qv.quantize_into(&act);
            }
            shared_linear(mb, &[&lw.down], &act, &qv, quant, &b.o, MV_ROWS);
            mb.sync();
            add_into(&mut x, unsafe { b.o.read() });
        }
        rms_norm(&x, &m.weights.out_norm, cfg.rms_eps, &mut hn);
        if quant {
            qv.quantize_into(&hn);
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

/// `[kv_head][member]`: the entries each member attends to, split by whole key tiles.
fn thread_ranges(layer: &[HeadCache], members: usize) -> Vec<Vec<(usize, usize)>> {
    layer
        .iter()
        .map(|hc| {
            let n = hc.len();
            let tiles = n.div_ceil(TILE);
            (0..members)
                .map(|t| {
                    let (ta, tb) = (tiles * t / members, tiles * (t + 1) / members);
                    ((ta * TILE).min(n), (tb * TILE).min(n))
                })
                .collect()
        })
        .collect()
}

/// Several matrix-vector products with the same input, written one after another into
/// `out`, split among the team in units of `unit` rows.
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
        for r0 in (0..w.rows).step_by(unit) {
            units.push((wi, r0, (r0 + unit).min(w.rows), off));
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
/// prompt entries its mask keeps. The cache must be full (entries are positions in
/// order); `step_shadow` checks that before the step.
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
