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

    /// The 32 codes of block `b` at once (what `code` gives one at a time): prefill's
    /// tile packing reads every code of a band, and a call per code was most of its
    /// time (60% of a 64-token Q5_0 product).
    #[inline(always)]
    pub fn codes(&self, b: usize) -> [u8; QK] {
        let mut c = [0u8; QK];
        if self.packed {
            let q = &self.q[b * QK / 2..(b + 1) * QK / 2];
            for (i, &byte) in q.iter().enumerate() {
                c[i] = byte & 0x0f;
                c[i + QK / 2] = byte >> 4;
            }
            if !self.hi.is_empty() {
                // Eight fifth bits at a time through a table (a shift per bit kept the
                // loop scalar).
                let h = self.hi[b];
                for k in 0..4 {
                    let f = FIFTH_BITS[((h >> (8 * k)) & 0xff) as usize].to_le_bytes();
                    for (o, v) in c[8 * k..8 * k + 8].iter_mut().zip(f) {
                        *o |= v;
                    }
                }
            }
        } else {
            c.copy_from_slice(&self.q[b * QK..(b + 1) * QK]);
        }
        c
    }

    /// The offset of block `b`.
    #[inline(always)]
    pub fn offset(&self, b: usize) -> f32 {
        block_offset(self.m, self.d, self.centre, b)
    }
}

/// Byte `j` of entry `i` is 16 where bit `j` of `i` is set: eight fifth bits as the
/// values they add to eight codes.
const FIFTH_BITS: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let mut j = 0;
        while j < 8 {
            if (i >> j) & 1 == 1 {
                t[i] |= 0x10 << (8 * j);
            }
            j += 1;
        }
        i += 1;
    }
    t
};

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
