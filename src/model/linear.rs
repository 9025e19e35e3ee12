//! A weight matrix held as the file stores it (`Linear`): each keeps its own blocks
//! (Q4_K, Q6_K, Q8_0, F16, ...) and every product reads those bytes directly. Prefill
//! dequantises a panel of rows at a time into a small per-task f32 buffer right before
//! its GEMM, or multiplies the blocks with 8-bit activations; decode multiplies the
//! blocks with 8-bit activations. No f32 copy of a matrix stays resident (except
//! matrices that are f32 in the file, and tiny test models).

use anyhow::{bail, Result};
use rayon::prelude::*;

use super::kernels;
use super::quant::tile32::{self, Source};
use super::quant::{self, packed, Format, QMat, QVec, QK};

/// A linear layer `y = W x`, `W` is `[rows = out][cols = in]`.
#[derive(Debug, Clone)]
pub struct Linear {
    pub rows: usize,
    pub cols: usize,
    store: Store,
}

#[derive(Debug, Clone)]
enum Store {
    /// f32 values (F32 tensors, and weights built in memory by tests).
    F32(Vec<f32>),
    /// Q4_1 (and Q8_0) with scales and offsets split from the codes, for the 8-bit
    /// affine row kernels (AVX-512 VNNI / AVX2) the default model's decode speed was
    /// tuned on; the same bytes as the file, rearranged.
    Affine(QMat),
    /// The file's blocks as they are, `rows` rows of `fmt.row_bytes(cols)` bytes.
    Blocks { fmt: Format, data: Vec<u8> },
}

/// Rows per prefill panel are chosen so a panel's f32 copy stays near this many floats
/// (256 KiB: within L2 next to the GEMM's own packing buffers).
const PANEL_FLOATS: usize = 64 * 1024;

/// Matrices from this size on are streamed from memory in decode with software
/// prefetching (K-quants; see `quant::dot_q8_streaming`).
const PREFETCH_MIN_BYTES: usize = 1 << 20;

/// A raw pointer that rayon tasks may share; each task writes a disjoint set of columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: only used to let tasks write disjoint column ranges of one output buffer.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The element `i` places further (a method, so closures capture the whole wrapper
    /// rather than its non-Send raw pointer field).
    ///
    /// # Safety
    /// As for `pointer::add`.
    unsafe fn at(self, i: usize) -> *mut f32 {
        self.0.add(i)
    }
}

impl Linear {
    pub fn from_f32(w: Vec<f32>, rows: usize, cols: usize) -> Self {
        assert_eq!(w.len(), rows * cols);
        Linear {
            rows,
            cols,
            store: Store::F32(w),
        }
    }

    /// A matrix from the bytes of a GGUF tensor of format `fmt` (rows of whole blocks).
    pub fn from_blocks(fmt: Format, data: Vec<u8>, rows: usize, cols: usize) -> Result<Self> {
        fmt.check_cols("matrix", cols)?;
        if data.len() != rows * fmt.row_bytes(cols) {
            bail!(
                "{} data has {} bytes, expected {}",
                fmt.name(),
                data.len(),
                rows * fmt.row_bytes(cols)
            );
        }
        let store = match fmt {
            Format::F32 => {
                let mut w = vec![0f32; rows * cols];
                quant::dequant_row(fmt, &data, &mut w);
                Store::F32(w)
            }
            // The 32-value formats in the rearranged affine store (`QMat::from_blocks`:
            // the same bytes, codes apart from scales): Q8_0's 34-byte blocks made every
            // other 32-byte load of the raw layout straddle a cache line, and the raw
            // Q4_0 / Q5_0 / Q5_1 kernels paid a scalar f16 scale per block (Q5_0 was the
            // slowest decode kernel per value, and most of the bytes of llama.cpp's
            // Q4_K_M mix for hidden sizes that are not a multiple of 256).
            Format::Q4_0 | Format::Q4_1 | Format::Q5_0 | Format::Q5_1 | Format::Q8_0 => {
                Store::Affine(QMat::from_blocks(fmt, data, rows, cols)?)
            }
            _ => Store::Blocks { fmt, data },
        };
        Ok(Linear { rows, cols, store })
    }

