//! headkv (HeadKV-R, Fu et al. 2024), METHOD-MORE.md §4: head-level budgets from the
//! profile's retrieval scores, drawn from one pool shared by every head of the model
//! (KVCache-Factory's `kv_head` mode); within a KV head, snapkv's score.
//! `headkv_source = srh` ranks heads by the profile's SRH scores instead (a kvscope
//! variant, not in the paper).
//!
//! Layer allocators do not apply: `Selection.layer_budgets` holds the nominal
//! `w + round(mean of the layer's KV-head capacities)`; [`head_caps`] gives the caps.
//! Differences: the references select per query head on repeated keys; KVCache-Factory
//! builds the pool from `B` (heads keep `B + w` on average), kvscope from `B - w` like the
//! official repository.

use anyhow::Result;

use super::layer::{per_layer, with_window};
use super::scores::{top_k, KERNEL, POOLING};
use super::snapkv;
use super::types::field;
use super::types::{
    Allocator, Input, Keeps, Knob, KnobKind, KnobValue, LayerChoice, Method, MethodDef, Picked,
    Scorer, Settings,
};
use crate::profile_format::Profile;
use crate::trace::Dims;

/// Registry entry.
pub const DEF: MethodDef = MethodDef::new(
    "headkv",
    "HeadKV-R: per-head budgets from the profile's retrieval scores, shared pool",
    Allocator::Uniform,
    pick,
)
.with_knobs(&[&KERNEL, &POOLING, &BETA, &TEMP, &SOURCE])
.with_profile(
    "headkv needs an offline profile (retrieval scores per head): pass one with \
         --profile FILE, or make one with `kvscope profile srh`",
)
.keeping(Keeps::OwnHeads);

/// This method's handle.
pub const METHOD: Method = Method::of(&DEF);

/// `headkv_beta`: the pool is `floor(c / beta)` per head; the rest is every head's floor.
pub const BETA: Knob = Knob::new(
    "headkv_beta",
    "headkv-beta",
    "headkv: beta; each head keeps c - floor(c/beta) at least, the rest is pooled.",
    KnobKind::Float {
        min: 1.0,
        max: f64::INFINITY,
        open_min: false,
    },
    |_| KnobValue::Float(1.01),
    field!(headkv_beta),
)
.stepping(0.01);

/// `headkv_temp`: sharpens (> 1) or flattens (< 1) the normalised head scores.
pub const TEMP: Knob = Knob::new(
    "headkv_temp",
    "headkv-temp",
    "headkv: temperature of the normalised head scores (s^temp, renormalised).",
    KnobKind::Float {
        min: 0.0,
        max: f64::INFINITY,
        open_min: true,
    },
    |_| KnobValue::Float(1.0),
    field!(headkv_temp),
)
.stepping(0.1);

/// `headkv_source`: which profile scores set the head budgets.
pub const SOURCE: Knob = Knob::new(
    "headkv_source",
    "headkv-source",
    "headkv: head scores from the profile's retrieval (HeadKV-R) or srh scores.",
    KnobKind::Choice(&["retrieval", "srh"]),
    |_| KnobValue::Text("retrieval".into()),
    field!(headkv_source),
);

/// KV-head capacities `ck[l][g]` (non-window slots) for per-query-head scores `r[l][h]`.
pub fn caps_from(r: &[Vec<f64>], dims: &Dims, c: usize, beta: f64, temp: f64) -> Vec<Vec<usize>> {
    let (nl, nh, nkv) = (dims.n_layers, dims.n_heads, dims.n_kv_heads);
    let clean = |x: f64| if x.is_finite() && x > 0.0 { x } else { 0.0 };
    let total: f64 = r.iter().flatten().map(|&x| clean(x)).sum();
    if total <= 0.0 {
        return vec![vec![c; nkv]; nl];
    }
    let mut s: Vec<Vec<f64>> = r
        .iter()
        .map(|l| l.iter().map(|&x| clean(x) / total).collect())
        .collect();
    if temp != 1.0 {
        let z: f64 = s.iter().flatten().map(|x| x.powf(temp)).sum();
        if z > 0.0 && z.is_finite() {
            s.iter_mut().flatten().for_each(|x| *x = x.powf(temp) / z);
        }
    }
    // Python's float `c // beta`.
    let pooled = (c as f64 / beta).floor();
    let q = pooled * (nl * nh) as f64;
    let floor = c as f64 - pooled;
    let n_rep = nh / nkv;
    s.iter()
        .map(|layer| {
            let cq: Vec<f64> = layer
                .iter()
                .map(|&x| (x * q + floor).round_ties_even())
                .collect();
            cq.chunks(n_rep)
                .map(|g| (g.iter().sum::<f64>() / g.len() as f64).round_ties_even() as usize)
                .collect()
        })
        .collect()
}

/// The profile's head scores for `settings`' source, `[layer][query head]`.
fn source<'a>(p: &'a Profile, settings: &Settings) -> &'a [Vec<f64>] {
    match SOURCE.get(settings).as_str() {
        Some("srh") => &p.srh_scores,
        _ => &p.retrieval_scores,
    }
}

