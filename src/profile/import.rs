//! Importing the reference implementation's published profiles (METHOD-MORE.md,
//! "Import"): a head-ranking file (`{"0": [22, 4, ...], ...}`: per layer index, every
//! query head best first) and a layer-score file (one JSON object with per-dataset
//! lists and `avg_score`, the list the allocator uses).
//!
//! kvscope's profile wants SRH scores too; an imported profile has only the ranking,
//! so its scores are derived from it (`(n_heads - rank) / n_heads`, so that ranking by
//! score gives the file's order back) and its retrieval scores are zero. The
//! provenance says so.

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::profile_format::is_permutation;
use crate::profile_format::{l1_normalise, Fingerprint, Profile, Provenance, FORMAT_VERSION};
use crate::trace::Dims;

/// The head file's rankings, checked against the model's shape.
pub fn parse_heads(text: &str, dims: &Dims) -> Result<Vec<Vec<usize>>> {
    let v: Value = serde_json::from_str(text).context(
        "the head file is not JSON (expected an object: layer index -> list of query heads)",
    )?;
    let obj = v
        .as_object()
        .context("the head file is not a JSON object of layer index -> list of query heads")?;
    let mut layers: Vec<Option<Vec<usize>>> = vec![None; dims.n_layers];
    for (k, heads) in obj {
        let l: usize = k
            .trim()
            .parse()
            .with_context(|| format!("the head file's key '{k}' is not a layer index"))?;
        if l >= dims.n_layers {
            bail!(
                "the head file has layer {l}, the model has {} layers (0..{})",
                dims.n_layers,
                dims.n_layers - 1
            );
        }
        let list: Vec<usize> = serde_json::from_value(heads.clone())
            .with_context(|| format!("the head file's layer {l} is not a list of head indices"))?;
        if !is_permutation(&list, dims.n_heads) {
            bail!(
                "the head file's layer {l} lists {} heads, not each of the model's {} query heads once",
                list.len(),
                dims.n_heads
            );
        }
        layers[l] = Some(list);
    }
    if let Some(missing) = layers.iter().position(Option::is_none) {
        bail!(
            "the head file has no layer {missing} (the model has {} layers)",
            dims.n_layers
        );
    }
    Ok(layers.into_iter().flatten().collect())
}

/// The layer-score file's `avg_score`, checked and L1-normalised.
pub fn parse_layer_scores(text: &str, dims: &Dims) -> Result<Vec<f64>> {
    // Named .jsonl but one object; take the first non-empty line if the whole text is
    // not one JSON value.
    let v: Value = serde_json::from_str(text)
        .or_else(|_| {
            let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            serde_json::from_str(line)
        })
        .context("the layer-score file is not JSON (expected one object with \"avg_score\")")?;
    let avg = v
        .get("avg_score")
        .context("the layer-score file has no \"avg_score\" list")?;
    let avg: Vec<f64> = serde_json::from_value(avg.clone())
        .context("the layer-score file's \"avg_score\" is not a list of numbers")?;
    if avg.len() != dims.n_layers {
        bail!(
            "the layer-score file's avg_score has {} layers, the model has {}",
            avg.len(),
            dims.n_layers
        );
    }
    if let Some((l, x)) = avg
        .iter()
        .enumerate()
        .find(|(_, x)| !x.is_finite() || **x < 0.0)
    {
        bail!("the layer-score file's avg_score[{l}] is {x}; scores must be finite and >= 0");
    }
    l1_normalise(&avg).context("the layer-score file's avg_score is all zero")
}

