//! The offline-profile file format (METHOD.md, "The offline profile"): per-head SRH and
//! retrieval scores and per-layer eviction errors, measured once per model and stored as
//! JSON.
//!
//! This module owns the format, its validation against a model, and atomic saving; it
//! sits on the eviction floor because eviction reads profiles. Measuring one (SRH trials,
//! layer errors) is an analysis and lives in [`crate::profile`], above the session.
//! A profile only makes sense for the model it was measured on, so it carries that
//! model's fingerprint and [`Profile::validate`] refuses any other model.

use crate::trace::Dims;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The `format_version` this kvscope writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// How far the layer errors' sum may be from 1 (they are stored as decimal text, and a
/// hand-edited file rounds them).
const SUM_TOLERANCE: f64 = 1e-3;

/// The model a profile was measured on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub arch: String,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// sha256 of the model file, lowercase hex.
    pub sha256: String,
}

/// How a profile was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// The command line that measured it.
    pub command: String,
    /// The measurement settings, free-form.
    pub settings: serde_json::Value,
    /// Needle trials that retrieved the answer and so counted towards the SRH scores.
    pub trials_counted: usize,
    pub kvscope_version: String,
}

/// The profile file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub format_version: u32,
    pub model: Fingerprint,
    /// `[layer][head]`: mean attention mass on the needle's answer span (METHOD.md).
    pub srh_scores: Vec<Vec<f64>>,
    /// `[layer]`: that layer's query heads, best SRH first. CompressKV reads its SRHs
    /// from here.
    pub srh_ranking: Vec<Vec<usize>>,
    /// `[layer][head]`: classic (exact-copy) retrieval-head scores, for comparison.
    pub retrieval_scores: Vec<Vec<f64>>,
    /// `[layer]`: eviction error, L1-normalised (sums to 1). Absent (`null`) in a
    /// profile that has SRH scores only (`kvscope profile srh`); the error-aware
    /// allocator then gives every layer the same budget.
    #[serde(default)]
    pub layer_errors: Option<Vec<f64>>,
    pub provenance: Provenance,
}

impl Profile {
    /// Reads a profile file and checks its format version. Does not check it against a
    /// model: call [`Profile::validate`] once the model is known.
    pub fn load(path: impl AsRef<Path>) -> Result<Profile> {
        let path = path.as_ref();
        let text = crate::input::read_text(path, "profile", crate::input::MAX_PROFILE_BYTES)?;
        let profile: Profile = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a kvscope profile", path.display()))?;
        profile
            .check_version()
            .with_context(|| format!("profile {}", path.display()))?;
        Ok(profile)
    }

