//! Generation: the full-cache and the compressed outputs side by side, the first
//! divergence highlighted in both, and the token agreement.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Wrap};
use ratatui::Frame;

use super::{block, dim_if};
use crate::tui::action::Pane;
use crate::tui::app::App;

/// Lays `tokens` out in rows of at most `width` cells, breaking at newlines inside
/// tokens; token `i` gets `style(i)`.
pub fn wrap_tokens(
    tokens: &[String],
    width: usize,
    style: &dyn Fn(usize) -> Style,
) -> Vec<Line<'static>> {
    let width = width.max(1);
    let mut lines = Vec::new();
    let mut cur: Vec<Span> = Vec::new();
    let mut used = 0;
    for (i, t) in tokens.iter().enumerate() {
        let st = style(i);
        for (k, part) in t.split('\n').enumerate() {
            if k > 0 {
                lines.push(Line::from(std::mem::take(&mut cur)));
                used = 0;
            }
            let mut chunk = String::new();
            for c in part.chars().map(|c| if c.is_control() { '·' } else { c }) {
                if used == width {
                    if !chunk.is_empty() {
                        cur.push(Span::styled(std::mem::take(&mut chunk), st));
                    }
                    lines.push(Line::from(std::mem::take(&mut cur)));
                    used = 0;
                }
                chunk.push(c);
                used += 1;
            }
            if !chunk.is_empty() {
                cur.push(Span::styled(chunk, st));
            }
        }
    }
    if !cur.is_empty() {
        lines.push(Line::from(cur));
    }
    lines
}

pub fn draw(f: &mut Frame, area: Rect, app: &App) {
    let stale = app.stale();
    let b = block(app, Pane::Generation, stale);
    let inner = b.inner(area);
    f.render_widget(b, area);
    let Some(s) = app.snapshot.as_ref() else {
        f.render_widget(
            Paragraph::new("waiting for the full-cache generation"),
            inner,
        );
        return;
    };
    let [head, body] = Layout::vertical([Constraint::Length(1), Constraint::Min(1)]).areas(inner);
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(body);
    let div = app
        .result
        .as_ref()
        .and_then(|r| r.agreement.first_divergence);
    let summary = match &app.result {
        None => "compressed: computing…".to_string(),
        Some(r) => {
            let m = r.agreement.token_match * 100.0;
            match r.agreement.first_divergence {
                None => format!(
                    "{}: identical to full cache ({m:.0}% tokens match)",
                    r.settings.method.name()
                ),
                Some(i) => format!(
                    "{}: first divergence at generated token {i}; {m:.0}% tokens match",
                    r.settings.method.name()
                ),
            }
        }
    };
    f.render_widget(Paragraph::new(Line::styled(summary, dim_if(stale))), head);
    let mark = Style::default()
        .bg(Color::Red)
        .fg(Color::White)
        .add_modifier(Modifier::BOLD);
    let full_style = |i: usize| {
        if Some(i) == div {
            mark
        } else {
            Style::default()
        }
    };
    let w = left.width.saturating_sub(1) as usize;
    let mut lines = vec![Line::styled(
        format!("full cache ({} tokens)", s.full_tokens.len()),
        Style::default().add_modifier(Modifier::UNDERLINED),
    )];
    lines.extend(wrap_tokens(&s.full_tokens, w, &full_style));
    f.render_widget(Paragraph::new(lines).wrap(Wrap { trim: false }), left);
    let mut lines = Vec::new();
    match &app.result {
        None => lines.push(Line::from("computing…")),
        Some(r) => {
            lines.push(Line::styled(
                format!(
                    "{} B={} ({} tokens){}",
                    r.settings.method.name(),
                    r.settings.budget,
                    r.tokens.len(),
                    if stale { "  [stale]" } else { "" }
                ),
                dim_if(stale).add_modifier(Modifier::UNDERLINED),
            ));
            let st = |i: usize| {
                let base = dim_if(stale);
                match div {
                    Some(d) if i == d => mark,
                    Some(d) if i > d => base.fg(Color::Yellow),
                    _ => base,
                }
            };
            lines.extend(wrap_tokens(&r.tokens, right.width as usize, &st));
        }
    }
    f.render_widget(Paragraph::new(lines), right);
}
