//! Regression tests of the adversarial sweep (issue 14): signals, closed pipes, absurd
//! budgets, files that are not regular files, bad GGUF metadata, `--threads`, resumed
//! evaluations, the model cache's integrity and interrupted fetches. Each runs the real
//! binary on a tiny GGUF (or no model at all) and checks what a user sees: one line of
//! error naming the cause, no panic, no hang, nothing left behind.

mod common;

use candle_core::quantized::gguf_file::Value;
use common::cli::*;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- 2. broken pipes

/// Writing to a closed stdout ends quietly: status 0 or death by SIGPIPE, never a
/// panic (exit 101).
#[cfg(unix)]
#[test]
fn closed_stdout_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let e = Env::new("pipe");
    let profile = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/profiles/SmolLM2-135M-Instruct.Q4_1.json"
    );
    let m = e.gguf();
    let p = e.prompt();
    let cases: [&[&str]; 3] = [
        &["profile", "show", profile],
        &[
            "run",
            s(&p),
            "--model",
            s(&m),
            "--method",
            "snapkv",
            "--json",
        ],
        &["run", s(&p), "--model", s(&m), "--method", "snapkv"],
    ];
    for args in cases {
        // A pipe whose reading end is closed before kvscope writes anything.
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let mut c = e.command(args);
        c.stdout(writer);
        let out = finish(c.spawn().expect("spawn"), 60, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        let quiet = out.status.success() || out.status.signal() == Some(libc_sigpipe());
        assert!(quiet, "{args:?}: status {:?}; stderr {err}", out.status);
    }
}

#[cfg(unix)]
fn libc_sigpipe() -> i32 {
    13
}

// ---------------------------------------------------------------- 3. budgets

/// Budgets at and far beyond the prompt length keep everything, for every method and
/// allocator, instead of overflowing, hanging or evicting.
#[test]
fn huge_budgets_keep_everything() {
    let e = Env::new("huge-budget");
    let m = e.gguf();
    let p = e.prompt();
    for budget in [
        "18446744073709551615",
        "6148914691236517206",
        "9223372036854775808",
    ] {
        for method in ["snapkv", "pyramidkv", "adakv", "h2o", "streamingllm"] {
            let out = e.run(&[
                "run",
                s(&p),
                "--model",
                s(&m),
                "--method",
                method,
                "--budget",
                budget,
                "--max-new",
                "2",
                "--json",
            ]);
            let r = report(&out);
            let c = &r["compressed"];
            assert_eq!(
                c["kv_bytes"], r["full"]["kv_bytes"],
                "{method} --budget {budget}: {c}"
            );
            let len = r["prompt"]["tokens"].as_u64().expect("tokens");
            for b in r["settings"]["layer_budgets"].as_array().expect("budgets") {
                assert!(b.as_u64().expect("a budget") >= len, "{method}: {b}");
            }
        }
    }
}

#[test]
fn negative_and_oversized_numbers_name_the_problem() {
    let e = Env::new("neg-budget");
    let m = e.gguf();
    let p = e.prompt();
    let cases: [(&[&str], &[&str]); 5] = [
        (&["--budget", "-1"], &["--budget", "-1", "0 or more"]),
        (
            &["--budget", "99999999999999999999999"],
            &["--budget", "keeps everything"],
        ),
        (&["--threads", "-1"], &["--threads", "0 or more"]),
        (&["--window", "abc"], &["--window", "whole number"]),
        // Overflows prompt + max-new if added naively.
        (
            &["--max-new", "18446744073709551615"],
            &["context", "--max-new"],
        ),
    ];
    for (flags, needles) in cases {
        let mut args = vec!["run", s(&p), "--model", s(&m), "--method", "snapkv"];
        args.extend_from_slice(flags);
        let out = e.run(&args);
        let err = assert_error(&out, needles);
        assert!(!err.contains("-- -1"), "misleading advice: {err}");
    }
}

// ---------------------------------------------------------------- 4. bounded reads

