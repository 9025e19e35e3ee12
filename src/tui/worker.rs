//! The background worker: owns the model and the Session, and talks to the UI only by
//! messages. It loads (or fetches) the model, prefills the prompt with progress, sends
//! the prompt's [`Snapshot`], then answers settings requests with [`Outcome`]s.

use anyhow::{Context, Result};
use std::path::PathBuf;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Instant;

use super::msg::{DivView, FromWorker, Outcome, Phase, Snapshot, ToWorker, CULPRITS_PER_STEP};
use super::stats;
use crate::divergence;
use crate::eviction::{Allocator, ScoreTable, Settings};
use crate::keepset::KeepSet;
use crate::model::replay::{self, FullPass};
use crate::model::{self, fetch, Loaded};
use crate::profile_format::Profile;
use crate::report::{Provenance, Report, SettingsPart};
use crate::session::Session;

/// What the worker is asked to open.
#[derive(Debug, Clone)]
pub struct Job {
    pub model: Option<PathBuf>,
    pub profile: Option<PathBuf>,
    /// The prompt file's text (the chat template is applied here).
    pub prompt: String,
    pub prompt_opts: crate::model::PromptOptions,
    pub max_new: usize,
    /// `--no-cache`: neither read nor fill the prefill cache.
    pub no_cache: bool,
    /// `--from-report`: the report's model sha256 and prompt ids, checked before the
    /// prefill.
    pub expect: Option<(Option<String>, Vec<u32>)>,
    /// How `P` runs `profile make` (the command's defaults unless a test says else).
    pub make: super::profiling::MakeOptions,
}

pub use super::msg::Outbox;

/// Starts the worker thread.
pub fn spawn(job: Job, out: Outbox, rx: Receiver<ToWorker>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("kvscope-worker".into())
        .spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(job, &out, rx)));
            if let Err(p) = r {
                let what = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                out(FromWorker::Fatal(format!("the worker crashed: {what}")));
            }
        })
        .map(|_| ())
}

fn run(job: Job, out: &Outbox, rx: Receiver<ToWorker>) {
    let mut w = match Worker::open(&job, out) {
        Ok(w) => w,
        Err(e) => {
            out(FromWorker::Fatal(format!("{e:#}")));
            return;
        }
    };
    let t = Instant::now();
    if !out(FromWorker::Ready(Box::new(w.snapshot()))) {
        return;
    }
    timing_line(&format!(
        "worker_snapshot_ms {:.1} sent_at_ms {:.1}",
        ms_since(t),
        since_start_ms()
    ));
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        for (i, m) in batch.iter().enumerate() {
            match m {
                // Only the last of a run of Apply requests matters: the UI has moved on
                // from the others. An Export fences them: it must see its own settings.
                ToWorker::Apply { .. }
                    if matches!(batch.get(i + 1), Some(ToWorker::Apply { .. })) => {}
                ToWorker::Apply { gen, settings } => {
                    if !w.apply(*gen, settings.clone(), out) {
                        return;
                    }
                }
                ToWorker::AttnErrors { gen } => {
                    if w.applied == Some(*gen) {
                        let msg = match w.attn_errors() {
                            Ok(errors) => FromWorker::AttnErrors { gen: *gen, errors },
                            Err(e) => {
                                FromWorker::Error(format!("attention-output errors failed: {e:#}"))
                            }
                        };
                        if !out(msg) {
                            return;
                        }
                    }
                }
                // Only the last zoom of a batch is on screen.
                ToWorker::ZoomRows { .. }
                    if batch[i + 1..]
                        .iter()
                        .any(|m| matches!(m, ToWorker::ZoomRows { .. })) => {}
                ToWorker::ZoomRows { layer, rows, keys } => {
                    let t = Instant::now();
                    let r = w.loaded.model.attention_rows(
                        &w.session.trace,
                        *layer,
                        rows.clone(),
                        keys.clone(),
                    );
                    let msg = match r {
                        Ok(z) => FromWorker::ZoomRows {
                            zoom: Arc::new(z),
                            ms: t.elapsed().as_secs_f64() * 1000.0,
                        },
                        Err(e) => FromWorker::Error(format!("attention zoom failed: {e:#}")),
                    };
                    if !out(msg) {
                        return;
                    }
                }
                ToWorker::Export { path } => {
                    let msg = match w.export(path) {
                        Ok(written) => {
                            FromWorker::Notice(format!("exported report to {}", written.display()))
                        }
                        Err(e) => FromWorker::Error(format!("export failed: {e:#}")),
                    };
                    if !out(msg) {
                        return;
                    }
                }
                ToWorker::MakeProfile { stop } => super::profiling::start(
                    w.loaded.clone(),
                    &w.model_path,
                    w.session.trace.len,
                    &job.make,
                    stop.clone(),
                    out.clone(),
                ),
                ToWorker::UseProfile { profile, path } => {
                    w.session.profile = Some((**profile).clone());
                    w.profile_path = Some(path.display().to_string());
                }
                ToWorker::LoadReport { path } => {
                    let sha = crate::profile::discover::model_sha256(&w.model_path).ok();
                    let dims = w.loaded.model.config.dims();
                    let msg = match report_settings(path, sha.as_deref(), &w.session, &dims) {
                        Ok((settings, note)) => FromWorker::ReportLoaded {
                            settings: Box::new(settings),
                            note,
                        },
                        Err(e) => FromWorker::Error(format!("{e:#}")),
                    };
                    if !out(msg) {
                        return;
                    }
                }
            }
        }
    }
}

