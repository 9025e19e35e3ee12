//! `kvscope bench`: prefill and decode speed on the loaded model, with Trace capture on.

use anyhow::{bail, Result};
use std::time::Instant;

use super::bench_args::{filler_ids, median, BenchArgs};
use crate::eviction::{self, Settings};
use crate::keepset::KeepSet;
use crate::model::{DecodeState, Loaded, Observer};

pub fn run(a: &BenchArgs) -> Result<()> {
    super::init_threads(a.model.threads)?;
    if a.prefill.contains(&0) {
        bail!("--prefill lengths must be at least 1 token; got 0");
    }
    if a.steps == 0 {
        bail!("--steps must be at least 1 (decode speed is steps over time)");
    }
    // Before the model loads, so the probe's buffer is gone before the weights arrive
    // and does not raise the peak RSS reported below.
    let bandwidth = a
        .bandwidth
        .then(|| super::bandwidth::read_bandwidth(rayon::current_num_threads(), 3));
    let loaded = super::load_model(a.model.model.as_deref())?;
    let m = &loaded.model;
    let ctx_len = m.config.context_length;
    if let Some(n) = a.prefill.iter().find(|&&n| n > ctx_len) {
        bail!("--prefill {n} is longer than the model's context of {ctx_len} tokens");
    }
    if let Some(n) = a
        .decode
        .iter()
        .find(|&&n| n.max(1).saturating_add(a.steps) > ctx_len)
    {
        bail!(
            "--decode {n} with --steps {} does not fit the model's context of {ctx_len} tokens",
            a.steps
        );
    }
    let reps = a.reps.max(1);
    if let Some(n) = a.explain {
        return super::bench_explain::run(&loaded, a, n, reps);
    }
    let threads = rayon::current_num_threads();
    let mut rows: Vec<serde_json::Value> = Vec::new();
    // With --json, stdout carries only the JSON document; the human lines go to stderr.
    let say = |line: String| {
        if a.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    eprintln!(
        "kvscope bench: {} threads, {} reps (median), Trace capture on",
        threads, reps
    );
    let mem_weights = m.weights.resident_bytes();
    let formats = weight_formats(m);
    say(format!(
        "model: {} ({}), file {:.1} MB, weights in memory {:.1} MB [{}]",
        m.config.name,
        m.config.arch,
        loaded.file_bytes as f64 / 1e6,
        mem_weights as f64 / 1e6,
        formats
    ));
    let read_per_token = m.weights.decode_read_bytes();
    let ceiling = bandwidth.map(|b| b / read_per_token as f64);
    if let (Some(b), Some(c)) = (bandwidth, ceiling) {
        say(format!(
            "memory read bandwidth: {:.1} GB/s ({threads} threads, best of 3 passes over 256 MiB); \
             decode reads {:.1} MB of weights per token: ceiling {c:.1} t/s",
            b / 1e9,
            read_per_token as f64 / 1e6
        ));
    }
    let mut trace_bytes_max = 0usize;
    let mut kv_bytes_max = 0usize;
    for &n in &a.prefill {
        let ids = filler_ids(&loaded, n)?;
        let mut tps = Vec::new();
        for _ in 0..reps {
            let t = Instant::now();
            let trace = m.prefill(&ids, crate::model::PREFILL_CHUNK, &mut |_, _| {})?;
            tps.push(n as f64 / t.elapsed().as_secs_f64());
            trace_bytes_max = trace_bytes_max.max(trace.resident_bytes());
        }
        let v = median(tps);
        say(format!("prefill {n:>5} tokens: {v:>7.1} t/s"));
        rows.push(serde_json::json!({"what": "prefill", "tokens": n, "tps": v}));
    }
    let max_ctx = a.decode.iter().cloned().max().unwrap_or(0);
    for &ctx in &a.decode {
        // A context of 0 still needs one token to start from.
        let ids = filler_ids(&loaded, ctx.max(1))?;
        let trace = m.prefill(&ids, crate::model::PREFILL_CHUNK, &mut |_, _| {})?;
        let all = KeepSet::all(&trace.dims, trace.len);
        trace_bytes_max = trace_bytes_max.max(trace.resident_bytes());
        let (v, kv) = decode_tps(&loaded, &trace, &all, a.steps, reps)?;
        kv_bytes_max = kv_bytes_max.max(kv);
        let share = match ceiling {
            Some(c) if ctx == 0 => format!(" ({:.0}% of the bandwidth ceiling)", 100.0 * v / c),
            _ => String::new(),
        };
        say(format!("decode at {ctx:>5} context: {v:>7.1} t/s{share}"));
        rows.push(serde_json::json!({"what": "decode", "context": ctx, "kept": "full", "tps": v}));
        if ctx == max_ctx && ctx > a.compressed_budget {
            let s = Settings {
                method: crate::eviction::snapkv::METHOD,
                budget: a.compressed_budget,
                ..Settings::default()
            };
            let t = Instant::now();
            let sel = eviction::select(&eviction::Request::new(&trace, &s))?;
            let sel_ms = t.elapsed().as_secs_f64() * 1000.0;
            let (v, _) = decode_tps(&loaded, &trace, &sel.keep, a.steps, reps)?;
            say(format!(
                "decode at {ctx:>5} context, snapkv budget {}: {v:>7.1} t/s (selection {sel_ms:.1} ms)",
                a.compressed_budget
            ));
            rows.push(serde_json::json!({"what": "decode", "context": ctx, "kept": a.compressed_budget, "tps": v, "select_ms": sel_ms}));
        }
    }
    let peak = peak_rss_bytes();
    let known = mem_weights + trace_bytes_max + kv_bytes_max;
    say(format!(
        "memory: weights {:.1} MB, largest Trace {:.1} MB, largest KV cache {:.1} MB, peak RSS {}",
        mem_weights as f64 / 1e6,
        trace_bytes_max as f64 / 1e6,
        kv_bytes_max as f64 / 1e6,
        peak.map_or("unknown".into(), |p| format!(
            "{:.1} MB (other {:.1} MB)",
            p as f64 / 1e6,
            p.saturating_sub(known as u64) as f64 / 1e6
        ))
    ));
    if a.json {
        let model = serde_json::json!({
            "name": m.config.name,
            "arch": m.config.arch,
            "file": super::resolve_model_path(a.model.model.as_deref())?.display().to_string(),
            "file_bytes": loaded.file_bytes,
            "formats": formats,
        });
        let memory = serde_json::json!({
            "weights_bytes": mem_weights,
            "trace_bytes_max": trace_bytes_max,
            "kv_cache_bytes_max": kv_bytes_max,
            "peak_rss_bytes": peak,
        });
        let bandwidth = bandwidth.map(|b| {
            serde_json::json!({
                "read_bytes_per_s": b,
                "decode_read_bytes_per_token": read_per_token,
                "ceiling_tps": ceiling,
            })
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "threads": threads,
                "bandwidth": bandwidth,
                "reps": reps,
                "steps": a.steps,
                "model": model,
                "memory": memory,
                "results": rows
            }))?
        );
    }
    Ok(())
}

