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
    /// Rows of the embedding (and output) matrix: `None` takes the tokenizer's token
    /// count; `Some(n)` pads the tokenizer with unused `[PAD<i>]` tokens up to `n`, as
    /// llama.cpp's converter pads a vocabulary to the embedding's rows.
    pub vocab: Option<usize>,
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
        // Llama 3.1 / 3.2's context (long-prompt measurements need more than 8K).
        context_length: 131_072,
        vocab: None,
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
            context_length: 32768,
            ..base.clone()
        },
        // Qwen2.5-0.5B(-Instruct) as its GGUF files lay it out: hidden 896 (not a multiple
        // of 256, so llama.cpp's K-quant mixes fall back to 32-value formats for every
        // matrix whose rows are 896 long), its 151,936-row vocabulary, and a separate
        // output matrix (the files carry `output.weight` although the checkpoint ties it:
        // Q4_K_M's 170 matrices, Q5_0 x133 / Q8_0 x13 / Q6_K x12 / Q4_K x12, count both).
        Shape {
            name: "qwen2.5-0.5b",
            arch: "qwen2",
            n_layers: 24,
            d_model: 896,
            n_heads: 14,
            n_kv_heads: 2,
            head_dim: 64,
            d_ff: 4864,
            qkv_bias: true,
            rope_base: 1_000_000.0,
            rms_eps: 1e-6,
            context_length: 32768,
            vocab: Some(151_936),
            ..base
        },
    ]
}

