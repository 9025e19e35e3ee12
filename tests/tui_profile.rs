//! `P` in the inspector (issue 20 item 4): a model without a profile gets one made in
//! the background by the real worker thread and the real profile run, driven through
//! the app's key handling as the event loop drives it. Cancelling leaves no profile;
//! finishing makes compresskv work without a restart, and the profile is where the next
//! open looks (the cache's profiles/ folder).
//!
//! A random tiny model answers no needle question, so the run counts every trial
//! (`MakeOptions::count_every_trial`, for tests only; the inspector never sets it).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use kvscope::eviction::Settings;
use kvscope::tui::action::Action;
use kvscope::tui::app::{update, App, Cmd};
use kvscope::tui::keys::map_key;
use kvscope::tui::msg::{FromWorker, ToWorker};
use kvscope::tui::profiling::MakeOptions;
use kvscope::tui::worker::{self, Job, Outbox};

/// The event loop's part: carries the app's commands to the worker.
struct Harness {
    app: App,
    to: Sender<ToWorker>,
    from: Receiver<FromWorker>,
    stop: Option<Arc<AtomicBool>>,
}

impl Harness {
    fn key(&mut self, c: char) {
        let a = map_key(
            &self.app,
            KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE),
        )
        .expect("a mapped key");
        let cmds = update(&mut self.app, a);
        self.run(cmds);
    }

    fn run(&mut self, cmds: Vec<Cmd>) {
        for c in cmds {
            match c {
                Cmd::StartProfile => {
                    let stop = Arc::new(AtomicBool::new(false));
                    self.stop = Some(stop.clone());
                    self.to.send(ToWorker::MakeProfile { stop }).unwrap();
                }
                Cmd::CancelProfile => self.stop.as_ref().unwrap().store(true, Ordering::SeqCst),
                Cmd::UseProfile { profile, path } => self
                    .to
                    .send(ToWorker::UseProfile { profile, path })
                    .unwrap(),
                Cmd::SettingsChanged | Cmd::FlushNow => {
                    if let Some(m) = self.app.flush() {
                        self.to.send(m).unwrap();
                    }
                }
                other => panic!("unexpected command {other:?}"),
            }
        }
    }

    /// Feeds worker messages to the app until `done` says so; returns that message.
    fn until(&mut self, what: &str, done: impl Fn(&FromWorker) -> bool) -> FromWorker {
        let end = Instant::now() + Duration::from_secs(300);
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let m = self
                .from
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("waiting for {what}: {e}"));
            let hit = done(&m);
            let cmds = update(&mut self.app, Action::Worker(m.clone()));
            self.run(cmds);
            if hit {
                return m;
            }
        }
    }

    /// The result (or failure) of the app's current settings generation.
    fn result(&mut self) -> FromWorker {
        let gen = self.app.gen;
        self.until("a result", |m| match m {
            FromWorker::Result(o) => o.gen == gen,
            FromWorker::Failed { gen: g, .. } => *g == gen,
            _ => false,
        })
    }

    fn choose_compresskv(&mut self) {
        for _ in 0..20 {
            if self.app.settings.method == kvscope::eviction::compresskv::METHOD {
                return;
            }
            self.key('m');
        }
        panic!("m never reached compresskv");
    }
}

