//! The observation-window score of the SnapKV family (METHOD.md, "The observation-window
//! score") and top-k selection.

use super::types::field;
use super::types::{Knob, KnobKind, KnobValue, Pooling, ScoreTable, Settings};
use crate::trace::{Dims, Trace};
use rayon::prelude::*;
use std::cmp::Ordering;
use std::sync::Arc;

/// `kernel`: the pooling kernel (odd), shared by every method that pools the window score.
pub const KERNEL: Knob = Knob::new(
    "kernel",
    "kernel",
    "Pooling kernel (odd) of the observation-window score.",
    KnobKind::Int {
        min: 1,
        max: i64::MAX,
    },
    |_| KnobValue::Int(5),
    field!(kernel),
)
.checked(check_kernel)
.stepping(2.0);

fn check_kernel(_: &Settings, _: &Dims, v: &KnobValue) -> anyhow::Result<()> {
    let k = v.as_i64().unwrap_or(0);
    if k < 1 || k % 2 == 0 {
        anyhow::bail!(
            "kernel must be an odd number >= 1 (pooling pads k/2 on each side, so an even \
             kernel would shift the scores); got {k}"
        );
    }
    Ok(())
}

/// `pooling`: how the window score is smoothed (avg or max).
pub const POOLING: Knob = Knob::new(
    "pooling",
    "pooling",
    "Pooling of the observation-window score.",
    KnobKind::Choice(&["avg", "max"]),
    |_| KnobValue::Text("avg".into()),
    field!(pooling),
);

/// Steps 1-3: attention the last `window` prompt rows of query head `head` put on each
/// position of `[0, L - window)`, summed over the rows.
///
/// Needs `1 <= window < L` and `window <= trace.w_max`; `select` guarantees both for any
/// layer that evicts.
pub fn window_attention(trace: &Trace, layer: usize, head: usize, window: usize) -> Vec<f32> {
    let prefix = trace.len - window;
    let mut sums = vec![0f32; prefix];
    window_rows(trace, layer, head, window, |_, row| {
        for (s, p) in sums.iter_mut().zip(row.iter()) {
            *s += p;
        }
    });
    sums
}

/// Steps 1-2: calls `f(i, row)` for each of the last `window` prompt rows of query head
/// `head`, `row` being that row's softmax over the keys it sees (`L - window + i + 1` of
/// them; the prefix `[0, L - window)` comes first). Same conditions as
/// [`window_attention`].
pub fn window_rows(
    trace: &Trace,
    layer: usize,
    head: usize,
    window: usize,
    mut f: impl FnMut(usize, &[f32]),
) {
    let len = trace.len;
    let kv_head = head / trace.dims.n_rep();
    // Divide by sqrt(head_dim), as the reference does, rather than multiplying by its
    // reciprocal: the two round differently.
    let norm = (trace.dims.head_dim as f32).sqrt();
    let prefix = len - window;
    // All window rows against all keys in one small GEMM (keys are read once instead of
    // once per row); the causal cut is applied per row below.
    let hd = trace.dims.head_dim;
    let q0 = (head * trace.w_max + trace.w_max - window) * hd;
    let queries = &trace.layers[layer].q_last[q0..q0 + window * hd];
    let k0 = kv_head * len * hd;
    let keys = trace.layers[layer].k.f32s(k0, len * hd);
    let mut logits = vec![0f32; window * len];
    crate::model::kernels::matmul_strided(
        queries,
        hd,
        &keys,
        crate::model::kernels::BLayout::JRows(hd),
        &mut logits,
        len,
        window,
        hd,
        len,
    );
    // A sliding-window layer's row at position p sees only (p - S, p] (METHOD.md,
    // "Sliding-window layers"): the keys before that get probability 0, and the softmax
    // runs over the visible ones, as prefill computed it.
    let sliding = trace.window(layer);
    for i in 0..window {
        // Window row i sits at position prefix + i and sees every key up to itself.
        let visible = prefix + i + 1;
        let lo = sliding.map_or(0, |s| visible.saturating_sub(s));
        let row = &mut logits[i * len..i * len + visible];
        row[..lo].iter_mut().for_each(|v| *v = 0.0);
        for v in row[lo..].iter_mut() {
            *v /= norm;
        }
        crate::model::kernels::softmax(&mut row[lo..]);
        f(i, row);
    }
}

