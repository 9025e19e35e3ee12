//! The inspector: `kvscope [PROMPT_FILE]`.
//!
//! Shape (data flows one way):
//! ```text
//! worker thread (model + Session) --FromWorker--> event queue --Action--> update(App) --> draw
//! input thread (crossterm keys)   --------------> event queue
//! update --Cmd--> loop --ToWorker--> worker
//! ```
//! The UI thread never runs the model; it only stores what the worker sends and draws
//! it, and only when something changed. Settings edits are debounced ([`DEBOUNCE`]) and
//! tagged with a generation number, so a result computed for older settings is shown
//! as stale and never mixed with a fresh one.

pub mod action;
pub mod app;
pub mod files;
pub mod keys;
pub mod msg;
pub mod panes;
pub mod profiling;
pub mod stats;
pub mod ui;
pub mod worker;

use anyhow::{Context, Result};
use crossterm::event::{self, Event as CEvent};
use crossterm::execute;
use crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;
use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::eviction::Settings;
use action::Action;
use app::{update, App, Cmd, Picker};
use msg::{FromWorker, Phase, ToWorker};

/// Quiet time after the last settings edit before the worker recomputes. A single edit
/// with an idle worker is sent at once (leading edge); a burst of edits waits for quiet.
pub const DEBOUNCE: Duration = Duration::from_millis(150);
/// How often the process RSS is sampled for the memory pane.
const RSS_EVERY: Duration = Duration::from_secs(1);

/// What the inspector opens.
#[derive(Debug, Clone)]
pub struct Options {
    pub prompt: Option<PathBuf>,
    pub model: Option<PathBuf>,
    pub profile: Option<PathBuf>,
    pub prompt_opts: crate::model::PromptOptions,
    pub max_new: usize,
    pub settings: Settings,
    /// `--from-report`: the report's model sha256 and prompt ids, which the model and
    /// the prompt must match.
    pub expect: Option<(Option<String>, Vec<u32>)>,
    /// A line for the status line at start (e.g. why the method is not compresskv).
    pub notice: Option<String>,
    /// No method and no profile were given: switch to compresskv if the worker finds
    /// a matching profile.
    pub prefer_compresskv: bool,
    /// Culprits `R` pins at start.
    pub rescue_k: usize,
    /// `--no-cache`: neither read nor fill the prefill cache.
    pub no_cache: bool,
}

/// One queue for everything the loop reacts to (as gitui does).
enum Event {
    Input(CEvent),
    Worker(FromWorker),
    /// Back from Ctrl-Z: the terminal was raw again; the screen needs a full redraw.
    Resumed,
}

