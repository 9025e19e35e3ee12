//! The `?` popup and the budget save / load popups.

use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph};
use ratatui::Frame;

use super::centered;
use crate::tui::app::Popup;
use crate::tui::keys::HELP;

pub fn draw(f: &mut Frame, area: Rect, popup: &Popup) {
    match popup {
        Popup::Help => {
            let h = HELP.len() as u16 + 2;
            let r = centered(area, 78, h);
            let lines: Vec<Line> = HELP
                .iter()
                .map(|(k, what)| {
                    Line::from(vec![
                        Span::styled(
                            format!(" {k:<16}"),
                            Style::default()
                                .fg(Color::Cyan)
                                .add_modifier(Modifier::BOLD),
                        ),
                        Span::raw(*what),
                    ])
                })
                .collect();
            f.render_widget(Clear, r);
            f.render_widget(
                Paragraph::new(lines).block(
                    Block::default()
                        .borders(Borders::ALL)
                        .title(" keys (any key closes) "),
                ),
                r,
            );
        }
        Popup::Search(q) => {
            let r = centered(area, 60, 4);
            f.render_widget(Clear, r);
            f.render_widget(
                Paragraph::new(vec![
                    Line::from(format!("/{q}▏")),
                    Line::from("Enter finds (case-insensitive), n / N step, Esc cancels"),
                ])
                .block(
                    Block::default()
                        .borders(Borders::ALL)
                        .title(" search the prompt "),
                ),
                r,
            );
        }
        Popup::SaveName(name) => {
            let r = centered(area, 60, 4);
            f.render_widget(Clear, r);
            f.render_widget(
                Paragraph::new(vec![
                    Line::from(format!("name: {name}▏")),
                    Line::from("Enter saves the per-layer budgets, Esc cancels"),
                ])
                .block(
                    Block::default()
                        .borders(Borders::ALL)
                        .title(" save budgets "),
                ),
                r,
            );
        }
        Popup::LoadList { names, sel } | Popup::ReportList { names, sel } => {
            let title = match popup {
                Popup::ReportList { .. } => " load a report's settings (Enter) ",
                _ => " load budgets (Enter) ",
            };
            let h = (names.len() as u16 + 2).min(area.height);
            let r = centered(area, 50, h);
            let lines: Vec<Line> = names
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let st = if i == *sel {
                        Style::default().add_modifier(Modifier::REVERSED)
                    } else {
                        Style::default()
                    };
                    Line::styled(format!(" {n}"), st)
                })
                .collect();
            let skip = sel.saturating_sub(h.saturating_sub(3) as usize);
            f.render_widget(Clear, r);
            f.render_widget(
                Paragraph::new(lines)
                    .scroll((skip.min(u16::MAX as usize) as u16, 0))
                    .block(Block::default().borders(Borders::ALL).title(title)),
                r,
            );
        }
    }
}
