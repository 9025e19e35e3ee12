//! The tokenizer models built from a GGUF's vocabulary: byte-level BPE with the file's
//! merges and llama.cpp's pre-tokenizer regexes (`gpt2`), and SentencePiece BPE whose
//! merges are derived from the scores (`llama`); see the folder's front page.

use anyhow::{anyhow, bail, Context, Result};
use candle_core::quantized::gguf_file::Value;
use std::collections::HashMap;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{NormalizerWrapper, Prepend, Replace};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{SplitDelimiterBehavior, Tokenizer};

/// GGUF token types (llama.cpp's `llama_token_type`).
pub(super) const TOKEN_TYPE_NORMAL: i32 = 1;
pub(super) const TOKEN_TYPE_CONTROL: i32 = 3;
pub(super) const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// SentencePiece's visible space.
const SPM_SPACE: &str = "\u{2581}";

/// llama.cpp's pre-tokenizer regexes for `tokenizer.ggml.pre = default`, applied in turn.
const DEFAULT_REGEXES: [&str; 4] = [
    r"[\p{P}\$\+<=>\^~\|]+",
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
    r"\p{N}+",
    r"[0-9][0-9][0-9]",
];

/// llama.cpp's pre-tokenizer regexes for `falcon`, applied in turn.
const FALCON_REGEXES: [&str; 3] = [
    r"[\p{P}\$\+<=>\^~\|`]+",
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
    r"[0-9][0-9][0-9]",
];

/// llama.cpp's pre-tokenizer regexes for `deepseek-llm`, applied in turn.
const DEEPSEEK_LLM_REGEXES: [&str; 6] = [
    "[\r\n]",
    "\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",
    "\\s?[!-/:-~！-／：-～‘-‟　-。]+",
    "\\s+$",
    "[一-龥ࠀ-一가-퟿]+",
    "\\p{N}+",
];

/// llama.cpp's pre-tokenizer regexes for `deepseek-coder`, applied in turn.
const DEEPSEEK_CODER_REGEXES: [&str; 5] = [
    "[\r\n]",
    r"\s?\p{L}+",
    r"\s?\p{P}+",
    "[一-龥ࠀ-一가-\u{d7ff}]+",
    r"\p{N}",
];

/// Llama 3's pre-tokenizer regex (llama.cpp `llama-bpe`).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's pre-tokenizer regex: Llama 3's with single digits.
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen3.5's pre-tokenizer regex (llama.cpp `qwen35`).
const QWEN35_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

pub(super) fn gpt2_tokenizer(
    md: &HashMap<String, Value>,
    tokens: &[String],
    pre: &str,
) -> Result<Tokenizer> {
    let merges_raw = string_array(md, "tokenizer.ggml.merges")?;
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .rev() // a duplicated token keeps its first id
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
    let (pre_tok, ignore_merges) = pre_tokenizer(pre)?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(|e| anyhow!("cannot build the BPE tokenizer from the model file: {e}"))?;
    let mut tk = Tokenizer::new(bpe);
    tk.with_pre_tokenizer(Some(pre_tok));
    tk.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(tk)
}

