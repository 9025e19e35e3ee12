//! The screen: which panes go where for the terminal's size, the status line, popups.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Wrap};
use ratatui::Frame;

use super::action::Pane;
use super::app::App;
use super::panes::{
    self, attention, budgets, divergence, generation, headmap, memory, status, tokens,
};

/// Below this nothing is drawn but a message.
pub const MIN_W: u16 = 80;
pub const MIN_H: u16 = 24;
/// From this size up every pane is on screen at once; below it, one pane per tab.
pub const FULL_W: u16 = 160;
pub const FULL_H: u16 = 45;

pub fn draw(f: &mut Frame, app: &App) {
    let area = f.area();
    if area.width < MIN_W || area.height < MIN_H {
        let msg = format!(
            "terminal too small: {}x{}. kvscope needs at least {MIN_W}x{MIN_H} \
             ({FULL_W}x{FULL_H} shows every pane at once). Enlarge the window, or press q to quit.",
            area.width, area.height
        );
        f.render_widget(
            Paragraph::new(msg)
                .style(Style::default().fg(Color::Yellow))
                .wrap(Wrap { trim: true }),
            area,
        );
        return;
    }
    if app.picker.is_some() {
        panes::picker::draw(f, area, app);
        return;
    }
    let bar_h = status::height(app, area.width);
    let [main, bar] = Layout::vertical([Constraint::Min(1), Constraint::Length(bar_h)]).areas(area);
    status::draw(f, bar, app);
    if app.snapshot.is_none() {
        status::draw_loading(f, main, app);
    } else if area.width >= FULL_W && area.height >= FULL_H {
        full(f, main, app);
    } else {
        tabs(f, main, app);
    }
    if let Some(p) = &app.popup {
        panes::help::draw(f, area, p);
    }
}

fn pane(f: &mut Frame, area: Rect, app: &App, p: Pane) {
    match p {
        Pane::HeadMap => headmap::draw(f, area, app),
        Pane::Attention => attention::draw(f, area, app),
        Pane::Budgets => budgets::draw(f, area, app),
        Pane::Generation => generation::draw(f, area, app),
        Pane::Memory => memory::draw(f, area, app),
        Pane::Tokens => tokens::draw(f, area, app),
        Pane::Divergence => divergence::draw(f, area, app),
    }
}

/// Every pane at once: head map | attention (or divergence), budgets | generation,
/// memory | tokens.
fn full(f: &mut Frame, area: Rect, app: &App) {
    let [a, b, c] = Layout::vertical([
        Constraint::Fill(1),
        Constraint::Length(16),
        Constraint::Length(12),
    ])
    .areas(area);
    let left = Constraint::Length(66);
    let [hm, at] = Layout::horizontal([left, Constraint::Fill(1)]).areas(a);
    let [bu, ge] = Layout::horizontal([left, Constraint::Fill(1)]).areas(b);
    let [me, to] = Layout::horizontal([Constraint::Length(30), Constraint::Fill(1)]).areas(c);
    pane(f, hm, app, Pane::HeadMap);
    let detail = if app.show_divergence || app.focus == Pane::Divergence {
        Pane::Divergence
    } else {
        Pane::Attention
    };
    pane(f, at, app, detail);
    pane(f, bu, app, Pane::Budgets);
    pane(f, ge, app, Pane::Generation);
    pane(f, me, app, Pane::Memory);
    pane(f, to, app, Pane::Tokens);
}

/// One pane at a time, chosen with 1..7 or Tab.
fn tabs(f: &mut Frame, area: Rect, app: &App) {
    let [bar, body] = Layout::vertical([Constraint::Length(1), Constraint::Min(1)]).areas(area);
    let mut spans = Vec::new();
    for p in Pane::ALL {
        let st = if p == app.focus {
            Style::default().add_modifier(Modifier::REVERSED | Modifier::BOLD)
        } else {
            Style::default().fg(Color::DarkGray)
        };
        spans.push(Span::styled(
            format!(" {} {} ", p.index() + 1, p.title()),
            st,
        ));
    }
    f.render_widget(Paragraph::new(Line::from(spans)), bar);
    pane(f, body, app, app.focus);
}
