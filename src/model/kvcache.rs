//! The decode-time KV cache of one KV head and the attention kernel that reads it.
//!
//! At long contexts decoding is bound by reading the cache (at 4K tokens the default
//! model's f32 cache is 189 MB per token), so the fast path stores it in f16 as llama.cpp
//! does, halving the bytes; `Precision::F32` keeps f32 for exact reference checks.
//! Keys are stored in tiles of [`TILE`] entries, dimension-major inside a tile
//! (`k[tile][dim][slot]`): the scores of a tile for every query head of the GQA group
//! build up in registers while the keys stream through memory in order. Values are
//! entry-major, so the output is one scaled add per entry.

use anyhow::{bail, Result};
use half::f16;

use super::kernels::fast_exp;

/// Entries per key tile (one AVX-512 register of f32 scores).
pub const TILE: usize = 16;

/// How cache elements are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvDtype {
    F16,
    F32,
}

impl KvDtype {
    pub fn name(self) -> &'static str {
        match self {
            KvDtype::F16 => "f16",
            KvDtype::F32 => "f32",
        }
    }

    pub fn bytes(self) -> usize {
        match self {
            KvDtype::F16 => 2,
            KvDtype::F32 => 4,
        }
    }
}

/// A storage element of the cache.
pub trait Elem: Copy + Default + Send + Sync + 'static {
    fn from_f32(x: f32) -> Self;
    fn to_f32(self) -> f32;
    /// `dst = src` in f32, a slice at a time (for f16, `half`'s SIMD conversion).
    fn widen(src: &[Self], dst: &mut [f32]);
}

impl Elem for f32 {
    fn from_f32(x: f32) -> Self {
        x
    }
    fn to_f32(self) -> f32 {
        self
    }
    fn widen(src: &[Self], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
}

impl Elem for f16 {
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn widen(src: &[Self], dst: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        src.convert_to_f32_slice(dst);
    }
}

#[derive(Debug, Clone)]
enum Store {
    F32 { k: Vec<f32>, v: Vec<f32> },
    F16 { k: Vec<f16>, v: Vec<f16> },
}

/// The cache of one KV head: only the entries it keeps, plus what decoding appends.
#[derive(Debug, Clone)]
pub struct HeadCache {
    /// Original position of every entry (kept prompt positions, then generated ones).
    pub positions: Vec<usize>,
    cap: usize,
    head_dim: usize,
    store: Store,
}

/// Where a running max, the sum of exponentials and the weighted values of one query
/// head over part of a cache end up (a flash-decoding partial result).
#[derive(Debug, Clone, Copy)]
pub struct Partial {
    pub max: f32,
    pub sum: f32,
}

impl HeadCache {
    pub fn with_capacity(cap: usize, head_dim: usize, dtype: KvDtype) -> Self {
        let tiles = cap.div_ceil(TILE);
        let store = match dtype {
            KvDtype::F32 => Store::F32 {
                k: vec![0.0; tiles * TILE * head_dim],
                v: Vec::with_capacity(cap * head_dim),
            },
            KvDtype::F16 => Store::F16 {
                k: vec![f16::ZERO; tiles * TILE * head_dim],
                v: Vec::with_capacity(cap * head_dim),
            },
        };
        HeadCache {
            positions: Vec::with_capacity(cap),
            cap,
            head_dim,
            store,
        }
    }

