//! Bounded fuzzing of the parsers that read user files: the GGUF header, metadata and
//! tensor infos (through `model::load`, the path users hit), profiles and budget files.
//! Every input must end in `Ok` or an error, never a panic, a hang or an allocation
//! sized by a corrupt count. Case counts are fixed so CI time stays bounded (a few
//! seconds in all); `PROPTEST_CASES` raises them for a longer local run.

use kvscope::testing::{self, GgufSpec};
use proptest::prelude::*;
use std::path::PathBuf;
use std::sync::OnceLock;

/// The tiny GGUF's bytes and where its tensor data starts (the end of the header).
fn tiny() -> &'static (Vec<u8>, usize) {
    static T: OnceLock<(Vec<u8>, usize)> = OnceLock::new();
    T.get_or_init(|| {
        let dir = testing::temp_dir("fuzz-src");
        let p = dir.join("tiny.gguf");
        testing::write_tiny_gguf(&p, &GgufSpec::default()).expect("write tiny gguf");
        let bytes = std::fs::read(&p).expect("read");
        let mut f = std::fs::File::open(&p).expect("open");
        let c = candle_core::quantized::gguf_file::Content::read(&mut f).expect("parse");
        let _ = std::fs::remove_dir_all(&dir);
        (bytes, c.tensor_data_offset as usize)
    })
}

fn scratch(name: &str) -> PathBuf {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| testing::temp_dir("fuzz")).join(name)
}

fn cases(n: u32) -> ProptestConfig {
    let n = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(n);
    ProptestConfig {
        cases: n,
        // Shrinking a failure is worth it; a passing run never shrinks.
        max_shrink_iters: 200,
        ..ProptestConfig::default()
    }
}

/// Loads `bytes` as a model file; the result may be an error, never a panic.
fn load(bytes: &[u8], name: &str) {
    let p = scratch(name);
    std::fs::write(&p, bytes).expect("write");
    if let Err(e) = kvscope::model::load(&p) {
        // The message is one line that names the file.
        let msg = format!("{e:#}");
        assert!(!msg.contains('\n'), "multi-line error: {msg}");
        assert!(msg.contains(p.to_str().expect("utf-8")), "{msg}");
    }
}

proptest! {
    #![proptest_config(cases(300))]

    /// Up to 8 bytes of the header (counts, lengths, types, keys, values, tensor
    /// infos) replaced, and optionally the file cut short.
    #[test]
    fn gguf_header_with_flipped_bytes(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let (orig, header) = tiny();
        let mut b = orig.clone();
        for (i, v) in flips {
            b[i.index(*header)] = v;
        }
        if let Some(c) = cut {
            b.truncate(c.index(b.len()));
        }
        load(&b, "flip.gguf");
    }

    /// One 4- or 8-byte field of the header set to an extreme value (0, all ones, the
    /// top bit): what a flipped count or length looks like.
    #[test]
    fn gguf_header_with_extreme_fields(
        at in any::<prop::sample::Index>(),
        wide in any::<bool>(),
        v in prop_oneof![Just(0u64), Just(u64::MAX), Just(1u64 << 63), Just(u32::MAX as u64), 0u64..300],
    ) {
        let (orig, header) = tiny();
        let mut b = orig.clone();
        let n = if wide { 8 } else { 4 };
        let i = at.index(header - n);
        b[i..i + n].copy_from_slice(&v.to_le_bytes()[..n]);
        load(&b, "field.gguf");
    }

    /// A valid magic and version followed by random bytes.
    #[test]
    fn gguf_random_after_the_magic(
        version in 0u32..5,
        rest in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&version.to_le_bytes());
        b.extend_from_slice(&rest);
        load(&b, "random.gguf");
    }
}

/// The shipped profile's text.
fn shipped_profile() -> &'static str {
    static P: OnceLock<String> = OnceLock::new();
    P.get_or_init(|| {
        std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/profiles/SmolLM2-135M-Instruct.Q4_1.json"
        ))
        .expect("shipped profile")
    })
}