/// Step 4: smooth with a 1-D pool of odd size `kernel`, stride 1, zero padding
/// `kernel / 2` on both sides.
///
/// Average: always divides by `kernel`, so padding counts (positions near the ends are
/// pulled down). Max: the maximum over the in-range neighbours; the scores are
/// probabilities (>= 0), so padding with 0 or with -inf (as max-pool does) gives the same.
pub fn pool(scores: &[f32], kernel: usize, pooling: Pooling) -> Vec<f32> {
    let half = kernel / 2;
    let n = scores.len();
    (0..n)
        .map(|i| {
            let part = &scores[i.saturating_sub(half)..(i + half + 1).min(n)];
            match pooling {
                Pooling::Avg => part.iter().sum::<f32>() / kernel as f32,
                Pooling::Max => part.iter().copied().fold(f32::NEG_INFINITY, f32::max),
            }
        })
        .collect()
}

/// `p_h` of one query head: the pooled window score over `[0, L - w)`.
pub fn head_scores(trace: &Trace, layer: usize, head: usize, settings: &Settings) -> Vec<f32> {
    let s = window_attention(trace, layer, head, settings.window);
    pool(&s, settings.kernel, settings.pooling)
}

impl ScoreTable {
    pub fn compute(trace: &Trace, s: &Settings) -> Self {
        let d = trace.dims;
        let heads = if s.window == 0 || s.window >= trace.len || s.kernel == 0 {
            vec![vec![Vec::new(); d.n_heads]; d.n_layers]
        } else {
            (0..d.n_layers)
                .into_par_iter()
                .map(|l| {
                    (0..d.n_heads)
                        .map(|h| head_scores(trace, l, h, s))
                        .collect()
                })
                .collect()
        };
        ScoreTable {
            window: s.window,
            kernel: s.kernel,
            pooling: s.pooling,
            len: trace.len,
            heads: Arc::new(heads),
        }
    }

    /// The scores of `trace`'s sliding layers, read from `table` when it fits, computed
    /// otherwise, cut to positions `from..` and shaped as the table of the trace's tail
    /// `[from, L)` (global layers empty: computed on demand). The sliding layers' scores
    /// are thus the masked ones of the whole prompt, not recomputed over the tail alone.
    pub fn sliding_tail(
        trace: &Trace,
        s: &Settings,
        from: usize,
        table: Option<&ScoreTable>,
    ) -> Self {
        let d = trace.dims;
        let table = table.filter(|t| t.fits(trace.len, s));
        let n_pos = trace.len.saturating_sub(s.window);
        let heads = (0..d.n_layers)
            .map(|l| {
                (0..d.n_heads)
                    .map(|h| {
                        if trace.window(l).is_none() || n_pos <= from {
                            return Vec::new();
                        }
                        let pre = table
                            .and_then(|t| t.heads.get(l))
                            .and_then(|x| x.get(h))
                            .filter(|v| v.len() == n_pos);
                        match pre {
                            Some(v) => v[from..].to_vec(),
                            None => head_scores(trace, l, h, s)[from..].to_vec(),
                        }
                    })
                    .collect()
            })
            .collect();
        ScoreTable {
            window: s.window,
            kernel: s.kernel,
            pooling: s.pooling,
            len: trace.len - from.min(trace.len),
            heads: Arc::new(heads),
        }
    }

