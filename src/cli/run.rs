//! `kvscope run`: one headless run of the full and the compressed cache.

use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::time::Instant;

use super::{EvictionArgs, ModelArgs, PromptArgs};
use crate::eviction::Allocator;
use crate::model::PromptOptions;
use crate::profile::discover;
use crate::report::{Provenance, Report, SettingsPart};
use crate::session::Session;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Prompt text file.
    pub prompt: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub eviction: EvictionArgs,
    /// Tokens to generate (greedy).
    #[arg(long = "max-new", default_value_t = 32, allow_negative_numbers = true, value_parser = super::parse_count)]
    pub max_new: usize,
    #[command(flatten)]
    pub prompt_opts: PromptArgs,
    #[command(flatten)]
    pub cache: super::CacheArgs,
    /// Print the JSON report instead of text.
    #[arg(long)]
    pub json: bool,
    /// Rerun a saved report (`run --json`, or `e` in the inspector): its method, budget,
    /// window, every knob, allocator and manual budgets, pins, --max-new, the prompt flags
    /// and profile replace the flags. PROMPT must give the report's prompt tokens and the model must
    /// be the report's (sha256).
    #[arg(long = "from-report", value_name = "FILE")]
    pub from_report: Option<PathBuf>,
}

/// The run's inputs: from the flags, or from a saved report.
pub(super) struct Plan {
    pub settings: crate::eviction::Settings,
    pub max_new: usize,
    pub prompt_opts: PromptOptions,
    pub profile: Option<PathBuf>,
    /// The saved report's model sha256 and prompt ids, to check against.
    pub expect: Option<(Option<String>, Vec<u32>)>,
}

/// The run's inputs from `a`: its flags, or the report `--from-report` names.
pub(super) fn plan(a: &RunArgs) -> Result<Plan> {
    let Some(path) = &a.from_report else {
        return Ok(Plan {
            settings: a.eviction.settings()?,
            max_new: a.max_new,
            prompt_opts: a.prompt_opts.options()?,
            profile: a.eviction.profile.clone(),
            expect: None,
        });
    };
    let r = crate::report::SavedReport::load(path)?;
    if let Some(notice) = super::report_override_notice(path) {
        eprintln!("kvscope: {notice}");
    }
    let settings = r
        .settings
        .to_settings()
        .with_context(|| format!("report {}", path.display()))?;
    // An explicit --profile wins over the path the report names (it may have moved).
    let profile = a
        .eviction
        .profile
        .clone()
        .or_else(|| r.settings.profile.as_ref().map(PathBuf::from));
    Ok(Plan {
        settings,
        max_new: r.settings.max_new,
        prompt_opts: r.settings.prompt_options(),
        profile,
        expect: Some((r.settings.model_sha256.clone(), r.prompt.ids)),
    })
}

/// What `run` and `explain` both do before their session: the plan, the model, its
/// profile (found or given), and the prompt, checked against a `--from-report` and the
/// context.
pub(super) struct Prepared {
    pub plan: Plan,
    pub loaded: crate::model::Loaded,
    pub load_ms: f64,
    pub profile_path: Option<String>,
    pub profile: Option<crate::profile_format::Profile>,
    pub model_sha: Option<String>,
    pub prompt: crate::model::tokenizer::Prompt,
    pub cache: Option<crate::prefill_cache::PrefillCache>,
}

pub(super) fn prepare(a: &RunArgs) -> Result<Prepared> {
    super::init_threads(a.model.threads)?;
    let plan = plan(a)?;
    let text = crate::input::read_prompt(&a.prompt)?;
    let t = Instant::now();
    let model_path = super::resolve_model_path(a.model.model.as_deref())?;
    let loaded = crate::model::load(&model_path)?;
    let load_ms = t.elapsed().as_secs_f64() * 1000.0;
    let cfg = &loaded.model.config;
    plan.settings.validate(&cfg.dims())?;
    // compresskv needs SRHs and the error-aware allocator reads layer errors: without
    // --profile, use the profile measured on this model file, if one is found.
    let wanted = plan.settings.method.def().needs_profile.is_some()
        || plan.settings.effective_allocator() == Allocator::ErrorAware;
    let (profile_path, profile) =
        match discover::resolve(plan.profile.as_deref(), &model_path, cfg, wanted)? {
            Some((path, p)) => (Some(path.display().to_string()), Some(p)),
            None => (None, None),
        };
    if let (Some(path), false) = (&profile_path, a.json) {
        eprintln!("kvscope: profile {path}");
    }
    let model_sha = discover::model_sha256(&model_path).ok();
    let cache = match (&model_sha, a.cache.no_cache) {
        (Some(sha), false) => {
            let (c, notice) = crate::prefill_cache::PrefillCache::for_model(&model_path, sha);
            if let Some(n) = notice {
                eprintln!("kvscope: notice: {n}");
            }
            c
        }
        _ => None,
    };
    let prompt = loaded.tok.prompt(&text, &plan.prompt_opts)?;
    if let Some((sha, want_ids)) = &plan.expect {
        crate::report::check_same_run(sha.as_deref(), model_sha.as_deref(), want_ids, &prompt.ids)?;
    }
    let from = if plan.expect.is_some() {
        "the report's settings.max_new"
    } else {
        "--max-new"
    };
    crate::session::check_fits_from(prompt.ids.len(), plan.max_new, cfg.context_length, from)?;
    if let Some(n) = profile
        .as_ref()
        .and_then(|p| crate::profile::lengths::length_notice(p, prompt.ids.len()))
    {
        eprintln!("kvscope: notice: {n}");
    }
    Ok(Prepared {
        plan,
        loaded,
        load_ms,
        profile_path,
        profile,
        model_sha,
        prompt,
        cache,
    })
}

