//! Reports reproduce runs: `kvscope run --from-report` on a report's own prompt and model
//! gives the same keep set and generation, and a report's `settings` hold every knob.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kvscope::eviction::registry;
use kvscope::testing::{self, GgufSpec};

struct Env {
    dir: PathBuf,
    model: PathBuf,
    prompt: PathBuf,
}

impl Env {
    fn new(tag: &str) -> Env {
        let dir = testing::temp_dir(tag);
        std::fs::create_dir_all(dir.join("home")).expect("create home");
        let model = dir.join("tiny.gguf");
        testing::write_tiny_gguf(&model, &GgufSpec::default()).expect("write tiny gguf");
        let prompt = dir.join("prompt.txt");
        std::fs::write(
            &prompt,
            "The cat sat in the sun, then the dog came in and the bird sang on the roof.",
        )
        .expect("write prompt");
        Env { dir, model, prompt }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_kvscope"))
            .args(args)
            .env("KVSCOPE_HOME", self.dir.join("home"))
            .env_remove("RUST_BACKTRACE")
            .output()
            .expect("run the kvscope binary")
    }

    /// `run --json` with `flags`; the parsed report.
    fn report(&self, flags: &[&str]) -> Value {
        let mut args = vec!["run", s(&self.prompt), "--model", s(&self.model), "--json"];
        args.extend_from_slice(flags);
        let out = self.run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?} failed: {err}");
        serde_json::from_slice(&out.stdout).expect("one JSON report")
    }

    fn save(&self, name: &str, v: &Value) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, serde_json::to_string_pretty(v).unwrap()).unwrap();
        p
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn from_report_reruns_the_same_keep_set_and_generation() {
    let e = Env::new("reproduce");
    let cases: [&[&str]; 5] = [
        &[
            "--method",
            "adakv",
            "--budget",
            "12",
            "--window",
            "4",
            "--kernel",
            "3",
            "--pooling",
            "max",
            "--adakv-floor",
            "0.5",
            "--max-new",
            "6",
        ],
        &[
            "--method",
            "cake",
            "--budget",
            "12",
            "--window",
            "4",
            "--cake-gamma",
            "50",
            "--cake-cascade",
            "false",
            "--cake-tau2",
            "0.9",
            "--max-new",
            "5",
        ],
        &[
            "--method",
            "random",
            "--budget",
            "10",
            "--window",
            "2",
            "--random-seed",
            "9",
            "--allocator",
            "pyramid",
            "--pyramid-beta",
            "3",
            "--max-new",
            "5",
        ],
        &[
            "--method",
            "snapkv",
            "--window",
            "3",
            "--layer-budgets",
            "9,14",
            "--max-new",
            "4",
            "--raw",
        ],
        &[
            "--method",
            "knorm",
            "--budget",
            "8",
            "--window",
            "2",
            "--knorm-skip-layers",
            "1",
            "--max-new",
            "4",
        ],
    ];
    for flags in cases {
        let first = e.report(flags);
        let st = &first["settings"];
        // Every knob of every method and allocator, and where the run came from.
        for k in registry::all_knobs() {
            assert!(st.get(k.name).is_some(), "settings lack {}: {st}", k.name);
        }
        assert_eq!(st["model_sha256"].as_str().map(str::len), Some(64), "{st}");
        assert_eq!(st["kvscope_version"], env!("CARGO_PKG_VERSION"));
        assert!(st.get("template").is_some());
        let path = e.save("report.json", &first);
        // Other flags are replaced by the report's.
        let again = e.report(&[
            "--from-report",
            s(&path),
            "--method",
            "h2o",
            "--budget",
            "99",
        ]);
        assert_eq!(again["settings"], first["settings"], "{flags:?}");
        assert_eq!(again["prompt"]["ids"], first["prompt"]["ids"], "{flags:?}");
        assert_eq!(
            again["compressed"]["kept"], first["compressed"]["kept"],
            "{flags:?}"
        );
        assert_eq!(
            again["compressed"]["ids"], first["compressed"]["ids"],
            "{flags:?}"
        );
        assert_eq!(again["full"]["ids"], first["full"]["ids"], "{flags:?}");
    }
    // The knobs did reach the selection: another seed keeps other positions.
    let a = e.report(&["--method", "random", "--budget", "10", "--window", "2"]);
    let b = e.report(&[
        "--method",
        "random",
        "--budget",
        "10",
        "--window",
        "2",
        "--random-seed",
        "1",
    ]);
    assert_ne!(a["compressed"]["kept"], b["compressed"]["kept"]);
}

#[test]
fn from_report_refuses_another_prompt_or_a_broken_report() {
    let e = Env::new("reproduce-bad");
    let first = e.report(&["--method", "snapkv", "--budget", "8", "--window", "2"]);
    let path = e.save("report.json", &first);
    let other = e.dir.join("other.txt");
    std::fs::write(&other, "A different prompt entirely, about boats.").unwrap();
    let one_line = |out: &Output, needle: &str| {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "expected failure");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{err}");
        assert!(lines[0].contains(needle), "{err}");
    };
    let out = e.run(&[
        "run",
        s(&other),
        "--model",
        s(&e.model),
        "--from-report",
        s(&path),
    ]);
    one_line(&out, "pass the prompt file the report was made from");
    let mut bad = first.clone();
    bad["settings"]["adakv_floor"] = Value::from(3.0);
    let p = e.save("bad.json", &bad);
    let out = e.run(&[
        "run",
        s(&e.prompt),
        "--model",
        s(&e.model),
        "--from-report",
        s(&p),
    ]);
    // Named by the report's key, not by a flag the user never passed (issue 22, item 18).
    one_line(&out, "settings.adakv_floor must be between 0 and 1; got 3");
    let p = e.save("junk.json", &Value::from("nope"));
    let out = e.run(&[
        "run",
        s(&e.prompt),
        "--model",
        s(&e.model),
        "--from-report",
        s(&p),
    ]);
    one_line(&out, "is not a kvscope report");
}