    /// The format the weights are held in.
    pub fn format(&self) -> Format {
        match &self.store {
            Store::F32(_) => Format::F32,
            Store::Affine(q) => q.format(),
            Store::Blocks { fmt, .. } => *fmt,
        }
    }

    /// Bytes the weights occupy in memory.
    pub fn bytes(&self) -> usize {
        match &self.store {
            Store::F32(w) => w.len() * 4,
            Store::Affine(q) => q.bytes(),
            Store::Blocks { data, .. } => data.len(),
        }
    }

    /// The whole matrix as f32 (tests and reference computations).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut w = vec![0f32; self.rows * self.cols];
        for (r, row) in w.chunks_exact_mut(self.cols.max(1)).enumerate() {
            self.row_into(r, row);
        }
        w
    }

    // The forward pass multiplies only through these methods, so how a matrix is
    // stored stays private to this module and the kernels.

    /// Row `r` as f32 (an embedding lookup).
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        let c = self.cols;
        match &self.store {
            Store::F32(w) => out.copy_from_slice(&w[r * c..(r + 1) * c]),
            Store::Affine(q) => q.dequant_row(r, out),
            Store::Blocks { fmt, data } => {
                let rb = fmt.row_bytes(c);
                quant::dequant_row(*fmt, &data[r * rb..(r + 1) * rb], out)
            }
        }
    }

    /// Prefill: `out[t][rows] = x[t][cols] . W^T`, parallel. Stored blocks are
    /// dequantised a panel of rows at a time into a per-task buffer, each panel then
    /// multiplied by one single-threaded GEMM into its columns of `out`.
    pub fn matmul(&self, x: &[f32], t: usize, out: &mut [f32]) {
        let (rows, cols) = (self.rows, self.cols);
        if let Store::F32(w) = &self.store {
            kernels::matmul_xwt(x, w, out, t, cols, rows, true);
            return;
        }
        assert!(x.len() >= t * cols && out.len() >= t * rows);
        if t == 0 || rows == 0 {
            return;
        }
        let threads = rayon::current_num_threads().max(1);
        // Enough panels to balance the threads, each at most PANEL_FLOATS when possible.
        let by_size = (rows * cols).div_ceil(PANEL_FLOATS);
        let n_panels = by_size.max(threads * 4).min(rows.div_ceil(8)).max(1);
        let panel = rows.div_ceil(n_panels);
        let dst = OutPtr(out.as_mut_ptr());
        (0..rows.div_ceil(panel)).into_par_iter().for_each_init(
            Vec::new,
            |buf: &mut Vec<f32>, p| {
                let r0 = p * panel;
                let n = panel.min(rows - r0);
                buf.resize(n * cols, 0.0);
                for (i, row) in buf.chunks_exact_mut(cols).enumerate() {
                    self.row_into(r0 + i, row);
                }
                // SAFETY: x holds t rows of cols (asserted); buf holds n rows of cols;
                // out holds t rows of `rows` and this task writes only columns
                // r0..r0 + n of each, which no other task writes.
                unsafe {
                    kernels::gemm_f32(
                        t,
                        n,
                        cols,
                        dst.at(r0),
                        rows,
                        x.as_ptr(),
                        cols,
                        buf.as_ptr(),
                        1,
                        cols,
                        gemm::Parallelism::None,
                    )
                }
            },
        );
    }

    /// The rearranged affine store, if the matrix is held in it (tests of its kernels).
    #[cfg(test)]
    pub(crate) fn affine(&self) -> Option<&QMat> {
        match &self.store {
            Store::Affine(q) => Some(q),
            _ => None,
        }
    }

    /// Which 8-bit activations a product with this matrix reads: `None` for a float
    /// format (it multiplies f32), else whether it needs Q8_K blocks (the K-quants) or
    /// blocks of 32.
    pub fn q8_kind(&self) -> Option<bool> {
        match &self.store {
            Store::F32(_) => None,
            Store::Affine(_) => Some(false),
            Store::Blocks { fmt, .. } if fmt.is_block() => Some(fmt.is_k_quant()),
            Store::Blocks { .. } => None,
        }
    }

    /// Prefill in 8 bits: `out[t][rows] = W . xs[t]` for `t` tokens' quantised
    /// activations (each holding the blocks `q8_kind` asks for), parallel. Each task
    /// takes a band of rows small enough to stay in L2 and walks the tokens a few at a
    /// time, so a row's codes are unpacked once per few tokens and read from L2, not
    /// memory, for all of them. Q4_K and Q6_K bands go through `packed` (eight rows per
    /// vector) when there are enough tokens; the rest through the row kernels. The
    /// matrix must be in a block format.
    pub fn matmul_q8(&self, xs: &[QVec], out: &mut [f32]) {
        let (rows, t) = (self.rows, xs.len());
        assert!(self.q8_kind().is_some() && out.len() >= t * rows);
        if t == 0 || rows == 0 {
            return;
        }
        const BAND_BYTES: usize = 192 * 1024;
        let row_bytes = (self.bytes() / rows).max(1);
        let threads = rayon::current_num_threads().max(1);
        let by_size = (rows * row_bytes).div_ceil(BAND_BYTES);
        let n_bands = by_size.max(threads * 4).min(rows.div_ceil(4)).max(1);
        let packed_fmt = match &self.store {
            Store::Blocks { fmt, .. } if packed::applies(*fmt, t) => Some(*fmt),
            _ => None,
        };
        let mut band = rows.div_ceil(n_bands);
        // The packed kernels take rows eight at a time: bands of whole groups.
        if packed_fmt.is_some() || (self.q8_kind() == Some(false) && tile32::applies(t)) {
            band = band.next_multiple_of(quant::layout::ROWS);
        }
        let b32: Vec<Vec<i16>> = if packed_fmt == Some(Format::Q4K) {
            xs.iter()
                .map(|x| {
                    let mut v = Vec::new();
                    packed::sums32(&x.kbsum, &mut v);
                    v
                })
                .collect()
        } else {
            Vec::new()
        };
        let dst = OutPtr(out.as_mut_ptr());
        (0..rows.div_ceil(band)).into_par_iter().for_each(|bi| {
            let (r0, r1) = (bi * band, ((bi + 1) * band).min(rows));
            // SAFETY (both arms): out holds t rows of `rows`; this task alone writes
            // columns r0..r1.
            match &self.store {
                Store::Affine(qm) => {
                    let put = |i: usize, r: usize, v: f32| unsafe { *dst.at(i * rows + r) = v };
                    let r0 = tile32::band(&Source::Affine(qm), qm.blocks(), r0, r1, xs, put);
                    tokens_by::<4>(
                        xs,
                        r0,
                        r1,
                        |r, g| quant::dot_affine_xn(qm, r, g),
                        |i, r, v| unsafe { *dst.at(i * rows + r) = v },
                    )
                }
                Store::Blocks { fmt, data } => {
                    let rb = fmt.row_bytes(self.cols);
                    let row = |r: usize| &data[r * rb..(r + 1) * rb];
                    let put = |i: usize, r: usize, v: f32| unsafe { *dst.at(i * rows + r) = v };
                    let r0 = if fmt.is_k_quant() {
                        packed::band(*fmt, data, rb, r0, r1, xs, &b32, put)
                    } else {
                        let src = Source::Blocks {
                            fmt: *fmt,
                            data,
                            rb,
                        };
                        tile32::band(&src, self.cols / QK, r0, r1, xs, put)
                    };
                    // The K-quants keep eight tokens' sums in registers (their scales
                    // apply once per super-block); the 32-value formats four.
                    if fmt.is_k_quant() {
                        tokens_by::<8>(
                            xs,
                            r0,
                            r1,
                            |r, g| quant::dot_q8_xn(*fmt, row(r), g),
                            |i, r, v| unsafe { *dst.at(i * rows + r) = v },
                        )
                    } else {
                        tokens_by::<4>(
                            xs,
                            r0,
                            r1,
                            |r, g| quant::dot_q8_xn(*fmt, row(r), g),
                            |i, r, v| unsafe { *dst.at(i * rows + r) = v },
                        )
                    }
                }
                Store::F32(_) => unreachable!("checked above"),
            }
        });
    }

    /// `W x` in 8 bits, parallel over rows (prefill's last-token logits in
    /// `Precision::Q8`, as decode computes logits).
    pub fn matvec_q8(&self, x: &[f32], out: &mut [f32]) {
        const CHUNK: usize = 256;
        let mut qx = QVec::default();
        if let Some(k) = self.q8_kind() {
            qx.quantize_into(x);
            if k {
                qx.quantize_k_into(x);
            }
        }
        out.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(ci, o)| self.matvec_rows(x, &qx, true, ci * CHUNK, o));
    }

    /// Decode: rows `r0..r0 + out.len()` of `W x` on the calling thread; `qx` is `x`
    /// quantised to 8 bits, used when `quant` and the matrix is in a block format.
    /// Without `quant` the products are f32 (rows dequantised on the fly).
    pub fn matvec_rows(&self, x: &[f32], qx: &QVec, quant: bool, r0: usize, out: &mut [f32]) {
        assert!(r0 + out.len() <= self.rows);
        let c = self.cols;
        match &self.store {
            Store::F32(w) => kernels::matvec_f32_rows(w, x, r0, out),
            Store::Affine(qm) if quant => quant::matvec_q_rows(qm, qx, r0, out),
            Store::Affine(qm) => {
                let mut buf = vec![0f32; c];
                for (i, v) in out.iter_mut().enumerate() {
                    qm.dequant_row(r0 + i, &mut buf);
                    *v = kernels::dot(&buf, x);
                }
            }
            Store::Blocks { fmt, data } => {
                let rb = fmt.row_bytes(c);
                let row = |r: usize| &data[r * rb..(r + 1) * rb];
                if !fmt.is_block() {
                    for (i, v) in out.iter_mut().enumerate() {
                        *v = quant::dot_f32(*fmt, row(r0 + i), x);
                    }
                } else if quant {
                    let large = data.len() >= PREFETCH_MIN_BYTES;
                    for (i, v) in out.iter_mut().enumerate() {
                        *v = quant::dot_q8_streaming(*fmt, row(r0 + i), qx, large);
                    }
                } else {
                    let mut buf = vec![0f32; c];
                    for (i, v) in out.iter_mut().enumerate() {
                        quant::dequant_row(*fmt, row(r0 + i), &mut buf);
                        *v = kernels::dot(&buf, x);
                    }
                }
            }
        }
    }

    /// `W x` in f32, parallel over rows (prefill's last-token logits).
    pub fn matvec(&self, x: &[f32], out: &mut [f32]) {
        const CHUNK: usize = 256;
        let none = QVec::default();
        out.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(ci, o)| self.matvec_rows(x, &none, false, ci * CHUNK, o));
    }
}

