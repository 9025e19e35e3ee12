//! `kvscope explain`: the divergence analysis of one prompt under one setting (METHOD.md,
//! "Divergence analysis"): the teacher-forced divergence curve, lost attention per layer
//! and head, the culprits of a step, an optional rescue, and the distance from oracle.

use anyhow::{bail, Result};
use clap::Args;
use std::time::Instant;

use super::run::RunArgs;
use crate::divergence::{self, report as dr};
use crate::eviction;
use crate::model::replay::{self, FullPass};
use crate::model::Loaded;
use crate::report::{Provenance, Report, SettingsPart};
use crate::session::{self, Session};

#[derive(Args, Debug)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Teacher-forced step to explain (1-based; default: the first whose top-1
    /// disagrees, else the one of largest KL).
    #[arg(long, conflicts_with = "answer", value_parser = super::parse_count)]
    pub step: Option<usize>,
    /// Explain the step that writes the start of TEXT in the full generation (the first
    /// full-cache token covering its first character; case-insensitive): where a
    /// rescue of the answer is decided.
    #[arg(long, value_name = "TEXT")]
    pub answer: Option<String>,
    /// Culprits to list.
    #[arg(long, default_value_t = 10, value_parser = super::parse_count)]
    pub top: usize,
    /// Pin the top K culprits (1..=16, as `R` in the inspector), select again, regenerate
    /// and compare with the full cache.
    #[arg(long, value_name = "K",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=16))]
    pub rescue: Option<usize>,
}

/// Everything `explain` computed, shared by the text and JSON outputs.
pub struct Explained {
    pub report: dr::DivergenceReport,
    /// Milliseconds: full replay with capture, compressed replay, rescue, analysis.
    pub ms: [f64; 4],
}

pub fn run(a: &ExplainArgs) -> Result<()> {
    let r = &a.run;
    let super::run::Prepared {
        plan,
        loaded,
        load_ms,
        profile_path,
        profile,
        model_sha,
        prompt,
        cache,
    } = super::run::prepare(r)?;
    let settings = plan.settings.clone();
    if plan.max_new < 2 {
        bail!("explain needs at least 2 generated tokens to compare (--max-new 2 or more)");
    }
    let mut session = Session::from_prompt_cached(
        &loaded,
        cache.as_ref(),
        prompt,
        plan.max_new,
        profile,
        &mut |_, _| {},
    )?;
    super::cache_notice(&session);
    session.timing.load = (load_ms * 1000.0).round() / 1000.0;
    session.apply_with(&loaded.model, &loaded.tok, settings, None, true)?;
    let prov = Provenance::new(
        profile_path,
        model_sha,
        &plan.prompt_opts,
        session.prompt_info.as_ref(),
    );
    let step = match &a.answer {
        Some(text) => Some(answer_step(&loaded, &session.full.ids, text)?),
        None => a.step,
    };
    let ex = explain(&loaded, &mut session, &prov, step, a.top, a.rescue)?;
    if r.json {
        println!("{}", serde_json::to_string_pretty(&ex.report)?);
    } else {
        print_human(&loaded, &session, &ex);
    }
    Ok(())
}

/// The teacher-forced step (1-based) that predicts the full-cache token covering the first
/// character of `answer`'s first occurrence in the full generation (case-insensitive).
pub fn answer_step(loaded: &Loaded, full: &[u32], answer: &str) -> Result<usize> {
    let lower = |s: &str| s.to_lowercase().chars().collect::<Vec<char>>();
    let (text, want) = (lower(&loaded.tok.decode(full)), lower(answer.trim()));
    if want.is_empty() {
        bail!("--answer needs a non-empty text");
    }
    let Some(start) = text.windows(want.len()).position(|w| w == want.as_slice()) else {
        bail!("the full cache's generation does not contain {answer:?}; pick a step with --step");
    };
    // The token whose decoded prefix first reaches past `start`.
    let Some(i) = (0..full.len()).find(|&i| lower(&loaded.tok.decode(&full[..=i])).len() > start)
    else {
        bail!("cannot place {answer:?} on the full generation's tokens; pick a step with --step");
    };
    if i == 0 {
        bail!("the answer starts at the first generated token, which the prefill predicts (no teacher-forced step); pick a step with --step");
    }
    Ok(i)
}

