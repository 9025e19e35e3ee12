//! Divergence: why the compressed generation left the full-cache one (METHOD.md,
//! "Divergence analysis"). The full generation's tokens with the teacher-forced KL as a
//! sparkline and the top-1 marks under them, the selected step's numbers, its culprits
//! (evicted prompt tokens by the attention they lost) and a layer x head grid of lost
//! mass; with a frozen A, the A/B comparison. Everything drawn here was computed on the
//! worker ([`crate::tui::msg::DivView`]).

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;

use super::{block, bytes, dim_if, ramp, visible};
use crate::tui::action::Pane;
use crate::tui::app::App;
use crate::tui::msg::{DivView, Outcome};

const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// One bar per value, scaled to the largest (all-zero: the lowest bar).
pub fn sparkline(values: &[f64]) -> String {
    let max = values.iter().copied().fold(0.0f64, f64::max);
    values
        .iter()
        .map(|&v| {
            if max <= 0.0 || !v.is_finite() {
                BARS[0]
            } else {
                BARS[((v / max) * 7.0).round().clamp(0.0, 7.0) as usize]
            }
        })
        .collect()
}

/// The steps shown in `cells` columns: a window around `sel` (1-based).
fn step_window(n: usize, cells: usize, sel: usize) -> (usize, usize) {
    if n <= cells {
        return (0, n);
    }
    let start = sel.saturating_sub(1 + cells / 2).min(n - cells);
    (start, start + cells)
}

pub fn draw(f: &mut Frame, area: Rect, app: &App) {
    let stale = app.stale();
    let b = block(app, Pane::Divergence, stale);
    let inner = b.inner(area);
    f.render_widget(b, area);
    let (Some(s), Some(r)) = (app.snapshot.as_ref(), app.result.as_ref()) else {
        f.render_widget(Paragraph::new("waiting for the first result"), inner);
        return;
    };
    let Some(d) = r.divergence.as_ref() else {
        f.render_widget(
            Paragraph::new("teacher-forcing the compressed cache on the full generation…"),
            inner,
        );
        return;
    };
    let Some(t) = app.step() else {
        f.render_widget(
            Paragraph::new("the full generation has fewer than 2 tokens: nothing to compare"),
            inner,
        );
        return;
    };
    let st = dim_if(stale);
    let width = inner.width as usize;
    // Steps as columns: 3 cells each when they fit (token text), else 1.
    let n = d.steps.len();
    let cw = if n * 3 <= width.saturating_sub(5) {
        3
    } else {
        1
    };
    let cells = (width.saturating_sub(5) / cw).max(1);
    let (a, z) = step_window(n, cells, t);
    let mut tok_row = vec![Span::styled("tok  ", Style::default().fg(Color::DarkGray))];
    let mut kl_row = vec![Span::styled("KL   ", Style::default().fg(Color::DarkGray))];
    let mut top_row = vec![Span::styled("top1 ", Style::default().fg(Color::DarkGray))];
    let kls: Vec<f64> = d.steps.iter().map(|c| c.kl).collect();
    let bars: Vec<char> = sparkline(&kls).chars().collect();
    for i in a..z {
        let sel = i + 1 == t;
        let hl = if sel {
            st.add_modifier(Modifier::REVERSED)
        } else {
            st
        };
        // Step t predicts full token t (0-based).
        let text = s
            .full_tokens
            .get(i + 1)
            .map_or(String::new(), |x| visible(x));
        let mut cell: String = text.chars().take(cw).collect();
        while cell.chars().count() < cw {
            cell.push(' ');
        }
        tok_row.push(Span::styled(cell, hl));
        let bar: String = std::iter::repeat_n(bars.get(i).copied().unwrap_or(' '), cw).collect();
        kl_row.push(Span::styled(bar, hl.fg(Color::Yellow)));
        let ok = d.steps[i].top1_agree;
        let mark = format!("{:<cw$}", if ok { "·" } else { "✗" });
        top_row.push(Span::styled(
            mark,
            hl.fg(if ok { Color::Green } else { Color::Red }),
        ));
    }
    let c = &d.steps[t - 1];
    let head = format!(
        " step {t}/{n}{}  KL {:.4}  top-1 {}  rank {}  p {:.3}  ←/→ step · R rescue top {} (,/.) · x/X pin · A/C freeze",
        if d.default_step == Some(t) { " (default)" } else { "" },
        c.kl,
        if c.top1_agree { "agrees" } else { "DIFFERS" },
        c.rank,
        c.prob,
        app.rescue_k,
    );
    let mut lines = vec![
        Line::styled(head, st.add_modifier(Modifier::BOLD)),
        Line::from(tok_row),
        Line::from(kl_row),
        Line::from(top_row),
    ];
    let pins = &app.settings;
    if !pins.pin_keep.is_empty() || !pins.pin_evict.is_empty() {
        lines.push(Line::styled(
            format!(
                " pins: keep {} · evict {}",
                list(&pins.pin_keep),
                list(&pins.pin_evict)
            ),
            Style::default().fg(Color::Cyan),
        ));
    }
    let top_h = lines.len() as u16;
    let [top, body] =
        Layout::vertical([Constraint::Length(top_h), Constraint::Min(1)]).areas(inner);
    f.render_widget(Paragraph::new(lines), top);
    let (body, ab) = match &app.frozen {
        Some(fa) if body.height >= 10 => {
            let [x, y] = Layout::vertical([Constraint::Min(4), Constraint::Length(6)]).areas(body);
            (x, Some((y, fa)))
        }
        _ => (body, None),
    };
    let grid_w = (s.n_layers + 6).max(22) as u16;
    let [left, right] =
        Layout::horizontal([Constraint::Min(20), Constraint::Length(grid_w)]).areas(body);
    culprits(f, left, app, r, d, t);
    grid(f, right, app, d, t);
    if let Some((area, fa)) = ab {
        compare(f, area, app, fa, r);
    }
}