/// Rows `r0..r1` against every token, `N` tokens at a time: `dot(r, group)` gives row
/// `r`'s products with a group, `put(token, r, value)` stores one. A short last group
/// repeats its last token (computed, not stored).
#[inline(always)]
fn tokens_by<const N: usize>(
    xs: &[QVec],
    r0: usize,
    r1: usize,
    dot: impl Fn(usize, &[&QVec; N]) -> [f32; N],
    put: impl Fn(usize, usize, f32),
) {
    let t = xs.len();
    for t0 in (0..t).step_by(N) {
        let n = (t - t0).min(N);
        let g: [&QVec; N] = std::array::from_fn(|i| &xs[t0 + i.min(n - 1)]);
        for r in r0..r1 {
            let v = dot(r, &g);
            for (i, &vi) in v.iter().enumerate().take(n) {
                put(t0 + i, r, vi);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::{lcg, lcg_vec};
    use crate::model::quant::test_blocks;
    use half::f16;

    /// The 8-bit prefill product of every block format and store (the rearranged affine
    /// Q4_1 / Q8_0 ones included) equals the decode product of each token alone, for a
    /// token count that leaves a short last group.
    #[test]
    fn int8_prefill_product_equals_per_token_products() {
        let (rows, cols, t) = (37, 512, 11);
        let mut s = 4;
        for fmt in quant::ALL.into_iter().filter(|f| f.is_block()) {
            let w: Vec<f32> = lcg_vec(&mut s, rows * cols);
            let (data, _) = test_blocks::candle_blocks(fmt, &w, rows, cols);
            let lin = Linear::from_blocks(fmt, data, rows, cols).unwrap();
            let xs: Vec<QVec> = (0..t)
                .map(|_| {
                    let x: Vec<f32> = (0..cols).map(|_| lcg(&mut s) * 2.0).collect();
                    let mut q = QVec::default();
                    q.quantize_into(&x);
                    q.quantize_k_into(&x);
                    q
                })
                .collect();
            let mut out = vec![0f32; t * rows];
            lin.matmul_q8(&xs, &mut out);
            let none = vec![0f32; cols];
            for (i, x) in xs.iter().enumerate() {
                let mut one = vec![0f32; rows];
                lin.matvec_rows(&none, x, true, 0, &mut one);
                for r in 0..rows {
                    let (a, b) = (out[i * rows + r], one[r]);
                    assert!(
                        (a - b).abs() <= 1e-4,
                        "{} token {i} row {r}: {a} vs {b}",
                        fmt.name()
                    );
                }
            }
        }
    }

    /// A Q8_0 matrix held without stored offsets reads back exactly as the file's
    /// blocks dequantise (codes including -128 and 127), and its 8-bit product matches
    /// the f32 one to quantisation error; it occupies the file's 34 bytes per block.
    #[test]
    fn q8_0_held_without_offsets_reads_back_exactly() {
        let (rows, cols) = (5, 96);
        let mut seed = 5u64;
        let mut raw = Vec::new();
        for b in 0..rows * cols / QK {
            let d = f16::from_f32(0.001 + 0.0005 * (b % 7) as f32);
            raw.extend_from_slice(&d.to_le_bytes());
            for j in 0..QK {
                let c = match j {
                    0 => -128i8,
                    1 => 127,
                    _ => (kernels::lcg(&mut seed) * 127.0) as i8,
                };
                raw.push(c as u8);
            }
        }
        let w = Linear::from_blocks(Format::Q8_0, raw.clone(), rows, cols).expect("q8_0");
        assert_eq!(w.bytes(), raw.len());
        let rb = Format::Q8_0.row_bytes(cols);
        let (mut a, mut e) = (vec![0f32; cols], vec![0f32; cols]);
        for r in 0..rows {
            w.row_into(r, &mut a);
            quant::dequant_row(Format::Q8_0, &raw[r * rb..(r + 1) * rb], &mut e);
            assert_eq!(a, e, "row {r}");
        }
        let x: Vec<f32> = lcg_vec(&mut seed, cols);
        let mut qx = QVec::default();
        qx.quantize_into(&x);
        let mut fast = vec![0f32; rows];
        w.matvec_rows(&x, &qx, true, 0, &mut fast);
        for (r, &f) in fast.iter().enumerate() {
            w.row_into(r, &mut a);
            let exact = kernels::dot(&a, &x);
            let norm = a.iter().map(|v| v.abs()).sum::<f32>();
            assert!((f - exact).abs() <= 0.01 * norm, "row {r}: {f} vs {exact}");
        }
    }
}
