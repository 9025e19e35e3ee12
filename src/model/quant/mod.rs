//! Weight formats read from the file's own blocks: what a GGUF tensor type means (block
//! size, bytes per block, how a block turns into numbers) and the two things the forward
//! pass needs from a stored row: its values as f32 (prefill panels, embedding lookups,
//! the f32 exactness path) and its dot product with 8-bit quantised activations (decode).
//!
//! Every block format is described the same way by [`portable::decode`]: integer codes,
//! one scale per 16 elements and one offset per 32 elements, value = scale * code +
//! offset. That description is the portable reference; the SIMD kernels in `avx2` are
//! tested against it, and it is tested against candle's dequantisation.

pub mod affine;
pub mod layout;
pub mod packed;
pub mod portable;
pub mod qvec;
pub mod row;
pub mod synth;
#[cfg(test)]
pub(crate) mod test_blocks;
pub mod tile32;

#[cfg(kv_avx2)]
mod avx2;
#[cfg(kv_vnni)]
mod vnni;

use anyhow::{bail, Result};
use candle_core::quantized::GgmlDType;

pub use affine::{matvec_q_rows, matvec_q_rows_by, matvec_q_rows_one, QMat};
pub use qvec::{QVec, QK, QK8K};

/// A weight format kvscope reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

/// Elements per super-block of the K-quants.
pub const QK_K: usize = 256;

/// Every format, for tests and listings.
pub const ALL: [Format; 11] = [
    Format::F32,
    Format::F16,
    Format::BF16,
    Format::Q4_0,
    Format::Q4_1,
    Format::Q5_0,
    Format::Q5_1,
    Format::Q8_0,
    Format::Q4K,
    Format::Q5K,
    Format::Q6K,
];

impl Format {
    /// The format of a GGUF tensor type, `None` for a type kvscope does not read.
    pub fn from_ggml(t: GgmlDType) -> Option<Format> {
        Some(match t {
            GgmlDType::F32 => Format::F32,
            GgmlDType::F16 => Format::F16,
            GgmlDType::BF16 => Format::BF16,
            GgmlDType::Q4_0 => Format::Q4_0,
            GgmlDType::Q4_1 => Format::Q4_1,
            GgmlDType::Q5_0 => Format::Q5_0,
            GgmlDType::Q5_1 => Format::Q5_1,
            GgmlDType::Q8_0 => Format::Q8_0,
            GgmlDType::Q4K => Format::Q4K,
            GgmlDType::Q5K => Format::Q5K,
            GgmlDType::Q6K => Format::Q6K,
            _ => return None,
        })
    }

    pub fn ggml(self) -> GgmlDType {
        match self {
            Format::F32 => GgmlDType::F32,
            Format::F16 => GgmlDType::F16,
            Format::BF16 => GgmlDType::BF16,
            Format::Q4_0 => GgmlDType::Q4_0,
            Format::Q4_1 => GgmlDType::Q4_1,
            Format::Q5_0 => GgmlDType::Q5_0,
            Format::Q5_1 => GgmlDType::Q5_1,
            Format::Q8_0 => GgmlDType::Q8_0,
            Format::Q4K => GgmlDType::Q4K,
            Format::Q5K => GgmlDType::Q5K,
            Format::Q6K => GgmlDType::Q6K,
        }
    }

