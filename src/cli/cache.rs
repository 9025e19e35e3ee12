//! `kvscope cache ls|clear`: the prefill cache's entries ([`crate::prefill_cache`]).

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::prefill_cache::{self, human_bytes};

#[derive(Args, Debug)]
pub struct CacheCmd {
    #[command(subcommand)]
    pub what: CacheWhat,
}

#[derive(Subcommand, Debug)]
pub enum CacheWhat {
    /// The stored prefills, most recently used first: model file, tokens, KV dtype,
    /// size and last use; then the total against the cap.
    Ls,
    /// Remove every stored prefill (other files in the folder are left alone).
    Clear,
}

pub fn run(a: &CacheCmd) -> Result<()> {
    let dir = prefill_cache::dir()?;
    match a.what {
        CacheWhat::Ls => {
            let (cap, notice) = prefill_cache::cap_from_env();
            if let Some(n) = notice {
                eprintln!("kvscope: notice: {n}");
            }
            let entries = prefill_cache::list(&dir);
            println!("prefill cache: {}", dir.display());
            let total: u64 = entries.iter().map(|e| e.bytes).sum();
            for e in &entries {
                let name = e
                    .path
                    .file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
                let used = age(e.last_use);
                match &e.meta {
                    Ok(m) => println!(
                        "  {name}  {}  {} tokens  {}  {:>9}  used {used}",
                        m.model_name,
                        m.len,
                        m.key.kv_dtype,
                        human_bytes(e.bytes)
                    ),
                    Err(why) => println!(
                        "  {name}  unreadable ({why}; `kvscope cache clear` removes it)  {:>9}",
                        human_bytes(e.bytes)
                    ),
                }
            }
            let cap_text = if cap == 0 {
                format!("off ({}=0)", prefill_cache::CAP_ENV)
            } else {
                human_bytes(cap)
            };
            println!(
                "{} entries, {} of {cap_text} (set {} to change the cap)",
                entries.len(),
                human_bytes(total),
                prefill_cache::CAP_ENV
            );
        }
        CacheWhat::Clear => {
            let (n, bytes) = prefill_cache::clear(&dir)?;
            println!(
                "removed {n} files ({}) from {}",
                human_bytes(bytes),
                dir.display()
            );
        }
    }
    Ok(())
}

/// "42 s ago", "3 min ago", "5 h ago", "2 d ago".
fn age(t: std::time::SystemTime) -> String {
    let s = t.elapsed().map_or(0, |d| d.as_secs());
    match s {
        0..=59 => format!("{s} s ago"),
        60..=3599 => format!("{} min ago", s / 60),
        3600..=86399 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86400),
    }
}
