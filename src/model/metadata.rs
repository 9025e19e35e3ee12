//! Typed reads of GGUF metadata values (key -> value), shared by the architecture files
//! and the tokenizer: one clear error per missing or mistyped key.

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file::Value;
use std::collections::HashMap;

/// GGUF metadata, key -> value.
pub type Metadata = HashMap<String, Value>;

pub fn get_str<'a>(md: &'a Metadata, key: &str) -> Result<&'a str> {
    md.get(key)
        .with_context(|| format!("GGUF metadata lacks '{key}'"))?
        .to_string()
        .map(|s| s.as_str())
        .with_context(|| format!("GGUF metadata '{key}' is not a string"))
}

pub fn get_usize(md: &Metadata, key: &str) -> Result<usize> {
    let v = md
        .get(key)
        .with_context(|| format!("GGUF metadata lacks '{key}'"))?;
    let n = match v {
        Value::U8(x) => *x as u64,
        Value::U16(x) => *x as u64,
        Value::U32(x) => *x as u64,
        Value::U64(x) => *x,
        Value::I8(x) if *x >= 0 => *x as u64,
        Value::I16(x) if *x >= 0 => *x as u64,
        Value::I32(x) if *x >= 0 => *x as u64,
        Value::I64(x) if *x >= 0 => *x as u64,
        _ => bail!("GGUF metadata '{key}' is not a non-negative integer"),
    };
    Ok(n as usize)
}

/// A float metadata value, or `default` when the key is absent.
pub fn f32_or(md: &Metadata, key: &str, default: f32) -> Result<f32> {
    match md.get(key) {
        None => Ok(default),
        Some(v) => v
            .to_f32()
            .or_else(|_| v.to_f64().map(|x| x as f32))
            .ok()
            .with_context(|| format!("GGUF metadata '{key}' is not a float")),
    }
}

/// Linear RoPE scaling (`rope.scaling.type = linear`, `rope.scaling.factor = f`):
/// positions are multiplied by `1 / f`. Returns 1 when the file asks for none; refuses
/// scaling kinds kvscope does not implement.
pub fn linear_rope_scale(md: &Metadata, arch: &str) -> Result<f32> {
    let kind = match md.get(&format!("{arch}.rope.scaling.type")) {
        Some(v) => v.to_string().map(|s| s.as_str()).unwrap_or("?"),
        None => "none",
    };
    let factor = f32_or(md, &format!("{arch}.rope.scaling.factor"), 1.0)?;
    match kind {
        // Llama 3.x: the converter wrote the scaled frequencies as the `rope_freqs`
        // tensor, which the weights loader reads.
        "none" | "llama3" => Ok(1.0),
        "linear" if factor > 0.0 => Ok(1.0 / factor),
        other => bail!(
            "RoPE scaling '{other}' (factor {factor}) is not supported by kvscope (supported: none, linear, and Llama 3's rope_freqs tensor)"
        ),
    }
}
