//! Validation of a GGUF file's header before anything is sized from it.
//!
//! candle's reader bounds every count by the file size, but it trusts the rest: an
//! alignment of 0 divides by zero inside the reader, a context length of 4294967295
//! would size tables of hundreds of GB, a NaN epsilon or a RoPE base of 0 give garbage
//! output, and a tensor whose declared type does not match the bytes it spans is read
//! as the wrong format. Two checks, each one clear error naming the key or tensor:
//!
//! - [`alignment`] walks the header's metadata once (bounded: every length is checked
//!   against the bytes left) before candle parses it, and returns `general.alignment`.
//! - [`check`] runs on the parsed header before the config is built: numeric metadata
//!   within sane ranges, and every tensor's type x shape equal to the bytes it spans.

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};

/// Largest context length accepted: 16M tokens (the largest real models declare 10M).
pub const MAX_CONTEXT: u64 = 1 << 24;
/// Largest layer count, head count, or KV head count accepted.
pub const MAX_COUNT: u64 = 4096;
/// Largest embedding, feed-forward or head dimension accepted.
pub const MAX_DIM: u64 = 1 << 20;

/// Walks the GGUF header from the start of `r` (magic, counts, metadata) and returns
/// `general.alignment` (32 when absent). Refuses an alignment that is 0 or not a power
/// of two. Every string and array length is checked against the bytes left in the
/// file before anything is allocated.
pub fn alignment<R: Read + Seek>(r: &mut R) -> Result<u64> {
    let file_len = r.seek(SeekFrom::End(0))?;
    r.seek(SeekFrom::Start(0))?;
    let mut w = Walker {
        r,
        file_len,
        pos: 0,
    };
    let mut magic = [0u8; 4];
    w.read(&mut magic)?;
    if &magic != b"GGUF" {
        bail!("not a GGUF file (wrong magic bytes)");
    }
    let version = w.u32()?;
    let v1 = match version {
        1 => true,
        2 | 3 => false,
        v => bail!("unsupported GGUF version {v} (kvscope reads versions 1 to 3)"),
    };
    let _tensors = w.len(v1)?;
    let n_kv = w.len(v1)?;
    let mut align = None;
    for _ in 0..n_kv {
        let key = w.string(v1)?;
        let ty = w.u32()?;
        if key == "general.alignment" {
            align = Some(w.int(ty)?);
        } else {
            w.skip_value(ty, v1, 0)?;
        }
    }
    let a = align.unwrap_or(32);
    if a == 0 || !a.is_power_of_two() {
        bail!("GGUF metadata 'general.alignment' is {a}; it must be a power of two");
    }
    Ok(a)
}

/// Reads forward only, counting the bytes it has passed (no seeks: the header holds
/// tens of thousands of short strings, and a seek would drop a buffered reader's buffer).
struct Walker<'a, R> {
    r: &'a mut R,
    file_len: u64,
    pos: u64,
}

