//! The tokenizer, rebuilt from the GGUF's own metadata as a `tokenizers::Tokenizer`, and
//! the prompt the model sees (chat template, BOS, control tokens in the user's text).
//!
//! Two kinds (`tokenizer.ggml.model`):
//! - `gpt2`: byte-level BPE with the file's merges and a pre-tokenizer named by
//!   `tokenizer.ggml.pre` (SmolLM, GPT-2, Llama 3, Qwen2, and the other names llama.cpp
//!   gives the same or a listed regex chain).
//! - `llama`: SentencePiece BPE (Llama 2, Mistral, TinyLlama, Gemma). The file has no
//!   merges, only scores: repeatedly merging the adjacent pair whose result has the highest
//!   score is BPE whose merge ranks are the scores of the merge results, so the merges are
//!   derived from the vocabulary (every split of a token into two tokens) and ranked by
//!   score. Spaces become `▁`; characters outside the vocabulary become `<0xXX>` byte tokens.
//!
//! Control tokens (type 3) are special tokens: matched in text the template writes, and in
//! the user's text only where the user allows it. User-defined tokens (type 4, e.g.
//! Gemma's whitespace runs) are always matched, as llama.cpp does.

use anyhow::{anyhow, bail, Context, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use std::collections::HashSet;
use std::sync::OnceLock;
use tokenizers::{AddedToken, Tokenizer};

use super::template::{self, Builtin, TemplateChoice};

mod bpe;
#[cfg(test)]
mod tests;

use bpe::{
    f32_array, gpt2_tokenizer, spm_tokenizer, string_array, TOKEN_TYPE_CONTROL, TOKEN_TYPE_NORMAL,
    TOKEN_TYPE_USER_DEFINED,
};

/// End-of-turn tokens of the chat formats kvscope knows: generation stops at them.
const END_OF_TURN: [&str; 4] = ["<|im_end|>", "<|eot_id|>", "<end_of_turn>", "</s>"];

/// Byte range `[start, end)` of each token in the encoded text.
pub type Offsets = Vec<(usize, usize)>;

pub struct Tok {
    /// Control tokens written in the text are matched.
    inner: Tokenizer,
    /// The same tokenizer with control tokens read as text; built on first use.
    plain: OnceLock<Tokenizer>,
    /// Ids that end a generation (EOS and the end-of-turn tokens of known templates).
    pub stop_ids: Vec<u32>,
    /// The vocabulary has ChatML's `<|im_start|>` and `<|im_end|>`.
    pub chatml: bool,
    /// `gpt2 (pre-tokenizer smollm)`, `llama (SentencePiece)`: for messages.
    pub kind: String,
    /// Text of the BOS token, put in front of every prompt when the file says so.
    bos: Option<String>,
    /// Text of the EOS token, put after every prompt when the file says so.
    eos_after: Option<String>,
    /// Texts of the BOS / EOS tokens, for templates (`bos_token`, `eos_token`).
    bos_text: String,
    eos_text: String,
    /// The file's own chat template (`tokenizer.chat_template`).
    pub chat_template: Option<String>,
    /// `tokenizer.chat_template` when it is there but not text (its type): refused
    /// wherever the file's template would be used, instead of "has no chat template".
    bad_chat_template: Option<String>,
    /// Ids of control tokens.
    control: HashSet<u32>,
}

/// How the user's text becomes the prompt (`--raw`, `--template`,
/// `--allow-control-tokens`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PromptOptions {
    /// Send the text as is (BOS still as the file says): no template, control tokens
    /// written in the text are control tokens.
    pub raw: bool,
    /// The template: `None` is `auto`.
    pub template: Option<TemplateChoice>,
    /// In a chat template, read control-token strings in the user's text as control tokens.
    pub allow_control_tokens: bool,
}

/// What was done to the user's text, for the status line and the report.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PromptInfo {
    /// Which template was used: `raw`, `none`, `chatml`, `llama3`, `gemma`, `mistral`,
    /// `file`.
    pub template: String,
    /// Why that one.
    pub template_note: String,
    /// Control-token strings found in the user's text.
    pub control_tokens: usize,
    /// Whether they were read as control tokens (raw, or allowed) or as text.
    pub control_tokens_as_tokens: bool,
}

impl PromptInfo {
    /// One short phrase for a status line.
    pub fn summary(&self) -> String {
        let mut s = format!("template {} ({})", self.template, self.template_note);
        if self.control_tokens > 0 {
            s.push_str(&format!(
                "; the prompt has {} control token{} ({})",
                self.control_tokens,
                if self.control_tokens == 1 { "" } else { "s" },
                if self.control_tokens_as_tokens {
                    "used as tokens"
                } else {
                    "read as text; --allow-control-tokens to use them"
                }
            ));
        }
        s
    }
}

