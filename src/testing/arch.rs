//! Tiny random GGUFs of every supported architecture (all tensors F32), with each
//! architecture's own metadata keys and optional tensors, for comparing kvscope with an
//! independent implementation and for tests of sliding-window layers.

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::QTensor;
use std::path::Path;

use super::{f32_tensor, random_weights, tiny_config, tiny_tokenizer_metadata, tiny_vocab, Rng};
use crate::model::arch::{Activation, ArchOptions, RopeStyle};
use crate::model::config::LayerSpec;
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

/// Writes the tiny GGUF of `spec` (tokenizer as [`super::write_tiny_gguf`]'s) and
/// returns its config and weights.
pub fn write_arch_gguf(path: &Path, spec: &ArchSpec) -> Result<(Config, Weights)> {
    let cfg = arch_config(spec)?;
    let w = arch_weights(&cfg, spec);
    let a = &spec.arch;
    let u = |x: usize| Value::U32(x as u32);
    let f = Value::F32;
    let mut md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(a.clone())),
        (
            "general.name".into(),
            Value::String(format!("kvscope-tiny-{a}")),
        ),
        (format!("{a}.block_count"), u(cfg.n_layers)),
        (format!("{a}.context_length"), u(cfg.context_length)),
        (format!("{a}.embedding_length"), u(cfg.d_model)),
        (format!("{a}.feed_forward_length"), u(cfg.d_ff)),
        (format!("{a}.attention.head_count"), u(cfg.n_heads)),
        (format!("{a}.attention.head_count_kv"), u(cfg.n_kv_heads)),
        (format!("{a}.rope.freq_base"), f(cfg.rope_base)),
        (
            format!("{a}.attention.layer_norm_rms_epsilon"),
            f(cfg.rms_eps),
        ),
    ];
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
    md.extend(tiny_tokenizer_metadata());
    md.sort_by(|x, y| x.0.cmp(&y.0));

    let lin = |l: &crate::model::weights::Linear| f32_tensor(&l.to_f32(), &[l.rows, l.cols]);
    let vec1 = |v: &[f32]| f32_tensor(v, &[v.len()]);
    let mut tensors: Vec<(String, QTensor)> = vec![("token_embd.weight".into(), lin(&w.embed)?)];
    for (i, l) in w.layers.iter().enumerate() {
        let p = |n: &str| format!("blk.{i}.{n}");
        tensors.push((p("attn_norm.weight"), vec1(&l.attn_norm)?));
        tensors.push((p("attn_q.weight"), lin(&l.wq)?));
        tensors.push((p("attn_k.weight"), lin(&l.wk)?));
        tensors.push((p("attn_v.weight"), lin(&l.wv)?));
        tensors.push((p("attn_output.weight"), lin(&l.wo)?));
        tensors.push((p("ffn_norm.weight"), vec1(&l.ffn_norm)?));
        tensors.push((p("ffn_gate.weight"), lin(&l.gate)?));
        tensors.push((p("ffn_up.weight"), lin(&l.up)?));
        tensors.push((p("ffn_down.weight"), lin(&l.down)?));
        let e = &l.extra;
        if let Some([bq, bk, bv]) = &e.qkv_bias {
            tensors.push((p("attn_q.bias"), vec1(bq)?));
            tensors.push((p("attn_k.bias"), vec1(bk)?));
            tensors.push((p("attn_v.bias"), vec1(bv)?));
        }
        if let (Some(qn), Some(kn)) = (&e.q_norm, &e.k_norm) {
            tensors.push((p("attn_q_norm.weight"), vec1(qn)?));
            tensors.push((p("attn_k_norm.weight"), vec1(kn)?));
        }
        if let (Some(pa), Some(pf)) = (&e.post_attn_norm, &e.post_ffn_norm) {
            tensors.push((p("post_attention_norm.weight"), vec1(pa)?));
            tensors.push((p("post_ffw_norm.weight"), vec1(pf)?));
        }
    }
    tensors.push(("output_norm.weight".into(), vec1(&w.out_norm)?));
    if let Some(h) = &w.lm_head {
        tensors.push(("output.weight".into(), lin(h)?));
    }
    if let Some(r) = &w.rope_freqs {
        tensors.push(("rope_freqs.weight".into(), vec1(r)?));
    }

    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
    );
    gguf_file::write(&mut file, &md_refs, &t_refs)?;
    std::io::Write::flush(&mut file)?;
    Ok((cfg, w))
}
