//! Attention map of the selected head: its block-averaged map (queries down, keys
//! across), or at a token zoom the exact per-token attention of the rows in view, on a
//! log colour scale, kept/evicted marks along the key axis for the displayed
//! outcome, the window-score strip `p_h`, and a colour bar.

use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;

use super::{block, dim_if, ramp};
use crate::trace::BlockMap;
use crate::tui::action::Pane;
use crate::tui::app::App;

/// Decades the colour scale spans below the brightest cell in view.
pub const DECADES: f32 = 4.0;
const SPARK: [char; 9] = [' ', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// The key range on show, in tokens.
pub fn key_range(app: &App) -> (usize, usize) {
    let len = app.prompt_len();
    if app.view_len == 0 || app.view_len >= len {
        (0, len)
    } else {
        (app.view_start, (app.view_start + app.view_len).min(len))
    }
}

/// Mean of the map's cells over query blocks `q` x key blocks `k` (half-open ranges).
fn mean(m: &BlockMap, q: (usize, usize), k: (usize, usize)) -> f32 {
    let (mut s, mut n) = (0f32, 0usize);
    for qb in q.0..q.1.max(q.0 + 1).min(m.blocks) {
        for kb in k.0..k.1.max(k.0 + 1).min(m.blocks) {
            s += m.cell(qb, kb);
            n += 1;
        }
    }
    if n == 0 {
        0.0
    } else {
        s / n as f32
    }
}

/// Per-token attention for the map: query rows `rows` (one per half-row), a value for
/// each (query, key) the model computed, and the header's words for it.
struct Exact<'a> {
    rows: std::ops::Range<usize>,
    value: Box<dyn Fn(usize, usize) -> f32 + 'a>,
    label: String,
}

/// The exact rows to draw for the key range `(ks, ke)`, when there are any: a map of one
/// token per block is exact already (short prompts); otherwise the worker's rows for
/// exactly this layer and key range (a token zoom, `zoom_window`). The rows are the
/// last `halves` of them, ending at the key range's end.
fn exact_rows<'a>(
    app: &'a App,
    m: &'a BlockMap,
    (ks, ke): (usize, usize),
    halves: usize,
) -> Option<Exact<'a>> {
    if m.block_size == 1 && ke - ks <= crate::tui::app::TOKEN_ZOOM {
        let rows = ke.saturating_sub(halves)..ke;
        return Some(Exact {
            label: format!("exact: queries {}..{ke}", rows.start),
            rows,
            value: Box::new(move |q, k| m.cell(q, k)),
        });
    }
    let (z, ms) = app.zoom_rows.as_ref()?;
    if z.layer != app.sel_layer || z.keys != (ks..ke) || app.sel_head >= z.n_heads {
        return None;
    }
    let rows = z.rows.end.saturating_sub(halves).max(z.rows.start)..z.rows.end;
    let h = app.sel_head;
    Some(Exact {
        label: format!("exact: queries {}..{}, {ms:.0} ms", rows.start, rows.end),
        rows,
        value: Box::new(move |q, k| z.row(h, q)[k - z.keys.start]),
    })
}

/// Colour of one cell value on a log scale whose top is `top_log` (log10).
fn colour(v: f32, top_log: f32) -> Color {
    if v <= 0.0 || !v.is_finite() {
        return Color::Rgb(8, 8, 16);
    }
    let t = (v.log10() - (top_log - DECADES)) / DECADES;
    ramp(t)
}

