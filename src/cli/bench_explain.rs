//! `kvscope bench --explain N`: how long the divergence analysis takes on an N-token
//! prompt, split into what is done once per prompt (prefill, full-cache decode, full
//! replay with capture) and what every edit costs (selection, the compressed decode
//! that gives both the generation and the teacher-forced logits, the metrics). The
//! inspector's Divergence pane refreshes after one edit's work.

use anyhow::{bail, Result};
use std::time::Instant;

use super::bench_args::{filler_ids, median, BenchArgs};
use crate::divergence;
use crate::eviction::{self, Settings};
use crate::model::replay::{self, FullPass};
use crate::model::Loaded;

pub fn run(loaded: &Loaded, a: &BenchArgs, n: usize, reps: usize) -> Result<()> {
    let m = &loaded.model;
    let ctx = m.config.context_length;
    let new = a.explain_new;
    if n < 2 || new < 2 {
        bail!("--explain needs a prompt of at least 2 tokens and --explain-new 2 or more");
    }
    if n.saturating_add(new) > ctx {
        bail!("--explain {n} with --explain-new {new} does not fit the model's context of {ctx} tokens");
    }
    let budget = a.explain_budget.unwrap_or(n / 10).max(1);
    let ids = filler_ids(loaded, n)?;
    let stop = &loaded.tok.stop_ids;
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1000.0;
    eprintln!(
        "kvscope bench --explain: {} threads, {reps} reps (median), {n}-token prompt, {new} new tokens, snapkv budget {budget}",
        rayon::current_num_threads()
    );

    // Once per prompt.
    let t = Instant::now();
    let trace = m.prefill(&ids, crate::model::PREFILL_CHUNK, &mut |_, _| {})?;
    let prefill = ms(t);
    let t = Instant::now();
    let full_keep = crate::keepset::full_keep(&trace);
    let full_ids = m.generate(&trace, &full_keep, new, stop, None)?;
    let full_decode = ms(t);
    let t = Instant::now();
    let (full, _) = FullPass::compute(m, &trace, &full_ids, None)?;
    let replay = ms(t);

    // Every edit.
    let s = Settings {
        method: crate::eviction::snapkv::METHOD,
        budget,
        ..Settings::default()
    };
    let (mut select, mut both, mut two, mut metrics) = (vec![], vec![], vec![], vec![]);
    let mut shared = 0;
    let mut agree = None;
    for _ in 0..reps {
        let t = Instant::now();
        let sel = eviction::select(&eviction::Request::new(&trace, &s))?;
        select.push(ms(t));
        let keep = &sel.keep;
        // Before: a free-running decode, then a teacher-forced one from the prompt.
        let t = Instant::now();
        let gen = m.generate(&trace, keep, new, stop, None)?;
        let forced = replay::forced_logits(m, &trace, keep, &full_ids)?;
        two.push(ms(t));
        // Now: one decode, forked at the first divergence.
        let t = Instant::now();
        let d = replay::decode_both(m, &trace, keep, &full_ids, new, stop)?;
        both.push(ms(t));
        if d.ids != gen || d.forced.len() != forced.len() {
            bail!("the shared decode disagrees with the two separate decodes");
        }
        shared = d.shared;
        agree = Some(crate::session::agreement(&full_ids, &d.ids));
        // What the worker computes for the pane: the curve, lost mass and culprits of
        // every step.
        let t = Instant::now();
        let steps = divergence::steps(&full, &d.forced, None, keep);
        let culprits: usize = (1..=steps.len())
            .map(|t| divergence::culprits_at(&full, keep, t).len())
            .sum();
        std::hint::black_box(culprits);
        metrics.push(ms(t));
    }
    let (select, both, two, metrics) = (median(select), median(both), median(two), median(metrics));
    let edit = select + both + metrics;
    let first = agree.and_then(|a| a.first_divergence);
    let lines = [
        format!("once per prompt: prefill {prefill:.0} ms, full-cache decode {full_decode:.0} ms, full replay with capture {replay:.0} ms"),
        format!(
            "per edit: selection {select:.1} ms, compressed decode + teacher forcing {both:.0} ms (two separate decodes: {two:.0} ms; {shared} of {} teacher-forced steps shared, first divergence {}), metrics {metrics:.1} ms",
            full.steps(),
            first.map_or("none".to_string(), |i| format!("at token {i}"))
        ),
        format!("Divergence pane refresh after an edit: {edit:.0} ms (target 1000 ms)"),
    ];
    if a.json {
        for l in &lines {
            eprintln!("{l}");
        }
        let v = serde_json::json!({
            "threads": rayon::current_num_threads(),
            "reps": reps,
            "prompt_tokens": n,
            "new_tokens": new,
            "budget": budget,
            "once_ms": {"prefill": prefill, "full_decode": full_decode, "full_replay_capture": replay},
            "edit_ms": {"select": select, "decode_and_forced": both, "two_decodes": two, "metrics": metrics, "total": edit},
            "shared_steps": shared,
            "first_divergence": first,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for l in &lines {
            println!("{l}");
        }
    }
    Ok(())
}
