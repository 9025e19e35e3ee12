//! The inspector's state and [`update`], the one function that changes it. `update` does
//! no I/O and never touches the model: it returns [`Cmd`]s that the event loop carries
//! out (send to the worker, read or write a file), so every key can be tested by feeding
//! actions to it.

use std::path::PathBuf;

use super::action::{Action, Dir, Pane};
use super::msg::{FromWorker, Outcome, Phase, Snapshot, ToWorker, CULPRITS_PER_STEP};
use super::stats::Stat;
use crate::eviction::{budget, registry, Allocator, Method, Pooling, Settings};
use crate::trace::{Dims, W_MAX};

/// Tokens one `+` / `-` adds to or takes from the selected layer's budget.
pub const LAYER_STEP: i64 = 16;
/// Factor of `*` (and its inverse for `/`).
pub const SCALE: f64 = 1.25;
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
    /// Ask the worker for the attention-output errors of this settings generation.
    MeasureErrors(u64),
    /// List the reports in the folder `e` exports to.
    ListReports,
    /// Ask the worker for this report's settings.
    LoadReport(PathBuf),
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
}

/// The start screen when no prompt file was given.
#[derive(Debug, Clone, Default)]
pub struct Picker {
    /// (label, path): sample prompts, then recent files.
    pub items: Vec<(String, PathBuf)>,
    pub sel: usize,
}

pub struct App {
    /// `Some` while the prompt picker is shown.
    pub picker: Option<Picker>,
    pub prompt_label: String,
    pub model_label: String,
    pub phase: Phase,
    pub snapshot: Option<Box<Snapshot>>,
    /// The displayed outcome: one whole outcome of one settings generation.
    pub result: Option<Box<Outcome>>,
    /// What the user asked for; generation `gen`.
    pub settings: Settings,
    pub defaults: Settings,
    pub gen: u64,
    /// Last generation sent to the worker (None: nothing sent yet).
    pub sent_gen: Option<u64>,
    pub error: Option<String>,
    pub notice: Option<String>,
    pub focus: Pane,
    pub sel_layer: usize,
    pub sel_head: usize,
    pub sel_token: usize,
    pub stat: Stat,
    /// Key range of the attention map, in tokens: start and length (0 = everything).
    pub view_start: usize,
    pub view_len: usize,
    pub rss_bytes: Option<u64>,
    pub popup: Option<Popup>,
    pub quit: bool,
    pub has_profile: bool,
    /// The user chose neither a method nor a profile: start with compresskv if the
    /// worker finds a matching profile on its own (shipped or cached).
    pub prefer_compresskv: bool,
    /// Divergence pane: the selected teacher-forced step (1-based); `None` follows the
    /// analysis' default step.
    pub sel_step: Option<usize>,
    /// Start of a range to pin (`v` pressed once).
    pub range_mark: Option<usize>,
    /// The outcome frozen as A for the A/B comparison.
    pub frozen: Option<Box<Outcome>>,
    /// On the full layout the Divergence pane takes the attention map's place; it stays
    /// there while other panes (the tokens, to pin) have focus, until 2 brings the map
    /// back.
    pub show_divergence: bool,
    /// A rescue waiting for its result: (settings generation, pinned culprits).
    pub rescue_pending: Option<(u64, Vec<usize>)>,
    /// Index of the selected knob among the method's and allocator's (`o`, `<`, `>`).
    pub knob_sel: usize,
    /// Culprits `R` pins (1 to [`CULPRITS_PER_STEP`]).
    pub rescue_k: usize,
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
            defaults: settings.clone(),
            settings,
            gen: 0,
            sent_gen: None,
            error: None,
            notice: None,
            focus: Pane::HeadMap,
            sel_layer: 0,
            sel_head: 0,
            sel_token: 0,
            stat: Stat::Sink,
            view_start: 0,
            view_len: 0,
            rss_bytes: None,
            popup: None,
            quit: false,
            has_profile: false,
            prefer_compresskv: false,
            sel_step: None,
            range_mark: None,
            frozen: None,
            show_divergence: false,
            rescue_pending: None,
            knob_sel: 0,
            rescue_k: RESCUE_K,
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

