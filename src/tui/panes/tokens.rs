//! Token inspector: the prompt, each token shaded by how many layers keep it; for the
//! selected token, per layer: kept or evicted (in the selected head's KV group), its
//! score, its rank and the cut-off rank.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;

use super::{block, dim_if, visible};
use crate::tui::action::Pane;
use crate::tui::app::App;
use crate::tui::msg::Outcome;

/// Background for a token kept by `n` of `total` layers: dark red (evicted everywhere)
/// to dark green (kept everywhere).
fn shade(n: u16, total: usize) -> Color {
    let t = n as f32 / total.max(1) as f32;
    Color::Rgb((110.0 * (1.0 - t)) as u8 + 20, (110.0 * t) as u8 + 20, 30)
}

/// One layer's line for token `pos` in KV head `g`.
pub fn layer_entry(r: &Outcome, layer: usize, g: usize, pos: usize, len: usize) -> String {
    let kept = r
        .keep
        .get(layer)
        .and_then(|l| l.get(g))
        .is_some_and(|k| k.binary_search(&pos).is_ok());
    let mark = if kept { "✓" } else { "✗" };
    let window = len.saturating_sub(r.settings.window);
    if pos >= window {
        return format!("{layer:>2}{mark} window");
    }
    let scores = r.scores.get(layer).and_then(|l| l.get(g));
    let rank = r
        .ranks
        .get(layer)
        .and_then(|l| l.get(g))
        .and_then(|v| v.get(pos));
    match (scores.and_then(|s| s.get(pos)), rank) {
        (Some(sc), Some(&rk)) if rk > 0 => {
            // The cut-off: how many scored positions this KV head kept.
            let cut = r
                .keep
                .get(layer)
                .and_then(|l| l.get(g))
                .map_or(0, |k| k.iter().filter(|&&p| p < window).count());
            format!("{layer:>2}{mark} {sc:.1e} {rk}/{cut}")
        }
        _ => format!(
            "{layer:>2} {mark} {}",
            if kept { "no scores" } else { "rule" }
        ),
    }
}

pub fn draw(f: &mut Frame, area: Rect, app: &App) {
    let stale = app.stale();
    let b = block(app, Pane::Tokens, stale);
    let inner = b.inner(area);
    f.render_widget(b, area);
    let Some(s) = app.snapshot.as_ref() else {
        f.render_widget(Paragraph::new("waiting for the prompt"), inner);
        return;
    };
    let [text_area, list_area] =
        Layout::horizontal([Constraint::Percentage(40), Constraint::Percentage(60)]).areas(inner);
    let keeping = app.result.as_ref().map(|r| &r.layers_keeping);
    // Lay the prompt out, remembering the row of the selected token to scroll to it.
    let width = text_area.width.max(1) as usize;
    let mut lines: Vec<Line> = Vec::new();
    let mut cur: Vec<Span> = Vec::new();
    let mut used = 0;
    let mut sel_line = 0;
    for (i, t) in s.prompt_tokens.iter().enumerate() {
        let mut st = match keeping.and_then(|k| k.get(i)) {
            Some(&n) => dim_if(stale).bg(shade(n, s.n_layers)),
            None => Style::default(),
        };
        if i == app.sel_token {
            st = st.add_modifier(Modifier::REVERSED | Modifier::UNDERLINED);
            sel_line = lines.len();
        }
        let newline = t.contains('\n');
        let text = visible(t);
        let n = text.chars().count();
        if used + n > width && used > 0 {
            lines.push(Line::from(std::mem::take(&mut cur)));
            used = 0;
            if i == app.sel_token {
                sel_line = lines.len();
            }
        }
        used += n;
        cur.push(Span::styled(text, st));
        if newline {
            lines.push(Line::from(std::mem::take(&mut cur)));
            used = 0;
        }
    }
    if !cur.is_empty() {
        lines.push(Line::from(cur));
    }
    let h = text_area.height as usize;
    let scroll = sel_line
        .saturating_sub(h / 2)
        .min(lines.len().saturating_sub(h));
    f.render_widget(
        Paragraph::new(lines).scroll((scroll.min(u16::MAX as usize) as u16, 0)),
        text_area,
    );

    let n_rep = (s.n_heads / s.n_kv_heads.max(1)).max(1);
    let g = app.sel_head / n_rep;
    let pos = app.sel_token;
    let tok = s
        .prompt_tokens
        .get(pos)
        .map_or(String::new(), |t| visible(t));
    let kept_by = keeping.and_then(|k| k.get(pos)).copied().unwrap_or(0);
    let mut out = vec![Line::from(format!(
        " tok {pos} '{tok}' kept by {kept_by}/{} layers · KV head {g}: ✓/✗ score rank/cut-off",
        s.n_layers
    ))];
    if let Some(r) = &app.result {
        let rows = (list_area.height as usize).saturating_sub(1).max(1);
        let ncols = s.n_layers.div_ceil(rows).max(1);
        let colw = (list_area.width as usize / ncols).max(8);
        let len = s.prompt_tokens.len();
        for row in 0..rows.min(s.n_layers) {
            let mut spans = Vec::new();
            for c in 0..ncols {
                let l = c * rows + row;
                if l >= s.n_layers {
                    continue;
                }
                let e = layer_entry(r, l, g, pos, len);
                let kept = e.contains('✓');
                let st = dim_if(stale).fg(if kept { Color::Green } else { Color::Red });
                let e: String = format!(" {e:<w$}", w = colw - 1)
                    .chars()
                    .take(colw)
                    .collect();
                spans.push(Span::styled(e, st));
            }
            out.push(Line::from(spans));
        }
    }
    f.render_widget(Paragraph::new(out), list_area);
}
