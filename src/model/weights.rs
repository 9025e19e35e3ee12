//! Model weights: every layer's tensors, each matrix a `Linear` held as the file
//! stores it, and their loading from a GGUF file (shapes and types checked).

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file::Content;
use std::io::Read;

use super::config::Config;
use super::linear::Linear;
use super::quant::{self, Format};

#[derive(Debug, Clone)]
pub struct LayerWeights {
    pub attn_norm: Vec<f32>,
    pub wq: Linear,
    pub wk: Linear,
    pub wv: Linear,
    pub wo: Linear,
    pub ffn_norm: Vec<f32>,
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
    /// What only some architectures have (biases, Q/K norms, post norms).
    pub extra: LayerExtras,
}

/// Optional per-layer tensors, present as the architecture says (`ArchOptions`).
#[derive(Debug, Clone, Default)]
pub struct LayerExtras {
    /// Biases of the Q, K, V projections (`qkv_bias`).
    pub qkv_bias: Option<[Vec<f32>; 3]>,
    /// Per-head RMSNorm gains of Q and K, `head_dim` each (`qk_norm`).
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    /// RMSNorm gains of the attention and MLP outputs (`post_norms`).
    pub post_attn_norm: Option<Vec<f32>>,
    pub post_ffn_norm: Option<Vec<f32>>,
}

#[derive(Debug, Clone)]
pub struct Weights {
    /// `[vocab][d_model]`
    pub embed: Linear,
    pub layers: Vec<LayerWeights>,
    pub out_norm: Vec<f32>,
    /// Separate output matrix; `None` means tied to `embed`.
    pub lm_head: Option<Linear>,
    /// Llama 3's RoPE frequency factors (`rope_freqs`), one per rotated pair.
    pub rope_freqs: Option<Vec<f32>>,
}

impl Weights {
    pub fn lm_head(&self) -> &Linear {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Bytes of weights one decode step reads: all of them, but for an untied embedding,
    /// of which a step reads one row (the tied one is read whole as the output head).
    pub fn decode_read_bytes(&self) -> usize {
        let untied_embed = if self.lm_head.is_some() {
            self.embed.bytes()
        } else {
            0
        };
        self.resident_bytes() - untied_embed
    }

    /// Bytes of weights as held in memory.
    pub fn resident_bytes(&self) -> usize {
        let mut n = self.embed.bytes() + self.out_norm.len() * 4;
        n += self.lm_head.as_ref().map_or(0, Linear::bytes);
        for l in &self.layers {
            n += (l.attn_norm.len() + l.ffn_norm.len()) * 4;
            let e = &l.extra;
            n += [&e.q_norm, &e.k_norm, &e.post_attn_norm, &e.post_ffn_norm]
                .iter()
                .map(|v| v.as_ref().map_or(0, |v| v.len() * 4))
                .sum::<usize>();
            n += e
                .qkv_bias
                .as_ref()
                .map_or(0, |b| b.iter().map(|v| v.len() * 4).sum());
            n += [&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down]
                .iter()
                .map(|x| x.bytes())
                .sum::<usize>();
        }
        n
    }

    /// The same weights with every matrix as f32 (the reference the stored formats are
    /// tested against).
    pub fn to_f32(&self) -> Weights {
        let f = |l: &Linear| Linear::from_f32(l.to_f32(), l.rows, l.cols);
        Weights {
            embed: f(&self.embed),
            layers: self
                .layers
                .iter()
                .map(|l| LayerWeights {
                    attn_norm: l.attn_norm.clone(),
                    wq: f(&l.wq),
                    wk: f(&l.wk),
                    wv: f(&l.wv),
                    wo: f(&l.wo),
                    ffn_norm: l.ffn_norm.clone(),
                    gate: f(&l.gate),
                    up: f(&l.up),
                    down: f(&l.down),
                    extra: l.extra.clone(),
                })
                .collect(),
            out_norm: self.out_norm.clone(),
            lm_head: self.lm_head.as_ref().map(f),
            rope_freqs: self.rope_freqs.clone(),
        }
    }

    pub fn load_gguf<R: std::io::Read + std::io::Seek>(
        content: &Content,
        r: &mut R,
        cfg: &Config,
    ) -> Result<Self> {
        let d = cfg.d_model;
        let (qd, kv) = (cfg.q_dim(), cfg.kv_dim());
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let p = |n: &str| format!("blk.{i}.{n}.weight");
            layers.push(LayerWeights {
                attn_norm: vector(content, r, &p("attn_norm"), d)?,
                wq: linear(content, r, &p("attn_q"), qd, d)?,
                wk: linear(content, r, &p("attn_k"), kv, d)?,
                wv: linear(content, r, &p("attn_v"), kv, d)?,
                wo: linear(content, r, &p("attn_output"), d, qd)?,
                ffn_norm: vector(content, r, &p("ffn_norm"), d)?,
                gate: linear(content, r, &p("ffn_gate"), cfg.d_ff, d)?,
                up: linear(content, r, &p("ffn_up"), cfg.d_ff, d)?,
                down: linear(content, r, &p("ffn_down"), d, cfg.d_ff)?,
                extra: load_extras(content, r, cfg, i)?,
            });
        }
        let lm_head = if content.tensor_infos.contains_key("output.weight") {
            Some(linear(content, r, "output.weight", cfg.vocab_size, d)?)
        } else {
            None
        };
        let rope_freqs = if content.tensor_infos.contains_key("rope_freqs.weight") {
            Some(vector(
                content,
                r,
                "rope_freqs.weight",
                cfg.opts.rope_dims / 2,
            )?)
        } else {
            None
        };
        Ok(Weights {
            embed: linear(content, r, "token_embd.weight", cfg.vocab_size, d)?,
            layers,
            out_norm: vector(content, r, "output_norm.weight", d)?,
            lm_head,
            rope_freqs,
        })
    }
}

