//! `qwen3` (dense): llama's layer with per-head RMSNorm of Q and K before RoPE, the
//! NeoX RoPE layout and `head_dim` from `attention.key_length` (128 for every size,
//! which is not d_model / n_heads for all of them).

use anyhow::Result;

use super::Arch;
use crate::model::config::Config;
use crate::model::config::RopeStyle;
use crate::model::metadata::{linear_rope_scale, Metadata};

pub const ARCH: Arch = Arch {
    name: "qwen3",
    read,
};

fn read(md: &Metadata, cfg: &mut Config) -> Result<()> {
    cfg.opts.qk_norm = true;
    cfg.opts.rope_style = RopeStyle::Neox;
    let scale = linear_rope_scale(md, "qwen3")?;
    for l in &mut cfg.layers {
        l.rope_scale = scale;
    }
    Ok(())
}
