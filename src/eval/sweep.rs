//! `kvscope eval sweep`: prompts with expected answers x methods x budgets x windows:
//! accuracy, agreement with the full cache, first divergence and KV bytes; a table and a
//! score-vs-memory line plot.

use anyhow::Result;
use std::collections::HashSet;
use std::path::PathBuf;

use super::grid::{self, Combo, UnitKey};
use super::plot::{self, LineFigure, LinePanel, Series};
use super::progress::Progress;
use super::prompts::EvalPrompt;
use super::results::{self, Record, Writer};
use super::{mean, run_item, Ctx, Item};

pub struct SweepSpec {
    pub prompts: Vec<EvalPrompt>,
    pub combos: Vec<Combo>,
    pub out: PathBuf,
    pub resume: bool,
    pub fresh: bool,
    pub quiet: bool,
    /// Run only this shard's cells / prompts (and write `grid.json` for `eval merge`).
    pub shard: Option<crate::shard::Shard>,
}

/// One row of the sweep table: a combo's averages over the prompts.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub method: String,
    pub budget: String,
    pub window: usize,
    pub n: usize,
    /// Exact-answer rate over all prompts.
    pub accuracy: f64,
    /// Exact-answer rate over the prompts the full cache answers exactly (`None`: none).
    pub accuracy_full_ok: Option<f64>,
    pub rouge1: f64,
    pub token_match: f64,
    /// Mean first divergence; an identical output counts as diverging at the full
    /// output's length, so "never diverged" is not dropped from the mean.
    pub first_divergence: f64,
    pub kv_bytes: f64,
    pub kv_fraction: f64,
}

/// The table rows, in combo order; combos with no records yet are left out.
pub fn rows(records: &[Record], combos: &[Combo]) -> Vec<Row> {
    let mut out = Vec::new();
    for c in combos {
        let mine: Vec<&Record> = records
            .iter()
            .filter(|r| r.key() == c.key(&r.item))
            .collect();
        if mine.is_empty() {
            continue;
        }
        let ok: Vec<&&Record> = mine.iter().filter(|r| r.full_exact).collect();
        let m = |f: &dyn Fn(&Record) -> f64| mean(&mine, |r| f(r)).unwrap_or(0.0);
        out.push(Row {
            method: c.method.name().into(),
            budget: c.budget.to_string(),
            window: c.window,
            n: mine.len(),
            accuracy: m(&|r| r.exact as u8 as f64),
            accuracy_full_ok: mean(&ok, |r| r.exact as u8 as f64),
            rouge1: m(&|r| r.rouge1),
            token_match: m(&|r| r.token_match),
            first_divergence: m(&|r| r.first_divergence.unwrap_or(r.full_tokens) as f64),
            kv_bytes: m(&|r| r.kv_bytes as f64),
            kv_fraction: m(&|r| r.kv_fraction),
        });
    }
    out
}

pub fn table(rows: &[Row]) -> String {
    let mut s = format!(
        "{:<13} {:>6} {:>4} {:>3} {:>8} {:>8} {:>7} {:>7} {:>7} {:>10} {:>7}\n",
        "method",
        "budget",
        "win",
        "n",
        "accuracy",
        "acc|full",
        "ROUGE-1",
        "agree",
        "1st div",
        "KV bytes",
        "KV frac"
    );
    for r in rows {
        s.push_str(&format!(
            "{:<13} {:>6} {:>4} {:>3} {:>8.2} {:>8} {:>7.2} {:>7.2} {:>7.1} {:>10.0} {:>6.1}%\n",
            super::table_name(&r.method),
            r.budget,
            r.window,
            r.n,
            r.accuracy,
            r.accuracy_full_ok
                .map(|v| format!("{v:.2}"))
                .unwrap_or_else(|| "-".into()),
            r.rouge1,
            r.token_match,
            r.first_divergence,
            r.kv_bytes,
            r.kv_fraction * 100.0
        ));
    }
    if rows.iter().any(|r| super::is_upper_bound(&r.method)) {
        s.push_str(super::UPPER_BOUND_NOTE);
        s.push('\n');
    }
    s
}

