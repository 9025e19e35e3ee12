//! The adversarial sweep of issue 22's command-line classes, as one enumerated run
//! through the real binary on tiny GGUFs built here: every knob at non-finite, negative,
//! fractional and oversized spellings; pin lists; every field of a saved report set to
//! values of the wrong type or range (`--from-report`); shard specs of `eval` and
//! `profile make`; `--lengths` of every profile command; `eval --out` that is not a
//! folder; junk inputs to `profile merge|import` and `eval merge`; chat templates of the
//! wrong type or unbounded; `synth`'s inputs; `explain`'s steps and rescues; `bench`'s
//! steps. Each case is judged (no panic, no hang, exit status, one `kvscope: error:`
//! line naming the flag or field where one is expected) and the counts are printed:
//! `cargo test --test sweep_cli -- --nocapture`.

mod common;

use candle_core::quantized::gguf_file::Value as Gv;
use common::cli::{mkfifo, Env};
use serde_json::Value as Json;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// What a case must end in (besides no panic and no hang).
#[derive(Clone)]
enum Want {
    /// Non-zero exit with one error line holding every text (case-insensitive).
    Refuse(Vec<String>),
    /// Success, or one error line.
    Clean,
}

struct Case {
    name: String,
    args: Vec<String>,
    want: Want,
}

fn refuse(needles: &[&str]) -> Want {
    Want::Refuse(needles.iter().map(|s| s.to_string()).collect())
}

fn judge(out: &Output, want: &Want) -> Result<(), String> {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    if err.contains("panicked") || out.status.code() == Some(101) {
        return Err(format!("panic: {err}"));
    }
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("kvscope: error"))
        .collect();
    let one_error = || -> Result<&str, String> {
        if lines.len() != 1
            || err
                .lines()
                .any(|l| l.starts_with("Error") || l.contains("backtrace"))
        {
            return Err(format!("not one error line: {err}"));
        }
        Ok(lines[0])
    };
    match want {
        Want::Clean if out.status.success() => Ok(()),
        Want::Clean => one_error().map(|_| ()),
        Want::Refuse(_) if out.status.success() => Err("accepted".into()),
        Want::Refuse(needles) => {
            let line = one_error()?.to_lowercase();
            match needles.iter().find(|n| !line.contains(&n.to_lowercase())) {
                Some(n) => Err(format!("no '{n}' in: {}", lines[0])),
                None => Ok(()),
            }
        }
    }
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn p(path: &Path) -> String {
    path.to_str().expect("utf-8 path").to_string()
}

