//! `gemma3`: Gemma 3 (text). Differences from llama, as llama.cpp runs it:
//! - `head_dim` = `attention.key_length` (256), not d_model / n_heads;
//! - per-head RMSNorm of Q and K before RoPE, and RMSNorms of the attention and MLP
//!   outputs before each residual add (the GGUF stores Gemma's `1 + w` norm gains
//!   already added, so every norm is a plain RMSNorm over the stored weight);
//! - the embedding is scaled by sqrt(d_model); GELU (tanh) gated MLP; NeoX RoPE;
//! - five of every six layers slide over the last `attention.sliding_window` positions
//!   with RoPE base 10000; every sixth is global with the file's `rope.freq_base` (and
//!   its linear `rope.scaling` when the file has one);
//! - scores scaled by 1/sqrt(head_dim), except the 62-layer 27B model, scaled by
//!   1/sqrt(d_model / n_heads) (Gemma's `query_pre_attn_scalar`);
//! - final logit soft-capping when the file gives `final_logit_softcapping`.

use anyhow::{bail, Result};

use super::Arch;
use crate::model::config::{Activation, Config, RopeStyle};
use crate::model::metadata::{f32_or, get_usize, linear_rope_scale, Metadata};

pub const ARCH: Arch = Arch {
    name: "gemma3",
    read,
};

/// Every `PATTERN`-th layer is global, the others slide (llama.cpp's swa pattern 6).
const PATTERN: usize = 6;
/// RoPE base of the sliding layers.
const LOCAL_BASE: f32 = 10_000.0;

fn read(md: &Metadata, cfg: &mut Config) -> Result<()> {
    let o = &mut cfg.opts;
    o.qk_norm = true;
    o.post_norms = true;
    o.rope_style = RopeStyle::Neox;
    o.activation = Activation::GeluTanh;
    o.embed_scale = (cfg.d_model as f32).sqrt();
    o.attn_scale = if cfg.n_layers == 62 {
        1.0 / ((cfg.d_model / cfg.n_heads) as f32).sqrt()
    } else {
        1.0 / (cfg.head_dim as f32).sqrt()
    };
    let cap = f32_or(md, "gemma3.final_logit_softcapping", 0.0)?;
    o.final_softcap = (cap > 0.0).then_some(cap);
    let window = get_usize(md, "gemma3.attention.sliding_window")?;
    if window == 0 {
        bail!("GGUF metadata 'gemma3.attention.sliding_window' is 0");
    }
    let global_scale = linear_rope_scale(md, "gemma3")?;
    let local_base = f32_or(md, "gemma3.rope.local_freq_base", LOCAL_BASE)?;
    for (i, l) in cfg.layers.iter_mut().enumerate() {
        if (i + 1) % PATTERN == 0 {
            l.rope_scale = global_scale;
        } else {
            l.window = Some(window);
            l.rope_base = local_base;
            l.rope_scale = 1.0;
        }
    }
    Ok(())
}
