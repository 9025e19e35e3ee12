//! Architectures: what distinguishes one GGUF model family from another, read from the
//! file's metadata into a [`Config`]. The layer body in `forward/layer.rs` is written once
//! against these facts; nothing else in kvscope looks at an architecture name.
//!
//! Adding an architecture: one file here with a `pub const ARCH: Arch` whose `read`
//! fills the options that differ from the llama defaults, and one line in [`REGISTRY`].

use anyhow::{bail, Result};
use candle_core::quantized::gguf_file::Value;

use super::config::{ArchOptions, Config, LayerSpec};
use super::metadata::Metadata;
use super::metadata::{f32_or, get_str, get_usize};

pub mod gemma3;
pub mod llama;
pub mod qwen2;
pub mod qwen3;

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
