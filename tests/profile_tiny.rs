//! The profile measurements on the tiny random model (no download): needle prompts and
//! their answer spans, the first token's attention row, determinism of the SRH
//! measurement, layer errors, and profile lookup by fingerprint.

use std::sync::atomic::AtomicBool;

use kvscope::haystack::needles::NEEDLES;
use kvscope::haystack::prompt::needle_prompt;
use kvscope::keepset::KeepSet;
use kvscope::model::{DecodeState, Loaded, Observer, Precision};
use kvscope::profile::srh::{self, SrhConfig, TrialSpec};
use kvscope::profile::{discover, layers};
use kvscope::profile_format::{l1_normalise, rank_best_first, Profile};
use kvscope::testing::{tiny_loaded, tiny_model};

#[test]
fn needle_prompts_hold_the_answer_span_at_the_requested_depth() {
    let (loaded, _) = tiny_loaded("needle");
    let tok = &loaded.tok;
    for (i, needle) in NEEDLES.iter().enumerate() {
        let mut last_start = 0;
        for depth in [0.0, 0.5, 1.0] {
            let p = needle_prompt(tok, needle, 900, depth, i).unwrap();
            assert_eq!(tok.decode(&p.ids[p.span.clone()]).trim(), needle.answer);
            assert!(p.text.starts_with("<|im_start|>user\n"));
            assert!(p.text.ends_with("<|im_start|>assistant\n"));
            assert!(p.text.contains(needle.question));
            // About the requested length (whole sentences; the tiny vocab is bytes).
            assert!((700..=900).contains(&p.ids.len()), "{} tokens", p.ids.len());
            assert!(p.span.start >= last_start, "depth {depth}");
            last_start = p.span.start;
        }
    }
}

/// The first generated token comes from the prefill's last query row; the row
/// recomputed from the Trace must be the attention a decode step computes for the same
/// position over the same keys.
#[test]
fn last_prompt_row_equals_the_decode_attention_of_that_position() {
    let mut m = tiny_model(300, 256, 11);
    m.precision = Precision::F32;
    let ids = kvscope::testing::random_ids(40, 300, 5);
    let full = m.prefill(&ids, 16, &mut |_, _| {}).unwrap();
    let row = srh::last_prompt_row(&full);
    // Prefill all but the last token, then feed it as a decode step.
    let head = m.prefill(&ids[..39], 16, &mut |_, _| {}).unwrap();
    let all = KeepSet::all(&head.dims, head.len);
    let mut st = DecodeState::new(&m, &head, &all, 4).unwrap();
    let mut cap = Vec::new();
    st.step(ids[39], Observer::attention(&mut cap)).unwrap();
    let step = &cap[0].probs;
    for l in 0..2 {
        for h in 0..4 {
            assert_eq!(row[l][h].len(), 40);
            let s: f32 = row[l][h].iter().sum();
            assert!((s - 1.0).abs() < 1e-4);
            for (a, b) in row[l][h].iter().zip(&step[l][h]) {
                assert!((a - b).abs() < 1e-4, "layer {l} head {h}: {a} vs {b}");
            }
        }
    }
}

#[test]
fn srh_measurement_is_deterministic() {
    let (loaded, _) = tiny_loaded("determinism");
    let cfg = SrhConfig {
        lengths: vec![500],
        depths: vec![0.0, 1.0],
        needles: vec![0, 3],
        max_new: 6,
    };
    let stop = AtomicBool::new(false);
    let run = || {
        let mut outs = Vec::new();
        let totals = srh::measure(&loaded.model, &loaded.tok, &cfg, &stop, &mut |o, _, _| {
            outs.push(o.clone())
        })
        .unwrap();
        (totals, outs)
    };
    let (t1, o1) = run();
    let (t2, o2) = run();
    assert_eq!(o1.len(), 4);
    assert_eq!(o1, o2);
    assert_eq!(t1, t2);
    // Rankings from the raw per-trial credits agree too.
    let r1: Vec<_> = o1[0]
        .credit
        .srh
        .iter()
        .map(|s| rank_best_first(s))
        .collect();
    let r2: Vec<_> = o2[0]
        .credit
        .srh
        .iter()
        .map(|s| rank_best_first(s))
        .collect();
    assert_eq!(r1, r2);
}

