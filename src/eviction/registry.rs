//! The method and allocator registries: the one place that lists what kvscope can run.
//!
//! A selection method is a [`MethodDef`] (name, one-line description, knobs, default
//! allocator, profile need, and the selection as a plain function), a layer-budget
//! allocator an [`AllocatorDef`]. Everything that lists methods or knobs (command-line
//! flags and `--help`, validation, the inspector's method cycle and knob keys, report
//! `settings`, `eval --methods all`) reads [`METHODS`], [`ALLOCATORS`] and the knobs
//! they name. Adding a method = one file defining a `MethodDef` + one line in
//! [`METHODS`].

use anyhow::{bail, Result};
use rayon::prelude::*;
use std::fmt::Write as _;

use super::scores::ScoreTable;
use super::{Allocator, LayerChoice, Pooling, Settings};
use crate::profile_format::Profile;
use crate::trace::{Dims, Trace};

/// Every selection method, in the order the inspector cycles through them and `--help`
/// lists them. One line per method.
pub const METHODS: &[&MethodDef] = &[
    &super::full::DEF,
    &super::streamingllm::DEF,
    &super::h2o::DEF,
    &super::snapkv::DEF,
    &super::pyramidkv::DEF,
    &super::adakv::DEF,
    &super::compresskv::DEF,
    &super::cake::DEF,
    &super::knorm::DEF,
    &super::tova::DEF,
    &super::headkv::DEF,
    &super::random::DEF,
    &super::oracle::DEF,
];

/// Every layer-budget allocator, in the inspector's cycle order. One line each.
pub const ALLOCATORS: &[&AllocatorDef] = &[
    &super::budget::UNIFORM,
    &super::budget::PYRAMID,
    &super::budget::ERROR_AWARE,
    &super::budget::MANUAL,
    &super::cake::ALLOC,
];

/// Knobs every method that scores with the observation window reads; they are listed
/// once here and named by the methods that use them.
pub const SHARED_KNOBS: &[&Knob] = &[
    &super::scores::KERNEL,
    &super::scores::POOLING,
    &super::sliding::EVICT_SLIDING,
];

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
    pub future: Option<&'a super::oracle::FutureAttention>,
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

/// `t` is a whole number in decimal (maybe negative), whatever its size.
fn is_whole_number(t: &str) -> bool {
    let d = t.strip_prefix('-').unwrap_or(t);
    !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())
}

