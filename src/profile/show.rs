//! `kvscope profile show`: a profile as a terminal summary (plain text, so it can be
//! piped and tested).

use std::fmt::Write;

use crate::profile_format::{rank_best_first, Profile};

/// Full blocks of the widest layer-error bar.
const BAR_WIDTH: usize = 40;

/// The summary: provenance, each layer's top `k` SRHs next to its top `k` retrieval
/// heads and their overlap, and the layer errors as a bar chart.
pub fn render(p: &Profile, k: usize) -> String {
    let mut s = String::new();
    let m = &p.model;
    let _ = writeln!(
        s,
        "model: {} ({} layers, {} heads / {} KV heads, head_dim {}), sha256 {}",
        m.arch, m.n_layers, m.n_heads, m.n_kv_heads, m.head_dim, m.sha256
    );
    let pv = &p.provenance;
    let _ = writeln!(
        s,
        "measured by kvscope {}: {}\ntrials counted: {}",
        pv.kvscope_version, pv.command, pv.trials_counted
    );
    let k = k.clamp(1, m.n_heads.max(1));
    let _ = writeln!(
        s,
        "\nlayer  top {k} SRHs (score)                       top {k} retrieval heads (score)        overlap"
    );
    let mut overlap_total = 0;
    for (l, ranking) in p.srh_ranking.iter().enumerate() {
        let srh = &ranking[..k.min(ranking.len())];
        let scores = p.srh_scores.get(l).map(Vec::as_slice).unwrap_or(&[]);
        let rscores = p.retrieval_scores.get(l).map(Vec::as_slice).unwrap_or(&[]);
        // A head that never had top-1 attention on a copied token is no retrieval head,
        // however the zeros happen to rank.
        let rtop: Vec<usize> = rank_best_first(rscores)
            .into_iter()
            .filter(|&h| rscores.get(h).is_some_and(|&x| x > 0.0))
            .take(k)
            .collect();
        let fmt = |heads: &[usize], sc: &[f64]| {
            if heads.is_empty() {
                return "-".to_string();
            }
            heads
                .iter()
                .map(|&h| format!("h{h} {:.3}", sc.get(h).copied().unwrap_or(0.0)))
                .collect::<Vec<_>>()
                .join("  ")
        };
        let overlap = srh.iter().filter(|h| rtop.contains(h)).count();
        overlap_total += overlap;
        let _ = writeln!(
            s,
            "L{l:<4} {:<42} {:<38} {overlap}/{k}",
            fmt(srh, scores),
            fmt(&rtop, rscores)
        );
    }
    let n = p.srh_ranking.len().max(1);
    let _ = writeln!(
        s,
        "SRHs that are also top-{k} retrieval heads (score > 0): {overlap_total} of {} ({:.0}%)",
        n * k,
        100.0 * overlap_total as f64 / (n * k) as f64
    );
    match &p.layer_errors {
        None => {
            let _ = writeln!(
                s,
                "\nlayer errors: none (SRH-only profile; run `kvscope profile layers`)"
            );
        }
        Some(errs) => {
            let _ = writeln!(s, "\nlayer eviction error (L1-normalised)");
            let max = errs.iter().cloned().fold(0.0f64, f64::max);
            for (l, &e) in errs.iter().enumerate() {
                let _ = writeln!(s, "L{l:<4} {:<w$} {e:.4}", bar(e, max), w = BAR_WIDTH);
            }
        }
    }
    s
}

/// A horizontal bar of `v / max` of [`BAR_WIDTH`] cells, in eighth-blocks.
fn bar(v: f64, max: f64) -> String {
    if !max.is_finite() || max <= 0.0 || !v.is_finite() || v <= 0.0 {
        return String::new();
    }
    let eighths = ((v / max) * (BAR_WIDTH * 8) as f64).round() as usize;
    let mut b = "█".repeat(eighths / 8);
    const PART: [&str; 8] = ["", "▏", "▎", "▍", "▌", "▋", "▊", "▉"];
    b.push_str(PART[eighths % 8]);
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile_format::{Fingerprint, Provenance, FORMAT_VERSION};

    #[test]
    fn shows_srhs_overlap_and_bars() {
        let p = Profile {
            format_version: FORMAT_VERSION,
            model: Fingerprint {
                arch: "llama".into(),
                n_layers: 2,
                n_heads: 3,
                n_kv_heads: 1,
                head_dim: 4,
                sha256: "ab".repeat(32),
            },
            srh_scores: vec![vec![0.1, 0.5, 0.2], vec![0.0, 0.0, 0.3]],
            srh_ranking: vec![vec![1, 2, 0], vec![2, 0, 1]],
            retrieval_scores: vec![vec![0.0, 1.0, 0.0], vec![0.5, 0.4, 0.0]],
            layer_errors: Some(vec![0.25, 0.75]),
            provenance: Provenance {
                command: "kvscope profile srh".into(),
                settings: serde_json::Value::Null,
                trials_counted: 7,
                kvscope_version: "0.1.0".into(),
            },
        };
        let out = render(&p, 2);
        assert!(out.contains("trials counted: 7"), "{out}");
        assert!(out.contains("h1 0.500  h2 0.200"), "{out}");
        // Layer 0: SRHs {1,2}, retrieval heads {1} (zeros are not retrieval heads):
        // overlap 1; layer 1: {2,0} vs {0,1}: 1.
        assert!(out.contains("h1 1.000  "), "{out}");
        assert!(!out.contains("h1 1.000  h0 0.000"), "{out}");
        assert!(out.contains("1/2"), "{out}");
        assert!(out.contains("2 of 4 (50%)"), "{out}");
        assert!(out.contains(&"█".repeat(BAR_WIDTH)), "{out}");
        // 0.25 / 0.75 of 40 cells = 13 cells and 3 eighths.
        assert!(
            out.contains(&format!("L0    {} ", "█".repeat(13) + "▍")),
            "{out}"
        );
        assert!(out.contains("0.2500") && out.contains("0.7500"), "{out}");
        let srh_only = Profile {
            layer_errors: None,
            ..p
        };
        assert!(render(&srh_only, 4).contains("SRH-only profile"));
    }

    #[test]
    fn bar_handles_zero_and_nan() {
        assert_eq!(bar(0.0, 1.0), "");
        assert_eq!(bar(1.0, 0.0), "");
        assert_eq!(bar(f64::NAN, 1.0), "");
        assert_eq!(bar(1.0, 1.0).chars().count(), BAR_WIDTH);
    }
}
