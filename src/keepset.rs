//! Which prompt positions each layer's KV heads keep after eviction.

use crate::trace::{Dims, Trace};
use anyhow::{bail, Result};

/// `positions[layer][kv_head]` = sorted, unique prompt positions kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeepSet {
    pub positions: Vec<Vec<Vec<usize>>>,
}

impl KeepSet {
    /// Keep every prompt position in every layer and head.
    pub fn all(dims: &Dims, len: usize) -> Self {
        KeepSet {
            positions: vec![vec![(0..len).collect(); dims.n_kv_heads]; dims.n_layers],
        }
    }

    /// Kept entries summed over KV heads, per layer.
    pub fn kept_per_layer(&self) -> Vec<usize> {
        self.positions
            .iter()
            .map(|l| l.iter().map(|h| h.len()).sum())
            .collect()
    }

    /// Checks the shape against the model and that positions are sorted, unique, in range.
    pub fn validate(&self, dims: &Dims, len: usize) -> Result<()> {
        if self.positions.len() != dims.n_layers {
            bail!(
                "keep set has {} layers, model has {}",
                self.positions.len(),
                dims.n_layers
            );
        }
        for (l, layer) in self.positions.iter().enumerate() {
            if layer.len() != dims.n_kv_heads {
                bail!(
                    "keep set layer {l} has {} KV heads, model has {}",
                    layer.len(),
                    dims.n_kv_heads
                );
            }
            for (g, pos) in layer.iter().enumerate() {
                if pos.windows(2).any(|w| w[0] >= w[1]) {
                    bail!("keep set layer {l} head {g}: positions not sorted and unique");
                }
                if let Some(&p) = pos.last() {
                    if p >= len {
                        bail!("keep set layer {l} head {g}: position {p} >= prompt length {len}");
                    }
                }
            }
        }
        Ok(())
    }
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