fn list(v: &[usize]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        out.push(if j > i {
            format!("{}-{}", v[i], v[j])
        } else {
            v[i].to_string()
        });
        i = j + 1;
    }
    out.join(",")
}

fn culprits(f: &mut Frame, area: Rect, app: &App, r: &Outcome, d: &DivView, t: usize) {
    let Some(s) = app.snapshot.as_ref() else {
        return;
    };
    let mut lines = vec![Line::styled(
        format!(" culprits of step {t}: pos  text  lost mass  kept by layers"),
        Style::default().fg(Color::DarkGray),
    )];
    let list = d.culprits.get(t - 1).map_or(&[][..], |v| &v[..]);
    if list.is_empty() {
        lines.push(Line::from(
            " none: nothing evicted was attended at this step",
        ));
    }
    for &(pos, mass) in list.iter().take(area.height.saturating_sub(1) as usize) {
        let text = s
            .prompt_tokens
            .get(pos)
            .map_or(String::new(), |x| visible(x));
        let text: String = text.chars().take(12).collect();
        let kept = r.layers_keeping.get(pos).copied().unwrap_or(0);
        let pinned = if app.settings.pin_keep.contains(&pos) {
            " pinned"
        } else if app.settings.pin_evict.contains(&pos) {
            " evict-pinned"
        } else {
            ""
        };
        let sel = pos == app.sel_token;
        let style = if sel {
            Style::default().add_modifier(Modifier::REVERSED)
        } else {
            Style::default()
        };
        lines.push(Line::styled(
            format!(
                " {pos:>5}  {text:<12} {mass:>8.4}  {kept:>2}/{}{pinned}",
                s.n_layers
            ),
            style,
        ));
    }
    f.render_widget(Paragraph::new(lines), area);
}

