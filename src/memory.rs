//! Where a session's memory goes, buffer by buffer: what the memory pane and `run
//! --json`'s `memory` object show. Every figure is the length of a buffer the process
//! held times its element size (never a formula from the shape), so a buffer added
//! later and forgotten here shows up as the gap to the measured RSS.

use serde::Serialize;

use crate::model::replay::FullPass;
use crate::model::Loaded;
use crate::session::Session;
use crate::trace::{maps_bytes, BlockMap, KvStore};

/// Bytes per buffer. The Trace's parts are held for the whole session; `prefill_*` only
/// during the prefill (0 when the prefill cache answered), the decode caches only while
/// a generation is decoded (the compressed one's field is for the last edit).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Memory {
    /// The model file (mapped; its pages count in RSS as they are read).
    pub model_file: u64,
    /// The weights as held (as stored, plus any rearranged copy).
    pub weights: usize,
    /// The Trace's keys and values of every prompt token, at `trace_kv_dtype`.
    pub trace_kv: usize,
    pub trace_kv_dtype: &'static str,
    /// The Trace's last 64 query rows per head (f32).
    pub q_last: usize,
    /// The Trace's per-head column sums of attention (f32).
    pub col_sums: usize,
    /// The block-averaged attention maps (f32, at most 256 x 256 per head).
    pub maps: usize,
    /// The logits after the prompt (f32).
    pub last_logits: usize,
    /// Prefill's keys and values in f32 while later chunks attend to them.
    pub prefill_kv_f32: usize,
    /// Prefill's f64 block sums of the attention maps (whatever the prompt's length).
    pub prefill_block_sums: usize,
    /// Prefill's activations of the largest chunk.
    pub prefill_scratch: usize,
    /// The full-cache decode's cache (0 when the prefill cache's stored generation
    /// answered and nothing was decoded).
    pub decode_full: usize,
    /// The compressed decode's cache(s) of the last edit (two while the divergence
    /// analysis' teacher-forced decode forks off the free-running one).
    pub decode_compressed: usize,
    /// The full-cache replay the divergence analysis reads (`FullPass`: each step's
    /// logits and attention on the prompt), once computed or read from the prefill
    /// cache; held for the rest of the session.
    pub full_replay: usize,
    /// Peak resident memory of the process so far (`VmHWM`; null without procfs).
    pub peak_rss: Option<u64>,
}

impl Memory {
    /// The breakdown of `s` on `loaded`; `maps_elsewhere` are block maps moved out of
    /// the Trace (the inspector hands them to its UI thread).
    pub fn of(loaded: &Loaded, s: &Session, maps_elsewhere: &[Vec<BlockMap>]) -> Memory {
        let t = &s.trace;
        let f = std::mem::size_of::<f32>();
        let layers = &t.layers;
        Memory {
            model_file: loaded.file_bytes,
            weights: loaded.model.weights.resident_bytes(),
            trace_kv: layers.iter().map(|l| l.k.bytes() + l.v.bytes()).sum(),
            trace_kv_dtype: match layers.first().map(|l| &l.k) {
                Some(KvStore::F16(_)) => "f16",
                _ => "f32",
            },
            q_last: layers.iter().map(|l| l.q_last.len() * f).sum(),
            col_sums: layers.iter().map(|l| l.col_sums.len() * f).sum(),
            maps: layers
                .iter()
                .map(|l| maps_bytes(std::slice::from_ref(&l.maps)))
                .sum::<usize>()
                + maps_bytes(maps_elsewhere),
            last_logits: t.last_logits.len() * f,
            prefill_kv_f32: s.buffers.prefill.kv_f32,
            prefill_block_sums: s.buffers.prefill.block_sums,
            prefill_scratch: s.buffers.prefill.scratch,
            decode_full: s.buffers.decode_full,
            decode_compressed: s.buffers.decode_compressed,
            full_replay: s.full_pass.as_ref().map_or(0, FullPass::bytes),
            peak_rss: peak_rss(),
        }
    }

    /// Bytes the session holds between edits: weights, the whole Trace (maps included)
    /// and the full-cache replay once there is one.
    pub fn resident(&self) -> usize {
        self.weights + self.trace() + self.full_replay
    }

    /// The Trace's bytes (K, V, last queries, column sums, maps, logits).
    pub fn trace(&self) -> usize {
        self.trace_kv + self.q_last + self.col_sums + self.maps + self.last_logits
    }

