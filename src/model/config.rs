//! Model hyper-parameters and the architecture facts the layer body switches on. The
//! architecture files in `arch/` fill them from GGUF metadata (read through
//! `metadata.rs`); this file knows no architecture and no GGUF.

use anyhow::{bail, Result};
use serde::Serialize;

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
}

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
