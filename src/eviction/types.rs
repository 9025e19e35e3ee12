//! The shapes every method and allocator file shares: the method and allocator handles
//! and definitions, the settings they read, the knob type, a method's input and output.
//! Their own file, below the method files, so that a method imports these and not the
//! registry that lists it (which would make every method file a circle through
//! `registry.rs`). Behaviour lives with its subject: the knob logic in `knob.rs`, the
//! window scores in `scores.rs`, the settings' defaults and validation in `settings.rs`.

use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use crate::keepset::KeepSet;
use crate::profile_format::Profile;
use crate::trace::{Dims, Trace};

/// An eviction method: a handle on one entry of [`super::METHODS`] (METHOD.md,
/// "Methods"). Compared, hashed and serialised by name.
#[derive(Clone, Copy)]
pub struct Method(&'static MethodDef);

impl Method {
    /// The handle of a method's definition (each method file's `METHOD`).
    pub const fn of(def: &'static MethodDef) -> Method {
        Method(def)
    }

    /// The method's registry entry.
    pub fn def(self) -> &'static MethodDef {
        self.0
    }

    /// The name used on the command line, in JSON and in the inspector.
    pub fn name(self) -> &'static str {
        self.0.name
    }

    /// The layer-budget allocator the method uses unless the user picks another.
    pub fn default_allocator(self) -> Allocator {
        self.0.default_allocator
    }
}

/// How the observation-window score is smoothed over neighbouring positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    #[default]
    Avg,
    Max,
}

impl Pooling {
    pub const ALL: [Pooling; 2] = [Pooling::Avg, Pooling::Max];

    pub fn name(self) -> &'static str {
        match self {
            Pooling::Avg => "avg",
            Pooling::Max => "max",
        }
    }
}

/// How the total budget is split across layers (METHOD.md, "Budgets" and the methods):
/// a handle on one entry of [`super::ALLOCATORS`].
#[derive(Clone, Copy)]
pub struct Allocator(&'static AllocatorDef);

impl Allocator {
    /// The handle of an allocator's definition.
    pub const fn of(def: &'static AllocatorDef) -> Allocator {
        Allocator(def)
    }

    pub fn def(self) -> &'static AllocatorDef {
        self.0
    }

    pub fn name(self) -> &'static str {
        self.0.name
    }
}

/// Handles are one registry entry each, so their names identify them.
macro_rules! by_name {
    ($ty:ty) => {
        impl PartialEq for $ty {
            fn eq(&self, other: &Self) -> bool {
                self.name() == other.name()
            }
        }

        impl Eq for $ty {}

        impl std::hash::Hash for $ty {
            fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
                self.name().hash(h)
            }
        }

        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

by_name!(Method);
by_name!(Allocator);

/// Everything [`super::select`] needs besides the trace and the profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub method: Method,
    /// `B`: prompt tokens kept per layer and KV head (before per-layer allocation).
    pub budget: usize,
    /// `w`: the observation window, always kept.
    pub window: usize,
    /// Pooling kernel; odd, so the zero padding `k / 2` on both sides keeps the length.
    pub kernel: usize,
    pub pooling: Pooling,
    /// CompressKV: SRHs per layer.
    pub first_k: usize,
    /// AdaKV: fraction of a KV head's even share it keeps at least.
    pub adakv_floor: f32,
    /// PyramidKV: `min = (B - w) / beta`.
    pub pyramid_beta: usize,
    /// `None`: the method's default allocator.
    pub allocator: Option<Allocator>,
    /// Explicit per-layer budgets; implies the manual allocator.
    pub layer_budgets: Option<Vec<usize>>,
    /// Prompt positions every KV head keeps, inside its budget (METHOD.md, "Pins").
    pub pin_keep: Vec<usize>,
    /// Prompt positions removed from the candidates (never from the window).
    pub pin_evict: Vec<usize>,
    // The knobs whose default depends on nothing a user sets or that only one method
    // or allocator reads: `None` until set (the knob's default applies), and absent
    // from JSON until then. In name order, as they appear in JSON.
    /// cake: the layer-by-layer cascade (`cake::CASCADE`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cake_cascade: Option<bool>,
    /// cake: weight of the variance in the eviction indicator (`cake::GAMMA`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cake_gamma: Option<f64>,
    /// cake allocator: tau1 of the layer preference (`cake::TAU1`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cake_tau1: Option<f64>,
    /// cake allocator: tau2 of the layer preference; its default depends on the budget.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cake_tau2: Option<f64>,
    /// Sliding-window layers: select inside their window too (`sliding::EVICT_SLIDING`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evict_sliding: Option<bool>,
    /// headkv: each head keeps `c - floor(c / beta)` at least (`headkv::BETA`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headkv_beta: Option<f64>,
    /// headkv: the profile scores heads are ranked by (`headkv::SOURCE`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headkv_source: Option<String>,
    /// headkv: temperature of the normalised head scores (`headkv::TEMP`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headkv_temp: Option<f64>,
    /// knorm: layers that keep every token (`knorm::SKIP_LAYERS`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub knorm_skip_layers: Option<Vec<usize>>,
    /// random: seed of the scores (`random::SEED`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub random_seed: Option<i64>,
}

