//! knorm (Devoto et al. 2024; kvpress `KnormPress`), METHOD-MORE.md §2: a position's
//! score is minus the L2 norm of its key (low-norm keys draw attention). Each KV head
//! keeps its own top `B_l - w` plus the window; no pooling, no GQA reduction.
//!
//! Choices: kvpress has no window, kvscope keeps the last `w` like every method; layers
//! listed in `knorm_skip_layers` keep everything (l2compress skips layers 0 and 1).

use super::layer::{per_head_top, per_layer};
use super::types::field;
use super::types::{
    Allocator, Input, Knob, KnobKind, KnobValue, LayerChoice, Method, MethodDef, Picked,
};
use crate::trace::Trace;
use anyhow::Result;

/// Registry entry.
pub const DEF: MethodDef = MethodDef::new(
    "knorm",
    "lowest key L2 norm per KV head (kvpress KnormPress); needs no attention",
    Allocator::Uniform,
    pick,
)
.with_knobs(&[&SKIP_LAYERS]);

/// This method's handle.
pub const METHOD: Method = Method::of(&DEF);

/// `knorm_skip_layers`: layers that keep everything.
pub const SKIP_LAYERS: Knob = Knob::new(
    "knorm_skip_layers",
    "knorm-skip-layers",
    "knorm: layers that keep every token (a,b,...; l2compress skips 0,1).",
    KnobKind::Layers,
    |_| KnobValue::List(Vec::new()),
    field!(knorm_skip_layers),
)
.stepping(0.0);

fn pick(i: &Input) -> Result<Picked> {
    let skip: Vec<usize> = SKIP_LAYERS
        .get(i.settings)
        .as_list()
        .map(<[usize]>::to_vec)
        .unwrap_or_default();
    let len = i.trace.len;
    let n_kv = i.trace.dims.n_kv_heads;
    let mut picked = per_layer(i, |layer, b| {
        if skip.contains(&layer) {
            LayerChoice::keep_all(n_kv, len)
        } else {
            select_layer(i.trace, layer, b, i.settings.window)
        }
    });
    if !skip.is_empty() {
        // A skipped layer keeps all L: say so in its budget.
        let budgets = (0..i.budgets.len())
            .map(|l| {
                if skip.contains(&l) {
                    len.max(i.budgets[l])
                } else {
                    i.budgets[l]
                }
            })
            .collect();
        picked.budgets = Some(budgets);
    }
    Ok(picked)
}

/// One layer that evicts (`L > budget`).
pub fn select_layer(trace: &Trace, layer: usize, budget: usize, window: usize) -> LayerChoice {
    per_head_top(scores(trace, layer, window), trace.len, budget, window)
}

/// `-|k|` of every prefix position `[0, L - w)`, per KV head.
pub fn scores(trace: &Trace, layer: usize, window: usize) -> Vec<Vec<f32>> {
    let prefix = trace.len - window;
    (0..trace.dims.n_kv_heads)
        .map(|g| {
            let keys = trace.keys(layer, g);
            keys.chunks_exact(trace.dims.head_dim)
                .take(prefix)
                .map(|k| {
                    let sq: f64 = k.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
                    -(sq.sqrt() as f32)
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::{select, Method, Request, Settings};
    use super::*;
    use crate::trace::{Dims, KvStore};

    /// One KV head, head_dim 2, keys (3,4) (1,0) (0,2) (0,1) (9,9).
    fn trace(keys: &[[f32; 2]]) -> Trace {
        let dims = Dims {
            n_layers: 1,
            n_heads: 1,
            n_kv_heads: 1,
            head_dim: 2,
        };
        let mut t = random_trace(dims, keys.len(), 1);
        t.layers[0].k = KvStore::F32(keys.iter().flatten().copied().collect());
        t
    }

    const KEYS: [[f32; 2]; 5] = [[3.0, 4.0], [1.0, 0.0], [0.0, 2.0], [0.0, 1.0], [9.0, 9.0]];

    #[test]
    fn worked_example() {
        let t = trace(&KEYS);
        assert_eq!(scores(&t, 0, 1), vec![vec![-5.0, -1.0, -2.0, -1.0]]);
        for (b, want) in [(2, vec![1, 4]), (3, vec![1, 3, 4]), (4, vec![1, 2, 3, 4])] {
            assert_eq!(select_layer(&t, 0, b, 1).keep, vec![want], "B={b}");
        }
    }

    #[test]
    fn rope_rotation_changes_nothing() {
        let rotated: Vec<[f32; 2]> = KEYS
            .iter()
            .enumerate()
            .map(|(p, &[x, y])| {
                let a = 0.7 * p as f32;
                [x * a.cos() - y * a.sin(), x * a.sin() + y * a.cos()]
            })
            .collect();
        let (t, r) = (trace(&KEYS), trace(&rotated));
        for b in 2..5 {
            assert_eq!(
                select_layer(&t, 0, b, 1).keep,
                select_layer(&r, 0, b, 1).keep
            );
        }
    }

    #[test]
    fn skipped_layers_keep_everything() {
        let dims = Dims {
            n_layers: 3,
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 4,
        };
        let t = random_trace(dims, 20, 7);
        let mut s = Settings {
            method: Method::named("knorm").unwrap(),
            budget: 6,
            window: 2,
            ..Settings::default()
        };
        SKIP_LAYERS
            .set(&mut s, SKIP_LAYERS.parse("0,2").unwrap())
            .unwrap();
        let sel = select(&Request::new(&t, &s)).unwrap();
        assert_eq!(sel.keep.kept_per_layer(), vec![40, 12, 40]);
        assert_eq!(sel.layer_budgets, vec![20, 6, 20]);
        SKIP_LAYERS
            .set(&mut s, SKIP_LAYERS.parse("3").unwrap())
            .unwrap();
        let e = select(&Request::new(&t, &s)).unwrap_err().to_string();
        assert!(
            e.contains("lists layer 3; the model has layers 0 to 2"),
            "{e}"
        );
    }
}
