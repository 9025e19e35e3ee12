//! The inspector's state and [`update`], the one function that changes it. `update` does
//! no I/O and never touches the model: it returns [`Cmd`]s that the event loop carries
//! out (send to the worker, read or write a file), so every key can be tested by feeding
//! actions to it.
//!
//! `update` only routes: each group of actions has its own module ([`view`]: focus,
//! cursors and the map's key range; [`budgets`]: the budget keys and the one place budgets
//! are previewed; [`knobs`]: method, window, kernel and the generic knob keys; [`pins`]:
//! pins and rescue; [`compare`]: the divergence step, error measurement and A/B;
//! [`popups`]: the picker, the popups and the file keys; [`worker`]: what the worker
//! sends back).
//!
//! [`App`] holds what the panes draw; [`Bookkeeping`] (`app.ctl`) what only `update`
//! reads (what was sent, what is pending, the defaults), so a pane cannot depend on it.

mod budgets;
mod compare;
mod find;
mod knobs;
mod pins;
mod popups;
mod profile;
mod view;
mod worker;

use std::path::PathBuf;

use super::action::{Action, Pane};
use super::msg::{Outcome, Phase, ProfileProgress, Snapshot, ToWorker};
use super::stats::Stat;
use crate::eviction::{registry, Settings};
use crate::trace::Dims;

pub use budgets::{LAYER_STEP, SCALE};
pub use find::{answer_targets, lost_order, match_spans, matches, Search};
pub use view::{zoom_window, ZoomWindow, TOKEN_ZOOM};

/// Culprits one rescue key pins unless the user picks another number (`--rescue K`,
/// `,` / `.`).
pub const RESCUE_K: usize = 3;

