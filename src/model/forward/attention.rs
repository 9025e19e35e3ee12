//! The team's attention at one decode step: member 0 appends the new K and V, every
//! member attends over its share of each KV head's entries (whole key tiles), the
//! partial softmax results combine, and, when an [`Observer`](super::Observer) asks,
//! member 0 gathers the probability rows and the shadow-eviction error.

use super::decode::Step;
use super::layer::first_visible;
use super::observe::shadow_error;
use crate::model::kvcache::{combine, HeadCache, Partial, TILE};
use crate::model::team::Member;

impl Step<'_, '_> {
    /// Attention of layer `li` for the new token: member 0 appends its K and V to the
    /// cache, every member attends over its share of each KV head's entries (from the
    /// first one inside a sliding layer's window), and the partial results combine into
    /// every member's `out`.
    pub(super) fn attend(
        &self,
        mb: &Member,
        li: usize,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        out: &mut [f32],
    ) {
        self.push(mb, li, k, v);
        mb.sync();
        let split = self.attend_parts(mb, li, q);
        mb.sync();
        self.combine(mb, li, &split, out);
    }

    /// Member 0 appends the new K and V to layer `li`'s cache (the others do nothing):
    /// the first phase of [`attend`](Self::attend), a barrier before the next.
    pub(super) fn push(&self, mb: &Member, li: usize, k: &[f32], v: &[f32]) {
        let hd = self.model.config.head_dim;
        if mb.index == 0 {
            // SAFETY: only member 0 touches the cache between these two barriers.
            let layer = unsafe { &mut self.bufs.cache.part(li, li + 1)[0] };
            for (g, hc) in layer.iter_mut().enumerate() {
                if let Err(e) =
                    hc.push(self.pos, &k[g * hd..(g + 1) * hd], &v[g * hd..(g + 1) * hd])
                {
                    self.failure.lock().expect("failure slot").get_or_insert(e);
                }
            }
        }
    }

    /// This member's share of every KV head's entries, into its partials (the second
    /// phase of [`attend`](Self::attend), after the push's barrier; a barrier before
    /// [`combine`](Self::combine)).
    pub(super) fn attend_parts(&self, mb: &Member, li: usize, q: &[f32]) -> Split {
        let cfg = &self.model.config;
        let b = self.bufs;
        let hd = cfg.head_dim;
        let n_rep = cfg.n_heads / cfg.n_kv_heads;
        let scale = cfg.opts.attn_scale;
        // SAFETY: nobody writes the cache until the next layer's push.
        let layer = unsafe { &b.cache.read()[li] };
        let from = first_visible(self.pos, cfg.layers[li].window);
        let starts: Vec<usize> = layer
            .iter()
            .map(|hc| hc.positions.partition_point(|&p| p < from))
            .collect();
        let offsets = prob_offsets(layer, n_rep);
        let ranges = thread_ranges(layer, &starts, mb.size);
        let nh = cfg.n_heads;
        for (g, hc) in layer.iter().enumerate() {
            let (a, z) = ranges[g][mb.index];
            let qs: Vec<&[f32]> = (g * n_rep..(g + 1) * n_rep)
                .map(|h| &q[h * hd..(h + 1) * hd])
                .collect();
            // SAFETY: each member writes its own entry range of every head, its own
            // row of the partials.
            let mut ps: Vec<&mut [f32]> = (g * n_rep..(g + 1) * n_rep)
                .map(|h| unsafe { b.probs.part(offsets[h] + a, offsets[h] + z) })
                .collect();
            let row = mb.index * nh + g * n_rep;
            let parts = unsafe { b.parts.part(row, row + n_rep) };
            let acc = unsafe { b.accs.part(row * hd, (row + n_rep) * hd) };
            hc.attend_part_from(&qs, scale, (a, z), starts[g], &mut ps, parts, acc);
        }
        Split { offsets, ranges }
    }

