//! Test support (not part of the public API): a tiny random GQA llama model built in
//! memory, and the same kind of model written as a complete llama GGUF with a byte-level
//! BPE tokenizer, so tests exercise the real code paths without a download. [`arch`]
//! writes the same kind of model for every supported architecture.
#![doc(hidden)]

pub mod arch;

use anyhow::{Context, Result};
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use std::path::Path;

use crate::model::config::ArchOptions;
use crate::model::config::LayerSpec;
use crate::model::linear::Linear;
use crate::model::weights::{LayerExtras, LayerWeights, Weights};
use crate::model::{Config, Model};

/// SplitMix64: a small seeded generator, identical on every platform.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[-1, 1)`.
    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// Uniform integer in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform() * scale).collect()
    }
}

/// The tiny GQA shape the tests use: 2 layers, d_model 64, 4 query heads over 2 KV heads
/// of 16 dims, d_ff 96 (a multiple of the quantisation block), RoPE base 10000.
pub fn tiny_config(vocab_size: usize, context_length: usize) -> Config {
    Config {
        name: "kvscope-tiny".into(),
        arch: "llama".into(),
        n_layers: 2,
        d_model: 64,
        d_ff: 96,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 16,
        rope_base: 10_000.0,
        rms_eps: 1e-5,
        context_length,
        vocab_size,
        layers: vec![
            LayerSpec {
                window: None,
                rope_base: 10_000.0,
                rope_scale: 1.0,
            };
            2
        ],
        opts: ArchOptions::llama(16),
    }
}

/// Random weights for `cfg`, from `seed`. Each linear layer is scaled so that unit-size
/// inputs give unit-size outputs (queries a little larger, so attention is not flat);
/// norm gains are near 1. The output head is a separate matrix (a tied one makes a
/// random model repeat its input token).
pub fn random_weights(cfg: &Config, seed: u64) -> Weights {
    let mut rng = Rng::new(seed);
    let d = cfg.d_model;
    let kv = cfg.n_kv_heads * cfg.head_dim;
    // Uniform(-1, 1) has variance 1/3: sqrt(3 / fan_in) gives unit-variance outputs.
    let mut lin = |rows: usize, cols: usize, gain: f32| {
        let s = gain * (3.0 / cols as f32).sqrt();
        Linear::from_f32(rng.vec(rows * cols, s), rows, cols)
    };
    let mut layers = Vec::with_capacity(cfg.n_layers);
    let qd = cfg.q_dim();
    for _ in 0..cfg.n_layers {
        let wq = lin(qd, d, 1.5);
        let wk = lin(kv, d, 1.5);
        let wv = lin(kv, d, 1.0);
        let wo = lin(d, qd, 0.5);
        let gate = lin(cfg.d_ff, d, 1.0);
        let up = lin(cfg.d_ff, d, 1.0);
        let down = lin(d, cfg.d_ff, 0.5);
        layers.push(LayerWeights {
            attn_norm: Vec::new(),
            wq,
            wk,
            wv,
            wo,
            ffn_norm: Vec::new(),
            gate,
            up,
            down,
            extra: LayerExtras::default(),
        });
    }
    let embed = lin(cfg.vocab_size, d, (d as f32 / 3.0).sqrt());
    let lm_head = lin(cfg.vocab_size, d, 1.0);
    let mut rng = Rng::new(seed ^ 0x5eed);
    for l in &mut layers {
        l.attn_norm = (0..d).map(|_| 1.0 + 0.1 * rng.uniform()).collect();
        l.ffn_norm = (0..d).map(|_| 1.0 + 0.1 * rng.uniform()).collect();
    }
    let out_norm = (0..d).map(|_| 1.0 + 0.1 * rng.uniform()).collect();
    Weights {
        embed,
        layers,
        out_norm,
        lm_head: Some(lm_head),
        rope_freqs: None,
    }
}

