//! Pins (METHOD.md, "Pins"): the user forces prompt positions to be kept or evicted,
//! around whatever a method chose. A generic step after any method's layer choice, so it
//! composes with every method:
//! - pinned-kept positions are kept by every KV head and take slots of that head's
//!   choices: a head that chose `n` positions outside the window keeps the pins plus the
//!   `n - pins` best unpinned candidates by the method's own ranking (its scores; for a
//!   method without scores, the positions it chose first, then the rest by position);
//!   so memory stays equal unless the pins alone exceed `n`, where the head keeps just
//!   the pins and the window (the layer's budget grows);
//! - pinned-evicted positions leave the candidates (never the window), and their slots go
//!   to the next-best candidates.

use super::scores::rank_order;
use super::LayerChoice;
use anyhow::{bail, Context, Result};

/// Positions past this are refused while parsing, before anything is expanded: no prompt
/// kvscope reads can be longer (the prompt file cap is 8 MiB of text, at least one byte a
/// token), and expanding at most this many positions costs at most 64 MB.
pub const MAX_PIN_POSITION: usize = crate::input::MAX_PROMPT_BYTES as usize;

/// Parses `a,b,c-d` (positions and inclusive ranges) into sorted, unique positions.
/// Ranges are merged before they are expanded, so a list of a thousand copies of one
/// range costs one range, and positions past [`MAX_PIN_POSITION`] are refused unexpanded.
pub fn parse_list(s: &str) -> Result<Vec<usize>> {
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let num = |x: &str| {
            x.trim().parse::<usize>().with_context(|| {
                format!(
                    "pin list: '{part}' is not a position or a range a-b (expected e.g. 3,10-12)"
                )
            })
        };
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    bail!("pin list: range '{part}' runs backwards; write it low-high");
                }
                (a, b)
            }
            None => {
                let p = num(part)?;
                (p, p)
            }
        };
        if b > MAX_PIN_POSITION {
            bail!(
                "pin list: '{part}' reaches position {b}, past any prompt kvscope can read (at most {MAX_PIN_POSITION})"
            );
        }
        ranges.push((a, b));
    }
    Ok(expand(merge(ranges)))
}

