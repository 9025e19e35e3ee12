//! Finding your way in the prompt (issue 24 item 3): `/` search with `n` / `N`, and `j` /
//! `J` through the evicted tokens by attention lost, through the real key handling.

mod common;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use kvscope::tui::action::{Action, Pane};
use kvscope::tui::app::{lost_order, matches, update, App, Cmd};
use kvscope::tui::keys::map_key;
use kvscope::tui::msg::FromWorker;

fn key(app: &mut App, code: KeyCode) -> Vec<Cmd> {
    match map_key(app, KeyEvent::new(code, KeyModifiers::NONE)) {
        Some(a) => update(app, a),
        None => Vec::new(),
    }
}

fn type_text(app: &mut App, s: &str) {
    for c in s.chars() {
        key(app, KeyCode::Char(c));
    }
}

#[test]
fn matches_cross_token_boundaries_and_ignore_case() {
    let toks: Vec<String> = ["The", " co", "de is", " 74", "21.", " Code"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(matches(&toks, "code"), vec![1, 5]);
    assert_eq!(matches(&toks, "7421"), vec![3]);
    assert_eq!(matches(&toks, "e"), vec![0, 2, 5], "one hit per token");
    assert!(matches(&toks, "lamp").is_empty());
    assert!(matches(&toks, "").is_empty());
}

#[test]
fn slash_searches_the_prompt_and_n_steps_through_the_matches() {
    let mut fx = common::fixture();
    let mut app = common::ready_app(&mut fx);
    // Outside the token pane `/` still scales the budgets.
    let b = app.settings.budget;
    key(&mut app, KeyCode::Char('/'));
    assert!(app.settings.budget < b);
    update(&mut app, Action::Show(Pane::Tokens));
    app.sel_token = 0;
    key(&mut app, KeyCode::Char('/'));
    // Letters are text in the prompt (`n`, `q`, `j` included).
    type_text(&mut app, "code");
    key(&mut app, KeyCode::Enter);
    assert!(app.popup.is_none());
    let s = app.search.clone().expect("a search");
    let toks = &app.snapshot.as_ref().unwrap().prompt_tokens;
    assert_eq!(s.hits, matches(toks, "code"));
    assert_eq!(s.hits.len(), 3, "the prompt says code three times");
    assert_eq!(app.sel_token, s.hits[0]);
    assert!(app.notice.as_deref().unwrap().contains("match 1 of 3"));
    key(&mut app, KeyCode::Char('n'));
    assert_eq!(app.sel_token, s.hits[1]);
    assert!(app.notice.as_deref().unwrap().contains("match 2 of 3"));
    key(&mut app, KeyCode::Char('N'));
    key(&mut app, KeyCode::Char('N'));
    assert_eq!(app.sel_token, s.hits[2], "N wraps to the last match");
    // A search that finds nothing says so and leaves the cursor.
    key(&mut app, KeyCode::Char('/'));
    for _ in 0..4 {
        key(&mut app, KeyCode::Backspace);
    }
    type_text(&mut app, "zebra");
    key(&mut app, KeyCode::Enter);
    assert_eq!(app.sel_token, s.hits[2]);
    assert!(app.notice.as_deref().unwrap().contains("not in the prompt"));
}

#[test]
fn j_steps_through_the_evicted_tokens_by_attention_lost() {
    let mut fx = common::fixture();
    let mut app = common::ready_app(&mut fx);
    update(&mut app, Action::Show(Pane::Tokens));
    key(&mut app, KeyCode::Char('j'));
    assert!(
        app.notice.as_deref().unwrap().contains("no evicted token"),
        "before the analysis arrives"
    );
    let o = app.result.clone().expect("first result");
    let view = fx.divergence(&o);
    let order = lost_order(&view);
    assert!(
        order.len() >= 2,
        "the tiny prompt loses attention: {order:?}"
    );
    assert!(order.windows(2).all(|w| w[0].1 >= w[1].1));
    update(
        &mut app,
        Action::Worker(FromWorker::Divergence { gen: o.gen, view }),
    );
    // The map zoomed in: a jump centres its key range on the token.
    update(&mut app, Action::ZoomIn);
    key(&mut app, KeyCode::Char('j'));
    assert_eq!(app.sel_token, order[0].0);
    let keep = &o.keep;
    assert!(
        keep.iter().flatten().any(|h| !h.contains(&order[0].0)),
        "the token is evicted somewhere"
    );
    assert!(app.view_start <= order[0].0 && order[0].0 < app.view_start + app.view_len);
    key(&mut app, KeyCode::Char('j'));
    assert_eq!(app.sel_token, order[1].0);
    key(&mut app, KeyCode::Char('J'));
    key(&mut app, KeyCode::Char('J'));
    assert_eq!(app.sel_token, order[order.len() - 1].0, "J wraps");
}

#[test]
fn the_answer_sidecar_is_read_from_the_json_or_the_answer_file() {
    let dir = kvscope::testing::temp_dir("answer-sidecar");
    let p = dir.join("a.txt");
    std::fs::write(&p, "prompt").unwrap();
    assert!(kvscope::tui::files::answer_sidecar(&p).is_none());
    std::fs::write(dir.join("a.answer"), "48217\nmore\n").unwrap();
    let (a, from) = kvscope::tui::files::answer_sidecar(&p).unwrap();
    assert_eq!((a.as_str(), from), ("48217", dir.join("a.answer")));
    // The JSON sidecar wins; one without an answer falls back to the .answer file.
    std::fs::write(dir.join("a.json"), r#"{"kind": "needle"}"#).unwrap();
    assert_eq!(kvscope::tui::files::answer_sidecar(&p).unwrap().0, "48217");
    std::fs::write(dir.join("a.json"), r#"{"answer": " 7421 "}"#).unwrap();
    let (a, from) = kvscope::tui::files::answer_sidecar(&p).unwrap();
    assert_eq!((a.as_str(), from), ("7421", dir.join("a.json")));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn g_jumps_to_the_answer_span_and_to_a_span_marked_with_capital_g() {
    let mut fx = common::fixture();
    let mut app = common::ready_app(&mut fx);
    key(&mut app, KeyCode::Char('6'));
    // No sidecar, no mark: g says how to get one and moves nothing.
    let before = app.sel_token;
    key(&mut app, KeyCode::Char('g'));
    assert_eq!(app.sel_token, before);
    assert!(app.notice.as_deref().unwrap().contains("G marks one"));
    app.answer = Some(("7421".into(), "tiny.json".into()));
    let spans = kvscope::tui::app::match_spans(&fx.snapshot.prompt_tokens, "7421");
    assert_eq!(spans.len(), 1);
    let (a, b) = spans[0];
    let text: String = fx.snapshot.prompt_tokens[a..=b].concat();
    assert!(text.contains("7421"), "{text:?}");
    app.sel_token = 0;
    key(&mut app, KeyCode::Char('g'));
    assert_eq!(app.sel_token, a);
    // G at two tokens marks a span (either order); g then visits it after the answer.
    app.sel_token = 20;
    key(&mut app, KeyCode::Char('G'));
    app.sel_token = 12;
    key(&mut app, KeyCode::Char('G'));
    assert_eq!(app.span, Some((12, 20)));
    key(&mut app, KeyCode::Char('g'));
    assert_eq!(app.sel_token, a);
    key(&mut app, KeyCode::Char('g'));
    assert_eq!(app.sel_token, 12);
    assert!(app.notice.as_deref().unwrap().contains("marked span"));
    key(&mut app, KeyCode::Char('g'));
    assert_eq!(app.sel_token, a, "wraps");
}

#[test]
fn t_zooms_the_map_to_one_token_per_cell_at_the_cursor_and_back() {
    let mut fx = common::fixture();
    let mut app = common::ready_app(&mut fx);
    let len = app.prompt_len();
    assert!(
        len > 64,
        "the fixture prompt must be longer than the token zoom"
    );
    app.sel_token = 100;
    key(&mut app, KeyCode::Char('T'));
    assert_eq!(app.view_len, 64);
    assert!(app.view_start <= 100 && 100 < app.view_start + 64);
    // A jump while token-zoomed keeps the cursor in view.
    app.answer = Some(("7421".into(), "tiny.json".into()));
    key(&mut app, KeyCode::Char('6'));
    key(&mut app, KeyCode::Char('g'));
    assert!(app.view_start <= app.sel_token && app.sel_token < app.view_start + 64);
    key(&mut app, KeyCode::Char('T'));
    assert_eq!(
        (app.view_start, app.view_len),
        (0, 0),
        "back to the whole prompt"
    );
}

fn screen(app: &App) -> String {
    let mut t = ratatui::Terminal::new(ratatui::backend::TestBackend::new(160, 45)).unwrap();
    t.draw(|f| kvscope::tui::ui::draw(f, app)).unwrap();
    let b = t.backend().buffer();
    (0..b.area.height)
        .map(|y| {
            (0..b.area.width)
                .map(|x| b[(x, y)].symbol())
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Above 256 tokens a block holds several tokens: `T` asks the worker for the exact
/// attention of the 64 query rows ending at the key range's end, draws block means
/// (labelled) until it arrives and the exact rows after; a pan asks again.
#[test]
fn a_token_zoom_asks_for_and_shows_the_exact_rows() {
    let mut fx = common::fixture_text(&common::PROMPT.repeat(3), None);
    let mut app = common::ready_app(&mut fx);
    let len = app.prompt_len();
    assert!(len > 256, "prompt of {len} tokens");
    key(&mut app, KeyCode::Char('6'));
    app.sel_token = 200;
    let cmds = key(&mut app, KeyCode::Char('T'));
    let (ks, ke) = (app.view_start, app.view_start + app.view_len);
    let want = Cmd::ZoomRows {
        layer: 0,
        rows: ke - 64..ke,
        keys: ks..ke,
    };
    assert_eq!(cmds, vec![want], "T asks once");
    assert!(
        key(&mut app, KeyCode::Char('6')).is_empty(),
        "same window: no new ask"
    );
    key(&mut app, KeyCode::Char('2'));
    assert!(screen(&app).contains("(exact: computing)"));
    // What the worker runs for it.
    let z = fx
        .loaded
        .model
        .attention_rows(&fx.session.trace, 0, ke - 64..ke, ks..ke)
        .expect("rows");
    update(
        &mut app,
        Action::Worker(FromWorker::ZoomRows {
            zoom: std::sync::Arc::new(z),
            ms: 12.0,
        }),
    );
    let s = screen(&app);
    assert!(
        s.contains("exact: queries ") && s.contains(&format!("..{ke}, 12 ms")),
        "{s}"
    );
    // A pan moves the keys: a new ask, block means until it comes.
    let cmds = key(&mut app, KeyCode::Char(']'));
    assert!(
        matches!(&cmds[..], [Cmd::ZoomRows { keys, .. }] if keys.start > ks),
        "{cmds:?}"
    );
    assert!(screen(&app).contains("(exact: computing)"));
}
