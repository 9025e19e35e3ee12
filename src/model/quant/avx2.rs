//! AVX2 (+FMA, F16C) dot products of stored rows with 8-bit activations, reading the
//! file's blocks as they are. Unsigned codes times signed activations go through
//! VPMADDUBSW (its 16-bit pair sums cannot saturate for codes below 64 and activations in
//! -127..=127), signed codes through the same instruction on |code| and sign-adjusted
//! activations. Each function's caller (`super::dot_q8`) has checked the lengths.

use half::f16;
use std::arch::x86_64::*;

use super::portable::k_scales;
use crate::model::kernels::{QVec, QK};

/// The f16 at `p` (two readable bytes of a block).
#[inline(always)]
unsafe fn h(p: *const u8) -> f32 {
    f16::from_bits(u16::from_le_bytes([*p, *p.add(1)])).to_f32()
}

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    let s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
    _mm_cvtss_f32(s1)
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

pub unsafe fn dot_q8_0(row: &[u8], x: &QVec) -> f32 {
    let (p, xq) = (row.as_ptr(), x.q.as_ptr());
    let nb = row.len() / 34;
    let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut b = 0;
    while b < nb {
        let blk = p.add(b * 34);
        let codes = _mm256_loadu_si256(blk.add(2) as *const __m256i);
        let s = _mm256_cvtepi32_ps(dot_i8_i8(codes, xq.add(b * QK)));
        let sc = _mm256_set1_ps(h(blk) * x.s[b]);
        // Alternate accumulators so consecutive blocks do not wait on each other's FMA.
        if b % 2 == 0 {
            a0 = _mm256_fmadd_ps(s, sc, a0);
        } else {
            a1 = _mm256_fmadd_ps(s, sc, a1);
        }
        b += 1;
    }
    hsum(_mm256_add_ps(a0, a1))
}

/// Q4_0 and Q5_0: unsigned codes (4 or 5 bits) with the centre moved into an offset
/// (`-8 d` or `-16 d`) times the activations' block sum.
#[inline(always)]
unsafe fn dot_x_0(row: &[u8], x: &QVec, bytes: usize, fifth: bool) -> f32 {
    let (p, xq) = (row.as_ptr(), x.q.as_ptr());
    let nb = row.len() / bytes;
    let centre = if fifth { -16.0 } else { -8.0 };
    let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut off = 0f32;
    for b in 0..nb {
        let blk = p.add(b * bytes);
        let d = h(blk);
        let mut codes = nibbles_32(blk.add(bytes - 16));
        if fifth {
            codes = _mm256_or_si256(codes, fifth_bits(blk.add(2)));
        }
        let s = _mm256_cvtepi32_ps(dot_u8_i8(codes, xq.add(b * QK)));
        let sc = _mm256_set1_ps(d * x.s[b]);
        if b % 2 == 0 {
            a0 = _mm256_fmadd_ps(s, sc, a0);
        } else {
            a1 = _mm256_fmadd_ps(s, sc, a1);
        }
        off += centre * d * x.sum[b];
    }
    hsum(_mm256_add_ps(a0, a1)) + off
}

pub unsafe fn dot_q4_0(row: &[u8], x: &QVec) -> f32 {
    dot_x_0(row, x, 18, false)
}

pub unsafe fn dot_q5_0(row: &[u8], x: &QVec) -> f32 {
    dot_x_0(row, x, 22, true)
}