/// The settings of the report at `path`, refused (one line) when it was made on another
/// model file (`model_sha`) or another prompt than `session`'s; and a note naming what
/// was loaded (and a --max-new that differs, which settings cannot change here).
pub fn report_settings(
    path: &std::path::Path,
    model_sha: Option<&str>,
    session: &Session,
    dims: &crate::trace::Dims,
) -> Result<(Settings, String)> {
    let r = crate::report::SavedReport::load(path)?;
    crate::report::check_same_run(
        r.settings.model_sha256.as_deref(),
        model_sha,
        &r.prompt.ids,
        &session.trace.ids,
    )
    .with_context(|| format!("report {} not loaded", path.display()))?;
    let settings = r
        .settings
        .to_settings()
        .and_then(|s| s.validate(dims).map(|_| s))
        .with_context(|| format!("report {}", path.display()))?;
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let mut note = format!("loaded the settings of {name}");
    if r.settings.max_new != session.max_new {
        note.push_str(&format!(
            "; its max_new (most tokens generated) is {}, this inspector's {}: start with --from-report to use the report's",
            r.settings.max_new, session.max_new
        ));
    }
    Ok((settings, note))
}

struct Worker {
    /// Shared with a background profile run (`P`).
    loaded: Arc<Loaded>,
    session: Session,
    profile_path: Option<String>,
    /// For the report's provenance.
    model_path: PathBuf,
    prompt_opts: crate::model::PromptOptions,
    maps: Arc<Vec<Vec<crate::trace::BlockMap>>>,
    /// p_h of every head for one (window, kernel, pooling): budget and method edits
    /// select from it and show it as the attention pane's strip.
    scores: Option<ScoreTable>,
    /// The held scores were computed here and not yet stored beside the entry.
    scores_unstored: bool,
    /// Settings generation of the session's compressed outcome.
    applied: Option<u64>,
}

