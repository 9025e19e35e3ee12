//! kvscope's tokenizers against llama.cpp's own tokenizer tests: the vocabulary-only
//! GGUFs `ggml-vocab-NAME.gguf` and their cases (`.inp`, inputs separated by lines
//! `__ggml_vocab_test__`) with llama.cpp's ids (`.out`, one line of ids per input), as
//! vendored in the `llama-cpp-python` source package the project's llama.cpp reference
//! uses. The files are obtained through the library (`fetch::ensure_llama_vocabs`: pip
//! download once, extract, cache), so a second run is offline.
//!
//! llama.cpp's `tests/test-tokenizer-0.cpp` produced the `.out` ids with
//! `common_tokenize(ctx, text, add_special = false, parse_special = false)`: no BOS/EOS,
//! control-token strings in the text read as text. kvscope's equivalent is
//! `Tok::encode_as_text`.

use candle_core::quantized::gguf_file::Content;
use kvscope::model::fetch;
use kvscope::model::Tok;
use std::path::PathBuf;
use std::sync::OnceLock;

fn vocab_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        fetch::ensure_llama_vocabs(&mut |s| eprintln!("kvscope: {s}"))
            .unwrap_or_else(|e| panic!("cannot obtain llama.cpp's vocabulary files: {e:#}"))
    })
}

fn load(name: &str) -> anyhow::Result<Tok> {
    let path = vocab_dir().join(format!("ggml-vocab-{name}.gguf"));
    let mut f = std::io::BufReader::new(
        std::fs::File::open(&path)
            .unwrap_or_else(|e| panic!("{} is missing ({e})", path.display())),
    );
    let content = Content::read(&mut f)
        .unwrap_or_else(|e| panic!("{} is not a readable GGUF: {e}", path.display()));
    Tok::from_gguf(&content)
}

