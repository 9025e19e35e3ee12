//! `kvscope eval niah`: context lengths x needle depths, for every method x budget x
//! window. One Session (prefill + full-cache decode) per cell; every combo reuses it.

use anyhow::Result;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::grid::{self, Combo, UnitKey};
use super::plot::{self, HeatFigure, HeatPanel};
use super::progress::Progress;
use super::results::{self, Record, Writer};
use super::{run_item, Ctx, Item};
use crate::haystack::needles::MAGIC;
use crate::haystack::{self, Kind, Placement};
use crate::model::{PromptOptions, Tok};

pub struct NiahSpec {
    pub lengths: Vec<usize>,
    pub depths: Vec<usize>,
    pub combos: Vec<Combo>,
    pub out: PathBuf,
    pub resume: bool,
    pub fresh: bool,
    pub quiet: bool,
    /// Run only this shard's cells / prompts (and write `grid.json` for `eval merge`).
    pub shard: Option<crate::shard::Shard>,
}

/// The needle and the first filler paragraph of a cell: fixed by the cell's place in the
/// grid, so a resumed run rebuilds exactly the same prompt.
pub fn cell_variant(length_idx: usize, depth_idx: usize, n_depths: usize) -> (usize, usize) {
    let k = length_idx * n_depths + depth_idx;
    (k % MAGIC.len(), (k * 7) % haystack::filler::NOTES.len())
}

/// The user text and the answer of the cell at `(length index, depth index, number of
/// depths)` of the grid, for a haystack of about `len` tokens with the needle at `depth`
/// percent, as `opts` turns text into a prompt.
pub fn cell_prompt(
    tok: &Tok,
    opts: &PromptOptions,
    (li, di, n_depths): (usize, usize, usize),
    len: usize,
    depth: usize,
) -> Result<(String, String)> {
    // Without a chat template (a base model, or --raw) the question is followed by the
    // start of its answer, which such a model continues.
    let continuation = !tok.templated(opts)?;
    let (needle, start) = cell_variant(li, di, n_depths);
    let needle = &MAGIC[needle];
    let count = |s: &str| -> Result<usize> { Ok(tok.prompt(s, opts)?.ids.len()) };
    let empty = count("")?;
    let mut h = haystack::build(
        &Kind::NOTES,
        needle,
        len,
        Placement::Nearest(depth),
        start,
        &mut |frame| count(frame),
        // "\n\n" + paragraph: what each paragraph adds to the prompt.
        &mut |para| Ok(count(&format!("\n\n{para}"))?.saturating_sub(empty)),
    )?;
    if continuation {
        h.text = format!("{}\n{}", h.text, needle.answer_lead());
    }
    Ok((h.text, needle.answer.to_string()))
}

/// Score per (length, depth) for the records that `pick` accepts, read with `value`.
pub fn heat_values(
    records: &[Record],
    lengths: &[usize],
    depths: &[usize],
    pick: impl Fn(&Record) -> bool,
    value: impl Fn(&Record) -> f64,
) -> Vec<Vec<Option<f64>>> {
    lengths
        .iter()
        .map(|&l| {
            depths
                .iter()
                .map(|&d| {
                    records
                        .iter()
                        .find(|r| r.length == Some(l) && r.depth == Some(d) && pick(r))
                        .map(&value)
                })
                .collect()
        })
        .collect()
}

/// The records that belong to this grid (a resumed file may hold others).
pub fn in_grid(
    records: Vec<Record>,
    lengths: &[usize],
    depths: &[usize],
    combos: &[Combo],
) -> Vec<Record> {
    let mut keys: HashSet<UnitKey> = HashSet::new();
    for &l in lengths {
        for &d in depths {
            for c in combos {
                keys.insert(c.key(&grid::cell_name(l, d)));
            }
        }
    }
    let mut seen = HashSet::new();
    records
        .into_iter()
        .filter(|r| keys.contains(&r.key()) && seen.insert(r.key()))
        .collect()
}

/// A digest of what niah's prompts are built from (the filler document, notes and
/// needles), stored in the run settings: a kvscope whose haystack changed does not resume
/// a table built from the old one.
pub fn prompt_set_digest() -> String {
    let mut parts: Vec<&[u8]> = vec![b"niah".as_slice(), haystack::filler::DOCUMENT.as_bytes()];
    parts.extend(haystack::filler::NOTES.iter().map(|n| n.as_bytes()));
    for m in &MAGIC {
        parts.extend([
            m.fact.as_bytes(),
            m.question.as_bytes(),
            m.answer.as_bytes(),
        ]);
    }
    super::digest(&parts)
}

