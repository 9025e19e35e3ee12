//! f32 numeric kernels of the forward pass: GEMM for prefill and attention (the `gemm`
//! crate, the same engine candle's CPU backend uses), the f32 matrix-vector product, and
//! the small element-wise pieces (RMSNorm, softmax, SiLU; RoPE is in `rope.rs`). The
//! quantised matrix and activation types and their 8-bit kernels live in `quant/`.

use rayon::prelude::*;

/// `out[t][j] = sum_k x[t][k] * w[j][k]`: `x` is `[t][k]` row-major, `w` is `[n][k]`
/// row-major (a linear layer's weight as stored), `out` is `[t][n]`.
pub fn matmul_xwt(x: &[f32], w: &[f32], out: &mut [f32], t: usize, k: usize, n: usize, par: bool) {
    assert!(x.len() >= t * k && w.len() >= n * k && out.len() >= t * n);
    let parallelism = if par && rayon::current_num_threads() > 1 {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above bound every index gemm touches for these strides
    // (w[j][k] at j * k + k: b_ks = 1, b_js = k).
    unsafe {
        gemm_f32(
            t,
            n,
            k,
            out.as_mut_ptr(),
            n,
            x.as_ptr(),
            k,
            w.as_ptr(),
            1,
            k,
            parallelism,
        )
    }
}

/// The one call into the `gemm` crate: `out[i][j] = sum_k a[i][k] * b[k][j]` for `i < t`,
/// `j < n`, with `out[i][j]` at `i * out_rs + j`, `a[i][k]` at `i * a_rs + k` and
/// `b[k][j]` at `k * b_ks + j * b_js` (overwriting `out`).
///
/// # Safety
/// Every one of those indices must lie inside its buffer, and no other thread may touch
/// the `out` elements written.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_f32(
    t: usize,
    n: usize,
    k: usize,
    out: *mut f32,
    out_rs: usize,
    a: *const f32,
    a_rs: usize,
    b: *const f32,
    b_ks: usize,
    b_js: usize,
    parallelism: gemm::Parallelism,
) {
    gemm::gemm(
        t,
        n,
        k,
        out,
        1,
        out_rs as isize,
        false,
        a,
        1,
        a_rs as isize,
        b,
        b_js as isize,
        b_ks as isize,
        0.0f32,
        1.0f32,
        false,
        false,
        false,
        parallelism,
    )
}

/// How the second factor `b` of a strided product lies in a larger buffer.
#[derive(Debug, Clone, Copy)]
pub enum BLayout {
    /// `b[k][j]` at `k * rs + j` (attention's values: one row per key).
    KRows(usize),
    /// `b[j][k]` at `j * rs + k`, i.e. `b` transposed (attention's keys).
    JRows(usize),
}

/// `out[t][j] = sum_k a[t][k] * b[k][j]` with explicit row strides (for attention, where
/// `a` and `b` are views into larger buffers). Single-threaded: callers parallelise
/// over heads.
#[allow(clippy::too_many_arguments)]
pub fn matmul_strided(
    a: &[f32],
    a_rs: usize,
    b: &[f32],
    layout: BLayout,
    out: &mut [f32],
    out_rs: usize,
    t: usize,
    k: usize,
    n: usize,
) {
    let (b_ks, b_js) = match layout {
        BLayout::KRows(rs) => (rs, 1),
        BLayout::JRows(rs) => (1, rs),
    };
    strided_gemm(a, a_rs, b, b_ks, b_js, out, out_rs, t, k, n);
}

/// `out[t][j] = sum_k a[t * a_rs + k] * b[k * b_ks + j * b_js]`, single-threaded, with
/// every index bounds-checked before gemm touches memory.
#[allow(clippy::too_many_arguments)]
fn strided_gemm(
    a: &[f32],
    a_rs: usize,
    b: &[f32],
    b_ks: usize,
    b_js: usize,
    out: &mut [f32],
    out_rs: usize,
    t: usize,
    k: usize,
    n: usize,
) {
    if t == 0 || n == 0 {
        return;
    }
    assert!(a.len() >= (t - 1) * a_rs + k && out.len() >= (t - 1) * out_rs + n);
    assert!(k == 0 || b.len() > (k - 1) * b_ks + (n - 1) * b_js);
    // SAFETY: bounds asserted above.
    unsafe {
        gemm_f32(
            t,
            n,
            k,
            out.as_mut_ptr(),
            out_rs,
            a.as_ptr(),
            a_rs,
            b.as_ptr(),
            b_ks,
            b_js,
            gemm::Parallelism::None,
        )
    }
}

