//! Prefill: the prompt in chunks of rows through batched GEMMs, attending over the
//! prompt so far and recording the [`Trace`] (keys, values, the last window's queries,
//! column sums and block maps).

use anyhow::{bail, Result};
use rayon::prelude::*;

use super::layer::{first_visible, layer, Pass, Scratch};
use super::{Model, Precision};
use crate::model::kernels::{self, matmul_strided, BLayout};
use crate::model::kvcache::KvDtype;
use crate::model::linear::Linear;
use crate::model::quant::{tile32, QVec};
use crate::trace::KvStore;
use crate::trace::{BlockMap, LayerTrace, Trace, W_MAX};

impl Model {
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
        Ok(self.prefill_capturing(ids, chunk, true, progress)?.0)
    }

    /// [`Model::prefill`], also saying how many bytes its working buffers held (they are
    /// freed when it returns; the memory breakdown counts them).
    pub fn prefill_measured(
        &self,
        ids: &[u32],
        chunk: usize,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<(Trace, PrefillBuffers)> {
        self.prefill_capturing(ids, chunk, true, progress)
    }

    /// [`Model::prefill`] without the attention summaries, which only the inspector's
    /// views and h2o read: the column sums stay zero and there are no block maps. What
    /// selection by the observation window and decoding read (keys, values, the last
    /// window's queries, the last logits) is the same. Profiling prefills this way.
    pub fn prefill_without_summaries(
        &self,
        ids: &[u32],
        chunk: usize,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Trace> {
        Ok(self.prefill_capturing(ids, chunk, false, progress)?.0)
    }

    fn prefill_capturing(
        &self,
        ids: &[u32],
        chunk: usize,
        summaries: bool,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<(Trace, PrefillBuffers)> {
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
                k: KvStore::F32(Vec::new()),
                v: KvStore::F32(Vec::new()),
                q_last: vec![0.0; nh * w_max * hd],
                col_sums: vec![0.0; nh * len],
                maps: Vec::new(),
            })
            .collect();
        // K and V in f32 while the prompt's later chunks attend to them; stored in the
        // decode cache's type once the prefill is done (below).
        let mut kv: Vec<[Vec<f32>; 2]> = (0..cfg.n_layers)
            .map(|_| [vec![0.0; nkv * len * hd], vec![0.0; nkv * len * hd]])
            .collect();
        // Block sums in f64 so that chunking changes them only by f32 rounding of inputs.
        let mut block_sums: Vec<Vec<f64>> = vec![vec![0.0; nh * nb * nb]; cfg.n_layers];
        let mut last_hidden = vec![0.0f32; d];
        let mut scratch = Scratch::new(cfg, chunk.min(len));
        // What the working buffers hold, from their lengths (all are allocated by now
        // but the per-chunk ones, added in the loop).
        let mut held = PrefillBuffers {
            kv_f32: kv.iter().flatten().map(|x| x.len() * 4).sum(),
            block_sums: block_sums.iter().map(|b| b.len() * 8).sum(),
            scratch: scratch.bytes(),
        };

        let mut c0 = 0;
        progress(0, len);
        while c0 < len {
            let c1 = (c0 + chunk).min(len);
            let t = c1 - c0;
            let mut x = vec![0.0f32; t * d];
            // The chunk's input rows and its heads' attention outputs (`attend`).
            let chunk_bytes = (x.len() + nh * t * hd) * 4;
            held.scratch = held.scratch.max(scratch.bytes() + chunk_bytes);
            self.embed(&ids[c0..c1], &mut x);
            scratch.resize(cfg, t);
            self.angles(c0, t, &mut scratch.angles);
            let mut pass = PrefillPass {
                model: self,
                layers: &mut layers,
                kv: &mut kv,
                block_sums: &mut block_sums,
                c0,
                len,
                w_max,
                bs,
                nb,
                summaries,
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

        // By value: each layer's f64 sums and f32 K/V are freed as soon as its maps and
        // stored K/V exist (peak memory).
        let half = self.kv_dtype() == KvDtype::F16;
        for ((lt, bsum), [k, v]) in layers.iter_mut().zip(block_sums).zip(kv) {
            lt.k = KvStore::from_f32(k, half);
            lt.v = KvStore::from_f32(v, half);
            if !summaries {
                continue;
            }
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
        let trace = Trace {
            dims: self.dims(),
            len,
            w_max,
            ids: ids.to_vec(),
            layers,
            last_logits,
            windows: cfg.windows(),
        };
        Ok((trace, held))
    }
}

/// Bytes the working buffers of one prefill held (all freed when it returns): the keys
/// and values in f32 while later chunks attend to them, the attention maps' f64 block
/// sums, and the largest chunk's activations ([`Scratch`], input rows, head outputs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PrefillBuffers {
    pub kv_f32: usize,
    pub block_sums: usize,
    pub scratch: usize,
}

/// Prefill of one chunk: batched GEMMs, attention over the prompt so far, Trace capture.
struct PrefillPass<'a> {
    model: &'a Model,
    layers: &'a mut [LayerTrace],
    kv: &'a mut [[Vec<f32>; 2]],
    block_sums: &'a mut [Vec<f64>],
    c0: usize,
    len: usize,
    w_max: usize,
    bs: usize,
    nb: usize,
    /// Whether to sum the column sums and block maps (see `prefill_without_summaries`).
    summaries: bool,
}

impl Pass for PrefillPass<'_> {
    fn linear(&mut self, ws: &[&Linear], x: &[f32], out: &mut [f32]) {
        linear_rows(self.model, ws, x, out);
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
        let [kc, vc] = &mut self.kv[li];
        for r in 0..t {
            let pos = c0 + r;
            for kvh in 0..nkv {
                let src = r * kvd + kvh * hd;
                let dst = (kvh * len + pos) * hd;
                kc[dst..dst + hd].copy_from_slice(&k[src..src + hd]);
                vc[dst..dst + hd].copy_from_slice(&v[src..src + hd]);
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
        let (kc, vc) = (&*kc, &*vc);
        let summaries = self.summaries;
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
                matmul_strided(&q[h * hd..], qd, kh, BLayout::JRows(hd), s, w, t, hd, w);
                for r in 0..t {
                    let pos = c0 + r;
                    let lo = first_visible(pos, window);
                    let row = &mut s[r * w..(r + 1) * w];
                    let (llo, lpos) = (lo - k0, pos - k0);
                    softmax_visible(row, llo, lpos, scale);
                    if !summaries {
                        continue;
                    }
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
                matmul_strided(s, w, vh, BLayout::KRows(hd), out, hd, t, w, hd);
            });
        for h in 0..nh {
            for r in 0..t {
                out[r * qd + h * hd..r * qd + (h + 1) * hd]
                    .copy_from_slice(&head_out[(h * t + r) * hd..(h * t + r + 1) * hd]);
            }
        }
    }
}

/// The prefill's linear layers over a block of rows (also what the attention zoom's row
/// replay multiplies with, so its queries are the ones prefill computed).
/// One query's score row over keys `k0..`: the visible keys `llo..=lpos` (relative to
/// `k0`) scaled and softmaxed, every other entry zero. Prefill and the token-level rows
/// (`rows.rs`) compute a row the same way.
pub(super) fn softmax_visible(row: &mut [f32], llo: usize, lpos: usize, scale: f32) {
    let live = &mut row[llo..lpos + 1];
    for v in live.iter_mut() {
        *v *= scale;
    }
    kernels::softmax(live);
    row[..llo].fill(0.0);
    row[lpos + 1..].fill(0.0);
}

pub(super) fn linear_rows(model: &Model, ws: &[&Linear], x: &[f32], out: &mut [f32]) {
    // In Precision::Q8 the K-quant matrices multiply 8-bit (Q8_K) activations,
    // quantised once for all of `ws` (they share the input), as decode and llama.cpp
    // do; F32 keeps the f32 GEMM on dequantised panels (the exact reference).
    let int8 = model.precision == Precision::Q8;
    // The K-quants always (their integer sums run over 256 values per float step
    // and beat the f32 GEMM); the 32-value formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0)
    // where their eight-row packed kernel takes the product (`quant::tile32`: one
    // float step per 32 values serves eight rows). Row by row, with a float step
    // per 32 values and row, they were slower than the f32 GEMM.
    let t = x.len() / ws[0].cols.max(1);
    let kinds: Vec<Option<bool>> = ws
        .iter()
        .map(|w| w.q8_kind().filter(|&k| k || tile32::applies(t)))
        .collect();
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