/// What the loop must do after an update.
#[derive(Debug, Clone, PartialEq)]
pub enum Cmd {
    /// Settings changed: send them after the debounce.
    SettingsChanged,
    /// Send the current settings now (first result after Ready, or before an export).
    FlushNow,
    /// Open this prompt file and start the worker on it.
    OpenPrompt(PathBuf),
    ListBudgets,
    SaveBudgets {
        name: String,
        budgets: Vec<usize>,
    },
    LoadBudgets(String),
    ExportReport,
    /// Ask the worker for the exact attention of the token zoom's rows.
    ZoomRows {
        layer: usize,
        rows: std::ops::Range<usize>,
        keys: std::ops::Range<usize>,
    },
    /// Ask the worker for the attention-output errors of this settings generation.
    MeasureErrors(u64),
    /// List the reports in the folder `e` exports to.
    ListReports,
    /// Ask the worker for this report's settings.
    LoadReport(PathBuf),
    /// Start `profile make` in the background (a fresh stop flag, sent to the worker).
    StartProfile,
    /// Set the running profile make's stop flag.
    CancelProfile,
    /// Hand the new profile to the worker.
    UseProfile {
        profile: std::sync::Arc<crate::profile_format::Profile>,
        path: PathBuf,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Popup {
    Help,
    /// Typing the name to save the budgets under.
    SaveName(String),
    /// Saved budget files; the selected index.
    LoadList {
        names: Vec<String>,
        sel: usize,
    },
    /// Exported reports in the current folder; the selected index.
    ReportList {
        names: Vec<String>,
        sel: usize,
    },
    /// Typing a search over the prompt text (token pane, `/`).
    Search(String),
}

/// The start screen when no prompt file was given.
#[derive(Debug, Clone, Default)]
pub struct Picker {
    /// (label, path): sample prompts, then recent files.
    pub items: Vec<(String, PathBuf)>,
    pub sel: usize,
}

/// The state the panes draw from, plus [`Bookkeeping`] they never read.
pub struct App {
    /// `Some` while the prompt picker is shown.
    pub picker: Option<Picker>,
    pub prompt_label: String,
    pub model_label: String,
    pub phase: Phase,
    pub snapshot: Option<Box<Snapshot>>,
    /// The displayed outcome: one whole outcome of one settings generation.
    pub result: Option<Box<Outcome>>,
    /// The outcome frozen as A for the A/B comparison.
    pub frozen: Option<Box<Outcome>>,
    /// What the user asked for; generation `gen`.
    pub settings: Settings,
    pub gen: u64,
    pub error: Option<String>,
    pub notice: Option<String>,
    pub popup: Option<Popup>,
    pub rss_bytes: Option<u64>,
    pub focus: Pane,
    pub sel_layer: usize,
    pub sel_head: usize,
    pub sel_token: usize,
    pub stat: Stat,
    /// Key range of the attention map, in tokens: start and length (0 = everything).
    pub view_start: usize,
    pub view_len: usize,
    /// Divergence pane: the selected teacher-forced step (1-based); `None` follows the
    /// analysis' default step.
    pub sel_step: Option<usize>,
    /// On the full layout the Divergence pane takes the attention map's place; it stays
    /// there while other panes (the tokens, to pin) have focus, until 2 brings the map
    /// back.
    pub show_divergence: bool,
    /// Culprits `R` pins (1 to [`super::msg::CULPRITS_PER_STEP`]).
    pub rescue_k: usize,
    /// The last search over the prompt text and where `n` / `N` stand in it.
    pub search: Option<find::Search>,
    /// Index into the evicted tokens by attention lost that `j` / `J` last jumped to.
    pub lost_at: Option<usize>,
    /// A background `profile make` (`P`): `Some` from the key until it ends.
    pub profiling: Option<ProfileProgress>,
    /// The prompt's expected answer from its sidecar file, and that file.
    pub answer: Option<(String, PathBuf)>,
    /// The span marked with `G` (first and last token, inclusive).
    pub span: Option<(usize, usize)>,
    /// Start of a span being marked (`G` pressed once).
    pub span_mark: Option<usize>,
    /// Index into [`find::answer_targets`] that `g` last jumped to.
    pub answer_at: Option<usize>,
    /// The key range `T` replaced (start, length), to go back to.
    pub zoom_back: Option<(usize, usize)>,
    /// The exact attention of the token zoom's rows (the last the worker sent) and the
    /// milliseconds it took.
    pub zoom_rows: Option<(std::sync::Arc<crate::model::RowAttention>, f64)>,
    /// The loop ends after this update.
    pub quit: bool,
    /// What only `update` reads.
    pub ctl: Bookkeeping,
}

/// State no pane draws: what was sent to the worker, what waits for an answer, the
/// settings `Reset` returns to.
#[derive(Debug, Clone)]
pub struct Bookkeeping {
    pub defaults: Settings,
    /// Last generation sent to the worker (None: nothing sent yet).
    pub sent_gen: Option<u64>,
    pub has_profile: bool,
    /// The user chose neither a method nor a profile: start with compresskv if the
    /// worker finds a matching profile on its own (shipped or cached).
    pub prefer_compresskv: bool,
    /// Start of a range to pin (`v` pressed once).
    pub range_mark: Option<usize>,
    /// A rescue waiting for its result: (settings generation, pinned culprits).
    pub rescue_pending: Option<(u64, Vec<usize>)>,
    /// Index of the selected knob among the method's and allocator's (`o`, `<`, `>`).
    pub knob_sel: usize,
    /// The last token zoom asked of the worker (layer, rows, keys).
    pub zoom_sent: Option<view::ZoomWindow>,
}

impl App {
    pub fn new(settings: Settings, model_label: String, prompt_label: String) -> App {
        App {
            picker: None,
            prompt_label,
            model_label,
            phase: Phase::Loading("starting".into()),
            snapshot: None,
            result: None,
            frozen: None,
            ctl: Bookkeeping {
                defaults: settings.clone(),
                sent_gen: None,
                has_profile: false,
                prefer_compresskv: false,
                range_mark: None,
                rescue_pending: None,
                knob_sel: 0,
                zoom_sent: None,
            },
            settings,
            gen: 0,
            error: None,
            notice: None,
            popup: None,
            rss_bytes: None,
            focus: Pane::HeadMap,
            sel_layer: 0,
            sel_head: 0,
            sel_token: 0,
            stat: Stat::Sink,
            view_start: 0,
            view_len: 0,
            sel_step: None,
            show_divergence: false,
            rescue_k: RESCUE_K,
            search: None,
            lost_at: None,
            profiling: None,
            answer: None,
            span: None,
            span_mark: None,
            answer_at: None,
            zoom_back: None,
            zoom_rows: None,
            quit: false,
        }
    }

    /// The Divergence pane's step: the user's choice, else the analysis' default.
    pub fn step(&self) -> Option<usize> {
        let d = self.result.as_ref()?.divergence.as_ref()?;
        match self.sel_step {
            Some(t) if t >= 1 && t <= d.steps.len() => Some(t),
            _ => d.default_step,
        }
    }

    pub fn dims(&self) -> Option<Dims> {
        self.snapshot.as_ref().map(|s| s.dims())
    }

    /// The knobs `o` and `<` / `>` cycle through and step: the method's and the
    /// allocator's, and on a model with sliding-window layers also `evict_sliding`
    /// (whether the method selects inside those layers' windows too).
    pub fn knobs(&self) -> Vec<&'static crate::eviction::Knob> {
        let mut knobs = registry::knobs_in_force(&self.settings);
        if self.windows().iter().any(Option::is_some) {
            knobs.push(&crate::eviction::sliding::EVICT_SLIDING);
        }
        knobs
    }

    /// `[layer]`: sliding window (`None`: global layer).
    pub fn windows(&self) -> Vec<Option<usize>> {
        self.snapshot
            .as_ref()
            .map_or_else(Vec::new, |s| s.windows.clone())
    }

    pub fn prompt_len(&self) -> usize {
        self.snapshot.as_ref().map_or(0, |s| s.prompt_tokens.len())
    }

    /// Largest budget an edit can grow a budget to: the prompt length (a budget `>= L`
    /// keeps everything, so growing it further changes nothing). Before the prompt is
    /// known, the largest context kvscope loads. A budget already above stays.
    pub fn budget_limit(&self) -> usize {
        match &self.snapshot {
            Some(_) => self.prompt_len().max(self.settings.window),
            None => crate::model::gguf_check::MAX_CONTEXT as usize,
        }
    }

    /// The displayed outcome was computed for other settings than the current ones.
    pub fn stale(&self) -> bool {
        self.result.as_ref().is_some_and(|r| r.gen != self.gen)
    }

    /// Per-layer budgets as the user sees them ([`budgets::shown`]).
    pub fn budgets(&self) -> Vec<usize> {
        budgets::shown(self)
    }

    /// Takes the settings to send now, if they were not sent yet.
    pub fn flush(&mut self) -> Option<ToWorker> {
        if !self.pending() {
            return None;
        }
        self.ctl.sent_gen = Some(self.gen);
        Some(ToWorker::Apply {
            gen: self.gen,
            settings: self.settings.clone(),
        })
    }

    /// Whether a flush is owed (settings edited since the last send).
    pub fn pending(&self) -> bool {
        self.snapshot.is_some() && self.ctl.sent_gen != Some(self.gen)
    }

    /// Tries `change` on a copy of the settings; keeps it only if it is valid for the
    /// model, otherwise shows why in the status line.
    fn edit(&mut self, change: impl FnOnce(&mut Settings)) -> Vec<Cmd> {
        let mut s = self.settings.clone();
        change(&mut s);
        if s == self.settings {
            return Vec::new();
        }
        if let Some(d) = self.dims() {
            if let Err(e) = s.validate(&d) {
                self.error = Some(e.to_string());
                return Vec::new();
            }
        }
        self.settings = s;
        self.gen += 1;
        self.error = None;
        vec![Cmd::SettingsChanged]
    }

    fn n_layers(&self) -> usize {
        self.snapshot.as_ref().map_or(1, |s| s.n_layers.max(1))
    }

    fn n_heads(&self) -> usize {
        self.snapshot.as_ref().map_or(1, |s| s.n_heads.max(1))
    }
}

/// Messages from the worker and the loop, not keys: they land in the state whatever
/// popup is open (and the popup stays).
fn is_background(a: &Action) -> bool {
    matches!(
        a,
        Action::Worker(_)
            | Action::Rss(_)
            | Action::Redraw
            | Action::Notice(_)
            | Action::Error(_)
            | Action::BudgetNames(_)
            | Action::BudgetsLoaded { .. }
            | Action::ReportNames(_)
    )
}

/// Applies one action; returns what the loop must do. Routes to the module of the
/// action's group.
pub fn update(app: &mut App, a: Action) -> Vec<Cmd> {
    let mut cmds = route(app, a);
    // Whatever moved the map's key range or layer: ask for the exact rows of a token
    // zoom once per window.
    let want = view::zoom_window(app);
    if want.is_some() && want != app.ctl.zoom_sent {
        if let Some(z) = want.clone() {
            cmds.push(Cmd::ZoomRows {
                layer: z.layer,
                rows: z.rows,
                keys: z.keys,
            });
        }
        app.ctl.zoom_sent = want;
    }
    cmds
}

fn route(app: &mut App, a: Action) -> Vec<Cmd> {
    if let Some(p) = app.picker.take() {
        return popups::on_picker(app, p, a);
    }
    if !is_background(&a) {
        if let Some(p) = app.popup.take() {
            return popups::on_popup(app, p, a);
        }
    }
    match a {
        Action::Quit => {
            app.quit = true;
            Vec::new()
        }
        Action::Close | Action::Confirm | Action::Char(_) | Action::Backspace | Action::Redraw => {
            Vec::new()
        }
        Action::Notice(n) => {
            app.notice = Some(n);
            Vec::new()
        }
        Action::Error(e) => {
            app.error = Some(e);
            Vec::new()
        }
        Action::Rss(b) => {
            app.rss_bytes = Some(b);
            Vec::new()
        }
        Action::Worker(m) => worker::on_worker(app, m),
        a @ (Action::FocusNext
        | Action::FocusPrev
        | Action::Show(_)
        | Action::Move(_)
        | Action::BigMove(_)
        | Action::CycleStat
        | Action::ZoomIn
        | Action::ZoomOut
        | Action::Pan(_)
        | Action::TokenZoom) => view::on_key(app, a),
        a @ (Action::CycleAllocator
        | Action::LayerBudget(_)
        | Action::Scale(_)
        | Action::BaseBudget(_)
        | Action::BudgetsLoaded { .. }) => budgets::on_key(app, a),
        a @ (Action::NextMethod
        | Action::PrevMethod
        | Action::Window(_)
        | Action::Kernel(_)
        | Action::FirstK(_)
        | Action::NextKnob
        | Action::KnobStep(_)
        | Action::TogglePooling
        | Action::Reset) => knobs::on_key(app, a),
        a @ (Action::PinKeep
        | Action::PinEvict
        | Action::PinRange
        | Action::ClearPins
        | Action::RescueK(_)
        | Action::Rescue) => pins::on_key(app, a),
        a @ (Action::SearchStart
        | Action::SearchNext(_)
        | Action::JumpLost(_)
        | Action::JumpAnswer
        | Action::MarkSpan) => find::on_key(app, a),
        a @ (Action::MeasureErrors | Action::FreezeA | Action::ClearA) => compare::on_key(app, a),
        Action::ProfileMake => profile::on_key(app),
        a @ (Action::ToggleHelp
        | Action::Export
        | Action::SaveStart
        | Action::LoadStart
        | Action::BudgetNames(_)
        | Action::ReportStart
        | Action::ReportNames(_)) => popups::on_key(app, a),
    }
}
