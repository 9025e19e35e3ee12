//! Memory: full vs kept KV bytes, the fraction, and the process's resident memory
//! broken down into weights, the Trace and the rest (caches, scratch, tokenizer).

use ratatui::layout::Rect;
use ratatui::text::Line;
use ratatui::widgets::Paragraph;
use ratatui::Frame;

use super::{block, bytes, dim_if};
use crate::tui::action::Pane;
use crate::tui::app::App;

pub fn draw(f: &mut Frame, area: Rect, app: &App) {
    let stale = app.stale();
    let b = block(app, Pane::Memory, stale);
    let inner = b.inner(area);
    f.render_widget(b, area);
    let mut lines = Vec::new();
    let rss = app.rss_bytes.map_or_else(|| "n/a".to_string(), bytes);
    if let Some(s) = &app.snapshot {
        lines.push(Line::from(format!(
            "full KV   {:>11}",
            bytes(s.full_kv_bytes as u64)
        )));
        match &app.result {
            Some(r) => {
                lines.push(Line::styled(
                    format!("kept KV   {:>11}", bytes(r.kv_bytes as u64)),
                    dim_if(stale),
                ));
                lines.push(Line::styled(
                    format!("fraction  {:>10.2}%", r.kv_fraction * 100.0),
                    dim_if(stale),
                ));
                lines.push(Line::styled(
                    format!(
                        "saved     {:>11}",
                        bytes(s.full_kv_bytes.saturating_sub(r.kv_bytes) as u64)
                    ),
                    dim_if(stale),
                ));
            }
            None => lines.push(Line::from("kept KV   (computing)")),
        }
        lines.push(Line::from(format!(
            "model     {:>11}",
            bytes(s.model_file_bytes)
        )));
        lines.push(Line::from(format!(
            "weights   {:>11}",
            bytes(s.weights_bytes as u64)
        )));
        lines.push(Line::from(format!(
            "Trace     {:>11}",
            bytes(s.trace_bytes as u64)
        )));
    }
    lines.push(Line::from(format!("RSS       {rss:>11}")));
    if let (Some(s), Some(r)) = (&app.snapshot, app.rss_bytes) {
        // What the process holds beyond weights and Trace: decode caches, scratch
        // buffers, the tokenizer, the UI.
        let known = (s.weights_bytes + s.trace_bytes) as u64;
        lines.push(Line::from(format!(
            "other     {:>11}",
            bytes(r.saturating_sub(known))
        )));
    }
    let dtype = app.snapshot.as_ref().map_or("?", |s| s.kv_dtype);
    lines.push(Line::styled(
        format!("KV at {dtype}, K+V, prompt only"),
        dim_if(true),
    ));
    f.render_widget(Paragraph::new(lines), inner);
}
