//! A haystack as the model sees it: templated, tokenized, with the answer's tokens found.
//!
//! How the answer span is found: the prompt is tokenized once, with each token's byte
//! range in the prompt text (`Tok::encode_with_offsets`). The answer's byte range is
//! known exactly because the haystack records where the fact sentence went. The span is
//! every token whose byte range overlaps the answer's bytes. The needle stands in its
//! own paragraph (blank lines on both sides) and the answer is bounded by spaces or
//! punctuation, and the byte-level BPE never merges across those pre-token boundaries,
//! so the span holds exactly the answer's tokens (a leading space may ride on the first
//! one). [`needle_prompt`] checks that the span decodes back to the answer and fails
//! otherwise.

use anyhow::{bail, Context, Result};
use std::ops::Range;

use super::{build, Kind, Needle, Placement};
use crate::model::{PromptOptions, Tok};

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

/// The haystack kind of the profiling prompts for this tokenizer. A model without a
/// chat template (a base model such as Gemma 3 270M, or `--raw`) continues text rather
/// than answering, so its question is followed by the start of an answer.
pub fn profiling_kind(tok: &Tok) -> Result<Kind> {
    Ok(if tok.templated(&PromptOptions::default())? {
        Kind::DOCUMENT
    } else {
        Kind {
            question_suffix: "\nAnswer:",
            ..Kind::DOCUMENT
        }
    })
}

/// The profile's needle prompt ([`Kind::DOCUMENT`]) for `needle` at about `target_len`
/// tokens (template included) with the fact at `depth` (0 = first thing in the document,
/// 1 = last) of the filler's tokens. `variant` rotates the paragraph the haystack starts
/// at, so that different needles and lengths do not all sit in the same text.
pub fn needle_prompt(
    tok: &Tok,
    needle: &Needle,
    target_len: usize,
    depth: f64,
    variant: usize,
) -> Result<NeedlePrompt> {
    if !(0.0..=1.0).contains(&depth) {
        bail!("needle depth {depth} is outside 0..=1");
    }
    let kind = profiling_kind(tok)?;
    let h = build(
        &kind,
        needle,
        target_len,
        Placement::AtOrPast(depth),
        variant,
        &mut |frame| Ok(tok.encode(&tok.apply_template(frame, false))?.len()),
        &mut |sentence| Ok(tok.encode(&format!(" {sentence}"))?.len()),
    )?;
    let text = tok.apply_template(&h.text, false);
    // The template only wraps the user text, so the user text starts where it is found.
    let user_at = text
        .find(&h.text)
        .context("the chat template does not contain the prompt verbatim")?;
    let answer_rel = needle
        .fact
        .find(needle.answer)
        .context("the needle's answer is not in its fact sentence")?;
    let a0 = user_at + h.needle_at + answer_rel;
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
    fn answer_span_is_the_overlapping_run() {
        let offs = [(0, 3), (3, 4), (4, 9), (9, 12), (12, 13)];
        assert_eq!(answer_span(&offs, 4..12), Some(2..4));
        assert_eq!(answer_span(&offs, 5..6), Some(2..3));
        assert_eq!(answer_span(&offs, 20..22), None);
    }
}
