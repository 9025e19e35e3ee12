//! The needles, written for kvscope: each is a fact sentence hidden in filler text, a
//! question about it, and the answer, which appears verbatim in the fact sentence.
//!
//! [`NEEDLES`] are the profile's: the first [`PROFILE_NEEDLES`] are the ones
//! `kvscope profile srh` uses by default; the rest are held out for checking that a
//! profile helps on needles it never saw (`profile compare`). [`MAGIC`] are `eval niah`'s.

use super::Needle;

/// Needles used for profiling by default (`--needles` picks the first N).
pub const PROFILE_NEEDLES: usize = 12;

const fn n(fact: &'static str, question: &'static str, answer: &'static str) -> Needle {
    Needle {
        fact,
        question,
        answer,
    }
}

/// Numbers, names, places and multi-word phrases, mixed, so that heads that only copy
/// digits or only copy capitalised words do not dominate the profile.
pub const NEEDLES: [Needle; 16] = [
    n(
        "The keeper of the Harlow Bay lighthouse wrote in his log that the secret code of the lamp room is 73914.",
        "What is the secret code of the lamp room in the Harlow Bay lighthouse?",
        "73914",
    ),
    n(
        "The prize for the best apple pie at the Dunmore autumn fair went to a baker named Celia Thornbury.",
        "Who won the prize for the best apple pie at the Dunmore autumn fair?",
        "Celia Thornbury",
    ),
    n(
        "After years of searching, the museum's lost bronze owl was finally found in a cellar in Valparaiso.",
        "In which city was the museum's lost bronze owl found?",
        "Valparaiso",
    ),
    n(
        "The password that opens the archive of the old observatory is purple harbour lantern.",
        "What is the password that opens the archive of the old observatory?",
        "purple harbour lantern",
    ),
    n(
        "Professor Anika Ruhl measured the greatest depth of Lake Ostrava as 412 metres.",
        "What greatest depth did Professor Anika Ruhl measure for Lake Ostrava?",
        "412 metres",
    ),
    n(
        "The first mayor of the town of Brackwater was a retired sailor called Tobias Fenwick.",
        "Who was the first mayor of the town of Brackwater?",
        "Tobias Fenwick",
    ),
    n(
        "The rare blue orchid recorded in the botanical survey grows only on the slopes of Mount Kelbor.",
        "Where does the rare blue orchid from the botanical survey grow?",
        "Mount Kelbor",
    ),
    n(
        "The cook at the harbour inn said that the secret ingredient of her famous stew is smoked juniper berries.",
        "What is the secret ingredient of the famous stew made by the cook at the harbour inn?",
        "smoked juniper berries",
    ),
    n(
        "The stone bridge over the river Alder was completed in the year 1687.",
        "In which year was the stone bridge over the river Alder completed?",
        "1687",
    ),
    n(
        "The ship that carried the first telegraph cable to the island was named the Northern Wren.",
        "What was the name of the ship that carried the first telegraph cable to the island?",
        "Northern Wren",
    ),
    n(
        "Every winter the regional chess championship is held in the mountain town of Grindelfeld.",
        "In which town is the regional chess championship held every winter?",
        "Grindelfeld",
    ),
    n(
        "The door of the hidden library behind the bookshop was painted a bright saffron yellow.",
        "What colour was the door of the hidden library behind the bookshop painted?",
        "saffron yellow",
    ),
    // Held out from profiling by default.
    n(
        "The quartermaster's ledger records that the storehouse held exactly 5286 barrels of salted fish.",
        "How many barrels of salted fish did the storehouse hold according to the quartermaster's ledger?",
        "5286",
    ),
    n(
        "The violin found in the attic of the vicarage was made by a craftsman named Ezra Holloway.",
        "Who made the violin found in the attic of the vicarage?",
        "Ezra Holloway",
    ),
    n(
        "The expedition buried its spare supplies beside the well in the village of Tarrow Cross.",
        "In which village did the expedition bury its spare supplies?",
        "Tarrow Cross",
    ),
    n(
        "The code word the radio operators used for a storm warning was silver kettle.",
        "What code word did the radio operators use for a storm warning?",
        "silver kettle",
    ),
];

/// `eval niah`'s needles: one sentence form, distinct subjects and numbers, so a model
/// cannot score by repeating a number it saw in another cell.
pub const MAGIC: [Needle; 5] = [
    n(
        "The special magic number for the Alder Street bakery is 73914.",
        "What is the special magic number for the Alder Street bakery?",
        "73914",
    ),
    n(
        "The special magic number for the Marlow observatory is 26058.",
        "What is the special magic number for the Marlow observatory?",
        "26058",
    ),
    n(
        "The special magic number for the northern orchard is 91482.",
        "What is the special magic number for the northern orchard?",
        "91482",
    ),
    n(
        "The special magic number for the Cobbleford ferry is 50736.",
        "What is the special magic number for the Cobbleford ferry?",
        "50736",
    ),
    n(
        "The special magic number for the blue notebook is 38629.",
        "What is the special magic number for the blue notebook?",
        "38629",
    ),
];

#[cfg(test)]
mod tests {
    use super::super::filler::{DOCUMENT, NOTES};
    use super::*;

    #[test]
    fn needles_are_distinct_and_answers_appear_once_in_their_fact() {
        for set in [&NEEDLES[..], &MAGIC[..]] {
            for (i, n) in set.iter().enumerate() {
                assert_eq!(n.fact.matches(n.answer).count(), 1, "needle {i}");
                assert!(n.fact.ends_with('.') && n.question.ends_with('?'), "{i}");
                for m in &set[i + 1..] {
                    assert_ne!(n.answer, m.answer);
                    assert_ne!(n.fact, m.fact);
                }
            }
        }
        assert!(PROFILE_NEEDLES >= 12 && PROFILE_NEEDLES < NEEDLES.len());
    }

    #[test]
    fn answers_are_not_in_the_filler() {
        let document = DOCUMENT.to_lowercase();
        for n in &NEEDLES {
            assert!(!document.contains(&n.answer.to_lowercase()), "{}", n.answer);
        }
        for n in &MAGIC {
            assert!(NOTES.iter().all(|p| !p.contains(n.answer)), "{}", n.answer);
        }
    }

    #[test]
    fn magic_needles_lead_into_their_answer() {
        assert_eq!(
            MAGIC[1].answer_lead(),
            "Answer: The special magic number for the Marlow observatory is"
        );
    }
}
