//! A fake inspector session from the tiny random model (no download): the same worker
//! functions the real worker calls, run in the test.
#![allow(dead_code)]

pub mod cli;
pub mod tmux;

use std::sync::Arc;

use kvscope::eviction::{ScoreTable, Settings};
use kvscope::model::{self, Loaded};
use kvscope::session::Session;
use kvscope::testing::{self, GgufSpec};
use kvscope::tui::action::Action;
use kvscope::tui::app::{update, App};
use kvscope::tui::msg::{FromWorker, Outcome, Snapshot};
use kvscope::tui::worker;

pub const PROMPT: &str = "The lighthouse keeper wrote the secret code in the log: \
    the code is 7421. Waves hit the rocks all night and the lamp turned. \
    Question: what is the secret code?";

pub struct Fixture {
    pub loaded: Loaded,
    pub session: Session,
    pub snapshot: Snapshot,
}

pub fn settings() -> Settings {
    Settings {
        method: kvscope::eviction::snapkv::METHOD,
        budget: 48,
        window: 4,
        kernel: 3,
        first_k: 2,
        ..Settings::default()
    }
}

/// A hand-made profile for the tiny model (2 layers x 4 heads): SRH and retrieval
/// rankings that differ, and layer errors that favour layer 1.
pub fn tiny_profile() -> kvscope::profile_format::Profile {
    use kvscope::profile_format::{
        rank_best_first, Fingerprint, Profile, Provenance, FORMAT_VERSION,
    };
    let srh = vec![vec![0.9, 0.1, 0.5, 0.2], vec![0.05, 0.3, 0.2, 0.8]];
    let retrieval = vec![vec![0.1, 0.9, 0.6, 0.0], vec![0.4, 0.3, 0.1, 0.7]];
    Profile {
        format_version: FORMAT_VERSION,
        model: Fingerprint {
            arch: "llama".into(),
            n_layers: 2,
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 16,
            sha256: "0".repeat(64),
        },
        srh_ranking: srh.iter().map(|s| rank_best_first(s)).collect(),
        srh_scores: srh,
        retrieval_scores: retrieval,
        layer_errors: Some(vec![0.25, 0.75]),
        provenance: Provenance {
            command: "test".into(),
            settings: serde_json::Value::Null,
            trials_counted: 1,
            kvscope_version: "test".into(),
        },
    }
}

pub fn fixture() -> Fixture {
    fixture_with(None)
}

pub fn fixture_with(profile: Option<kvscope::profile_format::Profile>) -> Fixture {
    fixture_text(PROMPT, profile)
}

/// The fixture on the prompt `text`.
pub fn fixture_text(text: &str, profile: Option<kvscope::profile_format::Profile>) -> Fixture {
    let dir = testing::temp_dir("tui");
    let path = dir.join("tiny.gguf");
    let spec = GgufSpec {
        context_length: 512,
        ..GgufSpec::default()
    };
    testing::write_tiny_gguf(&path, &spec).expect("write tiny gguf");
    let loaded = model::load(&path).expect("load tiny gguf");
    let prompt = loaded.tok.apply_template(text, false);
    let mut session =
        Session::new(&loaded, prompt, 12, profile, &mut |_, _| {}).expect("tiny session");
    let maps = session
        .trace
        .layers
        .iter_mut()
        .map(|l| std::mem::take(&mut l.maps))
        .collect();
    let snapshot = worker::snapshot(&loaded, &session, Arc::new(maps));
    Fixture {
        loaded,
        session,
        snapshot,
    }
}

impl Fixture {
    pub fn outcome(&mut self, gen: u64, s: Settings) -> Outcome {
        let table = ScoreTable::compute(&self.session.trace, &s);
        worker::outcome(&self.loaded, &mut self.session, gen, s, &table).expect("outcome")
    }

    /// The divergence analysis the worker sends after `o` (same functions).
    pub fn divergence(&self, o: &Outcome) -> Arc<kvscope::tui::msg::DivView> {
        let s = &self.session;
        let (full, _) = kvscope::model::replay::FullPass::compute(
            &self.loaded.model,
            &s.trace,
            &s.full.ids,
            None,
        )
        .expect("full replay");
        let keep = kvscope::keepset::KeepSet {
            positions: o.keep.clone(),
        };
        Arc::new(worker::divergence_view(&self.loaded, s, &full, &keep).expect("divergence"))
    }

    /// The attention-output errors the worker sends for `o` on `E` (same function).
    #[allow(dead_code)]
    pub fn attn_errors(&self, o: &Outcome) -> Vec<Vec<f32>> {
        let s = &self.session;
        let keep = kvscope::keepset::KeepSet {
            positions: o.keep.clone(),
        };
        kvscope::model::replay::attn_errors(&self.loaded.model, &s.trace, &s.full.ids, &keep)
            .expect("errors")
    }
}

/// An app that has received the snapshot and the first result, as after start-up.
pub fn ready_app(fx: &mut Fixture) -> App {
    ready_app_with(fx, settings())
}

pub fn ready_app_with(fx: &mut Fixture, start: Settings) -> App {
    let mut app = App::new(start.clone(), "kvscope-tiny".into(), "tiny.txt".into());
    update(
        &mut app,
        Action::Worker(FromWorker::Ready(Box::new(fx.snapshot.clone()))),
    );
    let first = app.flush();
    assert!(first.is_some(), "Ready must ask for the first result");
    let o = fx.outcome(0, start);
    update(&mut app, Action::Worker(FromWorker::Result(Box::new(o))));
    update(
        &mut app,
        Action::Worker(FromWorker::Phase(kvscope::tui::msg::Phase::Idle)),
    );
    app.rss_bytes = Some(123 << 20);
    app.notice = None;
    app
}
