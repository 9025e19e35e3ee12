//! Results on disk: one JSON line per finished unit (appended and flushed as soon as the
//! unit finishes, so an interrupted run keeps everything it finished), the set of keys
//! already done (for `--resume`), and the CSV/JSON copies written at the end.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::grid::UnitKey;

/// One finished unit: one item (NIAH cell or prompt) under one method, budget, window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// NIAH cell (`len1024-depth25`) or prompt name.
    pub item: String,
    pub method: String,
    /// The budget as given: tokens (`64`) or a percentage (`3%`).
    pub budget: String,
    pub window: usize,
    /// Tokens kept per layer that the budget resolved to for this prompt.
    pub budget_tokens: usize,
    pub prompt_tokens: usize,
    /// NIAH only: the target context length and the needle depth in percent.
    pub length: Option<usize>,
    pub depth: Option<usize>,
    /// Prompt kind (sweep) or `niah`.
    pub kind: String,
    pub answer: String,
    pub output: String,
    pub exact: bool,
    pub rouge1: f64,
    /// The full cache on the same item, for reference.
    pub full_output: String,
    pub full_exact: bool,
    pub full_rouge1: f64,
    /// Tokens the full cache generated (an identical compressed output "diverges" here).
    pub full_tokens: usize,
    pub token_match: f64,
    pub first_divergence: Option<usize>,
    pub kv_bytes: usize,
    pub full_kv_bytes: usize,
    pub kv_fraction: f64,
    pub decode_ms: f64,
    /// Everything that produced this row, as a `run --json` report's `settings` (absent in
    /// rows written before kvscope recorded it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<crate::report::SettingsPart>,
}

impl Record {
    pub fn key(&self) -> UnitKey {
        UnitKey {
            item: self.item.clone(),
            method: self.method.clone(),
            budget: self.budget.clone(),
            window: self.window,
        }
    }
}

/// Reads a results file. A line that does not parse is skipped only when it is the last
/// one (a run killed mid-write leaves a torn last line); anywhere else it means the file
/// is not ours, and we stop rather than silently redo or mix work.
pub fn read_records(path: &Path) -> Result<Vec<Record>> {
    Ok(scan(path)?.0)
}

/// The records, and the byte length of the file's good part (everything before a torn
/// last line).
fn scan(path: &Path) -> Result<(Vec<Record>, usize)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let last = lines.iter().rposition(|l| !l.trim().is_empty());
    let mut out = Vec::with_capacity(lines.len());
    let mut good = 0usize;
    for (i, line) in lines.iter().enumerate() {
        if !line.trim().is_empty() {
            match serde_json::from_str::<Record>(line) {
                Ok(r) => out.push(r),
                Err(_) if Some(i) == last => break,
                Err(e) => bail!(
                    "{} line {} is not a kvscope eval record ({e}); move the file away or pick another --out",
                    path.display(),
                    i + 1
                ),
            }
        }
        good += line.len();
    }
    Ok((out, good))
}

/// The file beside `results.jsonl` that holds the run's settings.
pub const RUN_SETTINGS: &str = "run-settings.json";

/// `key: old -> new` for every top-level key that differs.
pub(crate) fn settings_diff(old: &serde_json::Value, new: &serde_json::Value) -> String {
    let empty = serde_json::Map::new();
    let (o, n) = (
        old.as_object().unwrap_or(&empty),
        new.as_object().unwrap_or(&empty),
    );
    let mut keys: Vec<&String> = o.keys().chain(n.keys()).collect();
    keys.sort();
    keys.dedup();
    let null = serde_json::Value::Null;
    let diffs: Vec<String> = keys
        .into_iter()
        .filter(|k| o.get(*k) != n.get(*k))
        .map(|k| {
            format!(
                "{k}: {} then, {} now",
                o.get(k).unwrap_or(&null),
                n.get(k).unwrap_or(&null)
            )
        })
        .collect();
    if diffs.is_empty() {
        "not comparable".into()
    } else {
        diffs.join("; ")
    }
}

/// Appends records to the JSONL file, one flushed line each.
pub struct Writer {
    file: File,
    path: PathBuf,
}

