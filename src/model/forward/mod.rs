//! The forward pass of a GQA transformer: a chunked prefill that records a [`Trace`], and
//! greedy decoding over a cache that physically holds only the kept prompt entries.
//!
//! The layer body ([`layer`](layer::layer), `layer.rs`) is written once, against the
//! architecture facts in [`Config`]; prefill (`prefill.rs`) and decode (`decode.rs`) run
//! it through a `Pass`, which supplies the only two things that differ between them: how
//! a linear layer multiplies (batched GEMM over a chunk of rows, or a matrix-vector
//! product shared by the decode team) and how attention reads the keys (the prompt so
//! far, recording the Trace, or the kept cache: the team's attention, `attention.rs`).
//! What a decode step reports besides its logits is asked for with an [`Observer`]
//! (`observe.rs`).

mod attention;
mod decode;
mod layer;
mod observe;
mod pair;
mod prefill;
mod rows;

use anyhow::Result;

use super::config::Config;
use super::kernels::{self, rms_norm};
use super::kvcache::KvDtype;
use super::rope::{Angles, Ropes};
use super::weights::Weights;
use crate::keepset::KeepSet;
use crate::trace::{Dims, Trace};

pub use decode::DecodeState;
pub use observe::{Observer, StepAttention};
pub use prefill::PrefillBuffers;
pub use rows::{RowAttention, MAX_ROWS};

/// Which weights the decode path multiplies with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// 8-bit weights and activations and an f16 KV cache (fast, as llama.cpp does for
    /// 4-bit models).
    Q8,
    /// f32 weights and an f32 KV cache (the numbers prefill uses, to float rounding; for
    /// tests and checks).
    F32,
}

pub struct Model {
    pub config: Config,
    pub weights: Weights,
    pub ropes: Ropes,
    pub precision: Precision,
}

impl Model {
    pub fn new(config: Config, weights: Weights) -> Result<Self> {
        config.validate()?;
        let ropes = Ropes::new(&config, weights.rope_freqs.as_deref());
        Ok(Model {
            config,
            weights,
            ropes,
            precision: Precision::Q8,
        })
    }

    pub fn dims(&self) -> Dims {
        self.config.dims()
    }

    /// The token embeddings of `ids`, one row each, scaled as the architecture says.
    pub(super) fn embed(&self, ids: &[u32], x: &mut [f32]) {
        let d = self.config.d_model;
        let scale = self.config.opts.embed_scale;
        for (row, &id) in x.chunks_exact_mut(d).zip(ids) {
            self.weights.embed.row_into(id as usize, row);
            if scale != 1.0 {
                for v in row.iter_mut() {
                    *v *= scale;
                }
            }
        }
    }

    /// The RoPE angles of positions `pos0..pos0 + t`, `[variant][row]`.
    pub(super) fn angles(&self, pos0: usize, t: usize, out: &mut Vec<Vec<Angles>>) {
        let nv = self.ropes.variants.len();
        out.resize_with(nv, Vec::new);
        for (r, rows) in self.ropes.variants.iter().zip(out.iter_mut()) {
            rows.resize_with(t, Angles::default);
            for (i, a) in rows.iter_mut().enumerate() {
                r.angles(pos0 + i, a);
            }
        }
    }

    pub(super) fn logits_f32(&self, hidden: &[f32]) -> Vec<f32> {
        let mut hn = vec![0.0; hidden.len()];
        rms_norm(hidden, &self.weights.out_norm, self.config.rms_eps, &mut hn);
        let head = self.weights.lm_head();
        let mut out = vec![0.0; head.rows];
        match self.precision {
            Precision::Q8 => head.matvec_q8(&hn, &mut out),
            Precision::F32 => head.matvec(&hn, &mut out),
        }
        self.softcap(&mut out);
        out
    }

    /// Final logit soft-capping, where the architecture has it.
    pub(super) fn softcap(&self, logits: &mut [f32]) {
        if let Some(c) = self.config.opts.final_softcap {
            for v in logits.iter_mut() {
                *v = c * (*v / c).tanh();
            }
        }
    }

    /// Greedy decoding over the kept prompt entries. The first token comes from the
    /// prefill logits (eviction happens after prefill); generation stops after
    /// `max_new` tokens or at a stop id (which is included).
    pub fn generate(
        &self,
        trace: &Trace,
        keep: &KeepSet,
        max_new: usize,
        stop_ids: &[u32],
        capture: Option<&mut Vec<StepAttention>>,
    ) -> Result<Vec<u32>> {
        Ok(self
            .generate_measured(trace, keep, max_new, stop_ids, capture)?
            .0)
    }

    /// [`Model::generate`], also giving the bytes its decode cache held
    /// ([`DecodeState::held_bytes`]; 0 when nothing was decoded).
    pub fn generate_measured(
        &self,
        trace: &Trace,
        keep: &KeepSet,
        max_new: usize,
        stop_ids: &[u32],
        mut capture: Option<&mut Vec<StepAttention>>,
    ) -> Result<(Vec<u32>, usize)> {
        let mut out = Vec::with_capacity(max_new);
        if max_new == 0 {
            return Ok((out, 0));
        }
        let mut tok = kernels::argmax(&trace.last_logits) as u32;
        out.push(tok);
        let mut state = DecodeState::new(self, trace, keep, max_new)?;
        while out.len() < max_new && !stop_ids.contains(&tok) {
            let obs = Observer {
                attention: capture.as_deref_mut(),
                shadow: None,
            };
            let logits = state.step(tok, obs)?;
            tok = kernels::argmax(logits) as u32;
            out.push(tok);
        }
        Ok((out, state.held_bytes()))
    }
}

impl Model {
    /// How the decode cache stores K and V: f16 on the fast path (as llama.cpp does),
    /// f32 when decoding must match prefill to float rounding.
    pub fn kv_dtype(&self) -> KvDtype {
        match self.precision {
            Precision::Q8 => KvDtype::F16,
            Precision::F32 => KvDtype::F32,
        }
    }
}