#[cfg(unix)]
#[test]
fn devices_and_fifos_are_refused_at_once() {
    let e = Env::new("fifo");
    let m = e.gguf();
    let p = e.prompt();
    let fifo = e.dir.join("fifo");
    mkfifo(&fifo);
    let budgets = format!("@{}", s(&fifo));
    let zero_budgets = "@/dev/zero".to_string();
    let cases: Vec<(Vec<&str>, &[&str])> = vec![
        (
            vec!["run", "/dev/zero", "--model", s(&m)],
            &["prompt file", "/dev/zero", "not a regular file"],
        ),
        (
            vec!["run", s(&fifo), "--model", s(&m)],
            &["prompt file", "not a regular file"],
        ),
        (
            vec!["run", s(&p), "--model", "/dev/zero"],
            &["/dev/zero", "not a regular file"],
        ),
        (
            vec!["run", s(&p), "--model", s(&fifo)],
            &["not a regular file"],
        ),
        (
            vec![
                "run",
                s(&p),
                "--model",
                s(&m),
                "--method",
                "compresskv",
                "--profile",
                s(&fifo),
            ],
            &["profile", "not a regular file"],
        ),
        (
            vec![
                "run",
                s(&p),
                "--model",
                s(&m),
                "--method",
                "snapkv",
                "--layer-budgets",
                &budgets,
            ],
            &["budget file", "not a regular file"],
        ),
        (
            vec![
                "run",
                s(&p),
                "--model",
                s(&m),
                "--method",
                "snapkv",
                "--layer-budgets",
                &zero_budgets,
            ],
            &["budget file", "not a regular file"],
        ),
        (
            vec!["profile", "show", s(&fifo)],
            &["profile", "not a regular file"],
        ),
    ];
    for (args, needles) in cases {
        let out = e.run(&args);
        let err = assert_error(&out, needles);
        assert!(!err.contains("delete it"), "bad advice for a device: {err}");
    }
}

#[test]
fn oversized_prompt_is_refused_before_reading_it_all() {
    let e = Env::new("big-prompt");
    let m = e.gguf();
    let big = e.dir.join("big.txt");
    let f = std::fs::File::create(&big).expect("create");
    // Sparse: 1 GiB on the file system costs nothing.
    f.set_len(1 << 30).expect("set_len");
    let out = e.run(&["run", s(&big), "--model", s(&m)]);
    assert_error(&out, &["prompt file", "at most"]);
}

// ---------------------------------------------------------------- GGUF metadata

/// An edit of a GGUF's metadata.
type Edit = Box<dyn FnOnce(&mut Vec<(String, Value)>)>;

fn set(md: &mut [(String, Value)], key: &str, v: Value) {
    let slot = md.iter_mut().find(|(k, _)| k == key).expect("key present");
    slot.1 = v;
}

#[test]
fn absurd_gguf_metadata_is_refused_by_name() {
    let e = Env::new("gguf-meta");
    let p = e.prompt();
    let cases: Vec<(&str, Edit, Vec<&str>)> = vec![
        (
            "ctx.gguf",
            Box::new(|md| set(md, "llama.context_length", Value::U32(u32::MAX))),
            vec!["llama.context_length", "4294967295"],
        ),
        (
            "eps.gguf",
            Box::new(|md| {
                set(
                    md,
                    "llama.attention.layer_norm_rms_epsilon",
                    Value::F32(f32::NAN),
                )
            }),
            vec!["layer_norm_rms_epsilon", "NaN"],
        ),
        (
            "rope.gguf",
            Box::new(|md| set(md, "llama.rope.freq_base", Value::F32(0.0))),
            vec!["rope.freq_base", "positive"],
        ),
        (
            "heads.gguf",
            Box::new(|md| set(md, "llama.block_count", Value::U64(1 << 40))),
            vec!["llama.block_count"],
        ),
        (
            "align.gguf",
            Box::new(|md| md.push(("general.alignment".into(), Value::U32(0)))),
            vec!["general.alignment", "power of two"],
        ),
    ];
    for (name, edit, needles) in cases {
        let m = edited_gguf(&e, name, edit);
        let out = e.run(&["run", s(&p), "--model", s(&m)]);
        assert_error(&out, &needles);
    }
}