/// The prompt the model sees.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub text: String,
    pub ids: Vec<u32>,
    pub info: PromptInfo,
}

impl Tok {
    pub fn from_gguf(content: &Content) -> Result<Self> {
        let md = &content.metadata;
        let model = super::metadata::get_str(md, "tokenizer.ggml.model")?;
        let tokens = string_array(md, "tokenizer.ggml.tokens")?;
        let types: Vec<i32> = match md.get("tokenizer.ggml.token_type") {
            Some(Value::Array(a)) => a.iter().map(|v| v.to_i32().unwrap_or(1)).collect(),
            _ => vec![TOKEN_TYPE_NORMAL; tokens.len()],
        };
        if types.len() != tokens.len() {
            bail!(
                "tokenizer.ggml.token_type has {} entries for {} tokens",
                types.len(),
                tokens.len()
            );
        }
        let pre = md
            .get("tokenizer.ggml.pre")
            .and_then(|v| v.to_string().ok().cloned())
            .unwrap_or_else(|| "default".into());
        let flag = |key: &str| md.get(key).and_then(|v| v.to_bool().ok());
        let add_space_prefix = flag("tokenizer.ggml.add_space_prefix");
        let (mut tk, kind, bos_default) = match model {
            "gpt2" => (gpt2_tokenizer(md, &tokens, &pre)?, format!("gpt2 (pre-tokenizer {pre})"), false),
            "llama" => {
                let scores = f32_array(md, "tokenizer.ggml.scores")?;
                if scores.len() != tokens.len() {
                    bail!(
                        "tokenizer.ggml.scores has {} entries for {} tokens",
                        scores.len(),
                        tokens.len()
                    );
                }
                let unk = md
                    .get("tokenizer.ggml.unknown_token_id")
                    .and_then(|v| v.to_u32().ok())
                    .and_then(|i| tokens.get(i as usize).cloned());
                (
                    spm_tokenizer(&tokens, &scores, &types, unk, add_space_prefix.unwrap_or(true))?,
                    "llama (SentencePiece)".to_string(),
                    true,
                )
            }
            other => bail!(
                "unsupported tokenizer '{other}' (tokenizer.ggml.model): kvscope supports gpt2 (byte-level BPE: SmolLM, Llama 3, Qwen2) and llama (SentencePiece: Llama 2, Mistral, TinyLlama, Gemma)"
            ),
        };
        // Control tokens are special (not matched in text read as text); user-defined
        // tokens always match. Both match the raw text (not normalised), as in llama.cpp.
        let added = |kind: i32| -> Vec<AddedToken> {
            tokens
                .iter()
                .zip(&types)
                .filter(|(_, &t)| t == kind)
                .map(|(s, _)| {
                    AddedToken::from(s.clone(), kind == TOKEN_TYPE_CONTROL).normalized(false)
                })
                .collect()
        };
        tk.add_special_tokens(&added(TOKEN_TYPE_CONTROL));
        tk.add_tokens(&added(TOKEN_TYPE_USER_DEFINED));
        let control: HashSet<u32> = types
            .iter()
            .enumerate()
            .filter(|(_, &t)| t == TOKEN_TYPE_CONTROL)
            .map(|(i, _)| i as u32)
            .collect();

        let special = |key: &str| {
            md.get(key)
                .and_then(|v| v.to_u32().ok())
                .filter(|&i| (i as usize) < tokens.len())
        };
        let bos_id = special("tokenizer.ggml.bos_token_id");
        let eos_id = special("tokenizer.ggml.eos_token_id");
        let text_of = |id: Option<u32>| id.map(|i| tokens[i as usize].clone());
        let add_bos = flag("tokenizer.ggml.add_bos_token").unwrap_or(bos_default);
        let add_eos = flag("tokenizer.ggml.add_eos_token").unwrap_or(false);
        let bos = if add_bos {
            Some(text_of(bos_id).context(
                "the model file asks for a BOS token (tokenizer.ggml.add_bos_token) but names none (tokenizer.ggml.bos_token_id)",
            )?)
        } else {
            None
        };
        let eos_after = if add_eos { text_of(eos_id) } else { None };

        let mut stop_ids = Vec::new();
        stop_ids.extend(eos_id);
        for t in END_OF_TURN {
            if let Some(id) = tokens.iter().position(|x| x == t) {
                if !stop_ids.contains(&(id as u32)) {
                    stop_ids.push(id as u32);
                }
            }
        }
        let chatml =
            tokens.iter().any(|t| t == "<|im_start|>") && tokens.iter().any(|t| t == "<|im_end|>");
        let raw_template = md.get("tokenizer.chat_template");
        let bad_chat_template = raw_template
            .filter(|v| v.to_string().is_err())
            .map(|v| format!("{:?}", v.value_type()).to_lowercase());
        let chat_template = raw_template
            .and_then(|v| v.to_string().ok().cloned())
            .filter(|t| !t.trim().is_empty());
        Ok(Tok {
            inner: tk,
            plain: OnceLock::new(),
            stop_ids,
            chatml,
            kind,
            bos,
            eos_after,
            bos_text: text_of(bos_id).unwrap_or_default(),
            eos_text: text_of(eos_id).unwrap_or_default(),
            chat_template,
            bad_chat_template,
            control,
        })
    }

