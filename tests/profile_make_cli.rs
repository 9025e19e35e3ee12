//! `kvscope profile make | merge | import` on bad input: one `kvscope: error:` line,
//! nothing written. And a good import on a tiny GGUF.

mod common;

use common::cli::*;
use std::path::Path;
use std::process::Output;

/// Non-zero exit and exactly one `kvscope: error:` line containing `needle`.
fn one_error(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure: {err}");
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| !l.starts_with("kvscope: ") || l.starts_with("kvscope: error"))
        .collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].starts_with("kvscope: error: ") && lines[0].contains(needle),
        "{err}"
    );
}

fn nothing_at(p: &Path) {
    assert!(!p.exists(), "{} was written", p.display());
    let mut parts = p.as_os_str().to_os_string();
    parts.push(".parts");
    assert!(!Path::new(&parts).exists(), "{parts:?} was written");
}

#[test]
fn make_refuses_lengths_outside_the_model_and_bad_shards() {
    let env = Env::new("make-cli");
    let out = env.path("p.json");
    let o = out.to_str().unwrap();
    // The tiny model's context is 256 tokens.
    let r = env.run(&[
        "profile",
        "make",
        "--model",
        s(&env.gguf()),
        "--lengths",
        "4096",
        "--out",
        o,
    ]);
    one_error(
        &r,
        "--lengths: 4096 is beyond this model's context of 256 tokens",
    );
    nothing_at(&out);
    let r = env.run(&[
        "profile",
        "make",
        "--model",
        s(&env.gguf()),
        "--lengths",
        "32",
        "--out",
        o,
    ]);
    one_error(&r, "--lengths: 32 is below the minimum of 64");
    nothing_at(&out);
    let shard_dir = env.path("shard");
    for spec in ["3/2", "0/0", "auto/2"] {
        let r = env.run(&[
            "profile",
            "make",
            "--model",
            s(&env.gguf()),
            "--lengths",
            "128",
            "--shard",
            spec,
            "--out",
            shard_dir.to_str().unwrap(),
        ]);
        one_error(&r, "--shard");
        assert!(!shard_dir.exists());
    }
}

#[test]
fn merge_refuses_shards_of_different_settings() {
    let env = Env::new("merge-cli");
    for (name, lengths) in [("a", "[1024]"), ("b", "[2048]")] {
        let d = env.path(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("settings.json"),
            format!("{{\"lengths\": {lengths}}}"),
        )
        .unwrap();
    }
    let out = env.path("merged.json");
    let r = env.run(&[
        "profile",
        "merge",
        env.path("a").to_str().unwrap(),
        env.path("b").to_str().unwrap(),
        "--model",
        s(&env.gguf()),
        "--out",
        out.to_str().unwrap(),
    ]);
    one_error(
        &r,
        "were measured with different settings (lengths: [1024] and [2048])",
    );
    nothing_at(&out);
}

