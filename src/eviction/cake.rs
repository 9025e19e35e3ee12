//! cake (CAKE, Qin et al., ICLR 2025), METHOD-MORE.md §1: an eviction indicator
//! `mean + gamma x variance` of the window attention each position receives, and the
//! method's own allocator, which splits the budget by a per-layer preference
//! `H^(1/tau1) x V^(1/tau2)` (spatial dispersion = window-attention entropy, temporal
//! shift = summed variance) and reproduces CAKE's layer-by-layer cascade in one shot.
//!
//! Formulas are the reference code's (official repository and CompressKV's copy agree).
//! Differences kept on purpose: nothing is evicted while `L <= B` (the reference waits
//! for `L > B + w`), no eviction while decoding (as CompressKV's copy), f32 probabilities
//! (the reference stores f16) and ties to the lower position.

use anyhow::{bail, Result};
use rayon::prelude::*;

use super::layer::{per_head_top, per_layer};
use super::scores::{pool, window_rows, KERNEL, POOLING};
use super::types::field;
use super::types::{
    AllocInput, Allocator, AllocatorDef, Input, Knob, KnobKind, KnobValue, LayerChoice, Method,
    MethodDef, Picked, Settings,
};
use crate::trace::Trace;

/// Registry entry.
pub const DEF: MethodDef = MethodDef::new(
    "cake",
    "CAKE: window-attention mean + gamma x variance; budgets by layer preference",
    Allocator::Cake,
    pick,
)
.with_knobs(&[&KERNEL, &POOLING, &GAMMA]);

/// This method's handle.
pub const METHOD: Method = Method::of(&DEF);

/// Registry entry of the allocator.
pub const ALLOC: AllocatorDef = AllocatorDef {
    name: "cake",
    about: "CAKE: split by entropy/variance layer preference, cascade one-shot",
    knobs: &[&TAU1, &TAU2, &CASCADE],
    budgets: allocate,
};

#[allow(non_upper_case_globals)]
impl Allocator {
    /// CAKE's preference-based split.
    pub const Cake: Allocator = Allocator::of(&ALLOC);
}

/// `cake_gamma`: weight of the variance in the indicator.
pub const GAMMA: Knob = Knob::new(
    "cake_gamma",
    "cake-gamma",
    "cake: weight of the variance in the eviction indicator (mean + gamma x var).",
    KnobKind::Float {
        min: 0.0,
        max: f64::INFINITY,
        open_min: false,
    },
    |_| KnobValue::Float(200.0),
    field!(cake_gamma),
)
.stepping(10.0);

/// `cake_tau1`: temperature of the entropy in the layer preference.
pub const TAU1: Knob = Knob::new(
    "cake_tau1",
    "cake-tau1",
    "cake allocator: tau1 of P = H^(1/tau1) x V^(1/tau2) (reference fallback 1.0).",
    KnobKind::Float {
        min: 0.0,
        max: f64::INFINITY,
        open_min: true,
    },
    |_| KnobValue::Float(1.6),
    field!(cake_tau1),
)
.stepping(0.1);

/// `cake_tau2`: temperature of the variance; Llama-3.1-8B's value for the budget.
pub const TAU2: Knob = Knob::new(
    "cake_tau2",
    "cake-tau2",
    "cake allocator: tau2 of the layer preference [default 0.6 if B < 512, else 0.4; \
           reference fallback 1.0].",
    KnobKind::Float {
        min: 0.0,
        max: f64::INFINITY,
        open_min: true,
    },
    |s| KnobValue::Float(if s.budget < 512 { 0.6 } else { 0.4 }),
    field!(cake_tau2),
)
.stepping(0.1);

/// `cake_cascade`: reproduce the reference's cascade (else the last stage only).
pub const CASCADE: Knob = Knob::new(
    "cake_cascade",
    "cake-cascade",
    "cake allocator: reproduce the layer-by-layer cascade (false: last stage only).",
    KnobKind::Bool,
    |_| KnobValue::Bool(true),
    field!(cake_cascade),
);

/// `ln(a + EPS)` in the entropy, as the reference.
const EPS: f64 = 1e-10;

/// One query head's window statistics over the prefix `[0, L - w)`.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadStats {
    /// `m[j]`: mean over the window rows.
    pub mean: Vec<f64>,
    /// `v[j]`: unbiased variance over the window rows (0 with one row).
    pub var: Vec<f64>,
    /// `- sum_i sum_j a ln(a + 1e-10)` over the prefix columns.
    pub entropy: f64,
}

