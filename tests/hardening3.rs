//! Regression tests of issue 22 (hardening round 3), items 9-21: non-finite knobs, report
//! fields by type and provenance, headkv and allocators, explain's rescue and steps,
//! profile lengths, bench steps, negative and oversized numbers, the notice naming flags
//! a `--from-report` overrode. Each runs the real binary on a tiny GGUF and checks the
//! one line a user sees.

mod common;

use common::cli::*;
use serde_json::Value as Json;
use std::path::Path;

fn run_args<'a>(p: &'a Path, m: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["run", s(p), "--model", s(m), "--max-new", "2"];
    v.extend_from_slice(extra);
    v
}

/// Item 10 and 19: non-finite knob values and whole numbers past i64 are refused at
/// the flag, naming the real limit.
#[test]
fn non_finite_and_huge_knobs_name_the_limit() {
    let e = Env::new("h3-knobs");
    let (m, p) = (e.gguf(), e.prompt());
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--method", "cake", "--cake-gamma", "inf"],
            &["cake-gamma", "finite"],
        ),
        (&["--method", "cake", "--cake-tau1", "NaN"], &["cake-tau1"]),
        (
            &["--method", "snapkv", "--headkv-beta", "inf"],
            &["headkv-beta", "finite"],
        ),
        (
            &["--method", "snapkv", "--headkv-temp", "1e999"],
            &["headkv-temp", "finite"],
        ),
        (
            &[
                "--method",
                "random",
                "--random-seed",
                "18446744073709551615",
            ],
            &["random-seed", "at most"],
        ),
        (
            &[
                "--method",
                "pyramidkv",
                "--pyramid-beta",
                "18446744073709551615",
            ],
            &["pyramid-beta", "at most"],
        ),
        (
            &["--method", "snapkv", "--kernel", "18446744073709551615"],
            &["kernel", "at most"],
        ),
    ];
    for (flags, needles) in cases {
        let out = e.run(&run_args(&p, &m, flags));
        assert_error_without(&out, needles, &["expects a whole number"]);
    }
}

/// Item 19: a negative number reaches the flag's own check instead of clap's
/// "unexpected argument '-1'".
#[test]
fn negative_values_are_read_as_values() {
    let e = Env::new("h3-neg");
    let (m, p) = (e.gguf(), e.prompt());
    let cases: &[(&[&str], &[&str])] = &[
        (&["explain", "--step", "-1"], &["--step", "0 or more"]),
        (&["explain", "--top", "-3"], &["--top", "0 or more"]),
        (&["run", "--pin-keep", "-5"], &["-5"]),
        (&["explain", "--rescue", "100000"], &["--rescue", "16"]),
        (&["explain", "--rescue", "0"], &["--rescue", "16"]),
    ];
    for (flags, needles) in cases {
        let mut args = vec![flags[0], s(&p), "--model", s(&m), "--method", "snapkv"];
        args.extend_from_slice(&flags[1..]);
        let out = e.run(&args);
        assert_error_without(&out, needles, &["unexpected argument"]);
    }
}

/// Items 14, 15, 20: lengths below 64, zero steps and zero tokens are refused up front.
#[test]
fn unusable_lengths_and_counts_are_refused() {
    let e = Env::new("h3-lengths");
    let m = e.gguf();
    let cases: &[(&[&str], &[&str])] = &[
        (&["profile", "srh", "--lengths", "0"], &["--lengths", "64"]),
        (
            &["profile", "srh", "--lengths", "10,1024"],
            &["--lengths", "64"],
        ),
        (
            &["profile", "compare", "--lengths", "10"],
            &["--lengths", "64"],
        ),
        (
            &["profile", "layers", "--max-new", "0"],
            &["--max-new", "at least 1"],
        ),
        (
            &["profile", "compare", "--max-new", "0"],
            &["--max-new", "at least 1"],
        ),
        (&["bench", "--steps", "0"], &["--steps", "at least 1"]),
    ];
    for (flags, needles) in cases {
        let mut args = flags.to_vec();
        args.extend_from_slice(&["--model", s(&m)]);
        let out = e.run(&args);
        assert_error_without(&out, needles, &["prompt"]);
    }
}

/// Item 12: headkv takes no layer allocator; asking for one is refused, not ignored.
#[test]
fn headkv_refuses_allocators() {
    let e = Env::new("h3-headkv");
    let (m, p) = (e.gguf(), e.prompt());
    for flags in [
        &["--method", "headkv", "--allocator", "pyramid"][..],
        &["--method", "headkv", "--layer-budgets", "16,16"][..],
    ] {
        let out = e.run(&run_args(&p, &m, flags));
        assert_error_without(&out, &["headkv", flags[2]], &[]);
    }
}

