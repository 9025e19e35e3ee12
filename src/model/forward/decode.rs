//! The decode engine: one token per step over a cache that holds only the kept prompt
//! entries, run by a team of threads that share every matrix-vector product and each
//! KV head's entries (`attention.rs`), with barriers between the layer's stages.

use anyhow::{bail, Result};

use super::layer::{layer, Pass, Scratch};
use super::observe::{shadow_masks, Observer, ShadowMasks, StepAttention};
use super::{Model, Precision};
use crate::keepset::KeepSet;
use crate::model::kernels::rms_norm;
use crate::model::kvcache::{HeadCache, Partial};
use crate::model::linear::Linear;
use crate::model::quant::QVec;
use crate::model::team::{self, Member, Shared};
use crate::trace::Trace;

/// Rows per unit of shared work in a decode matrix-vector product: big enough that
/// taking a unit (one atomic add) is rare, small enough to even out the threads.
pub(super) const MV_ROWS: usize = 64;
/// The output matrix has ~50k rows; larger units for it.
pub(super) const HEAD_ROWS: usize = 512;

/// A decoding session over a (possibly compressed) cache. A clone is an independent
/// copy of the cache at this step (the divergence analysis forks the teacher-forced
/// decode off the free-running one where their inputs first differ).
#[derive(Clone)]
pub struct DecodeState<'m> {
    pub(super) model: &'m Model,
    /// `[layer][kv_head]`
    pub cache: Vec<Vec<HeadCache>>,
    pub pos: usize,
    /// Prompt length of the trace this cache was built from.
    pub prompt_len: usize,
    pub(super) logits: Vec<f32>,
}

