//! The AVX2 kernel of prefill's packed 32-value tiles (layout and arithmetic in
//! `quant/tile32.rs`).

use std::arch::x86_64::*;

use super::{bcast4, ld};
use crate::model::quant::layout::{T32_BYTES as BYTES, T32_CODES as CODES};
use crate::model::quant::qvec::{QVec, QK};

/// Eight packed rows (`nb` blocks at `pk`) against `T` tokens: `out[t][r]` is row `r`
/// times token `t`. `SIGNED`: Q8_0's signed codes without offset; else unsigned codes
/// of at most 31 with an offset per block.
#[inline(always)]
pub unsafe fn rows8<const T: usize, const SIGNED: bool>(
    pk: *const u8,
    nb: usize,
    xs: &[&QVec; T],
    out: &mut [[f32; 8]; T],
) {
    let xq: [*const i8; T] = std::array::from_fn(|t| xs[t].q.as_ptr());
    let xd: [*const f32; T] = std::array::from_fn(|t| xs[t].s.as_ptr());
    let xsum: [*const f32; T] = std::array::from_fn(|t| xs[t].sum.as_ptr());
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); T];
    for b in 0..nb {
        let blk = pk.add(b * BYTES);
        let codes = blk.add(CODES);
        let mut sumi = [_mm256_setzero_si256(); T];
        if cfg!(kv_vnni) {
            vnni_block::<T, SIGNED>(codes, b, &xq, &mut sumi);
        } else if SIGNED {
            // |code| times the activation with the code's sign: a pair sum fits 16 bits,
            // two may not, so each is widened at once.
            for k in 0..8 {
                let w = ld(codes.add(32 * k));
                let aw = _mm256_sign_epi8(w, w);
                for t in 0..T {
                    let x = _mm256_sign_epi8(bcast4(xq[t].add(b * QK + 4 * k)), w);
                    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, x), ones);
                    sumi[t] = _mm256_add_epi32(sumi[t], p);
                }
            }
        } else {
            // Four vectors' pair sums in 16 bits (at most 31,496), then widened.
            for h in 0..2 {
                let mut s16 = [_mm256_setzero_si256(); T];
                for k in 4 * h..4 * h + 4 {
                    let w = ld(codes.add(32 * k));
                    for t in 0..T {
                        let x = bcast4(xq[t].add(b * QK + 4 * k));
                        s16[t] = _mm256_add_epi16(s16[t], _mm256_maddubs_epi16(w, x));
                    }
                }
                for t in 0..T {
                    sumi[t] = _mm256_add_epi32(sumi[t], _mm256_madd_epi16(s16[t], ones));
                }
            }
        }
        let d = _mm256_loadu_ps(blk as *const f32);
        let m = _mm256_loadu_ps(blk.add(32) as *const f32);
        for t in 0..T {
            let f = _mm256_mul_ps(d, _mm256_set1_ps(*xd[t].add(b)));
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi[t]), f, acc[t]);
            if !SIGNED {
                acc[t] = _mm256_fmadd_ps(m, _mm256_set1_ps(*xsum[t].add(b)), acc[t]);
            }
        }
    }
    for t in 0..T {
        _mm256_storeu_ps(out[t].as_mut_ptr(), acc[t]);
    }
}

/// One block's integer sums with AVX-512 VNNI: each vector of codes is one VPDPBUSD per
/// token into the i32 lanes (Q8_0's signed codes as |code| against sign-adjusted
/// activations, as above). No pair sum saturates in the 16-bit path either, so the
/// integers, and so the results, are the same bit for bit.
#[inline(always)]
unsafe fn vnni_block<const T: usize, const SIGNED: bool>(
    codes: *const u8,
    b: usize,
    xq: &[*const i8; T],
    sumi: &mut [__m256i; T],
) {
    #[cfg(kv_vnni)]
    for k in 0..8 {
        let w = ld(codes.add(32 * k));
        let aw = if SIGNED { _mm256_sign_epi8(w, w) } else { w };
        for t in 0..T {
            let mut x = bcast4(xq[t].add(b * QK + 4 * k));
            if SIGNED {
                x = _mm256_sign_epi8(x, w);
            }
            sumi[t] = _mm256_dpbusd_epi32(sumi[t], aw, x);
        }
    }
    #[cfg(not(kv_vnni))]
    let _ = (codes, b, xq, sumi);
}
