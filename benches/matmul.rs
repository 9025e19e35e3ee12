//! Prefill products, one thread: the f32 GEMM on dequantised panels against the 8-bit
//! path (activations quantised as llama.cpp does, integer dot products on the stored
//! blocks; Q4_K and Q6_K through the eight-row packed kernels), per weight format, on a 1024 x 2048 matrix and 64 tokens (the Llama-3.2-1B
//! shape's attention width). `cargo bench --bench matmul`.

use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use kvscope::model::linear::Linear;
use kvscope::model::quant::{Format, QVec};

fn matrix(fmt: Format, rows: usize, cols: usize) -> Linear {
    let mut s = 1u64;
    let w: Vec<f32> = (0..rows * cols)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect();
    let t = Tensor::from_slice(&w, (rows, cols), &Device::Cpu).expect("tensor");
    let q = QTensor::quantize(&t, fmt.ggml()).expect("quantize");
    let bytes = q.data().expect("bytes").to_vec();
    Linear::from_blocks(fmt, bytes, rows, cols).expect("linear")
}

fn products(c: &mut Criterion) {
    let (rows, cols, t) = (1024, 2048, 64);
    let x: Vec<f32> = (0..t * cols)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("pool");
    let mut g = c.benchmark_group("prefill_product_1024x2048x64");
    g.sample_size(10);
    g.measurement_time(std::time::Duration::from_secs(3));
    for fmt in [
        Format::Q4K,
        Format::Q6K,
        Format::Q5_0,
        Format::Q4_1,
        Format::Q8_0,
    ] {
        let w = matrix(fmt, rows, cols);
        let mut out = vec![0f32; t * rows];
        g.bench_function(format!("{}_f32_gemm", fmt.name()), |b| {
            b.iter(|| pool.install(|| w.matmul(&x, t, &mut out)))
        });
        g.bench_function(format!("{}_int8", fmt.name()), |b| {
            b.iter(|| {
                pool.install(|| {
                    let qs: Vec<QVec> = x
                        .chunks_exact(cols)
                        .map(|r| {
                            let mut q = QVec::default();
                            q.quantize_into(r);
                            if fmt.is_k_quant() {
                                q.quantize_k_into(r);
                            }
                            q
                        })
                        .collect();
                    w.matmul_q8(&qs, &mut out)
                })
            })
        });
    }
    g.finish();

    // Decode: one token, every row (the matrix is 2 MiB or less: memory-bound only for
    // the larger models, so this measures the kernels' arithmetic).
    let mut g = c.benchmark_group("decode_matvec_1024x2048");
    g.sample_size(20);
    g.measurement_time(std::time::Duration::from_secs(2));
    let x1 = &x[..cols];
    for fmt in [
        Format::Q4K,
        Format::Q6K,
        Format::Q5_0,
        Format::Q4_1,
        Format::Q8_0,
    ] {
        let w = matrix(fmt, rows, cols);
        let mut qx = QVec::default();
        qx.quantize_into(x1);
        if fmt.is_k_quant() {
            qx.quantize_k_into(x1);
        }
        let mut out = vec![0f32; rows];
        g.bench_function(fmt.name(), |b| {
            b.iter(|| w.matvec_rows(x1, &qx, true, 0, &mut out))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().without_plots();
    targets = products
}
criterion_main!(benches);
