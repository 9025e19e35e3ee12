//! The prefill cache: a finished prefill (the [`Trace`], which is also everything the
//! decode cache is built from, and the full-cache generation) stored under
//! `KVSCOPE_HOME/prefill/`, so reopening the same prompt on the same model file costs a
//! file read instead of minutes of prefill.
//!
//! An entry is keyed by the model file's sha256, the prompt's token ids, the KV dtype
//! (it stands for the forward pass's precision) and [`FORMAT_VERSION`]. Caching is best
//! effort: every failure (unwritable or full folder, a truncated, corrupt or foreign
//! file) becomes a one-line notice and a fresh prefill, never an error. The session
//! ([`crate::session::Session`]) is the one place that consults it.

mod entry;
pub mod pass;
mod scores;
mod sidecar;
mod store;

use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

use crate::model::replay::FullPass;
use crate::trace::Trace;

pub use entry::FORMAT_VERSION;
pub use store::{clear, list, Listed};

/// Default size cap of the folder: a 14K-token prompt on a 0.5B model is a few hundred MB.
pub const DEFAULT_CAP: u64 = 4 << 30;

/// Environment variable setting the cap (`4G`, `500M`, bytes; `0` turns the cache off).
pub const CAP_ENV: &str = "KVSCOPE_PREFILL_CACHE_MAX";

/// The folder entries live in: `$KVSCOPE_HOME/prefill` (or the platform cache's).
pub fn dir() -> anyhow::Result<PathBuf> {
    Ok(crate::model::fetch::cache_dir()?.join("prefill"))
}

/// Parses a size such as `4G`, `512M`, `100K` or plain bytes.
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                'B' => 1,
                _ => anyhow::bail!("size {s:?}: use a number with an optional K, M, G or T"),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("size {s:?}: use a number with an optional K, M, G or T"))?;
    if !n.is_finite() || n < 0.0 {
        anyhow::bail!("size {s:?}: must be zero or more");
    }
    Ok((n * mult as f64) as u64)
}

/// The cap from [`CAP_ENV`], else [`DEFAULT_CAP`]; a bad value is a notice, not an error.
pub fn cap_from_env() -> (u64, Option<String>) {
    match std::env::var(CAP_ENV) {
        Ok(v) if !v.trim().is_empty() => match parse_size(&v) {
            Ok(n) => (n, None),
            Err(e) => (
                DEFAULT_CAP,
                Some(format!("{CAP_ENV}: {e:#}; using the default of 4G")),
            ),
        },
        _ => (DEFAULT_CAP, None),
    }
}

/// What identifies an entry: a different model file, prompt, dtype or format misses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Key {
    pub model_sha256: String,
    pub kv_dtype: String,
    pub ids: Vec<u32>,
    pub version: u32,
}

impl Key {
    pub fn new(model_sha256: &str, kv_dtype: &str, ids: &[u32]) -> Key {
        Key {
            model_sha256: model_sha256.to_lowercase(),
            kv_dtype: kv_dtype.to_string(),
            ids: ids.to_vec(),
            version: FORMAT_VERSION,
        }
    }

    /// The entry's file name: a hash of every key field.
    pub fn file_name(&self) -> String {
        let hex: String = self.digest()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("{hex}.{}", entry::EXT)
    }

    /// The sha256 of every key field (a sidecar stores it to name its entry's key).
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.model_sha256.as_bytes());
        h.update([0]);
        h.update(self.kv_dtype.as_bytes());
        h.update([0]);
        h.update(self.version.to_le_bytes());
        for id in &self.ids {
            h.update(id.to_le_bytes());
        }
        h.finalize().into()
    }
}

/// The full-cache generation stored with the Trace: greedy, so a shorter request is a
/// prefix of it, and one that stopped at a stop id is complete for any longer request.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct FullGen {
    pub max_new: usize,
    pub ids: Vec<u32>,
}

impl FullGen {
    /// The generation for `max_new` tokens, when this one answers it.
    pub fn answer(&self, max_new: usize) -> Option<Vec<u32>> {
        if self.ids.len() >= max_new {
            Some(self.ids[..max_new].to_vec())
        } else if self.ids.len() < self.max_new {
            // It ended at a stop id before its own limit: longer requests end there too.
            Some(self.ids.clone())
        } else {
            None
        }
    }
}

