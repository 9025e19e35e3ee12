//! `kvscope bench`: prefill and decode speed on the loaded model, with Trace capture on.

use anyhow::{bail, Result};
use clap::Args;
use std::time::Instant;

use super::ModelArgs;
use crate::eviction::{self, Method, Settings};
use crate::keepset::KeepSet;
use crate::model::{DecodeState, Loaded};

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Repetitions per figure (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Prefill lengths to measure.
    #[arg(long, value_delimiter = ',', default_value = "512,2048")]
    pub prefill: Vec<usize>,
    /// Context lengths (tokens already in the cache) to measure decode at.
    #[arg(long, value_delimiter = ',', default_value = "0,2048,4096")]
    pub decode: Vec<usize>,
    /// Decode steps per measurement.
    #[arg(long, default_value_t = 64)]
    pub steps: usize,
    /// Also decode over a compressed cache (snapkv at this budget) at the largest context.
    #[arg(long, default_value_t = 128)]
    pub compressed_budget: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Natural-looking text repeated to any length; its exact content does not matter for speed.
const FILLER: &str = "The river town kept its old habits. Every morning the baker opened at six, \
the ferry crossed twice before noon, and the library lent out maps of valleys nobody had walked \
in years. Visitors asked about the bridge, the mill and the clock tower, and the answers changed \
with whoever was telling the story. ";

pub fn filler_ids(loaded: &Loaded, n: usize) -> Result<Vec<u32>> {
    let unit = loaded.tok.encode(FILLER)?;
    Ok(unit.iter().cycle().take(n).cloned().collect())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn run(a: &BenchArgs) -> Result<()> {
    super::init_threads(a.model.threads)?;
    if a.prefill.contains(&0) {
        bail!("--prefill lengths must be at least 1 token; got 0");
    }
    let loaded = super::load_model(a.model.model.as_deref())?;
    let m = &loaded.model;
    let ctx_len = m.config.context_length;
    if let Some(n) = a.prefill.iter().find(|&&n| n > ctx_len) {
        bail!("--prefill {n} is longer than the model's context of {ctx_len} tokens");
    }
    if let Some(n) = a.decode.iter().find(|&&n| n.max(1) + a.steps > ctx_len) {
        bail!(
            "--decode {n} with --steps {} does not fit the model's context of {ctx_len} tokens",
            a.steps
        );
    }
    let reps = a.reps.max(1);
    let threads = rayon::current_num_threads();
    let mut rows: Vec<serde_json::Value> = Vec::new();
    eprintln!(
        "kvscope bench: {} threads, {} reps (median), Trace capture on",
        threads, reps
    );
    for &n in &a.prefill {
        let ids = filler_ids(&loaded, n)?;
        let mut tps = Vec::new();
        for _ in 0..reps {
            let t = Instant::now();
            let _trace = m.prefill(&ids, crate::session::PREFILL_CHUNK, &mut |_, _| {})?;
            tps.push(n as f64 / t.elapsed().as_secs_f64());
        }
        let v = median(tps);
        println!("prefill {n:>5} tokens: {v:>7.1} t/s");
        rows.push(serde_json::json!({"what": "prefill", "tokens": n, "tps": v}));
    }
    let max_ctx = a.decode.iter().cloned().max().unwrap_or(0);
    for &ctx in &a.decode {
        // A context of 0 still needs one token to start from.
        let ids = filler_ids(&loaded, ctx.max(1))?;
        let trace = m.prefill(&ids, crate::session::PREFILL_CHUNK, &mut |_, _| {})?;
        let all = KeepSet::all(&trace.dims, trace.len);
        let v = decode_tps(&loaded, &trace, &all, a.steps, reps)?;
        println!("decode at {ctx:>5} context: {v:>7.1} t/s");
        rows.push(serde_json::json!({"what": "decode", "context": ctx, "kept": "full", "tps": v}));
        if ctx == max_ctx && ctx > a.compressed_budget {
            let s = Settings {
                method: Method::SnapKv,
                budget: a.compressed_budget,
                ..Settings::default()
            };
            let t = Instant::now();
            let sel = eviction::select(&trace, &s, None)?;
            let sel_ms = t.elapsed().as_secs_f64() * 1000.0;
            let v = decode_tps(&loaded, &trace, &sel.keep, a.steps, reps)?;
            println!(
                "decode at {ctx:>5} context, snapkv budget {}: {v:>7.1} t/s (selection {sel_ms:.1} ms)",
                a.compressed_budget
            );
            rows.push(serde_json::json!({"what": "decode", "context": ctx, "kept": a.compressed_budget, "tps": v, "select_ms": sel_ms}));
        }
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"threads": threads, "reps": reps, "results": rows})
            )?
        );
    }
    Ok(())
}

fn decode_tps(
    loaded: &Loaded,
    trace: &crate::trace::Trace,
    keep: &KeepSet,
    steps: usize,
    reps: usize,
) -> Result<f64> {
    let mut tps = Vec::new();
    for _ in 0..reps {
        let mut st = DecodeState::new(&loaded.model, trace, keep, steps)?;
        let mut tok = crate::model::kernels::argmax(&trace.last_logits) as u32;
        let t = Instant::now();
        for _ in 0..steps {
            let logits = st.step(tok, None)?;
            tok = crate::model::kernels::argmax(logits) as u32;
        }
        tps.push(steps as f64 / t.elapsed().as_secs_f64());
    }
    Ok(median(tps))
}
