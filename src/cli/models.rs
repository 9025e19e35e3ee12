//! `kvscope models`: the model cache.

use anyhow::Result;

use crate::model::fetch::{self, DEFAULT_MODEL};

pub fn run() -> Result<()> {
    let dir = fetch::models_dir()?;
    println!("model cache: {}", dir.display());
    println!("  (set KVSCOPE_HOME to move it; models live in $KVSCOPE_HOME/models)");
    println!(
        "default model: {} from the Python package {}=={} ({} bytes, sha256 {})",
        DEFAULT_MODEL.file_name,
        DEFAULT_MODEL.package,
        DEFAULT_MODEL.version,
        DEFAULT_MODEL.size,
        DEFAULT_MODEL.sha256
    );
    let files = fetch::list_cache()?;
    if files.is_empty() {
        println!("cache is empty: the default model is fetched on first use");
    }
    for (p, size) in files {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tag = if name == DEFAULT_MODEL.file_name {
            if size == DEFAULT_MODEL.size {
                "  [default model]"
            } else {
                "  [default model, WRONG SIZE: will be fetched again]"
            }
        } else {
            ""
        };
        println!("  {name}  {:.1} MB{tag}", size as f64 / 1e6);
    }
    Ok(())
}
