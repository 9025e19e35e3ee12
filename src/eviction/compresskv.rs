//! compresskv (the seed paper): the token score of a layer is the mean of `p_h` over
//! that layer's Semantic Retrieval Heads (the top `first_k` of the profile's ranking),
//! and ONE index set per layer is chosen and kept by every KV head. Its per-layer
//! budgets come from the error-aware allocator ([`super::budget::error_aware`]).

use super::layer::{per_layer, with_window};
use super::scores::{mean_head_scores, top_k, KERNEL, POOLING};
use super::types::field;
use super::types::{
    Allocator, Input, Knob, KnobKind, KnobValue, LayerChoice, Method, MethodDef, Picked,
    ScoreTable, Settings,
};
use crate::trace::Dims;
use crate::trace::Trace;
use anyhow::Result;

/// Registry entry.
pub const DEF: MethodDef = MethodDef::new(
    "compresskv",
    "one index set per layer from its semantic retrieval heads; error-aware budgets",
    Allocator::ErrorAware,
    pick,
)
.with_knobs(&[&KERNEL, &POOLING, &FIRST_K])
.with_profile(
    "compresskv needs an offline profile (SRH ranking and layer errors): pass one with \
         --profile FILE, or make one with `kvscope profile srh` then `kvscope profile layers`",
)
.sharing_positions();

/// This method's handle.
pub const METHOD: Method = Method::of(&DEF);

/// `first_k`: SRHs per layer.
pub const FIRST_K: Knob = Knob::new(
    "first_k",
    "first-k",
    "CompressKV: SRH query heads per layer.",
    KnobKind::Int {
        min: 1,
        max: i64::MAX,
    },
    |_| KnobValue::Int(4),
    field!(first_k),
)
.checked(check_first_k);

/// Only compresskv reads first-k, so only it is held to the model's head count: the
/// default 4 must not stop snapkv on a model with 2 heads.
fn check_first_k(s: &Settings, dims: &Dims, v: &KnobValue) -> anyhow::Result<()> {
    let k = v.as_i64().unwrap_or(0);
    if k < 1 || (s.method == METHOD && k as usize > dims.n_heads) {
        anyhow::bail!(
            "first-k must be between 1 and the model's {} query heads per layer; got {k}",
            dims.n_heads
        );
    }
    Ok(())
}

fn pick(i: &Input) -> Result<Picked> {
    // The registry checked that the profile is there before calling.
    let Some(p) = i.profile else {
        anyhow::bail!(
            "{}",
            DEF.needs_profile.unwrap_or("compresskv needs a profile")
        );
    };
    Ok(per_layer(i, |layer, b| {
        let heads = p.srh_heads(layer, i.settings.first_k);
        select_layer(i.trace, layer, b, i.settings, heads, i.table)
    }))
}

/// One layer that evicts (`L > budget`); `srh` are the layer's SRH query heads.
pub fn select_layer(
    trace: &Trace,
    layer: usize,
    budget: usize,
    settings: &Settings,
    srh: &[usize],
    table: Option<&ScoreTable>,
) -> LayerChoice {
    let scores = mean_head_scores(trace, layer, srh, settings, table);
    let keep = with_window(
        top_k(&scores, budget - settings.window),
        trace.len,
        settings.window,
    );
    let n_kv = trace.dims.n_kv_heads;
    LayerChoice {
        keep: vec![keep; n_kv],
        scores: vec![scores; n_kv],
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::{select, Request};
    use super::*;
    use crate::profile_format::Profile;

    /// KV 0 keys by a = [4,1,2,1,..], KV 1 by b = [1,1,1,5,..]; heads 0 (q=1) and
    /// 1 (q=0) read KV 0, heads 2 (q=0) and 3 (q=1) read KV 1. With w=2, kernel 1:
    /// p_0 = [76, 19, 38, 19]/90, p_1 = p_2 = 33/90 each, p_3 = [19, 19, 19, 95]/90.
    fn trace() -> Trace {
        ratio_trace(
            &[
                &[4.0, 1.0, 2.0, 1.0, 1.0, 1.0],
                &[1.0, 1.0, 1.0, 5.0, 1.0, 1.0],
            ],
            &[1.0, 0.0, 0.0, 1.0],
        )
    }

    fn profile(ranking: Vec<usize>, t: &Trace) -> Profile {
        let mut p = random_profile(t.dims, 1);
        p.srh_ranking = vec![ranking];
        p
    }

    fn settings(first_k: usize) -> Settings {
        Settings {
            method: crate::eviction::compresskv::METHOD,
            budget: 4,
            window: 2,
            kernel: 1,
            first_k,
            ..Settings::default()
        }
    }

    #[test]
    fn srh_heads_choose_one_set_for_every_kv_head() {
        // SRHs 0 and 3: mean [95, 38, 57, 114]/180 -> positions 3 and 0, for both KV
        // heads (snapkv would keep [0,2] for KV 0 and [0,3] for KV 1).
        let t = trace();
        let sel =
            select(&Request::new(&t, &settings(2)).profile(Some(&profile(vec![0, 3, 1, 2], &t))))
                .unwrap();
        assert_eq!(sel.keep.positions, vec![vec![vec![0, 3, 4, 5]; 2]]);
        let want = [95.0f32, 38.0, 57.0, 114.0].map(|x| x / 180.0);
        for s in &sel.scores[0] {
            assert!(s.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6));
        }
    }

    #[test]
    fn first_k_limits_the_heads() {
        // Only head 0: [0, 2] for both KV heads.
        let t = trace();
        let sel =
            select(&Request::new(&t, &settings(1)).profile(Some(&profile(vec![0, 3, 1, 2], &t))))
                .unwrap();
        assert_eq!(sel.keep.positions, vec![vec![vec![0, 2, 4, 5]; 2]]);
        // Only head 3: [3] then the three-way tie goes to 0.
        let sel =
            select(&Request::new(&t, &settings(1)).profile(Some(&profile(vec![3, 0, 1, 2], &t))))
                .unwrap();
        assert_eq!(sel.keep.positions, vec![vec![vec![0, 3, 4, 5]; 2]]);
    }

    #[test]
    fn budgets_come_from_the_profile_layer_errors() {
        let dims = dims(3, 2, 1, 4);
        let t = random_trace(dims, 200, 5);
        let mut p = random_profile(dims, 2);
        // B=40, T=120, floor 32, rest 24: [44, 38, 38].
        p.layer_errors = Some(vec![0.5, 0.25, 0.25]);
        let s = Settings {
            method: crate::eviction::compresskv::METHOD,
            budget: 40,
            first_k: 1,
            ..Settings::default()
        };
        let sel = select(&Request::new(&t, &s).profile(Some(&p))).unwrap();
        assert_eq!(sel.layer_budgets, vec![44, 38, 38]);
        assert_eq!(sel.keep.kept_per_layer(), vec![44, 38, 38]);
        // An SRH-only profile: every layer gets B.
        p.layer_errors = None;
        let sel = select(&Request::new(&t, &s).profile(Some(&p))).unwrap();
        assert_eq!(sel.layer_budgets, vec![40; 3]);
    }

    #[test]
    fn profile_of_another_shape_is_rejected() {
        let t = trace();
        let mut p = profile(vec![0, 3, 1, 2], &t);
        p.model.n_heads = 8;
        assert!(select(&Request::new(&t, &settings(1)).profile(Some(&p))).is_err());
    }
}
