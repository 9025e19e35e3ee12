//! The JSON report of `kvscope run --json` (DESIGN.md: field names are a contract).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::eviction::{registry, KnobValue, Settings};
use crate::model::Config;
use crate::session::{Agreement, Generation, Session, Timing};

#[derive(Serialize)]
pub struct ModelPart {
    pub name: String,
    pub arch: String,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub context_length: usize,
    /// Storage type of the decode KV cache, the element size `kv_bytes` counts.
    pub kv_dtype: String,
}

impl ModelPart {
    pub fn new(c: &Config, kv_dtype: &str) -> Self {
        ModelPart {
            kv_dtype: kv_dtype.to_string(),
            name: c.name.clone(),
            arch: c.arch.clone(),
            n_layers: c.n_layers,
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            context_length: c.context_length,
        }
    }
}

#[derive(Serialize)]
pub struct PromptPart {
    pub tokens: usize,
    pub ids: Vec<u32>,
    /// Chat template used (`raw`, `none`, `chatml`, `file`, ...), why, and control
    /// tokens found in the user's text.
    #[serde(flatten)]
    pub info: Option<crate::model::PromptInfo>,
}

/// Everything that produced a run, so `kvscope run --from-report` can rerun it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SettingsPart {
    pub method: String,
    pub budget: usize,
    pub window: usize,
    pub kernel: usize,
    pub pooling: String,
    pub first_k: usize,
    /// The allocator in force (the method's own when none was picked).
    pub allocator: String,
    /// Budgets applied per layer (empty when nothing was selected).
    pub layer_budgets: Vec<usize>,
    /// The explicit per-layer list the user gave (manual allocator), else null.
    #[serde(default)]
    pub manual_budgets: Option<Vec<usize>>,
    pub profile: Option<String>,
    pub max_new: usize,
    /// The prompt was sent without the chat template.
    #[serde(default)]
    pub raw: bool,
    /// The chat template used (`chatml`, `llama3`, `none`, `file`, ...; null when not
    /// known).
    #[serde(default)]
    pub template: Option<String>,
    /// Control-token strings in the prompt text were read as control tokens.
    #[serde(default)]
    pub allow_control_tokens: bool,
    /// sha256 of the model file (null when it could not be read).
    #[serde(default)]
    pub model_sha256: Option<String>,
    #[serde(default)]
    pub kvscope_version: String,
    /// Positions pinned to be kept / evicted (METHOD.md, "Pins").
    #[serde(default)]
    pub pin_keep: Vec<usize>,
    #[serde(default)]
    pub pin_evict: Vec<usize>,
    /// Every other knob of every registered method and allocator, with the value in force
    /// (`adakv_floor`, `pyramid_beta`, `cake_gamma`, ...).
    #[serde(flatten)]
    pub knobs: BTreeMap<String, KnobValue>,
}

/// Where a run came from, besides its settings.
#[derive(Debug, Clone, Default)]
pub struct Provenance {
    pub profile: Option<String>,
    pub model_sha256: Option<String>,
    pub raw: bool,
    pub template: Option<String>,
    pub allow_control_tokens: bool,
}

impl Provenance {
    /// From the prompt flags and what the tokenizer did with them.
    pub fn new(
        profile: Option<String>,
        model_sha256: Option<String>,
        opts: &crate::model::PromptOptions,
        info: Option<&crate::model::PromptInfo>,
    ) -> Self {
        Provenance {
            profile,
            model_sha256,
            raw: opts.raw,
            template: info.map(|i| i.template.clone()),
            allow_control_tokens: opts.allow_control_tokens,
        }
    }
}

/// Knobs with a field of their own in [`SettingsPart`].
const OWN_FIELDS: [&str; 3] = ["kernel", "pooling", "first_k"];

