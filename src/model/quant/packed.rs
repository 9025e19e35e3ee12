//! K-quant rows packed eight at a time for prefill's 8-bit products.
//!
//! The row-at-a-time kernels (`dot_q8_xn`) keep one row's sums in the eight i32 lanes of
//! a vector and pay a float step per super-block, token and row, plus a horizontal sum
//! per row and token; at prefill's sizes that step took a third of the product's time
//! (perf on `benches/matmul.rs`). Here a band of rows is rearranged, eight rows at a time,
//! so that lane `r` of every vector belongs to row `r`: 32 bytes of codes hold four
//! consecutive bytes of each of eight rows, the activations' four matching values are
//! broadcast to every lane, and VPMADDUBSW's pair sums of one sub-block stay in 16 bits
//! until the sub-block ends (one VPMADDWD with the rows' scales per 32 values and token,
//! not per 16). The float step then serves eight rows at once and no horizontal sum is
//! left. The packing is done per band into a per-thread buffer, so the stored weights and
//! the decode kernels keep the file's layout; it costs one pass over the band's bytes per
//! product, small against the tokens times rows times columns of the product itself.
//!
//! Bounds that make the 16-bit sums safe: Q8_K activations lie in -127..=127 (llama.cpp's
//! `quantize_row_q8_K`), a Q4_K code in 0..=15, so one pair sum is at most 3,810 in
//! magnitude and a sub-block's eight of them 30,480 < 32,767; a Q6_K code is in 0..=63,
//! a pair sum at most 16,002, two of them 32,004.

use super::layout::{Q4K_BYTES, Q4K_MN, Q4K_QS, Q4K_SC, Q6K_BYTES, Q6K_CP, Q6K_QC, Q6K_SC, ROWS};

