//! The divergence analysis on a tiny random model (no download): hand-checkable cases of
//! METHOD.md "Divergence analysis", "Pins" and "oracle".

mod common;

use kvscope::cli::explain;
use kvscope::divergence::{self, metrics};
use kvscope::eviction::{self, Method, Settings};
use kvscope::keepset::KeepSet;
use kvscope::model::replay::{self, FullPass};
use kvscope::model::Model;
use kvscope::testing;
use kvscope::trace::Trace;

const VOCAB: usize = 64;
const LEN: usize = 40;
const NEW: usize = 8;

fn setup() -> (Model, Trace, Vec<u32>) {
    let m = testing::tiny_model(VOCAB, 256, 7);
    let ids = testing::random_ids(LEN, VOCAB, 3);
    let trace = m.prefill(&ids, 16, &mut |_, _| {}).expect("prefill");
    let all = KeepSet::all(&trace.dims, trace.len);
    let gen = m.generate(&trace, &all, NEW, &[], None).expect("generate");
    assert_eq!(gen.len(), NEW);
    (m, trace, gen)
}

#[test]
fn keeping_everything_gives_zero_kl_no_lost_mass_and_agreement() {
    let (m, trace, gen) = setup();
    let all = KeepSet::all(&trace.dims, trace.len);
    let (full, errors) = FullPass::compute(&m, &trace, &gen, Some(&all)).expect("full pass");
    assert_eq!(full.steps(), NEW - 1);
    let comp = replay::forced_logits(&m, &trace, &all, &gen).expect("forced");
    let steps = divergence::steps(&full, &comp, errors.as_deref(), &all);
    assert_eq!(steps.len(), NEW - 1);
    for s in &steps {
        assert!(s.cmp.kl.abs() < 1e-9, "step {}: kl {}", s.t, s.cmp.kl);
        assert!(s.cmp.top1_agree);
        assert_eq!(s.cmp.rank, 1, "the full cache's own next token ranks first");
        assert!(s.lost_mass.iter().flatten().all(|&x| x == 0.0));
        assert_eq!(s.attn_err.len(), trace.dims.n_layers);
        assert!(s.attn_err.iter().all(|&e| e < 1e-5), "{:?}", s.attn_err);
        // The full generation is the greedy choice of the full cache.
        assert_eq!(s.input_id, gen[s.t - 1]);
        assert_eq!(s.full_next_id, gen[s.t]);
    }
    assert!(divergence::culprits_at(&full, &all, 1).is_empty());
}

#[test]
fn evicting_what_a_head_attends_to_loses_exactly_that_mass() {
    let (m, trace, gen) = setup();
    let all = KeepSet::all(&trace.dims, trace.len);
    let (full, _) = FullPass::compute(&m, &trace, &gen, None).expect("full pass");
    let n_rep = trace.dims.n_rep();
    // Layer 1, KV head 1 (query heads 2 and 3): evict the 5 prompt positions query head
    // 2 attended to most at step 1.
    let (l, g, h) = (1, 1, 2);
    let row = &full.attn[0][l][h];
    let mut order: Vec<usize> = (0..LEN).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
    let gone: Vec<usize> = order[..5].to_vec();
    let mut keep = all.clone();
    keep.positions[l][g].retain(|p| !gone.contains(p));
    let comp = replay::forced_logits(&m, &trace, &keep, &gen).expect("forced");
    let steps = divergence::steps(&full, &comp, None, &keep);
    for (i, s) in steps.iter().enumerate() {
        for (ll, heads) in s.lost_mass.iter().enumerate() {
            for (hh, &lost) in heads.iter().enumerate() {
                let want: f64 = if ll == l && hh / n_rep == g {
                    gone.iter().map(|&p| full.attn[i][ll][hh][p] as f64).sum()
                } else {
                    0.0
                };
                assert!(
                    (lost - want).abs() < 1e-9,
                    "step {} layer {ll} head {hh}: {lost} vs {want}",
                    s.t
                );
            }
        }
    }
    // At step 1 the head lost its 5 largest weights: more than 5/LEN of its mass.
    assert!(steps[0].lost_mass[l][h] > 5.0 / LEN as f64);
    // Culprits at step 1 are exactly the evicted positions, ranked by the mass of the
    // two query heads of the group.
    let c = divergence::culprits_at(&full, &keep, 1);
    let mut got: Vec<usize> = c.iter().map(|c| c.pos).collect();
    got.sort_unstable();
    let mut want = gone.clone();
    want.sort_unstable();
    assert_eq!(got, want);
    for w in c.windows(2) {
        assert!(w[0].mass >= w[1].mass);
    }
    let p = c[0].pos;
    let m2 = full.attn[0][l][2][p] as f64 + full.attn[0][l][3][p] as f64;
    assert!((c[0].mass - m2).abs() < 1e-9);
    assert_eq!(c[0].per_layer[0], 0.0);
}

