//! Does a profile matter? compresskv with the profile against compresskv with random
//! SRHs (the same profile with each layer's ranking shuffled) and against compresskv with
//! uniform layer budgets, at the same total budget, on needle prompts. snapkv is shown
//! as a reference. Each prompt is one [`Session`] (prefill and full-cache decode once);
//! every variant is applied to it, as `run` and `eval` apply settings.

use anyhow::{bail, Result};
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use super::credit::retrieved;
use super::srh::{trial_prompt, Interrupted, TrialSpec};
use crate::eviction::{Allocator, Settings};
use crate::model::Loaded;
use crate::prefill_cache::PrefillCache;
use crate::profile_format::Profile;
use crate::session::Session;

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub needles: Vec<usize>,
    pub lengths: Vec<usize>,
    pub depths: Vec<f64>,
    pub budgets: Vec<usize>,
    pub windows: Vec<usize>,
    pub seeds: Vec<u64>,
    pub max_new: usize,
}

impl Plan {
    pub fn prompts(&self) -> Vec<TrialSpec> {
        let mut v = Vec::new();
        for &length in &self.lengths {
            for &depth in &self.depths {
                for &needle in &self.needles {
                    v.push(TrialSpec {
                        needle,
                        length,
                        depth,
                    });
                }
            }
        }
        v
    }
}

/// One row of the result table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub variant: String,
    pub budget: usize,
    pub window: usize,
    /// Prompts whose answer the output retrieved (ROUGE-1 recall > 0.5).
    pub correct: usize,
    /// Summed token agreement with the full-cache output.
    pub agreement: f64,
    pub runs: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub prompts: usize,
    pub full_correct: usize,
    pub rows: Vec<Row>,
    /// Prompts whose prefill (and full-cache generation) the prefill cache gave.
    pub cache_hits: usize,
    /// The prefill cache's notices (a damaged entry, a folder that refused a write).
    pub cache_notices: Vec<String>,
}

/// `profile` with every layer's SRH ranking shuffled (Fisher-Yates, seeded), keeping its
/// layer errors, so only the choice of heads differs.
pub fn shuffled(profile: &Profile, seed: u64) -> Profile {
    let mut p = profile.clone();
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    for r in &mut p.srh_ranking {
        for i in (1..r.len()).rev() {
            let j = (next() % (i as u64 + 1)) as usize;
            r.swap(i, j);
        }
    }
    p
}

struct Variant {
    name: String,
    settings: Settings,
    profile: Option<Profile>,
}

fn variants(profile: &Profile, budget: usize, window: usize, seeds: &[u64]) -> Vec<Variant> {
    let base = Settings {
        method: crate::eviction::compresskv::METHOD,
        budget,
        window,
        ..Settings::default()
    };
    let mut v = vec![Variant {
        name: "compresskv, profile".into(),
        settings: base.clone(),
        profile: Some(profile.clone()),
    }];
    for &s in seeds {
        v.push(Variant {
            name: format!("compresskv, random SRHs (seed {s})"),
            settings: base.clone(),
            profile: Some(shuffled(profile, s)),
        });
    }
    v.push(Variant {
        name: "compresskv, profile SRHs, uniform budgets".into(),
        settings: Settings {
            allocator: Some(Allocator::Uniform),
            ..base.clone()
        },
        profile: Some(profile.clone()),
    });
    v.push(Variant {
        name: "snapkv (reference)".into(),
        settings: Settings {
            method: crate::eviction::snapkv::METHOD,
            ..base
        },
        profile: None,
    });
    v
}

