//! Byte layouts of prefill's eight-row packed tiles, shared by the portable packing code
//! (`packed.rs`, `tile32.rs`) and the AVX2 kernels that read them (`avx2/`): a leaf, so
//! the dispatch and the kernels do not import each other.

/// Rows per packed group (the eight i32 lanes of an AVX2 vector).
pub const ROWS: usize = 8;

/// Bytes of one packed Q4_K super-block of eight rows: d (8 f32), dmin (8 f32), the
/// eight sub-blocks' scales as i16 pairs (8 x 32 bytes), the mins as i16 pairs of
/// consecutive sub-blocks (4 x 32 bytes), then the codes (4 chunks x 8 x 32 bytes).
pub const Q4K_BYTES: usize = 32 + 32 + 8 * 32 + 4 * 32 + 32 * 32;
pub const Q4K_SC: usize = 64;
pub const Q4K_MN: usize = Q4K_SC + 8 * 32;
pub const Q4K_QS: usize = Q4K_MN + 4 * 32;

/// Bytes of one packed Q6_K super-block of eight rows: d (8 f32), the sixteen 16-value
/// scales as i16 pairs of the same scale (16 x 32 bytes), the scales as i16 pairs of
/// consecutive scales for the centre (8 x 32 bytes), then the 6-bit codes unpacked to
/// one byte each, as 4-byte columns of eight rows (64 x 32 bytes): unpacking once per
/// band, not once per pass over the tokens, measured 1.6x on the product.
pub const Q6K_BYTES: usize = 32 + 16 * 32 + 8 * 32 + 64 * 32;
pub const Q6K_SC: usize = 32;
pub const Q6K_CP: usize = Q6K_SC + 16 * 32;
pub const Q6K_QC: usize = Q6K_CP + 8 * 32;

/// The 32-value formats' tile (`tile32.rs`).
/// Bytes of one packed block of eight rows: d (8 f32), m (8 f32), then the codes as
/// eight 4-byte columns of eight rows (8 x 32 bytes).
pub const T32_BYTES: usize = 64 + 8 * 32;
pub const T32_CODES: usize = 64;
