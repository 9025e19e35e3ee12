//! Layer-budget allocators: how many prompt tokens each layer keeps per KV head.
//!
//! Every allocator returns budgets `>= w` (the window must fit) or `>= L` (the layer
//! keeps everything; only the pyramid's clamp gives `L < w` budgets, for prompts
//! shorter than the window).

use super::types::field;
use super::types::{AllocInput, Allocator, AllocatorDef, Knob, KnobKind, KnobValue, Settings};
use crate::profile_format::Profile;
use crate::trace::{Dims, Trace};
use anyhow::Result;

/// Registry entry: every layer keeps `B`.
pub const UNIFORM: AllocatorDef = AllocatorDef {
    name: "uniform",
    about: "every layer keeps B",
    knobs: &[],
    budgets: |a| Ok(uniform(a.dims.n_layers, a.settings.budget)),
};

/// Registry entry: PyramidKV's linear fall with depth.
pub const PYRAMID: AllocatorDef = AllocatorDef {
    name: "pyramid",
    about: "PyramidKV: budgets fall linearly with depth",
    knobs: &[&PYRAMID_BETA],
    budgets: |a| {
        let s = a.settings;
        Ok(pyramid(
            a.dims.n_layers,
            s.budget,
            s.window,
            a.len,
            s.pyramid_beta,
        ))
    },
};

/// `pyramid_beta`: `min = (B - w) / beta`.
pub const PYRAMID_BETA: Knob = Knob::new(
    "pyramid_beta",
    "pyramid-beta",
    "PyramidKV: beta of the pyramid formula (min = (B - w) / beta).",
    KnobKind::Int {
        min: 1,
        max: i64::MAX,
    },
    |_| KnobValue::Int(20),
    field!(pyramid_beta),
);

/// Registry entry: CompressKV's split by the profile's layer errors. Without them (no
/// profile, or an SRH-only profile) every layer gets `B`, as METHOD.md says.
pub const ERROR_AWARE: AllocatorDef = AllocatorDef {
    name: "error-aware",
    about: "CompressKV: split in proportion to the profile's layer errors",
    knobs: &[],
    budgets: |a| {
        // A budget of the whole prompt keeps everything in every layer; the error-aware
        // split would move tokens from layers that have them all to layers that cannot
        // use them, and evict.
        if a.settings.budget >= a.len {
            return Ok(uniform(a.dims.n_layers, a.settings.budget));
        }
        let errors = a.profile.and_then(|p| p.layer_errors.as_deref());
        Ok(error_aware(
            a.dims.n_layers,
            a.settings.budget,
            a.settings.window,
            errors,
        ))
    },
};

/// Registry entry: the user's explicit per-layer list.
pub const MANUAL: AllocatorDef = AllocatorDef {
    name: "manual",
    about: "the explicit per-layer list (--layer-budgets)",
    knobs: &[],
    // validate() guarantees the list exists and has one entry per layer.
    budgets: |a| {
        Ok(a.settings
            .layer_budgets
            .clone()
            .unwrap_or_else(|| uniform(a.dims.n_layers, a.settings.budget)))
    },
};

#[allow(non_upper_case_globals)]
impl Allocator {
    /// Every layer keeps `B`.
    pub const Uniform: Allocator = Allocator::of(&UNIFORM);
    /// PyramidKV's linear fall with depth.
    pub const Pyramid: Allocator = Allocator::of(&PYRAMID);
    /// CompressKV's split in proportion to the profile's layer errors.
    pub const ErrorAware: Allocator = Allocator::of(&ERROR_AWARE);
    /// The user's explicit per-layer list (`Settings::layer_budgets`).
    pub const Manual: Allocator = Allocator::of(&MANUAL);
}

impl Settings {
    /// The allocator in force: explicit layer budgets mean manual, else the user's
    /// choice, else the method's default.
    pub fn effective_allocator(&self) -> Allocator {
        if self.layer_budgets.is_some() {
            Allocator::Manual
        } else {
            self.allocator
                .unwrap_or_else(|| self.method.default_allocator())
        }
    }
}

/// CompressKV's per-layer floor before the proportional split.
pub const MIN_TOKENS: usize = 32;
/// CompressKV's per-layer cap, as a multiple of `B`.
pub const CAP_FACTOR: usize = 3;

