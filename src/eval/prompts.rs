//! Evaluation prompts and their expected answers. A prompt `NAME.txt` is evaluated when
//! a sidecar sits beside it:
//! - `NAME.json`: `{"answer": "...", "kind": "...", "must_include": ["..."],
//!   "full_cache_correct": true, "note": "..."}`; only `answer` is required.
//!   `must_include` lists the strings the exact score requires (default: the answer);
//!   `full_cache_correct` records whether the default model's full cache answers it
//!   (a prompt it fails is kept and labelled, not hidden).
//! - `NAME.answer`: the answer as plain text (kind `unknown`), the older format.
//!
//! Prompts without a sidecar (e.g. `capital-france.txt`) are demos and are skipped.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Sidecar {
    pub answer: String,
    #[serde(default = "unknown")]
    pub kind: String,
    #[serde(default)]
    pub must_include: Vec<String>,
    #[serde(default)]
    pub full_cache_correct: Option<bool>,
    #[serde(default)]
    pub note: Option<String>,
}

fn unknown() -> String {
    "unknown".into()
}

#[derive(Debug, Clone, PartialEq)]
pub struct EvalPrompt {
    pub name: String,
    pub path: PathBuf,
    pub sidecar: Sidecar,
}

/// The sidecar of `prompt`, if it has one.
pub fn sidecar_for(prompt: &Path) -> Result<Option<Sidecar>> {
    let json = prompt.with_extension("json");
    if json.exists() {
        let text = crate::input::read_text(&json, "sidecar", crate::input::MAX_SMALL_FILE_BYTES)?;
        let s: Sidecar = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a sidecar (expected {{\"answer\": \"...\", \"kind\": \"...\"}})",
                json.display()
            )
        })?;
        if s.answer.trim().is_empty() {
            bail!("{}: \"answer\" is empty", json.display());
        }
        return Ok(Some(s));
    }
    let plain = prompt.with_extension("answer");
    if plain.exists() {
        let answer =
            crate::input::read_text(&plain, "answer file", crate::input::MAX_SMALL_FILE_BYTES)?
                .trim()
                .to_string();
        if answer.is_empty() {
            bail!("{} is empty", plain.display());
        }
        return Ok(Some(Sidecar {
            answer,
            kind: unknown(),
            must_include: Vec::new(),
            full_cache_correct: None,
            note: None,
        }));
    }
    Ok(None)
}

fn name_of(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

/// Expands the paths given (prompt files or folders) into evaluation prompts. A folder
/// contributes its `.txt` files that have a sidecar, sorted by name; a file named
/// explicitly must have one.
pub fn collect(paths: &[PathBuf]) -> Result<Vec<EvalPrompt>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("cannot list {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.is_file() && f.extension().is_some_and(|e| e == "txt"))
                .collect();
            files.sort();
            for f in files {
                if let Some(sidecar) = sidecar_for(&f)? {
                    out.push(EvalPrompt {
                        name: name_of(&f),
                        path: f,
                        sidecar,
                    });
                }
            }
        } else if p.is_file() {
            let sidecar = sidecar_for(p)?.with_context(|| {
                format!(
                    "{} has no expected answer: write {} or {}",
                    p.display(),
                    p.with_extension("json").display(),
                    p.with_extension("answer").display()
                )
            })?;
            out.push(EvalPrompt {
                name: name_of(p),
                path: p.clone(),
                sidecar,
            });
        } else {
            bail!("{} is neither a prompt file nor a folder", p.display());
        }
    }
    if out.is_empty() {
        bail!("no evaluation prompts found (a prompt NAME.txt needs NAME.json or NAME.answer beside it)");
    }
    let mut names = std::collections::HashSet::new();
    if let Some(dup) = out.iter().find(|e| !names.insert(e.name.clone())) {
        bail!(
            "two prompts are named '{}'; results are keyed by name",
            dup.name
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_prompts_with_sidecars_only() {
        let d = crate::testing::temp_dir("prompts");
        std::fs::write(d.join("a.txt"), "q a").unwrap();
        std::fs::write(d.join("a.json"), r#"{"answer": "42", "kind": "needle"}"#).unwrap();
        std::fs::write(d.join("b.txt"), "q b").unwrap();
        std::fs::write(d.join("b.answer"), " 7\n").unwrap();
        std::fs::write(d.join("c.txt"), "no sidecar").unwrap();
        let v = collect(std::slice::from_ref(&d)).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(
            (v[0].name.as_str(), v[0].sidecar.kind.as_str()),
            ("a", "needle")
        );
        assert_eq!(
            (v[1].sidecar.answer.as_str(), v[1].sidecar.kind.as_str()),
            ("7", "unknown")
        );
        let e = collect(&[d.join("c.txt")]).unwrap_err().to_string();
        assert!(e.contains("no expected answer"), "{e}");
        std::fs::write(d.join("a.json"), r#"{"kind": "needle"}"#).unwrap();
        assert!(collect(std::slice::from_ref(&d)).is_err());
        assert!(collect(&[d.join("missing")]).is_err());
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn the_shipped_sample_prompts_have_valid_sidecars() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("sample-prompts");
        let v = collect(&[dir]).unwrap();
        assert!(v.len() >= 9, "{}", v.len());
        for p in &v {
            let text = std::fs::read_to_string(&p.path).unwrap();
            for m in &p.sidecar.must_include {
                assert!(!m.trim().is_empty(), "{}", p.name);
            }
            assert!(!text.trim().is_empty());
        }
    }
}
