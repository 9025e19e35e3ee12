//! Forward-pass invariants on a tiny random GQA model built in the test (no download):
//! chunked prefill, decode against a plain forward, attention statistics against a naive
//! f64 re-implementation, decoding over a compressed cache, and attention capture.

use kvscope::keepset::KeepSet;
use kvscope::model::{self, DecodeState, Model, Observer, Precision};
use kvscope::testing::{self, GgufSpec};
use kvscope::trace::{KvStore, Trace};

const VOCAB: usize = 64;

fn model(context: usize) -> Model {
    testing::tiny_model(VOCAB, context, 42)
}

fn prefill(m: &Model, ids: &[u32], chunk: usize) -> Trace {
    m.prefill(ids, chunk, &mut |_, _| {}).expect("prefill")
}

fn max_abs(x: &[f32]) -> f32 {
    x.iter().fold(0.0f32, |a, &v| a.max(v.abs()))
}

/// `max |a - b| <= rel * max |b|` (and equal lengths).
fn assert_close(what: &str, a: &[f32], b: &[f32], rel: f32) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    let scale = max_abs(b).max(1e-12);
    let (i, diff) = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .enumerate()
        .fold(
            (0, 0.0f32),
            |acc, (i, d)| if d > acc.1 { (i, d) } else { acc },
        );
    assert!(
        diff <= rel * scale,
        "{what}: max |diff| {diff} at {i} ({} vs {}) exceeds {rel} x max |ref| {scale}",
        a[i],
        b[i]
    );
}

/// Tolerance for stored keys and values: `rel`, plus half an f16 step (2^-11 of the
/// value) where the Trace holds them in f16 (the decode cache's type on the fast path).
fn kv_tol(kv: &KvStore, rel: f32) -> f32 {
    match kv {
        KvStore::F16(_) => rel + 1.0 / 2048.0,
        KvStore::F32(_) => rel,
    }
}

fn assert_same_trace(what: &str, t: &Trace, r: &Trace) {
    assert_eq!(t.len, r.len);
    assert_eq!(t.w_max, r.w_max);
    assert_eq!(t.ids, r.ids);
    assert_eq!(t.layers.len(), r.layers.len());
    for (l, (a, b)) in t.layers.iter().zip(&r.layers).enumerate() {
        assert_close(
            &format!("{what} layer {l} K"),
            &a.k.to_f32(),
            &b.k.to_f32(),
            kv_tol(&a.k, 1e-4),
        );
        assert_close(
            &format!("{what} layer {l} V"),
            &a.v.to_f32(),
            &b.v.to_f32(),
            kv_tol(&a.v, 1e-4),
        );
        assert_close(
            &format!("{what} layer {l} q_last"),
            &a.q_last,
            &b.q_last,
            1e-4,
        );
        assert_close(
            &format!("{what} layer {l} col_sums"),
            &a.col_sums,
            &b.col_sums,
            1e-4,
        );
        assert_eq!(a.maps.len(), b.maps.len());
        for (h, (ma, mb)) in a.maps.iter().zip(&b.maps).enumerate() {
            assert_eq!(
                (ma.len, ma.block_size, ma.blocks),
                (mb.len, mb.block_size, mb.blocks)
            );
            assert_close(
                &format!("{what} layer {l} head {h} map"),
                &ma.mean,
                &mb.mean,
                1e-4,
            );
        }
    }
    assert_close(
        &format!("{what} last_logits"),
        &t.last_logits,
        &r.last_logits,
        1e-4,
    );
}

#[test]
fn chunked_prefill_equals_unchunked() {
    let m = model(512);
    // 100 tokens: more than W_MAX query rows; 300: block maps with 2-token blocks.
    for (len, seed) in [(100, 1), (300, 2)] {
        let ids = testing::random_ids(len, VOCAB, seed);
        let whole = prefill(&m, &ids, len);
        let mut calls = Vec::new();
        let t16 = m
            .prefill(&ids, 16, &mut |d, n| calls.push((d, n)))
            .expect("prefill");
        // (0, len) first, then after every layer of every chunk, (len, len) once last.
        let layers = m.config.n_layers;
        assert_eq!(calls.len(), 1 + len.div_ceil(16) * layers, "{calls:?}");
        assert_eq!(calls.first(), Some(&(0, len)));
        assert_eq!(calls.last(), Some(&(len, len)));
        assert_eq!(calls.iter().filter(|c| c.0 == len).count(), 1);
        assert!(calls.windows(2).all(|w| w[0].0 <= w[1].0 && w[1].1 == len));
        for c0 in (16..len).step_by(16) {
            assert!(calls.contains(&(c0, len)), "chunk end {c0} reported");
        }
        assert_same_trace(&format!("len {len} chunk 16"), &t16, &whole);
        for chunk in [1, 7] {
            let t = prefill(&m, &ids, chunk);
            assert_same_trace(&format!("len {len} chunk {chunk}"), &t, &whole);
        }
        // A chunk larger than the prompt is the same as one chunk.
        assert_same_trace("oversized chunk", &prefill(&m, &ids, 4 * len), &whole);
    }
}

fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

#[test]
fn full_cache_decode_equals_plain_forward() {
    let mut m = model(256);
    m.precision = Precision::F32;
    let prompt = testing::random_ids(20, VOCAB, 3);
    let n = 12;
    let trace = prefill(&m, &prompt, 8);
    let all = KeepSet::all(&trace.dims, trace.len);
    let ids = m.generate(&trace, &all, n, &[], None).expect("generate");
    assert_eq!(ids.len(), n);
    assert_eq!(ids[0], argmax(&trace.last_logits));

    let mut state = DecodeState::new(&m, &trace, &all, n).expect("decode state");
    let mut tok = argmax(&trace.last_logits);
    let mut seq = prompt.clone();
    for (j, &want) in ids.iter().enumerate().skip(1) {
        seq.push(tok);
        let step = state.step(tok, Observer::none()).expect("step").to_vec();
        let plain = prefill(&m, &seq, 5);
        assert_close(&format!("step {j} logits"), &step, &plain.last_logits, 1e-4);
        let next = argmax(&step);
        assert_eq!(next, argmax(&plain.last_logits), "step {j}: greedy ids");
        assert_eq!(next, want, "step {j}: generate() and step() disagree");
        tok = next;
    }
    assert_eq!(state.pos, prompt.len() + n - 1);
}

// ---- a naive f64 re-implementation of layer 0's attention ----

fn rms_norm(x: &[f64], g: &[f32], eps: f64) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let r = 1.0 / (ms + eps).sqrt();
    x.iter().zip(g).map(|(v, &g)| v * r * g as f64).collect()
}

fn matvec(w: &[f32], rows: usize, x: &[f64]) -> Vec<f64> {
    let k = x.len();
    (0..rows)
        .map(|r| (0..k).map(|c| w[r * k + c] as f64 * x[c]).sum())
        .collect()
}

/// RoPE on consecutive pairs: (x[2i], x[2i+1]) rotates by pos * base^(-2i/head_dim).
fn rope(x: &mut [f64], pos: usize, base: f64) {
    let hd = x.len();
    for i in 0..hd / 2 {
        let a = pos as f64 * base.powf(-2.0 * i as f64 / hd as f64);
        let (c, s) = (a.cos(), a.sin());
        let (u, v) = (x[2 * i], x[2 * i + 1]);
        x[2 * i] = u * c - v * s;
        x[2 * i + 1] = u * s + v * c;
    }
}

/// `[head][query][key]` causal attention probabilities of layer 0, and the post-RoPE
/// keys `[kv_head][pos][dim]`.
fn naive_layer0(m: &Model, ids: &[u32]) -> (Vec<Vec<Vec<f64>>>, Vec<f64>) {
    let c = &m.config;
    let w = &m.weights;
    let (d, hd, nh, nkv) = (c.d_model, c.head_dim, c.n_heads, c.n_kv_heads);
    let len = ids.len();
    let mut qs = vec![vec![0.0; d]; len];
    let mut ks = vec![0.0; nkv * len * hd];
    for (p, &id) in ids.iter().enumerate() {
        let x: Vec<f64> = w.embed.to_f32()[id as usize * d..(id as usize + 1) * d]
            .iter()
            .map(|&v| v as f64)
            .collect();
        let hn = rms_norm(&x, &w.layers[0].attn_norm, c.rms_eps as f64);
        let mut q = matvec(&w.layers[0].wq.to_f32(), d, &hn);
        let mut k = matvec(&w.layers[0].wk.to_f32(), nkv * hd, &hn);
        for h in q.chunks_exact_mut(hd) {
            rope(h, p, c.rope_base as f64);
        }
        for (g, kh) in k.chunks_exact_mut(hd).enumerate() {
            rope(kh, p, c.rope_base as f64);
            ks[(g * len + p) * hd..(g * len + p + 1) * hd].copy_from_slice(kh);
        }
        qs[p] = q;
    }
    let scale = 1.0 / (hd as f64).sqrt();
    let probs = (0..nh)
        .map(|h| {
            let g = h / (nh / nkv);
            (0..len)
                .map(|i| {
                    let q = &qs[i][h * hd..(h + 1) * hd];
                    let s: Vec<f64> = (0..=i)
                        .map(|j| {
                            let k = &ks[(g * len + j) * hd..(g * len + j + 1) * hd];
                            q.iter().zip(k).map(|(a, b)| a * b).sum::<f64>() * scale
                        })
                        .collect();
                    let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = s.iter().map(|v| (v - mx).exp()).collect();
                    let z: f64 = e.iter().sum();
                    let mut row: Vec<f64> = e.iter().map(|v| v / z).collect();
                    row.resize(len, 0.0);
                    row
                })
                .collect()
        })
        .collect();
    (probs, ks)
}