/// What the session did with the cache, for the status line and `run --json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    /// The prefill was read from the cache.
    pub hit: bool,
    /// Milliseconds reading the entry (on a hit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_ms: Option<f64>,
    /// Milliseconds writing the entry (after a miss that was stored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_ms: Option<f64>,
    /// Size of the entry file.
    pub bytes: u64,
    /// What went wrong, if anything (a bad entry, a folder that refused the write).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notice: Option<String>,
    /// Where the full-cache generation came from: `"entry"` (the one stored with the
    /// prefill answered), `"sidecar"` (a longer one stored beside the entry by an earlier
    /// reopen) or `"decoded"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<&'static str>,
}

impl Report {
    /// One line for the inspector's status line.
    pub fn summary(&self) -> String {
        let mut s = if self.hit {
            format!(
                "prefill cache hit ({:.1} s, {})",
                self.load_ms.unwrap_or(0.0) / 1000.0,
                human_bytes(self.bytes)
            )
        } else if self.store_ms.is_some() {
            format!("prefill cached ({})", human_bytes(self.bytes))
        } else {
            "prefill not cached".to_string()
        };
        if let Some(n) = &self.notice {
            s = format!("{s}: {n}");
        }
        s
    }
}

pub fn human_bytes(n: u64) -> String {
    let n = n as f64;
    if n >= (1u64 << 30) as f64 {
        format!("{:.2} GB", n / (1u64 << 30) as f64)
    } else if n >= (1u64 << 20) as f64 {
        format!("{:.1} MB", n / (1u64 << 20) as f64)
    } else {
        format!("{:.0} KB", n / 1024.0)
    }
}

/// A hit: the Trace, the full generation stored with it, and the read's report.
pub struct Hit {
    pub trace: Trace,
    pub full: FullGen,
    pub report: Report,
}

/// The cache as one command uses it: the folder, its cap, and the model file's sha256.
#[derive(Debug, Clone)]
pub struct PrefillCache {
    pub dir: PathBuf,
    pub cap: u64,
    pub model_sha256: String,
    /// The model file's name, shown by `kvscope cache ls`.
    pub model_name: String,
}

impl PrefillCache {
    /// The cache for `model_path` with sha256 `sha` (from
    /// [`crate::profile::discover::model_sha256`]), or `None` with a notice when there is
    /// no cache folder or the cap is 0.
    pub fn for_model(model_path: &Path, sha: &str) -> (Option<PrefillCache>, Option<String>) {
        let (cap, notice) = cap_from_env();
        if cap == 0 {
            return (None, notice);
        }
        let dir = match dir() {
            Ok(d) => d,
            Err(e) => return (None, Some(format!("prefill cache off: {e:#}"))),
        };
        let model_name = model_path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        (
            Some(PrefillCache {
                dir,
                cap,
                model_sha256: sha.to_lowercase(),
                model_name,
            }),
            notice,
        )
    }

    /// The cache of the model at `model_path` unless `off` (`--no-cache`), hashing the
    /// file (cheap once stamped); a failure to hash turns it off with a notice.
    pub fn open(model_path: &Path, off: bool) -> (Option<PrefillCache>, Option<String>) {
        if off {
            return (None, None);
        }
        match crate::model::fetch::model_sha256(model_path) {
            Ok(sha) => Self::for_model(model_path, &sha),
            Err(e) => (None, Some(format!("prefill cache off: {e:#}"))),
        }
    }

    pub fn key(&self, kv_dtype: &str, ids: &[u32]) -> Key {
        Key::new(&self.model_sha256, kv_dtype, ids)
    }