pub fn run(opts: Options) -> Result<()> {
    worker::mark_start();
    // Read the prompt before touching the terminal, so a bad path is a plain error.
    let first = match &opts.prompt {
        Some(p) => Some((p.clone(), crate::input::read_prompt(p)?)),
        None => None,
    };
    let model_label = opts
        .model
        .as_ref()
        .map_or("SmolLM2-135M-Instruct".to_string(), |p| {
            p.display().to_string()
        });
    let mut app = App::new(opts.settings.clone(), model_label, String::new());
    app.notice = opts.notice.clone();
    app.ctl.prefer_compresskv = opts.prefer_compresskv;
    app.rescue_k = opts.rescue_k;
    if first.is_none() {
        app.picker = Some(picker());
    }
    let mut timing = TimingLog::from_env();
    install_panic_hook();
    let mut term = Term::enter()?;
    let (tx, rx) = mpsc::channel::<Event>();
    spawn_input(tx.clone())?;
    let resumed = std::sync::Mutex::new(tx.clone());
    crate::signals::terminal().resume_terminal = Some(Box::new(move || {
        reenter();
        if let Ok(tx) = resumed.lock() {
            let _ = tx.send(Event::Resumed);
        }
    }));
    crate::signals::suspend_with_terminal();
    let mut worker: Option<Sender<ToWorker>> = None;
    // The stop flag of the background profile make (`P`), set by the loop on cancel.
    let mut profile_stop: Option<Arc<AtomicBool>> = None;
    if let Some((path, text)) = first {
        start_worker(&mut app, &opts, &path, text, &tx, &mut worker)?;
    }

    let mut dirty = true;
    let mut last_edit: Option<Instant> = None;
    let mut last_rss = Instant::now() - RSS_EVERY;
    loop {
        if dirty {
            let t = Instant::now();
            // A signal's cleanup waits for the frame instead of restoring mid-frame.
            let guard = crate::signals::terminal();
            let size = term.t.draw(|f| ui::draw(f, &app))?.area;
            drop(guard);
            timing.frame(t.elapsed(), size.width, size.height, &app);
            dirty = false;
        }
        if app.quit {
            break;
        }
        let mut deadline = last_rss + RSS_EVERY;
        if let (true, Some(e)) = (app.pending(), last_edit) {
            deadline = deadline.min(e + DEBOUNCE);
        }
        let mut events = Vec::new();
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(e) => events.push(e),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        events.extend(rx.try_iter());
        let mut cmds = VecDeque::new();
        for e in events {
            let a = match e {
                Event::Input(CEvent::Key(k)) if is_ctrl_z(&k) => {
                    crate::signals::suspend();
                    None
                }
                Event::Resumed => {
                    // What the shell printed meanwhile is on the main screen; the
                    // alternate one is redrawn from scratch.
                    let _guard = crate::signals::terminal();
                    term.t.clear()?;
                    Some(Action::Redraw)
                }
                Event::Input(CEvent::Key(k)) => keys::map_key(&app, k),
                Event::Input(CEvent::Resize(..)) => Some(Action::Redraw),
                Event::Input(_) => None,
                Event::Worker(m) => Some(Action::Worker(m)),
            };
            if let Some(a) = a {
                dirty = true;
                cmds.extend(update(&mut app, a));
            }
        }
        while let Some(c) = cmds.pop_front() {
            match c {
                Cmd::SettingsChanged => {
                    timing.edited(app.gen);
                    let quiet = last_edit.is_none_or(|e| e.elapsed() >= DEBOUNCE);
                    last_edit = Some(Instant::now());
                    if quiet && app.phase == Phase::Idle {
                        send(&mut app, &worker);
                    }
                }
                Cmd::FlushNow => send(&mut app, &worker),
                Cmd::OpenPrompt(path) => match crate::input::read_prompt(&path) {
                    Ok(text) => start_worker(&mut app, &opts, &path, text, &tx, &mut worker)?,
                    Err(e) => {
                        app.picker = None;
                        cmds.extend(update(&mut app, Action::Error(format!("{e:#}"))));
                    }
                },
                Cmd::ListBudgets => {
                    let names = files::budgets_dir()
                        .map(|d| files::list_budgets(&d))
                        .unwrap_or_default();
                    cmds.extend(update(&mut app, Action::BudgetNames(names)));
                }
                Cmd::SaveBudgets { name, budgets } => {
                    let r = files::budgets_dir()
                        .and_then(|d| files::save_budgets_keeping(&d, &name, &budgets));
                    let a = match r {
                        Ok((p, None)) => Action::Notice(format!("saved budgets to {}", p.display())),
                        Ok((p, Some(b))) => Action::Notice(format!(
                            "saved budgets to {}; the budgets saved before under '{name}' are kept in {}",
                            p.display(),
                            b.display()
                        )),
                        Err(e) => Action::Error(format!("{e:#}")),
                    };
                    cmds.extend(update(&mut app, a));
                }
                Cmd::LoadBudgets(name) => {
                    let r = files::budgets_dir()
                        .and_then(|d| files::read_budget_file(&d.join(format!("{name}.json"))));
                    let a = match r {
                        Ok(budgets) => Action::BudgetsLoaded { name, budgets },
                        Err(e) => Action::Error(format!("{e:#}")),
                    };
                    cmds.extend(update(&mut app, a));
                }
                Cmd::ZoomRows { layer, rows, keys } => {
                    if let Some(w) = &worker {
                        let _ = w.send(ToWorker::ZoomRows { layer, rows, keys });
                    }
                }
                Cmd::MeasureErrors(gen) => {
                    if let Some(w) = &worker {
                        let _ = w.send(ToWorker::AttnErrors { gen });
                    }
                }
                Cmd::ListReports => {
                    let dir = std::env::current_dir().unwrap_or_default();
                    let names = files::list_reports(&dir);
                    cmds.extend(update(&mut app, Action::ReportNames(names)));
                }
                Cmd::LoadReport(path) => {
                    if let Some(w) = &worker {
                        let _ = w.send(ToWorker::LoadReport { path });
                    }
                }
                Cmd::StartProfile => {
                    let stop = Arc::new(AtomicBool::new(false));
                    profile_stop = Some(stop.clone());
                    if let Some(w) = &worker {
                        let _ = w.send(ToWorker::MakeProfile { stop });
                    }
                }
                Cmd::CancelProfile => {
                    if let Some(stop) = &profile_stop {
                        stop.store(true, Ordering::SeqCst);
                    }
                }
                Cmd::UseProfile { profile, path } => {
                    if let Some(w) = &worker {
                        let _ = w.send(ToWorker::UseProfile { profile, path });
                    }
                }
                Cmd::ExportReport => {
                    let secs = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    let path = std::env::current_dir()
                        .unwrap_or_default()
                        .join(format!("kvscope-report-{secs}.json"));
                    if let Some(w) = &worker {
                        let _ = w.send(ToWorker::Export { path });
                    }
                }
            }
        }
        if app.pending() && last_edit.is_none_or(|e| e.elapsed() >= DEBOUNCE) {
            send(&mut app, &worker);
            dirty = true;
        }
        if last_rss.elapsed() >= RSS_EVERY {
            last_rss = Instant::now();
            if let Some(b) = read_rss() {
                if app.rss_bytes != Some(b) {
                    update(&mut app, Action::Rss(b));
                    dirty = true;
                }
            }
        }
    }
    drop(term);
    Ok(())
}