#[test]
fn srh_trial_credits_only_span_tokens() {
    let (loaded, _) = tiny_loaded("trial");
    let spec = TrialSpec {
        needle: 8,
        length: 400,
        depth: 0.5,
    };
    let prompt = srh::trial_prompt(&loaded.tok, &spec).unwrap();
    let out = srh::run_trial(&loaded.model, &loaded.tok, spec, &prompt, 8).unwrap();
    let span_ids = &prompt.ids[prompt.span.clone()];
    let copies = out
        .generated
        .iter()
        .filter(|t| span_ids.contains(t))
        .count();
    let credited: f64 = out.credit.srh.iter().flatten().sum();
    if copies == 0 {
        assert_eq!(credited, 0.0);
        assert_eq!(out.credit.copy_steps, 0);
    } else {
        assert!(credited > 0.0);
        assert_eq!(out.credit.copy_steps, copies);
    }
}

#[test]
fn a_stop_request_writes_nothing_and_says_so() {
    let (loaded, _) = tiny_loaded("stop");
    let cfg = SrhConfig {
        lengths: vec![400],
        depths: vec![0.0],
        needles: vec![0],
        max_new: 2,
    };
    let stop = AtomicBool::new(true);
    let err = srh::measure(&loaded.model, &loaded.tok, &cfg, &stop, &mut |_, _, _| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("interrupted"), "{err}");
}

fn tiny_profile(loaded: &Loaded, sha: &str) -> Profile {
    let d = loaded.model.dims();
    let scores: Vec<Vec<f64>> = (0..d.n_layers)
        .map(|l| (0..d.n_heads).map(|h| ((h + l) % 3) as f64).collect())
        .collect();
    Profile {
        format_version: kvscope::profile_format::FORMAT_VERSION,
        model: discover::fingerprint(&loaded.model.config, sha),
        srh_ranking: scores.iter().map(|s| rank_best_first(s)).collect(),
        retrieval_scores: scores.clone(),
        srh_scores: scores,
        layer_errors: None,
        provenance: kvscope::profile_format::Provenance {
            command: "test".into(),
            settings: serde_json::json!({}),
            trials_counted: 1,
            kvscope_version: "test".into(),
        },
    }
}

