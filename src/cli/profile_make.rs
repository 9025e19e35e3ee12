//! `kvscope profile make` and `kvscope profile merge`: a whole profile in one resumable,
//! shardable run (METHOD-MORE.md, "Fast profiling").

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::Value;
use std::path::{Path, PathBuf};

use super::profile_common::{
    command_line, default_out, ensure_parent, parse_depths, parse_lengths, LayerStepArgs,
};
use super::progress::{fmt_duration, stop_flag, Progress};
use super::ModelArgs;
use crate::haystack::needles::{NEEDLES, PROFILE_NEEDLES};
use crate::model::Loaded;
use crate::profile::make::{self, MakeConfig, Protocol, MIN_LENGTH};
use crate::profile::parts::{check_same, check_shards_same, Parts};
use crate::profile::srh::Interrupted;
use crate::profile::{discover, layers};
use crate::shard::Shard;

#[derive(Args, Debug)]
pub struct MakeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt lengths in tokens, comma-separated (64 up to the model's context).
    #[arg(long, default_value = "1024,2048")]
    pub lengths: String,
    /// shared: one prefill per haystack of several needles, each question on a fork of
    /// the cache (fast); single: one prefill per needle (the reference, `profile srh`).
    #[arg(long, default_value = "shared", value_parser = ["shared", "single"])]
    pub protocol: String,
    /// Use the first N needles (of the profiling set).
    #[arg(long, default_value_t = PROFILE_NEEDLES)]
    pub needles: usize,
    /// Shared protocol: needles per haystack.
    #[arg(long = "per-haystack", default_value_t = 6)]
    pub per_haystack: usize,
    /// Single protocol: needle depths in percent, comma-separated.
    #[arg(long, default_value = "0,33,67,100")]
    pub depths: String,
    /// Tokens to generate per question.
    #[arg(long = "max-new", default_value_t = 24)]
    pub max_new: usize,
    #[command(flatten)]
    pub layer: LayerStepArgs,
    /// Layer step: decode steps per calibration prompt.
    #[arg(long = "layer-max-new", default_value_t = 32)]
    pub layer_max_new: usize,
    /// The profile to write (default: the cache's profiles/ folder, named after the model
    /// file). Finished units are kept in FILE.parts/ until it is written. With --shard:
    /// the folder this shard's units go to.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Run only shard K of N (0 <= K < N) of the SRH step, or auto/N to read K from
    /// SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX; combine with `profile merge`.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<String>,
    /// Count every question, answered right or not (a random tiny model answers none).
    /// Only for tests of the command itself; recorded in the profile's settings.
    #[arg(long = "count-every-trial", hide = true)]
    pub count_every_trial: bool,
}

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// Parts folders written by `profile make --shard`.
    #[arg(required = true)]
    pub dirs: Vec<PathBuf>,
    /// The model the shards measured (runs the layer step, which needs every SRH unit).
    #[command(flatten)]
    pub model: ModelArgs,
    /// The profile to write.
    #[arg(long, value_name = "FILE", required = true)]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// Head-ranking file: JSON object, layer index -> every query head, best first.
    #[arg(long, value_name = "FILE")]
    pub heads: PathBuf,
    /// Layer-score file: one JSON object whose "avg_score" lists one score per layer.
    #[arg(long = "layer-scores", value_name = "FILE")]
    pub layer_scores: PathBuf,
    /// The model the files were made for (its shape is checked against them).
    #[command(flatten)]
    pub model: ModelArgs,
    /// The profile to write.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

