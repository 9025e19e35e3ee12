//! The AVX2 row kernels of the rearranged affine store (`QMat`: Q4_0 / Q4_1 / Q5_0 /
//! Q5_1 packed nibbles (and fifth bits), Q8_0 as bytes `code + 128`), one row and two
//! rows at a time.

use half::f16;
use std::arch::x86_64::*;

use super::{fifth_bits, hsum};
use crate::model::quant::portable::check_row;
use crate::model::quant::qvec::{QVec, QK};
use crate::model::quant::row::Row;

// One row: the kernel for AVX2 CPUs without 8-bit VNNI (Zen 2/3, older Intel): codes and
// activations widened to 16 bits and multiplied with VPMADDWD, whose 16-bit products
// cannot saturate (VPMADDUBSW could, for byte codes up to 255). Compiled in every AVX2
// build so the AVX-512 machines that run CI test it too.

/// One block of one row, widened to 16 bits.
#[inline(always)]
unsafe fn block_widened(row: &Row, b: usize, xq: *const i8, mask: __m128i) -> __m256 {
    let q = row.q.as_ptr();
    let (lo, hi) = if row.packed {
        let v = _mm_loadu_si128(q.add(b * QK / 2) as *const __m128i);
        let (mut lo, mut hi) = (
            _mm_and_si128(v, mask),
            _mm_and_si128(_mm_srli_epi16(v, 4), mask),
        );
        if !row.hi.is_empty() {
            let f = fifth_bits(row.hi.as_ptr().add(b) as *const u8);
            lo = _mm_or_si128(lo, _mm256_castsi256_si128(f));
            hi = _mm_or_si128(hi, _mm256_extracti128_si256::<1>(f));
        }
        (lo, hi)
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

/// One row against the activations (a scalar offset term).
#[inline(always)]
pub unsafe fn row_dot(row: &Row, x: &QVec) -> f32 {
    let d = row.d;
    let nb = d.len();
    check_row(row, x);
    let mask = _mm_set1_epi8(0x0f);
    let xp = x.q.as_ptr();
    // Two accumulators so consecutive blocks do not wait on each other's FMA.
    let mut a0 = _mm256_setzero_ps();
    let mut a1 = _mm256_setzero_ps();
    let mut off = 0f32;
    let mut b = 0;
    while b + 2 <= nb {
        let s0 = d[b].to_f32() * x.s[b];
        let s1 = d[b + 1].to_f32() * x.s[b + 1];
        a0 = _mm256_fmadd_ps(block_widened(row, b, xp, mask), _mm256_set1_ps(s0), a0);
        a1 = _mm256_fmadd_ps(block_widened(row, b + 1, xp, mask), _mm256_set1_ps(s1), a1);
        off += row.offset(b) * x.sum[b] + row.offset(b + 1) * x.sum[b + 1];
        b += 2;
    }
    if b < nb {
        let s0 = d[b].to_f32() * x.s[b];
        a0 = _mm256_fmadd_ps(block_widened(row, b, xp, mask), _mm256_set1_ps(s0), a0);
        off += row.offset(b) * x.sum[b];
    }
    let acc = _mm256_add_ps(a0, a1);
    hsum(acc) + off
}

// Two rows: the row kernel for AVX2 CPUs without VNNI, two rows at a time (Zen 2/3, older
// Intel). Each block's integer dot product comes from VPMADDUBSW (unsigned codes x
// signed activations, pairs summed to 16 bits) and VPMADDWD against ones (to 32 bits):
// a 4-bit code times an activation of at most 127 cannot saturate 16 bits; byte codes
// (up to 255) are split into their low 7 bits and their top bit, each of which cannot
// either, so every block's integer sum is exact, as in the widening kernel. The f16
// scales and offsets are widened 8 blocks at a time (with `x.s` and `x.sum`) and the
// offset term summed in a vector; two rows share every activation load. Compared with
// [`row_dot`] only the order of the float additions differs.

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
unsafe fn block(
    q: *const u8,
    packed: bool,
    hi: *const u32,
    b: usize,
    xv: __m256i,
    k: K,
) -> __m256i {
    if packed {
        let v = _mm_loadu_si128(q.add(b * QK / 2) as *const __m128i);
        // Low nibbles are elements 0..16, high nibbles 16..32: one 256-bit register
        // of the 32 codes in order.
        let mut w = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(v, 4), v), k.nib);
        if !hi.is_null() {
            // Codes of at most 31: pair sums still fit 16 bits.
            w = _mm256_or_si256(w, fifth_bits(hi.add(b) as *const u8));
        }
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

/// Two rows of one matrix against the same activations (pass one row twice for an odd
/// last row).
pub unsafe fn rows_dot2(rows: [Row; 2], x: &QVec) -> [f32; 2] {
    let sym = rows[0].m.is_empty();
    match (rows[0].packed, sym) {
        (true, false) => rows_dot2_fmt::<true, false>(rows, x),
        (true, true) => rows_dot2_fmt::<true, true>(rows, x),
        (false, false) => rows_dot2_fmt::<false, false>(rows, x),
        (false, true) => rows_dot2_fmt::<false, true>(rows, x),
    }
}

/// `SYM`: both rows without stored offsets (`-128 d`).
#[inline(always)]
unsafe fn rows_dot2_fmt<const PACKED: bool, const SYM: bool>(rows: [Row; 2], x: &QVec) -> [f32; 2] {
    let nb = rows[0].d.len();
    let mut bpb = 0;
    for row in &rows {
        assert!(
            row.d.len() == nb
                && row.m.is_empty() == SYM
                && row.packed == PACKED
                && row.hi.is_empty() == rows[0].hi.is_empty()
        );
        bpb = check_row(row, x);
    }
    // Null: no fifth bits.
    let hib = |r: &Row| {
        if r.hi.is_empty() {
            std::ptr::null()
        } else {
            r.hi.as_ptr()
        }
    };
    let (h0, h1) = (hib(&rows[0]), hib(&rows[1]));
    let centre = rows[0].centre;
    let k = K {
        nib: _mm256_set1_epi8(0x0f),
        low7: _mm256_set1_epi8(0x7f),
        top: _mm256_set1_epi8(-128),
        ones: _mm256_set1_epi16(1),
    };
    let xp = x.q.as_ptr();
    let (q0, q1) = (rows[0].q.as_ptr(), rows[1].q.as_ptr());
    // Row 0 in a*, row 1 in c*; two chains each so consecutive blocks do not wait
    // on each other's FMA.
    let (mut a0, mut a1, mut c0, mut c1) = (
        _mm256_setzero_ps(),
        _mm256_setzero_ps(),
        _mm256_setzero_ps(),
        _mm256_setzero_ps(),
    );
    let (mut off0, mut off1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let (d0, d1) = (rows[0].d.as_ptr(), rows[1].d.as_ptr());
    let (m0, m1) = (rows[0].m.as_ptr(), rows[1].m.as_ptr());
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
        let f16x8 = |p: *const f16| _mm256_cvtph_ps(_mm_loadu_si128(p.add(b0) as *const __m128i));
        let sc0 = _mm256_mul_ps(f16x8(d0), xs);
        let sc1 = _mm256_mul_ps(f16x8(d1), xs);
        let (o0, o1) = if SYM {
            let k128 = _mm256_set1_ps(centre);
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
            let p = block(q0, PACKED, h0, b, x0, k);
            a0 = _mm256_fmadd_ps(
                _mm256_cvtepi32_ps(p),
                _mm256_permutevar8x32_ps(sc0, idx),
                a0,
            );
            let p = block(q1, PACKED, h1, b, x0, k);
            c0 = _mm256_fmadd_ps(
                _mm256_cvtepi32_ps(p),
                _mm256_permutevar8x32_ps(sc1, idx),
                c0,
            );
            let p = block(q0, PACKED, h0, b + 1, x1, k);
            a1 = _mm256_fmadd_ps(
                _mm256_cvtepi32_ps(p),
                _mm256_permutevar8x32_ps(sc0, idx1),
                a1,
            );
            let p = block(q1, PACKED, h1, b + 1, x1, k);
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
        let p = block(q0, PACKED, h0, b, x0, k);
        a0 = _mm256_fmadd_ps(
            _mm256_cvtepi32_ps(p),
            _mm256_set1_ps((*d0.add(b)).to_f32() * xs),
            a0,
        );
        let p = block(q1, PACKED, h1, b, x0, k);
        c0 = _mm256_fmadd_ps(
            _mm256_cvtepi32_ps(p),
            _mm256_set1_ps((*d1.add(b)).to_f32() * xs),
            c0,
        );
        t0 += rows[0].offset(b) * xsum;
        t1 += rows[1].offset(b) * xsum;
    }
    [
        hsum(_mm256_add_ps(a0, a1)) + (hsum(off0) + t0),
        hsum(_mm256_add_ps(c0, c1)) + (hsum(off1) + t1),
    ]
}

/// One Q4_0 or Q5_0 row of the store (packed codes, no stored offsets) with the float
/// arithmetic of the file-block kernel these formats decoded with before
/// (`blocks::dot_q4_0` / `dot_q5_0`), operation for operation: per block the integer
/// lanes (`x0_lanes`: VPDPBUSD where the build has VNNI, the same integers as that
/// kernel's VPMADDUBSW + VPMADDWD) times `d * s_x` into two accumulators taken in turn, the offset
/// `centre * d * sum_x` added in a scalar chain, then `hsum(a0 + a1) + off`. Real-model
/// greedy ids pinned to llama.cpp's sit on near ties that a different float order flips
/// (Gemma 3's Q5_0 layers: `tests/real_gemma.rs`), so only the layout changes: aligned
/// codes, and the scales and offset products of eight blocks computed with one F16C
/// conversion and two vector products (the same IEEE products as the scalar ones).
pub unsafe fn row_dot_x0(row: &Row, x: &QVec) -> f32 {
    check_row(row, x);
    assert!(row.packed && row.m.is_empty());
    let nb = row.d.len();
    let (qp, xp, dp) = (row.q.as_ptr(), x.q.as_ptr(), row.d.as_ptr());
    let fifth = !row.hi.is_empty();
    let hp = row.hi.as_ptr();
    let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut off = 0f32;
    let (mut sc, mut of) = ([0f32; 8], [0f32; 8]);
    let centre = _mm256_set1_ps(row.centre);
    let mut b0 = 0;
    while b0 < nb {
        let n = (nb - b0).min(8);
        if n == 8 {
            let dv = _mm256_cvtph_ps(_mm_loadu_si128(dp.add(b0) as *const __m128i));
            let xs = _mm256_loadu_ps(x.s.as_ptr().add(b0));
            let xsum = _mm256_loadu_ps(x.sum.as_ptr().add(b0));
            _mm256_storeu_ps(sc.as_mut_ptr(), _mm256_mul_ps(dv, xs));
            _mm256_storeu_ps(
                of.as_mut_ptr(),
                _mm256_mul_ps(_mm256_mul_ps(centre, dv), xsum),
            );
        } else {
            for j in 0..n {
                let d = (*dp.add(b0 + j)).to_f32();
                sc[j] = d * x.s[b0 + j];
                of[j] = row.centre * d * x.sum[b0 + j];
            }
        }
        for j in 0..n {
            let b = b0 + j;
            let s = _mm256_cvtepi32_ps(x0_lanes(qp, hp, fifth, b, xp));
            let f = _mm256_set1_ps(sc[j]);
            if b % 2 == 0 {
                a0 = _mm256_fmadd_ps(s, f, a0);
            } else {
                a1 = _mm256_fmadd_ps(s, f, a1);
            }
            off += of[j];
        }
        b0 += n;
    }
    hsum(_mm256_add_ps(a0, a1)) + off
}

/// The eight i32 lanes (four consecutive codes times activations each) of block `b` of a
/// Q4_0 / Q5_0 row: on AVX-512 VNNI one VPDPBUSD, the fifth bits added by one masked
/// byte add; else VPMADDUBSW + VPMADDWD, the fifth bits ORed in. The same integers
/// either way (codes of at most 31 cannot saturate VPMADDUBSW's pair sums).
#[inline(always)]
unsafe fn x0_lanes(qp: *const u8, hp: *const u32, fifth: bool, b: usize, xp: *const i8) -> __m256i {
    let codes = super::nibbles_32(qp.add(b * QK / 2));
    #[cfg(kv_vnni)]
    {
        let codes = if fifth {
            let k: __mmask32 = _cvtu32_mask32(*hp.add(b));
            _mm256_mask_add_epi8(codes, k, codes, _mm256_set1_epi8(16))
        } else {
            codes
        };
        let xv = _mm256_loadu_si256(xp.add(b * QK) as *const __m256i);
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), codes, xv)
    }
    #[cfg(not(kv_vnni))]
    {
        let codes = if fifth {
            _mm256_or_si256(codes, fifth_bits(hp.add(b) as *const u8))
        } else {
            codes
        };
        super::dot_u8_i8(codes, xp.add(b * QK))
    }
}

/// `R` Q4_0 / Q5_0 rows of one matrix at once, each with the float arithmetic of
/// [`row_dot_x0`] operation for operation (each result equals it bit for bit): the rows
/// share the activation loads and the block scales `s_x` / sums, and their chains (two
/// FMA accumulators and the scalar offset chain per row) run side by side, so one row's
/// chain latency no longer bounds the loop; codes `pf` bytes ahead are prefetched.
#[inline(always)]
pub unsafe fn rows_dot_x0<const R: usize>(rows: &[Row; R], x: &QVec, pf: usize) -> [f32; R] {
    if rows[0].hi.is_empty() {
        rows_dot_x0_fmt::<R, false>(rows, x, pf)
    } else {
        rows_dot_x0_fmt::<R, true>(rows, x, pf)
    }
}

#[inline(always)]
unsafe fn rows_dot_x0_fmt<const R: usize, const FIFTH: bool>(
    rows: &[Row; R],
    x: &QVec,
    pf: usize,
) -> [f32; R] {
    let nb = rows[0].d.len();
    for row in rows {
        check_row(row, x);
        assert!(row.packed && row.m.is_empty() && row.d.len() == nb && row.hi.is_empty() != FIFTH);
    }
    let xp = x.q.as_ptr();
    let qp: [*const u8; R] = std::array::from_fn(|r| rows[r].q.as_ptr());
    let hp: [*const u32; R] = std::array::from_fn(|r| rows[r].hi.as_ptr());
    let dp: [*const f16; R] = std::array::from_fn(|r| rows[r].d.as_ptr());
    let mut a0 = [_mm256_setzero_ps(); R];
    let mut a1 = [_mm256_setzero_ps(); R];
    let mut off = [0f32; R];
    let (mut sc, mut of) = ([[0f32; 8]; R], [[0f32; 8]; R]);
    let mut b0 = 0;
    while b0 < nb {
        let n = (nb - b0).min(8);
        if n == 8 {
            let xs = _mm256_loadu_ps(x.s.as_ptr().add(b0));
            let xsum = _mm256_loadu_ps(x.sum.as_ptr().add(b0));
            for r in 0..R {
                let centre = _mm256_set1_ps(rows[r].centre);
                let dv = _mm256_cvtph_ps(_mm_loadu_si128(dp[r].add(b0) as *const __m128i));
                _mm256_storeu_ps(sc[r].as_mut_ptr(), _mm256_mul_ps(dv, xs));
                _mm256_storeu_ps(
                    of[r].as_mut_ptr(),
                    _mm256_mul_ps(_mm256_mul_ps(centre, dv), xsum),
                );
            }
        } else {
            for r in 0..R {
                for j in 0..n {
                    let d = (*dp[r].add(b0 + j)).to_f32();
                    sc[r][j] = d * x.s[b0 + j];
                    of[r][j] = rows[r].centre * d * x.sum[b0 + j];
                }
            }
        }
        for q in qp {
            // One line of nibbles holds four blocks.
            let ahead = q.wrapping_add(b0 * QK / 2 + pf);
            _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
            if n > 4 {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64) as *const i8);
            }
        }
        for j in 0..n {
            let b = b0 + j;
            let xv = _mm256_loadu_si256(xp.add(b * QK) as *const __m256i);
            for r in 0..R {
                let s = _mm256_cvtepi32_ps(x0_lanes_x::<FIFTH>(qp[r], hp[r], b, xv));
                let f = _mm256_set1_ps(sc[r][j]);
                if b % 2 == 0 {
                    a0[r] = _mm256_fmadd_ps(s, f, a0[r]);
                } else {
                    a1[r] = _mm256_fmadd_ps(s, f, a1[r]);
                }
                off[r] += of[r][j];
            }
        }
        b0 += n;
    }
    std::array::from_fn(|r| hsum(_mm256_add_ps(a0[r], a1[r])) + off[r])
}

/// [`x0_lanes`] with the activations already loaded and the fifth bits fixed at compile
/// time (the same integers).
#[inline(always)]
unsafe fn x0_lanes_x<const FIFTH: bool>(
    qp: *const u8,
    hp: *const u32,
    b: usize,
    xv: __m256i,
) -> __m256i {
    let codes = super::nibbles_32(qp.add(b * QK / 2));
    #[cfg(kv_vnni)]
    {
        let codes = if FIFTH {
            let k: __mmask32 = _cvtu32_mask32(*hp.add(b));
            _mm256_mask_add_epi8(codes, k, codes, _mm256_set1_epi8(16))
        } else {
            codes
        };
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), codes, xv)
    }
    #[cfg(not(kv_vnni))]
    {
        let codes = if FIFTH {
            _mm256_or_si256(codes, fifth_bits(hp.add(b) as *const u8))
        } else {
            codes
        };
        _mm256_madd_epi16(_mm256_maddubs_epi16(codes, xv), _mm256_set1_epi16(1))
    }
}
