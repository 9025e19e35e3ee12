//! Key handling through the app's update function: keys -> actions -> state and the
//! commands the loop must carry out. No terminal, no worker thread.

mod common;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use kvscope::eviction::{Allocator, Method};
use kvscope::tui::action::{Action, Dir, Pane};
use kvscope::tui::app::{update, App, Cmd, Picker, Popup};
use kvscope::tui::keys::map_key;
use kvscope::tui::msg::{FromWorker, ToWorker};

fn key(app: &mut App, code: KeyCode) -> Vec<Cmd> {
    key_mod(app, code, KeyModifiers::NONE)
}

fn key_mod(app: &mut App, code: KeyCode, m: KeyModifiers) -> Vec<Cmd> {
    match map_key(app, KeyEvent::new(code, m)) {
        Some(a) => update(app, a),
        None => Vec::new(),
    }
}

#[test]
fn a_layer_budget_key_goes_manual_marks_stale_and_flushes_once() {
    let mut fx = common::fixture();
    let mut app = common::ready_app(&mut fx);
    let before = app.budgets();
    assert!(!app.stale() && !app.pending());
    key(&mut app, KeyCode::Right); // layer 1
    assert_eq!(app.sel_layer, 1);
    let cmds = key(&mut app, KeyCode::Char('+'));
    assert_eq!(cmds, vec![Cmd::SettingsChanged]);
    assert_eq!(app.settings.effective_allocator(), Allocator::Manual);
    let after = app.budgets();
    assert_eq!(after[1], before[1] + 16);
    assert_eq!(after[0], before[0]);
    assert!(app.stale() && app.pending());
    // Several edits, one request carrying the last settings.
    key(&mut app, KeyCode::Char('-'));
    key(&mut app, KeyCode::Char('-'));
    let Some(ToWorker::Apply { gen, settings }) = app.flush() else {
        panic!("flush must send the settings")
    };
    assert_eq!(gen, app.gen);
    assert_eq!(settings.layer_budgets.as_ref().unwrap()[1], before[1] - 16);
    assert!(app.flush().is_none(), "sent once");
}

#[test]
fn results_of_other_generations_never_replace_fresher_ones() {
    let mut fx = common::fixture();
    let mut app = common::ready_app(&mut fx);
    key(&mut app, KeyCode::Char('*')); // gen 1
    key(&mut app, KeyCode::Char('*')); // gen 2
    assert_eq!(app.gen, 2);
    let s2 = app.settings.clone();
    let o2 = fx.outcome(2, s2);
    update(&mut app, Action::Worker(FromWorker::Result(Box::new(o2))));
    assert!(!app.stale());
    // A late answer for gen 1 arrives after gen 2's: dropped.
    let o1 = fx.outcome(1, common::settings());
    update(&mut app, Action::Worker(FromWorker::Result(Box::new(o1))));
    assert_eq!(app.result.as_ref().unwrap().gen, 2);
    // An answer for a generation newer than the app's is impossible: dropped too.
    let o9 = fx.outcome(9, common::settings());
    update(&mut app, Action::Worker(FromWorker::Result(Box::new(o9))));
    assert_eq!(app.result.as_ref().unwrap().gen, 2);
}

#[test]
fn method_allocator_and_knob_keys() {
    let mut fx = common::fixture();
    let mut app = common::ready_app(&mut fx);
    assert_eq!(app.settings.method, Method::SnapKv);
    key(&mut app, KeyCode::Char('m'));
    assert_eq!(app.settings.method, Method::PyramidKv);
    key(&mut app, KeyCode::Char('M'));
    key(&mut app, KeyCode::Char('M'));
    assert_eq!(app.settings.method, Method::H2o);
    let shown = app.budgets();
    for want in [Allocator::Pyramid, Allocator::ErrorAware, Allocator::Manual] {
        key(&mut app, KeyCode::Char('a'));
        assert_eq!(app.settings.effective_allocator(), want);
    }
    // Manual starts from the budgets on screen (error-aware without a profile = uniform).
    assert_eq!(app.budgets(), shown);
    // Then every further registered allocator (cake's), then round to uniform.
    for &want in &Allocator::ALL[4..] {
        key(&mut app, KeyCode::Char('a'));
        assert_eq!(app.settings.effective_allocator(), want);
    }
    key(&mut app, KeyCode::Char('a'));
    assert_eq!(app.settings.effective_allocator(), Allocator::Uniform);
    key(&mut app, KeyCode::Char('W'));
    assert_eq!(app.settings.window, 5);
    key(&mut app, KeyCode::Char('K'));
    assert_eq!(app.settings.kernel, 5);
    key(&mut app, KeyCode::Char('F'));
    assert_eq!(app.settings.first_k, 3);
    key(&mut app, KeyCode::Char('p'));
    assert_eq!(app.settings.pooling.name(), "max");
    key(&mut app, KeyCode::Char('B'));
    assert_eq!(app.settings.budget, 64);
    key(&mut app, KeyCode::Char('r'));
    assert_eq!(app.settings, common::settings());
}