    /// The prefill's working buffers together (held at once, at its end).
    pub fn prefill(&self) -> usize {
        self.prefill_kv_f32 + self.prefill_block_sums + self.prefill_scratch
    }
}

/// Peak resident set of this process (`VmHWM` in /proc/self/status), in bytes.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eviction::Settings;
    use crate::testing::{self, GgufSpec};
    use crate::trace::{BlockMap, W_MAX};

    /// Bytes a decode cache of `cap` entries per KV head holds, from the layout
    /// (kvcache.rs): keys in whole 16-entry tiles, values entry by entry, one position
    /// (usize) per entry.
    fn head_cache(cap: usize, hd: usize, elem: usize) -> usize {
        (cap.div_ceil(16) * 16 * hd + cap * hd) * elem + cap * 8
    }

    /// The breakdown of a tiny model's session equals the sizes its buffers have by
    /// their shapes: the Trace's K/V at the decode cache's type, prefill's f32 K/V and
    /// f64 block sums, and both decode caches as allocated for the generation.
    #[test]
    fn breakdown_equals_the_buffers_sizes() {
        let dir = testing::temp_dir("memory");
        let path = dir.join("tiny.gguf");
        let spec = GgufSpec {
            context_length: 512,
            ..GgufSpec::default()
        };
        testing::write_tiny_gguf(&path, &spec).expect("write tiny gguf");
        let loaded = crate::model::load(&path).expect("load");
        let text = "the lighthouse keeper wrote the number in the log. ".repeat(8);
        let max_new = 5;
        let mut s = Session::new(&loaded, text, max_new, None, &mut |_, _| {}).expect("session");
        let settings = Settings {
            method: crate::eviction::snapkv::METHOD,
            budget: 24,
            window: 8,
            ..Settings::default()
        };
        s.apply(&loaded.model, &loaded.tok, settings)
            .expect("apply");
        let m = Memory::of(&loaded, &s, &[]);

        let cfg = &loaded.model.config;
        let (nl, nh, nkv, hd) = (cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
        let len = s.trace.len;
        let e = loaded.model.kv_dtype().bytes();
        assert!(len > 64, "the prompt must outgrow the window rows ({len})");
        assert_eq!(m.trace_kv_dtype, loaded.model.kv_dtype().name());
        assert_eq!(m.trace_kv, nl * 2 * nkv * len * hd * e);
        assert_eq!(m.q_last, nl * nh * W_MAX * hd * 4);
        assert_eq!(m.col_sums, nl * nh * len * 4);
        let nb = BlockMap::geometry(len).1;
        assert_eq!(m.maps, nl * nh * nb * nb * 4);
        assert_eq!(m.last_logits, cfg.vocab_size * 4);
        assert_eq!(m.prefill_kv_f32, nl * 2 * nkv * len * hd * 4);
        assert_eq!(m.prefill_block_sums, nl * nh * nb * nb * 8);
        assert!(m.prefill_scratch > 0);
        // The full cache: every prompt entry plus room for the generation.
        assert_eq!(m.decode_full, nl * nkv * head_cache(len + max_new, hd, e));
        // The compressed one: each head's kept entries plus the same room.
        let keep = &s.compressed.as_ref().expect("compressed").selection.keep;
        let want: usize = keep
            .positions
            .iter()
            .flatten()
            .map(|p| head_cache(p.len() + max_new, hd, e))
            .sum();
        assert_eq!(m.decode_compressed, want);
        assert!(m.decode_compressed < m.decode_full);
        assert_eq!(m.weights, loaded.model.weights.resident_bytes());
        assert_eq!(m.model_file, std::fs::metadata(&path).expect("stat").len());
        assert_eq!(m.trace(), s.trace.resident_bytes());
        // No divergence analysis yet: no replay held; then exactly its buffers.
        assert_eq!(m.full_replay, 0);
        s.full_pass(&loaded.model).expect("replay");
        let with = Memory::of(&loaded, &s, &[]);
        let fp = s.full_pass.as_ref().expect("replay held");
        // T ids, T - 1 teacher-forced steps of logits and attention on the prompt.
        let steps = fp.ids.len() - 1;
        assert!(steps > 0);
        assert_eq!(
            with.full_replay,
            fp.ids.len() * 4
                + steps * cfg.vocab_size * 4
                + steps * nl * nh * len * 4
                + nl * std::mem::size_of::<usize>()
        );
        assert_eq!(with.resident(), m.resident() + with.full_replay);
        assert!(m.peak_rss.is_some_and(|b| b as usize > m.trace()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