/// The first tensor info named `name` in a GGUF's bytes: the offset of its type field.
fn dtype_field(bytes: &[u8], name: &str) -> usize {
    let pat = name.as_bytes();
    let at = bytes
        .windows(pat.len())
        .position(|w| w == pat)
        .expect("tensor name in the header");
    let mut i = at + pat.len();
    let n_dims = u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes")) as usize;
    i += 4 + 8 * n_dims;
    i
}

#[test]
fn a_tensor_whose_type_does_not_match_its_bytes_is_refused() {
    let e = Env::new("gguf-dtype");
    let p = e.prompt();
    let mut bytes = std::fs::read(e.gguf()).expect("read");
    // blk.0.attn_q.weight is F32 (type 0); declare it F16 (type 1): half the bytes.
    let at = dtype_field(&bytes, "blk.0.attn_q.weight");
    assert_eq!(bytes[at..at + 4], 0u32.to_le_bytes());
    bytes[at..at + 4].copy_from_slice(&1u32.to_le_bytes());
    let m = e.file("dtype.gguf", &bytes);
    let out = e.run(&["run", s(&p), "--model", s(&m)]);
    assert_error(&out, &["blk.0.attn_q.weight", "does not match"]);
}

// ---------------------------------------------------------------- 5. threads

#[test]
fn threads_far_above_the_cores_are_capped_with_a_notice() {
    let e = Env::new("threads");
    let out = e.run_tiny(&["--method", "snapkv", "--threads", "1000", "--max-new", "2"]);
    let err = ok(&out);
    assert!(err.contains("--threads 1000 is more than"), "{err}");
    assert!(!err.contains("error"), "{err}");
}

// ---------------------------------------------------------------- 8. messages

#[test]
fn bench_prefill_zero_names_the_flag() {
    let e = Env::new("bench0");
    let m = e.gguf();
    let out = e.run(&["bench", "--model", s(&m), "--prefill", "0"]);
    assert_error(&out, &["--prefill", "at least 1"]);
}

/// An SRH-only profile (no layer errors) with the error-aware allocator is refused
/// with the reason, not run with uniform budgets under the name "error-aware".
#[test]
fn error_aware_without_layer_errors_is_refused() {
    let e = Env::new("srh-only");
    let out = e.run_tiny(&[
        "--method",
        "snapkv",
        "--allocator",
        "error-aware",
        "--budget",
        "16",
    ]);
    assert_error(&out, &["error-aware", "layer errors"]);
}

// ---------------------------------------------------------------- 9. the model cache

/// A fake `python3` for the fetch: `body` is the shell script run as `python3 -m pip
/// download ... -d DIR`.
#[cfg(unix)]
fn fake_python(e: &Env, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = e.dir.join("python3");
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    p
}