/// Statistics of window rows given as their prefix parts (`rows[i][j]`, `j < prefix`).
/// One pass accumulating `sum a`, `sum a^2` and `sum a ln(a + eps)` per column, in f64.
pub fn head_stats<'a>(rows: impl IntoIterator<Item = &'a [f32]>, prefix: usize) -> HeadStats {
    let mut s1 = vec![0f64; prefix];
    let mut s2 = vec![0f64; prefix];
    let mut ent = 0f64;
    let mut w = 0usize;
    for row in rows {
        w += 1;
        for (j, &a) in row[..prefix].iter().enumerate() {
            let a = f64::from(a);
            s1[j] += a;
            s2[j] += a * a;
            ent += a * (a + EPS).ln();
        }
    }
    let n = w.max(1) as f64;
    let mean: Vec<f64> = s1.iter().map(|&s| s / n).collect();
    let var = if w < 2 {
        vec![0.0; prefix]
    } else {
        // sum (a - m)^2 = sum a^2 - w m^2, clamped at 0 against rounding.
        s2.iter()
            .zip(&mean)
            .map(|(&q, &m)| ((q - n * m * m) / (n - 1.0)).max(0.0))
            .collect()
    };
    HeadStats {
        mean,
        var,
        entropy: -ent,
    }
}

/// Window statistics of every query head of `layer` (`1 <= w < L`).
pub fn layer_stats(trace: &Trace, layer: usize, window: usize) -> Vec<HeadStats> {
    let prefix = trace.len - window;
    (0..trace.dims.n_heads)
        .map(|h| {
            let mut rows: Vec<Vec<f32>> = Vec::with_capacity(window);
            window_rows(trace, layer, h, window, |_, row| {
                rows.push(row[..prefix].to_vec())
            });
            head_stats(rows.iter().map(Vec::as_slice), prefix)
        })
        .collect()
}

/// `e_h = m + gamma v` (before pooling).
pub fn indicator(stats: &HeadStats, gamma: f64) -> Vec<f32> {
    stats
        .mean
        .iter()
        .zip(&stats.var)
        .map(|(&m, &v)| (m + gamma * v) as f32)
        .collect()
}

/// `P = H^(1/tau1) V^(1/tau2)` from a layer's summed entropy `H` and variance `V`; a
/// non-finite result counts as 0.
pub fn preference(h: f64, v: f64, tau1: f64, tau2: f64) -> f64 {
    let p = h.powf(1.0 / tau1) * v.powf(1.0 / tau2);
    if p.is_finite() {
        p
    } else {
        0.0
    }
}

/// `P_l` of one layer from its heads' statistics.
pub fn layer_preference(stats: &[HeadStats], tau1: f64, tau2: f64) -> f64 {
    let h: f64 = stats.iter().map(|s| s.entropy).sum();
    let v: f64 = stats.iter().map(|s| s.var.iter().sum::<f64>()).sum();
    preference(h, v, tau1, tau2)
}

/// The reference's `adjust_budgets` over the layers present (`p`): non-window slots of
/// each, `total` in all, `cap` the most one layer can use.
pub fn alloc(p: &[f64], total: i64, cap: i64) -> Vec<i64> {
    let sum: f64 = p.iter().sum();
    // 1. Proportional shares, truncated toward zero (all zero when there is nothing
    //    to be proportional to; step 3 then spreads the total evenly).
    let mut x: Vec<i64> = p
        .iter()
        .map(|&pj| {
            if sum > 0.0 {
                (pj / sum * total as f64).trunc() as i64
            } else {
                0
            }
        })
        .collect();
    // 2. Clip at the cap; spread the excess over the layers below it, no re-clipping.
    let excess: i64 = x.iter().map(|&xj| (xj - cap).max(0)).sum();
    x.iter_mut().for_each(|xj| *xj = (*xj).min(cap));
    if excess > 0 {
        spread(&mut x, excess, |xj| xj < cap);
    }
    // 3. Pay the difference from the total.
    let d = total - x.iter().sum::<i64>();
    if d > 0 {
        spread(&mut x, d, |xj| xj < cap);
    } else if d < 0 {
        spread(&mut x, d, |xj| xj > 1);
    }
    x
}

/// Adds `amount` (subtracts when negative) over the layers `eligible` picks, in index
/// order: each `|amount| div n`, the first `|amount| mod n` one more. Nothing eligible:
/// nothing moves.
fn spread(x: &mut [i64], amount: i64, eligible: impl Fn(i64) -> bool) {
    let v: Vec<usize> = (0..x.len()).filter(|&j| eligible(x[j])).collect();
    if v.is_empty() {
        return;
    }
    let (n, sign, a) = (v.len() as i64, amount.signum(), amount.abs());
    for (r, &j) in v.iter().enumerate() {
        let extra = i64::from((r as i64) < a % n);
        x[j] += sign * (a / n + extra);
    }
}