/// Sorts inclusive ranges and merges those that overlap or touch: O(n log n).
pub fn merge(mut ranges: Vec<(usize, usize)>) -> Vec<(usize, usize)> {
    ranges.sort_unstable();
    let mut out: Vec<(usize, usize)> = Vec::with_capacity(ranges.len());
    for (a, b) in ranges {
        match out.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

fn expand(ranges: Vec<(usize, usize)>) -> Vec<usize> {
    ranges.into_iter().flat_map(|(a, b)| a..=b).collect()
}

/// Pins in any order, possibly repeated (a hand-edited report), as sorted unique positions.
pub fn normalize(mut v: Vec<usize>) -> Vec<usize> {
    v.sort_unstable();
    v.dedup();
    v
}

/// Checks pins against a prompt of `len` tokens: in range and not both kept and evicted.
/// O(n log n) in the number of pins, in any order.
pub fn validate(keep: &[usize], evict: &[usize], len: usize) -> Result<()> {
    if let Some(&p) = keep.iter().chain(evict).find(|&&p| p >= len) {
        bail!(
            "pinned position {p} is outside the prompt ({len} tokens, positions 0-{})",
            len.saturating_sub(1)
        );
    }
    fn sorted(v: &[usize]) -> std::borrow::Cow<'_, [usize]> {
        if v.windows(2).all(|w| w[0] < w[1]) {
            std::borrow::Cow::Borrowed(v)
        } else {
            std::borrow::Cow::Owned(normalize(v.to_vec()))
        }
    }
    let (keep, evict) = (sorted(keep), sorted(evict));
    let (mut i, mut j) = (0, 0);
    while i < keep.len() && j < evict.len() {
        match keep[i].cmp(&evict[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                bail!(
                    "position {} is pinned both to keep and to evict; choose one",
                    keep[i]
                )
            }
        }
    }
    Ok(())
}

/// Applies the pins to one layer's choice (`len` prompt tokens, window `w`). `keep` and
/// `evict` are sorted positions.
pub fn apply(
    choice: LayerChoice,
    len: usize,
    window: usize,
    keep: &[usize],
    evict: &[usize],
) -> LayerChoice {
    let prefix = len.saturating_sub(window);
    let pinned: Vec<usize> = keep.iter().copied().filter(|&p| p < prefix).collect();
    let mut allowed = vec![true; prefix];
    for &p in pinned.iter().chain(evict.iter()).filter(|&&p| p < prefix) {
        allowed[p] = false;
    }
    let keep_heads = choice
        .keep
        .iter()
        .enumerate()
        .map(|(g, kept)| {
            let chosen: Vec<usize> = kept.iter().copied().filter(|&p| p < prefix).collect();
            let slots = chosen.len().saturating_sub(pinned.len());
            let mut order: Vec<usize> = (0..prefix).filter(|&p| allowed[p]).collect();
            match choice.scores.get(g).filter(|s| s.len() == prefix) {
                Some(s) => order.sort_by(|&a, &b| rank_order(s[a], a, s[b], b)),
                // No scores: what the method chose first, then by position.
                None => order.sort_by_key(|&p| (chosen.binary_search(&p).is_err(), p)),
            }
            order.truncate(slots);
            order.extend(&pinned);
            order.sort_unstable();
            order.extend(prefix..len);
            order
        })
        .collect();
    LayerChoice {
        keep: keep_heads,
        scores: choice.scores,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choice(keep: Vec<Vec<usize>>, scores: Vec<Vec<f32>>) -> LayerChoice {
        LayerChoice { keep, scores }
    }

    #[test]
    fn parses_positions_and_ranges() {
        assert_eq!(parse_list("3, 1,5-7,6").unwrap(), vec![1, 3, 5, 6, 7]);
        assert_eq!(parse_list("").unwrap(), Vec::<usize>::new());
        assert!(parse_list("a").unwrap_err().to_string().contains("'a'"));
        assert!(parse_list("7-5")
            .unwrap_err()
            .to_string()
            .contains("backwards"));
        assert!(parse_list("1-x").is_err());
        // A thousand copies of one long range cost one range.
        let many = vec!["0-1000000"; 1000].join(",");
        assert_eq!(parse_list(&many).unwrap().len(), 1_000_001);
        assert_eq!(
            parse_list("5-9,1-3,4,8-12").unwrap(),
            (1..=12).collect::<Vec<_>>()
        );
        let e = parse_list("0-18446744073709551615")
            .unwrap_err()
            .to_string();
        assert!(e.contains("past any prompt"), "{e}");
    }

    #[test]
    fn validation_is_fast_on_huge_unsorted_pin_sets() {
        // 10^6 each, unsorted and repeated: O(n log n), not O(keep x evict).
        let keep: Vec<usize> = (0..1_000_000).rev().map(|p| p * 2).collect();
        let evict: Vec<usize> = (0..1_000_000).map(|p| p * 2 + 1).collect();
        validate(&keep, &evict, 2_000_000).unwrap();
        let mut both = evict.clone();
        both.push(1_999_998);
        let e = validate(&keep, &both, 2_000_000).unwrap_err().to_string();
        assert!(e.contains("position 1999998 is pinned both"), "{e}");
        assert_eq!(normalize(vec![3, 1, 3, 2, 1]), vec![1, 2, 3]);
    }

    #[test]
    fn validation_names_the_bad_position() {
        assert!(validate(&[1, 9], &[2], 10).is_ok());
        assert!(validate(&[10], &[], 10)
            .unwrap_err()
            .to_string()
            .contains("position 10"));
        assert!(validate(&[3], &[3], 10)
            .unwrap_err()
            .to_string()
            .contains("both"));
    }

    #[test]
    fn pins_displace_the_lowest_scoring_and_keep_the_budget() {
        // L = 8, w = 2: candidates [0, 6). Scores rank 0 > 2 > 4 > 1 > 3 > 5; the method
        // kept the top 3 (0, 2, 4). Pinning 5 displaces 4, the lowest kept.
        let s = vec![9.0, 3.0, 8.0, 2.0, 7.0, 1.0];
        let c = choice(vec![vec![0, 2, 4, 6, 7]], vec![s.clone()]);
        let out = apply(c.clone(), 8, 2, &[5], &[]);
        assert_eq!(out.keep, vec![vec![0, 2, 5, 6, 7]]);
        // Pinning one already kept changes nothing.
        assert_eq!(apply(c.clone(), 8, 2, &[2], &[]).keep, c.keep);
        // Pinning a window position changes nothing either.
        assert_eq!(apply(c.clone(), 8, 2, &[7], &[]).keep, c.keep);
        // Evicting 0 hands its slot to the next best, 1.
        assert_eq!(
            apply(c.clone(), 8, 2, &[], &[0]).keep,
            vec![vec![1, 2, 4, 6, 7]]
        );
        // Evicting a window position does nothing.
        assert_eq!(apply(c.clone(), 8, 2, &[], &[6]).keep, c.keep);
        // More pins than choices: the pins and the window, the budget grows.
        let out = apply(c, 8, 2, &[1, 3, 4, 5], &[]);
        assert_eq!(out.keep, vec![vec![1, 3, 4, 5, 6, 7]]);
    }

    #[test]
    fn each_kv_head_keeps_its_own_count() {
        // Two KV heads with different scores and counts (as adakv gives).
        let c = choice(
            vec![vec![0, 1, 4, 5], vec![3, 4, 5]],
            vec![vec![5.0, 4.0, 1.0, 0.0], vec![0.0, 1.0, 2.0, 3.0]],
        );
        let out = apply(c, 6, 2, &[2], &[]);
        assert_eq!(out.keep, vec![vec![0, 2, 4, 5], vec![2, 4, 5]]);
    }

    #[test]
    fn without_scores_the_methods_own_order_decides() {
        // streamingllm-like: kept sinks 0,1,2 of candidates [0, 7), window 7..9.
        let c = choice(vec![vec![0, 1, 2, 7, 8]], Vec::new());
        // Pinning 5 drops the last chosen sink (2).
        assert_eq!(
            apply(c.clone(), 9, 2, &[5], &[]).keep,
            vec![vec![0, 1, 5, 7, 8]]
        );
        // Evicting 1 takes the next position (3).
        assert_eq!(apply(c, 9, 2, &[], &[1]).keep, vec![vec![0, 2, 3, 7, 8]]);
    }

    #[test]
    fn keep_all_layer_only_loses_the_evicted() {
        let c = choice(vec![(0..6).collect()], Vec::new());
        assert_eq!(
            apply(c.clone(), 6, 2, &[], &[1, 3]).keep,
            vec![vec![0, 2, 4, 5]]
        );
        assert_eq!(apply(c.clone(), 6, 2, &[2], &[]).keep, c.keep);
    }
}
