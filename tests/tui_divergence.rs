//! The Divergence pane and its keys (pins, range pins, rescue, A/B freeze) on the tiny
//! model: the same worker functions the inspector runs, fed through the app's update
//! function, and the pane drawn into ratatui's TestBackend.

mod common;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use kvscope::tui::action::{Action, Dir, Pane};
use kvscope::tui::app::{update, App, Cmd, RESCUE_K};
use kvscope::tui::keys::map_key;
use kvscope::tui::msg::{FromWorker, ToWorker};
use kvscope::tui::stats::Stat;
use kvscope::tui::ui;
use ratatui::backend::TestBackend;
use ratatui::Terminal;

fn key(app: &mut App, c: char) -> Vec<Cmd> {
    match map_key(app, KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)) {
        Some(a) => update(app, a),
        None => Vec::new(),
    }
}

fn render(app: &App, w: u16, h: u16) -> TestBackend {
    let mut t = Terminal::new(TestBackend::new(w, h)).expect("test terminal");
    t.draw(|f| ui::draw(f, app)).expect("draw");
    t.backend().clone()
}

/// Plays the worker: the outcome of the app's current settings, then its analysis.
fn answer(fx: &mut common::Fixture, app: &mut App) {
    let Some(ToWorker::Apply { gen, settings }) = app.flush() else {
        panic!("an edit must send its settings")
    };
    let o = fx.outcome(gen, settings);
    let view = fx.divergence(&o);
    update(app, Action::Worker(FromWorker::Result(Box::new(o))));
    update(app, Action::Worker(FromWorker::Divergence { gen, view }));
}

/// A ready app whose first result carries its divergence analysis.
fn analysed(fx: &mut common::Fixture) -> App {
    let mut app = common::ready_app(fx);
    let o = app.result.clone().expect("first result");
    let view = fx.divergence(&o);
    update(
        &mut app,
        Action::Worker(FromWorker::Divergence { gen: o.gen, view }),
    );
    app
}

#[test]
fn pin_keys_toggle_and_never_overlap() {
    let mut fx = common::fixture();
    let mut app = analysed(&mut fx);
    app.sel_token = 5;
    assert_eq!(key(&mut app, 'x'), vec![Cmd::SettingsChanged]);
    assert_eq!(app.settings.pin_keep, vec![5]);
    // Evict-pinning the same token moves it to the other list.
    key(&mut app, 'X');
    assert_eq!(
        (
            app.settings.pin_keep.clone(),
            app.settings.pin_evict.clone()
        ),
        (vec![], vec![5])
    );
    key(&mut app, 'X');
    assert!(app.settings.pin_evict.is_empty());
    // A range: mark at 2, select 4, pin 2..=4.
    app.sel_token = 2;
    assert!(key(&mut app, 'v').is_empty());
    app.sel_token = 4;
    key(&mut app, 'v');
    assert_eq!(app.settings.pin_keep, vec![2, 3, 4]);
    // The worker gets the pins with the settings, and the selection obeys them.
    answer(&mut fx, &mut app);
    let r = app.result.as_ref().expect("result");
    for heads in &r.keep {
        for k in heads {
            assert!([2, 3, 4].iter().all(|p| k.contains(p)));
        }
    }
    key(&mut app, 'U');
    assert!(app.settings.pin_keep.is_empty());
}

#[test]
fn rescue_pins_the_top_culprits_of_the_selected_step_and_reports() {
    let mut fx = common::fixture();
    let mut app = analysed(&mut fx);
    let d = app
        .result
        .as_ref()
        .and_then(|r| r.divergence.clone())
        .expect("analysis");
    let t = app.step().expect("a step");
    assert_eq!(Some(t), d.default_step);
    // Step selection in the pane.
    update(&mut app, Action::Show(Pane::Divergence));
    update(&mut app, Action::Move(Dir::Right));
    assert_eq!(app.step(), Some((t + 1).min(d.steps.len())));
    update(&mut app, Action::Move(Dir::Left));
    let t = app.step().expect("a step");
    let want: Vec<usize> = d.culprits[t - 1]
        .iter()
        .take(RESCUE_K)
        .map(|c| c.0)
        .collect();
    assert!(!want.is_empty(), "the tiny setting evicts attended tokens");
    assert_eq!(key(&mut app, 'R'), vec![Cmd::SettingsChanged]);
    let mut sorted = want.clone();
    sorted.sort_unstable();
    assert_eq!(app.settings.pin_keep, sorted);
    answer(&mut fx, &mut app);
    let note = app.notice.clone().unwrap_or_default();
    assert!(note.starts_with("rescue"), "{note}");
    assert!(
        note.contains("matches") || note.contains("still diverges"),
        "{note}"
    );
}

