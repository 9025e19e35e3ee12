//! Numeric kernels of the forward pass: f32 GEMM for prefill (the `gemm` crate, the same
//! engine candle's CPU backend uses), an 8-bit matrix-vector product for decode, and the
//! small element-wise pieces (RMSNorm, softmax, SiLU; RoPE is in `rope.rs`).

use half::f16;
use rayon::prelude::*;

/// Elements per quantisation block (the GGUF Q4_x / Q8_0 block size).
pub const QK: usize = 32;

/// `out[t][j] = sum_k x[t][k] * w[j][k]`: `x` is `[t][k]` row-major, `w` is `[n][k]`
/// row-major (a linear layer's weight as stored), `out` is `[t][n]`.
pub fn matmul_xwt(x: &[f32], w: &[f32], out: &mut [f32], t: usize, k: usize, n: usize, par: bool) {
    assert!(x.len() >= t * k && w.len() >= n * k && out.len() >= t * n);
    let parallelism = if par && rayon::current_num_threads() > 1 {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above bound every index gemm touches for these strides.
    unsafe {
        gemm::gemm(
            t,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// `out[t][j] = sum_k a[t][k] * b[k][j]` with explicit row strides (for attention, where
/// `a` and `b` are views into larger buffers). Single-threaded: callers parallelise
/// over heads.
#[allow(clippy::too_many_arguments)]
pub fn matmul_ab(
    a: &[f32],
    a_rs: usize,
    b: &[f32],
    b_rs: usize,
    out: &mut [f32],
    out_rs: usize,
    t: usize,
    k: usize,
    n: usize,
) {
    // b[k][j] sits at k * b_rs + j.
    strided_gemm(a, a_rs, b, b_rs, 1, out, out_rs, t, k, n);
}

/// `out[t][j] = sum_k a[t][k] * b[j][k]` (b transposed), strided, single-threaded.
#[allow(clippy::too_many_arguments)]
pub fn matmul_abt(
    a: &[f32],
    a_rs: usize,
    b: &[f32],
    b_rs: usize,
    out: &mut [f32],
    out_rs: usize,
    t: usize,
    k: usize,
    n: usize,
) {
    // b[j][k] sits at j * b_rs + k.
    strided_gemm(a, a_rs, b, 1, b_rs, out, out_rs, t, k, n);
}

/// `out[t][j] = sum_k a[t * a_rs + k] * b[k * b_ks + j * b_js]`, single-threaded, with
/// every index bounds-checked before gemm touches memory.
#[allow(clippy::too_many_arguments)]
fn strided_gemm(
    a: &[f32],
    a_rs: usize,
    b: &[f32],
    b_ks: usize,
    b_js: usize,
    out: &mut [f32],
    out_rs: usize,
    t: usize,
    k: usize,
    n: usize,
) {
    if t == 0 || n == 0 {
        return;
    }
    assert!(a.len() >= (t - 1) * a_rs + k && out.len() >= (t - 1) * out_rs + n);
    assert!(k == 0 || b.len() > (k - 1) * b_ks + (n - 1) * b_js);
    // SAFETY: bounds asserted above.
    unsafe {
        gemm::gemm(
            t,
            n,
            k,
            out.as_mut_ptr(),
            1,
            out_rs as isize,
            false,
            a.as_ptr(),
            1,
            a_rs as isize,
            b.as_ptr(),
            b_js as isize,
            b_ks as isize,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// A weight matrix in affine blocks: element `w[r][c] = d[r][b] * q[r][c] + m[r][b]` with
/// `b = c / QK` and `q` unsigned. GGUF Q4_1 keeps its 4-bit codes packed as in the file
/// (half the memory traffic of bytes, which is what bounds decode speed); Q8_0 becomes
/// bytes `q + 128` with `m = -128 d`; other formats are quantised to 8 bits at load time.
#[derive(Debug, Clone)]
pub struct QMat {
    pub rows: usize,
    pub cols: usize,
    /// 4-bit codes, 16 bytes per block (low nibbles: elements 0..16, high: 16..32).
    pub packed: bool,
    pub q: Vec<u8>,
    /// Per-block scale and offset in f16, as GGUF stores them (half the bytes of f32;
    /// decode reads every weight byte once per token). An empty `m` means every offset
    /// is `-128 d` (GGUF Q8_0, whose signed codes are held as `q + 128`): not storing it
    /// keeps the 34 bytes per block of the file instead of 36, and `-128 d` is exact in
    /// f16 and f32 (a power-of-two multiple), so every kernel computes the same offsets.
    pub d: Vec<f16>,
    pub m: Vec<f16>,
}

/// The offset of a block with scale `d` and stored offsets `m` (empty: symmetric codes).
#[inline(always)]
fn block_offset(m: &[f16], d: &[f16], b: usize) -> f32 {
    if m.is_empty() {
        -128.0 * d[b].to_f32()
    } else {
        m[b].to_f32()
    }
}

impl QMat {
    pub fn blocks(&self) -> usize {
        self.cols / QK
    }

    /// Codes, scales and offsets of row `r`.
    #[inline(always)]
    pub fn row(&self, r: usize) -> (&[u8], &[f16], &[f16]) {
        let (nb, rb) = (self.blocks(), self.row_bytes());
        (
            &self.q[r * rb..(r + 1) * rb],
            &self.d[r * nb..(r + 1) * nb],
            if self.m.is_empty() {
                &[]
            } else {
                &self.m[r * nb..(r + 1) * nb]
            },
        )
    }

    fn row_bytes(&self) -> usize {
        if self.packed {
            self.cols / 2
        } else {
            self.cols
        }
    }

    /// Quantises an f32 matrix (`cols` must be a multiple of QK) per block with the
    /// block's min and max, 8 bits.
    pub fn from_f32(w: &[f32], rows: usize, cols: usize) -> Self {
        assert_eq!(cols % QK, 0);
        let nb = cols / QK;
        let mut q = vec![0u8; rows * cols];
        let mut d = vec![f16::ZERO; rows * nb];
        let mut m = vec![f16::ZERO; rows * nb];
        for (bi, (blk, qb)) in w.chunks_exact(QK).zip(q.chunks_exact_mut(QK)).enumerate() {
            let lo = blk.iter().cloned().fold(f32::INFINITY, f32::min);
            let hi = blk.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let scale = (hi - lo) / 255.0;
            let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            for (o, &x) in qb.iter_mut().zip(blk) {
                *o = ((x - lo) * inv).round().clamp(0.0, 255.0) as u8;
            }
            d[bi] = f16::from_f32(scale);
            m[bi] = f16::from_f32(lo);
        }
        QMat {
            rows,
            cols,
            packed: false,
            q,
            d,
            m,
        }
    }

    /// Code of element `c` of row `r`.
    pub fn code(&self, r: usize, c: usize) -> u8 {
        if self.packed {
            let (b, j) = (c / QK, c % QK);
            let byte = self.q[r * self.row_bytes() + b * (QK / 2) + j % (QK / 2)];
            if j < QK / 2 {
                byte & 0x0f
            } else {
                byte >> 4
            }
        } else {
            self.q[r * self.cols + c]
        }
    }

    /// Row `r` as f32 (written so the compiler vectorises it: prefill dequantises every
    /// row once per chunk).
    pub fn dequant_row(&self, r: usize, out: &mut [f32]) {
        let (q, d, m) = self.row(r);
        if m.is_empty() {
            // Byte codes without stored offsets (Q8_0): each is -128 d. A loop of its
            // own: a per-block choice of offset inside the loop below made this
            // function (prefill's last-token logits) ~2x slower.
            for (b, o) in out.chunks_exact_mut(QK).enumerate() {
                let s = d[b].to_f32();
                let off = -128.0 * s;
                for (v, &code) in o.iter_mut().zip(&q[b * QK..(b + 1) * QK]) {
                    *v = s * code as f32 + off;
                }
            }
            return;
        }
        for (b, o) in out.chunks_exact_mut(QK).enumerate() {
            let (s, off) = (d[b].to_f32(), m[b].to_f32());
            if self.packed {
                let (lo, hi) = o.split_at_mut(QK / 2);
                for ((l, h), &byte) in lo.iter_mut().zip(hi).zip(&q[b * QK / 2..(b + 1) * QK / 2]) {
                    *l = s * (byte & 0x0f) as f32 + off;
                    *h = s * (byte >> 4) as f32 + off;
                }
            } else {
                for (v, &code) in o.iter_mut().zip(&q[b * QK..(b + 1) * QK]) {
                    *v = s * code as f32 + off;
                }
            }
        }
    }

    pub fn dequantize(&self) -> Vec<f32> {
        let nb = self.blocks();
        let mut out = vec![0f32; self.rows * self.cols];
        for r in 0..self.rows {
            for c in 0..self.cols {
                let b = r * nb + c / QK;
                out[r * self.cols + c] =
                    self.d[b].to_f32() * self.code(r, c) as f32 + block_offset(&self.m, &self.d, b);
            }
        }
        out
    }
}

/// An activation vector quantised to signed 8 bits per block (symmetric), with the
/// per-block scale and the scaled block sum the affine weight offset needs.
///
/// The same vector may also be held as llama.cpp's Q8_K activations (`kq`, `kd`,
/// `kbsum`): one f32 scale per 256 values and the integer sum of every 16 quants, which
/// the K-quant weights (Q4_K, Q5_K, Q6_K) multiply against. Integer sums over a whole
/// 256-value super-block need one float step per super-block instead of one per 32, and
/// the rounding is llama.cpp's, so decode follows its arithmetic on K-quant files.
#[derive(Debug, Clone, Default)]
pub struct QVec {
    pub q: Vec<i8>,
    pub s: Vec<f32>,
    pub sum: Vec<f32>,
    /// Q8_K quants (empty until `quantize_k_into`).
    pub kq: Vec<i8>,
    /// Q8_K scale per 256 values (negative when the largest magnitude is negative, as
    /// llama.cpp's `-127 / max` makes it).
    pub kd: Vec<f32>,
    /// Integer sum of every 16 Q8_K quants.
    pub kbsum: Vec<i16>,
}

/// Elements per Q8_K block.
pub const QK8K: usize = 256;

impl QVec {
    /// Quantises `x` (a multiple of 256 long) as llama.cpp's `quantize_row_q8_K_ref`:
    /// per block the value of largest magnitude maps to -127, every value to the nearest
    /// integer (ties to even) of `x * -127 / max`, and the scale is `max / -127`.
    pub fn quantize_k_into(&mut self, x: &[f32]) {
        assert!(x.len().is_multiple_of(QK8K));
        let nb = x.len() / QK8K;
        self.kq.resize(x.len(), 0);
        self.kd.resize(nb, 0.0);
        self.kbsum.resize(nb * QK8K / 16, 0);
        for (b, (blk, qb)) in x
            .chunks_exact(QK8K)
            .zip(self.kq.chunks_exact_mut(QK8K))
            .enumerate()
        {
            let (mut amax, mut max) = (0f32, 0f32);
            for &v in blk {
                if v.abs() > amax {
                    amax = v.abs();
                    max = v;
                }
            }
            let sums = &mut self.kbsum[b * 16..(b + 1) * 16];
            if amax == 0.0 {
                self.kd[b] = 0.0;
                qb.fill(0);
                sums.fill(0);
                continue;
            }
            let iscale = -127.0 / max;
            for (o, &v) in qb.iter_mut().zip(blk) {
                *o = ((iscale * v).round_ties_even() as i32).min(127) as i8;
            }
            for (s, g) in sums.iter_mut().zip(qb.chunks_exact(16)) {
                *s = g.iter().map(|&v| v as i16).sum();
            }
            self.kd[b] = 1.0 / iscale;
        }
    }

    pub fn quantize_into(&mut self, x: &[f32]) {
        let nb = x.len() / QK;
        self.q.resize(x.len(), 0);
        self.s.resize(nb, 0.0);
        self.sum.resize(nb, 0.0);
        for (b, (blk, qb)) in x
            .chunks_exact(QK)
            .zip(self.q.chunks_exact_mut(QK))
            .enumerate()
        {
            let amax = blk.iter().fold(0f32, |a, &v| a.max(v.abs()));
            // As llama.cpp's Q8_0 activations: the scale stored as f16, the quants from
            // the f32 scale. The block sum stays exact (scale x integer sum), as the
            // integer dot products of Q4_0 / Q5_0 and the K-quants' block sums are.
            let d = amax / 127.0;
            let s = f16::from_f32(d).to_f32();
            let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
            let mut isum = 0i32;
            for (o, &v) in qb.iter_mut().zip(blk) {
                let qi = (v * inv).round_ties_even() as i32;
                *o = qi as i8;
                isum += qi;
            }
            self.s[b] = s;
            self.sum[b] = s * isum as f32;
        }
    }
}

/// One output element: `sum_b d_b * s_b * (q_b . x_b) + m_b * sum(x_b)`. AVX-512 VNNI
/// where the build has it, else AVX2 (+FMA), else portable code.
#[inline(always)]
fn qrow_dot(w: &QMat, r: usize, x: &QVec) -> f32 {
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx512f",
        target_feature = "avx512bw",
        target_feature = "avx512vnni",
        target_feature = "avx512vl"
    ))]
    {
        let (q, d, m) = w.row(r);
        // SAFETY: the target features are enabled at compile time; the slices hold
        // exactly nb blocks of weights and activations (checked in `row_dot`).
        unsafe { vnni::row_dot(q, w.packed, d, m, x) }
    }
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma",
        not(all(
            target_feature = "avx512f",
            target_feature = "avx512bw",
            target_feature = "avx512vnni",
            target_feature = "avx512vl"
        ))
    ))]
    {
        let (q, d, m) = w.row(r);
        // SAFETY: as above, for AVX2 and FMA.
        unsafe { avx2::row_dot(q, w.packed, d, m, x) }
    }
    #[cfg(not(any(
        all(
            target_arch = "x86_64",
            target_feature = "avx512f",
            target_feature = "avx512bw",
            target_feature = "avx512vnni",
            target_feature = "avx512vl"
        ),
        all(
            target_arch = "x86_64",
            target_feature = "avx2",
            target_feature = "fma"
        )
    )))]
    {
        qrow_dot_scalar(w, r, x)
    }
}