fn cases(e: &Env) -> Vec<Case> {
    let m = p(&e.gguf());
    let prompt = p(&e.prompt());
    let mut v: Vec<Case> = Vec::new();
    let mut add = |name: String, args: Vec<String>, want: Want| v.push(Case { name, args, want });
    let run = |extra: &[&str]| {
        let mut a = strs(&["run", &prompt, "--model", &m, "--max-new", "2"]);
        a.extend(strs(extra));
        a
    };

    // Float knobs: every non-finite spelling (and junk) names the flag.
    let float_knobs = [
        ("adakv-floor", "adakv"),
        ("cake-gamma", "cake"),
        ("cake-tau1", "cake"),
        ("cake-tau2", "cake"),
        ("headkv-beta", "headkv"),
        ("headkv-temp", "headkv"),
    ];
    let non_finite = [
        "inf",
        "-inf",
        "+inf",
        "Inf",
        "-INF",
        "infinity",
        "-Infinity",
        "nan",
        "NaN",
        "-nan",
        "+NaN",
        "1e309",
        "-1e309",
        "1e999999",
        "0x1p3",
        "",
    ];
    for (flag, method) in float_knobs {
        for x in non_finite {
            add(
                format!("run --{flag} {x:?}"),
                run(&["--method", method, &format!("--{flag}"), x]),
                refuse(&[&format!("--{flag}")]),
            );
        }
    }
    // Whole-number flags: junk is refused naming the flag; edges end cleanly.
    let int_flags = [
        ("pyramid-beta", "snapkv"),
        ("first-k", "snapkv"),
        ("random-seed", "random"),
        ("kernel", "snapkv"),
        ("budget", "snapkv"),
        ("window", "snapkv"),
        ("max-new", "snapkv"),
    ];
    let junk = [
        "-1",
        "1.5",
        "",
        "0x10",
        "1e3",
        "inf",
        "-inf",
        "nan",
        "abc",
        "-9223372036854775809",
    ];
    let edges = [
        "-0",
        "0",
        " 7",
        "18446744073709551615",
        "18446744073709551616",
        "99999999999999999999999",
    ];
    for (flag, method) in int_flags {
        for x in junk {
            add(
                format!("run --{flag} {x:?}"),
                run(&["--method", method, &format!("--{flag}"), x]),
                refuse(&[&format!("--{flag}")]),
            );
        }
        for x in edges {
            add(
                format!("run --{flag} {x:?}"),
                run(&["--method", method, &format!("--{flag}"), x]),
                Want::Clean,
            );
        }
    }
    // Pin lists.
    let pins = [
        "-5",
        "5-3",
        "a",
        "1,,2",
        "0-",
        "-",
        "99999999999",
        "0-18446744073709551616",
        "1-2-3",
        " ",
        ",",
        "3,3,3",
        "0-3,2-5",
        "1e3",
        "-1-3",
    ];
    for flag in ["--pin-keep", "--pin-evict"] {
        for x in pins {
            add(
                format!("run {flag} {x:?}"),
                run(&["--method", "snapkv", "--budget", "8", flag, x]),
                Want::Clean,
            );
        }
    }
    // Shard specs.
    let shards = [
        "0/0",
        "1/1",
        "-1/3",
        "3/3",
        "a/b",
        "1/",
        "/3",
        "18446744073709551616/2",
        "0/18446744073709551616",
        "1/2/3",
    ];
    for x in shards {
        add(
            format!("eval niah --shard {x:?}"),
            strs(&[
                "eval",
                "niah",
                "--model",
                &m,
                "--lengths",
                "64",
                "--quiet",
                "--shard",
                x,
                "--out",
                &p(&e.path("ev-shard")),
            ]),
            refuse(&["--shard"]),
        );
        add(
            format!("profile make --shard {x:?}"),
            strs(&[
                "profile",
                "make",
                "--model",
                &m,
                "--lengths",
                "64",
                "--shard",
                x,
                "--out",
                &p(&e.path("pm-shard.json")),
            ]),
            refuse(&["--shard"]),
        );
    }
    // Lengths nobody can use.
    for x in ["0", "10", "63", "-1", "", "a", "18446744073709551616"] {
        for cmd in [
            vec!["profile", "srh"],
            vec!["profile", "layers"],
            vec!["profile", "compare"],
            vec!["profile", "make"],
            vec!["eval", "niah"],
        ] {
            let mut a = strs(&cmd);
            a.extend(strs(&["--model", &m, "--lengths", x]));
            if cmd[0] == "eval" {
                a.extend(strs(&["--quiet", "--out", &p(&e.path("ev-len"))]));
            }
            add(
                format!("{} --lengths {x:?}", cmd.join(" ")),
                a,
                refuse(&["--lengths"]),
            );
        }
    }
    // eval --out that is not a folder.
    let file = e.file("a-file", b"keep me");
    let fifo = e.path("a-fifo");
    mkfifo(&fifo);
    let link = e.path("a-link");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    let prompts = e.path("prompts");
    std::fs::create_dir_all(&prompts).unwrap();
    std::fs::write(
        prompts.join("cat.txt"),
        "Where did the cat sit? On the mat.",
    )
    .unwrap();
    std::fs::write(prompts.join("cat.answer"), "mat").unwrap();
    for out in [p(&file), p(&fifo), "/dev/null".into(), p(&link)] {
        add(
            format!("eval sweep --out {out}"),
            strs(&[
                "eval",
                "sweep",
                &p(&prompts),
                "--model",
                &m,
                "--quiet",
                "--out",
                &out,
            ]),
            refuse(&["--out"]),
        );
        add(
            format!("eval niah --out {out}"),
            strs(&[
                "eval",
                "niah",
                "--model",
                &m,
                "--lengths",
                "64",
                "--quiet",
                "--out",
                &out,
            ]),
            refuse(&["--out", "folder"]),
        );
    }
    // Junk inputs to the merging and importing commands.
    let junk_files = [
        ("empty", e.file("j-empty.json", b"")),
        ("object", e.file("j-obj.json", b"{}")),
        ("array", e.file("j-arr.json", b"[]")),
        ("text", e.file("j-text.json", b"not json at all")),
        ("nul", e.file("j-nul.json", b"\0\0\0")),
        ("fifo", fifo.clone()),
        ("folder", prompts.clone()),
        ("device", PathBuf::from("/dev/zero")),
        ("missing", e.path("j-missing.json")),
    ];
    for (what, j) in &junk_files {
        add(
            format!("profile merge {what}"),
            strs(&[
                "profile",
                "merge",
                &p(j),
                "--model",
                &m,
                "--out",
                &p(&e.path("merged.json")),
            ]),
            Want::Refuse(vec![]),
        );
        add(
            format!("eval merge {what}"),
            strs(&["eval", "merge", &p(j), "--out", &p(&e.path("ev-merged"))]),
            Want::Refuse(vec![]),
        );
        add(
            format!("profile import --heads {what}"),
            strs(&[
                "profile",
                "import",
                "--heads",
                &p(j),
                "--layer-scores",
                &p(j),
                "--model",
                &m,
                "--out",
                &p(&e.path("imported.json")),
            ]),
            Want::Refuse(vec![]),
        );
        add(
            format!("profile show {what}"),
            strs(&["profile", "show", &p(j)]),
            Want::Refuse(vec![]),
        );
        add(
            format!("run --profile {what}"),
            run(&["--method", "snapkv", "--profile", &p(j)]),
            Want::Refuse(vec!["profile".into()]),
        );
    }
    // Chat templates of the wrong type, empty, broken or unbounded.
    let doubling = "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}";
    let macro_doubling = "{% macro d(s, n) %}{% if n > 0 %}{{ d(s ~ s, n - 1) }}{% else %}{{ s|length }}{% endif %}{% endmacro %}{{ d('x', 64) }}";
    let nested = "{% for a in range(100000) %}{% for b in range(100000) %}{% for c in range(100000) %}x{% endfor %}{% endfor %}{% endfor %}";
    let templates: Vec<(&str, Gv, Want)> = vec![
        ("u32", Gv::U32(7), refuse(&["chat template", "u32"])),
        ("f32", Gv::F32(1.5), refuse(&["chat template", "f32"])),
        ("bool", Gv::Bool(true), refuse(&["chat template", "bool"])),
        (
            "array",
            Gv::Array(vec![Gv::U8(1)]),
            refuse(&["chat template", "array"]),
        ),
        (
            "unclosed",
            Gv::String("{{ messages".into()),
            refuse(&["chat template"]),
        ),
        (
            "raise",
            Gv::String("{{ raise_exception('no') }}".into()),
            refuse(&["chat template"]),
        ),
        (
            "doubling namespace",
            Gv::String(doubling.into()),
            refuse(&["chat template", "memory"]),
        ),
        (
            "doubling macro",
            Gv::String(macro_doubling.into()),
            refuse(&["chat template", "memory"]),
        ),
        (
            "nested loops",
            Gv::String(nested.into()),
            refuse(&["chat template", "steps"]),
        ),
    ];
    for (i, (what, val, want)) in templates.into_iter().enumerate() {
        let g = p(&common::cli::with_chat_template(
            e,
            &format!("tmpl-{i}.gguf"),
            val,
        ));
        for choice in ["auto", "file"] {
            let mut a = strs(&[
                "run",
                &prompt,
                "--model",
                &g,
                "--max-new",
                "2",
                "--template",
                choice,
            ]);
            a.extend(strs(&["--method", "snapkv"]));
            add(
                format!("template {what} --template {choice}"),
                a,
                want.clone(),
            );
        }
    }
    // synth's inputs.
    let out = p(&e.path("synth-out.gguf"));
    for (what, src) in [
        ("missing", p(&e.path("missing.gguf"))),
        ("folder", p(&prompts)),
        ("fifo", p(&fifo)),
        ("device", "/dev/zero".to_string()),
    ] {
        add(
            format!("synth --tokenizer-from {what}"),
            strs(&[
                "synth",
                "--shape",
                "llama-3.2-1b",
                "--tokenizer-from",
                &src,
                "--out",
                &out,
            ]),
            refuse(&["--tokenizer-from"]),
        );
    }
    add(
        "synth --out = --tokenizer-from".into(),
        strs(&[
            "synth",
            "--shape",
            "llama-3.2-1b",
            "--tokenizer-from",
            &m,
            "--out",
            &m,
        ]),
        refuse(&["--out", "--tokenizer-from"]),
    );
    add(
        "synth --shape bogus".into(),
        strs(&[
            "synth",
            "--shape",
            "bogus",
            "--tokenizer-from",
            &m,
            "--out",
            &out,
        ]),
        refuse(&["shape"]),
    );
    // explain's steps, rescues and tops; bench's steps.
    let explain = |extra: &[&str]| {
        let mut a = strs(&[
            "explain",
            &prompt,
            "--model",
            &m,
            "--max-new",
            "4",
            "--method",
            "snapkv",
            "--budget",
            "8",
        ]);
        a.extend(strs(extra));
        a
    };
    for x in ["-1", "0", "1000", "18446744073709551616", "x"] {
        add(
            format!("explain --step {x}"),
            explain(&["--step", x]),
            Want::Clean,
        );
    }
    for x in ["0", "17", "100000", "-1"] {
        add(
            format!("explain --rescue {x}"),
            explain(&["--rescue", x]),
            Want::Clean,
        );
    }
    for x in ["0", "-1", "x"] {
        add(
            format!("explain --top {x}"),
            explain(&["--top", x]),
            Want::Clean,
        );
    }
    for x in ["0", "-1", "x"] {
        add(
            format!("bench --steps {x}"),
            strs(&["bench", "--model", &m, "--steps", x]),
            refuse(&["--steps"]),
        );
    }
    v
}

