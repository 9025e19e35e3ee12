//! One entry file: a fixed header (magic, byte order, format version, lengths, a CRC-32
//! of everything after it), the key and shape as JSON, then the Trace's arrays raw in
//! native byte order. Every field is checked on read; a file that fails any check is
//! reported, never trusted.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use super::{FullGen, Key};
use crate::trace::{BlockMap, Dims, KvStore, LayerTrace, Trace, W_MAX};

/// Bumped whenever the layout or the Trace's contents change: older entries then miss.
pub const FORMAT_VERSION: u32 = 2;

/// Entry file extension.
pub const EXT: &str = "kvp";

const MAGIC: &[u8; 8] = b"KVSCOPEP";
/// Written in native order: read back differently, the file came from another machine.
const BYTE_ORDER: u32 = 0x0102_0304;
/// magic, byte order, version, meta length, payload length, CRC.
pub const HEADER_BYTES: u64 = 8 + 4 + 4 + 8 + 8 + 4;
const CRC_OFFSET: u64 = HEADER_BYTES - 4;
/// The key's ids dominate the JSON: 64 MB is far beyond any context.
const MAX_META: u64 = 64 << 20;

/// The JSON part: the key, the Trace's shape and the stored generation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    pub key: Key,
    pub model_name: String,
    pub created_unix: u64,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub len: usize,
    pub w_max: usize,
    pub windows: Vec<Option<usize>>,
    pub vocab: usize,
    /// How the Trace stores K and V: "f16" or "f32".
    pub kv_store: String,
    pub full: FullGen,
}

impl Meta {
    pub fn new(key: &Key, trace: &Trace, full: &FullGen, model_name: &str) -> Meta {
        Meta {
            key: key.clone(),
            model_name: model_name.to_string(),
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            n_layers: trace.dims.n_layers,
            n_heads: trace.dims.n_heads,
            n_kv_heads: trace.dims.n_kv_heads,
            head_dim: trace.dims.head_dim,
            len: trace.len,
            w_max: trace.w_max,
            windows: trace.windows.clone(),
            vocab: trace.last_logits.len(),
            kv_store: match trace.layers.first().map(|l| &l.k) {
                Some(KvStore::F16(_)) => "f16",
                _ => "f32",
            }
            .to_string(),
            full: full.clone(),
        }
    }

    /// Element counts of each layer's arrays: k (and v), q_last, col_sums, one map.
    fn layer_counts(&self) -> Option<[u64; 4]> {
        let (len, hd) = (self.len as u64, self.head_dim as u64);
        let (_, nb) = BlockMap::geometry(self.len);
        Some([
            (self.n_kv_heads as u64).checked_mul(len)?.checked_mul(hd)?,
            (self.n_heads as u64)
                .checked_mul(self.w_max as u64)?
                .checked_mul(hd)?,
            (self.n_heads as u64).checked_mul(len)?,
            (nb as u64).checked_mul(nb as u64)?,
        ])
    }

    /// Payload bytes this shape takes, `None` when it overflows (a forged header).
    pub fn payload_bytes(&self) -> Option<u64> {
        let [kv, q, cs, map] = self.layer_counts()?;
        let elem = if self.kv_store == "f16" { 2 } else { 4 };
        let per_layer = kv
            .checked_mul(2 * elem)?
            .checked_add(q.checked_mul(4)?)?
            .checked_add(cs.checked_mul(4)?)?
            .checked_add(map.checked_mul(4)?.checked_mul(self.n_heads as u64)?)?;
        per_layer
            .checked_mul(self.n_layers as u64)?
            .checked_add((self.vocab as u64).checked_mul(4)?)
    }

    /// Shape checks beyond the sizes (a consistent but wrong header must not build a
    /// Trace that panics later).
    fn check(&self, key: &Key) -> Result<()> {
        if self.key != *key {
            bail!("it holds another model, prompt or dtype (a foreign file)");
        }
        let ok = self.len == key.ids.len()
            && self.len > 0
            && self.w_max == W_MAX.min(self.len)
            && self.n_kv_heads > 0
            && self.n_heads.is_multiple_of(self.n_kv_heads)
            && (self.windows.is_empty() || self.windows.len() == self.n_layers)
            && (self.kv_store == "f16" || self.kv_store == "f32")
            && self.full.ids.len() <= self.full.max_new;
        if !ok {
            bail!("its header describes an impossible shape");
        }
        Ok(())
    }
}

/// Total file size of an entry with `meta`.
pub fn file_bytes(meta_json: usize, meta: &Meta) -> Option<u64> {
    HEADER_BYTES
        .checked_add(meta_json as u64)?
        .checked_add(meta.payload_bytes()?)
}