/// The row kernel for AVX2 CPUs without 8-bit VNNI (Zen 2/3, older Intel): codes and
/// activations widened to 16 bits and multiplied with VPMADDWD, whose 16-bit products
/// cannot saturate (VPMADDUBSW could, for byte codes up to 255). Compiled in every AVX2
/// build so the AVX-512 machines that run CI test it too.
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
// Unused outside tests in AVX-512 VNNI builds.
#[allow(dead_code)]
mod avx2 {
    use super::{QVec, QK};
    use half::f16;
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn block(q: *const u8, packed: bool, b: usize, xq: *const i8, mask: __m128i) -> __m256 {
        let (lo, hi) = if packed {
            let v = _mm_loadu_si128(q.add(b * QK / 2) as *const __m128i);
            (
                _mm_and_si128(v, mask),
                _mm_and_si128(_mm_srli_epi16(v, 4), mask),
            )
        } else {
            (
                _mm_loadu_si128(q.add(b * QK) as *const __m128i),
                _mm_loadu_si128(q.add(b * QK + 16) as *const __m128i),
            )
        };
        let x0 = _mm_loadu_si128(xq.add(b * QK) as *const __m128i);
        let x1 = _mm_loadu_si128(xq.add(b * QK + 16) as *const __m128i);
        let p0 = _mm256_madd_epi16(_mm256_cvtepu8_epi16(lo), _mm256_cvtepi8_epi16(x0));
        let p1 = _mm256_madd_epi16(_mm256_cvtepu8_epi16(hi), _mm256_cvtepi8_epi16(x1));
        _mm256_cvtepi32_ps(_mm256_add_epi32(p0, p1))
    }

