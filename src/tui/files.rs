//! The inspector's small files: the recent-prompt list (cache dir), saved per-layer
//! budget files (config dir) and the prompt picker's list. Plain functions over paths so
//! tests can point them at a temp folder.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

use crate::model::fetch;

/// How many recent prompt files are remembered.
pub const RECENT_MAX: usize = 10;

/// `$KVSCOPE_HOME` or the platform cache dir + `kvscope/`, then `recent.json`.
pub fn recent_path() -> Result<PathBuf> {
    Ok(fetch::cache_dir()?.join("recent.json"))
}

/// The recent list, newest first; a missing or unreadable file is an empty list (it is
/// a convenience, never a reason to refuse to start).
pub fn read_recent(path: &Path) -> Vec<PathBuf> {
    crate::input::read_bounded(path, "recent list", crate::input::MAX_SMALL_FILE_BYTES)
        .ok()
        .and_then(|b| serde_json::from_slice::<Vec<PathBuf>>(&b).ok())
        .unwrap_or_default()
}

/// Puts `prompt` first in the recent list at `path` (deduplicated, at most
/// [`RECENT_MAX`]).
pub fn push_recent(path: &Path, prompt: &Path) -> Result<()> {
    let prompt = prompt
        .canonicalize()
        .unwrap_or_else(|_| prompt.to_path_buf());
    let mut list = read_recent(path);
    list.retain(|p| p != &prompt);
    list.insert(0, prompt);
    list.truncate(RECENT_MAX);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    crate::output::write_atomic(
        path,
        "recent list",
        serde_json::to_string_pretty(&list)?.as_bytes(),
    )?;
    Ok(())
}

/// The expected answer stored beside a prompt file, and the file it came from: the
/// `"answer"` string of `PROMPT.json` (the sample prompts' and eval's sidecar), else the
/// first line of `PROMPT.answer`. None when neither holds one (a sidecar is optional).
pub fn answer_sidecar(prompt: &Path) -> Option<(String, PathBuf)> {
    let json = prompt.with_extension("json");
    if json != prompt {
        let v =
            crate::input::read_bounded(&json, "answer sidecar", crate::input::MAX_SMALL_FILE_BYTES)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
        if let Some(a) = v.as_ref().and_then(|v| v["answer"].as_str()) {
            if !a.trim().is_empty() {
                return Some((a.trim().to_string(), json));
            }
        }
    }
    let plain = prompt.with_extension("answer");
    let text =
        crate::input::read_bounded(&plain, "answer sidecar", crate::input::MAX_SMALL_FILE_BYTES)
            .ok()?;
    let line = String::from_utf8_lossy(&text)
        .lines()
        .next()?
        .trim()
        .to_string();
    (!line.is_empty()).then_some((line, plain))
}

/// `*.txt` files in `dir`, sorted by name (empty when the folder does not exist).
pub fn sample_prompts(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "txt"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Where the picker looks for sample prompts: `./sample-prompts`, else the one in the
/// source tree kvscope was built from.
pub fn sample_dir() -> PathBuf {
    let local = PathBuf::from("sample-prompts");
    if local.is_dir() {
        local
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("sample-prompts")
    }
}

/// `dirs::config_dir()/kvscope/budgets` (`$KVSCOPE_CONFIG` replaces
/// `config_dir()/kvscope`, so tests and scripts can keep their own).
pub fn budgets_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("KVSCOPE_CONFIG").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("budgets"));
    }
    match dirs::config_dir() {
        Some(d) => Ok(d.join("kvscope").join("budgets")),
        None => bail!("cannot find a config directory: set KVSCOPE_CONFIG to a writable folder"),
    }
}

/// A budget name becomes a file name: letters, digits, `-`, `_`, `.` only, so a name can
/// never point outside the budgets folder.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        bail!("budget name '{name}': use letters, digits, '-', '_' or '.' (not starting with '.')");
    }
    Ok(())
}

/// Writes `budgets` as a JSON list to `dir/NAME.json`; returns the path.
pub fn save_budgets(dir: &Path, name: &str, budgets: &[usize]) -> Result<PathBuf> {
    Ok(save_budgets_keeping(dir, name, budgets)?.0)
}

/// [`save_budgets`], keeping a file already saved under that name as
/// `NAME.json.bak-<unix seconds>` (never listed as a budget, never overwritten): a
/// tuned budget is not lost to a name typed twice. Returns the path and the backup.
pub fn save_budgets_keeping(
    dir: &Path,
    name: &str,
    budgets: &[usize],
) -> Result<(PathBuf, Option<PathBuf>)> {
    check_name(name)?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(format!("{name}.json"));
    // Before the backup rename: a FIFO or device under that name is refused, not moved.
    crate::output::check_target(&path, "budget file")?;
    let text = serde_json::to_string(budgets)?;
    // Saving the same budgets again changes nothing and needs no backup.
    let old = std::fs::read(&path).ok();
    let backup = match old {
        Some(old) if old != text.as_bytes() => {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let mut b = dir.join(format!("{name}.json.bak-{secs}"));
            let mut n = 1;
            while b.exists() {
                b = dir.join(format!("{name}.json.bak-{secs}-{n}"));
                n += 1;
            }
            std::fs::rename(&path, &b).with_context(|| {
                format!("cannot keep the budget already saved as {}", path.display())
            })?;
            Some(b)
        }
        _ => None,
    };
    crate::output::write_atomic(&path, "budget file", text.as_bytes())?;
    Ok((path, backup))
}

