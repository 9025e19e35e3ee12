//! The rearranged affine store of GGUF's 32-value formats (`QMat`: Q4_0, Q4_1, Q5_0,
//! Q5_1 and Q8_0, codes apart from their f16 scales, offsets and fifth bits) and the
//! dispatch of its decode row kernels: AVX-512 VNNI (`vnni.rs`), AVX2
//! (`avx2/affine.rs`), or the portable reference (`portable::affine_dot`).

use anyhow::{bail, Result};
use half::f16;

use super::qvec::{QVec, QK};
use super::row::{block_offset, Row};
use super::Format;

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
    /// The fifth bit of every code of a block (bit `j` for element `j`), one u32 per
    /// block, for Q5_0 / Q5_1 (packed nibbles); empty for the other formats.
    pub hi: Vec<u32>,
    /// The offset of every block, in units of its scale, when `m` is empty: -128 for
    /// Q8_0's byte codes, -8 for Q4_0, -16 for Q5_0 (all exact in f32).
    pub centre: f32,
}

impl QMat {
    pub fn blocks(&self) -> usize {
        self.cols / QK
    }

    /// Codes, scales, offsets and fifth bits of row `r`.
    #[inline(always)]
    pub fn row(&self, r: usize) -> Row<'_> {
        let (nb, rb) = (self.blocks(), self.row_bytes());
        Row {
            q: &self.q[r * rb..(r + 1) * rb],
            d: &self.d[r * nb..(r + 1) * nb],
            m: if self.m.is_empty() {
                &[]
            } else {
                &self.m[r * nb..(r + 1) * nb]
            },
            hi: if self.hi.is_empty() {
                &[]
            } else {
                &self.hi[r * nb..(r + 1) * nb]
            },
            packed: self.packed,
            centre: self.centre,
        }
    }

    /// The GGUF format these codes came from (an 8-bit matrix built by `from_f32`
    /// reports Q8_0).
    pub fn format(&self) -> Format {
        match (self.packed, self.m.is_empty(), self.hi.is_empty()) {
            (false, _, _) => Format::Q8_0,
            (true, false, true) => Format::Q4_1,
            (true, true, true) => Format::Q4_0,
            (true, true, false) => Format::Q5_0,
            (true, false, false) => Format::Q5_1,
        }
    }

    /// Bytes held (the file's bytes of these blocks, rearranged; Q8_0 the same).
    pub fn bytes(&self) -> usize {
        self.q.len() + (self.d.len() + self.m.len()) * 2 + self.hi.len() * 4
    }

    /// The blocks of a GGUF Q4_0, Q4_1, Q5_0, Q5_1 or Q8_0 tensor (`rows` x `cols`),
    /// rearranged: the nibbles (or Q8_0's codes + 128) of each row together, the f16
    /// scales, offsets and fifth bits in arrays of their own. The same bytes as the file,
    /// so the kernels load codes 16- or 32-byte aligned and scales eight or sixteen at a
    /// time at no cost in memory. The codes are moved to the front of `raw` in place
    /// (only the scales, offsets and fifth bits get new memory): a second full-size
    /// buffer per tensor left ~50 MB of freed heap behind after loading the 0.5B shape.
    pub fn from_blocks(fmt: Format, mut raw: Vec<u8>, rows: usize, cols: usize) -> Result<QMat> {
        let bs = fmt.block_bytes();
        if !matches!(
            fmt,
            Format::Q4_0 | Format::Q4_1 | Format::Q5_0 | Format::Q5_1 | Format::Q8_0
        ) || !cols.is_multiple_of(QK)
        {
            bail!("{} is not a 32-value format with whole blocks", fmt.name());
        }
        let nblocks = rows * cols / QK;
        if raw.len() != nblocks * bs {
            bail!(
                "{} data has {} bytes, expected {}",
                fmt.name(),
                raw.len(),
                nblocks * bs
            );
        }
        let f = |b: &[u8], i: usize| f16::from_le_bytes([b[i], b[i + 1]]);
        let (has_m, has_hi) = match fmt {
            Format::Q4_1 => (true, false),
            Format::Q5_0 => (false, true),
            Format::Q5_1 => (true, true),
            _ => (false, false),
        };
        let packed = fmt != Format::Q8_0;
        let mut d = Vec::with_capacity(nblocks);
        let mut m = Vec::with_capacity(if has_m { nblocks } else { 0 });
        let mut hi = Vec::with_capacity(if has_hi { nblocks } else { 0 });
        let head = 2 + 2 * has_m as usize + 4 * has_hi as usize;
        for blk in raw.chunks_exact(bs) {
            d.push(f(blk, 0));
            if has_m {
                m.push(f(blk, 2));
            }
            if has_hi {
                let at = head - 4;
                hi.push(u32::from_le_bytes([
                    blk[at],
                    blk[at + 1],
                    blk[at + 2],
                    blk[at + 3],
                ]));
            }
        }
        // Block b's codes move from b * bs + head to b * (bs - head): always leftwards,
        // so block by block in order never overwrites codes not yet moved.
        let cb = bs - head;
        for b in 0..nblocks {
            raw.copy_within(b * bs + head..(b + 1) * bs, b * cb);
            if !packed {
                for c in &mut raw[b * cb..(b + 1) * cb] {
                    *c ^= 0x80;
                }
            }
        }
        raw.truncate(nblocks * cb);
        raw.shrink_to_fit();
        Ok(QMat {
            rows,
            cols,
            packed,
            q: raw,
            d,
            m,
            hi,
            centre: match fmt {
                Format::Q4_0 => -8.0,
                Format::Q5_0 => -16.0,
                _ => -128.0,
            },
        })
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
            hi: Vec::new(),
            centre: -128.0,
        }
    }

    /// Code of element `c` of row `r`.
    pub fn code(&self, r: usize, c: usize) -> u8 {
        self.row(r).code(c / QK, c % QK)
    }

    /// Row `r` as f32 (written so the compiler vectorises it: prefill dequantises every
    /// row once per chunk).
    pub fn dequant_row(&self, r: usize, out: &mut [f32]) {
        let row = self.row(r);
        let (q, d, m) = (row.q, row.d, row.m);
        if m.is_empty() && !self.packed {
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
            let (s, off) = (d[b].to_f32(), row.offset(b));
            if !row.hi.is_empty() {
                for (j, v) in o.iter_mut().enumerate() {
                    *v = s * row.code(b, j) as f32 + off;
                }
            } else if self.packed {
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
                out[r * self.cols + c] = self.d[b].to_f32() * self.code(r, c) as f32
                    + block_offset(&self.m, &self.d, self.centre, b);
            }
        }
        out
    }
}