impl Writer {
    /// Opens `path` for a run. With `resume`, existing records are returned and new ones
    /// appended (a torn last line is cut off first so the next line starts clean).
    /// Without it an existing file is an error: overwriting finished work by accident
    /// would cost minutes to hours of compute.
    pub fn open(path: &Path, resume: bool, fresh: bool) -> Result<(Writer, Vec<Record>)> {
        let mut records = Vec::new();
        crate::output::check_target(path, "results file")?;
        if path.exists() {
            if fresh {
                std::fs::remove_file(path)
                    .with_context(|| format!("cannot remove {}", path.display()))?;
            } else if resume {
                let (recs, good) = scan(path)?;
                records = recs;
                // Cut a torn last line off and make sure the next record starts on a new
                // line. Finished lines are kept byte for byte (re-serialising could
                // change the last digit of a float).
                let f = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .with_context(|| format!("cannot open {} for writing", path.display()))?;
                f.set_len(good as u64)
                    .with_context(|| format!("cannot truncate {}", path.display()))?;
                let text = std::fs::read(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                if text.last().is_some_and(|&b| b != b'\n') {
                    let mut f = OpenOptions::new().append(true).open(path)?;
                    f.write_all(b"\n")?;
                }
            } else {
                bail!(
                    "{} already holds results; pass --resume to continue that run or --fresh to start over",
                    path.display()
                );
            }
        }
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create folder {}", dir.display()))?;
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {} for writing", path.display()))?;
        Ok((
            Writer {
                file,
                path: path.to_path_buf(),
            },
            records,
        ))
    }

    /// [`Writer::open`] for a run whose settings (everything a unit's result depends on
    /// besides its key: `--max-new`, the knobs, the model, the profile) are `settings`.
    /// They are stored in `run-settings.json` beside the results; `--resume` with other
    /// settings, or of results without that file, is refused, so one table never mixes
    /// units computed under different settings.
    pub fn open_run(
        path: &Path,
        resume: bool,
        fresh: bool,
        settings: &serde_json::Value,
    ) -> Result<(Writer, Vec<Record>)> {
        let sp = path.with_file_name(RUN_SETTINGS);
        if resume && !fresh && path.exists() {
            let old = crate::input::read_bounded(
                &sp,
                "run settings file",
                crate::input::MAX_SMALL_FILE_BYTES,
            )
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
            match old {
                Some(old) if old.get("prompt_set_sha256").is_none()
                    || old.pointer("/model/sha256").is_none_or(|v| v.is_null()) =>
                {
                    bail!(
                        "--resume: {} was written by an older kvscope that did not record the model's sha256 and the prompt set, so this run cannot be checked against it; start a new --out (or pass --fresh)",
                        path.display()
                    )
                }
                Some(old) if old.pointer("/model/sha256") != settings.pointer("/model/sha256") => bail!(
                    "--resume: {} was run on another model file (sha256 {} then, {} now); pass the same --model, --fresh to start over, or another --out",
                    path.display(),
                    old.pointer("/model/sha256").unwrap_or(&serde_json::Value::Null),
                    settings.pointer("/model/sha256").unwrap_or(&serde_json::Value::Null)
                ),
                Some(old) if old.get("prompt_set_sha256") != settings.get("prompt_set_sha256") => bail!(
                    "--resume: {} was run on another prompt set (prompt files edited, added or removed since); pass the same prompts, --fresh to start over, or another --out",
                    path.display()
                ),
                None => bail!(
                    "--resume: {} has no readable {RUN_SETTINGS} beside it, so its settings cannot be checked against this run's; pass --fresh to start over, or another --out",
                    path.display()
                ),
                Some(old) if &old != settings => bail!(
                    "--resume: {} was run with other settings ({}); pass the same ones, --fresh to start over, or another --out",
                    path.display(),
                    settings_diff(&old, settings)
                ),
                Some(_) => {}
            }
        }
        let opened = Writer::open(path, resume, fresh)?;
        let text = serde_json::to_string_pretty(settings)?;
        crate::output::write_atomic(&sp, "run settings file", (text + "\n").as_bytes())?;
        Ok(opened)
    }

    pub fn append(&mut self, r: &Record) -> Result<()> {
        let mut line = serde_json::to_string(r)?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.flush())
            .with_context(|| format!("cannot write to {}", self.path.display()))
    }
}

pub fn done_keys(records: &[Record]) -> HashSet<UnitKey> {
    records.iter().map(Record::key).collect()
}

/// Quotes a CSV field when it needs it (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

pub const CSV_HEADER: &str = "item,kind,length,depth,method,budget,window,budget_tokens,prompt_tokens,exact,rouge1,full_exact,full_rouge1,token_match,first_divergence,kv_bytes,full_kv_bytes,kv_fraction,answer,output";