/// `o` selects the next knob of the method and allocator in force (from the registry),
/// `<` / `>` step it; the status line says name, value and range.
#[test]
fn registry_knob_keys_step_the_selected_knob() {
    let mut fx = common::fixture();
    let mut app = common::ready_app(&mut fx);
    assert_eq!(app.settings.method, Method::SnapKv);
    assert_eq!(app.settings.kernel, 3);
    key(&mut app, KeyCode::Char('>'));
    assert_eq!(app.settings.kernel, 5);
    assert!(app
        .notice
        .as_deref()
        .unwrap_or("")
        .starts_with("kernel = 5"));
    key(&mut app, KeyCode::Char('o'));
    key(&mut app, KeyCode::Char('>'));
    assert_eq!(app.settings.pooling.name(), "max");
    key(&mut app, KeyCode::Char('m'));
    key(&mut app, KeyCode::Char('m'));
    assert_eq!(app.settings.method, Method::AdaKv);
    key(&mut app, KeyCode::Char('o'));
    key(&mut app, KeyCode::Char('>'));
    assert!((app.settings.adakv_floor - 0.25).abs() < 1e-6);
    let n = app.notice.clone().unwrap_or_default();
    assert!(n.starts_with("adakv_floor = 0.25 (>=0, <=1)"), "{n}");
    // Out of range is refused by validation, with the range in the message.
    for _ in 0..20 {
        key(&mut app, KeyCode::Char('>'));
    }
    assert_eq!(app.settings.adakv_floor, 1.0);
    // A knob stored by name (cake's gamma) steps the same way.
    let cake = Method::named("cake").unwrap();
    while app.settings.method != cake {
        key(&mut app, KeyCode::Char('m'));
    }
    while !app
        .notice
        .as_deref()
        .unwrap_or("")
        .starts_with("cake_gamma")
    {
        key(&mut app, KeyCode::Char('o'));
    }
    key(&mut app, KeyCode::Char('<'));
    assert_eq!(app.settings.knob_f64("cake_gamma"), 190.0);
}

#[test]
fn invalid_settings_are_refused_with_a_reason() {
    let mut fx = common::fixture();
    let mut app = common::ready_app(&mut fx);
    let gen = app.gen;
    // first_k is clamped to the head count; the window cannot pass the budget.
    for _ in 0..10 {
        key(&mut app, KeyCode::Char('F'));
    }
    assert_eq!(app.settings.first_k, 4);
    for _ in 0..100 {
        key(&mut app, KeyCode::Char('W'));
    }
    assert!(app.settings.window <= app.settings.budget);
    assert!(app.error.as_deref().unwrap_or("").contains("window"));
    for _ in 0..20 {
        key(&mut app, KeyCode::Char('/'));
    }
    assert!(app.settings.budget >= app.settings.window);
    assert!(app.gen > gen);
}

#[test]
fn selection_moves_stay_in_range() {
    let mut fx = common::fixture();
    let mut app = common::ready_app(&mut fx);
    for _ in 0..50 {
        key(&mut app, KeyCode::Right);
        key(&mut app, KeyCode::Down);
    }
    assert_eq!((app.sel_layer, app.sel_head), (1, 3));
    for _ in 0..50 {
        key(&mut app, KeyCode::Left);
        key(&mut app, KeyCode::Up);
    }
    assert_eq!((app.sel_layer, app.sel_head), (0, 0));
    update(&mut app, Action::Show(Pane::Tokens));
    let last = app.prompt_len() - 1;
    for _ in 0..20 {
        key(&mut app, KeyCode::Right);
    }
    assert_eq!(app.sel_token, last);
    key(&mut app, KeyCode::Up);
    assert_eq!(app.sel_token, last - 16);
    key(&mut app, KeyCode::PageUp);
    assert_eq!(app.sel_token, last - 16 - 128.min(last - 16));
    // Attention: zoom and pan stay inside the prompt.
    key(&mut app, KeyCode::Tab);
    assert_eq!(app.focus, Pane::Divergence);
    key(&mut app, KeyCode::Tab);
    assert_eq!(app.focus, Pane::HeadMap);
    update(&mut app, Action::Show(Pane::Attention));
    let len = app.prompt_len();
    for _ in 0..10 {
        key(&mut app, KeyCode::Up); // zoom in
    }
    assert!(app.view_len >= 16 && app.view_len < len);
    for _ in 0..100 {
        key(&mut app, KeyCode::Right);
    }
    assert_eq!(app.view_start + app.view_len, len);
    for _ in 0..10 {
        key(&mut app, KeyCode::Char('Z'));
    }
    assert_eq!((app.view_start, app.view_len), (0, 0));
}

