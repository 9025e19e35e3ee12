//! A progress line with ETA on stderr, and the Ctrl-C flag long measurements poll.

use std::io::{IsTerminal, Write};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Redrawn in place (`\r`) on a terminal; on a pipe or file, one line per 10% so logs
/// stay readable.
pub struct Progress {
    label: String,
    total: f64,
    start: Instant,
    tty: bool,
    last_decile: i64,
}

impl Progress {
    pub fn new(label: &str, total: f64) -> Self {
        Progress {
            label: label.to_string(),
            total: total.max(f64::MIN_POSITIVE),
            start: Instant::now(),
            tty: std::io::stderr().is_terminal(),
            last_decile: -1,
        }
    }

    /// `done` is in the same units as `total` (any units whose rate is steady, e.g.
    /// tokens processed); `note` is shown after the bar.
    pub fn update(&mut self, done: f64, note: &str) {
        let frac = (done / self.total).clamp(0.0, 1.0);
        let elapsed = self.start.elapsed();
        let eta = if frac > 0.0 {
            Some(elapsed.mul_f64((1.0 - frac) / frac))
        } else {
            None
        };
        let eta = eta.map_or("?".into(), fmt_duration);
        const W: usize = 30;
        let filled = (frac * W as f64).round() as usize;
        let line = format!(
            "{} [{}{}] {:>3.0}%  elapsed {}  ETA {}  {}",
            self.label,
            "#".repeat(filled),
            ".".repeat(W - filled),
            frac * 100.0,
            fmt_duration(elapsed),
            eta,
            note
        );
        let mut err = std::io::stderr().lock();
        if self.tty {
            // Clear to the end of the line: the previous note may have been longer.
            let _ = write!(err, "\r{line}\x1b[K");
            let _ = err.flush();
        } else {
            let decile = (frac * 10.0).floor() as i64;
            if decile > self.last_decile {
                self.last_decile = decile;
                let _ = writeln!(err, "{line}");
            }
        }
    }

    /// Ends the line and says how long it took.
    pub fn finish(&mut self) -> Duration {
        let took = self.start.elapsed();
        if self.tty {
            let _ = writeln!(std::io::stderr());
        }
        took
    }
}

pub fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// Set when the user presses Ctrl-C. The handler is installed once per process; a
/// second Ctrl-C while a measurement is still finishing its trial exits at once.
pub fn stop_flag() -> Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        let f = flag.clone();
        let installed = ctrlc::set_handler(move || {
            use std::sync::atomic::Ordering;
            if f.swap(true, Ordering::SeqCst) {
                eprintln!("\nkvscope: stopped; nothing was written");
                std::process::exit(130);
            }
            eprintln!("\nkvscope: stopping after the current prompt (Ctrl-C again to quit now)");
        });
        if installed.is_err() {
            eprintln!(
                "kvscope: warning: cannot catch Ctrl-C; an interrupted run writes nothing anyway"
            );
        }
        flag
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(fmt_duration(Duration::from_secs(75)), "1m15s");
        assert_eq!(fmt_duration(Duration::from_secs(3725)), "1h02m");
    }
}