    pub fn len(&self) -> usize {
        self.positions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// Bytes of K and V this head holds now (its entries at the storage type).
    pub fn bytes(&self) -> usize {
        self.len() * self.head_dim * 2 * self.dtype().bytes()
    }

    pub fn is_full(&self) -> bool {
        self.positions.len() >= self.cap
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    pub fn dtype(&self) -> KvDtype {
        match self.store {
            Store::F32 { .. } => KvDtype::F32,
            Store::F16 { .. } => KvDtype::F16,
        }
    }

    pub fn push(&mut self, pos: usize, k: &[f32], v: &[f32]) -> Result<()> {
        let n = self.positions.len();
        if n >= self.cap {
            bail!(
                "decode cache is full ({} entries); raise the token allowance",
                self.cap
            );
        }
        let base = key_slot(n, 0, self.head_dim);
        fn put<E: Elem>(ks: &mut [E], vs: &mut Vec<E>, base: usize, k: &[f32], v: &[f32]) {
            for (i, &x) in k.iter().enumerate() {
                ks[base + i * TILE] = E::from_f32(x);
            }
            vs.extend(v.iter().map(|&x| E::from_f32(x)));
        }
        match &mut self.store {
            Store::F32 { k: ks, v: vs } => put(ks, vs, base, k, v),
            Store::F16 { k: ks, v: vs } => put(ks, vs, base, k, v),
        }
        self.positions.push(pos);
        Ok(())
    }

    /// Key of entry `j` as stored (rounded to the storage type), in f32.
    pub fn key(&self, j: usize) -> Vec<f32> {
        let hd = self.head_dim;
        let base = key_slot(j, 0, hd);
        match &self.store {
            Store::F32 { k, .. } => (0..hd).map(|i| k[base + i * TILE]).collect(),
            Store::F16 { k, .. } => (0..hd).map(|i| k[base + i * TILE].to_f32()).collect(),
        }
    }

    /// Adds `w * value(j)` to `out`.
    pub fn add_value(&self, j: usize, w: f32, out: &mut [f32]) {
        let hd = self.head_dim;
        match &self.store {
            Store::F32 { v, .. } => add_scaled(out, w, &v[j * hd..(j + 1) * hd]),
            Store::F16 { v, .. } => add_scaled(out, w, &v[j * hd..(j + 1) * hd]),
        }
    }

    /// Attention of a GQA group's query heads over entries `[a, b)` (`a` a multiple of
    /// [`TILE`]), the part one thread computes. For query head `r`: `probs[r]` (length
    /// `b - a`) receives `exp(score - max)`, `parts[r]` the max and the sum of those
    /// exponentials, and `acc[r * head_dim..]` the exponential-weighted sum of values.
    /// The parts of all threads combine into the exact softmax (see [`combine`]).
    pub fn attend_part(
        &self,
        qs: &[&[f32]],
        scale: f32,
        range: (usize, usize),
        probs: &mut [&mut [f32]],
        parts: &mut [Partial],
        acc: &mut [f32],
    ) {
        self.attend_part_from(qs, scale, range, 0, probs, parts, acc);
    }

    /// [`attend_part`](Self::attend_part) where entries before `lo` are outside the
    /// query's window (a sliding-window layer): they get probability 0.
    #[allow(clippy::too_many_arguments)]
    pub fn attend_part_from(
        &self,
        qs: &[&[f32]],
        scale: f32,
        (a, b): (usize, usize),
        lo: usize,
        probs: &mut [&mut [f32]],
        parts: &mut [Partial],
        acc: &mut [f32],
    ) {
        let hd = self.head_dim;
        acc.fill(0.0);
        if a >= b {
            parts.fill(Partial {
                max: f32::NEG_INFINITY,
                sum: 0.0,
            });
            return;
        }
        assert!(a % TILE == 0 && b <= self.len(), "attention part {a}..{b}");
        match &self.store {
            Store::F32 { k, .. } => scores(k, hd, qs, scale, (a, b), probs),
            Store::F16 { k, .. } => scores(k, hd, qs, scale, (a, b), probs),
        }
        // Entries of [a, b) before the window.
        let masked = lo.clamp(a, b) - a;
        for (p, part) in probs.iter_mut().zip(parts.iter_mut()) {
            p[..masked].fill(f32::NEG_INFINITY);
            let max = lanes_max(p);
            let mut sum = 0.0;
            if max > f32::NEG_INFINITY {
                // Separate loops: one with a running f32 sum would not vectorise.
                for x in p.iter_mut() {
                    *x = fast_exp(*x - max);
                }
                p[..masked].fill(0.0);
                sum = lanes_sum(p);
            } else {
                p.fill(0.0);
            }
            *part = Partial { max, sum };
        }
        let probs: Vec<&[f32]> = probs.iter().map(|p| &**p).collect();
        match &self.store {
            Store::F32 { v, .. } => values(v, hd, &probs, a, acc),
            Store::F16 { v, .. } => values(v, hd, &probs, a, acc),
        }
    }
}

/// Maximum of a slice with 16 independent lanes (a single running max is one long
/// dependency chain the compiler will not reorder).
fn lanes_max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = a.max(v);
        }
    }
    let tail = chunks
        .remainder()
        .iter()
        .cloned()
        .fold(f32::NEG_INFINITY, f32::max);
    acc.iter().cloned().fold(tail, f32::max)
}

