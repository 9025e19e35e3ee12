//! What both bench commands (`kvscope bench` and its `--explain`) read: their flags, the
//! filler prompt they time, and the median they report. Its own file so that neither
//! command imports the other.

use anyhow::Result;
use clap::Args;

use super::ModelArgs;
use crate::model::Loaded;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Repetitions per figure (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Prefill lengths to measure.
    #[arg(long, value_delimiter = ',', default_value = "512,2048")]
    pub prefill: Vec<usize>,
    /// Context lengths (tokens already in the cache) to measure decode at.
    #[arg(long, value_delimiter = ',', default_value = "0,2048,4096")]
    pub decode: Vec<usize>,
    /// Decode steps per measurement.
    #[arg(long, default_value_t = 64)]
    pub steps: usize,
    /// Also decode over a compressed cache (snapkv at this budget) at the largest context.
    #[arg(long, default_value_t = 128)]
    pub compressed_budget: usize,
    /// Also measure the machine's memory read bandwidth (a 256 MiB buffer streamed by the
    /// same number of threads, before the model loads) and report the empty-cache decode
    /// ceiling it implies: bandwidth / weight bytes read per token.
    #[arg(long)]
    pub bandwidth: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Instead of prefill and decode, time the divergence analysis (`kvscope explain`,
    /// the inspector's Divergence pane) on a prompt of this many tokens.
    #[arg(long, value_name = "TOKENS")]
    pub explain: Option<usize>,
    /// Tokens generated for `--explain`.
    #[arg(long, default_value_t = 32)]
    pub explain_new: usize,
    /// Budget (tokens per KV head) of the snapkv setting `--explain` analyses; default
    /// 10% of the prompt.
    #[arg(long)]
    pub explain_budget: Option<usize>,
}

/// Natural-looking text repeated to any length; its exact content does not matter for speed.
const FILLER: &str = "The river town kept its old habits. Every morning the baker opened at six, \
the ferry crossed twice before noon, and the library lent out maps of valleys nobody had walked \
in years. Visitors asked about the bridge, the mill and the clock tower, and the answers changed \
with whoever was telling the story. ";

pub fn filler_ids(loaded: &Loaded, n: usize) -> Result<Vec<u32>> {
    let unit = loaded.tok.encode(FILLER)?;
    Ok(unit.iter().cycle().take(n).cloned().collect())
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
