//! snapkv: per KV head, the mean of the pooled window scores `p_h` of its query heads;
//! each KV head keeps its own top `B - w` plus the window.

use super::layer::{per_head, per_head_top};
use super::scores::{mean_head_scores, KERNEL, POOLING};
use super::types::{
    Allocator, Input, LayerChoice, Method, MethodDef, Picked, ScoreTable, Settings,
};
use crate::trace::Trace;
use anyhow::Result;

/// Registry entry.
pub const DEF: MethodDef = MethodDef::new(
    "snapkv",
    "observation-window attention, pooled; each KV head keeps its own top-k",
    Allocator::Uniform,
    pick,
)
.with_knobs(&[&KERNEL, &POOLING]);

/// This method's handle.
pub const METHOD: Method = Method::of(&DEF);

pub(crate) fn pick(i: &Input) -> Result<Picked> {
    Ok(per_head(i, scorer))
}

/// snapkv's score as a [`super::types::Scorer`]: what adakv and headkv wrap by default.
pub fn scorer(i: &Input, layer: usize) -> Vec<Vec<f32>> {
    kv_head_scores(i.trace, layer, i.settings, i.table)
}

/// One layer that evicts (`L > budget`).
pub fn select_layer(
    trace: &Trace,
    layer: usize,
    budget: usize,
    settings: &Settings,
    table: Option<&ScoreTable>,
) -> LayerChoice {
    per_head_top(
        kv_head_scores(trace, layer, settings, table),
        trace.len,
        budget,
        settings.window,
    )
}

/// `[kv_head][pos]`: mean of `p_h` over the query heads `h` with `h / n_rep == g`.
pub fn kv_head_scores(
    trace: &Trace,
    layer: usize,
    settings: &Settings,
    table: Option<&ScoreTable>,
) -> Vec<Vec<f32>> {
    let n_rep = trace.dims.n_rep();
    (0..trace.dims.n_kv_heads)
        .map(|g| {
            let group: Vec<usize> = (g * n_rep..(g + 1) * n_rep).collect();
            mean_head_scores(trace, layer, &group, settings, table)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::Pooling;
    use super::*;

    fn settings(kernel: usize) -> Settings {
        Settings {
            window: 2,
            kernel,
            ..Settings::default()
        }
    }

    #[test]
    fn pooling_changes_the_choice() {
        // s = a * 19/90 with a = [4, 1, 2, 1] (see scores::tests). Kernel 1 keeps the
        // two largest, positions 0 and 2. Kernel 3 (avg): [95, 133, 76, 57] / 270, so
        // positions 1 and 0.
        let t = ratio_trace(&[&[4.0, 1.0, 2.0, 1.0, 1.0, 1.0]], &[1.0]);
        assert_eq!(
            select_layer(&t, 0, 4, &settings(1), None).keep,
            vec![vec![0, 2, 4, 5]]
        );
        let c = select_layer(&t, 0, 4, &settings(3), None);
        assert_eq!(c.keep, vec![vec![0, 1, 4, 5]]);
        let want = [95.0f32, 133.0, 76.0, 57.0].map(|x| x / 270.0);
        assert!(c.scores[0]
            .iter()
            .zip(want)
            .all(|(a, b)| (a - b).abs() < 1e-6));
        // Max pool, kernel 3: [76, 76, 38, 38] / 90: tie at 76 -> 0, 1.
        let s = Settings {
            pooling: Pooling::Max,
            ..settings(3)
        };
        assert_eq!(
            select_layer(&t, 0, 4, &s, None).keep,
            vec![vec![0, 1, 4, 5]]
        );
    }

    #[test]
    fn gqa_groups_and_ties() {
        // KV 0 (heads 0 q=1, 1 q=0): mean [109, 52, 71, 52] / 180 -> 0, 2.
        // KV 1 (heads 2 q=0, 3 q=1, keys b = [1,1,1,5,..]): [52, 52, 52, 128] / 180 ->
        // 3, then the three-way tie goes to position 0.
        let t = ratio_trace(
            &[
                &[4.0, 1.0, 2.0, 1.0, 1.0, 1.0],
                &[1.0, 1.0, 1.0, 5.0, 1.0, 1.0],
            ],
            &[1.0, 0.0, 0.0, 1.0],
        );
        let c = select_layer(&t, 0, 4, &settings(1), None);
        assert_eq!(c.keep, vec![vec![0, 2, 4, 5], vec![0, 3, 4, 5]]);
    }

    #[test]
    fn window_larger_than_what_is_evicted() {
        // L=6, B=5, w=4: one of [0, 2) is kept, the larger: a = [1, 3, ...] -> 1.
        let t = ratio_trace(&[&[1.0, 3.0, 1.0, 1.0, 1.0, 1.0]], &[1.0]);
        let s = Settings {
            window: 4,
            kernel: 1,
            ..Settings::default()
        };
        assert_eq!(
            select_layer(&t, 0, 5, &s, None).keep,
            vec![vec![1, 2, 3, 4, 5]]
        );
    }
}