/// Sum of a slice with 16 independent lanes (vectorises; the order of additions differs
/// from a left-to-right sum only by rounding).
fn lanes_sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    chunks.remainder().iter().sum::<f32>() + acc.iter().sum::<f32>()
}

/// Index of dimension `i` of entry `n` in the tiled key store.
#[inline(always)]
fn key_slot(n: usize, i: usize, hd: usize) -> usize {
    (n / TILE) * TILE * hd + i * TILE + n % TILE
}

/// Folds the threads' partial results of one query head into the softmax-weighted
/// output (`accs[t]` is thread t's weighted value sum) and returns, per thread, the
/// factor that turns its `exp(score - max_t)` values into probabilities.
pub fn combine(parts: &[Partial], accs: &[&[f32]], out: &mut [f32]) -> Vec<f32> {
    let max = parts
        .iter()
        .map(|p| p.max)
        .fold(f32::NEG_INFINITY, f32::max);
    let weights: Vec<f32> = parts
        .iter()
        .map(|p| {
            if p.max > f32::NEG_INFINITY {
                (p.max - max).exp()
            } else {
                0.0
            }
        })
        .collect();
    let total: f32 = parts.iter().zip(&weights).map(|(p, w)| p.sum * w).sum();
    let inv = if total > 0.0 { 1.0 / total } else { 0.0 };
    out.fill(0.0);
    for (acc, w) in accs.iter().zip(&weights) {
        add_scaled(out, w * inv, acc);
    }
    weights.iter().map(|w| w * inv).collect()
}

/// `out += w * x` for any storage element.
#[inline]
fn add_scaled<E: Elem>(out: &mut [f32], w: f32, x: &[E]) {
    for (o, &e) in out.iter_mut().zip(x) {
        *o += w * e.to_f32();
    }
}

/// Scores of a tile range for every query head (scaled dot products).
fn scores<E: Elem>(
    k: &[E],
    hd: usize,
    qs: &[&[f32]],
    scale: f32,
    (a, b): (usize, usize),
    probs: &mut [&mut [f32]],
) {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    {
        if let Some(k16) = f16_bits(k) {
            for (hb, chunk) in probs.chunks_mut(4).enumerate() {
                let q4 = scaled_queries(&qs[hb * 4..hb * 4 + chunk.len()], scale, hd);
                // SAFETY: avx512f is enabled at compile time; indices stay inside the
                // tiles below `b`.
                unsafe { avx512::scores_f16(k16, hd, &q4, (a, b), chunk) };
            }
            return;
        }
    }
    scores_generic(k, hd, qs, scale, (a, b), probs);
}

/// `x` as the bits of its f16 values when the storage element is f16 (the AVX-512
/// kernels convert them themselves), else `None`.
#[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
fn f16_bits<E: Elem>(x: &[E]) -> Option<&[u16]> {
    (std::any::TypeId::of::<E>() == std::any::TypeId::of::<f16>()).then(|| {
        // SAFETY: E is f16 (checked), which is a u16 in memory.
        unsafe { std::slice::from_raw_parts(x.as_ptr() as *const u16, x.len()) }
    })
}

/// Up to four query heads scaled by `scale`, padded with zero heads to four.
#[cfg_attr(
    not(all(target_arch = "x86_64", target_feature = "avx512f")),
    allow(dead_code)
)]
fn scaled_queries(qs: &[&[f32]], scale: f32, hd: usize) -> Vec<f32> {
    let mut q4 = vec![0.0f32; 4 * hd];
    for (r, q) in qs.iter().enumerate() {
        for (o, &x) in q4[r * hd..(r + 1) * hd].iter_mut().zip(q.iter()) {
            *o = x * scale;
        }
    }
    q4
}

fn scores_generic<E: Elem>(
    k: &[E],
    hd: usize,
    qs: &[&[f32]],
    scale: f32,
    (a, b): (usize, usize),
    probs: &mut [&mut [f32]],
) {
    // Each key tile is widened to f32 once for all heads; the loops over 16-entry rows
    // of f32 then vectorise on any SIMD level.
    let mut tile = [0f32; TILE];
    let mut kf = vec![0f32; TILE * hd];
    for t0 in (a..b).step_by(TILE) {
        let n = (b - t0).min(TILE);
        E::widen(
            &k[(t0 / TILE) * TILE * hd..(t0 / TILE + 1) * TILE * hd],
            &mut kf,
        );
        for (q, p) in qs.iter().zip(probs.iter_mut()) {
            tile.fill(0.0);
            for (i, row) in kf.chunks_exact(TILE).enumerate() {
                let qi = q[i] * scale;
                for (s, &kv) in tile.iter_mut().zip(row) {
                    *s += qi * kv;
                }
            }
            p[t0 - a..t0 - a + n].copy_from_slice(&tile[..n]);
        }
    }
}