/// An integer knob's range in words ("between 1 and 64", "at least 0").
fn int_range_words(kind: KnobKind) -> String {
    match kind {
        KnobKind::Int { min, max } if max == i64::MAX => format!("at least {min}"),
        KnobKind::Int { min, max } => format!("between {min} and {max}"),
        _ => String::new(),
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

/// Where a knob's value lives: a typed field of [`Settings`] (the knobs that predate the
/// registry, read all over the code) or the settings' knob map (every other).
#[derive(Clone, Copy)]
pub struct Field {
    pub get: fn(&Settings) -> KnobValue,
    /// Called with a value already checked against the knob's kind.
    pub set: fn(&mut Settings, &KnobValue),
}

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
    /// `None`: stored in `Settings::knobs`.
    pub field: Option<Field>,
    /// A check beyond the kind's range (e.g. one that depends on the model).
    pub check: Option<KnobCheck>,
    /// Inspector step for `<` / `>` (numbers); booleans and choices cycle.
    pub step: f64,
}

impl Knob {
    /// The value in force: the setting, or the default when unset.
    pub fn get(&self, s: &Settings) -> KnobValue {
        match &self.field {
            Some(f) => (f.get)(s),
            None => s
                .knobs
                .get(self.name)
                .cloned()
                .unwrap_or_else(|| (self.default)(s)),
        }
    }

    /// Sets the knob after checking the value's kind and range (not the model-dependent
    /// check, which needs dims).
    pub fn set(&self, s: &mut Settings, v: KnobValue) -> Result<()> {
        let v = self.coerce(&v)?;
        match &self.field {
            Some(f) => (f.set)(s, &v),
            None => {
                s.knobs.insert(self.name.to_string(), v);
            }
        }
        Ok(())
    }

    /// Parses command-line text for this knob.
    pub fn parse(&self, text: &str) -> Result<KnobValue> {
        let t = text.trim();
        let v = match self.kind {
            KnobKind::Int { min, max } => match t.parse::<i64>() {
                Ok(i) => KnobValue::Int(i),
                // A whole number past i64 is still a whole number: name the knob's range.
                Err(_) if is_whole_number(t) => {
                    let limit = if t.starts_with('-') {
                        format!("at least {min}")
                    } else {
                        format!("at most {max}")
                    };
                    bail!("--{} must be {limit}; got {t}", self.flag)
                }
                Err(_) => bail!("--{} expects a whole number; got '{text}'", self.flag),
            },
            KnobKind::Float { .. } => match t.parse::<f64>() {
                Ok(x) => KnobValue::Float(x),
                Err(_) => bail!("--{} expects a number; got '{text}'", self.flag),
            },
            KnobKind::Bool => match t.to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" | "1" => KnobValue::Bool(true),
                "false" | "no" | "off" | "0" => KnobValue::Bool(false),
                _ => bail!("--{} expects true or false; got '{text}'", self.flag),
            },
            KnobKind::Choice(_) => KnobValue::Text(t.to_ascii_lowercase()),
            KnobKind::Layers => {
                if t.is_empty() {
                    KnobValue::List(Vec::new())
                } else {
                    let mut out = Vec::new();
                    for x in t.split(',') {
                        match x.trim().parse::<usize>() {
                            Ok(l) => out.push(l),
                            Err(_) => bail!(
                                "--{} expects layer numbers a,b,c,...; '{}' is not one",
                                self.flag,
                                x.trim()
                            ),
                        }
                    }
                    KnobValue::List(out)
                }
            }
        };
        self.coerce(&v)
    }

    /// `v` in this knob's kind (an integer where a number is wanted becomes a number),
    /// or one line saying what is wrong.
    pub fn coerce(&self, v: &KnobValue) -> Result<KnobValue> {
        self.coerce_named(v, self.flag)
    }

    /// [`Knob::coerce`] with the knob called `label` in the message (a report names
    /// its key, `settings.adakv_floor`, not a flag the user never passed). A value of
    /// the wrong type is named by its type (`the text "0.2"`), not printed as if it
    /// were a number.
    pub fn coerce_named(&self, v: &KnobValue, label: &str) -> Result<KnobValue> {
        let flag = label;
        let got = v.described();
        match self.kind {
            KnobKind::Int { min, max } => {
                let range = int_range_words(self.kind);
                match v.as_i64() {
                    Some(i) if (min..=max).contains(&i) => Ok(KnobValue::Int(i)),
                    Some(_) => bail!("{flag} must be {range}; got {v}"),
                    None => bail!("{flag} must be a whole number {range}; got {got}"),
                }
            }
            KnobKind::Float { min, max, open_min } => {
                // Non-finite values are refused even where the range is open above: a
                // report cannot hold them (JSON writes null) and no method means them.
                let ok = |x: f64| {
                    (if open_min { x > min } else { x >= min }) && x <= max && x.is_finite()
                };
                let range = match (open_min, max.is_infinite()) {
                    (true, true) => format!("a finite number greater than {min}"),
                    (false, true) => format!("a finite number at least {min}"),
                    (true, false) => format!("greater than {min} and at most {max}"),
                    (false, false) => format!("between {min} and {max}"),
                };
                match v.as_f64() {
                    Some(x) if ok(x) => Ok(KnobValue::Float(x)),
                    Some(x) => bail!("{flag} must be {range}; got {x}"),
                    None => bail!("{flag} must be a number ({range}); got {got}"),
                }
            }
            KnobKind::Bool => match v.as_bool() {
                Some(b) => Ok(KnobValue::Bool(b)),
                None => bail!("{flag} must be true or false; got {got}"),
            },
            KnobKind::Choice(names) => match v.as_str() {
                Some(s) if names.contains(&s) => Ok(v.clone()),
                _ => bail!("{flag} must be one of: {}; got {got}", names.join(", ")),
            },
            KnobKind::Layers => match v {
                KnobValue::List(l) => {
                    let mut l = l.clone();
                    l.sort_unstable();
                    l.dedup();
                    Ok(KnobValue::List(l))
                }
                _ => bail!("{flag} must be a list of layer numbers; got {got}"),
            },
        }
    }

    /// What a value of this knob must be, in words ("a number between 0 and 1").
    pub fn wanted(&self) -> String {
        match self.kind {
            KnobKind::Int { .. } => format!("a whole number {}", int_range_words(self.kind)),
            KnobKind::Float { min, max, open_min } => match (open_min, max.is_infinite()) {
                (true, true) => format!("a finite number greater than {min}"),
                (false, true) => format!("a finite number at least {min}"),
                (true, false) => format!("a number greater than {min} and at most {max}"),
                (false, false) => format!("a number between {min} and {max}"),
            },
            KnobKind::Bool => "true or false".into(),
            KnobKind::Choice(names) => format!("one of: {}", names.join(", ")),
            KnobKind::Layers => "a list of layer numbers".into(),
        }
    }

    /// Full check of the value in force for a model of shape `dims`.
    pub fn validate(&self, s: &Settings, dims: &Dims) -> Result<()> {
        let raw = self.get(s);
        // The knob's own check first: its message is the more specific one.
        if let Some(check) = self.check {
            check(s, dims, &raw)?;
        }
        let v = self.coerce(&raw)?;
        if let (KnobKind::Layers, Some(l)) = (self.kind, v.as_list()) {
            if let Some(bad) = l.iter().find(|&&x| x >= dims.n_layers) {
                bail!(
                    "{} lists layer {bad}; the model has layers 0 to {}",
                    self.flag,
                    dims.n_layers - 1
                );
            }
        }
        Ok(())
    }

    /// The range in words, for `--help` and the inspector.
    pub fn range(&self) -> String {
        match self.kind {
            KnobKind::Int { min, max } if max == i64::MAX => format!(">={min}"),
            KnobKind::Int { min, max } => format!("{min}..={max}"),
            KnobKind::Float { min, max, open_min } => {
                let lo = if open_min {
                    format!(">{min}")
                } else {
                    format!(">={min}")
                };
                if max.is_infinite() {
                    lo
                } else {
                    format!("{lo}, <={max}")
                }
            }
            KnobKind::Bool => "true/false".into(),
            KnobKind::Choice(n) => n.join("/"),
            KnobKind::Layers => "layer list a,b,...".into(),
        }
    }

    /// The value `steps` inspector steps away from the current one, clamped to the range
    /// (numbers), or the next/previous choice (booleans, choices). Lists do not step.
    pub fn stepped(&self, s: &Settings, steps: i64) -> Option<KnobValue> {
        let cur = self.get(s);
        match self.kind {
            KnobKind::Int { min, max } => {
                let i = cur.as_i64()? + steps * self.step.max(1.0) as i64;
                Some(KnobValue::Int(i.clamp(min, max)))
            }
            KnobKind::Float { min, max, open_min } => {
                let x = cur.as_f64()? + steps as f64 * self.step;
                let lo = if open_min {
                    min + self.step.min(1e-3)
                } else {
                    min
                };
                // Round to the step's decimals so repeated steps do not drift.
                let x = (x.clamp(lo, max) * 1e6).round() / 1e6;
                Some(KnobValue::Float(x))
            }
            KnobKind::Bool => Some(KnobValue::Bool(!cur.as_bool()?)),
            KnobKind::Choice(names) => {
                let i = names.iter().position(|n| Some(*n) == cur.as_str())?;
                let n = names.len() as i64;
                let j = (i as i64 + steps).rem_euclid(n) as usize;
                Some(KnobValue::Text(names[j].to_string()))
            }
            KnobKind::Layers => None,
        }
    }
}