pub fn run(ctx: &Ctx, spec: &NiahSpec) -> Result<()> {
    super::create_out_folder(&spec.out)?;
    // One writer per results folder; released when this run ends in any way.
    let _lock = crate::output::FolderLock::take(&spec.out, "eval results")?;
    let mut settings = ctx.run_settings();
    settings["prompt_set_sha256"] = prompt_set_digest().into();
    let (mut writer, old) = Writer::open_run(
        &spec.out.join("results.jsonl"),
        spec.resume,
        spec.fresh,
        &settings,
    )?;
    let done = results::done_keys(&old);
    let mut work = Vec::new();
    for (li, &len) in spec.lengths.iter().enumerate() {
        for (di, &depth) in spec.depths.iter().enumerate() {
            if spec
                .shard
                .is_some_and(|s| !s.owns(li * spec.depths.len() + di))
            {
                continue;
            }
            let name = grid::cell_name(len, depth);
            let pending = grid::pending(&name, &spec.combos, &done);
            if !pending.is_empty() {
                work.push((li, di, len, depth, name, pending));
            }
        }
    }
    let total: usize = work.iter().map(|w| w.5.len()).sum();
    if !old.is_empty() && !spec.quiet {
        eprintln!(
            "kvscope: resuming: {} units already done, {total} to run in {} cells",
            done.len(),
            work.len()
        );
    }
    let mut bar = Progress::new(total, spec.quiet);
    let mut fresh = Vec::new();
    for (li, di, len, depth, name, pending) in &work {
        let (text, answer) = cell_prompt(
            &ctx.loaded.tok,
            &ctx.prompt,
            (*li, *di, spec.depths.len()),
            *len,
            *depth,
        )?;
        let item = Item {
            name: name.clone(),
            kind: "niah".into(),
            text,
            answer,
            must_include: Vec::new(),
            length: Some(*len),
            depth: Some(*depth),
        };
        fresh.extend(run_item(ctx, &item, pending, &mut writer, &mut bar)?);
    }
    bar.finish();
    if let Some(shard) = spec.shard {
        return super::shards::write_grid(
            &spec.out,
            &super::shards::Grid::niah(&spec.lengths, &spec.depths, &spec.combos),
            shard,
        );
    }
    let mut all = old;
    all.extend(fresh);
    let recs = in_grid(all, &spec.lengths, &spec.depths, &spec.combos);
    results::write_tables(&spec.out, &recs)?;
    report(spec, &recs)?;
    Ok(())
}