/// `acc[r] += sum_j probs[r][j] * v[a + j]` for every query head `r`.
fn values<E: Elem>(v: &[E], hd: usize, probs: &[&[f32]], a: usize, acc: &mut [f32]) {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    {
        if let Some(v16) = f16_bits(v).filter(|_| hd.is_multiple_of(64)) {
            for (hb, ps) in probs.chunks(4).enumerate() {
                let out = &mut acc[hb * 4 * hd..(hb * 4 + ps.len()) * hd];
                // SAFETY: as in `scores`; rows a..a+len exist because len <= cache length.
                unsafe { avx512::values_f16(v16, hd, ps, a, out) };
            }
            return;
        }
    }
    values_generic(v, hd, probs, a, acc);
}

fn values_generic<E: Elem>(v: &[E], hd: usize, probs: &[&[f32]], a: usize, acc: &mut [f32]) {
    let n = probs.first().map_or(0, |p| p.len());
    let mut row = vec![0f32; hd];
    for j in 0..n {
        E::widen(&v[(a + j) * hd..(a + j + 1) * hd], &mut row);
        for (r, p) in probs.iter().enumerate() {
            add_scaled(&mut acc[r * hd..(r + 1) * hd], p[j], &row);
        }
    }
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
mod avx512 {
    use super::TILE;
    use std::arch::x86_64::*;

    /// Scores of up to four query heads (`q4`: four pre-scaled heads, zero-padded) over
    /// the tiles of `[a, b)`; written to `probs[r][j - a]`.
    pub unsafe fn scores_f16(
        k: &[u16],
        hd: usize,
        q4: &[f32],
        (a, b): (usize, usize),
        probs: &mut [&mut [f32]],
    ) {
        let nh = probs.len();
        let end_tile = b.div_ceil(TILE);
        assert!(end_tile * TILE * hd <= k.len() && q4.len() >= 4 * hd);
        let qp = q4.as_ptr();
        for t in a / TILE..end_tile {
            let kt = k.as_ptr().add(t * TILE * hd);
            let mut s0 = _mm512_setzero_ps();
            let mut s1 = _mm512_setzero_ps();
            let mut s2 = _mm512_setzero_ps();
            let mut s3 = _mm512_setzero_ps();
            for i in 0..hd {
                let kv = _mm512_cvtph_ps(_mm256_loadu_si256(kt.add(i * TILE) as *const __m256i));
                s0 = _mm512_fmadd_ps(_mm512_set1_ps(*qp.add(i)), kv, s0);
                s1 = _mm512_fmadd_ps(_mm512_set1_ps(*qp.add(hd + i)), kv, s1);
                s2 = _mm512_fmadd_ps(_mm512_set1_ps(*qp.add(2 * hd + i)), kv, s2);
                s3 = _mm512_fmadd_ps(_mm512_set1_ps(*qp.add(3 * hd + i)), kv, s3);
            }
            let t0 = t * TILE;
            let n = (b - t0).min(TILE);
            let mask: __mmask16 = if n == TILE { 0xffff } else { (1u16 << n) - 1 };
            for (r, s) in [s0, s1, s2, s3].into_iter().enumerate().take(nh) {
                let p = &mut probs[r][t0 - a..t0 - a + n];
                _mm512_mask_storeu_ps(p.as_mut_ptr(), mask, s);
            }
        }
    }

    /// `acc[r] += sum_j probs[r][j] * v[a + j]` for up to four query heads; `hd` must
    /// be a multiple of 64.
    pub unsafe fn values_f16(v: &[u16], hd: usize, probs: &[&[f32]], a: usize, acc: &mut [f32]) {
        match probs.len() {
            1 => values_n::<1>(v, hd, probs, a, acc),
            2 => values_n::<2>(v, hd, probs, a, acc),
            3 => values_n::<3>(v, hd, probs, a, acc),
            _ => values_n::<4>(v, hd, probs, a, acc),
        }
    }

    /// 64 dimensions at a time: `NH * 4` accumulators and 4 value registers stay in
    /// registers while the value rows stream by.
    unsafe fn values_n<const NH: usize>(
        v: &[u16],
        hd: usize,
        probs: &[&[f32]],
        a: usize,
        acc: &mut [f32],
    ) {
        let n = probs.first().map_or(0, |p| p.len());
        assert!(probs.len() == NH && hd.is_multiple_of(64));
        assert!((a + n) * hd <= v.len() && acc.len() >= NH * hd);
        assert!(probs.iter().all(|p| p.len() == n));
        let pp: [*const f32; NH] = std::array::from_fn(|r| probs[r].as_ptr());
        for d0 in (0..hd).step_by(64) {
            let mut acc_r = [[_mm512_setzero_ps(); 4]; NH];
            for j in 0..n {
                let row = v.as_ptr().add((a + j) * hd + d0);
                let vv: [__m512; 4] = std::array::from_fn(|c| {
                    _mm512_cvtph_ps(_mm256_loadu_si256(row.add(c * 16) as *const __m256i))
                });
                for r in 0..NH {
                    let pr = _mm512_set1_ps(*pp[r].add(j));
                    for c in 0..4 {
                        acc_r[r][c] = _mm512_fmadd_ps(pr, vv[c], acc_r[r][c]);
                    }
                }
            }
            for (r, ar) in acc_r.iter().enumerate() {
                for (c, x) in ar.iter().enumerate() {
                    let o = acc.as_mut_ptr().add(r * hd + d0 + c * 16);
                    _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), *x));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::kernels::lcg;
    use super::*;

    /// Softmax attention of `q` over the cache in f64, from the stored (rounded) keys
    /// and values.
    fn reference(hc: &HeadCache, q: &[f32], scale: f32) -> (Vec<f64>, Vec<f64>) {
        let hd = hc.head_dim();
        let s: Vec<f64> = (0..hc.len())
            .map(|j| {
                let k = hc.key(j);
                (0..hd).map(|i| q[i] as f64 * k[i] as f64).sum::<f64>() * scale as f64
            })
            .collect();
        let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
        let z: f64 = e.iter().sum();
        let p: Vec<f64> = e.iter().map(|x| x / z).collect();
        let mut o = vec![0f64; hd];
        for (j, &pj) in p.iter().enumerate() {
            let mut row = vec![0f32; hd];
            hc.add_value(j, 1.0, &mut row);
            for i in 0..hd {
                o[i] += pj * row[i] as f64;
            }
        }
        (p, o)
    }

    /// Split attention over 1-3 thread parts, recombined, equals the one-pass softmax,
    /// for both storage types, group sizes 1-5 and lengths around tile edges.
    #[test]
    fn split_attention_recombines_to_the_softmax() {
        let mut seed = 3;
        for dtype in [KvDtype::F32, KvDtype::F16] {
            for (hd, n_rep, len) in [(64, 3, 37), (16, 1, 16), (32, 5, 1), (64, 4, 200)] {
                let mut hc = HeadCache::with_capacity(len + 3, hd, dtype);
                for p in 0..len {
                    let k: Vec<f32> = (0..hd).map(|_| lcg(&mut seed) * 2.0).collect();
                    let v: Vec<f32> = (0..hd).map(|_| lcg(&mut seed)).collect();
                    hc.push(p, &k, &v).unwrap();
                }
                let qs: Vec<Vec<f32>> = (0..n_rep)
                    .map(|_| (0..hd).map(|_| lcg(&mut seed)).collect())
                    .collect();
                let qr: Vec<&[f32]> = qs.iter().map(|q| q.as_slice()).collect();
                let scale = 1.0 / (hd as f32).sqrt();
                for threads in 1..=3usize {
                    let tiles = len.div_ceil(TILE);
                    let bounds: Vec<(usize, usize)> = (0..threads)
                        .map(|t| {
                            let (ta, tb) = (tiles * t / threads, tiles * (t + 1) / threads);
                            ((ta * TILE).min(len), (tb * TILE).min(len))
                        })
                        .collect();
                    let mut probs = vec![vec![0f32; len]; n_rep];
                    let mut parts = vec![vec![Partial { max: 0.0, sum: 0.0 }; n_rep]; threads];
                    let mut accs = vec![vec![0f32; n_rep * hd]; threads];
                    for (t, &(a, b)) in bounds.iter().enumerate() {
                        let mut ps: Vec<&mut [f32]> =
                            probs.iter_mut().map(|p| &mut p[a..b]).collect();
                        hc.attend_part(&qr, scale, (a, b), &mut ps, &mut parts[t], &mut accs[t]);
                    }
                    for r in 0..n_rep {
                        let (p_ref, o_ref) = reference(&hc, &qs[r], scale);
                        let pr: Vec<Partial> = parts.iter().map(|p| p[r]).collect();
                        let ar: Vec<&[f32]> =
                            accs.iter().map(|a| &a[r * hd..(r + 1) * hd]).collect();
                        let mut out = vec![0f32; hd];
                        let f = combine(&pr, &ar, &mut out);
                        for (i, (&o, &e)) in out.iter().zip(&o_ref).enumerate() {
                            assert!(
                                (o as f64 - e).abs() < 1e-5,
                                "{dtype:?} hd {hd} rep {n_rep} len {len} threads {threads} dim {i}: {o} vs {e}"
                            );
                        }
                        for (t, &(a, b)) in bounds.iter().enumerate() {
                            for j in a..b {
                                let p = probs[r][j] * f[t];
                                assert!((p as f64 - p_ref[j]).abs() < 1e-6, "prob {j}");
                            }
                        }
                    }
                }
            }
        }
    }

    /// The portable f16 kernels (CPUs without AVX-512) give what the dispatching ones
    /// give on this CPU, for scores over tile ranges and for value sums.
    #[test]
    fn portable_f16_kernels_equal_the_dispatched_ones() {
        let mut seed = 5;
        let (hd, len) = (64, 45);
        let mut hc = HeadCache::with_capacity(len, hd, KvDtype::F16);
        for p in 0..len {
            let k: Vec<f32> = (0..hd).map(|_| lcg(&mut seed)).collect();
            let v: Vec<f32> = (0..hd).map(|_| lcg(&mut seed)).collect();
            hc.push(p, &k, &v).unwrap();
        }
        let Store::F16 { k, v } = &hc.store else {
            panic!("f16 store expected")
        };
        let qs: Vec<Vec<f32>> = (0..5)
            .map(|_| (0..hd).map(|_| lcg(&mut seed)).collect())
            .collect();
        let qr: Vec<&[f32]> = qs.iter().map(|q| q.as_slice()).collect();
        let (a, b) = (16, len);
        let mut p1 = vec![vec![0f32; b - a]; 5];
        let mut p2 = p1.clone();
        {
            let mut r1: Vec<&mut [f32]> = p1.iter_mut().map(|p| p.as_mut_slice()).collect();
            let mut r2: Vec<&mut [f32]> = p2.iter_mut().map(|p| p.as_mut_slice()).collect();
            scores(k, hd, &qr, 0.125, (a, b), &mut r1);
            scores_generic(k, hd, &qr, 0.125, (a, b), &mut r2);
        }
        for (x, y) in p1.iter().flatten().zip(p2.iter().flatten()) {
            assert!((x - y).abs() < 1e-5, "{x} vs {y}");
        }
        let pr: Vec<&[f32]> = p1.iter().map(|p| p.as_slice()).collect();
        let (mut o1, mut o2) = (vec![0f32; 5 * hd], vec![0f32; 5 * hd]);
        values(v, hd, &pr, a, &mut o1);
        values_generic(v, hd, &pr, a, &mut o2);
        for (x, y) in o1.iter().zip(&o2) {
            assert!((x - y).abs() < 1e-4, "{x} vs {y}");
        }
    }

    #[test]
    fn f16_store_rounds_like_half() {
        let mut hc = HeadCache::with_capacity(20, 16, KvDtype::F16);
        for p in 0..20 {
            let k: Vec<f32> = (0..16).map(|i| (p * 16 + i) as f32 * 0.001 + 0.1).collect();
            hc.push(p, &k, &k).unwrap();
        }
        let k = hc.key(17);
        assert_eq!(
            k[3],
            f16::from_f32(0.1 + (17 * 16 + 3) as f32 * 0.001).to_f32()
        );
        let mut v = vec![0f32; 16];
        hc.add_value(17, 1.0, &mut v);
        assert_eq!(v, k);
        assert!(hc.push(20, &k, &k).is_err(), "full cache refuses a push");
    }
}
