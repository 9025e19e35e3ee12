//! The prompt picker, the popups (help, save name, budget and report lists) and the keys
//! that open them or read and write files through the loop (`S`, `L`, `O`, `e`).

use std::path::PathBuf;

use super::{App, Cmd, Picker, Popup};
use crate::tui::action::{Action, Dir};

pub(super) fn on_key(app: &mut App, a: Action) -> Vec<Cmd> {
    match a {
        Action::ToggleHelp => app.popup = Some(Popup::Help),
        Action::Export => {
            if app.snapshot.is_some() {
                return vec![Cmd::FlushNow, Cmd::ExportReport];
            }
            app.error = Some("nothing to export yet: the prompt is still being prefilled".into());
        }
        Action::SaveStart => app.popup = Some(Popup::SaveName(String::new())),
        Action::LoadStart => return vec![Cmd::ListBudgets],
        Action::BudgetNames(names) => {
            if names.is_empty() {
                app.notice = Some("no saved budgets yet (S saves the current ones)".into());
            } else {
                app.popup = Some(Popup::LoadList { names, sel: 0 });
            }
        }
        Action::ReportStart => {
            if app.snapshot.is_none() {
                app.error =
                    Some("no prompt yet: a report loads onto the prompt it was made on".into());
                return Vec::new();
            }
            return vec![Cmd::ListReports];
        }
        Action::ReportNames(names) => {
            if names.is_empty() {
                app.notice = Some(
                    "no exported reports (kvscope-report-*.json) in this folder: e exports one; `kvscope PROMPT --from-report FILE` opens any".into(),
                );
            } else {
                app.popup = Some(Popup::ReportList { names, sel: 0 });
            }
        }
        _ => {}
    }
    Vec::new()
}

/// A key while a popup is open: the popup takes it (Ctrl-C still quits).
pub(super) fn on_popup(app: &mut App, popup: Popup, a: Action) -> Vec<Cmd> {
    match (popup, a) {
        (_, Action::Quit) => {
            app.quit = true;
            Vec::new()
        }
        (Popup::Help, Action::ToggleHelp | Action::Close | Action::Confirm) => Vec::new(),
        (Popup::SaveName(mut s), Action::Char(c)) => {
            if s.len() < 64 {
                s.push(c);
            }
            app.popup = Some(Popup::SaveName(s));
            Vec::new()
        }
        (Popup::SaveName(mut s), Action::Backspace) => {
            s.pop();
            app.popup = Some(Popup::SaveName(s));
            Vec::new()
        }
        (Popup::Search(mut s), Action::Char(c)) => {
            if s.len() < 200 {
                s.push(c);
            }
            app.popup = Some(Popup::Search(s));
            Vec::new()
        }
        (Popup::Search(mut s), Action::Backspace) => {
            s.pop();
            app.popup = Some(Popup::Search(s));
            Vec::new()
        }
        (Popup::Search(q), Action::Confirm) => {
            super::find::run(app, q);
            Vec::new()
        }
        (Popup::SaveName(name), Action::Confirm) => vec![Cmd::SaveBudgets {
            name: name.trim().to_string(),
            budgets: app.budgets(),
        }],
        (Popup::LoadList { names, sel }, Action::Move(d)) => {
            let sel = match d {
                Dir::Up => sel.saturating_sub(1),
                _ => (sel + 1).min(names.len().saturating_sub(1)),
            };
            app.popup = Some(Popup::LoadList { names, sel });
            Vec::new()
        }
        (Popup::LoadList { names, sel }, Action::Confirm) => match names.get(sel) {
            Some(n) => vec![Cmd::LoadBudgets(n.clone())],
            None => Vec::new(),
        },
        (Popup::ReportList { names, sel }, Action::Move(d)) => {
            let sel = match d {
                Dir::Up => sel.saturating_sub(1),
                _ => (sel + 1).min(names.len().saturating_sub(1)),
            };
            app.popup = Some(Popup::ReportList { names, sel });
            Vec::new()
        }
        (Popup::ReportList { names, sel }, Action::Confirm) => match names.get(sel) {
            Some(n) => vec![Cmd::LoadReport(PathBuf::from(n))],
            None => Vec::new(),
        },
        (_, Action::Close) => Vec::new(),
        (p, _) => {
            app.popup = Some(p);
            Vec::new()
        }
    }
}

/// A key on the start screen.
pub(super) fn on_picker(app: &mut App, mut p: Picker, a: Action) -> Vec<Cmd> {
    match a {
        Action::Quit => app.quit = true,
        Action::Move(Dir::Up) => p.sel = p.sel.saturating_sub(1),
        Action::Move(Dir::Down) => p.sel = (p.sel + 1).min(p.items.len().saturating_sub(1)),
        Action::Confirm => {
            if let Some((label, path)) = p.items.get(p.sel).cloned() {
                app.prompt_label = label;
                return vec![Cmd::OpenPrompt(path)];
            }
        }
        Action::Error(e) => app.error = Some(e),
        _ => {}
    }
    app.picker = Some(p);
    Vec::new()
}