    /// A table stored earlier (the prefill cache's scores sidecar) as the one `s`
    /// computes on a trace of `len` tokens; the caller checked its shape.
    pub fn stored(len: usize, s: &Settings, heads: Vec<Vec<Vec<f32>>>) -> Self {
        ScoreTable {
            window: s.window,
            kernel: s.kernel,
            pooling: s.pooling,
            len,
            heads: Arc::new(heads),
        }
    }

    /// The window, kernel, pooling and prompt length the table was computed for.
    pub fn made_for(&self) -> (usize, usize, Pooling, usize) {
        (self.window, self.kernel, self.pooling, self.len)
    }

    /// Whether the table holds the scores `s` would compute on a trace of `len` tokens.
    pub fn fits(&self, len: usize, s: &Settings) -> bool {
        (self.window, self.kernel, self.pooling, self.len) == (s.window, s.kernel, s.pooling, len)
    }
}

/// Mean of `p_h` over `heads` (a KV head's query group, or a layer's SRHs), read from
/// `table` when it holds these settings' scores, computed otherwise.
pub fn mean_head_scores(
    trace: &Trace,
    layer: usize,
    heads: &[usize],
    settings: &Settings,
    table: Option<&ScoreTable>,
) -> Vec<f32> {
    let n_pos = trace.len - settings.window;
    let mut mean = vec![0f32; n_pos];
    let table = table.filter(|t| t.fits(trace.len, settings));
    for &h in heads {
        let pre = table
            .and_then(|t| t.heads.get(layer))
            .and_then(|l| l.get(h))
            .filter(|v| v.len() == n_pos);
        let computed;
        let p = match pre {
            Some(v) => v.as_slice(),
            None => {
                computed = head_scores(trace, layer, h, settings);
                computed.as_slice()
            }
        };
        for (m, x) in mean.iter_mut().zip(p) {
            *m += x;
        }
    }
    let n = heads.len().max(1) as f32;
    mean.iter_mut().for_each(|m| *m /= n);
    mean
}

/// Positions of the `k` largest scores, sorted ascending. Ties go to the lower
/// position; a NaN score ranks below every number.
pub fn top_k(scores: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    let k = k.min(idx.len());
    if k < idx.len() {
        // A total order (score, then position), so the partition is deterministic.
        idx.select_nth_unstable_by(k, |&a, &b| rank_order(scores[a], a, scores[b], b));
        idx.truncate(k);
    }
    idx.sort_unstable();
    idx
}

