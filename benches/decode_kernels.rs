//! The decode matrix-vector kernel over affine 8-bit rows (GGUF Q4_1, Q8_0): the two-row
//! kernel `matvec_q_rows` uses against the one-row kernel it replaced, on the shapes of
//! the default model (576 columns) and Gemma 3 270M's output matrix (640 columns), on a
//! matrix that stays in L2 and on one that streams from memory. Values are random; the
//! work does not depend on them.
//!
//! Group `q32_file_vs_store`: each 32-value format on the Qwen2.5-0.5B shape's FFN
//! matrices (4864 x 896, 896 x 4864), through the kernel of the file's raw blocks
//! (`quant::dot_q8`, what Q4_0 / Q5_0 / Q5_1 decode used before they moved into the
//! affine store) and through the affine store (`QMat::from_blocks`, `matvec_q_rows`).
//!
//! Group `head_rows`: the output heads of Gemma 3 270M (Q8_0, 262,144 x 640, ~178 MB) and
//! of the Qwen2.5-0.5B shape (Q8_0, 151,936 x 896), and a Q5_0 FFN matrix of the 0.5B
//! shape, through the one-row kernels (`matvec_q_rows_one`, what decode ran before) and
//! the multi-row kernels (`matvec_q_rows_by::<R>`) at several prefetch distances, and
//! what `matvec_q_rows` picks (`default`), timed in the thread's CPU time.
//!
//! `cargo bench --bench decode_kernels`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::f16;
use kvscope::model::quant::{
    self, matvec_q_rows, matvec_q_rows_by, matvec_q_rows_one, Format, QMat, QVec, QK,
};

fn lcg(s: &mut u64) -> u64 {
    *s = s
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *s >> 33
}

fn random_qmat(rows: usize, cols: usize, packed: bool, seed: u64) -> QMat {
    let mut s = seed;
    let nb = rows * cols / QK;
    let bytes = if packed { rows * cols / 2 } else { rows * cols };
    QMat {
        rows,
        cols,
        packed,
        q: (0..bytes).map(|_| lcg(&mut s) as u8).collect(),
        d: (0..nb)
            .map(|_| f16::from_f32((lcg(&mut s) % 1000) as f32 * 1e-5))
            .collect(),
        m: (0..nb)
            .map(|_| f16::from_f32(-((lcg(&mut s) % 1000) as f32) * 1e-4))
            .collect(),
        hi: Vec::new(),
        centre: -128.0,
    }
}

fn kernels(c: &mut Criterion) {
    let mut group = c.benchmark_group("affine_matvec");
    group.sample_size(20);
    for (name, rows, cols, packed) in [
        ("q4_1_l2", 1536usize, 576usize, true),
        ("q4_1_mem", 61440, 576, true),
        ("q8_0_l2", 1024, 576, false),
        ("q8_0_mem", 49152, 576, false),
        ("q8_0_mem_640", 65536, 640, false),
    ] {
        let w = random_qmat(rows, cols, packed, 3);
        let mut s = 9u64;
        let xf: Vec<f32> = (0..cols)
            .map(|_| (lcg(&mut s) % 2000) as f32 / 1000.0 - 1.0)
            .collect();
        let mut x = QVec::default();
        x.quantize_into(&xf);
        let mut out = vec![0f32; rows];
        group.throughput(Throughput::Bytes(
            (w.q.len() + 2 * (w.d.len() + w.m.len())) as u64,
        ));
        group.bench_function(BenchmarkId::new("two_rows", name), |b| {
            b.iter(|| matvec_q_rows(&w, &x, 0, &mut out))
        });
        group.bench_function(BenchmarkId::new("one_row", name), |b| {
            b.iter(|| matvec_q_rows_one(&w, &x, 0, &mut out))
        });
    }
    group.finish();
}

/// Random blocks of `fmt` (scales and offsets small f16 values, codes random bytes).
fn random_blocks(fmt: Format, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    let mut s = seed;
    let bs = fmt.block_bytes();
    let mut data: Vec<u8> = (0..rows * fmt.row_bytes(cols))
        .map(|_| lcg(&mut s) as u8)
        .collect();
    let halves = if matches!(fmt, Format::Q4_1 | Format::Q5_1) {
        2
    } else {
        1
    };
    for blk in data.chunks_exact_mut(bs) {
        for h in 0..halves {
            let v = f16::from_f32((lcg(&mut s) % 1000) as f32 * 1e-5).to_le_bytes();
            blk[2 * h..2 * h + 2].copy_from_slice(&v);
        }
    }
    data
}

