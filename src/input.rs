//! Reading files a user names (prompts, profiles, budget files, models) without hanging
//! or exhausting memory: only regular files are opened (opening a FIFO without a writer
//! blocks forever; `/dev/zero` never ends), and at most a stated number of bytes is read.

use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::Path;

/// Largest prompt file read: 8 MiB. A 128K-token context holds about 0.5 MB of text, so
/// a bigger prompt cannot fit any supported model, and tokenizing it first would only
/// delay the refusal.
pub const MAX_PROMPT_BYTES: u64 = 8 << 20;
/// Largest profile read: 16 MiB (a profile of a 128-layer, 128-head model is ~1 MB).
pub const MAX_PROFILE_BYTES: u64 = 16 << 20;
/// Largest budget file or sidecar read: 1 MiB (a list of a few hundred numbers).
pub const MAX_SMALL_FILE_BYTES: u64 = 1 << 20;

/// A prompt file: UTF-8 text, at most [`MAX_PROMPT_BYTES`], not blank.
pub fn read_prompt(path: &Path) -> Result<String> {
    let text = read_text(path, "prompt file", MAX_PROMPT_BYTES)?;
    if text.trim().is_empty() {
        bail!("prompt file {} is empty", path.display());
    }
    Ok(text)
}

/// Checks that `path` is a regular file (following symlinks) and returns its size.
/// `what` names the file for the user ("prompt file", "profile", ...).
pub fn regular_file(path: &Path, what: &str) -> Result<u64> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    if meta.is_dir() {
        bail!("{what} {} is a folder, not a file", path.display());
    }
    if !meta.is_file() {
        bail!(
            "{what} {} is not a regular file (a FIFO, device or socket); give the path of a file",
            path.display()
        );
    }
    Ok(meta.len())
}

/// Reads a regular file of at most `max` bytes. A file that grows while it is read is
/// still cut off at `max + 1` bytes and refused.
pub fn read_bounded(path: &Path, what: &str, max: u64) -> Result<Vec<u8>> {
    let size = regular_file(path, what)?;
    let too_big = |n: u64| {
        anyhow::anyhow!(
            "{what} {} has {n} bytes; kvscope reads at most {max} bytes ({}) from a {what}",
            path.display(),
            human(max)
        )
    };
    if size > max {
        return Err(too_big(size));
    }
    let f = std::fs::File::open(path)
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    let mut buf = Vec::with_capacity(size as usize);
    f.take(max + 1)
        .read_to_end(&mut buf)
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    if buf.len() as u64 > max {
        return Err(too_big(buf.len() as u64));
    }
    Ok(buf)
}

/// [`read_bounded`], as UTF-8 text.
pub fn read_text(path: &Path, what: &str, max: u64) -> Result<String> {
    let bytes = read_bounded(path, what, max)?;
    String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("{what} {} is not UTF-8 text", path.display()))
}

fn human(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{} MiB", n >> 20)
    } else {
        format!("{} KiB", n >> 10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::temp_dir;

    #[test]
    fn refuses_folders_missing_and_oversized_files() {
        let d = temp_dir("input");
        let e = format!("{:#}", read_bounded(&d, "prompt file", 10).unwrap_err());
        assert!(e.contains("is a folder"), "{e}");
        let e = format!(
            "{:#}",
            read_bounded(&d.join("none"), "prompt file", 10).unwrap_err()
        );
        assert!(e.contains("cannot read prompt file"), "{e}");
        let f = d.join("big.txt");
        std::fs::write(&f, "0123456789A").unwrap();
        let e = format!("{:#}", read_bounded(&f, "profile", 10).unwrap_err());
        assert!(e.contains("11 bytes") && e.contains("at most 10"), "{e}");
        std::fs::write(&f, "0123456789").unwrap();
        assert_eq!(read_bounded(&f, "profile", 10).unwrap().len(), 10);
        std::fs::write(&f, [0xffu8, 0xfe]).unwrap();
        let e = format!("{:#}", read_text(&f, "profile", 10).unwrap_err());
        assert!(e.contains("not UTF-8"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn refuses_devices_without_reading_them() {
        // /dev/zero never ends; reading it would fill memory.
        let e = format!(
            "{:#}",
            read_bounded(Path::new("/dev/zero"), "prompt file", 10).unwrap_err()
        );
        assert!(e.contains("not a regular file"), "{e}");
    }
}
