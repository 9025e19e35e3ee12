//! The inspector's window scores ([`ScoreTable`]: `p_h` of every head for one window,
//! kernel and pooling) as a sidecar ([`super::sidecar::SCORES`]): the first edit of every
//! reopen computes them over the whole prompt, the same each time for the same settings.
//! Stored exactly (f32), one table per entry (the latest settings').
//!
//! Payload, native byte order: six u64 (window, kernel, pooling: 0 avg / 1 max, prompt
//! length, layers, heads), each head's score count (u64, `[layer][head]`), then the
//! scores (f32) head after head.

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};

use crate::eviction::{Pooling, ScoreTable, Settings};
use crate::trace::Dims;

fn pooling_code(p: Pooling) -> u64 {
    match p {
        Pooling::Avg => 0,
        Pooling::Max => 1,
    }
}

/// Payload bytes of `t`.
pub fn payload_bytes(t: &ScoreTable) -> u64 {
    let heads = t.heads.iter().flatten();
    let (n, sum) = heads.fold((0u64, 0u64), |(n, s), h| (n + 1, s + h.len() as u64));
    6 * 8 + 8 * n + 4 * sum
}

/// Writes `t` (for a prompt with `dims`) as the payload.
pub fn write(w: &mut impl Write, t: &ScoreTable, dims: &Dims) -> Result<()> {
    let (window, kernel, pooling, len) = t.made_for();
    if t.heads.len() != dims.n_layers || t.heads.iter().any(|l| l.len() != dims.n_heads) {
        bail!("the score table does not have the prompt's shape");
    }
    let head = [
        window as u64,
        kernel as u64,
        pooling_code(pooling),
        len as u64,
        dims.n_layers as u64,
        dims.n_heads as u64,
    ];
    w.write_all(bytemuck::cast_slice(&head))?;
    let counts: Vec<u64> = t.heads.iter().flatten().map(|h| h.len() as u64).collect();
    w.write_all(bytemuck::cast_slice(&counts))?;
    for h in t.heads.iter().flatten() {
        w.write_all(bytemuck::cast_slice(h))?;
    }
    Ok(())
}

fn take<T: bytemuck::Pod + Default>(r: &mut impl Read, n: usize) -> Result<Vec<T>> {
    let mut v = vec![T::default(); n];
    r.read_exact(bytemuck::cast_slice_mut(&mut v))
        .context("truncated payload")?;
    Ok(v)
}

/// Reads a payload of `len` bytes: the table when it was computed for `s` on this
/// prompt (`prompt_len` tokens, `dims`), `Ok(None)` when it is another setting's (not
/// damage: the next store replaces it), an error when it cannot be trusted.
pub fn read(
    r: &mut impl Read,
    len: u64,
    s: &Settings,
    prompt_len: usize,
    dims: &Dims,
) -> Result<Option<ScoreTable>> {
    let cells = dims.n_layers * dims.n_heads;
    if len < 48 + 8 * cells as u64 {
        bail!("truncated ({len} bytes)");
    }
    let head: Vec<u64> = take(r, 6)?;
    if head[3] != prompt_len as u64
        || head[4] != dims.n_layers as u64
        || head[5] != dims.n_heads as u64
    {
        bail!("it describes another prompt's shape");
    }
    let counts: Vec<u64> = take(r, cells)?;
    if counts.iter().any(|&c| c > prompt_len as u64) {
        bail!("its header describes an impossible shape");
    }
    let sum: u64 = counts.iter().sum();
    if len != 48 + 8 * cells as u64 + 4 * sum {
        bail!("its payload does not match its own description");
    }
    let mine = [s.window as u64, s.kernel as u64, pooling_code(s.pooling)];
    let mut heads = Vec::with_capacity(dims.n_layers);
    let mut it = counts.iter();
    for _ in 0..dims.n_layers {
        let mut layer = Vec::with_capacity(dims.n_heads);
        for _ in 0..dims.n_heads {
            let n = it.next().copied().unwrap_or(0);
            layer.push(take::<f32>(r, n as usize)?);
        }
        heads.push(layer);
    }
    // Read to the end either way, so the checksum is checked.
    if head[..3] != mine {
        return Ok(None);
    }
    Ok(Some(ScoreTable::stored(prompt_len, s, heads)))
}