/// The cases of `ggml-vocab-NAME.gguf`, split exactly as llama.cpp's test splits them:
/// the text between separators `\n__ggml_vocab_test__\n` (so a case's own trailing
/// newlines belong to it), ids parsed from the matching `.out` line.
fn cases(name: &str) -> Vec<(String, Vec<u32>)> {
    let dir = vocab_dir();
    let read = |ext: &str| {
        let p = dir.join(format!("ggml-vocab-{name}.gguf.{ext}"));
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    let (inp, out) = (read("inp"), read("out"));
    let sep = "\n__ggml_vocab_test__\n";
    let mut inputs = Vec::new();
    let mut rest = inp.as_str();
    while !rest.is_empty() {
        match rest.find(sep) {
            Some(at) => {
                inputs.push(rest[..at].to_string());
                rest = &rest[at + sep.len()..];
            }
            None => {
                inputs.push(rest.to_string());
                rest = "";
            }
        }
    }
    let outputs: Vec<Vec<u32>> = out
        .lines()
        .map(|l| {
            l.split_whitespace()
                .map(|t| {
                    t.parse()
                        .unwrap_or_else(|e| panic!("{name}.out: id {t:?}: {e}"))
                })
                .collect()
        })
        .collect();
    assert_eq!(
        inputs.len(),
        outputs.len(),
        "{name}: .inp and .out have different numbers of cases"
    );
    assert!(inputs.len() >= 20, "{name}: only {} cases", inputs.len());
    inputs.into_iter().zip(outputs).collect()
}

/// Compares every case; `known` lists the indices of cases that are known to differ from
/// llama.cpp, each with the reason. The test fails on any other mismatch and on a known
/// one that now matches (so the list cannot go stale).
fn check(name: &str, known: &[(usize, &str)]) {
    compare(name, cases(name), known);
}

/// [`check`] with the cases and llama.cpp's ids given.
fn compare(name: &str, cases: Vec<(String, Vec<u32>)>, known: &[(usize, &str)]) {
    let tok = load(name).unwrap_or_else(|e| panic!("{name}: kvscope refused it: {e:#}"));
    let mut bad = Vec::new();
    let mut report = String::new();
    for (i, (text, want)) in cases.iter().enumerate() {
        let got = tok
            .encode_as_text(text)
            .unwrap_or_else(|e| panic!("{name} case {i}: {e:#}"));
        if &got != want {
            bad.push(i);
            report.push_str(&format!(
                "\n  case {i} {text:?}:\n    llama.cpp {want:?}\n    kvscope   {got:?}"
            ));
        }
    }
    let expected: Vec<usize> = known.iter().map(|k| k.0).collect();
    assert_eq!(
        bad,
        expected,
        "{name}: {} of {} cases differ from llama.cpp (expected exactly the listed ones):{report}",
        bad.len(),
        cases.len()
    );
    eprintln!(
        "{name}: {} of {} cases equal llama.cpp's ids",
        cases.len() - bad.len(),
        cases.len()
    );
}

#[test]
fn llama_bpe_matches_llama_cpp() {
    check("llama-bpe", &[]);
}

#[test]
fn qwen2_matches_llama_cpp() {
    check("qwen2", &[]);
}

#[test]
fn gpt_2_matches_llama_cpp() {
    check("gpt-2", &[]);
}

#[test]
fn llama_spm_matches_llama_cpp() {
    check("llama-spm", &[]);
}

#[test]
fn other_bpe_vocabularies_match_llama_cpp() {
    for name in [
        "mpt",
        "starcoder",
        "refact",
        "command-r",
        "falcon",
        "qwen35",
    ] {
        check(name, &[]);
    }
}

#[test]
fn phi_3_matches_llama_cpp() {
    check("phi-3", &[]);
}

/// Vocabularies in llama.cpp's test set whose tokenizer kvscope does not implement are
/// refused when the tokenizer is built, with an error naming what the file declares.
#[test]
fn unsupported_vocabularies_are_refused_naming_the_kind() {
    let refused = [
        (
            "bert-bge",
            "unsupported tokenizer 'bert' (tokenizer.ggml.model)",
        ),
        (
            "nomic-bert-moe",
            "unsupported tokenizer 't5' (tokenizer.ggml.model)",
        ),
        (
            "gemma-4",
            "unsupported tokenizer 'gemma4' (tokenizer.ggml.model)",
        ),
    ];
    for (name, want) in refused {
        match load(name) {
            Ok(_) => panic!("{name}: kvscope built a tokenizer it does not implement"),
            Err(e) => {
                let msg = format!("{e:#}");
                assert!(
                    msg.contains(want),
                    "{name}: error {msg:?} does not say {want:?}"
                );
                assert!(
                    !msg.contains('\n'),
                    "{name}: error is not one line: {msg:?}"
                );
            }
        }
    }
}

/// Vocabularies without `tokenizer.ggml.pre` get llama.cpp's `default` pre-tokenizer,
/// which is not GPT-2's. llama.cpp ships no ids for them, so its ids for the gpt-2 cases
/// on two such vocabularies (aquila, gpt-neox) were produced with llama.cpp's own
/// `llama-tokenize` and recorded in tests/reference/llamacpp-default-pre.json (how: in
/// the file).
#[test]
fn default_pre_tokenizer_matches_llama_cpp() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/reference/llamacpp-default-pre.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let reference: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let inputs = cases("gpt-2");
    for name in ["aquila", "gpt-neox"] {
        let ids: Vec<Vec<u32>> = reference["ids"][name]
            .as_array()
            .unwrap_or_else(|| panic!("{}: no ids for {name}", path.display()))
            .iter()
            .map(|case| {
                case.as_array()
                    .unwrap_or_else(|| panic!("{name}: a case is not a list"))
                    .iter()
                    .map(|x| x.as_u64().expect("id") as u32)
                    .collect()
            })
            .collect();
        assert_eq!(ids.len(), inputs.len(), "{name}: one line of ids per case");
        let cases = inputs
            .iter()
            .map(|(text, _)| text.clone())
            .zip(ids)
            .collect();
        compare(name, cases, &[]);
    }
}