pub fn draw(f: &mut Frame, area: Rect, app: &App) {
    let stale = app.stale();
    let b = block(app, Pane::Attention, stale);
    let inner = b.inner(area);
    f.render_widget(b, area);
    let Some(s) = app.snapshot.as_ref() else {
        f.render_widget(Paragraph::new("waiting for the prompt's trace"), inner);
        return;
    };
    let Some(m) = s.maps.get(app.sel_layer).and_then(|l| l.get(app.sel_head)) else {
        f.render_widget(Paragraph::new("no attention map for this head"), inner);
        return;
    };
    let w = inner.width as usize;
    let map_rows = (inner.height as usize).saturating_sub(4);
    if w < 10 || map_rows == 0 || m.blocks == 0 {
        f.render_widget(Paragraph::new("(pane too small for the map)"), inner);
        return;
    }
    let (ks, ke) = key_range(app);
    let n_rep = (s.n_heads / s.n_kv_heads.max(1)).max(1);
    let g = app.sel_head / n_rep;
    let mut lines = Vec::new();
    // Column j covers keys [col(j), col(j+1)); half-row r covers query blocks likewise.
    let col = |j: usize| ks + (ke - ks) * j / w;
    let halves = map_rows * 2;
    let exact = exact_rows(app, m, (ks, ke), halves);
    let what = match &exact {
        Some(e) => e.label.clone(),
        None if ke - ks <= w && m.block_size > 1 => {
            format!("block means of {} tok (exact: computing)", m.block_size)
        }
        None => format!("block means, {} tok/block", m.block_size),
    };
    lines.push(Line::from(format!(
        "L{} h{} (KV head {g})  keys {ks}..{ke} of {}  {what}  z/Z [/] T",
        app.sel_layer, app.sel_head, m.len
    )));
    let mut cells = vec![vec![0f32; w]; halves];
    let mut top = 0f32;
    match &exact {
        Some(e) => {
            for (r, row) in cells.iter_mut().enumerate() {
                let q = e.rows.start + r;
                if q >= e.rows.end {
                    continue;
                }
                for (j, c) in row.iter_mut().enumerate() {
                    let (a, b) = (col(j), col(j + 1).max(col(j) + 1).min(ke));
                    *c = (a..b).map(|k| (e.value)(q, k)).sum::<f32>() / (b - a).max(1) as f32;
                    top = top.max(*c);
                }
            }
        }
        None => {
            let kblocks = |j: usize| {
                let a = col(j) / m.block_size;
                let b = col(j + 1).div_ceil(m.block_size).max(a + 1);
                (a, b)
            };
            let qblocks = |r: usize| {
                let a = m.blocks * r / halves;
                (a, (m.blocks * (r + 1) / halves).max(a + 1))
            };
            for (r, row) in cells.iter_mut().enumerate() {
                for (j, c) in row.iter_mut().enumerate() {
                    *c = mean(m, qblocks(r), kblocks(j));
                    top = top.max(*c);
                }
            }
        }
    }
    let top_log = if top > 0.0 { top.log10() } else { 0.0 };
    for pair in cells.chunks(2) {
        let spans: Vec<Span> = (0..w)
            .map(|j| {
                let up = colour(pair[0][j], top_log);
                let down = pair.get(1).map_or(Color::Reset, |r| colour(r[j], top_log));
                Span::styled("▀", Style::default().fg(up).bg(down))
            })
            .collect();
        lines.push(Line::from(spans));
    }
    lines.push(marks_line(app, g, w, &col, stale));
    lines.push(strip_line(app, w, &col, stale));
    let mut bar = vec![Span::raw(format!("1e{:.1} ", top_log - DECADES))];
    bar.extend((0..16).map(|i| Span::styled(" ", Style::default().bg(ramp(i as f32 / 15.0)))));
    bar.push(Span::raw(format!(
        " 1e{top_log:.1}  log scale   █ kept ▄ partly · evicted   strip: p_h"
    )));
    lines.push(Line::from(bar));
    f.render_widget(Paragraph::new(lines), inner);
}

/// Kept/evicted marks along the key axis for KV head `g` of the selected layer.
fn marks_line(
    app: &App,
    g: usize,
    w: usize,
    col: &dyn Fn(usize) -> usize,
    stale: bool,
) -> Line<'static> {
    let Some(kept) = app
        .result
        .as_ref()
        .and_then(|r| r.keep.get(app.sel_layer))
        .and_then(|l| l.get(g))
    else {
        return Line::from("(no keep set yet)");
    };
    let spans: Vec<Span> = (0..w)
        .map(|j| {
            let (a, b) = (col(j), col(j + 1).max(col(j) + 1));
            let lo = kept.partition_point(|&p| p < a);
            let hi = kept.partition_point(|&p| p < b);
            let n = hi - lo;
            let (ch, c) = if n == 0 {
                ('·', Color::Red)
            } else if n >= b - a {
                ('█', Color::Green)
            } else {
                ('▄', Color::Yellow)
            };
            Span::styled(ch.to_string(), dim_if(stale).fg(c))
        })
        .collect();
    Line::from(spans)
}

/// The window score `p_h` of the selected head, max over each column's keys, as a
/// sparkline on a log scale spanning [`DECADES`] below the largest value in view (a
/// linear one shows only the attention sink); the window itself (always kept, no score)
/// is drawn as `▒`.
fn strip_line(app: &App, w: usize, col: &dyn Fn(usize) -> usize, stale: bool) -> Line<'static> {
    let Some(p) = app
        .result
        .as_ref()
        .and_then(|r| r.strips.get(app.sel_layer))
        .and_then(|l| l.get(app.sel_head))
    else {
        return Line::from("(no window scores yet)");
    };
    let val = |j: usize| -> Option<f32> {
        let (a, b) = (col(j), col(j + 1).max(col(j) + 1));
        if a >= p.len() {
            return None;
        }
        Some(p[a..b.min(p.len())].iter().copied().fold(0f32, f32::max))
    };
    let top = (0..w).filter_map(val).fold(0f32, f32::max).max(1e-12);
    let s: String = (0..w)
        .map(|j| match val(j) {
            None => '▒',
            Some(v) if v > 0.0 => {
                let t = (v.log10() - top.log10() + DECADES) / DECADES;
                SPARK[(t * 8.0).round().clamp(0.0, 8.0) as usize]
            }
            Some(_) => SPARK[0],
        })
        .collect();
    Line::from(Span::styled(s, dim_if(stale).fg(Color::Cyan)))
}
