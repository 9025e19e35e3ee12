//! Writing files a user names (profiles, eval results, synthetic models, budgets,
//! exported reports) without destroying anything they did not ask to replace.
//!
//! Every writer in kvscope goes through here, so the rules hold everywhere:
//! - an existing target that is not a regular file (a device node, FIFO, socket or
//!   folder) is refused with one line and never touched: renaming over `/dev/full` would
//!   replace the device node itself;
//! - an output that is the same file as an input of the same command (compared by device
//!   and inode, so links and other spellings of the path are caught) is refused before
//!   anything is written;
//! - the bytes go to a temporary file in the target's folder first and are renamed onto
//!   the target only when complete, so a crash, Ctrl-C or SIGTERM leaves the old file or
//!   nothing (the temporary file is removed on those signals too);
//! - files that must never replace anything ([`create_unique`]) are created with
//!   `create_new`, under a fresh name if the first one is taken.
//!
//! [`FolderLock`] keeps two processes from writing into one results folder at once.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Checks that `path` can be written as `what`: it does not exist, or it is a regular
/// file (following symlinks). Returns the path to rename onto: the symlink's target when
/// `path` is a symlink to a regular file (replacing the link itself would leave the file
/// the user pointed at unchanged), else `path`.
pub fn check_target(path: &Path, what: &str) -> Result<PathBuf> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot check {what} {}", path.display())),
        Ok(_) => {
            let meta = std::fs::metadata(path).with_context(|| {
                format!(
                    "{what} {} is a link to nothing; remove it or give another path",
                    path.display()
                )
            })?;
            if meta.is_dir() {
                bail!(
                    "{what} {} is a folder; give the path of a file",
                    path.display()
                );
            }
            if !meta.is_file() {
                bail!(
                    "{what} {} exists and is not a regular file (a device, FIFO or socket); kvscope never writes over it: give the path of a file",
                    path.display()
                );
            }
            if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
                return path
                    .canonicalize()
                    .with_context(|| format!("cannot resolve {what} {}", path.display()));
            }
        }
    }
    if path.file_name().is_none() {
        bail!("{what} {} has no file name", path.display());
    }
    Ok(path.to_path_buf())
}

