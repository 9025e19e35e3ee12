//! Scoring a generation against an expected answer. Pure functions, no model. The one
//! word splitter and ROUGE-1 scorer of kvscope: evaluations score outputs with it and
//! profiles decide with it whether a needle trial retrieved its answer.
//!
//! Two scores per generation:
//! - **exact**: every required string (by default the answer itself) occurs in the
//!   output, case-insensitively, as a plain substring; a required string may list
//!   alternatives separated by `|` (`eleven|11`), any one of which counts. Substring (not equality) because
//!   a chat model wraps the answer in a sentence ("The number is 48217.").
//! - **ROUGE-1 recall**: the fraction of the answer's words that the output contains,
//!   counting repeated words with multiplicity (clipped counts). Words are the maximal
//!   runs of alphanumeric characters after lowercasing, so "48,217" is two words and
//!   punctuation never matters. Recall (not F1) because outputs are cut at `--max-new`
//!   tokens and extra words after the answer are not a fault.

use std::collections::HashMap;

/// Lowercased words: maximal runs of alphanumeric characters (Unicode-aware).
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// ROUGE-1 recall of `answer` in `output`, in `[0, 1]`. An answer without any word
/// scores 0: there is nothing the output could be credited for.
pub fn rouge1_recall(answer: &str, output: &str) -> f64 {
    let want = words(answer);
    if want.is_empty() {
        return 0.0;
    }
    let mut have: HashMap<String, usize> = HashMap::new();
    for w in words(output) {
        *have.entry(w).or_default() += 1;
    }
    let mut hit = 0usize;
    for w in &want {
        if let Some(n) = have.get_mut(w) {
            if *n > 0 {
                *n -= 1;
                hit += 1;
            }
        }
    }
    hit as f64 / want.len() as f64
}

/// True when every string of `required` occurs in `output` (case-insensitive), where
/// `a|b` accepts either alternative. Blank required strings are ignored; with none left
/// the answer cannot be checked: false.
pub fn exact_all(required: &[String], output: &str) -> bool {
    let out = output.to_lowercase();
    let mut any = false;
    for r in required {
        let r = r.trim().to_lowercase();
        if r.is_empty() {
            continue;
        }
        any = true;
        let found = r
            .split('|')
            .map(str::trim)
            .filter(|alt| !alt.is_empty())
            .any(|alt| out.contains(alt));
        if !found {
            return false;
        }
    }
    any
}

/// Both scores of one output.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Score {
    pub exact: bool,
    pub rouge1: f64,
}

/// Scores `output` against `answer`; `required` defaults to the answer itself.
pub fn score(answer: &str, required: &[String], output: &str) -> Score {
    let exact = if required.is_empty() {
        exact_all(&[answer.to_string()], output)
    } else {
        exact_all(required, output)
    };
    Score {
        exact,
        rouge1: rouge1_recall(answer, output),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_lowercase_and_split_on_non_alphanumeric() {
        assert_eq!(
            words("The magic-number is 48,217!"),
            ["the", "magic", "number", "is", "48", "217"]
        );
        assert!(words(" ,.;- ").is_empty());
        assert_eq!(words("Café ÉTÉ"), ["café", "été"]);
    }

    #[test]
    fn rouge1_recall_counts_clipped_overlap() {
        assert_eq!(rouge1_recall("48217", "The number is 48217."), 1.0);
        assert_eq!(rouge1_recall("48217", "The number is 4821."), 0.0);
        assert_eq!(rouge1_recall("red blue", "Blue."), 0.5);
        // A repeated answer word needs to be repeated in the output.
        assert_eq!(rouge1_recall("very very big", "very big"), 2.0 / 3.0);
        assert_eq!(rouge1_recall("very very big", "very very big"), 1.0);
        // Extra output words do not lower recall.
        assert_eq!(
            rouge1_recall("paris", "It is Paris, of course, Paris."),
            1.0
        );
        assert_eq!(rouge1_recall("", "anything"), 0.0);
        assert_eq!(rouge1_recall("...", "anything"), 0.0);
        // The cases the profile's trial scoring was written against.
        assert_eq!(rouge1_recall("412 metres", "It is 412 metres deep."), 1.0);
        assert_eq!(rouge1_recall("412 metres", "About 412-Metres."), 1.0);
        assert_eq!(rouge1_recall("Celia Thornbury", "celia won"), 0.5);
        assert_eq!(rouge1_recall("73914", "7391"), 0.0);
        assert_eq!(rouge1_recall("new new york", "new york"), 2.0 / 3.0);
    }

    /// The profile's old splitter lowercased the whole text before splitting; this one
    /// splits first. They differ only on characters whose lowercase is not alphanumeric
    /// (or that are not alphanumeric but lowercase to letters); pin them down, so a change
    /// in the shipped profile could only come from such a character in a generation.
    #[test]
    fn splitting_before_or_after_lowercasing_differs_only_on_rare_characters() {
        fn old(text: &str) -> Vec<String> {
            text.to_lowercase()
                .split(|c: char| !c.is_alphanumeric())
                .filter(|w| !w.is_empty())
                .map(str::to_string)
                .collect()
        }
        let differ: Vec<char> = (0..=0x10FFFFu32)
            .filter_map(char::from_u32)
            .filter(|&c| {
                let s = format!("a{c}b {c}");
                old(&s) != words(&s)
            })
            .collect();
        // Only the Turkish dotted capital I (its lowercase carries a combining dot, which
        // is not alphanumeric): a profile measured with the old splitter comes out the
        // same unless a generation holds that character.
        assert_eq!(differ, ['\u{130}']);
    }

    #[test]
    fn exact_is_case_insensitive_substring_of_every_required_string() {
        assert!(exact_all(&["48217".into()], "It is 48217."));
        assert!(!exact_all(&["48217".into()], "It is 4821 7."));
        assert!(exact_all(&["Paris".into()], "the capital is paris"));
        assert!(exact_all(
            &["1887".into(), "seven".into()],
            "Built in 1887 with Seven arches"
        ));
        assert!(!exact_all(
            &["1887".into(), "seven".into()],
            "Built in 1887"
        ));
        assert!(exact_all(&["eleven|11".into()], "took 11 days"));
        assert!(exact_all(&["eleven | 11".into()], "took Eleven days"));
        assert!(!exact_all(&["eleven|11".into()], "took ten days"));
        assert!(!exact_all(&[], "x"));
        assert!(!exact_all(&["  ".into()], "x"));
    }

    #[test]
    fn score_defaults_required_to_the_answer() {
        let s = score("48217", &[], "The special magic number is 48217.");
        assert_eq!(
            s,
            Score {
                exact: true,
                rouge1: 1.0
            }
        );
        let s = score("1887 seven arches", &["1887".into()], "In 1887.");
        assert!(s.exact);
        assert!((s.rouge1 - 1.0 / 3.0).abs() < 1e-12);
    }
}
