//! `kvscope profile make`: the SRH step and the layer-error step as one resumable,
//! shardable run of work units (METHOD-MORE.md, "Fast profiling").
//!
//! The work is a fixed list of units: SRH units (one shared haystack, or one
//! single-needle trial) then layer units (one calibration prompt each). Every finished
//! unit is saved in a parts folder ([`super::parts`]); the profile is computed from
//! the saved units in plan order, so a resumed, a sharded-and-merged and an
//! uninterrupted run give the same numbers.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};

use super::credit::{retrieved, SrhTotals, TrialCredit};
use super::discover;
use super::layers::{prompt_errors, srh_uniform_settings};
use super::parts::Parts;
use super::srh::{run_trial, trial_prompt, Interrupted, TrialSpec};
use crate::haystack::needles::NEEDLES;
use crate::haystack::shared::shared_haystack;
use crate::model::{Model, Tok};
use crate::profile_format::{l1_normalise, rank_best_first, Profile, Provenance, FORMAT_VERSION};
use crate::shard::Shard;

/// The shortest profiling length (below it a haystack is mostly template).
pub const MIN_LENGTH: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// One prefill per haystack of several needles, one fork per question.
    Shared,
    /// One prefill per needle trial (the reference protocol of `profile srh`).
    Single,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Shared => "shared",
            Protocol::Single => "single",
        }
    }
}

/// Everything the measurement depends on.
#[derive(Debug, Clone, PartialEq)]
pub struct MakeConfig {
    pub protocol: Protocol,
    pub lengths: Vec<usize>,
    /// Indices into [`NEEDLES`].
    pub needles: Vec<usize>,
    /// Shared protocol: needles per haystack.
    pub per_haystack: usize,
    /// Single protocol: depths (0..=1).
    pub depths: Vec<f64>,
    pub max_new: usize,
    /// The layer step: uniform budget, window and SRHs per layer, decode steps.
    pub budget: usize,
    pub window: usize,
    pub first_k: usize,
    pub layer_max_new: usize,
    /// Calibration prompts (name, templated token ids).
    pub calibration: Vec<(String, Vec<u32>)>,
    /// Count every trial, retrieved or not. Only for tests on random tiny models, which
    /// retrieve nothing; the command line never sets it.
    pub count_every_trial: bool,
}

/// One unit of work.
#[derive(Debug, Clone, PartialEq)]
pub enum Unit {
    /// A shared haystack: `(needle, depth)` pairs at one length.
    Haystack {
        length: usize,
        variant: usize,
        needles: Vec<(usize, f64)>,
    },
    Trial(TrialSpec),
    /// Calibration prompt `i`.
    Layer(usize),
}

impl Unit {
    /// Rough cost in prefill tokens (decode steps weigh about four prefill tokens), for
    /// the progress bar's ETA.
    pub fn weight(&self, cfg: &MakeConfig) -> f64 {
        match self {
            Unit::Haystack {
                length, needles, ..
            } => (length + needles.len() * 4 * (cfg.max_new + 30)) as f64,
            Unit::Trial(t) => (t.length + 4 * cfg.max_new) as f64,
            Unit::Layer(i) => {
                (cfg.calibration.get(*i).map_or(0, |c| c.1.len()) + 4 * cfg.layer_max_new) as f64
            }
        }
    }
}

impl MakeConfig {
    /// The SRH units in their fixed order.
    pub fn srh_units(&self) -> Vec<Unit> {
        let mut v = Vec::new();
        match self.protocol {
            Protocol::Single => {
                for &length in &self.lengths {
                    for &depth in &self.depths {
                        for &needle in &self.needles {
                            v.push(Unit::Trial(TrialSpec {
                                needle,
                                length,
                                depth,
                            }));
                        }
                    }
                }
            }
            Protocol::Shared => {
                let per = self.per_haystack.max(1);
                let groups: Vec<&[usize]> = self.needles.chunks(per).collect();
                let g_count = groups.len();
                for &length in &self.lengths {
                    for (g, group) in groups.iter().enumerate() {
                        // Depths spread over the haystack, shifted per group so that
                        // the groups together visit 0..1 evenly.
                        let n = group.len();
                        let needles = group
                            .iter()
                            .enumerate()
                            .map(|(j, &needle)| {
                                let d = (j as f64 + (g as f64 + 0.5) / g_count as f64) / n as f64;
                                (needle, d.clamp(0.0, 1.0))
                            })
                            .collect();
                        v.push(Unit::Haystack {
                            length,
                            variant: group[0] * 5 + length / 256,
                            needles,
                        });
                    }
                }
            }
        }
        v
    }

    pub fn layer_units(&self) -> Vec<Unit> {
        (0..self.calibration.len()).map(Unit::Layer).collect()
    }

