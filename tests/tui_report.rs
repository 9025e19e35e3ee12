//! Loading a saved report in the inspector (`I`, and `--from-report`): the report is
//! read and checked by the worker's function, its settings land in the app through
//! `update`, and they select the same keep set and generation as the run that wrote it.
//! Reports for another model file or another prompt are refused with one line.

mod common;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use kvscope::eviction::{Allocator, Settings};
use kvscope::report::{Provenance, Report, SettingsPart};
use kvscope::tui::action::Action;
use kvscope::tui::app::{update, Cmd, Popup};
use kvscope::tui::keys::map_key;
use kvscope::tui::msg::{FromWorker, ToWorker};
use kvscope::tui::{files, worker};

const SHA: &str = "5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed";

/// Settings far from the inspector's start: another method, knobs, manual budgets, pins.
fn saved_settings() -> Settings {
    let mut s = Settings {
        method: kvscope::eviction::adakv::METHOD,
        budget: 40,
        window: 6,
        kernel: 7,
        first_k: 3,
        adakv_floor: 0.5,
        layer_budgets: Some(vec![30, 44]),
        pin_keep: vec![2, 3],
        pin_evict: vec![10],
        ..common::settings()
    };
    s.allocator = None;
    s
}

/// Runs `s` on the fixture's prompt and writes the report as `e` would.
fn write_report(
    fx: &mut common::Fixture,
    s: &Settings,
    sha: &str,
    name: &str,
) -> std::path::PathBuf {
    fx.outcome(7, s.clone());
    let prov = Provenance {
        model_sha256: Some(sha.into()),
        ..Provenance::default()
    };
    let cfg = &fx.loaded.model.config;
    let fallback = SettingsPart::new(s, Vec::new(), fx.session.max_new, &prov);
    let report = Report::new(cfg, &fx.session, &prov, fallback);
    let path = kvscope::testing::temp_dir("tui-report").join(name);
    std::fs::write(&path, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    path
}

#[test]
fn a_loaded_report_sets_its_settings_and_reselects_the_same_keep_set() {
    let mut fx = common::fixture();
    let saved = saved_settings();
    let original = fx.outcome(3, saved.clone());
    let path = write_report(&mut fx, &saved, SHA, "kvscope-report-1.json");
    let mut app = common::ready_app(&mut fx);
    assert_ne!(app.settings.method, saved.method);

    // I -> the loop lists the reports -> pick one -> the worker is asked for it.
    let i = map_key(&app, KeyEvent::new(KeyCode::Char('I'), KeyModifiers::NONE)).unwrap();
    let cmds = update(&mut app, i);
    assert_eq!(cmds, vec![Cmd::ListReports]);
    let dir = path.parent().unwrap();
    let names = files::list_reports(dir);
    assert_eq!(names, vec!["kvscope-report-1.json".to_string()]);
    update(&mut app, Action::ReportNames(names));
    assert!(matches!(app.popup, Some(Popup::ReportList { .. })));
    let cmds = update(&mut app, Action::Confirm);
    assert_eq!(cmds, vec![Cmd::LoadReport("kvscope-report-1.json".into())]);

    // The worker's answer, computed by the function the worker calls.
    let dims = fx.loaded.model.config.dims();
    let (settings, note) = worker::report_settings(&path, Some(SHA), &fx.session, &dims).unwrap();
    assert!(note.contains("kvscope-report-1.json"), "{note}");
    let cmds = update(
        &mut app,
        Action::Worker(FromWorker::ReportLoaded {
            settings: Box::new(settings.clone()),
            note,
        }),
    );
    assert_eq!(cmds, vec![Cmd::SettingsChanged]);
    assert_eq!(app.settings, settings);
    assert!(app.error.is_none(), "{:?}", app.error);
    // Every field the report recorded is back: method, budget, window, kernel, first_k,
    // adakv_floor, manual budgets, pins, and every other knob in force.
    let part = |s: &Settings| SettingsPart::new(s, Vec::new(), 12, &Provenance::default());
    assert_eq!(part(&app.settings), part(&saved));
    assert_eq!(app.settings.effective_allocator(), Allocator::Manual);
    assert_eq!(app.settings.layer_budgets, Some(vec![30, 44]));
    let Some(ToWorker::Apply {
        gen,
        settings: sent,
    }) = app.flush()
    else {
        panic!("the loaded settings must be sent")
    };
    assert_eq!(sent, app.settings);
    let again = fx.outcome(gen, sent);
    assert_eq!(again.keep, original.keep);
    assert_eq!(again.ids, original.ids);
}

#[test]
fn a_report_for_another_model_or_prompt_is_refused_with_one_line() {
    let mut fx = common::fixture();
    let path = write_report(&mut fx, &saved_settings(), SHA, "kvscope-report-2.json");
    let dims = fx.loaded.model.config.dims();
    let other = "a".repeat(64);
    let err = worker::report_settings(&path, Some(&other), &fx.session, &dims)
        .map(|_| ())
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("not loaded") && msg.contains("sha256") && !msg.contains('\n'),
        "{msg}"
    );

    // Another prompt: the fixture's session on a longer text.
    let text = fx
        .loaded
        .tok
        .apply_template(&format!("{} And one more line.", common::PROMPT), false);
    let other_prompt =
        kvscope::session::Session::new(&fx.loaded, text, 12, None, &mut |_, _| {}).unwrap();
    let err = worker::report_settings(&path, Some(SHA), &other_prompt, &dims)
        .map(|_| ())
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("not loaded") && msg.contains("first difference at token"),
        "{msg}"
    );

    // Through the app: the worker's Error lands as one error line; settings unchanged.
    let mut app = common::ready_app(&mut fx);
    let before = app.settings.clone();
    update(&mut app, Action::Worker(FromWorker::Error(msg.clone())));
    assert_eq!(app.settings, before);
    assert_eq!(app.error.as_deref(), Some(msg.as_str()));

    // Not a report at all.
    let junk = path.with_file_name("kvscope-report-3.json");
    std::fs::write(&junk, "{\"x\": 1}").unwrap();
    let msg = format!(
        "{:#}",
        worker::report_settings(&junk, Some(SHA), &fx.session, &dims)
            .map(|_| ())
            .unwrap_err()
    );
    assert!(msg.contains("is not a kvscope report"), "{msg}");
    // Newest first.
    assert_eq!(
        files::list_reports(path.parent().unwrap()),
        vec!["kvscope-report-3.json", "kvscope-report-2.json"]
    );
}

