//! Sidecars: small files beside an entry (`<entry stem>.<kind>`) holding what a reopen
//! would otherwise compute again, identically, after reading the entry: [`GEN`], the
//! full-cache generation for a longer `--max-new` than the one the entry was stored with
//! (the inspector asks for 32 tokens where `run` stored 8: without it every reopen
//! decoded the 32 again over the whole prompt); [`PASS`], the inspector's full-cache
//! replay; [`SCORES`], its window scores.
//!
//! A sidecar has its own header (magic, byte order, version, kind, the sha256 of its
//! entry's whole key, payload length, CRC-32 of the payload): one that fails any check is
//! refused with a notice and removed, and the value is computed again. It lives and dies
//! with its entry: the cap counts it in the entry's size, eviction and `cache clear`
//! remove it with the entry.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::Key;

/// The full-cache generation ([`super::FullGen`] as JSON).
pub const GEN: &str = "gen";
/// The full cache replayed over that generation with attention capture (the
/// [`crate::model::replay::FullPass`] the divergence analysis reads; [`super::pass`]).
pub const PASS: &str = "pass";
/// The inspector's window scores for one window, kernel and pooling ([`super::scores`]).
pub const SCORES: &str = "scores";
/// Every sidecar kind (the folder's listing and clearing look for these extensions).
pub const KINDS: &[&str] = &[GEN, PASS, SCORES];

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

/// The header of a sidecar of `kind` for `key` with a payload of `len` bytes.
fn header(key: &Key, kind: &str, len: u64, crc: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(HEADER_BYTES);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&BYTE_ORDER.to_ne_bytes());
    b.extend_from_slice(&VERSION.to_ne_bytes());
    b.extend_from_slice(&kind_bytes(kind));
    b.extend_from_slice(&key.digest());
    b.extend_from_slice(&len.to_ne_bytes());
    b.extend_from_slice(&crc.to_ne_bytes());
    b
}

/// Reads what passes through it into a CRC-32 and counts it.
pub struct CrcRead<R: Read> {
    inner: R,
    crc: crc32fast::Hasher,
    n: u64,
}

impl<R: Read> Read for CrcRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.crc.update(&buf[..k]);
        self.n += k as u64;
        Ok(k)
    }
}

/// Writes through to `inner`, keeping a CRC-32 and a count of what passed.
pub struct CrcWrite<W: Write> {
    inner: W,
    crc: crc32fast::Hasher,
    n: u64,
}

impl<W: Write> Write for CrcWrite<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.crc.update(&buf[..k]);
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The sidecar at `path` for `key`, its payload parsed by `body` (given the reader and
/// the payload's length): `Ok(None)` when there is none, an error naming the failed
/// check when there is one that cannot be trusted (`body` must read the whole payload;
/// the checksum is compared after it, so its value is dropped when the file is damaged).
pub fn read_with<T>(
    path: &Path,
    key: &Key,
    kind: &str,
    max_payload: u64,
    body: impl FnOnce(&mut CrcRead<std::io::BufReader<File>>, u64) -> Result<T>,
) -> Result<Option<T>> {
    let Some(md) = regular_file(path)? else {
        return Ok(None);
    };
    if md.len() < HEADER_BYTES as u64 {
        bail!("truncated ({} bytes, shorter than the header)", md.len());
    }
    let mut f = File::open(path).context("cannot open it")?;
    let mut h = [0u8; HEADER_BYTES];
    f.read_exact(&mut h).context("cannot read it")?;
    if &h[..8] != MAGIC {
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
    let have = md.len() - HEADER_BYTES as u64;
    if len != have {
        bail!("truncated or padded ({have} payload bytes, the header says {len})");
    }
    if len > max_payload {
        bail!("too large for its kind ({len} bytes)");
    }
    let mut r = CrcRead {
        inner: std::io::BufReader::with_capacity(1 << 20, f),
        crc: crc32fast::Hasher::new(),
        n: 0,
    };
    let value = body(&mut r, len)?;
    if r.n != len {
        bail!("its payload does not match its own description");
    }
    if r.crc.finalize() != word(64) {
        bail!("checksum mismatch (the file was damaged)");
    }
    Ok(Some(value))
}

/// [`read_with`] for a payload read whole (small sidecars).
pub fn read(path: &Path, key: &Key, kind: &str) -> Result<Option<Vec<u8>>> {
    read_with(path, key, kind, MAX_PAYLOAD, |r, len| {
        let mut b = vec![0u8; len as usize];
        r.read_exact(&mut b).context("truncated payload")?;
        Ok(b)
    })
}

/// Writes the sidecar `kind` of `key`'s entry in `dir`, its `len`-byte payload written
/// by `body`, through a temp file renamed into place (never onto a path that is not a
/// regular file); returns the bytes written.
pub fn write_with(
    dir: &Path,
    key: &Key,
    kind: &str,
    len: u64,
    body: impl FnOnce(&mut CrcWrite<std::io::BufWriter<File>>) -> Result<()>,
) -> Result<u64> {
    let dest = path(dir, key, kind);
    if let Ok(md) = std::fs::symlink_metadata(&dest) {
        if !md.is_file() {
            bail!("{} is not a regular file; left alone", dest.display());
        }
    }
    let name = dest
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let tmp = temp_path(dir, &name);
    let result = File::options()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .with_context(|| format!("cannot write in {}", dir.display()))
        .and_then(|f| {
            let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
            w.write_all(&header(key, kind, len, 0))?;
            let mut cw = CrcWrite {
                inner: w,
                crc: crc32fast::Hasher::new(),
                n: 0,
            };
            body(&mut cw)?;
            if cw.n != len {
                bail!("wrote {} payload bytes, announced {len}", cw.n);
            }
            let crc = cw.crc.finalize();
            let mut f = cw.inner.into_inner().map_err(|e| e.into_error())?;
            f.seek(SeekFrom::Start(HEADER_BYTES as u64 - 4))?;
            f.write_all(&crc.to_ne_bytes())?;
            f.flush()?;
            Ok(())
        })
        .with_context(|| format!("writing {}", tmp.display()))
        .and_then(|()| {
            std::fs::rename(&tmp, &dest)
                .with_context(|| format!("cannot rename into {}", dest.display()))
        });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| HEADER_BYTES as u64 + len)
}

/// [`write_with`] for a payload in memory (small sidecars).
pub fn write(dir: &Path, key: &Key, kind: &str, payload: &[u8]) -> Result<u64> {
    write_with(dir, key, kind, payload.len() as u64, |w| {
        w.write_all(payload)?;
        Ok(())
    })
}

/// The metadata of the regular file at `path` (links not followed), `Ok(None)` when there
/// is nothing there (no folder, or a file where a folder should be, is no file either;
/// writing reports it), an error for anything else, such as a device or a folder.
pub(super) fn regular_file(path: &Path) -> Result<Option<std::fs::Metadata>> {
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
    Ok(Some(md))
}

/// Temp files start with this; one left by a killed process is swept after an hour.
pub(super) const TMP_PREFIX: &str = ".tmp-";

/// A fresh temp file name in `dir` for the final name `name` (this process, this
/// instant). Here, below the store, because the sidecars and the entries both write
/// through one.
pub(super) fn temp_path(dir: &Path, name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    dir.join(format!("{TMP_PREFIX}{}-{nanos}-{name}", std::process::id()))
}