    /// Writes the profile as pretty JSON through [`crate::output::write_atomic`]: a crash
    /// never leaves a half-written profile, and a target that is not a regular file (a
    /// device, a FIFO) is refused, never replaced.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let json = serde_json::to_string_pretty(self).context("cannot encode profile")?;
        crate::output::write_atomic(path, "profile", (json + "\n").as_bytes())?;
        Ok(())
    }

    /// Checks the profile belongs to a model of shape `dims` (and, when given, the model
    /// file with that sha256) and that its contents are usable: shapes match, every
    /// number is finite, every ranking is a permutation of the heads, layer errors are
    /// non-negative and sum to 1.
    ///
    /// The architecture name is not checked here (`Dims` does not carry it); the sha256
    /// pins the exact file when the caller knows it.
    pub fn validate(&self, dims: &Dims, model_sha256: Option<&str>) -> Result<()> {
        self.check_version()?;
        let m = &self.model;
        let fields = [
            ("n_layers", m.n_layers, dims.n_layers),
            ("n_heads", m.n_heads, dims.n_heads),
            ("n_kv_heads", m.n_kv_heads, dims.n_kv_heads),
            ("head_dim", m.head_dim, dims.head_dim),
        ];
        for (name, theirs, ours) in fields {
            if theirs != ours {
                bail!(
                    "profile was measured on another model: its {name} is {theirs}, this model's is {ours}"
                );
            }
        }
        if let Some(sha) = model_sha256 {
            if !m.sha256.eq_ignore_ascii_case(sha.trim()) {
                bail!(
                    "profile was measured on another model file: its sha256 is {}, this model's is {}",
                    m.sha256,
                    sha
                );
            }
        }
        check_matrix("srh_scores", &self.srh_scores, dims)?;
        check_matrix("retrieval_scores", &self.retrieval_scores, dims)?;
        if self.srh_ranking.len() != dims.n_layers {
            bail!(
                "profile srh_ranking has {} layers, the model has {}",
                self.srh_ranking.len(),
                dims.n_layers
            );
        }
        for (l, ranking) in self.srh_ranking.iter().enumerate() {
            if !is_permutation(ranking, dims.n_heads) {
                bail!(
                    "profile srh_ranking for layer {l} is not an ordering of the heads 0-{}: {ranking:?}",
                    dims.n_heads.saturating_sub(1)
                );
            }
        }
        if let Some(errors) = &self.layer_errors {
            if errors.len() != dims.n_layers {
                bail!(
                    "profile layer_errors has {} entries, the model has {} layers",
                    errors.len(),
                    dims.n_layers
                );
            }
        }
        self.check_layer_errors()
    }

    /// The layer errors' own rules (finite, >= 0, summing to 1), which need no model:
    /// `run` refuses a profile that breaks them, `profile show` warns.
    pub fn check_layer_errors(&self) -> Result<()> {
        if let Some(errors) = &self.layer_errors {
            if let Some((l, e)) = errors
                .iter()
                .enumerate()
                .find(|(_, e)| !e.is_finite() || **e < 0.0)
            {
                bail!("profile layer_errors[{l}] is {e}; layer errors must be finite and >= 0");
            }
            let sum: f64 = errors.iter().sum();
            if (sum - 1.0).abs() > SUM_TOLERANCE {
                bail!("profile layer_errors sum to {sum}; they must be L1-normalised (sum to 1)");
            }
        }
        Ok(())
    }

    /// The first `k` SRHs of `layer`, best first (fewer if the layer has fewer heads,
    /// none if the layer does not exist).
    pub fn srh_heads(&self, layer: usize, k: usize) -> &[usize] {
        self.srh_ranking
            .get(layer)
            .map(|r| &r[..k.min(r.len())])
            .unwrap_or(&[])
    }

    fn check_version(&self) -> Result<()> {
        if self.format_version != FORMAT_VERSION {
            bail!(
                "profile format version {} is not supported (this kvscope reads version {FORMAT_VERSION}); \
                 measure it again with `kvscope profile`",
                self.format_version
            );
        }
        Ok(())
    }
}

/// Heads of one layer ordered best first: higher score, then lower head index, so equal
/// scores give a stable ranking. NaN ranks last.
pub fn rank_best_first(scores: &[f64]) -> Vec<usize> {
    let key = |s: f64| if s.is_nan() { f64::NEG_INFINITY } else { s };
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| key(scores[b]).total_cmp(&key(scores[a])).then(a.cmp(&b)));
    idx
}

/// `v / sum(v)`; `None` when the sum is not a positive finite number (nothing to
/// normalise).
pub fn l1_normalise(v: &[f64]) -> Option<Vec<f64>> {
    let sum: f64 = v.iter().map(|x| x.abs()).sum();
    (sum.is_finite() && sum > 0.0).then(|| v.iter().map(|x| x / sum).collect())
}

fn check_matrix(name: &str, m: &[Vec<f64>], dims: &Dims) -> Result<()> {
    if m.len() != dims.n_layers {
        bail!(
            "profile {name} has {} layers, the model has {}",
            m.len(),
            dims.n_layers
        );
    }
    for (l, row) in m.iter().enumerate() {
        if row.len() != dims.n_heads {
            bail!(
                "profile {name} layer {l} has {} heads, the model has {}",
                row.len(),
                dims.n_heads
            );
        }
        if let Some((h, x)) = row.iter().enumerate().find(|(_, x)| !x.is_finite()) {
            bail!("profile {name}[{l}][{h}] is {x}; scores must be finite numbers");
        }
    }
    Ok(())
}

