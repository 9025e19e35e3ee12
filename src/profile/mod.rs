//! Measuring offline profiles (METHOD.md, "The offline profile"): SRH trials, per-layer
//! eviction errors, the comparison against shuffled profiles, finding a profile for a
//! model, and printing one. This is an analysis (it drives sessions and the model); the
//! file format itself lives below, in [`crate::profile_format`], because eviction reads it.

pub mod auto;
pub mod compare;
pub mod credit;
pub mod discover;
pub mod import;
pub mod layers;
pub mod lengths;
pub mod make;
pub mod parts;
pub mod shared;
pub mod show;
pub mod srh;
