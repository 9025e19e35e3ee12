//! Navigation keys of the inspector at 30,000 prompt tokens (issue 24 item 3: each key
//! answers within 50 ms): the key's update plus the whole next frame at 160x45, on a
//! synthetic app state shaped like the default model (30 layers, 9 query / 3 KV heads)
//! with a full-size attention map per head, a keep set, window scores and a divergence
//! analysis. The keys read only this state (no model, no worker), so synthetic values
//! measure them exactly.
//!
//! `cargo bench --bench tui_keys` (criterion prints each key's time as `[low median
//! high]`; issue 24's target is 50 ms).

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use kvscope::divergence::metrics::Compare;
use kvscope::eviction::Settings;
use kvscope::session::Agreement;
use kvscope::trace::{BlockMap, MAX_MAP_BLOCKS};
use kvscope::tui::action::{Action, Pane};
use kvscope::tui::app::{update, App};
use kvscope::tui::keys::map_key;
use kvscope::tui::msg::{DivView, FromWorker, Outcome, Snapshot};
use ratatui::backend::TestBackend;
use ratatui::Terminal;

const LEN: usize = 30_000;
const LAYERS: usize = 30;
const HEADS: usize = 9;
const KV: usize = 3;
const STEPS: usize = 32;

/// A cheap deterministic pseudo-random stream.
fn rng(seed: u64) -> impl FnMut() -> f32 {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 40) as f32 / (1u64 << 24) as f32
    }
}

fn app() -> App {
    let mut r = rng(3);
    let words: Vec<&str> = kvscope::haystack::filler::DOCUMENT
        .split_inclusive(' ')
        .collect();
    let mut prompt_tokens: Vec<String> = (0..LEN)
        .map(|i| words[i % words.len()].to_string())
        .collect();
    prompt_tokens[21_000] = " 48217".into();
    let (bs, blocks) = BlockMap::geometry(LEN);
    assert!(blocks <= MAX_MAP_BLOCKS);
    let maps: Vec<Vec<BlockMap>> = (0..LAYERS)
        .map(|_| {
            (0..HEADS)
                .map(|_| BlockMap {
                    len: LEN,
                    block_size: bs,
                    blocks,
                    mean: (0..blocks * blocks).map(|_| r() * 1e-3).collect(),
                })
                .collect()
        })
        .collect();
    let snap = Snapshot {
        model_name: "synthetic-30k".into(),
        n_layers: LAYERS,
        n_heads: HEADS,
        n_kv_heads: KV,
        head_dim: 64,
        windows: vec![None; LAYERS],
        model_file_bytes: 1 << 28,
        weights_bytes: 1 << 28,
        trace_bytes: 1 << 30,
        memory: Default::default(),
        prompt_tokens,
        full_ids: (0..STEPS as u32).collect(),
        full_tokens: (0..STEPS).map(|i| format!(" t{i}")).collect(),
        full_kv_bytes: 1 << 28,
        kv_dtype: "f16",
        stats: vec![vec![vec![0.5; HEADS]; LAYERS]; 4],
        srh_scores: None,
        srh_ranking: None,
        retrieval_ranking: None,
        profile: None,
        maps: Arc::new(maps),
        prefill_ms: 1.0,
        decode_full_ms: 1.0,
        prompt_info: None,
    };
    let settings = Settings {
        method: kvscope::eviction::snapkv::METHOD,
        budget: 1024,
        ..Settings::default()
    };
    let mut app = App::new(settings.clone(), "synthetic".into(), "synthetic.txt".into());
    update(&mut app, Action::Worker(FromWorker::Ready(Box::new(snap))));
    let keep: Vec<Vec<Vec<usize>>> = (0..LAYERS)
        .map(|l| {
            (0..KV)
                .map(|g| (0..LEN).filter(|p| (p * 7 + l + g) % 29 == 0).collect())
                .collect()
        })
        .collect();
    let per_pos = |seed| {
        let mut r = rng(seed);
        (0..LEN).map(|_| r()).collect::<Vec<f32>>()
    };
    let o = Outcome {
        gen: 0,
        settings,
        tokens: (0..STEPS).map(|i| format!(" c{i}")).collect(),
        ids: (0..STEPS as u32).collect(),
        kv_bytes: 1 << 24,
        kv_fraction: 0.03,
        decode_bytes: 0,
        agreement: Agreement {
            first_divergence: Some(3),
            token_match: 0.5,
        },
        layers_keeping: kvscope::tui::worker::layers_keeping(&keep, LEN),
        keep,
        layer_budgets: vec![1024; LAYERS],
        scores: (0..LAYERS)
            .map(|l| (0..KV).map(|g| per_pos((l * KV + g) as u64)).collect())
            .collect(),
        ranks: vec![vec![(1..=LEN as u32).collect(); KV]; LAYERS],
        strips: Arc::new(
            (0..LAYERS)
                .map(|l| {
                    (0..HEADS)
                        .map(|h| per_pos((l * HEADS + h) as u64))
                        .collect()
                })
                .collect(),
        ),
        select_ms: 1.0,
        decode_ms: 1.0,
        divergence: None,
    };
    update(&mut app, Action::Worker(FromWorker::Result(Box::new(o))));
    let mut r = rng(9);
    let view = DivView {
        steps: (0..STEPS)
            .map(|i| Compare {
                kl: r() as f64,
                top1_agree: i % 3 != 0,
                rank: 1,
                prob: 0.5,
            })
            .collect(),
        lost: vec![vec![vec![0.01; HEADS]; LAYERS]; STEPS],
        culprits: (0..STEPS)
            .map(|s| {
                (0..16)
                    .map(|i| ((s * 911 + i * 1789) % LEN, r() as f64))
                    .collect()
            })
            .collect(),
        default_step: Some(4),
        ms: 1.0,
        replay_bytes: 0,
        attn_err: None,
    };
    update(
        &mut app,
        Action::Worker(FromWorker::Divergence {
            gen: 0,
            view: Arc::new(view),
        }),
    );
    app.answer = Some(("48217".into(), "synthetic.json".into()));
    update(&mut app, Action::Show(Pane::Tokens));
    app
}

