//! Model hyper-parameters read from GGUF metadata.

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use serde::Serialize;

use crate::trace::Dims;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    pub name: String,
    pub arch: String,
    pub n_layers: usize,
    pub d_model: usize,
    pub d_ff: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub rope_base: f32,
    pub rms_eps: f32,
    pub context_length: usize,
    pub vocab_size: usize,
}

impl Config {
    pub fn dims(&self) -> Dims {
        Dims {
            n_layers: self.n_layers,
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
        }
    }

    /// Checks the invariants the forward pass relies on.
    pub fn validate(&self) -> Result<()> {
        if self.n_layers == 0 || self.n_heads == 0 || self.n_kv_heads == 0 || self.d_model == 0 {
            bail!("model has an empty dimension: {self:?}");
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            bail!(
                "{} query heads do not divide into {} KV heads",
                self.n_heads,
                self.n_kv_heads
            );
        }
        if !self.head_dim.is_multiple_of(2) || self.head_dim * self.n_heads != self.d_model {
            bail!(
                "unsupported head layout: {} heads x {} dims for embedding {}",
                self.n_heads,
                self.head_dim,
                self.d_model
            );
        }
        Ok(())
    }

    pub fn from_gguf(content: &Content) -> Result<Self> {
        let md = &content.metadata;
        let arch = get_str(md, "general.architecture")?;
        if arch != "llama" {
            bail!(
                "unsupported architecture '{arch}': kvscope runs GGUF models of architecture 'llama' \
                 (SmolLM, Llama 3.x and similar)"
            );
        }
        let u = |k: &str| -> Result<usize> { get_usize(md, &format!("{arch}.{k}")) };
        let n_heads = u("attention.head_count")?;
        let d_model = u("embedding_length")?;
        let head_dim = match md.get(&format!("{arch}.rope.dimension_count")) {
            Some(v) => v
                .to_u32()
                .map(|x| x as usize)
                .unwrap_or(d_model / n_heads.max(1)),
            None => d_model / n_heads.max(1),
        };
        let vocab_size = match md.get("tokenizer.ggml.tokens") {
            Some(Value::Array(a)) => a.len(),
            _ => bail!("GGUF has no tokenizer.ggml.tokens: kvscope needs the tokenizer inside the model file"),
        };
        let cfg = Config {
            name: md
                .get("general.name")
                .and_then(|v| v.to_string().ok().cloned())
                .unwrap_or_else(|| "unnamed".into()),
            arch: arch.to_string(),
            n_layers: u("block_count")?,
            d_model,
            d_ff: u("feed_forward_length")?,
            n_heads,
            n_kv_heads: get_usize(md, &format!("{arch}.attention.head_count_kv"))
                .unwrap_or(n_heads),
            head_dim,
            rope_base: md
                .get(&format!("{arch}.rope.freq_base"))
                .and_then(|v| v.to_f32().ok())
                .unwrap_or(10_000.0),
            rms_eps: md
                .get(&format!("{arch}.attention.layer_norm_rms_epsilon"))
                .and_then(|v| v.to_f32().ok())
                .unwrap_or(1e-5),
            context_length: u("context_length").unwrap_or(2048),
            vocab_size,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

pub(crate) fn get_str<'a>(
    md: &'a std::collections::HashMap<String, Value>,
    key: &str,
) -> Result<&'a str> {
    md.get(key)
        .with_context(|| format!("GGUF metadata lacks '{key}'"))?
        .to_string()
        .map(|s| s.as_str())
        .with_context(|| format!("GGUF metadata '{key}' is not a string"))
}

pub(crate) fn get_usize(md: &std::collections::HashMap<String, Value>, key: &str) -> Result<usize> {
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
