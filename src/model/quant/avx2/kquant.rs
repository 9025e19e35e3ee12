//! The K-quants (Q4_K, Q5_K, Q6_K) against Q8_K activations, a row against `N` tokens.

use std::arch::x86_64::*;

use super::{h, hsum};
use crate::model::quant::qvec::QVec;

/// The eight 6-bit scales and eight 6-bit mins of a Q4_K / Q5_K super-block (12 bytes at
/// `p`), one byte each, as two u64: the same unpacking as `portable::k_scales`, done on
/// 32-bit words (the first four of each are the low 6 bits of bytes 0..4 / 4..8; the
/// last four take a nibble of bytes 8..12 and the top 2 bits of bytes 0..4 / 4..8).
#[inline(always)]
unsafe fn k_scales_u64(p: *const u8) -> (u64, u64) {
    let w = |i: usize| u32::from_le_bytes([*p.add(i), *p.add(i + 1), *p.add(i + 2), *p.add(i + 3)]);
    let (w0, w1, w2) = (w(0), w(4), w(8));
    let sc_lo = w0 & 0x3f3f_3f3f;
    let m_lo = w1 & 0x3f3f_3f3f;
    let sc_hi = (w2 & 0x0f0f_0f0f) | (((w0 >> 6) & 0x0303_0303) << 4);
    let m_hi = ((w2 >> 4) & 0x0f0f_0f0f) | (((w1 >> 6) & 0x0303_0303) << 4);
    (
        sc_lo as u64 | (sc_hi as u64) << 32,
        m_lo as u64 | (m_hi as u64) << 32,
    )
}

/// Decode streams every row of a large matrix once: ask for the super-block ~2 KiB ahead
/// (rows lie one after another, so this runs into the next rows) so the loads do not
/// wait on memory. Measured: +17% decode on the Llama-3.2-1B shape (matrices of 0.6-9.4
/// MB), -5% on Gemma 3 270M's small K-quant matrices (0.4-0.7 MB), hence the caller's
/// size threshold.
/// Wrapping arithmetic: past the matrix the address is never dereferenced (a prefetch
/// does not fault), but `add` beyond the allocation would be UB.
#[inline(always)]
unsafe fn prefetch_ahead(blk: *const u8, bytes: usize) {
    let ahead = blk.wrapping_add(2048);
    let mut l = 0;
    while l < bytes {
        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(l) as *const i8);
        l += 64;
    }
}

/// Two f16 at `p` (d, dmin) as f32 through F16C.
#[inline(always)]
unsafe fn h2(p: *const u8) -> (f32, f32) {
    let bits = u32::from_le_bytes([*p, *p.add(1), *p.add(2), *p.add(3)]);
    let v = _mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32));
    (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_movehdup_ps(v)))
}

/// The 16 i16 lanes `m_0, m_0, m_1, m_1, ..., m_7, m_7` (the mins, one byte each in
/// `m`): each min twice, to meet the two 16-value quant sums of its 32-value sub-block
/// in one VPMADDWD.
#[inline(always)]
unsafe fn mins_pairs(m: u64) -> __m256i {
    let v = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(m as i64));
    _mm256_set_m128i(_mm_unpackhi_epi16(v, v), _mm_unpacklo_epi16(v, v))
}

/// Byte shuffle that fills every 16-bit lane with word `j` of each 128-bit half: one
/// VPSHUFB picks a sub-block's scale out of a register holding eight of them, where
/// broadcasting it from memory took a scalar load, a move and a broadcast per scale
/// (a third of the kernel's instructions).
#[inline(always)]
unsafe fn pick_word(j: usize) -> __m128i {
    _mm_set1_epi16((2 * j as i16) | ((2 * j as i16 + 1) << 8))
}

/// `acc + madd(a, b)`: the i16 pair products summed into i32 lanes, in one VPDPWSSD
/// where the CPU has AVX-512 VNNI (the same wrapping integer sum either way, so the
/// results are bit-identical).
#[inline(always)]
unsafe fn madd_acc(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
    #[cfg(kv_vnni)]
    {
        _mm256_dpwssd_epi32(acc, a, b)
    }
    #[cfg(not(kv_vnni))]
    {
        _mm256_add_epi32(acc, _mm256_madd_epi16(a, b))
    }
}

