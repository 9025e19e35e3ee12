//! The result of one prefill: everything kvscope knows about how the model attended to a
//! prompt. Computed once per prompt; every eviction method and every attention view reads
//! from it, none of them runs the model again.

use half::f16;
use serde::Serialize;
use std::borrow::Cow;

/// Number of query rows at the end of the prompt the Trace keeps per head, so the
/// observation window can be changed without re-running prefill.
pub const W_MAX: usize = 64;

/// Largest side of a block-averaged attention map.
pub const MAX_MAP_BLOCKS: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Dims {
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl Dims {
    /// Query heads per KV head (GQA group size).
    pub fn n_rep(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }
}

/// Block-averaged attention map of one head: `blocks x blocks` cells, each the mean of
/// the attention probabilities (causally masked cells count as 0) of the query x key
/// block it covers. `block_size` tokens per block; the last block may be shorter.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockMap {
    pub len: usize,
    pub block_size: usize,
    pub blocks: usize,
    /// Row-major `[query block][key block]`.
    pub mean: Vec<f32>,
}

impl BlockMap {
    pub fn geometry(len: usize) -> (usize, usize) {
        let block_size = len.div_ceil(MAX_MAP_BLOCKS).max(1);
        (block_size, len.div_ceil(block_size))
    }

    /// Tokens covered by block `b` along either axis.
    pub fn block_span(&self, b: usize) -> std::ops::Range<usize> {
        let start = b * self.block_size;
        start..((b + 1) * self.block_size).min(self.len)
    }

    pub fn cell(&self, qb: usize, kb: usize) -> f32 {
        self.mean[qb * self.blocks + kb]
    }

    /// Sum of the attention probabilities the block covers (mean x cell count).
    pub fn cell_sum(&self, qb: usize, kb: usize) -> f64 {
        let n = self.block_span(qb).len() * self.block_span(kb).len();
        self.cell(qb, kb) as f64 * n as f64
    }
}

/// Keys or values of one layer. Prefill computes them in f32; the Trace keeps them in
/// the decode cache's storage type ([`crate::model::Model::kv_dtype`]): f16 on the fast
/// path, which the decode cache rounds them to anyway, so the largest buffer of a long
/// prompt takes half the memory and decoding reads the same values.
#[derive(Debug, Clone, PartialEq)]
pub enum KvStore {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

impl KvStore {
    /// `xs` stored as f16 when `half` is set, else as is.
    pub fn from_f32(xs: Vec<f32>, half: bool) -> KvStore {
        if half {
            KvStore::F16(xs.iter().map(|&x| f16::from_f32(x)).collect())
        } else {
            KvStore::F32(xs)
        }
    }

    pub fn len(&self) -> usize {
        match self {
            KvStore::F32(v) => v.len(),
            KvStore::F16(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match self {
            KvStore::F32(v) => v.len() * 4,
            KvStore::F16(v) => v.len() * 2,
        }
    }

    /// `n` values from `at` as f32: borrowed when stored as f32, converted otherwise.
    pub fn f32s(&self, at: usize, n: usize) -> Cow<'_, [f32]> {
        match self {
            KvStore::F32(v) => Cow::Borrowed(&v[at..at + n]),
            KvStore::F16(v) => {
                use half::slice::HalfFloatSliceExt;
                Cow::Owned(v[at..at + n].to_f32_vec())
            }
        }
    }

    /// Every value as f32 (for tests and exports; hot readers take a head's block).
    pub fn to_f32(&self) -> Cow<'_, [f32]> {
        self.f32s(0, self.len())
    }

