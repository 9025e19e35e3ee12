//! What the worker tells the UI. Everything here is plain data, computed on the worker:
//! the UI thread only stores it and draws it (DESIGN.md: data flows one way).

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::eviction::Settings;
use crate::profile_format::Profile;
use crate::session::Agreement;
use crate::trace::{BlockMap, Dims};

/// Prompt-level data, computed once per prompt after prefill.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub model_name: String,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// `[layer]`: the sliding window of a sliding-window layer, `None` for a global one.
    pub windows: Vec<Option<usize>>,
    pub model_file_bytes: u64,
    /// Bytes the weights take in memory (as stored, plus any rearranged copy).
    pub weights_bytes: usize,
    /// Bytes of this prompt's Trace, block maps included.
    pub trace_bytes: usize,
    /// Every buffer's bytes after prefill and the full-cache decode (the compressed
    /// cache's are in [`Outcome::decode_bytes`]).
    pub memory: crate::memory::Memory,
    /// Text of each prompt token (for the token inspector).
    pub prompt_tokens: Vec<String>,
    /// Full-cache generation: ids, text of each token, whole text.
    pub full_ids: Vec<u32>,
    pub full_tokens: Vec<String>,
    pub full_kv_bytes: usize,
    /// Storage type of the decode cache the byte counts are for ("f16", "f32").
    pub kv_dtype: &'static str,
    /// `[stat][layer][head]` head statistics ([`super::stats`]).
    pub stats: Vec<Vec<Vec<f32>>>,
    /// `[layer][head]` SRH scores from the profile, when there is one.
    pub srh_scores: Option<Vec<Vec<f64>>>,
    /// `[layer]`: SRH ranking (best first) from the profile.
    pub srh_ranking: Option<Vec<Vec<usize>>>,
    /// `[layer]`: classic retrieval-head ranking (best first) from the profile.
    pub retrieval_ranking: Option<Vec<Vec<usize>>>,
    /// The session's profile, so the UI previews an edit's budgets from the inputs the
    /// worker's selection reads ([`Snapshot::budgets`]).
    pub profile: Option<Arc<Profile>>,
    /// `[layer][head]` block-averaged attention maps (moved out of the Trace: selection
    /// never reads them, so handing them over costs no copy).
    pub maps: Arc<Vec<Vec<BlockMap>>>,
    pub prefill_ms: f64,
    pub decode_full_ms: f64,
    /// Chat template used and control tokens in the prompt text, for the status line.
    pub prompt_info: Option<crate::model::PromptInfo>,
}

impl Snapshot {
    pub fn dims(&self) -> Dims {
        Dims {
            n_layers: self.n_layers,
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
        }
    }

    /// The per-layer budgets the worker's selection gives `settings` on this prompt: the
    /// same allocation ([`crate::eviction::sliding`]) over the same inputs (dims, sliding
    /// windows, prompt length, the session's profile). Fails only for an allocator that
    /// measures the prefilled trace (cake), which stays on the worker.
    pub fn budgets(&self, settings: &Settings) -> anyhow::Result<Vec<usize>> {
        crate::eviction::sliding::budgets_with_windows(
            settings,
            &self.dims(),
            self.prompt_tokens.len(),
            &self.windows,
            self.profile.as_deref(),
        )
    }

    /// Installs `p` as the prompt's profile: the head map's SRH and retrieval marks and
    /// the budget preview read it from here.
    pub fn set_profile(&mut self, p: Arc<Profile>) {
        self.srh_scores = Some(p.srh_scores.clone());
        self.srh_ranking = Some(p.srh_ranking.clone());
        self.retrieval_ranking = Some(
            p.retrieval_scores
                .iter()
                .map(|l| crate::profile_format::rank_best_first(l))
                .collect(),
        );
        self.profile = Some(p);
    }
}

/// Progress of a background `profile make` (`P`), in the units' weights (prefill
/// tokens, decode steps weighing more), as the command's progress bar.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProfileProgress {
    pub done: f64,
    pub total: f64,
    pub eta_s: Option<f64>,
    /// Which unit, and how many questions were answered right so far.
    pub note: String,
}

/// One recompute's outcome, tagged with the settings generation it was computed for.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub gen: u64,
    pub settings: Settings,
    pub tokens: Vec<String>,
    pub ids: Vec<u32>,
    pub kv_bytes: usize,
    pub kv_fraction: f64,
    /// Bytes the compressed decode's cache(s) held ([`crate::memory::Memory`]).
    pub decode_bytes: usize,
    pub agreement: Agreement,
    /// `[layer][kv_head]` sorted kept positions.
    pub keep: Vec<Vec<Vec<usize>>>,
    pub layer_budgets: Vec<usize>,
    /// `[pos]`: how many layers keep the position in at least one KV head.
    pub layers_keeping: Vec<u16>,
    /// `[layer][kv_head][pos]`, as [`crate::eviction::Selection::scores`].
    pub scores: Vec<Vec<Vec<f32>>>,
    /// `[layer][kv_head][pos]`: 1-based rank of each scored position (0 = not scored).
    pub ranks: Vec<Vec<Vec<u32>>>,
    /// `[layer][head][pos]`: the window score `p_h` of every query head for these
    /// window/kernel/pooling settings (shared between outcomes that agree on them).
    pub strips: Arc<Vec<Vec<Vec<f32>>>>,
    pub select_ms: f64,
    pub decode_ms: f64,
    /// The divergence analysis of this outcome; it arrives after the outcome
    /// ([`FromWorker::Divergence`]), so the generation shows first.
    pub divergence: Option<Arc<DivView>>,
}

