//! One haystack, several needles, several questions: the prompts of the shared
//! profiling protocol (METHOD-MORE.md, "Fast profiling").
//!
//! The haystack holds N fact sentences, each its own paragraph at its own depth; the
//! question comes last, as in [`super::prompt::needle_prompt`]. Templated and tokenized,
//! the N prompts (one per question) agree on every token up to the question, so the
//! common token prefix is prefilled once and each question's remaining tokens (the
//! `tail`) are fed to a fork of that cache. Every prompt is tokenized whole, so the
//! prefix plus a tail is exactly the token sequence of that question's prompt.

use anyhow::{bail, Context, Result};
use std::ops::Range;

use super::prompt::{answer_span, profiling_kind};
use super::{fill, place, Kind, Needle, Placement};
use crate::model::Tok;

/// One question of a shared haystack.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedQuestion {
    /// Index into [`super::NEEDLES`].
    pub needle: usize,
    pub answer: &'static str,
    /// The tokens after the shared prefix (never empty).
    pub tail: Vec<u32>,
    /// Token positions of this question's answer, inside the prefix.
    pub span: Range<usize>,
    /// Where the fact landed, as a fraction of the prompt's tokens.
    pub actual_depth: f64,
}

/// The prompts of one shared haystack.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedHaystack {
    /// The tokens every question's prompt starts with.
    pub prefix: Vec<u32>,
    pub questions: Vec<SharedQuestion>,
}

impl SharedHaystack {
    /// The whole prompt of question `q`.
    pub fn prompt_ids(&self, q: usize) -> Vec<u32> {
        let mut ids = self.prefix.clone();
        ids.extend_from_slice(&self.questions[q].tail);
        ids
    }
}

/// Builds a shared haystack of about `target_len` tokens (template included) holding
/// `needles[i]` at `depths[i]` (0..=1 of the filler, the first sentence boundary at or
/// past it). `variant` rotates the paragraph the filler starts at.
pub fn shared_haystack(
    tok: &Tok,
    needles: &[(usize, Needle)],
    depths: &[f64],
    target_len: usize,
    variant: usize,
) -> Result<SharedHaystack> {
    if needles.is_empty() || needles.len() != depths.len() {
        bail!(
            "a shared haystack needs one depth per needle ({} needles, {} depths)",
            needles.len(),
            depths.len()
        );
    }
    if let Some(d) = depths.iter().find(|d| !(0.0..=1.0).contains(*d)) {
        bail!("needle depth {d} is outside 0..=1");
    }
    let kind = profiling_kind(tok)?;
    let (units, firsts) = kind.units();
    // The frame: the text with every fact and the longest question but no filler.
    let longest = needles
        .iter()
        .map(|(_, n)| n.question)
        .max_by_key(|q| q.len())
        .unwrap_or("");
    let (frame_body, _) = assemble(&kind, needles, &[], &[]);
    let frame = question_text(&kind, &frame_body, longest);
    let fixed = tok.encode(&tok.apply_template(&frame, false))?.len();
    let mut costs = Vec::with_capacity(units.len());
    for (u, _) in &units {
        costs.push(tok.encode(&format!(" {u}"))?.len());
    }
    let first = firsts
        .get(variant % firsts.len().max(1))
        .copied()
        .unwrap_or(0);
    let order = fill(&costs, target_len.saturating_sub(fixed), first);
    let chosen: Vec<usize> = order.iter().map(|&i| costs[i]).collect();
    let at: Vec<usize> = depths
        .iter()
        .map(|&d| place(&chosen, Placement::AtOrPast(d)))
        .collect();
    let picked: Vec<(&str, bool)> = order.iter().map(|&i| units[i]).collect();
    let (body, fact_at) = assemble(&kind, needles, &picked, &at);

    let mut prompts = Vec::with_capacity(needles.len());
    for (i, (idx, needle)) in needles.iter().enumerate() {
        let user = question_text(&kind, &body, needle.question);
        let text = tok.apply_template(&user, false);
        let user_at = text
            .find(&user)
            .context("the chat template does not contain the prompt verbatim")?;
        let rel = needle
            .fact
            .find(needle.answer)
            .context("the needle's answer is not in its fact sentence")?;
        let a0 = user_at + fact_at[i] + rel;
        let (ids, offsets) = tok.encode_with_offsets(&text)?;
        let span = answer_span(&offsets, a0..a0 + needle.answer.len())
            .with_context(|| format!("no token covers the answer '{}'", needle.answer))?;
        let decoded = tok.decode(&ids[span.clone()]);
        if decoded.trim() != needle.answer {
            bail!(
                "the answer tokens decode to '{decoded}', not '{}': the tokenizer merged the answer with its neighbours",
                needle.answer
            );
        }
        prompts.push((*idx, needle.answer, ids, span));
    }
    // The common prefix, leaving every question at least one token to feed (the step
    // whose attention row produces the first answer token).
    let shortest = prompts.iter().map(|p| p.2.len()).min().unwrap_or(0);
    let mut lcp = shortest.saturating_sub(1);
    for p in &prompts[1..] {
        lcp = lcp.min(
            p.2.iter()
                .zip(&prompts[0].2)
                .take_while(|(a, b)| a == b)
                .count(),
        );
    }
    if let Some(p) = prompts.iter().find(|p| p.3.end > lcp) {
        bail!(
            "the answer '{}' is not inside the prompt part all questions share",
            p.1
        );
    }
    let prefix = prompts[0].2[..lcp].to_vec();
    let questions = prompts
        .into_iter()
        .map(|(needle, answer, ids, span)| SharedQuestion {
            needle,
            answer,
            actual_depth: span.start as f64 / ids.len().max(1) as f64,
            tail: ids[lcp..].to_vec(),
            span,
        })
        .collect();
    Ok(SharedHaystack { prefix, questions })
}

