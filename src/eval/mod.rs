//! Evaluation: needle-in-a-haystack grids (`niah`) and method-by-budget sweeps over
//! prompts with expected answers (`sweep`), with terminal output, SVG/PNG figures, and
//! incremental JSONL results that a later run can resume.
//!
//! The expensive step is prefill, so each item (NIAH cell or prompt) is prefilled and
//! decoded with the full cache ONCE, and its Trace is reused for every method, budget and
//! window still to run on it ([`run_item`]).

pub mod grid;
pub mod merge;
pub mod niah;
pub mod plot;
pub mod progress;
pub mod prompts;
pub mod results;
pub mod shards;
pub mod sweep;

use anyhow::{Context, Result};

use crate::eviction::Settings;
use crate::model::{Loaded, PromptOptions};
use crate::profile_format::Profile;
use crate::score;
use crate::session::Session;
use grid::Combo;
use progress::Progress;
use results::{Record, Writer};

/// What every unit of a run shares.
pub struct Ctx<'a> {
    pub loaded: &'a Loaded,
    /// The prefill cache (`None`: `--no-cache`, or none available).
    pub cache: Option<&'a crate::prefill_cache::PrefillCache>,
    pub profile: Option<Profile>,
    /// Every knob but method, budget and window (those come from each [`Combo`]).
    pub base: Settings,
    pub max_new: usize,
    /// How each item's text becomes the prompt (template, --raw).
    pub prompt: PromptOptions,
    /// Profile path, model sha256 and prompt flags, for each row's settings.
    pub prov: crate::report::Provenance,
}

/// Creates the results folder `--out`; a path that exists and is not a folder (a file,
/// a FIFO, a device, a link to one) is refused naming the flag, not with the OS's
/// "File exists".
pub fn create_out_folder(out: &std::path::Path) -> Result<()> {
    let dangling = out.symlink_metadata().is_ok() && !out.exists();
    if (out.exists() && !out.is_dir()) || dangling {
        anyhow::bail!(
            "--out {} exists and is not a folder; --out names the folder for results.jsonl and the tables: choose a folder",
            out.display()
        );
    }
    std::fs::create_dir_all(out)
        .map_err(|e| anyhow::anyhow!("cannot create the --out folder {}: {e}", out.display()))
}

/// sha256 of `parts` (each length-prefixed, so no two lists hash alike), as hex.
pub fn digest(parts: &[&[u8]]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.finalize().iter().map(|x| format!("{x:02x}")).collect()
}

impl Ctx<'_> {
    /// Everything a unit's result depends on besides its key (item, method, budget,
    /// window): stored with the results so `--resume` never mixes settings.
    pub fn run_settings(&self) -> serde_json::Value {
        use sha2::{Digest, Sha256};
        let b = &self.base;
        let cfg = &self.loaded.model.config;
        let profile = self.profile.as_ref().map(|p| {
            let json = serde_json::to_vec(p).unwrap_or_default();
            Sha256::digest(&json)
                .iter()
                .map(|x| format!("{x:02x}"))
                .collect::<String>()
        });
        let mut settings = serde_json::json!({
            "max_new": self.max_new,
            "raw": self.prompt.raw,
            "kernel": b.kernel,
            "pooling": b.pooling.name(),
            "first_k": b.first_k,
            "adakv_floor": b.adakv_floor,
            "pyramid_beta": b.pyramid_beta,
            "allocator": b.allocator.map(|a| a.name()),
            "layer_budgets": b.layer_budgets,
            // The sha256 pins the file: two models of one name and size never share a
            // results table.
            "model": {
                "name": cfg.name,
                "file_bytes": self.loaded.file_bytes,
                "sha256": self.prov.model_sha256,
            },
            "profile_sha256": profile,
        });
        // Recorded only when not the default, so runs from before these flags resume.
        if let Some(t) = self.prompt.template {
            settings["template"] = t.name().into();
        }
        if self.prompt.allow_control_tokens {
            settings["allow_control_tokens"] = true.into();
        }
        settings
    }
}

/// One item to evaluate: its name, the user's text (before the template), the expected
/// answer and what the exact score requires.
pub struct Item {
    pub name: String,
    pub kind: String,
    pub text: String,
    pub answer: String,
    pub must_include: Vec<String>,
    pub length: Option<usize>,
    pub depth: Option<usize>,
}