impl SettingsPart {
    /// `s` as run, with the budgets applied per layer.
    pub fn new(s: &Settings, layer_budgets: Vec<usize>, max_new: usize, prov: &Provenance) -> Self {
        let knobs = registry::all_knobs()
            .into_iter()
            .filter(|k| !OWN_FIELDS.contains(&k.name))
            .map(|k| (k.name.to_string(), k.get(s)))
            .collect();
        SettingsPart {
            method: s.method.name().to_string(),
            budget: s.budget,
            window: s.window,
            kernel: s.kernel,
            pooling: s.pooling.name().to_string(),
            first_k: s.first_k,
            allocator: s.effective_allocator().name().to_string(),
            layer_budgets,
            manual_budgets: s.layer_budgets.clone(),
            profile: prov.profile.clone(),
            max_new,
            raw: prov.raw,
            template: prov.template.clone(),
            allow_control_tokens: prov.allow_control_tokens,
            model_sha256: prov.model_sha256.clone(),
            kvscope_version: env!("CARGO_PKG_VERSION").to_string(),
            pin_keep: s.pin_keep.clone(),
            pin_evict: s.pin_evict.clone(),
            knobs,
        }
    }

    /// The prompt flags that reproduce the recorded prompt: the template used, by name
    /// (`none` and unknown names: the model's own choice, which gave it).
    pub fn prompt_options(&self) -> crate::model::PromptOptions {
        crate::model::PromptOptions {
            raw: self.raw,
            template: if self.raw {
                None
            } else {
                self.template.as_deref().and_then(|t| t.parse().ok())
            },
            allow_control_tokens: self.allow_control_tokens,
        }
    }

    /// The settings this part records, checked knob by knob (one line per error).
    pub fn to_settings(&self) -> anyhow::Result<Settings> {
        let method = self.method.parse()?;
        let allocator: crate::eviction::Allocator = self.allocator.parse()?;
        let mut s = Settings {
            method,
            budget: self.budget,
            window: self.window,
            kernel: self.kernel,
            pooling: self.pooling.parse()?,
            first_k: self.first_k,
            layer_budgets: self.manual_budgets.clone(),
            // A hand-edited report may list pins in any order, twice: the same set.
            pin_keep: crate::eviction::pins::normalize(self.pin_keep.clone()),
            pin_evict: crate::eviction::pins::normalize(self.pin_evict.clone()),
            ..Settings::default()
        };
        // Leave the allocator unset when it is the method's own, as the user left it.
        if self.manual_budgets.is_none() && allocator != s.method.default_allocator() {
            s.allocator = Some(allocator);
        }
        for (name, v) in &self.knobs {
            match registry::knob(name) {
                Some(k) => k.set(&mut s, v.clone())?,
                None => anyhow::bail!(
                    "the report's settings hold '{name}', which this kvscope does not know \
                     (report written by kvscope {})",
                    self.kvscope_version
                ),
            }
        }
        Ok(s)
    }
}

/// What a saved report gives back to rerun it (`run --from-report`, loading one in the
/// inspector): the prompt's token ids and the settings.
#[derive(Debug, Deserialize)]
pub struct SavedReport {
    pub prompt: SavedPrompt,
    pub settings: SettingsPart,
}

#[derive(Debug, Deserialize)]
pub struct SavedPrompt {
    pub ids: Vec<u32>,
}

/// Largest report read: 256 MiB (the kept positions of a 128K-token prompt on a model
/// the size of the default one take about 80 MB of JSON).
const MAX_REPORT_BYTES: u64 = 256 << 20;