    #[inline(always)]
    pub unsafe fn row_dot(q: &[u8], packed: bool, d: &[f16], m: &[f16], x: &QVec) -> f32 {
        let nb = d.len();
        super::check_row(q, packed, d, m, x);
        let mask = _mm_set1_epi8(0x0f);
        let (qp, xp) = (q.as_ptr(), x.q.as_ptr());
        // Two accumulators so consecutive blocks do not wait on each other's FMA.
        let mut a0 = _mm256_setzero_ps();
        let mut a1 = _mm256_setzero_ps();
        let mut off = 0f32;
        let mut b = 0;
        while b + 2 <= nb {
            let s0 = d[b].to_f32() * x.s[b];
            let s1 = d[b + 1].to_f32() * x.s[b + 1];
            a0 = _mm256_fmadd_ps(block(qp, packed, b, xp, mask), _mm256_set1_ps(s0), a0);
            a1 = _mm256_fmadd_ps(block(qp, packed, b + 1, xp, mask), _mm256_set1_ps(s1), a1);
            off += super::block_offset(m, d, b) * x.sum[b]
                + super::block_offset(m, d, b + 1) * x.sum[b + 1];
            b += 2;
        }
        if b < nb {
            let s0 = d[b].to_f32() * x.s[b];
            a0 = _mm256_fmadd_ps(block(qp, packed, b, xp, mask), _mm256_set1_ps(s0), a0);
            off += super::block_offset(m, d, b) * x.sum[b];
        }
        let acc = _mm256_add_ps(a0, a1);
        super::hsum256(acc) + off
    }
}