struct CrcWriter<W: Write> {
    w: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> CrcWriter<W> {
    fn put<T: bytemuck::Pod>(&mut self, xs: &[T]) -> std::io::Result<()> {
        let b: &[u8] = bytemuck::cast_slice(xs);
        self.crc.update(b);
        self.w.write_all(b)
    }
}

/// Writes the entry to `file` (already created); returns the bytes written.
pub fn write(file: File, meta: &Meta, trace: &Trace) -> Result<u64> {
    let json = serde_json::to_vec(meta)?;
    let payload = meta
        .payload_bytes()
        .context("the Trace is too large to store")?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    w.write_all(MAGIC)?;
    w.write_all(&BYTE_ORDER.to_ne_bytes())?;
    w.write_all(&FORMAT_VERSION.to_ne_bytes())?;
    w.write_all(&(json.len() as u64).to_ne_bytes())?;
    w.write_all(&payload.to_ne_bytes())?;
    w.write_all(&0u32.to_ne_bytes())?;
    let mut cw = CrcWriter {
        w,
        crc: crc32fast::Hasher::new(),
    };
    cw.put(&json)?;
    cw.put(&trace.last_logits)?;
    for l in &trace.layers {
        for kv in [&l.k, &l.v] {
            match kv {
                KvStore::F32(x) => cw.put(x)?,
                KvStore::F16(x) => cw.put(x)?,
            }
        }
        cw.put(&l.q_last)?;
        cw.put(&l.col_sums)?;
        for m in &l.maps {
            cw.put(&m.mean)?;
        }
    }
    let crc = cw.crc.finalize();
    let mut f = cw.w.into_inner().map_err(|e| e.into_error())?;
    f.seek(SeekFrom::Start(CRC_OFFSET))?;
    f.write_all(&crc.to_ne_bytes())?;
    f.flush()?;
    Ok(HEADER_BYTES + json.len() as u64 + payload)
}

/// The fixed header and the meta JSON of the file at `path` (for `cache ls` and read).
pub fn read_meta(f: &mut File, file_len: u64) -> Result<(Meta, Vec<u8>, u64, u32)> {
    if file_len < HEADER_BYTES {
        bail!("truncated ({file_len} bytes, shorter than the header)");
    }
    let mut h = [0u8; HEADER_BYTES as usize];
    f.read_exact(&mut h)?;
    if &h[..8] != MAGIC {
        bail!("not a kvscope prefill cache file");
    }
    let word = |o: usize| u32::from_ne_bytes(h[o..o + 4].try_into().unwrap_or_default());
    let dword = |o: usize| u64::from_ne_bytes(h[o..o + 8].try_into().unwrap_or_default());
    if word(8) != BYTE_ORDER {
        bail!("written on a machine of another byte order");
    }
    if word(12) != FORMAT_VERSION {
        bail!(
            "format version {}, this kvscope reads {FORMAT_VERSION}",
            word(12)
        );
    }
    let (meta_len, payload_len, crc) = (dword(16), dword(24), word(32));
    if meta_len > MAX_META {
        bail!("its header is damaged (key of {meta_len} bytes)");
    }
    let want = HEADER_BYTES
        .checked_add(meta_len)
        .and_then(|n| n.checked_add(payload_len));
    if want != Some(file_len) {
        bail!("truncated or padded ({file_len} bytes, the header says {want:?})");
    }
    let mut json = vec![0u8; meta_len as usize];
    f.read_exact(&mut json)?;
    let meta: Meta = serde_json::from_slice(&json).context("its key is not valid JSON")?;
    Ok((meta, json, payload_len, crc))
}

fn take<T: bytemuck::Pod + Default>(
    f: &mut File,
    crc: &mut crc32fast::Hasher,
    n: u64,
) -> Result<Vec<T>> {
    let mut v = vec![T::default(); n as usize];
    let b: &mut [u8] = bytemuck::cast_slice_mut(&mut v);
    f.read_exact(b).context("truncated payload")?;
    crc.update(b);
    Ok(v)
}

/// Reads the entry at `path` for `key`: `Ok(None)` when there is no file, an error when
/// there is one that fails any check (its message says which).
pub fn read(path: &Path, key: &Key) -> Result<Option<(Trace, FullGen, u64)>> {
    let Some(md) = super::sidecar::regular_file(path)? else {
        return Ok(None);
    };
    let mut f = File::open(path).context("cannot open it")?;
    let (meta, json, payload_len, want_crc) = read_meta(&mut f, md.len())?;
    meta.check(key)?;
    if meta.payload_bytes() != Some(payload_len) {
        bail!("its payload size does not match its shape");
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(&json);
    let last_logits = take::<f32>(&mut f, &mut crc, meta.vocab as u64)?;
    let [kv, q, cs, map] = meta.layer_counts().context("impossible shape")?;
    let (bs, nb) = BlockMap::geometry(meta.len);
    let mut layers = Vec::with_capacity(meta.n_layers);
    for _ in 0..meta.n_layers {
        let mut store = |f: &mut File| -> Result<KvStore> {
            Ok(if meta.kv_store == "f16" {
                KvStore::F16(take(f, &mut crc, kv)?)
            } else {
                KvStore::F32(take(f, &mut crc, kv)?)
            })
        };
        let k = store(&mut f)?;
        let v = store(&mut f)?;
        let q_last = take(&mut f, &mut crc, q)?;
        let col_sums = take(&mut f, &mut crc, cs)?;
        let maps = (0..meta.n_heads)
            .map(|_| {
                Ok(BlockMap {
                    len: meta.len,
                    block_size: bs,
                    blocks: nb,
                    mean: take(&mut f, &mut crc, map)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        layers.push(LayerTrace {
            k,
            v,
            q_last,
            col_sums,
            maps,
        });
    }
    if crc.finalize() != want_crc {
        bail!("checksum mismatch (the file was damaged)");
    }
    let trace = Trace {
        dims: Dims {
            n_layers: meta.n_layers,
            n_heads: meta.n_heads,
            n_kv_heads: meta.n_kv_heads,
            head_dim: meta.head_dim,
        },
        len: meta.len,
        w_max: meta.w_max,
        ids: meta.key.ids.clone(),
        layers,
        last_logits,
        windows: meta.windows.clone(),
    };
    Ok(Some((trace, meta.full, md.len())))
}
