//! Synthetic GGUF models: random weights of a real model's shape in a chosen weight
//! format mix, with the tokenizer of another GGUF (the default model's). The text such a
//! model writes is meaningless; its memory and speed are those of the real shape. Written
//! tensor by tensor, so a file far larger than memory streams to disk.

use anyhow::{bail, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use half::{bf16, f16};
use std::io::Write;
use std::path::Path;

use super::Format;

/// A model shape (what GGUF metadata says about it).
#[derive(Debug, Clone)]
pub struct Shape {
    pub name: &'static str,
    pub arch: &'static str,
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub d_ff: usize,
    pub qkv_bias: bool,
    /// Output matrix tied to the embedding.
    pub tied: bool,
    pub rope_base: f32,
    pub rms_eps: f32,
    pub context_length: usize,
}

/// The shapes of the models CompressKV and its users study (vocabulary: the tokenizer's).
pub fn shapes() -> Vec<Shape> {
    let base = Shape {
        name: "",
        arch: "llama",
        n_layers: 0,
        d_model: 0,
        n_heads: 32,
        n_kv_heads: 8,
        head_dim: 0,
        d_ff: 0,
        qkv_bias: false,
        tied: false,
        rope_base: 500_000.0,
        rms_eps: 1e-5,
        context_length: 8192,
    };
    vec![
        Shape {
            name: "llama-3.2-1b",
            n_layers: 16,
            d_model: 2048,
            head_dim: 64,
            d_ff: 8192,
            tied: true,
            ..base.clone()
        },
        Shape {
            name: "llama-3.1-8b",
            n_layers: 32,
            d_model: 4096,
            head_dim: 128,
            d_ff: 14336,
            ..base.clone()
        },
        Shape {
            name: "qwen2.5-7b",
            arch: "qwen2",
            n_layers: 28,
            d_model: 3584,
            n_heads: 28,
            n_kv_heads: 4,
            head_dim: 128,
            d_ff: 18944,
            qkv_bias: true,
            rope_base: 1_000_000.0,
            rms_eps: 1e-6,
            ..base
        },
    ]
}

/// How the matrices are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mix {
    /// As llama.cpp's Q4_K_M: Q4_K, with Q6_K for the output matrix and for attn_v and
    /// ffn_down of the first and last eighth of the layers and every third one between.
    /// Rows that are not whole 256-blocks fall back to Q8_0.
    Q4KM,
    /// Every matrix in one format.
    All(Format),
}

impl Mix {
    pub fn parse(s: &str) -> Result<Mix> {
        let l = s.to_ascii_lowercase();
        if l == "q4_k_m" {
            return Ok(Mix::Q4KM);
        }
        for f in super::ALL {
            if f.name().eq_ignore_ascii_case(&l) {
                return Ok(Mix::All(f));
            }
        }
        bail!(
            "unknown weight mix '{s}': use q4_k_m or one format ({})",
            super::supported_names()
        )
    }

