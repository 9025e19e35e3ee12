//! Sidecars: small files beside an entry (`<entry stem>.<kind>`) holding what a reopen
//! would otherwise compute again, identically, after reading the entry. Today one kind:
//! [`GEN`], the full-cache generation for a longer `--max-new` than the one the entry was
//! stored with (the inspector asks for 32 tokens where `run` stored 8: without it every
//! reopen decoded the 32 again over the whole prompt).
//!
//! A sidecar has its own header (magic, byte order, version, kind, the sha256 of its
//! entry's whole key, payload length, CRC-32 of the payload): one that fails any check is
//! refused with a notice and removed, and the value is computed again. It lives and dies
//! with its entry: the cap counts it in the entry's size, eviction and `cache clear`
//! remove it with the entry.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::Key;

/// The full-cache generation ([`super::FullGen`] as JSON).
pub const GEN: &str = "gen";
/// Every sidecar kind (the folder's listing and clearing look for these extensions).
pub const KINDS: &[&str] = &[GEN];

const MAGIC: &[u8; 8] = b"KVSCOPES";
const BYTE_ORDER: u32 = 0x0102_0304;
const VERSION: u32 = 1;
/// magic, byte order, version, kind (8 bytes, zero padded), key digest, length, CRC.
const HEADER_BYTES: usize = 8 + 4 + 4 + 8 + 32 + 8 + 4;
/// A generation's JSON is a few KB; anything far larger is not ours.
const MAX_PAYLOAD: u64 = 64 << 20;

/// The sidecar of kind `kind` for the entry of `key` in `dir`.
pub fn path(dir: &Path, key: &Key, kind: &str) -> PathBuf {
    let name = key.file_name();
    let stem = name.rsplit_once('.').map_or(name.as_str(), |(s, _)| s);
    dir.join(format!("{stem}.{kind}"))
}

fn kind_bytes(kind: &str) -> [u8; 8] {
    let mut b = [0u8; 8];
    for (d, s) in b.iter_mut().zip(kind.bytes()) {
        *d = s;
    }
    b
}

/// The payload of the sidecar at `path` for `key`: `Ok(None)` when there is none, an
/// error naming the failed check when there is one that cannot be trusted.
pub fn read(path: &Path, key: &Key, kind: &str) -> Result<Option<Vec<u8>>> {
    let md = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e).context("cannot stat it"),
    };
    if !md.is_file() {
        bail!("not a regular file");
    }
    if md.len() < HEADER_BYTES as u64 || md.len() > HEADER_BYTES as u64 + MAX_PAYLOAD {
        bail!("truncated or too large ({} bytes)", md.len());
    }
    let mut bytes = Vec::with_capacity(md.len() as usize);
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .context("cannot read it")?;
    let (h, payload) = bytes.split_at(HEADER_BYTES.min(bytes.len()));
    if h.len() < HEADER_BYTES || &h[..8] != MAGIC {
        bail!("not a kvscope prefill cache sidecar");
    }
    let word = |o: usize| u32::from_ne_bytes(h[o..o + 4].try_into().unwrap_or_default());
    if word(8) != BYTE_ORDER {
        bail!("written on a machine of another byte order");
    }
    if word(12) != VERSION {
        bail!("sidecar version {}, this kvscope reads {VERSION}", word(12));
    }
    if h[16..24] != kind_bytes(kind) {
        bail!("it is another kind of sidecar");
    }
    if h[24..56] != key.digest() {
        bail!("it belongs to another model, prompt or dtype (a foreign file)");
    }
    let len = u64::from_ne_bytes(h[56..64].try_into().unwrap_or_default());
    if len != payload.len() as u64 {
        bail!(
            "truncated or padded ({} payload bytes, the header says {len})",
            payload.len()
        );
    }
    if crc32fast::hash(payload) != word(64) {
        bail!("checksum mismatch (the file was damaged)");
    }
    Ok(Some(payload.to_vec()))
}

/// Writes the sidecar `kind` of `key`'s entry in `dir` through a temp file renamed into
/// place (never onto a path that is not a regular file); returns the bytes written.
pub fn write(dir: &Path, key: &Key, kind: &str, payload: &[u8]) -> Result<u64> {
    let dest = path(dir, key, kind);
    if let Ok(md) = std::fs::symlink_metadata(&dest) {
        if !md.is_file() {
            bail!("{} is not a regular file; left alone", dest.display());
        }
    }
    let mut b = Vec::with_capacity(HEADER_BYTES + payload.len());
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&BYTE_ORDER.to_ne_bytes());
    b.extend_from_slice(&VERSION.to_ne_bytes());
    b.extend_from_slice(&kind_bytes(kind));
    b.extend_from_slice(&key.digest());
    b.extend_from_slice(&(payload.len() as u64).to_ne_bytes());
    b.extend_from_slice(&crc32fast::hash(payload).to_ne_bytes());
    b.extend_from_slice(payload);
    let name = dest
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let tmp = super::store::temp_path(dir, &name);
    let result = File::options()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .with_context(|| format!("cannot write in {}", dir.display()))
        .and_then(|mut f| {
            f.write_all(&b)
                .with_context(|| format!("writing {}", tmp.display()))
        })
        .and_then(|()| {
            std::fs::rename(&tmp, &dest)
                .with_context(|| format!("cannot rename into {}", dest.display()))
        });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| b.len() as u64)
}
