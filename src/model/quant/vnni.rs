//! The affine row kernel for CPUs with AVX-512 VNNI: unsigned weight codes times signed
//! activations in one VPDPBUSD per block (Q5_0 / Q5_1's fifth bits added to the
//! nibbles by one masked byte add, the block's u32 of bits read as the mask).
use super::avx2::hsum;
use super::portable::check_row;
use super::qvec::{QVec, QK};
use super::row::Row;
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
#[allow(clippy::too_many_arguments)]
unsafe fn block<const FIFTH: bool>(
    q: *const u8,
    packed: bool,
    hi: *const u32,
    b: usize,
    xq: *const i8,
    scale: f32,
    acc: __m256,
    mask: __m128i,
) -> __m256 {
    let mut w = load_codes(q, packed, b, mask);
    if FIFTH {
        let k: __mmask32 = _cvtu32_mask32(*hi.add(b));
        w = _mm256_mask_add_epi8(w, k, w, _mm256_set1_epi8(16));
    }
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
pub unsafe fn row_dot(row: &Row, x: &QVec) -> f32 {
    if row.hi.is_empty() {
        row_dot_fmt::<false>(row, x)
    } else {
        row_dot_fmt::<true>(row, x)
    }
}

#[inline(always)]
unsafe fn row_dot_fmt<const FIFTH: bool>(row: &Row, x: &QVec) -> f32 {
    let (q, packed, d, m) = (row.q, row.packed, row.d, row.m);
    let hp = row.hi.as_ptr();
    let nb = d.len();
    let bytes_per_block = check_row(row, x);
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
                _mm512_mul_ps(dv, _mm512_set1_ps(row.centre))
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
            a0 = block::<FIFTH>(qp, packed, hp, b, xp, scale[i], a0, mask);
            a1 = block::<FIFTH>(qp, packed, hp, b + 1, xp, scale[i + 1], a1, mask);
            a2 = block::<FIFTH>(qp, packed, hp, b + 2, xp, scale[i + 2], a2, mask);
            a3 = block::<FIFTH>(qp, packed, hp, b + 3, xp, scale[i + 3], a3, mask);
            i += 4;
        }
        while i < n {
            a0 = block::<FIFTH>(qp, packed, hp, s0 + i, xp, scale[i], a0, mask);
            i += 1;
        }
        s0 += n;
    }
    let acc = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
    hsum(acc) + _mm512_reduce_add_ps(off)
}

/// Blocks per segment of the multi-row kernel.
const SEG_R: usize = 32;

/// `R` rows of one matrix against the same activations, each row's float arithmetic
/// that of [`row_dot`] operation for operation (so each result equals it bit for bit):
/// the rows share the activation loads (codes and per-block scales) and their
/// accumulator chains run side by side, which hides the FMA latency that a 20-block row
/// (Gemma 3's 640-value output head) leaves exposed, and the prefetches of the rows
/// ahead (`pf` bytes past each row's current block) keep the next rows' lines coming.
#[inline(always)]
pub unsafe fn rows_dot<const R: usize>(rows: &[Row; R], x: &QVec, pf: usize) -> [f32; R] {
    match (rows[0].packed, rows[0].hi.is_empty()) {
        (false, _) => rows_dot_fmt::<R, false, false>(rows, x, pf),
        (true, true) => rows_dot_fmt::<R, true, false>(rows, x, pf),
        (true, false) => rows_dot_fmt::<R, true, true>(rows, x, pf),
    }
}

