//! The scoring rules of the SRH measurement (METHOD.md, "The offline profile"), as pure
//! functions of attention rows and token ids, so they can be checked by hand.
//!
//! An attention row here is `[layer][head][entry]` over a FULL cache: entry `j < L` is
//! prompt position `j`, later entries are generated tokens.

use std::ops::Range;

/// `[layer][head]` matrix of per-head numbers.
pub type HeadMatrix = Vec<Vec<f64>>;

/// Span positions whose prompt token is `token`: how many times the generated token
/// "is" a token of the answer span.
pub fn span_matches(prompt_ids: &[u32], span: &Range<usize>, token: u32) -> usize {
    prompt_ids
        .get(span.clone())
        .map_or(0, |s| s.iter().filter(|&&t| t == token).count())
}

/// SRH credit of one generated token: if it equals the prompt token at `m` positions of
/// the answer span, every head gets `m` times the attention mass it put on the whole
/// span (read from the query row that produced the token). `None` when `m` is 0.
pub fn span_credit(
    row: &[Vec<Vec<f32>>],
    prompt_ids: &[u32],
    span: &Range<usize>,
    generated: u32,
) -> Option<HeadMatrix> {
    let m = span_matches(prompt_ids, span, generated);
    if m == 0 {
        return None;
    }
    Some(
        row.iter()
            .map(|heads| {
                heads
                    .iter()
                    .map(|p| {
                        let mass: f64 = p
                            .get(span.clone())
                            .map_or(0.0, |s| s.iter().map(|&x| x as f64).sum());
                        m as f64 * mass
                    })
                    .collect()
            })
            .collect(),
    )
}

/// Classic retrieval-head test of one generated token: if it is a copy step (the token
/// equals some span token), which heads put their top-1 attention on a span position
/// holding exactly that token. `None` when it is not a copy step. Ties in the argmax go
/// to the lower entry.
pub fn copy_hits(
    row: &[Vec<Vec<f32>>],
    prompt_ids: &[u32],
    span: &Range<usize>,
    generated: u32,
) -> Option<Vec<Vec<bool>>> {
    if span_matches(prompt_ids, span, generated) == 0 {
        return None;
    }
    Some(
        row.iter()
            .map(|heads| {
                heads
                    .iter()
                    .map(|p| {
                        let top = argmax(p);
                        top.is_some_and(|j| {
                            span.contains(&j) && prompt_ids.get(j) == Some(&generated)
                        })
                    })
                    .collect()
            })
            .collect(),
    )
}

fn argmax(p: &[f32]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (j, &x) in p.iter().enumerate() {
        if best.is_none_or(|(_, b)| x > b) {
            best = Some((j, x));
        }
    }
    best.map(|(j, _)| j)
}

use crate::score::rouge1_recall;

/// A trial counts towards the SRH scores only if it retrieved the answer.
pub fn retrieved(answer: &str, generated: &str) -> bool {
    rouge1_recall(answer, generated) > 0.5
}

/// What one needle trial contributes, before knowing whether it counts.
#[derive(Debug, Clone, PartialEq)]
pub struct TrialCredit {
    /// Summed SRH credit of the trial's generated tokens.
    pub srh: HeadMatrix,
    /// Copy steps where each head's top-1 attention was on the copied token.
    pub hits: HeadMatrix,
    pub copy_steps: usize,
}

impl TrialCredit {
    pub fn new(n_layers: usize, n_heads: usize) -> Self {
        TrialCredit {
            srh: vec![vec![0.0; n_heads]; n_layers],
            hits: vec![vec![0.0; n_heads]; n_layers],
            copy_steps: 0,
        }
    }

    /// Scores one generated token with the attention row that produced it.
    pub fn add_token(
        &mut self,
        row: &[Vec<Vec<f32>>],
        prompt_ids: &[u32],
        span: &Range<usize>,
        generated: u32,
    ) {
        if let Some(c) = span_credit(row, prompt_ids, span, generated) {
            add_into(&mut self.srh, &c);
        }
        if let Some(h) = copy_hits(row, prompt_ids, span, generated) {
            self.copy_steps += 1;
            for (acc, hl) in self.hits.iter_mut().zip(&h) {
                for (a, &x) in acc.iter_mut().zip(hl) {
                    *a += x as u8 as f64;
                }
            }
        }
    }
}

/// Sums over the trials that counted.
#[derive(Debug, Clone, PartialEq)]
pub struct SrhTotals {
    pub srh: HeadMatrix,
    pub hits: HeadMatrix,
    pub copy_steps: usize,
    pub trials: usize,
    pub counted: usize,
}

impl SrhTotals {
    pub fn new(n_layers: usize, n_heads: usize) -> Self {
        SrhTotals {
            srh: vec![vec![0.0; n_heads]; n_layers],
            hits: vec![vec![0.0; n_heads]; n_layers],
            copy_steps: 0,
            trials: 0,
            counted: 0,
        }
    }

    /// Adds a trial; only a retrieved one contributes to the scores.
    pub fn add_trial(&mut self, credit: &TrialCredit, retrieved: bool) {
        self.trials += 1;
        if !retrieved {
            return;
        }
        self.counted += 1;
        add_into(&mut self.srh, &credit.srh);
        add_into(&mut self.hits, &credit.hits);
        self.copy_steps += credit.copy_steps;
    }

    /// SRH score: the mean credit over counted trials (0 when none counted).
    pub fn srh_scores(&self) -> HeadMatrix {
        scale(&self.srh, 1.0 / self.counted.max(1) as f64)
    }