/// The row kernel for AVX2 CPUs without VNNI, two rows at a time (Zen 2/3, older
/// Intel). Each block's integer dot product comes from VPMADDUBSW (unsigned codes x
/// signed activations, pairs summed to 16 bits) and VPMADDWD against ones (to 32 bits):
/// a 4-bit code times an activation of at most 127 cannot saturate 16 bits; byte codes
/// (up to 255) are split into their low 7 bits and their top bit, each of which cannot
/// either, so every block's integer sum is exact, as in the widening kernel. The f16
/// scales and offsets are widened 8 blocks at a time (with `x.s` and `x.sum`) and the
/// offset term summed in a vector; two rows share every activation load. Compared with
/// [`avx2::row_dot`] only the order of the float additions differs.
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma",
    target_feature = "f16c"
))]
#[allow(dead_code)]
mod avx2x2 {
    use super::{QVec, QK};
    use half::f16;
    use std::arch::x86_64::*;

    /// Constants of the block kernel, built once per call.
    #[derive(Clone, Copy)]
    struct K {
        nib: __m256i,
        low7: __m256i,
        top: __m256i,
        ones: __m256i,
    }

    /// The 32-bit lane sums of block `b` of one row (codes at `q`) times activations `xv`.
    #[inline(always)]
    unsafe fn block(q: *const u8, packed: bool, b: usize, xv: __m256i, k: K) -> __m256i {
        if packed {
            let v = _mm_loadu_si128(q.add(b * QK / 2) as *const __m128i);
            // Low nibbles are elements 0..16, high nibbles 16..32: one 256-bit register
            // of the 32 codes in order.
            let w = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(v, 4), v), k.nib);
            _mm256_madd_epi16(_mm256_maddubs_epi16(w, xv), k.ones)
        } else {
            let w = _mm256_loadu_si256(q.add(b * QK) as *const __m256i);
            let lo = _mm256_maddubs_epi16(_mm256_and_si256(w, k.low7), xv);
            let hi = _mm256_maddubs_epi16(_mm256_and_si256(w, k.top), xv);
            _mm256_add_epi32(_mm256_madd_epi16(lo, k.ones), _mm256_madd_epi16(hi, k.ones))
        }
    }

    /// How many rows ahead the codes are prefetched (measured on Zen 3 with 576- and
    /// 640-column Q8_0 matrices: 4 rows ahead gained less, 16 no more).
    const PF_ROWS: usize = 8;

    /// One row: `(codes, scales, offsets)`.
    pub type Row<'a> = (&'a [u8], &'a [f16], &'a [f16]);

    /// Two rows against the same activations (pass one row twice for an odd last row).
    pub unsafe fn rows_dot2(rows: [Row; 2], packed: bool, x: &QVec) -> [f32; 2] {
        let sym = rows[0].2.is_empty();
        match (packed, sym) {
            (true, false) => rows_dot2_fmt::<true, false>(rows, x),
            (true, true) => rows_dot2_fmt::<true, true>(rows, x),
            (false, false) => rows_dot2_fmt::<false, false>(rows, x),
            (false, true) => rows_dot2_fmt::<false, true>(rows, x),
        }
    }

    /// `SYM`: both rows without stored offsets (`-128 d`).
    #[inline(always)]
    unsafe fn rows_dot2_fmt<const PACKED: bool, const SYM: bool>(
        rows: [Row; 2],
        x: &QVec,
    ) -> [f32; 2] {
        let nb = rows[0].1.len();
        let mut bpb = 0;
        for &(q, d, m) in &rows {
            assert!(d.len() == nb && m.is_empty() == SYM);
            bpb = super::check_row(q, PACKED, d, m, x);
        }
        let k = K {
            nib: _mm256_set1_epi8(0x0f),
            low7: _mm256_set1_epi8(0x7f),
            top: _mm256_set1_epi8(-128),
            ones: _mm256_set1_epi16(1),
        };
        let xp = x.q.as_ptr();
        let (q0, q1) = (rows[0].0.as_ptr(), rows[1].0.as_ptr());
        // Row 0 in a*, row 1 in c*; two chains each so consecutive blocks do not wait
        // on each other's FMA.
        let (mut a0, mut a1, mut c0, mut c1) = (
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
        );
        let (mut off0, mut off1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let (d0, d1) = (rows[0].1.as_ptr(), rows[1].1.as_ptr());
        let (m0, m1) = (rows[0].2.as_ptr(), rows[1].2.as_ptr());
        let ones = _mm256_set1_epi32(1);
        let row_bytes = nb * bpb;
        // Ask for the codes of the rows a few pairs ahead (rows lie one after another):
        // the hardware prefetcher alone leaves these loads waiting on memory. Wrapping
        // arithmetic: past the end of the matrix the address is never dereferenced (a
        // prefetch does not fault), but `add` beyond the allocation would be UB.
        let ahead = q0.wrapping_add(PF_ROWS * row_bytes);
        let mut l = 0;
        while l < 2 * row_bytes {
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(l) as *const i8);
            l += 64;
        }
        let mut b0 = 0;
        // Segments of 8 blocks: scales and offsets 8 at a time, each block's scale
        // broadcast from its lane (held in a register: a store and 4-byte reloads would
        // wait on store forwarding).
        while b0 + 8 <= nb {
            let xs = _mm256_loadu_ps(x.s.as_ptr().add(b0));
            let xsum = _mm256_loadu_ps(x.sum.as_ptr().add(b0));
            let f16x8 =
                |p: *const f16| _mm256_cvtph_ps(_mm_loadu_si128(p.add(b0) as *const __m128i));
            let sc0 = _mm256_mul_ps(f16x8(d0), xs);
            let sc1 = _mm256_mul_ps(f16x8(d1), xs);
            let (o0, o1) = if SYM {
                let k128 = _mm256_set1_ps(-128.0);
                (
                    _mm256_mul_ps(f16x8(d0), k128),
                    _mm256_mul_ps(f16x8(d1), k128),
                )
            } else {
                (f16x8(m0), f16x8(m1))
            };
            off0 = _mm256_fmadd_ps(o0, xsum, off0);
            off1 = _mm256_fmadd_ps(o1, xsum, off1);
            let mut idx = _mm256_setzero_si256();
            for j in (0..8).step_by(2) {
                let b = b0 + j;
                let idx1 = _mm256_add_epi32(idx, ones);
                let x0 = _mm256_loadu_si256(xp.add(b * QK) as *const __m256i);
                let x1 = _mm256_loadu_si256(xp.add((b + 1) * QK) as *const __m256i);
                let p = block(q0, PACKED, b, x0, k);
                a0 = _mm256_fmadd_ps(
                    _mm256_cvtepi32_ps(p),
                    _mm256_permutevar8x32_ps(sc0, idx),
                    a0,
                );
                let p = block(q1, PACKED, b, x0, k);
                c0 = _mm256_fmadd_ps(
                    _mm256_cvtepi32_ps(p),
                    _mm256_permutevar8x32_ps(sc1, idx),
                    c0,
                );
                let p = block(q0, PACKED, b + 1, x1, k);
                a1 = _mm256_fmadd_ps(
                    _mm256_cvtepi32_ps(p),
                    _mm256_permutevar8x32_ps(sc0, idx1),
                    a1,
                );
                let p = block(q1, PACKED, b + 1, x1, k);
                c1 = _mm256_fmadd_ps(
                    _mm256_cvtepi32_ps(p),
                    _mm256_permutevar8x32_ps(sc1, idx1),
                    c1,
                );
                idx = _mm256_add_epi32(idx1, ones);
            }
            b0 += 8;
        }
        // The last nb % 8 blocks one at a time.
        let (mut t0, mut t1) = (0f32, 0f32);
        for b in b0..nb {
            let x0 = _mm256_loadu_si256(xp.add(b * QK) as *const __m256i);
            let (xs, xsum) = (*x.s.get_unchecked(b), *x.sum.get_unchecked(b));
            let p = block(q0, PACKED, b, x0, k);
            a0 = _mm256_fmadd_ps(
                _mm256_cvtepi32_ps(p),
                _mm256_set1_ps((*d0.add(b)).to_f32() * xs),
                a0,
            );
            let p = block(q1, PACKED, b, x0, k);
            c0 = _mm256_fmadd_ps(
                _mm256_cvtepi32_ps(p),
                _mm256_set1_ps((*d1.add(b)).to_f32() * xs),
                c0,
            );
            t0 += super::block_offset(rows[0].2, rows[0].1, b) * xsum;
            t1 += super::block_offset(rows[1].2, rows[1].1, b) * xsum;
        }
        [
            super::hsum256(_mm256_add_ps(a0, a1)) + (super::hsum256(off0) + t0),
            super::hsum256(_mm256_add_ps(c0, c1)) + (super::hsum256(off1) + t1),
        ]
    }
}