/// The formats the model's matrices are held in, with how many matrices each.
fn weight_formats(m: &crate::model::Model) -> String {
    let w = &m.weights;
    let mut all = vec![&w.embed];
    all.extend(w.lm_head.as_ref());
    for l in &w.layers {
        all.extend([&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down]);
    }
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for lin in all {
        let name = lin.format().name();
        match counts.iter_mut().find(|(n, _)| *n == name) {
            Some(c) => c.1 += 1,
            None => counts.push((name, 1)),
        }
    }
    counts
        .iter()
        .map(|(n, c)| format!("{n} x{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Peak resident set size of this process (Linux: VmHWM), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn decode_tps(
    loaded: &Loaded,
    trace: &crate::trace::Trace,
    keep: &KeepSet,
    steps: usize,
    reps: usize,
) -> Result<(f64, usize)> {
    let mut tps = Vec::new();
    let mut kv = 0;
    for _ in 0..reps {
        let mut st = DecodeState::new(&loaded.model, trace, keep, steps)?;
        let mut tok = crate::model::kernels::argmax(&trace.last_logits) as u32;
        let t = Instant::now();
        for _ in 0..steps {
            let logits = st.step(tok, Observer::none())?;
            tok = crate::model::kernels::argmax(logits) as u32;
        }
        tps.push(steps as f64 / t.elapsed().as_secs_f64());
        kv = kv.max(st.kv_bytes());
    }
    Ok((median(tps), kv))
}
