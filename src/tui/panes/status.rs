//! The status line and the loading screen.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Gauge, Paragraph, Wrap};
use ratatui::Frame;

use super::centered;
use crate::tui::app::App;
use crate::tui::msg::{Phase, ProfileProgress};

/// The worker's state in a few words.
pub fn phase_text(p: &Phase) -> String {
    match p {
        Phase::Loading(what) => what.clone(),
        Phase::Prefill { done, total, .. } => {
            format!("prefill {}%", done * 100 / (*total).max(1))
        }
        Phase::DecodingFull => "decoding full cache".into(),
        Phase::Idle => "idle".into(),
        Phase::Recomputing(_) => "decoding".into(),
        Phase::Stopped => "stopped".into(),
    }
}

/// Most rows a long message (an error or notice) may take below the status line.
const MAX_MESSAGE_ROWS: u16 = 6;

/// Rows the status area needs at width `width`: the status line, plus the rows of an
/// error or notice too long to share it, wrapped (a bad report's reason must be readable
/// at 80 columns, not cut mid-word).
pub fn height(app: &App, width: u16) -> u16 {
    let Some((text, _)) = message(app) else {
        return 1;
    };
    let w = usize::from(width.max(1));
    // As one line: " text " and " ? help " after the status.
    if line(app).width() + text.chars().count() + 2 + 8 <= w {
        return 1;
    }
    1 + (wrapped_rows(&text, w) as u16).clamp(1, MAX_MESSAGE_ROWS)
}

/// Rows `text` takes when wrapped at word boundaries to `w` columns.
fn wrapped_rows(text: &str, w: usize) -> usize {
    let (mut rows, mut col) = (1, 0);
    for word in text.split(' ').map(|x| x.chars().count()) {
        let need = if col == 0 { word } else { col + 1 + word };
        if need <= w {
            col = need;
        } else if word <= w {
            rows += 1;
            col = word;
        } else {
            rows += usize::from(col > 0) + (word - 1) / w;
            col = (word - 1) % w + 1;
        }
    }
    rows
}

/// The error (red) or else the notice (yellow) to show.
fn message(app: &App) -> Option<(String, Style)> {
    if let Some(e) = &app.error {
        Some((e.clone(), Style::default().fg(Color::White).bg(Color::Red)))
    } else {
        app.notice
            .as_ref()
            .map(|n| (n.clone(), Style::default().fg(Color::Yellow)))
    }
}

/// The background profile make's progress: how far (of the units' weights), which
/// unit, the time left and how to cancel.
pub fn profiling_text(p: &ProfileProgress) -> String {
    if p.total <= 0.0 {
        return "profile make: planning · P cancels".into();
    }
    let pct = (p.done / p.total * 100.0).clamp(0.0, 100.0);
    let mut s = format!("profile make {pct:.0}%");
    if !p.note.is_empty() {
        s.push_str(&format!(" ({})", p.note));
    }
    if let Some(e) = p.eta_s {
        s.push_str(&format!(" · ETA {}", crate::tui::panes::fmt_secs(e)));
    }
    s.push_str(" · P cancels");
    s
}

pub fn draw(f: &mut Frame, area: Rect, app: &App) {
    let help = Span::styled(" ? help ", Style::default().add_modifier(Modifier::DIM));
    let mut first = line(app);
    if area.height > 1 {
        // The message wraps in the rows below the status line.
        let [top, rest] = Layout::vertical([Constraint::Length(1), Constraint::Min(1)]).areas(area);
        first.push_span(help);
        f.render_widget(Paragraph::new(first), top);
        if let Some((text, style)) = message(app) {
            f.render_widget(
                Paragraph::new(Line::styled(text, style)).wrap(Wrap { trim: true }),
                rest,
            );
        }
        return;
    }
    if let Some((text, style)) = message(app) {
        first.push_span(Span::styled(format!(" {text} "), style));
    }
    first.push_span(help);
    f.render_widget(Paragraph::new(first), area);
}