fn load_profile(bytes: &[u8]) {
    let p = scratch("profile.json");
    std::fs::write(&p, bytes).expect("write");
    if let Ok(pr) = kvscope::profile_format::Profile::load(&p) {
        let dims = kvscope::trace::Dims {
            n_layers: pr.model.n_layers.min(64),
            n_heads: pr.model.n_heads.clamp(1, 64),
            n_kv_heads: pr.model.n_kv_heads.clamp(1, 64),
            head_dim: pr.model.head_dim.min(256),
        };
        // Validation must refuse or accept, never index out of range.
        let _ = pr.validate(&dims, None);
        let _ = pr.validate(&dims, Some(&pr.model.sha256.clone()));
    }
}

proptest! {
    #![proptest_config(cases(200))]

    /// The shipped profile with bytes replaced (numbers, brackets, keys).
    #[test]
    fn profile_with_flipped_bytes(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let mut b = shipped_profile().as_bytes().to_vec();
        for (i, v) in flips {
            let i = i.index(b.len());
            b[i] = v;
        }
        load_profile(&b);
    }

    /// The shipped profile with one number replaced by an extreme or odd one.
    #[test]
    fn profile_with_extreme_numbers(
        which in any::<prop::sample::Index>(),
        v in prop_oneof![
            Just("-1".to_string()), Just("1e308".to_string()), Just("-0".to_string()),
            Just("18446744073709551616".to_string()), Just("null".to_string()),
            Just("[]".to_string()), Just("\"x\"".to_string()), Just("0".to_string()),
        ],
    ) {
        let text = shipped_profile();
        let starts: Vec<usize> = text
            .char_indices()
            .filter(|&(i, c)| c.is_ascii_digit() && (i == 0 || !text.as_bytes()[i - 1].is_ascii_alphanumeric() && text.as_bytes()[i - 1] != b'.'))
            .map(|(i, _)| i)
            .collect();
        let at = starts[which.index(starts.len())];
        let end = text[at..]
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == 'e' || c == '-'))
            .map_or(text.len(), |e| at + e);
        let edited = format!("{}{}{}", &text[..at], v, &text[end..]);
        load_profile(edited.as_bytes());
    }

    /// Random text as a profile.
    #[test]
    fn profile_random(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        load_profile(&bytes);
    }

    /// Budget files and `--layer-budgets` lists: random JSON-ish text.
    #[test]
    fn budget_files_and_lists(
        text in "[\\[\\]0-9,. \\-e+\"a-z]{0,40}",
    ) {
        let p = scratch("budgets.json");
        std::fs::write(&p, &text).expect("write");
        if let Ok(v) = kvscope::tui::files::read_budget_file(&p) {
            prop_assert!(serde_json::from_str::<Vec<usize>>(&text).ok() == Some(v));
        }
        let _ = kvscope::cli::parse_budget_list(&text);
        let _ = kvscope::cli::parse_count(&text);
    }
}

/// Template fragments a fuzzed chat template is built from: loops, big repeats,
/// recursion, the user's text, and broken syntax.
const TEMPLATE_PARTS: [&str; 14] = [
    "{% for i in range(100000) %}",
    "{% endfor %}",
    "{{ messages[0].content }}",
    r#"{{ "x" * 5000000 }}"#,
    "{% if true %}",
    "{% endif %}",
    "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    "{{ bos_token }}",
    "{% for m in messages %}{{ m.role }}{% endfor %}",
    "{{ raise_exception('x') }}",
    "{{ ",
    " }}",
    "{% set ns = namespace(v=1) %}{{ ns.v }}",
    "plain text ",
];

proptest! {
    #![proptest_config(cases(60))]

    /// Random templates end in a prompt within the output limit or a one-line error,
    /// never a hang or an allocation past the limit (issue 22.6).
    #[test]
    fn chat_templates_render_bounded(parts in proptest::collection::vec(0..TEMPLATE_PARTS.len(), 0..12)) {
        use kvscope::model::template::{render, Vars, MAX_TEMPLATE_EXTRA_BYTES};
        let src: String = parts.iter().map(|&i| TEMPLATE_PARTS[i]).collect();
        let vars = Vars { bos_token: "<s>", eos_token: "</s>" };
        match render(&src, "hello", &vars) {
            Ok(s) => prop_assert!(s.len() <= 10 + MAX_TEMPLATE_EXTRA_BYTES),
            Err(e) => prop_assert!(!e.contains('\n'), "{e}"),
        }
    }
}

