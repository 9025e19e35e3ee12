//! `P` in the inspector: `kvscope profile make` for the open model, on a thread of its
//! own beside the worker (the same library call as the command: [`make::make`]), so the
//! other methods stay usable while it runs. Finished units are kept in `OUT.parts/` and
//! the profile is written atomically at the end, to where the next open looks for it
//! ([`auto::default_out`]); a cancelled run leaves no profile, and `P` again continues
//! from the kept units.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use super::msg::{FromWorker, Outbox, ProfileProgress};
use crate::model::Loaded;
use crate::profile::make::{self, MakeConfig};
use crate::profile::parts::Parts;
use crate::profile::srh::Interrupted;
use crate::profile::{auto, discover};

/// How the inspector's profile run is set up; the defaults are the command's.
#[derive(Debug, Clone, Default)]
pub struct MakeOptions {
    /// Calibration prompts of the layer step (default: `sample-prompts/calibration`).
    pub calibration: Option<PathBuf>,
    /// Count every trial, answered right or not: only for tests on random tiny models,
    /// which answer nothing ([`MakeConfig::count_every_trial`]); the inspector never
    /// sets it.
    pub count_every_trial: bool,
}

/// A run, planned and checked: what [`start`] hands the thread.
struct Plan {
    cfg: MakeConfig,
    sha: String,
    out: PathBuf,
    parts: Parts,
}

/// Where the profile goes: `profile make`'s default file, unless a file is already
/// there (another model file of the same name: it is not ours to replace), then the
/// same name with the model's sha256 prefix.
fn out_path(model_path: &Path, sha: &str) -> Result<PathBuf> {
    let first = auto::default_out(model_path)?;
    if !first.exists() {
        return Ok(first);
    }
    let stem = first
        .file_stem()
        .map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
    let second = first.with_file_name(format!("{stem}-{}.json", &sha[..sha.len().min(12)]));
    if second.exists() {
        bail!(
            "{} and {} exist already and neither is a usable profile of this model; move them away to make one",
            first.display(),
            second.display()
        );
    }
    Ok(second)
}

fn plan(loaded: &Loaded, model_path: &Path, prompt_len: usize, opts: &MakeOptions) -> Result<Plan> {
    let context = loaded.model.config.context_length;
    let lengths = auto::lengths_for_prompt(prompt_len, context, auto::MAX_NEW)?;
    let dir = opts
        .calibration
        .clone()
        .unwrap_or_else(|| super::files::sample_dir().join("calibration"));
    let calibration = auto::calibration_prompts(&dir, &loaded.tok, context, auto::LAYER_MAX_NEW)?;
    let mut cfg = auto::standard_config(lengths, calibration);
    cfg.count_every_trial = opts.count_every_trial;
    let sha = discover::model_sha256(model_path)
        .with_context(|| format!("cannot fingerprint {}", model_path.display()))?;
    let out = out_path(model_path, &sha)?;
    crate::output::check_target(&out, "the profile")?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create folder {}", dir.display()))?;
    }
    let parts = Parts::open(&auto::parts_dir(&out), &cfg.settings(&sha))?;
    Ok(Plan {
        cfg,
        sha,
        out,
        parts,
    })
}

/// Plans the run (lengths from `prompt_len`) and starts its thread; a plan that cannot
/// run (context too short, no calibration prompts, unwritable cache) is one line back.
pub fn start(
    loaded: Arc<Loaded>,
    model_path: &Path,
    prompt_len: usize,
    opts: &MakeOptions,
    stop: Arc<AtomicBool>,
    out: Outbox,
) {
    let p = match plan(&loaded, model_path, prompt_len, opts) {
        Ok(p) => p,
        Err(e) => {
            out(FromWorker::ProfileStopped {
                line: format!("profile make cannot start: {e:#}"),
                error: true,
            });
            return;
        }
    };
    let thread = {
        let out = out.clone();
        std::thread::Builder::new()
            .name("kvscope-profile".into())
            .spawn(move || {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    run(&loaded, &p, &stop, &out)
                }));
                let msg = match r {
                    Ok(m) => m,
                    Err(_) => FromWorker::ProfileStopped {
                        line: "profile make crashed; the finished units are kept".into(),
                        error: true,
                    },
                };
                out(msg);
            })
    };
    if let Err(e) = thread {
        out(FromWorker::ProfileStopped {
            line: format!("cannot start the profile thread: {e}"),
            error: true,
        });
    }
}

/// Runs the plan to its end; the last message to send.
fn run(loaded: &Loaded, p: &Plan, stop: &AtomicBool, out: &Outbox) -> FromWorker {
    let t0 = Instant::now();
    // Units finished by an earlier run load at once: the ETA counts from the first
    // progress, not from zero.
    let mut base: Option<(f64, Instant)> = None;
    let r = make::make(
        &loaded.model,
        &loaded.tok,
        &p.cfg,
        &p.sha,
        &p.parts,
        None,
        stop,
        &mut |done, total, note| {
            let (d0, t) = *base.get_or_insert((done, Instant::now()));
            let rate = (done - d0) / t.elapsed().as_secs_f64().max(1e-9);
            let eta_s = (done > d0 && rate > 0.0).then(|| (total - done).max(0.0) / rate);
            out(FromWorker::ProfileProgress(ProfileProgress {
                done,
                total,
                eta_s,
                note: note.to_string(),
            }));
        },
    );
    let lengths = p
        .cfg
        .lengths
        .iter()
        .map(|l| l.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let kept = || {
        format!(
            "the finished units are kept in {} and P continues from them",
            p.parts.dir.display()
        )
    };
    match r {
        Ok(Some(mut profile)) => {
            profile.provenance.command =
                format!("kvscope inspector (P): profile make --lengths {lengths}");
            profile.provenance.settings["seconds"] = t0.elapsed().as_secs().into();
            if let Err(e) = profile.save(&p.out) {
                return FromWorker::ProfileStopped {
                    line: format!("profile measured but not written: {e:#}; {}", kept()),
                    error: true,
                };
            }
            // The profile is whole on disk; the units are no longer needed.
            let _ = p.parts.remove();
            let note = format!(
                "profile made at lengths {lengths} ({} questions answered right) in {} s, written to {}: compresskv and the SRH marks are available",
                profile.provenance.trials_counted,
                t0.elapsed().as_secs(),
                p.out.display()
            );
            FromWorker::ProfileMade {
                profile: Arc::new(profile),
                path: p.out.clone(),
                note,
            }
        }
        Ok(None) => FromWorker::ProfileStopped {
            line: "profile make returned no profile".into(),
            error: true,
        },
        Err(e) if e.is::<Interrupted>() => FromWorker::ProfileStopped {
            line: format!("profile make cancelled: no profile written; {}", kept()),
            error: false,
        },
        Err(e) => FromWorker::ProfileStopped {
            line: format!("profile make failed: {e:#}"),
            error: true,
        },
    }
}
