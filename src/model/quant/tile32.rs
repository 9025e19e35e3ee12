//! Prefill's 8-bit product for the 32-value formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0), eight
//! rows at a time, as `packed.rs` does for the K-quants.
//!
//! The row kernels (`dot_q8_xn`, `dot_affine_xn`) keep one row's sums in the eight i32
//! lanes of a vector and pay, per 32 values, token and row, a float step and (per row and
//! token) a horizontal sum; with a float step every 32 values that made the 32-value
//! formats slower than the f32 GEMM on dequantised panels, which prefill used for them.
//! Here a band of rows is rearranged per block of 32 values so that lane `r` of every
//! vector belongs to row `r`: eight vectors of 32 bytes hold four consecutive codes of
//! each of eight rows, the activations' four matching values are broadcast to every lane,
//! and the float step (`acc += sumi * (d_w * d_x) + m_w * sum_x`) serves eight rows at
//! once, with no horizontal sum left. The packing is done per band into a per-thread
//! buffer: the stored weights (the affine store, `QMat`) and the decode kernels keep
//! their layout.
//!
//! Activations are llama.cpp's pairing: Q8_0 blocks (f16 scale) for every format, and the
//! block sum for the formats with an offset. Unsigned codes (Q4_x, Q5_x: 0..=31) go
//! through VPMADDUBSW against the activations (a pair sum is at most 2 * 31 * 127 = 7,874,
//! four of them 31,496 < 32,767, so four vectors are summed in 16 bits before widening);
//! Q8_0's signed codes through the same instruction on |code| with sign-adjusted
//! activations (a pair at most 2 * 128 * 127 = 32,512: widened after every vector). Their
//! centre (Q4_0's 8 d, Q5_0's 16 d) is an offset like Q4_1's `m`; Q8_0 has none.
//!
//! [`reference`] is the portable arithmetic of one lane, operation for operation (a
//! product, then two fused multiply-adds per block); the SIMD kernel equals it bit for bit.

use super::affine::QMat;
use super::layout::{ROWS, T32_BYTES as BYTES, T32_CODES as CODES};
use super::qvec::{QVec, QK};
use super::Format;

/// Fewest tokens for which packing a band pays (below it the row kernels are used).
pub const MIN_TOKENS: usize = 8;

/// Whether prefill's 8-bit product of a 32-value matrix against `tokens` tokens takes
/// the packed path.
pub fn applies(tokens: usize) -> bool {
    cfg!(kv_avx2) && tokens >= MIN_TOKENS
}

/// Where the rows of a 32-value matrix are read from.
#[derive(Clone, Copy)]
pub enum Source<'a> {
    /// The file's blocks (`rb` bytes per row).
    Blocks {
        fmt: Format,
        data: &'a [u8],
        rb: usize,
    },
    /// The rearranged affine store (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0).
    Affine(&'a QMat),
}

impl Source<'_> {
    /// Whether the codes are signed (Q8_0: no offset) rather than unsigned with one.
    pub fn signed(&self) -> bool {
        match self {
            Source::Blocks { fmt, .. } => *fmt == Format::Q8_0,
            Source::Affine(q) => !q.packed,
        }
    }

    /// Block `b` of row `r`: its 32 codes (signed ones as their i8 bits), scale, offset.
    pub fn block(&self, r: usize, b: usize) -> ([u8; QK], f32, f32) {
        let mut c = [0u8; QK];
        match self {
            Source::Blocks { fmt, data, rb } => {
                let bb = fmt.block_bytes();
                let blk = &data[r * rb + b * bb..r * rb + (b + 1) * bb];
                let dec = super::portable::decode(*fmt, blk);
                for (o, &v) in c.iter_mut().zip(&dec.code[..QK]) {
                    *o = v as u8;
                }
                (c, dec.scale[0], dec.offset[0])
            }
            Source::Affine(q) => {
                let row = q.row(r);
                c = row.codes(b);
                if !q.packed {
                    // Q8_0 is held as code + 128: the signed code's bits, offset dropped.
                    for o in c.iter_mut() {
                        *o ^= 0x80;
                    }
                }
                let off = if q.packed { row.offset(b) } else { 0.0 };
                (c, row.d[b].to_f32(), off)
            }
        }
    }
}