impl SavedReport {
    /// Reads a report written by `kvscope run --json` or `e` in the inspector.
    pub fn load(path: &std::path::Path) -> anyhow::Result<SavedReport> {
        use anyhow::Context;
        let text = crate::input::read_text(path, "report", MAX_REPORT_BYTES)?;
        let not_report = || {
            format!(
                "{} is not a kvscope report (make one with `kvscope run --json` or `e` in the inspector)",
                path.display()
            )
        };
        let value: serde_json::Value = serde_json::from_str(&text).with_context(not_report)?;
        // Field by field first, so a value of the wrong type is named by its key.
        if let Some(settings) = value.get("settings") {
            check_settings_fields(settings)
                .with_context(|| format!("report {}", path.display()))?;
        }
        let r: SavedReport = serde_json::from_value(value).with_context(not_report)?;
        if r.settings.model_sha256.is_none() {
            anyhow::bail!(
                "report {} has no settings.model_sha256, so the model it was made on cannot be \
                 checked; rerun it with `kvscope run --json` on that model to get one",
                path.display()
            );
        }
        Ok(r)
    }
}

/// The JSON type each own field of [`SettingsPart`] must have.
#[derive(Clone, Copy)]
enum FieldType {
    Count,
    Text,
    TextOrNull,
    Flag,
    Counts,
    CountsOrNull,
}

const SETTINGS_FIELDS: [(&str, FieldType); 18] = [
    ("method", FieldType::Text),
    ("budget", FieldType::Count),
    ("window", FieldType::Count),
    ("kernel", FieldType::Count),
    ("pooling", FieldType::Text),
    ("first_k", FieldType::Count),
    ("allocator", FieldType::Text),
    ("layer_budgets", FieldType::Counts),
    ("manual_budgets", FieldType::CountsOrNull),
    ("profile", FieldType::TextOrNull),
    ("max_new", FieldType::Count),
    ("raw", FieldType::Flag),
    ("template", FieldType::TextOrNull),
    ("allow_control_tokens", FieldType::Flag),
    ("model_sha256", FieldType::TextOrNull),
    ("kvscope_version", FieldType::Text),
    ("pin_keep", FieldType::Counts),
    ("pin_evict", FieldType::Counts),
];

/// A JSON value in words, for messages.
fn json_described(v: &serde_json::Value) -> String {
    use serde_json::Value as J;
    match v {
        J::Null => "null".into(),
        J::Bool(b) => b.to_string(),
        J::Number(n) => n.to_string(),
        J::String(s) => format!("the text {s:?}"),
        J::Array(_) => "a list".into(),
        J::Object(_) => "an object".into(),
    }
}

/// Checks the type of every field of a report's `settings` (own fields and knobs),
/// naming the key: `settings.adakv_floor must be a number between 0 and 1; got the
/// text "0.2"`.
fn check_settings_fields(v: &serde_json::Value) -> anyhow::Result<()> {
    use serde_json::Value as J;
    let Some(obj) = v.as_object() else {
        anyhow::bail!("settings must be an object; got {}", json_described(v));
    };
    let count = |x: &J| x.as_u64().is_some_and(|n| usize::try_from(n).is_ok());
    for (key, value) in obj {
        let label = format!("settings.{key}");
        if let Some((_, t)) = SETTINGS_FIELDS.iter().find(|(k, _)| k == key) {
            let (ok, want) = match t {
                FieldType::Count => (count(value), "a whole number, 0 or more"),
                FieldType::Text => (value.is_string(), "text"),
                FieldType::TextOrNull => (value.is_string() || value.is_null(), "text or null"),
                FieldType::Flag => (value.is_boolean(), "true or false"),
                FieldType::Counts => (
                    value.as_array().is_some_and(|a| a.iter().all(count)),
                    "a list of whole numbers, 0 or more",
                ),
                FieldType::CountsOrNull => (
                    value.is_null() || value.as_array().is_some_and(|a| a.iter().all(count)),
                    "a list of whole numbers, 0 or more, or null",
                ),
            };
            if !ok {
                anyhow::bail!("{label} must be {want}; got {}", json_described(value));
            }
        } else if let Some(k) = registry::knob(key) {
            let kv = match value {
                J::Bool(b) => KnobValue::Bool(*b),
                J::Number(n) => match n.as_i64() {
                    Some(i) => KnobValue::Int(i),
                    None => KnobValue::Float(n.as_f64().unwrap_or(f64::NAN)),
                },
                J::String(s) => KnobValue::Text(s.clone()),
                J::Array(a) if a.iter().all(count) => KnobValue::List(
                    a.iter()
                        .filter_map(|x| x.as_u64().map(|n| n as usize))
                        .collect(),
                ),
                // null (what JSON makes of inf / NaN), objects, mixed lists.
                _ => {
                    let want = k.wanted();
                    anyhow::bail!("{label} must be {want}; got {}", json_described(value));
                }
            };
            k.coerce_named(&kv, &label)?;
        }
    }
    Ok(())
}