#[test]
fn layer_errors_are_zero_without_eviction_and_positive_with_it() {
    let (loaded, _) = tiny_loaded("layers");
    let profile = tiny_profile(&loaded, &"0".repeat(64));
    let prompt = srh::trial_prompt(
        &loaded.tok,
        &TrialSpec {
            needle: 1,
            length: 300,
            depth: 0.3,
        },
    )
    .unwrap();
    let tight = layers::srh_uniform_settings(32, 8, 2);
    let e = layers::prompt_errors(&loaded.model, &loaded.tok, &prompt.ids, &profile, &tight, 5)
        .unwrap();
    assert_eq!(e.len(), 2);
    assert!(e.iter().all(|x| x.is_finite() && *x > 0.0), "{e:?}");
    let n = l1_normalise(&e).unwrap();
    assert!((n.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    let loose = layers::srh_uniform_settings(4096, 8, 2);
    let e = layers::prompt_errors(&loaded.model, &loaded.tok, &prompt.ids, &profile, &loose, 5)
        .unwrap();
    assert!(e.iter().all(|&x| x < 1e-5), "{e:?}");
}

#[test]
fn profiles_are_found_by_model_sha_and_explicit_mismatches_are_errors() {
    let (loaded, path) = tiny_loaded("resolve");
    let sha = discover::model_sha256(&path).unwrap();
    assert_eq!(sha, kvscope::model::fetch::sha256_file(&path).unwrap());
    let cfg = &loaded.model.config;
    let dir = path.parent().unwrap();
    let good = dir.join("good.json");
    tiny_profile(&loaded, &sha).save(&good).unwrap();
    let bad = dir.join("bad.json");
    tiny_profile(&loaded, &"f".repeat(64)).save(&bad).unwrap();

    let (p, _) = discover::resolve(Some(&good), &path, cfg, false)
        .unwrap()
        .unwrap();
    assert_eq!(p, good);
    let err = format!(
        "{:#}",
        discover::resolve(Some(&bad), &path, cfg, true).unwrap_err()
    );
    assert!(err.contains("another model file"), "{err}");
    let found = discover::find_in(&[dir.to_path_buf()], &discover::fingerprint(cfg, &sha));
    assert_eq!(found.map(|f| f.0), Some(good));
    // Nothing is looked up when no profile is wanted.
    assert!(discover::resolve(None, &path, cfg, false)
        .unwrap()
        .is_none());
}

/// `profile compare` runs every variant through a Session; its rows must be what the
/// direct path gives (select on the prompt's Trace, decode over the keep set, score
/// against the full-cache output), variant by variant.
#[test]
fn compare_rows_equal_the_direct_selection_and_decode() {
    use kvscope::eviction::{self, Allocator, Settings};
    use kvscope::profile::compare::{self, Plan};
    use kvscope::profile::credit::retrieved;
    use kvscope::session::agreement;
    let (loaded, _) = tiny_loaded("compare");
    let mut profile = tiny_profile(&loaded, &"0".repeat(64));
    let plan = Plan {
        needles: vec![13],
        lengths: vec![600],
        depths: vec![0.5],
        budgets: vec![64],
        windows: vec![8],
        seeds: vec![1],
        max_new: 6,
    };
    let stop = AtomicBool::new(false);
    let err = compare::run(&loaded, &profile, &plan, None, &stop, &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("no layer errors"), "{err}");
    profile.layer_errors = Some(l1_normalise(&[1.0, 3.0]).unwrap());
    let out = compare::run(&loaded, &profile, &plan, None, &stop, &mut |_, _| {}).unwrap();
    assert_eq!(out.prompts, 1);

    let (model, tok) = (&loaded.model, &loaded.tok);
    let spec = TrialSpec {
        needle: 13,
        length: 600,
        depth: 0.5,
    };
    let prompt = srh::trial_prompt(tok, &spec).unwrap();
    let trace = model.prefill(&prompt.ids, 512, &mut |_, _| {}).unwrap();
    let all = KeepSet::all(&trace.dims, trace.len);
    let full = model
        .generate(&trace, &all, 6, &tok.stop_ids, None)
        .unwrap();
    assert_eq!(
        out.full_correct,
        retrieved(prompt.answer, &tok.decode(&full)) as usize
    );
    let base = Settings {
        method: kvscope::eviction::compresskv::METHOD,
        budget: 64,
        window: 8,
        ..Settings::default()
    };
    let expected = [
        ("compresskv, profile", base.clone(), Some(profile.clone())),
        (
            "compresskv, random SRHs (seed 1)",
            base.clone(),
            Some(compare::shuffled(&profile, 1)),
        ),
        (
            "compresskv, profile SRHs, uniform budgets",
            Settings {
                allocator: Some(Allocator::Uniform),
                ..base.clone()
            },
            Some(profile.clone()),
        ),
        (
            "snapkv (reference)",
            Settings {
                method: kvscope::eviction::snapkv::METHOD,
                ..base
            },
            None,
        ),
    ];
    assert_eq!(out.rows.len(), expected.len());
    for (row, (name, settings, p)) in out.rows.iter().zip(expected) {
        let sel = eviction::select(&eviction::Request::new(&trace, &settings).profile(p.as_ref()))
            .unwrap();
        let ids = model
            .generate(&trace, &sel.keep, 6, &tok.stop_ids, None)
            .unwrap();
        assert_eq!(row.variant, name);
        assert_eq!((row.budget, row.window, row.runs), (64, 8, 1));
        assert_eq!(
            row.correct,
            retrieved(prompt.answer, &tok.decode(&ids)) as usize,
            "{name}"
        );
        assert_eq!(row.agreement, agreement(&full, &ids).token_match, "{name}");
    }
}

/// `profile compare` reads and fills the prefill cache as `run` does: a second run of
/// the same plan reads every prompt's prefill and full-cache generation from it, and
/// its rows are those of the first run.
#[test]
fn a_second_compare_reads_every_prefill_from_the_cache() {
    use kvscope::prefill_cache::PrefillCache;
    use kvscope::profile::compare::{self, Plan};
    let (loaded, path) = tiny_loaded("compare-cache");
    let mut profile = tiny_profile(&loaded, &"0".repeat(64));
    profile.layer_errors = Some(l1_normalise(&[1.0, 3.0]).unwrap());
    let cache = PrefillCache {
        dir: path.parent().unwrap().join("prefill"),
        cap: 1 << 30,
        model_sha256: "ab".repeat(32),
        model_name: "tiny.gguf".into(),
    };
    let plan = Plan {
        needles: vec![13],
        lengths: vec![600],
        depths: vec![0.0, 1.0],
        budgets: vec![64],
        windows: vec![8],
        seeds: vec![1],
        max_new: 6,
    };
    let stop = AtomicBool::new(false);
    let run = || {
        let out = compare::run(
            &loaded,
            &profile,
            &plan,
            Some(&cache),
            &stop,
            &mut |_, _| {},
        )
        .unwrap();
        assert!(out.cache_notices.is_empty(), "{:?}", out.cache_notices);
        out
    };
    let first = run();
    assert_eq!((first.prompts, first.cache_hits), (2, 0));
    let entries = std::fs::read_dir(&cache.dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "kvp"))
        })
        .count();
    assert_eq!(entries, 2, "one entry per prompt");
    let second = run();
    assert_eq!(second.cache_hits, 2);
    assert!(
        second.cache_notices.is_empty(),
        "{:?}",
        second.cache_notices
    );
    assert_eq!(second.full_correct, first.full_correct);
    assert_eq!(second.rows, first.rows);
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}