impl<R: Read> Walker<'_, R> {
    fn left(&mut self) -> Result<u64> {
        Ok(self.file_len.saturating_sub(self.pos))
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<()> {
        self.r
            .read_exact(buf)
            .map_err(|_| anyhow::anyhow!("truncated GGUF header"))?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn u32(&mut self) -> Result<u32> {
        let mut b = [0u8; 4];
        self.read(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// A count or length: u32 in version 1, u64 after.
    fn len(&mut self, v1: bool) -> Result<u64> {
        if v1 {
            Ok(self.u32()? as u64)
        } else {
            self.u64()
        }
    }

    fn skip(&mut self, n: u64) -> Result<()> {
        if n > self.left()? {
            bail!("truncated GGUF header");
        }
        let done = std::io::copy(&mut self.r.by_ref().take(n), &mut std::io::sink())?;
        if done != n {
            bail!("truncated GGUF header");
        }
        self.pos += n;
        Ok(())
    }

    fn string(&mut self, v1: bool) -> Result<String> {
        let n = self.len(v1)?;
        if n > self.left()? || n > 1 << 20 {
            bail!("corrupt GGUF header: a key of {n} bytes");
        }
        let mut b = vec![0u8; n as usize];
        self.read(&mut b)?;
        Ok(String::from_utf8_lossy(&b).into_owned())
    }

    /// An unsigned integer value of type `ty`.
    fn int(&mut self, ty: u32) -> Result<u64> {
        Ok(match ty {
            0 | 1 => {
                let mut b = [0u8; 1];
                self.read(&mut b)?;
                b[0] as u64
            }
            2 | 3 => {
                let mut b = [0u8; 2];
                self.read(&mut b)?;
                u16::from_le_bytes(b) as u64
            }
            4 | 5 => self.u32()? as u64,
            10 | 11 => self.u64()?,
            _ => bail!("GGUF metadata 'general.alignment' is not an integer"),
        })
    }

    fn skip_value(&mut self, ty: u32, v1: bool, depth: usize) -> Result<()> {
        match ty {
            0 | 1 | 7 => self.skip(1),
            2 | 3 => self.skip(2),
            4..=6 => self.skip(4),
            10..=12 => self.skip(8),
            8 => {
                let n = self.len(v1)?;
                self.skip(n)
            }
            9 => {
                if depth > 8 {
                    bail!("corrupt GGUF header: arrays nested too deep");
                }
                let ety = self.u32()?;
                let n = self.len(v1)?;
                match fixed_size(ety) {
                    Some(sz) => self.skip(n.saturating_mul(sz)),
                    None => {
                        // Each element takes at least one byte (a length prefix or a
                        // nested header), so a count beyond the bytes left is corrupt.
                        if n > self.left()? {
                            bail!("truncated GGUF header");
                        }
                        for _ in 0..n {
                            self.skip_value(ety, v1, depth + 1)?;
                        }
                        Ok(())
                    }
                }
            }
            t => bail!("corrupt GGUF header: unknown metadata value type {t}"),
        }
    }
}

fn fixed_size(ty: u32) -> Option<u64> {
    match ty {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

/// Checks the parsed header of a file of `file_len` bytes whose tensor data starts at
/// `content.tensor_data_offset`, with tensors aligned to `alignment`.
pub fn check(content: &Content, file_len: u64, alignment: u64) -> Result<()> {
    let md = &content.metadata;
    let arch = match md.get("general.architecture") {
        Some(Value::String(s)) => s.clone(),
        _ => bail!("GGUF metadata lacks 'general.architecture'"),
    };
    let key = |k: &str| format!("{arch}.{k}");
    check_count(md, &key("context_length"), 1, MAX_CONTEXT)?;
    check_count(md, &key("block_count"), 1, MAX_COUNT)?;
    check_count(md, &key("attention.head_count"), 1, MAX_COUNT)?;
    check_count(md, &key("attention.head_count_kv"), 1, MAX_COUNT)?;
    check_count(md, &key("embedding_length"), 1, MAX_DIM)?;
    check_count(md, &key("feed_forward_length"), 1, MAX_DIM)?;
    check_count(md, &key("rope.dimension_count"), 1, MAX_DIM)?;
    check_count(md, &key("attention.key_length"), 1, MAX_DIM)?;
    check_count(md, &key("attention.value_length"), 1, MAX_DIM)?;
    check_float(md, &key("rope.freq_base"), |x| x > 0.0, "a positive number")?;
    for k in [
        key("attention.layer_norm_rms_epsilon"),
        key("attention.layer_norm_epsilon"),
    ] {
        check_float(md, &k, |x| x > 0.0 && x < 1.0, "between 0 and 1")?;
    }
    check_tensors(content, file_len, alignment)
}

/// A present integer key must lie in `lo..=hi`. Absent keys are the config's business
/// (some have defaults); arrays (per-layer values in some architectures) are checked
/// element by element.
fn check_count(md: &HashMap<String, Value>, key: &str, lo: u64, hi: u64) -> Result<()> {
    let Some(v) = md.get(key) else {
        return Ok(());
    };
    let values: Vec<&Value> = match v {
        Value::Array(a) => a.iter().collect(),
        v => vec![v],
    };
    for v in values {
        let n =
            int_value(v).with_context(|| format!("GGUF metadata '{key}' is not a whole number"))?;
        if !(lo as i128..=hi as i128).contains(&n) {
            bail!("GGUF metadata '{key}' is {n}; kvscope accepts {lo} to {hi} (corrupt or not a real model?)");
        }
    }
    Ok(())
}

fn int_value(v: &Value) -> Option<i128> {
    Some(match v {
        Value::U8(x) => *x as i128,
        Value::I8(x) => *x as i128,
        Value::U16(x) => *x as i128,
        Value::I16(x) => *x as i128,
        Value::U32(x) => *x as i128,
        Value::I32(x) => *x as i128,
        Value::U64(x) => *x as i128,
        Value::I64(x) => *x as i128,
        _ => return None,
    })
}

fn check_float(
    md: &HashMap<String, Value>,
    key: &str,
    ok: impl Fn(f64) -> bool,
    want: &str,
) -> Result<()> {
    let Some(v) = md.get(key) else {
        return Ok(());
    };
    let x = match v {
        Value::F32(x) => *x as f64,
        Value::F64(x) => *x,
        v => match int_value(v) {
            Some(n) => n as f64,
            None => bail!("GGUF metadata '{key}' is not a number"),
        },
    };
    if !x.is_finite() || !ok(x) {
        bail!("GGUF metadata '{key}' is {x}; it must be {want}");
    }
    Ok(())
}

/// Every tensor: dimensions positive, element count a whole number of its type's
/// blocks, data inside the file, aligned, and no tensor's bytes overlapping the next
/// one's. Tensors are stored back to back (each padded to the alignment), so a tensor
/// whose declared type is wrong spans a different number of bytes than its type x
/// shape says; that gap is refused too.
fn check_tensors(content: &Content, file_len: u64, alignment: u64) -> Result<()> {
    let data_start = content.tensor_data_offset;
    let mut spans = Vec::with_capacity(content.tensor_infos.len());
    for (name, t) in &content.tensor_infos {
        let dims = t.shape.dims();
        if dims.contains(&0) {
            bail!("GGUF tensor '{name}' has an empty dimension {dims:?}");
        }
        let elems = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
            .with_context(|| format!("GGUF tensor '{name}' has absurd dimensions {dims:?}"))?;
        let bs = t.ggml_dtype.block_size() as u64;
        if elems % bs != 0 {
            bail!(
                "GGUF tensor '{name}' ({:?}, shape {dims:?}) is not a whole number of {bs}-element blocks",
                t.ggml_dtype
            );
        }
        let bytes = (elems / bs)
            .checked_mul(t.ggml_dtype.type_size() as u64)
            .with_context(|| format!("GGUF tensor '{name}' has absurd dimensions {dims:?}"))?;
        if t.offset % alignment != 0 {
            bail!(
                "GGUF tensor '{name}' starts at offset {}, not a multiple of the alignment {alignment}",
                t.offset
            );
        }
        let start = data_start.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(bytes));
        match end {
            Some(e) if e <= file_len => {}
            _ => bail!(
                "GGUF tensor '{name}' ({:?}, shape {dims:?}) needs {bytes} bytes at offset {}, past the end of the file ({file_len} bytes): truncated or corrupt",
                t.ggml_dtype,
                t.offset
            ),
        }
        spans.push((t.offset, bytes, name));
    }
    spans.sort();
    if let Some((off, bytes, name)) = spans.last() {
        let end = data_start + off + bytes;
        if file_len - end >= alignment {
            bail!("GGUF tensor '{name}' has {bytes} bytes by its type and shape but the file has {} more bytes after it: its declared type or shape does not match its data", file_len - end);
        }
    }
    for pair in spans.windows(2) {
        let ((off, bytes, name), (next, _, next_name)) = (&pair[0], &pair[1]);
        let end = off + bytes;
        if end > *next {
            bail!("GGUF tensor '{name}' ({bytes} bytes at offset {off}) overlaps tensor '{next_name}' at {next}: its declared type or shape does not match its data");
        }
        if next - end >= alignment {
            bail!("GGUF tensor '{name}' has {bytes} bytes by its type and shape but spans {} bytes up to tensor '{next_name}': its declared type or shape does not match its data", next - off);
        }
    }
    Ok(())
}
