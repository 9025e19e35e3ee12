//! The model: loading a GGUF, its tokenizer, and the forward pass.

pub mod arch;
pub mod config;
pub mod fetch;
pub mod forward;
pub mod gguf_check;
pub mod kernels;
pub mod kvcache;
pub mod linear;
pub mod metadata;
pub mod quant;
pub mod replay;
pub mod rope;
pub mod team;
pub mod template;
pub mod tokenizer;
pub mod weights;

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file::Content;
use std::path::Path;

pub use config::Config;
pub use forward::{DecodeState, Model, Observer, Precision, RowAttention, StepAttention};
pub use template::TemplateChoice;
pub use tokenizer::{Prompt, PromptInfo, PromptOptions, Tok};

/// Prefill chunk size: large enough for efficient GEMMs, small enough for progress.
pub const PREFILL_CHUNK: usize = 512;

/// A model with its tokenizer, loaded from one GGUF file.
pub struct Loaded {
    pub model: Model,
    pub tok: Tok,
    pub file_bytes: u64,
}

/// Opens a GGUF model file: checks it is a GGUF of a supported architecture, builds the
/// tokenizer from its metadata and loads the weights.
pub fn load(path: &Path) -> Result<Loaded> {
    let (content, mut r, file_bytes) = open_gguf(path)?;
    let config =
        arch::read_config(&content.metadata).with_context(|| format!("{}", path.display()))?;
    let tok = Tok::from_gguf(&content).with_context(|| format!("{}", path.display()))?;
    let model = load_weights(path, &content, &mut r, config)?;
    Ok(Loaded {
        model,
        tok,
        file_bytes,
    })
}

/// The model of a GGUF file without its tokenizer (for work on token ids).
pub fn load_model(path: &Path) -> Result<Model> {
    let (content, mut r, _) = open_gguf(path)?;
    let config =
        arch::read_config(&content.metadata).with_context(|| format!("{}", path.display()))?;
    load_weights(path, &content, &mut r, config)
}

type Reader = std::io::BufReader<std::fs::File>;

/// Opens `path` and reads its GGUF header; returns it with the reader and file size.
fn open_gguf(path: &Path) -> Result<(Content, Reader, u64)> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("model file {} not found or unreadable", path.display()))?;
    if meta.is_dir() {
        bail!("{} is a folder, not a GGUF model file", path.display());
    }
    // A FIFO would block the open forever and a device never ends.
    if !meta.is_file() {
        bail!(
            "{} is not a regular file (a FIFO, device or socket); pass a .gguf model file with --model",
            path.display()
        );
    }
    let f = std::fs::File::open(path)
        .with_context(|| format!("cannot open model file {}", path.display()))?;
    let mut r = std::io::BufReader::new(f);
    let mut magic = [0u8; 4];
    use std::io::{Read, Seek};
    if r.read_exact(&mut magic).is_err() || &magic != b"GGUF" {
        // Deleting is good advice only for the cached model, which is fetched again.
        let advice = if fetch::in_model_cache(path) {
            "delete it to fetch the default model again, or pass a .gguf model with --model"
        } else {
            "pass a .gguf model file with --model"
        };
        bail!(
            "{} is not a GGUF file (wrong magic bytes); {advice}",
            path.display()
        );
    }
    let alignment = gguf_check::alignment(&mut r)
        .with_context(|| format!("{}: corrupt or truncated GGUF header", path.display()))?;
    r.rewind()?;
    let content = Content::read(&mut r).map_err(|e| {
        anyhow::anyhow!(
            "{}: corrupt or truncated GGUF header: {}",
            path.display(),
            first_line(&e)
        )
    })?;
    gguf_check::check(&content, meta.len(), alignment)
        .with_context(|| format!("{}", path.display()))?;
    Ok((content, r, meta.len()))
}

fn load_weights(path: &Path, content: &Content, r: &mut Reader, config: Config) -> Result<Model> {
    // Decode streams every weight once per token: on huge pages it streams faster
    // (src/huge_pages.rs).
    let load = || weights::Weights::load_gguf(content, r, &config);
    #[cfg(target_os = "linux")]
    let weights = crate::huge_pages::for_weights(load);
    #[cfg(not(target_os = "linux"))]
    let weights = load();
    let weights = weights.with_context(|| {
        format!(
            "{}: cannot load the weights (truncated or corrupt file?)",
            path.display()
        )
    })?;
    Model::new(config, weights)
}

/// The first line of a candle error: with RUST_BACKTRACE set, candle appends a
/// backtrace to its message, and users get one actionable line from kvscope.
pub(crate) fn first_line(e: &candle_core::Error) -> String {
    let msg = match e {
        candle_core::Error::WithBacktrace { inner, .. } => inner.to_string(),
        other => other.to_string(),
    };
    msg.lines().next().unwrap_or("").to_string()
}