#[inline(always)]
unsafe fn rows_dot_fmt<const R: usize, const PACKED: bool, const FIFTH: bool>(
    rows: &[Row; R],
    x: &QVec,
    pf: usize,
) -> [f32; R] {
    let nb = rows[0].d.len();
    let sym = rows[0].m.is_empty();
    let mut bpb = 0;
    for row in rows {
        assert!(
            row.d.len() == nb
                && row.packed == PACKED
                && row.hi.is_empty() != FIFTH
                && row.m.is_empty() == sym
        );
        bpb = check_row(row, x);
    }
    let mask = _mm_set1_epi8(0x0f);
    let xp = x.q.as_ptr();
    let qp: [*const u8; R] = std::array::from_fn(|r| rows[r].q.as_ptr());
    let hp: [*const u32; R] = std::array::from_fn(|r| rows[r].hi.as_ptr());
    // Segments of SEG_R blocks (a multiple of 16 and of 4, as SEG: the same blocks meet
    // the same lanes and accumulators as in `row_dot`), so that the rows' scale buffers
    // stay small (a 4 KiB one per call was zeroed by a memset call).
    let mut scale = [[0f32; SEG_R]; R];
    let mut off = [_mm512_setzero_ps(); R];
    let mut acc = [[_mm256_setzero_ps(); 4]; R];
    let mut s0 = 0;
    while s0 < nb {
        let n = (nb - s0).min(SEG_R);
        let mut c = 0;
        while c < n {
            let k = (n - c).min(16);
            let lanes: __mmask16 = if k == 16 { 0xffff } else { (1u16 << k) - 1 };
            let at = s0 + c;
            let xs = _mm512_maskz_loadu_ps(lanes, x.s.as_ptr().add(at));
            let xsum = _mm512_maskz_loadu_ps(lanes, x.sum.as_ptr().add(at));
            for r in 0..R {
                let row = &rows[r];
                let dv = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(
                    lanes,
                    row.d.as_ptr().add(at) as *const i16,
                ));
                let mv = if sym {
                    _mm512_mul_ps(dv, _mm512_set1_ps(row.centre))
                } else {
                    _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(
                        lanes,
                        row.m.as_ptr().add(at) as *const i16,
                    ))
                };
                _mm512_storeu_ps(scale[r].as_mut_ptr().add(c), _mm512_mul_ps(dv, xs));
                off[r] = _mm512_fmadd_ps(mv, xsum, off[r]);
            }
            c += 16;
        }
        let mut i = 0;
        while i + 4 <= n {
            let b = s0 + i;
            let xv: [__m256i; 4] =
                std::array::from_fn(|j| _mm256_loadu_si256(xp.add((b + j) * QK) as *const __m256i));
            for r in 0..R {
                // wrapping_add: near the end of the matrix the address lies past it (a
                // prefetch never faults, but `add` past the allocation would be UB).
                let ahead = qp[r].wrapping_add(b * bpb + pf);
                _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
                if !PACKED {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64) as *const i8);
                }
                for (j, &xj) in xv.iter().enumerate() {
                    acc[r][j] = block_x::<PACKED, FIFTH>(
                        qp[r],
                        hp[r],
                        b + j,
                        xj,
                        scale[r][i + j],
                        acc[r][j],
                        mask,
                    );
                }
            }
            i += 4;
        }
        while i < n {
            let b = s0 + i;
            let xv = _mm256_loadu_si256(xp.add(b * QK) as *const __m256i);
            for r in 0..R {
                acc[r][0] =
                    block_x::<PACKED, FIFTH>(qp[r], hp[r], b, xv, scale[r][i], acc[r][0], mask);
            }
            i += 1;
        }
        s0 += n;
    }
    std::array::from_fn(|r| {
        let a = &acc[r];
        let sum = _mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3]));
        hsum(sum) + _mm512_reduce_add_ps(off[r])
    })
}

/// [`block`] with the activations already loaded and the format fixed at compile time
/// (the same instructions on the same values).
#[inline(always)]
unsafe fn block_x<const PACKED: bool, const FIFTH: bool>(
    q: *const u8,
    hi: *const u32,
    b: usize,
    xv: __m256i,
    scale: f32,
    acc: __m256,
    mask: __m128i,
) -> __m256 {
    let mut w = load_codes(q, PACKED, b, mask);
    if FIFTH {
        let k: __mmask32 = _cvtu32_mask32(*hi.add(b));
        w = _mm256_mask_add_epi8(w, k, w, _mm256_set1_epi8(16));
    }
    let dotv = _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, xv);
    _mm256_fmadd_ps(_mm256_cvtepi32_ps(dotv), _mm256_set1_ps(scale), acc)
}
