//! Sliding-window layers (METHOD.md, "Sliding-window layers"): such a layer can only
//! ever use its last `min(L, S)` prompt entries again, so that is its full cache, it
//! takes no budget, and the allocators distribute their total over the global layers.
//! With `--evict-sliding true` the method also selects inside each sliding layer's
//! window, with budget `min(B_l, S)`.

use super::budget;
use super::types::field;
use super::types::{
    Allocator, Keeps, Knob, KnobKind, KnobValue, Request, ScoreTable, Selection, Settings,
};
use crate::profile_format::Profile;
use crate::trace::{Dims, KvStore, LayerTrace, Trace, W_MAX};
use anyhow::Result;

/// `evict_sliding`: apply the method inside sliding layers' windows too.
pub const EVICT_SLIDING: Knob = Knob::new(
    "evict_sliding",
    "evict-sliding",
    "Sliding-window layers: apply the method inside their window too, with budget \
           min(B_l, S) over their last min(L, S) entries (false: keep the window as is).",
    KnobKind::Bool,
    |_| KnobValue::Bool(false),
    field!(evict_sliding),
);

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
    if EVICT_SLIDING.flag(settings) {
        // Every layer evicts: the allocator runs over all layers as for a model without
        // sliding layers, and a sliding layer's budget is capped by what it can hold.
        return Ok(all
            .into_iter()
            .enumerate()
            .map(|(l, b)| window(l).map_or(b, |s| b.min(s.min(len))))
            .collect());
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

/// The last step of selection for sliding layers: keep each one's window as is
/// ([`keep_window`]), or, with `evict_sliding`, let the method choose inside it
/// ([`evict_in_windows`]). `select` is the selection entry point, passed in rather than
/// imported so this file stays below it.
pub fn finish(
    r: &Request,
    sel: &mut Selection,
    select: fn(&Request) -> Result<Selection>,
) -> Result<()> {
    if EVICT_SLIDING.flag(r.settings) {
        evict_in_windows(r, sel, select)
    } else {
        keep_window(r.trace, sel);
        Ok(())
    }
}

/// `--evict-sliding`: every sliding layer whose window is shorter than the prompt gets
/// the method's choice over its last `S` entries with budget `sel.layer_budgets[l]`
/// (already `min(B_l, S)`). The method runs on the trace's tail `[L - S, L)`: the only
/// entries such a layer can attend to again, so it cannot keep one it would never see.
/// Its window scores are the whole prompt's masked ones ([`ScoreTable::sliding_tail`]);
/// statistics a method computes itself from the tail (cake's) see the tail's keys
/// only. Pins inside the window apply; pins before it name entries the layer cannot use.
/// A sliding layer whose window covers the prompt was chosen over the whole prompt
/// already, and one whose window is no longer than the observation window keeps it.
pub fn evict_in_windows(
    r: &Request,
    sel: &mut Selection,
    select: fn(&Request) -> Result<Selection>,
) -> Result<()> {
    let (trace, settings, profile, table) = (r.trace, r.settings, r.profile, r.table);
    let len = trace.len;
    // Group sliding layers by their window: each group is one selection on one tail.
    let mut windows: Vec<usize> = (0..trace.dims.n_layers)
        .filter_map(|l| trace.window(l))
        .filter(|&s| s < len)
        .collect();
    windows.sort_unstable();
    windows.dedup();
    for s in windows {
        let layers: Vec<usize> = (0..trace.dims.n_layers)
            .filter(|&l| trace.window(l) == Some(s))
            .collect();
        if s <= settings.window {
            for &l in &layers {
                keep_layer_window(trace, l, s, sel);
            }
            continue;
        }
        let from = len - s;
        let sub = tail(trace, from);
        let table = ScoreTable::sliding_tail(trace, settings, from, table);
        let budgets: Vec<usize> = sel
            .layer_budgets
            .iter()
            .map(|&b| b.clamp(settings.window, s))
            .collect();
        let shift = |v: &[usize]| -> Vec<usize> {
            v.iter()
                .filter(|&&p| p >= from)
                .map(|&p| p - from)
                .collect()
        };
        // A method that sets per-head budgets from its own pool (headkv) reads no layer
        // budgets: it gets the per-layer budget `min(B, S)` and pools within the tail.
        let own_heads = settings.method.def().keeps == Keeps::OwnHeads;
        let sub_settings = Settings {
            allocator: None,
            budget: if own_heads {
                settings.budget.clamp(settings.window, s)
            } else {
                settings.budget
            },
            layer_budgets: (!own_heads).then_some(budgets),
            pin_keep: shift(&settings.pin_keep),
            pin_evict: shift(&settings.pin_evict),
            evict_sliding: None,
            ..settings.clone()
        };
        // The oracle chooses inside the window from the same tail of its future.
        let future = r.future.map(|f| f.tail(from));
        let mut sub_sel = select(
            &Request::new(&sub, &sub_settings)
                .profile(profile)
                .table(Some(&table))
                .future(future.as_ref()),
        )?;
        for &l in &layers {
            sel.keep.positions[l] = sub_sel.keep.positions[l]
                .iter()
                .map(|head| head.iter().map(|&p| p + from).collect())
                .collect();
            sel.layer_budgets[l] = sub_sel.layer_budgets[l].min(s);
            // Scores stay indexed by prompt position: the entries before the window,
            // which the layer cannot use, score 0.
            sel.scores[l] = std::mem::take(&mut sub_sel.scores[l])
                .into_iter()
                .map(|v| {
                    let mut full = vec![0.0; from];
                    full.extend(v);
                    full
                })
                .collect();
        }
    }
    Ok(())
}

/// Layer `l` keeps its last `min(L, s)` positions on every KV head.
fn keep_layer_window(trace: &Trace, l: usize, s: usize, sel: &mut Selection) {
    let len = trace.len;
    let first = len.saturating_sub(s);
    for head in &mut sel.keep.positions[l] {
        *head = (first..len).collect();
    }
    sel.layer_budgets[l] = len - first;
    sel.scores[l].clear();
}

/// The trace of the prompt's tail `[from, L)` as if it were the whole prompt: keys,
/// values and column sums of those positions, the last query rows that fit (all of
/// them once the tail is `W_MAX` long), no block maps, no sliding windows.
pub fn tail(trace: &Trace, from: usize) -> Trace {
    let d = trace.dims;
    let (hd, l_all) = (d.head_dim, trace.len);
    let len = l_all - from.min(l_all);
    let w_max = len.min(W_MAX);
    let drop_rows = trace.w_max - w_max;
    let layers = trace
        .layers
        .iter()
        .map(|lt| {
            let per_kv = |x: &KvStore| -> KvStore {
                x.gather(
                    (0..d.n_kv_heads).map(|g| (g * l_all + l_all - len) * hd..(g + 1) * l_all * hd),
                )
            };
            LayerTrace {
                k: per_kv(&lt.k),
                v: per_kv(&lt.v),
                q_last: (0..d.n_heads)
                    .flat_map(|h| {
                        lt.q_last[(h * trace.w_max + drop_rows) * hd..(h + 1) * trace.w_max * hd]
                            .iter()
                            .copied()
                    })
                    .collect(),
                col_sums: (0..d.n_heads)
                    .flat_map(|h| {
                        lt.col_sums[h * l_all + l_all - len..(h + 1) * l_all]
                            .iter()
                            .copied()
                    })
                    .collect(),
                maps: Vec::new(),
            }
        })
        .collect();
    Trace {
        dims: d,
        len,
        w_max,
        ids: trace.ids[l_all - len..].to_vec(),
        layers,
        last_logits: trace.last_logits.clone(),
        windows: Vec::new(),
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
            let sel = super::super::select(&super::super::Request::new(&t, &s)).expect("select");
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
            method: crate::eviction::snapkv::METHOD,
            ..Settings::default()
        };
        let sel = super::super::select(&super::super::Request::new(&short, &s)).expect("select");
        assert_eq!(sel.keep.positions[0][0], (0..10).collect::<Vec<_>>());
    }

    fn evicting(method: &str, budget: usize, window: usize) -> Settings {
        let mut s = Settings {
            method: method.parse().expect("method"),
            budget,
            window,
            ..Settings::default()
        };
        s.evict_sliding = Some(true);
        s
    }

    #[test]
    fn evict_sliding_selects_inside_the_window_with_a_capped_budget() {
        let t = gemma_like(40);
        for method in ["snapkv", "streamingllm", "h2o", "random", "pyramidkv"] {
            let s = evicting(method, 12, 4);
            let sel = super::super::select(&super::super::Request::new(&t, &s)).expect("select");
            for l in [0, 1, 3, 4] {
                // Uniform methods give B; pyramid's budgets differ by layer.
                let b = sel.layer_budgets[l];
                assert!(
                    b == 12 || (method == "pyramidkv" && b <= 16),
                    "{method} {l}: {b}"
                );
                let kept = &sel.keep.positions[l][0];
                assert_eq!(kept.len(), b, "{method} layer {l}: {kept:?}");
                // Only entries the layer can attend to again, the observation window
                // always among them.
                assert!(
                    kept.iter().all(|&p| (24..40).contains(&p)),
                    "{method} {kept:?}"
                );
                assert!((36..40).all(|p| kept.contains(&p)), "{method} {kept:?}");
                assert!(kept.windows(2).all(|w| w[0] < w[1]));
            }
        }
        // StreamingLLM's sinks are the first entries the window holds, not position 0.
        let sel = super::super::select(&super::super::Request::new(
            &t,
            &evicting("streamingllm", 12, 4),
        ))
        .expect("select");
        assert_eq!(sel.keep.positions[0][0][..4], [24, 25, 26, 27]);
        // A budget above the window: the layer keeps all of it.
        let sel = super::super::select(&super::super::Request::new(&t, &evicting("snapkv", 30, 4)))
            .expect("select");
        assert_eq!(sel.layer_budgets[0], 16);
        assert_eq!(sel.keep.positions[0][0], (24..40).collect::<Vec<_>>());
        // Off (the default): the window is kept as is.
        let off = Settings {
            method: crate::eviction::snapkv::METHOD,
            budget: 12,
            window: 4,
            ..Settings::default()
        };
        let sel = super::super::select(&super::super::Request::new(&t, &off)).expect("select");
        assert_eq!(sel.keep.positions[0][0], (24..40).collect::<Vec<_>>());
    }

    /// headkv pools per-head budgets itself and reads no layer budgets: inside a sliding
    /// window it gets `min(B, S)` per layer, and keeps only entries the layer can see.
    /// (It used to fail validation there: `eval --methods headkv --evict-sliding true`.)
    #[test]
    fn evict_sliding_works_for_methods_with_their_own_head_budgets() {
        let t = gemma_like(40);
        let profile = super::super::testutil::random_profile(t.dims, 5);
        for method in ["headkv", "compresskv"] {
            let s = evicting(method, 12, 4);
            let sel =
                super::super::select(&super::super::Request::new(&t, &s).profile(Some(&profile)))
                    .unwrap_or_else(|e| panic!("{method}: {e:#}"));
            for l in [0, 1, 3, 4] {
                for kept in &sel.keep.positions[l] {
                    // headkv's pool may give one head its whole window; compresskv keeps B.
                    let most = if method == "headkv" { 16 } else { 12 };
                    assert!(kept.len() <= most, "{method} layer {l}: {kept:?}");
                    assert!(
                        kept.iter().all(|&p| (24..40).contains(&p)),
                        "{method} {kept:?}"
                    );
                    assert!((36..40).all(|p| kept.contains(&p)), "{method} {kept:?}");
                }
            }
        }
    }

    /// snapkv in a sliding layer keeps the window plus the top scores of the whole
    /// prompt's masked window attention (pooled), restricted to the layer's window:
    /// computed here from `window_rows` on the full trace, independently of the tail.
    #[test]
    fn evict_sliding_ranks_by_the_masked_scores_of_the_whole_prompt() {
        let t = gemma_like(40);
        let s = evicting("snapkv", 10, 4);
        let sel = super::super::select(&super::super::Request::new(&t, &s)).expect("select");
        let mut mean = [0f32; 36];
        for h in 0..4 {
            let p = super::super::scores::head_scores(&t, 0, h, &s);
            for (m, x) in mean.iter_mut().zip(&p) {
                *m += x / 4.0;
            }
        }
        // Entries before the window can never rank (the layer cannot hold them).
        let mut cand: Vec<(f32, usize)> = (24..36).map(|p| (mean[p], p)).collect();
        cand.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut want: Vec<usize> = cand[..6].iter().map(|c| c.1).collect();
        want.sort_unstable();
        want.extend(36..40);
        assert_eq!(sel.keep.positions[0][0], want);
        // The reported scores stay indexed by prompt position.
        assert_eq!(sel.scores[0][0].len(), 36);
        assert!(sel.scores[0][0][..24].iter().all(|&x| x == 0.0));
    }

    /// A sliding layer's window rows see only (p - S, p]: zero before, a distribution
    /// over the rest. A global layer's rows see every earlier key.
    #[test]
    fn window_rows_are_masked_in_sliding_layers() {
        let t = gemma_like(40);
        for (layer, lo_of) in [(0usize, 16usize), (2, usize::MAX)] {
            super::super::scores::window_rows(&t, layer, 1, 8, |i, row| {
                let p = 32 + i;
                assert_eq!(row.len(), p + 1);
                let lo = if lo_of == usize::MAX {
                    0
                } else {
                    (p + 1).saturating_sub(lo_of)
                };
                assert!(row[..lo].iter().all(|&x| x == 0.0), "layer {layer} row {i}");
                assert!(row[lo..].iter().all(|&x| x > 0.0), "layer {layer} row {i}");
                let sum: f32 = row.iter().sum();
                assert!((sum - 1.0).abs() < 1e-5);
            });
        }
    }

    #[test]
    fn evict_sliding_budgets_cover_every_layer() {
        let t = gemma_like(40);
        let on = evicting("snapkv", 24, 4);
        let b = layer_budgets(&on, &t, None).expect("budgets");
        assert_eq!(b, vec![16, 16, 24, 16, 16, 24]);
        let off = Settings {
            evict_sliding: None,
            ..on
        };
        let b = layer_budgets(&off, &t, None).expect("budgets");
        assert_eq!(b, vec![16, 16, 24, 16, 16, 24]);
        let pyr = evicting("pyramidkv", 24, 4);
        let b = layer_budgets(&pyr, &t, None).expect("budgets");
        // Pyramid over all six layers, each sliding one capped at its window.
        let all = budget::layer_budgets_for(&pyr, &t.dims, 40, None, Some(&t)).expect("all");
        for l in 0..6 {
            let cap = if l % 3 != 2 { 16 } else { usize::MAX };
            assert_eq!(b[l], all[l].min(cap), "layer {l}");
        }
    }

    #[test]
    fn tail_is_the_trace_of_the_last_positions() {
        let t = gemma_like(40);
        let tl = tail(&t, 24);
        assert_eq!((tl.len, tl.w_max), (16, 16));
        assert_eq!(tl.key(3, 0, 5), t.key(3, 0, 29));
        assert_eq!(tl.value(3, 0, 15), t.value(3, 0, 39));
        assert_eq!(tl.query(1, 2, 15), t.query(1, 2, t.w_max - 1));
        assert_eq!(tl.query(1, 2, 0), t.query(1, 2, t.w_max - 16));
        assert_eq!(tl.col_sums(2, 3), &t.col_sums(2, 3)[24..]);
    }
}
