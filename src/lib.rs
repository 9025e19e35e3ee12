//! kvscope: run a GQA language model on a prompt, record what its attention heads did,
//! evict KV-cache entries with CompressKV and its baselines, and compare the compressed
//! generation with the full-cache one.
//!
//! Data flows one way: prompt -> tokenizer -> `model` prefill -> [`trace::Trace`] ->
//! [`eviction`] -> [`keepset::KeepSet`] -> `model` decode -> generation.

pub mod cli;
pub mod divergence;
pub mod eval;
pub mod eviction;
pub mod haystack;
#[cfg(target_os = "linux")]
pub mod huge_pages;
pub mod input;
pub mod keepset;
pub mod memory;
pub mod model;
pub mod output;
pub mod prefill_cache;
pub mod profile;
pub mod profile_format;
pub mod report;
pub mod score;
pub mod session;
pub mod shard;
pub mod signals;
/// Test support (tiny random models and GGUF files): only with the `testing` feature,
/// which the crate's own tests and benches turn on.
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(any(test, feature = "testing"))]
pub mod testing_formats;
pub mod trace;
pub mod tui;

/// Large allocations (weights, Trace, KV caches) on transparent huge pages: decode
/// streams every weight once per token, and 2 MiB pages stream faster (huge_pages.rs).
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOC: huge_pages::HugePageAlloc = huge_pages::HugePageAlloc;
