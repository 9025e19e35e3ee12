//! streamingllm (attention sinks + recent window): keep positions `[0, B - w)` and the
//! last `w`. Needs no scores.

use super::layer::{per_layer, with_window};
use super::types::{Allocator, Input, LayerChoice, Method, MethodDef, Picked};
use crate::trace::Trace;
use anyhow::Result;

/// Registry entry.
pub const DEF: MethodDef = MethodDef::new(
    "streamingllm",
    "attention sinks: the first B - w tokens plus the window",
    Allocator::Uniform,
    pick,
)
.sharing_positions()
.without_scores();

/// This method's handle.
pub const METHOD: Method = Method::of(&DEF);

fn pick(i: &Input) -> Result<Picked> {
    Ok(per_layer(i, |_, b| {
        select_layer(i.trace, b, i.settings.window)
    }))
}

/// One layer that evicts (`L > budget`).
pub fn select_layer(trace: &Trace, budget: usize, window: usize) -> LayerChoice {
    let keep = with_window((0..budget - window).collect(), trace.len, window);
    LayerChoice {
        keep: vec![keep; trace.dims.n_kv_heads],
        scores: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::ratio_trace;
    use super::super::{select, Request, Settings};
    use super::*;

    fn trace(len: usize) -> Trace {
        let ones = vec![1.0; len];
        ratio_trace(&[&ones, &ones], &[1.0, 1.0])
    }

    #[test]
    fn sinks_plus_window() {
        let c = select_layer(&trace(10), 5, 2);
        assert_eq!(c.keep, vec![vec![0, 1, 2, 8, 9]; 2]);
        assert!(c.scores.is_empty());
    }

    #[test]
    fn window_larger_than_what_is_evicted() {
        // L=10, B=8, w=6: L - B = 2 < w. Keep [0, 2) and [4, 10).
        let c = select_layer(&trace(10), 8, 6);
        assert_eq!(c.keep[0], vec![0, 1, 4, 5, 6, 7, 8, 9]);
        // B == w: only the window.
        let c = select_layer(&trace(10), 3, 3);
        assert_eq!(c.keep[1], vec![7, 8, 9]);
    }

    #[test]
    fn through_select_budget_equal_to_len_keeps_all() {
        let s = Settings {
            method: crate::eviction::streamingllm::METHOD,
            budget: 10,
            window: 2,
            ..Settings::default()
        };
        let sel = select(&Request::new(&trace(10), &s)).unwrap();
        assert_eq!(sel.keep.positions[0][0], (0..10).collect::<Vec<_>>());
        let s = Settings { budget: 9, ..s };
        let sel = select(&Request::new(&trace(10), &s)).unwrap();
        assert_eq!(sel.keep.positions[0][0], vec![0, 1, 2, 3, 4, 5, 6, 8, 9]);
    }
}