#[test]
fn attention_statistics_match_naive_attention() {
    let m = model(512);
    let len = 300; // > 256: block maps with 2-token blocks
    let ids = testing::random_ids(len, VOCAB, 4);
    let trace = prefill(&m, &ids, 64);
    let nh = m.config.n_heads;

    // Every softmax row sums to 1, so each head's map covers L units of attention.
    for (l, lt) in trace.layers.iter().enumerate() {
        assert_eq!(lt.maps.len(), nh);
        for (h, map) in lt.maps.iter().enumerate() {
            assert_eq!((map.block_size, map.blocks), (2, 150));
            let total: f64 = (0..map.blocks)
                .flat_map(|qb| (0..map.blocks).map(move |kb| (qb, kb)))
                .map(|(qb, kb)| map.cell_sum(qb, kb))
                .sum();
            assert!(
                (total - len as f64).abs() < 1e-3,
                "layer {l} head {h}: block map sums to {total}, expected {len}"
            );
            let cs: f64 = trace.col_sums(l, h).iter().map(|&v| v as f64).sum();
            assert!(
                (cs - len as f64).abs() < 1e-2,
                "layer {l} head {h}: column sums add up to {cs}, expected {len}"
            );
        }
    }

    let (probs, keys) = naive_layer0(&m, &ids);
    let k32: Vec<f32> = keys.iter().map(|&v| v as f32).collect();
    assert_close(
        "layer 0 post-RoPE K",
        &trace.layers[0].k.to_f32(),
        &k32,
        kv_tol(&trace.layers[0].k, 1e-4),
    );
    for (h, p) in probs.iter().enumerate() {
        let want: Vec<f32> = (0..len)
            .map(|j| p.iter().map(|row| row[j]).sum::<f64>() as f32)
            .collect();
        assert_close(
            &format!("layer 0 head {h} col_sums"),
            trace.col_sums(0, h),
            &want,
            1e-4,
        );
        let map = &trace.layers[0].maps[h];
        let mut want = vec![0.0f32; map.blocks * map.blocks];
        for qb in 0..map.blocks {
            for kb in 0..map.blocks {
                let (qs, ks) = (map.block_span(qb), map.block_span(kb));
                let n = (qs.len() * ks.len()) as f64;
                let s: f64 = qs
                    .flat_map(|i| ks.clone().map(move |j| (i, j)))
                    .map(|(i, j)| p[i][j])
                    .sum();
                want[qb * map.blocks + kb] = (s / n) as f32;
            }
        }
        assert_close(
            &format!("layer 0 head {h} block map"),
            &map.mean,
            &want,
            1e-4,
        );
        for qb in 0..map.blocks {
            for kb in qb + 1..map.blocks {
                assert_eq!(map.cell(qb, kb), 0.0, "causal mask: cell ({qb}, {kb})");
            }
        }
    }
}

/// A keep set that differs per layer and KV head: the first 2 positions, every
/// `3 + l + g`-th position, and the last 4.
fn sparse_keep(layers: usize, kv: usize, len: usize) -> KeepSet {
    KeepSet {
        positions: (0..layers)
            .map(|l| {
                (0..kv)
                    .map(|g| {
                        (0..len)
                            .filter(|&p| p < 2 || p % (3 + l + g) == 0 || p + 4 >= len)
                            .collect()
                    })
                    .collect()
            })
            .collect(),
    }
}

