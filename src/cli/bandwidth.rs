//! `kvscope bench --bandwidth`: how fast this machine streams memory into the cores, and
//! so how many tokens per second an empty-cache decode could reach at most. Decode reads
//! every weight once per token; once the kernels keep up with memory, bandwidth divided
//! by the bytes read per token is the ceiling no implementation passes on this machine.

use std::time::Instant;

/// Bytes streamed per pass: 8x a large L3, so the reads come from memory.
const PROBE_BYTES: usize = 256 << 20;

/// The best of `rounds` passes of `threads` threads each summing its share of a
/// `PROBE_BYTES` buffer, in bytes per second. The buffer is written first (so its pages
/// exist) and freed before returning.
pub fn read_bandwidth(threads: usize, rounds: usize) -> f64 {
    let words = PROBE_BYTES / 8;
    let buf: Vec<u64> = (0..words as u64).collect();
    let share = words.div_ceil(threads.max(1));
    let mut best = 0f64;
    for _ in 0..rounds.max(1) {
        let t = Instant::now();
        std::thread::scope(|s| {
            for part in buf.chunks(share) {
                s.spawn(move || {
                    // Four lanes so the sum is not one dependent chain; the compiler
                    // turns this into wide vector loads.
                    let mut acc = [0u64; 4];
                    for c in part.chunks_exact(4) {
                        for (a, v) in acc.iter_mut().zip(c) {
                            *a = a.wrapping_add(*v);
                        }
                    }
                    std::hint::black_box(acc);
                });
            }
        });
        best = best.max(PROBE_BYTES as f64 / t.elapsed().as_secs_f64());
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The probe returns a finite, positive rate (its size is a property of the machine,
    /// not something a test can pin).
    #[test]
    fn bandwidth_is_a_positive_rate() {
        let b = read_bandwidth(2, 1);
        assert!(b.is_finite() && b > 1e8, "{b}");
    }
}