/// Packs block `b` of rows `r0..r0 + 8` into `out` (`BYTES` long).
pub fn pack(src: &Source, r0: usize, b: usize, out: &mut [u8]) {
    for r in 0..ROWS {
        let (c, d, m) = src.block(r0 + r, b);
        out[4 * r..4 * r + 4].copy_from_slice(&d.to_le_bytes());
        out[32 + 4 * r..32 + 4 * r + 4].copy_from_slice(&m.to_le_bytes());
        for k in 0..8 {
            let o = CODES + 32 * k + 4 * r;
            out[o..o + 4].copy_from_slice(&c[4 * k..4 * k + 4]);
        }
    }
}

/// One row against one token's activations with the packed kernel's arithmetic: per
/// block the exact integer sum, then `acc = sumi * (d * s_x) + acc` and, for unsigned
/// codes, `acc = m * sum_x + acc`, each a fused multiply-add.
pub fn reference(src: &Source, r: usize, nb: usize, x: &QVec) -> f32 {
    let signed = src.signed();
    let mut acc = 0f32;
    for b in 0..nb {
        let (c, d, m) = src.block(r, b);
        let xq = &x.q[b * QK..(b + 1) * QK];
        let sumi: i32 = c
            .iter()
            .zip(xq)
            .map(|(&c, &v)| if signed { c as i8 as i32 } else { c as i32 } * v as i32)
            .sum();
        acc = (sumi as f32).mul_add(d * x.s[b], acc);
        if !signed {
            acc = m.mul_add(x.sum[b], acc);
        }
    }
    acc
}

