//! Pins (`k`, `x`, `v`, `X`) and rescue (`R`, `,` / `.`): settings edits that keep or
//! evict chosen prompt positions.

use super::{App, Cmd};
use crate::tui::action::Action;
use crate::tui::msg::CULPRITS_PER_STEP;

pub(super) fn on_key(app: &mut App, a: Action) -> Vec<Cmd> {
    match a {
        Action::PinKeep => toggle_pin(app, app.sel_token, true),
        Action::PinEvict => toggle_pin(app, app.sel_token, false),
        Action::PinRange => match app.ctl.range_mark.take() {
            None => {
                app.ctl.range_mark = Some(app.sel_token);
                app.notice = Some(format!(
                    "range starts at token {}; select its end and press v again",
                    app.sel_token
                ));
                Vec::new()
            }
            Some(m) => {
                let (a, b) = (m.min(app.sel_token), m.max(app.sel_token));
                app.notice = Some(format!("pinned tokens {a}-{b} kept"));
                pin_all(app, &(a..=b).collect::<Vec<_>>())
            }
        },
        Action::ClearPins => app.edit(|s| {
            s.pin_keep.clear();
            s.pin_evict.clear();
        }),
        Action::RescueK(d) => {
            let k = (app.rescue_k as i64 + d).clamp(1, CULPRITS_PER_STEP as i64);
            app.rescue_k = k as usize;
            app.notice = Some(format!(
                "R now pins the top {k} culprits of the selected step"
            ));
            Vec::new()
        }
        Action::Rescue => rescue(app),
        _ => Vec::new(),
    }
}

/// Pins the selected step's top `rescue_k` culprits kept and remembers the rescue, so
/// its result can say whether the output now matches.
fn rescue(app: &mut App) -> Vec<Cmd> {
    let Some(t) = app.step() else {
        app.error = Some("no divergence analysis yet: wait for the result".into());
        return Vec::new();
    };
    let pins: Vec<usize> = app
        .result
        .as_ref()
        .and_then(|r| r.divergence.as_ref())
        .and_then(|d| d.culprits.get(t - 1))
        .map(|c| {
            c.iter()
                .map(|&(p, _)| p)
                .filter(|p| !app.settings.pin_evict.contains(p))
                .take(app.rescue_k)
                .collect()
        })
        .unwrap_or_default();
    if pins.is_empty() {
        app.notice = Some(format!(
            "step {t} has no culprits: nothing evicted was attended"
        ));
        return Vec::new();
    }
    let cmds = pin_all(app, &pins);
    if !cmds.is_empty() {
        app.notice = Some(format!(
            "rescue: pinned culprits {pins:?} of step {t}; recomputing"
        ));
        app.ctl.rescue_pending = Some((app.gen, pins));
    }
    cmds
}

/// Toggles `pos` in one pin list (and out of the other, so they never overlap).
fn toggle_pin(app: &mut App, pos: usize, keep: bool) -> Vec<Cmd> {
    if pos >= app.prompt_len() {
        return Vec::new();
    }
    app.edit(|s| {
        let (mine, other) = if keep {
            (&mut s.pin_keep, &mut s.pin_evict)
        } else {
            (&mut s.pin_evict, &mut s.pin_keep)
        };
        match mine.binary_search(&pos) {
            Ok(i) => {
                mine.remove(i);
            }
            Err(i) => {
                mine.insert(i, pos);
                other.retain(|&p| p != pos);
            }
        }
    })
}

/// Pins `ps` kept (leaving any that are pinned evicted as they are).
fn pin_all(app: &mut App, ps: &[usize]) -> Vec<Cmd> {
    let len = app.prompt_len();
    app.edit(|s| {
        for &p in ps.iter().filter(|&&p| p < len) {
            if !s.pin_evict.contains(&p) {
                s.pin_keep.push(p);
            }
        }
        s.pin_keep.sort_unstable();
        s.pin_keep.dedup();
    })
}