#[cfg(unix)]
#[test]
fn full_disk_during_the_fetch_is_one_line_naming_the_disk() {
    let e = Env::new("full-disk");
    let p = e.prompt();
    let py = fake_python(
        &e,
        "echo 'Traceback (most recent call last):' >&2\n\
         for i in 1 2 3 4 5 6 7 8 9 10; do echo \"  File x.py, line $i\" >&2; done\n\
         echo 'OSError: [Errno 28] No space left on device' >&2\n\
         echo 'ERROR: Could not install packages due to an OSError' >&2\nexit 1",
    );
    let out = e.run_with(&["run", s(&p)], &[("KVSCOPE_PYTHON", s(&py))]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    let errors: Vec<&str> = err.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(errors[0].contains("no space left"), "{err}");
    assert!(!err.contains("Traceback"), "pip's traceback leaked: {err}");
}

/// Stale `.fetch-PID` folders of dead processes are swept at the next fetch.
#[cfg(unix)]
#[test]
fn stale_fetch_folders_are_swept() {
    let e = Env::new("stale-fetch");
    let p = e.prompt();
    let models = e.home.join("models");
    // No process has this id (above the kernel's pid_max).
    let stale = models.join(".fetch-2000000000");
    std::fs::create_dir_all(&stale).expect("mkdir");
    std::fs::write(stale.join("part.whl"), vec![0u8; 1000]).expect("write");
    let py = fake_python(&e, "exit 1");
    let out = e.run_with(&["run", s(&p)], &[("KVSCOPE_PYTHON", s(&py))]);
    assert!(!out.status.success());
    assert!(!stale.exists(), "the stale fetch folder is still there");
}

/// SIGINT / SIGTERM during the fetch: the temporary folder is removed, pip is stopped,
/// and the process ends with the signal's status.
#[cfg(unix)]
#[test]
fn interrupted_fetch_leaves_nothing_behind() {
    use std::os::unix::process::ExitStatusExt;
    for sig in ["INT", "TERM"] {
        let e = Env::new("int-fetch");
        let p = e.prompt();
        let marker = e.dir.join("pip-stopped");
        // Says when it is stopped (the trap is set before the file the test waits
        // for), writes into the download folder, then waits to be killed.
        let body = format!(
            "trap 'touch {}; exit 1' TERM\n\
             for a in \"$@\"; do d=\"$a\"; done\n\
             head -c 100000 /dev/zero > \"$d/partial.whl\"\n\
             sleep 30 & wait",
            s(&marker)
        );
        let py = fake_python(&e, &body);
        let child = e
            .command_with(&["run", s(&p)], &[("KVSCOPE_PYTHON", s(&py))])
            .spawn()
            .expect("spawn");
        let models = e.home.join("models");
        let tmp = models.join(format!(".fetch-{}", child.id()));
        let t = Instant::now();
        while !tmp.join("partial.whl").exists() {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "the fake pip never ran"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let st = Command::new("kill")
            .args([format!("-{sig}"), child.id().to_string()])
            .status()
            .expect("kill");
        assert!(st.success());
        let out = finish(child, 30, &["run (interrupted)"]);
        let want = if sig == "INT" { 2 } else { 15 };
        assert_eq!(out.status.signal(), Some(want), "{:?}", out.status);
        assert!(!tmp.exists(), "{} is left behind", tmp.display());
        let t = Instant::now();
        while !marker.exists() && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(marker.exists(), "pip was not stopped");
    }
}

/// A cached default model of the right size but other bytes is not used: its hash is
/// checked because no stamp vouches for it.
#[cfg(unix)]
#[test]
fn cached_model_with_other_bytes_is_fetched_again() {
    let e = Env::new("damaged-cache");
    let p = e.prompt();
    let models = e.home.join("models");
    std::fs::create_dir_all(&models).expect("mkdir");
    let f = std::fs::File::create(models.join(kvscope::model::fetch::DEFAULT_MODEL.file_name))
        .expect("create");
    f.set_len(kvscope::model::fetch::DEFAULT_MODEL.size)
        .expect("set_len");
    drop(f);
    let py = fake_python(&e, "exit 1");
    let out = e.run_with(&["run", s(&p)], &[("KVSCOPE_PYTHON", s(&py))]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("is damaged (sha256"), "{err}");
}

// ---------------------------------------------------------------- 6. eval --resume

#[test]
fn eval_resume_with_other_settings_is_refused() {
    let e = Env::new("resume");
    let m = e.gguf();
    let prompts = e.dir.join("prompts");
    std::fs::create_dir_all(&prompts).expect("mkdir");
    std::fs::write(
        prompts.join("cat.txt"),
        "The cat sat on the mat. Where did the cat sit?",
    )
    .expect("write");
    std::fs::write(prompts.join("cat.answer"), "mat").expect("write");
    let out_dir = e.dir.join("out");
    let base = [
        "eval",
        "sweep",
        s(&prompts),
        "--model",
        s(&m),
        "--methods",
        "snapkv",
        "--budgets",
        "8",
        "--windows",
        "4",
        "--out",
        s(&out_dir),
    ];
    let first: Vec<&str> = base.iter().copied().chain(["--max-new", "2"]).collect();
    ok(&e.run(&first));
    // The same settings resume (nothing left to run).
    let same: Vec<&str> = first.iter().copied().chain(["--resume"]).collect();
    ok(&e.run(&same));
    let other: Vec<&str> = base
        .iter()
        .copied()
        .chain(["--max-new", "3", "--resume"])
        .collect();
    let out = e.run(&other);
    assert_error(&out, &["--resume", "max_new: 2 then, 3 now", "--fresh"]);
}

// ---------------------------------------------------------------- 1. signals and the TUI

/// The child process of `parent` (the inspector under the pane's shell), from /proc.
#[cfg(target_os = "linux")]
fn child_of(parent: u32) -> Option<u32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces, so split after ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|x| x.parse::<u32>().ok());
        if ppid == Some(parent) {
            return Some(pid);
        }
    }
    None
}