/// Layers (columns) x query heads (rows) of lost mass at step `t`, on a fixed 0..1 scale
/// so steps and settings compare.
fn grid(f: &mut Frame, area: Rect, app: &App, d: &DivView, t: usize) {
    let Some(lost) = d.lost.get(t - 1) else {
        return;
    };
    let n_heads = lost.first().map_or(0, Vec::len);
    let max = lost.iter().flatten().copied().fold(0.0f32, f32::max);
    let mut lines = vec![Line::styled(
        format!(" lost mass L×h max {max:.3}"),
        Style::default().fg(Color::DarkGray),
    )];
    for h in 0..n_heads {
        let mut spans = vec![Span::raw(format!(" h{h:<2} "))];
        for (l, layer) in lost.iter().enumerate() {
            let v = layer.get(h).copied().unwrap_or(0.0);
            let sel = l == app.sel_layer && h == app.sel_head;
            spans.push(Span::styled(
                if sel { "◆" } else { " " },
                Style::default().bg(ramp(v)).fg(Color::Magenta),
            ));
        }
        lines.push(Line::from(spans));
    }
    let sel_v = lost
        .get(app.sel_layer)
        .and_then(|l| l.get(app.sel_head))
        .copied()
        .unwrap_or(0.0);
    lines.push(Line::from(format!(
        " ◆ L{} h{} {sel_v:.3}",
        app.sel_layer, app.sel_head
    )));
    // The attention-output error of each layer (same columns), once measured.
    match d.attn_err.as_ref().and_then(|e| e.get(t - 1)) {
        Some(errs) => {
            let mut spans = vec![Span::raw(" err ")];
            for (l, &e) in errs.iter().enumerate() {
                let sel = l == app.sel_layer;
                spans.push(Span::styled(
                    if sel { "◆" } else { " " },
                    Style::default().bg(ramp(e.min(1.0))).fg(Color::Magenta),
                ));
            }
            lines.push(Line::from(spans));
            let max = errs.iter().copied().fold(0.0f32, f32::max);
            let sel = errs.get(app.sel_layer).copied().unwrap_or(0.0);
            lines.push(Line::from(format!(" out err L{} {sel:.3}", app.sel_layer)));
            lines.push(Line::from(format!(" out err max {max:.3}")));
        }
        None => lines.push(Line::styled(
            " E: out err/layer",
            Style::default().fg(Color::DarkGray),
        )),
    }
    f.render_widget(Paragraph::new(lines), area);
}

/// A (frozen) against B (live): memory, generations, divergence curves and the keep-set
/// difference per layer.
fn compare(f: &mut Frame, area: Rect, app: &App, a: &Outcome, b: &Outcome) {
    let Some(s) = app.snapshot.as_ref() else {
        return;
    };
    let label = |o: &Outcome| {
        format!(
            "{} B={} w={} {} ({:.1}%)",
            o.settings.method,
            o.settings.budget,
            o.settings.window,
            bytes(o.kv_bytes as u64),
            o.kv_fraction * 100.0
        )
    };
    let curve = |o: &Outcome| {
        o.divergence.as_ref().map_or("…".to_string(), |d| {
            sparkline(&d.steps.iter().map(|c| c.kl).collect::<Vec<_>>())
        })
    };
    let text = |o: &Outcome| -> String {
        visible(&o.tokens.concat())
            .chars()
            .take(area.width as usize)
            .collect()
    };
    // Per layer: positions kept (by any KV head) in A and not B, and in B and not A.
    let diff: Vec<String> = a
        .keep
        .iter()
        .zip(&b.keep)
        .map(|(la, lb)| {
            let set = |l: &Vec<Vec<usize>>| {
                let mut v: Vec<usize> = l.iter().flatten().copied().collect();
                v.sort_unstable();
                v.dedup();
                v
            };
            let (sa, sb) = (set(la), set(lb));
            let only_a = sa.iter().filter(|p| sb.binary_search(p).is_err()).count();
            let only_b = sb.iter().filter(|p| sa.binary_search(p).is_err()).count();
            format!("{only_a}/{only_b}")
        })
        .collect();
    let lines = vec![
        Line::styled(
            format!(" A {}  vs  B {}", label(a), label(b)),
            Style::default().add_modifier(Modifier::BOLD),
        ),
        Line::from(format!(" KL A {}  B {}", curve(a), curve(b))),
        Line::from(format!(" A: {}", text(a))),
        Line::from(format!(" B: {}", text(b))),
        Line::from(format!(" full: {}", visible(&s.full_tokens.concat()))),
        Line::from(format!(" A-only/B-only per layer: {}", diff.join(" "))),
    ];
    f.render_widget(Paragraph::new(lines), area);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparkline_scales_to_the_largest() {
        assert_eq!(sparkline(&[0.0, 1.0, 0.5]), "▁█▅");
        assert_eq!(sparkline(&[0.0, 0.0]), "▁▁");
        assert_eq!(sparkline(&[]), "");
    }

    #[test]
    fn step_window_follows_the_selection() {
        assert_eq!(step_window(5, 10, 3), (0, 5));
        assert_eq!(step_window(30, 10, 1), (0, 10));
        assert_eq!(step_window(30, 10, 20), (14, 24));
        assert_eq!(step_window(30, 10, 30), (20, 30));
    }

    #[test]
    fn pin_lists_collapse_ranges() {
        assert_eq!(list(&[1, 2, 3, 7, 9, 10]), "1-3,7,9-10");
        assert_eq!(list(&[]), "-");
    }
}