/// Q4_K and Q5_K rows against the Q8_K activations of `N` tokens at once (the codes are
/// unpacked once and used `N` times; decode calls it with one token). Per super-block
/// each 32-code sub-block's products are pair-summed (VPMADDUBSW) and multiplied by the
/// sub-block's scale in the same VPMADDWD, all in i32; then one float step per
/// super-block and token, the mins against the 16-value quant sums in the same vector.
/// The activations' pointers are taken out of the `QVec`s first so the loop keeps its
/// accumulators in registers.
#[inline(always)]
pub unsafe fn dot_k45_n<const N: usize, const PREFETCH: bool>(
    row: &[u8],
    xs: &[&QVec; N],
    five: bool,
) -> [f32; N] {
    let bytes = if five { 176 } else { 144 };
    let p = row.as_ptr();
    let nb = row.len() / bytes;
    let xq: [*const i8; N] = std::array::from_fn(|t| xs[t].kq.as_ptr());
    let xd: [*const f32; N] = std::array::from_fn(|t| xs[t].kd.as_ptr());
    let xb: [*const i16; N] = std::array::from_fn(|t| xs[t].kbsum.as_ptr());
    let mut acc = [_mm256_setzero_ps(); N];
    for sb in 0..nb {
        let blk = p.add(sb * bytes);
        if PREFETCH {
            prefetch_ahead(blk, bytes);
        }
        let (sc, m) = k_scales_u64(blk.add(4));
        // The eight scales as i16 in both halves, for `pick_word`.
        let scv = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(sc as i64)));
        let qs = blk.add(if five { 48 } else { 16 });
        // Two accumulators per token (low and high sub-block of each 64-code chunk) so
        // the multiply-adds of one super-block do not wait on each other.
        let mut sumi = [_mm256_setzero_si256(); N];
        let mut sumh = [_mm256_setzero_si256(); N];
        for c in 0..4 {
            let q = _mm256_loadu_si256(qs.add(32 * c) as *const __m256i);
            let mask = _mm256_set1_epi8(0x0f);
            let mut lo = _mm256_and_si256(q, mask);
            let mut hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), mask);
            if five {
                let qh = _mm256_loadu_si256(blk.add(16) as *const __m256i);
                let sixteen = _mm256_set1_epi8(0x10);
                let bl = _mm256_set1_epi8((1u8 << (2 * c)) as i8);
                let bh = _mm256_set1_epi8((2u8 << (2 * c)) as i8);
                lo = _mm256_or_si256(
                    lo,
                    _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, bl), bl), sixteen),
                );
                hi = _mm256_or_si256(
                    hi,
                    _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, bh), bh), sixteen),
                );
            }
            let sl = _mm256_shuffle_epi8(scv, _mm256_broadcastsi128_si256(pick_word(2 * c)));
            let sh = _mm256_shuffle_epi8(scv, _mm256_broadcastsi128_si256(pick_word(2 * c + 1)));
            let at = sb * 256 + 64 * c;
            for t in 0..N {
                let xl = _mm256_loadu_si256(xq[t].add(at) as *const __m256i);
                let xh = _mm256_loadu_si256(xq[t].add(at + 32) as *const __m256i);
                sumi[t] = madd_acc(sumi[t], _mm256_maddubs_epi16(lo, xl), sl);
                sumh[t] = madd_acc(sumh[t], _mm256_maddubs_epi16(hi, xh), sh);
            }
        }
        let (d, dmin) = h2(blk);
        let (dv, dminv) = (_mm256_set1_ps(d), _mm256_set1_ps(dmin));
        let mins = mins_pairs(m);
        for t in 0..N {
            // acc += d_x * (d * sumi - dmin * mins . bsums)
            let bs = _mm256_loadu_si256(xb[t].add(sb * 16) as *const __m256i);
            let msum = _mm256_cvtepi32_ps(_mm256_madd_epi16(bs, mins));
            let si = _mm256_add_epi32(sumi[t], sumh[t]);
            let v = _mm256_fnmadd_ps(dminv, msum, _mm256_mul_ps(dv, _mm256_cvtepi32_ps(si)));
            acc[t] = _mm256_fmadd_ps(_mm256_broadcast_ss(&*xd[t].add(sb)), v, acc[t]);
        }
    }
    let mut out = [0f32; N];
    for t in 0..N {
        out[t] = hsum(acc[t]);
    }
    out
}