/// The pre-tokenizer `tokenizer.ggml.pre` names, and whether a whole pre-token found in
/// the vocabulary skips the merges (Llama 3).
fn pre_tokenizer(pre: &str) -> Result<(PreTokenizerWrapper, bool)> {
    let byte_level = ByteLevel::new(false, true, true);
    // Each regex splits the pieces the previous one left (matches and the text between
    // them both kept), as llama.cpp applies its list of pre-tokenizer regexes; then the
    // bytes are mapped without GPT-2's own regex.
    let splits = |res: &[&str]| -> Result<PreTokenizerWrapper> {
        let mut seq = Vec::new();
        for re in res {
            let s = Split::new(
                SplitPattern::Regex(re.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| anyhow!("pre-tokenizer regex: {e}"))?;
            seq.push(PreTokenizerWrapper::Split(s));
        }
        seq.push(PreTokenizerWrapper::ByteLevel(ByteLevel::new(
            false, true, false,
        )));
        Ok(PreTokenizerWrapper::Sequence(Sequence::new(seq)))
    };
    let split = |re: &str| splits(&[re]);
    Ok(match pre {
        // SmolLM: every digit is a pre-token of its own, then GPT-2's regex.
        // llama.cpp gives StarCoder, Refact and Command-R the same pre-tokenizer.
        "smollm" | "starcoder" | "refact" | "command-r" => (
            PreTokenizerWrapper::Sequence(Sequence::new(vec![
                PreTokenizerWrapper::Digits(Digits::new(true)),
                PreTokenizerWrapper::ByteLevel(byte_level),
            ])),
            false,
        ),
        "gpt2" | "gpt-2" | "mpt" => (PreTokenizerWrapper::ByteLevel(byte_level), false),
        // llama.cpp's `default` (also what a file without `tokenizer.ggml.pre` gets) is
        // not GPT-2's: punctuation runs are split off first, then GPT-2's regex, then
        // digit runs, cut into groups of three from the left.
        "default" => (splits(&DEFAULT_REGEXES)?, false),
        // Falcon: `default` with backquotes among the punctuation and no digit-run split.
        "falcon" => (splits(&FALCON_REGEXES)?, false),
        "deepseek-llm" => (splits(&DEEPSEEK_LLM_REGEXES)?, false),
        "deepseek-coder" => (splits(&DEEPSEEK_CODER_REGEXES)?, false),
        // Qwen3.5: Qwen2's with combining marks kept inside words.
        "qwen35" => (split(QWEN35_REGEX)?, false),
        "llama-bpe" | "llama3" | "llama-v3" => (split(LLAMA3_REGEX)?, true),
        "qwen2" | "deepseek-r1-qwen" => (split(QWEN2_REGEX)?, false),
        other => bail!(
            "unsupported pre-tokenizer '{other}' (tokenizer.ggml.pre); kvscope knows: smollm, gpt2, gpt-2, default, llama-bpe, qwen2, deepseek-r1-qwen, mpt, starcoder, refact, command-r, falcon, qwen35, deepseek-llm, deepseek-coder"
        ),
    })
}

/// SentencePiece BPE as a `tokenizers` BPE: merges derived from the vocabulary, ranked by
/// the score of their result (see the module comment).
pub(super) fn spm_tokenizer(
    tokens: &[String],
    scores: &[f32],
    types: &[i32],
    unk: Option<String>,
    add_space_prefix: bool,
) -> Result<Tokenizer> {
    let mut vocab = tokenizers::models::bpe::Vocab::default();
    for (i, t) in tokens.iter().enumerate() {
        vocab.entry(t.clone()).or_insert(i as u32);
    }
    // Pieces and results are normal tokens: control and user-defined tokens are matched
    // before the model runs, byte tokens only stand in for characters outside the
    // vocabulary.
    let normal = |s: &str| {
        vocab
            .get(s)
            .is_some_and(|&i| types[i as usize] == TOKEN_TYPE_NORMAL)
    };
    let mut ranked: Vec<(f32, u32, usize)> = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        if types[i] != TOKEN_TYPE_NORMAL || vocab.get(t) != Some(&(i as u32)) {
            continue;
        }
        for (at, _) in t.char_indices().skip(1) {
            if normal(&t[..at]) && normal(&t[at..]) {
                ranked.push((scores[i], i as u32, at));
            }
        }
    }
    // Highest score first; ties (one token from different splits) by split position.
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let merges: Vec<(String, String)> = ranked
        .iter()
        .map(|&(_, i, at)| {
            let t = &tokens[i as usize];
            (t[..at].to_string(), t[at..].to_string())
        })
        .collect();
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(u) = unk {
        builder = builder.unk_token(u);
    }
    let bpe = builder.build().map_err(|e| {
        anyhow!("cannot build the SentencePiece tokenizer from the model file: {e}")
    })?;
    let mut tk = Tokenizer::new(bpe);
    let replace = Replace::new(" ", SPM_SPACE).map_err(|e| anyhow!("{e}"))?;
    let mut norm = vec![];
    if add_space_prefix {
        norm.push(NormalizerWrapper::Prepend(Prepend::new(SPM_SPACE.into())));
    }
    norm.push(NormalizerWrapper::Replace(replace));
    tk.with_normalizer(Some(NormalizerWrapper::Sequence(
        tokenizers::normalizers::Sequence::new(norm),
    )));
    let mut dec = vec![
        DecoderWrapper::Replace(Replace::new(SPM_SPACE, " ").map_err(|e| anyhow!("{e}"))?),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ];
    if add_space_prefix {
        dec.push(DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
    }
    tk.with_decoder(Some(DecoderWrapper::Sequence(DecoderSequence::new(dec))));
    Ok(tk)
}

pub(super) fn string_array(md: &HashMap<String, Value>, key: &str) -> Result<Vec<String>> {
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

pub(super) fn f32_array(md: &HashMap<String, Value>, key: &str) -> Result<Vec<f32>> {
    match md.get(key) {
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.to_f32().map_err(|e| anyhow!("{key}: {e}")))
            .collect::<Result<Vec<_>>>()
            .with_context(|| format!("GGUF metadata '{key}' is not a list of numbers")),
        _ => bail!("GGUF metadata lacks '{key}': a SentencePiece tokenizer needs its token scores"),
    }
}