/// Products of rows `r0..r1` of a 32-value matrix with every token of `xs` through the
/// packed kernel, for as many whole groups of eight rows as the band holds;
/// `put(token, row, value)` receives each result. Returns the first row not done (the
/// caller takes the rest with the row kernels).
pub fn band(
    src: &Source,
    nb: usize,
    r0: usize,
    r1: usize,
    xs: &[QVec],
    put: impl Fn(usize, usize, f32),
) -> usize {
    if !applies(xs.len()) {
        return r0;
    }
    #[cfg(kv_avx2)]
    {
        use std::cell::RefCell;
        thread_local! {
            // Reused between products so a band's packing does not page in fresh memory.
            static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        }
        let groups = (r1 - r0) / ROWS;
        let n = xs.len();
        assert!(xs
            .iter()
            .all(|x| x.q.len() >= nb * QK && x.s.len() >= nb && x.sum.len() >= nb));
        let signed = src.signed();
        BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            buf.resize(groups * nb * BYTES + 64, 0);
            // Blocks start on a cache line (BYTES is a multiple of 64).
            let start = buf.as_ptr().align_offset(64).min(64);
            let buf = &mut buf[start..];
            for g in 0..groups {
                for b in 0..nb {
                    let o = (g * nb + b) * BYTES;
                    pack(src, r0 + ROWS * g, b, &mut buf[o..o + BYTES]);
                }
            }
            const T: usize = 4;
            for t0 in (0..n).step_by(T) {
                let m = (n - t0).min(T);
                let gx: [&QVec; T] = std::array::from_fn(|i| &xs[t0 + i.min(m - 1)]);
                for g in 0..groups {
                    let mut v = [[0f32; ROWS]; T];
                    // SAFETY: the buffer holds `groups` packed groups of nb blocks; the
                    // activations' lengths were asserted above.
                    unsafe {
                        let p = buf.as_ptr().add(g * nb * BYTES);
                        if signed {
                            super::avx2::tile32::rows8::<T, true>(p, nb, &gx, &mut v)
                        } else {
                            super::avx2::tile32::rows8::<T, false>(p, nb, &gx, &mut v)
                        }
                    }
                    for (i, vt) in v.iter().enumerate().take(m) {
                        for (r, &x) in vt.iter().enumerate() {
                            put(t0 + i, r0 + ROWS * g + r, x);
                        }
                    }
                }
            }
        });
        r0 + groups * ROWS
    }
    #[cfg(not(kv_avx2))]
    {
        let _ = (src, nb, r1, put);
        r0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::lcg_vec;
    use crate::model::quant::test_blocks;
    use std::cell::RefCell;

    /// Random matrices of every 32-value format (bytes by candle; Q4_1 and Q8_0 also in
    /// the affine store as `Linear` holds them) against random activations, a token count
    /// that leaves a short last pass (13 = 3 x 4 + 1) and rows beyond the last group:
    /// every packed result equals [`reference`] bit for bit, is within f32 summation
    /// order of the decode kernel, and rows outside the groups are left to the caller.
    #[test]
    fn packed_products_equal_the_reference_bit_for_bit() {
        let (rows, cols, t) = (21, 256, 13);
        let mut s = 17;
        let xs: Vec<QVec> = (0..t)
            .map(|_| {
                let mut q = QVec::default();
                q.quantize_into(
                    &lcg_vec(&mut s, cols)
                        .iter()
                        .map(|v| v * 3.0)
                        .collect::<Vec<_>>(),
                );
                q
            })
            .collect();
        for fmt in test_blocks::FORMATS_32 {
            let w = lcg_vec(&mut s, rows * cols);
            let (data, _) = test_blocks::candle_blocks(fmt, &w, rows, cols);
            let rb = fmt.row_bytes(cols);
            let lin =
                crate::model::linear::Linear::from_blocks(fmt, data.clone(), rows, cols).unwrap();
            let blocks = Source::Blocks {
                fmt,
                data: &data,
                rb,
            };
            let mut sources = vec![("blocks", blocks)];
            if let Some(qm) = lin.affine() {
                sources.push(("affine", Source::Affine(qm)));
            }
            for (what, src) in sources {
                let out = RefCell::new(vec![f32::NAN; t * rows]);
                let done = band(&src, cols / QK, 2, rows, &xs, |i, r, v| {
                    out.borrow_mut()[i * rows + r] = v
                });
                let out = out.into_inner();
                if !applies(t) {
                    assert_eq!(done, 2);
                    continue;
                }
                assert_eq!(done, 18, "{} {what}: two whole groups", fmt.name());
                test_blocks::check_written(&out, rows, 2..18, fmt.name(), |i, r, got| {
                    let x = &xs[i];
                    let want = reference(&src, r, cols / QK, x);
                    // The rearranged store gives the file's codes, scales, offsets.
                    assert_eq!(
                        want.to_bits(),
                        reference(&blocks, r, cols / QK, x).to_bits(),
                        "{} {what} reference",
                        fmt.name()
                    );
                    assert_eq!(
                        got.to_bits(),
                        want.to_bits(),
                        "{} {what} token {i} row {r}: {got} vs {want}",
                        fmt.name()
                    );
                    let dec = super::super::dot_q8(fmt, &data[r * rb..(r + 1) * rb], x);
                    assert!(
                        (got - dec).abs() <= 1e-4 * dec.abs().max(1.0),
                        "{} {what} token {i} row {r}: {got} vs decode {dec}",
                        fmt.name()
                    );
                });
            }
        }
    }

    /// The 16-bit sums at their bounds: every code at its largest (31, Q5_1) or Q8_0's
    /// -128 against activations of +-127. A sum that overflowed would wrap and differ
    /// from the reference by thousands.
    #[test]
    fn packed_sums_at_the_bounds_do_not_overflow() {
        let cols = 128;
        let one = half::f16::from_f32(1.0).to_bits().to_le_bytes();
        for fmt in [Format::Q5_1, Format::Q8_0] {
            let mut block = vec![0u8; fmt.block_bytes()];
            block[0..2].copy_from_slice(&one);
            if fmt == Format::Q8_0 {
                block[2..].fill(0x80); // -128
            } else {
                block[4..].fill(0xff); // every fifth bit and nibble set: 31; m = 0
            }
            let data = test_blocks::repeat(&block, 8 * fmt.row_bytes(cols));
            let src = Source::Blocks {
                fmt,
                data: &data,
                rb: fmt.row_bytes(cols),
            };
            for sign in [1.0f32, -1.0] {
                let xs: Vec<QVec> = (0..MIN_TOKENS)
                    .map(|_| {
                        let mut q = QVec::default();
                        q.quantize_into(&vec![sign; cols]);
                        q
                    })
                    .collect();
                let out = RefCell::new(vec![0f32; MIN_TOKENS * 8]);
                let done = band(&src, cols / QK, 0, 8, &xs, |i, r, v| {
                    out.borrow_mut()[i * 8 + r] = v
                });
                if !applies(MIN_TOKENS) {
                    assert_eq!(done, 0);
                    continue;
                }
                let want = reference(&src, 0, cols / QK, &xs[0]);
                let code = if fmt == Format::Q8_0 { -128.0 } else { 31.0 };
                assert!(
                    (want - sign * code * cols as f32 * 127.0 * xs[0].s[0]).abs()
                        < 1e-2 * want.abs()
                );
                for &got in out.into_inner().iter() {
                    assert_eq!(got.to_bits(), want.to_bits(), "{} sign {sign}", fmt.name());
                }
            }
        }
    }
}
