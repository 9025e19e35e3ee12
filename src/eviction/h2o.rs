//! h2o (heavy hitters), prefill-time variant: a position's score is the attention it
//! received from every prompt query row (causal) of the query heads sharing the KV head.
//! Each KV head keeps its top `B - w` plus the window; no further eviction while decoding.

use super::layer::{per_head_top, per_layer};
use super::types::{Allocator, Input, LayerChoice, Method, MethodDef, Picked};
use crate::trace::Trace;
use anyhow::Result;

/// Registry entry.
pub const DEF: MethodDef = MethodDef::new(
    "h2o",
    "heavy hitters: attention each position received from the whole prompt",
    Allocator::Uniform,
    pick,
);

/// This method's handle.
pub const METHOD: Method = Method::of(&DEF);

fn pick(i: &Input) -> Result<Picked> {
    Ok(per_layer(i, |layer, b| {
        select_layer(i.trace, layer, b, i.settings.window)
    }))
}

/// One layer that evicts (`L > budget`).
pub fn select_layer(trace: &Trace, layer: usize, budget: usize, window: usize) -> LayerChoice {
    let n_rep = trace.dims.n_rep();
    let prefix = trace.len - window;
    let scores = (0..trace.dims.n_kv_heads)
        .map(|g| {
            let mut s = vec![0f32; prefix];
            for h in g * n_rep..(g + 1) * n_rep {
                for (acc, x) in s.iter_mut().zip(trace.col_sums(layer, h)) {
                    *acc += x;
                }
            }
            s
        })
        .collect();
    per_head_top(scores, trace.len, budget, window)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::col_sum_trace;
    use super::*;

    #[test]
    fn sums_the_query_heads_of_the_group() {
        // One KV head, two query heads: sums over [0, 4) are [5, 4, 3, 0].
        let t = col_sum_trace(
            1,
            &[
                &[5.0, 0.0, 1.0, 0.0, 9.0, 9.0],
                &[0.0, 4.0, 2.0, 0.0, 9.0, 9.0],
            ],
        );
        let c = select_layer(&t, 0, 4, 2);
        assert_eq!(c.keep, vec![vec![0, 1, 4, 5]]);
        assert_eq!(c.scores, vec![vec![5.0, 4.0, 3.0, 0.0]]);
    }

    #[test]
    fn each_kv_head_ranks_its_own_group() {
        // Heads 0,1 -> KV 0; heads 2,3 -> KV 1.
        let t = col_sum_trace(
            2,
            &[
                &[1.0, 0.0, 0.0, 3.0, 0.0, 0.0],
                &[1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                &[0.0, 2.0, 0.0, 0.0, 0.0, 0.0],
                &[0.0, 0.0, 1.0, 0.0, 0.0, 0.0],
            ],
        );
        let c = select_layer(&t, 0, 4, 2);
        assert_eq!(c.keep, vec![vec![0, 3, 4, 5], vec![1, 2, 4, 5]]);
    }

    #[test]
    fn ties_and_large_window() {
        // All equal: the lowest positions win. L=8, B=6, w=4: choose 2 of [0, 4).
        let t = col_sum_trace(1, &[&[1.0; 8]]);
        let c = select_layer(&t, 0, 6, 4);
        assert_eq!(c.keep, vec![vec![0, 1, 4, 5, 6, 7]]);
    }
}