#[test]
fn no_exported_report_is_a_notice() {
    let mut fx = common::fixture();
    let mut app = common::ready_app(&mut fx);
    update(&mut app, Action::ReportNames(Vec::new()));
    assert!(app.popup.is_none());
    assert!(app
        .notice
        .as_deref()
        .unwrap_or("")
        .contains("--from-report"));
}

/// `kvscope PROMPT --from-report FILE`: the report's settings, --max-new, prompt flags
/// and profile replace the flags, and the worker is told which model and prompt ids to
/// insist on.
#[test]
fn from_report_opens_the_inspector_with_the_reports_settings() {
    use clap::Parser;
    use kvscope::cli::Cli;
    let mut fx = common::fixture();
    let saved = saved_settings();
    let path = write_report(&mut fx, &saved, SHA, "kvscope-report-4.json");
    let p = path.display().to_string();
    let cli =
        Cli::try_parse_from(["kvscope", "x.txt", "--from-report", &p, "--budget", "99"]).unwrap();
    let o = kvscope::cli::tui::options(&cli.tui).unwrap();
    let part = |s: &Settings| SettingsPart::new(s, Vec::new(), 12, &Provenance::default());
    assert_eq!(part(&o.settings), part(&saved));
    assert_eq!(o.max_new, fx.session.max_new);
    assert_eq!(
        o.expect,
        Some((Some(SHA.to_string()), fx.session.trace.ids.clone()))
    );
    let cli = Cli::try_parse_from(["kvscope", "--from-report", &p]).unwrap();
    let err = kvscope::cli::tui::options(&cli.tui)
        .map(|_| ())
        .unwrap_err();
    assert!(err.to_string().contains("needs the prompt file"), "{err}");
}

/// Issue 22 item 17: a long reason (a bad report loaded with `I`) is wrapped below the
/// status line, readable whole at 80 columns instead of cut mid-word.
#[test]
fn a_long_reason_is_readable_at_80_columns() {
    let mut fx = common::fixture();
    let mut app = common::ready_app(&mut fx);
    let junk = kvscope::testing::temp_dir("tui-long-reason").join("kvscope-report-9.json");
    std::fs::write(&junk, "{\"x\": 1}").unwrap();
    let dims = fx.loaded.model.config.dims();
    let msg = format!(
        "{:#}",
        worker::report_settings(&junk, Some(SHA), &fx.session, &dims)
            .map(|_| ())
            .unwrap_err()
    );
    assert!(msg.len() > 80, "{msg}");
    update(&mut app, Action::Worker(FromWorker::Error(msg.clone())));
    for (w, h) in [(80u16, 24u16), (160, 45)] {
        let mut t = ratatui::Terminal::new(ratatui::backend::TestBackend::new(w, h)).unwrap();
        t.draw(|f| kvscope::tui::ui::draw(f, &app)).unwrap();
        let buf = t.backend().buffer().clone();
        let rows: Vec<String> = (0..h)
            .map(|y| (0..w).map(|x| buf[(x, y)].symbol().to_string()).collect())
            .collect();
        // Every character of the reason is on screen, in order, across the wrapped
        // rows (a path longer than a row is broken inside it; spaces aside).
        let squeeze = |t: &str| t.split_whitespace().collect::<String>();
        let found = squeeze(&rows.concat()).contains(&squeeze(&msg));
        assert!(
            found,
            "reason not readable whole at {w}x{h}:\n{}",
            rows.join("\n")
        );
    }
    let _ = std::fs::remove_dir_all(junk.parent().unwrap());
}
