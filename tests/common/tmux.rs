//! tmux for the real-terminal tests (tui_tmux, tui_suspend, hardening's signals): one
//! session on a server of its own (`-L NAME`), so tmux tests running at the same time
//! neither race to start one server nor see each other's sessions, and the pane gets the
//! test's environment rather than that of a server started earlier.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// Whether tmux can be run here (the tests skip, with a notice, where it cannot).
pub fn installed() -> bool {
    Command::new("tmux").arg("-V").output().is_ok()
}

/// tmux on server `server`: its stdout, or its stderr as the error.
fn tmux(server: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new("tmux")
        .args(["-L", server])
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A 160x45 session named as its server; the server is killed (and the folder given to
/// [`Tmux::removing`] removed) however the test ends.
pub struct Tmux {
    name: String,
    remove: Option<PathBuf>,
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = tmux(&self.name, &["kill-server"]);
        if let Some(dir) = &self.remove {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Tmux {
    /// Starts the session running `command` (tmux's new-session arguments after the
    /// size: options such as `-c DIR`, then the command and its arguments).
    pub fn start(name: String, command: &[&str]) -> Tmux {
        let mut args = vec!["new-session", "-d", "-s", &name, "-x", "160", "-y", "45"];
        args.extend_from_slice(command);
        if let Err(e) = tmux(&name, &args) {
            panic!("tmux new-session: {e}");
        }
        Tmux { name, remove: None }
    }

    /// The session running `script` in a bash without start-up files.
    pub fn bash(name: String, script: &str) -> Tmux {
        Tmux::start(name, &["bash", "--norc", "-c", script])
    }

    /// Removes `dir` too when the session ends.
    pub fn removing(mut self, dir: PathBuf) -> Tmux {
        self.remove = Some(dir);
        self
    }

    /// The pane's text as it shows now.
    pub fn capture(&self) -> String {
        tmux(&self.name, &["capture-pane", "-p", "-t", &self.name]).unwrap_or_default()
    }

    /// Sends each key (or string) in turn, as a person types: each is its own event.
    pub fn keys(&self, keys: &[&str]) {
        for k in keys {
            if let Err(e) = tmux(&self.name, &["send-keys", "-t", &self.name, k]) {
                panic!("tmux send-keys: {e}");
            }
            std::thread::sleep(Duration::from_millis(40));
        }
    }

    /// Polls the pane until `ok` holds; panics with the last capture after `secs` (a
    /// hang guard, not a timing assertion).
    pub fn wait(&self, what: &str, secs: u64, ok: impl Fn(&str) -> bool) -> String {
        let t = Instant::now();
        loop {
            let s = self.capture();
            if ok(&s) {
                return s;
            }
            if t.elapsed() > Duration::from_secs(secs) {
                panic!("timed out after {secs} s waiting for {what}; the pane shows:\n{s}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A tmux format (`#{pane_pid}`, `#{alternate_on}`) of the pane.
    pub fn format(&self, f: &str) -> String {
        tmux(&self.name, &["display-message", "-p", "-t", &self.name, f])
            .unwrap_or_default()
            .trim()
            .to_string()
    }
}
