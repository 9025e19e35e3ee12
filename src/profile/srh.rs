//! Running the SRH measurement on a model: needle trials decoded greedily with the full
//! cache, every generated token scored by [`super::credit`] with the attention row that
//! produced it.

use anyhow::{bail, Result};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};

use super::credit::{retrieved, SrhTotals, TrialCredit};
use crate::haystack::needles::NEEDLES;
use crate::haystack::prompt::{needle_prompt, NeedlePrompt};
use crate::keepset::KeepSet;
use crate::model::PREFILL_CHUNK;
use crate::model::{kernels, DecodeState, Model, Observer, StepAttention, Tok};
use crate::score::rouge1_recall;
use crate::trace::Trace;

/// What to measure on.
#[derive(Debug, Clone, PartialEq)]
pub struct SrhConfig {
    /// Prompt lengths in tokens.
    pub lengths: Vec<usize>,
    /// Needle depths as fractions of the filler (0..=1).
    pub depths: Vec<f64>,
    /// Indices into [`NEEDLES`].
    pub needles: Vec<usize>,
    pub max_new: usize,
}

/// One needle trial to run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrialSpec {
    pub needle: usize,
    pub length: usize,
    pub depth: f64,
}

impl SrhConfig {
    /// Every (length, depth, needle) combination, in a fixed order.
    pub fn plan(&self) -> Vec<TrialSpec> {
        let mut v = Vec::new();
        for &length in &self.lengths {
            for &depth in &self.depths {
                for &needle in &self.needles {
                    v.push(TrialSpec {
                        needle,
                        length,
                        depth,
                    });
                }
            }
        }
        v
    }
}

/// The result of one trial.
#[derive(Debug, Clone, PartialEq)]
pub struct TrialOutcome {
    pub spec: TrialSpec,
    pub prompt_tokens: usize,
    pub span: Range<usize>,
    pub generated: Vec<u32>,
    pub text: String,
    pub recall: f64,
    pub counted: bool,
    pub credit: TrialCredit,
}

/// Builds the prompt of a trial (the variant rotates the filler per needle and length).
pub fn trial_prompt(tok: &Tok, spec: &TrialSpec) -> Result<NeedlePrompt> {
    let needle = NEEDLES
        .get(spec.needle)
        .ok_or_else(|| anyhow::anyhow!("there is no needle {}", spec.needle))?;
    needle_prompt(
        tok,
        needle,
        spec.length,
        spec.depth,
        spec.needle * 5 + spec.length / 256,
    )
}

/// Attention of every head from the last prompt position over all prompt keys,
/// recomputed from the Trace (its last query row against every key, softmax with
/// `1 / sqrt(head_dim)`, as prefill computes it; a sliding layer's positions outside its
/// window get 0). This row produced the first generated token. `[layer][head][position]`.
pub fn last_prompt_row(trace: &Trace) -> Vec<Vec<Vec<f32>>> {
    let d = trace.dims;
    let scale = 1.0 / (d.head_dim as f32).sqrt();
    let row = trace.w_max - 1;
    (0..d.n_layers)
        .map(|l| {
            (0..d.n_heads)
                .map(|h| {
                    let q = trace.query(l, h, row);
                    let g = h / d.n_rep();
                    // A sliding layer's last query sees only its window; the
                    // positions before it get probability 0, as in decode.
                    let lo = trace.window(l).map_or(0, |s| trace.len.saturating_sub(s));
                    let mut p = vec![0.0f32; trace.len];
                    let keys = trace.keys(l, g);
                    let rows = keys.chunks_exact(d.head_dim);
                    for (x, k) in p.iter_mut().zip(rows).skip(lo) {
                        *x = kernels::dot(q, k) * scale;
                    }
                    kernels::softmax(&mut p[lo..]);
                    p
                })
                .collect()
        })
        .collect()
}

/// Prefills `prompt`, decodes greedily with the full cache, and scores every generated
/// token with the attention row that produced it.
pub fn run_trial(
    model: &Model,
    tok: &Tok,
    spec: TrialSpec,
    prompt: &NeedlePrompt,
    max_new: usize,
) -> Result<TrialOutcome> {
    let trace = model.prefill_without_summaries(&prompt.ids, PREFILL_CHUNK, &mut |_, _| {})?;
    let d = trace.dims;
    let mut credit = TrialCredit::new(d.n_layers, d.n_heads);
    let mut generated = Vec::with_capacity(max_new);
    if max_new > 0 {
        let mut tok_id = kernels::argmax(&trace.last_logits) as u32;
        credit.add_token(&last_prompt_row(&trace), &prompt.ids, &prompt.span, tok_id);
        generated.push(tok_id);
        let all = KeepSet::all(&d, trace.len);
        let mut state = DecodeState::new(model, &trace, &all, max_new)?;
        let mut rows: Vec<StepAttention> = Vec::with_capacity(1);
        while generated.len() < max_new && !tok.stop_ids.contains(&tok_id) {
            rows.clear();
            let logits = state.step(tok_id, Observer::attention(&mut rows))?;
            tok_id = kernels::argmax(logits) as u32;
            if let Some(r) = rows.first() {
                credit.add_token(&r.probs, &prompt.ids, &prompt.span, tok_id);
            }
            generated.push(tok_id);
        }
    }
    let text = tok.decode(&generated);
    let recall = rouge1_recall(prompt.answer, &text);
    Ok(TrialOutcome {
        spec,
        prompt_tokens: prompt.ids.len(),
        span: prompt.span.clone(),
        counted: retrieved(prompt.answer, &text),
        recall,
        text,
        generated,
        credit,
    })
}

/// Runs every planned trial and sums the counted ones. `on_trial(outcome, done, total)`
/// is called after each trial; `stop` is checked between trials, and a stop is an error
/// (the caller writes nothing).
pub fn measure(
    model: &Model,
    tok: &Tok,
    cfg: &SrhConfig,
    stop: &AtomicBool,
    on_trial: &mut dyn FnMut(&TrialOutcome, usize, usize),
) -> Result<SrhTotals> {
    let d = model.dims();
    let plan = cfg.plan();
    if plan.is_empty() {
        bail!("nothing to measure: give at least one length, depth and needle");
    }
    let mut totals = SrhTotals::new(d.n_layers, d.n_heads);
    for (i, spec) in plan.iter().enumerate() {
        if stop.load(Ordering::SeqCst) {
            bail!(Interrupted);
        }
        let prompt = trial_prompt(tok, spec)?;
        if prompt.ids.len().saturating_add(cfg.max_new) > model.config.context_length {
            bail!(
                "a {}-token needle prompt with --max-new {} exceeds the model's context of {} tokens; use shorter --lengths",
                prompt.ids.len(),
                cfg.max_new,
                model.config.context_length
            );
        }
        let out = run_trial(model, tok, *spec, &prompt, cfg.max_new)?;
        totals.add_trial(&out.credit, out.counted);
        on_trial(&out, i + 1, plan.len());
    }
    Ok(totals)
}

/// The measurement was stopped by the user (Ctrl-C) before it finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted; nothing was written")
    }
}

impl std::error::Error for Interrupted {}
