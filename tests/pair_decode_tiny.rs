//! Two decodes stepped in one pass (`DecodeState::step_pair`, what the divergence
//! analysis runs after the free-running and teacher-forced decodes part) give each
//! state's logits bit for bit as its own single steps do: every weight format, both
//! precisions, a Gemma 3 shape with sliding layers, team sizes of 1 to 3, a compressed
//! cache beside a full one. And the paired `decode_both` gives exactly the separate
//! decodes' generation and teacher-forced logits.

use kvscope::eviction::{self, Settings};
use kvscope::keepset::{self, KeepSet};
use kvscope::model::quant::ALL;
use kvscope::model::replay;
use kvscope::model::{self, DecodeState, Model, Observer, Precision};
use kvscope::testing::arch::{write_arch_gguf, ArchSpec};
use kvscope::testing::{self, GgufSpec};
use kvscope::testing_formats::write_tiny_gguf_as;
use kvscope::trace::Trace;

const PROMPT: usize = 40;
const STEPS: usize = 6;

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// A compressed keep set (SnapKV, a third of the prompt) of `trace`.
fn compressed(trace: &Trace) -> KeepSet {
    let s = Settings {
        method: eviction::snapkv::METHOD,
        budget: PROMPT / 3,
        window: 4,
        ..Settings::default()
    };
    eviction::select(&eviction::Request::new(trace, &s))
        .expect("select")
        .keep
}

/// Steps a compressed and a full cache of `m` on different tokens, paired and one by
/// one, in teams of 1, 2 and 3 threads; every step's logits must be the same bits.
fn check_model(m: &Model, what: &str) {
    let vocab = m.config.vocab_size;
    let ids = testing::random_ids(PROMPT, vocab, 3);
    let trace = m.prefill(&ids, 16, &mut |_, _| {}).expect("prefill");
    let (ka, kb) = (compressed(&trace), keepset::full_keep(&trace));
    let ta = testing::random_ids(STEPS, vocab, 8);
    let tb = testing::random_ids(STEPS, vocab, 9);
    for threads in [1, 2, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("pool");
        pool.install(|| {
            let mut a = DecodeState::new(m, &trace, &ka, STEPS).expect("state");
            let mut b = DecodeState::new(m, &trace, &kb, STEPS).expect("state");
            let (mut a1, mut b1) = (a.clone(), b.clone());
            for i in 0..STEPS {
                let la = bits(a1.step(ta[i], Observer::none()).expect("step"));
                let lb = bits(b1.step(tb[i], Observer::none()).expect("step"));
                let [pa, pb] = a.step_pair(&mut b, [ta[i], tb[i]]).expect("pair");
                assert!(
                    bits(pa) == la && bits(pb) == lb,
                    "{what}, {threads} threads, step {i}: paired logits differ"
                );
            }
            assert_eq!((a.pos, b.pos), (a1.pos, b1.pos));
            assert_eq!(a.entries(), a1.entries());
            assert_eq!(b.entries(), b1.entries());
        });
    }
}

#[test]
fn paired_steps_equal_single_steps_in_every_format() {
    for fmt in ALL {
        let dir = testing::temp_dir("pair-formats");
        let path = dir.join(format!("tiny-{}.gguf", fmt.name()));
        write_tiny_gguf_as(&path, &GgufSpec::default(), fmt, None).expect("write");
        let mut m = model::load(&path).expect("load").model;
        let _ = std::fs::remove_dir_all(&dir);
        for precision in [Precision::Q8, Precision::F32] {
            m.precision = precision;
            check_model(&m, &format!("{} {precision:?}", fmt.name()));
        }
    }
}

/// Gemma 3's shape: sliding layers (a window shorter than the prompt), Q/K norms, post
/// norms, GELU, embedding scale, tied output.
#[test]
fn paired_steps_equal_single_steps_on_gemma3() {
    let dir = testing::temp_dir("pair-gemma3");
    let path = dir.join("m.gguf");
    let mut spec = ArchSpec::new("gemma3");
    spec.sliding_window = 12;
    write_arch_gguf(&path, &spec).expect("write");
    let m = model::load(&path).expect("load").model;
    let _ = std::fs::remove_dir_all(&dir);
    assert!(m.config.layers.iter().any(|l| l.window.is_some()));
    check_model(&m, "gemma3");
}

/// The paired decode inside `decode_both` gives exactly (bit for bit) the free-running
/// generation and the teacher-forced logits of the two separate decodes, for budgets
/// that part from the full generation early, late or never.
#[test]
fn decode_both_equals_the_separate_decodes_exactly() {
    const VOCAB: usize = 48;
    const NEW: usize = 12;
    let m = testing::tiny_model(VOCAB, 256, 7);
    let ids = testing::random_ids(PROMPT, VOCAB, 3);
    let trace = m.prefill(&ids, 16, &mut |_, _| {}).expect("prefill");
    let gen = m
        .generate(&trace, &KeepSet::all(&trace.dims, PROMPT), NEW, &[], None)
        .expect("generate");
    let mut parted = 0;
    for budget in [4, 6, 10, 20, PROMPT] {
        let s = Settings {
            method: eviction::snapkv::METHOD,
            budget,
            window: 4,
            ..Settings::default()
        };
        let keep = eviction::select(&eviction::Request::new(&trace, &s))
            .expect("select")
            .keep;
        let d = replay::decode_both(&m, &trace, &keep, &gen, NEW, &[]).expect("decode");
        let ids = m.generate(&trace, &keep, NEW, &[], None).expect("generate");
        let forced = replay::forced_logits(&m, &trace, &keep, &gen).expect("forced");
        assert_eq!(d.ids, ids, "B={budget}");
        assert_eq!(d.forced.len(), forced.len(), "B={budget}");
        for (i, (a, b)) in d.forced.iter().zip(&forced).enumerate() {
            assert!(bits(a) == bits(b), "B={budget} step {i}: logits differ");
        }
        parted += usize::from(d.shared + 1 < NEW);
    }
    assert!(
        parted > 0,
        "no budget parted: the pairing was not exercised"
    );
}

/// A pair at different positions, or of different models, is refused and neither
/// state changes.
#[test]
fn mismatched_pairs_are_refused() {
    let m = testing::tiny_model(48, 256, 7);
    let ids = testing::random_ids(PROMPT, 48, 3);
    let trace = m.prefill(&ids, 16, &mut |_, _| {}).expect("prefill");
    let all = KeepSet::all(&trace.dims, PROMPT);
    let mut a = DecodeState::new(&m, &trace, &all, 4).expect("state");
    let mut b = a.clone();
    b.step(1, Observer::none()).expect("step");
    let err = a.step_pair(&mut b, [1, 2]).expect_err("refused");
    assert!(format!("{err}").contains("same position"), "{err}");
    assert_eq!((a.pos, b.pos), (PROMPT, PROMPT + 1));
    let other = testing::tiny_model(48, 256, 7);
    let mut c = DecodeState::new(&other, &trace, &all, 4).expect("state");
    let err = a.step_pair(&mut c, [1, 2]).expect_err("refused");
    assert!(format!("{err}").contains("same model"), "{err}");
    let err = a.step_pair(&mut a.clone(), [1, 99]).expect_err("refused");
    assert!(format!("{err}").contains("vocabulary"), "{err}");
    assert_eq!(a.entries(), all.kept_per_layer().iter().sum::<usize>());
}