    /// The name llama.cpp uses.
    pub fn name(self) -> &'static str {
        match self {
            Format::F32 => "F32",
            Format::F16 => "F16",
            Format::BF16 => "BF16",
            Format::Q4_0 => "Q4_0",
            Format::Q4_1 => "Q4_1",
            Format::Q5_0 => "Q5_0",
            Format::Q5_1 => "Q5_1",
            Format::Q8_0 => "Q8_0",
            Format::Q4K => "Q4_K",
            Format::Q5K => "Q5_K",
            Format::Q6K => "Q6_K",
        }
    }

    /// Elements per block (1 for the float formats).
    pub fn block(self) -> usize {
        match self {
            Format::F32 | Format::F16 | Format::BF16 => 1,
            Format::Q4_0 | Format::Q4_1 | Format::Q5_0 | Format::Q5_1 | Format::Q8_0 => QK,
            Format::Q4K | Format::Q5K | Format::Q6K => QK_K,
        }
    }

    /// Bytes per block, as laid out in the file.
    pub fn block_bytes(self) -> usize {
        match self {
            Format::F32 => 4,
            Format::F16 | Format::BF16 => 2,
            // f16 d, 16 bytes of nibbles
            Format::Q4_0 => 18,
            // f16 d, f16 m, 16 bytes of nibbles
            Format::Q4_1 => 20,
            // f16 d, 4 bytes of fifth bits, 16 bytes of nibbles
            Format::Q5_0 => 22,
            // f16 d, f16 m, 4 bytes of fifth bits, 16 bytes of nibbles
            Format::Q5_1 => 24,
            // f16 d, 32 signed bytes
            Format::Q8_0 => 34,
            // f16 d, f16 dmin, 12 bytes of 6-bit scales and mins, 128 bytes of nibbles
            Format::Q4K => 144,
            // as Q4_K plus 32 bytes of fifth bits
            Format::Q5K => 176,
            // 128 bytes of low nibbles, 64 of high 2-bit pairs, 16 i8 scales, f16 d
            Format::Q6K => 210,
        }
    }

    /// Whether decode multiplies this format against 8-bit activations (the block
    /// formats) or against the f32 activations (the float formats).
    pub fn is_block(self) -> bool {
        self.block() > 1
    }

    /// The K-quants, which multiply against Q8_K activations (256-value blocks).
    pub fn is_k_quant(self) -> bool {
        matches!(self, Format::Q4K | Format::Q5K | Format::Q6K)
    }

    /// Bytes of one row of `cols` elements; `cols` must be a multiple of the block.
    pub fn row_bytes(self, cols: usize) -> usize {
        cols / self.block() * self.block_bytes()
    }

    /// Checks that rows of `cols` elements are whole blocks of this format.
    pub fn check_cols(self, name: &str, cols: usize) -> Result<()> {
        if !cols.is_multiple_of(self.block()) {
            bail!(
                "tensor '{name}' is {} with rows of {cols} elements, not a multiple of its block of {}",
                self.name(),
                self.block()
            );
        }
        Ok(())
    }
}

/// The list of readable formats, for error messages.
pub fn supported_names() -> String {
    ALL.iter().map(|f| f.name()).collect::<Vec<_>>().join(", ")
}

/// The row's values as f32 (`out.len()` elements).
pub fn dequant_row(fmt: Format, row: &[u8], out: &mut [f32]) {
    assert_eq!(row.len(), fmt.row_bytes(out.len()));
    portable::dequant_row(fmt, row, out);
}

/// The dot product of one stored row of a block format with 8-bit activations `x`:
/// the K-quants against its Q8_K quants (`QVec::quantize_k_into`, blocks of 256), the
/// other formats against its blocks of 32 (`QVec::quantize_into`), as llama.cpp pairs
/// them. SIMD where this build has AVX2, FMA and F16C and the format has a kernel; the
/// portable reference otherwise.
#[inline]
pub fn dot_q8(fmt: Format, row: &[u8], x: &QVec) -> f32 {
    dot_q8_streaming(fmt, row, x, false)
}

/// `dot_q8`, with the K-quant kernels prefetching the rows ahead when `large` (a matrix
/// of several MB that decode streams from memory; see `avx2::prefetch_ahead`).
#[inline]
pub fn dot_q8_streaming(fmt: Format, row: &[u8], x: &QVec, large: bool) -> f32 {
    if fmt.is_k_quant() {
        return dot_q8k(fmt, row, x, large);
    }
    let nb = row.len() / fmt.block_bytes() * fmt.block() / QK;
    assert!(
        fmt.is_block()
            && row.len().is_multiple_of(fmt.block_bytes())
            && x.q.len() >= nb * QK
            && x.s.len() >= nb
            && x.sum.len() >= nb
    );
    #[cfg(kv_avx2)]
    {
        // SAFETY: the features are enabled at compile time and the lengths are checked
        // above (the kernels read `row` and `nb` blocks of activations through pointers).
        unsafe {
            match fmt {
                Format::Q8_0 => return avx2::dot_q8_0(row, x),
                Format::Q4_0 => return avx2::dot_q4_0(row, x),
                Format::Q5_0 => return avx2::dot_q5_0(row, x),
                _ => {}
            }
        }
    }
    portable::dot_q8(fmt, row, x)
}