/// Everything a selection reads: what [`super::select`] takes. Build it with
/// [`Request::new`] and add the optional inputs the method needs.
#[derive(Clone, Copy)]
pub struct Request<'a> {
    pub trace: &'a Trace,
    pub settings: &'a Settings,
    /// The offline profile (required by the methods that say so, read by error-aware).
    pub profile: Option<&'a Profile>,
    /// Precomputed window scores, used where they fit the settings.
    pub table: Option<&'a ScoreTable>,
    /// What the full cache attended to during the full generation (the oracle's input).
    pub future: Option<&'a FutureAttention>,
}

impl<'a> Request<'a> {
    /// A request with no profile, score table or future attention.
    pub fn new(trace: &'a Trace, settings: &'a Settings) -> Self {
        Request {
            trace,
            settings,
            profile: None,
            table: None,
            future: None,
        }
    }

    pub fn profile(self, profile: Option<&'a Profile>) -> Self {
        Request { profile, ..self }
    }

    pub fn table(self, table: Option<&'a ScoreTable>) -> Self {
        Request { table, ..self }
    }

    pub fn future(self, future: Option<&'a FutureAttention>) -> Self {
        Request { future, ..self }
    }
}

/// A per-KV-head score of one evicting layer's candidate positions `[0, L - w)`
/// (`[kv_head][pos]`, higher is kept first), read from a method's input. The per-head
/// methods rank by one ([`super::layer::per_head`]); the allocators that spread a
/// layer's slots over its heads (`adakv::wrap`, `headkv::wrap`) take any one, as
/// kvpress's `AdaKVPress(scorer)` does, and the layer allocators (pyramid, error-aware)
/// already apply to every method through `--allocator`.
pub type Scorer = fn(&Input, usize) -> Vec<Vec<f32>>;

/// What a method needs to choose, besides its own knobs in `settings`.
pub struct Input<'a> {
    pub trace: &'a Trace,
    pub settings: &'a Settings,
    /// Checked against the trace's dimensions; `Some` whenever the method says it needs one.
    pub profile: Option<&'a Profile>,
    /// The allocator's per-layer budgets (tokens per KV head).
    pub budgets: &'a [usize],
    /// Precomputed window scores; use only through `scores::mean_head_scores`, which
    /// checks that the table fits the settings.
    pub table: Option<&'a ScoreTable>,
    /// What the full cache attended to during this prompt's full generation; `Some`
    /// whenever the method says it needs it (only the `oracle` reference does).
    pub future: Option<&'a FutureAttention>,
}

/// A method's choice for every layer, and the per-layer budgets to report when the
/// method overrides the allocator's (full keeps `L`; headkv reports nominal budgets).
pub struct Picked {
    pub layers: Vec<LayerChoice>,
    pub budgets: Option<Vec<usize>>,
}

/// How many positions a method keeps in an evicting layer (what the property tests hold
/// every method to).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keeps {
    /// Every KV head keeps exactly the layer budget.
    EveryHead,
    /// The layer keeps `n_kv x budget`; a head keeps at least the window.
    LayerTotal,
    /// Per-head budgets of the method's own (headkv); each head keeps at least the window.
    OwnHeads,
    /// Everything (full).
    All,
}