impl<'m> DecodeState<'m> {
    /// Builds a cache holding exactly the kept entries of `trace`, with room for `extra`
    /// generated tokens.
    pub fn new(model: &'m Model, trace: &Trace, keep: &KeepSet, extra: usize) -> Result<Self> {
        let dims = model.dims();
        if trace.dims != dims {
            bail!(
                "the trace was recorded with another model ({:?} vs {:?})",
                trace.dims,
                dims
            );
        }
        keep.validate(&dims, trace.len)?;
        if trace.len.saturating_add(extra) > model.config.context_length {
            bail!(
                "prompt ({}) + new tokens ({extra}) exceed the model's context of {} tokens; lower --max-new",
                trace.len,
                model.config.context_length
            );
        }
        let hd = dims.head_dim;
        let dtype = model.kv_dtype();
        let cache = keep
            .positions
            .iter()
            .enumerate()
            .map(|(l, heads)| {
                heads
                    .iter()
                    .enumerate()
                    .map(|(g, pos)| {
                        let mut hc = HeadCache::with_capacity(pos.len() + extra, hd, dtype);
                        // The head's block in f32 once (the Trace may hold f16).
                        let (ks, vs) = (trace.keys(l, g), trace.values(l, g));
                        for &p in pos {
                            let r = p * hd..(p + 1) * hd;
                            hc.push(p, &ks[r.clone()], &vs[r])?;
                        }
                        Ok(hc)
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(DecodeState {
            model,
            cache,
            pos: trace.len,
            prompt_len: trace.len,
            logits: Vec::new(),
        })
    }

    /// Cache entries held now, summed over layers and KV heads.
    pub fn entries(&self) -> usize {
        self.cache.iter().flatten().map(|h| h.positions.len()).sum()
    }

    /// Bytes of K and V the cache physically holds now (entries at the storage type).
    pub fn kv_bytes(&self) -> usize {
        self.cache.iter().flatten().map(|h| h.bytes()).sum()
    }

    /// Bytes the cache's buffers hold as allocated ([`HeadCache::held_bytes`]).
    pub fn held_bytes(&self) -> usize {
        self.cache.iter().flatten().map(|h| h.held_bytes()).sum()
    }

    /// Feeds one token at the next position; returns the logits for the token after it.
    /// `obs` asks for what else the step reports (attention rows, the shadow-eviction
    /// error; [`Observer::none`] for nothing). A shadow keep set is checked before
    /// anything is pushed, so a refused call leaves the state as it was.
    pub fn step(&mut self, token: u32, obs: Observer<'_>) -> Result<&[f32]> {
        let Observer { attention, shadow } = obs;
        let masks = match &shadow {
            Some((keep, _)) => Some(shadow_masks(
                self.model,
                &self.cache,
                self.prompt_len,
                keep,
            )?),
            None => None,
        };
        let shadow = match (masks.as_ref(), shadow) {
            (Some(m), Some((_, errors))) => Some((m, errors)),
            _ => None,
        };
        self.step_inner(token, attention, shadow)
    }

    fn step_inner(
        &mut self,
        token: u32,
        capture: Option<&mut Vec<StepAttention>>,
        shadow: Option<(&ShadowMasks, &mut Vec<f32>)>,
    ) -> Result<&[f32]> {
        self.check_step(token)?;
        let m = self.model;
        let cfg = &m.config;
        let (nh, hd) = (cfg.n_heads, cfg.head_dim);
        let threads = rayon::current_num_threads().max(1);
        // Two buffers for the outputs of the shared linear layers, used in turn: a
        // member may start writing the next product while a slower one still copies
        // the previous one out, never the one before (a barrier lies between).
        let lin_len = lin_len(cfg);
        let mut lin_a = vec![0f32; lin_len];
        let mut lin_b = vec![0f32; lin_len];
        self.logits.resize(m.weights.lm_head().rows, 0.0);
        let mut probs = vec![0f32; self.probs_len()];
        let mut parts = vec![Partial { max: 0.0, sum: 0.0 }; threads * nh];
        let mut accs = vec![0f32; threads * nh * hd];
        let want_probs = capture.is_some() || shadow.is_some();
        let record = std::sync::Mutex::new(Record {
            probs: capture.as_ref().map(|_| Vec::with_capacity(cfg.n_layers)),
            shadow,
        });
        let failure = std::sync::Mutex::new(None);
        // The team borrows the buffers only inside this block.
        {
            let bufs = Buffers {
                cache: Shared::new(&mut self.cache),
                lin: [Shared::new(&mut lin_a), Shared::new(&mut lin_b)],
                logits: Shared::new(&mut self.logits),
                probs: Shared::new(&mut probs),
                parts: Shared::new(&mut parts),
                accs: Shared::new(&mut accs),
            };
            let step = Step {
                model: m,
                token,
                pos: self.pos,
                prompt_len: self.prompt_len,
                want_probs,
                bufs: &bufs,
                record: &record,
                failure: &failure,
            };
            team::run(threads, 4 * cfg.n_layers + 1, |mb| step.run(mb)).map_err(|e| {
                anyhow::anyhow!("cannot start {threads} decode threads ({e}); try fewer --threads")
            })?;
        }
        if let Some(e) = failure.into_inner().unwrap_or(None) {
            return Err(e);
        }
        let rec = record.into_inner().expect("decode record");
        if let (Some(c), Some(pa)) = (capture, rec.probs) {
            c.push(StepAttention {
                pos: self.pos,
                probs: pa,
            });
        }
        m.softcap(&mut self.logits);
        self.pos += 1;
        Ok(&self.logits)
    }

    /// Refuses a step the state cannot take (a token outside the vocabulary, a position
    /// past the context, a full cache) before anything changes.
    pub(super) fn check_step(&self, token: u32) -> Result<()> {
        let cfg = &self.model.config;
        if token as usize >= cfg.vocab_size {
            bail!("token id {token} is outside the vocabulary");
        }
        if self.pos >= cfg.context_length {
            bail!(
                "position {} is past the model's context of {} tokens",
                self.pos,
                cfg.context_length
            );
        }
        if self.cache.iter().flatten().any(|hc| hc.is_full()) {
            bail!("decode cache is full; raise the token allowance");
        }
        Ok(())
    }

    /// Length of the buffer of one layer's attention probabilities at the next step:
    /// every query head over its group's entries after this step's push.
    pub(super) fn probs_len(&self) -> usize {
        let n_rep = self.model.config.n_heads / self.model.config.n_kv_heads;
        let longest = self
            .cache
            .iter()
            .map(|l| l.iter().map(|hc| hc.len() + 1).sum::<usize>())
            .max()
            .unwrap_or(0);
        longest * n_rep
    }
}

/// Floats in one of the two buffers the shared linear layers write (one row): the
/// largest output of a layer's products.
pub(super) fn lin_len(cfg: &crate::model::config::Config) -> usize {
    (cfg.q_dim() + 2 * cfg.kv_dim())
        .max(2 * cfg.d_ff)
        .max(cfg.d_model)
}

/// What member 0 collects during a step (attention rows, shadow eviction errors).
pub(super) struct Record<'a> {
    pub(super) probs: Option<Vec<Vec<Vec<f32>>>>,
    pub(super) shadow: Option<(&'a ShadowMasks, &'a mut Vec<f32>)>,
}

/// The buffers the team shares during one step.
pub(super) struct Buffers<'a> {
    pub(super) cache: Shared<'a, Vec<HeadCache>>,
    /// Outputs of the shared linear layers, used in turn.
    pub(super) lin: [Shared<'a, f32>; 2],
    pub(super) logits: Shared<'a, f32>,
    /// `exp(score - max)` of every query head over its group's entries (one layer).
    pub(super) probs: Shared<'a, f32>,
    /// `[thread][query head]` partial softmax statistics.
    pub(super) parts: Shared<'a, Partial>,
    /// `[thread][query head][dim]` partial weighted value sums.
    pub(super) accs: Shared<'a, f32>,
}

/// One decode step as every member of the team runs it.
pub(super) struct Step<'a, 'r> {
    pub(super) model: &'a Model,
    pub(super) token: u32,
    pub(super) pos: usize,
    pub(super) prompt_len: usize,
    pub(super) want_probs: bool,
    pub(super) bufs: &'a Buffers<'a>,
    pub(super) record: &'a std::sync::Mutex<Record<'r>>,
    pub(super) failure: &'a std::sync::Mutex<Option<anyhow::Error>>,
}

/// One member's view of the decode step, as the [`Pass`] of the layer body.
struct DecodePass<'s, 'a, 'r, 'm> {
    step: &'s Step<'a, 'r>,
    mb: &'s Member<'m>,
    quant: bool,
    qv: QVec,
    /// Which of the two shared linear buffers the next product writes.
    turn: usize,
}

impl Pass for DecodePass<'_, '_, '_, '_> {
    fn linear(&mut self, ws: &[&Linear], x: &[f32], out: &mut [f32]) {
        if self.quant {
            quantize_for(&mut self.qv, ws, x);
        }
        let buf = &self.step.bufs.lin[self.turn % 2];
        self.turn += 1;
        shared_linear(self.mb, ws, x, &self.qv, self.quant, buf, MV_ROWS);
        self.mb.sync();
        // SAFETY: complete after the barrier; rewritten only two products later, after
        // another barrier that every member passes after this copy.
        out.copy_from_slice(&unsafe { buf.read() }[..out.len()]);
    }

    fn attend(&mut self, li: usize, q: &[f32], k: &[f32], v: &[f32], out: &mut [f32]) {
        self.step.attend(self.mb, li, q, k, v, out);
    }
}

impl Step<'_, '_> {
    pub(super) fn run(&self, mb: &Member) {
        let m = self.model;
        let cfg = &m.config;
        let b = self.bufs;
        let quant = m.precision == Precision::Q8;
        // Private copies: the residual stream and everything derived from it element by
        // element is recomputed by every member (cheaper than another barrier).
        let mut x = vec![0f32; cfg.d_model];
        m.embed(&[self.token], &mut x);
        let mut s = Scratch::new(cfg, 1);
        m.angles(self.pos, 1, &mut s.angles);
        let mut pass = DecodePass {
            step: self,
            mb,
            quant,
            qv: QVec::default(),
            turn: 0,
        };
        for li in 0..cfg.n_layers {
            layer(m, li, &mut pass, &mut x, &mut s);
        }
        let mut hn = vec![0f32; cfg.d_model];
        rms_norm(&x, &m.weights.out_norm, cfg.rms_eps, &mut hn);
        let mut qv = pass.qv;
        if quant {
            quantize_for(&mut qv, &[m.weights.lm_head()], &hn);
        }
        shared_linear(
            mb,
            &[m.weights.lm_head()],
            &hn,
            &qv,
            quant,
            &b.logits,
            HEAD_ROWS,
        );
    }
}

/// `x` quantised to 8 bits in the blocks `ws` multiply against: blocks of 32 for the
/// 32-value formats, Q8_K blocks of 256 for the K-quants (float formats need neither).
pub(super) fn quantize_for(qv: &mut QVec, ws: &[&Linear], x: &[f32]) {
    let kinds = ws.iter().map(|w| w.q8_kind());
    let (k, b32) = kinds.fold((false, false), |(k, b), kind| {
        (k || kind == Some(true), b || kind == Some(false))
    });
    if b32 {
        qv.quantize_into(x);
    }
    if k {
        qv.quantize_k_into(x);
    }
}

/// The team's work units over the rows of `ws` (about `unit` rows per member each, an
/// even count: the row kernels work in pairs): (matrix, first row, last row, offset of
/// the matrix in the output), the matrices laid out one after another with `per_row`
/// outputs per row (2 for a pair step); and the outputs used.
pub(super) fn row_units(
    mb: &Member,
    ws: &[&Linear],
    unit: usize,
    per_row: usize,
) -> (Vec<(usize, usize, usize, usize)>, usize) {
    let mut units = Vec::new();
    let mut off = 0;
    for (wi, w) in ws.iter().enumerate() {
        let n = w.rows.div_ceil(unit * mb.size) * mb.size;
        let step = w.rows.div_ceil(n.max(1)).max(1).next_multiple_of(2);
        for r0 in (0..w.rows).step_by(step) {
            units.push((wi, r0, (r0 + step).min(w.rows), off));
        }
        off += per_row * w.rows;
    }
    (units, off)
}

/// Several matrix-vector products with the same input, written one after another into
/// `out`, split among the team in units of at most about `unit` rows. Each matrix is cut
/// into a multiple of the team's size of equal units (576 rows in units of 64 gave one
/// member 5 units and the other 4, a tenth of the product waiting), of an even number of
/// rows (the row kernels work in pairs).
pub(super) fn shared_linear(
    mb: &Member,
    ws: &[&Linear],
    x: &[f32],
    qx: &QVec,
    quant: bool,
    out: &Shared<f32>,
    unit: usize,
) {
    let (units, used) = row_units(mb, ws, unit, 1);
    assert!(used <= out.len());
    mb.share(units.len(), |u| {
        let (wi, r0, r1, off) = units[u];
        // SAFETY: every unit is a distinct row range of `out`.
        let dst = unsafe { out.part(off + r0, off + r1) };
        ws[wi].matvec_rows(x, qx, quant, r0, dst);
    });
}