#[test]
fn compressed_decode_holds_only_the_kept_entries() {
    let m = model(256);
    let len = 40;
    let n = 6;
    let ids = testing::random_ids(len, VOCAB, 5);
    let trace = prefill(&m, &ids, 16);
    let dims = trace.dims;
    let keep = sparse_keep(dims.n_layers, dims.n_kv_heads, len);
    keep.validate(&dims, len).expect("valid keep set");
    let kept: usize = keep.kept_per_layer().iter().sum();
    let full_entries = dims.n_layers * dims.n_kv_heads * len;
    assert!(kept < full_entries);

    let mut state = DecodeState::new(&m, &trace, &keep, n).expect("decode state");
    assert_eq!(state.entries(), kept);
    // The memory the report shows is what this cache physically holds.
    assert_eq!(
        state.kv_bytes(),
        kvscope::session::kv_bytes(&keep, dims.head_dim, m.kv_dtype().bytes())
    );
    for (l, layer) in state.cache.iter().enumerate() {
        for (g, hc) in layer.iter().enumerate() {
            assert_eq!(hc.positions, keep.positions[l][g]);
        }
    }
    state.step(ids[0], Observer::none()).expect("step");
    assert_eq!(state.entries(), kept + dims.n_layers * dims.n_kv_heads);
    let all = KeepSet::all(&dims, len);
    assert_eq!(
        DecodeState::new(&m, &trace, &all, n)
            .expect("state")
            .entries(),
        full_entries
    );

    let (mut cap_c, mut cap_f) = (Vec::new(), Vec::new());
    m.generate(&trace, &keep, n, &[], Some(&mut cap_c))
        .expect("generate compressed");
    m.generate(&trace, &all, n, &[], Some(&mut cap_f))
        .expect("generate full");
    assert_eq!(cap_c.len(), n - 1);
    assert_eq!(cap_f.len(), n - 1);
    let n_rep = dims.n_rep();
    for (s, (c, f)) in cap_c.iter().zip(&cap_f).enumerate() {
        for l in 0..dims.n_layers {
            for h in 0..dims.n_heads {
                let want = keep.positions[l][h / n_rep].len() + s + 1;
                assert_eq!(c.probs[l][h].len(), want, "step {s} layer {l} head {h}");
                assert_eq!(f.probs[l][h].len(), len + s + 1);
                assert_ne!(c.probs[l][h].len(), f.probs[l][h].len());
            }
        }
    }
}

#[test]
fn attention_capture_is_optional_and_consistent() {
    let m = model(256);
    let len = 33;
    let n = 8;
    let ids = testing::random_ids(len, VOCAB, 6);
    let trace = prefill(&m, &ids, 10);
    let dims = trace.dims;
    for keep in [
        KeepSet::all(&dims, len),
        sparse_keep(dims.n_layers, dims.n_kv_heads, len),
    ] {
        let plain = m.generate(&trace, &keep, n, &[], None).expect("generate");
        let mut cap = Vec::new();
        let captured = m
            .generate(&trace, &keep, n, &[], Some(&mut cap))
            .expect("generate with capture");
        assert_eq!(plain, captured, "capture changed the generated ids");
        // The first token comes from the prefill logits; each later one from a step.
        assert_eq!(cap.len(), n - 1);
        for (s, st) in cap.iter().enumerate() {
            assert_eq!(st.pos, len + s);
            assert_eq!(st.probs.len(), dims.n_layers);
            for (l, layer) in st.probs.iter().enumerate() {
                assert_eq!(layer.len(), dims.n_heads);
                for (h, row) in layer.iter().enumerate() {
                    let held = keep.positions[l][h / dims.n_rep()].len() + s + 1;
                    assert_eq!(row.len(), held, "step {s} layer {l} head {h}");
                    let sum: f64 = row.iter().map(|&p| p as f64).sum();
                    assert!((sum - 1.0).abs() < 1e-5, "row sums to {sum}");
                    assert!(row.iter().all(|&p| (0.0..=1.0).contains(&p)));
                }
            }
        }
    }
    // Stop ids end generation and are included.
    let all = KeepSet::all(&dims, len);
    let ids = m.generate(&trace, &all, n, &[], None).expect("generate");
    let stop = ids[2];
    let first = ids.iter().position(|&t| t == stop).expect("present");
    let stopped = m
        .generate(&trace, &all, n, &[stop], None)
        .expect("generate");
    assert_eq!(stopped, ids[..=first]);
}