pub fn run_import(a: &ImportArgs) -> Result<()> {
    check_out_file(&a.out)?;
    for input in [&a.heads, &a.layer_scores] {
        if same_file(input, &a.out) {
            bail!(
                "--out {} is also an input; choose another path",
                a.out.display()
            );
        }
    }
    let heads = crate::input::read_text(&a.heads, "head file", crate::input::MAX_PROFILE_BYTES)?;
    let scores = crate::input::read_text(
        &a.layer_scores,
        "layer-score file",
        crate::input::MAX_PROFILE_BYTES,
    )?;
    let model_path = super::resolve_model_path(a.model.model.as_deref())?;
    let model = crate::model::load_model(&model_path)?;
    let dims = model.config.dims();
    let sha = discover::model_sha256(&model_path)?;
    let profile = crate::profile::import::import(
        &heads,
        &scores,
        discover::fingerprint(&model.config, &sha),
        &dims,
        serde_json::json!({
            "heads": a.heads.display().to_string(),
            "layer_scores": a.layer_scores.display().to_string(),
        }),
        command_line(),
    )
    .with_context(|| {
        format!(
            "{} / {} do not fit {}",
            a.heads.display(),
            a.layer_scores.display(),
            model_path.display()
        )
    })?;
    ensure_parent(&a.out)?;
    profile.save(&a.out)?;
    eprintln!(
        "kvscope: imported {} layers x {} heads; wrote {}",
        dims.n_layers,
        dims.n_heads,
        a.out.display()
    );
    Ok(())
}

/// Refuses lengths a profile cannot be measured at, in one line.
pub fn check_lengths(lengths: &[usize], context: usize, max_new: usize) -> Result<()> {
    // Room for the question and template after the haystack's target length.
    let longest = context.saturating_sub(max_new + 64);
    for &l in lengths {
        if l < MIN_LENGTH {
            bail!("--lengths: {l} is below the shortest profiling length, {MIN_LENGTH} tokens");
        }
        if l > longest {
            bail!(
                "--lengths: {l} is beyond this model's context of {context} tokens (with --max-new {max_new} and the question, the longest is {longest})"
            );
        }
    }
    Ok(())
}

fn calibration(dir: &Path, loaded: &Loaded, max_new: usize) -> Result<Vec<(String, Vec<u32>)>> {
    crate::profile::auto::calibration_prompts(
        dir,
        &loaded.tok,
        loaded.model.config.context_length,
        max_new,
    )
}

/// The target must be a regular file or absent: never a folder, FIFO or device (the
/// shared output rules, [`crate::output`]).
fn check_out_file(out: &Path) -> Result<()> {
    crate::output::check_target(out, "--out").map(|_| ())
}

/// Whether two paths name one existing file (device and inode).
fn same_file(a: &Path, b: &Path) -> bool {
    crate::output::same_file(a, b)
}

fn parts_dir(out: &Path) -> PathBuf {
    crate::profile::auto::parts_dir(out)
}

