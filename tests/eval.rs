//! `kvscope eval` end to end on the tiny GGUF (no download): NIAH grid files, resume
//! after an interruption (only the missing units run), the sweep, compresskv skipped
//! without a profile, and the figures being valid SVG/PNG of the size their layout says.

mod common;

use common::cli::{ok, s, Env, NIAH_GRID};
use kvscope::eval::plot::{self, HeatFigure, HeatPanel, LineFigure, LinePanel, Series};
use kvscope::testing;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;

/// The test's folder and the 2048-token tiny GGUF; `run` adds `--model`.
struct Eval {
    env: Env,
    gguf: PathBuf,
}

impl Eval {
    fn new(tag: &str) -> Eval {
        let env = Env::new(tag);
        let gguf = env.gguf_2048();
        Eval { env, gguf }
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut a = args.to_vec();
        a.extend(["--model", s(&self.gguf)]);
        self.env.run(&a)
    }
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .expect("read results")
        .lines()
        .map(String::from)
        .collect()
}

fn key(line: &str) -> (String, String, String, u64) {
    let v: Value = serde_json::from_str(line).expect("a JSON line");
    (
        v["item"].as_str().unwrap_or_default().into(),
        v["method"].as_str().unwrap_or_default().into(),
        v["budget"].as_str().unwrap_or_default().into(),
        v["window"].as_u64().unwrap_or_default(),
    )
}

#[test]
fn niah_writes_every_cell_then_resumes_only_the_missing_units() {
    let env = Eval::new("eval-niah");
    let out = env.env.dir.join("niah");
    let out_s = out.to_str().unwrap();
    let mut args = NIAH_GRID.to_vec();
    args.extend(["--out", out_s]);
    let o = env.run(&args);
    ok(&o);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("full cache"), "{stdout}");
    assert!(stdout.contains("snapkv budget 10% window 8"), "{stdout}");
    let jsonl = out.join("results.jsonl");
    let all = lines(&jsonl);
    // 2 lengths x 2 depths x 2 methods x 2 budgets x 1 window.
    assert_eq!(all.len(), 16);
    let csv = lines(&out.join("results.csv"));
    assert_eq!(csv.len(), 17);
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(json.as_array().map(Vec::len), Some(16));
    for ext in ["svg", "png"] {
        assert!(out.join(format!("niah-w8.{ext}")).is_file());
    }
    let first: Value = serde_json::from_str(&all[0]).unwrap();
    for field in [
        "exact",
        "rouge1",
        "kv_fraction",
        "token_match",
        "budget_tokens",
        "full_output",
    ] {
        assert!(!first[field].is_null(), "{field}");
    }

    // Without --resume an existing run is not overwritten.
    let o = env.run(&args);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--resume"));

    // Interrupt: keep 5 finished units and half of the sixth line.
    let mut partial = all[..5].join("\n");
    partial.push('\n');
    partial.push_str(&all[5][..all[5].len() / 2]);
    std::fs::write(&jsonl, partial).unwrap();
    let mut resume = args.clone();
    resume.retain(|a| *a != "--quiet");
    resume.push("--resume");
    let err = ok(&env.run(&resume));
    assert!(
        err.contains("resuming: 5 units already done, 11 to run"),
        "{err}"
    );
    let after = lines(&jsonl);
    assert_eq!(after.len(), 16);
    assert_eq!(after[..5], all[..5], "finished units are kept as they were");
    let mut k_before: Vec<_> = all.iter().map(|l| key(l)).collect();
    let mut k_after: Vec<_> = after.iter().map(|l| key(l)).collect();
    k_before.sort();
    k_after.sort();
    assert_eq!(k_before, k_after, "every unit exactly once");
    // The model is deterministic: re-run units reproduce the first run's outputs.
    let output = |l: &str| serde_json::from_str::<Value>(l).unwrap()["output"].clone();
    for l in &after[5..] {
        let orig = all.iter().find(|a| key(a) == key(l)).unwrap();
        assert_eq!(output(l), output(orig));
    }

    // Resuming a finished run runs nothing and still writes the tables.
    let err = ok(&env.run(&resume));
    assert!(err.contains("16 units already done, 0 to run"), "{err}");
}

