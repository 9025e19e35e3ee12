//! pyramidkv: snapkv's per-KV-head scores and selection; what differs is the per-layer
//! budget, which falls linearly with depth ([`super::budget::pyramid`], the method's
//! default allocator). So a layer's selection is snapkv's at that layer's budget.

use super::registry::{per_layer, Input, Keeps, MethodDef, Picked};
use super::scores::ScoreTable;
use super::scores::{KERNEL, POOLING};
use super::Allocator;
use super::{snapkv, LayerChoice, Settings};
use crate::trace::Trace;
use anyhow::Result;

/// Registry entry.
pub const DEF: MethodDef = MethodDef {
    name: "pyramidkv",
    about: "snapkv's score with budgets falling linearly with depth",
    knobs: &[&KERNEL, &POOLING],
    default_allocator: Allocator::Pyramid,
    needs_profile: None,
    needs_future: false,
    shared_positions: false,
    has_scores: true,
    keeps: Keeps::EveryHead,
    select: pick,
};

fn pick(i: &Input) -> Result<Picked> {
    Ok(per_layer(i, |layer, b| {
        select_layer(i.trace, layer, b, i.settings, i.table)
    }))
}

/// One layer that evicts (`L > budget`), at the budget the pyramid gave it.
pub fn select_layer(
    trace: &Trace,
    layer: usize,
    budget: usize,
    settings: &Settings,
    table: Option<&ScoreTable>,
) -> LayerChoice {
    snapkv::select_layer(trace, layer, budget, settings, table)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::random_trace;
    use super::super::{select, Method, Settings};
    use crate::trace::Dims;

    #[test]
    fn layers_keep_the_pyramid_budgets() {
        // n=4, B=10, w=2, L=40: c=8, min=0, max=16, step=16//3=5 -> B = [18, 13, 8, 3].
        let dims = Dims {
            n_layers: 4,
            n_heads: 2,
            n_kv_heads: 1,
            head_dim: 4,
        };
        let t = random_trace(dims, 40, 7);
        let s = Settings {
            method: Method::PyramidKv,
            budget: 10,
            window: 2,
            ..Settings::default()
        };
        let sel = select(&t, &s, None).unwrap();
        assert_eq!(sel.layer_budgets, vec![18, 13, 8, 3]);
        assert_eq!(sel.keep.kept_per_layer(), vec![18, 13, 8, 3]);
        // Same as snapkv at those budgets.
        let snap = Settings {
            method: Method::SnapKv,
            layer_budgets: Some(vec![18, 13, 8, 3]),
            ..s
        };
        assert_eq!(select(&t, &snap, None).unwrap().keep, sel.keep);
    }
}