impl Worker {
    fn open(job: &Job, out: &Outbox) -> Result<Worker> {
        out(FromWorker::Phase(Phase::Loading(
            "locating the model".into(),
        )));
        let path = fetch::resolve(job.model.as_deref(), &mut |m| {
            out(FromWorker::Notice(m.to_string()));
        })?;
        out(FromWorker::Phase(Phase::Loading(format!(
            "loading {}",
            path.file_name().map_or_else(
                || path.display().to_string(),
                |n| n.to_string_lossy().into_owned()
            )
        ))));
        let at_load = since_start_ms();
        let loaded = model::load(&path)?;
        let load_ms = since_start_ms() - at_load;
        let dims = loaded.model.config.dims();
        // A bad profile is reported and ignored: every method but compresskv still works.
        let mut profile_path = job.profile.clone();
        let profile = match &job.profile {
            // No --profile: use the matching shipped or cached profile, as `kvscope run`
            // does, so compresskv works out of the box.
            None => {
                match crate::profile::discover::resolve(None, &path, &loaded.model.config, true) {
                    Ok(Some((p, pr))) => {
                        profile_path = Some(p);
                        Some(pr)
                    }
                    Ok(None) => None,
                    // A notice, not an error: the first result clears errors, and the
                    // reason must stay on screen.
                    Err(e) => {
                        out(FromWorker::Notice(format!("no profile: {e:#}")));
                        None
                    }
                }
            }
            Some(p) => match Profile::load(p).and_then(|pr| pr.validate(&dims, None).map(|_| pr)) {
                Ok(pr) => Some(pr),
                Err(e) => {
                    out(FromWorker::Notice(format!("profile ignored: {e:#}")));
                    None
                }
            },
        };
        let prompt = loaded.tok.prompt(&job.prompt, &job.prompt_opts)?;
        if let Some((sha, ids)) = &job.expect {
            let ours = crate::profile::discover::model_sha256(&path).ok();
            crate::report::check_same_run(sha.as_deref(), ours.as_deref(), ids, &prompt.ids)?;
        }
        // One notice: a later one would replace the prompt summary on the status line.
        let mut notice = prompt.info.summary();
        if let Some(n) = profile
            .as_ref()
            .and_then(|p| crate::profile::lengths::length_notice(p, prompt.ids.len()))
        {
            notice = format!("{notice}; {n}");
        }
        out(FromWorker::Notice(notice.clone()));
        let t0 = Instant::now();
        let mut progress = |done: usize, total: usize| {
            let el = t0.elapsed().as_secs_f64();
            let eta_s = (done > 0).then(|| el / done as f64 * (total - done.min(total)) as f64);
            out(FromWorker::Phase(Phase::Prefill { done, total, eta_s }));
            if done >= total {
                out(FromWorker::Phase(Phase::DecodingFull));
            }
        };
        let at_cache = since_start_ms();
        let (cache, cache_notice) = crate::prefill_cache::PrefillCache::open(&path, job.no_cache);
        let at_session = since_start_ms();
        let mut session = Session::from_prompt_cached(
            &loaded,
            cache.as_ref(),
            prompt,
            job.max_new,
            profile,
            &mut progress,
        )
        .context("prefill failed")?;
        // The prompt summary again, with what the prefill cache did.
        let cached = session.prefill_cache.as_ref().map(|r| r.summary());
        if let Some(line) = cache_notice
            .into_iter()
            .chain(cached)
            .reduce(|a, b| format!("{a}; {b}"))
        {
            out(FromWorker::Notice(format!("{notice}; {line}")));
        }
        // The block maps exist for drawing; selection never reads them, so they move to
        // the UI instead of being copied (tens of MB on long prompts).
        let maps = session
            .trace
            .layers
            .iter_mut()
            .map(|l| std::mem::take(&mut l.maps))
            .collect();
        timing_line(&format!(
            "worker_open load_ms {load_ms:.1} cache_open_ms {:.1} prefill_ms {:.1} decode_full_ms {:.1} session_ms {:.1} hit {} at_session_ms {at_session:.1} opened_at_ms {:.1}",
            at_session - at_cache,
            session.timing.prefill,
            session.timing.decode_full,
            since_start_ms() - at_session,
            session.prefill_cache.as_ref().is_some_and(|r| r.hit),
            since_start_ms()
        ));
        Ok(Worker {
            loaded: Arc::new(loaded),
            session,
            profile_path: profile_path.as_ref().map(|p| p.display().to_string()),
            model_path: path,
            prompt_opts: job.prompt_opts.clone(),
            maps: Arc::new(maps),
            scores: None,
            scores_unstored: false,
            applied: None,
        })
    }

    fn snapshot(&self) -> Snapshot {
        snapshot(&self.loaded, &self.session, self.maps.clone())
    }