/// Every knob of every method and allocator, each once (by name), shared knobs first.
pub fn all_knobs() -> Vec<&'static Knob> {
    let mut out: Vec<&'static Knob> = Vec::new();
    let lists = std::iter::once(SHARED_KNOBS)
        .chain(METHODS.iter().map(|m| m.knobs))
        .chain(ALLOCATORS.iter().map(|a| a.knobs));
    for list in lists {
        for &k in list {
            if !out.iter().any(|o| o.name == k.name) {
                out.push(k);
            }
        }
    }
    out
}

/// The knob called `name` (JSON key or flag).
pub fn knob(name: &str) -> Option<&'static Knob> {
    all_knobs()
        .into_iter()
        .find(|k| k.name == name || k.flag == name)
}

/// Knobs that apply to `s`: the method's, then its allocator's, each once.
pub fn knobs_in_force(s: &Settings) -> Vec<&'static Knob> {
    let mut out: Vec<&'static Knob> = Vec::new();
    for &k in s
        .method
        .def()
        .knobs
        .iter()
        .chain(s.effective_allocator().def().knobs)
    {
        if !out.iter().any(|o| o.name == k.name) {
            out.push(k);
        }
    }
    out
}

/// `--method`'s help: one line per method.
pub fn method_help() -> String {
    let mut s = String::from("Eviction method:");
    for m in METHODS {
        let _ = write!(s, "\n  {:<13}{}", m.name, m.about);
        if m.needs_profile.is_some() {
            s.push_str(" (needs --profile)");
        }
    }
    s
}

