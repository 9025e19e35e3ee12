//! Memory: kept vs full KV bytes, then every buffer the session holds or held (the
//! breakdown of [`crate::memory::Memory`]: weights, the Trace's K/V and the rest of it,
//! the decode caches, prefill's freed working buffers) and the process's resident memory.

use ratatui::layout::Rect;
use ratatui::text::Line;
use ratatui::widgets::Paragraph;
use ratatui::Frame;

use super::{block, bytes, dim_if};
use crate::tui::action::Pane;
use crate::tui::app::App;

/// `label` padded to the value column, then `n` bytes.
fn row(label: &str, n: usize) -> String {
    format!("{label:<9}{:>12}", bytes(n as u64))
}

/// The replay's bytes from the last divergence analysis on screen (0 before one).
fn replay_bytes(app: &App) -> usize {
    app.result
        .as_ref()
        .and_then(|r| r.divergence.as_ref())
        .map_or(0, |d| d.replay_bytes)
}

pub fn draw(f: &mut Frame, area: Rect, app: &App) {
    let stale = app.stale();
    let b = block(app, Pane::Memory, stale);
    let inner = b.inner(area);
    f.render_widget(b, area);
    let mut lines = Vec::new();
    let rss = app.rss_bytes.map_or_else(|| "n/a".to_string(), bytes);
    if let Some(s) = &app.snapshot {
        let m = &s.memory;
        match &app.result {
            Some(r) => lines.push(Line::styled(
                format!(
                    "{} {:>3.0}%",
                    row("kept KV", r.kv_bytes),
                    r.kv_fraction * 100.0
                ),
                dim_if(stale),
            )),
            None => lines.push(Line::from("kept KV   (computing)")),
        }
        lines.push(Line::from(format!(
            "{} {}",
            row("full KV", s.full_kv_bytes),
            s.kv_dtype
        )));
        lines.push(Line::from(format!(
            "{:<9}{:>12}",
            "model",
            bytes(s.model_file_bytes)
        )));
        lines.push(Line::from(row("weights", m.weights)));
        lines.push(Line::from(format!(
            "{} {}",
            row("Trace K/V", m.trace_kv),
            m.trace_kv_dtype
        )));
        // Last queries, column sums, block maps, last logits.
        lines.push(Line::from(row("Trace etc", m.trace() - m.trace_kv)));
        // The decode caches exist only while a generation is decoded.
        let caches = m.decode_full + app.result.as_ref().map_or(0, |r| r.decode_bytes);
        lines.push(Line::styled(row("caches", caches), dim_if(stale)));
        // The full-cache replay the divergence analysis reads, once it was computed
        // (or read back from the prefill cache); held from then on.
        let replay = replay_bytes(app).max(m.full_replay);
        if replay > 0 {
            lines.push(Line::from(row("replay", replay)));
        }
        // Prefill's f32 K/V, f64 block sums and activations, freed when it ended.
        lines.push(Line::from(format!("{} freed", row("prefill", m.prefill()))));
    }
    lines.push(Line::from(format!("{:<9}{rss:>12}", "RSS")));
    if let (Some(s), Some(r)) = (&app.snapshot, app.rss_bytes) {
        // What the process holds beyond weights and Trace: scratch buffers, the
        // allocator's free pages, the tokenizer, the UI.
        let known = (s.memory.resident() - s.memory.full_replay
            + replay_bytes(app).max(s.memory.full_replay)) as u64;
        lines.push(Line::from(format!(
            "{:<9}{:>12}",
            "other",
            bytes(r.saturating_sub(known))
        )));
    }
    f.render_widget(Paragraph::new(lines), inner);
}
