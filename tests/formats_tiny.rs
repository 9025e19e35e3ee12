//! Every weight format through the real loader and forward pass, on tiny random GGUFs the
//! test writes (candle quantises the matrices): prefill with the stored blocks equals
//! prefill with an f32 copy of the same (dequantised) weights to float rounding, decode
//! with 8-bit activations stays within stated bounds of the f32 decode, and tensor types
//! kvscope does not read are refused naming the tensor.

use candle_core::quantized::GgmlDType;
use kvscope::keepset::KeepSet;
use kvscope::model::quant::{Format, ALL};
use kvscope::model::{self, DecodeState, Model, Observer, Precision};
use kvscope::testing::{self, GgufSpec};
use kvscope::testing_formats::write_tiny_gguf_as;

fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn load(fmt: Format) -> (Model, Model) {
    let dir = testing::temp_dir("formats");
    let path = dir.join(format!("tiny-{}.gguf", fmt.name()));
    let spec = GgufSpec::default();
    write_tiny_gguf_as(&path, &spec, fmt, None).expect("write");
    let stored = model::load(&path).expect("load").model;
    let _ = std::fs::remove_dir_all(&dir);
    let reference = Model::new(stored.config.clone(), stored.weights.to_f32()).expect("model");
    (stored, reference)
}

/// Prefill multiplies with the stored blocks. In `Precision::F32` (panels dequantised
/// before each f32 GEMM) the Trace and the last logits equal those of the f32 copy to
/// 1e-4 of their scale. In `Precision::Q8` (the default: K-quant matrices against Q8_K
/// activations, the last logits against 8-bit activations, as llama.cpp computes them)
/// they stay within 8-bit activation rounding: 3% of their scale, the decode bound below
/// (measured: 0.3% for the 32-value formats, 1.5% for the K-quants).
#[test]
fn quantised_prefill_equals_the_f32_path() {
    for fmt in ALL {
        let (mut stored, mut reference) = load(fmt);
        let vocab = stored.config.vocab_size;
        let ids = testing::random_ids(70, vocab, 3);
        for (precision, tol) in [(Precision::F32, 1e-4), (Precision::Q8, 3e-2)] {
            stored.precision = precision;
            // The same precision on both sides, so both Traces hold K and V in the same
            // type (f32, or f16 as the decode cache on the fast path).
            reference.precision = precision;
            let a = stored.prefill(&ids, 32, &mut |_, _| {}).expect("prefill");
            let b = reference
                .prefill(&ids, 32, &mut |_, _| {})
                .expect("prefill");
            let e = max_rel(&a.last_logits, &b.last_logits);
            assert!(
                e <= tol,
                "{} {precision:?}: logits differ by {e}",
                fmt.name()
            );
            for (l, (x, y)) in a.layers.iter().zip(&b.layers).enumerate() {
                let ek = max_rel(&x.k.to_f32(), &y.k.to_f32());
                let ev = max_rel(&x.v.to_f32(), &y.v.to_f32());
                assert!(
                    ek <= tol && ev <= tol,
                    "{} {precision:?} layer {l}: K {ek} V {ev}",
                    fmt.name()
                );
            }
        }
        assert_eq!(
            stored.weights.layers[0].wq.format(),
            fmt,
            "held in the file's format"
        );
    }
}

/// Decode with 8-bit activations over the stored blocks (float formats: f32
/// activations) against the f32 decode of the same weights: the next-token logits agree
/// within 3% of their largest magnitude, over 8 steps fed the same tokens.
#[test]
fn quantised_decode_stays_close_to_f32() {
    for fmt in ALL {
        let (mut stored, mut reference) = load(fmt);
        stored.precision = Precision::Q8;
        reference.precision = Precision::F32;
        let vocab = stored.config.vocab_size;
        let ids = testing::random_ids(40, vocab, 5);
        let next = testing::random_ids(8, vocab, 6);
        let ta = stored.prefill(&ids, 64, &mut |_, _| {}).expect("prefill");
        let tb = reference
            .prefill(&ids, 64, &mut |_, _| {})
            .expect("prefill");
        let all = KeepSet::all(&ta.dims, ta.len);
        let mut da = DecodeState::new(&stored, &ta, &all, 8).expect("decode");
        let mut db = DecodeState::new(&reference, &tb, &all, 8).expect("decode");
        let mut worst = 0f32;
        for &t in &next {
            let la = da.step(t, Observer::none()).expect("step").to_vec();
            let lb = db.step(t, Observer::none()).expect("step").to_vec();
            worst = worst.max(max_rel(&la, &lb));
        }
        assert!(
            worst <= 0.03,
            "{}: decode logits differ by {worst}",
            fmt.name()
        );
        eprintln!("{}: decode vs f32 max rel diff {worst:.5}", fmt.name());
    }
}

/// A matrix of a GGUF type kvscope does not read is refused with one line naming the
/// tensor, its type and what is read.
#[test]
fn unsupported_tensor_types_are_refused_by_name() {
    let dir = testing::temp_dir("formats-refuse");
    let path = dir.join("tiny-q2k.gguf");
    write_tiny_gguf_as(
        &path,
        &GgufSpec::default(),
        Format::Q4K,
        Some(GgmlDType::Q2K),
    )
    .expect("write");
    let err = match model::load(&path) {
        Ok(_) => panic!("a Q2_K file loaded"),
        Err(e) => format!("{e:#}"),
    };
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        err.contains("blk.0.attn_q.weight") && err.contains("Q2K") && err.contains("Q6_K"),
        "{err}"
    );
}
