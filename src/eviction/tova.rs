//! tova (Oren et al. 2024), one-shot after prefill, METHOD-MORE.md §3: the score of a
//! prefix position is the attention the LAST prompt query puts on it, averaged over all
//! query heads of the layer (not per KV group, as kvpress `TOVAPress` and official TOVA);
//! one index set per layer, kept by every KV head. No pooling.
//!
//! Differences: official TOVA then evicts one token per decoding step (kvscope makes only
//! the first cut) and ranks the last token too; kvscope keeps the last `w` (`w = 1` is
//! kvpress).

use super::layer::{per_layer, with_window};
use super::scores::{top_k, window_attention};
use super::types::{Allocator, Input, LayerChoice, Method, MethodDef, Picked};
use crate::trace::Trace;
use anyhow::Result;

/// Registry entry.
pub const DEF: MethodDef = MethodDef::new(
    "tova",
    "last query's attention, mean over all heads; one index set per layer (TOVA)",
    Allocator::Uniform,
    pick,
)
.sharing_positions();

/// This method's handle.
pub const METHOD: Method = Method::of(&DEF);

fn pick(i: &Input) -> Result<Picked> {
    Ok(per_layer(i, |layer, b| {
        select_layer(i.trace, layer, b, i.settings.window)
    }))
}

/// One layer that evicts (`L > budget`).
pub fn select_layer(trace: &Trace, layer: usize, budget: usize, window: usize) -> LayerChoice {
    let t = layer_scores(trace, layer, window);
    choose(t, trace.len, budget, window, trace.dims.n_kv_heads)
}

/// `t` on the prefix `[0, L - w)`: the last row's softmax (over all `L` keys) averaged
/// over every query head.
pub fn layer_scores(trace: &Trace, layer: usize, window: usize) -> Vec<f32> {
    let prefix = trace.len - window;
    let n = trace.dims.n_heads;
    let mut t = vec![0f32; prefix];
    for h in 0..n {
        // A window of one row is the last query, which sees every key.
        let a = window_attention(trace, layer, h, 1);
        for (x, y) in t.iter_mut().zip(&a) {
            *x += y;
        }
    }
    t.iter_mut().for_each(|x| *x /= n as f32);
    t
}

/// Top `budget - window` of `t` plus the window, the same for every KV head.
fn choose(t: Vec<f32>, len: usize, budget: usize, window: usize, n_kv: usize) -> LayerChoice {
    let keep = with_window(top_k(&t, budget - window), len, window);
    LayerChoice {
        keep: vec![keep; n_kv],
        scores: vec![t; n_kv],
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::{select, Method, Request, Settings};
    use super::*;

    #[test]
    fn worked_example() {
        // Last-row attention of head 0 and head 1 on [0, 5); the window (w = 1) is the
        // last position. The layer score is the mean over the two heads.
        let a0 = [0.5f32, 0.1, 0.1, 0.1, 0.2];
        let a1 = [0.1f32, 0.1, 0.4, 0.2, 0.2];
        let t: Vec<f32> = (0..4).map(|j| (a0[j] + a1[j]) / 2.0).collect();
        let want = [0.3f32, 0.1, 0.25, 0.15];
        assert!(t.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6));
        let c = choose(t.clone(), 5, 3, 1, 2);
        assert_eq!(c.keep, vec![vec![0, 2, 4]; 2]);
        assert_eq!(choose(t, 5, 2, 1, 2).keep, vec![vec![0, 4]; 2]);
    }

    /// Through the trace: with equal keys in each half, the last row of a query that
    /// matches one key only puts its mass there; heads of different KV groups are averaged.
    #[test]
    fn one_set_per_layer_from_all_heads() {
        // ratio_trace: key weights per KV head; q picks which heads read them.
        let t = ratio_trace(
            &[
                &[4.0, 1.0, 2.0, 1.0, 1.0, 1.0],
                &[1.0, 1.0, 1.0, 5.0, 1.0, 1.0],
            ],
            &[1.0, 1.0],
        );
        let s = layer_scores(&t, 0, 1);
        // Each head's last row is its key-weight ratios normalised over all 6 keys.
        let want: Vec<f32> = (0..5)
            .map(|j| {
                ([4.0f32, 1.0, 2.0, 1.0, 1.0][j] / 10.0 + [1.0f32, 1.0, 1.0, 5.0, 1.0][j] / 10.0)
                    / 2.0
            })
            .collect();
        assert!(
            s.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-6),
            "{s:?} vs {want:?}"
        );
        let sel = select(&Request::new(
            &t,
            &Settings {
                method: Method::named("tova").unwrap(),
                budget: 3,
                window: 1,
                ..Settings::default()
            },
        ))
        .unwrap();
        assert_eq!(sel.keep.positions[0], vec![vec![0, 3, 5]; 2]);
    }

    #[test]
    fn random_traces_keep_one_set() {
        let dims = dims(2, 4, 2, 4);
        let t = random_trace(dims, 30, 11);
        let c = select_layer(&t, 1, 10, 3);
        assert!(c.keep.iter().all(|k| k == &c.keep[0]));
        assert_eq!(c.keep[0].len(), 10);
    }
}