/// A K-quant row against Q8_K activations.
#[inline]
// `large` only steers the SIMD kernels' prefetching.
#[cfg_attr(not(kv_avx2), allow(unused_variables))]
fn dot_q8k(fmt: Format, row: &[u8], x: &QVec, large: bool) -> f32 {
    let nb = row.len() / fmt.block_bytes();
    assert!(
        row.len().is_multiple_of(fmt.block_bytes())
            && x.kq.len() >= nb * QK_K
            && x.kd.len() >= nb
            && x.kbsum.len() >= nb * 16,
        "K-quant row without Q8_K activations"
    );
    #[cfg(kv_avx2)]
    {
        // SAFETY: features enabled at compile time; lengths checked above.
        unsafe {
            return match fmt {
                Format::Q4K if large => avx2::dot_k45_n::<1, true>(row, &[x], false)[0],
                Format::Q4K => avx2::dot_k45_n::<1, false>(row, &[x], false)[0],
                Format::Q5K if large => avx2::dot_k45_n::<1, true>(row, &[x], true)[0],
                Format::Q5K => avx2::dot_k45_n::<1, false>(row, &[x], true)[0],
                _ if large => avx2::dot_q6k_n::<1, true>(row, &[x])[0],
                _ => avx2::dot_q6k_n::<1, false>(row, &[x])[0],
            };
        }
    }
    #[allow(unreachable_code)]
    portable::dot_q8k(fmt, row, x)
}

/// One stored row of a block format against `N` tokens' 8-bit activations (prefill):
/// the same products as `N` `dot_q8` calls, with the row's codes unpacked once. Each
/// `QVec` must hold the blocks the format needs (as for `dot_q8`).
#[inline]
pub fn dot_q8_xn<const N: usize>(fmt: Format, row: &[u8], xs: &[&QVec; N]) -> [f32; N] {
    let nb = row.len() / fmt.block_bytes();
    let n = nb * fmt.block();
    assert!(
        fmt.is_block()
            && row.len().is_multiple_of(fmt.block_bytes())
            && xs.iter().all(|x| if fmt.is_k_quant() {
                x.kq.len() >= n && x.kd.len() >= n / QK_K && x.kbsum.len() >= n / 16
            } else {
                x.q.len() >= n && x.s.len() >= n / QK && x.sum.len() >= n / QK
            })
    );
    #[cfg(kv_avx2)]
    {
        // SAFETY: features enabled at compile time; lengths checked above.
        unsafe {
            match fmt {
                Format::Q4K => return avx2::dot_k45_n::<N, false>(row, xs, false),
                Format::Q5K => return avx2::dot_k45_n::<N, false>(row, xs, true),
                Format::Q6K => return avx2::dot_q6k_n::<N, false>(row, xs),
                Format::Q8_0 | Format::Q4_0 | Format::Q5_0 => {
                    return avx2::dot_x0_n::<N>(fmt, row, xs)
                }
                _ => {}
            }
        }
    }
    xs.map(|x| dot_q8(fmt, row, x))
}

/// Row `r` of a rearranged affine matrix (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) against `N`
/// tokens' 8-bit activations (blocks of 32).
#[inline]
pub fn dot_affine_xn<const N: usize>(w: &QMat, r: usize, xs: &[&QVec; N]) -> [f32; N] {
    let row = w.row(r);
    let nb = row.d.len();
    // Q8_0 and Q4_0 / Q5_0 hold no offsets (each is `centre * d`).
    assert!(
        (row.m.len() == nb || row.m.is_empty())
            && (row.hi.len() == nb || (row.hi.is_empty()))
            && row.q.len() >= nb * if w.packed { QK / 2 } else { QK }
            && xs
                .iter()
                .all(|x| x.q.len() >= nb * QK && x.s.len() >= nb && x.sum.len() >= nb)
    );
    #[cfg(kv_avx2)]
    {
        // SAFETY: features enabled at compile time; lengths checked above.
        return unsafe { avx2::dot_affine_n::<N>(&row, xs) };
    }
    #[allow(unreachable_code)]
    xs.map(|x| portable::affine_dot(&row, x))
}

