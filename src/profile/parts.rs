//! The finished work units of a `profile make` run, kept on disk so that a rerun
//! continues where an interrupted one stopped and shards can be merged.
//!
//! A parts folder holds `settings.json` (what the units were measured with) and one
//! JSON file per finished unit. Every file is written to a temporary name and renamed,
//! so a kill leaves either the whole unit or none of it; temporary names start with a
//! dot and are never read. A folder of other settings is refused, never mixed.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};

const SETTINGS: &str = "settings.json";

/// An open parts folder.
#[derive(Debug, Clone)]
pub struct Parts {
    pub dir: PathBuf,
}

impl Parts {
    /// Opens `dir` for units measured with `settings`, creating it (and its
    /// `settings.json`) when absent. Refuses a path that is not a folder and a folder
    /// of other settings.
    pub fn open(dir: &Path, settings: &Value) -> Result<Parts> {
        match std::fs::symlink_metadata(dir) {
            Ok(m) if !m.is_dir() => bail!(
                "{} exists and is not a folder; move it away or choose another --out",
                dir.display()
            ),
            Ok(_) => {
                let theirs = read_settings(dir)?;
                check_same(dir, &theirs, settings)?;
            }
            Err(_) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create folder {}", dir.display()))?;
                write_atomic(&dir.join(SETTINGS), settings)?;
            }
        }
        Ok(Parts {
            dir: dir.to_path_buf(),
        })
    }

    /// Opens an existing parts folder as it is (for merging).
    pub fn open_existing(dir: &Path) -> Result<(Parts, Value)> {
        let m = std::fs::metadata(dir)
            .with_context(|| format!("cannot read parts folder {}", dir.display()))?;
        if !m.is_dir() {
            bail!("{} is not a parts folder", dir.display());
        }
        let settings = read_settings(dir)?;
        Ok((
            Parts {
                dir: dir.to_path_buf(),
            },
            settings,
        ))
    }

    /// The unit `name`, if it was finished.
    pub fn load(&self, name: &str) -> Result<Option<Value>> {
        let path = self.dir.join(format!("{name}.json"));
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is damaged; delete it and rerun to measure that unit again",
                    path.display()
                )
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    pub fn save(&self, name: &str, value: &Value) -> Result<()> {
        write_atomic(&self.dir.join(format!("{name}.json")), value)
    }

    /// Names of the finished units (file stems, `settings` excluded).
    pub fn names(&self) -> Result<Vec<String>> {
        let rd = std::fs::read_dir(&self.dir)
            .with_context(|| format!("cannot read {}", self.dir.display()))?;
        let mut v: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.') && n != SETTINGS)
            .filter_map(|n| n.strip_suffix(".json").map(str::to_string))
            .collect();
        v.sort();
        Ok(v)
    }

    /// Deletes the folder's units, its settings and the folder (after the profile is
    /// written). Only the files this module writes are removed; anything else keeps
    /// the folder.
    pub fn remove(&self) -> Result<()> {
        for n in self.names()? {
            let _ = std::fs::remove_file(self.dir.join(format!("{n}.json")));
        }
        let _ = std::fs::remove_file(self.dir.join(SETTINGS));
        let _ = std::fs::remove_dir(&self.dir);
        Ok(())
    }
}

fn read_settings(dir: &Path) -> Result<Value> {
    let path = dir.join(SETTINGS);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{} is not a kvscope parts folder (no readable {SETTINGS}); move it away or choose another --out",
            dir.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("{} is damaged", path.display()))
}

/// The first top-level setting that differs (empty when they are not objects).
pub fn first_difference(a: &Value, b: &Value) -> String {
    match (a.as_object(), b.as_object()) {
        (Some(a), Some(b)) => a
            .keys()
            .chain(b.keys())
            .find(|k| a.get(*k) != b.get(*k))
            .cloned()
            .unwrap_or_default(),
        _ => String::new(),
    }
}

/// Shards given to one merge must have been run with the same settings.
pub fn check_shards_same(a: &Path, sa: &Value, b: &Path, sb: &Value) -> Result<()> {
    if sa == sb {
        return Ok(());
    }
    let key = first_difference(sa, sb);
    bail!(
        "{} and {} were measured with different settings ({key}: {} and {}); merge only the shards of one run",
        a.display(),
        b.display(),
        short(sa.get(&key)),
        short(sb.get(&key)),
    )
}

/// One line naming the first setting that differs.
pub fn check_same(dir: &Path, theirs: &Value, ours: &Value) -> Result<()> {
    if theirs == ours {
        return Ok(());
    }
    let key = first_difference(theirs, ours);
    bail!(
        "{} holds units measured with other settings ({key}: {} there, {} here); use the same settings, or delete the folder to start again",
        dir.display(),
        short(theirs.get(&key)),
        short(ours.get(&key)),
    )
}

fn short(v: Option<&Value>) -> String {
    let s = v.map_or("none".to_string(), |v| v.to_string());
    if s.chars().count() > 60 {
        format!("{}...", s.chars().take(57).collect::<String>())
    } else {
        s
    }
}

/// Writes `value` through [`crate::output::write_atomic`] (temporary file, rename onto
/// a regular file or nothing).
fn write_atomic(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string(value).context("cannot encode a profile unit")?;
    crate::output::write_atomic(path, "profile unit", text.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn units_survive_reopening_and_other_settings_are_refused() {
        let dir = crate::testing::temp_dir("parts").join("p.parts");
        let s = json!({"lengths": [1024], "protocol": "shared"});
        let p = Parts::open(&dir, &s).unwrap();
        assert_eq!(p.load("srh-0000").unwrap(), None);
        p.save("srh-0000", &json!({"x": 0.1})).unwrap();
        let p = Parts::open(&dir, &s).unwrap();
        assert_eq!(p.load("srh-0000").unwrap(), Some(json!({"x": 0.1})));
        assert_eq!(p.names().unwrap(), vec!["srh-0000".to_string()]);
        let err = Parts::open(&dir, &json!({"lengths": [2048], "protocol": "shared"}))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("other settings (lengths: [1024] there, [2048] here)"),
            "{err}"
        );
        // A half-written temporary file is never read as a unit.
        std::fs::write(dir.join(".srh-0001.json.1.tmp"), "{").unwrap();
        assert_eq!(p.names().unwrap().len(), 1);
        p.remove().unwrap();
        // The stray temporary file keeps the folder; nothing else is left.
        assert!(dir.exists());
    }

    #[test]
    fn a_file_in_the_way_is_refused() {
        let dir = crate::testing::temp_dir("parts-file");
        let f = dir.join("x.parts");
        std::fs::write(&f, "hello").unwrap();
        let err = Parts::open(&f, &json!({})).unwrap_err().to_string();
        assert!(err.contains("is not a folder"), "{err}");
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "hello");
    }
}