#[test]
fn pins_displace_the_lowest_scoring_and_keep_the_budget_exact() {
    let (_, trace, _) = setup();
    let base = Settings {
        method: kvscope::eviction::snapkv::METHOD,
        budget: 16,
        window: 4,
        ..Settings::default()
    };
    let plain = eviction::select(&eviction::Request::new(&trace, &base)).expect("select");
    let prefix = LEN - 4;
    for (l, heads) in plain.keep.positions.iter().enumerate() {
        for (g, kept) in heads.iter().enumerate() {
            // Pin the lowest-scoring candidate of this head.
            let s = &plain.scores[l][g];
            let worst = (0..prefix)
                .min_by(|&a, &b| s[a].total_cmp(&s[b]).then(b.cmp(&a)))
                .expect("candidates");
            assert!(!kept.contains(&worst));
            let pinned = Settings {
                pin_keep: vec![worst],
                ..base.clone()
            };
            let sel =
                eviction::select(&eviction::Request::new(&trace, &pinned)).expect("select pinned");
            let new = &sel.keep.positions[l][g];
            assert_eq!(new.len(), kept.len(), "the budget stays exact");
            assert!(new.contains(&worst));
            // The displaced entry is the lowest-scoring one the method had kept.
            let displaced: Vec<usize> = kept.iter().copied().filter(|p| !new.contains(p)).collect();
            let lowest_kept = kept
                .iter()
                .copied()
                .filter(|&p| p < prefix)
                .min_by(|&a, &b| s[a].total_cmp(&s[b]).then(b.cmp(&a)))
                .expect("kept candidates");
            assert_eq!(displaced, vec![lowest_kept]);
            assert_eq!(sel.layer_budgets, plain.layer_budgets);
        }
    }
    // Evicting a kept position hands its slot to the best unkept one; the window stays.
    let kept0 = &plain.keep.positions[0][0];
    let victim = kept0[0];
    let sel = eviction::select(&eviction::Request::new(
        &trace,
        &Settings {
            pin_evict: vec![victim, LEN - 1],
            ..base.clone()
        },
    ))
    .expect("select");
    for heads in &sel.keep.positions {
        for k in heads {
            assert!(!k.contains(&victim));
            assert!(k.contains(&(LEN - 1)), "the window is never evicted");
            assert_eq!(k.len(), 16);
        }
    }
    // Pins outside the prompt or on both lists are refused with one clear line.
    let bad = Settings {
        pin_keep: vec![LEN],
        ..base.clone()
    };
    let e = eviction::select(&eviction::Request::new(&trace, &bad))
        .unwrap_err()
        .to_string();
    assert!(e.contains("outside the prompt"), "{e}");
}

#[test]
fn oracle_keeps_the_top_of_summed_decode_attention() {
    let (m, trace, gen) = setup();
    let (full, _) = FullPass::compute(&m, &trace, &gen, None).expect("full pass");
    let (w, b) = (4, 12);
    let budgets = vec![b; trace.dims.n_layers];
    let oracle = divergence::oracle_keep(&full, &trace, &budgets, w);
    // The registry's `oracle` method is the same selection at the same budgets.
    let s = Settings {
        method: Method::named("oracle").expect("oracle is registered"),
        budget: b,
        window: w,
        ..Settings::default()
    };
    let sel = eviction::select(
        &eviction::Request::new(&trace, &s).future(Some(&full.future(&trace.dims))),
    )
    .expect("oracle selects");
    assert_eq!(sel.keep, oracle);
    assert_eq!(sel.layer_budgets, budgets);
    let n_rep = trace.dims.n_rep();
    for (l, heads) in oracle.positions.iter().enumerate() {
        for (g, kept) in heads.iter().enumerate() {
            assert_eq!(kept.len(), b);
            // Summed by hand in f64 over steps and the group's query heads.
            let sum = |p: usize| -> f64 {
                full.attn
                    .iter()
                    .map(|st| {
                        (g * n_rep..(g + 1) * n_rep)
                            .map(|h| st[l][h][p] as f64)
                            .sum::<f64>()
                    })
                    .sum()
            };
            let chosen: Vec<usize> = kept.iter().copied().filter(|&p| p < LEN - w).collect();
            assert_eq!(chosen.len(), b - w);
            let min_kept = chosen.iter().map(|&p| sum(p)).fold(f64::INFINITY, f64::min);
            let max_evicted = (0..LEN - w)
                .filter(|p| !chosen.contains(p))
                .map(sum)
                .fold(0.0, f64::max);
            assert!(
                min_kept >= max_evicted - 1e-6,
                "layer {l} head {g}: {min_kept} < {max_evicted}"
            );
            assert!(kept.ends_with(&[LEN - 4, LEN - 3, LEN - 2, LEN - 1]));
        }
    }
    // The oracle overlaps itself fully; keeping everything holds all its choices.
    assert_eq!(divergence::oracle::overlap(&oracle, &oracle, LEN, w), 1.0);
    let all = KeepSet::all(&trace.dims, LEN);
    assert_eq!(divergence::oracle::overlap(&all, &oracle, LEN, w), 1.0);
}