/// KV-head capacities (non-window slots) under `settings` for a model of shape `dims`.
pub fn head_caps(p: &Profile, settings: &Settings, dims: &Dims) -> Vec<Vec<usize>> {
    caps_from(
        source(p, settings),
        dims,
        settings.budget - settings.window,
        BETA.f64(settings),
        TEMP.f64(settings),
    )
}

fn pick(i: &Input) -> Result<Picked> {
    wrap(i, snapkv::scorer)
}

/// headkv's per-head budgets (from the profile's retrieval scores) over any [`Scorer`].
pub fn wrap(i: &Input, scorer: Scorer) -> Result<Picked> {
    let Some(p) = i.profile else {
        anyhow::bail!("{}", DEF.needs_profile.unwrap_or("headkv needs a profile"));
    };
    let (s, t) = (i.settings, i.trace);
    let len = t.len;
    if len <= s.budget {
        // Nothing is evicted; the allocator's budgets (all B >= L) stand.
        return Ok(per_layer(i, |_, _| {
            LayerChoice::keep_all(t.dims.n_kv_heads, len)
        }));
    }
    let caps = head_caps(p, s, &t.dims);
    let w = s.window;
    let nominal: Vec<usize> = caps
        .iter()
        .map(|l| w + (l.iter().sum::<usize>() as f64 / l.len() as f64).round_ties_even() as usize)
        .collect();
    let layers = (0..t.dims.n_layers)
        .map(|layer| select_layer(i, scorer, layer, &caps[layer]))
        .collect();
    Ok(Picked {
        layers,
        budgets: Some(nominal),
    })
}

/// One layer: KV head `g` keeps its top `min(caps[g], L - w)` plus the window.
fn select_layer(i: &Input, scorer: Scorer, layer: usize, caps: &[usize]) -> LayerChoice {
    let (t, w) = (i.trace, i.settings.window);
    let scores = scorer(i, layer);
    let keep = scores
        .iter()
        .zip(caps)
        .map(|(s, &c)| with_window(top_k(s, c.min(t.len - w)), t.len, w))
        .collect();
    LayerChoice { keep, scores }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::{select, Method, Request};
    use super::*;

    const DIMS: Dims = Dims {
        n_layers: 1,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 4,
    };

    fn scores() -> Vec<Vec<f64>> {
        vec![vec![0.5, 0.3, 0.2, 0.0]]
    }

    #[test]
    fn example_caps() {
        assert_eq!(
            caps_from(&scores(), &DIMS, 10, 1.01, 1.0),
            vec![vec![16, 4]]
        );
        assert_eq!(caps_from(&scores(), &DIMS, 10, 2.0, 1.0), vec![vec![13, 7]]);
        // No usable score: every KV head gets c.
        let none = vec![vec![0.0, f64::NAN, -1.0, 0.0]];
        assert_eq!(caps_from(&none, &DIMS, 10, 1.01, 1.0), vec![vec![10, 10]]);
        // Temperature 0 < t < 1 flattens: the two KV heads move closer.
        let flat = caps_from(&scores(), &DIMS, 10, 1.01, 0.5);
        assert!(flat[0][0] < 16 && flat[0][1] > 4, "{flat:?}");
    }

    fn settings() -> Settings {
        let mut s = Settings {
            method: Method::named("headkv").unwrap(),
            budget: 12,
            window: 2,
            kernel: 1,
            ..Settings::default()
        };
        BETA.set(&mut s, KnobValue::Float(1.01)).unwrap();
        s
    }

    fn profile(t: &crate::trace::Trace) -> Profile {
        let mut p = random_profile(t.dims, 4);
        p.retrieval_scores = scores();
        p
    }

    #[test]
    fn example_keeps() {
        for (len, want) in [(20, [18, 6]), (16, [16, 6]), (12, [12, 12]), (9, [9, 9])] {
            let dims = Dims { ..DIMS };
            let t = random_trace(dims, len, 5);
            let sel = select(&Request::new(&t, &settings()).profile(Some(&profile(&t)))).unwrap();
            let got: Vec<usize> = sel.keep.positions[0].iter().map(Vec::len).collect();
            assert_eq!(got, want, "L={len}");
            for h in &sel.keep.positions[0] {
                assert_eq!(&h[h.len() - 2..], &[len - 2, len - 1]);
            }
            if len > 12 {
                assert_eq!(sel.layer_budgets, vec![2 + 10]);
            }
        }
    }

    #[test]
    fn source_srh_and_profile_needed() {
        let t = random_trace(DIMS, 20, 5);
        let mut p = profile(&t);
        p.srh_scores = vec![vec![0.0, 0.0, 0.5, 0.5]];
        let mut s = settings();
        SOURCE.set(&mut s, SOURCE.parse("srh").unwrap()).unwrap();
        let sel = select(&Request::new(&t, &s).profile(Some(&p))).unwrap();
        let got: Vec<usize> = sel.keep.positions[0].iter().map(Vec::len).collect();
        assert_eq!(got, vec![1 + 2, 20]);
        let e = select(&Request::new(&t, &s)).unwrap_err().to_string();
        assert!(e.contains("headkv needs an offline profile"), "{e}");
        let e = SOURCE.parse("copy").unwrap_err().to_string();
        assert!(e.contains("retrieval, srh"), "{e}");
        let e = BETA.parse("0.5").unwrap_err().to_string();
        assert!(e.contains("at least 1"), "{e}");
    }
}