#[test]
fn tiny_gguf_loads_as_the_same_model() {
    let dir = testing::temp_dir("engine");
    let path = dir.join("tiny.gguf");
    let spec = GgufSpec::default();
    let cfg = testing::write_tiny_gguf(&path, &spec).expect("write gguf");
    let loaded = model::load(&path).expect("load tiny gguf");
    assert_eq!(loaded.model.config, cfg);
    let mem = Model::new(cfg.clone(), testing::random_weights(&cfg, spec.seed)).expect("model");
    let text = loaded.tok.apply_template("Hello there, the inn!", false);
    assert!(loaded.tok.chatml);
    let ids = loaded.tok.encode(&text).expect("encode");
    let vocab = testing::tiny_vocab();
    assert_eq!(
        ids[0] as usize,
        vocab.len() - 2,
        "<|im_start|> is one token"
    );
    assert_eq!(loaded.tok.decode(&ids), text);
    assert_eq!(loaded.tok.stop_ids, vec![vocab.len() as u32 - 1]);
    let a = prefill(&loaded.model, &ids, 16);
    let b = prefill(&mem, &ids, 16);
    assert_same_trace("gguf vs memory", &a, &b);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The shadow (layer-error) step needs a full cache and a keep set of the model's shape;
/// a refused call is an error, not a panic, and leaves the decode state untouched.
#[test]
fn step_shadow_refuses_bad_input_without_touching_the_state() {
    let m = model(256);
    let ids = testing::random_ids(30, VOCAB, 9);
    let trace = prefill(&m, &ids, 8);
    let dims = trace.dims;
    let keep = sparse_keep(dims.n_layers, dims.n_kv_heads, trace.len);
    let mut errors = Vec::new();

    let mut compressed = DecodeState::new(&m, &trace, &keep, 4).expect("state");
    let before = (compressed.pos, compressed.entries());
    let err = compressed
        .step(ids[0], Observer::shadow(&keep, &mut errors))
        .expect_err("a compressed cache is refused")
        .to_string();
    assert!(err.contains("full cache"), "{err}");
    assert_eq!((compressed.pos, compressed.entries()), before);

    let all = KeepSet::all(&dims, trace.len);
    let mut full = DecodeState::new(&m, &trace, &all, 4).expect("state");
    let wrong_shape = KeepSet { positions: vec![] };
    assert!(full
        .step(ids[0], Observer::shadow(&wrong_shape, &mut errors))
        .is_err());
    assert_eq!(
        (full.pos, full.entries()),
        (trace.len, dims.n_layers * dims.n_kv_heads * trace.len)
    );
    assert!(errors.is_empty());
    // And a good call still works afterwards, one error per layer.
    full.step(ids[0], Observer::shadow(&keep, &mut errors))
        .expect("shadow step");
    assert_eq!(errors.len(), dims.n_layers);
}

/// The attention map's token zoom: rows replayed from the Trace ([`Model::attention_rows`])
/// give the probabilities prefill computed for those query rows. At 200 tokens a block
/// map has one token per block, so its cells are prefill's own per-token attention: the
/// independent reference, in every layer (the upper one needs the replayed residual
/// stream), with and without a sliding window below it.
#[test]
fn zoomed_rows_equal_the_attention_prefill_computed() {
    for window in [None, Some(24)] {
        let mut cfg = testing::tiny_config(VOCAB, 256);
        cfg.layers[0].window = window;
        let w = testing::random_weights(&cfg, 7);
        let mut m = Model::new(cfg, w).expect("model");
        m.precision = Precision::F32;
        let ids = testing::random_ids(200, VOCAB, 5);
        let t = prefill(&m, &ids, 64);
        assert_eq!(t.layers[0].maps[0].block_size, 1);
        let (rows, keys) = (100..140, 90..150);
        for layer in 0..2 {
            let z = m
                .attention_rows(&t, layer, rows.clone(), keys.clone())
                .expect("rows");
            assert_eq!(
                (z.layer, z.rows.clone(), z.keys.clone()),
                (layer, rows.clone(), keys.clone())
            );
            for h in 0..4 {
                let map = &t.layers[layer].maps[h];
                for q in rows.clone() {
                    let want: Vec<f32> = keys.clone().map(|k| map.cell(q, k)).collect();
                    assert_close(
                        &format!("window {window:?} layer {layer} head {h} row {q}"),
                        z.row(h, q),
                        &want,
                        1e-5,
                    );
                    // Keys after the row are masked, and in view there are some.
                    assert!(z.row(h, q)[q + 1 - keys.start..].iter().all(|&p| p == 0.0));
                }
            }
        }
    }
    // Bad requests are errors, not panics.
    let m = model(256);
    let t = prefill(&m, &testing::random_ids(50, VOCAB, 1), 64);
    assert!(m.attention_rows(&t, 2, 0..10, 0..10).is_err());
    assert!(m.attention_rows(&t, 0, 40..60, 0..10).is_err());
    assert!(m.attention_rows(&t, 0, 10..10, 0..10).is_err());
    assert!(m.attention_rows(&t, 0, 0..10, 45..51).is_err());
}