/// Checks that one row's codes, scales and offsets and the activations hold the same
/// number of blocks (the SIMD kernels read through raw pointers); returns the bytes of
/// codes per block.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn check_row(q: &[u8], packed: bool, d: &[f16], m: &[f16], x: &QVec) -> usize {
    let nb = d.len();
    let bytes_per_block = if packed { QK / 2 } else { QK };
    assert!(
        (m.len() == nb || m.is_empty())
            && q.len() >= nb * bytes_per_block
            && x.q.len() >= nb * QK
            && x.s.len() >= nb
            && x.sum.len() >= nb
    );
    bytes_per_block
}

/// Sum of the eight lanes of an AVX register (the one copy; `quant/avx2.rs` uses it too).
#[cfg(all(target_arch = "x86_64", target_feature = "avx"))]
#[inline(always)]
pub(crate) unsafe fn hsum256(acc: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let s4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    let s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
    _mm_cvtss_f32(s1)
}

/// Portable version of [`qrow_dot`] (CPUs without AVX2 or AVX-512 VNNI; also the
/// reference the SIMD kernels are tested against, so only tests use it where a SIMD
/// kernel is compiled in).
#[cfg_attr(
    any(
        all(
            target_arch = "x86_64",
            target_feature = "avx512f",
            target_feature = "avx512bw",
            target_feature = "avx512vnni",
            target_feature = "avx512vl"
        ),
        all(
            target_arch = "x86_64",
            target_feature = "avx2",
            target_feature = "fma"
        )
    ),
    allow(dead_code)
)]
fn qrow_dot_scalar(w: &QMat, r: usize, x: &QVec) -> f32 {
    let (q, d, m) = w.row(r);
    let mut acc = 0f32;
    for b in 0..d.len() {
        let mut s = 0i32;
        for j in 0..QK {
            let code = if w.packed {
                let byte = q[b * QK / 2 + j % (QK / 2)];
                if j < QK / 2 {
                    byte & 0x0f
                } else {
                    byte >> 4
                }
            } else {
                q[b * QK + j]
            };
            s += code as i32 * x.q[b * QK + j] as i32;
        }
        acc += d[b].to_f32() * x.s[b] * s as f32 + block_offset(m, d, b) * x.sum[b];
    }
    acc
}

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx512f",
    target_feature = "avx512bw",
    target_feature = "avx512vnni",
    target_feature = "avx512vl"
))]
mod vnni {
    use super::{QVec, QK};
    use half::f16;
    use std::arch::x86_64::*;