/// Rows per parallel task in the f32 matrix-vector product.
const MV_CHUNK: usize = 64;

/// Rows `r0..r0 + out.len()` of `w . x` over f32 weights (`w` is `[rows][x.len()]`).
pub fn matvec_f32_rows(w: &[f32], x: &[f32], r0: usize, out: &mut [f32]) {
    let k = x.len();
    for (i, v) in out.iter_mut().enumerate() {
        let r = r0 + i;
        *v = dot(&w[r * k..(r + 1) * k], x);
    }
}

/// `out[r] = w[r] . x` over f32 weights, parallel over rows.
pub fn matvec_f32(w: &[f32], x: &[f32], out: &mut [f32]) {
    let k = x.len();
    out.par_chunks_mut(MV_CHUNK)
        .enumerate()
        .for_each(|(ci, o)| {
            for (i, v) in o.iter_mut().enumerate() {
                let r = ci * MV_CHUNK + i;
                *v = dot(&w[r * k..(r + 1) * k], x);
            }
        });
}

#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight partial sums let the compiler keep several FMA chains in flight.
    let mut acc = [0f32; 8];
    let n = a.len().min(b.len());
    let (a8, b8) = (&a[..n / 8 * 8], &b[..n / 8 * 8]);
    for (ca, cb) in a8.chunks_exact(8).zip(b8.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += ca[i] * cb[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in n / 8 * 8..n {
        s += a[i] * b[i];
    }
    s
}

pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let r = 1.0 / (ms + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = v * r * g;
    }
}

/// `e^x` for f32 to ~2 ulp, written so the compiler vectorises loops over it (libm's
/// `expf` is a scalar call, and softmax over long contexts spends most of its time there).
/// Range reduction x = n ln2 + r with |r| <= ln2/2, a degree-6 polynomial for e^r, then
/// the exponent bits of 2^n. Inputs below -87.3 flush to 0, above 88.7 to +inf.
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.clamp(-87.3, 88.7);
    let n = (x * LOG2E).round();
    let r = x - n * LN2_HI - n * LN2_LO;
    // Taylor coefficients 1/k! up to k = 6 (error < 2e-7 on |r| <= ln2/2).
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let bits = ((n as i32 + 127) as u32) << 23;
    // A select, not a branch, so loops over this still vectorise.
    if x <= -87.3 {
        0.0
    } else {
        p * f32::from_bits(bits)
    }
}

/// In-place softmax; the row sums to 1 afterwards.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    for v in x.iter_mut() {
        *v = fast_exp(*v - max);
    }
    let sum: f32 = x.iter().sum();
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// `x * sigmoid(x)` with `fast_exp` (libm's `expf` is a call per element and keeps the
/// loop over the MLP from vectorising).
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + fast_exp(-x))
}

pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

/// A small deterministic generator of values in [-1, 1) for the kernel tests.
#[cfg(test)]
pub(crate) fn lcg(seed: &mut u64) -> f32 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*seed >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
}

/// `n` values of [`lcg`].
#[cfg(test)]
pub(crate) fn lcg_vec(seed: &mut u64, n: usize) -> Vec<f32> {
    (0..n).map(|_| lcg(seed)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_matches_naive() {
        let (t, k, n, mut seed) = (5, 7, 3, 1);
        let (x, w) = (lcg_vec(&mut seed, t * k), lcg_vec(&mut seed, n * k));
        let mut out = vec![0.0; t * n];
        matmul_xwt(&x, &w, &mut out, t, k, n, false);
        for i in 0..t {
            for j in 0..n {
                let e: f32 = (0..k).map(|c| x[i * k + c] * w[j * k + c]).sum();
                assert!((out[i * n + j] - e).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn silu_matches_libm() {
        let mut x = -100.0f32;
        while x < 100.0 {
            let (a, b) = (silu(x) as f64, x as f64 / (1.0 + (-(x as f64)).exp()));
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "silu({x}): {a} vs {b}"
            );
            x += 0.0173;
        }
        assert_eq!(silu(-1e4), 0.0);
        assert_eq!(silu(1e4), 1e4);
    }

    #[test]
    fn fast_exp_matches_libm() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, b) = (fast_exp(x), x.exp());
            assert!(
                (a - b).abs() <= 4e-7 * b.max(f32::MIN_POSITIVE * 4.0),
                "exp({x}): {a} vs {b}"
            );
            x += 0.0137;
        }
        assert_eq!(fast_exp(-1000.0), 0.0);
        assert_eq!(fast_exp(-90.0), 0.0);
    }
}
