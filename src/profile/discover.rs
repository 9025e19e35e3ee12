//! Finding the profile that belongs to a model, so compresskv works without `--profile`.
//!
//! Candidates are the `*.json` files of, in order: `./profiles`, the `profiles/` folder
//! shipped in the kvscope source tree (beside the binary's crate), and the cache
//! (`$KVSCOPE_HOME/profiles`). The first whose fingerprint matches the model (shape,
//! architecture and the model file's sha256) wins; shipped profiles come before the
//! cache so a half-finished measurement of one's own (SRH only) does not silently
//! replace a complete shipped profile. `--profile` overrides the search.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

use crate::model::fetch;
use crate::model::Config;
use crate::profile_format::{Fingerprint, Profile};

/// sha256 of a model file: the real hash of its bytes. A file is hashed again only when
/// its size, mtime, ctime or inode changed since the last hash (a stamp remembers; see
/// [`fetch::model_sha256`]), so a changed byte is always seen and an unchanged model
/// costs one stat per start.
pub fn model_sha256(path: &Path) -> Result<String> {
    fetch::model_sha256(path)
}

/// The fingerprint a profile measured on this model carries.
pub fn fingerprint(config: &Config, sha256: &str) -> Fingerprint {
    Fingerprint {
        arch: config.arch.clone(),
        n_layers: config.n_layers,
        n_heads: config.n_heads,
        n_kv_heads: config.n_kv_heads,
        head_dim: config.head_dim,
        sha256: sha256.to_lowercase(),
    }
}

/// The folders searched for profiles, in order, without duplicates.
pub fn profile_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from("profiles")];
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles"));
    if let Ok(c) = fetch::cache_dir() {
        dirs.push(c.join("profiles"));
    }
    let mut seen = Vec::new();
    dirs.retain(|d| {
        let key = d.canonicalize().unwrap_or_else(|_| d.clone());
        if seen.contains(&key) {
            false
        } else {
            seen.push(key);
            true
        }
    });
    dirs
}

/// The readable profiles in `dirs`, folder by folder, each folder's `*.json` files in
/// name order. Files that are not readable profiles are skipped (a folder may hold
/// other JSON).
pub fn profiles_in(dirs: &[PathBuf]) -> impl Iterator<Item = (PathBuf, Profile)> + '_ {
    dirs.iter().flat_map(|dir| {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "json"))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
            .into_iter()
            .filter_map(|f| Profile::load(&f).ok().map(|p| (f, p)))
    })
}

/// The first profile in `dirs` measured on the model with fingerprint `fp`.
pub fn find_in(dirs: &[PathBuf], fp: &Fingerprint) -> Option<(PathBuf, Profile)> {
    profiles_in(dirs).find(|(_, p)| matches(p, fp))
}

fn matches(p: &Profile, fp: &Fingerprint) -> bool {
    let m = &p.model;
    m.arch == fp.arch
        && m.n_layers == fp.n_layers
        && m.n_heads == fp.n_heads
        && m.n_kv_heads == fp.n_kv_heads
        && m.head_dim == fp.head_dim
        && m.sha256.eq_ignore_ascii_case(&fp.sha256)
        && p.validate(&dims_of(fp), Some(&fp.sha256)).is_ok()
}

fn dims_of(fp: &Fingerprint) -> crate::trace::Dims {
    crate::trace::Dims {
        n_layers: fp.n_layers,
        n_heads: fp.n_heads,
        n_kv_heads: fp.n_kv_heads,
        head_dim: fp.head_dim,
    }
}

