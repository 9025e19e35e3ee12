//! One row of the affine store (`QMat::row`) as the row kernels read it: codes, scales,
//! offsets and fifth bits. A leaf: the store (`affine.rs`) hands rows out and dispatches
//! to the kernels, and every kernel (`portable.rs`, `avx2/`, `vnni.rs`) reads them, so
//! no kernel file imports the store that calls it.

use half::f16;

use super::qvec::QK;

/// One row of a `QMat`, as the row kernels read it.
#[derive(Clone, Copy)]
pub struct Row<'a> {
    /// Codes: 16 bytes of nibbles per block when `packed`, else 32 bytes.
    pub q: &'a [u8],
    pub d: &'a [f16],
    /// Offsets (empty: `centre * d`).
    pub m: &'a [f16],
    /// Fifth bits (empty: none).
    pub hi: &'a [u32],
    pub packed: bool,
    pub centre: f32,
}

impl Row<'_> {
    pub fn blocks(&self) -> usize {
        self.d.len()
    }

    /// Code `j` (0..32) of block `b`.
    #[inline(always)]
    pub fn code(&self, b: usize, j: usize) -> u8 {
        if self.packed {
            let byte = self.q[b * QK / 2 + j % (QK / 2)];
            let nib = if j < QK / 2 { byte & 0x0f } else { byte >> 4 };
            let fifth = if self.hi.is_empty() {
                0
            } else {
                ((self.hi[b] >> j) & 1) as u8
            };
            nib | (fifth << 4)
        } else {
            self.q[b * QK + j]
        }
    }

    /// The offset of block `b`.
    #[inline(always)]
    pub fn offset(&self, b: usize) -> f32 {
        block_offset(self.m, self.d, self.centre, b)
    }
}

/// The offset of block `b` with scales `d` and stored offsets `m` (empty: `centre * d`,
/// the codes' centre, see `QMat::centre`).
#[inline(always)]
pub(crate) fn block_offset(m: &[f16], d: &[f16], centre: f32, b: usize) -> f32 {
    if m.is_empty() {
        centre * d[b].to_f32()
    } else {
        m[b].to_f32()
    }
}
