//! The JSON report of `kvscope run --json` (DESIGN.md: field names are a contract).

use serde::Serialize;

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

#[derive(Serialize)]
pub struct SettingsPart {
    pub method: String,
    pub budget: usize,
    pub window: usize,
    pub kernel: usize,
    pub pooling: String,
    pub first_k: usize,
    pub allocator: String,
    pub layer_budgets: Vec<usize>,
    pub profile: Option<String>,
    pub max_new: usize,
    /// Positions pinned to be kept / evicted (METHOD.md, "Pins").
    pub pin_keep: Vec<usize>,
    pub pin_evict: Vec<usize>,
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
}

impl Report {
    pub fn new(
        config: &Config,
        session: &Session,
        profile_path: Option<String>,
        default: SettingsPart,
    ) -> Self {
        let (settings, compressed, agreement) = match &session.compressed {
            Some(c) => (
                SettingsPart {
                    method: c.settings.method.name().to_string(),
                    budget: c.settings.budget,
                    window: c.settings.window,
                    kernel: c.settings.kernel,
                    pooling: c.settings.pooling.name().to_string(),
                    first_k: c.settings.first_k,
                    allocator: c.settings.effective_allocator().name().to_string(),
                    layer_budgets: c.selection.layer_budgets.clone(),
                    profile: profile_path,
                    max_new: session.max_new,
                    pin_keep: c.settings.pin_keep.clone(),
                    pin_evict: c.settings.pin_evict.clone(),
                },
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
        }
    }
}
