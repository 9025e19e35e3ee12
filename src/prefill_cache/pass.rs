//! The full-cache replay ([`FullPass`]) as a sidecar ([`sidecar::PASS`]): the inspector's
//! divergence analysis replays the full cache over the full generation with attention
//! capture, a decode over the whole prompt that gives the same result on every reopen.
//! Stored exactly (f32, as computed), so a reopen that reads it shows what a fresh
//! replay would, bit for bit.
//!
//! Payload, native byte order: seven u64 (prompt length, n_rep, generation length,
//! steps, vocabulary, layers, query heads), the generation's ids (u32), each layer's
//! first held position (u64), the logits (`[step][vocab]` f32), the attention
//! (`[step][layer][head][prompt position]` f32).

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};

use crate::model::replay::FullPass;

/// What a stored replay must match to be used: the session's prompt and generation.
pub struct Expect<'a> {
    pub prompt_len: usize,
    pub n_rep: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub vocab: usize,
    pub ids: &'a [u32],
}

fn counts(e: &Expect) -> Option<(u64, u64)> {
    let steps = e.ids.len().saturating_sub(1) as u64;
    let logits = steps.checked_mul(e.vocab as u64)?;
    let attn = steps
        .checked_mul(e.n_layers as u64)?
        .checked_mul(e.n_heads as u64)?
        .checked_mul(e.prompt_len as u64)?;
    Some((logits, attn))
}

/// Payload bytes of the replay `e` describes.
pub fn payload_bytes(e: &Expect) -> Option<u64> {
    let (logits, attn) = counts(e)?;
    (7 * 8 + 4 * e.ids.len() as u64 + 8 * e.n_layers as u64)
        .checked_add(logits.checked_add(attn)?.checked_mul(4)?)
}

/// What `fp` must match when it is read back (its own shape).
pub fn expect_of(fp: &FullPass) -> Expect<'_> {
    Expect {
        prompt_len: fp.prompt_len,
        n_rep: fp.n_rep,
        n_layers: fp.held_from.len(),
        n_heads: fp.attn.first().map_or(0, |s| s.first().map_or(0, Vec::len)),
        vocab: fp.logits.first().map_or(0, Vec::len),
        ids: &fp.ids,
    }
}

/// The seven numbers a payload starts with: the replay's shape, `T - 1` steps for `T`
/// ids (written, then compared on read).
fn shape_head(e: &Expect) -> [u64; 7] {
    let steps = e.ids.len().saturating_sub(1);
    [
        e.prompt_len,
        e.n_rep,
        e.ids.len(),
        steps,
        e.vocab,
        e.n_layers,
        e.n_heads,
    ]
    .map(|x| x as u64)
}

fn put<T: bytemuck::Pod>(w: &mut impl Write, xs: &[T]) -> std::io::Result<()> {
    w.write_all(bytemuck::cast_slice(xs))
}

/// Writes `fp` as the payload ([`payload_bytes`] of [`expect_of`] long).
pub fn write(w: &mut impl Write, fp: &FullPass) -> Result<()> {
    let e = expect_of(fp);
    let steps = fp.ids.len().saturating_sub(1);
    if fp.logits.len() != steps || fp.attn.len() != steps {
        bail!(
            "the replay has {} steps for {} ids",
            fp.logits.len(),
            fp.ids.len()
        );
    }
    let head = shape_head(&e);
    put(w, &head)?;
    put(w, &fp.ids)?;
    put(
        w,
        &fp.held_from.iter().map(|&x| x as u64).collect::<Vec<_>>(),
    )?;
    for l in &fp.logits {
        if l.len() != e.vocab {
            bail!("ragged logits");
        }
        put(w, l)?;
    }
    for step in &fp.attn {
        if step.len() != e.n_layers {
            bail!("ragged attention");
        }
        for layer in step {
            if layer.len() != e.n_heads {
                bail!("ragged attention");
            }
            for row in layer {
                if row.len() != e.prompt_len {
                    bail!("ragged attention");
                }
                put(w, row)?;
            }
        }
    }
    Ok(())
}

fn take<T: bytemuck::Pod + Default>(r: &mut impl Read, n: usize) -> Result<Vec<T>> {
    let mut v = vec![T::default(); n];
    r.read_exact(bytemuck::cast_slice_mut(&mut v))
        .context("truncated payload")?;
    Ok(v)
}

/// Reads a payload of `len` bytes that must describe the replay `e` expects (another
/// generation or shape is refused before anything large is allocated).
pub fn read(r: &mut impl Read, len: u64, e: &Expect) -> Result<FullPass> {
    if payload_bytes(e) != Some(len) {
        bail!("it holds another generation or shape ({len} bytes)");
    }
    let head: Vec<u64> = take(r, 7)?;
    let steps = e.ids.len().saturating_sub(1);
    let want = shape_head(e);
    if head != want {
        bail!("it holds another generation or shape");
    }
    let ids: Vec<u32> = take(r, e.ids.len())?;
    if ids != e.ids {
        bail!("it holds another generation");
    }
    let held: Vec<u64> = take(r, e.n_layers)?;
    if held.iter().any(|&h| h > e.prompt_len as u64) {
        bail!("its header describes an impossible shape");
    }
    let mut logits = Vec::with_capacity(steps);
    for _ in 0..steps {
        logits.push(take(r, e.vocab)?);
    }
    let mut attn = Vec::with_capacity(steps);
    for _ in 0..steps {
        let mut layers = Vec::with_capacity(e.n_layers);
        for _ in 0..e.n_layers {
            let mut heads = Vec::with_capacity(e.n_heads);
            for _ in 0..e.n_heads {
                heads.push(take(r, e.prompt_len)?);
            }
            layers.push(heads);
        }
        attn.push(layers);
    }
    Ok(FullPass {
        prompt_len: e.prompt_len,
        n_rep: e.n_rep,
        ids,
        logits,
        attn,
        held_from: held.into_iter().map(|h| h as usize).collect(),
    })
}
