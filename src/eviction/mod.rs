//! Eviction methods (METHOD.md, METHOD-MORE.md): pure functions from a [`Trace`] and
//! [`Settings`] to a [`KeepSet`]. No method runs the model; everything they need was
//! recorded at prefill.
//!
//! Layout, from the bottom: `types` holds the shapes every file shares (handles,
//! definitions, [`Settings`], a method's input and output), `knob` what a knob does,
//! `scores` the observation-window score and top-k of the SnapKV family, `layer` the
//! per-layer helpers, `budget` the layer-budget allocators; then one module per method,
//! each defining its [`MethodDef`]; `registry` lists them (and the allocators and
//! knobs), `settings` gives the defaults and validation against the registry, and
//! [`select`] here ties them together. A file imports only files below it.

pub mod adakv;
pub mod budget;
pub mod cake;
pub mod compresskv;
pub mod full;
pub mod h2o;
pub mod headkv;
pub mod knob;
pub mod knorm;
pub mod layer;
pub mod oracle;
pub mod pins;
pub mod pyramidkv;
pub mod random;
pub mod registry;
pub mod scores;
mod settings;
pub mod sliding;
pub mod snapkv;
pub mod streamingllm;
/// Synthetic traces and profiles for tests and benchmarks: only with the `testing`
/// feature (see `crate::testing`).
#[cfg(any(test, feature = "testing"))]
pub mod testutil;
pub mod tova;
pub mod types;

use crate::keepset::KeepSet;
use crate::trace::Trace;
use anyhow::{bail, Result};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

pub use registry::{ALLOCATORS, METHODS};
pub use types::{
    Allocator, AllocatorDef, Knob, KnobValue, LayerChoice, Method, MethodDef, Pooling, Request,
    ScoreTable, Selection, Settings,
};

/// A name that matches none of an enum's variants. Its message lists the valid names so
/// a command-line user sees at once what to type instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownName {
    pub what: &'static str,
    pub got: String,
    pub valid: Vec<&'static str>,
}

impl fmt::Display for UnknownName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown {} '{}'; valid: {}",
            self.what,
            self.got,
            self.valid.join(", ")
        )
    }
}

impl std::error::Error for UnknownName {}

/// Implements `Display` and a case-insensitive `FromStr` from `name()` and `ALL`.
macro_rules! named_enum {
    ($ty:ty, $what:literal) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }

        impl FromStr for $ty {
            type Err = UnknownName;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let wanted = s.trim();
                <$ty>::ALL
                    .into_iter()
                    .find(|v| v.name().eq_ignore_ascii_case(wanted))
                    .ok_or_else(|| UnknownName {
                        what: $what,
                        got: s.to_string(),
                        valid: <$ty>::ALL.iter().map(|v| v.name()).collect(),
                    })
            }
        }
    };
}

named_enum!(Method, "method");
named_enum!(Pooling, "pooling");
named_enum!(Allocator, "allocator");

