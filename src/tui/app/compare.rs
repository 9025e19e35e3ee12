//! Comparing outcomes: measuring the attention-output errors of the shown result (`E`)
//! and freezing it as A for the A/B comparison (`A`, `C`).

use super::{App, Cmd};
use crate::tui::action::Action;

pub(super) fn on_key(app: &mut App, a: Action) -> Vec<Cmd> {
    match a {
        Action::MeasureErrors => match app.result.as_ref() {
            Some(r) if r.divergence.is_some() && !app.stale() => {
                app.notice = Some(
                    "measuring the attention-output error per layer (one full-cache replay)".into(),
                );
                return vec![Cmd::MeasureErrors(r.gen)];
            }
            _ => app.error = Some("no divergence analysis yet: wait for the result".into()),
        },
        Action::FreezeA => match app.result.as_ref() {
            Some(r) if !app.stale() => {
                app.frozen = Some(r.clone());
                app.notice = Some(
                    "froze the current result as A; edit settings to compare (C clears)".into(),
                );
            }
            _ => app.error = Some("nothing to freeze yet: wait for the current result".into()),
        },
        Action::ClearA => app.frozen = None,
        _ => {}
    }
    Vec::new()
}
