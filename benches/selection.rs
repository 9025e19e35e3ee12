//! Eviction selection speed for every method, for all layers of a model shaped like the
//! default one (30 layers, 9 query / 3 KV heads, head_dim 64), at 2K and 8K prompt
//! tokens. Selection reads only the Trace, so a synthetic Trace of that shape measures
//! it exactly; values do not change the work done.
//!
//! `cargo bench --bench selection`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use kvscope::eviction::testutil::{random_profile, random_trace};
use kvscope::eviction::{select, Method, Request, Settings};
use kvscope::trace::Dims;

fn selection(c: &mut Criterion) {
    let dims = Dims {
        n_layers: 30,
        n_heads: 9,
        n_kv_heads: 3,
        head_dim: 64,
    };
    let profile = random_profile(dims, 7);
    let mut group = c.benchmark_group("select_all_layers");
    group.sample_size(10);
    for len in [2048usize, 8192] {
        let trace = random_trace(dims, len, 1);
        for method in Method::ALL {
            let settings = Settings {
                method,
                budget: 128,
                ..Settings::default()
            };
            group.bench_with_input(BenchmarkId::new(method.name(), len), &trace, |b, t| {
                b.iter(|| {
                    select(&Request::new(t, &settings).profile(Some(&profile)))
                        .map(|s| s.keep.positions.len())
                })
            });
        }
    }
    group.finish();
}

// No HTML plots: the plotters build the eval figures use has no system fonts for
// criterion's charts, and the numbers are what matter here.
criterion_group! {
    name = benches;
    config = Criterion::default().without_plots();
    targets = selection
}
criterion_main!(benches);