pub fn run_make(a: &MakeArgs) -> Result<()> {
    super::init_threads(a.model.threads)?;
    let lengths = parse_lengths(&a.lengths)?;
    if a.needles == 0 || a.needles > NEEDLES.len() {
        bail!(
            "--needles must be 1..={} (got {})",
            NEEDLES.len(),
            a.needles
        );
    }
    if a.max_new == 0 || a.per_haystack == 0 {
        bail!("--max-new and --per-haystack must be at least 1");
    }
    let protocol = if a.protocol == "single" {
        Protocol::Single
    } else {
        Protocol::Shared
    };
    let depths = parse_depths(&a.depths)?;
    let shard = a
        .shard
        .as_deref()
        .map(|s| Shard::parse(s, &|k| std::env::var(k).ok()))
        .transpose()?;
    if shard.is_some() && a.out.is_none() {
        bail!("--shard needs --out FOLDER: where this shard's units go");
    }
    let model_path = super::resolve_model_path(a.model.model.as_deref())?;
    let loaded = crate::model::load(&model_path)?;
    let mcfg = &loaded.model.config;
    check_lengths(&lengths, mcfg.context_length, a.max_new)?;
    let settings = layers::srh_uniform_settings(a.layer.budget, a.layer.window, a.layer.first_k);
    settings.validate(&mcfg.dims())?;
    let cfg = MakeConfig {
        protocol,
        lengths,
        needles: (0..a.needles).collect(),
        per_haystack: a.per_haystack,
        depths,
        max_new: a.max_new,
        budget: a.layer.budget,
        window: a.layer.window,
        first_k: a.layer.first_k,
        layer_max_new: a.layer_max_new,
        calibration: calibration(&a.layer.calibration, &loaded, a.layer_max_new)?,
        count_every_trial: a.count_every_trial,
    };
    let sha = discover::model_sha256(&model_path)?;
    let (out, parts_at) = match (&a.out, shard) {
        (Some(dir), Some(_)) => (None, dir.clone()),
        (Some(f), None) => (Some(f.clone()), parts_dir(f)),
        (None, _) => {
            let f = default_out(&model_path)?;
            let p = parts_dir(&f);
            (Some(f), p)
        }
    };
    if let Some(o) = &out {
        check_out_file(o)?;
        ensure_parent(o)?;
    }
    let parts = Parts::open(&parts_at, &cfg.settings(&sha))?;
    let resumed = parts.names()?.len();
    eprintln!(
        "kvscope: profile of {} ({} protocol, lengths {}): {} SRH units{}{}",
        mcfg.name,
        protocol.name(),
        a.lengths,
        cfg.srh_units().len(),
        shard.map_or(String::new(), |s| format!(
            ", shard {}/{}",
            s.index, s.count
        )),
        if resumed > 0 {
            format!(
                ", continuing: {resumed} finished units kept in {}",
                parts_at.display()
            )
        } else {
            String::new()
        }
    );
    finish(&loaded, &cfg, &sha, &parts, shard, out.as_deref())
}

/// Runs the missing units and writes the profile (or, for a shard, stops after its
/// units).
fn finish(
    loaded: &Loaded,
    cfg: &MakeConfig,
    sha: &str,
    parts: &Parts,
    shard: Option<Shard>,
    out: Option<&Path>,
) -> Result<()> {
    let stop = stop_flag();
    let mut bar = Progress::new("profile", 1.0);
    let mut started = false;
    let result = make::make(
        &loaded.model,
        &loaded.tok,
        cfg,
        sha,
        parts,
        shard,
        &stop,
        &mut |done, total, note| {
            if !started {
                bar = Progress::new("profile", total);
                started = true;
            }
            bar.update(done, note);
        },
    );
    let took = bar.finish();
    let profile = match result {
        Ok(p) => p,
        Err(e) if e.is::<Interrupted>() => bail!(
            "stopped; the finished units are kept in {} and the same command continues from them",
            parts.dir.display()
        ),
        Err(e) => return Err(e),
    };
    let Some(mut profile) = profile else {
        eprintln!(
            "kvscope: shard done in {}; its units are in {} (combine the shards with `kvscope profile merge`)",
            fmt_duration(took),
            parts.dir.display()
        );
        return Ok(());
    };
    let out = out.context("no output path")?;
    profile.provenance.command = command_line();
    profile.provenance.settings["seconds"] = Value::from(took.as_secs());
    profile.save(out)?;
    parts.remove()?;
    eprintln!(
        "kvscope: {} of {} questions answered right and counted; took {}; wrote {}",
        profile.provenance.trials_counted,
        profile.provenance.settings["srh"]["trials"],
        fmt_duration(took),
        out.display()
    );
    Ok(())
}

