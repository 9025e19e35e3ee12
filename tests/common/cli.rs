//! The real binary on tiny GGUFs built in the test: a fresh KVSCOPE_HOME / KVSCOPE_CONFIG
//! and folder per test, a hang guard, and the checks of the one line a user sees. One
//! copy for every CLI test (errors, hardening*, eval_shards, profile_make_cli).

use candle_core::quantized::{gguf_file, QTensor};
use kvscope::testing::{self, GgufSpec};
use serde_json::Value as Json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A test's folder (removed when dropped), with `home` as KVSCOPE_HOME.
pub struct Env {
    pub dir: PathBuf,
    pub home: PathBuf,
}

impl Env {
    pub fn new(tag: &str) -> Env {
        let dir = testing::temp_dir(tag);
        let home = dir.join("home");
        std::fs::create_dir_all(&home).expect("create home");
        Env { dir, home }
    }

    /// `name` in the test's folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes `bytes` to `name` in the test's folder.
    pub fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, bytes).expect("write test file");
        p
    }

    /// A short English prompt, `prompt.txt`.
    pub fn prompt(&self) -> PathBuf {
        self.file(
            "prompt.txt",
            "The cat sat in the sun, then the dog came in. Where did the cat sit?".as_bytes(),
        )
    }

    /// The tiny llama GGUF of the default spec, `tiny.gguf` (written once).
    pub fn gguf(&self) -> PathBuf {
        let p = self.path("tiny.gguf");
        if !p.exists() {
            testing::write_tiny_gguf(&p, &GgufSpec::default()).expect("write tiny gguf");
        }
        p
    }

    /// The tiny llama GGUF with a 2048-token context, `tiny-2048.gguf` (written once):
    /// room for the evaluations' 700-token needle prompts.
    pub fn gguf_2048(&self) -> PathBuf {
        let p = self.path("tiny-2048.gguf");
        if !p.exists() {
            let spec = GgufSpec {
                context_length: 2048,
                ..GgufSpec::default()
            };
            testing::write_tiny_gguf(&p, &spec).expect("write tiny gguf");
        }
        p
    }

    /// A tiny GGUF of `spec` at `name` (folders created).
    pub fn gguf_with(&self, name: &str, spec: &GgufSpec) -> PathBuf {
        let p = self.path(name);
        std::fs::create_dir_all(p.parent().expect("a parent")).expect("mkdir");
        testing::write_tiny_gguf(&p, spec).expect("write tiny gguf");
        p
    }

    /// The binary with `args`, isolated from the user's environment, plus `env`.
    pub fn command_with(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kvscope"));
        c.args(args)
            .env("KVSCOPE_HOME", &self.home)
            .env("KVSCOPE_CONFIG", self.path("config"))
            .env_remove("RUST_BACKTRACE")
            .env_remove("KVSCOPE_PYTHON")
            .env_remove("SLURM_ARRAY_TASK_ID")
            .env_remove("JOB_COMPLETION_INDEX")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            c.env(k, v);
        }
        c
    }

    pub fn command(&self, args: &[&str]) -> Command {
        self.command_with(args, &[])
    }

    /// Runs to the end, failing the test (and killing the process) after 120 s: a hang
    /// is a bug here.
    pub fn run_with(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let child = self.command_with(args, env).spawn().expect("run kvscope");
        finish(child, 120, args)
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with(args, &[])
    }

    /// `kvscope run` of [`Env::prompt`] on [`Env::gguf`], then `args`.
    pub fn run_tiny(&self, args: &[&str]) -> Output {
        let (p, m) = (self.prompt(), self.gguf());
        let mut a = vec!["run", s(&p), "--model", s(&m)];
        a.extend_from_slice(args);
        self.run(&a)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A small `eval niah` grid for the 2048-token tiny GGUF (2 lengths x 2 depths x 2
/// methods x 2 budgets, one window): 16 units; `--model` and `--out` to be added.
pub const NIAH_GRID: &[&str] = &[
    "eval",
    "niah",
    "--lengths",
    "300,700",
    "--depths",
    "0,100",
    "--budgets",
    "16,10%",
    "--windows",
    "8",
    "--methods",
    "snapkv,h2o",
    "--max-new",
    "3",
    "--quiet",
];

/// Waits for `child`, killing it and failing the test after `secs` (a hang guard, not a
/// timing assertion).
pub fn finish(mut child: Child, secs: u64, what: &[&str]) -> Output {
    let t = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if t.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "kvscope {what:?} hung for {secs} s; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Non-zero exit, no panic, and stderr is exactly one line `kvscope: error: ...` that
/// contains every needle (case-insensitive).
pub fn assert_error(out: &Output, needles: &[&str]) -> String {
    assert_error_without(out, needles, &[])
}

/// [`assert_error`], and the line holds none of the `absent` texts.
pub fn assert_error_without(out: &Output, needles: &[&str], absent: &[&str]) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr: {err}"
    );
    assert!(!err.contains("panicked"), "panic: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "stderr should be one line, got: {err}");
    check_error_line(lines[0], needles);
    let lower = lines[0].to_lowercase();
    for n in absent {
        assert!(!lower.contains(&n.to_lowercase()), "'{n}' in: {err}");
    }
    err
}

/// `line` is `kvscope: error: ...` and holds every needle (case-insensitive).
pub fn check_error_line(line: &str, needles: &[&str]) {
    assert!(
        line.starts_with("kvscope: error:"),
        "error line has the wrong prefix: {line}"
    );
    let lower = line.to_lowercase();
    for n in needles {
        assert!(
            lower.contains(&n.to_lowercase()),
            "error line does not mention '{n}': {line}"
        );
    }
}

/// Success; returns stderr.
pub fn ok(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "kvscope failed: {err}");
    err
}

/// Success, and stdout is one JSON report.
pub fn report(out: &Output) -> Json {
    ok(out);
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON report")
}

#[cfg(unix)]
pub fn mkfifo(p: &Path) {
    let st = Command::new("mkfifo").arg(p).status().expect("mkfifo");
    assert!(st.success());
}

#[cfg(unix)]
pub fn is_fifo(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_fifo())
}

/// A copy of the test's tiny GGUF ([`Env::gguf`]) at `name` with its metadata edited.
pub fn edited_gguf(
    e: &Env,
    name: &str,
    edit: impl FnOnce(&mut Vec<(String, gguf_file::Value)>),
) -> PathBuf {
    let src = e.gguf();
    let mut f = std::fs::File::open(&src).expect("open");
    let content = gguf_file::Content::read(&mut f).expect("read tiny gguf");
    let mut md: Vec<(String, gguf_file::Value)> = content.metadata.clone().into_iter().collect();
    md.sort_by(|a, b| a.0.cmp(&b.0));
    edit(&mut md);
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let tensors: Vec<(String, QTensor)> = names
        .iter()
        .map(|n| {
            let t = content
                .tensor(&mut f, n, &candle_core::Device::Cpu)
                .expect("tensor");
            (n.to_string(), t)
        })
        .collect();
    let dst = e.path(name);
    let md_refs: Vec<(&str, &gguf_file::Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut w = std::fs::File::create(&dst).expect("create");
    gguf_file::write(&mut w, &md_refs, &t_refs).expect("write gguf");
    dst
}

/// The tiny GGUF at `name` with `tokenizer.chat_template` set to `v`.
pub fn with_chat_template(e: &Env, name: &str, v: gguf_file::Value) -> PathBuf {
    edited_gguf(e, name, |md| {
        md.retain(|(k, _)| k != "tokenizer.chat_template");
        md.push(("tokenizer.chat_template".into(), v));
    })
}
