//! Grid bookkeeping: parsing the list flags, resolving budgets against a prompt, and
//! enumerating the units of work (one unit = one item x method x budget x window).
//! Pure functions, so the resume logic can be tested without a model.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fmt;

use crate::eviction::Method;

/// A budget as the user wrote it: tokens per layer and KV head, or a percentage of the
/// prompt's length.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Budget {
    Tokens(usize),
    Percent(f64),
}

impl Budget {
    /// Parses `64` or `3%` (also `2.5%`).
    pub fn parse(s: &str) -> Result<Budget> {
        let t = s.trim();
        if let Some(p) = t.strip_suffix('%') {
            let v: f64 = p
                .trim()
                .parse()
                .with_context(|| format!("budget '{t}' is not a percentage (expected e.g. 3%)"))?;
            if !(v > 0.0 && v <= 100.0) {
                bail!("budget '{t}' must be a percentage above 0% and at most 100%");
            }
            Ok(Budget::Percent(v))
        } else {
            let v: usize = t.parse().with_context(|| {
                format!(
                    "budget '{t}' is not a whole number of tokens or a percentage (e.g. 64 or 3%)"
                )
            })?;
            if v == 0 {
                bail!("budget '{t}' must be at least 1 token");
            }
            Ok(Budget::Tokens(v))
        }
    }

    /// Tokens kept per layer for a prompt of `prompt_len` tokens with observation window
    /// `window`. A percentage rounds to the nearest token. Budgets below the window are
    /// raised to it (the window is always kept, METHOD.md), so a small percentage with a
    /// large window keeps just the window; the result records the tokens actually used.
    pub fn tokens(self, prompt_len: usize, window: usize) -> usize {
        let raw = match self {
            Budget::Tokens(n) => n,
            Budget::Percent(p) => (p / 100.0 * prompt_len as f64).round() as usize,
        };
        raw.max(window)
    }
}

impl fmt::Display for Budget {
    /// The label used in keys, tables and file names: `64` or `3%`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Budget::Tokens(n) => write!(f, "{n}"),
            Budget::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// Splits a comma list, trimming blanks; `what` names the flag in errors.
fn items<'a>(s: &'a str, what: &str) -> Result<Vec<&'a str>> {
    let v: Vec<&str> = s
        .split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .collect();
    if v.is_empty() {
        bail!("{what} is empty; give a comma-separated list");
    }
    Ok(v)
}

pub fn parse_budgets(s: &str) -> Result<Vec<Budget>> {
    items(s, "--budgets")?
        .into_iter()
        .map(Budget::parse)
        .collect()
}

/// Whole numbers, each at least `min`.
pub fn parse_usizes(s: &str, what: &str, min: usize) -> Result<Vec<usize>> {
    items(s, what)?
        .into_iter()
        .map(|x| {
            let v: usize = x
                .parse()
                .with_context(|| format!("{what}: '{x}' is not a whole number"))?;
            if v < min {
                bail!("{what}: {v} is below the minimum of {min}");
            }
            Ok(v)
        })
        .collect()
}

/// Needle depths in percent of the haystack, each 0..=100.
pub fn parse_depths(s: &str) -> Result<Vec<usize>> {
    let v = parse_usizes(s, "--depths", 0)?;
    if let Some(d) = v.iter().find(|&&d| d > 100) {
        bail!("--depths: {d} is not a percentage between 0 and 100");
    }
    Ok(v)
}

/// Method names; `all` means every method but `full` (the reference every cell has).
pub fn parse_methods(s: &str) -> Result<Vec<Method>> {
    let mut out = Vec::new();
    for x in items(s, "--methods")? {
        if x == "all" {
            out.extend(
                Method::ALL
                    .iter()
                    .copied()
                    .filter(|m| *m != crate::eviction::full::METHOD),
            );
        } else {
            out.push(x.parse::<Method>()?);
        }
    }
    let mut seen = HashSet::new();
    out.retain(|m| seen.insert(*m));
    Ok(out)
}

/// What identifies one finished unit in the results file: the item (a NIAH cell such as
/// `len1024-depth25`, or a prompt name), method, budget label and window.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct UnitKey {
    pub item: String,
    pub method: String,
    pub budget: String,
    pub window: usize,
}

/// One method x budget x window combination, applied to every item.
#[derive(Debug, Clone, PartialEq)]
pub struct Combo {
    pub method: Method,
    pub budget: Budget,
    pub window: usize,
}

