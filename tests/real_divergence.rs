//! The eviction debugger on the real default model: on a needle prompt where snapkv
//! loses the number, the culprits of the step that should write its first digit are the
//! needle's tokens, and pinning them (rescue) brings the number back.

use kvscope::cli::explain;
use kvscope::eviction::Settings;
use kvscope::model::{self, fetch};
use kvscope::session::Session;

#[test]
fn rescuing_the_culprits_restores_the_needle_snapkv_lost() {
    let path = fetch::ensure_default_model(&mut |m| eprintln!("kvscope: {m}"))
        .unwrap_or_else(|e| panic!("cannot obtain the default model: {e:#}"));
    let loaded = model::load(&path).unwrap_or_else(|e| panic!("cannot load the model: {e:#}"));
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/sample-prompts/");
    let text = std::fs::read_to_string(format!("{dir}lighthouse-needle.txt")).expect("prompt");
    let answer = "48217";
    let prompt = loaded.tok.apply_template(&text, false);
    let mut session = Session::new(&loaded, prompt, 24, None, &mut |_, _| {})
        .unwrap_or_else(|e| panic!("prefill failed: {e:#}"));
    assert!(
        session.full.text.contains(answer),
        "full: {}",
        session.full.text
    );
    // snapkv at 64 tokens per layer (~9% of the 695-token prompt) loses the number.
    let settings = Settings {
        method: kvscope::eviction::snapkv::METHOD,
        budget: 64,
        window: 8,
        ..Settings::default()
    };
    let c = session
        .apply(&loaded.model, &loaded.tok, settings)
        .unwrap_or_else(|e| panic!("snapkv: {e:#}"));
    assert!(
        !c.generation.text.contains(answer),
        "snapkv: {}",
        c.generation.text
    );
    // The step whose input precedes the number's first digit: it predicts token t.
    let t = session
        .full
        .ids
        .iter()
        .position(|&id| loaded.tok.token_text(id) == "4")
        .expect("the full generation writes the number");
    // `explain --answer` finds the same step from the answer's text.
    assert_eq!(
        explain::answer_step(&loaded, &session.full.ids, answer).ok(),
        Some(t)
    );
    assert!(explain::answer_step(&loaded, &session.full.ids, "no such words").is_err());
    let ex = explain::explain(
        &loaded,
        &mut session,
        &Default::default(),
        Some(t),
        10,
        Some(8),
    )
    .unwrap_or_else(|e| panic!("explain: {e:#}"));
    let r = &ex.report;
    assert_eq!(r.chosen_step, Some(t));
    // The top culprit is a digit of the needle, evicted by every layer.
    let top = &r.culprits[0];
    assert!(
        answer.contains(top.text.trim()),
        "top culprit {:?}",
        top.text
    );
    assert!(top
        .per_layer
        .iter()
        .all(|l| l.kept_by_kv_heads.iter().any(|&k| !k)));
    let rescue = r.rescue.as_ref().expect("rescue requested");
    assert_eq!(rescue.pins.len(), 8);
    assert!(
        rescue.compressed.text.contains(answer),
        "rescue of {:?}: {}",
        rescue.pins,
        rescue.compressed.text
    );
    // Pinned entries take slots inside the budget: the memory is that of snapkv.
    assert_eq!(rescue.compressed.kv_bytes, c_bytes(&session));
}

fn c_bytes(s: &Session) -> usize {
    s.compressed.as_ref().map_or(0, |c| c.generation.kv_bytes)
}