fn press(app: &mut App, c: KeyCode) {
    if let Some(a) = map_key(app, KeyEvent::new(c, KeyModifiers::NONE)) {
        update(app, a);
    }
}

fn keys(c: &mut Criterion) {
    let mut app = app();
    let mut term = Terminal::new(TestBackend::new(160, 45)).unwrap();
    let mut frame = |app: &App| {
        term.draw(|f| kvscope::tui::ui::draw(f, app)).unwrap();
    };
    let mut g = c.benchmark_group("key_and_frame_30k_tokens");
    g.sample_size(20);
    g.bench_function("frame_only", |b| b.iter(|| frame(&app)));
    g.bench_function("search_slash_enter", |b| {
        b.iter(|| {
            press(&mut app, KeyCode::Char('/'));
            for ch in "lighthouse".chars() {
                press(&mut app, KeyCode::Char(ch));
            }
            press(&mut app, KeyCode::Enter);
            frame(&app);
        })
    });
    g.bench_function("n_next_match", |b| {
        b.iter(|| {
            press(&mut app, KeyCode::Char('n'));
            frame(&app);
        })
    });
    g.bench_function("j_next_lost", |b| {
        b.iter(|| {
            press(&mut app, KeyCode::Char('j'));
            frame(&app);
        })
    });
    g.bench_function("g_answer_span", |b| {
        b.iter(|| {
            press(&mut app, KeyCode::Char('g'));
            frame(&app);
        })
    });
    g.bench_function("T_token_zoom_and_back", |b| {
        b.iter(|| {
            press(&mut app, KeyCode::Char('T'));
            frame(&app);
            press(&mut app, KeyCode::Char('T'));
            frame(&app);
        })
    });
    // T with the worker's exact rows in: the draw reads them instead of block means.
    g.bench_function("T_token_zoom_exact_rows", |b| {
        b.iter(|| {
            press(&mut app, KeyCode::Char('T'));
            if let Some(z) = kvscope::tui::app::zoom_window(&app) {
                let (nr, nk) = (z.rows.len(), z.keys.len());
                let zoom = kvscope::model::RowAttention {
                    layer: z.layer,
                    rows: z.rows,
                    keys: z.keys,
                    n_heads: HEADS,
                    probs: vec![1e-3; HEADS * nr * nk],
                };
                update(
                    &mut app,
                    Action::Worker(FromWorker::ZoomRows {
                        zoom: Arc::new(zoom),
                        ms: 1.0,
                    }),
                );
            }
            frame(&app);
            press(&mut app, KeyCode::Char('T'));
            frame(&app);
        })
    });
    g.bench_function("scroll_down_16_tokens", |b| {
        b.iter(|| {
            press(&mut app, KeyCode::Down);
            frame(&app);
        })
    });
    g.bench_function("pgdn_128_tokens", |b| {
        b.iter(|| {
            press(&mut app, KeyCode::PageDown);
            frame(&app);
        })
    });
    g.bench_function("z_zoom_in", |b| {
        b.iter(|| {
            press(&mut app, KeyCode::Char('z'));
            frame(&app);
            if app.view_len > 0 && app.view_len <= 32 {
                app.view_start = 0;
                app.view_len = 0;
            }
        })
    });
    g.finish();
}

// No plots: they need system fonts, which a bare machine lacks (criterion then panics
// after the first measurement).
criterion_group! {
    name = benches;
    config = Criterion::default().without_plots();
    targets = keys
}
criterion_main!(benches);