#[test]
fn p_makes_a_profile_in_the_background_cancel_leaves_none_and_finishing_enables_compresskv() {
    let dir = kvscope::testing::temp_dir("tui-profile");
    // The cache (where the profile goes and is looked up) is this test's own.
    std::env::set_var("KVSCOPE_HOME", dir.join("home"));
    let model = dir.join("tiny-noprofile.gguf");
    kvscope::testing::write_tiny_gguf(
        &model,
        &kvscope::testing::GgufSpec {
            context_length: 2048,
            ..Default::default()
        },
    )
    .unwrap();
    let cal = dir.join("calibration");
    std::fs::create_dir_all(&cal).unwrap();
    let filler: String = kvscope::haystack::filler::DOCUMENT
        .chars()
        .take(600)
        .collect();
    std::fs::write(cal.join("a.txt"), &filler).unwrap();
    let prompt: String = kvscope::haystack::filler::DOCUMENT
        .chars()
        .skip(1000)
        .take(700)
        .collect();

    let (to, wrx) = mpsc::channel();
    let (tx, from) = mpsc::channel();
    let out: Outbox = Arc::new(move |m| tx.send(m).is_ok());
    let job = Job {
        model: Some(model.clone()),
        profile: None,
        prompt,
        prompt_opts: Default::default(),
        max_new: 8,
        // The test's prompt is not worth storing in the user's prefill cache.
        no_cache: true,
        expect: None,
        make: MakeOptions {
            calibration: Some(cal.clone()),
            count_every_trial: true,
        },
    };
    worker::spawn(job, out, wrx).unwrap();
    let start = Settings {
        method: kvscope::eviction::snapkv::METHOD,
        budget: 32,
        window: 4,
        kernel: 3,
        first_k: 2,
        ..Settings::default()
    };
    let mut h = Harness {
        app: App::new(start, "tiny".into(), "prompt".into()),
        to,
        from,
        stop: None,
    };
    h.until("the snapshot", |m| matches!(m, FromWorker::Ready(_)));
    assert!(!h.app.ctl.has_profile, "the tiny model has no profile");
    assert!(matches!(h.result(), FromWorker::Result(_)));
    // Without a profile compresskv fails with a line in the status line.
    h.choose_compresskv();
    assert!(matches!(h.result(), FromWorker::Failed { .. }));
    assert!(h.app.error.is_some());
    h.key('m');
    assert!(matches!(h.result(), FromWorker::Result(_)));

    let expected_out = kvscope::profile::auto::default_out(&model).unwrap();
    let parts = kvscope::profile::auto::parts_dir(&expected_out);

    // P starts the run; its progress reaches the app (and the status line text).
    h.key('P');
    assert!(h.app.profiling.is_some());
    h.until(
        "progress",
        |m| matches!(m, FromWorker::ProfileProgress(p) if p.total > 0.0),
    );
    let text = kvscope::tui::panes::status::profiling_text(h.app.profiling.as_ref().unwrap());
    assert!(
        text.contains("profile make") && text.contains("P cancels"),
        "{text}"
    );
    // P again cancels: no profile written, the run says so, the units stay for later.
    h.key('P');
    let stopped = h.until("the cancel", |m| {
        matches!(
            m,
            FromWorker::ProfileStopped { .. } | FromWorker::ProfileMade { .. }
        )
    });
    match stopped {
        FromWorker::ProfileStopped { line, error } => {
            assert!(!error, "{line}");
            assert!(line.contains("cancelled"), "{line}");
        }
        _ => panic!("the run finished before the cancel"),
    }
    assert!(h.app.profiling.is_none());
    assert!(!expected_out.exists(), "a cancelled run wrote a profile");
    assert!(
        parts.is_dir(),
        "the finished units are kept for the next run"
    );
    // The inspector stays usable meanwhile: an edit still gets its result.
    h.key('b');
    assert!(matches!(h.result(), FromWorker::Result(_)));

    // P again continues and this time finishes.
    h.key('P');
    let made = h.until("the profile", |m| {
        matches!(
            m,
            FromWorker::ProfileMade { .. } | FromWorker::ProfileStopped { .. }
        )
    });
    let FromWorker::ProfileMade { profile, path, .. } = made else {
        panic!("profile make did not finish: {made:?}")
    };
    assert_eq!(path, expected_out);
    assert!(path.is_file() && !parts.exists());
    assert!(h.app.ctl.has_profile);
    assert!(h.app.snapshot.as_ref().unwrap().srh_ranking.is_some());
    let lengths = &profile.provenance.settings["lengths"];
    let want = kvscope::profile::auto::lengths_for_prompt(h.app.prompt_len(), 2048, 24).unwrap();
    assert_eq!(lengths, &serde_json::json!(want));
    // The settings on screen were recomputed with the profile.
    assert!(matches!(h.result(), FromWorker::Result(_)));
    // compresskv now works without a restart.
    h.choose_compresskv();
    match h.result() {
        FromWorker::Result(o) => {
            assert_eq!(o.settings.method, kvscope::eviction::compresskv::METHOD)
        }
        other => panic!("compresskv still fails: {other:?}"),
    }
    // And the next open finds it where run and eval look.
    let loaded = kvscope::model::load(&model).unwrap();
    let found =
        kvscope::profile::discover::resolve(None, &model, &loaded.model.config, true).unwrap();
    assert_eq!(found.map(|f| f.0), Some(expected_out));
    let _ = std::fs::remove_dir_all(&dir);
}
