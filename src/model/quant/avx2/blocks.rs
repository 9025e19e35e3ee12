//! The 32-value formats (Q4_0, Q5_0, Q8_0 as the file stores them, Q4_1 / Q8_0 in the
//! affine store) and F16 rows against 8-bit (or f32) activations.

use std::arch::x86_64::*;

use super::{dot_i8_i8, dot_u8_i8, fifth_bits, h, hsum, nibbles_32};
use crate::model::quant::qvec::{QVec, QK};
use crate::model::quant::row::Row;
use crate::model::quant::Format;

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

/// Q8_0, Q4_0 and Q5_0 rows against the 32-value blocks of `N` tokens. Q8_0's signed
/// codes go through the sign trick; Q4_0 / Q5_0's unsigned codes through VPMADDUBSW,
/// their centre (-8 d or -16 d) times each token's block sum added after.
#[inline(always)]
pub unsafe fn dot_x0_n<const N: usize>(fmt: Format, row: &[u8], xs: &[&QVec; N]) -> [f32; N] {
    let p = row.as_ptr();
    let bytes = fmt.block_bytes();
    let nb = row.len() / bytes;
    let mut acc = [_mm256_setzero_ps(); N];
    let mut off = [0f32; N];
    for b in 0..nb {
        let blk = p.add(b * bytes);
        let d = h(blk);
        match fmt {
            Format::Q8_0 => {
                let codes = _mm256_loadu_si256(blk.add(2) as *const __m256i);
                for t in 0..N {
                    let s = dot_i8_i8(codes, xs[t].q.as_ptr().add(b * QK));
                    let f = _mm256_set1_ps(d * xs[t].s[b]);
                    acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), f, acc[t]);
                }
            }
            _ => {
                let fifth = fmt == Format::Q5_0;
                let mut codes = nibbles_32(blk.add(bytes - 16));
                if fifth {
                    codes = _mm256_or_si256(codes, fifth_bits(blk.add(2)));
                }
                let centre = if fifth { -16.0 } else { -8.0 };
                for t in 0..N {
                    let s = dot_u8_i8(codes, xs[t].q.as_ptr().add(b * QK));
                    let f = _mm256_set1_ps(d * xs[t].s[b]);
                    acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), f, acc[t]);
                    off[t] += centre * d * xs[t].sum[b];
                }
            }
        }
    }
    let mut out = [0f32; N];
    for t in 0..N {
        out[t] = hsum(acc[t]) + off[t];
    }
    out
}

/// Rows of the rearranged affine store (Q4_0 / Q4_1 / Q5_0 / Q5_1 with packed nibbles and
/// fifth bits, or Q8_0 as bytes `code + 128`, `m = -128 d`) against the 32-value blocks
/// of `N` tokens. Q8_0 is taken back to signed codes (flipping the top bit), which drops
/// its offset exactly.
#[inline(always)]
pub unsafe fn dot_affine_n<const N: usize>(row: &Row, xs: &[&QVec; N]) -> [f32; N] {
    let nb = row.d.len();
    let qp = row.q.as_ptr();
    let flip = _mm256_set1_epi8(-128i8);
    let mut acc = [_mm256_setzero_ps(); N];
    let mut off = [0f32; N];
    for b in 0..nb {
        let db = row.d[b].to_f32();
        if row.packed {
            let mut codes = nibbles_32(qp.add(b * QK / 2));
            if !row.hi.is_empty() {
                codes = _mm256_or_si256(codes, fifth_bits(row.hi.as_ptr().add(b) as *const u8));
            }
            let mb = row.offset(b);
            for t in 0..N {
                let s = dot_u8_i8(codes, xs[t].q.as_ptr().add(b * QK));
                let f = _mm256_set1_ps(db * xs[t].s[b]);
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), f, acc[t]);
                off[t] += mb * xs[t].sum[b];
            }
        } else {
            let codes =
                _mm256_xor_si256(_mm256_loadu_si256(qp.add(b * QK) as *const __m256i), flip);
            for t in 0..N {
                let s = dot_i8_i8(codes, xs[t].q.as_ptr().add(b * QK));
                let f = _mm256_set1_ps(db * xs[t].s[b]);
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), f, acc[t]);
            }
        }
    }
    let mut out = [0f32; N];
    for t in 0..N {
        out[t] = hsum(acc[t]) + off[t];
    }
    out
}
