//! The folder of entries: writing one through a temp file and a rename, least-recently-
//! used eviction under the cap, and the listing and clearing behind `kvscope cache`.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::entry::{self, Meta, EXT};
use super::sidecar::{self, temp_path, TMP_PREFIX};
use crate::trace::Trace;

const STALE_TMP_SECS: u64 = 3600;

/// Marks an entry as just used (its mtime is the LRU clock); best effort.
pub fn touch(path: &Path) {
    if let Ok(f) = File::options().write(true).open(path) {
        let _ = f.set_modified(SystemTime::now());
    }
}

fn is_entry(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == EXT)
        && !p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

fn is_sidecar(p: &Path) -> bool {
    p.extension()
        .is_some_and(|e| sidecar::KINDS.iter().any(|k| e == *k))
        && !p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

/// The regular sidecar files of the entry at `entry` (same stem, a sidecar kind).
fn sidecars_of(entry: &Path) -> Vec<(PathBuf, u64)> {
    sidecar::KINDS
        .iter()
        .map(|k| entry.with_extension(k))
        .filter_map(|p| {
            let md = std::fs::symlink_metadata(&p).ok()?;
            md.is_file().then_some((p, md.len()))
        })
        .collect()
}

/// Regular entry files in `dir` with size (their sidecars' included) and mtime.
fn entries(dir: &Path) -> Vec<(PathBuf, u64, SystemTime)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let p = e.path();
            let md = std::fs::symlink_metadata(&p).ok()?;
            if !(md.is_file() && is_entry(&p)) {
                return None;
            }
            let side: u64 = sidecars_of(&p).iter().map(|s| s.1).sum();
            let mtime = md.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            Some((p, md.len() + side, mtime))
        })
        .collect()
}

/// Removes an entry and its sidecars; true when the entry itself went.
fn remove_entry(p: &Path) -> bool {
    for (s, _) in sidecars_of(p) {
        let _ = std::fs::remove_file(s);
    }
    std::fs::remove_file(p).is_ok()
}

/// Removes sidecars whose entry is gone (another process evicted or replaced it).
fn sweep_orphans(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if is_sidecar(&p) && !p.with_extension(EXT).exists() {
            let _ = std::fs::remove_file(&p);
        }
    }
}

/// Removes temp files older than an hour (a process killed mid-write leaves one).
fn sweep_stale_temps(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let stale = std::fs::symlink_metadata(&p).ok().is_some_and(|md| {
            md.is_file()
                && md
                    .modified()
                    .ok()
                    .and_then(|m| m.elapsed().ok())
                    .is_some_and(|age| age.as_secs() > STALE_TMP_SECS)
        });
        if stale && e.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
            let _ = std::fs::remove_file(&p);
        }
    }
}

/// Deletes the least recently used entries (not `keep`) with their sidecars until the
/// folder's entries plus `incoming` bytes fit `cap`.
pub fn evict(dir: &Path, cap: u64, incoming: u64, keep: &str) {
    sweep_orphans(dir);
    let mut es = entries(dir);
    es.retain(|(p, _, _)| p.file_name().is_none_or(|n| n != keep));
    es.sort_by_key(|e| e.2);
    let mut total: u64 = es.iter().map(|e| e.1).sum();
    for (p, bytes, _) in es {
        if total.saturating_add(incoming) <= cap {
            break;
        }
        if remove_entry(&p) {
            total -= bytes;
        }
    }
}

/// Writes the entry `name` in `dir` under `cap`: through a temp file of this process
/// renamed into place, so concurrent writers of one entry leave one whole file.
pub fn write(dir: &Path, cap: u64, name: &str, meta: &Meta, trace: &Trace) -> Result<u64> {
    let json_len = serde_json::to_vec(meta)?.len();
    let size = entry::file_bytes(json_len, meta).context("the Trace is too large to store")?;
    if size > cap {
        bail!(
            "the entry ({}) is larger than the cache's cap ({}; set {} to raise it)",
            super::human_bytes(size),
            super::human_bytes(cap),
            super::CAP_ENV
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    sweep_stale_temps(dir);
    evict(dir, cap, size, name);
    let dest = dir.join(name);
    if let Ok(md) = std::fs::symlink_metadata(&dest) {
        if !md.is_file() {
            bail!("{} is not a regular file; left alone", dest.display());
        }
    }
    // A sidecar of the entry being replaced belonged to the old file's generation.
    for (s, _) in sidecars_of(&dest) {
        let _ = std::fs::remove_file(s);
    }
    let tmp = temp_path(dir, name);
    let result = File::options()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .with_context(|| format!("cannot write in {}", dir.display()))
        .and_then(|f| {
            entry::write(f, meta, trace).with_context(|| format!("writing {}", tmp.display()))
        })
        .and_then(|n| {
            std::fs::rename(&tmp, &dest)
                .with_context(|| format!("cannot rename into {}", dest.display()))?;
            Ok(n)
        });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// One file of the folder as `kvscope cache ls` shows it.
#[derive(Debug, Clone)]
pub struct Listed {
    pub path: PathBuf,
    /// The entry's bytes with its sidecars'.
    pub bytes: u64,
    pub last_use: SystemTime,
    /// The entry's header, or why it cannot be read.
    pub meta: std::result::Result<Meta, String>,
}

/// Every entry file in `dir`, most recently used first.
pub fn list(dir: &Path) -> Vec<Listed> {
    let mut v: Vec<Listed> = entries(dir)
        .into_iter()
        .map(|(path, bytes, last_use)| {
            // The header is checked against the entry file's own length (`bytes`
            // counts its sidecars too).
            let meta = File::open(&path)
                .and_then(|f| Ok((f.metadata()?.len(), f)))
                .map_err(anyhow::Error::from)
                .and_then(|(own, mut f)| entry::read_meta(&mut f, own))
                .map(|(m, ..)| m)
                .map_err(|e| format!("{e:#}"));
            Listed {
                path,
                bytes,
                last_use,
                meta,
            }
        })
        .collect();
    v.sort_by_key(|l| std::cmp::Reverse(l.last_use));
    v
}

/// Removes every entry, sidecar and temp file in `dir` (other files are left alone);
/// returns the files and bytes removed.
pub fn clear(dir: &Path) -> Result<(usize, u64)> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    let (mut n, mut bytes) = (0, 0);
    for e in rd.flatten() {
        let p = e.path();
        let Ok(md) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        let ours = is_entry(&p)
            || is_sidecar(&p)
            || e.file_name().to_string_lossy().starts_with(TMP_PREFIX);
        if md.is_file() && ours {
            std::fs::remove_file(&p).with_context(|| format!("cannot remove {}", p.display()))?;
            n += 1;
            bytes += md.len();
        }
    }
    Ok((n, bytes))
}