#[test]
fn quit_works_everywhere_and_popups_capture_typing() {
    let mut fx = common::fixture();
    let mut app = common::ready_app(&mut fx);
    key(&mut app, KeyCode::Char('S'));
    assert_eq!(app.popup, Some(Popup::SaveName(String::new())));
    for c in "q-tune".chars() {
        key(&mut app, KeyCode::Char(c));
    }
    assert!(!app.quit, "q is text in the name prompt");
    key(&mut app, KeyCode::Backspace);
    let cmds = key(&mut app, KeyCode::Enter);
    assert_eq!(
        cmds,
        vec![Cmd::SaveBudgets {
            name: "q-tun".into(),
            budgets: app.budgets()
        }]
    );
    key(&mut app, KeyCode::Char('?'));
    assert_eq!(app.popup, Some(Popup::Help));
    key(&mut app, KeyCode::Char('x'));
    assert_eq!(app.popup, None);
    key(&mut app, KeyCode::Char('S'));
    key_mod(&mut app, KeyCode::Char('c'), KeyModifiers::CONTROL);
    assert!(app.quit, "Ctrl-C quits even while typing");
    // q before anything is loaded.
    let mut fresh = App::new(common::settings(), "m".into(), "p".into());
    key(&mut fresh, KeyCode::Char('q'));
    assert!(fresh.quit);
}

#[test]
fn saved_budgets_load_through_the_list() {
    let mut fx = common::fixture();
    let mut app = common::ready_app(&mut fx);
    assert_eq!(key(&mut app, KeyCode::Char('L')), vec![Cmd::ListBudgets]);
    update(&mut app, Action::BudgetNames(vec!["a".into(), "b".into()]));
    key(&mut app, KeyCode::Down);
    assert_eq!(
        key(&mut app, KeyCode::Enter),
        vec![Cmd::LoadBudgets("b".into())]
    );
    let cmds = update(
        &mut app,
        Action::BudgetsLoaded {
            name: "b".into(),
            budgets: vec![20, 30],
        },
    );
    assert_eq!(cmds, vec![Cmd::SettingsChanged]);
    assert_eq!(app.budgets(), vec![20, 30]);
    // A file for another model is refused.
    update(
        &mut app,
        Action::BudgetsLoaded {
            name: "c".into(),
            budgets: vec![20, 30, 40],
        },
    );
    assert!(app.error.as_deref().unwrap().contains("3 layers"));
    assert_eq!(app.budgets(), vec![20, 30]);
}

#[test]
fn export_flushes_first_and_picker_opens_a_prompt() {
    let mut fresh = App::new(common::settings(), "m".into(), "p".into());
    assert!(key(&mut fresh, KeyCode::Char('e')).is_empty());
    assert!(fresh.error.is_some());
    let mut fx = common::fixture();
    let mut app = common::ready_app(&mut fx);
    assert_eq!(
        key(&mut app, KeyCode::Char('e')),
        vec![Cmd::FlushNow, Cmd::ExportReport]
    );
    let mut p = App::new(common::settings(), "m".into(), String::new());
    p.picker = Some(Picker {
        items: vec![("a".into(), "a.txt".into()), ("b".into(), "b.txt".into())],
        sel: 0,
    });
    key(&mut p, KeyCode::Down);
    assert_eq!(
        key(&mut p, KeyCode::Enter),
        vec![Cmd::OpenPrompt("b.txt".into())]
    );
    let _ = Dir::Up;
}

