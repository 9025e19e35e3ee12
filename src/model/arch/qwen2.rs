//! `qwen2`: Qwen2, Qwen2.5, DeepSeek-R1-Distill-Qwen. Llama's layer with biases on the
//! Q, K and V projections and the NeoX RoPE layout (as llama.cpp runs qwen2).

use anyhow::Result;

use super::Arch;
use crate::model::config::Config;
use crate::model::config::RopeStyle;
use crate::model::metadata::{linear_rope_scale, Metadata};

pub const ARCH: Arch = Arch {
    name: "qwen2",
    read,
};

fn read(md: &Metadata, cfg: &mut Config) -> Result<()> {
    cfg.opts.qkv_bias = true;
    cfg.opts.rope_style = RopeStyle::Neox;
    let scale = linear_rope_scale(md, "qwen2")?;
    for l in &mut cfg.layers {
        l.rope_scale = scale;
    }
    Ok(())
}