    fn move_step(&mut self, delta: i64) {
        let n = self
            .result
            .as_ref()
            .and_then(|r| r.divergence.as_ref())
            .map_or(0, |d| d.steps.len());
        if n == 0 {
            return;
        }
        let cur = self.step().unwrap_or(1) as i64;
        self.sel_step = Some((cur + delta).clamp(1, n as i64) as usize);
    }

    /// Toggles `pos` in one pin list (and out of the other, so they never overlap).
    fn toggle_pin(&mut self, pos: usize, keep: bool) -> Vec<Cmd> {
        if pos >= self.prompt_len() {
            return Vec::new();
        }
        self.edit(|s| {
            let (mine, other) = if keep {
                (&mut s.pin_keep, &mut s.pin_evict)
            } else {
                (&mut s.pin_evict, &mut s.pin_keep)
            };
            match mine.binary_search(&pos) {
                Ok(i) => {
                    mine.remove(i);
                }
                Err(i) => {
                    mine.insert(i, pos);
                    other.retain(|&p| p != pos);
                }
            }
        })
    }

    /// Pins `ps` kept (leaving any that are pinned evicted as they are).
    fn pin_all(&mut self, ps: &[usize]) -> Vec<Cmd> {
        let len = self.prompt_len();
        self.edit(|s| {
            for &p in ps.iter().filter(|&&p| p < len) {
                if !s.pin_evict.contains(&p) {
                    s.pin_keep.push(p);
                }
            }
            s.pin_keep.sort_unstable();
            s.pin_keep.dedup();
        })
    }

    pub fn dims(&self) -> Option<Dims> {
        self.snapshot.as_ref().map(|s| Dims {
            n_layers: s.n_layers,
            n_heads: s.n_heads,
            n_kv_heads: s.n_kv_heads,
            head_dim: s.head_dim,
        })
    }

