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

/// One Q4_0 or Q5_0 row with `avx2::row_dot_x0`'s float arithmetic operation for
/// operation (so the same result bit for bit: Gemma 3's greedy ids sit on near ties), two
/// blocks per 512-bit instruction. That kernel's two accumulators take the even and the
/// odd blocks in turn; here they are the two halves of one register, so block `b` (even)
/// and `b + 1` go through one VPDPBUSD, one conversion and one FMA whose lanes do exactly
/// the two 256-bit FMAs of the one-block loop. Half the instructions per block, which is
/// what bounded the 0.5B shape's decode (its Q5_0 matrices took half its time at 1.6x the
/// time per byte of the other formats). Codes `pf` bytes ahead are prefetched once per
/// eight blocks, as `rows_dot_x0::<1>` does.
#[inline(always)]
pub unsafe fn row_dot_x0_pairs(row: &Row, x: &QVec, pf: usize) -> f32 {
    if row.hi.is_empty() {
        row_dot_x0_pairs_fmt::<false>(row, x, pf)
    } else {
        row_dot_x0_pairs_fmt::<true>(row, x, pf)
    }
}

#[inline(always)]
unsafe fn row_dot_x0_pairs_fmt<const FIFTH: bool>(row: &Row, x: &QVec, pf: usize) -> f32 {
    check_row(row, x);
    assert!(row.packed && row.m.is_empty() && row.hi.is_empty() != FIFTH);
    let nb = row.d.len();
    let (qp, xp, dp, hp) = (
        row.q.as_ptr(),
        x.q.as_ptr(),
        row.d.as_ptr(),
        row.hi.as_ptr(),
    );
    let centre = _mm256_set1_ps(row.centre);
    // Lanes 0-7: the even blocks' accumulator (a0), lanes 8-15: the odd blocks' (a1).
    let mut acc = _mm512_setzero_ps();
    let mut off = 0f32;
    let mut of = [0f32; 8];
    // Block pair p of a segment of eight takes scale 2p in its low half, 2p + 1 in its
    // high half.
    let pick = |p: i32| {
        _mm512_setr_epi32(
            2 * p,
            2 * p,
            2 * p,
            2 * p,
            2 * p,
            2 * p,
            2 * p,
            2 * p,
            2 * p + 1,
            2 * p + 1,
            2 * p + 1,
            2 * p + 1,
            2 * p + 1,
            2 * p + 1,
            2 * p + 1,
            2 * p + 1,
        )
    };
    let idx = [pick(0), pick(1), pick(2), pick(3)];
    let mut b0 = 0;
    while b0 + 8 <= nb {
        let dv = _mm256_cvtph_ps(_mm_loadu_si128(dp.add(b0) as *const __m128i));
        let xs = _mm256_loadu_ps(x.s.as_ptr().add(b0));
        let xsum = _mm256_loadu_ps(x.sum.as_ptr().add(b0));
        let sc = _mm512_castps256_ps512(_mm256_mul_ps(dv, xs));
        _mm256_storeu_ps(
            of.as_mut_ptr(),
            _mm256_mul_ps(_mm256_mul_ps(centre, dv), xsum),
        );
        // One line of nibbles holds four blocks; wrapping_add: past the matrix's end
        // the address is only a prefetch hint.
        let ahead = qp.wrapping_add(b0 * QK / 2 + pf);
        _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64) as *const i8);
        for (p, ix) in idx.iter().enumerate() {
            let b = b0 + 2 * p;
            let s = _mm512_cvtepi32_ps(pair_lanes::<FIFTH>(qp, hp, b, xp));
            acc = _mm512_fmadd_ps(s, _mm512_permutexvar_ps(*ix, sc), acc);
            off += of[2 * p];
            off += of[2 * p + 1];
        }
        b0 += 8;
    }
    // The last blocks (fewer than eight), one at a time as in `row_dot_x0`'s last
    // segment (its scalar products; `b0` is a multiple of eight, so the parity of `b`
    // picks the same accumulator).
    let mut a0 = _mm512_castps512_ps256(acc);
    let mut a1 = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc), 1));
    for b in b0..nb {
        let d = (*dp.add(b)).to_f32();
        let scale = d * x.s[b];
        let o = row.centre * d * x.sum[b];
        let s = _mm256_cvtepi32_ps(one_lanes::<FIFTH>(qp, hp, b, xp));
        if b % 2 == 0 {
            a0 = _mm256_fmadd_ps(s, _mm256_set1_ps(scale), a0);
        } else {
            a1 = _mm256_fmadd_ps(s, _mm256_set1_ps(scale), a1);
        }
        off += o;
    }
    hsum(_mm256_add_ps(a0, a1)) + off
}

/// The sixteen i32 lanes of blocks `b` and `b + 1` of a Q4_0 / Q5_0 row (eight each, as
/// `one_lanes` gives them): both blocks' 32 bytes of nibbles spread to
/// `[low nibbles of b, high of b, low of b + 1, high of b + 1]`, which is the order of
/// the 64 activation bytes, and the two blocks' fifth-bit words read as one 64-bit mask.
#[inline(always)]
unsafe fn pair_lanes<const FIFTH: bool>(
    qp: *const u8,
    hp: *const u32,
    b: usize,
    xp: *const i8,
) -> __m512i {
    let v = _mm512_castsi256_si512(_mm256_loadu_si256(qp.add(b * QK / 2) as *const __m256i));
    let spread = _mm512_permutexvar_epi64(_mm512_setr_epi64(0, 1, 0, 1, 2, 3, 2, 3), v);
    let shifted = _mm512_srlv_epi64(spread, _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4));
    let mut codes = _mm512_and_si512(shifted, _mm512_set1_epi8(0x0f));
    if FIFTH {
        let k: __mmask64 = _cvtu64_mask64((hp.add(b) as *const u64).read_unaligned());
        codes = _mm512_mask_add_epi8(codes, k, codes, _mm512_set1_epi8(16));
    }
    let xv = _mm512_loadu_si512(xp.add(b * QK) as *const _);
    _mm512_dpbusd_epi32(_mm512_setzero_si512(), codes, xv)
}

/// The eight i32 lanes of block `b` (four consecutive codes times activations each).
#[inline(always)]
unsafe fn one_lanes<const FIFTH: bool>(
    qp: *const u8,
    hp: *const u32,
    b: usize,
    xp: *const i8,
) -> __m256i {
    let mut codes = load_codes(qp, true, b, _mm_set1_epi8(0x0f));
    if FIFTH {
        let k: __mmask32 = _cvtu32_mask32(*hp.add(b));
        codes = _mm256_mask_add_epi8(codes, k, codes, _mm256_set1_epi8(16));
    }
    let xv = _mm256_loadu_si256(xp.add(b * QK) as *const __m256i);
    _mm256_dpbusd_epi32(_mm256_setzero_si256(), codes, xv)
}
