//! Needle-in-a-haystack prompts: filler text written for kvscope (`filler.txt`), one
//! needle fact inserted at a token depth, and a question at the end, in the model's chat
//! template.
//!
//! How the answer span is found: the prompt is tokenized once, with each token's byte
//! range in the prompt text (`Tok::encode_with_offsets`). The answer's byte range is
//! known exactly because the prompt is assembled here. The span is every token whose
//! byte range overlaps the answer's bytes. The needle stands in its own paragraph
//! (blank lines on both sides) and the answer is bounded by spaces or punctuation, and
//! the byte-level BPE never merges across those pre-token boundaries, so the span holds
//! exactly the answer's tokens (a leading space may ride on the first one). This is the
//! same token sequence as tokenizing the fact sentence on its own; [`build`] checks that
//! the span decodes back to the answer and fails otherwise.

use anyhow::{bail, Context, Result};
use std::ops::Range;

use super::needles::Needle;
use crate::model::{PromptOptions, Tok};

/// The filler the haystacks are made of: plain paragraphs on everyday subjects, none of
/// which mentions a needle's answer.
pub const FILLER: &str = include_str!("filler.txt");

/// Default context lengths of the SRH measurement, in prompt tokens.
pub const DEFAULT_LENGTHS: [usize; 3] = [1024, 2048, 4096];

const INTRO: &str = "Read the document below, then answer the question that follows it.";

/// One needle prompt, templated and tokenized.
#[derive(Debug, Clone)]
pub struct NeedlePrompt {
    /// Prompt text with the chat template applied.
    pub text: String,
    pub ids: Vec<u32>,
    /// Token positions of the answer in `ids`.
    pub span: Range<usize>,
    pub answer: &'static str,
    /// Where the needle landed, as a fraction of the prompt's tokens.
    pub actual_depth: f64,
}

/// Depths `0, step, 2*step, ..., 1` as fractions (`step_percent` in percent, > 0).
pub fn depth_grid(step_percent: u32) -> Vec<f64> {
    let step = step_percent.clamp(1, 100);
    (0..=100)
        .step_by(step as usize)
        .map(|p| p as f64 / 100.0)
        .collect()
}

/// The filler as paragraphs of sentences (sentences end with a full stop).
fn paragraphs() -> Vec<Vec<&'static str>> {
    FILLER
        .split("\n\n")
        .map(|p| {
            p.split_inclusive(". ")
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
        })
        .filter(|p| !p.is_empty())
        .collect()
}

