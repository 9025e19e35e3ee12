//! Tiny random GGUFs of every supported architecture (all tensors F32), with each
//! architecture's own metadata keys and optional tensors, for comparing kvscope with an
//! independent implementation and for tests of sliding-window layers.

use anyhow::{bail, Result};
use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::GgmlDType;
use std::path::Path;

use super::{hyper_metadata, random_weights, tiny_config, tiny_vocab, write_gguf, Rng};
use crate::model::config::LayerSpec;
use crate::model::config::{Activation, ArchOptions, RopeStyle};
use crate::model::weights::Weights;
use crate::model::Config;

/// What to write.
#[derive(Debug, Clone)]
pub struct ArchSpec {
    /// `llama`, `qwen2`, `qwen3` or `gemma3`.
    pub arch: String,
    pub seed: u64,
    pub context_length: usize,
    /// gemma3: the sliding window of its local layers.
    pub sliding_window: usize,
    /// llama: write a `rope_freqs` tensor (Llama 3 frequency factors).
    pub rope_freqs: bool,
}

impl ArchSpec {
    pub fn new(arch: &str) -> Self {
        ArchSpec {
            arch: arch.into(),
            seed: 11,
            context_length: 256,
            sliding_window: 512,
            rope_freqs: false,
        }
    }
}

/// The config a GGUF written with `spec` loads as.
///
/// Shapes: llama and qwen2 as [`tiny_config`] (2 layers, d_model 64, 4 query heads over
/// 2 KV heads of 16 dims); qwen3 the same with 32-dim heads (so `head_dim` is not
/// d_model / n_heads); gemma3 6 layers (the sixth global) with 4 query heads over 1 KV
/// head of 32 dims, as Gemma 3 270M has 4 over 1 of 256.
pub fn arch_config(spec: &ArchSpec) -> Result<Config> {
    let mut c = tiny_config(tiny_vocab().len(), spec.context_length);
    c.arch = spec.arch.clone();
    match spec.arch.as_str() {
        "llama" => {}
        "qwen2" => {
            c.opts.qkv_bias = true;
            c.opts.rope_style = RopeStyle::Neox;
            c.rope_base = 1_000_000.0;
        }
        "qwen3" => {
            c.head_dim = 32;
            c.opts = ArchOptions::llama(32);
            c.opts.qk_norm = true;
            c.opts.rope_style = RopeStyle::Neox;
            c.rope_base = 1_000_000.0;
        }
        "gemma3" => {
            c.n_layers = 6;
            c.n_kv_heads = 1;
            c.head_dim = 32;
            c.rope_base = 1_000_000.0;
            c.rms_eps = 1e-6;
            c.opts = ArchOptions::llama(32);
            c.opts.qk_norm = true;
            c.opts.post_norms = true;
            c.opts.rope_style = RopeStyle::Neox;
            c.opts.activation = Activation::GeluTanh;
            c.opts.embed_scale = (c.d_model as f32).sqrt();
        }
        other => bail!("no tiny writer for architecture '{other}'"),
    }
    c.layers = (0..c.n_layers)
        .map(|i| {
            let sliding = c.arch == "gemma3" && (i + 1) % 6 != 0;
            LayerSpec {
                window: sliding.then_some(spec.sliding_window),
                rope_base: if sliding { 10_000.0 } else { c.rope_base },
                rope_scale: 1.0,
            }
        })
        .collect();
    c.validate()?;
    Ok(c)
}

/// Random weights for an [`arch_config`], with the architecture's optional tensors:
/// [`random_weights`] plus biases, Q/K norm gains and post-norm gains near 1 (biases
/// small), Llama 3 frequency factors when asked; gemma3's output is tied, as Gemma's.
pub fn arch_weights(cfg: &Config, spec: &ArchSpec) -> Weights {
    let mut w = random_weights(cfg, spec.seed);
    let mut rng = Rng::new(spec.seed ^ 0xa5c4);
    let (d, hd) = (cfg.d_model, cfg.head_dim);
    let gains = |n: usize, rng: &mut Rng| -> Vec<f32> {
        (0..n).map(|_| 1.0 + 0.2 * rng.uniform()).collect()
    };
    for l in &mut w.layers {
        let e = &mut l.extra;
        if cfg.opts.qkv_bias {
            e.qkv_bias = Some([
                rng.vec(cfg.q_dim(), 0.3),
                rng.vec(cfg.kv_dim(), 0.3),
                rng.vec(cfg.kv_dim(), 0.3),
            ]);
        }
        if cfg.opts.qk_norm {
            e.q_norm = Some(gains(hd, &mut rng));
            e.k_norm = Some(gains(hd, &mut rng));
        }
        if cfg.opts.post_norms {
            e.post_attn_norm = Some(gains(d, &mut rng));
            e.post_ffn_norm = Some(gains(d, &mut rng));
        }
    }
    if cfg.arch == "gemma3" {
        // Gemma ties its output matrix to the embedding.
        w.lm_head = None;
    }
    if spec.rope_freqs {
        // Llama 3's shape: high frequencies kept, low ones divided by up to 8.
        let n = cfg.opts.rope_dims / 2;
        w.rope_freqs = Some(
            (0..n)
                .map(|i| 1.0 + 7.0 * i as f32 / (n - 1) as f32)
                .collect(),
        );
    }
    w
}

/// Writes the tiny GGUF of `spec` (tokenizer as [`super::write_tiny_gguf`]'s, through
/// the one writer [`super::write_gguf`]) and returns its config and weights.
pub fn write_arch_gguf(path: &Path, spec: &ArchSpec) -> Result<(Config, Weights)> {
    let cfg = arch_config(spec)?;
    let w = arch_weights(&cfg, spec);
    let a = &spec.arch;
    let u = |x: usize| Value::U32(x as u32);
    let mut md = hyper_metadata(&cfg, a, &format!("kvscope-tiny-{a}"));
    if a == "gemma3" || a == "qwen3" {
        // As the real files: head size from key/value length, no RoPE dimension count.
        md.push((format!("{a}.attention.key_length"), u(cfg.head_dim)));
        md.push((format!("{a}.attention.value_length"), u(cfg.head_dim)));
    } else {
        md.push((format!("{a}.rope.dimension_count"), u(cfg.head_dim)));
    }
    if a == "gemma3" {
        md.push((
            "gemma3.attention.sliding_window".into(),
            u(spec.sliding_window),
        ));
    }
    write_gguf(path, md, &w, GgmlDType::F32)?;
    Ok((cfg, w))
}