/// One output element: `sum_b d_b * s_b * (q_b . x_b) + m_b * sum(x_b)`. AVX-512 VNNI
/// where the build has it, else AVX2, else the portable reference.
#[inline(always)]
fn qrow_dot(w: &QMat, r: usize, x: &QVec) -> f32 {
    #[cfg(kv_vnni)]
    {
        // SAFETY: the target features are enabled at compile time; the slices hold
        // exactly nb blocks of weights and activations (checked in `row_dot`).
        unsafe { super::vnni::row_dot(&w.row(r), x) }
    }
    #[cfg(all(kv_avx2, not(kv_vnni)))]
    {
        // SAFETY: as above, for AVX2.
        unsafe { super::avx2::row_dot(&w.row(r), x) }
    }
    #[cfg(not(kv_avx2))]
    {
        super::portable::affine_dot(&w.row(r), x)
    }
}

/// Rows `r0..r0 + out.len()` of `w . x` over 8-bit weights and activations, on the
/// calling thread (the decode team splits rows itself). One row after another: Q4_0 /
/// Q5_0 through `vnni::row_dot_x0_pairs` on AVX-512 VNNI builds (two blocks per 512-bit
/// instruction; 0.5B shape decode 59.5 -> 64.8 t/s, docs/speed.md) and
/// `avx2::rows_dot_x0::<1>` elsewhere (both `row_dot_x0`'s arithmetic, with the codes
/// ahead prefetched), the other formats through the VNNI row kernel on AVX-512 VNNI
/// builds, two rows per pass on AVX2 builds without VNNI (`avx2::rows_dot2`). Four rows
/// per pass (`matvec_q_rows_by::<4>`) ran faster on matrices held in cache but not in a
/// decode step, whose weights stream from memory (docs/speed.md).
pub fn matvec_q_rows(w: &QMat, x: &QVec, r0: usize, out: &mut [f32]) {
    #[cfg(kv_vnni)]
    if !(w.packed && w.m.is_empty()) {
        return matvec_q_rows_one(w, x, r0, out);
    }
    #[cfg(kv_vnni)]
    {
        assert!(r0 + out.len() <= w.rows);
        for (i, o) in out.iter_mut().enumerate() {
            // SAFETY: the target features are enabled at compile time; the kernel checks
            // the row's lengths against the activations.
            *o = unsafe { super::vnni::row_dot_x0_pairs(&w.row(r0 + i), x, PF_BYTES) };
        }
    }
    #[cfg(not(kv_vnni))]
    matvec_q_rows_by::<1>(w, x, r0, out, PF_BYTES)
}