/// Registry handles serialise as their names, and read back only as registered names.
macro_rules! by_name {
    ($ty:ty) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

by_name!(Method);
by_name!(Allocator);

/// Chooses the kept positions of every layer and KV head: the one selection entry point.
///
/// `r.profile` is required by the methods whose registry entry says so (compresskv's SRH
/// ranking, headkv's retrieval scores) and used by the error-aware allocator (layer
/// errors); other methods ignore it. It is checked against the trace's dimensions here;
/// checking that it was measured on the same model file (sha256) is the caller's job, at
/// load time. `r.table` (precomputed window scores) is read where it holds them for these
/// settings (same result, without recomputing the window attention); `r.future` is what
/// the full cache attended to during this prompt's generation (required by the methods
/// whose registry entry says `needs_future`, ignored by the others).
pub fn select(r: &Request) -> Result<Selection> {
    let Request {
        trace,
        settings,
        profile,
        table,
        future,
    } = *r;
    let dims = &trace.dims;
    settings.validate(dims)?;
    check_trace(trace)?;
    if let Some(p) = profile {
        p.validate(dims, None)?;
    }
    let len = trace.len;
    pins::validate(&settings.pin_keep, &settings.pin_evict, len)?;
    let def = settings.method.def();
    if let (Some(how), None) = (def.needs_profile, profile) {
        bail!("{how}");
    }
    // Sliding-window layers take no budget; the allocator's total goes to global layers.
    let layer_budgets = sliding::layer_budgets(settings, trace, profile)?;
    let picked = (def.select)(&types::Input {
        trace,
        settings,
        profile,
        budgets: &layer_budgets,
        table,
        future,
    })?;
    let (positions, scores): (Vec<_>, Vec<_>) = picked
        .layers
        .into_iter()
        .map(|c| (c.keep, c.scores))
        .unzip();
    let budgets = picked.budgets.unwrap_or(layer_budgets);
    let (keep, layer_budgets) = pin(KeepSet { positions }, budgets, &scores, settings, len);
    let mut sel = Selection {
        keep,
        layer_budgets,
        scores,
    };
    sliding::finish(r, &mut sel, select)?;
    Ok(sel)
}

/// Applies the settings' pins to every layer's choice (a no-op without pins). A layer
/// whose pins outnumber its choices keeps more than its budget; its entry in the
/// returned budgets is then the tokens it keeps per KV head (rounded up), so the report
/// shows the growth.
fn pin(
    keep: KeepSet,
    mut budgets: Vec<usize>,
    scores: &[Vec<Vec<f32>>],
    settings: &Settings,
    len: usize,
) -> (KeepSet, Vec<usize>) {
    if settings.pin_keep.is_empty() && settings.pin_evict.is_empty() {
        return (keep, budgets);
    }
    let positions: Vec<Vec<Vec<usize>>> = keep
        .positions
        .into_iter()
        .zip(scores)
        .map(|(heads, sc)| {
            let choice = LayerChoice {
                keep: heads,
                scores: sc.clone(),
            };
            pins::apply(
                choice,
                len,
                settings.window,
                &settings.pin_keep,
                &settings.pin_evict,
            )
            .keep
        })
        .collect();
    for (b, heads) in budgets.iter_mut().zip(&positions) {
        let per_head = heads
            .iter()
            .map(Vec::len)
            .sum::<usize>()
            .div_ceil(heads.len().max(1));
        if *b < len && per_head > *b {
            *b = per_head;
        }
    }
    (KeepSet { positions }, budgets)
}

/// The trace must agree with its own dims, or indexing it would panic.
fn check_trace(trace: &Trace) -> Result<()> {
    let d = &trace.dims;
    if trace.layers.len() != d.n_layers {
        bail!(
            "trace has {} layers but its dims say {}",
            trace.layers.len(),
            d.n_layers
        );
    }
    let rows = trace.len.min(crate::trace::W_MAX);
    if trace.w_max != rows {
        bail!(
            "trace keeps {} query rows; a {}-token prompt needs {rows}",
            trace.w_max,
            trace.len
        );
    }
    for (l, lt) in trace.layers.iter().enumerate() {
        let kv = d.n_kv_heads * trace.len * d.head_dim;
        let q = d.n_heads * trace.w_max * d.head_dim;
        let cs = d.n_heads * trace.len;
        if lt.k.len() != kv || lt.v.len() != kv || lt.q_last.len() != q || lt.col_sums.len() != cs {
            bail!("trace layer {l} has arrays of the wrong size for its dims");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;
    use crate::profile_format::Profile;
    use crate::trace::Dims;
    use proptest::prelude::*;

    /// Selecting from a precomputed score table gives exactly what computing the scores
    /// gives, for every method and budget; a table for other settings is not used.
    #[test]
    fn score_table_selection_equals_computed_selection() {
        let dims = dims(3, 4, 2, 8);
        let trace = random_trace(dims, 60, 5);
        let profile = random_profile(dims, 6);
        let future = random_future(dims, 60, 7);
        for pooling in [Pooling::Avg, Pooling::Max] {
            let base = Settings {
                window: 4,
                kernel: 3,
                pooling,
                first_k: 2,
                ..Settings::default()
            };
            let table = ScoreTable::compute(&trace, &base);
            let other = ScoreTable::compute(
                &trace,
                &Settings {
                    kernel: 5,
                    ..base.clone()
                },
            );
            assert!(table.fits(60, &base) && !other.fits(60, &base));
            for method in Method::ALL {
                for budget in [4, 10, 30, 60] {
                    let s = Settings {
                        method,
                        budget,
                        ..base.clone()
                    };
                    let want = select(
                        &Request::new(&trace, &s)
                            .profile(Some(&profile))
                            .future(Some(&future)),
                    )
                    .unwrap();
                    for t in [&table, &other] {
                        let got = select(
                            &Request::new(&trace, &s)
                                .profile(Some(&profile))
                                .table(Some(t))
                                .future(Some(&future)),
                        )
                        .unwrap();
                        assert_eq!(got.keep, want.keep, "{method} B={budget}");
                        assert_eq!(got.scores, want.scores, "{method} B={budget}");
                    }
                }
            }
        }
    }

    #[test]
    fn names_round_trip_and_unknown_lists_valid() {
        for m in Method::ALL {
            assert_eq!(m.to_string().parse::<Method>().unwrap(), m);
            let json = serde_json::to_string(&m).unwrap();
            assert_eq!(json, format!("\"{}\"", m.name()));
        }
        assert_eq!(
            "SnapKV".parse::<Method>().unwrap(),
            crate::eviction::snapkv::METHOD
        );
        let err = "snap".parse::<Method>().unwrap_err().to_string();
        assert!(err.contains("unknown method 'snap'"), "{err}");
        assert!(
            err.contains("full, streamingllm, h2o, snapkv, pyramidkv, adakv, compresskv"),
            "{err}"
        );
        for a in Allocator::ALL {
            assert_eq!(a.to_string().parse::<Allocator>().unwrap(), a);
            assert_eq!(serde_json::to_string(&a).unwrap(), format!("\"{a}\""));
        }
        assert_eq!(Allocator::ErrorAware.to_string(), "error-aware");
        assert_eq!("max".parse::<Pooling>().unwrap(), Pooling::Max);
        assert!("mean"
            .parse::<Pooling>()
            .unwrap_err()
            .to_string()
            .contains("avg, max"));
    }

    #[test]
    fn default_allocators() {
        assert_eq!(
            crate::eviction::pyramidkv::METHOD.default_allocator(),
            Allocator::Pyramid
        );
        assert_eq!(
            crate::eviction::compresskv::METHOD.default_allocator(),
            Allocator::ErrorAware
        );
        for m in [
            crate::eviction::full::METHOD,
            crate::eviction::streamingllm::METHOD,
            crate::eviction::h2o::METHOD,
            crate::eviction::snapkv::METHOD,
            crate::eviction::adakv::METHOD,
        ] {
            assert_eq!(m.default_allocator(), Allocator::Uniform);
        }
    }

    #[test]
    fn compresskv_without_profile_says_how_to_get_one() {
        let t = ratio_trace(&[&[4.0, 1.0, 2.0, 1.0, 1.0, 1.0]], &[1.0]);
        let s = Settings {
            method: crate::eviction::compresskv::METHOD,
            budget: 4,
            window: 2,
            first_k: 1,
            ..Settings::default()
        };
        let err = select(&Request::new(&t, &s)).unwrap_err().to_string();
        assert!(err.contains("--profile FILE"), "{err}");
        assert!(err.contains("kvscope profile srh"), "{err}");
        assert!(err.contains("kvscope profile layers"), "{err}");
    }

    #[test]
    fn full_keeps_everything_and_reports_len() {
        let t = ratio_trace(&[&[4.0, 1.0, 2.0, 1.0, 1.0, 1.0]], &[1.0]);
        let s = Settings {
            method: crate::eviction::full::METHOD,
            budget: 2,
            window: 2,
            ..Settings::default()
        };
        let sel = select(&Request::new(&t, &s)).unwrap();
        assert_eq!(sel.keep, KeepSet::all(&t.dims, 6));
        assert_eq!(sel.layer_budgets, vec![6]);
        assert_eq!(sel.scores, vec![Vec::<Vec<f32>>::new()]);
    }

    #[test]
    fn nothing_evicted_when_prompt_fits_the_budget() {
        let t = ratio_trace(&[&[4.0, 1.0, 2.0, 1.0, 1.0, 1.0]], &[1.0]);
        for budget in [6, 7] {
            for method in [
                crate::eviction::streamingllm::METHOD,
                crate::eviction::h2o::METHOD,
                crate::eviction::snapkv::METHOD,
                crate::eviction::adakv::METHOD,
            ] {
                let s = Settings {
                    method,
                    budget,
                    window: 2,
                    ..Settings::default()
                };
                let sel = select(&Request::new(&t, &s)).unwrap();
                assert_eq!(sel.keep, KeepSet::all(&t.dims, 6), "{method} B={budget}");
                assert_eq!(sel.layer_budgets, vec![budget]);
                assert!(sel.scores[0].is_empty());
            }
        }
    }

    #[test]
    fn rejects_inconsistent_trace() {
        let mut t = ratio_trace(&[&[4.0, 1.0, 2.0, 1.0, 1.0, 1.0]], &[1.0]);
        t.layers[0].col_sums.pop();
        let s = Settings {
            method: crate::eviction::h2o::METHOD,
            budget: 4,
            window: 2,
            ..Settings::default()
        };
        assert!(select(&Request::new(&t, &s)).is_err());
    }

    /// Small random problem: dims, prompt length, data seed and settings.
    fn problem() -> impl Strategy<Value = (Trace, Settings, Profile)> {
        (
            (1usize..4, 1usize..4, 1usize..4, 1usize..5), // layers, kv heads, n_rep, head_dim
            1usize..48,                                   // len
            any::<u64>(),
            0..Method::ALL.len(), // method
            1usize..10,           // window
            0usize..40,           // budget above the window
            1usize..4,            // kernel = 2 * this - 1
            any::<bool>(),
            0.0f32..=1.0,
            0usize..4, // allocator choice
        )
            .prop_map(
                |((nl, nkv, rep, hd), len, seed, mi, window, extra, kh, max, floor, alloc)| {
                    let dims = Dims {
                        n_layers: nl,
                        n_heads: nkv * rep,
                        n_kv_heads: nkv,
                        head_dim: hd,
                    };
                    let trace = random_trace(dims, len, seed);
                    let profile = random_profile(dims, seed ^ 0x9e37_79b9);
                    let method = Method::ALL[mi];
                    let budget = window + extra;
                    let settings = Settings {
                        method,
                        budget,
                        window,
                        kernel: 2 * kh - 1,
                        pooling: if max { Pooling::Max } else { Pooling::Avg },
                        first_k: 1 + (seed as usize % dims.n_heads),
                        adakv_floor: floor,
                        pyramid_beta: 1 + (seed as usize % 30),
                        // headkv takes no layer allocator (validation refuses one).
                        allocator: if method.def().keeps == types::Keeps::OwnHeads {
                            None
                        } else {
                            [
                                None,
                                Some(Allocator::Uniform),
                                Some(Allocator::Pyramid),
                                Some(Allocator::ErrorAware),
                            ][alloc]
                        },
                        layer_budgets: None,
                        ..Settings::default()
                    };
                    (trace, settings, profile)
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn keep_sets_are_well_formed((trace, settings, profile) in problem()) {
            let future = random_future(trace.dims, trace.len, trace.len as u64);
            let sel = select(&Request::new(&trace, &settings).profile(Some(&profile)).future(Some(&future))).unwrap();
            let len = trace.len;
            let w = settings.window;
            let dims = trace.dims;
            sel.keep.validate(&dims, len).unwrap();
            prop_assert_eq!(sel.layer_budgets.len(), dims.n_layers);
            prop_assert_eq!(sel.scores.len(), dims.n_layers);
            let def = settings.method.def();
            for (l, heads) in sel.keep.positions.iter().enumerate() {
                let b = sel.layer_budgets[l];
                prop_assert!(b >= w.min(len));
                let total: usize = heads.iter().map(Vec::len).sum();
                // headkv's layer budget is nominal (the mean of its heads' caps).
                if len <= b && def.keeps != types::Keeps::OwnHeads {
                    for h in heads {
                        prop_assert_eq!(h, &(0..len).collect::<Vec<_>>());
                    }
                    prop_assert!(sel.scores[l].is_empty());
                    continue;
                }
                if len <= settings.budget && def.keeps == types::Keeps::OwnHeads {
                    // headkv evicts nothing while the prompt fits the budget.
                    for h in heads {
                        prop_assert_eq!(h, &(0..len).collect::<Vec<_>>());
                    }
                    continue;
                }
                for h in heads {
                    prop_assert!(h.windows(2).all(|p| p[0] < p[1]));
                    prop_assert!(h.iter().all(|&p| p < len));
                    prop_assert_eq!(&h[h.len() - w..], &(len - w..len).collect::<Vec<_>>()[..]);
                    match def.keeps {
                        types::Keeps::EveryHead => prop_assert_eq!(h.len(), b),
                        _ => prop_assert!(h.len() >= w),
                    }
                }
                match def.keeps {
                    types::Keeps::EveryHead | types::Keeps::LayerTotal => {
                        prop_assert_eq!(total, dims.n_kv_heads * b)
                    }
                    types::Keeps::OwnHeads => {
                        let caps = headkv::head_caps(&profile, &settings, &dims);
                        for (h, c) in heads.iter().zip(&caps[l]) {
                            prop_assert_eq!(h.len(), w + (*c).min(len - w));
                        }
                    }
                    types::Keeps::All => prop_assert!(false, "full evicted"),
                }
                if def.shared_positions {
                    prop_assert!(heads.iter().all(|h| h == &heads[0]));
                }
                if def.has_scores {
                    prop_assert_eq!(sel.scores[l].len(), dims.n_kv_heads);
                    prop_assert!(sel.scores[l].iter().all(|s| s.len() == len - w));
                } else {
                    prop_assert!(sel.scores[l].is_empty());
                }
            }
        }
    }
}