/// The status line without its message and help hint.
fn line(app: &App) -> Line<'static> {
    let st = &app.settings;
    let prompt = match &app.snapshot {
        Some(s) => format!("{} tok", s.prompt_tokens.len()),
        None => "…".into(),
    };
    let model = app
        .snapshot
        .as_ref()
        .map_or(app.model_label.clone(), |s| s.model_name.clone());
    let ready = if app.snapshot.is_some() && app.phase == Phase::Idle && !app.stale() {
        "ready"
    } else {
        "busy"
    };
    let mut spans = vec![
        Span::styled(
            format!(" {model} "),
            Style::default().bg(Color::Blue).fg(Color::White),
        ),
        Span::raw(format!(
            " {} [{ready}] | {} B={} {} w={} | prompt {prompt} {} ",
            phase_text(&app.phase),
            st.method.name(),
            st.budget,
            st.effective_allocator().name(),
            st.window,
            app.prompt_label,
        )),
    ];
    if let Some(info) = app.snapshot.as_ref().and_then(|s| s.prompt_info.as_ref()) {
        spans.push(Span::raw(format!("template {} ", info.template)));
        if info.control_tokens > 0 {
            spans.push(Span::styled(
                format!(
                    " {} control token{} in the prompt {} ",
                    info.control_tokens,
                    if info.control_tokens == 1 { "" } else { "s" },
                    if info.control_tokens_as_tokens {
                        "used as tokens"
                    } else {
                        "read as text"
                    }
                ),
                Style::default().fg(Color::Black).bg(Color::Yellow),
            ));
        }
    }
    if let Some(p) = &app.profiling {
        spans.push(Span::styled(
            format!(" {} ", profiling_text(p)),
            Style::default().fg(Color::Black).bg(Color::Cyan),
        ));
    } else if app.snapshot.is_some() && !app.ctl.has_profile && message(app).is_none() {
        // Only while no message needs the room (a long one wraps below the line).
        spans.push(Span::styled(
            " no profile: P makes one ",
            Style::default().fg(Color::Black).bg(Color::Yellow),
        ));
    }
    Line::from(spans)
}

/// Shown until the prompt's Snapshot arrives: what the worker is doing, a progress bar
/// with tokens done / total and the time left.
pub fn draw_loading(f: &mut Frame, area: Rect, app: &App) {
    let r = centered(area, 72, 9);
    let b = Block::default()
        .borders(Borders::ALL)
        .title(format!(" kvscope · {} ", app.prompt_label));
    let inner = b.inner(r);
    f.render_widget(b, r);
    let [what, gauge, note] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Length(1),
        Constraint::Min(1),
    ])
    .areas(inner);
    f.render_widget(
        Paragraph::new(format!(
            "worker: {}   (q quits at any time)",
            phase_text(&app.phase)
        )),
        what,
    );
    let (ratio, label) = match &app.phase {
        Phase::Prefill { done, total, eta_s } => (
            *done as f64 / (*total).max(1) as f64,
            format!(
                "prefill {done}/{total} tokens{}",
                eta_s.map_or(String::new(), |e| format!(" · ETA {e:.0} s"))
            ),
        ),
        Phase::DecodingFull => (1.0, "decoding the full-cache generation".into()),
        _ => (0.0, phase_text(&app.phase)),
    };
    f.render_widget(
        Gauge::default()
            .gauge_style(Style::default().fg(Color::Cyan))
            .ratio(ratio.clamp(0.0, 1.0))
            .label(label),
        gauge,
    );
    let msg = app
        .error
        .as_ref()
        .map(|e| Line::styled(e.clone(), Style::default().fg(Color::Red)))
        .or_else(|| app.notice.as_ref().map(|n| Line::from(n.clone())))
        .unwrap_or_default();
    f.render_widget(Paragraph::new(msg).wrap(Wrap { trim: true }), note);
}