/// A report of `run --json` with snapkv on the tiny model.
fn saved_report(e: &Env, m: &Path, p: &Path) -> Json {
    let out = e.run(&run_args(
        p,
        m,
        &["--method", "snapkv", "--budget", "16", "--json"],
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("report JSON")
}

/// Items 10, 11, 18: a report's fields are checked by type and named by key; one
/// without model_sha256 is refused; max_new past the context names the report's field.
#[test]
fn report_fields_are_named_by_key() {
    let e = Env::new("h3-report");
    let (m, p) = (e.gguf(), e.prompt());
    let base = saved_report(&e, &m, &p);
    type Edit = fn(&mut Json);
    let cases: &[(Edit, &[&str], &[&str])] = &[
        (
            |r| r["settings"]["adakv_floor"] = Json::from("0.2"),
            &["settings.adakv_floor", "the text \"0.2\""],
            &["got 0.2;"],
        ),
        (
            |r| r["settings"]["cake_gamma"] = Json::Null,
            &["settings.cake_gamma", "finite", "null"],
            &["untagged"],
        ),
        (
            |r| r["settings"]["budget"] = Json::from("lots"),
            &["settings.budget", "whole number"],
            &[],
        ),
        (
            |r| r["settings"]["raw"] = Json::from(1),
            &["settings.raw", "true or false"],
            &[],
        ),
        (
            |r| {
                r["settings"]
                    .as_object_mut()
                    .expect("settings")
                    .remove("model_sha256");
            },
            &["model_sha256"],
            &[],
        ),
        (
            |r| r["settings"]["model_sha256"] = Json::Null,
            &["model_sha256"],
            &[],
        ),
        (
            |r| r["settings"]["max_new"] = Json::from(u64::MAX),
            &["settings.max_new", "context"],
            &["--max-new"],
        ),
    ];
    for (i, (edit, needles, absent)) in cases.iter().enumerate() {
        let mut r = base.clone();
        edit(&mut r);
        let f = e.file(&format!("r{i}.json"), r.to_string().as_bytes());
        let out = e.run(&["run", s(&p), "--model", s(&m), "--from-report", s(&f)]);
        assert_error_without(&out, needles, absent);
    }
}

/// Item 21: flags a --from-report replaces are named in one notice; the rerun uses the
/// report's settings.
#[test]
fn from_report_names_the_flags_it_overrode() {
    let e = Env::new("h3-notice");
    let (m, p) = (e.gguf(), e.prompt());
    let f = e.file("r.json", saved_report(&e, &m, &p).to_string().as_bytes());
    let out = e.run(&[
        "run",
        s(&p),
        "--model",
        s(&m),
        "--from-report",
        s(&f),
        "--method",
        "h2o",
        "--budget",
        "64",
        "--json",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let notices: Vec<&str> = err.lines().filter(|l| l.contains("ignored")).collect();
    assert_eq!(notices.len(), 1, "{err}");
    assert!(
        notices[0].contains("--method") && notices[0].contains("--budget"),
        "{err}"
    );
    let r: Json = serde_json::from_slice(&out.stdout).expect("report");
    assert_eq!(r["settings"]["method"], "snapkv");
    // Without explicit flags: no notice.
    let out = e.run(&["run", s(&p), "--model", s(&m), "--from-report", s(&f)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("ignored"), "{err}");
}

/// Item 9: on a gemma3-shaped model (sliding layers with a 16-token window, shorter than
/// the prompt) with `--evict-sliding true`, oracle runs in `run`, `explain` compares
/// against it, and `eval --methods oracle,snapkv` writes rows for both.
#[test]
fn oracle_runs_with_evict_sliding_on_a_gemma3_shape() {
    let e = Env::new("oracle-sliding");
    let m = e.path("gemma3.gguf");
    let mut spec = kvscope::testing::arch::ArchSpec::new("gemma3");
    spec.sliding_window = 16;
    kvscope::testing::arch::write_arch_gguf(&m, &spec).expect("write tiny gemma3");
    let text = "The keeper wrote the code 7421 in the log while waves hit the rocks all night. What code did the keeper write in the log?";
    let p = e.file("prompt.txt", text.as_bytes());
    let common = ["--budget", "8", "--window", "4", "--evict-sliding", "true"];
    let mut a = run_args(&p, &m, &["--method", "oracle"]);
    a.extend(common);
    let out = e.run(&a);
    let err = ok(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("--- oracle"), "{stdout}{err}");

    let mut a = vec![
        "explain",
        s(&p),
        "--model",
        s(&m),
        "--method",
        "snapkv",
        "--max-new",
        "4",
    ];
    a.extend(common);
    let out = e.run(&a);
    ok(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("of the oracle's choices"), "{stdout}");

    let prompts = e.path("prompts");
    std::fs::create_dir_all(&prompts).unwrap();
    std::fs::write(prompts.join("keeper.txt"), text).unwrap();
    std::fs::write(prompts.join("keeper.answer"), "7421").unwrap();
    let outdir = e.path("ev");
    let out = e.run(&[
        "eval",
        "sweep",
        s(&prompts),
        "--model",
        s(&m),
        "--methods",
        "oracle,snapkv",
        "--budgets",
        "8",
        "--windows",
        "4",
        "--max-new",
        "4",
        "--evict-sliding",
        "true",
        "--quiet",
        "--out",
        s(&outdir),
    ]);
    ok(&out);
    let rows = std::fs::read_to_string(outdir.join("results.jsonl")).unwrap();
    for method in ["\"oracle\"", "\"snapkv\""] {
        assert!(rows.contains(method), "no {method} rows: {rows}");
    }
}
