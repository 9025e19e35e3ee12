//! Exact attention of a few query rows anywhere in the prompt, from the Trace: the
//! Trace keeps every layer's keys and values but the queries of the last `w_max` rows
//! only, so the rows' queries are recomputed by replaying just those rows through the
//! layers below the one asked for, attending over the Trace's keys and values (what
//! prefill computed; no other position is run again). The attention map's token zoom
//! shows these probabilities instead of block means.

use std::borrow::Cow;
use std::ops::Range;

use anyhow::{bail, Result};
use rayon::prelude::*;

use super::layer::{first_visible, layer, Pass, Scratch};
use super::prefill::{linear_rows, softmax_visible};
use super::Model;
use crate::model::kernels::{matmul_strided, BLayout};
use crate::model::linear::Linear;
use crate::trace::{KvStore, Trace};

/// Attention probabilities of query rows `rows` on keys `keys` in one layer, every
/// query head: `probs[(head * rows.len() + r) * keys.len() + j]` is row `rows.start + r`
/// attending to key `keys.start + j` (0 where the row cannot see the key: a later key,
/// or one before a sliding layer's window). Each row is softmax-normalised over all the
/// keys it sees, not over `keys` only.
#[derive(Debug, Clone, PartialEq)]
pub struct RowAttention {
    pub layer: usize,
    pub rows: Range<usize>,
    pub keys: Range<usize>,
    pub n_heads: usize,
    pub probs: Vec<f32>,
}

impl RowAttention {
    /// Row `row` (a prompt position inside `rows`) of query head `head`, over `keys`.
    pub fn row(&self, head: usize, row: usize) -> &[f32] {
        let (nr, nk) = (self.rows.len(), self.keys.len());
        let o = (head * nr + row - self.rows.start) * nk;
        &self.probs[o..o + nk]
    }
}

/// Most rows one request replays (the zoom asks for 64).
pub const MAX_ROWS: usize = 256;

/// `n` values of a Trace K or V store from `at`, as f32 (converted once per head from
/// f16, the Trace's type on the fast path).
fn span(store: &KvStore, at: usize, n: usize) -> Cow<'_, [f32]> {
    store.f32s(at, n)
}

impl Model {
    /// The attention of query rows `rows` on keys `keys` in `layer` ([`RowAttention`]),
    /// replaying the rows through layers `0..=layer` over the Trace's keys and values.
    pub fn attention_rows(
        &self,
        trace: &Trace,
        layer_index: usize,
        rows: Range<usize>,
        keys: Range<usize>,
    ) -> Result<RowAttention> {
        let cfg = &self.config;
        if layer_index >= cfg.n_layers {
            bail!(
                "layer {layer_index} is out of range (the model has {})",
                cfg.n_layers
            );
        }
        if rows.is_empty() || rows.end > trace.len || rows.len() > MAX_ROWS {
            bail!(
                "query rows {rows:?}: need 1 to {MAX_ROWS} rows inside the prompt's {} tokens",
                trace.len
            );
        }
        if keys.is_empty() || keys.end > trace.len {
            bail!(
                "keys {keys:?}: need a non-empty range inside the prompt's {} tokens",
                trace.len
            );
        }
        if trace.layers.len() != cfg.n_layers || trace.dims != self.dims() {
            bail!("the Trace was recorded by another model shape");
        }
        let t = rows.len();
        let d = cfg.d_model;
        let mut x = vec![0.0f32; t * d];
        self.embed(&trace.ids[rows.clone()], &mut x);
        let mut scratch = Scratch::new(cfg, t);
        self.angles(rows.start, t, &mut scratch.angles);
        let mut pass = RowsPass {
            model: self,
            trace,
            rows: rows.clone(),
            target: layer_index,
            keys: keys.clone(),
            probs: Vec::new(),
        };
        for li in 0..=layer_index {
            layer(self, li, &mut pass, &mut x, &mut scratch);
        }
        Ok(RowAttention {
            layer: layer_index,
            rows,
            keys,
            n_heads: cfg.n_heads,
            probs: pass.probs,
        })
    }
}

/// Replay of a block of rows: the prefill's linear layers, attention over the Trace.
struct RowsPass<'a> {
    model: &'a Model,
    trace: &'a Trace,
    rows: Range<usize>,
    /// The layer whose probabilities are wanted; its output is not used.
    target: usize,
    keys: Range<usize>,
    probs: Vec<f32>,
}

impl Pass for RowsPass<'_> {
    fn linear(&mut self, ws: &[&Linear], x: &[f32], out: &mut [f32]) {
        linear_rows(self.model, ws, x, out);
    }

    /// As prefill's attention (same products, scaling and softmax) but over the Trace's
    /// keys and values: the rows' own `k` and `v` are the Trace's at their positions.
    fn attend(&mut self, li: usize, q: &[f32], _k: &[f32], _v: &[f32], out: &mut [f32]) {
        let cfg = &self.model.config;
        let (hd, nh, nkv) = (cfg.head_dim, cfg.n_heads, cfg.n_kv_heads);
        let qd = cfg.q_dim();
        let n_rep = nh / nkv;
        let len = self.trace.len;
        let (c0, t) = (self.rows.start, self.rows.len());
        let scale = cfg.opts.attn_scale;
        let window = cfg.layers[li].window;
        let lt = &self.trace.layers[li];
        let nk = c0 + t;
        let k0 = first_visible(c0, window);
        let w = nk - k0;
        let want = li == self.target;
        let keys = self.keys.clone();
        let nkeys = keys.len();
        let mut head_out = vec![0.0f32; nh * t * hd];
        // Below the target layer each head's chunk is one unused float.
        let prob_chunk = if want { t * nkeys } else { 1 };
        let mut probs = vec![0.0f32; nh * prob_chunk];
        head_out
            .par_chunks_mut(t * hd)
            .zip(probs.par_chunks_mut(prob_chunk))
            .enumerate()
            .for_each_init(Vec::new, |s: &mut Vec<f32>, (h, (out, pr))| {
                let kvh = h / n_rep;
                let kh = span(&lt.k, (kvh * len + k0) * hd, w * hd);
                let vh = span(&lt.v, (kvh * len + k0) * hd, w * hd);
                s.resize(t * w, 0.0);
                matmul_strided(&q[h * hd..], qd, &kh, BLayout::JRows(hd), s, w, t, hd, w);
                for r in 0..t {
                    let pos = c0 + r;
                    let lo = first_visible(pos, window);
                    let row = &mut s[r * w..(r + 1) * w];
                    let (llo, lpos) = (lo - k0, pos - k0);
                    softmax_visible(row, llo, lpos, scale);
                    if want {
                        let dst = &mut pr[r * nkeys..(r + 1) * nkeys];
                        for (j, p) in keys.clone().zip(dst.iter_mut()) {
                            if j >= k0 && j < nk {
                                *p = row[j - k0];
                            }
                        }
                    }
                }
                matmul_strided(s, w, &vh, BLayout::KRows(hd), out, hd, t, w, hd);
            });
        for h in 0..nh {
            for r in 0..t {
                out[r * qd + h * hd..r * qd + (h + 1) * hd]
                    .copy_from_slice(&head_out[(h * t + r) * hd..(h * t + r + 1) * hd]);
            }
        }
        if want {
            self.probs = probs;
        }
    }
}