    /// What the parts folder is keyed by: a rerun, a shard or a merge must match it.
    pub fn settings(&self, model_sha256: &str) -> Value {
        let mut s = json!({
            "kvscope_parts": 1,
            "model_sha256": model_sha256,
            "protocol": self.protocol.name(),
            "lengths": self.lengths,
            "needles": self.needles,
            "max_new": self.max_new,
            "layers": {
                "budget": self.budget,
                "window": self.window,
                "first_k": self.first_k,
                "max_new": self.layer_max_new,
                "calibration": self.calibration.iter().map(|c| json!({"name": c.0, "tokens": c.1.len()})).collect::<Vec<_>>(),
            },
        });
        match self.protocol {
            Protocol::Shared => s["per_haystack"] = json!(self.per_haystack),
            Protocol::Single => {
                s["depths_percent"] =
                    json!(self.depths.iter().map(|d| d * 100.0).collect::<Vec<_>>())
            }
        }
        if self.count_every_trial {
            s["count_every_trial"] = json!(true);
        }
        s
    }
}

fn srh_name(i: usize) -> String {
    format!("srh-{i:05}")
}

fn layer_name(i: usize) -> String {
    format!("layers-{i:05}")
}

/// One trial as saved in a unit.
fn trial_json(needle: usize, text: &str, counted: bool, c: &TrialCredit) -> Value {
    json!({"needle": needle, "text": text, "counted": counted, "srh": c.srh, "hits": c.hits, "copy_steps": c.copy_steps})
}

fn add_trials(totals: &mut SrhTotals, unit: &Value, name: &str) -> Result<()> {
    let bad = || format!("profile unit {name} is damaged; delete it and rerun");
    for t in unit["trials"].as_array().with_context(bad)? {
        let credit = TrialCredit {
            srh: serde_json::from_value(t["srh"].clone()).with_context(bad)?,
            hits: serde_json::from_value(t["hits"].clone()).with_context(bad)?,
            copy_steps: t["copy_steps"].as_u64().with_context(bad)? as usize,
        };
        if credit.srh.len() != totals.srh.len()
            || credit
                .srh
                .iter()
                .zip(&totals.srh)
                .any(|(a, b)| a.len() != b.len())
        {
            bail!("{}", bad());
        }
        totals.add_trial(&credit, t["counted"].as_bool().with_context(bad)?);
    }
    Ok(())
}

/// Progress of a make run: `(done, total, note)` in unit weights.
pub type OnProgress<'a> = dyn FnMut(f64, f64, &str) + 'a;

/// Runs the units this process owns that are not yet in `parts`. With a `shard`, only
/// that shard's SRH units run and `Ok(None)` is returned; without, every missing unit
/// runs and the profile (provenance without the command line) is returned.
#[allow(clippy::too_many_arguments)]
pub fn make(
    model: &Model,
    tok: &Tok,
    cfg: &MakeConfig,
    model_sha256: &str,
    parts: &Parts,
    shard: Option<Shard>,
    stop: &AtomicBool,
    progress: &mut OnProgress,
) -> Result<Option<Profile>> {
    let d = model.dims();
    let srh_units = cfg.srh_units();
    if srh_units.is_empty() {
        bail!("nothing to measure: give at least one length and needle");
    }
    let layer_units = if shard.is_some() {
        Vec::new()
    } else {
        cfg.layer_units()
    };
    let mine = |i: usize| shard.is_none_or(|s| s.owns(i));
    let total: f64 = srh_units
        .iter()
        .enumerate()
        .filter(|(i, _)| mine(*i))
        .map(|(_, u)| u.weight(cfg))
        .chain(layer_units.iter().map(|u| u.weight(cfg)))
        .sum();
    let mut done = 0.0;
    let (mut trials, mut counted) = (0usize, 0usize);
    progress(done, total, "");
    for (i, unit) in srh_units.iter().enumerate() {
        if !mine(i) {
            continue;
        }
        let name = srh_name(i);
        let saved = match parts.load(&name)? {
            Some(v) => v,
            None => {
                if stop.load(Ordering::SeqCst) {
                    bail!(Interrupted);
                }
                let v = run_srh_unit(model, tok, cfg, unit)?;
                parts.save(&name, &v)?;
                v
            }
        };
        for t in saved["trials"].as_array().map_or(&[][..], |v| v) {
            trials += 1;
            counted += t["counted"].as_bool().unwrap_or(false) as usize;
        }
        done += unit.weight(cfg);
        progress(
            done,
            total,
            &format!(
                "haystack/trial {}/{}, {counted} of {trials} answered",
                i + 1,
                srh_units.len()
            ),
        );
    }
    if shard.is_some() {
        return Ok(None);
    }
    let mut totals = SrhTotals::new(d.n_layers, d.n_heads);
    for i in 0..srh_units.len() {
        let name = srh_name(i);
        let unit = parts
            .load(&name)?
            .with_context(|| format!("unit {name} is missing from {}", parts.dir.display()))?;
        add_trials(&mut totals, &unit, &name)?;
    }
    if totals.counted == 0 {
        bail!(
            "no question was answered right ({} trials), so no head can be scored; try shorter --lengths",
            totals.trials
        );
    }
    let srh_scores = totals.srh_scores();
    let mut profile = Profile {
        format_version: FORMAT_VERSION,
        model: discover::fingerprint(&model.config, model_sha256),
        srh_ranking: srh_scores.iter().map(|s| rank_best_first(s)).collect(),
        srh_scores,
        retrieval_scores: totals.retrieval_scores(),
        layer_errors: None,
        provenance: Provenance {
            command: String::new(),
            settings: Value::Null,
            trials_counted: totals.counted,
            kvscope_version: env!("CARGO_PKG_VERSION").into(),
        },
    };
    let settings = srh_uniform_settings(cfg.budget, cfg.window, cfg.first_k);
    let mut sums = vec![0.0f64; d.n_layers];
    for unit in &layer_units {
        let Unit::Layer(i) = unit else { continue };
        let name = layer_name(*i);
        let saved = match parts.load(&name)? {
            Some(v) => v,
            None => {
                if stop.load(Ordering::SeqCst) {
                    bail!(Interrupted);
                }
                let e = prompt_errors(
                    model,
                    tok,
                    &cfg.calibration[*i].1,
                    &profile,
                    &settings,
                    cfg.layer_max_new,
                )?;
                let v = json!({ "errors": e });
                parts.save(&name, &v)?;
                v
            }
        };
        let e: Vec<f64> = serde_json::from_value(saved["errors"].clone())
            .ok()
            .filter(|e: &Vec<f64>| e.len() == d.n_layers)
            .with_context(|| format!("profile unit {name} is damaged; delete it and rerun"))?;
        for (s, x) in sums.iter_mut().zip(&e) {
            *s += x;
        }
        done += unit.weight(cfg);
        progress(
            done,
            total,
            &format!("layer errors: prompt {}/{}", i + 1, layer_units.len()),
        );
    }
    if !layer_units.is_empty() {
        profile.layer_errors = Some(l1_normalise(&sums).context(
            "every layer's eviction error is zero (the calibration prompts may be shorter than the budget); use longer calibration prompts",
        )?);
    }
    let mut s = cfg.settings(model_sha256);
    s["srh"] = json!({
        "lengths": cfg.lengths,
        "trials": totals.trials,
        "copy_steps": totals.copy_steps,
        "rouge1_recall_threshold": 0.5,
    });
    s["layers"]["raw_error_sums"] = json!(sums);
    profile.provenance.settings = s;
    Ok(Some(profile))
}

