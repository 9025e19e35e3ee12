//! Building one layer's choice: the window appended to a head's picks, per-head top-k,
//! and the per-layer loop most methods are.

use rayon::prelude::*;

use super::scores;
use super::types::{Input, LayerChoice, Picked, Scorer};

/// Kept positions of one KV head: `chosen` (any order, all `< len - window`) sorted
/// ascending, followed by the window `[len - window, len)`.
pub fn with_window(mut chosen: Vec<usize>, len: usize, window: usize) -> Vec<usize> {
    chosen.sort_unstable();
    chosen.extend(len - window..len);
    chosen
}

/// Each KV head keeps its own top `budget - window` scores plus the window.
pub fn per_head_top(
    scores: Vec<Vec<f32>>,
    len: usize,
    budget: usize,
    window: usize,
) -> LayerChoice {
    let keep = scores
        .iter()
        .map(|s| with_window(scores::top_k(s, budget - window), len, window))
        .collect();
    LayerChoice { keep, scores }
}

/// Runs `f(layer, budget)` for every layer in parallel; a layer whose budget is at least
/// the prompt keeps everything. The common shape of a per-layer method.
pub fn per_layer(input: &Input, f: impl Fn(usize, usize) -> LayerChoice + Sync) -> Picked {
    let len = input.trace.len;
    let n_kv = input.trace.dims.n_kv_heads;
    let layers = (0..input.trace.dims.n_layers)
        .into_par_iter()
        .map(|layer| {
            let b = input.budgets[layer];
            if len <= b {
                LayerChoice::keep_all(n_kv, len)
            } else {
                f(layer, b)
            }
        })
        .collect();
    Picked {
        layers,
        budgets: None,
    }
}

/// The shape of a per-head method: in every evicting layer each KV head keeps its own
/// top `budget - w` positions by `scorer`, plus the window.
pub fn per_head(i: &Input, scorer: Scorer) -> Picked {
    let (len, w) = (i.trace.len, i.settings.window);
    per_layer(i, |layer, b| per_head_top(scorer(i, layer), len, b, w))
}
