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

/// The prompt laid out in rows of at most `width` characters (a token that does not
/// fit starts a row, a token holding a newline ends one): the first token of each row,
/// and the row holding token `sel`.
pub fn line_starts(tokens: &[String], width: usize, sel: usize) -> (Vec<usize>, usize) {
    let mut starts = vec![0];
    let (mut used, mut sel_line) = (0, 0);
    for (i, t) in tokens.iter().enumerate() {
        let n = t.chars().count();
        if used + n > width && used > 0 {
            starts.push(i);
            used = 0;
        }
        if i == sel {
            sel_line = starts.len() - 1;
        }
        used += n;
        if t.contains('\n') {
            starts.push(i + 1);
            used = 0;
        }
    }
    // A row starting after the last token is empty.
    if starts.last() == Some(&tokens.len()) {
        starts.pop();
    }
    (starts, sel_line)
}

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
    // Only the rows on screen become spans: at 30K tokens styling every token took
    // most of a frame.
    let width = text_area.width.max(1) as usize;
    let toks = &s.prompt_tokens;
    let (starts, sel_line) = line_starts(toks, width, app.sel_token);
    let h = text_area.height as usize;
    let scroll = sel_line
        .saturating_sub(h / 2)
        .min(starts.len().saturating_sub(h));
    let lines: Vec<Line> = (scroll..(scroll + h).min(starts.len()))
        .map(|k| {
            let end = starts.get(k + 1).copied().unwrap_or(toks.len());
            let spans: Vec<Span> = (starts[k]..end)
                .map(|i| {
                    let mut st = match keeping.and_then(|k| k.get(i)) {
                        Some(&n) => dim_if(stale).bg(shade(n, s.n_layers)),
                        None => Style::default(),
                    };
                    if i == app.sel_token {
                        st = st.add_modifier(Modifier::REVERSED | Modifier::UNDERLINED);
                    }
                    Span::styled(visible(&toks[i]), st)
                })
                .collect();
            Line::from(spans)
        })
        .collect();
    f.render_widget(Paragraph::new(lines), text_area);

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

#[cfg(test)]
mod tests {
    use super::line_starts;

    #[test]
    fn rows_wrap_at_the_width_and_end_at_newlines() {
        let t = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let toks = t(&["ab", "cd\n", "efg", "h", "ijklmnop", "q\n"]);
        assert_eq!(line_starts(&toks, 4, 3), (vec![0, 1, 2, 4, 5], 2));
        assert_eq!(line_starts(&toks, 4, 0).1, 0);
        assert_eq!(line_starts(&[], 4, 0), (vec![], 0));
    }
}