#[test]
fn import_checks_the_shape_and_writes_a_valid_profile() {
    let env = Env::new("import-cli");
    // The tiny model: 2 layers, 4 query heads.
    let heads = env.path("heads.json");
    let scores = env.path("scores.jsonl");
    std::fs::write(&scores, "{\"qasper\": [1, 2], \"avg_score\": [1.0, 3.0]}\n").unwrap();
    let out = env.path("imported.json");
    let args = |h: &Path| {
        vec![
            "profile".to_string(),
            "import".into(),
            "--heads".into(),
            h.display().to_string(),
            "--layer-scores".into(),
            scores.display().to_string(),
            "--model".into(),
            s(&env.gguf()).into(),
            "--out".into(),
            out.display().to_string(),
        ]
    };
    let run = |h: &Path| {
        let a = args(h);
        env.run(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    std::fs::write(&heads, r#"{"0": [3, 1, 0, 2]}"#).unwrap();
    one_error(
        &run(&heads),
        "the head file has no layer 1 (the model has 2 layers)",
    );
    nothing_at(&out);
    std::fs::write(&heads, r#"{"0": [3, 1, 0, 2, 5, 4], "1": [0, 1, 2, 3]}"#).unwrap();
    one_error(
        &run(&heads),
        "layer 0 lists 6 heads, not each of the model's 4 query heads once",
    );
    nothing_at(&out);
    std::fs::write(&heads, r#"{"0": [3, 1, 0, 2], "1": [0, 1, 2, 3]}"#).unwrap();
    let r = run(&heads);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let p = kvscope::profile_format::Profile::load(&out).unwrap();
    assert_eq!(p.srh_ranking[0], vec![3, 1, 0, 2]);
    assert_eq!(p.layer_errors, Some(vec![0.25, 0.75]));
    assert_eq!(
        p.provenance.settings["imported"]["source"]["heads"],
        heads.display().to_string()
    );
}

/// `kvscope run` (and so `explain`, which prepares the same way) says when the prompt
/// is more than twice the longest length the profile was measured at, and not otherwise.
#[test]
fn run_notices_a_prompt_far_longer_than_the_profiled_lengths() {
    let env = Env::new("length-notice");
    let cfg = kvscope::model::load(&env.gguf()).unwrap().model.config;
    let sha = kvscope::profile::discover::model_sha256(&env.gguf()).unwrap();
    let d = cfg.dims();
    let scores: Vec<Vec<f64>> = (0..d.n_layers)
        .map(|l| (0..d.n_heads).map(|h| ((h + l) % 3) as f64).collect())
        .collect();
    let profile_at = |longest: usize| {
        let p = kvscope::profile_format::Profile {
            format_version: kvscope::profile_format::FORMAT_VERSION,
            model: kvscope::profile::discover::fingerprint(&cfg, &sha),
            srh_ranking: scores
                .iter()
                .map(|s| kvscope::profile_format::rank_best_first(s))
                .collect(),
            retrieval_scores: scores.clone(),
            srh_scores: scores.clone(),
            layer_errors: Some(vec![0.5, 0.5]),
            provenance: kvscope::profile_format::Provenance {
                command: "test".into(),
                settings: serde_json::json!({"srh": {"lengths": [longest / 2, longest]}}),
                trials_counted: 1,
                kvscope_version: "test".into(),
            },
        };
        let path = env.path(&format!("p{longest}.json"));
        p.save(&path).unwrap();
        path
    };
    let prompt = env.path("prompt.txt");
    std::fs::write(
        &prompt,
        "the cat sat in the sun and the dog came in. ".repeat(3),
    )
    .unwrap();
    let run = |profile: &Path| {
        let o = env.run(&[
            "run",
            prompt.to_str().unwrap(),
            "--model",
            s(&env.gguf()),
            "--method",
            "compresskv",
            "--budget",
            "32",
            "--max-new",
            "2",
            "--profile",
            profile.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    // The prompt is over 64 tokens (byte-level vocabulary): > 2 x 32, <= 2 x 4096.
    let err = run(&profile_at(32));
    assert!(
        err.contains("notice: the profile was measured on prompts of up to 32 tokens"),
        "{err}"
    );
    let err = run(&profile_at(4096));
    assert!(!err.contains("measured on prompts of up to"), "{err}");
}

/// Finished units in a parts folder (`settings.json` and temp files aside).
fn units_in(parts: &Path) -> usize {
    std::fs::read_dir(parts).map_or(0, |r| {
        r.filter_map(|e| e.ok())
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.ends_with(".json") && n != "settings.json" && !n.starts_with('.')
            })
            .count()
    })
}

#[test]
fn a_run_killed_mid_way_continues_to_the_uninterrupted_profile() {
    let env = Env::new("make-kill");
    // A tiny model with room for several lengths, and short calibration prompts.
    let model = env.gguf_with(
        "tiny.gguf",
        &kvscope::testing::GgufSpec {
            context_length: 2048,
            ..Default::default()
        },
    );
    let cal = env.path("calibration");
    std::fs::create_dir_all(&cal).unwrap();
    for (n, t) in [
        (
            "a",
            "The river runs past the mill and under the old stone bridge.",
        ),
        (
            "b",
            "Counting sheep: one, two, three, four, five, six, seven, eight.",
        ),
    ] {
        std::fs::write(cal.join(format!("{n}.txt")), t).unwrap();
    }
    let args = |out: &Path| -> Vec<String> {
        [
            "profile",
            "make",
            "--model",
            s(&model),
            "--lengths",
            "300,420,560,700,840,980",
            "--needles",
            "8",
            "--per-haystack",
            "2",
            "--max-new",
            "3",
            "--budget",
            "32",
            "--first-k",
            "2",
            "--layer-max-new",
            "3",
            "--calibration",
            cal.to_str().unwrap(),
            "--count-every-trial",
            "--out",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let whole = env.path("whole.json");
    let r = env.run(&args(&whole).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));

    // The same run, killed with SIGKILL (no handler runs) once its first unit is on disk.
    let killed = env.path("killed.json");
    let parts = env.path("killed.json.parts");
    let killed_args = args(&killed);
    let mut child = env
        .command(&killed_args.iter().map(String::as_str).collect::<Vec<_>>())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    while units_in(&parts) == 0 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "profile make ended before writing a unit"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // Killed mid-way: no profile, some but not all units kept.
    assert!(!killed.exists(), "the run finished before the kill");
    let kept = units_in(&parts);
    assert!(kept >= 1);

    let r = env.run(&args(&killed).iter().map(String::as_str).collect::<Vec<_>>());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{err}");
    assert!(err.contains("continuing"), "{err}");
    assert!(
        !parts.exists(),
        "the parts folder is removed once the profile is written"
    );
    let a = kvscope::profile_format::Profile::load(&whole).unwrap();
    let b = kvscope::profile_format::Profile::load(&killed).unwrap();
    assert_eq!(a.model, b.model);
    assert_eq!(a.srh_scores, b.srh_scores);
    assert_eq!(a.srh_ranking, b.srh_ranking);
    assert_eq!(a.retrieval_scores, b.retrieval_scores);
    assert_eq!(a.layer_errors, b.layer_errors);
    assert_eq!(a.provenance.trials_counted, b.provenance.trials_counted);
    // The settings agree but for the measured time.
    let strip = |v: &serde_json::Value| {
        let mut v = v.clone();
        v["seconds"] = serde_json::Value::Null;
        v
    };
    assert_eq!(strip(&a.provenance.settings), strip(&b.provenance.settings));
}