#[test]
fn rescue_pins_the_top_culprits_and_skips_forced_evictions() {
    let c = |pos, mass| metrics::CulpritMass {
        pos,
        mass,
        per_layer: vec![mass],
    };
    let culprits = [c(7, 0.5), c(3, 0.4), c(9, 0.1)];
    let s = Settings {
        pin_keep: vec![1],
        pin_evict: vec![3],
        ..Settings::default()
    };
    let (r, pins) = divergence::rescue_settings(&s, &culprits, 2);
    assert_eq!(pins, vec![7, 9]);
    assert_eq!(r.pin_keep, vec![1, 7, 9]);
    assert_eq!(r.pin_evict, vec![3]);
}

/// One decode gives both the free-running generation and the teacher-forced logits,
/// exactly as the two separate decodes do, whether the generations agree or not.
#[test]
fn one_decode_gives_the_generation_and_the_teacher_forced_logits() {
    let (m, trace, gen) = setup();
    let mut diverged = 0;
    for budget in [6, 10, 20, LEN] {
        let s = Settings {
            method: kvscope::eviction::snapkv::METHOD,
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
        assert_eq!(d.forced.len(), forced.len());
        for (a, b) in d.forced.iter().zip(&forced) {
            let diff = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max);
            assert!(diff < 1e-5, "B={budget}: {diff}");
        }
        // Shared up to the first divergence (all of it when the outputs agree).
        let first = ids.iter().zip(&gen).position(|(a, b)| a != b);
        assert_eq!(
            d.shared,
            first.unwrap_or(NEW - 1).min(NEW - 1),
            "B={budget}"
        );
        diverged += usize::from(first.is_some());
    }
    assert!(
        diverged > 0,
        "no budget diverged: the fork was not exercised"
    );
    // A stop token ends the free-running decode early; the forced steps still run.
    let stop = [gen[2]];
    let d = replay::decode_both(
        &m,
        &trace,
        &KeepSet::all(&trace.dims, LEN),
        &gen,
        NEW,
        &stop,
    )
    .expect("decode");
    assert_eq!(d.ids, gen[..3].to_vec());
    assert_eq!(d.forced.len(), NEW - 1);
}

