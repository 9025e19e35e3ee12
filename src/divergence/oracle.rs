//! `oracle` (METHOD.md): the upper bound of a one-shot selection at a given budget. It
//! keeps, per KV head, the prompt entries that received the most full-cache attention
//! during THIS generation (teacher-forced steps), so it looks at the future and is a
//! reference line, not a deployable method. Pure: the attention comes from the
//! divergence engine ([`super::FullPass`]).

use crate::eviction::scores::top_k;
use crate::keepset::KeepSet;

/// `[layer][kv_head][pos]`: for prompt positions `pos < prefix`, the attention summed
/// over the steps and over the query heads of the KV group. `attn` is
/// `[step][layer][head][pos]`.
pub fn scores(
    attn: &[Vec<Vec<Vec<f32>>>],
    n_layers: usize,
    n_kv: usize,
    n_rep: usize,
    prefix: usize,
) -> Vec<Vec<Vec<f32>>> {
    let mut out = vec![vec![vec![0f32; prefix]; n_kv]; n_layers];
    for step in attn {
        for (l, heads) in step.iter().enumerate().take(n_layers) {
            for (h, row) in heads.iter().enumerate() {
                let acc = &mut out[l][(h / n_rep).min(n_kv - 1)];
                for (a, &x) in acc.iter_mut().zip(row) {
                    *a += x;
                }
            }
        }
    }
    out
}

/// The oracle's keep set for `len` prompt tokens, window `window` and the per-layer
/// budgets `budgets` (tokens per KV head, as the allocator gave them): per KV head, the
/// top `B_l - w` oracle scores plus the window; a layer with `B_l >= len` keeps all.
pub fn select(scores: &[Vec<Vec<f32>>], budgets: &[usize], len: usize, window: usize) -> KeepSet {
    let window = window.min(len);
    let positions = scores
        .iter()
        .zip(budgets)
        .map(|(heads, &b)| {
            heads
                .iter()
                .map(|s| {
                    if b >= len {
                        return (0..len).collect();
                    }
                    let mut keep = top_k(s, b.saturating_sub(window));
                    keep.extend(len - window..len);
                    keep
                })
                .collect()
        })
        .collect();
    KeepSet { positions }
}

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
    fn keeps_the_top_of_summed_decode_attention_per_kv_head() {
        // Two steps, one layer, two query heads in one KV group, 6 prompt positions,
        // window 2: candidates [0, 4).
        let step1 = vec![vec![
            vec![0.1, 0.0, 0.5, 0.0, 0.2, 0.2],
            vec![0.0, 0.3, 0.1, 0.0, 0.3, 0.3],
        ]];
        let step2 = vec![vec![
            vec![0.0, 0.0, 0.0, 0.6, 0.2, 0.2],
            vec![0.4, 0.0, 0.0, 0.0, 0.3, 0.3],
        ]];
        let s = scores(&[step1, step2], 1, 1, 2, 4);
        // Sums: [0.5, 0.3, 0.6, 0.6].
        let want = [0.5f32, 0.3, 0.6, 0.6];
        for (a, b) in s[0][0].iter().zip(want) {
            assert!((a - b).abs() < 1e-6);
        }
        // Budget 4 = 2 choices + window: 2 and 3 (ties to the lower position).
        let k = select(&s, &[4], 6, 2);
        assert_eq!(k.positions, vec![vec![vec![2, 3, 4, 5]]]);
        // Budget 3: only position 2.
        assert_eq!(select(&s, &[3], 6, 2).positions, vec![vec![vec![2, 4, 5]]]);
        // Budget >= len keeps all.
        assert_eq!(
            select(&s, &[6], 6, 2).positions[0][0],
            vec![0, 1, 2, 3, 4, 5]
        );
    }

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
