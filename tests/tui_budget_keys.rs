//! Budget keys in the inspector never overflow, hang or wrap (issue 14, §3): a budget
//! at or above the prompt length keeps everything, so edits stop there, and budgets
//! loaded from a file far above it come in as the prompt length.

mod common;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use kvscope::tui::action::Action;
use kvscope::tui::app::{update, App, Cmd};
use kvscope::tui::keys::map_key;

fn key(app: &mut App, code: KeyCode) -> Vec<Cmd> {
    match map_key(app, KeyEvent::new(code, KeyModifiers::NONE)) {
        Some(a) => update(app, a),
        None => Vec::new(),
    }
}

#[test]
fn scaling_up_stops_at_the_prompt_length() {
    let mut fx = common::fixture();
    let mut app = common::ready_app(&mut fx);
    let len = app.prompt_len();
    for _ in 0..200 {
        key(&mut app, KeyCode::Char('*'));
    }
    assert_eq!(app.settings.budget, len);
    // The worker computes these settings at once (no overflow, no endless loop).
    let o = fx.outcome(app.gen, app.settings.clone());
    assert!(
        o.layer_budgets.iter().all(|&b| b >= len),
        "{:?}",
        o.layer_budgets
    );
    // And back down.
    key(&mut app, KeyCode::Char('/'));
    assert!(app.settings.budget < len);
    // Manual budgets too, layer by layer.
    key(&mut app, KeyCode::Char('+'));
    for _ in 0..300 {
        key(&mut app, KeyCode::Char('*'));
        key(&mut app, KeyCode::Char('+'));
        key(&mut app, KeyCode::Char('B'));
    }
    let b = app.budgets();
    assert!(
        b.iter().all(|&x| x <= len && x >= app.settings.window),
        "{b:?}"
    );
}

#[test]
fn loaded_budgets_far_above_the_prompt_do_not_wrap() {
    let mut fx = common::fixture();
    let mut app = common::ready_app(&mut fx);
    let len = app.prompt_len();
    let n = app.budgets().len();
    update(
        &mut app,
        Action::BudgetsLoaded {
            name: "huge".into(),
            budgets: vec![usize::MAX; n],
        },
    );
    assert_eq!(app.budgets(), vec![len; n]);
    for _ in 0..5 {
        key(&mut app, KeyCode::Char('+'));
        key(&mut app, KeyCode::Char('B'));
        key(&mut app, KeyCode::Char('*'));
    }
    assert_eq!(app.budgets(), vec![len; n]);
    key(&mut app, KeyCode::Char('-'));
    let b = app.budgets();
    assert_eq!(b[app.sel_layer], len - 16, "{b:?}");
}

/// Issue 23: the budgets the UI shows for an edit before its result arrives are the ones
/// the worker then computes, error-aware included (the profile's layer errors reach the
/// UI with the snapshot instead of being swapped for uniform there).
#[test]
fn previewed_budgets_match_the_workers_error_aware_allocation() {
    use kvscope::eviction::Allocator;
    let mut fx = common::fixture_with(Some(common::tiny_profile()));
    let mut app = common::ready_app(&mut fx);
    while app.settings.effective_allocator() != Allocator::ErrorAware {
        key(&mut app, KeyCode::Char('a'));
    }
    key(&mut app, KeyCode::Char('B'));
    assert!(app.stale(), "the edit has no result yet");
    let preview = app.budgets();
    let o = fx.outcome(app.gen, app.settings.clone());
    assert_eq!(preview, o.layer_budgets);
    // The tiny profile's errors favour layer 1, so error-aware differs from uniform.
    assert!(preview[1] > preview[0], "{preview:?}");
}
