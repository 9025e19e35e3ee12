//! full: keep every prompt token. The reference every other method is compared with.

use crate::keepset::KeepSet;
use crate::trace::Trace;

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
