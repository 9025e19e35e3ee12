//! Sliding-window layers (METHOD.md, "Sliding-window layers"): such a layer can only
//! ever use its last `min(L, S)` prompt entries again, so that is its full cache, it
//! takes no budget, and the allocators distribute their total over the global layers.

use super::{budget, Allocator, Selection, Settings};
use crate::keepset::KeepSet;
use crate::profile::Profile;
use crate::trace::{Dims, Trace};
use anyhow::Result;

/// Per-layer budgets with sliding layers left out of the allocation: global layers get
/// what the allocator gives when run over the global layers alone (total `B * n_global`
/// for uniform and error-aware); sliding layers get `min(L, S)`. Without sliding layers
/// this is [`budget::layer_budgets`].
pub fn layer_budgets(
    settings: &Settings,
    trace: &Trace,
    profile: Option<&Profile>,
) -> Result<Vec<usize>> {
    budgets_for(
        settings,
        &trace.dims,
        trace.len,
        &trace.windows,
        profile,
        Some(trace),
    )
}

/// [`layer_budgets`] from the facts alone: `windows[l]` is layer `l`'s sliding window
/// (`None` or absent: global), `len` the prompt length.
pub fn budgets_with_windows(
    settings: &Settings,
    dims: &Dims,
    len: usize,
    windows: &[Option<usize>],
    profile: Option<&Profile>,
) -> Result<Vec<usize>> {
    budgets_for(settings, dims, len, windows, profile, None)
}

/// [`budgets_with_windows`] with the trace when there is one (allocators such as cake's
/// read the prompt's attention).
fn budgets_for(
    settings: &Settings,
    dims: &Dims,
    len: usize,
    windows: &[Option<usize>],
    profile: Option<&Profile>,
    trace: Option<&Trace>,
) -> Result<Vec<usize>> {
    let window = |l: usize| windows.get(l).copied().flatten();
    let all = budget::layer_budgets_for(settings, dims, len, profile, trace)?;
    if (0..dims.n_layers).all(|l| window(l).is_none()) {
        return Ok(all);
    }
    let global: Vec<usize> = (0..dims.n_layers)
        .filter(|&l| window(l).is_none())
        .collect();
    let (b, w) = (settings.budget, settings.window);
    let alloc = settings.effective_allocator();
    let over_global: Vec<usize> = if alloc == Allocator::Pyramid {
        budget::pyramid(global.len(), b, w, len, settings.pyramid_beta)
    } else if alloc == Allocator::ErrorAware {
        {
            // The global layers' errors, L1-normalised again among themselves.
            let errors = profile.and_then(|p| p.layer_errors.as_deref()).map(|e| {
                let sub: Vec<f64> = global
                    .iter()
                    .map(|&l| e.get(l).copied().unwrap_or(0.0))
                    .collect();
                let sum: f64 = sub.iter().sum();
                sub.iter()
                    .map(|&x| {
                        if sum > 0.0 {
                            x / sum
                        } else {
                            1.0 / sub.len() as f64
                        }
                    })
                    .collect::<Vec<f64>>()
            });
            budget::error_aware(global.len(), b, w, errors.as_deref())
        }
    } else {
        // Per-layer values already: uniform gives B to each, a manual list names each;
        // other allocators (cake's) keep what they gave each global layer.
        global.iter().map(|&l| all[l]).collect()
    };
    let mut out: Vec<usize> = (0..dims.n_layers)
        .map(|l| window(l).map_or(0, |s| s.min(len)))
        .collect();
    for (&l, &bl) in global.iter().zip(&over_global) {
        out[l] = bl;
    }
    Ok(out)
}

/// The full cache: every prompt position of a global layer, the last `min(L, S)` of a
/// sliding one.
pub fn full_keep(trace: &Trace) -> KeepSet {
    let mut keep = KeepSet::all(&trace.dims, trace.len);
    for (l, layer) in keep.positions.iter_mut().enumerate() {
        if trace.window(l).is_some() {
            let first = trace.len - trace.full_entries(l);
            for head in layer.iter_mut() {
                head.drain(..first);
            }
        }
    }
    keep
}

/// Sets every sliding layer of `sel` to its full cache: the last `min(L, S)` prompt
/// positions of each KV head, budget `min(L, S)`, no scores.
pub fn keep_window(trace: &Trace, sel: &mut Selection) {
    let len = trace.len;
    for l in 0..trace.dims.n_layers {
        if let Some(s) = trace.window(l) {
            let first = len.saturating_sub(s);
            for head in &mut sel.keep.positions[l] {
                *head = (first..len).collect();
            }
            sel.layer_budgets[l] = len - first;
            sel.scores[l].clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::random_trace;
    use super::*;

    fn gemma_like(len: usize) -> Trace {
        let dims = Dims {
            n_layers: 6,
            n_heads: 4,
            n_kv_heads: 1,
            head_dim: 8,
        };
        let mut t = random_trace(dims, len, 3);
        t.windows = (0..6).map(|l| (l % 3 != 2).then_some(16)).collect();
        t
    }

    #[test]
    fn sliding_layers_keep_their_window_and_budgets_go_to_global_layers() {
        let t = gemma_like(40);
        for method in ["full", "snapkv", "pyramidkv", "streamingllm"] {
            let s = Settings {
                method: method.parse().expect("method"),
                budget: 12,
                window: 4,
                ..Settings::default()
            };
            let sel = super::super::select(&t, &s, None).expect("select");
            for l in 0..6 {
                let kept = &sel.keep.positions[l][0];
                if l % 3 != 2 {
                    assert_eq!(kept, &(24..40).collect::<Vec<_>>(), "{method} layer {l}");
                    assert_eq!(sel.layer_budgets[l], 16);
                } else if method == "full" {
                    assert_eq!(kept.len(), 40);
                } else {
                    assert!(kept.len() <= sel.layer_budgets[l], "{method} layer {l}");
                }
            }
            if method == "snapkv" {
                // Uniform: B on each global layer, total B * n_global.
                assert_eq!(sel.layer_budgets[2] + sel.layer_budgets[5], 24);
            }
        }
        // A prompt shorter than the window: the sliding layers keep all of it.
        let short = gemma_like(10);
        let s = Settings {
            method: super::super::Method::SnapKv,
            ..Settings::default()
        };
        let sel = super::super::select(&short, &s, None).expect("select");
        assert_eq!(sel.keep.positions[0][0], (0..10).collect::<Vec<_>>());
    }
}