/// One panel per window; one line per method through its budgets, ordered by KV fraction.
pub fn figure(
    rows: &[Row],
    metric: &str,
    reference: Option<f64>,
    value: impl Fn(&Row) -> f64,
) -> LineFigure {
    let mut windows: Vec<usize> = rows.iter().map(|r| r.window).collect();
    windows.sort_unstable();
    windows.dedup();
    let mut panels = Vec::new();
    for w in windows {
        let mut methods: Vec<&str> = Vec::new();
        for r in rows.iter().filter(|r| r.window == w) {
            if !methods.contains(&r.method.as_str()) {
                methods.push(&r.method);
            }
        }
        let series = methods
            .iter()
            .map(|m| {
                let mut points: Vec<(f64, f64)> = rows
                    .iter()
                    .filter(|r| r.window == w && r.method == *m)
                    .map(|r| (r.kv_fraction, value(r)))
                    .collect();
                points.sort_by(|a, b| a.0.total_cmp(&b.0));
                Series {
                    name: if super::is_upper_bound(m) {
                        format!("{m} (upper bound)")
                    } else {
                        m.to_string()
                    },
                    points,
                }
            })
            .collect();
        panels.push(LinePanel {
            title: format!("observation window {w}"),
            series,
            reference,
        });
    }
    LineFigure {
        title: format!("{metric} vs KV cache kept"),
        x_label: "KV cache kept (fraction of the full cache)".into(),
        y_label: metric.into(),
        panels,
    }
}

/// A digest of the prompt set (each prompt's name, text and expected answer), stored in
/// the run settings: `--resume` with edited, added or removed prompts is refused rather
/// than mixing rows of two prompt sets under the same names.
pub fn prompt_set_digest(prompts: &[EvalPrompt]) -> Result<String> {
    let mut parts: Vec<Vec<u8>> = Vec::new();
    for p in prompts {
        parts.push(p.name.as_bytes().to_vec());
        parts.push(crate::input::read_prompt(&p.path)?.into_bytes());
        parts.push(p.sidecar.answer.as_bytes().to_vec());
        parts.push(p.sidecar.kind.as_bytes().to_vec());
        parts.push(p.sidecar.must_include.join("\u{1f}").into_bytes());
    }
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    Ok(super::digest(&refs))
}

pub fn run(ctx: &Ctx, spec: &SweepSpec) -> Result<()> {
    super::create_out_folder(&spec.out)?;
    // One writer per results folder; released when this run ends in any way.
    let _lock = crate::output::FolderLock::take(&spec.out, "eval results")?;
    let mut settings = ctx.run_settings();
    settings["prompt_set_sha256"] = prompt_set_digest(&spec.prompts)?.into();
    let (mut writer, old) = Writer::open_run(
        &spec.out.join("results.jsonl"),
        spec.resume,
        spec.fresh,
        &settings,
    )?;
    let done = results::done_keys(&old);
    let work: Vec<(&EvalPrompt, Vec<&Combo>)> = spec
        .prompts
        .iter()
        .enumerate()
        .filter(|(i, _)| spec.shard.is_none_or(|s| s.owns(*i)))
        .map(|(_, p)| (p, grid::pending(&p.name, &spec.combos, &done)))
        .filter(|(_, pend)| !pend.is_empty())
        .collect();
    let total: usize = work.iter().map(|w| w.1.len()).sum();
    if !old.is_empty() && !spec.quiet {
        eprintln!(
            "kvscope: resuming: {} units already done, {total} to run on {} prompts",
            done.len(),
            work.len()
        );
    }
    let mut bar = Progress::new(total, spec.quiet);
    let mut all = old;
    for (p, pending) in &work {
        let item = Item {
            name: p.name.clone(),
            kind: p.sidecar.kind.clone(),
            text: crate::input::read_prompt(&p.path)?,
            answer: p.sidecar.answer.clone(),
            must_include: p.sidecar.must_include.clone(),
            length: None,
            depth: None,
        };
        all.extend(run_item(ctx, &item, pending, &mut writer, &mut bar)?);
    }
    bar.finish();
    if let Some(shard) = spec.shard {
        return super::shards::write_grid(
            &spec.out,
            &super::shards::Grid::sweep(spec.prompts.iter().map(|p| p.name.clone()), &spec.combos),
            shard,
        );
    }
    let mut keys: HashSet<UnitKey> = HashSet::new();
    for p in &spec.prompts {
        for c in &spec.combos {
            keys.insert(c.key(&p.name));
        }
    }
    let mut seen = HashSet::new();
    let recs: Vec<Record> = all
        .into_iter()
        .filter(|r| keys.contains(&r.key()) && seen.insert(r.key()))
        .collect();
    report(&spec.out, &spec.combos, &recs)
}