/// `--allocator`'s help: one line per allocator.
pub fn allocator_help() -> String {
    let mut s = String::from("Layer-budget allocator (default: the method's own):");
    for a in ALLOCATORS {
        let _ = write!(s, "\n  {:<13}{}", a.name, a.about);
    }
    s
}

/// A knob's `--help` line: its help, who reads it, the range and the default.
pub fn knob_help(k: &Knob) -> String {
    let users: Vec<&str> = METHODS
        .iter()
        .filter(|m| m.knobs.iter().any(|x| x.name == k.name))
        .map(|m| m.name)
        .chain(
            ALLOCATORS
                .iter()
                .filter(|a| a.knobs.iter().any(|x| x.name == k.name))
                .map(|a| a.name),
        )
        .collect();
    let default = (k.default)(&Settings::default());
    format!(
        "{} [{}; used by: {}; default: {}]",
        k.help,
        k.range(),
        users.join(", "),
        default
    )
}

/// Runs `f(layer, budget)` for every layer in parallel; a layer whose budget is at least
/// the prompt keeps everything. The common shape of a per-layer method.
pub fn per_layer(input: &Input, f: impl Fn(usize, usize) -> LayerChoice + Sync) -> Picked {
    let len = input.trace.len;
    let n_kv = input.trace.dims.n_kv_heads;
    let layers = (0..input.trace.dims.n_layers)
        .into_par_iter()
        .map(|layer| {
            let b = input.budgets[layer];
            if len <= b {
                LayerChoice::keep_all(n_kv, len)
            } else {
                f(layer, b)
            }
        })
        .collect();
    Picked {
        layers,
        budgets: None,
    }
}

/// Kernel and pooling as knobs over the typed settings fields.
pub(crate) fn pooling_value(p: Pooling) -> KnobValue {
    KnobValue::Text(p.name().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eviction::Method;

    #[test]
    fn names_are_unique_and_knobs_are_consistent() {
        let mut names: Vec<&str> = METHODS.iter().map(|m| m.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), METHODS.len());
        assert_eq!(Method::ALL.len(), METHODS.len());
        for (m, d) in Method::ALL.iter().zip(METHODS) {
            assert_eq!(m.name(), d.name);
        }
        // A knob name means one knob: two knobs of the same name must be the same one.
        let all = all_knobs();
        for k in &all {
            for list in METHODS.iter().map(|m| m.knobs) {
                for x in list.iter().filter(|x| x.name == k.name) {
                    assert_eq!(
                        (x.flag, x.help),
                        (k.flag, k.help),
                        "two knobs named {}",
                        k.name
                    );
                }
            }
            // The default is valid.
            let s = Settings::default();
            k.coerce(&(k.default)(&s)).unwrap();
            assert_eq!(k.flag, k.name.replace('_', "-"));
        }
    }

    #[test]
    fn help_lists_every_method_and_knob_range() {
        let h = method_help();
        for m in METHODS {
            assert!(h.contains(m.name) && h.contains(m.about), "{h}");
        }
        let k = knob("adakv-floor").unwrap();
        let line = knob_help(k);
        assert!(line.contains("0..") || line.contains(">=0"), "{line}");
        assert!(
            line.contains("adakv") && line.contains("default: 0.2"),
            "{line}"
        );
    }

    #[test]
    fn knob_parsing_and_ranges_have_one_line_errors() {
        let floor = knob("adakv_floor").unwrap();
        assert_eq!(floor.parse("0.5").unwrap(), KnobValue::Float(0.5));
        let e = floor.parse("1.5").unwrap_err().to_string();
        assert!(
            e.contains("between 0 and 1") && e.contains("got 1.5"),
            "{e}"
        );
        let e = floor.parse("lots").unwrap_err().to_string();
        assert!(e.contains("--adakv-floor expects a number"), "{e}");
        let pooling = knob("pooling").unwrap();
        let e = pooling.parse("mean").unwrap_err().to_string();
        assert!(e.contains("avg, max"), "{e}");
    }
}