/// One selection method.
pub struct MethodDef {
    /// The name used on the command line, in JSON and in the inspector.
    pub name: &'static str,
    /// One line for `--help` and the inspector.
    pub about: &'static str,
    /// Knobs the method reads (shared ones included), in display order.
    pub knobs: &'static [&'static Knob],
    /// The allocator used unless the user picks another.
    pub default_allocator: Allocator,
    /// `Some(message)`: the method cannot run without a profile; the message says how to
    /// get one.
    pub needs_profile: Option<&'static str>,
    /// Whether the method reads the full generation's attention ([`Input::future`]):
    /// a reference that looks at the future, not a deployable method.
    pub needs_future: bool,
    /// Whether every KV head keeps the same positions.
    pub shared_positions: bool,
    /// Whether the method has scores to show for an evicting layer.
    pub has_scores: bool,
    pub keeps: Keeps,
    /// The selection: a pure function of the input.
    pub select: fn(&Input) -> Result<Picked>,
}

impl MethodDef {
    /// A method of the most common shape: no knobs, no profile, no future, each KV head
    /// keeps its own positions (exactly the layer budget) and has scores to show. The
    /// `with_*` / `keeping` / `sharing_positions` / `without_scores` steps below change
    /// one of these each, so a method's entry names only how it differs.
    pub const fn new(
        name: &'static str,
        about: &'static str,
        default_allocator: Allocator,
        select: fn(&Input) -> Result<Picked>,
    ) -> MethodDef {
        MethodDef {
            name,
            about,
            knobs: &[],
            default_allocator,
            needs_profile: None,
            needs_future: false,
            shared_positions: false,
            has_scores: true,
            keeps: Keeps::EveryHead,
            select,
        }
    }

    pub const fn with_knobs(self, knobs: &'static [&'static Knob]) -> MethodDef {
        MethodDef { knobs, ..self }
    }

    /// The method cannot run without a profile; `how` says how to get one.
    pub const fn with_profile(self, how: &'static str) -> MethodDef {
        MethodDef {
            needs_profile: Some(how),
            ..self
        }
    }

    pub const fn with_future(self) -> MethodDef {
        MethodDef {
            needs_future: true,
            ..self
        }
    }

    pub const fn keeping(self, keeps: Keeps) -> MethodDef {
        MethodDef { keeps, ..self }
    }

    pub const fn sharing_positions(self) -> MethodDef {
        MethodDef {
            shared_positions: true,
            ..self
        }
    }

    pub const fn without_scores(self) -> MethodDef {
        MethodDef {
            has_scores: false,
            ..self
        }
    }
}

/// What an allocator may read.
pub struct AllocInput<'a> {
    pub settings: &'a Settings,
    pub dims: &'a Dims,
    pub len: usize,
    pub profile: Option<&'a Profile>,
    /// The trace, for allocators that measure it (cake). `None` when only budgets are
    /// previewed before a prompt is prefilled.
    pub trace: Option<&'a Trace>,
}

/// One layer-budget allocator.
pub struct AllocatorDef {
    pub name: &'static str,
    pub about: &'static str,
    pub knobs: &'static [&'static Knob],
    pub budgets: fn(&AllocInput) -> Result<Vec<usize>>,
}

/// The value of a knob, as stored in settings and written to JSON.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum KnobValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    List(Vec<usize>),
}

impl KnobValue {
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            KnobValue::Int(i) => Some(i as f64),
            KnobValue::Float(f) => Some(f),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            KnobValue::Int(i) => Some(i),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            KnobValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            KnobValue::Text(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_list(&self) -> Option<&[usize]> {
        match self {
            KnobValue::List(l) => Some(l),
            _ => None,
        }
    }
}

impl std::fmt::Display for KnobValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KnobValue::Bool(b) => write!(f, "{b}"),
            KnobValue::Int(i) => write!(f, "{i}"),
            KnobValue::Float(x) => write!(f, "{x}"),
            KnobValue::Text(s) => f.write_str(s),
            KnobValue::List(l) => {
                let parts: Vec<String> = l.iter().map(|x| x.to_string()).collect();
                f.write_str(&parts.join(","))
            }
        }
    }
}