fn put_f32(out: &mut [u8], at: usize, v: f32) {
    out[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_i16(out: &mut [u8], at: usize, v: i16) {
    out[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

/// Copies `n` bytes at `from` of each of eight rows' blocks as 4-byte columns: output
/// vector `k` (32 bytes at `at + 32 k`) holds bytes `from + 4k .. from + 4k + 4` of rows
/// 0..8 in turn.
fn columns(blocks: &[&[u8]; ROWS], from: usize, n: usize, out: &mut [u8], at: usize) {
    for k in 0..n / 4 {
        for (r, b) in blocks.iter().enumerate() {
            let o = at + 32 * k + 4 * r;
            out[o..o + 4].copy_from_slice(&b[from + 4 * k..from + 4 * k + 4]);
        }
    }
}

/// Packs super-block `sb` of eight Q4_K rows (each the file's row bytes) into `out`
/// (`Q4K_BYTES` long).
pub fn pack_q4k(rows: &[&[u8]; ROWS], sb: usize, out: &mut [u8]) {
    let blocks: [&[u8]; ROWS] = std::array::from_fn(|r| &rows[r][sb * 144..(sb + 1) * 144]);
    for (r, b) in blocks.iter().enumerate() {
        put_f32(out, 4 * r, super::portable::h(b, 0));
        put_f32(out, 32 + 4 * r, super::portable::h(b, 2));
        let (sc, m) = super::portable::k_scales(&b[4..16]);
        for (j, &v) in sc.iter().enumerate() {
            put_i16(out, Q4K_SC + 32 * j + 4 * r, v as i16);
            put_i16(out, Q4K_SC + 32 * j + 4 * r + 2, v as i16);
        }
        for k in 0..4 {
            put_i16(out, Q4K_MN + 32 * k + 4 * r, m[2 * k] as i16);
            put_i16(out, Q4K_MN + 32 * k + 4 * r + 2, m[2 * k + 1] as i16);
        }
    }
    columns(&blocks, 16, 128, out, Q4K_QS);
}

/// Packs super-block `sb` of eight Q6_K rows into `out` (`Q6K_BYTES` long).
pub fn pack_q6k(rows: &[&[u8]; ROWS], sb: usize, out: &mut [u8]) {
    let blocks: [&[u8]; ROWS] = std::array::from_fn(|r| &rows[r][sb * 210..(sb + 1) * 210]);
    for (r, b) in blocks.iter().enumerate() {
        put_f32(out, 4 * r, super::portable::h(b, 208));
        let sc = |g: usize| b[192 + g] as i8 as i16;
        for g in 0..16 {
            put_i16(out, Q6K_SC + 32 * g + 4 * r, sc(g));
            put_i16(out, Q6K_SC + 32 * g + 4 * r + 2, sc(g));
        }
        for k in 0..8 {
            put_i16(out, Q6K_CP + 32 * k + 4 * r, sc(2 * k));
            put_i16(out, Q6K_CP + 32 * k + 4 * r + 2, sc(2 * k + 1));
        }
    }
    // Unpacked per row in the order of the file's layout (the loops vectorise), then
    // laid out in columns like the Q4_K codes.
    let mut codes = [0u8; 256];
    for (r, b) in blocks.iter().enumerate() {
        for h in 0..2 {
            let (ql, qh) = (&b[64 * h..64 * h + 64], &b[128 + 32 * h..160 + 32 * h]);
            let c = &mut codes[128 * h..128 * h + 128];
            for i in 0..32 {
                c[i] = (ql[i] & 0x0f) | ((qh[i] & 3) << 4);
                c[32 + i] = (ql[32 + i] & 0x0f) | (((qh[i] >> 2) & 3) << 4);
                c[64 + i] = (ql[i] >> 4) | (((qh[i] >> 4) & 3) << 4);
                c[96 + i] = (ql[32 + i] >> 4) | ((qh[i] >> 6) << 4);
            }
        }
        for (k, c4) in codes.chunks_exact(4).enumerate() {
            let o = Q6K_QC + 32 * k + 4 * r;
            out[o..o + 4].copy_from_slice(c4);
        }
    }
}

/// The 32-value sums of a Q8_K row's quants (pairs of its 16-value sums), the form the
/// packed Q4_K kernel meets the mins with.
pub fn sums32(kbsum: &[i16], out: &mut Vec<i16>) {
    out.clear();
    out.extend(kbsum.chunks_exact(2).map(|p| p[0] + p[1]));
}

/// Fewest tokens for which packing a band pays (below it the row kernels are used).
pub const MIN_TOKENS: usize = 8;

/// Whether prefill's 8-bit product takes the packed path for rows of `fmt` against
/// `tokens` tokens.
pub fn applies(fmt: super::Format, tokens: usize) -> bool {
    cfg!(kv_avx2) && matches!(fmt, super::Format::Q4K | super::Format::Q6K) && tokens >= MIN_TOKENS
}

/// Products of rows `r0..r1` of a Q4_K or Q6_K matrix (`data`, `rb` bytes per row)
/// with every token of `xs`, through the packed kernels, for as many whole groups of
/// eight rows as the band holds; `put(token, row, value)` receives each result. Returns
/// the first row not done (the caller takes the rest with the row kernels). `b32` holds
/// each token's 32-value sums (`sums32`) for Q4_K and may be empty for Q6_K.
#[allow(clippy::too_many_arguments)]
pub fn band(
    fmt: super::Format,
    data: &[u8],
    rb: usize,
    r0: usize,
    r1: usize,
    xs: &[super::QVec],
    b32: &[Vec<i16>],
    put: impl Fn(usize, usize, f32),
) -> usize {
    if !applies(fmt, xs.len()) {
        return r0;
    }
    #[cfg(kv_avx2)]
    {
        use std::cell::RefCell;
        thread_local! {
            // Reused between products so a band's packing does not page in fresh memory.
            static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        }
        let q4 = fmt == super::Format::Q4K;
        let (bb, pb) = if q4 {
            (144, Q4K_BYTES)
        } else {
            (210, Q6K_BYTES)
        };
        let nb = rb / bb;
        let groups = (r1 - r0) / ROWS;
        let n = xs.len();
        assert!(
            rb.is_multiple_of(bb)
                && data.len() >= r1 * rb
                && xs.iter().all(|x| x.kq.len() >= nb * 256
                    && x.kd.len() >= nb
                    && x.kbsum.len() >= nb * 16)
                && (!q4 || (b32.len() >= n && b32.iter().all(|b| b.len() >= nb * 8)))
        );
        BUF.with(|buf| {
            // 64 spare bytes so the packed blocks can start on a cache line (every
            // block is a multiple of 32 bytes: no 32-byte load then splits a line).
            let mut buf = buf.borrow_mut();
            buf.resize(groups * nb * pb + 64, 0);
            let start = buf.as_ptr().align_offset(64).min(64);
            let buf = &mut buf[start..];
            for g in 0..groups {
                let rows: [&[u8]; ROWS] = std::array::from_fn(|r| {
                    let i = r0 + ROWS * g + r;
                    &data[i * rb..(i + 1) * rb]
                });
                for sb in 0..nb {
                    let o = (g * nb + sb) * pb;
                    if q4 {
                        pack_q4k(&rows, sb, &mut buf[o..o + pb]);
                    } else {
                        pack_q6k(&rows, sb, &mut buf[o..o + pb]);
                    }
                }
            }
            // Six tokens per pass for Q4_K (twelve 16-bit sums in registers; measured
            // best of 1-6 on this AMD EPYC), four for Q6_K.
            let emit = |t0: usize, m: usize, g: usize, acc: &[std::arch::x86_64::__m256]| {
                for (i, a) in acc.iter().enumerate().take(m) {
                    let mut v = [0f32; ROWS];
                    // SAFETY: v holds eight f32.
                    unsafe { std::arch::x86_64::_mm256_storeu_ps(v.as_mut_ptr(), *a) };
                    for (r, &x) in v.iter().enumerate() {
                        put(t0 + i, r0 + ROWS * g + r, x);
                    }
                }
            };
            if q4 {
                const T: usize = 6;
                for t0 in (0..n).step_by(T) {
                    let m = (n - t0).min(T);
                    let g: [&super::QVec; T] = std::array::from_fn(|i| &xs[t0 + i.min(m - 1)]);
                    let b: [&[i16]; T] = std::array::from_fn(|i| b32[t0 + i.min(m - 1)].as_slice());
                    for grp in 0..groups {
                        // SAFETY: the buffer holds `groups` packed groups of nb blocks;
                        // the activations' lengths were asserted above.
                        let acc = unsafe {
                            super::avx2::packed::q4k_rows8::<T>(
                                buf.as_ptr().add(grp * nb * pb),
                                nb,
                                &g,
                                &b,
                            )
                        };
                        emit(t0, m, grp, &acc);
                    }
                }
            } else {
                const T: usize = 4;
                for t0 in (0..n).step_by(T) {
                    let m = (n - t0).min(T);
                    let g: [&super::QVec; T] = std::array::from_fn(|i| &xs[t0 + i.min(m - 1)]);
                    for grp in 0..groups {
                        // SAFETY: as above.
                        let acc = unsafe {
                            super::avx2::packed::q6k_rows8::<T>(
                                buf.as_ptr().add(grp * nb * pb),
                                nb,
                                &g,
                            )
                        };
                        emit(t0, m, grp, &acc);
                    }
                }
            }
        });
        r0 + groups * ROWS
    }
    #[cfg(not(kv_avx2))]
    {
        let _ = (data, rb, r1, b32, put);
        r0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::{lcg, lcg_vec};
    use crate::model::quant::QVec;
    use crate::model::quant::{portable, test_blocks, Format};
    use std::cell::RefCell;

    fn qvec(x: &[f32]) -> QVec {
        let mut q = QVec::default();
        q.quantize_k_into(x);
        q
    }

    /// `band` over rows `r0..r1` of `data`: the results it wrote, by (token, row), and
    /// the first row it left to the caller.
    fn run_band(
        fmt: Format,
        data: &[u8],
        rb: usize,
        r0: usize,
        r1: usize,
        xs: &[QVec],
    ) -> (Vec<f32>, usize) {
        let rows = data.len() / rb;
        let out = RefCell::new(vec![f32::NAN; xs.len() * rows]);
        let b32: Vec<Vec<i16>> = xs
            .iter()
            .map(|x| {
                let mut v = Vec::new();
                sums32(&x.kbsum, &mut v);
                v
            })
            .collect();
        let done = band(fmt, data, rb, r0, r1, xs, &b32, |t, r, v| {
            out.borrow_mut()[t * rows + r] = v
        });
        (out.into_inner(), done)
    }

    /// Random Q4_K / Q6_K rows (bytes made from random values by candle) against random
    /// activations: every packed result equals the portable reference's dot product to
    /// f32 summation order (1e-5 relative to the product's scale); whole groups of eight
    /// are done, the rest left to the caller; token counts that do not fill the last
    /// pass (13 = 2 x 6 + 1, 2 x 6 + 1 for Q6_K's pairs) are covered.
    #[test]
    fn packed_products_equal_the_reference() {
        let mut s = 11;
        for fmt in [Format::Q4K, Format::Q6K] {
            let (rows, cols, t) = (21, 768, 13);
            let w: Vec<f32> = lcg_vec(&mut s, rows * cols);
            let (data, _) = test_blocks::candle_blocks(fmt, &w, rows, cols);
            let rb = fmt.row_bytes(cols);
            let xs: Vec<QVec> = (0..t)
                .map(|_| qvec(&(0..cols).map(|_| lcg(&mut s) * 3.0).collect::<Vec<_>>()))
                .collect();
            let (out, done) = run_band(fmt, &data, rb, 2, rows, &xs);
            if !applies(fmt, t) {
                assert_eq!(done, 2, "no SIMD: nothing packed");
                continue;
            }
            assert_eq!(done, 2 + 16, "{}: two whole groups", fmt.name());
            test_blocks::check_written(&out, rows, 2..18, fmt.name(), |i, r, got| {
                let want = portable::dot_q8k(fmt, &data[r * rb..(r + 1) * rb], &xs[i]);
                assert!(
                    (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                    "{} token {i} row {r}: {got} vs {want}",
                    fmt.name()
                );
            });
        }
    }

    /// The 16-bit sums at their bounds: every code at its largest (15 for Q4_K, 63 for
    /// Q6_K) and every activation at +-127, the largest scales. A sum that overflowed
    /// would wrap and differ from the reference by thousands.
    #[test]
    fn packed_sums_at_the_bounds_do_not_overflow() {
        let cols = 512;
        for fmt in [Format::Q4K, Format::Q6K] {
            let mut block = vec![0u8; fmt.block_bytes()];
            let one = half::f16::from_f32(1.0).to_bits().to_le_bytes();
            match fmt {
                Format::Q4K => {
                    block[0..2].copy_from_slice(&one); // d; dmin stays 0
                    block[4..16].fill(0xff); // every 6-bit scale and min 63
                    block[16..].fill(0xff); // every code 15
                }
                _ => {
                    block[..192].fill(0xff); // every code 63
                    block[192..208].fill(127); // every scale 127
                    block[208..210].copy_from_slice(&one);
                }
            }
            let row = test_blocks::repeat(&block, fmt.row_bytes(cols));
            let data = test_blocks::repeat(&row, 8 * row.len());
            for sign in [1.0f32, -1.0] {
                let xs: Vec<QVec> = (0..MIN_TOKENS).map(|_| qvec(&vec![sign; cols])).collect();
                assert!(xs[0].kq.iter().all(|&q| q.abs() == 127));
                let (out, done) = run_band(fmt, &data, row.len(), 0, 8, &xs);
                if !applies(fmt, MIN_TOKENS) {
                    assert_eq!(done, 0);
                    continue;
                }
                let want = portable::dot_q8k(fmt, &row, &xs[0]);
                for &got in &out {
                    assert!(
                        (got - want).abs() <= 1e-5 * want.abs(),
                        "{} sign {sign}: {got} vs {want}",
                        fmt.name()
                    );
                }
            }
        }
    }
}
