//! Activations quantised to 8 bits, in the block forms llama.cpp pairs with the weight
//! formats: blocks of 32 (Q8_0's scale, plus the block sum that Q8_1 adds for the formats
//! with an offset) and Q8_K's blocks of 256 for the K-quants.

use half::f16;

/// Elements per quantisation block (the GGUF Q4_x / Q5_x / Q8_0 block size).
pub const QK: usize = 32;

/// An activation vector quantised to signed 8 bits per block (symmetric), with the
/// per-block scale and the scaled block sum the affine weight offset needs.
///
/// The same vector may also be held as llama.cpp's Q8_K activations (`kq`, `kd`,
/// `kbsum`): one f32 scale per 256 values and the integer sum of every 16 quants, which
/// the K-quant weights (Q4_K, Q5_K, Q6_K) multiply against. Integer sums over a whole
/// 256-value super-block need one float step per super-block instead of one per 32, and
/// the rounding is llama.cpp's, so decode follows its arithmetic on K-quant files.
#[derive(Debug, Clone, Default)]
pub struct QVec {
    pub q: Vec<i8>,
    pub s: Vec<f32>,
    pub sum: Vec<f32>,
    /// Q8_K quants (empty until `quantize_k_into`).
    pub kq: Vec<i8>,
    /// Q8_K scale per 256 values (negative when the largest magnitude is negative, as
    /// llama.cpp's `-127 / max` makes it).
    pub kd: Vec<f32>,
    /// Integer sum of every 16 Q8_K quants.
    pub kbsum: Vec<i16>,
}

/// Elements per Q8_K block.
pub const QK8K: usize = 256;

impl QVec {
    /// Quantises `x` (a multiple of 256 long) as llama.cpp's `quantize_row_q8_K_ref`:
    /// per block the value of largest magnitude maps to -127, every value to the nearest
    /// integer (ties to even) of `x * -127 / max`, and the scale is `max / -127`.
    pub fn quantize_k_into(&mut self, x: &[f32]) {
        assert!(x.len().is_multiple_of(QK8K));
        let nb = x.len() / QK8K;
        self.kq.resize(x.len(), 0);
        self.kd.resize(nb, 0.0);
        self.kbsum.resize(nb * QK8K / 16, 0);
        for (b, (blk, qb)) in x
            .chunks_exact(QK8K)
            .zip(self.kq.chunks_exact_mut(QK8K))
            .enumerate()
        {
            let (mut amax, mut max) = (0f32, 0f32);
            for &v in blk {
                if v.abs() > amax {
                    amax = v.abs();
                    max = v;
                }
            }
            let sums = &mut self.kbsum[b * 16..(b + 1) * 16];
            if amax == 0.0 {
                self.kd[b] = 0.0;
                qb.fill(0);
                sums.fill(0);
                continue;
            }
            let iscale = -127.0 / max;
            for (o, &v) in qb.iter_mut().zip(blk) {
                *o = ((iscale * v).round_ties_even() as i32).min(127) as i8;
            }
            for (s, g) in sums.iter_mut().zip(qb.chunks_exact(16)) {
                *s = g.iter().map(|&v| v as i16).sum();
            }
            self.kd[b] = 1.0 / iscale;
        }
    }

    pub fn quantize_into(&mut self, x: &[f32]) {
        let nb = x.len() / QK;
        self.q.resize(x.len(), 0);
        self.s.resize(nb, 0.0);
        self.sum.resize(nb, 0.0);
        for (b, (blk, qb)) in x
            .chunks_exact(QK)
            .zip(self.q.chunks_exact_mut(QK))
            .enumerate()
        {
            let amax = blk.iter().fold(0f32, |a, &v| a.max(v.abs()));
            // As llama.cpp's Q8_0 activations: the scale stored as f16, the quants from
            // the f32 scale. The block sum stays exact (scale x integer sum), as the
            // integer dot products of Q4_0 / Q5_0 and the K-quants' block sums are.
            let d = amax / 127.0;
            let s = f16::from_f32(d).to_f32();
            let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
            let mut isum = 0i32;
            for (o, &v) in qb.iter_mut().zip(blk) {
                let qi = (v * inv).round_ties_even() as i32;
                *o = qi as i8;
                isum += qi;
            }
            self.s[b] = s;
            self.sum[b] = s * isum as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Q8_K as llama.cpp's `quantize_row_q8_K_ref`, on exact values: the value of
    /// largest magnitude (-127, negative) maps to -127, so the factor is -127 / -127 = 1
    /// and the scale 1; halves round to even (0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -3.5 -> -4);
    /// the 16-value sums add the quants; an all-zero block gets scale 0 and zero quants.
    /// A block whose largest magnitude is positive gets a negative scale.
    #[test]
    fn q8k_quantisation_follows_llamacpp() {
        let mut x = vec![0f32; 768];
        x[..4].copy_from_slice(&[-127.0, 0.5, 1.5, 2.5]);
        x[17] = -3.5;
        x[512] = 12.7;
        x[513] = 1.0;
        let mut q = QVec::default();
        q.quantize_k_into(&x);
        assert_eq!(q.kd[0], 1.0);
        assert_eq!(&q.kq[..4], &[-127, 0, 2, 2]);
        assert_eq!(q.kq[17], -4);
        assert_eq!(q.kbsum[0], -127 + 2 + 2);
        assert_eq!(q.kbsum[1], -4);
        assert_eq!(q.kd[1], 0.0);
        assert!(q.kq[256..512].iter().all(|&v| v == 0));
        // 12.7 -> -127 with scale 12.7 / -127 = -0.1; 1.0 -> -10.
        assert!((q.kd[2] + 0.1).abs() < 1e-7, "scale {}", q.kd[2]);
        assert_eq!(&q.kq[512..514], &[-127, -10]);
    }
}