/// A tiny random model (see [`tiny_config`]) with `vocab_size` tokens.
pub fn tiny_model(vocab_size: usize, context_length: usize, seed: u64) -> Model {
    let cfg = tiny_config(vocab_size, context_length);
    let w = random_weights(&cfg, seed);
    Model::new(cfg, w).expect("the tiny config is valid")
}

/// `n` random token ids below `vocab`.
pub fn random_ids(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.below(vocab) as u32).collect()
}

/// GPT-2's byte-level alphabet: the printable character standing for each byte 0..256.
pub fn byte_level_alphabet() -> Vec<char> {
    let printable = |b: u32| {
        (u32::from('!')..=u32::from('~')).contains(&b)
            || (0xA1..=0xAC).contains(&b)
            || (0xAE..=0xFF).contains(&b)
    };
    let mut n = 0;
    (0..256u32)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap_or('?')
            } else {
                n += 1;
                char::from_u32(255 + n).unwrap_or('?')
            }
        })
        .collect()
}

/// What [`write_tiny_gguf`] writes.
#[derive(Debug, Clone)]
pub struct GgufSpec {
    /// `general.architecture` (and the prefix of the hyper-parameter keys).
    pub arch: String,
    pub context_length: usize,
    pub seed: u64,
}

impl Default for GgufSpec {
    fn default() -> Self {
        GgufSpec {
            arch: "llama".into(),
            context_length: 256,
            seed: 7,
        }
    }
}

/// Merges of the tiny tokenizer (their results are in the vocabulary).
pub const TINY_MERGES: [&str; 4] = ["Ġ t", "h e", "Ġt he", "i n"];

/// The tiny GGUF's chat template: ChatML, as in SmolLM2's file (without its default
/// system prompt).
pub const TINY_CHAT_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Vocabulary of the tiny GGUF: the 256 byte-level characters (id = byte), the merge
/// results, then `<|im_start|>` and `<|im_end|>` (control tokens).
pub fn tiny_vocab() -> Vec<String> {
    let mut v: Vec<String> = byte_level_alphabet()
        .into_iter()
        .map(|c| c.to_string())
        .collect();
    v.extend(TINY_MERGES.iter().map(|m| m.replace(' ', "")));
    v.push("<|im_start|>".into());
    v.push("<|im_end|>".into());
    v
}

/// The config a GGUF written with `spec` loads as.
pub fn tiny_gguf_config(spec: &GgufSpec) -> Config {
    let mut c = tiny_config(tiny_vocab().len(), spec.context_length);
    c.arch = spec.arch.clone();
    c
}

/// The tokenizer keys of the tiny GGUF: GPT-2 byte-level BPE, pre-tokenizer `smollm`,
/// [`tiny_vocab`] with its two control tokens as BOS and EOS.
pub fn tiny_tokenizer_metadata() -> Vec<(String, Value)> {
    let vocab = tiny_vocab();
    let n_special = 2;
    let u = |x: usize| Value::U32(x as u32);
    vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("smollm".into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(vocab.iter().map(|t| Value::String(t.clone())).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(
                (0..vocab.len())
                    .map(|i| Value::I32(if i >= vocab.len() - n_special { 3 } else { 1 }))
                    .collect(),
            ),
        ),
        (
            "tokenizer.ggml.merges".into(),
            Value::Array(
                TINY_MERGES
                    .iter()
                    .map(|m| Value::String(m.to_string()))
                    .collect(),
            ),
        ),
        ("tokenizer.ggml.bos_token_id".into(), u(vocab.len() - 2)),
        ("tokenizer.ggml.eos_token_id".into(), u(vocab.len() - 1)),
        (
            "tokenizer.chat_template".into(),
            Value::String(TINY_CHAT_TEMPLATE.into()),
        ),
    ]
}

pub(crate) fn f32_tensor(data: &[f32], shape: &[usize]) -> Result<QTensor> {
    let t = Tensor::from_slice(data, shape, &Device::Cpu)?;
    Ok(QTensor::quantize(&t, GgmlDType::F32)?)
}