/// The terminal report and the figures of a finished grid (also `eval merge`'s).
pub fn report(spec: &NiahSpec, recs: &[Record]) -> Result<()> {
    let rows: Vec<String> = spec.lengths.iter().map(|l| l.to_string()).collect();
    let cols: Vec<String> = spec.depths.iter().map(|d| d.to_string()).collect();
    let colour = super::stdout_colour();
    let full = heat_values(
        recs,
        &spec.lengths,
        &spec.depths,
        |_| true,
        |r| r.full_rouge1,
    );
    println!(
        "NIAH: ROUGE-1 recall x 100 of the needle's number; rows: context tokens, columns: needle depth %\n"
    );
    println!(
        "{}",
        plot::terminal_heatmap("full cache", &rows, &cols, &full, colour)
    );
    let mut windows: Vec<usize> = spec.combos.iter().map(|c| c.window).collect();
    windows.dedup();
    windows.sort_unstable();
    windows.dedup();
    println!(
        "{:<14} {:>7} {:>6} {:>8} {:>7} {:>8}",
        "method", "budget", "window", "kv frac", "exact", "ROUGE-1"
    );
    for c in &spec.combos {
        let mine: Vec<&Record> = recs.iter().filter(|r| r.key() == c.key(&r.item)).collect();
        let m = |f: &dyn Fn(&Record) -> f64| {
            super::mean(&mine, |r| f(r))
                .map(|v| format!("{v:.3}"))
                .unwrap_or_else(|| "-".into())
        };
        println!(
            "{:<14} {:>7} {:>6} {:>8} {:>7} {:>8}",
            super::table_name(c.method.name()),
            c.budget.to_string(),
            c.window,
            m(&|r| r.kv_fraction),
            m(&|r| r.exact as u8 as f64),
            m(&|r| r.rouge1)
        );
    }
    if spec
        .combos
        .iter()
        .any(|c| super::is_upper_bound(c.method.name()))
    {
        println!("{}", super::UPPER_BOUND_NOTE);
    }
    println!();
    for c in &spec.combos {
        let v = heat_values(
            recs,
            &spec.lengths,
            &spec.depths,
            |r| r.key() == c.key(&r.item),
            |r| r.rouge1,
        );
        let title = format!(
            "{} budget {} window {}",
            c.method.name(),
            c.budget,
            c.window
        );
        println!(
            "{}",
            plot::terminal_heatmap(&title, &rows, &cols, &v, colour)
        );
    }
    let mut methods = Vec::new();
    let mut budgets = Vec::new();
    for c in &spec.combos {
        if !methods.contains(&c.method) {
            methods.push(c.method);
        }
        if !budgets.contains(&c.budget) {
            budgets.push(c.budget);
        }
    }
    let mut written = Vec::new();
    let mut labelled = true;
    for &w in &windows {
        let mut panels = vec![vec![HeatPanel {
            title: "full cache".into(),
            values: full.clone(),
        }]];
        for &m in &methods {
            let row = budgets
                .iter()
                .map(|&b| {
                    let combo = Combo {
                        method: m,
                        budget: b,
                        window: w,
                    };
                    HeatPanel {
                        title: format!("{} {}", super::table_name(m.name()), b),
                        values: heat_values(
                            recs,
                            &spec.lengths,
                            &spec.depths,
                            |r| r.key() == combo.key(&r.item),
                            |r| r.rouge1,
                        ),
                    }
                })
                .collect();
            panels.push(row);
        }
        let fig = HeatFigure {
            title: format!("Needle in a haystack, observation window {w}"),
            row_labels: rows.clone(),
            col_labels: cols.clone(),
            panels,
        };
        let (files, text) = plot::write_heatmap(&fig, &figure_stem(&spec.out, w))?;
        labelled &= text;
        written.extend(files);
    }
    note_files(&spec.out, &written, labelled);
    Ok(())
}

pub fn figure_stem(out: &Path, window: usize) -> PathBuf {
    out.join(format!("niah-w{window}"))
}

/// Tells the user where the files went (stderr: stdout is the report).
pub fn note_files(out: &Path, figures: &[PathBuf], labelled: bool) {
    eprintln!(
        "kvscope: wrote {} (results.jsonl, results.csv, results.json) and {}",
        out.display(),
        figures
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if !labelled {
        eprintln!(
            "kvscope: no TrueType font found for PNG labels (set KVSCOPE_FONT=/path/to/font.ttf); the PNGs have no text, the SVGs do"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::grid::Budget;
    use crate::eval::results::sample_record;

    fn rec(len: usize, depth: usize, method: &str, score: f64) -> Record {
        let mut r = sample_record(&grid::cell_name(len, depth), method, "64", 8);
        r.length = Some(len);
        r.depth = Some(depth);
        r.rouge1 = score;
        r
    }

    #[test]
    fn heat_values_place_cells_and_leave_missing_ones_empty() {
        let recs = vec![
            rec(1024, 0, "snapkv", 1.0),
            rec(2048, 50, "snapkv", 0.5),
            rec(1024, 50, "h2o", 0.0),
        ];
        let v = heat_values(
            &recs,
            &[1024, 2048],
            &[0, 50],
            |r| r.method == "snapkv",
            |r| r.rouge1,
        );
        assert_eq!(v, vec![vec![Some(1.0), None], vec![None, Some(0.5)]]);
    }

    #[test]
    fn in_grid_drops_foreign_and_duplicate_records() {
        let combos = grid::combos(
            &[crate::eviction::snapkv::METHOD],
            &[Budget::Tokens(64)],
            &[8],
        );
        let recs = vec![
            rec(1024, 0, "snapkv", 1.0),
            rec(1024, 0, "snapkv", 0.0),
            rec(4096, 0, "snapkv", 1.0),
            rec(1024, 0, "h2o", 1.0),
        ];
        let kept = in_grid(recs, &[1024], &[0, 50], &combos);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].rouge1, 1.0);
    }

    #[test]
    fn cell_variants_rotate_needles() {
        let v: Vec<usize> = (0..5).map(|d| cell_variant(0, d, 5).0).collect();
        assert_eq!(v, [0, 1, 2, 3, 4]);
        assert_eq!(cell_variant(1, 0, 5).0, 0);
        assert_ne!(cell_variant(1, 0, 5).1, cell_variant(0, 0, 5).1);
    }
}
