//! Per-head statistics of one prompt for the head map, computed once on the worker from
//! the Trace's column sums.
//!
//! Definitions. For query head `h` of layer `l`, let `c[j]` be the attention key `j`
//! received summed over all `L` prompt query rows (`Trace::col_sums`). Every row sums to
//! 1, so `sum c = L` and `a[j] = c[j] / L` is the head's average attention distribution
//! over keys. Then:
//! - `sink`: mass on the first 4 tokens, `sum a[0..4]`;
//! - `recent`: mass on the last 64 tokens, `sum a[L-64..L]` (the whole prompt if shorter);
//! - `middle`: the rest, `1 - sink - recent` (what retrieval has to find);
//! - `entropy`: Shannon entropy of `a`, divided by `ln L` so it lies in [0, 1]
//!   (0: one key takes everything; 1: flat).
//!
//! Early query rows can only see early keys, so `sink` is inflated for every head; the
//! map compares heads with each other, which this bias does not change.

use crate::trace::Trace;

pub const SINK_TOKENS: usize = 4;
pub const RECENT_TOKENS: usize = 64;

/// The statistics the head map can colour by, in the order the cycle key walks them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stat {
    /// SRH score from the profile (only offered when a profile is loaded).
    Srh,
    Sink,
    Recent,
    Middle,
    Entropy,
    /// Attention mass lost to eviction at the Divergence pane's step (from the
    /// outcome's divergence analysis; offered once there is one).
    LostMass,
}

impl Stat {
    /// The live statistics, indexing `Snapshot::stats`.
    pub const LIVE: [Stat; 4] = [Stat::Sink, Stat::Recent, Stat::Middle, Stat::Entropy];

    pub fn name(self) -> &'static str {
        match self {
            Stat::Srh => "SRH score (profile)",
            Stat::Sink => "mass on first 4 tokens",
            Stat::Recent => "mass on last 64 tokens",
            Stat::Middle => "mass on the middle",
            Stat::Entropy => "entropy / ln L",
            Stat::LostMass => "lost mass at the divergence step",
        }
    }

    /// Index into `Snapshot::stats` (None for the profile's SRH score).
    pub fn live_index(self) -> Option<usize> {
        Stat::LIVE.iter().position(|&s| s == self)
    }
}

/// `[stat][layer][head]` for [`Stat::LIVE`].
pub fn head_stats(trace: &Trace) -> Vec<Vec<Vec<f32>>> {
    let d = &trace.dims;
    let per_head: Vec<Vec<[f32; 4]>> = (0..d.n_layers)
        .map(|l| {
            (0..d.n_heads)
                .map(|h| one_head(trace.col_sums(l, h)))
                .collect()
        })
        .collect();
    (0..Stat::LIVE.len())
        .map(|k| {
            per_head
                .iter()
                .map(|layer| layer.iter().map(|s| s[k]).collect())
                .collect()
        })
        .collect()
}

/// `[sink, recent, middle, entropy]` of one head's column sums.
pub fn one_head(c: &[f32]) -> [f32; 4] {
    let len = c.len();
    let total: f64 = c.iter().map(|&x| x as f64).sum();
    if len == 0 || total <= 0.0 {
        return [0.0; 4];
    }
    let a = |j: usize| c[j] as f64 / total;
    let sink_end = SINK_TOKENS.min(len);
    let recent_start = len.saturating_sub(RECENT_TOKENS).max(sink_end);
    let sink: f64 = (0..sink_end).map(a).sum();
    let recent: f64 = (recent_start..len).map(a).sum();
    let middle = (1.0 - sink - recent).max(0.0);
    let h: f64 = (0..len)
        .map(a)
        .filter(|&p| p > 0.0)
        .map(|p| -p * p.ln())
        .sum();
    let entropy = if len > 1 { h / (len as f64).ln() } else { 0.0 };
    [sink as f32, recent as f32, middle as f32, entropy as f32]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masses_split_the_prompt_and_entropy_is_normalised() {
        // 100 keys: 2 on the sink, 1 on each of the others.
        let mut c = vec![1f32; 100];
        c[0] = 2.0;
        let [sink, recent, middle, ent] = one_head(&c);
        let total = 101.0;
        assert!((sink - 5.0 / total).abs() < 1e-6);
        assert!((recent - 64.0 / total).abs() < 1e-6);
        assert!((middle - 32.0 / total).abs() < 1e-6);
        assert!(ent > 0.99 && ent <= 1.0);
        let mut peak = vec![0f32; 10];
        peak[3] = 10.0;
        assert_eq!(one_head(&peak), [1.0, 0.0, 0.0, 0.0]);
        assert_eq!(one_head(&[]), [0.0; 4]);
    }

    #[test]
    fn short_prompts_do_not_double_count() {
        // 10 keys: the first 4 are the sink, the other 6 are the recent window.
        let [sink, recent, middle, _] = one_head(&[1.0; 10]);
        assert!((sink - 0.4).abs() < 1e-6 && (recent - 0.6).abs() < 1e-6);
        assert_eq!(middle, 0.0);
    }
}