impl Combo {
    pub fn key(&self, item: &str) -> UnitKey {
        UnitKey {
            item: item.to_string(),
            method: self.method.name().to_string(),
            budget: self.budget.to_string(),
            window: self.window,
        }
    }
}

/// Every combination, methods outermost (so a table reads method by method).
pub fn combos(methods: &[Method], budgets: &[Budget], windows: &[usize]) -> Vec<Combo> {
    let mut v = Vec::with_capacity(methods.len() * budgets.len() * windows.len());
    for &m in methods {
        for &b in budgets {
            for &w in windows {
                v.push(Combo {
                    method: m,
                    budget: b,
                    window: w,
                });
            }
        }
    }
    v
}

/// The NIAH item name of a cell.
pub fn cell_name(length: usize, depth: usize) -> String {
    format!("len{length}-depth{depth}")
}

/// The combos still to run for `item`, given the keys already done. An item with none
/// left needs no prefill at all: that is what makes resuming cheap.
pub fn pending<'a>(item: &str, combos: &'a [Combo], done: &HashSet<UnitKey>) -> Vec<&'a Combo> {
    combos
        .iter()
        .filter(|c| !done.contains(&c.key(item)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_parse_tokens_and_percentages() {
        assert_eq!(
            parse_budgets("32, 64,1%,2.5%").unwrap(),
            vec![
                Budget::Tokens(32),
                Budget::Tokens(64),
                Budget::Percent(1.0),
                Budget::Percent(2.5)
            ]
        );
        for bad in ["", "x", "0", "0%", "101%", "-3", "3 %%", ","] {
            assert!(parse_budgets(bad).is_err(), "{bad}");
        }
        assert_eq!(Budget::Percent(3.0).to_string(), "3%");
        assert_eq!(Budget::Percent(2.5).to_string(), "2.5%");
        assert_eq!(Budget::Tokens(64).to_string(), "64");
    }

    #[test]
    fn budget_tokens_round_percentages_and_respect_the_window() {
        assert_eq!(Budget::Percent(10.0).tokens(2048, 8), 205);
        assert_eq!(Budget::Percent(3.0).tokens(2048, 8), 61);
        assert_eq!(Budget::Percent(1.0).tokens(2048, 8), 20);
        // 1% of 2048 is below a 32-token window: the window is the floor.
        assert_eq!(Budget::Percent(1.0).tokens(2048, 32), 32);
        assert_eq!(Budget::Tokens(16).tokens(2048, 32), 32);
        assert_eq!(Budget::Tokens(128).tokens(100, 8), 128);
    }

    #[test]
    fn lists_and_methods() {
        assert_eq!(
            parse_usizes("1024,2048", "--lengths", 64).unwrap(),
            [1024, 2048]
        );
        assert!(parse_usizes("10", "--lengths", 64)
            .unwrap_err()
            .to_string()
            .contains("below the minimum"));
        assert_eq!(parse_depths("0,50,100").unwrap(), [0, 50, 100]);
        assert!(parse_depths("101").is_err());
        let all = parse_methods("all").unwrap();
        assert_eq!(all.len(), Method::ALL.len() - 1);
        assert!(!all.contains(&crate::eviction::full::METHOD));
        assert_eq!(
            parse_methods("snapkv,h2o,snapkv").unwrap(),
            [
                crate::eviction::snapkv::METHOD,
                crate::eviction::h2o::METHOD
            ]
        );
        assert!(parse_methods("snapkv,nope").is_err());
    }

    #[test]
    fn combos_and_pending_skip_done_units() {
        let c = combos(
            &[
                crate::eviction::snapkv::METHOD,
                crate::eviction::h2o::METHOD,
            ],
            &[Budget::Tokens(32), Budget::Percent(3.0)],
            &[8, 32],
        );
        assert_eq!(c.len(), 8);
        assert_eq!(c[0].method, crate::eviction::snapkv::METHOD);
        assert_eq!(c[7].method, crate::eviction::h2o::METHOD);
        let item = cell_name(1024, 50);
        assert_eq!(item, "len1024-depth50");
        let mut done = HashSet::new();
        done.insert(c[1].key(&item));
        done.insert(c[5].key(&item));
        done.insert(c[0].key("other"));
        let p = pending(&item, &c, &done);
        assert_eq!(p.len(), 6);
        assert!(!p.contains(&&c[1]) && !p.contains(&&c[5]));
        assert_eq!(pending("other", &c, &done).len(), 7);
        let k = c[3].key(&item);
        assert_eq!(
            (k.method.as_str(), k.budget.as_str(), k.window),
            ("snapkv", "3%", 32)
        );
    }
}