/// The optional tensors of layer `i` that the architecture's options call for.
fn load_extras<R: std::io::Read + std::io::Seek>(
    content: &Content,
    r: &mut R,
    cfg: &Config,
    i: usize,
) -> Result<LayerExtras> {
    let (o, hd) = (&cfg.opts, cfg.head_dim);
    let mut v = |n: &str, len: usize| vector(content, r, &format!("blk.{i}.{n}"), len);
    let mut e = LayerExtras::default();
    if o.qkv_bias {
        let (qd, kv) = (cfg.q_dim(), cfg.kv_dim());
        e.qkv_bias = Some([
            v("attn_q.bias", qd)?,
            v("attn_k.bias", kv)?,
            v("attn_v.bias", kv)?,
        ]);
    }
    if o.qk_norm {
        e.q_norm = Some(v("attn_q_norm.weight", hd)?);
        e.k_norm = Some(v("attn_k_norm.weight", hd)?);
    }
    if o.post_norms {
        e.post_attn_norm = Some(v("post_attention_norm.weight", cfg.d_model)?);
        e.post_ffn_norm = Some(v("post_ffw_norm.weight", cfg.d_model)?);
    }
    Ok(e)
}

/// The bytes of tensor `name` as stored, after checking its shape (`[rows][cols]`, or
/// `[cols]` for a vector) and that kvscope reads its type.
fn read_tensor<R: std::io::Read + std::io::Seek>(
    content: &Content,
    r: &mut R,
    name: &str,
    shape: &[usize],
) -> Result<(Format, Vec<u8>)> {
    let Some(info) = content.tensor_infos.get(name) else {
        bail!("model file lacks tensor '{name}' (not a complete GGUF of its architecture)");
    };
    if info.shape.dims() != shape {
        bail!(
            "tensor '{name}' has shape {:?}, expected {shape:?}",
            info.shape.dims()
        );
    }
    let Some(fmt) = Format::from_ggml(info.ggml_dtype) else {
        bail!(
            "tensor '{name}' has type {:?}, which kvscope does not read (it reads {})",
            info.ggml_dtype,
            quant::supported_names()
        );
    };
    let cols = shape.last().copied().unwrap_or(1);
    fmt.check_cols(name, cols)?;
    let rows: usize = shape[..shape.len().saturating_sub(1)].iter().product();
    let len = rows
        .checked_mul(fmt.row_bytes(cols))
        .with_context(|| format!("tensor '{name}' is too large"))?;
    let at = content
        .tensor_data_offset
        .checked_add(info.offset)
        .with_context(|| format!("tensor '{name}' has an offset past any file"))?;
    r.seek(std::io::SeekFrom::Start(at))
        .with_context(|| format!("cannot seek to tensor '{name}'"))?;
    let mut data = Vec::new();
    data.try_reserve_exact(len)
        .with_context(|| format!("cannot allocate {len} bytes for tensor '{name}'"))?;
    (&mut *r)
        .take(len as u64)
        .read_to_end(&mut data)
        .with_context(|| format!("cannot read tensor '{name}'"))?;
    if data.len() != len {
        bail!(
            "tensor '{name}' ends past the end of the file ({} of {len} bytes; truncated file?)",
            data.len()
        );
    }
    Ok((fmt, data))
}

fn vector<R: std::io::Read + std::io::Seek>(
    content: &Content,
    r: &mut R,
    name: &str,
    n: usize,
) -> Result<Vec<f32>> {
    let (fmt, data) = read_tensor(content, r, name, &[n])?;
    let mut v = vec![0f32; n];
    quant::dequant_row(fmt, &data, &mut v);
    Ok(v)
}

fn linear<R: std::io::Read + std::io::Seek>(
    content: &Content,
    r: &mut R,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<Linear> {
    let (fmt, data) = read_tensor(content, r, name, &[rows, cols])?;
    Linear::from_blocks(fmt, data, rows, cols).with_context(|| format!("tensor '{name}'"))
}