/// The dot product of one stored row of a float format with f32 activations.
#[inline]
pub fn dot_f32(fmt: Format, row: &[u8], x: &[f32]) -> f32 {
    assert_eq!(row.len(), fmt.row_bytes(x.len()));
    #[cfg(kv_avx2)]
    {
        if fmt == Format::F16 {
            // SAFETY: features enabled at compile time; length checked above.
            return unsafe { avx2::dot_f16(row, x) };
        }
    }
    portable::dot_f32(fmt, row, x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::{lcg, lcg_vec};

    /// `rows x cols` random values quantised by candle to `fmt`: (the file bytes,
    /// candle's dequantisation).
    fn candle_blocks(fmt: Format, rows: usize, cols: usize, seed: u64) -> (Vec<u8>, Vec<f32>) {
        let mut s = seed;
        let w: Vec<f32> = lcg_vec(&mut s, rows * cols);
        test_blocks::candle_blocks(fmt, &w, rows, cols)
    }

    /// Every format's portable row dequantiser gives candle's values (to the rounding
    /// of `d * (q - c)` against `d * q - c d`: 1e-6 of the values' range of 1).
    #[test]
    fn dequantisation_matches_candle() {
        let (rows, cols) = (3, 512);
        for fmt in ALL {
            let (bytes, deq) = candle_blocks(fmt, rows, cols, 5);
            assert_eq!(bytes.len(), rows * fmt.row_bytes(cols), "{}", fmt.name());
            let mut mine = vec![0f32; rows * cols];
            for (r, out) in mine.chunks_exact_mut(cols).enumerate() {
                let rb = fmt.row_bytes(cols);
                dequant_row(fmt, &bytes[r * rb..(r + 1) * rb], out);
            }
            for (i, (a, b)) in mine.iter().zip(&deq).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-6,
                    "{} element {i}: {a} vs {b}",
                    fmt.name()
                );
            }
        }
    }

    /// The decode dot product of every format against 8-bit activations: the dispatched
    /// kernel (SIMD where compiled) equals the portable reference to f32 summation order
    /// (1e-5 relative), and both are within the activations' 8-bit rounding (1% of the
    /// f32 product's scale) of the dequantised row times the f32 activations.
    #[test]
    fn dot_kernels_match_the_reference() {
        let mut s = 3;
        for fmt in ALL {
            for cols in [256, 512, 256 * 7] {
                let rows = 4;
                let (bytes, deq) = candle_blocks(fmt, rows, cols, 9 + cols as u64);
                let x: Vec<f32> = (0..cols).map(|_| lcg(&mut s) * 2.0).collect();
                let mut qx = QVec::default();
                qx.quantize_into(&x);
                qx.quantize_k_into(&x);
                let rb = fmt.row_bytes(cols);
                for r in 0..rows {
                    let row = &bytes[r * rb..(r + 1) * rb];
                    let exact: f32 = deq[r * cols..(r + 1) * cols]
                        .iter()
                        .zip(&x)
                        .map(|(a, b)| a * b)
                        .sum();
                    let scale = (cols as f32).sqrt();
                    let tag = format!("{} cols {cols} row {r}", fmt.name());
                    if fmt.is_block() {
                        let fast = dot_q8(fmt, row, &qx);
                        let reference = if fmt.is_k_quant() {
                            portable::dot_q8k(fmt, row, &qx)
                        } else {
                            portable::dot_q8(fmt, row, &qx)
                        };
                        assert!(
                            (fast - reference).abs() <= 1e-5 * scale,
                            "{tag}: {fast} vs {reference}"
                        );
                        assert!(
                            (reference - exact).abs() <= 0.01 * scale,
                            "{tag}: {reference} vs f32 {exact}"
                        );
                    } else {
                        let fast = dot_f32(fmt, row, &x);
                        let reference = portable::dot_f32(fmt, row, &x);
                        assert!((fast - reference).abs() <= 1e-5 * scale, "{tag}");
                        assert!((reference - exact).abs() <= 1e-5 * scale, "{tag}");
                    }
                }
            }
        }
    }

    /// The prefill kernels (a row against 4 or 8 tokens at once) give each token what
    /// the decode kernel gives it alone, to f32 summation order; a group may repeat a
    /// token (the short last group does).
    #[test]
    fn token_group_kernels_equal_single_token_ones() {
        let mut s = 11;
        let cols = 512;
        for fmt in ALL.into_iter().filter(|f| f.is_block()) {
            let (bytes, _) = candle_blocks(fmt, 3, cols, 21);
            let xs: Vec<QVec> = (0..8)
                .map(|_| {
                    let x: Vec<f32> = (0..cols).map(|_| lcg(&mut s) * 3.0).collect();
                    let mut q = QVec::default();
                    q.quantize_into(&x);
                    q.quantize_k_into(&x);
                    q
                })
                .collect();
            let rb = fmt.row_bytes(cols);
            for r in 0..3 {
                let row = &bytes[r * rb..(r + 1) * rb];
                let one: Vec<f32> = xs.iter().map(|x| dot_q8(fmt, row, x)).collect();
                let g8: [&QVec; 8] = std::array::from_fn(|i| &xs[i]);
                let g4: [&QVec; 4] = std::array::from_fn(|i| &xs[[0, 5, 5, 7][i]]);
                let v8 = dot_q8_xn(fmt, row, &g8);
                let v4 = dot_q8_xn(fmt, row, &g4);
                let tol = 1e-5 * (cols as f32).sqrt();
                for i in 0..8 {
                    assert!((v8[i] - one[i]).abs() <= tol, "{} x8 {i}", fmt.name());
                }
                for (i, &k) in [0, 5, 5, 7].iter().enumerate() {
                    assert!((v4[i] - one[k]).abs() <= tol, "{} x4 {i}", fmt.name());
                }
            }
        }
    }

    /// Every 32-value format read into the rearranged affine store (`QMat::from_blocks`)
    /// holds the file's values (dequantised equal to the file's blocks, bit for bit) in
    /// as many bytes as the file, and its decode row kernel (SIMD where compiled) equals
    /// the raw blocks' portable product to f32 summation order (Q4_0 / Q5_0: the raw
    /// blocks' SIMD kernel bit for bit).
    #[test]
    fn affine_store_holds_every_32_value_format() {
        let mut s = 17;
        let cols = 32 * 37;
        let rows = 5;
        for fmt in test_blocks::FORMATS_32 {
            let (bytes, _) = candle_blocks(fmt, rows, cols, 31);
            let qm = QMat::from_blocks(fmt, bytes.clone(), rows, cols).unwrap();
            assert_eq!(qm.format(), fmt);
            assert_eq!(qm.bytes(), bytes.len(), "{}", fmt.name());
            let x: Vec<f32> = (0..cols).map(|_| lcg(&mut s) * 2.0).collect();
            let mut qx = QVec::default();
            qx.quantize_into(&x);
            let mut fast = vec![0f32; rows];
            matvec_q_rows(&qm, &qx, 0, &mut fast);
            let rb = fmt.row_bytes(cols);
            let (mut a, mut e) = (vec![0f32; cols], vec![0f32; cols]);
            for r in 0..rows {
                let row = &bytes[r * rb..(r + 1) * rb];
                qm.dequant_row(r, &mut a);
                dequant_row(fmt, row, &mut e);
                assert_eq!(a, e, "{} row {r}", fmt.name());
                let reference = portable::dot_q8(fmt, row, &qx);
                // Q4_0 / Q5_0 keep their file-block kernel's float order exactly.
                if cfg!(kv_avx2) && matches!(fmt, Format::Q4_0 | Format::Q5_0) {
                    let before = dot_q8(fmt, row, &qx);
                    assert_eq!(
                        fast[r].to_bits(),
                        before.to_bits(),
                        "{} row {r}",
                        fmt.name()
                    );
                }
                let scale = (cols as f32).sqrt();
                assert!(
                    (fast[r] - reference).abs() <= 1e-5 * scale,
                    "{} row {r}: {} vs {reference}",
                    fmt.name(),
                    fast[r]
                );
            }
        }
    }

    /// The 6-bit scale unpacking of Q4_K / Q5_K on a hand-built pattern.
    #[test]
    fn k_scales_unpack_six_bits() {
        // sc = [1, 2, 3, 4, 40, 50, 60, 63], m = [5, 6, 7, 8, 33, 17, 9, 62]
        let sc = [1u8, 2, 3, 4, 40, 50, 60, 63];
        let m = [5u8, 6, 7, 8, 33, 17, 9, 62];
        let mut b = [0u8; 12];
        for j in 0..4 {
            b[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
            b[j + 4] = m[j] | ((m[j + 4] >> 4) << 6);
            b[j + 8] = (sc[j + 4] & 0x0f) | ((m[j + 4] & 0x0f) << 4);
        }
        assert_eq!(portable::k_scales(&b), (sc, m));
    }
}
