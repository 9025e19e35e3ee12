//! `kvscope run`: one headless run of the full and the compressed cache.

use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;
use std::time::Instant;

use super::{EvictionArgs, ModelArgs, PromptArgs};
use crate::eviction::{Allocator, Method};
use crate::profile::discover;
use crate::report::{Report, SettingsPart};
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
    /// Print the JSON report instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: &RunArgs) -> Result<()> {
    super::init_threads(a.model.threads)?;
    let settings = a.eviction.settings()?;
    let prompt_opts = a.prompt_opts.options()?;
    let text = super::read_prompt(&a.prompt)?;
    let t = Instant::now();
    let model_path = super::resolve_model_path(a.model.model.as_deref())?;
    let loaded = crate::model::load(&model_path)?;
    let load_ms = t.elapsed().as_secs_f64() * 1000.0;
    let cfg = &loaded.model.config;
    settings.validate(&cfg.dims())?;
    // compresskv needs SRHs and the error-aware allocator reads layer errors: without
    // --profile, use the profile measured on this model file, if one is found.
    let wanted = settings.method == Method::CompressKv
        || settings.effective_allocator() == Allocator::ErrorAware;
    let (profile_path, profile) =
        match discover::resolve(a.eviction.profile.as_deref(), &model_path, cfg, wanted)? {
            Some((path, p)) => (Some(path.display().to_string()), Some(p)),
            None => (None, None),
        };
    if let (Some(path), false) = (&profile_path, a.json) {
        eprintln!("kvscope: profile {path}");
    }
    let prompt = loaded.tok.prompt(&text, &prompt_opts)?;
    let n_prompt = prompt.ids.len();
    if n_prompt.saturating_add(a.max_new) > cfg.context_length {
        bail!(
            "the prompt has {n_prompt} tokens; with --max-new {} that exceeds the model's context of {} tokens",
            a.max_new,
            cfg.context_length
        );
    }
    let quiet = a.json;
    let mut last_pct = 0;
    let mut progress = |done: usize, total: usize| {
        let pct = done * 100 / total.max(1);
        if !quiet && total > 512 && pct >= last_pct + 25 {
            eprintln!("kvscope: prefill {done}/{total} tokens");
            last_pct = pct;
        }
    };
    let mut session = Session::from_prompt(&loaded, prompt, a.max_new, profile, &mut progress)?;
    session.timing.load = (load_ms * 1000.0).round() / 1000.0;
    let pinned = !settings.pin_keep.is_empty() || !settings.pin_evict.is_empty();
    if settings.method != Method::Full || pinned || a.json {
        session.apply(&loaded.model, &loaded.tok, settings.clone())?;
    }
    if a.json {
        let report = Report::new(
            cfg,
            &session,
            profile_path,
            default_settings_part(&settings, session.max_new),
        );
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    print_human(&loaded, &session);
    Ok(())
}

fn default_settings_part(s: &crate::eviction::Settings, max_new: usize) -> SettingsPart {
    SettingsPart {
        method: s.method.name().into(),
        budget: s.budget,
        window: s.window,
        kernel: s.kernel,
        pooling: s.pooling.name().into(),
        first_k: s.first_k,
        allocator: s.effective_allocator().name().into(),
        layer_budgets: Vec::new(),
        profile: None,
        max_new,
        pin_keep: s.pin_keep.clone(),
        pin_evict: s.pin_evict.clone(),
    }
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
    let t = &s.timing;
    println!(
        "timing: load {:.0} ms, prefill {:.0} ms, select {:.1} ms, decode full {:.0} ms, compressed {:.0} ms",
        t.load, t.prefill, t.select, t.decode_full, t.decode_compressed
    );
}
