//! The needle prompts of `kvscope profile srh`, `profile compare` and `eval niah` on the
//! real default model's tokenizer, pinned by sha256. The digests were recorded with the
//! two generators kvscope had before they became one module (eval/haystack.rs and
//! profile/haystack.rs + needles.rs, commit dfff138); the module that replaced them must
//! build byte-identical prompts (text, token ids, answer span, answer), so the shipped
//! profile and the results in docs/data come from the same inputs.

use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::OnceLock;

use kvscope::eval::niah;
use kvscope::model::{self, fetch, Loaded, PromptOptions};
use kvscope::profile::srh::{trial_prompt, TrialSpec};

fn loaded() -> &'static Loaded {
    static MODEL: OnceLock<Loaded> = OnceLock::new();
    MODEL.get_or_init(|| {
        let path: PathBuf = fetch::ensure_default_model(&mut |m| eprintln!("kvscope: {m}"))
            .unwrap_or_else(|e| panic!("cannot obtain the default model: {e:#}"));
        model::load(&path).unwrap_or_else(|e| panic!("cannot load the model: {e:#}"))
    })
}

fn hex(d: impl AsRef<[u8]>) -> String {
    d.as_ref().iter().map(|x| format!("{x:02x}")).collect()
}

/// One digest over every trial prompt (text, ids, span, answer) of the grid, in order;
/// the per-prompt digests are printed so that a mismatch shows which prompt moved.
fn profile_digest(lengths: &[usize], depths: &[f64], needles: &[usize]) -> String {
    let tok = &loaded().tok;
    let mut all = Sha256::new();
    for &length in lengths {
        for &depth in depths {
            for &needle in needles {
                let spec = TrialSpec {
                    needle,
                    length,
                    depth,
                };
                let p = trial_prompt(tok, &spec).unwrap();
                let mut one = Sha256::new();
                one.update(p.text.as_bytes());
                for id in &p.ids {
                    one.update(id.to_le_bytes());
                }
                one.update(format!("|{}..{}|{}", p.span.start, p.span.end, p.answer));
                let d = one.finalize();
                eprintln!("needle {needle} length {length} depth {depth}: {}", hex(d));
                all.update(d);
            }
        }
    }
    hex(all.finalize())
}

#[test]
fn profile_srh_prompts_are_unchanged() {
    // The shipped profile's grid: --lengths 1024,2048 --depths 0,33,67,100 --needles 12.
    let d = profile_digest(
        &[1024, 2048],
        &[0.0, 0.33, 0.67, 1.0],
        &(0..12).collect::<Vec<_>>(),
    );
    assert_eq!(
        d,
        "35a06bc9738a5a9cca87d5b79d7ceb7f5c7c3d52032026050ad31824f2b4a698"
    );
}

#[test]
fn profile_compare_prompts_are_unchanged() {
    // `profile compare` defaults: the held-out needles 12..16, --lengths 1536,
    // --depths 5,35,65,95.
    let d = profile_digest(&[1536], &[0.05, 0.35, 0.65, 0.95], &[12, 13, 14, 15]);
    assert_eq!(
        d,
        "1498036c6ade699e6050a0a23b3bda596cf9fff4ff10be27e7a6f062a35f6169"
    );
}

#[test]
fn eval_niah_prompts_are_unchanged() {
    // `eval niah` defaults: --lengths 1024,2048 --depths 0,25,50,75,100; with the chat
    // template (default) and as text continued by a base model (--raw).
    let tok = &loaded().tok;
    let (lengths, depths) = ([1024, 2048], [0, 25, 50, 75, 100]);
    let mut all = Sha256::new();
    for raw in [false, true] {
        let opts = PromptOptions {
            raw,
            ..PromptOptions::default()
        };
        for (li, &len) in lengths.iter().enumerate() {
            for (di, &depth) in depths.iter().enumerate() {
                let (text, answer) =
                    niah::cell_prompt(tok, &opts, (li, di, depths.len()), len, depth).unwrap();
                let d = Sha256::digest(format!("{text}|{answer}"));
                eprintln!("raw {raw} length {len} depth {depth}: {}", hex(d));
                all.update(d);
            }
        }
    }
    assert_eq!(
        hex(all.finalize()),
        "0ffaa1feee51bc9b0f6c1491f609ba89b7860e5437c887a89c668d423fa3c3ee"
    );
}
