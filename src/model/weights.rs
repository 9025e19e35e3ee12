//! Model weights, held twice: f32 for the GEMM-based prefill and 8-bit affine blocks for
//! the memory-bound decode (each path uses the format that measures faster for it).

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::GgmlDType;
use candle_core::Device;
use half::f16;

use super::config::Config;
use super::kernels::{self, QMat, QVec, QK};

/// A linear layer `y = W x`, `W` is `[rows = out][cols = in]`.
#[derive(Debug, Clone)]
pub struct Linear {
    pub rows: usize,
    pub cols: usize,
    pub f32: Vec<f32>,
    /// `None` when `cols` is not a multiple of the block size; decode then uses f32.
    pub q: Option<QMat>,
}

impl Linear {
    pub fn from_f32(w: Vec<f32>, rows: usize, cols: usize) -> Self {
        let q = (cols.is_multiple_of(QK)).then(|| QMat::from_f32(&w, rows, cols));
        Linear {
            rows,
            cols,
            f32: w,
            q,
        }
    }

    // The forward pass multiplies only through these methods, so how a matrix is
    // stored (f32 copy, 8-bit blocks, the file's own quantised blocks) stays private to
    // this module and the kernels.

    /// Row `r` as f32 (an embedding lookup).
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        out.copy_from_slice(&self.f32[r * self.cols..(r + 1) * self.cols]);
    }

    /// Prefill: `out[t][rows] = x[t][cols] . W^T`, parallel.
    pub fn matmul(&self, x: &[f32], t: usize, out: &mut [f32]) {
        kernels::matmul_xwt(x, &self.f32, out, t, self.cols, self.rows, true);
    }

    /// Decode: rows `r0..r0 + out.len()` of `W x` on the calling thread; `qx` is `x`
    /// quantised to 8 bits, used when `quant` and the matrix has 8-bit blocks.
    pub fn matvec_rows(&self, x: &[f32], qx: &QVec, quant: bool, r0: usize, out: &mut [f32]) {
        match (&self.q, quant) {
            (Some(qm), true) => kernels::matvec_q_rows(qm, qx, r0, out),
            _ => kernels::matvec_f32_rows(&self.f32, x, r0, out),
        }
    }

    /// `W x` in f32, parallel over rows.
    pub fn matvec(&self, x: &[f32], out: &mut [f32]) {
        kernels::matvec_f32(&self.f32, x, out);
    }
}

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
}

#[derive(Debug, Clone)]
pub struct Weights {
    /// `[vocab][d_model]`
    pub embed: Linear,
    pub layers: Vec<LayerWeights>,
    pub out_norm: Vec<f32>,
    /// Separate output matrix; `None` means tied to `embed`.
    pub lm_head: Option<Linear>,
}

impl Weights {
    pub fn lm_head(&self) -> &Linear {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Bytes of weights as stored in memory (both formats).
    pub fn resident_bytes(&self) -> usize {
        fn lin(l: &Linear) -> usize {
            l.f32.len() * 4
                + l.q
                    .as_ref()
                    .map_or(0, |q| q.q.len() + (q.d.len() + q.m.len()) * 2)
        }
        let mut n = lin(&self.embed) + self.out_norm.len() * 4;
        n += self.lm_head.as_ref().map_or(0, lin);
        for l in &self.layers {
            n += (l.attn_norm.len() + l.ffn_norm.len()) * 4;
            n += [&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down]
                .iter()
                .map(|x| lin(x))
                .sum::<usize>();
        }
        n
    }

    pub fn load_gguf<R: std::io::Read + std::io::Seek>(
        content: &Content,
        r: &mut R,
        cfg: &Config,
    ) -> Result<Self> {
        let d = cfg.d_model;
        let kv = cfg.n_kv_heads * cfg.head_dim;
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let p = |n: &str| format!("blk.{i}.{n}.weight");
            layers.push(LayerWeights {
                attn_norm: vector(content, r, &p("attn_norm"), d)?,
                wq: linear(content, r, &p("attn_q"), d, d)?,
                wk: linear(content, r, &p("attn_k"), kv, d)?,
                wv: linear(content, r, &p("attn_v"), kv, d)?,
                wo: linear(content, r, &p("attn_output"), d, d)?,
                ffn_norm: vector(content, r, &p("ffn_norm"), d)?,
                gate: linear(content, r, &p("ffn_gate"), cfg.d_ff, d)?,
                up: linear(content, r, &p("ffn_up"), cfg.d_ff, d)?,
                down: linear(content, r, &p("ffn_down"), d, cfg.d_ff)?,
            });
        }
        let lm_head = if content.tensor_infos.contains_key("output.weight") {
            Some(linear(content, r, "output.weight", cfg.vocab_size, d)?)
        } else {
            None
        };
        Ok(Weights {
            embed: linear(content, r, "token_embd.weight", cfg.vocab_size, d)?,
            layers,
            out_norm: vector(content, r, "output_norm.weight", d)?,
            lm_head,
        })
    }
}

