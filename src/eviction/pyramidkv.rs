//! pyramidkv: snapkv's per-KV-head scores and selection; what differs is the per-layer
//! budget, which falls linearly with depth ([`super::budget::pyramid`], the method's
//! default allocator). So a layer's selection is snapkv's at that layer's budget.

use super::scores::{KERNEL, POOLING};
use super::snapkv;
use super::types::{Allocator, Keeps, Method, MethodDef};

/// Registry entry.
pub const DEF: MethodDef = MethodDef {
    name: "pyramidkv",
    about: "snapkv's score with budgets falling linearly with depth",
    knobs: &[&KERNEL, &POOLING],
    default_allocator: Allocator::Pyramid,
    needs_profile: None,
    needs_future: false,
    shared_positions: false,
    has_scores: true,
    keeps: Keeps::EveryHead,
    // snapkv's selection itself: only the allocator (the budgets) differs.
    select: snapkv::pick,
};

/// This method's handle.
pub const METHOD: Method = Method::of(&DEF);
