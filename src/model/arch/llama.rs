//! `llama`: SmolLM, Llama 2, TinyLlama, Llama 3.x, Mistral. Pre-norm, SiLU-gated MLP,
//! adjacent-pair RoPE (the converter permutes Q/K rows to it), no biases. Llama 3.x
//! frequency scaling arrives as the optional `rope_freqs` tensor (read with the
//! weights); linear scaling from `rope.scaling.*`.

use anyhow::Result;

use super::Arch;
use crate::model::config::Config;
use crate::model::metadata::{linear_rope_scale, Metadata};

pub const ARCH: Arch = Arch {
    name: "llama",
    read,
};

fn read(md: &Metadata, cfg: &mut Config) -> Result<()> {
    let scale = linear_rope_scale(md, "llama")?;
    for l in &mut cfg.layers {
        l.rope_scale = scale;
    }
    Ok(())
}
