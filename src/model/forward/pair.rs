//! Two decodes stepped in one pass: each row feeds its own token to its own cache, and
//! every matrix is read from memory once for both rows (the divergence analysis decodes
//! the compressed cache free-running and teacher-forced side by side after they part).
//!
//! Each row's numbers are exactly those of its own [`DecodeState::step`]: the layer body
//! is element-wise per row, every matrix-vector product calls the same row kernels on
//! the same rows (a few rows for one row's activations, then the same rows for the
//! other's, while they are still in cache), and each row's attention is the team's
//! attention over its own cache with the same split among the members (both rows'
//! phases between the same barriers: a barrier costs much on a loaded machine).

use anyhow::{bail, Result};

use super::decode::{
    lin_len, quantize_for, row_units, Buffers, DecodeState, Record, Step, HEAD_ROWS, MV_ROWS,
};
use super::layer::{layer, Pass, Scratch};
use super::Model;
use super::Precision;
use crate::model::kernels::rms_norm;
use crate::model::kvcache::Partial;
use crate::model::linear::Linear;
use crate::model::quant::QVec;
use crate::model::team::{self, Member, Shared};

/// Rows of a matrix multiplied with one row's activations before the other's: small
/// enough that they are still in L1 for the second (Gemma 3's output rows are 680
/// bytes in Q8_0), even so the two-row kernels keep their pairs.
const SUB_ROWS: usize = 16;

impl<'m> DecodeState<'m> {
    /// Feeds `tokens[0]` to `self` and `tokens[1]` to `other` in one pass over the
    /// weights; returns both next-token logits, each exactly what [`DecodeState::step`]
    /// with [`Observer::none`](super::Observer::none) gives for that state and token.
    /// Both states must decode the same model at the same position. Refused before
    /// anything changes when either step would be.
    pub fn step_pair<'s>(
        &'s mut self,
        other: &'s mut DecodeState<'m>,
        tokens: [u32; 2],
    ) -> Result<[&'s [f32]; 2]> {
        let m = self.model;
        if !std::ptr::eq(m, other.model) {
            bail!("a paired decode step needs two states of the same model");
        }
        if self.pos != other.pos || self.prompt_len != other.prompt_len {
            bail!(
                "a paired decode step needs two states at the same position ({} vs {})",
                self.pos,
                other.pos
            );
        }
        self.check_step(tokens[0])?;
        other.check_step(tokens[1])?;
        let cfg = &m.config;
        let (nh, hd) = (cfg.n_heads, cfg.head_dim);
        let threads = rayon::current_num_threads().max(1);
        let vocab = m.weights.lm_head().rows;
        // The shared products' outputs for both rows, two buffers used in turn (as in
        // a single step), and both rows' logits.
        let mut lin_a = vec![0f32; 2 * lin_len(cfg)];
        let mut lin_b = vec![0f32; 2 * lin_len(cfg)];
        let mut logits = vec![0f32; 2 * vocab];
        // Each row's attention buffers, as its own step would size them.
        let mut probs = [vec![0f32; self.probs_len()], vec![0f32; other.probs_len()]];
        let mut parts = [
            vec![Partial { max: 0.0, sum: 0.0 }; threads * nh],
            vec![Partial { max: 0.0, sum: 0.0 }; threads * nh],
        ];
        let mut accs = [vec![0f32; threads * nh * hd], vec![0f32; threads * nh * hd]];
        let record = std::sync::Mutex::new(Record {
            probs: None,
            shadow: None,
        });
        let failure = std::sync::Mutex::new(None);
        let (pos, prompt_len) = (self.pos, self.prompt_len);
        // The team borrows the buffers only inside this block.
        {
            let [pa, pb] = &mut probs;
            let [qa, qb] = &mut parts;
            let [aa, ab] = &mut accs;
            // Attention reads only its cache and its own probability and partial
            // buffers; the rows' products and logits go through the pair's buffers.
            let mut unused: [Vec<f32>; 6] = Default::default();
            let [u0, u1, u2, u3, u4, u5] = &mut unused;
            let bufs = [
                Buffers {
                    cache: Shared::new(&mut self.cache),
                    lin: [Shared::new(u0), Shared::new(u1)],
                    logits: Shared::new(u2),
                    probs: Shared::new(pa),
                    parts: Shared::new(qa),
                    accs: Shared::new(aa),
                },
                Buffers {
                    cache: Shared::new(&mut other.cache),
                    lin: [Shared::new(u3), Shared::new(u4)],
                    logits: Shared::new(u5),
                    probs: Shared::new(pb),
                    parts: Shared::new(qb),
                    accs: Shared::new(ab),
                },
            ];
            let rows = [0, 1].map(|i| Step {
                model: m,
                token: tokens[i],
                pos,
                prompt_len,
                want_probs: false,
                bufs: &bufs[i],
                record: &record,
                failure: &failure,
            });
            let pair = PairStep {
                model: m,
                tokens,
                rows: &rows,
                lin: [Shared::new(&mut lin_a), Shared::new(&mut lin_b)],
                logits: Shared::new(&mut logits),
            };
            team::run(threads, 4 * cfg.n_layers + 1, |mb| pair.run(mb)).map_err(|e| {
                anyhow::anyhow!("cannot start {threads} decode threads ({e}); try fewer --threads")
            })?;
        }
        if let Some(e) = failure.into_inner().unwrap_or(None) {
            return Err(e);
        }
        let (la, lb) = logits.split_at(vocab);
        self.logits.clear();
        self.logits.extend_from_slice(la);
        other.logits.clear();
        other.logits.extend_from_slice(lb);
        m.softcap(&mut self.logits);
        m.softcap(&mut other.logits);
        self.pos += 1;
        other.pos += 1;
        Ok([&self.logits, &other.logits])
    }
}