/// How far ahead (bytes past each row's current block) the multi-row kernels ask for
/// codes (measured on the 640- and 896-value matrices of Gemma 3 and the 0.5B shape;
/// within the noise of 512 and 2048).
const PF_BYTES: usize = 1024;

/// [`matvec_q_rows`] with `R` rows per pass of the multi-row kernels and their prefetch
/// distance `pf` (bytes past each row's current block); exposed for `cargo bench --bench
/// decode_kernels`. Every row's result is the one-row kernel's bit for bit
/// (`matvec_q_rows_one`), whatever `R`: Q4_0 / Q5_0 keep `avx2::row_dot_x0`'s float
/// order (see there), the others the VNNI row kernel's; on AVX2 builds without VNNI the
/// other formats go through the two-row AVX2 kernel as before.
#[doc(hidden)]
pub fn matvec_q_rows_by<const R: usize>(w: &QMat, x: &QVec, r0: usize, out: &mut [f32], pf: usize) {
    assert!(r0 + out.len() <= w.rows);
    #[cfg(kv_avx2)]
    if w.packed && w.m.is_empty() {
        let mut groups = out.chunks_exact_mut(R);
        let mut r = r0;
        for o in &mut groups {
            let rows: [Row; R] = std::array::from_fn(|i| w.row(r + i));
            // SAFETY: AVX2, FMA and F16C (and AVX-512 VNNI where used) are enabled at
            // compile time; the kernel checks every row's lengths against the activations.
            o.copy_from_slice(&unsafe { super::avx2::rows_dot_x0::<R>(&rows, x, pf) });
            r += R;
        }
        for o in groups.into_remainder() {
            // SAFETY: as above.
            *o = unsafe { super::avx2::row_dot_x0(&w.row(r), x) };
            r += 1;
        }
        return;
    }
    #[cfg(kv_vnni)]
    {
        let mut groups = out.chunks_exact_mut(R);
        let mut r = r0;
        for o in &mut groups {
            let rows: [Row; R] = std::array::from_fn(|i| w.row(r + i));
            // SAFETY: the target features are enabled at compile time; the kernel checks
            // every row's lengths against the activations.
            o.copy_from_slice(&unsafe { super::vnni::rows_dot::<R>(&rows, x, pf) });
            r += R;
        }
        for o in groups.into_remainder() {
            *o = qrow_dot(w, r, x);
            r += 1;
        }
        #[allow(clippy::needless_return)]
        return;
    }
    #[cfg(all(kv_avx2, not(kv_vnni)))]
    {
        let _ = pf;
        let mut pairs = out.chunks_exact_mut(2);
        let mut r = r0;
        for o in &mut pairs {
            // SAFETY: AVX2, FMA and F16C are enabled at compile time; `rows_dot` checks
            // the lengths of both rows against the activations.
            let v = unsafe { super::avx2::rows_dot2([w.row(r), w.row(r + 1)], x) };
            o.copy_from_slice(&v);
            r += 2;
        }
        for o in pairs.into_remainder() {
            // SAFETY: as above.
            *o = unsafe { super::avx2::rows_dot2([w.row(r), w.row(r)], x) }[0];
        }
        return;
    }
    #[allow(unreachable_code)]
    {
        let _ = pf;
        matvec_q_rows_one(w, x, r0, out)
    }
}