#[test]
fn rescue_k_is_adjustable_and_bounded() {
    let mut fx = common::fixture();
    let mut app = analysed(&mut fx);
    let d = app
        .result
        .as_ref()
        .and_then(|r| r.divergence.clone())
        .expect("analysis");
    let t = app.step().expect("a step");
    assert_eq!(app.rescue_k, RESCUE_K);
    key(&mut app, ',');
    key(&mut app, ',');
    key(&mut app, ',');
    assert_eq!(app.rescue_k, 1, "K stops at 1");
    key(&mut app, '.');
    assert_eq!(app.rescue_k, 2);
    for _ in 0..40 {
        key(&mut app, '.');
    }
    assert_eq!(app.rescue_k, 16, "K stops at the culprits kept per step");
    key(&mut app, ',');
    key(&mut app, ',');
    let k = app.rescue_k;
    let mut want: Vec<usize> = d.culprits[t - 1].iter().take(k).map(|c| c.0).collect();
    want.sort_unstable();
    assert!(
        want.len() > RESCUE_K,
        "the tiny setting has enough culprits"
    );
    key(&mut app, 'R');
    assert_eq!(app.settings.pin_keep, want);
    // The pane says what R does now.
    update(&mut app, Action::Show(Pane::Divergence));
    let b = render(&app, 160, 45);
    let text: String = b.buffer().content().iter().map(|c| c.symbol()).collect();
    assert!(text.contains(&format!("R rescue top {k}")), "pane text");
}

#[test]
fn freeze_a_then_compare_and_lost_mass_statistic() {
    let mut fx = common::fixture();
    let mut app = analysed(&mut fx);
    key(&mut app, 'A');
    assert!(app.frozen.is_some());
    key(&mut app, 'B');
    answer(&mut fx, &mut app);
    // Lost mass is offered as a head-map statistic once there is an analysis.
    let mut seen = Vec::new();
    for _ in 0..6 {
        key(&mut app, 's');
        seen.push(app.stat);
    }
    assert!(seen.contains(&Stat::LostMass));
    while app.stat != Stat::LostMass {
        key(&mut app, 's');
    }
    update(&mut app, Action::Show(Pane::Divergence));
    let full = format!("{:?}", render(&app, 160, 45));
    assert!(full.contains("7 Divergence"));
    assert!(full.contains("A snapkv B=48"), "A/B block missing");
    let tab = format!("{:?}", render(&app, 100, 30));
    assert!(
        tab.contains("A snapkv B=48") && tab.contains("B snapkv B=64"),
        "A/B block missing"
    );
    key(&mut app, 'C');
    assert!(app.frozen.is_none());
}

#[test]
fn divergence_pane_snapshots() {
    let mut fx = common::fixture();
    let mut app = analysed(&mut fx);
    update(&mut app, Action::Show(Pane::Divergence));
    insta::assert_snapshot!("divergence_tab_100x30", render(&app, 100, 30));
    update(&mut app, Action::Show(Pane::Tokens));
    app.sel_token = 3;
    key(&mut app, 'x');
    insta::assert_snapshot!("divergence_full_160x45", render(&app, 160, 45));
    // Before the analysis arrives the pane says what it waits for; tiny sizes draw.
    let mut fresh = common::ready_app(&mut fx);
    update(&mut fresh, Action::Show(Pane::Divergence));
    assert!(format!("{:?}", render(&fresh, 100, 30)).contains("teacher-forcing"));
    for (w, h) in [(80, 24), (81, 25), (120, 30), (159, 44)] {
        render(&app, w, h);
    }
}

/// `E` asks the worker for the attention-output errors of the result on screen; they
/// show under the lost-mass grid (a full-cache replay, so not done on every edit).
#[test]
fn e_measures_the_attention_output_error_per_layer() {
    let mut fx = common::fixture();
    let mut app = analysed(&mut fx);
    let gen = app.result.as_ref().expect("result").gen;
    update(&mut app, Action::Show(Pane::Divergence));
    let text = |app: &App| -> String {
        let b = render(app, 160, 45);
        b.buffer().content().iter().map(|c| c.symbol()).collect()
    };
    assert!(text(&app).contains("E: out err/layer"));
    assert_eq!(key(&mut app, 'E'), vec![Cmd::MeasureErrors(gen)]);
    let errors = fx.attn_errors(&app.result.clone().expect("result"));
    let t = app.step().expect("a step");
    let want = errors[t - 1][app.sel_layer];
    let max = errors[t - 1].iter().copied().fold(0.0f32, f32::max);
    assert!(max > 0.0, "the tiny setting evicts something");
    // An answer for another generation is ignored.
    update(
        &mut app,
        Action::Worker(FromWorker::AttnErrors {
            gen: gen + 1,
            errors: errors.clone(),
        }),
    );
    assert!(text(&app).contains("E: out err/layer"));
    update(
        &mut app,
        Action::Worker(FromWorker::AttnErrors { gen, errors }),
    );
    let shown = text(&app);
    assert!(
        shown.contains(&format!("out err L{} {want:.3}", app.sel_layer)),
        "pane text"
    );
    assert!(
        shown.contains(&format!("out err max {max:.3}")),
        "pane text"
    );
}
