//! Head map: a layers x heads grid coloured by the chosen statistic, SRHs and retrieval
//! heads marked, the selected head outlined, and a legend.

use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;

use super::{block, ramp};
use crate::tui::action::Pane;
use crate::tui::app::App;
use crate::tui::stats::Stat;

/// `[layer][head]` values of the statistic on show.
pub fn values(app: &App) -> Option<Vec<Vec<f32>>> {
    let s = app.snapshot.as_ref()?;
    if app.stat == Stat::LostMass {
        let d = app.result.as_ref()?.divergence.as_ref()?;
        return d.lost.get(app.step()?.checked_sub(1)?).cloned();
    }
    match app.stat.live_index() {
        Some(i) => s.stats.get(i).cloned(),
        None => s.srh_scores.as_ref().map(|v| {
            v.iter()
                .map(|l| l.iter().map(|&x| x as f32).collect())
                .collect()
        }),
    }
}

/// Whether `head` is among the first `k` of `ranking[layer]`.
fn top(ranking: Option<&Vec<Vec<usize>>>, layer: usize, head: usize, k: usize) -> bool {
    ranking
        .and_then(|r| r.get(layer))
        .is_some_and(|r| r.iter().take(k).any(|&h| h == head))
}

pub fn draw(f: &mut Frame, area: Rect, app: &App) {
    let b = block(app, Pane::HeadMap, false);
    let inner = b.inner(area);
    f.render_widget(b, area);
    let (Some(s), Some(vals)) = (app.snapshot.as_ref(), values(app)) else {
        f.render_widget(Paragraph::new("waiting for the prompt's trace"), inner);
        return;
    };
    let (lo, hi) = vals
        .iter()
        .flatten()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let span = (hi - lo).max(1e-12);
    // Cells are 2 columns wide when the pane allows it, else 1.
    let cw: usize = if inner.width as usize >= 4 + 2 * s.n_layers {
        2
    } else {
        1
    };
    let k = app.settings.first_k;
    let mut lines = Vec::new();
    let mut head = String::from("    ");
    for l in 0..s.n_layers {
        let lab = if l % 5 == 0 {
            format!("{l:<w$}", w = cw * 5)
        } else {
            String::new()
        };
        if l % 5 == 0 {
            head.push_str(&lab);
        }
    }
    lines.push(Line::from(Span::styled(
        truncate(&head, inner.width as usize),
        Style::default().fg(Color::DarkGray),
    )));
    for h in 0..s.n_heads {
        let mut spans = vec![Span::raw(format!("h{h:<2} "))];
        for (l, layer) in vals.iter().enumerate() {
            let v = layer.get(h).copied().unwrap_or(0.0);
            let bg = ramp((v - lo) / span);
            let srh = top(s.srh_ranking.as_ref(), l, h, k);
            let ret = top(s.retrieval_ranking.as_ref(), l, h, k);
            let sel = l == app.sel_layer && h == app.sel_head;
            let mark = match (sel, srh, ret) {
                (true, _, _) => "◆",
                (_, true, true) => "*",
                (_, true, false) => "S",
                (_, false, true) => "R",
                _ => " ",
            };
            let text = if cw == 2 {
                format!("{mark} ")
            } else {
                mark.to_string()
            };
            let fg = if sel { Color::Magenta } else { Color::White };
            spans.push(Span::styled(
                text,
                Style::default().bg(bg).fg(fg).add_modifier(Modifier::BOLD),
            ));
        }
        lines.push(Line::from(spans));
    }
    let sel_v = vals
        .get(app.sel_layer)
        .and_then(|l| l.get(app.sel_head))
        .copied()
        .unwrap_or(0.0);
    lines.push(Line::from(vec![
        Span::raw(format!("{} ", stat_label(app.stat))),
        Span::raw(format!("{lo:.3} ")),
        Span::styled((0..12).map(|_| ' ').collect::<String>(), Style::default()),
        Span::raw(format!(" {hi:.3}")),
    ]));
    // Colour the legend ramp cell by cell.
    if let Some(last) = lines.last_mut() {
        let ramp_spans: Vec<Span> = (0..12)
            .map(|i| Span::styled(" ", Style::default().bg(ramp(i as f32 / 11.0))))
            .collect();
        let mut v = last.spans.clone();
        v.splice(2..3, ramp_spans);
        *last = Line::from(v);
    }
    let marks = if s.srh_ranking.is_some() {
        format!("S SRH (top {k}/layer)  R retrieval  * both  ")
    } else {
        "no profile: no SRH marks  ".to_string()
    };
    lines.push(Line::from(format!(
        "{marks}◆ L{} h{} = {sel_v:.4}   s: statistic",
        app.sel_layer, app.sel_head
    )));
    f.render_widget(Paragraph::new(lines), inner);
}

fn stat_label(s: Stat) -> &'static str {
    s.name()
}

fn truncate(s: &str, w: usize) -> String {
    s.chars().take(w).collect()
}
