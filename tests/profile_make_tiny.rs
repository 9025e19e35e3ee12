//! `profile make` on the tiny random model (no download): the shared haystack's prompts
//! are the whole prompts token for token; a run stopped part-way and continued, and a
//! run split into shards and merged, give the same profile as one uninterrupted run.
//!
//! A random model answers no question, so these runs set `count_every_trial` (every
//! trial counts); the command line never does. What is checked is the bookkeeping:
//! units saved, skipped, combined in order.

use std::sync::atomic::{AtomicBool, Ordering};

use kvscope::haystack::needles::NEEDLES;
use kvscope::haystack::shared::shared_haystack;
use kvscope::model::Loaded;
use kvscope::profile::make::{make, MakeConfig, Protocol};
use kvscope::profile::parts::Parts;
use kvscope::profile_format::Profile;
use kvscope::shard::Shard;
use kvscope::testing::temp_dir;

fn tiny_loaded(tag: &str) -> Loaded {
    kvscope::testing::tiny_loaded(tag).0
}

fn config(loaded: &Loaded, protocol: Protocol) -> MakeConfig {
    let cal = |n: usize| {
        let text = kvscope::haystack::filler::DOCUMENT
            .chars()
            .skip(n * 500)
            .take(1500)
            .collect::<String>();
        loaded
            .tok
            .encode(&loaded.tok.apply_template(&text, false))
            .unwrap()
    };
    MakeConfig {
        protocol,
        lengths: vec![300, 420],
        needles: vec![0, 2, 5, 7],
        per_haystack: 2,
        depths: vec![0.2, 0.8],
        max_new: 3,
        budget: 32,
        window: 8,
        first_k: 2,
        layer_max_new: 3,
        calibration: vec![("a".into(), cal(0)), ("b".into(), cal(1))],
        count_every_trial: true,
    }
}

const SHA: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn run(
    loaded: &Loaded,
    cfg: &MakeConfig,
    parts: &Parts,
    shard: Option<Shard>,
    stop_after: Option<usize>,
) -> anyhow::Result<Option<Profile>> {
    let stop = AtomicBool::new(false);
    let mut calls = 0;
    make(
        &loaded.model,
        &loaded.tok,
        cfg,
        SHA,
        parts,
        shard,
        &stop,
        &mut |_, _, _| {
            calls += 1;
            // The first call is the start; each later one follows a finished unit.
            if stop_after.is_some_and(|n| calls > n) {
                stop.store(true, Ordering::SeqCst);
            }
        },
    )
}

#[test]
fn shared_prompts_are_prefix_plus_tail_of_each_whole_prompt() {
    let loaded = tiny_loaded("shared-prompts");
    let tok = &loaded.tok;
    let needles = [(0, NEEDLES[0]), (3, NEEDLES[3]), (6, NEEDLES[6])];
    let h = shared_haystack(tok, &needles, &[0.1, 0.5, 0.9], 600, 2).unwrap();
    assert_eq!(h.questions.len(), 3);
    let mut last = 0;
    for (qi, q) in h.questions.iter().enumerate() {
        assert!(!q.tail.is_empty());
        assert!(q.span.end <= h.prefix.len());
        assert!(q.span.start >= last, "needles in depth order");
        last = q.span.start;
        let ids = h.prompt_ids(qi);
        assert_eq!(
            tok.decode(&ids[q.span.clone()]).trim(),
            needles[qi].1.answer
        );
        // The tail holds this question (the prefix may end inside its first word,
        // which all questions share on this byte-level vocabulary).
        let tail = tok.decode(&q.tail);
        let question = needles[qi].1.question;
        assert!(tail.contains(&question[4..]), "{tail}");
        assert!(tok.decode(&ids).contains(question));
        // Prefix + tail is the templated prompt tokenized whole.
        let text = tok.decode(&ids);
        assert_eq!(tok.encode(&text).unwrap(), ids);
        assert!((400..=620).contains(&ids.len()), "{} tokens", ids.len());
    }
}

fn same_profile(a: &Profile, b: &Profile) {
    assert_eq!(a.srh_scores, b.srh_scores);
    assert_eq!(a.srh_ranking, b.srh_ranking);
    assert_eq!(a.retrieval_scores, b.retrieval_scores);
    assert_eq!(a.layer_errors, b.layer_errors);
    assert_eq!(a.provenance, b.provenance);
}

