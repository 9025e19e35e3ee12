//! Everything that can happen to the inspector's state: keys map to these, worker
//! messages arrive as these, and [`super::app::update`] is the only place that acts on
//! them.

use super::msg::FromWorker;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Up,
    Down,
    Left,
    Right,
}

/// The panes, in focus / tab order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pane {
    HeadMap,
    Attention,
    Budgets,
    Generation,
    Memory,
    Tokens,
    Divergence,
}

impl Pane {
    pub const ALL: [Pane; 7] = [
        Pane::HeadMap,
        Pane::Attention,
        Pane::Budgets,
        Pane::Generation,
        Pane::Memory,
        Pane::Tokens,
        Pane::Divergence,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Pane::HeadMap => "Head map",
            Pane::Attention => "Attention",
            Pane::Budgets => "Budgets",
            Pane::Generation => "Generation",
            Pane::Memory => "Memory",
            Pane::Tokens => "Tokens",
            Pane::Divergence => "Divergence",
        }
    }

    pub fn index(self) -> usize {
        Pane::ALL.iter().position(|&p| p == self).unwrap_or(0)
    }
}

#[derive(Debug, Clone)]
pub enum Action {
    Quit,
    ToggleHelp,
    /// Esc: close the popup that is open.
    Close,
    FocusNext,
    FocusPrev,
    /// Show one pane (tabs on small terminals; focus on the full layout).
    Show(Pane),
    /// Arrow keys: what they move depends on the focused pane.
    Move(Dir),
    /// Page keys: a larger step of the same move.
    BigMove(Dir),
    NextMethod,
    PrevMethod,
    CycleAllocator,
    CycleStat,
    /// Change the selected layer's budget by this many tokens.
    LayerBudget(i64),
    /// Scale every budget up (true) or down.
    Scale(bool),
    /// Change the base budget `B` by this many tokens.
    BaseBudget(i64),
    Window(i64),
    Kernel(i64),
    FirstK(i64),
    /// Select the next knob of the method and allocator in force (registry order).
    NextKnob,
    /// Step the selected knob (numbers by its step; flags and choices cycle).
    KnobStep(i64),
    TogglePooling,
    Reset,
    ZoomIn,
    ZoomOut,
    Pan(i64),
    Export,
    /// Pin the selected prompt token to be kept (again: unpin).
    PinKeep,
    /// Pin the selected prompt token to be evicted (again: unpin).
    PinEvict,
    /// First press marks the selected token; the second pins the range mark..selection.
    PinRange,
    /// Remove every pin.
    ClearPins,
    /// Pin the top culprits of the selected step (METHOD.md, "Rescue").
    Rescue,
    /// Measure the attention-output error per layer of the current result.
    MeasureErrors,
    /// Culprits `R` pins, one more / fewer.
    RescueK(i64),
    /// Freeze the displayed outcome as A, for an A/B comparison with the live settings.
    FreezeA,
    ClearA,
    /// Open the name prompt to save the current per-layer budgets.
    SaveStart,
    /// Open the list of saved budget files.
    LoadStart,
    /// Open the list of exported reports, to load one's settings.
    ReportStart,
    /// Token pane: open the search prompt (`/`).
    SearchStart,
    /// Token pane: the next (true) or previous match of the last search (`n` / `N`).
    SearchNext(bool),
    /// Token pane: the next (true) or previous evicted token by attention lost over the
    /// divergence analysis' steps (`j` / `J`).
    JumpLost(bool),
    /// Token pane: the next answer span: the prompt's sidecar answer found in its text,
    /// then the span marked with `G` (`g`).
    JumpAnswer,
    /// Token pane: mark the selected token as a span's start, again as its end (`G`).
    MarkSpan,
    /// Attention map: one token per cell around the token cursor; again: back to the
    /// range shown before (`T`).
    TokenZoom,
    /// Start `profile make` for this model in the background when it has no profile;
    /// again while it runs: cancel it (`P`).
    ProfileMake,
    /// Typing into the name prompt.
    Char(char),
    Backspace,
    Confirm,
    /// Results of the loop's file work.
    BudgetNames(Vec<String>),
    ReportNames(Vec<String>),
    BudgetsLoaded {
        name: String,
        budgets: Vec<usize>,
    },
    Notice(String),
    Error(String),
    Worker(FromWorker),
    /// Resident memory of the process, sampled by the loop.
    Rss(u64),
    /// The terminal was resized: redraw.
    Redraw,
}
