//! `eval niah|sweep --shard K/N` and `eval merge`: a grid split over machines and put
//! back together.
//!
//! A shard runs the items (NIAH cells, sweep prompts) it owns, appends their records to
//! its `results.jsonl` as usual, and writes `grid.json`: the whole grid (items in order,
//! combos) and its shard. `eval merge` checks that the folders are the shards of one
//! run (same grid, same run settings, every shard once), orders the records as the
//! unsharded run writes them, and writes the same tables and figures.

use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::grid::UnitKey;
use super::results::{self, Record, RUN_SETTINGS};
use super::shards::read_shard;

/// Combines shard folders into `out` (a new or empty folder).
pub fn merge(dirs: &[PathBuf], out: &Path) -> Result<()> {
    let mut shards = Vec::new();
    for d in dirs {
        shards.push((d, read_shard(d)?));
    }
    let (d0, (first, settings0, _)) = &shards[0];
    let n = first.shard.1;
    let mut seen = vec![None::<&PathBuf>; n];
    for (d, (sf, settings, _)) in &shards {
        if sf.grid != first.grid {
            bail!(
                "{} and {} are shards of different grids (items, lengths, depths or combos differ); merge only the shards of one run",
                d0.display(),
                d.display()
            );
        }
        if settings != settings0 {
            bail!(
                "{} and {} were run with different settings ({}); merge only the shards of one run",
                d0.display(),
                d.display(),
                results::settings_diff(settings0, settings)
            );
        }
        let (k, count) = sf.shard;
        if count != n || k >= n {
            bail!(
                "{} is shard {k}/{count}, {} is shard {}/{n}: the shards of one run share N",
                d.display(),
                d0.display(),
                first.shard.0
            );
        }
        if let Some(other) = seen[k] {
            bail!(
                "{} and {} are both shard {k}/{n}",
                other.display(),
                d.display()
            );
        }
        seen[k] = Some(d);
    }
    if let Some(k) = seen.iter().position(Option::is_none) {
        bail!("shard {k}/{n} is missing: give every shard's folder");
    }
    let grid = &first.grid;
    let combos = grid.combos()?;
    let mut by_key: HashMap<UnitKey, Record> = HashMap::new();
    for (_, (_, _, recs)) in &shards {
        for r in recs {
            by_key.entry(r.key()).or_insert_with(|| r.clone());
        }
    }
    let mut recs = Vec::with_capacity(grid.items.len() * combos.len());
    for item in &grid.items {
        for c in &combos {
            let r = by_key.get(&c.key(item)).with_context(|| {
                format!(
                    "no shard has the result of {item} with {} {} window {}: was a shard stopped early? rerun it with --resume",
                    c.method.name(),
                    c.budget,
                    c.window
                )
            })?;
            recs.push(r.clone());
        }
    }
    if let Ok(m) = std::fs::symlink_metadata(out) {
        let empty = m.is_dir()
            && std::fs::read_dir(out)
                .map(|mut r| r.next().is_none())
                .unwrap_or(false);
        if !empty {
            bail!(
                "--out {} exists and is not an empty folder; choose a new one",
                out.display()
            );
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut lines = String::new();
    for r in &recs {
        lines.push_str(&serde_json::to_string(r)?);
        lines.push('\n');
    }
    let rp = out.join("results.jsonl");
    crate::output::write_atomic(&rp, "results file", lines.as_bytes())?;
    let sp = out.join(RUN_SETTINGS);
    crate::output::write_atomic(
        &sp,
        "run settings file",
        (serde_json::to_string_pretty(settings0)? + "\n").as_bytes(),
    )?;
    match grid.kind.as_str() {
        "niah" => {
            let spec = super::niah::NiahSpec {
                lengths: grid.lengths.clone(),
                depths: grid.depths.clone(),
                combos,
                out: out.to_path_buf(),
                resume: false,
                fresh: false,
                quiet: true,
                shard: None,
            };
            results::write_tables(out, &recs)?;
            super::niah::report(&spec, &recs)
        }
        _ => super::sweep::report(out, &combos, &recs),
    }
}