    /// Retrieval score: the fraction of all copy steps of counted trials where the head's
    /// top-1 attention was on the copied token (0 when there were none).
    pub fn retrieval_scores(&self) -> HeadMatrix {
        scale(&self.hits, 1.0 / self.copy_steps.max(1) as f64)
    }
}

fn add_into(acc: &mut HeadMatrix, x: &HeadMatrix) {
    for (a, b) in acc.iter_mut().zip(x) {
        for (p, q) in a.iter_mut().zip(b) {
            *p += q;
        }
    }
}

fn scale(m: &HeadMatrix, f: f64) -> HeadMatrix {
    m.iter()
        .map(|r| r.iter().map(|x| x * f).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One layer, two heads, a 6-token prompt plus one generated entry. The answer span
    /// is positions 2..4 holding tokens [50, 51]; token 50 also appears outside it.
    const IDS: [u32; 6] = [50, 7, 50, 51, 9, 9];
    const SPAN: Range<usize> = 2..4;

    fn row() -> Vec<Vec<Vec<f32>>> {
        vec![vec![
            vec![0.1, 0.0, 0.2, 0.3, 0.1, 0.2, 0.1], // span mass 0.5, top-1 at 3 (51)
            vec![0.6, 0.0, 0.05, 0.05, 0.1, 0.1, 0.1], // span mass 0.1, top-1 at 0
        ]]
    }

    fn close(a: &HeadMatrix, b: &[&[f64]]) {
        for (x, y) in a.iter().zip(b) {
            for (p, q) in x.iter().zip(y.iter()) {
                assert!((p - q).abs() < 1e-6, "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn credit_only_for_span_tokens() {
        // 9 is in the prompt but not in the span; 7 neither.
        assert_eq!(span_credit(&row(), &IDS, &SPAN, 9), None);
        assert_eq!(span_credit(&row(), &IDS, &SPAN, 7), None);
        let c = span_credit(&row(), &IDS, &SPAN, 51).unwrap();
        close(&c, &[&[0.5, 0.1]]);
        // 50 matches one span position (position 0 is outside the span).
        let c = span_credit(&row(), &IDS, &SPAN, 50).unwrap();
        close(&c, &[&[0.5, 0.1]]);
    }

    #[test]
    fn credit_is_added_once_per_matching_span_position() {
        let ids = [1, 8, 8, 8, 2, 3];
        let c = span_credit(&row(), &ids, &(1..4), 8).unwrap();
        // Head 0's span mass over 1..4 is 0.5, head 1's 0.1; three matches.
        close(&c, &[&[1.5, 0.3]]);
    }

    #[test]
    fn copy_hits_need_top1_on_the_copied_token() {
        assert_eq!(copy_hits(&row(), &IDS, &SPAN, 9), None);
        assert_eq!(
            copy_hits(&row(), &IDS, &SPAN, 51),
            Some(vec![vec![true, false]])
        );
        // Head 0 looks at 51 while 50 is generated: not a hit.
        assert_eq!(
            copy_hits(&row(), &IDS, &SPAN, 50),
            Some(vec![vec![false, false]])
        );
    }

    #[test]
    fn totals_average_over_counted_trials_only() {
        let mut t1 = TrialCredit::new(1, 2);
        t1.add_token(&row(), &IDS, &SPAN, 51); // credit [0.5, 0.1], hit head 0
        t1.add_token(&row(), &IDS, &SPAN, 9); // nothing
        t1.add_token(&row(), &IDS, &SPAN, 50); // credit [0.5, 0.1], no hit
        close(&t1.srh, &[&[1.0, 0.2]]);
        close(&t1.hits, &[&[1.0, 0.0]]);
        assert_eq!(t1.copy_steps, 2);

        let mut t2 = TrialCredit::new(1, 2);
        t2.add_token(&row(), &IDS, &SPAN, 9); // counted trial without credit

        let mut failed = TrialCredit::new(1, 2);
        failed.add_token(&row(), &IDS, &SPAN, 51);
        failed.add_token(&row(), &IDS, &SPAN, 51);

        let mut tot = SrhTotals::new(1, 2);
        tot.add_trial(&t1, true);
        tot.add_trial(&failed, false);
        tot.add_trial(&t2, true);
        assert_eq!((tot.trials, tot.counted, tot.copy_steps), (3, 2, 2));
        // (1.0 + 0) / 2 counted trials; the failed trial adds nothing.
        close(&tot.srh_scores(), &[&[0.5, 0.1]]);
        close(&tot.retrieval_scores(), &[&[0.5, 0.0]]);
    }

    #[test]
    fn no_counted_trials_give_zero_scores() {
        let tot = SrhTotals::new(2, 3);
        assert!(tot.srh_scores().iter().flatten().all(|&x| x == 0.0));
        assert!(tot.retrieval_scores().iter().flatten().all(|&x| x == 0.0));
    }

    #[test]
    fn rouge1_recall_tokenisation() {
        assert_eq!(rouge1_recall("412 metres", "It is 412 metres deep."), 1.0);
        assert_eq!(rouge1_recall("412 metres", "About 412-Metres."), 1.0);
        assert_eq!(rouge1_recall("Celia Thornbury", "celia won"), 0.5);
        assert!(!retrieved("Celia Thornbury", "celia won"));
        assert!(retrieved("smoked juniper berries", "Smoked juniper!"));
        assert_eq!(rouge1_recall("73914", "7391"), 0.0);
        assert_eq!(rouge1_recall("", "anything"), 0.0);
        // Each generated word matches once.
        assert_eq!(rouge1_recall("new new york", "new york"), 2.0 / 3.0);
    }
}