/// A profile from the two files' texts for a model of shape `dims`.
pub fn import(
    heads: &str,
    layer_scores: &str,
    model: Fingerprint,
    dims: &Dims,
    source: serde_json::Value,
    command: String,
) -> Result<Profile> {
    let ranking = parse_heads(heads, dims)?;
    let errors = parse_layer_scores(layer_scores, dims)?;
    let n = dims.n_heads as f64;
    let srh_scores: Vec<Vec<f64>> = ranking
        .iter()
        .map(|r| {
            let mut s = vec![0.0; r.len()];
            for (rank, &h) in r.iter().enumerate() {
                s[h] = (n - rank as f64) / n;
            }
            s
        })
        .collect();
    Ok(Profile {
        format_version: FORMAT_VERSION,
        model,
        srh_ranking: ranking,
        retrieval_scores: vec![vec![0.0; dims.n_heads]; dims.n_layers],
        srh_scores,
        layer_errors: Some(errors),
        provenance: Provenance {
            command,
            settings: serde_json::json!({
                "imported": {
                    "source": source,
                    "srh_scores": "derived from the head file's ranking: (n_heads - rank) / n_heads",
                    "retrieval_scores": "not in the source: zero",
                    "layer_errors": "avg_score, L1-normalised",
                }
            }),
            trials_counted: 0,
            kvscope_version: env!("CARGO_PKG_VERSION").into(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIMS: Dims = Dims {
        n_layers: 2,
        n_heads: 3,
        n_kv_heads: 1,
        head_dim: 4,
    };

    fn fp() -> Fingerprint {
        Fingerprint {
            arch: "llama".into(),
            n_layers: 2,
            n_heads: 3,
            n_kv_heads: 1,
            head_dim: 4,
            sha256: "0".repeat(64),
        }
    }

    const HEADS: &str = r#"{"0": [2, 0, 1], "1": [1, 2, 0]}"#;
    const SCORES: &str = r#"{"narrativeqa": [0.5, 0.5], "avg_score": [1.0, 3.0]}"#;

    #[test]
    fn imports_the_ranking_and_avg_score() {
        let p = import(
            HEADS,
            SCORES,
            fp(),
            &DIMS,
            serde_json::json!({}),
            "t".into(),
        )
        .unwrap();
        p.validate(&DIMS, None).unwrap();
        assert_eq!(p.srh_ranking, vec![vec![2, 0, 1], vec![1, 2, 0]]);
        // Ranking the derived scores gives the file's order back.
        for (s, r) in p.srh_scores.iter().zip(&p.srh_ranking) {
            assert_eq!(&crate::profile_format::rank_best_first(s), r);
        }
        assert_eq!(p.layer_errors, Some(vec![0.25, 0.75]));
        assert!(p.provenance.settings["imported"].is_object());
        // The .jsonl form: one object on its line, then an empty line.
        let jsonl = format!("{SCORES}\n\n");
        assert_eq!(parse_layer_scores(&jsonl, &DIMS).unwrap(), vec![0.25, 0.75]);
    }

    fn heads_err(text: &str) -> String {
        parse_heads(text, &DIMS).unwrap_err().to_string()
    }

    #[test]
    fn shape_errors_name_what_differs() {
        assert!(heads_err(r#"{"0": [2, 0, 1]}"#).contains("has no layer 1"));
        assert!(
            heads_err(r#"{"0": [2, 0, 1], "1": [1, 2, 0], "2": [0, 1, 2]}"#)
                .contains("has layer 2, the model has 2 layers")
        );
        assert!(heads_err(r#"{"0": [2, 0, 1, 3], "1": [1, 2, 0]}"#)
            .contains("layer 0 lists 4 heads, not each of the model's 3"));
        assert!(heads_err(r#"{"0": [0, 0, 1], "1": [1, 2, 0]}"#).contains("layer 0 lists 3 heads"));
        assert!(heads_err(r#"{"x": [0, 1, 2]}"#).contains("'x' is not a layer index"));
        assert!(heads_err("[1, 2]").contains("not a JSON object"));
        let e = parse_layer_scores(r#"{"avg_score": [1.0, 2.0, 3.0]}"#, &DIMS).unwrap_err();
        assert!(
            e.to_string()
                .contains("avg_score has 3 layers, the model has 2"),
            "{e}"
        );
        let e = parse_layer_scores(r#"{"qasper": [1.0, 2.0]}"#, &DIMS).unwrap_err();
        assert!(e.to_string().contains("no \"avg_score\""), "{e}");
        let e = parse_layer_scores(r#"{"avg_score": [-1.0, 2.0]}"#, &DIMS).unwrap_err();
        assert!(e.to_string().contains("avg_score[0] is -1"), "{e}");
        assert_eq!(heads_err(r#"{"0": [2, 0, 1]}"#).lines().count(), 1);
    }
}