    /// Token ids of `text`; control tokens written in the text are recognised, no BOS is
    /// added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| anyhow!("tokenization failed: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of `text` with control-token strings read as text.
    pub fn encode_as_text(&self, text: &str) -> Result<Vec<u32>> {
        let plain = self.plain.get_or_init(|| {
            let mut t = self.inner.clone();
            t.set_encode_special_tokens(true);
            t
        });
        let enc = plain
            .encode(text, false)
            .map_err(|e| anyhow!("tokenization failed: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of `text` with each token's byte range in `text` (special tokens as in
    /// [`encode`](Self::encode)). A byte-level token that starts with a space may or may
    /// not include it in its range; callers locate text by overlap, not by equality.
    pub fn encode_with_offsets(&self, text: &str) -> Result<(Vec<u32>, Offsets)> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| anyhow!("tokenization failed: {e}"))?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    pub fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, false).unwrap_or_default()
    }

    /// Text of one token, for per-token displays.
    pub fn token_text(&self, id: u32) -> String {
        self.decode(&[id])
    }

    /// Id of a token written exactly as `text` (control tokens included).
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.inner.token_to_id(text)
    }

    pub fn is_control(&self, id: u32) -> bool {
        self.control.contains(&id)
    }

    /// The prompt text with the default template (`auto`), or the text as is when `raw`;
    /// BOS in front when the file asks for it (as its token's text, so [`encode`]
    /// (Self::encode) reads it back as BOS). Where the file's own template cannot be
    /// rendered this gives the text without a template: commands that face the user
    /// call [`prompt`](Self::prompt), which reports that error.
    pub fn apply_template(&self, prompt: &str, raw: bool) -> String {
        let opts = PromptOptions {
            raw,
            ..PromptOptions::default()
        };
        match self.render(prompt, &opts) {
            Ok((text, _, _)) => text,
            Err(_) => self.with_bos_eos(prompt.to_string()).0,
        }
    }

    /// BOS / EOS texts around `body` as the file asks; returns the text and how many
    /// bytes were put in front.
    fn with_bos_eos(&self, body: String) -> (String, usize) {
        let mut text = body;
        let mut shift = 0;
        if let Some(b) = &self.bos {
            // A template that writes BOS itself (`{{ bos_token }}`) gets no second one.
            if !text.starts_with(b.as_str()) {
                text.insert_str(0, b);
                shift = b.len();
            }
        }
        if let Some(e) = &self.eos_after {
            text.push_str(e);
        }
        (text, shift)
    }

    /// The template `opts` asks for on this model, and its label.
    fn choose(&self, opts: &PromptOptions) -> Result<(Option<Chosen>, Label)> {
        let label = |name: &str, note: &str| Label {
            name: name.to_string(),
            note: note.to_string(),
        };
        if opts.raw {
            return Ok((None, label("raw", "--raw: the text as is")));
        }
        let file = self.chat_template.as_deref();
        let own = || label("file", "the model file's own template");
        let wants_file = matches!(
            opts.template.unwrap_or_default(),
            TemplateChoice::Auto | TemplateChoice::File
        );
        if let (true, Some(ty)) = (wants_file, &self.bad_chat_template) {
            bail!(
                "the model file's chat template (tokenizer.chat_template) is a value of type {ty}, not text; use --template chatml|llama3|gemma|mistral or --raw"
            );
        }
        match opts.template.unwrap_or_default() {
            TemplateChoice::Auto => match file {
                None => Ok((
                    None,
                    label("none", "the model file has no chat template: the text as is"),
                )),
                Some(src) => match template::detect(src) {
                    Some(b) if self.has_markers(b) => Ok((
                        Some(Chosen::Builtin(b)),
                        label(b.name(), "built-in form of the model file's template family"),
                    )),
                    _ => Ok((Some(Chosen::File), own())),
                },
            },
            TemplateChoice::File => match file {
                Some(_) => Ok((Some(Chosen::File), own())),
                None => bail!(
                    "--template file: this model file has no chat template (tokenizer.chat_template); use --template chatml|llama3|gemma|mistral or --raw"
                ),
            },
            TemplateChoice::Builtin(b) => {
                if !self.has_markers(b) {
                    bail!(
                        "--template {}: this model's vocabulary lacks {} as a token, so the model was not trained on that format; use another --template or --raw",
                        b.name(),
                        b.markers().join(" / ")
                    );
                }
                Ok((Some(Chosen::Builtin(b)), label(b.name(), "--template")))
            }
        }
    }

    /// Whether `opts` puts the text in a chat template on this model (false: `--raw`, or
    /// a model file without a template).
    pub fn templated(&self, opts: &PromptOptions) -> Result<bool> {
        Ok(self.choose(opts)?.0.is_some())
    }

    fn has_markers(&self, b: Builtin) -> bool {
        b.markers().iter().all(|m| self.token_id(m).is_some())
    }

    /// The prompt text, the byte range of the user's text in it (when a template placed
    /// it verbatim), and the template's label.
    fn render(
        &self,
        user: &str,
        opts: &PromptOptions,
    ) -> Result<(String, Option<std::ops::Range<usize>>, Label)> {
        let (chosen, label) = self.choose(opts)?;
        let source = match &chosen {
            None => {
                let (text, shift) = self.with_bos_eos(user.to_string());
                return Ok((text, Some(shift..shift + user.len()), label));
            }
            Some(Chosen::Builtin(b)) => b.source().to_string(),
            Some(Chosen::File) => self.chat_template.clone().unwrap_or_default(),
        };
        let vars = template::Vars {
            bos_token: &self.bos_text,
            eos_token: &self.eos_text,
        };
        let name = format!("the chat template ({}: {})", label.name, label.note);
        let body = template::render_named(&source, user, &vars, &name).map_err(|e| {
            anyhow!("{name} cannot be rendered: {e}; use --template chatml|llama3|gemma|mistral or --raw")
        })?;
        // Where the user's text sits: render again with a marker in its place; the text
        // before and after the marker must be what surrounds the real text.
        let marker = "\u{E000}kvscope-user-text\u{E001}";
        let range = template::render_named(&source, marker, &vars, &name)
            .ok()
            .and_then(|m| {
                let at = m.find(marker)?;
                let (pre, post) = (&m[..at], &m[at + marker.len()..]);
                (body.len() >= pre.len() + post.len()
                    && body.starts_with(pre)
                    && body.ends_with(post))
                .then(|| pre.len()..body.len() - post.len())
            });
        let (text, shift) = self.with_bos_eos(body);
        Ok((text, range.map(|r| r.start + shift..r.end + shift), label))
    }

    /// The prompt for the user's text `user`: template, BOS, and control tokens in the
    /// user's text read as text unless `opts` allows them (or is raw).
    pub fn prompt(&self, user: &str, opts: &PromptOptions) -> Result<Prompt> {
        let (text, range, label) = self.render(user, opts)?;
        let control_tokens = self
            .encode(user)?
            .iter()
            .filter(|&&id| self.is_control(id))
            .count();
        let as_tokens = opts.raw || opts.allow_control_tokens;
        let ids = match (&range, control_tokens > 0 && !as_tokens) {
            (Some(r), true) => self.encode_protected(&text, r.clone())?,
            (None, true) => bail!(
                "the prompt contains control tokens and the chat template does not keep the text verbatim, so they cannot be read as text; pass --allow-control-tokens or --raw"
            ),
            (_, false) => self.encode(&text)?,
        };
        Ok(Prompt {
            text,
            ids,
            info: PromptInfo {
                template: label.name,
                template_note: label.note,
                control_tokens,
                control_tokens_as_tokens: as_tokens,
            },
        })
    }

    /// Encodes `text` with control tokens matched only outside `user`: the text is cut
    /// at the control tokens the template wrote, and each piece between them is encoded
    /// with control-token strings read as text (what the whole text would give if the
    /// user's text had none).
    fn encode_protected(&self, text: &str, user: std::ops::Range<usize>) -> Result<Vec<u32>> {
        let mut cuts: Vec<(usize, usize, u32)> = Vec::new();
        for (from, to) in [(0, user.start), (user.end, text.len())] {
            let (ids, offs) = self.encode_with_offsets(&text[from..to])?;
            for (id, (a, b)) in ids.into_iter().zip(offs) {
                if self.is_control(id) {
                    cuts.push((from + a, from + b, id));
                }
            }
        }
        let mut ids = Vec::new();
        let mut at = 0;
        for (a, b, id) in cuts {
            if a > at {
                ids.extend(self.encode_as_text(&text[at..a])?);
            }
            ids.push(id);
            at = b;
        }
        if at < text.len() {
            ids.extend(self.encode_as_text(&text[at..])?);
        }
        Ok(ids)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// A template's short name and why it was chosen.
struct Label {
    name: String,
    note: String,
}

/// The template a prompt is rendered with.
enum Chosen {
    Builtin(Builtin),
    File,
}