    /// The entry for `key`: `Ok(None)` when there is none, `Err(notice)` when there is
    /// one that cannot be trusted (it is removed, so the fresh prefill replaces it).
    pub fn lookup(&self, key: &Key) -> Result<Option<Hit>, String> {
        let path = self.dir.join(key.file_name());
        let t = std::time::Instant::now();
        match entry::read(&path, key) {
            Ok(None) => self.older_entry(key),
            Ok(Some((trace, full, bytes))) => {
                store::touch(&path);
                Ok(Some(Hit {
                    trace,
                    full,
                    report: Report {
                        hit: true,
                        load_ms: Some(ms(t)),
                        bytes,
                        ..Default::default()
                    },
                }))
            }
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(format!(
                    "prefill cache entry {} is unusable ({e:#}); prefilling again",
                    path.display()
                ))
            }
        }
    }

    /// A miss where an older kvscope stored the same prefill in an earlier format
    /// (another file name, since the version is part of the key): that file is removed
    /// and the notice says why the prompt is prefilled again.
    fn older_entry(&self, key: &Key) -> Result<Option<Hit>, String> {
        for version in 1..key.version {
            let old = Key {
                version,
                ..key.clone()
            };
            let path = self.dir.join(old.file_name());
            if path.is_file() {
                let _ = std::fs::remove_file(&path);
                return Err(format!(
                    "prefill cache entry {} is in an older format ({version}, now {}); prefilling again",
                    path.display(),
                    key.version
                ));
            }
        }
        Ok(None)
    }

    /// The full-cache generation stored beside `key`'s entry (the [`sidecar::GEN`]
    /// sidecar) when it answers `max_new`; `Err(notice)` when the sidecar cannot be
    /// trusted (it is removed, so the fresh decode replaces it).
    pub fn lookup_gen(&self, key: &Key, max_new: usize) -> Result<Option<Vec<u32>>, String> {
        let path = sidecar::path(&self.dir, key, sidecar::GEN);
        let parsed = sidecar::read(&path, key, sidecar::GEN).and_then(|b| {
            b.map(|b| serde_json::from_slice::<FullGen>(&b))
                .transpose()
                .map_err(anyhow::Error::from)
        });
        match parsed {
            Ok(g) => Ok(g
                .filter(|g| g.ids.len() <= g.max_new)
                .and_then(|g| g.answer(max_new))),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(format!(
                    "prefill cache sidecar {} is unusable ({e:#}); decoding the full-cache generation again",
                    path.display()
                ))
            }
        }
    }

    /// Stores `full` beside `key`'s entry (best effort): a notice when it did not happen.
    pub fn store_gen(&self, key: &Key, full: &FullGen) -> Option<String> {
        let r = serde_json::to_vec(full)
            .map_err(anyhow::Error::from)
            .and_then(|b| sidecar::write(&self.dir, key, sidecar::GEN, &b));
        r.err()
            .map(|e| format!("full-cache generation not cached: {e:#}"))
    }

    /// The full-cache replay stored beside `key`'s entry (the [`sidecar::PASS`] sidecar)
    /// when it is the one `expect` describes (same prompt, shape and generation);
    /// `Err(notice)` when it cannot be trusted or is another generation's (it is
    /// removed, so the fresh replay replaces it).
    pub fn lookup_pass(
        &self,
        key: &Key,
        expect: &pass::Expect,
    ) -> Result<Option<FullPass>, String> {
        let path = sidecar::path(&self.dir, key, sidecar::PASS);
        match sidecar::read_with(&path, key, sidecar::PASS, u64::MAX, |r, len| {
            pass::read(r, len, expect)
        }) {
            Ok(p) => Ok(p),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(format!(
                    "prefill cache sidecar {} is unusable ({e:#}); replaying the full cache again",
                    path.display()
                ))
            }
        }
    }

    /// Stores `fp` beside `key`'s entry (best effort), first evicting the least
    /// recently used other entries so the folder stays under the cap; a notice when it
    /// did not happen (also when the entry is gone or it cannot fit at all).
    pub fn store_pass(&self, key: &Key, fp: &FullPass) -> Option<String> {
        let r = pass::payload_bytes(&pass::expect_of(fp))
            .ok_or_else(|| anyhow::anyhow!("the replay is too large to store"))
            .and_then(|len| self.store_sidecar(key, sidecar::PASS, len, |w| pass::write(w, fp)));
        r.err()
            .map(|e| format!("full-cache replay not cached: {e:#}"))
    }

    /// The window scores stored beside `key`'s entry when they are `s`'s on this
    /// prompt (`prompt_len` tokens, `dims`); `Err(notice)` when the sidecar cannot be
    /// trusted (it is removed). Another setting's table is a plain miss.
    pub fn lookup_scores(
        &self,
        key: &Key,
        s: &crate::eviction::Settings,
        prompt_len: usize,
        dims: &crate::trace::Dims,
    ) -> Result<Option<crate::eviction::ScoreTable>, String> {
        let path = sidecar::path(&self.dir, key, sidecar::SCORES);
        match sidecar::read_with(&path, key, sidecar::SCORES, u64::MAX, |r, len| {
            scores::read(r, len, s, prompt_len, dims)
        }) {
            Ok(t) => Ok(t.flatten()),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(format!(
                    "prefill cache sidecar {} is unusable ({e:#}); computing the window scores again",
                    path.display()
                ))
            }
        }
    }

    /// Stores the window scores `t` beside `key`'s entry (best effort, under the cap).
    pub fn store_scores(
        &self,
        key: &Key,
        t: &crate::eviction::ScoreTable,
        dims: &crate::trace::Dims,
    ) -> Option<String> {
        let len = scores::payload_bytes(t);
        self.store_sidecar(key, sidecar::SCORES, len, |w| scores::write(w, t, dims))
            .err()
            .map(|e| format!("window scores not cached: {e:#}"))
    }

    /// Writes a sidecar of `len` bytes beside `key`'s entry when the entry is there and
    /// they fit the cap together, evicting least recently used other entries first.
    fn store_sidecar(
        &self,
        key: &Key,
        kind: &str,
        len: u64,
        body: impl FnOnce(
            &mut sidecar::CrcWrite<std::io::BufWriter<std::fs::File>>,
        ) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let entry = self.dir.join(key.file_name());
        let entry_bytes = std::fs::metadata(&entry)
            .map_err(|_| anyhow::anyhow!("its entry is gone"))?
            .len();
        // The entry's other sidecars count too (the old file of this kind is replaced).
        let others: u64 = sidecar::KINDS
            .iter()
            .filter(|k| **k != kind)
            .filter_map(|k| std::fs::metadata(sidecar::path(&self.dir, key, k)).ok())
            .map(|m| m.len())
            .sum();
        let need = entry_bytes.saturating_add(others).saturating_add(len);
        if need > self.cap {
            anyhow::bail!(
                "with its entry it would be larger than the cache's cap ({}; set {CAP_ENV} to raise it)",
                human_bytes(self.cap)
            );
        }
        // The entry itself stays (evict leaves `keep` out of its count: it counts here).
        store::evict(&self.dir, self.cap, need, &key.file_name());
        sidecar::write_with(&self.dir, key, kind, len, body)?;
        Ok(())
    }

    /// Stores a finished prefill (best effort): the report of the write, with a notice
    /// when it did not happen.
    pub fn store(&self, key: &Key, trace: &Trace, full: &FullGen) -> Report {
        let t = std::time::Instant::now();
        let meta = entry::Meta::new(key, trace, full, &self.model_name);
        match store::write(&self.dir, self.cap, &key.file_name(), &meta, trace) {
            Ok(bytes) => Report {
                store_ms: Some(ms(t)),
                bytes,
                ..Default::default()
            },
            Err(e) => Report {
                notice: Some(format!("prefill not cached: {e:#}")),
                ..Default::default()
            },
        }
    }
}