/// Budgets of every layer for a prompt of `len` tokens under `settings`' allocator,
/// without a trace (an allocator that measures the trace fails; callers previewing
/// budgets fall back to uniform).
pub fn layer_budgets(
    settings: &Settings,
    dims: &Dims,
    len: usize,
    profile: Option<&Profile>,
) -> Result<Vec<usize>> {
    layer_budgets_for(settings, dims, len, profile, None)
}

/// [`layer_budgets`] with the trace, for allocators that measure it.
pub fn layer_budgets_for(
    settings: &Settings,
    dims: &Dims,
    len: usize,
    profile: Option<&Profile>,
    trace: Option<&Trace>,
) -> Result<Vec<usize>> {
    settings.validate(dims)?;
    (settings.effective_allocator().def().budgets)(&AllocInput {
        settings,
        dims,
        len,
        profile,
        trace,
    })
}

/// Every layer keeps `budget`.
pub fn uniform(n_layers: usize, budget: usize) -> Vec<usize> {
    vec![budget; n_layers]
}

/// PyramidKV (METHOD.md): base `c = B - w`, `min = c / beta`, `max = 2c - min`; if
/// `max >= L - w` then `max = L - w` and `min = 2c - max`;
/// `step = (max - min) / (n_layers - 1)`; `B_l = max - l * step + w`. Every division is a
/// floor division (Python's `//`): after the clamp `step` can be negative, and Rust's `/`
/// would round it toward zero instead.
///
/// With a single layer the formula divides by zero; that layer gets `B` (a pyramid of
/// one layer is flat).
///
/// Any `usize` budget is safe: the arithmetic is done in `i128` (no intermediate value
/// exceeds a few times the budget) and a layer budget beyond `usize::MAX` saturates
/// there; with `B >= L` every layer's budget is `>= L`, so it keeps everything.
pub fn pyramid(
    n_layers: usize,
    budget: usize,
    window: usize,
    len: usize,
    beta: usize,
) -> Vec<usize> {
    if n_layers <= 1 {
        return uniform(n_layers, budget);
    }
    let (b, w, len) = (budget as i128, window as i128, len as i128);
    let c = b - w;
    let mut min = floor_div(c, beta.max(1) as i128);
    let mut max = 2 * c - min;
    if max >= len - w {
        max = len - w;
        min = 2 * c - max;
    }
    let step = floor_div(max - min, n_layers as i128 - 1);
    (0..n_layers as i128)
        // Without the clamp B_l >= min + w >= w. With it, B_l runs from L towards
        // min + w >= w (step >= 0) or rises from L (step < 0). So B_l >= min(w, L); the
        // clamp only keeps a broken invariant from wrapping around.
        .map(|l| (max - l * step + w).clamp(0, usize::MAX as i128) as usize)
        .collect()
}

/// Floor division for a positive divisor (Python's `//`).
fn floor_div(a: i128, b: i128) -> i128 {
    a.div_euclid(b)
}

/// CompressKV's error-aware allocation (METHOD.md). Total `T = B * n_layers`. Each layer
/// starts at the floor; the rest, `T - floor * n_layers`, is split in proportion to
/// `e_l` and rounded half to even (numpy's `round`); each layer is clipped to
/// `[floor, 3B]`; then the difference from `T` is repaid one token at a time.
///
/// Choices where METHOD.md is silent:
/// - The floor is `min_tokens = 32`, lowered to `B` when `B < 32` (otherwise the floors
///   alone would exceed `T`) and raised to `w` when `w > 32` (a layer must hold its
///   window). So `w <= floor <= B <= 3B` and the total can always be met.
/// - Repayment goes in passes: when short, one pass gives one token to each layer below
///   the cap, highest `e_l` first; when over, one pass takes one token from each layer
///   above the floor, lowest `e_l` first; passes repeat until the sum is `T` or no layer
///   can move. Equal `e_l` are ordered by lower layer index first in both directions (a
///   stable sort on `e_l`).
/// - Non-finite or negative `e_l` count as 0 (validated profiles have none).
///
/// `errors == None` gives every layer `B`. Any `usize` budget is safe: the total and
/// the cap saturate instead of wrapping, and repayment moves whole passes at once, so
/// it takes at most a few passes per layer whatever the amount to repay.
pub fn error_aware(
    n_layers: usize,
    budget: usize,
    window: usize,
    errors: Option<&[f64]>,
) -> Vec<usize> {
    let Some(errors) = errors.filter(|e| e.len() == n_layers) else {
        return uniform(n_layers, budget);
    };
    let e: Vec<f64> = errors
        .iter()
        .map(|&x| if x.is_finite() && x > 0.0 { x } else { 0.0 })
        .collect();
    let total = budget.saturating_mul(n_layers);
    let floor = MIN_TOKENS.min(budget).max(window);
    let cap = CAP_FACTOR.saturating_mul(budget).max(floor);
    let rest = total.saturating_sub(floor.saturating_mul(n_layers)) as f64;
    let mut alloc: Vec<usize> = e
        .iter()
        .map(|&x| {
            let share = (rest * x).round_ties_even();
            (floor as f64 + share).clamp(floor as f64, cap as f64) as usize
        })
        .collect();
    repay(&mut alloc, &e, total, floor, cap);
    alloc
}

