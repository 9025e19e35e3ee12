//! The start screen without a prompt file: sample prompts and recent files.

use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Paragraph};
use ratatui::Frame;

use super::centered;
use crate::tui::app::App;

pub fn draw(f: &mut Frame, area: Rect, app: &App) {
    let Some(p) = &app.picker else { return };
    let h = (p.items.len() as u16 + 5).clamp(7, area.height);
    let r = centered(area, 90, h);
    let mut lines = vec![
        Line::from("Pick a prompt (↑/↓, Enter; q quits):"),
        Line::from(""),
    ];
    if p.items.is_empty() {
        lines.push(Line::from(
            "no sample prompts or recent files; run `kvscope PROMPT_FILE`",
        ));
    }
    for (i, (label, _)) in p.items.iter().enumerate() {
        let st = if i == p.sel {
            Style::default().add_modifier(Modifier::REVERSED)
        } else {
            Style::default()
        };
        lines.push(Line::styled(format!(" {label}"), st));
    }
    if let Some(e) = &app.error {
        lines.push(Line::styled(e.clone(), Style::default().fg(Color::Red)));
    }
    f.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(" kvscope ")),
        r,
    );
}
