//! Needle-in-a-haystack prompts, the one generator under `kvscope profile` (SRH
//! measurement, `profile compare`) and `kvscope eval niah`.
//!
//! A haystack is an intro line, filler text cut into units (whole paragraphs, or
//! sentences of a paragraph) taken in order from a starting unit, cycling, while their
//! tokens fit the room the target length leaves, the needle's fact sentence as its own
//! paragraph at a unit boundary chosen by depth, and the question last:
//!
//! ```text
//! {intro}\n\n{unit} {unit}\n\n{fact}\n\n{unit}...\n\nQuestion: {question}{suffix}
//! ```
//!
//! The two users differ only in data and in how they measure tokens, each kept as it
//! was when they had separate generators so their prompts stay byte-identical
//! (`tests/real_haystack.rs` pins them by sha256): [`Kind::NOTES`] (eval: whole
//! paragraphs of [`filler::NOTES`], the needle at the paragraph boundary nearest to the
//! depth) and [`Kind::DOCUMENT`] (profile: sentences of [`filler::DOCUMENT`], the needle
//! at the first sentence boundary at or past the depth). [`prompt`] templates a haystack
//! and finds the answer's tokens.

pub mod filler;
pub mod needles;
pub mod prompt;
pub mod shared;

use anyhow::Result;

/// One needle: a fact sentence, a question whose answer is in it, and the answer text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needle {
    pub fact: &'static str,
    pub question: &'static str,
    /// Appears exactly once in `fact`.
    pub answer: &'static str,
}

impl Needle {
    /// The fact sentence up to its answer, after "Answer: ": the start of the answer for
    /// base models (no chat template), which continue text rather than answer a question.
    pub fn answer_lead(&self) -> String {
        let before = self.fact.find(self.answer).unwrap_or(self.fact.len());
        format!("Answer: {}", self.fact[..before].trim_end())
    }
}

/// How the filler is cut into units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Units {
    /// Each of these paragraphs is one unit.
    Paragraphs(&'static [&'static str]),
    /// The sentences of this text's paragraphs (see [`filler::sentences`]),
    /// joined by a space within a paragraph.
    Sentences(&'static str),
}

/// The data of one kind of haystack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    pub intro: &'static str,
    /// After the question (e.g. an instruction on the answer's form).
    pub question_suffix: &'static str,
    pub units: Units,
}

impl Kind {
    /// `eval niah`'s haystacks.
    pub const NOTES: Kind = Kind {
        intro: "Read the notes below, then answer the question at the end.",
        question_suffix: "",
        units: Units::Paragraphs(&filler::NOTES),
    };
    /// The profile's haystacks.
    pub const DOCUMENT: Kind = Kind {
        intro: "Read the document below, then answer the question that follows it.",
        question_suffix: " Answer in a few words.",
        units: Units::Sentences(filler::DOCUMENT),
    };

    /// The units in reading order, each with whether it opens a paragraph, and the index
    /// of the first unit of every paragraph.
    fn units(&self) -> (Vec<(&'static str, bool)>, Vec<usize>) {
        match self.units {
            Units::Paragraphs(p) => (
                p.iter().map(|&s| (s, true)).collect(),
                (0..p.len()).collect(),
            ),
            Units::Sentences(text) => {
                let mut units = Vec::new();
                let mut firsts = Vec::new();
                for para in filler::sentences(text) {
                    firsts.push(units.len());
                    units.extend(para.iter().enumerate().map(|(i, &s)| (s, i == 0)));
                }
                (units, firsts)
            }
        }
    }
}

/// Where the needle goes among the chosen units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Placement {
    /// The unit boundary whose filler tokens before it are nearest to this percent of
    /// all filler tokens (the earliest on a tie); 0 = first, 100 = last.
    Nearest(usize),
    /// The first unit boundary with at least this fraction (0..=1, rounded to a token)
    /// of the filler tokens before it.
    AtOrPast(f64),
}

/// A generated haystack: the user's text, before any chat template.
#[derive(Debug, Clone, PartialEq)]
pub struct Haystack {
    pub text: String,
    /// Byte offset of the fact sentence in `text`.
    pub needle_at: usize,
    pub needle: Needle,
}