impl KnobValue {
    /// The value with its type, for messages about a value of the wrong type.
    pub fn described(&self) -> String {
        match self {
            KnobValue::Bool(b) => format!("{b}"),
            KnobValue::Int(i) => format!("{i}"),
            KnobValue::Float(x) => format!("{x}"),
            KnobValue::Text(s) => format!("the text {s:?}"),
            KnobValue::List(l) => format!("the list {l:?}"),
        }
    }
}

/// A knob's type and valid range.
#[derive(Debug, Clone, Copy)]
pub enum KnobKind {
    /// A whole number in `[min, max]`.
    Int {
        min: i64,
        max: i64,
    },
    /// A number in `[min, max]` (`(min, max]` when `open_min`).
    Float {
        min: f64,
        max: f64,
        open_min: bool,
    },
    Bool,
    /// One of the listed names.
    Choice(&'static [&'static str]),
    /// A comma-separated list of layer indices (each below the model's layer count).
    Layers,
}

/// Where a knob's value lives: its typed field of [`Settings`], read and written through
/// these two adapters, which [`field!`] writes for any field type that is a
/// [`KnobField`].
#[derive(Clone, Copy)]
pub struct Field {
    /// `None`: the knob is unset and its default applies.
    pub get: fn(&Settings) -> Option<KnobValue>,
    /// Called with a value already checked against the knob's kind.
    pub set: fn(&mut Settings, &KnobValue),
}

/// A [`Settings`] field type that holds a knob's value: how it reads as a
/// [`KnobValue`] and is set from one already checked against the knob's kind. `Option`
/// fields are unset until set; the others always hold a value.
pub trait KnobField {
    fn knob_value(&self) -> Option<KnobValue>;
    fn set_knob(&mut self, v: &KnobValue);
}

impl KnobField for usize {
    fn knob_value(&self) -> Option<KnobValue> {
        Some(KnobValue::Int(*self as i64))
    }
    fn set_knob(&mut self, v: &KnobValue) {
        *self = v.as_i64().unwrap_or(0).max(0) as usize;
    }
}

impl KnobField for f32 {
    fn knob_value(&self) -> Option<KnobValue> {
        Some(KnobValue::Float(f64::from(*self)))
    }
    fn set_knob(&mut self, v: &KnobValue) {
        *self = v.as_f64().unwrap_or(0.0) as f32;
    }
}

impl KnobField for Pooling {
    fn knob_value(&self) -> Option<KnobValue> {
        Some(KnobValue::Text(self.name().to_string()))
    }
    fn set_knob(&mut self, v: &KnobValue) {
        *self = match v.as_str() {
            Some("max") => Pooling::Max,
            _ => Pooling::Avg,
        }
    }
}

impl KnobField for Option<bool> {
    fn knob_value(&self) -> Option<KnobValue> {
        self.map(KnobValue::Bool)
    }
    fn set_knob(&mut self, v: &KnobValue) {
        *self = v.as_bool();
    }
}

impl KnobField for Option<i64> {
    fn knob_value(&self) -> Option<KnobValue> {
        self.map(KnobValue::Int)
    }
    fn set_knob(&mut self, v: &KnobValue) {
        *self = v.as_i64();
    }
}

impl KnobField for Option<f64> {
    fn knob_value(&self) -> Option<KnobValue> {
        self.map(KnobValue::Float)
    }
    fn set_knob(&mut self, v: &KnobValue) {
        *self = v.as_f64();
    }
}

impl KnobField for Option<String> {
    fn knob_value(&self) -> Option<KnobValue> {
        self.clone().map(KnobValue::Text)
    }
    fn set_knob(&mut self, v: &KnobValue) {
        *self = v.as_str().map(str::to_string);
    }
}

impl KnobField for Option<Vec<usize>> {
    fn knob_value(&self) -> Option<KnobValue> {
        self.clone().map(KnobValue::List)
    }
    fn set_knob(&mut self, v: &KnobValue) {
        *self = v.as_list().map(<[usize]>::to_vec);
    }
}

/// The [`Field`] of the knob stored in `Settings::$name`.
macro_rules! field {
    ($name:ident) => {
        $crate::eviction::types::Field {
            get: |s| $crate::eviction::types::KnobField::knob_value(&s.$name),
            set: |s, v| $crate::eviction::types::KnobField::set_knob(&mut s.$name, v),
        }
    };
}
pub(crate) use field;