    /// Selects and decodes for `settings`; false when the UI has gone. With
    /// `KVSCOPE_TRACE_TIMING` set, appends where the edit's time went (`worker_edit`).
    fn apply(&mut self, gen: u64, settings: Settings, out: &Outbox) -> bool {
        if !out(FromWorker::Phase(Phase::Recomputing(gen))) {
            return false;
        }
        let t0 = Instant::now();
        let (table, scores_notice) = self.scores_for(&settings);
        let table_ms = ms_since(t0);
        if let Some(n) = scores_notice {
            if !out(FromWorker::Notice(n)) {
                return false;
            }
        }
        // The generation goes to the UI as soon as it is decoded; the rest of the
        // teacher-forced decode (the divergence analysis' input) runs after.
        let (loaded, len) = (&self.loaded, self.session.trace.len);
        let mut keep = None;
        let mut alive = true;
        let mut free_ms = (0.0, 0.0);
        let mut result_ms = 0.0;
        let r = self.session.apply_then(
            &loaded.model,
            &loaded.tok,
            settings,
            Some(&table),
            true,
            &mut |c, timing| {
                free_ms = (timing.select, timing.decode_compressed);
                keep = Some(c.selection.keep.clone());
                let o = pack(loaded, len, gen, c, &table, timing);
                alive = out(FromWorker::Result(Box::new(o)));
                result_ms = ms_since(t0);
                alive
            },
        );
        if !alive {
            return false;
        }
        match r {
            Ok(()) => self.applied = Some(gen),
            Err(e) => {
                keep = None;
                if !out(FromWorker::Failed {
                    gen,
                    error: format!("{e:#}"),
                }) {
                    return false;
                }
            }
        }
        let (select_ms, decode_ms) = free_ms;
        let forced_ms = self.session.timing.decode_compressed - decode_ms;
        if let Some(keep) = keep {
            let t = Instant::now();
            // Read from beside the prefill cache's entry when a reopen stored it.
            let replay = self.session.full_pass_cached(&self.loaded.model);
            let replay_ms = ms_since(t);
            let (pass_from, pass_notice) = match &replay {
                Ok((from, n)) => (*from, n.clone()),
                Err(_) => ("failed", None),
            };
            if let Some(n) = pass_notice {
                if !out(FromWorker::Notice(n)) {
                    return false;
                }
            }
            let replay = replay.map(|_| ());
            let msg = match replay.and_then(|_| self.divergence(&keep)) {
                Ok(view) => FromWorker::Divergence {
                    gen,
                    view: Arc::new(view),
                },
                Err(e) => FromWorker::Error(format!("divergence analysis failed: {e:#}")),
            };
            let analysis_ms = ms_since(t) - replay_ms;
            if !out(msg) {
                return false;
            }
            timing_line(&format!(
                "worker_edit at_ms {:.1} gen {gen} scores_ms {table_ms:.1} select_ms {select_ms:.1} free_decode_ms {decode_ms:.1} to_result_ms {result_ms:.1} forced_rest_ms {forced_ms:.1} full_replay_ms {replay_ms:.1} ({pass_from}) analysis_ms {analysis_ms:.1} to_divergence_ms {:.1}",
                since_start_ms(),
                ms_since(t0)
            ));
        }
        if !out(FromWorker::Phase(Phase::Idle)) {
            return false;
        }
        // A replay computed here goes beside the prefill cache's entry once its result
        // is on screen, so the next reopen reads it instead of replaying.
        let t = Instant::now();
        let mut notices: Vec<String> = self.session.store_full_pass().into_iter().collect();
        if std::mem::take(&mut self.scores_unstored) {
            if let Some(t) = &self.scores {
                notices.extend(self.session.store_scores(t));
            }
        }
        timing_line(&format!("worker_store_sidecars_ms {:.1}", ms_since(t)));
        match notices.into_iter().reduce(|a, b| format!("{a}; {b}")) {
            Some(n) => out(FromWorker::Notice(n)),
            None => true,
        }
    }

    /// The divergence analysis of `keep`: the full replay is computed on first use and
    /// kept by the session; the compressed teacher-forced logits came with the outcome's
    /// decode.
    fn divergence(&mut self, keep: &KeepSet) -> Result<DivView> {
        self.session.full_pass(&self.loaded.model)?;
        let s = &self.session;
        match &s.full_pass {
            Some(fp) => divergence_view(&self.loaded, s, fp, keep),
            None => anyhow::bail!("no full-cache replay"),
        }
    }

    /// `[step][layer]` attention-output errors of the current outcome's keep set: one
    /// full-cache replay (not done per edit: it would double an edit's cost).
    fn attn_errors(&self) -> Result<Vec<Vec<f32>>> {
        let s = &self.session;
        let Some(c) = &s.compressed else {
            anyhow::bail!("no result yet");
        };
        replay::attn_errors(&self.loaded.model, &s.trace, &s.full.ids, &c.selection.keep)
    }

    /// The window scores for `s`: held, else stored beside the prefill cache's entry by
    /// an earlier reopen, else computed (and marked to be stored once the result is on
    /// screen); with a notice when a stored table was unusable.
    fn scores_for(&mut self, s: &Settings) -> (ScoreTable, Option<String>) {
        let len = self.session.trace.len;
        match &self.scores {
            Some(t) if t.fits(len, s) => (t.clone(), None),
            _ => {
                let (stored, notice) = match self.session.stored_scores(s) {
                    Ok(t) => (t, None),
                    Err(n) => (None, Some(n)),
                };
                self.scores_unstored = stored.is_none();
                let t = stored.unwrap_or_else(|| ScoreTable::compute(&self.session.trace, s));
                self.scores = Some(t.clone());
                (t, notice)
            }
        }
    }

