//! The method and allocator registries: the one place that lists what kvscope can run.
//!
//! A selection method is a [`MethodDef`] (name, one-line description, knobs, default
//! allocator, profile need, and the selection as a plain function), a layer-budget
//! allocator an [`AllocatorDef`]. Everything that lists methods or knobs (command-line
//! flags and `--help`, validation, the inspector's method cycle and knob keys, report
//! `settings`, `eval --methods all`) reads [`METHODS`], [`ALLOCATORS`] and the knobs
//! they name. Adding a method = one file defining a `MethodDef` + one line in
//! [`METHODS`].

use std::fmt::Write as _;

use super::types::{Allocator, AllocatorDef, Knob, Method, MethodDef, Settings};

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

impl Method {
    /// Every registered method, in registry order.
    pub const ALL: [Method; METHODS.len()] = {
        let mut out = [Method::of(METHODS[0]); METHODS.len()];
        let mut i = 0;
        while i < METHODS.len() {
            out[i] = Method::of(METHODS[i]);
            i += 1;
        }
        out
    };

    /// The registered method called `name` (exact).
    pub fn named(name: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.name() == name)
    }
}

impl Allocator {
    /// Every registered allocator, in registry order.
    pub const ALL: [Allocator; ALLOCATORS.len()] = {
        let mut out = [Allocator::of(ALLOCATORS[0]); ALLOCATORS.len()];
        let mut i = 0;
        while i < ALLOCATORS.len() {
            out[i] = Allocator::of(ALLOCATORS[i]);
            i += 1;
        }
        out
    };
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
    // A knob no method or allocator lists applies to every selection
    // (`evict_sliding`: the sliding-window post-pass after any method).
    let users = if users.is_empty() {
        "every method".to_string()
    } else {
        users.join(", ")
    };
    let default = (k.default)(&Settings::default());
    format!(
        "{} [{}; used by: {users}; default: {}]",
        k.help,
        k.range(),
        default
    )
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
        // A knob of the post-pass names no method: it says so instead of an empty list.
        let line = knob_help(knob("evict-sliding").unwrap());
        assert!(line.contains("used by: every method;"), "{line}");
    }

    #[test]
    fn knob_parsing_and_ranges_have_one_line_errors() {
        let floor = knob("adakv_floor").unwrap();
        assert_eq!(
            floor.parse("0.5").unwrap(),
            crate::eviction::KnobValue::Float(0.5)
        );
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