/// The profile a run uses: `explicit` (loaded and checked against the model, a mismatch
/// is an error), else the discovered one when `wanted`, else none.
pub fn resolve(
    explicit: Option<&Path>,
    model_path: &Path,
    config: &Config,
    wanted: bool,
) -> Result<Option<(PathBuf, Profile)>> {
    if explicit.is_none() && !wanted {
        return Ok(None);
    }
    let sha = model_sha256(model_path)
        .with_context(|| format!("cannot fingerprint model {}", model_path.display()))?;
    let fp = fingerprint(config, &sha);
    match explicit {
        Some(path) => {
            let p = Profile::load(path)?;
            if p.model.arch != fp.arch {
                bail!(
                    "profile {} was measured on a '{}' model, this model is '{}'",
                    path.display(),
                    p.model.arch,
                    fp.arch
                );
            }
            p.validate(&config.dims(), Some(&sha))
                .with_context(|| format!("profile {}", path.display()))?;
            Ok(Some((path.to_path_buf(), p)))
        }
        None => {
            let dirs = profile_dirs();
            if let Some(found) = find_in(&dirs, &fp) {
                return Ok(Some(found));
            }
            // A profile of this very model file that fails its checks is not skipped in
            // silence: the user would never learn why compresskv is unavailable.
            if let Some((path, e)) = refused_match(&dirs, &fp) {
                bail!(
                    "profile {} was measured on this model but cannot be used: {e:#}",
                    path.display()
                );
            }
            Ok(None)
        }
    }
}

/// The first profile in `dirs` whose fingerprint names this model file but which fails
/// validation, with the reason.
fn refused_match(dirs: &[PathBuf], fp: &Fingerprint) -> Option<(PathBuf, anyhow::Error)> {
    profiles_in(dirs).find_map(|(f, p)| {
        let ours = p.model.arch == fp.arch && p.model.sha256.eq_ignore_ascii_case(&fp.sha256);
        if !ours {
            return None;
        }
        p.validate(&dims_of(fp), Some(&fp.sha256))
            .err()
            .map(|e| (f, e))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile_format::{Provenance, FORMAT_VERSION};

    fn profile(sha: &str) -> Profile {
        Profile {
            format_version: FORMAT_VERSION,
            model: Fingerprint {
                arch: "llama".into(),
                n_layers: 1,
                n_heads: 2,
                n_kv_heads: 1,
                head_dim: 4,
                sha256: sha.into(),
            },
            srh_scores: vec![vec![0.1, 0.2]],
            srh_ranking: vec![vec![1, 0]],
            retrieval_scores: vec![vec![0.0, 0.0]],
            layer_errors: Some(vec![1.0]),
            provenance: Provenance {
                command: "t".into(),
                settings: serde_json::Value::Null,
                trials_counted: 1,
                kvscope_version: "0".into(),
            },
        }
    }

    #[test]
    fn finds_the_profile_with_the_matching_fingerprint() {
        let dir = crate::testing::temp_dir("discover");
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        profile(&a).save(dir.join("1-a.json")).unwrap();
        profile(&b).save(dir.join("2-b.json")).unwrap();
        std::fs::write(dir.join("0-junk.json"), "not json").unwrap();
        let dirs = vec![dir.join("missing"), dir.clone()];
        let fp = profile(&b).model;
        let (path, p) = find_in(&dirs, &fp).unwrap();
        assert_eq!(path, dir.join("2-b.json"));
        assert_eq!(p.model.sha256, b);
        let mut other = fp.clone();
        other.sha256 = "c".repeat(64);
        assert!(find_in(&dirs, &other).is_none());
        let mut other = fp.clone();
        other.arch = "qwen2".into();
        assert!(find_in(&dirs, &other).is_none());
        let mut other = fp;
        other.n_heads = 4;
        assert!(find_in(&dirs, &other).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_broken_profile_of_this_model_is_named_with_the_reason() {
        let dir = crate::testing::temp_dir("discover-refused");
        let a = "a".repeat(64);
        let mut broken = profile(&a);
        broken.srh_ranking = vec![vec![0, 0]];
        broken.save(dir.join("a.json")).unwrap();
        let dirs = vec![dir.clone()];
        let fp = profile(&a).model;
        assert!(find_in(&dirs, &fp).is_none());
        let (path, e) = refused_match(&dirs, &fp).expect("the refused profile");
        assert_eq!(path, dir.join("a.json"));
        assert!(format!("{e:#}").contains("not an ordering"), "{e:#}");
        // Another model's profile is not this model's business.
        let mut other = fp;
        other.sha256 = "b".repeat(64);
        assert!(refused_match(&dirs, &other).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