/// Culprits kept per step for the Divergence pane.
pub const CULPRITS_PER_STEP: usize = 16;

/// The divergence analysis of one outcome against the full cache (METHOD.md,
/// "Divergence analysis"), teacher-forced. Step `t` (1-based) is index `t - 1`.
#[derive(Debug, Clone, Default)]
pub struct DivView {
    pub steps: Vec<crate::divergence::metrics::Compare>,
    /// `[step][layer][query head]` lost attention mass.
    pub lost: Vec<Vec<Vec<f32>>>,
    /// `[step]`: the top culprits, (prompt position, lost mass), best first.
    pub culprits: Vec<Vec<(usize, f64)>>,
    /// The default step (first top-1 disagreement, else the largest KL), 1-based.
    pub default_step: Option<usize>,
    /// Compressed teacher-forced decode plus analysis, milliseconds.
    pub ms: f64,
    /// Bytes of the full-cache replay this analysis read (held by the worker from the
    /// first analysis on: [`crate::memory::Memory::full_replay`]).
    pub replay_bytes: usize,
    /// `[step][layer]`: relative error of the attention output with this keep set
    /// (METHOD.md); measured on request (`E`: one more full-cache replay).
    pub attn_err: Option<Vec<Vec<f32>>>,
}

/// Worker state shown in the status line.
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    /// Fetching or reading the model file.
    Loading(String),
    /// Prefill progress with an estimate of the time left.
    Prefill {
        done: usize,
        total: usize,
        eta_s: Option<f64>,
    },
    /// Decoding the full-cache generation after prefill.
    DecodingFull,
    Idle,
    /// Selecting and decoding for settings generation `gen`.
    Recomputing(u64),
    /// The worker stopped (its error is in the status line).
    Stopped,
}

/// Sends one message to the UI; false when the UI has gone (the worker then stops).
/// Shared by the worker and the background profile run.
pub type Outbox = Arc<dyn Fn(FromWorker) -> bool + Send + Sync>;

/// Worker -> UI.
#[derive(Debug, Clone)]
pub enum FromWorker {
    Phase(Phase),
    Ready(Box<Snapshot>),
    Result(Box<Outcome>),
    /// The divergence analysis of settings generation `gen`.
    Divergence {
        gen: u64,
        view: Arc<DivView>,
    },
    /// The attention-output errors of settings generation `gen` (`[step][layer]`).
    AttnErrors {
        gen: u64,
        errors: Vec<Vec<f32>>,
    },
    /// A recompute failed (e.g. compresskv without a profile); the UI keeps running.
    Failed {
        gen: u64,
        error: String,
    },
    /// An error that belongs to no settings generation (bad profile, failed export).
    Error(String),
    /// One line for the status line (fetch progress, export written, ...).
    Notice(String),
    /// The exact attention of the rows the attention map's token zoom shows, and how
    /// long the worker took to compute it.
    ZoomRows {
        zoom: Arc<crate::model::RowAttention>,
        ms: f64,
    },
    /// A saved report's settings, checked against this model and prompt; `note` says
    /// what was loaded.
    ReportLoaded {
        settings: Box<Settings>,
        note: String,
    },
    /// Loading or prefill failed; nothing more will come.
    Fatal(String),
    /// The background `profile make` finished a unit.
    ProfileProgress(ProfileProgress),
    /// The background `profile make` wrote `path`; the UI hands `profile` back to the
    /// worker ([`ToWorker::UseProfile`]) and shows its marks.
    ProfileMade {
        profile: Arc<Profile>,
        path: PathBuf,
        note: String,
    },
    /// The background `profile make` ended without a profile: cancelled (`error` false)
    /// or failed; one line.
    ProfileStopped {
        line: String,
        error: bool,
    },
}

/// UI -> worker. `Apply`, holding whole settings, is the message nearly every edit
/// sends; the others are rare, so their unused bytes cost nothing worth a box per edit.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum ToWorker {
    Apply {
        gen: u64,
        settings: Settings,
    },
    /// Measure the attention-output errors of settings generation `gen` (ignored when
    /// the worker has moved on to another).
    AttnErrors {
        gen: u64,
    },
    /// Write the `kvscope run --json` report of the latest applied settings.
    Export {
        path: std::path::PathBuf,
    },
    /// Compute the exact attention of query rows `rows` on keys `keys` in `layer`
    /// ([`FromWorker::ZoomRows`]), for the attention map's token zoom.
    ZoomRows {
        layer: usize,
        rows: std::ops::Range<usize>,
        keys: std::ops::Range<usize>,
    },
    /// Read a saved report and send back its settings ([`FromWorker::ReportLoaded`]),
    /// or why they do not belong to this model and prompt.
    LoadReport {
        path: std::path::PathBuf,
    },
    /// Start `profile make` for this model on a thread of its own, at lengths from the
    /// prompt's; it stops between units once `stop` is set (the loop sets it on `P`).
    MakeProfile {
        stop: Arc<AtomicBool>,
    },
    /// Use `profile` (written at `path`) from now on.
    UseProfile {
        profile: Arc<Profile>,
        path: PathBuf,
    },
}