/// The identity of an existing file: device and inode on Unix (the canonical path
/// elsewhere). `None` when the file does not exist.
fn identity(path: &Path) -> Option<(u64, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some((meta.dev(), meta.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        path.canonicalize().ok()?.hash(&mut h);
        Some((0, h.finish()))
    }
}

/// Whether `a` and `b` name the same existing file (device and inode).
pub fn same_file(a: &Path, b: &Path) -> bool {
    matches!((identity(a), identity(b)), (Some(x), Some(y)) if x == y)
}

/// Refuses `out` when it is the same file as any of `inputs` (each named for the user,
/// e.g. `("--tokenizer-from", path)`): writing it would destroy the input being read.
pub fn refuse_input_as_output(out: &Path, what: &str, inputs: &[(&str, &Path)]) -> Result<()> {
    for (name, input) in inputs {
        if same_file(out, input) {
            bail!(
                "{what} {} is the same file as {name} {}: kvscope never writes over its own input; give another output path",
                out.display(),
                input.display()
            );
        }
    }
    Ok(())
}

/// A file being written under a temporary name beside its target. [`AtomicFile::commit`]
/// renames it onto the target; dropping it uncommitted (an error, a panic) removes it,
/// and so does SIGINT / SIGTERM / SIGHUP while it lives.
pub struct AtomicFile {
    file: Option<File>,
    tmp: PathBuf,
    target: PathBuf,
    what: String,
    _signal: crate::signals::Registration,
}

impl AtomicFile {
    /// Checks `path` with [`check_target`] and creates the temporary file beside it.
    pub fn create(path: &Path, what: &str) -> Result<AtomicFile> {
        let target = check_target(path, what)?;
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = target
            .file_name()
            .with_context(|| format!("{what} {} has no file name", path.display()))?;
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        for _ in 0..100 {
            // Hidden, and ending with the target's own name so that writers which pick a
            // format by extension (the PNG figures) still see it.
            let mut tmp_name = std::ffi::OsString::from(format!(
                ".kvscope-tmp-{}-{}-",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            tmp_name.push(name);
            let tmp = dir.join(tmp_name);
            // Registered before the file exists, so no signal can leave it behind.
            let signal = crate::signals::remove_on_signal(tmp.clone());
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
            {
                Ok(file) => {
                    return Ok(AtomicFile {
                        file: Some(file),
                        tmp,
                        target,
                        what: what.to_string(),
                        _signal: signal,
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("cannot write {what} in {}", dir.display()))
                }
            }
        }
        bail!(
            "cannot create a temporary file for {what} in {}",
            dir.display()
        )
    }

    /// The temporary file, for writing.
    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("file is present until commit")
    }

    /// The target it will be renamed onto.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Flushes the file to disk and renames it onto the target. The target is checked
    /// again just before: something created there meanwhile that is not a regular file
    /// is still never replaced.
    pub fn commit(mut self) -> Result<PathBuf> {
        let file = self.file.take().expect("file is present until commit");
        file.sync_all()
            .with_context(|| format!("cannot write {} {}", self.what, self.tmp.display()))?;
        drop(file);
        check_target(&self.target, &self.what)?;
        std::fs::rename(&self.tmp, &self.target).with_context(|| {
            format!(
                "cannot move {} to {}",
                self.tmp.display(),
                self.target.display()
            )
        })?;
        // Renamed: nothing is left to remove.
        self.tmp = PathBuf::new();
        Ok(self.target.clone())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            self.file.take();
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Writes `bytes` to `path` as `what` through a temporary file (see the module docs).
pub fn write_atomic(path: &Path, what: &str, bytes: &[u8]) -> Result<PathBuf> {
    let mut f = AtomicFile::create(path, what)?;
    f.file()
        .write_all(bytes)
        .with_context(|| format!("cannot write {what} {}", path.display()))?;
    f.commit()
}

/// Writes `path` as `what` with `write`, which is given the temporary file's path (for
/// libraries that open files themselves, as the figure backends do), then renames it
/// into place like [`write_atomic`].
pub fn write_with(
    path: &Path,
    what: &str,
    write: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let mut f = AtomicFile::create(path, what)?;
    let tmp = f.tmp.clone();
    write(&tmp)?;
    // The library may have replaced the file rather than written into it: reopen it.
    f.file = Some(
        std::fs::OpenOptions::new()
            .write(true)
            .open(&tmp)
            .with_context(|| format!("cannot write {what} {}", path.display()))?,
    );
    f.commit()
}

/// Creates a new file `dir/STEM.EXT`, or `dir/STEM-N.EXT` with the first free N, never
/// opening one that exists (`create_new`, so two writers cannot pick the same name).
pub fn create_unique(dir: &Path, stem: &str, ext: &str) -> Result<(PathBuf, File)> {
    for n in 0..10_000u32 {
        let name = if n == 0 {
            format!("{stem}.{ext}")
        } else {
            format!("{stem}-{n}.{ext}")
        };
        let path = dir.join(name);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(f) => return Ok((path, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
        }
    }
    bail!(
        "cannot find a free name for {stem}.{ext} in {}",
        dir.display()
    )
}

/// Writes `bytes` to a new file in `dir` named as [`create_unique`] does; never replaces
/// anything. The file is written under a temporary name and then linked to its final
/// name (`hard_link` fails instead of replacing), so a reader never sees half a file.
pub fn write_unique(dir: &Path, stem: &str, ext: &str, bytes: &[u8]) -> Result<PathBuf> {
    let mut tmp = AtomicFile::create(&dir.join(format!(".{stem}.{ext}")), "file")?;
    tmp.file()
        .write_all(bytes)
        .and_then(|_| tmp.file().sync_all())
        .with_context(|| format!("cannot write into {}", dir.display()))?;
    let (path, placeholder) = create_unique(dir, stem, ext)?;
    drop(placeholder);
    // The placeholder reserved the name; the complete file takes its place.
    let target = path.clone();
    let tmp_path = tmp.tmp.clone();
    std::fs::rename(&tmp_path, &target)
        .with_context(|| format!("cannot write {}", target.display()))?;
    tmp.tmp = PathBuf::new();
    Ok(path)
}

/// An exclusive OS lock (`flock`) on `DIR/.kvscope.lock`, held while the value lives and
/// released by the OS when the process ends in any way (a crash included). The lock file
/// holds the owner's process id so a refused writer can name it.
pub struct FolderLock {
    _file: File,
}

/// The lock file's name inside a locked folder.
pub const LOCK_FILE: &str = ".kvscope.lock";

impl FolderLock {
    /// Takes the lock on `dir` (created if missing) for `what` ("eval results"), or
    /// refuses with one line naming the process that holds it.
    pub fn take(dir: &Path, what: &str) -> Result<FolderLock> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create folder {}", dir.display()))?;
        let path = dir.join(LOCK_FILE);
        check_target(&path, "lock file")?;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open lock file {}", path.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::io::AsRawFd;
            // SAFETY: flock on an open descriptor has no memory-safety requirements.
            let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if r != 0 {
                let err = std::io::Error::last_os_error();
                if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                    let holder = std::fs::read_to_string(&path)
                        .ok()
                        .and_then(|s| s.trim().parse::<u32>().ok())
                        .map_or("another process".to_string(), |p| {
                            format!("another kvscope (pid {p})")
                        });
                    bail!(
                        "{} is in use: {holder} is writing {what} there; wait for it to finish or give another --out",
                        dir.display()
                    );
                }
                return Err(err).with_context(|| format!("cannot lock {}", path.display()));
            }
        }
        file.set_len(0)
            .and_then(|_| file.write_all(format!("{}\n", std::process::id()).as_bytes()))
            .and_then(|_| file.flush())
            .with_context(|| format!("cannot write lock file {}", path.display()))?;
        Ok(FolderLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::temp_dir;

    #[test]
    fn writes_through_a_temp_file_and_replaces_only_regular_files() {
        let d = temp_dir("output");
        let f = d.join("a.json");
        write_atomic(&f, "profile", b"one").unwrap();
        write_atomic(&f, "profile", b"two").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"two");
        // Nothing but the target is left in the folder.
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
        let e = format!("{:#}", write_atomic(&d, "profile", b"x").unwrap_err());
        assert!(e.contains("is a folder"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn refuses_devices_and_fifos_and_leaves_them_alone() {
        let e = format!(
            "{:#}",
            write_atomic(Path::new("/dev/null"), "profile", b"x").unwrap_err()
        );
        assert!(e.contains("not a regular file"), "{e}");
        assert!(!std::fs::metadata("/dev/null").unwrap().is_file());
        let d = temp_dir("output-fifo");
        let fifo = d.join("p");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = format!("{:#}", write_atomic(&fifo, "out", b"x").unwrap_err());
        assert!(e.contains("not a regular file"), "{e}");
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo());
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1, "no temp left");
    }

    #[cfg(unix)]
    #[test]
    fn same_file_is_found_through_links_and_other_spellings() {
        let d = temp_dir("output-same");
        let a = d.join("a.gguf");
        std::fs::write(&a, b"model").unwrap();
        let hard = d.join("hard.gguf");
        std::fs::hard_link(&a, &hard).unwrap();
        let dotted = d.join(".").join("a.gguf");
        for out in [&a, &hard, &dotted] {
            let e = refuse_input_as_output(out, "--out", &[("--tokenizer-from", &a)])
                .unwrap_err()
                .to_string();
            assert!(e.contains("same file as --tokenizer-from"), "{e}");
        }
        refuse_input_as_output(&d.join("b.gguf"), "--out", &[("--tokenizer-from", &a)]).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_to_a_file_writes_the_file_it_points_at() {
        let d = temp_dir("output-link");
        let real = d.join("real.json");
        std::fs::write(&real, b"old").unwrap();
        let link = d.join("link.json");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        write_atomic(&link, "profile", b"new").unwrap();
        assert_eq!(std::fs::read(&real).unwrap(), b"new");
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn an_uncommitted_file_leaves_nothing() {
        let d = temp_dir("output-drop");
        {
            let mut f = AtomicFile::create(&d.join("big.gguf"), "--out").unwrap();
            f.file().write_all(b"partial").unwrap();
        }
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0);
    }

    #[test]
    fn unique_files_never_replace_each_other() {
        let d = temp_dir("output-unique");
        let a = write_unique(&d, "kvscope-report-1", "json", b"a").unwrap();
        let b = write_unique(&d, "kvscope-report-1", "json", b"b").unwrap();
        assert_ne!(a, b);
        assert_eq!(std::fs::read(&a).unwrap(), b"a");
        assert_eq!(std::fs::read(&b).unwrap(), b"b");
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 2);
    }

    #[cfg(unix)]
    #[test]
    fn a_second_lock_is_refused_naming_the_holder() {
        let d = temp_dir("output-lock");
        let held = FolderLock::take(&d, "eval results").unwrap();
        let e = FolderLock::take(&d, "eval results")
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains(&format!("pid {}", std::process::id())) && e.contains("in use"),
            "{e}"
        );
        drop(held);
        FolderLock::take(&d, "eval results").unwrap();
    }
}