/// Q6_K rows against the Q8_K activations of `N` tokens: the unsigned 6-bit codes go
/// through VPMADDUBSW as they are, each 16-value half times its i8 scale in VPMADDWD,
/// summed in i32 over the super-block; the centre (32) comes off once per super-block as
/// `32 * sum_g scale_g * bsum_g` from the activations' 16-value sums.
#[inline(always)]
pub unsafe fn dot_q6k_n<const N: usize, const PREFETCH: bool>(
    row: &[u8],
    xs: &[&QVec; N],
) -> [f32; N] {
    let p = row.as_ptr();
    let nb = row.len() / 210;
    let xq: [*const i8; N] = std::array::from_fn(|t| xs[t].kq.as_ptr());
    let xd: [*const f32; N] = std::array::from_fn(|t| xs[t].kd.as_ptr());
    let xb: [*const i16; N] = std::array::from_fn(|t| xs[t].kbsum.as_ptr());
    let mut acc = [_mm256_setzero_ps(); N];
    for sb in 0..nb {
        let blk = p.add(sb * 210);
        if PREFETCH {
            prefetch_ahead(blk, 210);
        }
        let scales = blk.add(192) as *const i8;
        // The 16 scales as i16 (low half: 0..8, high half: 8..16), and each half's eight
        // in both halves of a register for `pick_word`.
        let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(scales as *const __m128i));
        let halves = [
            _mm256_permute2x128_si256::<0x00>(sc16, sc16),
            _mm256_permute2x128_si256::<0x11>(sc16, sc16),
        ];
        let mut sumi = [_mm256_setzero_si256(); N];
        let mut sum2 = [_mm256_setzero_si256(); N];
        for (half, &hs) in halves.iter().enumerate() {
            let m4 = _mm256_set1_epi8(0x0f);
            let m2 = _mm256_set1_epi8(0x30);
            let ql0 = _mm256_loadu_si256(blk.add(64 * half) as *const __m256i);
            let ql1 = _mm256_loadu_si256(blk.add(64 * half + 32) as *const __m256i);
            let qh = _mm256_loadu_si256(blk.add(128 + 32 * half) as *const __m256i);
            let q = [
                _mm256_or_si256(
                    _mm256_and_si256(ql0, m4),
                    _mm256_and_si256(_mm256_slli_epi16(qh, 4), m2),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(ql1, m4),
                    _mm256_and_si256(_mm256_slli_epi16(qh, 2), m2),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                    _mm256_and_si256(qh, m2),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                    _mm256_and_si256(_mm256_srli_epi16(qh, 2), m2),
                ),
            ];
            for (k, &codes) in q.iter().enumerate() {
                // Scale 2k of this half for the low 16 codes, 2k + 1 for the high 16.
                let sv = _mm256_shuffle_epi8(
                    hs,
                    _mm256_set_m128i(pick_word(2 * k + 1), pick_word(2 * k)),
                );
                let at = sb * 256 + 128 * half + 32 * k;
                for t in 0..N {
                    let xv = _mm256_loadu_si256(xq[t].add(at) as *const __m256i);
                    let pairs = _mm256_maddubs_epi16(codes, xv);
                    if k % 2 == 0 {
                        sumi[t] = madd_acc(sumi[t], pairs, sv);
                    } else {
                        sum2[t] = madd_acc(sum2[t], pairs, sv);
                    }
                }
            }
        }
        // The scales against each token's 16 quant sums: the centre's share.
        let d = h(blk.add(208));
        for t in 0..N {
            let bs = _mm256_loadu_si256(xb[t].add(sb * 16) as *const __m256i);
            let centre = _mm256_slli_epi32(_mm256_madd_epi16(bs, sc16), 5);
            let s = _mm256_sub_epi32(_mm256_add_epi32(sumi[t], sum2[t]), centre);
            let f = _mm256_set1_ps(d * *xd[t].add(sb));
            acc[t] = _mm256_fmadd_ps(f, _mm256_cvtepi32_ps(s), acc[t]);
        }
    }
    let mut out = [0f32; N];
    for t in 0..N {
        out[t] = hsum(acc[t]);
    }
    out
}