    /// `[layer]`: sliding window (`None`: global layer).
    /// The knobs `o` and `<` / `>` cycle through and step: the method's and the
    /// allocator's, and on a model with sliding-window layers also `evict_sliding`
    /// (whether the method selects inside those layers' windows too).
    pub fn knobs(&self) -> Vec<&'static registry::Knob> {
        let mut knobs = registry::knobs_in_force(&self.settings);
        if self.windows().iter().any(Option::is_some) {
            knobs.push(&crate::eviction::sliding::EVICT_SLIDING);
        }
        knobs
    }

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

    /// Per-layer budgets as the user sees them: the manual list, else the ones the
    /// allocator gives (computed here: a pure function of settings, profile errors and
    /// prompt length, cheap enough for a key press).
    pub fn budgets(&self) -> Vec<usize> {
        if let Some(list) = &self.settings.layer_budgets {
            return list.clone();
        }
        let Some(d) = self.dims() else {
            return Vec::new();
        };
        // Error-aware needs the profile's layer errors, which live on the worker: use
        // the worker's answer for these very settings when it has one.
        if let Some(r) = &self.result {
            if r.settings == self.settings {
                return r.layer_budgets.clone();
            }
        }
        let mut s = self.settings.clone();
        if s.effective_allocator() == Allocator::ErrorAware {
            s.allocator = Some(Allocator::Uniform);
        }
        crate::eviction::sliding::budgets_with_windows(
            &s,
            &d,
            self.prompt_len(),
            &self.windows(),
            None,
        )
        .unwrap_or_else(|_| budget::uniform(d.n_layers, self.settings.budget))
    }

    /// Takes the settings to send now, if they were not sent yet.
    pub fn flush(&mut self) -> Option<ToWorker> {
        if !self.pending() {
            return None;
        }
        self.sent_gen = Some(self.gen);
        Some(ToWorker::Apply {
            gen: self.gen,
            settings: self.settings.clone(),
        })
    }

    /// Whether a flush is owed (settings edited since the last send).
    pub fn pending(&self) -> bool {
        self.snapshot.is_some() && self.sent_gen != Some(self.gen)
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

    fn stats_cycle(&self) -> Vec<Stat> {
        let mut v = Vec::new();
        if self.has_profile {
            v.push(Stat::Srh);
        }
        v.extend(Stat::LIVE);
        if self.result.as_ref().is_some_and(|r| r.divergence.is_some()) {
            v.push(Stat::LostMass);
        }
        v
    }

    fn move_sel(&mut self, dir: Dir, big: bool) {
        let step = if big { 8 } else { 1 };
        let (nl, nh, nt) = (self.n_layers(), self.n_heads(), self.prompt_len().max(1));
        match (self.focus, dir) {
            (Pane::Divergence, Dir::Left) => self.move_step(-(step as i64)),
            (Pane::Divergence, Dir::Right) => self.move_step(step as i64),
            (Pane::Attention, Dir::Left) => self.pan(-1),
            (Pane::Attention, Dir::Right) => self.pan(1),
            (Pane::Attention, Dir::Up) => self.zoom(true),
            (Pane::Attention, Dir::Down) => self.zoom(false),
            (Pane::Tokens, Dir::Left) => self.sel_token = self.sel_token.saturating_sub(step),
            (Pane::Tokens, Dir::Right) => self.sel_token = (self.sel_token + step).min(nt - 1),
            (Pane::Tokens, Dir::Up) => self.sel_token = self.sel_token.saturating_sub(16 * step),
            (Pane::Tokens, Dir::Down) => self.sel_token = (self.sel_token + 16 * step).min(nt - 1),
            (Pane::Budgets, Dir::Up) | (Pane::Budgets, Dir::Left) => {
                self.sel_layer = self.sel_layer.saturating_sub(step)
            }
            (Pane::Budgets, Dir::Down) | (Pane::Budgets, Dir::Right) => {
                self.sel_layer = (self.sel_layer + step).min(nl - 1)
            }
            // Head map (and the panes without a cursor): layers left/right, heads up/down.
            (_, Dir::Left) => self.sel_layer = self.sel_layer.saturating_sub(step),
            (_, Dir::Right) => self.sel_layer = (self.sel_layer + step).min(nl - 1),
            (_, Dir::Up) => self.sel_head = self.sel_head.saturating_sub(1),
            (_, Dir::Down) => self.sel_head = (self.sel_head + 1).min(nh - 1),
        }
    }

    /// Zooms the attention map's key range in (halves it) or out (doubles it) about its
    /// centre.
    fn zoom(&mut self, inward: bool) {
        let len = self.prompt_len();
        if len == 0 {
            return;
        }
        let cur = if self.view_len == 0 {
            len
        } else {
            self.view_len
        };
        let centre = self.view_start + cur / 2;
        let new = if inward {
            (cur / 2).max(16.min(len))
        } else {
            (cur * 2).min(len)
        };
        if new >= len {
            self.view_start = 0;
            self.view_len = 0;
        } else {
            self.view_len = new;
            self.view_start = centre.saturating_sub(new / 2).min(len - new);
        }
    }

    /// Pans the key range by a quarter of its width per step.
    fn pan(&mut self, steps: i64) {
        let len = self.prompt_len();
        if self.view_len == 0 || len == 0 {
            return;
        }
        let step = (self.view_len / 4).max(1) as i64;
        let max = (len - self.view_len) as i64;
        self.view_start = (self.view_start as i64 + steps * step).clamp(0, max) as usize;
    }

    fn on_worker(&mut self, m: FromWorker) -> Vec<Cmd> {
        match m {
            FromWorker::Phase(p) => {
                self.phase = p;
                Vec::new()
            }
            FromWorker::Ready(s) => {
                self.has_profile = s.srh_scores.is_some();
                if self.has_profile {
                    self.stat = Stat::Srh;
                    // Nothing was edited yet (the worker has no settings): the method the
                    // start-up picked for want of a profile can still become compresskv.
                    if self.prefer_compresskv && self.gen == 0 {
                        self.settings.method = crate::eviction::compresskv::METHOD;
                        self.defaults.method = crate::eviction::compresskv::METHOD;
                        self.notice =
                            Some("found a profile for this model: starting with compresskv".into());
                    }
                }
                // Start on the last scored token (the window is always kept: dull).
                self.sel_token = s
                    .prompt_tokens
                    .len()
                    .saturating_sub(self.settings.window + 1);
                self.snapshot = Some(s);
                self.phase = Phase::Idle;
                // The worker has no settings yet; give it the current ones at once.
                vec![Cmd::FlushNow]
            }
            FromWorker::Result(o) => {
                // Older than what is shown, or from a future we never asked for: drop it,
                // so one screen never mixes two generations.
                let newer = self.result.as_ref().is_none_or(|r| o.gen >= r.gen);
                if newer && o.gen <= self.gen {
                    if o.gen == self.gen {
                        self.error = None;
                    }
                    if let Some((g, pins)) = self.rescue_pending.take() {
                        if g == o.gen {
                            self.notice = Some(match o.agreement.first_divergence {
                                None => format!("rescue {pins:?}: the output now matches the full cache"),
                                Some(i) => format!(
                                    "rescue {pins:?}: still diverges, now at token {i} ({:.0}% match)",
                                    o.agreement.token_match * 100.0
                                ),
                            });
                        } else if g > o.gen {
                            self.rescue_pending = Some((g, pins));
                        }
                    }
                    self.result = Some(o);
                }
                Vec::new()
            }
            FromWorker::Divergence { gen, view } => {
                if let Some(r) = self.result.as_mut().filter(|r| r.gen == gen) {
                    r.divergence = Some(view);
                }
                Vec::new()
            }
            FromWorker::AttnErrors { gen, errors } => {
                let d = self.result.as_mut().filter(|r| r.gen == gen);
                if let Some(d) = d.and_then(|r| r.divergence.as_mut()) {
                    std::sync::Arc::make_mut(d).attn_err = Some(errors);
                    self.notice =
                        Some("attention-output error per layer: under the lost-mass grid".into());
                }
                Vec::new()
            }
            FromWorker::Failed { gen, error } => {
                if gen == self.gen {
                    self.error = Some(error);
                }
                Vec::new()
            }
            FromWorker::Error(e) => {
                self.error = Some(e);
                Vec::new()
            }
            FromWorker::Notice(n) => {
                self.notice = Some(n);
                Vec::new()
            }
            FromWorker::ReportLoaded { settings, note } => {
                let cmds = self.edit(|s| *s = *settings);
                if self.error.is_none() {
                    self.notice = Some(note);
                }
                cmds
            }
            FromWorker::Fatal(e) => {
                self.error = Some(e);
                self.phase = Phase::Stopped;
                Vec::new()
            }
        }
    }

    fn on_popup(&mut self, popup: Popup, a: Action) -> Vec<Cmd> {
        match (popup, a) {
            (_, Action::Quit) => {
                self.quit = true;
                Vec::new()
            }
            (Popup::Help, Action::ToggleHelp | Action::Close | Action::Confirm) => Vec::new(),
            (Popup::SaveName(mut s), Action::Char(c)) => {
                if s.len() < 64 {
                    s.push(c);
                }
                self.popup = Some(Popup::SaveName(s));
                Vec::new()
            }
            (Popup::SaveName(mut s), Action::Backspace) => {
                s.pop();
                self.popup = Some(Popup::SaveName(s));
                Vec::new()
            }
            (Popup::SaveName(name), Action::Confirm) => vec![Cmd::SaveBudgets {
                name: name.trim().to_string(),
                budgets: self.budgets(),
            }],
            (Popup::LoadList { names, sel }, Action::Move(d)) => {
                let sel = match d {
                    Dir::Up => sel.saturating_sub(1),
                    _ => (sel + 1).min(names.len().saturating_sub(1)),
                };
                self.popup = Some(Popup::LoadList { names, sel });
                Vec::new()
            }
            (Popup::LoadList { names, sel }, Action::Confirm) => match names.get(sel) {
                Some(n) => vec![Cmd::LoadBudgets(n.clone())],
                None => Vec::new(),
            },
            (Popup::ReportList { names, sel }, Action::Move(d)) => {
                let sel = match d {
                    Dir::Up => sel.saturating_sub(1),
                    _ => (sel + 1).min(names.len().saturating_sub(1)),
                };
                self.popup = Some(Popup::ReportList { names, sel });
                Vec::new()
            }
            (Popup::ReportList { names, sel }, Action::Confirm) => match names.get(sel) {
                Some(n) => vec![Cmd::LoadReport(PathBuf::from(n))],
                None => Vec::new(),
            },
            (_, Action::Close) => Vec::new(),
            (p, _) => {
                self.popup = Some(p);
                Vec::new()
            }
        }
    }

    fn on_picker(&mut self, mut p: Picker, a: Action) -> Vec<Cmd> {
        match a {
            Action::Quit => self.quit = true,
            Action::Move(Dir::Up) => p.sel = p.sel.saturating_sub(1),
            Action::Move(Dir::Down) => p.sel = (p.sel + 1).min(p.items.len().saturating_sub(1)),
            Action::Confirm => {
                if let Some((label, path)) = p.items.get(p.sel).cloned() {
                    self.prompt_label = label;
                    return vec![Cmd::OpenPrompt(path)];
                }
            }
            Action::Error(e) => self.error = Some(e),
            _ => {}
        }
        self.picker = Some(p);
        Vec::new()
    }
}