fn run_srh_unit(model: &Model, tok: &Tok, cfg: &MakeConfig, unit: &Unit) -> Result<Value> {
    let count = |answer: &str, text: &str| cfg.count_every_trial || retrieved(answer, text);
    let trials: Vec<Value> = match unit {
        Unit::Haystack {
            length,
            variant,
            needles,
        } => {
            let list: Vec<_> = needles
                .iter()
                .map(|&(n, _)| {
                    NEEDLES
                        .get(n)
                        .map(|x| (n, *x))
                        .with_context(|| format!("there is no needle {n}"))
                })
                .collect::<Result<_>>()?;
            let depths: Vec<f64> = needles.iter().map(|x| x.1).collect();
            let h = shared_haystack(tok, &list, &depths, *length, *variant)?;
            super::shared::run_haystack(model, tok, &h, cfg.max_new)?
                .iter()
                .zip(&list)
                .map(|(o, (_, n))| {
                    trial_json(o.needle, &o.text, count(n.answer, &o.text), &o.credit)
                })
                .collect()
        }
        Unit::Trial(spec) => {
            let prompt = trial_prompt(tok, spec)?;
            let o = run_trial(model, tok, *spec, &prompt, cfg.max_new)?;
            vec![trial_json(
                spec.needle,
                &o.text,
                count(prompt.answer, &o.text),
                &o.credit,
            )]
        }
        Unit::Layer(_) => bail!("a layer unit is not an SRH unit"),
    };
    Ok(json!({ "trials": trials }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_units_visit_every_needle_once_per_length_at_spread_depths() {
        let cfg = MakeConfig {
            protocol: Protocol::Shared,
            lengths: vec![1024, 2048],
            needles: (0..12).collect(),
            per_haystack: 6,
            depths: vec![],
            max_new: 24,
            budget: 64,
            window: 8,
            first_k: 4,
            layer_max_new: 32,
            calibration: vec![],
            count_every_trial: false,
        };
        let units = cfg.srh_units();
        assert_eq!(units.len(), 4);
        let mut depths = Vec::new();
        for u in &units[..2] {
            let Unit::Haystack {
                length, needles, ..
            } = u
            else {
                panic!()
            };
            assert_eq!(*length, 1024);
            depths.extend(needles.iter().map(|x| x.1));
        }
        depths.sort_by(f64::total_cmp);
        // 12 distinct depths, evenly 1/12 apart.
        for w in depths.windows(2) {
            assert!((w[1] - w[0] - 1.0 / 12.0).abs() < 1e-9, "{depths:?}");
        }
        assert!(depths[0] > 0.0 && depths[11] < 1.0);
    }
}
