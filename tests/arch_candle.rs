//! kvscope's forward pass against an independent implementation, candle-transformers,
//! for every supported architecture, on tiny random GGUFs the tests write
//! (`kvscope::testing::arch`): prefill logits within a stated tolerance, and greedy
//! decoding with the full cache giving the same tokens.
//!
//! Which candle model: `quantized_llama` (llama), `quantized_qwen2` (qwen2),
//! `quantized_qwen3` (qwen3) read the very GGUF kvscope reads. For gemma3 candle's
//! `quantized_gemma3` uses a SiLU MLP where Gemma 3 (and llama.cpp, and kvscope) use
//! GELU-tanh, so kvscope is compared with candle's safetensors-style `gemma3` model
//! built from the same weights (HF tensor names, norm gains stored as `w - 1` because
//! that model adds the 1 itself, tied output as Gemma has). The tiny gemma3 uses a
//! sliding window larger than every sequence here (candle's mask keeps S + 1 positions,
//! llama.cpp's and kvscope's S); the window itself is tested against llama.cpp on the
//! real Gemma 3 270M (`real_gemma.rs`) and against a direct computation below.

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use kvscope::keepset::KeepSet;
use kvscope::model::{self, Model, Observer, Precision};
use kvscope::testing::arch::{write_arch_gguf, ArchSpec};
use kvscope::testing::{random_ids, temp_dir};
use std::collections::HashMap;
use std::path::Path;

/// Largest |difference| of the prefill logits allowed, relative to the largest |logit|:
/// both sides compute in f32 with different summation orders. Measured: below 2e-4 for
/// llama, qwen2 and gemma3; 2.9e-4 for qwen3, whose candle model runs its own CPU
/// attention kernel.
const TOL: f32 = 1e-3;
const PROMPT: usize = 24;
const NEW: usize = 12;

