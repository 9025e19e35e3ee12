//! The budget keys (`a`, `+` / `-`, `*` / `/`, `B`, loaded budget files) and the budgets
//! the panes show.

use super::{App, Cmd};
use crate::eviction::{budget, Allocator};
use crate::tui::action::Action;

/// Tokens one `+` / `-` adds to or takes from the selected layer's budget.
pub const LAYER_STEP: i64 = 16;
/// Factor of `*` (and its inverse for `/`).
pub const SCALE: f64 = 1.25;

/// Per-layer budgets as the user sees them: the manual list, else the worker's answer
/// for these very settings, else the allocation the worker's selection will make
/// ([`crate::tui::msg::Snapshot::budgets`]: the same function on the same inputs, the
/// session's profile included). Only an allocator that measures the prefilled trace
/// (cake) cannot be previewed here: until its result arrives every layer shows `B`.
pub(super) fn shown(app: &App) -> Vec<usize> {
    if let Some(list) = &app.settings.layer_budgets {
        return list.clone();
    }
    let Some(snap) = &app.snapshot else {
        return Vec::new();
    };
    if let Some(r) = app.result.as_ref().filter(|r| r.settings == app.settings) {
        return r.layer_budgets.clone();
    }
    match snap.budgets(&app.settings) {
        Ok(b) => b,
        Err(_) => budget::uniform(snap.n_layers, app.settings.budget),
    }
}

pub(super) fn on_key(app: &mut App, a: Action) -> Vec<Cmd> {
    match a {
        Action::CycleAllocator => {
            let cur = app.settings.effective_allocator();
            let all = Allocator::ALL;
            let i = all.iter().position(|&x| x == cur).unwrap_or(0);
            let next = all[(i + 1) % all.len()];
            let shown = app.budgets();
            app.edit(|s| {
                if next == Allocator::Manual {
                    // Manual starts from the budgets on screen, so nothing jumps.
                    s.layer_budgets = Some(shown);
                    s.allocator = None;
                } else {
                    s.layer_budgets = None;
                    s.allocator = Some(next);
                }
            })
        }
        Action::LayerBudget(delta) => {
            if let Some(Some(s)) = app.windows().get(app.sel_layer) {
                app.notice = Some(format!(
                    "layer {} slides over {s} positions: it keeps its last {s}, no budget to edit",
                    app.sel_layer
                ));
                return Vec::new();
            }
            let mut list = app.budgets();
            let w = app.settings.window;
            let limit = app.budget_limit();
            let Some(b) = list.get_mut(app.sel_layer) else {
                return Vec::new();
            };
            *b = step(*b, delta, w, limit.max(*b));
            app.edit(|s| {
                s.layer_budgets = Some(list);
                s.allocator = None;
            })
        }
        Action::Scale(up) => {
            let f = if up { SCALE } else { 1.0 / SCALE };
            let (w, limit) = (app.settings.window, app.budget_limit());
            let sc = |b: usize| {
                // f64 -> usize saturates; the limit keeps repeated presses from growing
                // past the prompt (a budget >= L keeps everything).
                ((b as f64 * f).round() as usize)
                    .min(limit.max(b))
                    .max(w)
                    .max(1)
            };
            app.edit(|s| match &mut s.layer_budgets {
                Some(list) => list.iter_mut().for_each(|b| *b = sc(*b)),
                None => s.budget = sc(s.budget),
            })
        }
        Action::BaseBudget(delta) => {
            let (w, limit) = (app.settings.window, app.budget_limit());
            app.edit(|s| {
                s.budget = step(s.budget, delta, w, limit.max(s.budget));
                if let Some(list) = &mut s.layer_budgets {
                    for b in list.iter_mut() {
                        *b = step(*b, delta, w, limit.max(*b));
                    }
                }
            })
        }
        Action::BudgetsLoaded { name, budgets } => {
            let n = app.n_layers();
            if app.snapshot.is_some() && budgets.len() != n {
                app.error = Some(format!(
                    "budget '{name}' has {} layers; this model has {n}",
                    budgets.len()
                ));
                return Vec::new();
            }
            app.notice = Some(format!("loaded budget '{name}'"));
            // A saved budget above the prompt keeps everything; store it as the prompt
            // length so later edits start from a number that means something.
            let budgets = match &app.snapshot {
                Some(_) => {
                    let cap = app.prompt_len().max(app.settings.window);
                    budgets.into_iter().map(|b| b.min(cap)).collect()
                }
                None => budgets,
            };
            app.edit(|s| {
                s.layer_budgets = Some(budgets);
                s.allocator = None;
            })
        }
        _ => Vec::new(),
    }
}

/// `b + delta`, at least `w` and at most `cap`, without wrapping for any `b`.
fn step(b: usize, delta: i64, w: usize, cap: usize) -> usize {
    let moved = if delta >= 0 {
        b.saturating_add(delta as usize)
    } else {
        b.saturating_sub(delta.unsigned_abs() as usize)
    };
    moved.min(cap).max(w)
}