/// The tables, terminal report and figures of a finished sweep (also `eval merge`'s).
pub fn report(out: &std::path::Path, combos: &[Combo], recs: &[Record]) -> Result<()> {
    let spec_out = out;
    results::write_tables(spec_out, recs)?;
    let rows = rows(recs, combos);
    // Full-cache reference, once per prompt.
    let mut prompts_seen = HashSet::new();
    let full: Vec<&Record> = recs
        .iter()
        .filter(|r| prompts_seen.insert(r.item.clone()))
        .collect();
    println!(
        "sweep over {} prompts; full cache: exact {:.2}, ROUGE-1 {:.2}\n",
        full.len(),
        mean(&full, |r| r.full_exact as u8 as f64).unwrap_or(0.0),
        mean(&full, |r| r.full_rouge1).unwrap_or(0.0)
    );
    print!("{}", table(&rows));
    let (mut files, t1) = plot::write_lines(
        &figure(
            &rows,
            "ROUGE-1 recall of the answer",
            mean(&full, |r| r.full_rouge1),
            |r| r.rouge1,
        ),
        &spec_out.join("sweep-rouge1"),
    )?;
    let (f2, t2) = plot::write_lines(
        &figure(
            &rows,
            "token agreement with the full cache",
            Some(1.0),
            |r| r.token_match,
        ),
        &spec_out.join("sweep-agreement"),
    )?;
    files.extend(f2);
    super::niah::note_files(spec_out, &files, t1 && t2);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::grid::Budget;
    use crate::eval::results::sample_record;
    use crate::eviction::Method;

    #[test]
    fn rows_average_over_prompts_and_separate_full_ok() {
        let combos = grid::combos(
            &[
                crate::eviction::snapkv::METHOD,
                crate::eviction::h2o::METHOD,
            ],
            &[Budget::Percent(3.0)],
            &[8],
        );
        let mut a = sample_record("p1", "snapkv", "3%", 8);
        a.exact = true;
        a.rouge1 = 1.0;
        a.kv_fraction = 0.1;
        let mut b = sample_record("p2", "snapkv", "3%", 8);
        b.exact = false;
        b.rouge1 = 0.0;
        b.full_exact = false;
        b.kv_fraction = 0.3;
        b.first_divergence = Some(3);
        let r = rows(&[a, b], &combos);
        assert_eq!(r.len(), 1, "h2o has no records yet");
        assert_eq!(r[0].n, 2);
        assert_eq!(r[0].accuracy, 0.5);
        assert_eq!(r[0].accuracy_full_ok, Some(1.0));
        assert!((r[0].kv_fraction - 0.2).abs() < 1e-12);
        assert_eq!(r[0].first_divergence, 2.0);
        let t = table(&r);
        assert!(t.lines().nth(1).unwrap().starts_with("snapkv"));
        let f = figure(&r, "score", Some(0.9), |r| r.rouge1);
        assert_eq!(f.panels[0].reference, Some(0.9));
        assert_eq!(f.panels.len(), 1);
        assert_eq!(f.panels[0].series[0].points, vec![(0.2, 0.5)]);
        assert!(!t.contains("upper bound"));
    }

    #[test]
    fn the_oracle_is_marked_as_an_upper_bound() {
        let oracle = Method::named("oracle").expect("registered");
        let combos = grid::combos(
            &[crate::eviction::snapkv::METHOD, oracle],
            &[Budget::Percent(10.0)],
            &[8],
        );
        let recs = [
            sample_record("p1", "snapkv", "10%", 8),
            sample_record("p1", "oracle", "10%", 8),
        ];
        let r = rows(&recs, &combos);
        let t = table(&r);
        assert!(t.lines().any(|l| l.starts_with("oracle* ")), "{t}");
        assert!(t.lines().any(|l| l.starts_with("snapkv ")), "{t}");
        assert!(t.contains("upper bound"), "{t}");
        let f = figure(&r, "score", None, |r| r.rouge1);
        let names: Vec<&str> = f.panels[0].series.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["snapkv", "oracle (upper bound)"]);
    }
}