/// Prefills `item` once, decodes the full cache once, then runs every pending combo on
/// the same Trace, appending each finished unit to `writer` at once.
pub fn run_item(
    ctx: &Ctx,
    item: &Item,
    pending: &[&Combo],
    writer: &mut Writer,
    bar: &mut Progress,
) -> Result<Vec<Record>> {
    let loaded = ctx.loaded;
    let cfg = &loaded.model.config;
    let prompt = loaded.tok.prompt(&item.text, &ctx.prompt)?;
    let n = prompt.ids.len();
    crate::session::check_fits(n, ctx.max_new, cfg.context_length)
        .with_context(|| item.name.clone())?;
    bar.status(&format!("{} ({n} tokens): prefill + full cache", item.name));
    let mut session = Session::from_prompt_cached(
        loaded,
        ctx.cache,
        prompt,
        ctx.max_new,
        ctx.profile.clone(),
        &mut |_, _| {},
    )?;
    if let Some(n) = session
        .prefill_cache
        .as_ref()
        .and_then(|r| r.notice.as_ref())
    {
        bar.note(n);
    }
    let full = score::score(&item.answer, &item.must_include, &session.full.text);
    let full_output = session.full.text.clone();
    let full_kv = session.full.kv_bytes;
    let full_tokens = session.full.ids.len();
    let prov = crate::report::Provenance {
        template: session.prompt_info.as_ref().map(|i| i.template.clone()),
        ..ctx.prov.clone()
    };
    let mut out = Vec::with_capacity(pending.len());
    for combo in pending {
        let settings = Settings {
            method: combo.method,
            budget: combo.budget.tokens(n, combo.window),
            window: combo.window,
            ..ctx.base.clone()
        };
        settings.validate(&cfg.dims())?;
        let c = session.apply(&loaded.model, &loaded.tok, settings)?;
        let s = score::score(&item.answer, &item.must_include, &c.generation.text);
        let mut rec = Record {
            item: item.name.clone(),
            method: combo.method.name().into(),
            budget: combo.budget.to_string(),
            window: combo.window,
            budget_tokens: c.settings.budget,
            prompt_tokens: n,
            length: item.length,
            depth: item.depth,
            kind: item.kind.clone(),
            answer: item.answer.clone(),
            output: c.generation.text.clone(),
            exact: s.exact,
            rouge1: s.rouge1,
            full_output: full_output.clone(),
            full_exact: full.exact,
            full_rouge1: full.rouge1,
            full_tokens,
            token_match: c.agreement.token_match,
            first_divergence: c.agreement.first_divergence,
            kv_bytes: c.generation.kv_bytes,
            full_kv_bytes: full_kv,
            kv_fraction: c.kv_fraction,
            decode_ms: 0.0,
            settings: Some(crate::report::SettingsPart::new(
                &c.settings,
                c.selection.layer_budgets.clone(),
                ctx.max_new,
                &prov,
            )),
        };
        rec.decode_ms = session.timing.decode_compressed;
        writer.append(&rec)?;
        bar.inc(&format!(
            "{} {} {} w{}",
            item.name, rec.method, rec.budget, rec.window
        ));
        out.push(rec);
    }
    Ok(out)
}

/// Mean of `f` over `records`, `None` when there are none.
pub fn mean<T>(records: &[T], f: impl Fn(&T) -> f64) -> Option<f64> {
    if records.is_empty() {
        None
    } else {
        Some(records.iter().map(f).sum::<f64>() / records.len() as f64)
    }
}

/// Whether stdout wants colour: a terminal, and `NO_COLOR` unset.
pub fn stdout_colour() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Whether `method` is a reference that looks at the generation (`oracle`): tables
/// mark it `*` and plots "(upper bound)", since no deployable method can reach it.
pub fn is_upper_bound(method: &str) -> bool {
    crate::eviction::Method::named(method).is_some_and(|m| m.def().needs_future)
}

/// `method` as tables show it: `oracle*` for an upper bound.
pub fn table_name(method: &str) -> String {
    if is_upper_bound(method) {
        format!("{method}*")
    } else {
        method.to_string()
    }
}

/// The footnote of a table that shows an upper bound.
pub const UPPER_BOUND_NOTE: &str =
    "* oracle: an upper bound, not a method (it keeps what the full cache attended to while generating this answer)";