#[test]
fn a_stopped_run_continues_to_the_uninterrupted_profile() {
    let loaded = tiny_loaded("make-resume");
    let cfg = config(&loaded, Protocol::Shared);
    let dir = temp_dir("make-resume-parts");
    let whole = Parts::open(&dir.join("whole"), &cfg.settings(SHA)).unwrap();
    let reference = run(&loaded, &cfg, &whole, None, None).unwrap().unwrap();
    assert!(reference.layer_errors.is_some());
    assert_eq!(reference.provenance.trials_counted, 8);

    let parts = Parts::open(&dir.join("resumed"), &cfg.settings(SHA)).unwrap();
    // Stopped after two of the four haystacks: an error, two units on disk.
    let err = run(&loaded, &cfg, &parts, None, Some(2)).unwrap_err();
    assert!(err.to_string().contains("interrupted"), "{err}");
    assert_eq!(parts.names().unwrap().len(), 2);
    // A kill while a unit was being written leaves only its temporary file.
    std::fs::write(parts.dir.join(".srh-00002.json.99.tmp"), "{\"trials\": [").unwrap();
    let parts = Parts::open(&parts.dir, &cfg.settings(SHA)).unwrap();
    let resumed = run(&loaded, &cfg, &parts, None, None).unwrap().unwrap();
    same_profile(&resumed, &reference);
    // Continuing a finished run measures nothing new and gives the same again.
    let again = run(&loaded, &cfg, &parts, None, Some(0)).unwrap().unwrap();
    same_profile(&again, &reference);
}

#[test]
fn shards_merged_give_the_unsharded_profile() {
    let loaded = tiny_loaded("make-shards");
    let cfg = config(&loaded, Protocol::Single);
    let dir = temp_dir("make-shards-parts");
    let whole = Parts::open(&dir.join("whole"), &cfg.settings(SHA)).unwrap();
    let reference = run(&loaded, &cfg, &whole, None, None).unwrap().unwrap();
    let merged = Parts::open(&dir.join("merged"), &cfg.settings(SHA)).unwrap();
    for k in 0..3 {
        let shard = Parts::open(&dir.join(format!("shard{k}")), &cfg.settings(SHA)).unwrap();
        let out = run(
            &loaded,
            &cfg,
            &shard,
            Some(Shard { index: k, count: 3 }),
            None,
        )
        .unwrap();
        assert!(out.is_none(), "a shard writes no profile");
        for n in shard.names().unwrap() {
            assert!(n.starts_with("srh-"), "a shard runs only SRH units: {n}");
            merged.save(&n, &shard.load(&n).unwrap().unwrap()).unwrap();
        }
    }
    let from_shards = run(&loaded, &cfg, &merged, None, Some(0));
    // Stop is set after the start: the merged folder has every SRH unit, so only the
    // layer units are left to run, and a stop refuses them.
    assert!(from_shards.is_err());
    let from_shards = run(&loaded, &cfg, &merged, None, None).unwrap().unwrap();
    same_profile(&from_shards, &reference);
}

#[test]
fn profiling_prefill_skips_only_the_attention_summaries() {
    let loaded = tiny_loaded("lean-prefill");
    let text: String = kvscope::haystack::filler::DOCUMENT
        .chars()
        .take(900)
        .collect();
    let ids = loaded.tok.encode(&text).unwrap();
    let whole = loaded.model.prefill(&ids, 64, &mut |_, _| {}).unwrap();
    let lean = loaded
        .model
        .prefill_without_summaries(&ids, 64, &mut |_, _| {})
        .unwrap();
    assert_eq!(whole.last_logits, lean.last_logits);
    for (a, b) in whole.layers.iter().zip(&lean.layers) {
        assert_eq!(a.k, b.k);
        assert_eq!(a.v, b.v);
        assert_eq!(a.q_last, b.q_last);
        assert!(a.col_sums.iter().any(|&c| c > 0.0));
        assert!(!a.maps.is_empty());
        assert_eq!(b.col_sums.len(), a.col_sums.len());
        assert!(b.col_sums.iter().all(|&c| c == 0.0));
        assert!(b.maps.is_empty());
    }
}