    /// The values of `ranges`, concatenated, in the same storage type.
    pub fn gather(&self, ranges: impl Iterator<Item = std::ops::Range<usize>>) -> KvStore {
        match self {
            KvStore::F32(v) => KvStore::F32(ranges.flat_map(|r| v[r].iter().copied()).collect()),
            KvStore::F16(v) => KvStore::F16(ranges.flat_map(|r| v[r].iter().copied()).collect()),
        }
    }
}

/// What prefill recorded for one layer.
#[derive(Debug, Clone)]
pub struct LayerTrace {
    /// Post-RoPE keys, `[kv_head][position][head_dim]`.
    pub k: KvStore,
    /// Values, `[kv_head][position][head_dim]`.
    pub v: KvStore,
    /// Post-RoPE queries of the last `w_max` prompt positions, `[head][row][head_dim]`.
    pub q_last: Vec<f32>,
    /// Attention each key received, summed over all prompt query rows, `[head][position]`.
    pub col_sums: Vec<f32>,
    /// One block map per query head.
    pub maps: Vec<BlockMap>,
}

/// Prefill result for one prompt.
#[derive(Debug, Clone)]
pub struct Trace {
    pub dims: Dims,
    /// Prompt length `L`.
    pub len: usize,
    /// Rows kept in `q_last`: `min(W_MAX, len)`.
    pub w_max: usize,
    pub ids: Vec<u32>,
    pub layers: Vec<LayerTrace>,
    /// Logits after the last prompt token (they pick the first generated token, which
    /// eviction cannot change because prefill always runs on the full cache).
    pub last_logits: Vec<f32>,
    /// `[layer]`: `Some(S)` for a sliding-window layer (attends to positions
    /// `(p - S, p]` only), `None` for a global one. Empty means every layer is global.
    pub windows: Vec<Option<usize>>,
}

/// Bytes held by block maps (they move out of the Trace into the inspector's snapshot).
pub fn maps_bytes(maps: &[Vec<BlockMap>]) -> usize {
    maps.iter()
        .flatten()
        .map(|b| b.mean.len() * std::mem::size_of::<f32>())
        .sum()
}

impl Trace {
    /// Bytes this Trace holds: K, V, the last queries, column sums, block maps and the
    /// last logits (what `kvscope bench` and the memory pane report as "Trace").
    pub fn resident_bytes(&self) -> usize {
        let f = std::mem::size_of::<f32>();
        self.layers
            .iter()
            .map(|l| {
                l.k.bytes()
                    + l.v.bytes()
                    + (l.q_last.len() + l.col_sums.len()) * f
                    + maps_bytes(std::slice::from_ref(&l.maps))
            })
            .sum::<usize>()
            + self.last_logits.len() * f
    }
    fn kv_offset(&self, kv_head: usize, pos: usize) -> usize {
        (kv_head * self.len + pos) * self.dims.head_dim
    }

    /// Every key of one KV head, `[position][head_dim]`, as f32: borrowed when stored
    /// as f32, converted in one pass otherwise (readers that walk many keys take this
    /// block once instead of converting key by key).
    pub fn keys(&self, layer: usize, kv_head: usize) -> Cow<'_, [f32]> {
        let o = self.kv_offset(kv_head, 0);
        self.layers[layer].k.f32s(o, self.len * self.dims.head_dim)
    }

    /// Every value of one KV head, as [`Trace::keys`].
    pub fn values(&self, layer: usize, kv_head: usize) -> Cow<'_, [f32]> {
        let o = self.kv_offset(kv_head, 0);
        self.layers[layer].v.f32s(o, self.len * self.dims.head_dim)
    }

    /// One key as f32 (converted from the stored type where it is f16).
    pub fn key(&self, layer: usize, kv_head: usize, pos: usize) -> Cow<'_, [f32]> {
        let o = self.kv_offset(kv_head, pos);
        self.layers[layer].k.f32s(o, self.dims.head_dim)
    }

    /// One value as f32.
    pub fn value(&self, layer: usize, kv_head: usize, pos: usize) -> Cow<'_, [f32]> {
        let o = self.kv_offset(kv_head, pos);
        self.layers[layer].v.f32s(o, self.dims.head_dim)
    }

    /// Query row `row` of the last `w_max` rows (row 0 is position `len - w_max`).
    pub fn query(&self, layer: usize, head: usize, row: usize) -> &[f32] {
        let o = (head * self.w_max + row) * self.dims.head_dim;
        &self.layers[layer].q_last[o..o + self.dims.head_dim]
    }

    /// Column sums of attention for one query head (length `len`).
    pub fn col_sums(&self, layer: usize, head: usize) -> &[f32] {
        &self.layers[layer].col_sums[head * self.len..(head + 1) * self.len]
    }

    /// The sliding window of `layer` (`None`: a global layer).
    pub fn window(&self, layer: usize) -> Option<usize> {
        self.windows.get(layer).copied().flatten()
    }

    pub fn has_sliding_layers(&self) -> bool {
        self.windows.iter().any(|w| w.is_some())
    }

    /// Prompt entries the full cache of `layer` holds per KV head: `L`, or `min(L, S)`
    /// for a sliding layer (the only ones it can attend to again).
    pub fn full_entries(&self, layer: usize) -> usize {
        self.window(layer).map_or(self.len, |s| s.min(self.len))
    }

    /// Bytes of K and V the full cache holds for the prompt at `elem_bytes` per element.
    pub fn full_kv_bytes(&self, elem_bytes: usize) -> usize {
        (0..self.dims.n_layers)
            .map(|l| self.full_entries(l))
            .sum::<usize>()
            * self.dims.n_kv_heads
            * self.dims.head_dim
            * 2
            * elem_bytes
    }
}