#[test]
fn sweep_runs_prompts_with_sidecars_and_skips_compresskv_without_a_profile() {
    let env = Eval::new("eval-sweep");
    let prompts = env.env.dir.join("prompts");
    std::fs::create_dir_all(&prompts).unwrap();
    std::fs::write(
        prompts.join("a.txt"),
        "The key is under the blue pot by the door. Where is the key?",
    )
    .unwrap();
    std::fs::write(
        prompts.join("a.json"),
        r#"{"answer": "under the blue pot", "kind": "needle"}"#,
    )
    .unwrap();
    std::fs::write(prompts.join("b.txt"), "Count: one two three four five six.").unwrap();
    std::fs::write(prompts.join("b.answer"), "seven").unwrap();
    std::fs::write(prompts.join("demo.txt"), "no sidecar here").unwrap();
    let out = env.env.dir.join("sweep");
    let o = env.run(&[
        "eval",
        "sweep",
        prompts.to_str().unwrap(),
        "--methods",
        "compresskv,streamingllm,adakv",
        "--budgets",
        "10%,50%",
        "--windows",
        "4,8",
        "--max-new",
        "3",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = ok(&o);
    assert!(err.contains("compresskv skipped"), "{err}");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("sweep over 2 prompts"), "{stdout}");
    assert!(stdout.contains("acc|full"), "{stdout}");
    // 2 prompts x 2 methods x 2 budgets x 2 windows.
    assert_eq!(lines(&out.join("results.jsonl")).len(), 16);
    for f in [
        "sweep-rouge1.svg",
        "sweep-rouge1.png",
        "sweep-agreement.svg",
        "results.csv",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }

    // Only compresskv and no profile: nothing to run is an error, not a silent success.
    let o = env.run(&[
        "eval",
        "sweep",
        prompts.to_str().unwrap(),
        "--methods",
        "compresskv",
        "--out",
        env.env.dir.join("x").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no method left"), "{err}");
    assert_eq!(
        err.lines().filter(|l| l.contains("error")).count(),
        1,
        "{err}"
    );
}

#[test]
fn bad_flags_fail_with_one_line_before_any_work() {
    let env = Eval::new("eval-flags");
    for (args, msg) in [
        (vec!["eval", "niah", "--budgets", "3x"], "budget '3x'"),
        (vec!["eval", "niah", "--depths", "120"], "between 0 and 100"),
        (vec!["eval", "niah", "--methods", "nope"], "nope"),
        (vec!["eval", "niah", "--windows", "0"], "--windows"),
        (
            vec!["eval", "niah", "--windows", "65"],
            "window must be between 1 and 64",
        ),
        (
            vec!["eval", "sweep", "/no/such/dir"],
            "neither a prompt file nor a folder",
        ),
    ] {
        let o = env.run(&args);
        assert!(!o.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(msg), "{args:?}: {err}");
        let errors: Vec<&str> = err
            .lines()
            .filter(|l| l.starts_with("kvscope: error:"))
            .collect();
        assert_eq!(errors.len(), 1, "{err}");
        assert!(errors[0].contains(msg), "{args:?}: {err}");
    }
}

fn svg_size(text: &str) -> (u32, u32) {
    let attr = |name: &str| -> u32 {
        let at = text.find(&format!("{name}=\"")).expect("attribute") + name.len() + 2;
        let end = text[at..].find('"').unwrap() + at;
        text[at..end].parse().unwrap()
    };
    (attr("width"), attr("height"))
}

fn png_size(path: &Path) -> (u32, u32) {
    let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
    let mut reader = decoder.read_info().expect("a PNG header");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("decodable PNG data");
    assert!(buf.iter().any(|&b| b != 255), "the image is not blank");
    (info.width, info.height)
}

#[test]
fn figures_are_valid_svg_and_png_of_the_layout_size() {
    let dir = testing::temp_dir("eval-plots");
    let panel = |t: &str, v: f64| HeatPanel {
        title: t.into(),
        values: vec![
            vec![Some(v), None, Some(1.0)],
            vec![Some(0.0), Some(0.5), None],
        ],
    };
    let heat = HeatFigure {
        title: "NIAH".into(),
        row_labels: vec!["1024".into(), "2048".into()],
        col_labels: vec!["0".into(), "50".into(), "100".into()],
        panels: vec![
            vec![panel("full cache", 1.0)],
            vec![panel("snapkv 32", 0.2), panel("snapkv 64", 0.7)],
        ],
    };
    let (files, _) = plot::write_heatmap(&heat, &dir.join("heat")).unwrap();
    assert_eq!(files.len(), 2);
    let svg = std::fs::read_to_string(dir.join("heat.svg")).unwrap();
    assert!(svg.trim_start().starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("snapkv 64"));
    assert_eq!(svg_size(&svg), heat.size());
    assert_eq!(png_size(&dir.join("heat.png")), heat.size());

    let lines = LineFigure {
        title: "score".into(),
        x_label: "KV".into(),
        y_label: "ROUGE-1".into(),
        panels: vec![
            LinePanel {
                title: "w 8".into(),
                series: vec![Series {
                    name: "snapkv".into(),
                    points: vec![(0.01, 0.0), (0.03, 0.5), (0.1, 1.0)],
                }],
                reference: Some(0.8),
            },
            LinePanel {
                title: "w 32".into(),
                series: vec![],
                reference: None,
            },
        ],
    };
    plot::write_lines(&lines, &dir.join("lines")).unwrap();
    let svg = std::fs::read_to_string(dir.join("lines.svg")).unwrap();
    assert_eq!(svg_size(&svg), lines.size());
    assert_eq!(lines.size(), (920, 370));
    assert_eq!(png_size(&dir.join("lines.png")), lines.size());
    let _ = std::fs::remove_dir_all(dir);
}