/// The hyper-parameter keys every tiny GGUF carries (`a` is the architecture prefix);
/// the writers add the head-size keys their architecture uses.
pub(crate) fn hyper_metadata(cfg: &Config, a: &str, name: &str) -> Vec<(String, Value)> {
    let u = |x: usize| Value::U32(x as u32);
    vec![
        ("general.architecture".into(), Value::String(a.into())),
        ("general.name".into(), Value::String(name.into())),
        (format!("{a}.block_count"), u(cfg.n_layers)),
        (format!("{a}.context_length"), u(cfg.context_length)),
        (format!("{a}.embedding_length"), u(cfg.d_model)),
        (format!("{a}.feed_forward_length"), u(cfg.d_ff)),
        (format!("{a}.attention.head_count"), u(cfg.n_heads)),
        (format!("{a}.attention.head_count_kv"), u(cfg.n_kv_heads)),
        (format!("{a}.rope.freq_base"), Value::F32(cfg.rope_base)),
        (
            format!("{a}.attention.layer_norm_rms_epsilon"),
            Value::F32(cfg.rms_eps),
        ),
    ]
}

/// The one tiny-GGUF writer: `md` (plus the tiny tokenizer's keys) and the tensors of
/// `w`, matrices stored as `matrix_dtype` (quantised by candle) and vectors as F32, with
/// whichever optional tensors `w` carries (biases, q/k norms, gemma's extra norms,
/// Llama 3 rope factors).
pub fn write_gguf(
    path: &Path,
    mut md: Vec<(String, Value)>,
    w: &Weights,
    matrix_dtype: GgmlDType,
) -> Result<()> {
    md.extend(tiny_tokenizer_metadata());
    md.sort_by(|x, y| x.0.cmp(&y.0));
    let lin = |l: &Linear| -> Result<QTensor> {
        let t = Tensor::from_vec(l.to_f32(), (l.rows, l.cols), &Device::Cpu)?;
        Ok(QTensor::quantize(&t, matrix_dtype)?)
    };
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
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
    );
    gguf_file::write(&mut f, &md_refs, &t_refs)?;
    std::io::Write::flush(&mut f)?;
    Ok(())
}

/// The metadata of the tiny GGUF of `spec` whose shape is `cfg` (the head size as a
/// RoPE dimension count, as llama files carry it).
pub(crate) fn tiny_metadata(spec: &GgufSpec, cfg: &Config) -> Vec<(String, Value)> {
    let a = &spec.arch;
    let mut md = hyper_metadata(cfg, a, &cfg.name);
    md.push((
        format!("{a}.rope.dimension_count"),
        Value::U32(cfg.head_dim as u32),
    ));
    md
}

/// Writes a complete llama GGUF (all tensors F32, the weights of
/// [`random_weights`]`(tiny_gguf_config(spec), spec.seed)`) with a GPT-2 byte-level BPE
/// tokenizer (pre-tokenizer `smollm`), so any UTF-8 text tokenizes and ChatML works.
pub fn write_tiny_gguf(path: &Path, spec: &GgufSpec) -> Result<Config> {
    let cfg = tiny_gguf_config(spec);
    let w = random_weights(&cfg, spec.seed);
    write_gguf(path, tiny_metadata(spec, &cfg), &w, GgmlDType::F32)?;
    Ok(cfg)
}

/// A fresh empty folder under the system temp dir, unique to this process and `tag`.
pub fn temp_dir(tag: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let p = std::env::temp_dir().join(format!(
        "kvscope-test-{tag}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).expect("cannot create a temp folder");
    p
}

/// The tiny GGUF with a 2048-token context (room for the profile measurements' needle
/// prompts) written into a fresh [`temp_dir`], loaded as a user's model is; and its path.
pub fn tiny_loaded(tag: &str) -> (crate::model::Loaded, std::path::PathBuf) {
    let path = temp_dir(tag).join("tiny.gguf");
    let spec = GgufSpec {
        context_length: 2048,
        ..GgufSpec::default()
    };
    write_tiny_gguf(&path, &spec).expect("write tiny gguf");
    (crate::model::load(&path).expect("load tiny gguf"), path)
}