proptest! {
    #![proptest_config(cases(300))]

    /// Pin lists of digits, commas, dashes and spaces: sorted unique positions within
    /// the limit, or a one-line error (issue 22.7).
    #[test]
    fn pin_lists_parse_bounded(s in "[0-9,\\- ]{0,60}") {
        use kvscope::eviction::pins::{parse_list, MAX_PIN_POSITION};
        match parse_list(&s) {
            Ok(v) => {
                prop_assert!(v.windows(2).all(|w| w[0] < w[1]));
                prop_assert!(v.last().is_none_or(|&p| p <= MAX_PIN_POSITION));
            }
            Err(e) => { let m = format!("{:#}", e); prop_assert!(!m.contains('\n'), "{}", m) },
        }
    }

    /// Ranges of any size and count: parsing never expands past the limit.
    #[test]
    fn pin_ranges_merge(ranges in proptest::collection::vec((0usize..20_000_000, 0usize..2_000_000), 0..40)) {
        use kvscope::eviction::pins::{parse_list, MAX_PIN_POSITION};
        let s: String = ranges.iter().map(|(a, n)| format!("{a}-{}", a + n)).collect::<Vec<_>>().join(",");
        match parse_list(&s) {
            Ok(v) => {
                prop_assert!(v.len() <= MAX_PIN_POSITION + 1);
                prop_assert!(v.windows(2).all(|w| w[0] < w[1]));
            }
            Err(e) => { let m = format!("{:#}", e); prop_assert!(m.contains("past any prompt"), "{}", m) },
        }
    }
}

/// A report `kvscope run --json` wrote for the tiny model's shape: its settings part is
/// what the fuzzed report edits.
fn report_with(pin_keep: &serde_json::Value, pin_evict: &serde_json::Value, name: &str) -> PathBuf {
    let settings = serde_json::json!({
        "method": "snapkv", "budget": 8, "window": 2, "kernel": 7, "pooling": "max",
        "first_k": 0, "allocator": "uniform", "layer_budgets": [10, 10],
        "max_new": 4, "pin_keep": pin_keep, "pin_evict": pin_evict, "model_sha256": "00",
    });
    let p = scratch(name);
    std::fs::write(&p, serde_json::json!({"settings": settings}).to_string()).expect("write");
    p
}

proptest! {
    #![proptest_config(cases(100))]

    /// Reports whose pins are large, repeated, unsorted or of the wrong type load as the
    /// same sorted set or fail with one line, and validate in O(n log n) (issue 22.7).
    #[test]
    fn report_pins_load_and_validate(
        keep in proptest::collection::vec(0usize..5000, 0..3000),
        evict in proptest::collection::vec(5000usize..10000, 0..3000),
        wrong in any::<bool>(),
    ) {
        let k = if wrong { serde_json::json!("1,2") } else { serde_json::json!(keep) };
        let p = report_with(&k, &serde_json::json!(evict), "report-pins.json");
        match kvscope::report::SavedReport::load(&p) {
            Ok(r) => match r.settings.to_settings() {
                Ok(s) => {
                    prop_assert!(s.pin_keep.windows(2).all(|w| w[0] < w[1]));
                    prop_assert!(s.pin_evict.windows(2).all(|w| w[0] < w[1]));
                    prop_assert!(kvscope::eviction::pins::validate(&s.pin_keep, &s.pin_evict, 10_000).is_ok());
                }
                Err(e) => { let m = format!("{:#}", e); prop_assert!(!m.contains('\n'), "{}", m) },
            },
            Err(e) => { let m = format!("{:#}", e); prop_assert!(!m.contains('\n'), "{}", m) },
        }
    }
}