/// Builds the prompt for `needle` at about `target_len` tokens (template included) with
/// the fact at `depth` (0 = first thing in the document, 1 = last) of the filler's
/// tokens. `variant` rotates where in the filler the haystack starts, so that different
/// needles and lengths do not all sit in the same text.
pub fn build(
    tok: &Tok,
    needle: &Needle,
    target_len: usize,
    depth: f64,
    variant: usize,
) -> Result<NeedlePrompt> {
    if !(0.0..=1.0).contains(&depth) {
        bail!("needle depth {depth} is outside 0..=1");
    }
    let question = question_text(tok, needle)?;
    let overhead = tok
        .encode(&tok.apply_template(&format!("{INTRO}\n\n{}\n\n{question}", needle.fact), false))?
        .len();
    let budget = target_len.saturating_sub(overhead);

    // Take whole sentences, paragraph by paragraph (cycling), until the budget is spent.
    let paras = paragraphs();
    let mut chosen: Vec<Vec<(&str, usize)>> = Vec::new();
    let mut total = 0;
    let mut p = variant % paras.len();
    'fill: while total < budget {
        let mut para = Vec::new();
        for s in &paras[p] {
            let cost = tok.encode(&format!(" {s}"))?.len();
            if total + cost > budget {
                if !para.is_empty() {
                    chosen.push(para);
                }
                break 'fill;
            }
            total += cost;
            para.push((*s, cost));
        }
        chosen.push(para);
        p = (p + 1) % paras.len();
    }

    // Insert the needle as its own paragraph at the first sentence boundary at or past
    // the requested depth.
    let want = (depth * total as f64).round() as usize;
    let mut doc = String::new();
    let mut needle_at = None;
    let mut seen = 0;
    let put_needle = |doc: &mut String, at: &mut Option<usize>| {
        if !doc.is_empty() {
            doc.push_str("\n\n");
        }
        *at = Some(doc.len());
        doc.push_str(needle.fact);
    };
    for para in &chosen {
        let mut open = false;
        for (s, cost) in para {
            if needle_at.is_none() && seen >= want {
                put_needle(&mut doc, &mut needle_at);
                open = false;
            }
            if !open {
                if !doc.is_empty() {
                    doc.push_str("\n\n");
                }
                open = true;
            } else {
                doc.push(' ');
            }
            doc.push_str(s);
            seen += cost;
        }
    }
    if needle_at.is_none() {
        put_needle(&mut doc, &mut needle_at);
    }
    let needle_at = needle_at.context("needle was not placed")?;

    let user = format!("{INTRO}\n\n{doc}\n\n{question}");
    let text = tok.apply_template(&user, false);
    // The template only wraps the user text, so the user text starts where it is found.
    let user_at = text
        .find(&user)
        .context("the chat template does not contain the prompt verbatim")?;
    let answer_rel = needle
        .fact
        .find(needle.answer)
        .context("the needle's answer is not in its fact sentence")?;
    let a0 = user_at + INTRO.len() + 2 + needle_at + answer_rel;
    let a1 = a0 + needle.answer.len();
    let (ids, offsets) = tok.encode_with_offsets(&text)?;
    let span = answer_span(&offsets, a0..a1)
        .with_context(|| format!("no token covers the answer '{}'", needle.answer))?;
    let decoded = tok.decode(&ids[span.clone()]);
    if decoded.trim() != needle.answer {
        bail!(
            "the answer tokens decode to '{decoded}', not '{}': the tokenizer merged the answer with its neighbours",
            needle.answer
        );
    }
    Ok(NeedlePrompt {
        actual_depth: span.start as f64 / ids.len().max(1) as f64,
        text,
        ids,
        span,
        answer: needle.answer,
    })
}

/// The question at the end of the prompt. In a chat template the model answers it; a
/// model without one (a base model such as Gemma 3 270M, or `--raw`) continues text, so
/// the question is followed by the start of its answer, which such a model completes.
fn question_text(tok: &Tok, needle: &Needle) -> Result<String> {
    if tok.templated(&PromptOptions::default())? {
        Ok(format!(
            "Question: {} Answer in a few words.",
            needle.question
        ))
    } else {
        Ok(format!("Question: {}\nAnswer:", needle.question))
    }
}

/// Tokens whose byte range overlaps `bytes` (a contiguous run), or `None`.
pub fn answer_span(offsets: &[(usize, usize)], bytes: Range<usize>) -> Option<Range<usize>> {
    let hit = |&(s, e): &(usize, usize)| s < bytes.end && e > bytes.start;
    let start = offsets.iter().position(hit)?;
    let len = offsets[start..].iter().take_while(|o| hit(o)).count();
    Some(start..start + len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_grid_covers_both_ends() {
        assert_eq!(depth_grid(50), vec![0.0, 0.5, 1.0]);
        assert_eq!(depth_grid(10).len(), 11);
        assert_eq!(depth_grid(30), vec![0.0, 0.3, 0.6, 0.9]);
    }

    #[test]
    fn answer_span_is_the_overlapping_run() {
        let offs = [(0, 3), (3, 4), (4, 9), (9, 12), (12, 13)];
        assert_eq!(answer_span(&offs, 4..12), Some(2..4));
        assert_eq!(answer_span(&offs, 5..6), Some(2..3));
        assert_eq!(answer_span(&offs, 20..22), None);
    }

    #[test]
    fn filler_has_many_paragraphs_of_sentences() {
        let p = paragraphs();
        assert!(p.len() >= 12, "{}", p.len());
        assert!(p.iter().all(|s| s.len() >= 3));
        assert!(FILLER.split_whitespace().count() > 1000);
    }
}