/// Best first: higher score, then lower position. NaN counts as -inf.
pub(crate) fn rank_order(sa: f32, a: usize, sb: f32, b: usize) -> Ordering {
    let key = |s: f32| if s.is_nan() { f32::NEG_INFINITY } else { s };
    key(sb).total_cmp(&key(sa)).then(a.cmp(&b))
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-6, "{a:?} vs {b:?}");
        }
    }

    /// Overwrites every query row before the last `keep` with a value that would change
    /// the scores, so a test fails if those rows are read.
    fn poison_early_rows(t: &mut Trace, keep: usize) {
        let (rows, d) = (t.w_max, t.dims.head_dim);
        for (i, x) in t.layers[0].q_last.iter_mut().enumerate() {
            if (i / d) % rows < rows - keep {
                *x = 50.0;
            }
        }
    }

    #[test]
    fn window_attention_by_hand() {
        // Attention proportional to a = [4,1,2,1,1,1]. Window rows sit at positions 4
        // and 5: row 0 sees a[0..=4] (sum 9), row 1 sees all six (sum 10). So
        // s_j = a_j * (1/9 + 1/10) = a_j * 19/90.
        let mut t = ratio_trace(&[&[4.0, 1.0, 2.0, 1.0, 1.0, 1.0]], &[1.0]);
        poison_early_rows(&mut t, 2);
        let s = window_attention(&t, 0, 0, 2);
        close(&s, &[76.0 / 90.0, 19.0 / 90.0, 38.0 / 90.0, 19.0 / 90.0]);
    }

    #[test]
    fn window_attention_is_causal_inside_the_window() {
        // A huge key at the last position: only the last window row may see it, so the
        // first row's attention on the prefix is unaffected and the second's is ~0.
        let t = ratio_trace(&[&[1.0, 1.0, 1.0, 1.0, 1e30]], &[1.0]);
        let s = window_attention(&t, 0, 0, 2);
        // Row 0 (position 3) sees 4 equal keys: 1/4 each; row 1 puts ~all on position 4.
        close(&s, &[0.25, 0.25, 0.25]);
    }

    #[test]
    fn uses_the_last_row_and_the_sqrt_head_dim_scale() {
        // head_dim 4: every key dim is ln(a_j) / 2 and q = 1, so q.k = 2 ln(a_j) and the
        // logit q.k / sqrt(4) = ln(a_j). Without the scale attention would follow a^2.
        let a = [3.0f32, 1.0, 1.0, 1.0];
        let mut t = ratio_trace_dim(&[&a], &[1.0], 4);
        poison_early_rows(&mut t, 1);
        let s = window_attention(&t, 0, 0, 1);
        // One window row at position 3 sees all keys: a / 6.
        close(&s, &[0.5, 1.0 / 6.0, 1.0 / 6.0]);
    }

    #[test]
    fn avg_pool_divides_by_kernel_at_the_edges() {
        let s = [1.0, 2.0, 3.0, 4.0, 5.0];
        close(&pool(&s, 5, Pooling::Avg), &[1.2, 2.0, 3.0, 2.8, 2.4]);
        close(&pool(&s, 3, Pooling::Avg), &[1.0, 2.0, 3.0, 4.0, 3.0]);
        close(&pool(&s, 1, Pooling::Avg), &s);
        // Shorter than the kernel: every output sees the whole input, still / 5.
        close(&pool(&[1.0, 2.0], 5, Pooling::Avg), &[0.6, 0.6]);
        assert!(pool(&[], 5, Pooling::Avg).is_empty());
    }

    #[test]
    fn max_pool_at_the_edges() {
        let s = [1.0, 5.0, 3.0, 0.0, 2.0];
        close(&pool(&s, 3, Pooling::Max), &[5.0, 5.0, 5.0, 3.0, 2.0]);
        close(&pool(&s, 5, Pooling::Max), &[5.0, 5.0, 5.0, 5.0, 3.0]);
        close(&pool(&s, 1, Pooling::Max), &s);
    }

    #[test]
    fn top_k_ties_go_to_lower_positions() {
        assert_eq!(top_k(&[1.0, 3.0, 3.0, 2.0, 3.0], 2), vec![1, 2]);
        assert_eq!(top_k(&[1.0, 3.0, 3.0, 2.0, 3.0], 4), vec![1, 2, 3, 4]);
        assert_eq!(top_k(&[2.0, 2.0, 2.0], 1), vec![0]);
        assert_eq!(top_k(&[0.0, 1.0, 0.0, 0.0], 2), vec![0, 1]);
        assert_eq!(top_k(&[f32::NAN, 0.0, -1.0], 1), vec![1]);
        assert_eq!(top_k(&[5.0, 4.0], 0), Vec::<usize>::new());
        assert_eq!(top_k(&[5.0, 4.0], 7), vec![0, 1]);
    }

    #[test]
    fn mean_over_heads() {
        // Head 0 attends by a, head 1 (q = 0) uniformly: 1/5 + 1/6 = 33/90 each.
        let t = ratio_trace(&[&[4.0, 1.0, 2.0, 1.0, 1.0, 1.0]], &[1.0, 0.0]);
        let s = Settings {
            window: 2,
            kernel: 1,
            ..Settings::default()
        };
        let m = mean_head_scores(&t, 0, &[0, 1], &s, None);
        close(
            &m,
            &[109.0 / 180.0, 52.0 / 180.0, 71.0 / 180.0, 52.0 / 180.0],
        );
    }
}
