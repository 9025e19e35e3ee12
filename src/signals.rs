//! Signals from outside the process (SIGINT, SIGTERM, SIGHUP) and closed output pipes.
//!
//! kvscope keeps the default action of every signal (the process ends) but two things
//! must happen first: a terminal in raw mode on the alternate screen is restored, and
//! temporary folders of an interrupted fetch (and temporary files of outputs being written) are removed. A watcher thread, started
//! the first time either is registered, receives the signal, does both, and then ends
//! the process with the signal's own default action, so the shell sees the usual
//! status (130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP).
//!
//! The terminal's owner draws while holding [`terminal`]'s lock, so the watcher never
//! restores the screen in the middle of a frame (a frame finished after the restore
//! would hide the cursor again).

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, OnceLock};

/// What the watcher undoes before the process ends.
#[derive(Default)]
pub struct Cleanup {
    /// Restores the terminal; set while the inspector owns it.
    pub restore_terminal: Option<fn()>,
    /// Takes the terminal back after `fg` (raw mode, alternate screen) and asks for a
    /// full redraw; set while the inspector owns it.
    pub resume_terminal: Option<Box<dyn Fn() + Send>>,
    /// Folders to remove, with the id of their registration.
    dirs: Vec<(u64, PathBuf)>,
    /// Child processes to stop, with the id of their registration.
    children: Vec<(u64, u32)>,
    next_id: u64,
}

static CLEANUP: Mutex<Cleanup> = Mutex::new(Cleanup {
    restore_terminal: None,
    resume_terminal: None,
    dirs: Vec::new(),
    children: Vec::new(),
    next_id: 0,
});

fn lock() -> MutexGuard<'static, Cleanup> {
    // A panic while holding the lock leaves plain data behind; keep using it.
    CLEANUP.lock().unwrap_or_else(|p| p.into_inner())
}

/// The cleanup state, locked. The inspector sets `restore_terminal` through it and holds
/// it while drawing a frame.
pub fn terminal() -> MutexGuard<'static, Cleanup> {
    watch();
    lock()
}

/// Removes `dir` (a folder, or a file such as an output's temporary file) if a signal
/// ends the process while the returned guard lives. Dropping the guard forgets the registration; it does not
/// remove the folder (its owner does that).
pub fn remove_on_signal(dir: PathBuf) -> Registration {
    watch();
    let mut c = lock();
    c.next_id += 1;
    let id = c.next_id;
    c.dirs.push((id, dir));
    Registration(id)
}

/// Sends SIGTERM to child `pid` if a signal ends this process while the guard lives
/// (a `pip download` must not go on writing into a folder that is being removed).
pub fn stop_child_on_signal(pid: u32) -> Registration {
    watch();
    let mut c = lock();
    c.next_id += 1;
    let id = c.next_id;
    c.children.push((id, pid));
    Registration(id)
}

/// One registered cleanup; dropping it unregisters.
pub struct Registration(u64);

impl Drop for Registration {
    fn drop(&mut self) {
        let mut c = lock();
        c.dirs.retain(|(id, _)| *id != self.0);
        c.children.retain(|(id, _)| *id != self.0);
    }
}

/// Writes to a closed pipe (`kvscope ... | head -1`) end the process quietly with the
/// usual SIGPIPE status, as for any Unix filter, instead of failing inside `println!`.
/// Rust ignores SIGPIPE by default; this puts the default action back. Call first
/// thing in `main`.
pub fn default_sigpipe() {
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to SIG_DFL before any thread is started
    // has no memory-safety requirements.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Ctrl-Z (SIGTSTP, from the terminal or `kill -TSTP`) while the inspector owns the
/// terminal: restore it, stop the process as the default action does, and after `fg`
/// (SIGCONT) take it back and redraw ([`Cleanup::resume_terminal`]). Without a terminal
/// to restore the process just stops. Call once the terminal is in raw mode; a failure
/// to install leaves SIGTSTP's default action (stopping without a restore).
pub fn suspend_with_terminal() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        #[cfg(unix)]
        {
            use signal_hook::consts::SIGTSTP;
            let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGTSTP]) else {
                return;
            };
            let handle = signals.handle();
            let spawned = std::thread::Builder::new()
                .name("kvscope-suspend".into())
                .spawn(move || {
                    for _ in signals.forever() {
                        // Held while stopped and until the terminal is back: no frame is
                        // drawn on a restored terminal.
                        let c = lock();
                        if let Some(restore) = c.restore_terminal {
                            restore();
                        }
                        let _ = signal_hook::low_level::emulate_default_handler(SIGTSTP);
                        if let Some(resume) = &c.resume_terminal {
                            resume();
                        }
                    }
                });
            if spawned.is_err() {
                handle.close();
            }
        }
    });
}

/// Stops the process as Ctrl-Z does in a shell (the inspector reads Ctrl-Z as a key in
/// raw mode, so it raises the signal itself; [`suspend_with_terminal`] handles it).
pub fn suspend() {
    #[cfg(unix)]
    // SAFETY: kill has no memory-safety requirements.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGTSTP);
    }
}

/// Starts the watcher thread once. A failure to install (no threads left) leaves the
/// default actions in place: the process still ends on the signal, without cleanup.
fn watch() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        #[cfg(unix)]
        {
            use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
            let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
            else {
                return;
            };
            let handle = signals.handle();
            let spawned = std::thread::Builder::new()
                .name("kvscope-signals".into())
                .spawn(move || {
                    if let Some(sig) = signals.forever().next() {
                        ending(sig);
                    }
                });
            if spawned.is_err() {
                // No watcher: give the signals their default action back.
                handle.close();
            }
        }
    });
}

/// Ends the process with `kvscope: error: MSG` and status 1 after the same cleanup a
/// signal gets (terminal, children, temporary files): for a failure that cannot be
/// returned as an error, such as a chat template whose rendering outgrows its memory
/// bound on another thread.
pub fn fail(msg: &str) -> ! {
    let c = lock();
    cleanup(&c);
    eprintln!("kvscope: error: {msg}");
    std::process::exit(1);
}

#[cfg(unix)]
fn ending(sig: i32) -> ! {
    // Held until the process ends: no frame is drawn after the terminal is restored.
    let c = lock();
    cleanup(&c);
    let _ = signal_hook::low_level::emulate_default_handler(sig);
    // Only reached if the default action could not be restored.
    std::process::exit(128 + sig);
}

/// Restores the terminal, stops the children and removes the temporary files.
fn cleanup(c: &Cleanup) {
    if let Some(restore) = c.restore_terminal {
        restore();
    }
    #[cfg(unix)]
    for &(_, pid) in &c.children {
        if let Ok(pid) = libc::pid_t::try_from(pid) {
            // SAFETY: kill has no memory-safety requirements.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
    }
    for (_, d) in &c.dirs {
        // Folders of a fetch, or the temporary file of an output being written.
        if std::fs::symlink_metadata(d).is_ok_and(|m| m.is_dir()) {
            let _ = std::fs::remove_dir_all(d);
        } else {
            let _ = std::fs::remove_file(d);
        }
    }
}

/// Whether process `pid` exists (for sweeping the folders of fetches that were killed
/// before they could clean up). Unknown means alive: never remove a live fetch's work.
pub fn process_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(p) = libc::pid_t::try_from(pid) else {
            return false;
        };
        // SAFETY: kill with signal 0 only checks that the process exists.
        let r = unsafe { libc::kill(p, 0) };
        if r == 0 {
            return true;
        }
        std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}
