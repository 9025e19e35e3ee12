//! What a shard of `eval niah|sweep --shard K/N` leaves in its folder besides the
//! results: `grid.json`, the whole grid (items in order, combos) and its shard, which
//! `eval merge` ([`super::merge`]) reads back to check and order the shards.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

use super::grid::{self, Budget, Combo};
use super::results::{self, Record, RUN_SETTINGS};
use crate::eviction::Method;
use crate::shard::Shard;

const GRID: &str = "grid.json";

/// The whole grid a shard belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Grid {
    /// `niah` or `sweep`.
    pub kind: String,
    /// Item names in the unsharded run's order.
    pub items: Vec<String>,
    pub lengths: Vec<usize>,
    pub depths: Vec<usize>,
    /// `(method, budget, window)` in order.
    pub combos: Vec<(String, String, usize)>,
}

fn combo_list(combos: &[Combo]) -> Vec<(String, String, usize)> {
    combos
        .iter()
        .map(|c| (c.method.name().to_string(), c.budget.to_string(), c.window))
        .collect()
}

impl Grid {
    /// A NIAH grid: one cell per (length, depth), in the unsharded run's order.
    pub fn niah(lengths: &[usize], depths: &[usize], combos: &[Combo]) -> Grid {
        let mut items = Vec::new();
        for &l in lengths {
            for &d in depths {
                items.push(grid::cell_name(l, d));
            }
        }
        Grid {
            kind: "niah".into(),
            items,
            lengths: lengths.to_vec(),
            depths: depths.to_vec(),
            combos: combo_list(combos),
        }
    }

    /// A sweep: one item per prompt, in order.
    pub fn sweep(prompts: impl IntoIterator<Item = String>, combos: &[Combo]) -> Grid {
        Grid {
            kind: "sweep".into(),
            items: prompts.into_iter().collect(),
            lengths: Vec::new(),
            depths: Vec::new(),
            combos: combo_list(combos),
        }
    }

    pub(super) fn combos(&self) -> Result<Vec<Combo>> {
        self.combos
            .iter()
            .map(|(m, b, w)| {
                Ok(Combo {
                    method: Method::named(m)
                        .with_context(|| format!("{GRID} names an unknown method {m}"))?,
                    budget: Budget::parse(b)?,
                    window: *w,
                })
            })
            .collect()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ShardFile {
    pub grid: Grid,
    pub shard: (usize, usize),
}

/// Written by a shard when its items are done.
pub fn write_grid(out: &Path, grid: &Grid, shard: Shard) -> Result<()> {
    let path = out.join(GRID);
    let f = ShardFile {
        grid: grid.clone(),
        shard: (shard.index, shard.count),
    };
    crate::output::write_atomic(
        &path,
        "shard grid file",
        (serde_json::to_string_pretty(&f)? + "\n").as_bytes(),
    )?;
    eprintln!(
        "kvscope: shard {}/{} done; its results are in {} (combine the shards with `kvscope eval merge`)",
        shard.index,
        shard.count,
        out.display()
    );
    Ok(())
}

/// A finished shard folder: its grid file, run settings and records.
pub(super) fn read_shard(dir: &Path) -> Result<(ShardFile, serde_json::Value, Vec<Record>)> {
    let gp = dir.join(GRID);
    let bytes =
        crate::input::read_bounded(&gp, "shard grid file", crate::input::MAX_SMALL_FILE_BYTES)
            .with_context(|| {
                format!(
                    "{} is not a finished `eval --shard` folder (no {GRID})",
                    dir.display()
                )
            })?;
    let sf: ShardFile =
        serde_json::from_slice(&bytes).with_context(|| format!("{} is damaged", gp.display()))?;
    let sp = dir.join(RUN_SETTINGS);
    let settings: serde_json::Value =
        crate::input::read_bounded(&sp, "run settings file", crate::input::MAX_SMALL_FILE_BYTES)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .with_context(|| format!("{} has no readable {RUN_SETTINGS}", dir.display()))?;
    let recs = results::read_records(&dir.join("results.jsonl"))?;
    Ok((sf, settings, recs))
}
