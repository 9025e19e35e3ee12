//! Budgets: one bar per layer with its budget, the allocator in force, and the total
//! the budgets keep as tokens and as a fraction of the full cache.

use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;

use super::{block, dim_if};
use crate::tui::action::Pane;
use crate::tui::app::App;

/// Tokens kept over all layers and KV heads, and the full cache's count, for `budgets`
/// (a sliding-window layer's full cache is its last `min(len, S)` entries).
pub fn totals(
    budgets: &[usize],
    len: usize,
    n_kv: usize,
    windows: &[Option<usize>],
) -> (usize, usize) {
    let full_of = |l: usize| {
        windows
            .get(l)
            .copied()
            .flatten()
            .map_or(len, |s| s.min(len))
    };
    let kept: usize = budgets
        .iter()
        .enumerate()
        .map(|(l, &b)| b.min(full_of(l)) * n_kv)
        .sum();
    let full: usize = (0..budgets.len()).map(|l| full_of(l) * n_kv).sum();
    (kept, full)
}

pub fn draw(f: &mut Frame, area: Rect, app: &App) {
    // The bars show the user's settings at once; they are stale only while the keep set
    // elsewhere has not caught up, and that is the other panes' tag to show.
    let b = block(app, Pane::Budgets, false);
    let inner = b.inner(area);
    f.render_widget(b, area);
    let Some(s) = app.snapshot.as_ref() else {
        f.render_widget(Paragraph::new("waiting for the prompt's trace"), inner);
        return;
    };
    let budgets = app.budgets();
    let len = s.prompt_tokens.len();
    let (kept, full) = totals(&budgets, len, s.n_kv_heads, &s.windows);
    let st = &app.settings;
    let mut lines = vec![Line::from(format!(
        "allocator {}  B {}  window {}  total {kept} of {full} tokens ({:.1}%)",
        st.effective_allocator().name(),
        st.budget,
        st.window,
        100.0 * kept as f64 / full.max(1) as f64
    ))];
    let rows = (inner.height as usize).saturating_sub(2).max(1);
    let ncols = budgets.len().div_ceil(rows).max(1);
    let colw = (inner.width as usize / ncols).max(10);
    let barw = colw.saturating_sub(10);
    let top = budgets.iter().copied().max().unwrap_or(1).max(1);
    let evict_sliding = st.knob_bool(crate::eviction::sliding::EVICT_SLIDING.name);
    for r in 0..rows.min(budgets.len()) {
        let mut spans = Vec::new();
        for c in 0..ncols {
            let l = c * rows + r;
            let Some(&b) = budgets.get(l) else { continue };
            // u128: a budget can be any usize (a huge --budget keeps everything).
            let n = ((b as u128 * barw as u128).div_ceil(top as u128) as usize).min(barw);
            // With --evict-sliding a sliding layer evicts too: drawn as any other.
            let window = s
                .windows
                .get(l)
                .copied()
                .flatten()
                .filter(|_| !evict_sliding);
            let sel = l == app.sel_layer;
            let lab = Style::default().fg(if sel { Color::Magenta } else { Color::DarkGray });
            let lab = if sel {
                lab.add_modifier(Modifier::REVERSED)
            } else {
                lab
            };
            spans.push(Span::styled(format!("{l:>2}"), lab));
            // A sliding layer keeps its last S entries: fixed, drawn apart.
            let colour = match window {
                Some(_) => Color::DarkGray,
                None if b >= len => Color::Green,
                None => Color::Blue,
            };
            spans.push(Span::styled(
                format!(" {}{}", "█".repeat(n), "░".repeat(barw - n)),
                Style::default().fg(colour),
            ));
            spans.push(Span::raw(match window {
                Some(sw) => format!(" S{:<4} ", sw.min(99_999)),
                None => format!(" {b:>5} "),
            }));
        }
        lines.push(Line::from(spans));
    }
    let applied = match &app.result {
        Some(r) if r.layer_budgets != budgets => " (applying…)",
        _ => "",
    };
    lines.push(Line::from(Span::styled(
        format!("+/- layer  * / scale  b/B base  a allocator  S save  L load{applied}"),
        dim_if(true),
    )));
    f.render_widget(Paragraph::new(lines), inner);
}