    /// The partial results combined into `out` (the last phase of
    /// [`attend`](Self::attend)), and what an observer asked for.
    pub(super) fn combine(&self, mb: &Member, li: usize, split: &Split, out: &mut [f32]) {
        let m = self.model;
        let cfg = &m.config;
        let b = self.bufs;
        let (hd, nh) = (cfg.head_dim, cfg.n_heads);
        let n_rep = nh / cfg.n_kv_heads;
        let Split { offsets, ranges } = split;
        // SAFETY: nobody writes the cache until the next layer's push.
        let layer = unsafe { &b.cache.read()[li] };
        // SAFETY: the partials are complete and not written again this layer.
        let (parts, accs) = unsafe { (b.parts.read(), b.accs.read()) };
        let mut factors = Vec::with_capacity(nh);
        for h in 0..nh {
            let ph: Vec<Partial> = (0..mb.size).map(|t| parts[t * nh + h]).collect();
            let ah: Vec<&[f32]> = (0..mb.size)
                .map(|t| &accs[(t * nh + h) * hd..(t * nh + h + 1) * hd])
                .collect();
            factors.push(combine(&ph, &ah, &mut out[h * hd..(h + 1) * hd]));
        }
        if self.want_probs {
            if mb.index == 0 {
                // SAFETY: every member is past its writes of this layer's probs.
                let probs = unsafe { b.probs.read() };
                let rows: Vec<Vec<f32>> = (0..nh)
                    .map(|h| {
                        let g = h / n_rep;
                        let mut row = probs[offsets[h]..offsets[h] + layer[g].len()].to_vec();
                        // Entries before the window were not attended.
                        let first = ranges[g].first().map_or(0, |r| r.0);
                        row[..first].fill(0.0);
                        for (t, &(a, z)) in ranges[g].iter().enumerate() {
                            for p in &mut row[a..z] {
                                *p *= factors[h][t];
                            }
                        }
                        row
                    })
                    .collect();
                let mut rec = self.record.lock().expect("decode record");
                if let Some((masks, errors)) = rec.shadow.as_mut() {
                    errors.push(shadow_error(
                        layer,
                        &masks[li],
                        &rows,
                        out,
                        n_rep,
                        &m.weights.layers[li].wo,
                        self.prompt_len,
                    ));
                }
                if let Some(pa) = rec.probs.as_mut() {
                    pa.push(rows);
                }
            }
            // Member 0 reads the probabilities until here.
            mb.sync();
        }
    }
}

/// How a layer's entries were split among the members at one step.
pub(super) struct Split {
    /// Start of each query head's probabilities in the layer's shared buffer.
    offsets: Vec<usize>,
    /// `[kv_head][member]`: the entries each member attended to.
    ranges: Vec<Vec<(usize, usize)>>,
}

/// Start of each query head's probabilities in the layer's shared buffer.
fn prob_offsets(layer: &[HeadCache], n_rep: usize) -> Vec<usize> {
    let mut offsets = Vec::with_capacity(layer.len() * n_rep);
    let mut at = 0;
    for hc in layer {
        for _ in 0..n_rep {
            offsets.push(at);
            at += hc.len();
        }
    }
    offsets
}

/// `[kv_head][member]`: the entries each member attends to, split by whole key tiles,
/// from the tile holding entry `starts[kv_head]` (the first one a sliding layer sees).
fn thread_ranges(
    layer: &[HeadCache],
    starts: &[usize],
    members: usize,
) -> Vec<Vec<(usize, usize)>> {
    layer
        .iter()
        .zip(starts)
        .map(|(hc, &start)| {
            let n = hc.len();
            let first = start / TILE;
            let tiles = n.div_ceil(TILE).saturating_sub(first);
            (0..members)
                .map(|t| {
                    let (ta, tb) = (
                        first + tiles * t / members,
                        first + tiles * (t + 1) / members,
                    );
                    ((ta * TILE).min(n), (tb * TILE).min(n))
                })
                .collect()
        })
        .collect()
}