fn read_tensor<R: std::io::Read + std::io::Seek>(
    content: &Content,
    r: &mut R,
    name: &str,
    shape: &[usize],
) -> Result<candle_core::quantized::QTensor> {
    if !content.tensor_infos.contains_key(name) {
        bail!("model file lacks tensor '{name}' (not a complete llama-architecture GGUF)");
    }
    let t = content.tensor(r, name, &Device::Cpu).map_err(|e| {
        anyhow::anyhow!(
            "cannot read tensor '{name}' (file truncated or corrupt?): {}",
            super::first_line(&e)
        )
    })?;
    if t.shape().dims() != shape {
        bail!(
            "tensor '{name}' has shape {:?}, expected {shape:?}",
            t.shape().dims()
        );
    }
    Ok(t)
}

fn vector<R: std::io::Read + std::io::Seek>(
    content: &Content,
    r: &mut R,
    name: &str,
    n: usize,
) -> Result<Vec<f32>> {
    let t = read_tensor(content, r, name, &[n])?;
    Ok(t.dequantize(&Device::Cpu)?.to_vec1::<f32>()?)
}

fn linear<R: std::io::Read + std::io::Seek>(
    content: &Content,
    r: &mut R,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<Linear> {
    let t = read_tensor(content, r, name, &[rows, cols])?;
    let f = t
        .dequantize(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()
        .with_context(|| format!("cannot dequantize '{name}'"))?;
    // Q4_1 and Q8_0 map exactly onto 8-bit affine blocks; keep them bit-exact.
    let q = match t.dtype() {
        GgmlDType::Q4_1 => Some(q4_1_to_qmat(&t.data()?, rows, cols)?),
        GgmlDType::Q8_0 => Some(q8_0_to_qmat(&t.data()?, rows, cols)?),
        _ if cols.is_multiple_of(QK) => Some(QMat::from_f32(&f, rows, cols)),
        _ => None,
    };
    Ok(Linear {
        rows,
        cols,
        f32: f,
        q,
    })
}

/// Q4_1 block: f16 d, f16 m, 16 bytes of nibbles (low nibbles = elements 0..16,
/// high nibbles = 16..32); value = d * q + m. The nibbles are kept packed as they are.
fn q4_1_to_qmat(raw: &[u8], rows: usize, cols: usize) -> Result<QMat> {
    const BS: usize = 20;
    let nblocks = rows * cols / QK;
    if raw.len() != nblocks * BS {
        bail!(
            "Q4_1 data has {} bytes, expected {}",
            raw.len(),
            nblocks * BS
        );
    }
    let mut q = Vec::with_capacity(rows * cols / 2);
    let mut d = Vec::with_capacity(nblocks);
    let mut m = Vec::with_capacity(nblocks);
    for blk in raw.chunks_exact(BS) {
        d.push(f16::from_le_bytes([blk[0], blk[1]]));
        m.push(f16::from_le_bytes([blk[2], blk[3]]));
        q.extend_from_slice(&blk[4..BS]);
    }
    Ok(QMat {
        rows,
        cols,
        packed: true,
        q,
        d,
        m,
    })
}

/// Q8_0 block: f16 d, 32 signed bytes; value = d * q. Stored as unsigned q + 128 with
/// offset m = -128 d so every matrix shares one kernel.
fn q8_0_to_qmat(raw: &[u8], rows: usize, cols: usize) -> Result<QMat> {
    const BS: usize = 34;
    let nblocks = rows * cols / QK;
    if raw.len() != nblocks * BS {
        bail!(
            "Q8_0 data has {} bytes, expected {}",
            raw.len(),
            nblocks * BS
        );
    }
    let mut q = vec![0u8; rows * cols];
    let mut d = Vec::with_capacity(nblocks);
    let mut m = Vec::with_capacity(nblocks);
    for (b, blk) in raw.chunks_exact(BS).enumerate() {
        let s = f16::from_le_bytes([blk[0], blk[1]]);
        d.push(s);
        // Exact in f16: a power-of-two multiple (|d| stays far below 65504 / 128).
        m.push(f16::from_f32(-128.0 * s.to_f32()));
        for j in 0..QK {
            q[b * QK + j] = (blk[2 + j] as i8 as i16 + 128) as u8;
        }
    }
    Ok(QMat {
        rows,
        cols,
        packed: false,
        q,
        d,
        m,
    })
}