/// Q4_K and Q5_K: per super-block of 256, 8 sub-blocks of 32 with 6-bit scales and mins;
/// the mins times the activations' block sums are summed separately.
#[inline(always)]
unsafe fn dot_k45(row: &[u8], x: &QVec, five: bool) -> f32 {
    let bytes = if five { 176 } else { 144 };
    let (p, xq) = (row.as_ptr(), x.q.as_ptr());
    let nb = row.len() / bytes;
    let mask = _mm256_set1_epi8(0x0f);
    let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut off = 0f32;
    for sb in 0..nb {
        let blk = p.add(sb * bytes);
        let (d, dmin) = (h(blk), h(blk.add(2)));
        let (sc, m) = k_scales(std::slice::from_raw_parts(blk.add(4), 12));
        let qs = blk.add(if five { 48 } else { 16 });
        let qh = if five {
            _mm256_loadu_si256(blk.add(16) as *const __m256i)
        } else {
            _mm256_setzero_si256()
        };
        let xb0 = sb * 8;
        for c in 0..4 {
            let q = _mm256_loadu_si256(qs.add(32 * c) as *const __m256i);
            let mut lo = _mm256_and_si256(q, mask);
            let mut hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), mask);
            if five {
                // Bits 2c and 2c+1 of each qh byte, moved to bit 4.
                let bl = _mm256_set1_epi8((1u8 << (2 * c)) as i8);
                let bh = _mm256_set1_epi8((2u8 << (2 * c)) as i8);
                let sixteen = _mm256_set1_epi8(0x10);
                let hl = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, bl), bl), sixteen);
                let hh = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, bh), bh), sixteen);
                lo = _mm256_or_si256(lo, hl);
                hi = _mm256_or_si256(hi, hh);
            }
            let (j0, j1) = (2 * c, 2 * c + 1);
            let s0 = _mm256_cvtepi32_ps(dot_u8_i8(lo, xq.add((xb0 + j0) * QK)));
            let s1 = _mm256_cvtepi32_ps(dot_u8_i8(hi, xq.add((xb0 + j1) * QK)));
            a0 = _mm256_fmadd_ps(s0, _mm256_set1_ps(d * sc[j0] as f32 * x.s[xb0 + j0]), a0);
            a1 = _mm256_fmadd_ps(s1, _mm256_set1_ps(d * sc[j1] as f32 * x.s[xb0 + j1]), a1);
        }
        let mut msum = 0f32;
        for (j, &mj) in m.iter().enumerate() {
            msum += mj as f32 * x.sum[xb0 + j];
        }
        off -= dmin * msum;
    }
    hsum(_mm256_add_ps(a0, a1)) + off
}

pub unsafe fn dot_q4k(row: &[u8], x: &QVec) -> f32 {
    dot_k45(row, x, false)
}

pub unsafe fn dot_q5k(row: &[u8], x: &QVec) -> f32 {
    dot_k45(row, x, true)
}

/// Q6_K: 6-bit codes centred at 32, one i8 scale per 16 elements. Codes are made signed
/// and each 32-element product's 16-bit pair sums are multiplied by the two scales of its
/// halves with VPMADDWD (exact in i32), then by `d * s_x` in f32.
pub unsafe fn dot_q6k(row: &[u8], x: &QVec) -> f32 {
    let (p, xq) = (row.as_ptr(), x.q.as_ptr());
    let nb = row.len() / 210;
    let m4 = _mm256_set1_epi8(0x0f);
    let m2 = _mm256_set1_epi8(0x30);
    let centre = _mm256_set1_epi8(32);
    let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for sb in 0..nb {
        let blk = p.add(sb * 210);
        let d = h(blk.add(208));
        let scales = blk.add(192) as *const i8;
        for half in 0..2 {
            let ql0 = _mm256_loadu_si256(blk.add(64 * half) as *const __m256i);
            let ql1 = _mm256_loadu_si256(blk.add(64 * half + 32) as *const __m256i);
            let qh = _mm256_loadu_si256(blk.add(128 + 32 * half) as *const __m256i);
            // The four quarters of this half: (low nibbles | 2 high bits) << as stored.
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
            for (k, &qk) in q.iter().enumerate() {
                let xb = sb * 8 + half * 4 + k;
                let codes = _mm256_sub_epi8(qk, centre);
                let xv = _mm256_loadu_si256(xq.add(xb * QK) as *const __m256i);
                let pairs = _mm256_maddubs_epi16(
                    _mm256_sign_epi8(codes, codes),
                    _mm256_sign_epi8(xv, codes),
                );
                let si = 8 * half + 2 * k;
                let sv = _mm256_set_m128i(
                    _mm_set1_epi16(*scales.add(si + 1) as i16),
                    _mm_set1_epi16(*scales.add(si) as i16),
                );
                let s = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, sv));
                let f = _mm256_set1_ps(d * x.s[xb]);
                if k % 2 == 0 {
                    a0 = _mm256_fmadd_ps(s, f, a0);
                } else {
                    a1 = _mm256_fmadd_ps(s, f, a1);
                }
            }
        }
    }
    hsum(_mm256_add_ps(a0, a1))
}

/// An F16 row times f32 activations, eight at a time through F16C.
pub unsafe fn dot_f16(row: &[u8], x: &[f32]) -> f32 {
    let n = x.len();
    let (p, xp) = (row.as_ptr(), x.as_ptr());
    let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut i = 0;
    while i + 16 <= n {
        let w0 = _mm256_cvtph_ps(_mm_loadu_si128(p.add(2 * i) as *const __m128i));
        let w1 = _mm256_cvtph_ps(_mm_loadu_si128(p.add(2 * i + 16) as *const __m128i));
        a0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xp.add(i)), a0);
        a1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xp.add(i + 8)), a1);
        i += 16;
    }
    let mut s = hsum(_mm256_add_ps(a0, a1));
    while i < n {
        s += h(p.add(2 * i)) * x[i];
        i += 1;
    }
    s
}