/// Non-window slots `c_l` of every layer: the cascade's
/// `min over m >= l of min(alloc(P_0..P_m)[l], cap)`, or the last stage alone.
pub fn slots(p: &[f64], total: i64, cap: i64, cascade: bool) -> Vec<i64> {
    let n = p.len();
    if !cascade {
        return alloc(p, total, cap);
    }
    let mut c = vec![cap; n];
    for m in 0..n {
        for (l, x) in alloc(&p[..=m], total, cap).into_iter().enumerate() {
            c[l] = c[l].min(x);
        }
    }
    c
}

/// The cake allocator: budgets `B_l = c_l + w`.
fn allocate(a: &AllocInput) -> Result<Vec<usize>> {
    let s = a.settings;
    let (n, b, w, len) = (a.dims.n_layers, s.budget, s.window, a.len);
    if len <= b {
        // Nothing is evicted at all (project rule), whatever the preferences.
        return Ok(vec![b; n]);
    }
    let Some(trace) = a.trace else {
        bail!(
            "the cake allocator measures the prompt's window attention: it needs the \
             prefilled prompt"
        );
    };
    let (tau1, tau2) = (TAU1.f64(s), TAU2.f64(s));
    let p: Vec<f64> = (0..n)
        .into_par_iter()
        .map(|l| layer_preference(&layer_stats(trace, l, w), tau1, tau2))
        .collect();
    Ok(budgets_from(&p, b, w, len, CASCADE.flag(s)))
}

/// `B_l` from the preferences (every layer `B` when none is positive).
pub fn budgets_from(p: &[f64], b: usize, w: usize, len: usize, cascade: bool) -> Vec<usize> {
    let n = p.len();
    let p: Vec<f64> = p
        .iter()
        .map(|&x| if x.is_finite() && x > 0.0 { x } else { 0.0 })
        .collect();
    if p.iter().sum::<f64>() <= 0.0 {
        return vec![b; n];
    }
    let total = ((b - w) * n) as i64;
    let cap = (len - w) as i64;
    slots(&p, total, cap, cascade)
        .into_iter()
        .map(|c| c.max(0) as usize + w)
        .collect()
}

fn pick(i: &Input) -> Result<Picked> {
    let gamma = GAMMA.f64(i.settings);
    Ok(per_layer(i, |layer, b| {
        select_layer(i.trace, layer, b, i.settings, gamma)
    }))
}

/// One layer that evicts (`L > budget`): each KV head keeps its top `budget - w` of the
/// group mean of the pooled indicators, plus the window.
pub fn select_layer(
    trace: &Trace,
    layer: usize,
    budget: usize,
    settings: &Settings,
    gamma: f64,
) -> LayerChoice {
    let stats = layer_stats(trace, layer, settings.window);
    per_head_top(
        group_scores(&stats, trace.dims.n_rep(), settings, gamma),
        trace.len,
        budget,
        settings.window,
    )
}