/// How the matrices are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mix {
    /// As llama.cpp's Q4_K_M: Q4_K, with Q6_K for the output matrix (the embedding when
    /// it doubles as the output) and for attn_v and ffn_down of the first and last eighth
    /// of the layers and every third one between. Rows that are not whole 256-blocks
    /// fall back as llama.cpp's quantizer does: Q4_K to Q5_0, Q6_K to Q8_0.
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

    /// The format of matrix `tensor` (its kind: "output", "attn_v", ...) with rows of
    /// `cols` values; `tied`: the embedding is also the output matrix.
    fn format(
        self,
        tensor: &str,
        layer: Option<usize>,
        n_layers: usize,
        cols: usize,
        tied: bool,
    ) -> Format {
        let f = match self {
            Mix::All(f) => f,
            Mix::Q4KM => {
                let more_bits = |i: usize| {
                    i < n_layers / 8 || i >= 7 * n_layers / 8 || (i - n_layers / 8) % 3 == 2
                };
                let six = tensor == "output"
                    || (tied && tensor == "token_embd")
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
            return f;
        }
        // llama.cpp's fallbacks for rows that are not whole blocks of the chosen format,
        // and F16 where even those do not fit.
        let fallback = match f {
            Format::Q4K => Format::Q5_0,
            Format::Q5K => Format::Q5_1,
            _ => Format::Q8_0,
        };
        if cols.is_multiple_of(fallback.block()) {
            fallback
        } else {
            Format::F16
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
                mix.format(kind, layer, s.n_layers, cols, s.tied),
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

/// Pads the tokenizer's per-token arrays (`tokenizer.ggml.tokens`, `token_type`,
/// `scores`) from their length to `vocab` entries: tokens `[PAD<i>]` of type unused (5),
/// score 0, as llama.cpp's converter pads a vocabulary smaller than the embedding. The
/// padding tokens are never produced (no merge leads to them), so the text of a prompt
/// tokenizes as before.
fn pad_tokenizer(tok: &mut [(String, Value)], vocab: usize) -> Result<()> {
    const UNUSED: i32 = 5;
    let n = match tok.iter().find(|(k, _)| k == "tokenizer.ggml.tokens") {
        Some((_, Value::Array(t))) => t.len(),
        _ => bail!("the tokenizer source has no tokenizer.ggml.tokens"),
    };
    if n > vocab {
        bail!("the tokenizer has {n} tokens, more than this shape's vocabulary of {vocab}: pass --tokenizer-from with a smaller one");
    }
    for (k, v) in tok.iter_mut() {
        let Value::Array(items) = v else { continue };
        if items.len() != n {
            continue;
        }
        // Each padded entry in the array's own element type (GGUF arrays hold one type).
        let pad = |i: usize| match (k.as_str(), items.first()) {
            ("tokenizer.ggml.tokens", _) => Some(Value::String(format!("[PAD{i}]"))),
            ("tokenizer.ggml.token_type", Some(Value::U32(_))) => Some(Value::U32(UNUSED as u32)),
            ("tokenizer.ggml.token_type", _) => Some(Value::I32(UNUSED)),
            ("tokenizer.ggml.scores", _) => Some(Value::F32(0.0)),
            _ => None,
        };
        let padding: Vec<Value> = (n..vocab).map_while(pad).collect();
        items.extend(padding);
    }
    Ok(())
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
    let n_tokens = match tokenizer_from.metadata.get("tokenizer.ggml.tokens") {
        Some(Value::Array(t)) if !t.is_empty() => t.len(),
        _ => bail!("the tokenizer source has no tokenizer.ggml.tokens"),
    };
    let vocab = s.vocab.unwrap_or(n_tokens);
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
    pad_tokenizer(&mut tok, vocab)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(name: &str) -> Shape {
        shapes().into_iter().find(|s| s.name == name).unwrap()
    }

    fn count(plan: &[Planned], f: Format) -> usize {
        plan.iter().filter(|t| t.fmt == f).count()
    }

    fn fmt_of(plan: &[Planned], name: &str) -> Format {
        plan.iter().find(|t| t.name == name).unwrap().fmt
    }

    /// The Qwen2.5-0.5B shape's Q4_K_M plan has llama.cpp's type counts for that file
    /// (Q5_0 x133, Q8_0 x13, Q6_K x12, Q4_K x12), each on the tensors llama.cpp's rules
    /// give it: rows of 896 values cannot be K-quants.
    #[test]
    fn qwen05_q4_k_m_is_llamacpps_mix() {
        let s = shape("qwen2.5-0.5b");
        let p = plan(&s, Mix::Q4KM, s.vocab.unwrap());
        assert_eq!(count(&p, Format::Q5_0), 133);
        assert_eq!(count(&p, Format::Q8_0), 13);
        assert_eq!(count(&p, Format::Q6K), 12);
        assert_eq!(count(&p, Format::Q4K), 12);
        // Norms and Q/K/V biases stay f32: 24 x (2 norms + 3 biases) + the output norm.
        assert_eq!(count(&p, Format::F32), 24 * 5 + 1);
        assert_eq!(p.len(), 133 + 13 + 12 + 12 + 121);

        // The output matrix (Q6_K wanted, 896-value rows) is Q8_0; the separate
        // embedding (Q4_K wanted) is Q5_0.
        assert_eq!(fmt_of(&p, "output.weight"), Format::Q8_0);
        assert_eq!(fmt_of(&p, "token_embd.weight"), Format::Q5_0);
        let emb = p.iter().find(|t| t.name == "token_embd.weight").unwrap();
        assert_eq!((emb.rows, emb.cols), (151_936, 896));
        // More bits (first and last 3 of 24 layers, every third between: 5, 8, ..., 20):
        // attn_v Q6_K -> Q8_0, ffn_down (rows of 4864 = 19 x 256) Q6_K; else Q5_0 / Q4_K.
        let more = [0, 1, 2, 5, 8, 11, 14, 17, 20, 21, 22, 23];
        for i in 0..24 {
            let m = more.contains(&i);
            let v = fmt_of(&p, &format!("blk.{i}.attn_v.weight"));
            let down = fmt_of(&p, &format!("blk.{i}.ffn_down.weight"));
            assert_eq!(v, if m { Format::Q8_0 } else { Format::Q5_0 }, "layer {i}");
            assert_eq!(down, if m { Format::Q6K } else { Format::Q4K }, "layer {i}");
            for n in ["attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up"] {
                assert_eq!(fmt_of(&p, &format!("blk.{i}.{n}.weight")), Format::Q5_0);
            }
            for n in ["attn_q", "attn_k", "attn_v"] {
                assert_eq!(fmt_of(&p, &format!("blk.{i}.{n}.bias")), Format::F32);
            }
        }
        let q = p.iter().find(|t| t.name == "blk.0.attn_q.weight").unwrap();
        let k = p.iter().find(|t| t.name == "blk.0.attn_k.weight").unwrap();
        assert_eq!((q.rows, q.cols, k.rows, k.cols), (896, 896, 128, 896));
    }

    /// A tied embedding is the output matrix, so Q4_K_M stores it as llama.cpp stores the
    /// output (Q6_K); the untied shapes keep a Q4_K embedding.
    #[test]
    fn tied_embedding_gets_the_output_format() {
        let s = shape("llama-3.2-1b");
        let p = plan(&s, Mix::Q4KM, 1000);
        assert!(p.iter().all(|t| t.name != "output.weight"));
        assert_eq!(fmt_of(&p, "token_embd.weight"), Format::Q6K);
        let s = shape("llama-3.1-8b");
        let p = plan(&s, Mix::Q4KM, 1000);
        assert_eq!(fmt_of(&p, "token_embd.weight"), Format::Q4K);
        assert_eq!(fmt_of(&p, "output.weight"), Format::Q6K);
    }

    #[test]
    fn fallbacks_follow_llamacpp() {
        let m = Mix::Q4KM;
        assert_eq!(m.format("attn_q", Some(3), 24, 896, false), Format::Q5_0);
        assert_eq!(m.format("output", None, 24, 896, false), Format::Q8_0);
        assert_eq!(m.format("attn_q", Some(3), 24, 1024, false), Format::Q4K);
        assert_eq!(
            Mix::All(Format::Q5K).format("x", None, 24, 896, false),
            Format::Q5_1
        );
        // Rows that not even a 32-value block divides: F16.
        assert_eq!(m.format("attn_q", Some(3), 24, 100, false), Format::F16);
    }

    #[test]
    fn tokenizer_padded_to_the_shapes_vocabulary() {
        let mut tok = vec![
            (
                "tokenizer.ggml.merges".to_string(),
                Value::Array(vec![Value::String("a b".into())]),
            ),
            (
                "tokenizer.ggml.model".to_string(),
                Value::String("gpt2".into()),
            ),
            (
                "tokenizer.ggml.token_type".to_string(),
                Value::Array(vec![Value::I32(1), Value::I32(3)]),
            ),
            (
                "tokenizer.ggml.tokens".to_string(),
                Value::Array(vec![Value::String("a".into()), Value::String("b".into())]),
            ),
        ];
        pad_tokenizer(&mut tok, 5).unwrap();
        let arr = |k: &str| match &tok.iter().find(|(n, _)| n == k).unwrap().1 {
            Value::Array(a) => a.clone(),
            _ => panic!("{k} is not an array"),
        };
        let tokens: Vec<String> = arr("tokenizer.ggml.tokens")
            .iter()
            .map(|v| v.to_string().unwrap().clone())
            .collect();
        assert_eq!(tokens, ["a", "b", "[PAD2]", "[PAD3]", "[PAD4]"]);
        let types: Vec<i32> = arr("tokenizer.ggml.token_type")
            .iter()
            .map(|v| v.to_i32().unwrap())
            .collect();
        assert_eq!(types, [1, 3, 5, 5, 5]);
        assert_eq!(arr("tokenizer.ggml.merges").len(), 1);
        // A tokenizer larger than the shape's vocabulary is refused.
        let err = pad_tokenizer(&mut tok, 3).unwrap_err().to_string();
        assert!(
            err.contains("more than this shape's vocabulary of 3"),
            "{err}"
        );
    }
}