    /// Blocks whose scales are prepared at once (a 1 KiB stack buffer).
    const SEG: usize = 256;

    #[inline(always)]
    unsafe fn load_codes(q: *const u8, packed: bool, b: usize, mask: __m128i) -> __m256i {
        if packed {
            let v = _mm_loadu_si128(q.add(b * QK / 2) as *const __m128i);
            let lo = _mm_and_si128(v, mask);
            let hi = _mm_and_si128(_mm_srli_epi16(v, 4), mask);
            _mm256_set_m128i(hi, lo)
        } else {
            _mm256_loadu_si256(q.add(b * QK) as *const __m256i)
        }
    }

    #[inline(always)]
    unsafe fn block(
        q: *const u8,
        packed: bool,
        b: usize,
        xq: *const i8,
        scale: f32,
        acc: __m256,
        mask: __m128i,
    ) -> __m256 {
        let w = load_codes(q, packed, b, mask);
        let xv = _mm256_loadu_si256(xq.add(b * QK) as *const __m256i);
        let dotv = _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, xv);
        _mm256_fmadd_ps(_mm256_cvtepi32_ps(dotv), _mm256_set1_ps(scale), acc)
    }

    /// Unsigned weight codes times signed activations, 32 per block, with VPDPBUSD.
    /// The f16 block scales and offsets of a segment are widened 16 at a time first
    /// (and the offset term `sum_b m_b * sum(x_b)` summed in the same vector pass); then
    /// four accumulators keep four blocks in flight (one chain would wait on the FMA
    /// latency every block).
    #[inline(always)]
    pub unsafe fn row_dot(q: &[u8], packed: bool, d: &[f16], m: &[f16], x: &QVec) -> f32 {
        let nb = d.len();
        let bytes_per_block = super::check_row(q, packed, d, m, x);
        let mask = _mm_set1_epi8(0x0f);
        let (qp, xp) = (q.as_ptr(), x.q.as_ptr());
        let mut scale = [0f32; SEG];
        let mut off = _mm512_setzero_ps();
        let mut a0 = _mm256_setzero_ps();
        let mut a1 = _mm256_setzero_ps();
        let mut a2 = _mm256_setzero_ps();
        let mut a3 = _mm256_setzero_ps();
        let mut s0 = 0;
        while s0 < nb {
            let n = (nb - s0).min(SEG);
            let mut c = 0;
            while c < n {
                let k = (n - c).min(16);
                let lanes: __mmask16 = if k == 16 { 0xffff } else { (1u16 << k) - 1 };
                let at = s0 + c;
                let dv = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(
                    lanes,
                    d.as_ptr().add(at) as *const i16,
                ));
                let mv = if m.is_empty() {
                    _mm512_mul_ps(dv, _mm512_set1_ps(-128.0))
                } else {
                    _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(
                        lanes,
                        m.as_ptr().add(at) as *const i16,
                    ))
                };
                let xs = _mm512_maskz_loadu_ps(lanes, x.s.as_ptr().add(at));
                let xsum = _mm512_maskz_loadu_ps(lanes, x.sum.as_ptr().add(at));
                _mm512_storeu_ps(scale.as_mut_ptr().add(c), _mm512_mul_ps(dv, xs));
                off = _mm512_fmadd_ps(mv, xsum, off);
                c += 16;
            }
            let mut i = 0;
            while i + 4 <= n {
                let b = s0 + i;
                // Hardware prefetch alone leaves the loads waiting; ask for the lines
                // ~1 KiB ahead (a few rows in the future for 4-bit rows).
                // wrapping_add: near the end of the matrix the address lies past it (a
                // prefetch never faults, but `add` past the allocation would be UB).
                let ahead = qp.wrapping_add(b * bytes_per_block + 1024);
                _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64) as *const i8);
                a0 = block(qp, packed, b, xp, scale[i], a0, mask);
                a1 = block(qp, packed, b + 1, xp, scale[i + 1], a1, mask);
                a2 = block(qp, packed, b + 2, xp, scale[i + 2], a2, mask);
                a3 = block(qp, packed, b + 3, xp, scale[i + 3], a3, mask);
                i += 4;
            }
            while i < n {
                a0 = block(qp, packed, s0 + i, xp, scale[i], a0, mask);
                i += 1;
            }
            s0 += n;
        }
        let acc = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
        super::hsum256(acc) + _mm512_reduce_add_ps(off)
    }
}

/// Rows per parallel task in the f32 matrix-vector product.
const MV_CHUNK: usize = 64;

/// Rows `r0..r0 + out.len()` of `w . x` over 8-bit weights and activations, on the
/// calling thread (the decode team splits rows itself).
pub fn matvec_q_rows(w: &QMat, x: &QVec, r0: usize, out: &mut [f32]) {
    assert!(r0 + out.len() <= w.rows);
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma",
        target_feature = "f16c",
        not(all(
            target_feature = "avx512f",
            target_feature = "avx512bw",
            target_feature = "avx512vnni",
            target_feature = "avx512vl"
        ))
    ))]
    {
        let mut pairs = out.chunks_exact_mut(2);
        let mut r = r0;
        for o in &mut pairs {
            // SAFETY: AVX2, FMA and F16C are enabled at compile time; `rows_dot` checks
            // the lengths of both rows against the activations.
            let v = unsafe { avx2x2::rows_dot2([w.row(r), w.row(r + 1)], w.packed, x) };
            o.copy_from_slice(&v);
            r += 2;
        }
        for o in pairs.into_remainder() {
            // SAFETY: as above.
            *o = unsafe { avx2x2::rows_dot2([w.row(r), w.row(r)], w.packed, x) }[0];
        }
        return;
    }
    #[allow(unreachable_code)]
    matvec_q_rows_one(w, x, r0, out)
}

