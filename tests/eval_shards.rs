//! `eval niah|sweep --shard K/N` on several "machines" and `eval merge`: the merged
//! folder holds the unsharded run's records (decode times aside: they are measured, not
//! computed), and the same tables and figures, byte for byte. A missing shard is one
//! error line and nothing is written.

mod common;

use common::cli::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;

/// `eval niah` of [`NIAH_GRID`] on the 2048-token tiny GGUF, optionally one shard.
fn niah(env: &Env, out: &Path, shard: Option<&str>) -> Output {
    let model = env.gguf_2048();
    let mut a = NIAH_GRID.to_vec();
    a.extend(["--model", s(&model), "--out", s(out)]);
    if let Some(k) = shard {
        a.extend(["--shard", k]);
    }
    env.run(&a)
}

/// Three prompts with answers: a sweep of three items.
fn prompts(env: &Env) -> std::path::PathBuf {
    let p = env.path("prompts");
    std::fs::create_dir_all(&p).unwrap();
    for (name, text, answer) in [
        (
            "a",
            "The key is under the blue pot by the door. Where is the key?",
            "under the blue pot",
        ),
        ("b", "Count: one two three four five six.", "seven"),
        (
            "c",
            "The ship sails at noon from the north pier. When does it sail?",
            "at noon",
        ),
    ] {
        std::fs::write(p.join(format!("{name}.txt")), text).unwrap();
        std::fs::write(p.join(format!("{name}.answer")), answer).unwrap();
    }
    p
}

/// `eval sweep` of `prompts` on the tiny GGUF, optionally one shard.
fn sweep(env: &Env, prompts: &Path, out: &Path, shard: Option<&str>) -> Output {
    let model = env.gguf_2048();
    let mut a = vec![
        "eval",
        "sweep",
        s(prompts),
        "--budgets",
        "10%,50%",
        "--windows",
        "4",
        "--methods",
        "snapkv,streamingllm",
        "--max-new",
        "3",
        "--quiet",
        "--model",
        s(&model),
        "--out",
        s(out),
    ];
    if let Some(k) = shard {
        a.extend(["--shard", k]);
    }
    env.run(&a)
}

/// The records without their measured decode times.
fn records(dir: &Path) -> Vec<Value> {
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r["decode_ms"] = Value::Null;
            r
        })
        .collect()
}

/// The units a shard folder's records hold.
fn units(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("results.jsonl"))
        .unwrap()
        .lines()
        .count()
}

/// `eval merge` of the shard folders `dirs` into `merged` (beside them): the records are
/// those of the unsharded run in `whole`, and each of `files` is the same byte for byte.
fn merge_equals(env: &Env, dirs: &[PathBuf], whole: &Path, files: &[&str]) {
    let merged = env.dir.join("merged");
    let mut args = vec!["eval", "merge"];
    args.extend(dirs.iter().map(|d| s(d)));
    args.extend(["--out", s(&merged)]);
    ok(&env.run(&args));
    assert_eq!(records(&merged), records(whole));
    for f in files {
        assert_eq!(
            std::fs::read(merged.join(f)).unwrap(),
            std::fs::read(whole.join(f)).unwrap(),
            "{f}"
        );
    }
}

#[test]
fn merged_shards_equal_the_unsharded_run() {
    let env = Env::new("eval-shards");
    let whole = env.dir.join("whole");
    ok(&niah(&env, &whole, None));
    let mut dirs = Vec::new();
    for k in 0..3 {
        let d = env.dir.join(format!("s{k}"));
        let o = niah(&env, &d, Some(&format!("{k}/3")));
        ok(&o);
        // A shard writes its records and grid, no tables or figures.
        assert!(d.join("grid.json").is_file());
        assert!(!d.join("results.csv").exists());
        dirs.push(d);
    }
    // 4 cells over 3 shards: 2, 1 and 1 cells of 4 units each.
    assert_eq!(
        (units(&dirs[0]), units(&dirs[1]), units(&dirs[2])),
        (8, 4, 4)
    );

    let merged = env.dir.join("merged");
    // Without shard 2: one line, nothing written.
    let o = env.run(&[
        "eval",
        "merge",
        dirs[0].to_str().unwrap(),
        dirs[1].to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("shard 2/3 is missing"), "{err}");
    assert!(!merged.exists());

    merge_equals(
        &env,
        &dirs,
        &whole,
        &[
            "results.csv",
            "niah-w8.svg",
            "niah-w8.png",
            "run-settings.json",
        ],
    );
}

#[test]
fn merged_sweep_shards_equal_the_unsharded_sweep() {
    let env = Env::new("sweep-shards");
    let prompts = prompts(&env);
    let whole = env.dir.join("whole");
    ok(&sweep(&env, &prompts, &whole, None));
    let mut dirs = Vec::new();
    for k in 0..2 {
        let d = env.dir.join(format!("s{k}"));
        ok(&sweep(&env, &prompts, &d, Some(&format!("{k}/2"))));
        assert!(d.join("grid.json").is_file());
        assert!(!d.join("results.csv").exists());
        dirs.push(d);
    }
    // 3 prompts over 2 shards: 2 and 1 prompts of 4 units (2 methods x 2 budgets) each.
    assert_eq!((units(&dirs[0]), units(&dirs[1])), (8, 4));

    merge_equals(
        &env,
        &dirs,
        &whole,
        &[
            "results.csv",
            "sweep-rouge1.svg",
            "sweep-rouge1.png",
            "sweep-agreement.svg",
            "sweep-agreement.png",
            "run-settings.json",
        ],
    );
}