fn send(app: &mut App, worker: &Option<Sender<ToWorker>>) {
    if let (Some(w), Some(m)) = (worker, app.flush()) {
        let _ = w.send(m);
    }
}

fn start_worker(
    app: &mut App,
    opts: &Options,
    path: &std::path::Path,
    text: String,
    tx: &Sender<Event>,
    worker: &mut Option<Sender<ToWorker>>,
) -> Result<()> {
    if let Ok(r) = files::recent_path() {
        // The recent list is a convenience: failing to write it must not stop the run.
        let _ = files::push_recent(&r, path);
    }
    app.picker = None;
    app.answer = files::answer_sidecar(path);
    app.prompt_label = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let (wtx, wrx) = mpsc::channel();
    let out_tx = tx.clone();
    let out: worker::Outbox = std::sync::Arc::new(move |m| out_tx.send(Event::Worker(m)).is_ok());
    let job = worker::Job {
        model: opts.model.clone(),
        profile: opts.profile.clone(),
        prompt: text,
        prompt_opts: opts.prompt_opts.clone(),
        max_new: opts.max_new,
        no_cache: opts.no_cache,
        // A report belongs to the prompt it was opened with, not to one picked later.
        expect: opts
            .expect
            .clone()
            .filter(|_| opts.prompt.as_deref() == Some(path)),
        make: profiling::MakeOptions::default(),
    };
    worker::spawn(job, out, wrx).context("cannot start the worker thread")?;
    *worker = Some(wtx);
    Ok(())
}

/// Sample prompts, then recent files not already listed.
fn picker() -> Picker {
    let mut items: Vec<(String, PathBuf)> = files::sample_prompts(&files::sample_dir())
        .into_iter()
        .map(|p| (format!("sample  {}", p.display()), p))
        .collect();
    if let Ok(r) = files::recent_path() {
        for p in files::read_recent(&r) {
            if p.exists()
                && !items
                    .iter()
                    .any(|(_, q)| q.canonicalize().ok().as_ref() == Some(&p))
            {
                items.push((format!("recent  {}", p.display()), p));
            }
        }
    }
    Picker { items, sel: 0 }
}

fn spawn_input(tx: Sender<Event>) -> Result<()> {
    std::thread::Builder::new()
        .name("kvscope-input".into())
        .spawn(move || {
            while let Ok(e) = event::read() {
                if tx.send(Event::Input(e)).is_err() {
                    break;
                }
            }
        })
        .context("cannot start the input thread")?;
    Ok(())
}

/// Resident set size from /proc/self/status (None where there is no procfs).
pub fn read_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The terminal in raw mode on the alternate screen; dropping it restores the terminal,
/// so every exit path (return, `?`, panic unwinding) leaves the shell usable.
struct Term {
    t: Terminal<CrosstermBackend<std::io::Stdout>>,
}

impl Term {
    fn enter() -> Result<Term> {
        // SIGTERM / SIGINT / SIGHUP from outside restore the terminal too (restoring a
        // terminal that is not raw yet is harmless).
        crate::signals::terminal().restore_terminal = Some(restore);
        if let Err(e) = enable_raw_mode() {
            crate::signals::terminal().restore_terminal = None;
            return Err(e).context("cannot put the terminal in raw mode (is this a terminal?)");
        }
        let mut out = std::io::stdout();
        if let Err(e) = execute!(out, EnterAlternateScreen) {
            give_up();
            return Err(e).context("cannot switch to the alternate screen");
        }
        match Terminal::new(CrosstermBackend::new(out)) {
            Ok(t) => Ok(Term { t }),
            Err(e) => {
                give_up();
                Err(e).context("cannot start the terminal UI")
            }
        }
    }
}