#[test]
fn statistic_cycles_through_the_live_ones_without_a_profile() {
    let mut fx = common::fixture();
    let mut app = common::ready_app(&mut fx);
    let mut seen = vec![app.stat];
    for _ in 0..4 {
        key(&mut app, KeyCode::Char('s'));
        seen.push(app.stat);
    }
    assert_eq!(seen.first(), seen.last());
    assert!(!seen.contains(&kvscope::tui::stats::Stat::Srh));
}

#[test]
fn background_messages_land_while_a_popup_is_open() {
    let mut fx = common::fixture();
    let mut app = common::ready_app(&mut fx);
    for open in [KeyCode::Char('?'), KeyCode::Char('S')] {
        key(&mut app, open);
        let popup = app.popup.clone();
        assert!(popup.is_some());
        update(&mut app, Action::Rss(7));
        update(&mut app, Action::Worker(FromWorker::Notice("hi".into())));
        update(&mut app, Action::Error("bad".into()));
        assert_eq!(app.popup, popup, "the popup stays open");
        assert_eq!(app.rss_bytes, Some(7));
        assert_eq!(app.notice.as_deref(), Some("hi"));
        key(&mut app, KeyCode::Esc);
        assert_eq!(app.popup, None);
    }
    update(&mut app, Action::BudgetNames(vec!["x".into()]));
    update(&mut app, Action::Rss(8));
    assert!(matches!(app.popup, Some(Popup::LoadList { .. })));
}

/// Started without --method and --profile, the inspector switches to compresskv when the
/// worker reports a profile it found, and says so; with an explicit method, or after an
/// edit, it keeps what it has; without a profile it stays on snapkv.
#[test]
fn a_found_profile_makes_compresskv_the_start_method_unless_the_user_chose() {
    let fx = common::fixture_with(Some(common::tiny_profile()));
    let snapkv = kvscope::eviction::Settings {
        method: Method::SnapKv,
        ..common::settings()
    };
    let ready = |app: &mut App, fx: &common::Fixture| {
        update(
            app,
            Action::Worker(FromWorker::Ready(Box::new(fx.snapshot.clone()))),
        )
    };
    let mut open = App::new(snapkv.clone(), "m".into(), "p".into());
    open.ctl.prefer_compresskv = true;
    ready(&mut open, &fx);
    assert_eq!(open.settings.method, Method::CompressKv);
    assert!(open.notice.as_deref().unwrap_or("").contains("compresskv"));
    match open.flush() {
        Some(ToWorker::Apply { settings, .. }) => assert_eq!(settings.method, Method::CompressKv),
        other => panic!("expected the first apply, got {other:?}"),
    }

    let mut chosen = App::new(snapkv.clone(), "m".into(), "p".into());
    ready(&mut chosen, &fx);
    assert_eq!(
        chosen.settings.method,
        Method::SnapKv,
        "an explicit method stays"
    );

    let mut no_profile = App::new(snapkv, "m".into(), "p".into());
    no_profile.ctl.prefer_compresskv = true;
    let plain = common::fixture();
    ready(&mut no_profile, &plain);
    assert_eq!(no_profile.settings.method, Method::SnapKv);
}

/// On a model with sliding-window layers the knob keys also reach `evict_sliding`, a
/// switch that `<` / `>` flip; without such layers it is not offered.
#[test]
fn evict_sliding_is_a_knob_only_with_sliding_layers() {
    let mut fx = common::fixture();
    let mut app = common::ready_app(&mut fx);
    let names = |app: &App| app.knobs().iter().map(|k| k.name).collect::<Vec<_>>();
    assert!(!names(&app).contains(&"evict_sliding"));
    let snap = app.snapshot.as_mut().expect("snapshot");
    let n = snap.n_layers;
    snap.windows = (0..n).map(|l| (l % 2 == 0).then_some(4)).collect();
    assert!(names(&app).contains(&"evict_sliding"));
    for _ in 0..names(&app).len() {
        key(&mut app, KeyCode::Char('o'));
        if app
            .notice
            .as_deref()
            .unwrap_or("")
            .starts_with("evict_sliding")
        {
            break;
        }
    }
    let n = app.notice.clone().unwrap_or_default();
    assert!(n.starts_with("evict_sliding"), "{n}");
    assert!(!app.settings.knob_bool("evict_sliding"));
    let cmds = key(&mut app, KeyCode::Char('>'));
    assert!(app.settings.knob_bool("evict_sliding"));
    assert!(!cmds.is_empty(), "the edit is sent to the worker");
    key(&mut app, KeyCode::Char('<'));
    assert!(!app.settings.knob_bool("evict_sliding"));
}
