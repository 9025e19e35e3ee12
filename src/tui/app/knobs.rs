//! The method and knob keys: method, window, kernel, first_k, pooling, the generic knob
//! keys (`o`, `<` / `>`) and reset.

use super::{App, Cmd};
use crate::eviction::{Method, Pooling, Settings};
use crate::trace::W_MAX;
use crate::tui::action::Action;

/// "name = value (range): help" for the status line.
fn knob_line(k: &crate::eviction::Knob, s: &Settings) -> String {
    format!("{} = {} ({}): {}", k.name, k.get(s), k.range(), k.help)
}

pub(super) fn on_key(app: &mut App, a: Action) -> Vec<Cmd> {
    match a {
        Action::NextMethod | Action::PrevMethod => {
            let fwd = matches!(a, Action::NextMethod);
            let all = Method::ALL;
            let i = all
                .iter()
                .position(|&m| m == app.settings.method)
                .unwrap_or(0);
            let n = all.len();
            let next = all[if fwd { (i + 1) % n } else { (i + n - 1) % n }];
            app.edit(|s| s.method = next)
        }
        Action::Window(d) => {
            app.edit(|s| s.window = (s.window as i64 + d).clamp(1, W_MAX as i64) as usize)
        }
        Action::Kernel(d) => app.edit(|s| s.kernel = (s.kernel as i64 + d).clamp(1, 63) as usize),
        Action::FirstK(d) => {
            // (f/F predate the generic knob keys; kept for muscle memory.)
            let nh = app.n_heads() as i64;
            app.edit(|s| s.first_k = (s.first_k as i64 + d).clamp(1, nh) as usize)
        }
        Action::NextKnob => {
            let knobs = app.knobs();
            if knobs.is_empty() {
                app.notice = Some(format!(
                    "{} and the {} allocator have no knobs",
                    app.settings.method,
                    app.settings.effective_allocator()
                ));
            } else {
                app.ctl.knob_sel = (app.ctl.knob_sel + 1) % knobs.len();
                app.notice = Some(knob_line(knobs[app.ctl.knob_sel], &app.settings));
            }
            Vec::new()
        }
        Action::KnobStep(d) => {
            let knobs = app.knobs();
            let Some(&k) = knobs.get(app.ctl.knob_sel % knobs.len().max(1)) else {
                app.notice = Some(format!("{} has no knobs", app.settings.method));
                return Vec::new();
            };
            let Some(v) = k.stepped(&app.settings, d) else {
                app.notice = Some(format!(
                    "{} is a list: set it with --{} when starting",
                    k.name, k.flag
                ));
                return Vec::new();
            };
            let cmds = app.edit(|s| {
                // A value out of range is refused here and reported by validation.
                let _ = k.set(s, v);
            });
            app.notice = Some(knob_line(k, &app.settings));
            cmds
        }
        Action::TogglePooling => app.edit(|s| {
            s.pooling = match s.pooling {
                Pooling::Avg => Pooling::Max,
                Pooling::Max => Pooling::Avg,
            }
        }),
        Action::Reset => {
            let d = app.ctl.defaults.clone();
            app.edit(|s| *s = d)
        }
        _ => Vec::new(),
    }
}