/// SIGTERM, SIGINT and SIGHUP sent to the inspector from outside restore the terminal
/// (raw mode off, main screen, cursor shown) and end it with the conventional status.
#[cfg(target_os = "linux")]
#[test]
fn signals_restore_the_terminal() {
    if !common::tmux::installed() {
        println!("hardening: tmux is not installed; skipping the signal test");
        return;
    }
    let e = Env::new("tui-signal");
    let m = e.gguf();
    let p = e.prompt();
    let bin = env!("CARGO_BIN_EXE_kvscope");
    for (sig, status) in [("TERM", 143), ("INT", 130), ("HUP", 129)] {
        let name = format!("kvscope-sig-{}-{sig}", std::process::id());
        let script = format!(
            "KVSCOPE_HOME='{}' KVSCOPE_CONFIG='{}' '{bin}' '{}' --model '{}' --method snapkv; \
             echo KVSCOPE_EXITED $?; stty -a | tr ' ' '\\n' | grep -x -e icanon -e -icanon; sleep 30",
            s(&e.home),
            s(&e.dir.join("config")),
            s(&p),
            s(&m)
        );
        let t = common::tmux::Tmux::bash(name, &script);
        t.wait("the ready status", 60, |s| s.contains("[ready]"));
        assert_eq!(
            t.format("#{alternate_on}"),
            "1",
            "the inspector is on the alternate screen"
        );
        let shell: u32 = t.format("#{pane_pid}").parse().expect("pane pid");
        let pid = child_of(shell).expect("the inspector's process");
        let st = Command::new("kill")
            .args([format!("-{sig}"), pid.to_string()])
            .status()
            .expect("kill");
        assert!(st.success());
        let last = t.wait("the shell after the signal", 20, |s| {
            s.contains("KVSCOPE_EXITED")
        });
        // Only the last line holding it: the echo, not the command line.
        let line = last
            .lines()
            .find(|l| l.starts_with("KVSCOPE_EXITED"))
            .unwrap_or("");
        assert_eq!(
            line,
            format!("KVSCOPE_EXITED {status}"),
            "SIG{sig}:\n{last}"
        );
        let after = t.wait("stty's answer", 10, |s| {
            s.lines().any(|l| l.trim().ends_with("icanon"))
        });
        assert!(
            after.lines().any(|l| l.trim() == "icanon"),
            "SIG{sig}: the terminal is still raw:\n{after}"
        );
        assert_eq!(
            t.format("#{alternate_on}"),
            "0",
            "SIG{sig}: still on the alternate screen"
        );
        assert_eq!(
            t.format("#{cursor_flag}"),
            "1",
            "SIG{sig}: the cursor is hidden"
        );
        assert!(!after.contains("1 Head map"), "SIG{sig}:\n{after}");
    }
}