/// Refuses to rerun a report on another model file (its sha256, when both are known)
/// or on a prompt that tokenizes differently, naming the first differing token.
pub fn check_same_run(
    want_sha: Option<&str>,
    got_sha: Option<&str>,
    want_ids: &[u32],
    got_ids: &[u32],
) -> anyhow::Result<()> {
    if let (Some(w), Some(g)) = (want_sha, got_sha) {
        if !w.eq_ignore_ascii_case(g) {
            anyhow::bail!(
                "the report was made on the model with sha256 {w}; this model's is {g} \
                 (pass the report's model with --model)"
            );
        }
    }
    if want_ids != got_ids {
        let at = want_ids
            .iter()
            .zip(got_ids)
            .position(|(a, b)| a != b)
            .unwrap_or(want_ids.len().min(got_ids.len()));
        anyhow::bail!(
            "the prompt file gives {} tokens, the report's prompt {} (first difference at \
             token {at}): pass the prompt file the report was made from",
            got_ids.len(),
            want_ids.len()
        );
    }
    Ok(())
}

#[derive(Serialize)]
pub struct CompressedPart {
    pub ids: Vec<u32>,
    pub text: String,
    pub kv_bytes: usize,
    pub kv_fraction: f64,
    /// `[layer][kv_head][positions]`
    pub kept: Vec<Vec<Vec<usize>>>,
}

#[derive(Serialize)]
pub struct Report {
    pub model: ModelPart,
    pub prompt: PromptPart,
    pub settings: SettingsPart,
    pub full: Generation,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compressed: Option<CompressedPart>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agreement: Option<Agreement>,
    pub timing_ms: Timing,
    /// What the prefill cache did: `hit`, `load_ms` or `store_ms`, the entry's `bytes`
    /// and any `notice` (absent when the run used none, e.g. `--no-cache`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefill_cache: Option<crate::prefill_cache::Report>,
    /// Bytes per buffer held ([`crate::memory::Memory`]); `run --json` fills it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<crate::memory::Memory>,
}

impl Report {
    /// The report of `session`; `default` is the settings part when nothing was
    /// compressed.
    pub fn new(
        config: &Config,
        session: &Session,
        prov: &Provenance,
        default: SettingsPart,
    ) -> Self {
        let (settings, compressed, agreement) = match &session.compressed {
            Some(c) => (
                SettingsPart::new(
                    &c.settings,
                    c.selection.layer_budgets.clone(),
                    session.max_new,
                    prov,
                ),
                Some(CompressedPart {
                    ids: c.generation.ids.clone(),
                    text: c.generation.text.clone(),
                    kv_bytes: c.generation.kv_bytes,
                    kv_fraction: c.kv_fraction,
                    kept: c.selection.keep.positions.clone(),
                }),
                Some(c.agreement),
            ),
            None => (default, None, None),
        };
        Report {
            model: ModelPart::new(config, session.kv_dtype),
            prompt: PromptPart {
                tokens: session.trace.len,
                ids: session.trace.ids.clone(),
                info: session.prompt_info.clone(),
            },
            settings,
            full: session.full.clone(),
            compressed,
            agreement,
            timing_ms: session.timing,
            prefill_cache: session.prefill_cache.clone(),
            memory: None,
        }
    }
}