/// Reports the inspector exported (`e`) into `dir`, `kvscope-report-*.json`, newest
/// first (their names hold the time they were written).
pub fn list_reports(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("kvscope-report-") && n.ends_with(".json"))
                .collect()
        })
        .unwrap_or_default();
    // Same-length names sort by their number; longer numbers are later.
    v.sort_by(|a, b| b.len().cmp(&a.len()).then(b.cmp(a)));
    v
}

/// Names of the saved budget files in `dir`, sorted.
pub fn list_budgets(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Reads a budget file: a JSON list of whole numbers of tokens, one per layer.
pub fn read_budget_file(path: &Path) -> Result<Vec<usize>> {
    let bytes =
        crate::input::read_bounded(path, "budget file", crate::input::MAX_SMALL_FILE_BYTES)?;
    serde_json::from_slice::<Vec<usize>>(&bytes).with_context(|| {
        format!(
            "budget file {} is not a JSON list of whole numbers (one per layer)",
            path.display()
        )
    })
}

/// `--layer-budgets @FILE`: FILE is a path, or the name of a budget saved from the
/// inspector (looked up in [`budgets_dir`] when no such file exists).
pub fn resolve_budget_ref(r: &str) -> Result<Vec<usize>> {
    let p = PathBuf::from(r);
    if p.exists() {
        return read_budget_file(&p);
    }
    if check_name(r).is_ok() {
        let saved = budgets_dir()?.join(format!("{r}.json"));
        if saved.exists() {
            return read_budget_file(&saved);
        }
    }
    bail!("--layer-budgets @{r}: no such file, and no saved budget named '{r}'")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::temp_dir;

    #[test]
    fn recent_list_is_newest_first_deduplicated_and_bounded() {
        let d = temp_dir("recent");
        let f = d.join("sub").join("recent.json");
        assert!(read_recent(&f).is_empty());
        for i in 0..12 {
            push_recent(&f, &d.join(format!("p{i}.txt"))).unwrap();
        }
        push_recent(&f, &d.join("p5.txt")).unwrap();
        let r = read_recent(&f);
        assert_eq!(r.len(), RECENT_MAX);
        assert_eq!(r[0], d.join("p5.txt"));
        assert_eq!(r.iter().filter(|p| p.ends_with("p5.txt")).count(), 1);
        std::fs::write(&f, "not json").unwrap();
        assert!(read_recent(&f).is_empty());
    }

    #[test]
    fn budget_files_round_trip_and_names_are_checked() {
        let d = temp_dir("budgets");
        let p = save_budgets(&d, "my-tune_1", &[8, 64, 128]).unwrap();
        assert_eq!(read_budget_file(&p).unwrap(), vec![8, 64, 128]);
        assert_eq!(list_budgets(&d), vec!["my-tune_1".to_string()]);
        assert!(save_budgets(&d, "../evil", &[1]).is_err());
        assert!(save_budgets(&d, "", &[1]).is_err());
        std::fs::write(d.join("bad.json"), "[1, -2]").unwrap();
        let e = read_budget_file(&d.join("bad.json")).unwrap_err();
        assert!(format!("{e:#}").contains("JSON list of whole numbers"));
        assert_eq!(
            resolve_budget_ref(p.to_str().unwrap()).unwrap(),
            vec![8, 64, 128]
        );
        assert!(resolve_budget_ref("/no/such/file.json").is_err());
    }

    #[test]
    fn saving_over_a_name_keeps_the_old_budgets() {
        let d = temp_dir("budgets-backup");
        let (p, b) = save_budgets_keeping(&d, "tune", &[8, 16]).unwrap();
        assert!(b.is_none());
        // The same budgets again: nothing to keep.
        assert!(save_budgets_keeping(&d, "tune", &[8, 16])
            .unwrap()
            .1
            .is_none());
        let (p2, b) = save_budgets_keeping(&d, "tune", &[32, 64]).unwrap();
        assert_eq!(p, p2);
        let b = b.expect("a backup of the old file");
        assert_eq!(read_budget_file(&b).unwrap(), vec![8, 16]);
        assert_eq!(read_budget_file(&p).unwrap(), vec![32, 64]);
        let (_, b2) = save_budgets_keeping(&d, "tune", &[1, 2]).unwrap();
        let b2 = b2.expect("a second backup");
        assert_ne!(b, b2, "a backup is never overwritten");
        assert_eq!(read_budget_file(&b).unwrap(), vec![8, 16]);
        assert_eq!(read_budget_file(&b2).unwrap(), vec![32, 64]);
        // Backups are not offered as saved budgets.
        assert_eq!(list_budgets(&d), vec!["tune".to_string()]);
    }

    #[test]
    fn sample_prompts_lists_txt_only() {
        let d = temp_dir("samples");
        std::fs::write(d.join("b.txt"), "x").unwrap();
        std::fs::write(d.join("a.txt"), "x").unwrap();
        std::fs::write(d.join("a.answer"), "x").unwrap();
        let v = sample_prompts(&d);
        assert_eq!(v, vec![d.join("a.txt"), d.join("b.txt")]);
        assert!(sample_prompts(&d.join("missing")).is_empty());
    }
}