/// [`matvec_q_rows`] one row at a time with the single-row kernel (the AVX2 widening one
/// on AVX2 builds); kept for `cargo bench --bench decode_kernels`.
#[doc(hidden)]
pub fn matvec_q_rows_one(w: &QMat, x: &QVec, r0: usize, out: &mut [f32]) {
    assert!(r0 + out.len() <= w.rows);
    for (i, v) in out.iter_mut().enumerate() {
        *v = qrow_dot(w, r0 + i, x);
    }
}

/// Rows `r0..r0 + out.len()` of `w . x` over f32 weights (`w` is `[rows][x.len()]`).
pub fn matvec_f32_rows(w: &[f32], x: &[f32], r0: usize, out: &mut [f32]) {
    let k = x.len();
    for (i, v) in out.iter_mut().enumerate() {
        let r = r0 + i;
        *v = dot(&w[r * k..(r + 1) * k], x);
    }
}

/// `out[r] = w[r] . x` over f32 weights, parallel over rows.
pub fn matvec_f32(w: &[f32], x: &[f32], out: &mut [f32]) {
    let k = x.len();
    out.par_chunks_mut(MV_CHUNK)
        .enumerate()
        .for_each(|(ci, o)| {
            for (i, v) in o.iter_mut().enumerate() {
                let r = ci * MV_CHUNK + i;
                *v = dot(&w[r * k..(r + 1) * k], x);
            }
        });
}

#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight partial sums let the compiler keep several FMA chains in flight.
    let mut acc = [0f32; 8];
    let n = a.len().min(b.len());
    let (a8, b8) = (&a[..n / 8 * 8], &b[..n / 8 * 8]);
    for (ca, cb) in a8.chunks_exact(8).zip(b8.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += ca[i] * cb[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in n / 8 * 8..n {
        s += a[i] * b[i];
    }
    s
}

pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let r = 1.0 / (ms + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = v * r * g;
    }
}

/// `e^x` for f32 to ~2 ulp, written so the compiler vectorises loops over it (libm's
/// `expf` is a scalar call, and softmax over long contexts spends most of its time there).
/// Range reduction x = n ln2 + r with |r| <= ln2/2, a degree-6 polynomial for e^r, then
/// the exponent bits of 2^n. Inputs below -87.3 flush to 0, above 88.7 to +inf.
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.clamp(-87.3, 88.7);
    let n = (x * LOG2E).round();
    let r = x - n * LN2_HI - n * LN2_LO;
    // Taylor coefficients 1/k! up to k = 6 (error < 2e-7 on |r| <= ln2/2).
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let bits = ((n as i32 + 127) as u32) << 23;
    // A select, not a branch, so loops over this still vectorise.
    if x <= -87.3 {
        0.0
    } else {
        p * f32::from_bits(bits)
    }
}

/// In-place softmax; the row sums to 1 afterwards.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    for v in x.iter_mut() {
        *v = fast_exp(*v - max);
    }
    let sum: f32 = x.iter().sum();
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// `x * sigmoid(x)` with `fast_exp` (libm's `expf` is a call per element and keeps the
/// loop over the MLP from vectorising).
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + fast_exp(-x))
}

pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