pub fn run(a: &RunArgs) -> Result<()> {
    let Prepared {
        plan,
        loaded,
        load_ms,
        profile_path,
        profile,
        model_sha,
        prompt,
        cache,
    } = prepare(a)?;
    let settings = plan.settings.clone();
    let cfg = &loaded.model.config;
    let quiet = a.json;
    let mut last_pct = 0;
    let mut progress = |done: usize, total: usize| {
        let pct = done * 100 / total.max(1);
        if !quiet && total > 512 && pct >= last_pct + 25 {
            eprintln!("kvscope: prefill {done}/{total} tokens");
            last_pct = pct;
        }
    };
    let mut session = Session::from_prompt_cached(
        &loaded,
        cache.as_ref(),
        prompt,
        plan.max_new,
        profile,
        &mut progress,
    )?;
    super::cache_notice(&session);
    session.timing.load = (load_ms * 1000.0).round() / 1000.0;
    let pinned = !settings.pin_keep.is_empty() || !settings.pin_evict.is_empty();
    if settings.method != crate::eviction::full::METHOD || pinned || a.json {
        session.apply(&loaded.model, &loaded.tok, settings.clone())?;
    }
    if a.json {
        let prov = Provenance::new(
            profile_path,
            model_sha,
            &plan.prompt_opts,
            session.prompt_info.as_ref(),
        );
        let fallback = SettingsPart::new(&settings, Vec::new(), session.max_new, &prov);
        let mut report = Report::new(cfg, &session, &prov, fallback);
        report.memory = Some(crate::memory::Memory::of(&loaded, &session, &[]));
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    print_human(&loaded, &session);
    Ok(())
}

fn print_human(loaded: &crate::model::Loaded, s: &Session) {
    let cfg = &loaded.model.config;
    println!(
        "model: {} ({} layers, {} heads / {} KV heads, head_dim {})",
        cfg.name, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    );
    match &s.prompt_info {
        Some(i) => println!("prompt: {} tokens, {}", s.trace.len, i.summary()),
        None => println!("prompt: {} tokens", s.trace.len),
    }
    println!(
        "\n--- full cache ({} tokens generated) ---\n{}",
        s.full.ids.len(),
        s.full.text
    );
    if let Some(c) = &s.compressed {
        println!(
            "\n--- {} (budget {}, window {}) ---\n{}",
            c.settings.method, c.settings.budget, c.settings.window, c.generation.text
        );
        println!(
            "\nmemory: KV cache {} of {} bytes ({:.1}% of the full cache)",
            c.generation.kv_bytes,
            s.full.kv_bytes,
            c.kv_fraction * 100.0
        );
        match c.agreement.first_divergence {
            None => println!(
                "agreement: identical ({:.0}% tokens match)",
                c.agreement.token_match * 100.0
            ),
            Some(i) => println!(
                "agreement: first divergence at generated token {i}; {:.0}% tokens match",
                c.agreement.token_match * 100.0
            ),
        }
    } else {
        println!("\nmemory: KV cache {} bytes (full)", s.full.kv_bytes);
    }
    let m = crate::memory::Memory::of(loaded, s, &[]);
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    println!(
        "held (MiB): weights {:.0}, Trace {:.0} (K/V {:.0} at {}, maps {:.0}), prefill buffers {:.0} (freed), decode caches full {:.0} / compressed {:.0}; peak RSS {}",
        mib(m.weights),
        mib(m.trace()),
        mib(m.trace_kv),
        m.trace_kv_dtype,
        mib(m.maps),
        mib(m.prefill()),
        mib(m.decode_full),
        mib(m.decode_compressed),
        m.peak_rss
            .map_or("n/a".to_string(), |b| format!("{:.0} MiB", mib(b as usize)))
    );
    let t = &s.timing;
    println!(
        "timing: load {:.0} ms, prefill {:.0} ms, select {:.1} ms, decode full {:.0} ms, compressed {:.0} ms",
        t.load, t.prefill, t.select, t.decode_full, t.decode_compressed
    );
}