/// One paired step as every member of the team runs it.
struct PairStep<'a, 'r> {
    model: &'a Model,
    tokens: [u32; 2],
    /// Each row's single step, for its attention.
    rows: &'a [Step<'a, 'r>; 2],
    /// The products' outputs, `[matrix][row][matrix rows]`, two buffers used in turn.
    lin: [Shared<'a, f32>; 2],
    /// `[row][vocabulary]`
    logits: Shared<'a, f32>,
}

/// One member's view of the paired step, as the [`Pass`] of the layer body (`t = 2`).
struct PairPass<'s, 'a, 'r, 'm> {
    step: &'s PairStep<'a, 'r>,
    mb: &'s Member<'m>,
    quant: bool,
    /// Each row's activations in 8 bits, quantised as its own step would.
    qv: [QVec; 2],
    turn: usize,
}

impl Pass for PairPass<'_, '_, '_, '_> {
    fn linear(&mut self, ws: &[&Linear], x: &[f32], out: &mut [f32]) {
        let (x0, x1) = x.split_at(x.len() / 2);
        if self.quant {
            quantize_for(&mut self.qv[0], ws, x0);
            quantize_for(&mut self.qv[1], ws, x1);
        }
        let buf = &self.step.lin[self.turn % 2];
        self.turn += 1;
        shared_linear_pair(self.mb, ws, [x0, x1], &self.qv, self.quant, buf, MV_ROWS);
        self.mb.sync();
        // SAFETY: complete after the barrier; rewritten only two products later, after
        // another barrier that every member passes after this copy.
        out.copy_from_slice(&unsafe { buf.read() }[..out.len()]);
    }

    fn attend(&mut self, li: usize, q: &[f32], k: &[f32], v: &[f32], out: &mut [f32]) {
        // Each row against its own cache with its own buffers, phase by phase, so the
        // pair waits at the same two barriers as one row.
        let [r0, r1] = self.step.rows;
        let mb = self.mb;
        let (q0, q1) = q.split_at(q.len() / 2);
        let (k0, k1) = k.split_at(k.len() / 2);
        let (v0, v1) = v.split_at(v.len() / 2);
        let (o0, o1) = out.split_at_mut(out.len() / 2);
        r0.push(mb, li, k0, v0);
        r1.push(mb, li, k1, v1);
        mb.sync();
        let s0 = r0.attend_parts(mb, li, q0);
        let s1 = r1.attend_parts(mb, li, q1);
        mb.sync();
        r0.combine(mb, li, &s0, o0);
        r1.combine(mb, li, &s1, o1);
    }
}

impl PairStep<'_, '_> {
    fn run(&self, mb: &Member) {
        let m = self.model;
        let cfg = &m.config;
        let d = cfg.d_model;
        let quant = m.precision == Precision::Q8;
        let mut x = vec![0f32; 2 * d];
        m.embed(&self.tokens, &mut x);
        let mut s = Scratch::new(cfg, 2);
        // Both rows sit at the same position.
        m.angles(self.rows[0].pos, 1, &mut s.angles);
        for rows in &mut s.angles {
            let a = rows[0].clone();
            rows.push(a);
        }
        let mut pass = PairPass {
            step: self,
            mb,
            quant,
            qv: [QVec::default(), QVec::default()],
            turn: 0,
        };
        for li in 0..cfg.n_layers {
            layer(m, li, &mut pass, &mut x, &mut s);
        }
        let mut hn = vec![0f32; 2 * d];
        for (xr, hr) in x.chunks_exact(d).zip(hn.chunks_exact_mut(d)) {
            rms_norm(xr, &m.weights.out_norm, cfg.rms_eps, hr);
        }
        let (h0, h1) = hn.split_at(d);
        let mut qv = pass.qv;
        let head = [m.weights.lm_head()];
        if quant {
            quantize_for(&mut qv[0], &head, h0);
            quantize_for(&mut qv[1], &head, h1);
        }
        shared_linear_pair(mb, &head, [h0, h1], &qv, quant, &self.logits, HEAD_ROWS);
    }
}

/// `shared_linear` for two rows of activations: the same units of rows, each multiplied
/// a few rows at a time with row 0's activations and then the same rows with row 1's
/// (through the one-row kernels, so each row's products are exactly its own step's).
/// `out` holds, for each matrix in turn, `[row][matrix rows]`.
fn shared_linear_pair(
    mb: &Member,
    ws: &[&Linear],
    xs: [&[f32]; 2],
    qxs: &[QVec; 2],
    quant: bool,
    out: &Shared<f32>,
    unit: usize,
) {
    let (units, used) = row_units(mb, ws, unit, 2);
    assert!(used <= out.len());
    mb.share(units.len(), |u| {
        let (wi, r0, r1, off) = units[u];
        let w = ws[wi];
        for a in (r0..r1).step_by(SUB_ROWS) {
            let b = (a + SUB_ROWS).min(r1);
            for (i, (x, qx)) in xs.iter().zip(qxs).enumerate() {
                let at = off + i * w.rows;
                // SAFETY: every unit is a distinct row range of each row's block.
                let dst = unsafe { out.part(at + a, at + b) };
                w.matvec_rows(x, qx, quant, a, dst);
            }
        }
    });
}
