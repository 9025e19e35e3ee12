//! Portable code for every format: the reference the SIMD kernels are tested against, and
//! the kernels of CPUs (or formats) without SIMD ones.

use half::{bf16, f16};

use super::qvec::{QVec, QK};
use super::row::Row;
use super::{Format, QK_K};

/// One block of a block format, described uniformly: element `i` is
/// `scale[i / 16] * code[i] + offset[i / 32]`. Formats with one scale per 32 elements
/// repeat it in both halves.
pub struct Decoded {
    pub n: usize,
    pub code: [i32; QK_K],
    pub scale: [f32; QK_K / 16],
    pub offset: [f32; QK_K / 32],
}

pub(crate) fn h(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Sub-block scales and mins of a Q4_K / Q5_K super-block: 8 of each, 6 bits, packed in
/// 12 bytes (the first four of each in the low 6 bits of bytes 0..8, the last four split
/// into a nibble of bytes 8..12 and the top 2 bits of bytes 0..8).
pub fn k_scales(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut m) = ([0u8; 8], [0u8; 8]);
    for j in 0..4 {
        sc[j] = s[j] & 63;
        m[j] = s[j + 4] & 63;
    }
    for j in 4..8 {
        sc[j] = (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
        m[j] = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
    (sc, m)
}

/// Decodes one block (`b.len() == fmt.block_bytes()`) of a block format.
pub fn decode(fmt: Format, b: &[u8]) -> Decoded {
    let mut o = Decoded {
        n: fmt.block(),
        code: [0; QK_K],
        scale: [0.0; QK_K / 16],
        offset: [0.0; QK_K / 32],
    };
    // The 32-element formats: nibbles, low ones are elements 0..16, high ones 16..32.
    let nibbles = |o: &mut Decoded, qs: &[u8]| {
        for (j, &q) in qs.iter().enumerate().take(16) {
            o.code[j] = (q & 0x0f) as i32;
            o.code[j + 16] = (q >> 4) as i32;
        }
    };
    // The fifth bit of element j is bit j of a little-endian u32.
    let fifth = |o: &mut Decoded, qh: &[u8]| {
        let bits = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
        for j in 0..32 {
            o.code[j] |= (((bits >> j) & 1) << 4) as i32;
        }
    };
    match fmt {
        Format::Q4_0 => {
            let d = h(b, 0);
            nibbles(&mut o, &b[2..18]);
            o.scale[..2].fill(d);
            o.offset[0] = -8.0 * d;
        }
        Format::Q4_1 => {
            nibbles(&mut o, &b[4..20]);
            o.scale[..2].fill(h(b, 0));
            o.offset[0] = h(b, 2);
        }
        Format::Q5_0 => {
            let d = h(b, 0);
            nibbles(&mut o, &b[6..22]);
            fifth(&mut o, &b[2..6]);
            o.scale[..2].fill(d);
            o.offset[0] = -16.0 * d;
        }
        Format::Q5_1 => {
            nibbles(&mut o, &b[8..24]);
            fifth(&mut o, &b[4..8]);
            o.scale[..2].fill(h(b, 0));
            o.offset[0] = h(b, 2);
        }
        Format::Q8_0 => {
            for j in 0..QK {
                o.code[j] = b[2 + j] as i8 as i32;
            }
            o.scale[..2].fill(h(b, 0));
        }
        Format::Q4K | Format::Q5K => {
            let (d, dmin) = (h(b, 0), h(b, 2));
            let (sc, m) = k_scales(&b[4..16]);
            let (qh, qs) = if fmt == Format::Q5K {
                (Some(&b[16..48]), &b[48..176])
            } else {
                (None, &b[16..144])
            };
            // Four chunks of 64 elements: the low nibbles of 32 bytes, then their high
            // nibbles; Q5_K's fifth bits are bits 2c and 2c+1 of the same 32 bytes.
            for c in 0..4 {
                for l in 0..32 {
                    let q = qs[32 * c + l];
                    let (mut lo, mut hi) = ((q & 0x0f) as i32, (q >> 4) as i32);
                    if let Some(qh) = qh {
                        lo |= (((qh[l] >> (2 * c)) & 1) << 4) as i32;
                        hi |= (((qh[l] >> (2 * c + 1)) & 1) << 4) as i32;
                    }
                    o.code[64 * c + l] = lo;
                    o.code[64 * c + 32 + l] = hi;
                }
            }
            for j in 0..8 {
                o.scale[2 * j] = d * sc[j] as f32;
                o.scale[2 * j + 1] = d * sc[j] as f32;
                o.offset[j] = -dmin * m[j] as f32;
            }
        }
        Format::Q6K => {
            let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
            let d = h(b, 208);
            // Two halves of 128 elements; in each, 32 positions l carry four elements
            // (l, l+32, l+64, l+96): low nibbles of ql[l], ql[l+32], high nibbles of the
            // same, and 2 bits each from qh[l]. Codes are 6 bits, centred at 32.
            for half in 0..2 {
                let (ql, qh) = (&ql[64 * half..], &qh[32 * half..]);
                for l in 0..32 {
                    let base = 128 * half + l;
                    let q = [
                        (ql[l] & 0x0f) | ((qh[l] & 3) << 4),
                        (ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4),
                        (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4),
                        (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4),
                    ];
                    for (k, &v) in q.iter().enumerate() {
                        o.code[base + 32 * k] = v as i32 - 32;
                    }
                }
            }
            for (s, &v) in o.scale.iter_mut().zip(sc) {
                *s = d * (v as i8) as f32;
            }
        }
        Format::F32 | Format::F16 | Format::BF16 => unreachable!("not a block format"),
    }
    o
}

/// Values of one stored row.
pub fn dequant_row(fmt: Format, row: &[u8], out: &mut [f32]) {
    match fmt {
        Format::F32 => {
            for (o, c) in out.iter_mut().zip(row.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        Format::F16 => {
            for (o, c) in out.iter_mut().zip(row.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        Format::BF16 => {
            for (o, c) in out.iter_mut().zip(row.chunks_exact(2)) {
                *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        _ => {
            let n = fmt.block();
            for (blk, o) in row
                .chunks_exact(fmt.block_bytes())
                .zip(out.chunks_exact_mut(n))
            {
                let dec = decode(fmt, blk);
                for (i, v) in o.iter_mut().enumerate() {
                    *v = dec.scale[i / 16] * dec.code[i] as f32 + dec.offset[i / 32];
                }
            }
        }
    }
}

/// `row . x` for a block format over 8-bit activations: per 32 elements,
/// `s_x * (scale_lo * sum_lo(code * q_x) + scale_hi * sum_hi(...)) + offset * sum(x)`.
pub fn dot_q8(fmt: Format, row: &[u8], x: &QVec) -> f32 {
    let per = fmt.block() / QK;
    let mut acc = 0f32;
    for (bi, blk) in row.chunks_exact(fmt.block_bytes()).enumerate() {
        let dec = decode(fmt, blk);
        for s in 0..per {
            let xb = bi * per + s;
            let xq = &x.q[xb * QK..(xb + 1) * QK];
            let code = &dec.code[s * QK..(s + 1) * QK];
            let lo: i32 = (0..16).map(|j| code[j] * xq[j] as i32).sum();
            let hi: i32 = (16..32).map(|j| code[j] * xq[j] as i32).sum();
            acc += x.s[xb] * (dec.scale[2 * s] * lo as f32 + dec.scale[2 * s + 1] * hi as f32)
                + dec.offset[s] * x.sum[xb];
        }
    }
    acc
}

/// `row . x` for a float format.
pub fn dot_f32(fmt: Format, row: &[u8], x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let bytes = fmt.block_bytes();
    let val = |c: &[u8]| match fmt {
        Format::F32 => f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
        Format::F16 => f16::from_le_bytes([c[0], c[1]]).to_f32(),
        _ => bf16::from_le_bytes([c[0], c[1]]).to_f32(),
    };
    for (i, (c, &v)) in row.chunks_exact(bytes).zip(x).enumerate() {
        acc[i % 8] += val(c) * v;
    }
    acc.iter().sum()
}

/// `row . x` for a K-quant (Q4_K, Q5_K, Q6_K) over Q8_K activations, as llama.cpp sums
/// it: per super-block the integer sum of `sub-block scale x code x quant` (exact in i32),
/// times `d_w * d_x`, minus `dmin_w * d_x` times the mins against the 16-value quant sums.
pub fn dot_q8k(fmt: Format, row: &[u8], x: &QVec) -> f32 {
    let mut acc = 0f32;
    for (bi, b) in row.chunks_exact(fmt.block_bytes()).enumerate() {
        let xq = &x.kq[bi * QK_K..(bi + 1) * QK_K];
        let bsum = &x.kbsum[bi * 16..(bi + 1) * 16];
        let dx = x.kd[bi];
        match fmt {
            Format::Q4K | Format::Q5K => {
                let (d, dmin) = (h(b, 0), h(b, 2));
                let (sc, m) = k_scales(&b[4..16]);
                let dec = decode(fmt, b);
                let mut sumi = 0i32;
                let mut summ = 0i32;
                for j in 0..8 {
                    let s: i32 = (0..32)
                        .map(|l| dec.code[32 * j + l] * xq[32 * j + l] as i32)
                        .sum();
                    sumi += sc[j] as i32 * s;
                    summ += m[j] as i32 * (bsum[2 * j] as i32 + bsum[2 * j + 1] as i32);
                }
                acc += d * dx * sumi as f32 - dmin * dx * summ as f32;
            }
            Format::Q6K => {
                let d = h(b, 208);
                let dec = decode(fmt, b);
                let mut sumi = 0i32;
                for g in 0..16 {
                    let s: i32 = (0..16)
                        .map(|l| dec.code[16 * g + l] * xq[16 * g + l] as i32)
                        .sum();
                    sumi += (b[192 + g] as i8) as i32 * s;
                }
                acc += d * dx * sumi as f32;
            }
            _ => unreachable!("not a K-quant"),
        }
    }
    acc
}

/// One row of the affine store (`QMat::row`: codes, scales, offsets, fifth bits)
/// against 8-bit activations: the reference of the SIMD row kernels, and the kernel of
/// CPUs without them.
pub fn affine_dot(row: &Row, x: &QVec) -> f32 {
    let mut acc = 0f32;
    for b in 0..row.blocks() {
        let mut s = 0i32;
        for j in 0..QK {
            s += row.code(b, j) as i32 * x.q[b * QK + j] as i32;
        }
        acc += row.d[b].to_f32() * x.s[b] * s as f32 + row.offset(b) * x.sum[b];
    }
    acc
}

/// Checks that one row's codes, scales, offsets and fifth bits and the activations
/// hold the same number of blocks (the SIMD kernels read through raw pointers);
/// returns the bytes of codes per block.
#[cfg_attr(not(kv_avx2), allow(dead_code))]
pub(crate) fn check_row(row: &Row, x: &QVec) -> usize {
    let nb = row.d.len();
    let bytes_per_block = if row.packed { QK / 2 } else { QK };
    assert!(
        (row.m.len() == nb || row.m.is_empty())
            && (row.hi.len() == nb || row.hi.is_empty())
            && (row.hi.is_empty() || row.packed)
            && row.q.len() >= nb * bytes_per_block
            && x.q.len() >= nb * QK
            && x.s.len() >= nb
            && x.sum.len() >= nb
    );
    bytes_per_block
}
