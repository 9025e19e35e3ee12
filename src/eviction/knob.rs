//! What a knob does: read and set its value in settings, parse command-line text, check
//! the range, describe it, step it in the inspector.

use anyhow::{bail, Result};

use super::types::{Knob, KnobKind, KnobValue, Settings};
use crate::trace::Dims;

impl Knob {
    /// A number knob's value in force (0 for a value that is not a number).
    pub fn f64(&self, s: &Settings) -> f64 {
        self.get(s).as_f64().unwrap_or(0.0)
    }

    /// A flag knob's value in force.
    pub fn flag(&self, s: &Settings) -> bool {
        self.get(s).as_bool().unwrap_or(false)
    }

    /// The value in force: the setting, or the default when unset.
    pub fn get(&self, s: &Settings) -> KnobValue {
        (self.field.get)(s).unwrap_or_else(|| (self.default)(s))
    }

    /// Sets the knob after checking the value's kind and range (not the model-dependent
    /// check, which needs dims).
    pub fn set(&self, s: &mut Settings, v: KnobValue) -> Result<()> {
        let v = self.coerce(&v)?;
        (self.field.set)(s, &v);
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