fn ms(t: std::time::Instant) -> f64 {
    (t.elapsed().as_secs_f64() * 1e6).round() / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("4G").unwrap(), 4 << 30);
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert_eq!(parse_size("0").unwrap(), 0);
        assert_eq!(parse_size("1.5K").unwrap(), 1536);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("-1G").is_err());
        assert!(parse_size("4X").is_err());
    }

    #[test]
    fn one_token_of_difference_changes_the_key() {
        let a = Key::new("ab", "f16", &[1, 2, 3]);
        let b = Key::new("ab", "f16", &[1, 2, 4]);
        let c = Key::new("ab", "f32", &[1, 2, 3]);
        let d = Key::new("AB", "f16", &[1, 2, 3]);
        assert_ne!(a.file_name(), b.file_name());
        assert_ne!(a.file_name(), c.file_name());
        assert_eq!(
            a.file_name(),
            d.file_name(),
            "the sha is compared in lower case"
        );
        assert_ne!(a, b);
    }

    #[test]
    fn a_stored_generation_answers_shorter_requests_and_complete_ones() {
        let stopped = FullGen {
            max_new: 8,
            ids: vec![5, 6, 2],
        };
        assert_eq!(stopped.answer(2), Some(vec![5, 6]));
        assert_eq!(stopped.answer(3), Some(vec![5, 6, 2]));
        assert_eq!(stopped.answer(50), Some(vec![5, 6, 2]));
        let cut = FullGen {
            max_new: 3,
            ids: vec![5, 6, 7],
        };
        assert_eq!(cut.answer(3), Some(vec![5, 6, 7]));
        assert_eq!(cut.answer(4), None, "it may have continued past its limit");
        assert_eq!(cut.answer(0), Some(vec![]));
    }
}
