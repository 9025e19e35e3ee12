//! The tokenizer, rebuilt from the GGUF's own metadata as a `tokenizers::Tokenizer`
//! (GPT-2 style byte-level BPE), and the chat template.

use anyhow::{anyhow, bail, Context, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use std::collections::HashMap;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, Tokenizer};

/// GGUF token types that are matched as whole special tokens.
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// Byte range `[start, end)` of each token in the encoded text.
pub type Offsets = Vec<(usize, usize)>;

pub struct Tok {
    inner: Tokenizer,
    /// Ids that end a generation (EOS and ChatML's end of turn).
    pub stop_ids: Vec<u32>,
    pub chatml: bool,
}

impl Tok {
    pub fn from_gguf(content: &Content) -> Result<Self> {
        let md = &content.metadata;
        let model = super::config::get_str(md, "tokenizer.ggml.model")?;
        if model != "gpt2" {
            bail!(
                "unsupported tokenizer '{model}': kvscope supports GGUFs with a GPT-2 style byte-level BPE \
                 tokenizer (tokenizer.ggml.model = gpt2; SmolLM, Llama 3.x, Qwen-like); SentencePiece ('llama') \
                 models are not supported yet"
            );
        }
        let pre = md
            .get("tokenizer.ggml.pre")
            .and_then(|v| v.to_string().ok().cloned())
            .unwrap_or_else(|| "default".into());
        let tokens = string_array(md, "tokenizer.ggml.tokens")?;
        let merges_raw = string_array(md, "tokenizer.ggml.merges")?;
        let types: Vec<i32> = match md.get("tokenizer.ggml.token_type") {
            Some(Value::Array(a)) => a.iter().map(|v| v.to_i32().unwrap_or(1)).collect(),
            _ => vec![1; tokens.len()],
        };
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let merges = merges_raw
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| anyhow!("malformed BPE merge '{m}' in the model file"))
            })
            .collect::<Result<Vec<_>>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| anyhow!("cannot build the BPE tokenizer from the model file: {e}"))?;
        let mut tk = Tokenizer::new(bpe);
        tk.with_pre_tokenizer(Some(pre_tokenizer(&pre)?));
        tk.with_decoder(Some(ByteLevelDecoder::default()));
        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, &t)| t == TOKEN_TYPE_CONTROL || t == TOKEN_TYPE_USER_DEFINED)
            .map(|(s, _)| AddedToken::from(s.clone(), true))
            .collect();
        tk.add_special_tokens(&specials);

        let mut stop_ids = Vec::new();
        if let Some(id) = md
            .get("tokenizer.ggml.eos_token_id")
            .and_then(|v| v.to_u32().ok())
        {
            stop_ids.push(id);
        }
        let im_end = tokens.iter().position(|t| t == "<|im_end|>");
        let eot = tokens.iter().position(|t| t == "<|eot_id|>");
        for id in [im_end, eot].into_iter().flatten() {
            if !stop_ids.contains(&(id as u32)) {
                stop_ids.push(id as u32);
            }
        }
        let chatml = im_end.is_some() && tokens.iter().any(|t| t == "<|im_start|>");
        Ok(Tok {
            inner: tk,
            stop_ids,
            chatml,
        })
    }

    /// Token ids of `text`; special tokens written in the text are recognised, no BOS is
    /// added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
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

    /// The prompt as the model expects it: ChatML user turn (without a system prompt)
    /// for chat models, or the text as is when `raw` or when the model has no template.
    pub fn apply_template(&self, prompt: &str, raw: bool) -> String {
        if raw || !self.chatml {
            prompt.to_string()
        } else {
            format!("<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n")
        }
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

fn pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper> {
    let byte_level = ByteLevel::new(false, true, true);
    Ok(match pre {
        // SmolLM: every digit is a pre-token of its own, then GPT-2's regex.
        "smollm" => PreTokenizerWrapper::Sequence(Sequence::new(vec![
            PreTokenizerWrapper::Digits(Digits::new(true)),
            PreTokenizerWrapper::ByteLevel(byte_level),
        ])),
        "gpt2" | "default" => PreTokenizerWrapper::ByteLevel(byte_level),
        other => bail!(
            "unsupported pre-tokenizer '{other}' (tokenizer.ggml.pre); kvscope knows: smollm, gpt2, default"
        ),
    })
}

fn string_array(md: &HashMap<String, Value>, key: &str) -> Result<Vec<String>> {
    match md.get(key) {
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.to_string().cloned().map_err(|e| anyhow!("{key}: {e}")))
            .collect::<Result<Vec<_>>>()
            .with_context(|| format!("GGUF metadata '{key}' is not a list of strings")),
        _ => {
            bail!("GGUF metadata lacks '{key}': kvscope needs the tokenizer inside the model file")
        }
    }
}