/// Chooses units, from `start` and cycling through `costs`, while they fit in `room`
/// tokens. A cap on the count stops zero-token units from looping forever.
pub fn fill(costs: &[usize], room: usize, start: usize) -> Vec<usize> {
    let mut order = Vec::new();
    if costs.is_empty() {
        return order;
    }
    let mut used = 0usize;
    let mut i = start % costs.len();
    while order.len() < 100_000 && used + costs[i] <= room {
        used += costs[i];
        order.push(i);
        i = (i + 1) % costs.len();
    }
    order
}

/// The needle goes before `chosen[k]` (`chosen.len()`: after the last one), for the `k`
/// the placement picks; `costs` are the chosen units' token counts, in order.
pub fn place(costs: &[usize], placement: Placement) -> usize {
    let used: usize = costs.iter().sum();
    // cum[k]: tokens before boundary k.
    let cum: Vec<usize> = std::iter::once(0)
        .chain(costs.iter().scan(0usize, |acc, &c| {
            *acc += c;
            Some(*acc)
        }))
        .collect();
    match placement {
        Placement::Nearest(percent) => {
            let target = used as f64 * percent.min(100) as f64 / 100.0;
            let mut best = (0usize, f64::INFINITY);
            for (k, &c) in cum.iter().enumerate() {
                let d = (c as f64 - target).abs();
                if d < best.1 {
                    best = (k, d);
                }
            }
            best.0
        }
        Placement::AtOrPast(fraction) => {
            let want = (fraction * used as f64).round() as usize;
            cum.iter().position(|&c| c >= want).unwrap_or(costs.len())
        }
    }
}

/// Builds a haystack of about `target` tokens. `frame_tokens` counts a whole user text
/// (the haystack with no filler is the frame the filler must fit beside);
/// `unit_tokens` counts what one unit adds. Unit sizes are measured one by one, so the
/// final length can differ from `target` by a few tokens.
#[allow(clippy::too_many_arguments)]
pub fn build(
    kind: &Kind,
    needle: &Needle,
    target: usize,
    placement: Placement,
    start: usize,
    frame_tokens: &mut dyn FnMut(&str) -> Result<usize>,
    unit_tokens: &mut dyn FnMut(&str) -> Result<usize>,
) -> Result<Haystack> {
    let (units, firsts) = kind.units();
    let fixed = frame_tokens(&assemble(kind, needle, &[], 0).0)?;
    let mut costs = Vec::with_capacity(units.len());
    for (u, _) in &units {
        costs.push(unit_tokens(u)?);
    }
    // `start` counts paragraphs: the haystack opens with one.
    let first = firsts
        .get(start % firsts.len().max(1))
        .copied()
        .unwrap_or(0);
    let order = fill(&costs, target.saturating_sub(fixed), first);
    let chosen: Vec<usize> = order.iter().map(|&i| costs[i]).collect();
    let at = place(&chosen, placement);
    let picked: Vec<(&str, bool)> = order.iter().map(|&i| units[i]).collect();
    let (text, needle_at) = assemble(kind, needle, &picked, at);
    Ok(Haystack {
        text,
        needle_at,
        needle: *needle,
    })
}

/// The user text: intro, the units with the fact as its own paragraph before unit `at`,
/// the question; and the fact's byte offset. A unit that opens a paragraph, or follows
/// the fact, starts a new one.
fn assemble(kind: &Kind, needle: &Needle, units: &[(&str, bool)], at: usize) -> (String, usize) {
    let mut text = String::from(kind.intro);
    let mut needle_at = 0;
    let mut put_needle = |text: &mut String| {
        text.push_str("\n\n");
        needle_at = text.len();
        text.push_str(needle.fact);
    };
    for (k, &(u, opens)) in units.iter().enumerate() {
        if k == at {
            put_needle(&mut text);
        }
        if opens || k == 0 || k == at {
            text.push_str("\n\n");
        } else {
            text.push(' ');
        }
        text.push_str(u);
    }
    if at >= units.len() {
        put_needle(&mut text);
    }
    text.push_str("\n\nQuestion: ");
    text.push_str(needle.question);
    text.push_str(kind.question_suffix);
    (text, needle_at)
}

#[cfg(test)]
mod tests {
    use super::needles::{MAGIC, NEEDLES};
    use super::*;