    fn format(self, tensor: &str, layer: Option<usize>, n_layers: usize, cols: usize) -> Format {
        let f = match self {
            Mix::All(f) => f,
            Mix::Q4KM => {
                let more_bits = |i: usize| {
                    i < n_layers / 8 || i >= 7 * n_layers / 8 || (i - n_layers / 8) % 3 == 2
                };
                let six = tensor == "output"
                    || ((tensor == "attn_v" || tensor == "ffn_down")
                        && layer.is_some_and(more_bits));
                if six {
                    Format::Q6K
                } else {
                    Format::Q4K
                }
            }
        };
        if cols.is_multiple_of(f.block()) {
            f
        } else {
            Format::Q8_0
        }
    }
}

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn fill(&mut self, out: &mut [u8]) {
        for c in out.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }

    /// Uniform in [-1, 1).
    fn uniform(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// Random bytes of `rows` rows of `cols` elements in `fmt`, with block scales set so the
/// values have a standard deviation near `sigma` (random codes, fixed scales).
fn random_matrix(fmt: Format, rows: usize, cols: usize, sigma: f32, rng: &mut Rng) -> Vec<u8> {
    let mut data = vec![0u8; rows * fmt.row_bytes(cols)];
    let put = |b: &mut [u8], at: usize, v: f32| {
        b[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes())
    };
    match fmt {
        Format::F32 => {
            for c in data.chunks_exact_mut(4) {
                c.copy_from_slice(&(rng.uniform() * sigma * 1.73).to_le_bytes());
            }
        }
        Format::F16 => {
            for c in data.chunks_exact_mut(2) {
                c.copy_from_slice(&f16::from_f32(rng.uniform() * sigma * 1.73).to_le_bytes());
            }
        }
        Format::BF16 => {
            for c in data.chunks_exact_mut(2) {
                c.copy_from_slice(&bf16::from_f32(rng.uniform() * sigma * 1.73).to_le_bytes());
            }
        }
        _ => {
            rng.fill(&mut data);
            // Standard deviations of the uniform random codes (times their scales).
            let d = match fmt {
                Format::Q4_0 | Format::Q4_1 => sigma / 4.6,
                Format::Q5_0 | Format::Q5_1 => sigma / 9.2,
                Format::Q8_0 => sigma / 74.0,
                Format::Q4K => sigma / 320.0,
                Format::Q5K => sigma / 656.0,
                _ => sigma / 1370.0,
            };
            for b in data.chunks_exact_mut(fmt.block_bytes()) {
                match fmt {
                    Format::Q4_0 | Format::Q5_0 | Format::Q8_0 => put(b, 0, d),
                    Format::Q4_1 => {
                        put(b, 0, d);
                        put(b, 2, -7.5 * d);
                    }
                    Format::Q5_1 => {
                        put(b, 0, d);
                        put(b, 2, -15.5 * d);
                    }
                    // The mins (random 0..63) times dmin roughly cancel the codes' mean.
                    Format::Q4K => {
                        put(b, 0, d);
                        put(b, 2, 7.5 * d);
                    }
                    Format::Q5K => {
                        put(b, 0, d);
                        put(b, 2, 15.5 * d);
                    }
                    _ => put(b, 208, d),
                }
            }
        }
    }
    data
}

fn w_str(w: &mut impl Write, s: &str) -> std::io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn value_type(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn w_value(w: &mut impl Write, v: &Value) -> Result<()> {
    match v {
        Value::U8(x) => w.write_all(&[*x])?,
        Value::I8(x) => w.write_all(&x.to_le_bytes())?,
        Value::U16(x) => w.write_all(&x.to_le_bytes())?,
        Value::I16(x) => w.write_all(&x.to_le_bytes())?,
        Value::U32(x) => w.write_all(&x.to_le_bytes())?,
        Value::I32(x) => w.write_all(&x.to_le_bytes())?,
        Value::F32(x) => w.write_all(&x.to_le_bytes())?,
        Value::Bool(x) => w.write_all(&[*x as u8])?,
        Value::String(s) => w_str(w, s)?,
        Value::U64(x) => w.write_all(&x.to_le_bytes())?,
        Value::I64(x) => w.write_all(&x.to_le_bytes())?,
        Value::F64(x) => w.write_all(&x.to_le_bytes())?,
        Value::Array(items) => {
            let t = items.first().map_or(4, value_type);
            if items.iter().any(|i| value_type(i) != t) {
                bail!("GGUF arrays hold one type");
            }
            w.write_all(&t.to_le_bytes())?;
            w.write_all(&(items.len() as u64).to_le_bytes())?;
            for i in items {
                w_value(w, i)?;
            }
        }
    }
    Ok(())
}

/// One tensor to write: name, `[rows][cols]` (rows 1 for a vector) and format.
struct Planned {
    name: String,
    rows: usize,
    cols: usize,
    fmt: Format,
    sigma: f32,
}

fn plan(s: &Shape, mix: Mix, vocab: usize) -> Vec<Planned> {
    let (d, kv) = (s.d_model, s.n_kv_heads * s.head_dim);
    let q = s.n_heads * s.head_dim;
    let mut v = Vec::new();
    let mut add = |name: String, kind: &str, layer: Option<usize>, rows: usize, cols: usize| {
        let (fmt, sigma) = if rows == 1 {
            (Format::F32, 0.0)
        } else {
            (
                mix.format(kind, layer, s.n_layers, cols),
                1.0 / (cols as f32).sqrt(),
            )
        };
        v.push(Planned {
            name,
            rows,
            cols,
            fmt,
            sigma,
        });
    };
    add("token_embd.weight".into(), "token_embd", None, vocab, d);
    for i in 0..s.n_layers {
        let p = |n: &str| format!("blk.{i}.{n}");
        add(p("attn_norm.weight"), "norm", Some(i), 1, d);
        add(p("attn_q.weight"), "attn_q", Some(i), q, d);
        add(p("attn_k.weight"), "attn_k", Some(i), kv, d);
        add(p("attn_v.weight"), "attn_v", Some(i), kv, d);
        if s.qkv_bias {
            add(p("attn_q.bias"), "bias", Some(i), 1, q);
            add(p("attn_k.bias"), "bias", Some(i), 1, kv);
            add(p("attn_v.bias"), "bias", Some(i), 1, kv);
        }
        add(p("attn_output.weight"), "attn_output", Some(i), d, q);
        add(p("ffn_norm.weight"), "norm", Some(i), 1, d);
        add(p("ffn_gate.weight"), "ffn_gate", Some(i), s.d_ff, d);
        add(p("ffn_up.weight"), "ffn_up", Some(i), s.d_ff, d);
        add(p("ffn_down.weight"), "ffn_down", Some(i), d, s.d_ff);
    }
    add("output_norm.weight".into(), "norm", None, 1, d);
    if !s.tied {
        add("output.weight".into(), "output", None, vocab, d);
    }
    v
}

const ALIGN: u64 = 32;

/// Writes a GGUF of shape `s` with random weights in `mix` and the `tokenizer.*`
/// metadata of `tokenizer_from`. Returns the file's size in bytes.
pub fn write(
    path: &Path,
    s: &Shape,
    mix: Mix,
    tokenizer_from: &Content,
    seed: u64,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<u64> {
    let vocab = match tokenizer_from.metadata.get("tokenizer.ggml.tokens") {
        Some(Value::Array(t)) if !t.is_empty() => t.len(),
        _ => bail!("the tokenizer source has no tokenizer.ggml.tokens"),
    };
    let a = s.arch;
    let u = |x: usize| Value::U32(x as u32);
    let mut md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(a.into())),
        (
            "general.name".into(),
            Value::String(format!("kvscope-synthetic-{}", s.name)),
        ),
        ("general.alignment".into(), Value::U32(ALIGN as u32)),
        (format!("{a}.block_count"), u(s.n_layers)),
        (format!("{a}.context_length"), u(s.context_length)),
        (format!("{a}.embedding_length"), u(s.d_model)),
        (format!("{a}.feed_forward_length"), u(s.d_ff)),
        (format!("{a}.attention.head_count"), u(s.n_heads)),
        (format!("{a}.attention.head_count_kv"), u(s.n_kv_heads)),
        (format!("{a}.attention.key_length"), u(s.head_dim)),
        (format!("{a}.attention.value_length"), u(s.head_dim)),
        (format!("{a}.rope.dimension_count"), u(s.head_dim)),
        (format!("{a}.rope.freq_base"), Value::F32(s.rope_base)),
        (
            format!("{a}.attention.layer_norm_rms_epsilon"),
            Value::F32(s.rms_eps),
        ),
    ];
    let mut tok: Vec<(String, Value)> = tokenizer_from
        .metadata
        .iter()
        .filter(|(k, _)| k.starts_with("tokenizer."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    tok.sort_by(|x, y| x.0.cmp(&y.0));
    md.extend(tok);

    let tensors = plan(s, mix, vocab);
    // The header (metadata and tensor infos) is small: build it in memory, then pad to
    // the alignment and stream the tensors.
    let mut h: Vec<u8> = Vec::new();
    h.extend_from_slice(b"GGUF");
    h.extend_from_slice(&3u32.to_le_bytes());
    h.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    h.extend_from_slice(&(md.len() as u64).to_le_bytes());
    for (k, v) in &md {
        w_str(&mut h, k)?;
        h.extend_from_slice(&value_type(v).to_le_bytes());
        w_value(&mut h, v)?;
    }
    let mut offset = 0u64;
    let mut at = Vec::with_capacity(tensors.len());
    for t in &tensors {
        w_str(&mut h, &t.name)?;
        // GGUF lists dimensions innermost first.
        if t.rows == 1 {
            h.extend_from_slice(&1u32.to_le_bytes());
            h.extend_from_slice(&(t.cols as u64).to_le_bytes());
        } else {
            h.extend_from_slice(&2u32.to_le_bytes());
            h.extend_from_slice(&(t.cols as u64).to_le_bytes());
            h.extend_from_slice(&(t.rows as u64).to_le_bytes());
        }
        h.extend_from_slice(&ggml_type_id(t.fmt).to_le_bytes());
        h.extend_from_slice(&offset.to_le_bytes());
        at.push(offset);
        offset += (t.rows * t.fmt.row_bytes(t.cols)) as u64;
        offset = offset.div_ceil(ALIGN) * ALIGN;
    }
    h.resize(
        (h.len() as u64).div_ceil(ALIGN) as usize * ALIGN as usize,
        0,
    );
    // Through a temporary file beside `path`: an error, Ctrl-C or SIGTERM leaves nothing
    // at `path` (and removes the temporary file), never a truncated model.
    let mut out = crate::output::AtomicFile::create(path, "--out")?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, out.file());
    w.write_all(&h)?;
    let mut written = 0u64;
    let mut rng = Rng(seed);
    let total = tensors.len();
    for (i, (t, &off)) in tensors.iter().zip(&at).enumerate() {
        w.write_all(&vec![0u8; (off - written) as usize])?;
        let data = if t.rows == 1 {
            let mut b = Vec::with_capacity(t.cols * 4);
            for _ in 0..t.cols {
                // Norm gains near 1, biases near 0.
                let v = if t.name.ends_with(".bias") {
                    0.02 * rng.uniform()
                } else {
                    1.0 + 0.1 * rng.uniform()
                };
                b.extend_from_slice(&v.to_le_bytes());
            }
            b
        } else {
            random_matrix(t.fmt, t.rows, t.cols, t.sigma, &mut rng)
        };
        w.write_all(&data)?;
        written = off + data.len() as u64;
        progress(i + 1, total);
    }
    w.flush()?;
    drop(w);
    let written = out.commit()?;
    Ok(std::fs::metadata(written)?.len())
}

fn ggml_type_id(f: Format) -> u32 {
    match f {
        Format::F32 => 0,
        Format::F16 => 1,
        Format::Q4_0 => 2,
        Format::Q4_1 => 3,
        Format::Q5_0 => 6,
        Format::Q5_1 => 7,
        Format::Q8_0 => 8,
        Format::Q4K => 12,
        Format::Q5K => 13,
        Format::Q6K => 14,
        Format::BF16 => 30,
    }
}
