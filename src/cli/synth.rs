//! `kvscope synth` (hidden): writes a GGUF with random weights of a real model's shape,
//! for memory and speed measurements on model sizes that cannot be downloaded here.

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file::Content;
use clap::Args;
use std::path::PathBuf;

use crate::model::quant::synth::{self, Mix};

#[derive(Args, Debug)]
pub struct SynthArgs {
    /// Shape: llama-3.2-1b, llama-3.1-8b, qwen2.5-7b or qwen2.5-0.5b.
    #[arg(long)]
    pub shape: String,
    /// Weight formats: q4_k_m (llama.cpp's Q4_K_M mix for the shape: Q4_K + Q6_K, and its 32-value fallbacks for rows that are not whole 256-blocks) or one format (q8_0, ...).
    #[arg(long, default_value = "q4_k_m")]
    pub mix: String,
    /// Output file (write it outside the repository).
    #[arg(long)]
    pub out: PathBuf,
    /// GGUF whose tokenizer the file gets (default: the default model).
    #[arg(long, value_name = "PATH")]
    pub tokenizer_from: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

pub fn run(a: &SynthArgs) -> Result<()> {
    let shapes = synth::shapes();
    let Some(shape) = shapes
        .iter()
        .find(|s| s.name.eq_ignore_ascii_case(&a.shape))
    else {
        bail!(
            "unknown shape '{}': use one of {}",
            a.shape,
            shapes.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
        );
    };
    let mix = Mix::parse(&a.mix)?;
    // An existing path must be a regular file (a FIFO would block the open forever); a
    // missing one may still be a known model name, which resolving fetches.
    let src = match a.tokenizer_from.as_deref() {
        Some(p) if std::fs::symlink_metadata(p).is_ok() => {
            crate::input::regular_file(p, "--tokenizer-from file")?;
            p.to_path_buf()
        }
        // The resolver's messages speak of --model; here the flag is --tokenizer-from.
        other => super::resolve_model_path(other).map_err(|e| {
            anyhow::anyhow!(
                "{}",
                format!("{e:#}").replace("--model", "--tokenizer-from")
            )
        })?,
    };
    // Writing over the tokenizer source would replace the user's model with random
    // weights; refused before anything is written.
    crate::output::check_target(&a.out, "--out")?;
    crate::output::refuse_input_as_output(&a.out, "--out", &[("--tokenizer-from", &src)])?;
    let mut f = std::fs::File::open(&src)
        .with_context(|| format!("cannot open tokenizer source {}", src.display()))?;
    let content = Content::read(&mut f).map_err(|e| {
        anyhow::anyhow!(
            "{}: not a readable GGUF: {}",
            src.display(),
            crate::model::first_line(&e)
        )
    })?;
    let t = std::time::Instant::now();
    let bytes = synth::write(&a.out, shape, mix, &content, a.seed, &mut |i, n| {
        if i % 16 == 0 || i == n {
            eprint!("\rkvscope synth: {i}/{n} tensors");
        }
    })?;
    eprintln!();
    println!(
        "wrote {} ({}, {}): {:.2} GB in {:.1} s",
        a.out.display(),
        shape.name,
        a.mix,
        bytes as f64 / 1e9,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
