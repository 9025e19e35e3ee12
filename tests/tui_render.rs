//! Rendering tests: the inspector drawn into ratatui's TestBackend from a fake Session
//! (tiny random model, no download) and compared with insta snapshots, for every pane
//! and for large, small and too-small terminals.

mod common;

use kvscope::tui::action::{Action, Pane};
use kvscope::tui::app::{update, App, Picker};
use kvscope::tui::msg::{FromWorker, Phase};
use kvscope::tui::ui;
use ratatui::backend::TestBackend;
use ratatui::Terminal;

fn render(app: &App, w: u16, h: u16) -> TestBackend {
    let mut t = Terminal::new(TestBackend::new(w, h)).expect("test terminal");
    t.draw(|f| ui::draw(f, app)).expect("draw");
    t.backend().clone()
}

#[test]
fn full_layout_at_160x45() {
    let mut fx = common::fixture();
    let app = common::ready_app(&mut fx);
    insta::assert_snapshot!("full_160x45", render(&app, 160, 45));
}

#[test]
fn each_pane_as_a_tab_at_80x24() {
    let mut fx = common::fixture();
    let mut app = common::ready_app(&mut fx);
    for p in Pane::ALL {
        update(&mut app, Action::Show(p));
        let name = format!("tab_80x24_{}", p.title().to_lowercase().replace(' ', "_"));
        insta::assert_snapshot!(name, render(&app, 80, 24));
    }
}

#[test]
fn stale_results_are_tagged_after_an_edit() {
    let mut fx = common::fixture();
    let mut app = common::ready_app(&mut fx);
    update(&mut app, Action::LayerBudget(16));
    assert!(app.stale());
    insta::assert_snapshot!("stale_160x45", render(&app, 160, 45));
}

#[test]
fn zoomed_attention_and_a_selected_token() {
    let mut fx = common::fixture();
    let mut app = common::ready_app(&mut fx);
    update(&mut app, Action::ZoomIn);
    update(&mut app, Action::Pan(-1));
    update(&mut app, Action::Show(Pane::Tokens));
    update(&mut app, Action::Move(kvscope::tui::action::Dir::Up));
    update(&mut app, Action::Show(Pane::HeadMap));
    update(&mut app, Action::Move(kvscope::tui::action::Dir::Down));
    insta::assert_snapshot!("zoomed_160x45", render(&app, 160, 45));
}

#[test]
fn too_small_terminals_get_a_message_never_a_panic() {
    let mut fx = common::fixture();
    let app = common::ready_app(&mut fx);
    insta::assert_snapshot!("too_small_60x20", render(&app, 60, 20));
    // Degenerate sizes must not panic either.
    for (w, h) in [(0, 0), (1, 1), (79, 24), (80, 23), (200, 3)] {
        render(&app, w, h);
    }
    // Every size between the minimum and the full layout draws.
    for w in [80, 100, 120, 159, 160, 161, 240] {
        for h in [24, 30, 44, 45, 60] {
            render(&app, w, h);
        }
    }
}

#[test]
fn help_popup_lists_every_key() {
    let mut fx = common::fixture();
    let mut app = common::ready_app(&mut fx);
    update(&mut app, Action::ToggleHelp);
    let screen = render(&app, 160, 45);
    for (k, _) in kvscope::tui::keys::HELP {
        assert!(screen.to_string().contains(k.trim()), "help lacks {k}");
    }
    insta::assert_snapshot!("help_160x45", screen);
}

#[test]
fn loading_screen_shows_prefill_progress_and_eta() {
    let mut app = App::new(
        common::settings(),
        "SmolLM2-135M-Instruct".into(),
        "needle.txt".into(),
    );
    update(
        &mut app,
        Action::Worker(FromWorker::Phase(Phase::Prefill {
            done: 512,
            total: 2048,
            eta_s: Some(3.0),
        })),
    );
    let screen = render(&app, 100, 30);
    assert!(screen
        .to_string()
        .contains("prefill 512/2048 tokens · ETA 3 s"));
    insta::assert_snapshot!("loading_100x30", screen);
}

#[test]
fn picker_lists_prompts() {
    let mut app = App::new(common::settings(), "m".into(), String::new());
    app.picker = Some(Picker {
        items: vec![
            ("sample  sample-prompts/a.txt".into(), "a.txt".into()),
            ("recent  /tmp/b.txt".into(), "/tmp/b.txt".into()),
        ],
        sel: 1,
    });
    insta::assert_snapshot!("picker_100x30", render(&app, 100, 30));
}

#[test]
fn worker_errors_show_in_the_status_line() {
    let mut fx = common::fixture();
    let mut app = common::ready_app(&mut fx);
    update(&mut app, Action::NextMethod); // snapkv -> pyramidkv
    update(&mut app, Action::NextMethod); // -> adakv
    update(&mut app, Action::NextMethod); // -> compresskv (no profile)
    let gen = app.gen;
    update(
        &mut app,
        Action::Worker(FromWorker::Failed {
            gen,
            error: "compresskv needs an offline profile".into(),
        }),
    );
    let s = render(&app, 160, 45).to_string();
    assert!(s.contains("compresskv needs an offline profile"));
    assert!(s.contains("stale"));
}

#[test]
fn compresskv_with_a_profile_marks_srhs_and_colours_by_srh_score() {
    let mut fx = common::fixture_with(Some(common::tiny_profile()));
    let start = kvscope::eviction::Settings {
        method: kvscope::eviction::compresskv::METHOD,
        ..common::settings()
    };
    let app = common::ready_app_with(&mut fx, start);
    assert_eq!(app.stat, kvscope::tui::stats::Stat::Srh);
    let r = app.result.as_ref().expect("compresskv outcome");
    // Error-aware budgets follow the profile's layer errors: layer 1 gets more.
    assert!(
        r.layer_budgets[1] > r.layer_budgets[0],
        "{:?}",
        r.layer_budgets
    );
    let screen = render(&app, 160, 45);
    let text = screen.to_string();
    assert!(text.contains("SRH score (profile)") && text.contains("S SRH (top 2/layer)"));
    insta::assert_snapshot!("compresskv_profile_160x45", screen);
}