/// One row at a time with the one-row kernels (`avx2::row_dot_x0` for Q4_0 / Q5_0 on
/// AVX2 builds, else the VNNI, AVX2 widening or portable row kernel): what
/// `matvec_q_rows` ran on VNNI builds before the multi-row kernels; the reference of
/// their tests and kept for `cargo bench --bench decode_kernels`.
#[doc(hidden)]
pub fn matvec_q_rows_one(w: &QMat, x: &QVec, r0: usize, out: &mut [f32]) {
    assert!(r0 + out.len() <= w.rows);
    for (i, v) in out.iter_mut().enumerate() {
        #[cfg(kv_avx2)]
        if w.packed && w.m.is_empty() {
            // SAFETY: AVX2, FMA and F16C are enabled at compile time; `row_dot_x0`
            // checks the row's lengths against the activations.
            *v = unsafe { super::avx2::row_dot_x0(&w.row(r0 + i), x) };
            continue;
        }
        *v = qrow_dot(w, r0 + i, x);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::{lcg, lcg_vec, matvec_f32};

    #[test]
    fn quantised_matvec_close_to_f32() {
        let (rows, cols) = (70, 96);
        let mut s = 7;
        let w: Vec<f32> = lcg_vec(&mut s, rows * cols);
        let x: Vec<f32> = lcg_vec(&mut s, cols);
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

    /// The six shapes of the store from one f32 matrix: 8-bit codes with offsets, 4-bit
    /// codes with offsets (Q4_1's), byte codes without (Q8_0's), Q4_0's, Q5_1's and
    /// Q5_0's (fifth bits from `s`).
    fn store_shapes(w: &[f32], rows: usize, cols: usize, s: &mut u64) -> [QMat; 6] {
        let bytes = QMat::from_f32(w, rows, cols);
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
        // Q4_0's shape: packed codes, offsets -8 d.
        let mut q40 = packed.clone();
        q40.m.clear();
        q40.centre = -8.0;
        // Q5_1's and Q5_0's: fifth bits on top (offsets stored, or -16 d).
        let mut q51 = packed.clone();
        q51.hi = (0..rows * cols / QK)
            .map(|_| (lcg(s).to_bits()).wrapping_mul(2654435761))
            .collect();
        let mut q50 = q51.clone();
        q50.m.clear();
        q50.centre = -16.0;
        [bytes, packed, sym, q40, q51, q50]
    }

    /// The multi-row kernels give every row the one-row kernel's result bit for bit
    /// (their per-row float order is the same), for every group size, prefetch distance,
    /// first row and count of rows left over, on every shape of the store: Q4_0 / Q5_0
    /// against `avx2::row_dot_x0` (whose float order Gemma 3's greedy ids depend on),
    /// the others against the VNNI row kernel where the build has it. "default" is
    /// decode's `matvec_q_rows` (on VNNI builds `vnni::row_dot_x0_pairs` for Q4_0 / Q5_0:
    /// 1, 3, 20 and 300 blocks cover whole eight-block segments and every tail).
    #[test]
    fn multi_row_kernels_equal_the_one_row_ones() {
        let mut s = 23;
        for cols in [32, 96, 640, 32 * 300] {
            let rows = 11;
            let w: Vec<f32> = lcg_vec(&mut s, rows * cols);
            let x: Vec<f32> = (0..cols).map(|_| lcg(&mut s) * 3.0).collect();
            let mut qx = QVec::default();
            qx.quantize_into(&x);
            for qm in store_shapes(&w, rows, cols, &mut s) {
                let x0 = qm.packed && qm.m.is_empty();
                let multi = cfg!(kv_vnni) || (cfg!(kv_avx2) && x0);
                if !multi {
                    continue;
                }
                let fmt = qm.format().name();
                for r0 in [0, 3] {
                    let n = rows - r0;
                    let mut one = vec![0.0; n];
                    matvec_q_rows_one(&qm, &qx, r0, &mut one);
                    let same = |got: &[f32], what: &str| {
                        for (r, (a, b)) in got.iter().zip(&one).enumerate() {
                            assert_eq!(
                                a.to_bits(),
                                b.to_bits(),
                                "{what} {fmt} cols {cols} row {}: {a} vs {b}",
                                r0 + r
                            );
                        }
                    };
                    let mut got = vec![0.0; n];
                    matvec_q_rows(&qm, &qx, r0, &mut got);
                    same(&got, "default");
                    for pf in [0, 64, 4096] {
                        matvec_q_rows_by::<2>(&qm, &qx, r0, &mut got, pf);
                        same(&got, "2 rows");
                        matvec_q_rows_by::<3>(&qm, &qx, r0, &mut got, pf);
                        same(&got, "3 rows");
                        matvec_q_rows_by::<4>(&qm, &qx, r0, &mut got, pf);
                        same(&got, "4 rows");
                    }
                }
            }
        }
    }

    /// The SIMD row kernel (when this CPU has it) equals the portable one, for packed
    /// 4-bit and byte rows, row lengths with segment and block tails.
    #[test]
    fn row_kernel_equals_the_portable_one() {
        let mut s = 11;
        for cols in [32, 96, 576, 32 * 300] {
            let rows = 3;
            let w: Vec<f32> = lcg_vec(&mut s, rows * cols);
            let x: Vec<f32> = (0..cols).map(|_| lcg(&mut s) * 3.0).collect();
            let [bytes, packed, sym, q40, q51, q50] = store_shapes(&w, rows, cols, &mut s);
            let mut qx = QVec::default();
            qx.quantize_into(&x);
            for qm in [&bytes, &packed, &sym, &q40, &q51, &q50] {
                let mut fast = vec![0.0; rows];
                matvec_q_rows(qm, &qx, 0, &mut fast);
                for (r, &f) in fast.iter().enumerate() {
                    let e = super::super::portable::affine_dot(&qm.row(r), &qx);
                    assert!(
                        (f - e).abs() <= 1e-4 * e.abs().max(1.0),
                        "cols {cols} packed {} row {r}: {f} vs {e}",
                        qm.packed
                    );
                    // The AVX2 kernel too, wherever it is compiled (also AVX-512 builds).
                    #[cfg(kv_avx2)]
                    {
                        let a = unsafe { super::super::avx2::row_dot(&qm.row(r), &qx) };
                        assert!(
                            (a - e).abs() <= 1e-4 * e.abs().max(1.0),
                            "avx2: cols {cols} packed {} row {r}: {a} vs {e}",
                            qm.packed
                        );
                    }
                    // And the two-row AVX2 kernel, paired with every row.
                    #[cfg(kv_avx2)]
                    for other in 0..rows {
                        let [a, b] = unsafe {
                            super::super::avx2::rows_dot2([qm.row(r), qm.row(other)], &qx)
                        };
                        let eo = super::super::portable::affine_dot(&qm.row(other), &qx);
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
                hi: Vec::new(),
                centre: -128.0,
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
}
