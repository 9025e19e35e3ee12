//! Finding your way in a long prompt (token pane): `/` searches the prompt text, `n` /
//! `N` step through the matches, `j` / `J` step through the evicted tokens by the
//! attention they lost over the divergence analysis' steps. Each key moves the token
//! cursor and centres the attention map's key range on it when that is zoomed.

use super::{App, Cmd, Popup};
use crate::tui::action::Action;
use crate::tui::msg::DivView;

/// A search and its matches.
#[derive(Debug, Clone, PartialEq)]
pub struct Search {
    pub query: String,
    /// Token positions where a match starts, ascending (one per match).
    pub hits: Vec<usize>,
    /// Index into `hits` of the match shown.
    pub cur: usize,
}

/// Token positions where `query` starts in the prompt text `tokens` joined,
/// case-insensitive; a match may run across token boundaries. Linear in the text.
pub fn matches(tokens: &[String], query: &str) -> Vec<usize> {
    match_spans(tokens, query)
        .into_iter()
        .map(|s| s.0)
        .collect()
}

/// The token spans `(first, last)` (inclusive) of the matches of `query`, one per
/// starting token, as [`matches`].
pub fn match_spans(tokens: &[String], query: &str) -> Vec<(usize, usize)> {
    let q = query.to_lowercase();
    if q.is_empty() {
        return Vec::new();
    }
    let mut text = String::new();
    // starts[i]: byte offset of token i in `text`.
    let mut starts = Vec::with_capacity(tokens.len());
    for t in tokens {
        starts.push(text.len());
        text.push_str(&t.to_lowercase());
    }
    let mut hits: Vec<(usize, usize)> = Vec::new();
    let tok_at = |byte: usize| starts.partition_point(|&s| s <= byte).saturating_sub(1);
    let mut from = 0;
    while let Some(i) = text[from..].find(&q) {
        let at = from + i;
        let tok = tok_at(at);
        if hits.last().map(|h| h.0) != Some(tok) {
            hits.push((tok, tok_at(at + q.len() - 1)));
        }
        // Next match starts after this one's first character.
        from = at + text[at..].chars().next().map_or(1, char::len_utf8);
    }
    hits
}

/// Evicted prompt positions by the attention they lost, summed over every step's top
/// culprits, most first.
pub fn lost_order(d: &DivView) -> Vec<(usize, f64)> {
    let mut by_pos: std::collections::HashMap<usize, f64> = Default::default();
    for step in &d.culprits {
        for &(p, m) in step {
            *by_pos.entry(p).or_default() += m;
        }
    }
    let mut v: Vec<(usize, f64)> = by_pos.into_iter().collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    v
}

pub(super) fn on_key(app: &mut App, a: Action) -> Vec<Cmd> {
    match a {
        Action::SearchStart => {
            let q = app
                .search
                .as_ref()
                .map_or_else(String::new, |s| s.query.clone());
            app.popup = Some(Popup::Search(q));
        }
        Action::SearchNext(fwd) => match app.search.as_mut() {
            Some(s) if !s.hits.is_empty() => {
                let n = s.hits.len();
                s.cur = if fwd {
                    (s.cur + 1) % n
                } else {
                    (s.cur + n - 1) % n
                };
                let (pos, k) = (s.hits[s.cur], s.cur + 1);
                app.notice = Some(format!("\"{}\": match {k} of {n}, token {pos}", s.query));
                go_to(app, pos);
            }
            _ => app.notice = Some("no search yet: / searches the prompt text".into()),
        },
        Action::JumpLost(fwd) => {
            let order = app
                .result
                .as_ref()
                .filter(|_| !app.stale())
                .and_then(|r| r.divergence.as_deref())
                .map(lost_order)
                .unwrap_or_default();
            if order.is_empty() {
                app.notice = Some(
                    "no evicted token lost attention yet (wait for the divergence analysis)".into(),
                );
                return Vec::new();
            }
            let n = order.len();
            let i = match app.lost_at {
                None => 0,
                Some(i) if fwd => (i + 1) % n,
                Some(i) => (i.min(n - 1) + n - 1) % n,
            };
            app.lost_at = Some(i);
            let (pos, mass) = order[i];
            app.notice = Some(format!(
                "evicted token {pos}: {} of {n} by attention lost ({mass:.3} over the steps)",
                i + 1
            ));
            go_to(app, pos);
        }
        Action::JumpAnswer => jump_answer(app),
        Action::MarkSpan => mark_span(app),
        _ => {}
    }
    Vec::new()
}

