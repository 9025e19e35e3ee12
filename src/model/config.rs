//! Model hyper-parameters and architecture facts read from GGUF metadata (by the
//! architecture files in `arch/`).

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use serde::Serialize;

use super::arch::ArchOptions;
use crate::trace::Dims;

/// What differs between the layers of one model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerSpec {
    /// `Some(S)`: the layer attends, at position `p`, only to positions `(p - S, p]`
    /// (a sliding-window layer); `None`: to every earlier position (global).
    pub window: Option<usize>,
    pub rope_base: f32,
    /// Positions are multiplied by this before rotating (linear RoPE scaling; 1 = none).
    pub rope_scale: f32,
}

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
    /// RoPE base of the global layers (each layer's own is in `layers`).
    pub rope_base: f32,
    pub rms_eps: f32,
    pub context_length: usize,
    pub vocab_size: usize,
    /// One entry per layer.
    pub layers: Vec<LayerSpec>,
    pub opts: ArchOptions,
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

    /// Width of all query heads together (`n_heads * head_dim`, which need not be
    /// `d_model`).
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Width of all KV heads together.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// The sliding window of every layer (`None` = global).
    pub fn windows(&self) -> Vec<Option<usize>> {
        self.layers.iter().map(|l| l.window).collect()
    }

    /// Checks the invariants the forward pass relies on.
    pub fn validate(&self) -> Result<()> {
        if self.n_layers == 0
            || self.n_heads == 0
            || self.n_kv_heads == 0
            || self.d_model == 0
            || self.head_dim == 0
            || self.vocab_size == 0
        {
            bail!("model has an empty dimension: {self:?}");
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            bail!(
                "{} query heads do not divide into {} KV heads",
                self.n_heads,
                self.n_kv_heads
            );
        }
        let r = self.opts.rope_dims;
        if !r.is_multiple_of(2) || r == 0 || r > self.head_dim {
            bail!(
                "unsupported head layout: RoPE over {r} of {} head dimensions",
                self.head_dim
            );
        }
        if self.layers.len() != self.n_layers {
            bail!(
                "{} per-layer entries for {} layers",
                self.layers.len(),
                self.n_layers
            );
        }
        if self.layers.iter().any(|l| l.window == Some(0)) {
            bail!("a sliding window of 0 positions");
        }
        Ok(())
    }

    pub fn from_gguf(content: &Content) -> Result<Self> {
        super::arch::read_config(&content.metadata)
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