pub(crate) fn is_permutation(ranking: &[usize], n: usize) -> bool {
    let mut seen = vec![false; n];
    ranking.len() == n
        && ranking
            .iter()
            .all(|&h| h < n && !std::mem::replace(&mut seen[h], true))
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
    const SHA: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

    fn valid() -> Profile {
        Profile {
            format_version: FORMAT_VERSION,
            model: Fingerprint {
                arch: "llama".into(),
                n_layers: 2,
                n_heads: 3,
                n_kv_heads: 1,
                head_dim: 4,
                sha256: SHA.into(),
            },
            srh_scores: vec![vec![0.1, 0.5, 0.2], vec![0.0, 0.0, 0.3]],
            srh_ranking: vec![vec![1, 2, 0], vec![2, 0, 1]],
            retrieval_scores: vec![vec![0.0, 1.0, 0.0], vec![0.5, 0.5, 0.0]],
            layer_errors: Some(vec![0.25, 0.75]),
            provenance: Provenance {
                command: "kvscope profile srh".into(),
                settings: serde_json::json!({"trials": 4}),
                trials_counted: 3,
                kvscope_version: "0.1.0".into(),
            },
        }
    }

    fn rejects(p: Profile, needle: &str) {
        let err = p.validate(&DIMS, Some(SHA)).unwrap_err().to_string();
        assert!(err.contains(needle), "expected '{needle}' in: {err}");
    }

    #[test]
    fn valid_profile_passes() {
        valid().validate(&DIMS, Some(SHA)).unwrap();
        valid().validate(&DIMS, None).unwrap();
        valid().validate(&DIMS, Some(&SHA.to_uppercase())).unwrap();
        let srh_only = Profile {
            layer_errors: None,
            ..valid()
        };
        srh_only.validate(&DIMS, Some(SHA)).unwrap();
    }

    #[test]
    fn rejects_another_model_naming_the_field() {
        for (dims, field) in [
            (
                Dims {
                    n_layers: 3,
                    ..DIMS
                },
                "n_layers is 2, this model's is 3",
            ),
            (Dims { n_heads: 6, ..DIMS }, "n_heads is 3"),
            (
                Dims {
                    n_kv_heads: 3,
                    ..DIMS
                },
                "n_kv_heads is 1",
            ),
            (
                Dims {
                    head_dim: 8,
                    ..DIMS
                },
                "head_dim is 4",
            ),
        ] {
            let err = valid().validate(&dims, None).unwrap_err().to_string();
            assert!(
                err.contains("another model") && err.contains(field),
                "{err}"
            );
        }
        let err = valid()
            .validate(&DIMS, Some(&"a".repeat(64)))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("another model file") && err.contains("sha256"),
            "{err}"
        );
    }

    #[test]
    fn rejects_wrong_shapes() {
        let mut p = valid();
        p.srh_scores.pop();
        rejects(p, "srh_scores has 1 layers");
        let mut p = valid();
        p.srh_scores[1].push(0.0);
        rejects(p, "srh_scores layer 1 has 4 heads");
        let mut p = valid();
        p.retrieval_scores[0].pop();
        rejects(p, "retrieval_scores layer 0 has 2 heads");
        let mut p = valid();
        p.srh_ranking.push(vec![0, 1, 2]);
        rejects(p, "srh_ranking has 3 layers");
        let mut p = valid();
        p.layer_errors = Some(vec![1.0]);
        rejects(p, "layer_errors has 1 entries");
        // Issue 22 item 20: the real head range (3 heads: 0-2), not one past it.
        let mut p = valid();
        p.srh_ranking[0] = vec![0, 1, 3];
        rejects(p, "not an ordering of the heads 0-2");
    }

    #[test]
    fn rejects_non_finite_scores() {
        let mut p = valid();
        p.srh_scores[0][2] = f64::NAN;
        rejects(p, "srh_scores[0][2] is NaN");
        let mut p = valid();
        p.retrieval_scores[1][0] = f64::INFINITY;
        rejects(p, "retrieval_scores[1][0] is inf");
        let mut p = valid();
        p.layer_errors = Some(vec![f64::NAN, 0.75]);
        rejects(p, "layer_errors[0] is NaN");
    }

    #[test]
    fn rejects_ranking_that_is_not_a_permutation() {
        for bad in [vec![1, 1, 0], vec![0, 1, 3], vec![0, 1], vec![0, 1, 2, 0]] {
            let mut p = valid();
            p.srh_ranking[1] = bad;
            rejects(p, "srh_ranking for layer 1 is not an ordering");
        }
    }

    #[test]
    fn rejects_bad_layer_errors() {
        let mut p = valid();
        p.layer_errors = Some(vec![-0.25, 1.25]);
        rejects(p, "layer_errors[0] is -0.25");
        let mut p = valid();
        p.layer_errors = Some(vec![0.5, 0.6]);
        rejects(p, "sum to 1.1");
        let mut p = valid();
        p.layer_errors = Some(vec![0.0, 0.0]);
        rejects(p, "sum to 0");
        // Rounding in a hand-edited file is tolerated.
        let mut p = valid();
        p.layer_errors = Some(vec![0.3333, 0.6666]);
        p.validate(&DIMS, None).unwrap();
    }

    #[test]
    fn rejects_other_format_version() {
        let mut p = valid();
        p.format_version = 2;
        rejects(p, "format version 2 is not supported");
    }

    fn temp_dir(tag: &str) -> std::path::PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "kvscope-profile-{tag}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn save_then_load_round_trips_and_leaves_no_temp_file() {
        let dir = temp_dir("roundtrip");
        let path = dir.join("p.json");
        valid().save(&path).unwrap();
        // Saving again replaces the file.
        let mut p = valid();
        p.provenance.trials_counted = 9;
        p.save(&path).unwrap();
        let back = Profile::load(&path).unwrap();
        assert_eq!(back, p);
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("p.json")]);
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for key in [
            "format_version",
            "model",
            "srh_scores",
            "srh_ranking",
            "retrieval_scores",
            "layer_errors",
            "provenance",
        ] {
            assert!(json.get(key).is_some(), "missing {key}");
        }
        assert_eq!(json["model"]["sha256"], SHA);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn load_errors_name_the_file() {
        let dir = temp_dir("load");
        let missing = dir.join("missing.json");
        let err = format!("{:#}", Profile::load(&missing).unwrap_err());
        assert!(
            err.contains("cannot read profile") && err.contains("missing.json"),
            "{err}"
        );
        let garbage = dir.join("garbage.json");
        std::fs::write(&garbage, "{\"format_version\": 1}").unwrap();
        let err = format!("{:#}", Profile::load(&garbage).unwrap_err());
        assert!(
            err.contains("garbage.json is not a kvscope profile"),
            "{err}"
        );
        let old = dir.join("old.json");
        let mut p = valid();
        p.format_version = 0;
        std::fs::write(&old, serde_json::to_string(&p).unwrap()).unwrap();
        let err = format!("{:#}", Profile::load(&old).unwrap_err());
        assert!(err.contains("format version 0"), "{err}");
        // A profile without layer_errors loads (SRH-only profile).
        let srh_only = dir.join("srh.json");
        let mut v = serde_json::to_value(valid()).unwrap();
        v.as_object_mut().unwrap().remove("layer_errors");
        std::fs::write(&srh_only, v.to_string()).unwrap();
        assert_eq!(Profile::load(&srh_only).unwrap().layer_errors, None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn srh_heads_and_helpers() {
        let p = valid();
        assert_eq!(p.srh_heads(0, 2), &[1, 2]);
        assert_eq!(p.srh_heads(1, 9), &[2, 0, 1]);
        assert!(p.srh_heads(5, 2).is_empty());
        assert_eq!(
            rank_best_first(&[0.2, 0.5, 0.2, f64::NAN]),
            vec![1, 0, 2, 3]
        );
        assert_eq!(l1_normalise(&[1.0, 3.0]), Some(vec![0.25, 0.75]));
        assert_eq!(l1_normalise(&[0.0, 0.0]), None);
    }
}