/// The analysis of `session`'s compressed setting (already applied).
pub fn explain(
    loaded: &Loaded,
    session: &mut Session,
    prov: &Provenance,
    step: Option<usize>,
    top: usize,
    rescue: Option<usize>,
) -> Result<Explained> {
    let (model, tok) = (&loaded.model, &loaded.tok);
    let t0 = Instant::now();
    // One full-cache replay: with capture and this keep set's attention-output errors at
    // once, unless the session already holds the capture (the oracle needed it).
    let errors = {
        let Some(comp) = &session.compressed else {
            bail!("explain needs a compressed setting applied first");
        };
        let keep = &comp.selection.keep;
        match &session.full_pass {
            Some(_) => replay::attn_errors(model, &session.trace, &session.full.ids, keep)?,
            None => {
                let (fp, errors) =
                    FullPass::compute(model, &session.trace, &session.full.ids, Some(keep))?;
                session.full_pass = Some(fp);
                errors.unwrap_or_default()
            }
        }
    };
    let session = &*session;
    let Some(comp) = &session.compressed else {
        bail!("explain needs a compressed setting applied first");
    };
    let Some(full) = &session.full_pass else {
        bail!("no full-cache replay");
    };
    let trace = &session.trace;
    let keep = &comp.selection.keep;
    let dims = trace.dims;
    let ids = &session.full.ids;
    let t1 = Instant::now();
    // The decode that applied the setting gave the teacher-forced logits when asked to.
    let computed;
    let comp_logits = match &comp.forced {
        Some(l) => l,
        None => {
            computed = replay::forced_logits(model, trace, keep, ids)?;
            &computed
        }
    };
    let t2 = Instant::now();
    let steps = divergence::steps(full, comp_logits, Some(errors.as_slice()), keep);
    let ended_early = session.full.ids.len() < session.max_new;
    let chosen = divergence::chosen_step(&steps, step, ended_early)?;
    let masses = chosen.map_or_else(Vec::new, |t| divergence::culprits_at(full, keep, t));
    let window = comp.settings.window;
    let culprits = chosen
        .map(|t| {
            let attn = &full.attn[t - 1];
            masses
                .iter()
                .take(top)
                .map(|c| {
                    let text = tok.token_text(trace.ids[c.pos]);
                    dr::culprit_part(
                        c,
                        text,
                        &comp.selection,
                        attn,
                        full.n_rep,
                        trace.len,
                        window,
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let oracle = divergence::oracle_keep(full, trace, &comp.selection.layer_budgets, window);
    let overlap = divergence::oracle::overlap(keep, &oracle, trace.len, window);
    let oracle_ids = model.generate(trace, &oracle, session.max_new, &tok.stop_ids, None)?;
    let t3 = Instant::now();
    let rescue = match (rescue, chosen) {
        (Some(k), Some(_)) => {
            let (s, pins) = divergence::rescue_settings(&comp.settings, &masses, k);
            let sel = eviction::select(
                &eviction::Request::new(trace, &s)
                    .profile(session.profile.as_ref())
                    .future(session.future()),
            )?;
            let out = model.generate(trace, &sel.keep, session.max_new, &tok.stop_ids, None)?;
            Some(dr::RescuePart {
                k,
                pins,
                agreement: session::agreement(ids, &out),
                compressed: dr::RescueGeneration {
                    text: tok.decode(&out),
                    kv_bytes: session::kv_bytes(&sel.keep, dims.head_dim, model.kv_dtype().bytes()),
                    ids: out,
                },
            })
        }
        _ => None,
    };
    let t4 = Instant::now();
    let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1000.0;
    let fallback = SettingsPart::new(
        &comp.settings,
        comp.selection.layer_budgets.clone(),
        session.max_new,
        prov,
    );
    Ok(Explained {
        report: dr::DivergenceReport {
            run: Report::new(&model.config, session, prov, fallback),
            steps: steps.iter().map(dr::StepPart::from).collect(),
            chosen_step: chosen,
            culprits,
            rescue,
            oracle_gap: dr::OracleGap {
                kept_overlap_with_oracle: overlap,
                oracle_agreement: session::agreement(ids, &oracle_ids),
                oracle_text: tok.decode(&oracle_ids),
            },
        },
        ms: [ms(t0, t1), ms(t1, t2), ms(t3, t4), ms(t2, t3)],
    })
}

fn print_human(loaded: &Loaded, s: &Session, ex: &Explained) {
    let tok = &loaded.tok;
    let r = &ex.report;
    let show = |id: u32| format!("{:?}", tok.token_text(id));
    println!("prompt: {} tokens", s.trace.len);
    println!("full:       {}", s.full.text);
    if let Some(c) = &s.compressed {
        println!(
            "compressed: {}\n({} budget {}, window {}; {:.1}% of the full cache; first divergence {})",
            c.generation.text,
            c.settings.method,
            c.settings.budget,
            c.settings.window,
            c.kv_fraction * 100.0,
            c.agreement
                .first_divergence
                .map_or("none".to_string(), |i| format!("at token {i}"))
        );
    }
    println!("\nteacher-forced steps (input -> full's next token):");
    println!(
        "{:>4} {:>16} {:>16} {:>9} {:>4} {:>6} {:>8} {:>9} {:>9}",
        "t", "input", "next", "KL", "top1", "rank", "prob", "lost(avg)", "err(avg)"
    );
    for st in &r.steps {
        let cells: Vec<f64> = st.lost_mass.iter().flatten().copied().collect();
        let lost = cells.iter().sum::<f64>() / cells.len().max(1) as f64;
        let err =
            st.attn_err.iter().map(|&e| e as f64).sum::<f64>() / st.attn_err.len().max(1) as f64;
        let mark = if Some(st.t) == r.chosen_step { "<" } else { "" };
        println!(
            "{:>4} {:>16} {:>16} {:>9.4} {:>4} {:>6} {:>8.4} {:>9.4} {:>9.4} {mark}",
            st.t,
            clip(&show(st.input_id)),
            clip(&show(st.full_next_id)),
            st.kl,
            if st.top1_agree { "ok" } else { "X" },
            st.rank,
            st.prob,
            lost,
            err
        );
    }
    match r.chosen_step {
        None => println!("\nno step to explain"),
        Some(t) => {
            println!("\nculprits at step {t} (evicted prompt tokens by the full-cache attention they lost):");
            println!(
                "{:>6} {:>16} {:>9} {:>14}  top layers (layer:mass rank/cut-off)",
                "pos", "text", "mass", "kept by layers"
            );
            for c in &r.culprits {
                let kept = c
                    .per_layer
                    .iter()
                    .filter(|l| l.kept_by_kv_heads.iter().all(|&k| k))
                    .count();
                let mut layers: Vec<&dr::CulpritLayer> =
                    c.per_layer.iter().filter(|l| l.mass > 0.0).collect();
                layers.sort_by(|a, b| b.mass.total_cmp(&a.mass));
                let top: Vec<String> = layers
                    .iter()
                    .take(3)
                    .map(|l| match l.rank {
                        Some(rk) => format!("{}:{:.3} {rk}/{}", l.layer, l.mass, l.cutoff_rank),
                        None => format!("{}:{:.3}", l.layer, l.mass),
                    })
                    .collect();
                println!(
                    "{:>6} {:>16} {:>9.4} {:>14}  {}",
                    c.pos,
                    clip(&format!("{:?}", c.text)),
                    c.mass,
                    format!("{kept}/{}", c.per_layer.len()),
                    top.join(", ")
                );
            }
        }
    }
    if let Some(rs) = &r.rescue {
        println!(
            "\nrescue (pin the top {} culprits {:?}): {}\n  {}",
            rs.k,
            rs.pins,
            match rs.agreement.first_divergence {
                None => "matches the full cache".to_string(),
                Some(i) => format!(
                    "still diverges, now at token {i} ({:.0}% tokens match)",
                    rs.agreement.token_match * 100.0
                ),
            },
            rs.compressed.text
        );
    }
    let og = &r.oracle_gap;
    println!(
        "\noracle: {:.1}% of the oracle's choices at these budgets are kept; the oracle itself {}",
        og.kept_overlap_with_oracle * 100.0,
        match og.oracle_agreement.first_divergence {
            None => "matches the full cache".to_string(),
            Some(i) => format!("diverges at token {i}"),
        }
    );
    println!(
        "timing: full replay with capture {:.0} ms, compressed replay {:.0} ms, analysis + oracle decode {:.0} ms, rescue {:.0} ms",
        ex.ms[0], ex.ms[1], ex.ms[3], ex.ms[2]
    );
}

/// A token shown in a fixed-width column.
fn clip(s: &str) -> String {
    if s.chars().count() <= 16 {
        s.to_string()
    } else {
        s.chars().take(15).chain(['…']).collect()
    }
}
