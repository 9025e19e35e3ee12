//! full: keep every prompt token. The reference every other method is compared with.

use super::types::{Allocator, Input, Keeps, LayerChoice, Method, MethodDef, Picked};
use crate::keepset::KeepSet;
use crate::trace::Trace;
use anyhow::Result;

/// Registry entry.
pub const DEF: MethodDef = MethodDef::new(
    "full",
    "keep every token (the reference the others are measured against)",
    Allocator::Uniform,
    pick,
)
.sharing_positions()
.without_scores()
.keeping(Keeps::All);

/// This method's handle.
pub const METHOD: Method = Method::of(&DEF);

fn pick(i: &Input) -> Result<Picked> {
    let d = i.trace.dims;
    Ok(Picked {
        layers: select(i.trace)
            .positions
            .into_iter()
            .map(|keep| LayerChoice {
                keep,
                scores: Vec::new(),
            })
            .collect(),
        budgets: Some(vec![i.trace.len; d.n_layers]),
    })
}

pub fn select(trace: &Trace) -> KeepSet {
    KeepSet::all(&trace.dims, trace.len)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::ratio_trace;
    use super::*;

    #[test]
    fn keeps_all_positions_of_every_kv_head() {
        let t = ratio_trace(&[&[1.0; 5], &[2.0; 5]], &[1.0, 1.0]);
        let k = select(&t);
        assert_eq!(k.positions, vec![vec![vec![0, 1, 2, 3, 4]; 2]]);
    }
}