/// A knob's own check of its value in force, for a model of shape `dims`.
pub type KnobCheck = fn(&Settings, &Dims, &KnobValue) -> Result<()>;

/// One tunable number (or flag) of a method or allocator.
pub struct Knob {
    /// Key in settings and JSON (snake_case).
    pub name: &'static str,
    /// Command-line flag without the dashes.
    pub flag: &'static str,
    pub help: &'static str,
    pub kind: KnobKind,
    /// The default, which may depend on other settings (cake's tau on the budget).
    pub default: fn(&Settings) -> KnobValue,
    /// Its field of [`Settings`].
    pub field: Field,
    /// A check beyond the kind's range (e.g. one that depends on the model).
    pub check: Option<KnobCheck>,
    /// Inspector step for `<` / `>` (numbers); booleans and choices cycle.
    pub step: f64,
}

impl Knob {
    /// A knob stored in `field` (write it with [`field!`]), with no check beyond its
    /// kind and an inspector step of 1; `checked` and `stepping` change those.
    pub const fn new(
        name: &'static str,
        flag: &'static str,
        help: &'static str,
        kind: KnobKind,
        default: fn(&Settings) -> KnobValue,
        field: Field,
    ) -> Knob {
        Knob {
            name,
            flag,
            help,
            kind,
            default,
            field,
            check: None,
            step: 1.0,
        }
    }

    pub const fn checked(self, check: KnobCheck) -> Knob {
        Knob {
            check: Some(check),
            ..self
        }
    }

    pub const fn stepping(self, step: f64) -> Knob {
        Knob { step, ..self }
    }
}

/// What [`select`] chose, with the numbers behind the choice so the inspector can show
/// why a token was kept or evicted.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    pub keep: KeepSet,
    /// Budget applied per layer, in tokens per KV head, as the allocator gave it (a layer
    /// whose budget is `>= L` keeps all `L` tokens). For `full` every entry is `L`; for
    /// headkv the nominal `w + round(mean head capacity)`.
    pub layer_budgets: Vec<usize>,
    /// `[layer][kv_head][pos]`: the score the method ranked positions `[0, L - w)` by.
    /// Always one entry per layer; a layer's entry is empty when the method has no
    /// scores (full, streamingllm) or nothing was evicted in that layer. For methods
    /// that keep one index set per layer (compresskv, tova) the one per-layer score
    /// vector is repeated for every KV head.
    pub scores: Vec<Vec<Vec<f32>>>,
}

/// One layer's choice: kept positions per KV head (sorted, window included) and the
/// scores they were ranked by (empty when there were none).
#[derive(Debug, Clone, PartialEq)]
pub struct LayerChoice {
    pub keep: Vec<Vec<usize>>,
    pub scores: Vec<Vec<f32>>,
}

impl LayerChoice {
    /// Every KV head keeps all `len` positions.
    pub fn keep_all(n_kv: usize, len: usize) -> Self {
        LayerChoice {
            keep: vec![(0..len).collect(); n_kv],
            scores: Vec::new(),
        }
    }
}

/// `p_h` of every (layer, query head) for one (window, kernel, pooling). Budgets and the
/// method do not change them, so the inspector computes them once and every budget edit
/// selects from the table instead of recomputing the window attention.
#[derive(Debug, Clone)]
pub struct ScoreTable {
    pub(super) window: usize,
    pub(super) kernel: usize,
    pub(super) pooling: Pooling,
    pub(super) len: usize,
    /// `[layer][head][pos]`; empty vectors when the window covers the whole prompt.
    pub heads: Arc<Vec<Vec<Vec<f32>>>>,
}

/// `[layer][kv_head][prompt position]`: the attention every prompt entry received from
/// the full cache during the full generation, summed over the teacher-forced steps and
/// the query heads of the KV group.
#[derive(Debug, Clone, PartialEq)]
pub struct FutureAttention {
    pub len: usize,
    /// Teacher-forced steps summed (0: the generation had one token or none).
    pub steps: usize,
    pub sums: Vec<Vec<Vec<f32>>>,
}