impl Drop for Term {
    fn drop(&mut self) {
        give_up();
    }
}

/// Restores the terminal and tells the signal watcher there is nothing left to restore.
fn give_up() {
    {
        let mut c = crate::signals::terminal();
        c.restore_terminal = None;
        c.resume_terminal = None;
    }
    restore();
}

/// Ctrl-Z: in raw mode the terminal sends it as a key instead of stopping the process.
fn is_ctrl_z(k: &crossterm::event::KeyEvent) -> bool {
    k.kind == crossterm::event::KeyEventKind::Press
        && k.modifiers
            .contains(crossterm::event::KeyModifiers::CONTROL)
        && matches!(k.code, crossterm::event::KeyCode::Char('z' | 'Z'))
}

/// The terminal as [`Term::enter`] leaves it, again after `fg`.
fn reenter() {
    let _ = enable_raw_mode();
    let _ = execute!(std::io::stdout(), EnterAlternateScreen);
}

fn restore() {
    let _ = disable_raw_mode();
    let _ = execute!(
        std::io::stdout(),
        LeaveAlternateScreen,
        crossterm::cursor::Show
    );
}

static UI_THREAD: OnceLock<std::thread::ThreadId> = OnceLock::new();

/// Restores the terminal before the panic message is printed, so it is readable and the
/// shell works. Only the UI thread owns the terminal: a panic elsewhere (the worker)
/// leaves the screen alone; the worker reports it as a fatal error in the status line.
fn install_panic_hook() {
    let _ = UI_THREAD.set(std::thread::current().id());
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if UI_THREAD.get() == Some(&std::thread::current().id()) {
            restore();
            prev(info);
        }
    }));
}

/// `KVSCOPE_TRACE_TIMING=FILE`: appends frame draw times, the time from a settings key
/// press to the first frame showing that generation's result, and to the first frame
/// with its Divergence pane data (computed after the result, on the worker).
struct TimingLog {
    file: Option<std::fs::File>,
    edit: Option<(u64, Instant)>,
    /// The edit whose result is on screen and whose divergence view is still awaited.
    div: Option<(u64, Instant)>,
    /// The opening's milestones already logged: the panes drawn, the first result's
    /// divergence on screen (the status says `[ready]`).
    opened: (bool, bool),
}

impl TimingLog {
    fn from_env() -> TimingLog {
        let file = std::env::var_os("KVSCOPE_TRACE_TIMING").and_then(|p| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .ok()
        });
        TimingLog {
            file,
            edit: None,
            div: None,
            opened: (false, false),
        }
    }

    fn edited(&mut self, gen: u64) {
        if self.file.is_some() {
            self.edit = Some((gen, Instant::now()));
        }
    }

    fn frame(&mut self, took: Duration, w: u16, h: u16, app: &App) {
        let Some(f) = &mut self.file else { return };
        let _ = writeln!(f, "draw_ms {:.3} size {w}x{h}", took.as_secs_f64() * 1e3);
        // Wall-clock milestones of the opening, from the start of `kvscope`'s inspector.
        if !self.opened.0 && app.snapshot.is_some() {
            self.opened.0 = true;
            let _ = writeln!(f, "open_panes_ms {:.1}", worker::since_start_ms());
        }
        if !self.opened.1
            && app.phase == Phase::Idle
            && app.result.as_ref().is_some_and(|r| r.divergence.is_some())
        {
            self.opened.1 = true;
            let _ = writeln!(f, "open_ready_ms {:.1}", worker::since_start_ms());
        }
        if let (Some((gen, at)), Some(r)) = (self.edit, &app.result) {
            if r.gen == gen {
                let _ = writeln!(
                    f,
                    "key_to_screen_ms {:.1} gen {gen} select_ms {:.1} decode_ms {:.1} tokens {} prompt {}",
                    at.elapsed().as_secs_f64() * 1e3,
                    r.select_ms,
                    r.decode_ms,
                    r.tokens.len(),
                    app.prompt_len()
                );
                self.edit = None;
                self.div = Some((gen, at));
            }
        }
        if let (Some((gen, at)), Some(r)) = (self.div, &app.result) {
            if r.gen == gen && r.divergence.is_some() {
                let _ = writeln!(
                    f,
                    "key_to_divergence_ms {:.1} gen {gen}",
                    at.elapsed().as_secs_f64() * 1e3
                );
                self.div = None;
            }
        }
    }
}
