//! The AVX2 kernels of prefill's eight-row packed K-quant tiles (layout in
//! `quant/packed.rs`).

use std::arch::x86_64::*;

use super::{bcast4, ld};
use crate::model::quant::layout::{
    Q4K_BYTES, Q4K_MN, Q4K_QS, Q4K_SC, Q6K_BYTES, Q6K_CP, Q6K_QC, Q6K_SC,
};
use crate::model::quant::qvec::QVec;

/// Lane r: the sum over `k < K` of row r's i16 pair at `w + 32 k` times the i16 pair
/// `v[2k], v[2k + 1]` (the mins or the Q6_K scales against a token's block sums).
#[inline(always)]
unsafe fn pair_dots<const K: usize>(w: *const u8, v: *const i16) -> __m256i {
    let v = v as *const i8;
    let mut s = _mm256_madd_epi16(ld(w), bcast4(v));
    for k in 1..K {
        s = _mm256_add_epi32(
            s,
            _mm256_madd_epi16(ld(w.add(32 * k)), bcast4(v.add(4 * k))),
        );
    }
    s
}

/// Eight packed Q4_K rows (`nb` super-blocks at `pk`) against `T` tokens: lane `r`
/// of result `t` is row `r` times token `t`. `b32[t]` are token `t`'s 32-value sums.
#[inline(always)]
pub unsafe fn q4k_rows8<const T: usize>(
    pk: *const u8,
    nb: usize,
    xs: &[&QVec; T],
    b32: &[&[i16]; T],
) -> [__m256; T] {
    let xq: [*const i8; T] = std::array::from_fn(|t| xs[t].kq.as_ptr());
    let xd: [*const f32; T] = std::array::from_fn(|t| xs[t].kd.as_ptr());
    let xb: [*const i16; T] = std::array::from_fn(|t| b32[t].as_ptr());
    let m4 = _mm256_set1_epi8(0x0f);
    let mut acc = [_mm256_setzero_ps(); T];
    for sb in 0..nb {
        let blk = pk.add(sb * Q4K_BYTES);
        let mut sumi = [_mm256_setzero_si256(); T];
        for c in 0..4 {
            let mut a_lo = [_mm256_setzero_si256(); T];
            let mut a_hi = [_mm256_setzero_si256(); T];
            let qs = blk.add(Q4K_QS + 256 * c);
            let at = sb * 256 + 64 * c;
            for k in 0..8 {
                let w = ld(qs.add(32 * k));
                let lo = _mm256_and_si256(w, m4);
                let hi = _mm256_and_si256(_mm256_srli_epi16(w, 4), m4);
                for t in 0..T {
                    let xl = bcast4(xq[t].add(at + 4 * k));
                    let xh = bcast4(xq[t].add(at + 32 + 4 * k));
                    a_lo[t] = _mm256_add_epi16(a_lo[t], _mm256_maddubs_epi16(lo, xl));
                    a_hi[t] = _mm256_add_epi16(a_hi[t], _mm256_maddubs_epi16(hi, xh));
                }
            }
            let sl = ld(blk.add(Q4K_SC + 64 * c));
            let sh = ld(blk.add(Q4K_SC + 64 * c + 32));
            for t in 0..T {
                let p = _mm256_add_epi32(
                    _mm256_madd_epi16(a_lo[t], sl),
                    _mm256_madd_epi16(a_hi[t], sh),
                );
                sumi[t] = _mm256_add_epi32(sumi[t], p);
            }
        }
        let d = _mm256_loadu_ps(blk as *const f32);
        let dmin = _mm256_loadu_ps(blk.add(32) as *const f32);
        let mn = blk.add(Q4K_MN);
        for t in 0..T {
            let ms = pair_dots::<4>(mn, xb[t].add(8 * sb));
            let v = _mm256_fnmadd_ps(
                dmin,
                _mm256_cvtepi32_ps(ms),
                _mm256_mul_ps(d, _mm256_cvtepi32_ps(sumi[t])),
            );
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(*xd[t].add(sb)), v, acc[t]);
        }
    }
    acc
}

/// Eight packed Q6_K rows against `T` tokens (lane `r` of result `t`: row `r` times
/// token `t`). The codes go in unsigned (0..=63), two VPMADDUBSWs per 16-bit sum;
/// the centre, 32 times the scales against the 16-value sums, comes off once per
/// super-block in i32.
#[inline(always)]
pub unsafe fn q6k_rows8<const T: usize>(pk: *const u8, nb: usize, xs: &[&QVec; T]) -> [__m256; T] {
    let xq: [*const i8; T] = std::array::from_fn(|t| xs[t].kq.as_ptr());
    let xd: [*const f32; T] = std::array::from_fn(|t| xs[t].kd.as_ptr());
    let xb: [*const i16; T] = std::array::from_fn(|t| xs[t].kbsum.as_ptr());
    let mut acc = [_mm256_setzero_ps(); T];
    for sb in 0..nb {
        let blk = pk.add(sb * Q6K_BYTES);
        let mut sumi = [_mm256_setzero_si256(); T];
        for g in 0..16 {
            let q = blk.add(Q6K_QC + 128 * g);
            let v = [ld(q), ld(q.add(32)), ld(q.add(64)), ld(q.add(96))];
            let sv = ld(blk.add(Q6K_SC + 32 * g));
            let at = sb * 256 + 16 * g;
            for t in 0..T {
                let x = xq[t].add(at);
                let a = _mm256_add_epi16(
                    _mm256_maddubs_epi16(v[0], bcast4(x)),
                    _mm256_maddubs_epi16(v[1], bcast4(x.add(4))),
                );
                let b = _mm256_add_epi16(
                    _mm256_maddubs_epi16(v[2], bcast4(x.add(8))),
                    _mm256_maddubs_epi16(v[3], bcast4(x.add(12))),
                );
                let p = _mm256_add_epi32(_mm256_madd_epi16(a, sv), _mm256_madd_epi16(b, sv));
                sumi[t] = _mm256_add_epi32(sumi[t], p);
            }
        }
        let d = _mm256_loadu_ps(blk as *const f32);
        let cp = blk.add(Q6K_CP);
        for t in 0..T {
            let c = pair_dots::<8>(cp, xb[t].add(16 * sb));
            let s = _mm256_sub_epi32(sumi[t], _mm256_slli_epi32(c, 5));
            let f = _mm256_mul_ps(d, _mm256_set1_ps(*xd[t].add(sb)));
            acc[t] = _mm256_fmadd_ps(f, _mm256_cvtepi32_ps(s), acc[t]);
        }
    }
    acc
}