/// Runs candle's model over `prompt` then feeds its own greedy tokens one at a time:
/// returns the prefill logits and the greedy tokens (the first from the prefill).
fn candle_run(
    mut forward: impl FnMut(&Tensor, usize) -> candle_core::Result<Tensor>,
    prompt: &[u32],
) -> (Vec<f32>, Vec<u32>) {
    let dev = Device::Cpu;
    let x = Tensor::new(prompt, &dev)
        .and_then(|t| t.unsqueeze(0))
        .expect("ids");
    let logits = forward(&x, 0).expect("candle prefill");
    let first: Vec<f32> = logits
        .flatten_all()
        .and_then(|t| t.to_vec1())
        .expect("logits");
    let mut toks = vec![argmax(&first)];
    for i in 1..NEW {
        let x = Tensor::new(&[toks[i - 1]], &dev)
            .and_then(|t| t.unsqueeze(0))
            .expect("id");
        let l = forward(&x, prompt.len() + i - 1).expect("candle step");
        let v: Vec<f32> = l.flatten_all().and_then(|t| t.to_vec1()).expect("logits");
        toks.push(argmax(&v));
    }
    (first, toks)
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// kvscope on the same file: prefill logits and greedy tokens with every entry kept
/// (f32 decode, the precision that matches prefill to rounding).
fn kvscope_run(path: &Path, prompt: &[u32]) -> (Vec<f32>, Vec<u32>, Model) {
    let mut m = model::load_model(path).expect("kvscope loads the tiny GGUF");
    m.precision = Precision::F32;
    let trace = m.prefill(prompt, 7, &mut |_, _| {}).expect("prefill");
    let keep = KeepSet::all(&trace.dims, trace.len);
    let toks = m.generate(&trace, &keep, NEW, &[], None).expect("generate");
    (trace.last_logits.clone(), toks, m)
}

fn assert_close(arch: &str, ours: &[f32], theirs: &[f32]) {
    assert_eq!(ours.len(), theirs.len(), "{arch}: vocabulary sizes differ");
    let scale = theirs.iter().fold(0f32, |a, &b| a.max(b.abs()));
    let worst = ours
        .iter()
        .zip(theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        worst <= TOL * scale,
        "{arch}: prefill logits differ by {worst} (largest logit {scale})"
    );
    // Not a degenerate model: the logits spread out.
    assert!(scale > 0.5, "{arch}: logits are all near 0");
}

fn read_gguf(path: &Path) -> (gguf_file::Content, std::fs::File) {
    let mut f = std::fs::File::open(path).expect("open");
    let c = gguf_file::Content::read(&mut f).expect("gguf header");
    (c, f)
}

fn compare_gguf_model(arch: &str) {
    let dir = temp_dir(&format!("candle-{arch}"));
    let path = dir.join("m.gguf");
    let (cfg, _) = write_arch_gguf(&path, &ArchSpec::new(arch)).expect("write");
    let prompt = random_ids(PROMPT, cfg.vocab_size, 5);
    let (ours, our_toks, _) = kvscope_run(&path, &prompt);
    let dev = Device::Cpu;
    let (theirs, their_toks) = match arch {
        "llama" => {
            let (c, mut f) = read_gguf(&path);
            let mut m = candle_transformers::models::quantized_llama::ModelWeights::from_gguf(
                c, &mut f, &dev,
            )
            .expect("candle llama");
            candle_run(|x, p| m.forward(x, p), &prompt)
        }
        "qwen2" => {
            let (c, mut f) = read_gguf(&path);
            let mut m = candle_transformers::models::quantized_qwen2::ModelWeights::from_gguf(
                c, &mut f, &dev,
            )
            .expect("candle qwen2");
            candle_run(|x, p| m.forward(x, p), &prompt)
        }
        "qwen3" => {
            let (c, mut f) = read_gguf(&path);
            let mut m = candle_transformers::models::quantized_qwen3::ModelWeights::from_gguf(
                c, &mut f, &dev,
            )
            .expect("candle qwen3");
            candle_run(|x, p| m.forward(x, p), &prompt)
        }
        other => panic!("no candle model for {other}"),
    };
    assert_close(arch, &ours, &theirs);
    assert_eq!(our_toks, their_toks, "{arch}: greedy tokens differ");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn llama_matches_candle() {
    compare_gguf_model("llama");
}

#[test]
fn qwen2_matches_candle() {
    compare_gguf_model("qwen2");
}

#[test]
fn qwen3_matches_candle() {
    compare_gguf_model("qwen3");
}

#[test]
fn gemma3_matches_candle() {
    let dir = temp_dir("candle-gemma3");
    let path = dir.join("m.gguf");
    let spec = ArchSpec::new("gemma3");
    let (cfg, w) = write_arch_gguf(&path, &spec).expect("write");
    assert!(
        w.lm_head.is_none(),
        "tiny gemma3 ties its output, as Gemma does"
    );
    let prompt = random_ids(PROMPT, cfg.vocab_size, 5);
    let (ours, our_toks, _) = kvscope_run(&path, &prompt);

    let dev = Device::Cpu;
    let t = |v: &[f32], shape: &[usize]| Tensor::from_slice(v, shape, &dev).expect("tensor");
    let minus1 = |v: &[f32]| -> Vec<f32> { v.iter().map(|x| x - 1.0).collect() };
    let (d, hd) = (cfg.d_model, cfg.head_dim);
    let mut ts: HashMap<String, Tensor> = HashMap::new();
    ts.insert(
        "model.embed_tokens.weight".into(),
        t(&w.embed.to_f32(), &[w.embed.rows, w.embed.cols]),
    );
    ts.insert("model.norm.weight".into(), t(&minus1(&w.out_norm), &[d]));
    for (i, l) in w.layers.iter().enumerate() {
        let p = |n: &str| format!("model.layers.{i}.{n}");
        let lin = |x: &kvscope::model::linear::Linear| t(&x.to_f32(), &[x.rows, x.cols]);
        let e = &l.extra;
        ts.insert(p("self_attn.q_proj.weight"), lin(&l.wq));
        ts.insert(p("self_attn.k_proj.weight"), lin(&l.wk));
        ts.insert(p("self_attn.v_proj.weight"), lin(&l.wv));
        ts.insert(p("self_attn.o_proj.weight"), lin(&l.wo));
        let qn = e.q_norm.as_ref().expect("q norm");
        let kn = e.k_norm.as_ref().expect("k norm");
        ts.insert(p("self_attn.q_norm.weight"), t(&minus1(qn), &[hd]));
        ts.insert(p("self_attn.k_norm.weight"), t(&minus1(kn), &[hd]));
        ts.insert(p("input_layernorm.weight"), t(&minus1(&l.attn_norm), &[d]));
        let pa = e.post_attn_norm.as_ref().expect("post attention norm");
        let pf = e.post_ffn_norm.as_ref().expect("post ffn norm");
        ts.insert(p("post_attention_layernorm.weight"), t(&minus1(pa), &[d]));
        ts.insert(
            p("pre_feedforward_layernorm.weight"),
            t(&minus1(&l.ffn_norm), &[d]),
        );
        ts.insert(p("post_feedforward_layernorm.weight"), t(&minus1(pf), &[d]));
        ts.insert(p("mlp.gate_proj.weight"), lin(&l.gate));
        ts.insert(p("mlp.up_proj.weight"), lin(&l.up));
        ts.insert(p("mlp.down_proj.weight"), lin(&l.down));
    }
    let config: candle_transformers::models::gemma3::Config =
        serde_json::from_value(serde_json::json!({
            "attention_bias": false,
            "head_dim": hd,
            "hidden_activation": "gelu_pytorch_tanh",
            "hidden_size": d,
            "intermediate_size": cfg.d_ff,
            "num_attention_heads": cfg.n_heads,
            "num_hidden_layers": cfg.n_layers,
            "num_key_value_heads": cfg.n_kv_heads,
            "rms_norm_eps": cfg.rms_eps,
            "rope_theta": cfg.rope_base,
            "rope_local_base_freq": 10000.0,
            "vocab_size": cfg.vocab_size,
            "final_logit_softcapping": null,
            "attn_logit_softcapping": null,
            "query_pre_attn_scalar": hd,
            "sliding_window": spec.sliding_window,
            "sliding_window_pattern": 6,
            "max_position_embeddings": cfg.context_length,
        }))
        .expect("gemma3 config");
    let vb = candle_nn::VarBuilder::from_tensors(ts, DType::F32, &dev);
    let mut m =
        candle_transformers::models::gemma3::Model::new(false, &config, vb).expect("candle gemma3");
    let (theirs, their_toks) = candle_run(|x, p| m.forward(x, p), &prompt);
    assert_close("gemma3", &ours, &theirs);
    assert_eq!(our_toks, their_toks, "gemma3: greedy tokens differ");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A sliding window of 5 on the tiny gemma3: it changes the model (logits differ from
/// the same weights with a window longer than the prompt); every key of a sliding layer
/// receives attention from at most S query rows; and the next token's logits agree
/// three ways: decode over the full cache, decode over the cache eviction builds
/// (sliding layers hold only their last S entries), and a prefill of the prompt plus
/// that token. Prefill and decode therefore mask alike, and what the window cache drops
/// is never used.
#[test]
fn sliding_window_masks_prefill_and_decode_alike() {
    let dir = temp_dir("sliding");
    let path = dir.join("m.gguf");
    let spec = ArchSpec {
        sliding_window: 5,
        ..ArchSpec::new("gemma3")
    };
    let (cfg, _) = write_arch_gguf(&path, &spec).expect("write");
    let mut m = model::load_model(&path).expect("load");
    m.precision = Precision::F32;
    let prompt = random_ids(PROMPT, cfg.vocab_size, 9);
    let trace = m.prefill(&prompt, 7, &mut |_, _| {}).expect("prefill");
    assert_eq!(trace.window(0), Some(5));
    assert_eq!(trace.window(5), None);

    let wide = {
        let p = dir.join("wide.gguf");
        write_arch_gguf(&p, &ArchSpec::new("gemma3")).expect("write");
        let mut w = model::load_model(&p).expect("load");
        w.precision = Precision::F32;
        w.prefill(&prompt, 7, &mut |_, _| {})
            .expect("prefill")
            .last_logits
    };
    let moved = wide
        .iter()
        .zip(&trace.last_logits)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(moved > 1e-3, "the window did not change the logits");

    // A key at position j is seen by query rows j..j+S-1 only: at most S terms <= 1.
    let cs = trace.col_sums(0, 0);
    assert!(cs.iter().all(|&c| c <= 5.0 + 1e-4), "{cs:?}");
    // Each query row sums to 1: the column sums total L.
    let total: f32 = cs.iter().sum();
    assert!((total - PROMPT as f32).abs() < 1e-3);
    // Chunks of 7 (later chunks skip the keys before their window) and one chunk give
    // the same Trace.
    let whole = m.prefill(&prompt, PROMPT, &mut |_, _| {}).expect("prefill");
    for li in 0..cfg.n_layers {
        for (a, b) in whole.col_sums(li, 0).iter().zip(trace.col_sums(li, 0)) {
            assert!((a - b).abs() < 1e-4, "layer {li}: column sums {a} vs {b}");
        }
    }
    for (a, b) in whole.last_logits.iter().zip(&trace.last_logits) {
        assert!((a - b).abs() < 1e-4, "last logits {a} vs {b}");
    }

    // Decode the next token over the full cache, and over the cache eviction builds
    // (sliding layers hold only their last S entries): same logits. And both equal a
    // prefill of the prompt plus that token.
    let l = PROMPT;
    let tok = argmax(&trace.last_logits);
    let all = KeepSet::all(&trace.dims, trace.len);
    let sel = kvscope::eviction::select(&kvscope::eviction::Request::new(
        &trace,
        &kvscope::eviction::Settings {
            method: kvscope::eviction::full::METHOD,
            ..Default::default()
        },
    ))
    .expect("select");
    assert_eq!(sel.keep.positions[0][0], (l - 5..l).collect::<Vec<_>>());
    let mut a = kvscope::model::DecodeState::new(&m, &trace, &all, 2).expect("state");
    let la = a.step(tok, Observer::none()).expect("step").to_vec();
    let mut b = kvscope::model::DecodeState::new(&m, &trace, &sel.keep, 2).expect("state");
    let lb = b.step(tok, Observer::none()).expect("step").to_vec();
    let mut longer = prompt.clone();
    longer.push(tok);
    let t2 = m.prefill(&longer, 7, &mut |_, _| {}).expect("prefill");
    let scale = t2.last_logits.iter().fold(0f32, |a, &b| a.max(b.abs()));
    for (name, got) in [("full cache", &la), ("window cache", &lb)] {
        let worst = got
            .iter()
            .zip(&t2.last_logits)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(worst <= 1e-4 * scale, "{name}: decode vs prefill {worst}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The eviction scores' window rows of a sliding layer are the attention the model
/// itself computes: the last prompt row from `window_rows` (on the trace of the whole
/// prompt) equals the attention of a decode step that feeds the last prompt token after
/// a prefill of the others (decode masks the window on its own path). Then
/// `evict_sliding` on that model keeps, in each sliding layer, the budget's worth of
/// entries inside the window, and decoding over that cache runs.
#[test]
fn sliding_window_scores_are_the_models_attention_and_evict_sliding_decodes() {
    let dir = temp_dir("evict-sliding");
    let path = dir.join("m.gguf");
    let spec = ArchSpec {
        sliding_window: 12,
        ..ArchSpec::new("gemma3")
    };
    let (cfg, _) = write_arch_gguf(&path, &spec).expect("write");
    let mut m = model::load_model(&path).expect("load");
    m.precision = Precision::F32;
    let prompt = random_ids(PROMPT, cfg.vocab_size, 4);
    let trace = m.prefill(&prompt, 7, &mut |_, _| {}).expect("prefill");
    let short = m
        .prefill(&prompt[..PROMPT - 1], 7, &mut |_, _| {})
        .expect("prefill");
    let all = KeepSet::all(&short.dims, short.len);
    let mut st = kvscope::model::DecodeState::new(&m, &short, &all, 2).expect("state");
    let mut rows = Vec::new();
    st.step(prompt[PROMPT - 1], Observer::attention(&mut rows))
        .expect("step");
    let step = &rows[0].probs;
    for layer in [0usize, 5] {
        assert_eq!(trace.window(layer).is_some(), layer == 0);
        for (head, want) in step[layer].iter().enumerate() {
            kvscope::eviction::scores::window_rows(&trace, layer, head, 4, |i, row| {
                if i != 3 {
                    return;
                }
                assert_eq!(row.len(), want.len());
                for (j, (a, b)) in row.iter().zip(want).enumerate() {
                    assert!(
                        (a - b).abs() < 1e-5,
                        "layer {layer} head {head} pos {j}: {a} vs {b}"
                    );
                }
                if layer == 0 {
                    assert!(row[..PROMPT - 12].iter().all(|&x| x == 0.0));
                }
            });
        }
    }

    let mut s = kvscope::eviction::Settings {
        method: kvscope::eviction::snapkv::METHOD,
        budget: 8,
        window: 4,
        ..Default::default()
    };
    s.evict_sliding = Some(true);
    let sel =
        kvscope::eviction::select(&kvscope::eviction::Request::new(&trace, &s)).expect("select");
    for l in 0..cfg.n_layers {
        let kept = &sel.keep.positions[l][0];
        assert_eq!(kept.len(), 8, "layer {l}");
        if trace.window(l).is_some() {
            assert!(
                kept.iter().all(|&p| p >= PROMPT - 12),
                "layer {l}: {kept:?}"
            );
        }
    }
    let mut d = kvscope::model::DecodeState::new(&m, &trace, &sel.keep, 2).expect("state");
    let logits = d
        .step(argmax(&trace.last_logits), Observer::none())
        .expect("step");
    assert!(logits.iter().all(|x| x.is_finite()));
    let _ = std::fs::remove_dir_all(&dir);
}
