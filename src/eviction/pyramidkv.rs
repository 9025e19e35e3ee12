//! pyramidkv: snapkv's per-KV-head scores and selection; what differs is the per-layer
//! budget, which falls linearly with depth ([`super::budget::pyramid`], the method's
//! default allocator). So a layer's selection is snapkv's at that layer's budget.

use super::scores::{KERNEL, POOLING};
use super::snapkv;
use super::types::{Allocator, Method, MethodDef};

/// Registry entry.
pub const DEF: MethodDef = MethodDef::new(
    "pyramidkv",
    "snapkv's score with budgets falling linearly with depth",
    Allocator::Pyramid,
    // snapkv's selection itself: only the allocator (the budgets) differs.
    snapkv::pick,
)
.with_knobs(&[&KERNEL, &POOLING]);

/// This method's handle.
pub const METHOD: Method = Method::of(&DEF);
