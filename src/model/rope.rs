//! Rotary position embedding. The angles of a position are computed when it is used
//! (a few hundred sin/cos per token and layer kind), so nothing is sized by the
//! model's declared context length.

use super::config::Config;
use super::config::RopeStyle;

/// The frequencies of one RoPE variant (a base, a position scale, optional per-pair
/// frequency factors) and how it pairs dimensions.
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    style: RopeStyle,
    /// Per rotated pair `i`: `scale * base^(-2i / dims) / factor_i`.
    inv_freq: Vec<f64>,
}

/// The cos and sin of every rotated pair at one position.
#[derive(Debug, Clone, Default)]
pub struct Angles {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
}

impl Rope {
    /// `dims` rotated dimensions (even), `factors` (Llama 3's `rope_freqs`) divide the
    /// frequencies pair by pair.
    pub fn new(
        style: RopeStyle,
        dims: usize,
        base: f32,
        scale: f32,
        factors: Option<&[f32]>,
    ) -> Self {
        let inv_freq = (0..dims / 2)
            .map(|i| {
                let f = (base as f64).powf(-2.0 * i as f64 / dims as f64) * scale as f64;
                match factors.and_then(|fs| fs.get(i)) {
                    Some(&d) if d != 0.0 => f / d as f64,
                    _ => f,
                }
            })
            .collect();
        Rope { style, inv_freq }
    }

    /// Angles of position `pos` into `out` (reused between calls).
    pub fn angles(&self, pos: usize, out: &mut Angles) {
        out.cos.clear();
        out.sin.clear();
        for &f in &self.inv_freq {
            let a = pos as f64 * f;
            out.cos.push(a.cos() as f32);
            out.sin.push(a.sin() as f32);
        }
    }

    /// Rotates one head vector in place by the angles of its position.
    #[inline]
    pub fn apply(&self, x: &mut [f32], a: &Angles) {
        let half = self.inv_freq.len();
        match self.style {
            RopeStyle::Normal => {
                for i in 0..half {
                    let (u, v) = (x[2 * i], x[2 * i + 1]);
                    x[2 * i] = u * a.cos[i] - v * a.sin[i];
                    x[2 * i + 1] = u * a.sin[i] + v * a.cos[i];
                }
            }
            RopeStyle::Neox => {
                for i in 0..half {
                    let (u, v) = (x[i], x[i + half]);
                    x[i] = u * a.cos[i] - v * a.sin[i];
                    x[i + half] = u * a.sin[i] + v * a.cos[i];
                }
            }
        }
    }
}

/// The RoPE of every layer: the distinct variants, and which one each layer uses.
#[derive(Debug, Clone, PartialEq)]
pub struct Ropes {
    pub variants: Vec<Rope>,
    /// `[layer]` -> index into `variants`.
    pub of_layer: Vec<usize>,
}

impl Ropes {
    pub fn new(cfg: &Config, factors: Option<&[f32]>) -> Self {
        let mut variants: Vec<Rope> = Vec::new();
        let mut of_layer = Vec::with_capacity(cfg.n_layers);
        for l in &cfg.layers {
            // Llama 3's frequency factors belong to the model's (global) RoPE.
            let r = Rope::new(
                cfg.opts.rope_style,
                cfg.opts.rope_dims,
                l.rope_base,
                l.rope_scale,
                factors,
            );
            let i = match variants.iter().position(|v| *v == r) {
                Some(i) => i,
                None => {
                    variants.push(r);
                    variants.len() - 1
                }
            };
            of_layer.push(i);
        }
        Ropes { variants, of_layer }
    }

    /// The angles of `pos` for every variant.
    pub fn angles(&self, pos: usize, out: &mut Vec<Angles>) {
        out.resize_with(self.variants.len(), Angles::default);
        for (r, a) in self.variants.iter().zip(out.iter_mut()) {
            r.angles(pos, a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_rotates_adjacent_pairs() {
        let r = Rope::new(RopeStyle::Normal, 4, 10000.0, 1.0, None);
        let mut a = Angles::default();
        r.angles(3, &mut a);
        let mut x = vec![1.0, 0.0, 0.0, 1.0];
        r.apply(&mut x, &a);
        assert!((x[0] - 3f32.cos()).abs() < 1e-6 && (x[1] - 3f32.sin()).abs() < 1e-6);
        let th = 3.0 * 10000f64.powf(-0.5);
        assert!((x[2] + th.sin() as f32).abs() < 1e-6 && (x[3] - th.cos() as f32).abs() < 1e-6);
    }

    #[test]
    fn neox_rotates_halves_and_scaling_divides_angles() {
        let r = Rope::new(RopeStyle::Neox, 4, 10000.0, 0.5, Some(&[1.0, 2.0]));
        let mut a = Angles::default();
        r.angles(4, &mut a);
        // pair 0: angle 4 * 0.5 = 2; pair 1: 4 * 0.5 * 0.01 / 2 = 0.01.
        let mut x = vec![1.0, 1.0, 0.0, 0.0];
        r.apply(&mut x, &a);
        assert!((x[0] - 2f32.cos()).abs() < 1e-6 && (x[2] - 2f32.sin()).abs() < 1e-6);
        assert!((x[1] - 0.01f32.cos()).abs() < 1e-6 && (x[3] - 0.01f32.sin()).abs() < 1e-6);
    }

    #[test]
    fn huge_declared_context_allocates_nothing() {
        // Angles are per position; a context of 2^32 - 1 costs nothing up front.
        let r = Rope::new(RopeStyle::Normal, 64, 500000.0, 1.0, None);
        let mut a = Angles::default();
        r.angles(u32::MAX as usize - 1, &mut a);
        assert_eq!(a.cos.len(), 32);
        assert!(a.cos.iter().chain(&a.sin).all(|v| v.is_finite()));
    }
}
