//! Keys -> [`Action`]s. The one table of bindings: the help popup is generated from
//! [`HELP`], so it lists every key this module maps.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::action::{Action, Dir, Pane};
use super::app::{App, Popup, LAYER_STEP};

/// (keys, what they do), shown by `?`.
pub const HELP: &[(&str, &str)] = &[
    ("q  Ctrl-C", "quit (at any time, also while loading)"),
    ("?", "this help (any key closes it)"),
    ("Tab / Shift-Tab", "focus the next / previous pane"),
    ("1..7", "show a pane (tabs on small terminals)"),
    ("", "7 / 2: divergence / attention map in the same place"),
    ("arrows", "head map: layer / head; budgets: layer"),
    ("", "tokens: token (up/down: 16); attention: pan / zoom"),
    ("", "divergence: left/right select the step"),
    ("PgUp PgDn", "bigger steps of the same move"),
    ("+  -", "selected layer's budget +/- 16 (manual allocator)"),
    ("*  /", "scale all budgets x1.25 / ÷1.25"),
    ("b  B", "base budget B -16 / +16"),
    (
        "a",
        "next allocator (uniform, pyramid, error-aware, manual, ...)",
    ),
    ("m  M", "next / previous method"),
    ("w  W", "observation window -1 / +1"),
    ("k  K", "pooling kernel -2 / +2"),
    ("f  F", "first_k (SRHs per layer) -1 / +1"),
    ("o", "select the next knob of the method / allocator"),
    (
        "<  >",
        "selected knob one step down / up (flags, choices cycle)",
    ),
    ("p", "pooling avg / max"),
    ("r", "reset every setting to its start value"),
    (
        "s",
        "head map statistic (SRH, sink, recent, middle, entropy)",
    ),
    ("z  Z", "attention map: zoom in / out on the key axis"),
    ("[  ]", "attention map: pan left / right"),
    ("e", "export settings + keep set as a `run --json` report"),
    (
        "I",
        "load an exported report's settings (same model, prompt)",
    ),
    (
        "x  X",
        "pin the selected token kept / evicted (again: unpin)",
    ),
    (
        "v",
        "mark a range start; again: pin mark..selected token kept",
    ),
    ("U", "remove every pin"),
    ("R", "rescue: pin the top K culprits of the selected step"),
    (
        ",  .",
        "rescue K -1 / +1 (1..16; start: --rescue, default 3)",
    ),
    (
        "E",
        "divergence: measure the attention-output error per layer",
    ),
    (
        "A  C",
        "freeze the current result as A / clear A (A/B compare)",
    ),
    (
        "/  n N  j J",
        "tokens: find text, next/prev match, evicted by lost mass",
    ),
    (
        "P",
        "no profile: make one in the background (again: cancel)",
    ),
    (
        "g  G",
        "jump to the answer span (sidecar / marked); G marks one",
    ),
    (
        "T",
        "attention map: one token per cell at the cursor / back",
    ),
    ("S", "save the per-layer budgets under a name"),
    ("L", "load saved budgets"),
    ("Enter  Esc", "confirm / close a popup"),
];

pub fn map_key(app: &App, k: KeyEvent) -> Option<Action> {
    // Key release and repeat events (kitty protocol) would double every press.
    if k.kind != KeyEventKind::Press {
        return None;
    }
    let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
    if ctrl && matches!(k.code, KeyCode::Char('c') | KeyCode::Char('C')) {
        return Some(Action::Quit);
    }
    // Typing a name: letters are text, not commands.
    if let Some(Popup::SaveName(_) | Popup::Search(_)) = app.popup {
        return match k.code {
            KeyCode::Enter => Some(Action::Confirm),
            KeyCode::Esc => Some(Action::Close),
            KeyCode::Backspace => Some(Action::Backspace),
            KeyCode::Char(c) => Some(Action::Char(c)),
            _ => None,
        };
    }
    if matches!(app.popup, Some(Popup::Help)) {
        return Some(match k.code {
            KeyCode::Char('q') => Action::Quit,
            _ => Action::Close,
        });
    }
    Some(match k.code {
        KeyCode::Char('q') => Action::Quit,
        KeyCode::Char('?') => Action::ToggleHelp,
        KeyCode::Esc => Action::Close,
        KeyCode::Enter => Action::Confirm,
        KeyCode::Tab => Action::FocusNext,
        KeyCode::BackTab => Action::FocusPrev,
        KeyCode::Up => Action::Move(Dir::Up),
        KeyCode::Down => Action::Move(Dir::Down),
        KeyCode::Left => Action::Move(Dir::Left),
        KeyCode::Right => Action::Move(Dir::Right),
        KeyCode::PageUp => Action::BigMove(Dir::Up),
        KeyCode::PageDown => Action::BigMove(Dir::Down),
        KeyCode::Char(c) => match c {
            '1'..='7' => Action::Show(Pane::ALL[(c as u8 - b'1') as usize]),
            '+' | '=' => Action::LayerBudget(LAYER_STEP),
            '-' | '_' => Action::LayerBudget(-LAYER_STEP),
            '*' => Action::Scale(true),
            // In the token pane `/` searches the prompt text (and `*` still scales).
            '/' if app.focus == Pane::Tokens => Action::SearchStart,
            '/' => Action::Scale(false),
            'n' if app.focus == Pane::Tokens => Action::SearchNext(true),
            'N' if app.focus == Pane::Tokens => Action::SearchNext(false),
            'j' if app.focus == Pane::Tokens => Action::JumpLost(true),
            'J' if app.focus == Pane::Tokens => Action::JumpLost(false),
            'g' => Action::JumpAnswer,
            'G' => Action::MarkSpan,
            'T' => Action::TokenZoom,
            'b' => Action::BaseBudget(-16),
            'B' => Action::BaseBudget(16),
            'a' => Action::CycleAllocator,
            'm' => Action::NextMethod,
            'M' => Action::PrevMethod,
            'w' => Action::Window(-1),
            'W' => Action::Window(1),
            'k' => Action::Kernel(-2),
            'K' => Action::Kernel(2),
            'f' => Action::FirstK(-1),
            'F' => Action::FirstK(1),
            'o' => Action::NextKnob,
            '<' => Action::KnobStep(-1),
            '>' => Action::KnobStep(1),
            'p' => Action::TogglePooling,
            'r' => Action::Reset,
            's' => Action::CycleStat,
            'z' => Action::ZoomIn,
            'Z' => Action::ZoomOut,
            '[' => Action::Pan(-1),
            ']' => Action::Pan(1),
            'e' => Action::Export,
            'x' => Action::PinKeep,
            'X' => Action::PinEvict,
            'v' => Action::PinRange,
            'U' => Action::ClearPins,
            'R' => Action::Rescue,
            'E' => Action::MeasureErrors,
            ',' => Action::RescueK(-1),
            '.' => Action::RescueK(1),
            'A' => Action::FreezeA,
            'C' => Action::ClearA,
            'S' => Action::SaveStart,
            'L' => Action::LoadStart,
            'I' => Action::ReportStart,
            'P' => Action::ProfileMake,
            _ => return None,
        },
        _ => return None,
    })
}
