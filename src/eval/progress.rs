//! A progress bar with ETA on stderr. On a terminal it redraws one line; otherwise
//! (a log file, CI) it prints a line at most every 10% so logs stay short.

use std::io::{IsTerminal, Write};
use std::time::Instant;

pub struct Progress {
    total: usize,
    done: usize,
    start: Instant,
    tty: bool,
    last_decile: usize,
    quiet: bool,
}

/// `elapsed` seconds for `done` of `total` units: the estimated seconds left, assuming
/// the remaining units cost what the finished ones did on average.
pub fn eta_secs(elapsed: f64, done: usize, total: usize) -> Option<f64> {
    if done == 0 || done > total {
        return None;
    }
    Some(elapsed / done as f64 * (total - done) as f64)
}

pub fn fmt_secs(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// The bar itself, e.g. `[#####-----] 12/24 50% ETA 0m31s  len1024-depth50 snapkv`.
pub fn render(done: usize, total: usize, elapsed: f64, what: &str) -> String {
    const W: usize = 24;
    let frac = if total == 0 {
        1.0
    } else {
        done as f64 / total as f64
    };
    let fill = ((frac * W as f64).round() as usize).min(W);
    let eta = eta_secs(elapsed, done, total)
        .map(fmt_secs)
        .unwrap_or_else(|| "?".into());
    format!(
        "[{}{}] {done}/{total} {:>3.0}% elapsed {} ETA {eta}  {what}",
        "#".repeat(fill),
        "-".repeat(W - fill),
        frac * 100.0,
        fmt_secs(elapsed)
    )
}

impl Progress {
    pub fn new(total: usize, quiet: bool) -> Progress {
        Progress {
            total,
            done: 0,
            start: Instant::now(),
            tty: std::io::stderr().is_terminal(),
            last_decile: 0,
            quiet,
        }
    }

    /// Shows what is running now without counting a unit (e.g. a prefill).
    pub fn status(&mut self, what: &str) {
        self.draw(what, false);
    }

    /// Prints one line of its own (a notice) above the bar, even when quiet.
    pub fn note(&mut self, line: &str) {
        let mut e = std::io::stderr().lock();
        if self.tty && !self.quiet {
            let _ = write!(e, "\r\x1b[2K");
        }
        let _ = writeln!(e, "kvscope: notice: {line}");
    }

    /// Counts one finished unit.
    pub fn inc(&mut self, what: &str) {
        self.done += 1;
        self.draw(what, true);
    }

    fn draw(&mut self, what: &str, counted: bool) {
        if self.quiet {
            return;
        }
        let line = render(
            self.done,
            self.total,
            self.start.elapsed().as_secs_f64(),
            what,
        );
        let mut e = std::io::stderr().lock();
        if self.tty {
            let _ = write!(e, "\r\x1b[2K{line}");
            let _ = e.flush();
        } else if counted {
            let decile = self.done * 10 / self.total.max(1);
            if decile > self.last_decile || self.done == self.total {
                self.last_decile = decile;
                let _ = writeln!(e, "{line}");
            }
        }
    }

    /// Ends the bar's line on a terminal.
    pub fn finish(&mut self) {
        if self.tty && !self.quiet {
            let _ = writeln!(std::io::stderr());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_and_rendering() {
        assert_eq!(eta_secs(10.0, 0, 4), None);
        assert_eq!(eta_secs(10.0, 2, 4), Some(10.0));
        assert_eq!(eta_secs(10.0, 4, 4), Some(0.0));
        assert_eq!(fmt_secs(75.4), "1m15s");
        assert_eq!(fmt_secs(3725.0), "1h02m");
        let r = render(6, 24, 30.0, "x");
        assert!(
            r.starts_with("[######------------------] 6/24  25% elapsed 0m30s ETA 1m30s  x"),
            "{r}"
        );
        assert!(render(0, 0, 0.0, "").contains("100%"));
    }
}
