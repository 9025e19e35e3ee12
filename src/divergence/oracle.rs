//! Distance from `oracle` (METHOD.md): how much of the oracle's choice a keep set holds.
//! The oracle's selection itself is the registry method [`crate::eviction::oracle`].

use crate::keepset::KeepSet;

/// Fraction of the oracle's choices (kept entries outside the window, over every layer
/// and KV head) that `keep` also holds; 1 when the oracle chose nothing.
pub fn overlap(keep: &KeepSet, oracle: &KeepSet, len: usize, window: usize) -> f64 {
    let prefix = len.saturating_sub(window);
    let (mut both, mut total) = (0usize, 0usize);
    for (kl, ol) in keep.positions.iter().zip(&oracle.positions) {
        for (k, o) in kl.iter().zip(ol) {
            for p in o.iter().filter(|&&p| p < prefix) {
                total += 1;
                both += usize::from(k.binary_search(p).is_ok());
            }
        }
    }
    if total == 0 {
        1.0
    } else {
        both as f64 / total as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_counts_only_choices_outside_the_window() {
        let o = KeepSet {
            positions: vec![vec![vec![2, 3, 4, 5]]],
        };
        let k = KeepSet {
            positions: vec![vec![vec![0, 3, 4, 5]]],
        };
        assert!((overlap(&k, &o, 6, 2) - 0.5).abs() < 1e-12);
        assert_eq!(overlap(&o, &o, 6, 2), 1.0);
    }
}
