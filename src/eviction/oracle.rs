//! oracle (METHOD.md, "oracle"): the upper bound of a one-shot selection at the
//! allocator's budgets. Per KV head it keeps the prompt entries that received the most
//! full-cache attention during THIS prompt's full generation (teacher-forced steps,
//! summed over the steps and the query heads of the group), plus the window. It looks at
//! the future, so it is a reference line, not a deployable method; the attention comes
//! from the caller ([`FutureAttention`], which the session computes once per prompt by
//! replaying the full generation with capture).

use anyhow::{bail, Result};

use super::layer::{per_head_top, per_layer};
use super::types::{Allocator, FutureAttention, Input, LayerChoice, Method, MethodDef, Picked};
use crate::trace::Dims;

/// Registry entry.
pub const DEF: MethodDef = MethodDef::new(
    "oracle",
    "upper bound: keeps what the full cache attended to while generating (uses the future)",
    Allocator::Uniform,
    pick,
)
.with_future();

/// This method's handle.
pub const METHOD: Method = Method::of(&DEF);

impl FutureAttention {
    /// Sums `attn` (`[step][layer][query head][prompt position]`, positions `< len`)
    /// per KV head.
    pub fn from_attn(attn: &[Vec<Vec<Vec<f32>>>], dims: &Dims, len: usize) -> Self {
        let n_rep = dims.n_rep().max(1);
        let mut sums = vec![vec![vec![0f32; len]; dims.n_kv_heads]; dims.n_layers];
        for step in attn {
            for (layer, heads) in sums.iter_mut().zip(step) {
                for (h, row) in heads.iter().enumerate() {
                    let Some(acc) = layer.get_mut(h / n_rep) else {
                        continue;
                    };
                    for (a, &x) in acc.iter_mut().zip(row) {
                        *a += x;
                    }
                }
            }
        }
        FutureAttention {
            len,
            steps: attn.len(),
            sums,
        }
    }

    /// The attention of the prompt's tail `[from, len)` as if it were the whole prompt
    /// (what a sliding layer evicting inside its window chooses from, so the oracle
    /// follows the same sliding-layer rules as the method it is compared with).
    pub fn tail(&self, from: usize) -> Self {
        let from = from.min(self.len);
        FutureAttention {
            len: self.len - from,
            steps: self.steps,
            sums: self
                .sums
                .iter()
                .map(|l| l.iter().map(|h| h[from.min(h.len())..].to_vec()).collect())
                .collect(),
        }
    }

    /// Whether it was measured on a prompt of this shape.
    pub fn check(&self, dims: &Dims, len: usize) -> Result<()> {
        let shape_ok = self.len == len
            && self.sums.len() == dims.n_layers
            && self
                .sums
                .iter()
                .all(|l| l.len() == dims.n_kv_heads && l.iter().all(|h| h.len() == len));
        if !shape_ok {
            bail!("the oracle's future attention was measured on another prompt or model");
        }
        Ok(())
    }
}

fn pick(i: &Input) -> Result<Picked> {
    let Some(future) = i.future else {
        bail!("oracle needs the full-cache generation's attention (it is computed by a session: kvscope run, explain, eval or the inspector)");
    };
    let len = i.trace.len;
    future.check(&i.trace.dims, len)?;
    let w = i.settings.window.min(len);
    Ok(per_layer(i, |layer, b| choose(future, layer, b, w)))
}

/// One layer's choice at budget `budget` (tokens per KV head) and window `window`: per KV
/// head the top `budget - window` summed attentions of positions `[0, L - window)`, plus
/// the window; everything when the prompt fits the budget.
pub fn choose(future: &FutureAttention, layer: usize, budget: usize, window: usize) -> LayerChoice {
    let len = future.len;
    let window = window.min(len);
    let heads = &future.sums[layer];
    if budget >= len {
        return LayerChoice::keep_all(heads.len(), len);
    }
    let scores = heads.iter().map(|s| s[..len - window].to_vec()).collect();
    per_head_top(scores, len, budget.max(window), window)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::ratio_trace;
    use super::super::{select, Method, Request, Settings};
    use super::*;

    #[test]
    fn keeps_the_top_of_summed_attention_per_kv_head() {
        // One layer, two KV heads of two query heads each, 6 positions, window 2.
        let t = ratio_trace(&[&[1.0; 6], &[1.0; 6]], &[1.0; 4]);
        let step = |a: [f32; 6], b: [f32; 6], c: [f32; 6], d: [f32; 6]| {
            vec![vec![a.to_vec(), b.to_vec(), c.to_vec(), d.to_vec()]]
        };
        let attn = vec![
            step(
                [0.1, 0.0, 0.5, 0.0, 0.2, 0.2],
                [0.0, 0.3, 0.1, 0.0, 0.3, 0.3],
                [0.9, 0.0, 0.0, 0.0, 0.0, 0.1],
                [0.0, 0.0, 0.0, 0.8, 0.1, 0.1],
            ),
            step(
                [0.0, 0.0, 0.0, 0.6, 0.2, 0.2],
                [0.4, 0.0, 0.0, 0.0, 0.3, 0.3],
                [0.0, 0.7, 0.0, 0.0, 0.2, 0.1],
                [0.0, 0.0, 0.0, 0.0, 0.5, 0.5],
            ),
        ];
        let f = FutureAttention::from_attn(&attn, &t.dims, 6);
        // KV head 0 candidates [0, 4): sums [0.5, 0.3, 0.6, 0.6]; head 1: [0.9, 0.7, 0, 0.8].
        let s = Settings {
            method: Method::named("oracle").expect("registered"),
            budget: 4,
            window: 2,
            ..Settings::default()
        };
        let sel = select(&Request::new(&t, &s).future(Some(&f))).expect("select");
        assert_eq!(
            sel.keep.positions,
            vec![vec![vec![2, 3, 4, 5], vec![0, 3, 4, 5]]]
        );
        // Without the future it says what it needs instead of guessing.
        let e = select(&Request::new(&t, &s)).unwrap_err().to_string();
        assert!(e.contains("oracle needs"), "{e}");
        // A future of another prompt is refused.
        let other = FutureAttention::from_attn(&attn, &t.dims, 5);
        assert!(select(&Request::new(&t, &s).future(Some(&other))).is_err());
    }
}