    /// Writes the report as `path`, or under a fresh name beside it (`NAME-1.json`, ...)
    /// when that is taken: an export never replaces another. Returns the path written.
    fn export(&self, path: &std::path::Path) -> Result<std::path::PathBuf> {
        let s = &self.session;
        let cfg = &self.loaded.model.config;
        let prov = Provenance::new(
            self.profile_path.clone(),
            crate::profile::discover::model_sha256(&self.model_path).ok(),
            &self.prompt_opts,
            s.prompt_info.as_ref(),
        );
        // Nothing compressed yet: the report says so with the full cache's settings.
        let full = Settings {
            method: crate::eviction::full::METHOD,
            budget: s.trace.len,
            window: 0,
            kernel: 0,
            first_k: 0,
            allocator: Some(Allocator::Uniform),
            ..Settings::default()
        };
        let fallback = SettingsPart::new(&full, vec![s.trace.len; cfg.n_layers], s.max_new, &prov);
        let report = Report::new(cfg, s, &prov, fallback);
        let text = serde_json::to_string_pretty(&report)?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => std::path::Path::new("."),
        };
        let stem = path.file_stem().map_or("kvscope-report".into(), |s| {
            s.to_string_lossy().into_owned()
        });
        crate::output::write_unique(dir, &stem, "json", text.as_bytes())
    }
}