/// A sliding-window layer's full cache holds only its last S prompt entries, so its
/// cache entry j is not prompt position j: the captured attention is mapped back to
/// prompt positions (it equals what a cache of every position, masked by the window,
/// attends to), a sliding layer loses no mass to a method (its window is its full
/// cache), and the attention-output errors can be measured.
#[test]
fn sliding_layers_map_cache_entries_to_prompt_positions() {
    const S: usize = 10;
    let mut cfg = testing::tiny_config(VOCAB, 256);
    cfg.layers[0].window = Some(S);
    let w = testing::random_weights(&cfg, 7);
    let m = Model::new(cfg, w).expect("model");
    let ids = testing::random_ids(LEN, VOCAB, 3);
    let trace = m.prefill(&ids, 16, &mut |_, _| {}).expect("prefill");
    assert_eq!(trace.window(0), Some(S));
    let windowed = kvscope::keepset::full_keep(&trace);
    let gen = m
        .generate(&trace, &windowed, NEW, &[], None)
        .expect("generate");
    let s = Settings {
        method: kvscope::eviction::snapkv::METHOD,
        budget: 12,
        window: 4,
        ..Settings::default()
    };
    let keep = eviction::select(&eviction::Request::new(&trace, &s))
        .expect("select")
        .keep;
    let (full, errors) = FullPass::compute(&m, &trace, &gen, Some(&keep)).expect("full pass");
    let errors = errors.expect("errors");
    assert!(
        errors
            .iter()
            .all(|e| e.len() == 2 && e[0] < 1e-5 && e[1] > 0.0),
        "{errors:?}"
    );
    // Reference: a cache of every prompt position (entry j = position j), masked.
    let all = KeepSet::all(&trace.dims, LEN);
    let mut cap = Vec::new();
    let reference = m
        .generate(&trace, &all, NEW, &[], Some(&mut cap))
        .expect("generate");
    assert_eq!(reference, gen);
    for (t, step) in full.attn.iter().enumerate() {
        for (l, heads) in step.iter().enumerate() {
            for (h, row) in heads.iter().enumerate() {
                let want = &cap[t].probs[l][h][..LEN];
                for (p, (a, b)) in row.iter().zip(want).enumerate() {
                    assert!((a - b).abs() < 1e-5, "step {t} layer {l} head {h} pos {p}");
                }
                if l == 0 {
                    assert!(row[..LEN - S].iter().all(|&x| x == 0.0));
                    assert!(row[LEN - S..].iter().sum::<f32>() > 0.0);
                }
            }
        }
    }
    let comp = replay::forced_logits(&m, &trace, &keep, &gen).expect("forced");
    let steps = divergence::steps(&full, &comp, Some(&errors), &keep);
    for st in &steps {
        assert!(
            st.lost_mass[0].iter().all(|&x| x == 0.0),
            "sliding layer lost mass"
        );
    }
    assert!(steps
        .iter()
        .any(|st| st.lost_mass[1].iter().any(|&x| x > 0.0)));
    // Culprits come from the global layer only.
    let c = divergence::culprits_at(&full, &keep, 1);
    assert!(c
        .iter()
        .all(|c| keep.positions[1].iter().any(|k| !k.contains(&c.pos))));
}

/// `oracle` through a session, as `run`, `explain` and `eval` use it: the session replays
/// the full generation once, the oracle selects from it at the allocator's budgets, and
/// explain's rescue re-selects with the same future attention.
#[test]
fn oracle_runs_through_a_session_and_explain_rescues_it() {
    let mut fx = common::fixture();
    let oracle = Method::named("oracle").expect("registered");
    let s = Settings {
        method: oracle,
        budget: 12,
        window: 4,
        ..Settings::default()
    };
    let (model, tok) = (&fx.loaded.model, &fx.loaded.tok);
    assert!(fx.session.full_pass.is_none());
    let c = fx
        .session
        .apply_with(model, tok, s.clone(), None, true)
        .expect("oracle applies");
    let keep = c.selection.keep.clone();
    let fp = fx
        .session
        .full_pass
        .as_ref()
        .expect("the session replayed the full cache");
    let budgets = vec![12; fx.session.trace.dims.n_layers];
    assert_eq!(
        keep,
        divergence::oracle_keep(fp, &fx.session.trace, &budgets, 4)
    );
    let ex = explain::explain(
        &fx.loaded,
        &mut fx.session,
        &Default::default(),
        Some(1),
        5,
        Some(2),
    )
    .expect("explain the oracle");
    let r = &ex.report;
    // The oracle is its own oracle; the rescue ran with the same future attention.
    assert_eq!(r.oracle_gap.kept_overlap_with_oracle, 1.0);
    assert!(r.rescue.is_some());
}