/// Moves the allocation's sum to `total` one token per layer per pass (see
/// [`error_aware`]).
fn repay(alloc: &mut [usize], e: &[f64], total: usize, floor: usize, cap: usize) {
    let mut high_first: Vec<usize> = (0..alloc.len()).collect();
    high_first.sort_by(|&a, &b| e[b].total_cmp(&e[a]).then(a.cmp(&b)));
    let mut low_first: Vec<usize> = (0..alloc.len()).collect();
    low_first.sort_by(|&a, &b| e[a].total_cmp(&e[b]).then(a.cmp(&b)));
    loop {
        let sum = alloc.iter().fold(0usize, |a, &x| a.saturating_add(x));
        let mut moved = false;
        if sum < total {
            let mut short = total - sum;
            // k whole passes in which every layer below the cap moves and none reaches
            // it before the last are the same as k single passes.
            let open: Vec<usize> = high_first
                .iter()
                .copied()
                .filter(|&l| alloc[l] < cap)
                .collect();
            let room = open.iter().map(|&l| cap - alloc[l]).min().unwrap_or(0);
            let k = (short / open.len().max(1)).min(room);
            if k > 1 {
                for &l in &open {
                    alloc[l] += k - 1;
                }
                short -= (k - 1) * open.len();
            }
            for &l in &high_first {
                if short > 0 && alloc[l] < cap {
                    alloc[l] += 1;
                    short -= 1;
                    moved = true;
                }
            }
        } else if sum > total {
            let mut over = sum - total;
            let open: Vec<usize> = low_first
                .iter()
                .copied()
                .filter(|&l| alloc[l] > floor)
                .collect();
            let room = open.iter().map(|&l| alloc[l] - floor).min().unwrap_or(0);
            let k = (over / open.len().max(1)).min(room);
            if k > 1 {
                for &l in &open {
                    alloc[l] -= k - 1;
                }
                over -= (k - 1) * open.len();
            }
            for &l in &low_first {
                if over > 0 && alloc[l] > floor {
                    alloc[l] -= 1;
                    over -= 1;
                    moved = true;
                }
            }
        }
        if !moved {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eviction::testutil::dims;
    use crate::eviction::Method;
    use proptest::prelude::*;

    #[test]
    fn pyramid_without_clamp() {
        // n=30, B=128, w=8, beta=20, long prompt: c=120, min=6, max=234,
        // step=(234-6)//29=228//29=7; B_l = 234 - 7l + 8.
        let b = pyramid(30, 128, 8, 4000, 20);
        assert_eq!(b[0], 242);
        assert_eq!(b[1], 235);
        assert_eq!(b[29], 234 - 7 * 29 + 8);
        assert_eq!(b[29], 39);
    }

    #[test]
    fn pyramid_clamped() {
        // L=200: L-w=192 <= max=234, so max=192, min=240-192=48, step=144//29=4.
        let b = pyramid(30, 128, 8, 200, 20);
        let want: Vec<usize> = (0..30).map(|l| 192 - 4 * l + 8).collect();
        assert_eq!(b, want);
    }

    #[test]
    fn pyramid_negative_step_floors() {
        // L=100 < B: max=92, min=240-92=148, step=(92-148)//29 = -56//29 = -2
        // (Rust's -56/29 would be -1). B_l = 92 + 2l + 8 = 100 + 2l: all >= L.
        let b = pyramid(30, 128, 8, 100, 20);
        let want: Vec<usize> = (0..30).map(|l| 100 + 2 * l).collect();
        assert_eq!(b, want);
        // Small case: n=3, B=10, w=2, L=6: c=8, min=8//20=0, max=16 >= 4 -> max=4,
        // min=12, step=(4-12)//2=-4, B = [6, 10, 14].
        assert_eq!(pyramid(3, 10, 2, 6, 20), vec![6, 10, 14]);
        // n=3, B=10, w=2, L=7: max=5, min=11, step=(5-11)//2=-3 -> [7, 10, 13].
        assert_eq!(pyramid(3, 10, 2, 7, 20), vec![7, 10, 13]);
        // A step that does not divide evenly: n=4, B=10, w=3, L=6: c=7, max=3, min=11,
        // step=-8//3=-3 (Rust's -8/3 is -2, which would give [6, 8, 10, 12]).
        assert_eq!(pyramid(4, 10, 3, 6, 20), vec![6, 9, 12, 15]);
    }

    #[test]
    fn pyramid_min_uses_floor_division_and_beta() {
        // c=120, beta=7: min=17, max=223, L large: step=(223-17)//2=103 -> [231, 128, 25].
        assert_eq!(pyramid(3, 128, 8, 10_000, 7), vec![231, 128, 25]);
        // One layer: flat.
        assert_eq!(pyramid(1, 128, 8, 10_000, 20), vec![128]);
    }

    #[test]
    fn error_aware_without_errors_is_uniform() {
        assert_eq!(error_aware(4, 100, 8, None), vec![100; 4]);
    }

    #[test]
    fn error_aware_exact_split() {
        // T=120, floor 32, rest 24: 12, 6, 6.
        assert_eq!(
            error_aware(3, 40, 8, Some(&[0.5, 0.25, 0.25])),
            vec![44, 38, 38]
        );
    }

    #[test]
    fn error_aware_repays_when_short() {
        // n=4, B=33: T=132, rest=4. Shares 2.5->2, 0.5->0 (half to even) x3: sum 130,
        // short 2. One pass, highest e first: layer 0, then the tie 1,2,3 -> layer 1.
        assert_eq!(
            error_aware(4, 33, 8, Some(&[0.625, 0.125, 0.125, 0.125])),
            vec![35, 33, 32, 32]
        );
    }

    #[test]
    fn error_aware_repays_when_over() {
        // n=4, B=33: rest 4. Shares 1.5->2, 1.5->2, 1, 0: sum 133, over 1. Lowest e
        // above the floor: layer 3 is at the floor, layer 2 (e=0.25) gives one.
        assert_eq!(
            error_aware(4, 33, 8, Some(&[0.375, 0.375, 0.25, 0.0])),
            vec![34, 34, 32, 32]
        );
        // n=3, B=33: rest 3. Shares 1.5->2, 1.5->2, 0: over 1; tie between layers 0
        // and 1 goes to the lower index.
        assert_eq!(
            error_aware(3, 33, 8, Some(&[0.5, 0.5, 0.0])),
            vec![33, 34, 32]
        );
    }

    #[test]
    fn error_aware_cap_and_multi_pass_repayment() {
        // n=5, B=100: T=500, rest=340, cap=300. All error on layer 0: 372 -> 300;
        // short 72 spread over layers 1..4 in 18 passes.
        assert_eq!(
            error_aware(5, 100, 8, Some(&[1.0, 0.0, 0.0, 0.0, 0.0])),
            vec![300, 50, 50, 50, 50]
        );
    }

    #[test]
    fn error_aware_floor_adapts_to_small_budget_and_big_window() {
        // B=16 < 32: floor 16, rest 0 -> every layer 16.
        assert_eq!(error_aware(3, 16, 8, Some(&[0.7, 0.2, 0.1])), vec![16; 3]);
        // w=40 > 32: floor 40, T=200, rest=120: 120, 0 -> [160, 40].
        assert_eq!(error_aware(2, 100, 40, Some(&[1.0, 0.0])), vec![160, 40]);
    }

    #[test]
    fn manual_and_dispatch() {
        let dims = dims(3, 2, 1, 4);
        let s = Settings {
            method: crate::eviction::snapkv::METHOD,
            budget: 16,
            window: 4,
            layer_budgets: Some(vec![4, 30, 16]),
            ..Settings::default()
        };
        assert_eq!(
            layer_budgets(&s, &dims, 100, None).unwrap(),
            vec![4, 30, 16]
        );
        let s = Settings {
            method: crate::eviction::pyramidkv::METHOD,
            budget: 10,
            window: 2,
            ..Settings::default()
        };
        assert_eq!(layer_budgets(&s, &dims, 6, None).unwrap(), vec![6, 10, 14]);
        let s = Settings {
            method: crate::eviction::snapkv::METHOD,
            budget: 16,
            window: 4,
            ..Settings::default()
        };
        assert_eq!(layer_budgets(&s, &dims, 100, None).unwrap(), vec![16; 3]);
        let s = Settings {
            budget: 3,
            window: 4,
            ..Settings::default()
        };
        assert!(layer_budgets(&s, &dims, 100, None).is_err());
    }

    #[test]
    fn huge_budgets_neither_overflow_nor_hang() {
        // 3B, 2c and B * n_layers overflow usize / i64 for these.
        for b in [usize::MAX, usize::MAX / 3 + 1, 1usize << 63, (1 << 62) + 7] {
            let p = pyramid(30, b, 8, 700, 20);
            assert!(p.iter().all(|&x| x >= 700), "pyramid B={b}: {p:?}");
            let e = error_aware(30, b, 8, Some(&[1.0 / 30.0; 30]));
            assert!(e.iter().all(|&x| x >= 32), "error-aware B={b}");
            let mut skewed = vec![0.0; 30];
            skewed[3] = 1.0;
            let e = error_aware(30, b, 8, Some(&skewed));
            assert!(e.iter().all(|&x| x >= 32), "error-aware B={b}");
        }
        // Through the dispatcher: B >= L keeps everything in every allocator.
        let dims = dims(4, 2, 1, 4);
        let profile = crate::eviction::testutil::random_profile(dims, 1);
        for method in Method::ALL {
            for b in [100, 101, 5000, usize::MAX] {
                let s = Settings {
                    method,
                    budget: b,
                    window: 8,
                    first_k: 1,
                    ..Settings::default()
                };
                let got = layer_budgets(&s, &dims, 100, Some(&profile)).unwrap();
                assert!(got.iter().all(|&x| x >= 100), "{method} B={b}: {got:?}");
            }
        }
    }

    #[test]
    fn bulk_repayment_equals_one_token_at_a_time() {
        // A large shortfall repaid in whole passes must land where single passes do.
        let e = [0.5, 0.3, 0.2, 0.0];
        let mut bulk = vec![40, 40, 40, 40];
        repay(&mut bulk, &e, 10_000, 32, 3_000);
        let mut single = vec![40, 40, 40, 40];
        let mut high_first: Vec<usize> = (0..4).collect();
        high_first.sort_by(|&a, &b| e[b].total_cmp(&e[a]).then(a.cmp(&b)));
        while single.iter().sum::<usize>() < 10_000 {
            let mut short = 10_000 - single.iter().sum::<usize>();
            let mut moved = false;
            for &l in &high_first {
                if short > 0 && single[l] < 3_000 {
                    single[l] += 1;
                    short -= 1;
                    moved = true;
                }
            }
            if !moved {
                break;
            }
        }
        assert_eq!(bulk, single);
        assert_eq!(bulk.iter().sum::<usize>(), 10_000);
        let mut over = vec![3_000, 3_000, 3_000, 3_000];
        repay(&mut over, &e, 1_000, 32, 3_000);
        assert_eq!(over.iter().sum::<usize>(), 1_000);
        assert!(over.iter().all(|&x| x >= 32));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn error_aware_meets_total_within_bounds(
            raw in proptest::collection::vec(0.0f64..1.0, 1..40),
            budget in 1usize..400,
            window in 1usize..64,
        ) {
            let window = window.min(budget);
            let n = raw.len();
            let errors = crate::profile_format::l1_normalise(&raw);
            let b = error_aware(n, budget, window, errors.as_deref());
            prop_assert_eq!(b.iter().sum::<usize>(), budget * n);
            let floor = MIN_TOKENS.min(budget).max(window);
            prop_assert!(b.iter().all(|&x| x >= floor && x <= 3 * budget));
        }

        #[test]
        fn pyramid_budgets_hold_the_window(
            n in 1usize..40,
            budget in 1usize..400,
            window in 1usize..64,
            len in 1usize..1000,
            beta in 1usize..40,
        ) {
            let window = window.min(budget);
            let b = pyramid(n, budget, window, len, beta);
            prop_assert_eq!(b.len(), n);
            prop_assert!(b.iter().all(|&x| x >= window.min(len)));
            // Linear in depth: non-increasing, or non-decreasing once the clamp made
            // the step negative.
            let up = b.windows(2).all(|p| p[0] <= p[1]);
            let down = b.windows(2).all(|p| p[0] >= p[1]);
            prop_assert!(up || down);
        }
    }
}