/// Every record as CSV, in the order given.
pub fn to_csv(records: &[Record]) -> String {
    let opt = |v: Option<usize>| v.map(|x| x.to_string()).unwrap_or_default();
    let mut s = String::from(CSV_HEADER);
    s.push('\n');
    for r in records {
        let row = [
            csv_field(&r.item),
            csv_field(&r.kind),
            opt(r.length),
            opt(r.depth),
            r.method.clone(),
            csv_field(&r.budget),
            r.window.to_string(),
            r.budget_tokens.to_string(),
            r.prompt_tokens.to_string(),
            r.exact.to_string(),
            format!("{:.4}", r.rouge1),
            r.full_exact.to_string(),
            format!("{:.4}", r.full_rouge1),
            format!("{:.4}", r.token_match),
            opt(r.first_divergence),
            r.kv_bytes.to_string(),
            r.full_kv_bytes.to_string(),
            format!("{:.5}", r.kv_fraction),
            csv_field(&r.answer),
            csv_field(&r.output),
        ];
        s.push_str(&row.join(","));
        s.push('\n');
    }
    s
}

/// Writes `results.csv` and `results.json` (all records) beside the JSONL file.
pub fn write_tables(dir: &Path, records: &[Record]) -> Result<()> {
    crate::output::write_atomic(
        &dir.join("results.csv"),
        "results table",
        to_csv(records).as_bytes(),
    )?;
    crate::output::write_atomic(
        &dir.join("results.json"),
        "results table",
        serde_json::to_string_pretty(records)?.as_bytes(),
    )?;
    Ok(())
}

#[cfg(test)]
pub(crate) fn sample_record(item: &str, method: &str, budget: &str, window: usize) -> Record {
    Record {
        item: item.into(),
        method: method.into(),
        budget: budget.into(),
        window,
        budget_tokens: 64,
        prompt_tokens: 1000,
        length: Some(1024),
        depth: Some(50),
        kind: "niah".into(),
        answer: "48217".into(),
        output: "It is 48217, \"yes\"".into(),
        exact: true,
        rouge1: 1.0,
        full_output: "48217".into(),
        full_exact: true,
        full_rouge1: 1.0,
        full_tokens: 4,
        token_match: 0.5,
        first_divergence: Some(1),
        kv_bytes: 100,
        full_kv_bytes: 1000,
        kv_fraction: 0.1,
        decode_ms: 1.0,
        settings: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_keeps_finished_lines_and_drops_a_torn_last_line() {
        let dir = crate::testing::temp_dir("results");
        let path = dir.join("out").join("results.jsonl");
        let (mut w, old) = Writer::open(&path, false, false).unwrap();
        assert!(old.is_empty());
        let a = sample_record("c1", "snapkv", "64", 8);
        let b = sample_record("c2", "snapkv", "3%", 32);
        w.append(&a).unwrap();
        w.append(&b).unwrap();
        drop(w);
        // A run killed mid-write: half a line at the end.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"item\":\"c3\",\"meth").unwrap();
        drop(f);
        let err = Writer::open(&path, false, false).err().unwrap().to_string();
        assert!(err.contains("--resume"), "{err}");
        let (mut w, old) = Writer::open(&path, true, false).unwrap();
        assert_eq!(old, vec![a.clone(), b.clone()]);
        let keys = done_keys(&old);
        assert!(keys.contains(&b.key()));
        let c = sample_record("c3", "h2o", "64", 8);
        w.append(&c).unwrap();
        drop(w);
        assert_eq!(read_records(&path).unwrap(), vec![a, b, c]);
        // --fresh starts over.
        let (_w, old) = Writer::open(&path, false, true).unwrap();
        assert!(old.is_empty());
        assert!(read_records(&path).unwrap().is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_foreign_line_in_the_middle_is_an_error() {
        let dir = crate::testing::temp_dir("results-bad");
        let path = dir.join("r.jsonl");
        let good = serde_json::to_string(&sample_record("c", "h2o", "64", 8)).unwrap();
        std::fs::write(&path, format!("not json\n{good}\n")).unwrap();
        let e = read_records(&path).unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn csv_quotes_fields_that_need_it() {
        let csv = to_csv(&[sample_record("c", "h2o", "3%", 8)]);
        let mut lines = csv.lines();
        assert_eq!(lines.next(), Some(CSV_HEADER));
        let row = lines.next().unwrap();
        assert!(row.starts_with("c,niah,1024,50,h2o,3%,8,64,1000,true,1.0000"));
        assert!(
            row.ends_with(",48217,\"It is 48217, \"\"yes\"\"\""),
            "{row}"
        );
        assert_eq!(
            CSV_HEADER.split(',').count(),
            20,
            "header and rows have the same columns"
        );
    }
}