/// Runs the plan, each prompt's prefill read from and stored in `cache` when given (as
/// `run` and `eval` do: the needle prompts are the same on every run of a plan).
/// `progress(done, total)` after each prompt; `stop` between prompts.
pub fn run(
    loaded: &Loaded,
    profile: &Profile,
    plan: &Plan,
    cache: Option<&PrefillCache>,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Outcome> {
    let (model, tok) = (&loaded.model, &loaded.tok);
    let specs = plan.prompts();
    if specs.is_empty() {
        bail!("nothing to compare: give needles, lengths and depths");
    }
    if profile.layer_errors.is_none() {
        // compresskv's error-aware budgets read them; without them the "profile" rows
        // would quietly use uniform budgets.
        bail!(
            "the profile has no layer errors, which compresskv's error-aware budgets need; add them with `kvscope profile layers --profile FILE`"
        );
    }
    let mut rows: Vec<Row> = Vec::new();
    let mut full_correct = 0;
    let (mut cache_hits, mut cache_notices) = (0, Vec::new());
    for (i, spec) in specs.iter().enumerate() {
        if stop.load(Ordering::SeqCst) {
            bail!(Interrupted);
        }
        let prompt = trial_prompt(tok, spec)?;
        let mut session = Session::from_ids_cached(
            loaded,
            cache,
            prompt.text,
            prompt.ids,
            plan.max_new,
            None,
            &mut |_, _| {},
        )?;
        if let Some(r) = &session.prefill_cache {
            cache_hits += r.hit as usize;
            cache_notices.extend(r.notice.clone());
        }
        full_correct += retrieved(prompt.answer, &session.full.text) as usize;
        for &budget in &plan.budgets {
            for &window in &plan.windows {
                for v in variants(profile, budget, window, &plan.seeds) {
                    // Each variant brings its own profile (shuffled rankings, or none).
                    session.profile = v.profile;
                    let c = session.apply(model, tok, v.settings)?;
                    let ok = retrieved(prompt.answer, &c.generation.text);
                    let agree = c.agreement.token_match;
                    let row = match rows
                        .iter_mut()
                        .find(|r| r.variant == v.name && r.budget == budget && r.window == window)
                    {
                        Some(r) => r,
                        None => {
                            rows.push(Row {
                                variant: v.name.clone(),
                                budget,
                                window,
                                correct: 0,
                                agreement: 0.0,
                                runs: 0,
                            });
                            rows.last_mut().expect("just pushed")
                        }
                    };
                    row.correct += ok as usize;
                    row.agreement += agree;
                    row.runs += 1;
                }
            }
        }
        progress(i + 1, specs.len());
    }
    Ok(Outcome {
        prompts: specs.len(),
        full_correct,
        rows,
        cache_hits,
        cache_notices,
    })
}

/// The outcome as a markdown table; random-SRH seeds are also averaged into one row.
pub fn markdown(o: &Outcome) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "full cache: {}/{} prompts answered\n",
        o.full_correct, o.prompts
    );
    let _ = writeln!(
        s,
        "| budget | window | variant | accuracy | agreement with full |\n|---:|---:|---|---:|---:|"
    );
    let mut keys: Vec<(usize, usize)> = o.rows.iter().map(|r| (r.budget, r.window)).collect();
    keys.dedup();
    for (b, w) in keys {
        let group: Vec<&Row> = o
            .rows
            .iter()
            .filter(|r| r.budget == b && r.window == w)
            .collect();
        let random: Vec<&&Row> = group
            .iter()
            .filter(|r| r.variant.contains("random SRHs"))
            .collect();
        for r in &group {
            let _ = writeln!(
                s,
                "| {b} | {w} | {} | {}/{} | {:.2} |",
                r.variant,
                r.correct,
                r.runs,
                r.agreement / r.runs.max(1) as f64
            );
        }
        if random.len() > 1 {
            let runs: usize = random.iter().map(|r| r.runs).sum();
            let correct: usize = random.iter().map(|r| r.correct).sum();
            let agree: f64 = random.iter().map(|r| r.agreement).sum();
            let _ = writeln!(
                s,
                "| {b} | {w} | compresskv, random SRHs (mean of {} seeds) | {:.1}/{} | {:.2} |",
                random.len(),
                correct as f64 / random.len() as f64,
                runs / random.len(),
                agree / runs.max(1) as f64
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile_format::{Fingerprint, Provenance, FORMAT_VERSION};

    #[test]
    fn shuffled_rankings_are_permutations_and_seeded() {
        let p = Profile {
            format_version: FORMAT_VERSION,
            model: Fingerprint {
                arch: "llama".into(),
                n_layers: 2,
                n_heads: 9,
                n_kv_heads: 3,
                head_dim: 4,
                sha256: "0".repeat(64),
            },
            srh_scores: vec![vec![0.0; 9]; 2],
            srh_ranking: vec![(0..9).collect(); 2],
            retrieval_scores: vec![vec![0.0; 9]; 2],
            layer_errors: Some(vec![0.5, 0.5]),
            provenance: Provenance {
                command: String::new(),
                settings: serde_json::Value::Null,
                trials_counted: 1,
                kvscope_version: String::new(),
            },
        };
        let a = shuffled(&p, 1);
        assert_eq!(a, shuffled(&p, 1));
        assert_ne!(a.srh_ranking, p.srh_ranking);
        assert_ne!(a.srh_ranking, shuffled(&p, 2).srh_ranking);
        let dims = crate::trace::Dims {
            n_layers: 2,
            n_heads: 9,
            n_kv_heads: 3,
            head_dim: 4,
        };
        a.validate(&dims, None).unwrap();
        assert_eq!(a.layer_errors, p.layer_errors);
    }
}
