//! What the kernel tests of `quant/` (and `linear.rs`) share: blocks quantised by candle
//! (the independent reference), blocks repeated into rows, and the check of a packed
//! band's output (written inside the band's groups, untouched outside).

use std::ops::Range;

use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};

use super::Format;

/// The five 32-value formats, in the order the kernel tests walk them.
pub const FORMATS_32: [Format; 5] = [
    Format::Q4_0,
    Format::Q4_1,
    Format::Q5_0,
    Format::Q5_1,
    Format::Q8_0,
];

/// `w` (`rows x cols`) quantised by candle to `fmt`: the file's bytes and candle's
/// dequantisation of them.
pub fn candle_blocks(fmt: Format, w: &[f32], rows: usize, cols: usize) -> (Vec<u8>, Vec<f32>) {
    let t = Tensor::from_slice(w, (rows, cols), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&t, fmt.ggml()).unwrap();
    let bytes = q.data().unwrap().to_vec();
    let deq = q
        .dequantize(&Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    (bytes, deq)
}

/// `block` repeated to `len` bytes.
pub fn repeat(block: &[u8], len: usize) -> Vec<u8> {
    block.iter().copied().cycle().take(len).collect()
}

/// A band's output, `out[token][row]` over `rows` rows, prefilled with NaN: every row
/// outside `written` is still NaN, and `check(token, row, value)` holds for the rows
/// inside.
pub fn check_written(
    out: &[f32],
    rows: usize,
    written: Range<usize>,
    what: &str,
    mut check: impl FnMut(usize, usize, f32),
) {
    for (i, toks) in out.chunks_exact(rows).enumerate() {
        for (r, &got) in toks.iter().enumerate() {
            if written.contains(&r) {
                check(i, r, got);
            } else {
                assert!(got.is_nan(), "{what} row {r} written outside the groups");
            }
        }
    }
}