/// Every field of a saved report set to values of the wrong type or range.
fn report_cases(e: &Env, v: &mut Vec<Case>) {
    let m = p(&e.gguf());
    let prompt = p(&e.prompt());
    let out = e.run(&[
        "run",
        &prompt,
        "--model",
        &m,
        "--max-new",
        "2",
        "--method",
        "snapkv",
        "--budget",
        "8",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Json = serde_json::from_slice(&out.stdout).expect("report");
    let keys: Vec<String> = report["settings"]
        .as_object()
        .expect("settings object")
        .keys()
        .cloned()
        .collect();
    let values = [
        "null",
        "\"x\"",
        "-1",
        "1.5",
        "18446744073709551616",
        "[]",
        "{}",
        "true",
        "\"-inf\"",
        "1e999",
    ];
    for (i, k) in keys.iter().enumerate() {
        for (j, x) in values.iter().enumerate() {
            let mut r = report.clone();
            r["settings"][k] = Json::String("@@".into());
            let text = serde_json::to_string(&r).unwrap().replace("\"@@\"", x);
            let path = e.file(&format!("r-{i}-{j}.json"), text.as_bytes());
            v.push(Case {
                name: format!("--from-report settings.{k} = {x}"),
                args: strs(&[
                    "run",
                    &prompt,
                    "--model",
                    &m,
                    "--from-report",
                    &p(&path),
                    "--max-new",
                    "2",
                ]),
                want: Want::Clean,
            });
        }
    }
}

#[test]
fn sweep_cli_knobs_reports_specs_and_templates() {
    let e = Env::new("sweep-cli");
    let mut all = cases(&e);
    report_cases(&e, &mut all);
    let model_before = std::fs::read(e.gguf()).unwrap();
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(c) = all.get(i) else { break };
                let args: Vec<&str> = c.args.iter().map(String::as_str).collect();
                let child = e.command(&args).spawn().expect("spawn kvscope");
                let out = common::cli::finish(child, 120, &args);
                if let Err(why) = judge(&out, &c.want) {
                    failures.lock().unwrap().push(format!("{}: {why}", c.name));
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    let intact = std::fs::read(e.gguf()).unwrap() == model_before
        && std::fs::read(e.path("a-file")).unwrap() == b"keep me";
    let n = all.len() + 1;
    let failed = failures.len() + usize::from(!intact);
    println!(
        "sweep_cli: {n} cases, {} handled well, {failed} failures",
        n - failed
    );
    for f in &failures {
        println!("  FAIL {f}");
    }
    assert!(intact, "the model or a user's file was changed");
    assert!(
        failures.is_empty(),
        "{failed} failures:\n{}",
        failures.join("\n")
    );
}
