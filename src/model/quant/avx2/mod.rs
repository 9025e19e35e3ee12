//! Every AVX2 (+FMA, F16C) kernel, one home for the instruction set: dot products of
//! the file's blocks with 8-bit activations (`blocks`: the 32-value formats and F16;
//! `kquant`: Q4_K, Q5_K, Q6_K), the rearranged affine store's row kernels (`affine`),
//! and prefill's eight-row packed kernels (`packed`). Unsigned codes times signed
//! activations go through VPMADDUBSW (its 16-bit pair sums cannot saturate for codes
//! below 64 and activations in -127..=127), signed codes through the same instruction on
//! |code| and sign-adjusted activations. Each function's caller (`quant::dot_q8` and
//! friends) has checked the lengths. Compiled where the build has `kv_avx2` (build.rs).

use half::f16;
use std::arch::x86_64::*;

// Used outside tests only in builds without AVX-512 VNNI.
#[cfg_attr(kv_vnni, allow(dead_code))]
mod affine;
mod blocks;
mod kquant;
pub(crate) mod packed;
pub(crate) mod tile32;

#[cfg_attr(kv_vnni, allow(unused_imports))]
pub use affine::{row_dot, row_dot_x0, rows_dot2, rows_dot_x0};
pub use blocks::{dot_affine_n, dot_f16, dot_q4_0, dot_q5_0, dot_q8_0, dot_x0_n};
pub use kquant::{dot_k45_n, dot_q6k_n};

/// The f16 at `p` (two readable bytes of a block).
#[inline(always)]
unsafe fn h(p: *const u8) -> f32 {
    f16::from_bits(u16::from_le_bytes([*p, *p.add(1)])).to_f32()
}

/// Eight i32 sums of 32 unsigned codes times 32 signed activations.
#[inline(always)]
unsafe fn dot_u8_i8(codes: __m256i, xq: *const i8) -> __m256i {
    let x = _mm256_loadu_si256(xq as *const __m256i);
    _mm256_madd_epi16(_mm256_maddubs_epi16(codes, x), _mm256_set1_epi16(1))
}

/// Eight i32 sums of 32 signed codes times 32 signed activations.
#[inline(always)]
unsafe fn dot_i8_i8(codes: __m256i, xq: *const i8) -> __m256i {
    let x = _mm256_loadu_si256(xq as *const __m256i);
    let p = _mm256_maddubs_epi16(_mm256_sign_epi8(codes, codes), _mm256_sign_epi8(x, codes));
    _mm256_madd_epi16(p, _mm256_set1_epi16(1))
}

/// 16 packed bytes of nibbles as 32 codes: low nibbles first, then high nibbles.
#[inline(always)]
unsafe fn nibbles_32(p: *const u8) -> __m256i {
    let v = _mm_loadu_si128(p as *const __m128i);
    let mask = _mm_set1_epi8(0x0f);
    let lo = _mm_and_si128(v, mask);
    let hi = _mm_and_si128(_mm_srli_epi16(v, 4), mask);
    _mm256_set_m128i(hi, lo)
}

/// The 32 bits of a little-endian u32 as 32 bytes, each 0x10 where its bit is set.
#[inline(always)]
unsafe fn fifth_bits(p: *const u8) -> __m256i {
    let bits = u32::from_le_bytes([*p, *p.add(1), *p.add(2), *p.add(3)]);
    // Byte i takes source byte i / 8, then tests bit i % 8.
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(bits as i32),
        _mm256_setr_epi64x(
            0,
            0x0101_0101_0101_0101,
            0x0202_0202_0202_0202,
            0x0303_0303_0303_0303,
        ),
    );
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// Four bytes at `p` in every 32-bit lane (the packed tiles broadcast activations so).
#[inline(always)]
unsafe fn bcast4(p: *const i8) -> __m256i {
    _mm256_set1_epi32((p as *const i32).read_unaligned())
}

/// 32 bytes at `p`.
#[inline(always)]
unsafe fn ld(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

/// Sum of the eight lanes of an AVX register (the one copy).
#[inline(always)]
pub unsafe fn hsum(acc: __m256) -> f32 {
    let s4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    let s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
    _mm_cvtss_f32(s1)
}