    #[test]
    fn fill_takes_units_cycling_while_they_fit() {
        let sizes = [10, 20, 30, 40];
        assert_eq!(fill(&sizes, 65, 0), [0, 1, 2]);
        assert_eq!(fill(&sizes, 75, 3), [3, 0, 1]);
        // Long targets repeat units.
        assert_eq!(fill(&[5, 5], 22, 0), [0, 1, 0, 1]);
        assert!(fill(&sizes, 5, 0).is_empty());
        assert!(fill(&[], 100, 0).is_empty());
        assert_eq!(fill(&[0], 10, 0).len(), 100_000);
    }

    #[test]
    fn placement_by_depth() {
        let chosen = [10, 20, 30];
        assert_eq!(place(&chosen, Placement::Nearest(0)), 0);
        assert_eq!(place(&chosen, Placement::Nearest(100)), 3);
        // 50% of 60 tokens = 30: the boundary after units 0 and 1.
        assert_eq!(place(&chosen, Placement::Nearest(50)), 2);
        // 40% = 24: boundary 1 (10 tokens before it, 14 away) beats boundary 2 (30, 6
        // away)? No: 6 < 14, so boundary 2.
        assert_eq!(place(&chosen, Placement::Nearest(40)), 2);
        assert_eq!(place(&[40, 30], Placement::Nearest(50)), 1);
        assert_eq!(place(&[], Placement::Nearest(50)), 0);
        // At or past: 40% = 24 tokens, first boundary with >= 24 before it is 2.
        assert_eq!(place(&chosen, Placement::AtOrPast(0.4)), 2);
        assert_eq!(place(&chosen, Placement::AtOrPast(0.0)), 0);
        assert_eq!(place(&chosen, Placement::AtOrPast(1.0)), 3);
        assert_eq!(place(&chosen, Placement::AtOrPast(0.5)), 2);
    }

    fn words(s: &str) -> Result<usize> {
        Ok(s.split_whitespace().count())
    }

    #[test]
    fn notes_put_the_needle_at_the_planned_place_and_the_question_last() {
        let n = MAGIC[1];
        let build_at = |depth, start| {
            build(
                &Kind::NOTES,
                &n,
                600,
                Placement::Nearest(depth),
                start,
                &mut words,
                &mut words,
            )
            .unwrap()
        };
        let h = build_at(50, 3);
        assert!(h.text.starts_with(Kind::NOTES.intro));
        assert!(h
            .text
            .ends_with("Question: What is the special magic number for the Marlow observatory?"));
        assert_eq!(&h.text[h.needle_at..h.needle_at + n.fact.len()], n.fact);
        let count = h.text.split_whitespace().count();
        assert!((450..=600).contains(&count), "{count}");
        let frac = h.needle_at as f64 / h.text.len() as f64;
        assert!((0.35..0.65).contains(&frac), "{frac}");
        // Paragraphs and the fact are separated by blank lines.
        assert!(h.text.contains(&format!(".\n\n{}\n\n", n.fact)));
        let first = build_at(0, 0);
        assert_eq!(first.needle_at, Kind::NOTES.intro.len() + 2);
        let last = build_at(100, 0);
        assert!(last.text.contains(&format!("{}\n\nQuestion:", n.fact)));
    }

    #[test]
    fn document_splits_a_paragraph_around_the_needle() {
        let n = NEEDLES[0];
        let h = build(
            &Kind::DOCUMENT,
            &n,
            400,
            Placement::AtOrPast(0.5),
            2,
            &mut words,
            &mut words,
        )
        .unwrap();
        assert!(h.text.starts_with(Kind::DOCUMENT.intro));
        assert!(h.text.ends_with(" Answer in a few words."));
        let before = &h.text[..h.needle_at];
        let after = &h.text[h.needle_at + n.fact.len()..];
        assert!(before.ends_with("\n\n") && after.starts_with("\n\n"));
        // Sentences within a paragraph are joined by one space.
        assert!(h.text.contains(". ") && !h.text.contains("  "));
    }

    #[test]
    fn answer_lead_stops_before_the_answer() {
        assert_eq!(
            NEEDLES[4].answer_lead(),
            "Answer: Professor Anika Ruhl measured the greatest depth of Lake Ostrava as"
        );
    }
}
