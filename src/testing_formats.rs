//! Test support (not part of the public API): the tiny GGUF of [`crate::testing`] with its
//! matrices stored in any weight format, so tests run every format through the real
//! loader and forward pass. Kept apart from the architecture writer in `testing.rs`: it
//! rewrites whatever that writes.
#![doc(hidden)]

use anyhow::{Context, Result};
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
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
    }
    c
}

/// Writes the tiny GGUF of `spec` (tokenizer and metadata from
/// [`testing::write_tiny_gguf`]) with random weights of [`format_config`] and every
/// matrix quantised to `fmt` by candle (norm vectors stay F32). `dtype` overrides the
/// matrices' GGUF type (a type kvscope does not read, for the refusal tests).
pub fn write_tiny_gguf_as(
    path: &Path,
    spec: &GgufSpec,
    fmt: Format,
    dtype: Option<GgmlDType>,
) -> Result<Config> {
    let cfg = format_config(spec, fmt);
    let base = path.with_extension("f32.gguf");
    testing::write_tiny_gguf(&base, spec)?;
    let mut f = std::fs::File::open(&base)?;
    let content = gguf_file::Content::read(&mut f)?;
    drop(f);
    let _ = std::fs::remove_file(&base);
    let a = &spec.arch;
    let mut md: Vec<(String, Value)> = content.metadata.into_iter().collect();
    for (k, v) in md.iter_mut() {
        let u = |x: usize| Value::U32(x as u32);
        if *k == format!("{a}.embedding_length") {
            *v = u(cfg.d_model);
        } else if *k == format!("{a}.feed_forward_length") {
            *v = u(cfg.d_ff);
        } else if *k == format!("{a}.rope.dimension_count")
            || *k == format!("{a}.attention.key_length")
            || *k == format!("{a}.attention.value_length")
        {
            *v = u(cfg.head_dim);
        }
    }
    md.sort_by(|x, y| x.0.cmp(&y.0));

    let w = testing::random_weights(&cfg, spec.seed);
    let dt = dtype.unwrap_or(fmt.ggml());
    let mat = |l: &crate::model::weights::Linear| -> Result<QTensor> {
        let t = Tensor::from_vec(l.to_f32(), (l.rows, l.cols), &Device::Cpu)?;
        Ok(QTensor::quantize(&t, dt)?)
    };
    let vec1 = |v: &[f32]| -> Result<QTensor> {
        let t = Tensor::from_slice(v, v.len(), &Device::Cpu)?;
        Ok(QTensor::quantize(&t, GgmlDType::F32)?)
    };
    let mut tensors: Vec<(String, QTensor)> = vec![("token_embd.weight".into(), mat(&w.embed)?)];
    for (i, l) in w.layers.iter().enumerate() {
        let p = |n: &str| format!("blk.{i}.{n}.weight");
        tensors.push((p("attn_norm"), vec1(&l.attn_norm)?));
        tensors.push((p("attn_q"), mat(&l.wq)?));
        tensors.push((p("attn_k"), mat(&l.wk)?));
        tensors.push((p("attn_v"), mat(&l.wv)?));
        tensors.push((p("attn_output"), mat(&l.wo)?));
        tensors.push((p("ffn_norm"), vec1(&l.ffn_norm)?));
        tensors.push((p("ffn_gate"), mat(&l.gate)?));
        tensors.push((p("ffn_up"), mat(&l.up)?));
        tensors.push((p("ffn_down"), mat(&l.down)?));
    }
    tensors.push(("output_norm.weight".into(), vec1(&w.out_norm)?));
    if let Some(h) = &w.lm_head {
        tensors.push(("output.weight".into(), mat(h)?));
    }
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
    );
    gguf_file::write(&mut out, &md_refs, &t_refs)?;
    std::io::Write::flush(&mut out)?;
    Ok(cfg)
}