/// `ê_g`: per KV head, the mean over its query heads of the pooled `e_h`.
fn group_scores(
    stats: &[HeadStats],
    n_rep: usize,
    settings: &Settings,
    gamma: f64,
) -> Vec<Vec<f32>> {
    stats
        .chunks(n_rep)
        .map(|group| {
            let mut acc: Vec<f32> = Vec::new();
            for st in group {
                let e = pool(&indicator(st, gamma), settings.kernel, settings.pooling);
                if acc.is_empty() {
                    acc = e;
                } else {
                    acc.iter_mut().zip(&e).for_each(|(a, x)| *a += x);
                }
            }
            acc.iter_mut().for_each(|a| *a /= group.len() as f32);
            acc
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::{select, Method, Request};
    use super::*;

    /// METHOD-MORE.md §1 example: prefix parts of the two window rows.
    const R0: [f32; 4] = [0.4, 0.1, 0.2, 0.1];
    const R1: [f32; 4] = [0.2, 0.1, 0.2, 0.3];

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6)
    }

    fn example() -> HeadStats {
        head_stats([&R0[..], &R1[..]], 4)
    }

    #[test]
    fn example_1_indicator_and_choice() {
        let st = example();
        assert!(close(&st.mean, &[0.3, 0.1, 0.2, 0.2]), "{:?}", st.mean);
        assert!(close(&st.var, &[0.02, 0.0, 0.0, 0.02]), "{:?}", st.var);
        let e = indicator(&st, 200.0);
        let want = [4.3f32, 0.1, 0.2, 4.2];
        assert!(
            e.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-5),
            "{e:?}"
        );
        let s = Settings {
            kernel: 1,
            window: 2,
            ..Settings::default()
        };
        // L = 6, w = 2, B = 4: two prefix slots.
        let keep = |g: f64| {
            let sc = group_scores(std::slice::from_ref(&st), 1, &s, g);
            per_head_top(sc, 6, 4, 2).keep
        };
        assert_eq!(keep(200.0), vec![vec![0, 3, 4, 5]]);
        // gamma = 0 is the plain mean (snapkv's ranking): 2 and 3 tie, the lower wins.
        assert_eq!(keep(0.0), vec![vec![0, 2, 4, 5]]);
    }

    #[test]
    fn example_2_preference() {
        let st = example();
        assert!((st.entropy - 2.384146).abs() < 1e-6, "{}", st.entropy);
        let v: f64 = st.var.iter().sum();
        assert!((v - 0.04).abs() < 1e-7, "{v}");
        let p = layer_preference(std::slice::from_ref(&st), 1.0, 1.0);
        assert!((p - 0.0953659).abs() < 1e-7, "{p}");
        let p = layer_preference(std::slice::from_ref(&st), 1.6, 0.6);
        assert!((p - 0.0080525).abs() < 1e-7, "{p}");
    }

    #[test]
    fn example_3_cascade() {
        // n = 3, B = 4, w = 2 (T = 6), L = 6 (cap = 4).
        let p = [6.0, 5.0, 2.0];
        assert_eq!(alloc(&p[..1], 6, 4), vec![4]);
        assert_eq!(alloc(&p[..2], 6, 4), vec![4, 2]);
        assert_eq!(alloc(&p, 6, 4), vec![3, 3, 0]);
        assert_eq!(slots(&p, 6, 4, true), vec![3, 2, 0]);
        assert_eq!(budgets_from(&p, 4, 2, 6, true), vec![5, 4, 2]);
        assert_eq!(budgets_from(&p, 4, 2, 6, false), vec![5, 5, 2]);
        // B = 10, w = 2, L = 12: clip and excess; the cascade agrees.
        let p = [1.0, 2.0, 5.0];
        assert_eq!(alloc(&p, 24, 10), vec![6, 8, 10]);
        assert_eq!(budgets_from(&p, 10, 2, 12, true), vec![8, 10, 12]);
        assert_eq!(budgets_from(&p, 10, 2, 12, false), vec![8, 10, 12]);
    }

    #[test]
    fn fallbacks_and_negative_difference() {
        // No usable preference: every layer gets B.
        assert_eq!(
            budgets_from(&[0.0, f64::NAN], 10, 2, 50, true),
            vec![10, 10]
        );
        // A stage whose layers all have P = 0 spreads the total evenly.
        assert_eq!(alloc(&[0.0, 0.0, 0.0], 7, 10), vec![3, 2, 2]);
        // spread() takes from layers above 1 when the sum is over.
        let mut x = vec![5, 1, 4];
        spread(&mut x, -3, |v| v > 1);
        assert_eq!(x, vec![3, 1, 3]);
        // One window row: no variance, P = 0, budgets uniform, indicator = mean.
        let st = head_stats([&R0[..]], 4);
        assert_eq!(st.var, vec![0.0; 4]);
        assert_eq!(layer_preference(&[st], 1.0, 1.0), 0.0);
    }

    #[test]
    fn through_select_budgets_sum_and_cap() {
        let dims = dims(4, 4, 2, 8);
        let t = random_trace(dims, 40, 9);
        let s = Settings {
            method: Method::named("cake").unwrap(),
            budget: 12,
            window: 4,
            kernel: 3,
            ..Settings::default()
        };
        assert_eq!(s.effective_allocator(), Allocator::Cake);
        let sel = select(&Request::new(&t, &s)).unwrap();
        let b = &sel.layer_budgets;
        // The cascade never hands out more than the total; every layer holds its window.
        assert!(b.iter().map(|x| x - 4).sum::<usize>() <= 8 * 4, "{b:?}");
        assert!(b.iter().all(|&x| x >= 4));
        let last = budgets_from(
            &(0..4)
                .map(|l| layer_preference(&layer_stats(&t, l, 4), 1.6, 0.6))
                .collect::<Vec<_>>(),
            12,
            4,
            40,
            false,
        );
        assert_eq!(last.iter().sum::<usize>(), 12 * 4, "{last:?}");
        for (l, heads) in sel.keep.positions.iter().enumerate() {
            for h in heads {
                assert_eq!(h.len(), b[l].min(40));
            }
        }
        // Without the trace the allocator cannot measure anything: one clear line.
        let e = super::super::budget::layer_budgets(&s, &dims, 40, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cake allocator"), "{e}");
    }

    #[test]
    fn window_stats_match_the_window_score() {
        // The mean times w is the snapkv window sum the other methods use.
        let dims = dims(1, 2, 1, 4);
        let t = random_trace(dims, 30, 2);
        let st = layer_stats(&t, 0, 5);
        let sums = super::super::scores::window_attention(&t, 0, 1, 5);
        for (m, s) in st[1].mean.iter().zip(&sums) {
            assert!((m * 5.0 - f64::from(*s)).abs() < 1e-5);
        }
    }
}
