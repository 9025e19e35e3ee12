//! The shared profiling protocol (METHOD-MORE.md, "Fast profiling"): one prefill per
//! haystack of N needles, each question decoded on a fork of that cache, each
//! question's SRH credit counting only its own needle's span.

use anyhow::Result;

use super::credit::{retrieved, TrialCredit};
use crate::haystack::shared::SharedHaystack;
use crate::keepset::KeepSet;
use crate::model::PREFILL_CHUNK;
use crate::model::{kernels, DecodeState, Model, Observer, StepAttention, Tok};

/// What one question of a shared haystack gave.
#[derive(Debug, Clone, PartialEq)]
pub struct QuestionOutcome {
    pub needle: usize,
    pub text: String,
    pub counted: bool,
    pub credit: TrialCredit,
}

/// Prefills the shared prefix once, then for every question feeds its tail to a fork of
/// the full cache and decodes greedily, scoring every generated token with the
/// attention row that produced it (as [`super::srh::run_trial`] does for one prompt).
pub fn run_haystack(
    model: &Model,
    tok: &Tok,
    h: &SharedHaystack,
    max_new: usize,
) -> Result<Vec<QuestionOutcome>> {
    let trace = model.prefill_without_summaries(&h.prefix, PREFILL_CHUNK, &mut |_, _| {})?;
    let d = trace.dims;
    let longest_tail = h.questions.iter().map(|q| q.tail.len()).max().unwrap_or(0);
    let all = KeepSet::all(&d, trace.len);
    let base = DecodeState::new(model, &trace, &all, longest_tail + max_new)?;
    drop(trace);
    let mut out = Vec::with_capacity(h.questions.len());
    let mut rows: Vec<StepAttention> = Vec::with_capacity(1);
    for (qi, q) in h.questions.iter().enumerate() {
        let ids = h.prompt_ids(qi);
        let mut state = base.clone();
        let (last, feed) = q
            .tail
            .split_last()
            .expect("a question's tail is never empty");
        for &t in feed {
            state.step(t, Observer::none())?;
        }
        let mut credit = TrialCredit::new(d.n_layers, d.n_heads);
        let mut generated = Vec::with_capacity(max_new);
        let mut fed = *last;
        while generated.len() < max_new {
            rows.clear();
            let logits = state.step(fed, Observer::attention(&mut rows))?;
            let next = kernels::argmax(logits) as u32;
            if let Some(r) = rows.first() {
                credit.add_token(&r.probs, &ids, &q.span, next);
            }
            generated.push(next);
            if tok.stop_ids.contains(&next) {
                break;
            }
            fed = next;
        }
        let text = tok.decode(&generated);
        out.push(QuestionOutcome {
            needle: q.needle,
            counted: retrieved(q.answer, &text),
            text,
            credit,
        });
    }
    Ok(out)
}