fn question_text(kind: &Kind, body: &str, question: &str) -> String {
    format!("{body}\n\nQuestion: {question}{}", kind.question_suffix)
}

/// The haystack before its question: intro, the units with fact `i` as its own
/// paragraph before unit `at[i]` (facts at the same boundary in the given order), and
/// each fact's byte offset.
fn assemble(
    kind: &Kind,
    needles: &[(usize, Needle)],
    units: &[(&str, bool)],
    at: &[usize],
) -> (String, Vec<usize>) {
    let mut text = String::from(kind.intro);
    let mut fact_at = vec![0; needles.len()];
    let mut put_facts = |text: &mut String, k: usize| -> bool {
        let mut any = false;
        for (i, (_, n)) in needles.iter().enumerate() {
            // With no units every fact goes at boundary 0.
            if at.get(i).copied().unwrap_or(0).min(units.len()) == k {
                text.push_str("\n\n");
                fact_at[i] = text.len();
                text.push_str(n.fact);
                any = true;
            }
        }
        any
    };
    for (k, &(u, opens)) in units.iter().enumerate() {
        let after_fact = put_facts(&mut text, k);
        if opens || k == 0 || after_fact {
            text.push_str("\n\n");
        } else {
            text.push(' ');
        }
        text.push_str(u);
    }
    put_facts(&mut text, units.len());
    (text, fact_at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::haystack::needles::NEEDLES;

    #[test]
    fn facts_go_at_their_boundaries_in_their_own_paragraphs() {
        let needles = [(0, NEEDLES[0]), (1, NEEDLES[1])];
        let units = [("A one.", true), ("A two.", false), ("B one.", true)];
        let (text, at) = assemble(&Kind::DOCUMENT, &needles, &units, &[1, 3]);
        assert_eq!(&text[at[0]..at[0] + NEEDLES[0].fact.len()], NEEDLES[0].fact);
        assert_eq!(&text[at[1]..at[1] + NEEDLES[1].fact.len()], NEEDLES[1].fact);
        assert!(text.contains(&format!("A one.\n\n{}\n\nA two.", NEEDLES[0].fact)));
        assert!(text.ends_with(&format!("B one.\n\n{}", NEEDLES[1].fact)));
        // Two facts at one boundary stand one after the other.
        let (text, at) = assemble(&Kind::DOCUMENT, &needles, &units, &[0, 0]);
        assert!(at[0] < at[1]);
        assert!(text.contains(&format!(
            "{}\n\n{}\n\nA one.",
            NEEDLES[0].fact, NEEDLES[1].fact
        )));
    }
}