/// The prompt-level data the UI needs, from a loaded model and a prefilled Session.
pub fn snapshot(
    loaded: &Loaded,
    s: &Session,
    maps: Arc<Vec<Vec<crate::trace::BlockMap>>>,
) -> Snapshot {
    let cfg = &loaded.model.config;
    let tok = &loaded.tok;
    let mut snap = Snapshot {
        model_name: cfg.name.clone(),
        n_layers: cfg.n_layers,
        n_heads: cfg.n_heads,
        n_kv_heads: cfg.n_kv_heads,
        head_dim: cfg.head_dim,
        windows: s.trace.windows.clone(),
        model_file_bytes: loaded.file_bytes,
        weights_bytes: loaded.model.weights.resident_bytes(),
        trace_bytes: s.trace.resident_bytes() + crate::trace::maps_bytes(&maps),
        memory: crate::memory::Memory::of(loaded, s, &maps),
        prompt_tokens: s.trace.ids.iter().map(|&i| tok.token_text(i)).collect(),
        full_tokens: s.full.ids.iter().map(|&i| tok.token_text(i)).collect(),
        full_ids: s.full.ids.clone(),
        full_kv_bytes: s.full.kv_bytes,
        kv_dtype: loaded.model.kv_dtype().name(),
        stats: stats::head_stats(&s.trace),
        srh_scores: None,
        srh_ranking: None,
        retrieval_ranking: None,
        profile: None,
        maps,
        prefill_ms: s.timing.prefill,
        decode_full_ms: s.timing.decode_full,
        prompt_info: s.prompt_info.clone(),
    };
    if let Some(p) = &s.profile {
        snap.set_profile(Arc::new(p.clone()));
    }
    snap
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

static STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// Marks the inspector's start, the zero of the `KVSCOPE_TRACE_TIMING` opening lines.
pub fn mark_start() {
    let _ = STARTED.set(Instant::now());
}

/// Milliseconds since [`mark_start`] (since the first call, when it was never marked).
pub fn since_start_ms() -> f64 {
    ms_since(*STARTED.get_or_init(Instant::now))
}

/// Appends one line to the `KVSCOPE_TRACE_TIMING` file, when it is set (the loop logs
/// its frame and key times there too).
fn timing_line(line: &str) {
    use std::io::Write;
    if let Some(p) = std::env::var_os("KVSCOPE_TRACE_TIMING") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// The Divergence pane's data for `keep`: teacher-forced KL curve, lost mass per step,
/// layer and head, and the top culprits of every step (so selecting a step costs
/// nothing). Attention-output errors are left to `kvscope explain` (they need another
/// full-cache replay per edit).
pub fn divergence_view(
    loaded: &Loaded,
    s: &Session,
    full: &FullPass,
    keep: &KeepSet,
) -> Result<DivView> {
    let t = Instant::now();
    // The outcome's decode gave the teacher-forced logits when it was asked to.
    let computed;
    let logits = match s.compressed.as_ref().and_then(|c| c.forced.as_ref()) {
        Some(l) => l,
        None => {
            computed = replay::forced_logits(&loaded.model, &s.trace, keep, &full.ids)?;
            &computed
        }
    };
    let steps = divergence::steps(full, logits, None, keep);
    let cmps: Vec<_> = steps.iter().map(|st| st.cmp).collect();
    let culprits = divergence::culprits_all(full, keep, steps.len())
        .into_iter()
        .map(|cs| {
            cs.into_iter()
                .take(CULPRITS_PER_STEP)
                .map(|c| (c.pos, c.mass))
                .collect()
        })
        .collect();
    Ok(DivView {
        default_step: divergence::metrics::default_step(&cmps).map(|i| i + 1),
        steps: cmps,
        lost: steps
            .iter()
            .map(|st| {
                st.lost_mass
                    .iter()
                    .map(|l| l.iter().map(|&x| x as f32).collect())
                    .collect()
            })
            .collect(),
        culprits,
        ms: t.elapsed().as_secs_f64() * 1000.0,
        replay_bytes: full.bytes(),
        attn_err: None,
    })
}

/// 1-based rank of each scored position (best = 1; ties to the lower position, as
/// `scores::top_k`), 0 for positions without a score.
pub fn ranks(scores: &[f32], len: usize) -> Vec<u32> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut r = vec![0u32; len.max(scores.len())];
    for (i, &p) in idx.iter().enumerate() {
        r[p] = i as u32 + 1;
    }
    r
}

/// `[pos]`: layers that keep `pos` in at least one KV head.
pub fn layers_keeping(keep: &[Vec<Vec<usize>>], len: usize) -> Vec<u16> {
    let mut n = vec![0u16; len];
    let mut seen = vec![false; len];
    for layer in keep {
        seen.iter_mut().for_each(|s| *s = false);
        for &p in layer.iter().flatten() {
            if p < len && !seen[p] {
                seen[p] = true;
                n[p] += 1;
            }
        }
    }
    n
}

/// Runs `Session::apply` (with the teacher-forced logits) and packs what the UI shows.
pub fn outcome(
    loaded: &Loaded,
    session: &mut Session,
    gen: u64,
    settings: Settings,
    table: &ScoreTable,
) -> Result<Outcome> {
    let len = session.trace.len;
    session.apply_with(&loaded.model, &loaded.tok, settings, Some(table), true)?;
    match &session.compressed {
        Some(c) => Ok(pack(loaded, len, gen, c, table, &session.timing)),
        None => anyhow::bail!("no compressed result"),
    }
}

/// What the UI shows of the compressed result `c` (settings generation `gen`).
pub fn pack(
    loaded: &Loaded,
    len: usize,
    gen: u64,
    c: &crate::session::Compressed,
    table: &ScoreTable,
    timing: &crate::session::Timing,
) -> Outcome {
    let sel = &c.selection;
    let ranks = sel
        .scores
        .iter()
        .map(|layer| layer.iter().map(|h| ranks(h, len)).collect())
        .collect();
    Outcome {
        gen,
        settings: c.settings.clone(),
        tokens: c
            .generation
            .ids
            .iter()
            .map(|&i| loaded.tok.token_text(i))
            .collect(),
        ids: c.generation.ids.clone(),
        kv_bytes: c.generation.kv_bytes,
        kv_fraction: c.kv_fraction,
        agreement: c.agreement,
        decode_bytes: c.decode_bytes,
        keep: sel.keep.positions.clone(),
        layer_budgets: sel.layer_budgets.clone(),
        layers_keeping: layers_keeping(&sel.keep.positions, len),
        scores: sel.scores.clone(),
        ranks,
        strips: table.heads.clone(),
        select_ms: timing.select,
        decode_ms: timing.decode_compressed,
        divergence: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_are_best_first_with_ties_to_the_lower_position() {
        assert_eq!(ranks(&[0.1, 0.5, 0.5, 0.2], 6), vec![4, 1, 2, 3, 0, 0]);
        assert!(ranks(&[], 3).iter().all(|&r| r == 0));
    }

    #[test]
    fn layers_keeping_counts_a_layer_once() {
        let keep = vec![vec![vec![0, 2], vec![2, 3]], vec![vec![3], vec![]]];
        assert_eq!(layers_keeping(&keep, 5), vec![1, 0, 1, 2, 0]);
    }
}