fn file_vs_store(c: &mut Criterion) {
    let mut group = c.benchmark_group("q32_file_vs_store");
    group.sample_size(20);
    for fmt in [
        Format::Q5_0,
        Format::Q5_1,
        Format::Q4_0,
        Format::Q4_1,
        Format::Q8_0,
    ] {
        for (rows, cols) in [(4864usize, 896usize), (896, 4864)] {
            let data = random_blocks(fmt, rows, cols, 5);
            let w = QMat::from_blocks(fmt, data.clone(), rows, cols).unwrap();
            let mut s = 9u64;
            let xf: Vec<f32> = (0..cols)
                .map(|_| (lcg(&mut s) % 2000) as f32 / 1000.0 - 1.0)
                .collect();
            let mut x = QVec::default();
            x.quantize_into(&xf);
            let mut out = vec![0f32; rows];
            let rb = fmt.row_bytes(cols);
            let name = format!("{}_{rows}x{cols}", fmt.name());
            group.throughput(Throughput::Bytes(data.len() as u64));
            group.bench_function(BenchmarkId::new("file_blocks", &name), |b| {
                b.iter(|| {
                    for (r, o) in out.iter_mut().enumerate() {
                        *o = quant::dot_q8(fmt, &data[r * rb..(r + 1) * rb], &x);
                    }
                })
            });
            group.bench_function(BenchmarkId::new("affine_store", &name), |b| {
                b.iter(|| matvec_q_rows(&w, &x, 0, &mut out))
            });
        }
    }
    group.finish();
}

type Kernel = fn(&QMat, &QVec, usize, &mut [f32]);

fn head_rows(c: &mut Criterion) {
    let mut group = c.benchmark_group("head_rows");
    group.sample_size(10);
    let variants: [(&str, Kernel); 6] = [
        ("one_row", matvec_q_rows_one),
        ("rows2_pf1k", |w, x, r0, o| {
            matvec_q_rows_by::<2>(w, x, r0, o, 1024)
        }),
        ("rows4_pf512", |w, x, r0, o| {
            matvec_q_rows_by::<4>(w, x, r0, o, 512)
        }),
        ("rows4_pf1k", |w, x, r0, o| {
            matvec_q_rows_by::<4>(w, x, r0, o, 1024)
        }),
        ("rows4_pf2k", |w, x, r0, o| {
            matvec_q_rows_by::<4>(w, x, r0, o, 2048)
        }),
        ("default", matvec_q_rows),
    ];
    for (fmt, rows, cols) in [
        (Format::Q8_0, 262_144usize, 640usize),
        (Format::Q8_0, 151_936, 896),
        // Gemma 3's and the 0.5B's attention V (L2-resident).
        (Format::Q8_0, 256, 640),
        (Format::Q8_0, 128, 896),
        // Gemma 3's FFN gate / up and the 0.5B's.
        (Format::Q5_0, 2048, 640),
        (Format::Q5_0, 4864, 896),
    ] {
        let data = random_blocks(fmt, rows, cols, 5);
        let bytes = data.len() as u64;
        let w = QMat::from_blocks(fmt, data, rows, cols).unwrap();
        let mut s = 9u64;
        let xf: Vec<f32> = (0..cols)
            .map(|_| (lcg(&mut s) % 2000) as f32 / 1000.0 - 1.0)
            .collect();
        let mut x = QVec::default();
        x.quantize_into(&xf);
        let mut out = vec![0f32; rows];
        group.throughput(Throughput::Bytes(bytes));
        let name = format!("{}_{rows}x{cols}", fmt.name());
        for (v, f) in variants {
            group.bench_function(BenchmarkId::new(v, &name), |b| {
                b.iter_custom(|iters| {
                    let t0 = thread_cpu_time();
                    for _ in 0..iters {
                        f(&w, &x, 0, &mut out);
                    }
                    thread_cpu_time() - t0
                })
            });
        }
    }
    group.finish();
}

/// CPU time of the calling thread: on a machine shared with other work, time a thread
/// spends descheduled does not count (wall-clock figures varied 2x there).
fn thread_cpu_time() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to write.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

criterion_group!(benches, kernels, file_vs_store, head_rows);
criterion_main!(benches);