/// Applies one action; returns what the loop must do.
/// "name = value (range): help" for the status line.
fn knob_line(k: &registry::Knob, s: &Settings) -> String {
    format!("{} = {} ({}): {}", k.name, k.get(s), k.range(), k.help)
}

pub fn update(app: &mut App, a: Action) -> Vec<Cmd> {
    if let Some(p) = app.picker.take() {
        return app.on_picker(p, a);
    }
    // Messages from the worker and the loop are not keys: they land in the state
    // whatever popup is open (and the popup stays).
    let background = matches!(
        a,
        Action::Worker(_)
            | Action::Rss(_)
            | Action::Redraw
            | Action::Notice(_)
            | Action::Error(_)
            | Action::BudgetNames(_)
            | Action::BudgetsLoaded { .. }
            | Action::ReportNames(_)
    );
    if !background {
        if let Some(p) = app.popup.take() {
            return app.on_popup(p, a);
        }
    }
    match a {
        Action::Quit => app.quit = true,
        Action::ToggleHelp => app.popup = Some(Popup::Help),
        Action::Close | Action::Confirm | Action::Char(_) | Action::Backspace => {}
        Action::FocusNext => app.focus = Pane::ALL[(app.focus.index() + 1) % Pane::ALL.len()],
        Action::FocusPrev => {
            app.focus = Pane::ALL[(app.focus.index() + Pane::ALL.len() - 1) % Pane::ALL.len()]
        }
        Action::Show(p) => {
            app.focus = p;
            match p {
                Pane::Divergence => app.show_divergence = true,
                Pane::Attention => app.show_divergence = false,
                _ => {}
            }
        }
        Action::Move(d) => app.move_sel(d, false),
        Action::BigMove(d) => app.move_sel(d, true),
        Action::NextMethod | Action::PrevMethod => {
            let fwd = matches!(a, Action::NextMethod);
            let all = Method::ALL;
            let i = all
                .iter()
                .position(|&m| m == app.settings.method)
                .unwrap_or(0);
            let n = all.len();
            let next = all[if fwd { (i + 1) % n } else { (i + n - 1) % n }];
            return app.edit(|s| s.method = next);
        }
        Action::CycleAllocator => {
            let cur = app.settings.effective_allocator();
            let all = Allocator::ALL;
            let i = all.iter().position(|&x| x == cur).unwrap_or(0);
            let next = all[(i + 1) % all.len()];
            let shown = app.budgets();
            return app.edit(|s| {
                if next == Allocator::Manual {
                    // Manual starts from the budgets on screen, so nothing jumps.
                    s.layer_budgets = Some(shown);
                    s.allocator = None;
                } else {
                    s.layer_budgets = None;
                    s.allocator = Some(next);
                }
            });
        }
        Action::CycleStat => {
            let cyc = app.stats_cycle();
            let i = cyc.iter().position(|&s| s == app.stat).unwrap_or(0);
            app.stat = cyc[(i + 1) % cyc.len()];
        }
        Action::LayerBudget(delta) => {
            if let Some(Some(s)) = app.windows().get(app.sel_layer) {
                app.notice = Some(format!(
                    "layer {} slides over {s} positions: it keeps its last {s}, no budget to edit",
                    app.sel_layer
                ));
                return Vec::new();
            }
            let mut list = app.budgets();
            let w = app.settings.window;
            let Some(b) = list.get_mut(app.sel_layer) else {
                return Vec::new();
            };
            *b = step(*b, delta, w, app.budget_limit().max(*b));
            return app.edit(|s| {
                s.layer_budgets = Some(list);
                s.allocator = None;
            });
        }
        Action::Scale(up) => {
            let f = if up { SCALE } else { 1.0 / SCALE };
            let (w, limit) = (app.settings.window, app.budget_limit());
            let sc = |b: usize| {
                // f64 -> usize saturates; the limit keeps repeated presses from growing
                // past the prompt (a budget >= L keeps everything).
                ((b as f64 * f).round() as usize)
                    .min(limit.max(b))
                    .max(w)
                    .max(1)
            };
            return app.edit(|s| match &mut s.layer_budgets {
                Some(list) => list.iter_mut().for_each(|b| *b = sc(*b)),
                None => s.budget = sc(s.budget),
            });
        }
        Action::BaseBudget(delta) => {
            let (w, limit) = (app.settings.window, app.budget_limit());
            return app.edit(|s| {
                s.budget = step(s.budget, delta, w, limit.max(s.budget));
                if let Some(list) = &mut s.layer_budgets {
                    for b in list.iter_mut() {
                        *b = step(*b, delta, w, limit.max(*b));
                    }
                }
            });
        }
        Action::Window(d) => {
            return app.edit(|s| s.window = (s.window as i64 + d).clamp(1, W_MAX as i64) as usize)
        }
        Action::Kernel(d) => {
            return app.edit(|s| s.kernel = (s.kernel as i64 + d).clamp(1, 63) as usize)
        }
        Action::FirstK(d) => {
            // (f/F predate the generic knob keys; kept for muscle memory.)
            let nh = app.n_heads() as i64;
            return app.edit(|s| s.first_k = (s.first_k as i64 + d).clamp(1, nh) as usize);
        }
        Action::NextKnob => {
            let knobs = app.knobs();
            if knobs.is_empty() {
                app.notice = Some(format!(
                    "{} and the {} allocator have no knobs",
                    app.settings.method,
                    app.settings.effective_allocator()
                ));
            } else {
                app.knob_sel = (app.knob_sel + 1) % knobs.len();
                app.notice = Some(knob_line(knobs[app.knob_sel], &app.settings));
            }
        }
        Action::KnobStep(d) => {
            let knobs = app.knobs();
            let Some(&k) = knobs.get(app.knob_sel % knobs.len().max(1)) else {
                app.notice = Some(format!("{} has no knobs", app.settings.method));
                return Vec::new();
            };
            let Some(v) = k.stepped(&app.settings, d) else {
                app.notice = Some(format!(
                    "{} is a list: set it with --{} when starting",
                    k.name, k.flag
                ));
                return Vec::new();
            };
            let cmds = app.edit(|s| {
                // A value out of range is refused here and reported by validation.
                let _ = k.set(s, v);
            });
            app.notice = Some(knob_line(k, &app.settings));
            return cmds;
        }
        Action::TogglePooling => {
            return app.edit(|s| {
                s.pooling = match s.pooling {
                    Pooling::Avg => Pooling::Max,
                    Pooling::Max => Pooling::Avg,
                }
            })
        }
        Action::Reset => {
            let d = app.defaults.clone();
            return app.edit(|s| *s = d);
        }
        Action::ZoomIn => app.zoom(true),
        Action::ZoomOut => app.zoom(false),
        Action::Pan(n) => app.pan(n),
        Action::Export => {
            if app.snapshot.is_some() {
                return vec![Cmd::FlushNow, Cmd::ExportReport];
            }
            app.error = Some("nothing to export yet: the prompt is still being prefilled".into());
        }
        Action::PinKeep => return app.toggle_pin(app.sel_token, true),
        Action::PinEvict => return app.toggle_pin(app.sel_token, false),
        Action::PinRange => match app.range_mark.take() {
            None => {
                app.range_mark = Some(app.sel_token);
                app.notice = Some(format!(
                    "range starts at token {}; select its end and press v again",
                    app.sel_token
                ));
            }
            Some(m) => {
                let (a, b) = (m.min(app.sel_token), m.max(app.sel_token));
                app.notice = Some(format!("pinned tokens {a}-{b} kept"));
                return app.pin_all(&(a..=b).collect::<Vec<_>>());
            }
        },
        Action::ClearPins => {
            return app.edit(|s| {
                s.pin_keep.clear();
                s.pin_evict.clear();
            })
        }
        Action::MeasureErrors => match app.result.as_ref() {
            Some(r) if r.divergence.is_some() && !app.stale() => {
                app.notice = Some(
                    "measuring the attention-output error per layer (one full-cache replay)".into(),
                );
                return vec![Cmd::MeasureErrors(r.gen)];
            }
            _ => app.error = Some("no divergence analysis yet: wait for the result".into()),
        },
        Action::RescueK(d) => {
            let k = (app.rescue_k as i64 + d).clamp(1, CULPRITS_PER_STEP as i64);
            app.rescue_k = k as usize;
            app.notice = Some(format!(
                "R now pins the top {k} culprits of the selected step"
            ));
        }
        Action::Rescue => {
            let Some(t) = app.step() else {
                app.error = Some("no divergence analysis yet: wait for the result".into());
                return Vec::new();
            };
            let pins: Vec<usize> = app
                .result
                .as_ref()
                .and_then(|r| r.divergence.as_ref())
                .and_then(|d| d.culprits.get(t - 1))
                .map(|c| {
                    c.iter()
                        .map(|&(p, _)| p)
                        .filter(|p| !app.settings.pin_evict.contains(p))
                        .take(app.rescue_k)
                        .collect()
                })
                .unwrap_or_default();
            if pins.is_empty() {
                app.notice = Some(format!(
                    "step {t} has no culprits: nothing evicted was attended"
                ));
                return Vec::new();
            }
            let cmds = app.pin_all(&pins);
            if !cmds.is_empty() {
                app.notice = Some(format!(
                    "rescue: pinned culprits {pins:?} of step {t}; recomputing"
                ));
                app.rescue_pending = Some((app.gen, pins));
            }
            return cmds;
        }
        Action::FreezeA => match app.result.as_ref() {
            Some(r) if !app.stale() => {
                app.frozen = Some(r.clone());
                app.notice = Some(
                    "froze the current result as A; edit settings to compare (C clears)".into(),
                );
            }
            _ => app.error = Some("nothing to freeze yet: wait for the current result".into()),
        },
        Action::ClearA => app.frozen = None,
        Action::SaveStart => app.popup = Some(Popup::SaveName(String::new())),
        Action::LoadStart => return vec![Cmd::ListBudgets],
        Action::BudgetNames(names) => {
            if names.is_empty() {
                app.notice = Some("no saved budgets yet (S saves the current ones)".into());
            } else {
                app.popup = Some(Popup::LoadList { names, sel: 0 });
            }
        }
        Action::BudgetsLoaded { name, budgets } => {
            let n = app.n_layers();
            if app.snapshot.is_some() && budgets.len() != n {
                app.error = Some(format!(
                    "budget '{name}' has {} layers; this model has {n}",
                    budgets.len()
                ));
                return Vec::new();
            }
            app.notice = Some(format!("loaded budget '{name}'"));
            // A saved budget above the prompt keeps everything; store it as the prompt
            // length so later edits start from a number that means something.
            let budgets = match &app.snapshot {
                Some(_) => {
                    let cap = app.prompt_len().max(app.settings.window);
                    budgets.into_iter().map(|b| b.min(cap)).collect()
                }
                None => budgets,
            };
            return app.edit(|s| {
                s.layer_budgets = Some(budgets);
                s.allocator = None;
            });
        }
        Action::ReportStart => {
            if app.snapshot.is_none() {
                app.error =
                    Some("no prompt yet: a report loads onto the prompt it was made on".into());
                return Vec::new();
            }
            return vec![Cmd::ListReports];
        }
        Action::ReportNames(names) => {
            if names.is_empty() {
                app.notice = Some(
                    "no exported reports (kvscope-report-*.json) in this folder: e exports one; `kvscope PROMPT --from-report FILE` opens any".into(),
                );
            } else {
                app.popup = Some(Popup::ReportList { names, sel: 0 });
            }
        }
        Action::Notice(n) => app.notice = Some(n),
        Action::Error(e) => app.error = Some(e),
        Action::Worker(m) => return app.on_worker(m),
        Action::Rss(b) => app.rss_bytes = Some(b),
        Action::Redraw => {}
    }
    Vec::new()
}

/// `b + delta`, at least `w` and at most `cap`, without wrapping for any `b`.
fn step(b: usize, delta: i64, w: usize, cap: usize) -> usize {
    let moved = if delta >= 0 {
        b.saturating_add(delta as usize)
    } else {
        b.saturating_sub(delta.unsigned_abs() as usize)
    };
    moved.min(cap).max(w)
}
