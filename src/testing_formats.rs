//! Test support (not part of the public API): the tiny GGUF of [`crate::testing`] with its
//! matrices stored in any weight format, so tests run every format through the real
//! loader and forward pass, written by [`testing::write_gguf`].
#![doc(hidden)]

use anyhow::Result;
use candle_core::quantized::GgmlDType;
use std::path::Path;

use crate::model::quant::Format;
use crate::model::Config;
use crate::testing::{self, GgufSpec};

/// The tiny shape widened where a format needs it: K-quants store rows in blocks of 256,
/// so their matrices get d_model 256 and d_ff 512 (4 query heads of 64 over 2 KV heads).
pub fn format_config(spec: &GgufSpec, fmt: Format) -> Config {
    let mut c = testing::tiny_gguf_config(spec);
    if fmt.block() > 32 {
        c.d_model = 256;
        c.d_ff = 512;
        c.head_dim = 64;
        c.opts = crate::model::config::ArchOptions::llama(64);
    }
    c
}

/// Writes the tiny GGUF of `spec` (tokenizer and metadata as
/// [`testing::write_tiny_gguf`]'s) with random weights of [`format_config`] and every
/// matrix quantised to `fmt` by candle (norm vectors stay F32). `dtype` overrides the
/// matrices' GGUF type (a type kvscope does not read, for the refusal tests).
pub fn write_tiny_gguf_as(
    path: &Path,
    spec: &GgufSpec,
    fmt: Format,
    dtype: Option<GgmlDType>,
) -> Result<Config> {
    let cfg = format_config(spec, fmt);
    let w = testing::random_weights(&cfg, spec.seed);
    let md = testing::tiny_metadata(spec, &cfg);
    testing::write_gguf(path, md, &w, dtype.unwrap_or(fmt.ggml()))?;
    Ok(cfg)
}