/// Rebuilds the run's settings from a parts folder's `settings.json`.
fn config_from_settings(v: &Value, loaded: &Loaded) -> Result<MakeConfig> {
    let bad = || "the parts folder's settings.json is damaged".to_string();
    let usizes =
        |k: &str| -> Result<Vec<usize>> { serde_json::from_value(v[k].clone()).with_context(bad) };
    let num = |x: &Value| x.as_u64().map(|n| n as usize).with_context(bad);
    let l = &v["layers"];
    let protocol = match v["protocol"].as_str() {
        Some("single") => Protocol::Single,
        Some("shared") => Protocol::Shared,
        _ => bail!("{}", bad()),
    };
    let depths: Vec<f64> = match protocol {
        Protocol::Single => serde_json::from_value::<Vec<f64>>(v["depths_percent"].clone())
            .with_context(bad)?
            .into_iter()
            .map(|d| d / 100.0)
            .collect(),
        Protocol::Shared => Vec::new(),
    };
    let layer_max_new = num(&l["max_new"])?;
    let names: Vec<String> = l["calibration"]
        .as_array()
        .with_context(bad)?
        .iter()
        .map(|c| c["name"].as_str().map(str::to_string).with_context(bad))
        .collect::<Result<_>>()?;
    let mut calibration = Vec::new();
    for n in names {
        let text = crate::input::read_prompt(Path::new(&n))
            .with_context(|| format!("the layer step reads the calibration prompt {n}"))?;
        let ids = loaded
            .tok
            .encode(&loaded.tok.apply_template(&text, false))?;
        calibration.push((n, ids));
    }
    Ok(MakeConfig {
        protocol,
        lengths: usizes("lengths")?,
        needles: usizes("needles")?,
        per_haystack: v.get("per_haystack").map_or(Ok(1), num)?,
        depths,
        max_new: num(&v["max_new"])?,
        budget: num(&l["budget"])?,
        window: num(&l["window"])?,
        first_k: num(&l["first_k"])?,
        layer_max_new,
        calibration,
        count_every_trial: v["count_every_trial"].as_bool().unwrap_or(false),
    })
}

pub fn run_merge(a: &MergeArgs) -> Result<()> {
    super::init_threads(a.model.threads)?;
    check_out_file(&a.out)?;
    let mut opened = Vec::new();
    for d in &a.dirs {
        opened.push(Parts::open_existing(d)?);
    }
    let settings = opened[0].1.clone();
    for (p, s) in &opened[1..] {
        check_shards_same(&opened[0].0.dir, &settings, &p.dir, s)?;
    }
    let model_path = super::resolve_model_path(a.model.model.as_deref())?;
    let sha = discover::model_sha256(&model_path)?;
    if settings["model_sha256"].as_str() != Some(sha.as_str()) {
        bail!(
            "the shards measured another model file (sha256 {}); pass that model with --model",
            settings["model_sha256"]
        );
    }
    let loaded = crate::model::load(&model_path)?;
    let cfg = config_from_settings(&settings, &loaded)?;
    check_same(&opened[0].0.dir, &settings, &cfg.settings(&sha))?;
    // Every SRH unit must come from some shard before anything is written.
    let n = cfg.srh_units().len();
    let mut units: Vec<Option<(String, Value)>> = vec![None; n];
    for (p, _) in &opened {
        for name in p.names()? {
            let i = name
                .strip_prefix("srh-")
                .and_then(|x| x.parse::<usize>().ok());
            if let Some(i) = i.filter(|&i| i < n) {
                if units[i].is_none() {
                    let v = p.load(&name)?.context("a unit vanished while merging")?;
                    units[i] = Some((name, v));
                }
            }
        }
    }
    if let Some(missing) = units.iter().position(Option::is_none) {
        bail!(
            "SRH unit {missing} of {n} is in none of the folders given: was every shard run and every folder named?"
        );
    }
    ensure_parent(&a.out)?;
    let parts = Parts::open(&parts_dir(&a.out), &settings)?;
    for (name, v) in units.into_iter().flatten() {
        parts.save(&name, &v)?;
    }
    eprintln!(
        "kvscope: merged {n} SRH units from {} folders; measuring the layer step",
        opened.len()
    );
    finish(&loaded, &cfg, &sha, &parts, None, Some(&a.out))
}