/// The spans `g` visits: the sidecar answer's matches in the prompt, then the span
/// marked with `G`.
pub fn answer_targets(app: &App) -> Vec<(usize, usize)> {
    let tokens = app
        .snapshot
        .as_ref()
        .map_or(&[][..], |s| &s.prompt_tokens[..]);
    let mut v = app
        .answer
        .as_ref()
        .map(|a| match_spans(tokens, &a.0))
        .unwrap_or_default();
    v.extend(app.span);
    v
}

/// `g`: the next answer span (sidecar matches, then the marked span), wrapping.
fn jump_answer(app: &mut App) {
    let targets = answer_targets(app);
    if targets.is_empty() {
        app.notice = Some(match &app.answer {
            Some((a, from)) => format!(
                "the answer \"{a}\" ({}) is not in the prompt text; G marks a span",
                from.display()
            ),
            None => "no answer sidecar (PROMPT.json \"answer\" or PROMPT.answer) and no marked span: G marks one".into(),
        });
        return;
    }
    let n = targets.len();
    let i = app.answer_at.map_or(0, |i| (i + 1) % n);
    app.answer_at = Some(i);
    let (a, b) = targets[i];
    let what = if app.span.is_some() && i == n - 1 {
        "marked span".to_string()
    } else {
        format!(
            "answer \"{}\"",
            app.answer.as_ref().map_or("", |x| x.0.as_str())
        )
    };
    app.notice = Some(format!("{what}: tokens {a}..={b} ({} of {n})", i + 1));
    go_to(app, a);
}

/// `G`: marks the selected token as a span's start; again, as its end (the span `g`
/// jumps to).
fn mark_span(app: &mut App) {
    match app.span_mark.take() {
        None => {
            app.span_mark = Some(app.sel_token);
            app.notice = Some(format!(
                "span starts at token {}; G again at its last token",
                app.sel_token
            ));
        }
        Some(s) => {
            let span = (s.min(app.sel_token), s.max(app.sel_token));
            app.span = Some(span);
            app.answer_at = None;
            app.notice = Some(format!(
                "marked tokens {}..={}: g jumps to it",
                span.0, span.1
            ));
        }
    }
}

/// Runs the search typed in the prompt and shows its first match at or after the cursor.
pub(super) fn run(app: &mut App, query: String) {
    let tokens = app
        .snapshot
        .as_ref()
        .map_or(&[][..], |s| &s.prompt_tokens[..]);
    let hits = matches(tokens, &query);
    if hits.is_empty() {
        app.notice = Some(format!("\"{query}\": not in the prompt"));
        app.search = Some(Search {
            query,
            hits,
            cur: 0,
        });
        return;
    }
    let cur = hits.iter().position(|&p| p >= app.sel_token).unwrap_or(0);
    let (pos, n) = (hits[cur], hits.len());
    app.notice = Some(format!(
        "\"{query}\": match {} of {n}, token {pos}",
        cur + 1
    ));
    app.search = Some(Search { query, hits, cur });
    go_to(app, pos);
}

/// Selects token `pos` and, when the attention map is zoomed, centres its key range on it.
pub(super) fn go_to(app: &mut App, pos: usize) {
    let len = app.prompt_len();
    if len == 0 {
        return;
    }
    app.sel_token = pos.min(len - 1);
    if app.view_len > 0 && app.view_len < len {
        app.view_start = pos.saturating_sub(app.view_len / 2).min(len - app.view_len);
    }
}