/// Issue 22 item 9: on a model with a sliding-window layer the oracle follows the same
/// sliding-layer rules as the method it is compared with. Without `evict_sliding` the
/// sliding layer keeps its window (both ways); with it, the registry's `oracle` selects
/// inside the window (no "oracle needs the full-cache generation's attention" from the
/// window's sub-selection), and `oracle_keep` at a method's budgets chooses the same
/// way, inside the window, at that budget.
#[test]
fn oracle_follows_the_sliding_layer_rules() {
    const S: usize = 16;
    let mut cfg = testing::tiny_config(VOCAB, 256);
    cfg.layers[0].window = Some(S);
    let w = testing::random_weights(&cfg, 7);
    let m = Model::new(cfg, w).expect("model");
    let ids = testing::random_ids(LEN, VOCAB, 3);
    let trace = m.prefill(&ids, 16, &mut |_, _| {}).expect("prefill");
    let windowed = kvscope::keepset::full_keep(&trace);
    let gen = m
        .generate(&trace, &windowed, NEW, &[], None)
        .expect("generate");
    let (full, _) = FullPass::compute(&m, &trace, &gen, None).expect("full pass");
    let future = full.future(&trace.dims);
    for evict_sliding in [false, true] {
        let mut s = Settings {
            method: Method::named("oracle").expect("oracle is registered"),
            budget: 8,
            window: 4,
            ..Settings::default()
        };
        s.evict_sliding = Some(evict_sliding);
        let sel = eviction::select(&eviction::Request::new(&trace, &s).future(Some(&future)))
            .expect("oracle selects on a model with a sliding layer");
        let sliding = &sel.keep.positions[0];
        if evict_sliding {
            for head in sliding {
                assert_eq!(head.len(), 8, "budget 8 inside the window: {head:?}");
                assert!(head.iter().all(|&p| p >= LEN - S), "{head:?}");
            }
        } else {
            assert_eq!(sliding, &windowed.positions[0]);
        }
        // The analysis' oracle at these budgets is the registry's choice.
        let oracle = divergence::oracle_keep(&full, &trace, &sel.layer_budgets, s.window);
        assert_eq!(oracle, sel.keep, "evict_sliding {evict_sliding}");

        // Against snapkv with the same rules: the oracle's sliding layer is cut to the
        // method's budget too, so overlap compares like with like.
        let snap = Settings {
            method: kvscope::eviction::snapkv::METHOD,
            ..s.clone()
        };
        let ssel = eviction::select(&eviction::Request::new(&trace, &snap)).expect("snapkv");
        let o = divergence::oracle_keep(&full, &trace, &ssel.layer_budgets, snap.window);
        for (oh, sh) in o.positions[0].iter().zip(&ssel.keep.positions[0]) {
            assert_eq!(oh.len(), sh.len(), "same sliding-layer budget");
        }
    }
}

/// Issue 22 item 20: a step past a generation that ended at an end-of-text token does not
/// advise raising --max-new (more tokens would not come); past a generation cut by
/// --max-new it does.
#[test]
fn a_step_past_an_early_end_names_the_end_of_text() {
    let (m, trace, gen) = setup();
    let all = KeepSet::all(&trace.dims, trace.len);
    let (full, errors) = FullPass::compute(&m, &trace, &gen, Some(&all)).expect("full pass");
    let comp = replay::forced_logits(&m, &trace, &all, &gen).expect("forced");
    let steps = divergence::steps(&full, &comp, errors.as_deref(), &all);
    let past = steps.len() + 1;
    let early = divergence::chosen_step(&steps, Some(past), true)
        .unwrap_err()
        .to_string();
    assert!(
        early.contains("end-of-text") && !early.contains("--max-new"),
        "{early}"
    );
    let cut = divergence::chosen_step(&steps, Some(past), false)
        .unwrap_err()
        .to_string();
    assert!(cut.contains("raise --max-new"), "{cut}");
    assert_eq!(
        divergence::chosen_step(&steps, Some(1), true).unwrap(),
        Some(1)
    );
}

/// The inspector shows the generation before the rest of the teacher-forced decode:
/// `apply_then` hands over the result with the generation and no teacher-forced logits
/// yet, then fills them in, and ends where `apply_with` does (same ids, same logits),
/// at budgets that diverge and that do not.
#[test]
fn the_generation_is_handed_over_before_the_teacher_forced_rest() {
    let mut fx = common::fixture();
    let (model, tok) = (&fx.loaded.model, &fx.loaded.tok);
    for budget in [8, 12, 1000] {
        let s = Settings {
            method: kvscope::eviction::snapkv::METHOD,
            budget,
            window: 4,
            ..Settings::default()
        };
        let c = fx
            .session
            .apply_with(model, tok, s.clone(), None, true)
            .expect("apply");
        let (ids, forced) = (c.generation.ids.clone(), c.forced.clone().expect("forced"));
        let mut seen = None;
        fx.session
            .apply_then(model, tok, s, None, true, &mut |c, _| {
                seen = Some((c.generation.ids.clone(), c.forced.is_none()));
                true
            })
            .expect("apply_then");
        assert_eq!(seen, Some((ids, true)), "B={budget}");
        let c = fx.session.compressed.as_ref().expect("result");
        assert_eq!(c.forced.as_ref(), Some(&forced), "B={budget}");
    }
}
