//! One widget per pane. Each `draw` reads the [`App`] state and nothing else: no
//! model, no files, no computation beyond fitting numbers to cells.

pub mod attention;
pub mod budgets;
pub mod divergence;
pub mod generation;
pub mod headmap;
pub mod help;
pub mod memory;
pub mod picker;
pub mod status;
pub mod tokens;

use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Span;
use ratatui::widgets::{Block, Borders};

use super::action::Pane;
use super::app::App;

/// The frame around a pane: its title, with the number that shows it and a "stale" tag
/// while its content waits for a recompute.
pub fn block(app: &App, pane: Pane, stale: bool) -> Block<'static> {
    let focused = app.focus == pane;
    let mut title = vec![Span::raw(format!(
        " {} {} ",
        pane.index() + 1,
        pane.title()
    ))];
    if stale {
        title.push(Span::styled(
            "stale ",
            Style::default()
                .fg(Color::Yellow)
                .add_modifier(Modifier::BOLD),
        ));
    }
    let border = if focused {
        Style::default().fg(Color::Cyan)
    } else {
        Style::default().fg(Color::DarkGray)
    };
    Block::default()
        .borders(Borders::ALL)
        .border_style(border)
        .title(ratatui::text::Line::from(title))
}

/// Style of content that belongs to an outcome being recomputed.
pub fn dim_if(stale: bool) -> Style {
    if stale {
        Style::default().add_modifier(Modifier::DIM)
    } else {
        Style::default()
    }
}

/// A perceptual-ish ramp (dark blue -> teal -> yellow), `t` in [0, 1].
pub fn ramp(t: f32) -> Color {
    const STOPS: [(f32, f32, f32); 5] = [
        (20.0, 12.0, 60.0),
        (45.0, 70.0, 140.0),
        (30.0, 145.0, 140.0),
        (120.0, 200.0, 80.0),
        (250.0, 230.0, 40.0),
    ];
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = t * (STOPS.len() - 1) as f32;
    let i = (x.floor() as usize).min(STOPS.len() - 2);
    let f = x - i as f32;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    let mix = |p: f32, q: f32| (p + (q - p) * f).round() as u8;
    Color::Rgb(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// Bytes for people in binary units: 512 B, 78.5 KiB, 2.813 MiB, 1.25 GiB.
pub fn bytes(n: u64) -> String {
    const K: f64 = 1024.0;
    let x = n as f64;
    if x >= K * K * K {
        format!("{:.2} GiB", x / (K * K * K))
    } else if x >= K * K {
        // Three decimals (1 KiB): one layer's budget moving by a few tokens must show.
        format!("{:.3} MiB", x / (K * K))
    } else if x >= K {
        format!("{:.1} KiB", x / K)
    } else {
        format!("{n} B")
    }
}

/// A token's text made safe for one cell row: control characters and newlines shown as
/// visible marks.
pub fn visible(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\n' => '⏎',
            '\t' => '→',
            c if c.is_control() => '·',
            c => c,
        })
        .collect()
}

/// `r` shrunk to at most `w` x `h`, centred.
pub fn centered(r: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(r.width);
    let h = h.min(r.height);
    Rect::new(r.x + (r.width - w) / 2, r.y + (r.height - h) / 2, w, h)
}

/// Seconds as `42 s`, `3 min 20 s` or `1 h 05 min`, for an ETA.
pub fn fmt_secs(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min {:02} s", s / 60, s % 60),
        _ => format!("{} h {:02} min", s / 3600, s % 3600 / 60),
    }
}
