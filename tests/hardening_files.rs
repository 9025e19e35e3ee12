//! Regression tests of issue 22's file-safety cases: outputs that are device nodes or
//! FIFOs, an output that is an input, synth interrupted, eval resumed on another model or
//! prompt set, two evals on one folder, and `synth --tokenizer-from FIFO`. Each runs the
//! real binary on a tiny GGUF and checks what a user sees (one error line) and that
//! nothing was destroyed.

mod common;

use common::cli::*;
use kvscope::testing::GgufSpec;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

/// The tiny GGUF with `template` as its chat template.
fn with_template(e: &Env, name: &str, template: &str) -> PathBuf {
    with_chat_template(
        e,
        name,
        candle_core::quantized::gguf_file::Value::String(template.into()),
    )
}

/// A tiny GGUF at `name` with weights from `seed`.
fn seeded(e: &Env, name: &str, seed: u64) -> PathBuf {
    e.gguf_with(
        name,
        &GgufSpec {
            seed,
            ..GgufSpec::default()
        },
    )
}

/// A prompt folder with one prompt and its answer.
fn prompts(e: &Env) -> PathBuf {
    let p = e.path("prompts");
    std::fs::create_dir_all(&p).expect("mkdir");
    std::fs::write(
        p.join("cat.txt"),
        "The cat sat on the mat. Where did the cat sit?",
    )
    .expect("write");
    std::fs::write(p.join("cat.answer"), "mat").expect("write");
    p
}

fn eval_args<'a>(prompts: &'a Path, model: &'a Path, out: &'a Path) -> Vec<&'a str> {
    vec![
        "eval",
        "sweep",
        s(prompts),
        "--model",
        s(model),
        "--methods",
        "snapkv",
        "--budgets",
        "8",
        "--windows",
        "4",
        "--max-new",
        "2",
        "--out",
        s(out),
    ]
}

/// Issue 22.1: an output that exists and is not a regular file is refused and left as
/// it was, for every command that writes one.
#[cfg(unix)]
#[test]
fn outputs_that_are_devices_or_fifos_are_refused_and_kept() {
    let e = Env::new("out-fifo");
    let m = seeded(&e, "tiny.gguf", 7);
    let fifo = e.dir.join("fifo");
    mkfifo(&fifo);
    for out in [Path::new("/dev/null"), fifo.as_path()] {
        let cases: Vec<Vec<&str>> = vec![
            vec!["profile", "srh", "--model", s(&m), "--out", s(out)],
            vec![
                "synth",
                "--shape",
                "llama-3.2-1b",
                "--tokenizer-from",
                s(&m),
                "--out",
                s(out),
            ],
        ];
        for args in cases {
            assert_error(&e.run(&args), &["--out", "not a regular file"]);
        }
    }
    assert!(is_fifo(&fifo), "the FIFO was replaced");
    assert!(!std::fs::metadata("/dev/null").unwrap().is_file());
    // eval: results.jsonl in --out is a FIFO.
    let prompts = prompts(&e);
    let out_dir = e.dir.join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    mkfifo(&out_dir.join("results.jsonl"));
    let out = e.run(&eval_args(&prompts, &m, &out_dir));
    assert_error(&out, &["results file", "not a regular file"]);
    assert!(is_fifo(&out_dir.join("results.jsonl")));
}

/// Issue 22.2: `synth --out X --tokenizer-from X` (or a hard link to X) is refused and
/// the model is untouched.
#[cfg(unix)]
#[test]
fn synth_never_writes_over_its_tokenizer_source() {
    let e = Env::new("synth-same");
    let m = seeded(&e, "tiny.gguf", 7);
    let before = std::fs::read(&m).unwrap();
    let link = e.dir.join("link.gguf");
    std::fs::hard_link(&m, &link).unwrap();
    let dotted = format!("{}/./tiny.gguf", s(&e.dir));
    for out in [s(&m), s(&link), dotted.as_str()] {
        let args = [
            "synth",
            "--shape",
            "llama-3.2-1b",
            "--tokenizer-from",
            s(&m),
            "--out",
            out,
        ];
        assert_error(&e.run(&args), &["same file as --tokenizer-from"]);
    }
    assert_eq!(std::fs::read(&m).unwrap(), before, "the model was changed");
}