/// A small deterministic generator of values in [-1, 1) for the kernel tests.
#[cfg(test)]
pub(crate) fn lcg(seed: &mut u64) -> f32 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*seed >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_matches_naive() {
        let (t, k, n) = (5, 7, 3);
        let mut s = 1;
        let x: Vec<f32> = (0..t * k).map(|_| lcg(&mut s)).collect();
        let w: Vec<f32> = (0..n * k).map(|_| lcg(&mut s)).collect();
        let mut out = vec![0.0; t * n];
        matmul_xwt(&x, &w, &mut out, t, k, n, false);
        for i in 0..t {
            for j in 0..n {
                let e: f32 = (0..k).map(|c| x[i * k + c] * w[j * k + c]).sum();
                assert!((out[i * n + j] - e).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn quantised_matvec_close_to_f32() {
        let (rows, cols) = (70, 96);
        let mut s = 7;
        let w: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut s)).collect();
        let x: Vec<f32> = (0..cols).map(|_| lcg(&mut s)).collect();
        let qm = QMat::from_f32(&w, rows, cols);
        let mut qx = QVec::default();
        qx.quantize_into(&x);
        let mut a = vec![0.0; rows];
        let mut b = vec![0.0; rows];
        matvec_q_rows(&qm, &qx, 0, &mut a);
        matvec_f32(&w, &x, &mut b);
        let norm = b.iter().map(|v| v * v).sum::<f32>().sqrt();
        let err = a
            .iter()
            .zip(&b)
            .map(|(p, q)| (p - q) * (p - q))
            .sum::<f32>()
            .sqrt();
        assert!(err / norm < 0.02, "relative error {}", err / norm);
    }

    /// The SIMD row kernel (when this CPU has it) equals the portable one, for packed
    /// 4-bit and byte rows, row lengths with segment and block tails.
    #[test]
    fn row_kernel_equals_the_portable_one() {
        let mut s = 11;
        for cols in [32, 96, 576, 32 * 300] {
            let rows = 3;
            let w: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut s)).collect();
            let x: Vec<f32> = (0..cols).map(|_| lcg(&mut s) * 3.0).collect();
            let bytes = QMat::from_f32(&w, rows, cols);
            // A 4-bit matrix from the byte codes' high nibbles.
            let mut packed = bytes.clone();
            packed.packed = true;
            packed.q = (0..rows * cols / 2)
                .map(|i| {
                    let (r, rest) = (i / (cols / 2), i % (cols / 2));
                    let (b, j) = (rest / 16, rest % 16);
                    let at = |k: usize| bytes.q[r * cols + b * QK + k] >> 4;
                    at(j) | (at(j + 16) << 4)
                })
                .collect();
            // Byte codes without stored offsets (-128 d), as GGUF Q8_0 is held.
            let mut sym = bytes.clone();
            sym.m.clear();
            let mut qx = QVec::default();
            qx.quantize_into(&x);
            for qm in [&bytes, &packed, &sym] {
                let mut fast = vec![0.0; rows];
                matvec_q_rows(qm, &qx, 0, &mut fast);
                for (r, &f) in fast.iter().enumerate() {
                    let e = qrow_dot_scalar(qm, r, &qx);
                    assert!(
                        (f - e).abs() <= 1e-4 * e.abs().max(1.0),
                        "cols {cols} packed {} row {r}: {f} vs {e}",
                        qm.packed
                    );
                    // The AVX2 kernel too, wherever it is compiled (also AVX-512 builds).
                    #[cfg(all(
                        target_arch = "x86_64",
                        target_feature = "avx2",
                        target_feature = "fma"
                    ))]
                    {
                        let (q, d, m) = qm.row(r);
                        let a = unsafe { avx2::row_dot(q, qm.packed, d, m, &qx) };
                        assert!(
                            (a - e).abs() <= 1e-4 * e.abs().max(1.0),
                            "avx2: cols {cols} packed {} row {r}: {a} vs {e}",
                            qm.packed
                        );
                    }
                    // And the two-row AVX2 kernel, paired with every row.
                    #[cfg(all(
                        target_arch = "x86_64",
                        target_feature = "avx2",
                        target_feature = "fma",
                        target_feature = "f16c"
                    ))]
                    for other in 0..rows {
                        let [a, b] = unsafe {
                            avx2x2::rows_dot2([qm.row(r), qm.row(other)], qm.packed, &qx)
                        };
                        let eo = qrow_dot_scalar(qm, other, &qx);
                        assert!(
                            (a - e).abs() <= 1e-4 * e.abs().max(1.0)
                                && (b - eo).abs() <= 1e-4 * eo.abs().max(1.0),
                            "avx2x2: cols {cols} packed {} rows {r},{other}: {a} vs {e}, {b} vs {eo}",
                            qm.packed
                        );
                    }
                }
            }
        }
    }

    /// The largest codes against the largest activations of either sign: VPMADDUBSW
    /// would saturate 16 bits on whole byte codes; the kernels' block sums stay exact.
    #[test]
    fn extreme_codes_do_not_saturate() {
        let cols = 32 * 19;
        for (packed, code) in [(false, 255u8), (true, 15u8)] {
            let rows = 3;
            let nb = rows * cols / QK;
            let qm = QMat {
                rows,
                cols,
                packed,
                q: if packed {
                    vec![code | (code << 4); rows * cols / 2]
                } else {
                    vec![code; rows * cols]
                },
                d: vec![f16::ONE; nb],
                m: vec![f16::ZERO; nb],
            };
            for sign in [1.0f32, -1.0] {
                let x: Vec<f32> = vec![sign; cols];
                let mut qx = QVec::default();
                qx.quantize_into(&x);
                let mut out = vec![0.0; rows];
                matvec_q_rows(&qm, &qx, 0, &mut out);
                // Every activation is +-127 at a scale of f16(1/127).
                let exact = sign * (code as f32) * 127.0 * cols as f32 * qx.s[0];
                for (r, &v) in out.iter().enumerate() {
                    assert!(
                        (v - exact).abs() <= 1e-5 * exact.abs(),
                        "packed {packed} sign {sign} row {r}: {v} vs {exact}"
                    );
                }
            }
        }
    }

    #[test]
    fn silu_matches_libm() {
        let mut x = -100.0f32;
        while x < 100.0 {
            let (a, b) = (silu(x) as f64, x as f64 / (1.0 + (-(x as f64)).exp()));
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "silu({x}): {a} vs {b}"
            );
            x += 0.0173;
        }
        assert_eq!(silu(-1e4), 0.0);
        assert_eq!(silu(1e4), 1e4);
    }

    /// Q8_K as llama.cpp's `quantize_row_q8_K_ref`, on exact values: the value of
    /// largest magnitude (-127, negative) maps to -127, so the factor is -127 / -127 = 1
    /// and the scale 1; halves round to even (0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -3.5 -> -4);
    /// the 16-value sums add the quants; an all-zero block gets scale 0 and zero quants.
    /// A block whose largest magnitude is positive gets a negative scale.
    #[test]
    fn q8k_quantisation_follows_llamacpp() {
        let mut x = vec![0f32; 768];
        x[..4].copy_from_slice(&[-127.0, 0.5, 1.5, 2.5]);
        x[17] = -3.5;
        x[512] = 12.7;
        x[513] = 1.0;
        let mut q = QVec::default();
        q.quantize_k_into(&x);
        assert_eq!(q.kd[0], 1.0);
        assert_eq!(&q.kq[..4], &[-127, 0, 2, 2]);
        assert_eq!(q.kq[17], -4);
        assert_eq!(q.kbsum[0], -127 + 2 + 2);
        assert_eq!(q.kbsum[1], -4);
        assert_eq!(q.kd[1], 0.0);
        assert!(q.kq[256..512].iter().all(|&v| v == 0));
        // 12.7 -> -127 with scale 12.7 / -127 = -0.1; 1.0 -> -10.
        assert!((q.kd[2] + 0.1).abs() < 1e-7, "scale {}", q.kd[2]);
        assert_eq!(&q.kq[512..514], &[-127, -10]);
    }

    #[test]
    fn fast_exp_matches_libm() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, b) = (fast_exp(x), x.exp());
            assert!(
                (a - b).abs() <= 4e-7 * b.max(f32::MIN_POSITIVE * 4.0),
                "exp({x}): {a} vs {b}"
            );
            x += 0.0137;
        }
        assert_eq!(fast_exp(-1000.0), 0.0);
        assert_eq!(fast_exp(-90.0), 0.0);
    }
}
