//! Architectures: what distinguishes one GGUF model family from another, read from the
//! file's metadata into a [`Config`]. The layer body in `forward.rs` is written once
//! against these facts; nothing else in kvscope looks at an architecture name.
//!
//! Adding an architecture: one file here with a `pub const ARCH: Arch` whose `read`
//! fills the options that differ from the llama defaults, and one line in [`REGISTRY`].

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file::Value;
use serde::Serialize;
use std::collections::HashMap;

use super::config::{get_str, get_usize, Config, LayerSpec};

pub mod gemma3;
pub mod llama;
pub mod qwen2;
pub mod qwen3;

/// GGUF metadata, key -> value.
pub type Metadata = HashMap<String, Value>;

/// One supported architecture.
pub struct Arch {
    /// `general.architecture` as the GGUF writes it.
    pub name: &'static str,
    /// Fills what differs from the llama defaults into `cfg` (already holding the
    /// common hyper-parameters read under the `{name}.` prefix).
    pub read: fn(&Metadata, &mut Config) -> Result<()>,
}

/// Every architecture kvscope opens.
pub const REGISTRY: &[Arch] = &[llama::ARCH, qwen2::ARCH, qwen3::ARCH, gemma3::ARCH];

/// How the RoPE rotation pairs the dimensions of a head (llama.cpp's rope types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum RopeStyle {
    /// Adjacent pairs `(2i, 2i + 1)` (llama: the converter permuted Q and K to this).
    Normal,
    /// Halves `(i, i + n_rot / 2)` (GPT-NeoX layout: qwen2, gemma3).
    Neox,
}

/// The gate activation of the MLP: `down(act(gate x) * up x)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Activation {
    Silu,
    /// GELU, tanh approximation.
    GeluTanh,
}

/// The architecture facts the layer body switches on (defaults: llama).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArchOptions {
    /// Q, K and V projections have bias vectors (`attn_{q,k,v}.bias`).
    pub qkv_bias: bool,
    /// Per-head RMSNorm of Q and K before RoPE (`attn_q_norm`, `attn_k_norm`).
    pub qk_norm: bool,
    /// RMSNorm of the attention and MLP outputs before the residual add
    /// (`post_attention_norm`, `post_ffw_norm`).
    pub post_norms: bool,
    pub rope_style: RopeStyle,
    /// Dimensions of a head that RoPE rotates (the first `rope_dims`).
    pub rope_dims: usize,
    pub activation: Activation,
    /// The token embedding is multiplied by this (Gemma: sqrt(d_model)).
    pub embed_scale: f32,
    /// Scores are `q . k * attn_scale`.
    pub attn_scale: f32,
    /// Final logits become `c * tanh(logits / c)` when set.
    pub final_softcap: Option<f32>,
}

impl ArchOptions {
    pub fn llama(head_dim: usize) -> Self {
        ArchOptions {
            qkv_bias: false,
            qk_norm: false,
            post_norms: false,
            rope_style: RopeStyle::Normal,
            rope_dims: head_dim,
            activation: Activation::Silu,
            embed_scale: 1.0,
            attn_scale: 1.0 / (head_dim as f32).sqrt(),
            final_softcap: None,
        }
    }
}

/// Reads a GGUF's hyper-parameters and architecture facts; refuses an architecture
/// outside [`REGISTRY`] naming the one found.
pub fn read_config(md: &Metadata) -> Result<Config> {
    let name = get_str(md, "general.architecture")?;
    let Some(arch) = REGISTRY.iter().find(|a| a.name == name) else {
        let known: Vec<&str> = REGISTRY.iter().map(|a| a.name).collect();
        bail!(
            "unsupported architecture '{name}': kvscope runs GGUF models of architecture {}",
            known.join(", ")
        );
    };
    let mut cfg = common(md, name)?;
    (arch.read)(md, &mut cfg)?;
    cfg.validate()?;
    Ok(cfg)
}

/// The hyper-parameters every architecture stores under `{arch}.`, with llama's
/// options; `head_dim` is `attention.key_length`, falling back to the RoPE dimension
/// count and then `d_model / n_heads` only when the file has neither.
fn common(md: &Metadata, arch: &str) -> Result<Config> {
    let u = |k: &str| -> Result<usize> { get_usize(md, &format!("{arch}.{k}")) };
    let opt_u = |k: &str| -> Result<Option<usize>> {
        match md.get(&format!("{arch}.{k}")) {
            None => Ok(None),
            Some(_) => u(k).map(Some),
        }
    };
    let n_heads = u("attention.head_count")?;
    let d_model = u("embedding_length")?;
    if n_heads == 0 || d_model == 0 {
        bail!("GGUF metadata gives {n_heads} attention heads and embedding length {d_model}");
    }
    let rope_dims = opt_u("rope.dimension_count")?;
    let head_dim = match opt_u("attention.key_length")? {
        Some(k) => k,
        None => rope_dims.unwrap_or(d_model / n_heads),
    };
    if let Some(v) = opt_u("attention.value_length")? {
        if v != head_dim {
            bail!("GGUF metadata gives keys of {head_dim} dims but values of {v}: unsupported");
        }
    }
    let vocab_size = match md.get("tokenizer.ggml.tokens") {
        Some(Value::Array(a)) => a.len(),
        _ => bail!(
            "GGUF has no tokenizer.ggml.tokens: kvscope needs the tokenizer inside the model file"
        ),
    };
    let n_layers = u("block_count")?;
    let rope_base = f32_or(md, &format!("{arch}.rope.freq_base"), 10_000.0)?;
    let mut opts = ArchOptions::llama(head_dim);
    opts.rope_dims = rope_dims.unwrap_or(head_dim);
    Ok(Config {
        name: md
            .get("general.name")
            .and_then(|v| v.to_string().ok().cloned())
            .unwrap_or_else(|| "unnamed".into()),
        arch: arch.to_string(),
        n_layers,
        d_model,
        d_ff: u("feed_forward_length")?,
        n_heads,
        n_kv_heads: opt_u("attention.head_count_kv")?.unwrap_or(n_heads),
        head_dim,
        rope_base,
        rms_eps: f32_or(
            md,
            &format!("{arch}.attention.layer_norm_rms_epsilon"),
            1e-5,
        )?,
        context_length: opt_u("context_length")?.unwrap_or(2048),
        vocab_size,
        layers: vec![
            LayerSpec {
                window: None,
                rope_base,
                rope_scale: 1.0,
            };
            n_layers
        ],
        opts,
    })
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