/// Issue 22.2: SIGTERM while synth writes leaves nothing at --out and no temp file.
#[cfg(unix)]
#[test]
fn synth_interrupted_leaves_nothing() {
    let e = Env::new("synth-term");
    let m = seeded(&e, "tiny.gguf", 7);
    let outdir = e.dir.join("o");
    std::fs::create_dir_all(&outdir).unwrap();
    let out = outdir.join("big.gguf");
    let args = [
        "synth",
        "--shape",
        "llama-3.1-8b",
        "--mix",
        "f32",
        "--tokenizer-from",
        s(&m),
        "--out",
        s(&out),
    ];
    let child = e.command(&args).spawn().expect("run synth");
    // Wait for the temporary file to appear, then stop the process.
    let t = Instant::now();
    while std::fs::read_dir(&outdir).unwrap().count() == 0 {
        assert!(t.elapsed() < Duration::from_secs(60), "synth never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: kill has no memory-safety requirements.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let o = finish(child, 60, &args);
    assert!(!o.status.success());
    let left: Vec<_> = std::fs::read_dir(&outdir).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Issue 22.8: `synth --tokenizer-from FIFO` is refused at once.
#[cfg(unix)]
#[test]
fn synth_tokenizer_from_a_fifo_is_refused_at_once() {
    let e = Env::new("synth-fifo");
    let fifo = e.dir.join("fifo");
    mkfifo(&fifo);
    let out = e.dir.join("x.gguf");
    let args = [
        "synth",
        "--shape",
        "llama-3.2-1b",
        "--tokenizer-from",
        s(&fifo),
        "--out",
        s(&out),
    ];
    assert_error(&e.run(&args), &["--tokenizer-from", "not a regular file"]);
    assert!(!out.exists());
}

/// Issue 22.3: a resume on another model file of the same name and size, on another
/// prompt set, or of results from before the sha256 was stored, is refused.
#[test]
fn eval_resume_on_another_model_or_prompt_set_is_refused() {
    let e = Env::new("resume-model");
    let m1 = seeded(&e, "a/tiny.gguf", 7);
    let m2 = seeded(&e, "b/tiny.gguf", 8);
    assert_eq!(
        std::fs::metadata(&m1).unwrap().len(),
        std::fs::metadata(&m2).unwrap().len()
    );
    let prompts = prompts(&e);
    let out_dir = e.dir.join("out");
    ok(&e.run(&eval_args(&prompts, &m1, &out_dir)));
    let resume = |m: &Path| -> Output {
        let mut a = eval_args(&prompts, m, &out_dir);
        a.push("--resume");
        e.run(&a)
    };
    ok(&resume(&m1));
    assert_error(&resume(&m2), &["--resume", "another model file", "sha256"]);
    std::fs::write(prompts.join("cat.answer"), "sun").unwrap();
    assert_error(&resume(&m1), &["--resume", "another prompt set"]);
    std::fs::write(prompts.join("cat.answer"), "mat").unwrap();
    ok(&resume(&m1));
    // run-settings.json from before the sha256 was recorded.
    let sp = out_dir.join("run-settings.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&sp).unwrap()).unwrap();
    v["model"].as_object_mut().unwrap().remove("sha256");
    v.as_object_mut().unwrap().remove("prompt_set_sha256");
    std::fs::write(&sp, v.to_string()).unwrap();
    assert_error(&resume(&m1), &["older kvscope", "new --out"]);
    let rows = std::fs::read_to_string(out_dir.join("results.jsonl")).unwrap();
    assert_eq!(rows.lines().count(), 1, "{rows}");
}

/// Issue 22.4: a second writer on one results folder is refused, naming the holder.
#[cfg(unix)]
#[test]
fn a_second_eval_on_one_folder_is_refused() {
    let e = Env::new("eval-lock");
    let m = seeded(&e, "tiny.gguf", 7);
    let prompts = prompts(&e);
    let out_dir = e.dir.join("out");
    let held = kvscope::output::FolderLock::take(&out_dir, "eval results").unwrap();
    let out = e.run(&eval_args(&prompts, &m, &out_dir));
    assert_error(
        &out,
        &["in use", &format!("pid {}", std::process::id()), "--out"],
    );
    assert!(!out_dir.join("results.jsonl").exists());
    drop(held);
    ok(&e.run(&eval_args(&prompts, &m, &out_dir)));
}

/// Issue 22.6: a model file's own chat template that would hang (nested
/// `range(100000)`) or render a gigabyte stops with one line naming the template.
#[test]
fn hostile_chat_templates_stop_with_one_line() {
    let e = Env::new("templates");
    let prompt = e.dir.join("p.txt");
    std::fs::write(&prompt, "Where did the cat sit?").unwrap();
    let cases = [
        (
            "slow.gguf",
            "{% for a in range(100000) %}{% for b in range(100000) %}{% for c in range(100000) %}x{% endfor %}{% endfor %}{% endfor %}",
            "steps",
        ),
        (
            "big.gguf",
            r#"{% for i in range(100) %}{{ "x" * 10000000 }}{% endfor %}"#,
            "renders more than",
        ),
    ];
    for (name, template, needle) in cases {
        let m = with_template(&e, name, template);
        let out = e.run(&["run", s(&prompt), "--model", s(&m), "--max-new", "2"]);
        assert_error(&out, &["chat template", needle, "--template"]);
    }
}

/// Issue 22.7 / 22.18: a pin list of a thousand copies of a huge range is parsed as one
/// range and refused by position, and a report with repeated, unsorted pins loads as the
/// same set (not "keep set ... not sorted and unique").
#[test]
fn huge_and_repeated_pins_are_handled() {
    let e = Env::new("pins");
    let m = seeded(&e, "tiny.gguf", 7);
    let prompt = e.dir.join("p.txt");
    std::fs::write(&prompt, "The cat sat on the mat. Where did the cat sit?").unwrap();
    let many = vec!["0-1000000"; 1000].join(",");
    let out = e.run(&[
        "run",
        s(&prompt),
        "--model",
        s(&m),
        "--method",
        "snapkv",
        "--budget",
        "4",
        "--window",
        "2",
        "--pin-keep",
        &many,
    ]);
    assert_error(&out, &["pinned position", "outside the prompt"]);
    let base = [
        "run",
        s(&prompt),
        "--model",
        s(&m),
        "--method",
        "snapkv",
        "--budget",
        "4",
        "--window",
        "2",
        "--max-new",
        "2",
        "--pin-keep",
        "1,3",
        "--json",
    ];
    let first = e.run(&base);
    ok(&first);
    let mut rep: serde_json::Value = serde_json::from_slice(&first.stdout).expect("report");
    let settings = rep
        .get_mut("settings")
        .expect("settings in the report")
        .as_object_mut()
        .unwrap();
    settings.insert("pin_keep".into(), serde_json::json!([3, 1, 3, 1, 1]));
    let f = e.dir.join("report.json");
    std::fs::write(&f, rep.to_string()).unwrap();
    let again = e.run(&[
        "run",
        s(&prompt),
        "--model",
        s(&m),
        "--from-report",
        s(&f),
        "--json",
    ]);
    ok(&again);
    let rep2: serde_json::Value = serde_json::from_slice(&again.stdout).expect("report");
    assert_eq!(rep2["settings"]["pin_keep"], serde_json::json!([1, 3]));
}
