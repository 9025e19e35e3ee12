//! One prompt's state, shared by the headless commands and the inspector: the Trace
//! (computed once), the full-cache generation (computed once), the current settings,
//! and the compressed generation with its memory accounting and agreement.

use anyhow::Result;
use serde::Serialize;
use std::time::Instant;

use crate::eviction::types::FutureAttention;
use crate::eviction::{self, ScoreTable, Selection, Settings};
use crate::keepset::KeepSet;
use crate::model::forward::PrefillBuffers;
use crate::model::replay::{self, FullPass};
use crate::model::{Loaded, Model, Prompt, PromptInfo, Tok, PREFILL_CHUNK};
use crate::prefill_cache::{self, PrefillCache};
use crate::profile_format::Profile;
use crate::trace::Trace;

#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    pub ids: Vec<u32>,
    pub text: String,
    /// Bytes the prompt's K/V occupy after eviction.
    pub kv_bytes: usize,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Timing {
    pub load: f64,
    pub prefill: f64,
    pub select: f64,
    pub decode_full: f64,
    pub decode_compressed: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Agreement {
    pub first_divergence: Option<usize>,
    pub token_match: f64,
}

/// Where the compressed generation first differs from the full one (`None`: identical),
/// and the fraction of positions, up to the longer of the two, holding the same token.
pub fn agreement(full: &[u32], comp: &[u32]) -> Agreement {
    let n = full.len().max(comp.len());
    let first = (0..n).find(|&i| full.get(i) != comp.get(i));
    let same = full.iter().zip(comp).filter(|(a, b)| a == b).count();
    Agreement {
        first_divergence: first,
        token_match: if n == 0 { 1.0 } else { same as f64 / n as f64 },
    }
}

/// KV bytes held for a keep set: entries x head_dim x 2 (K and V) x element size (the
/// decode cache's storage type, [`Model::kv_dtype`]).
pub fn kv_bytes(keep: &KeepSet, head_dim: usize, elem_bytes: usize) -> usize {
    keep.kept_per_layer().iter().sum::<usize>() * head_dim * 2 * elem_bytes
}

/// Refuses a prompt of `n_prompt` tokens that, with `max_new` tokens to generate, does
/// not fit a context of `context` tokens.
pub fn check_fits(n_prompt: usize, max_new: usize, context: usize) -> Result<()> {
    check_fits_from(n_prompt, max_new, context, "--max-new")
}

/// [`check_fits`] naming where `max_new` came from (`--max-new`, or a report's
/// `settings.max_new` when the user never passed the flag).
pub fn check_fits_from(n_prompt: usize, max_new: usize, context: usize, from: &str) -> Result<()> {
    if n_prompt.saturating_add(max_new) > context {
        anyhow::bail!(
            "the prompt has {n_prompt} tokens; with {from} {max_new} that exceeds the model's context of {context} tokens"
        );
    }
    Ok(())
}

pub struct Compressed {
    pub settings: Settings,
    pub selection: Selection,
    pub generation: Generation,
    pub kv_fraction: f64,
    pub agreement: Agreement,
    /// The compressed cache's next-token logits along the FULL generation (teacher
    /// forcing, [`crate::model::replay::decode_both`]); `None` unless asked for.
    pub forced: Option<Vec<Vec<f32>>>,
    /// Bytes the decode's cache(s) held ([`Buffers::decode_compressed`]).
    pub decode_bytes: usize,
}

/// Bytes of the buffers a session held only for a while (the memory breakdown,
/// [`crate::memory::Memory`], reports them).
#[derive(Debug, Clone, Copy, Default)]
pub struct Buffers {
    /// The prefill's working buffers (all 0 when the prefill cache answered).
    pub prefill: PrefillBuffers,
    /// The full-cache decode's cache (0 when the stored generation answered).
    pub decode_full: usize,
    /// The last compressed decode's cache(s).
    pub decode_compressed: usize,
}

pub struct Session {
    pub prompt_text: String,
    /// Template and control tokens of the prompt, when it was built by [`Tok::prompt`].
    pub prompt_info: Option<PromptInfo>,
    /// Storage type of the decode cache ("f16" on the fast path); `kv_bytes` counts it.
    pub kv_dtype: &'static str,
    pub trace: Trace,
    pub max_new: usize,
    pub full: Generation,
    pub profile: Option<Profile>,
    pub compressed: Option<Compressed>,
    pub timing: Timing,
    /// The full cache replayed over its own generation with attention capture
    /// (the divergence analysis and the `oracle` method read it); computed once, on
    /// first use.
    pub full_pass: Option<FullPass>,
    /// What the prefill cache did (`None`: the session was opened without one).
    pub prefill_cache: Option<prefill_cache::Report>,
    /// Transient buffers' sizes, for the memory breakdown.
    pub buffers: Buffers,
    future: Option<FutureAttention>,
    /// The prefill cache and this prompt's key in it, for what is stored beside the
    /// entry after the session opened ([`full_pass_cached`](Self::full_pass_cached)).
    cache: Option<(PrefillCache, prefill_cache::Key)>,
    /// The held replay was computed here and not yet stored beside the entry.
    pass_unstored: bool,
}

impl Session {
    /// Prefills the prompt (already templated) and decodes the full-cache generation.
    pub fn new(
        loaded: &Loaded,
        prompt_text: String,
        max_new: usize,
        profile: Option<Profile>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Session> {
        let ids = loaded.tok.encode(&prompt_text)?;
        let input = (prompt_text, ids, None);
        Self::prefill_and_decode(loaded, None, input, max_new, profile, progress)
    }

    /// [`new`](Self::new) for a prompt built by [`Tok::prompt`] (its ids, with BOS and
    /// control tokens as it decided).
    pub fn from_prompt(
        loaded: &Loaded,
        prompt: Prompt,
        max_new: usize,
        profile: Option<Profile>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Session> {
        Self::from_prompt_cached(loaded, None, prompt, max_new, profile, progress)
    }

    /// [`from_prompt`](Self::from_prompt) reading and filling `cache`: a stored prefill of
    /// the same model file, prompt ids and KV dtype replaces the prefill (and the
    /// full-cache decode, when the stored generation answers `max_new`).
    pub fn from_prompt_cached(
        loaded: &Loaded,
        cache: Option<&PrefillCache>,
        prompt: Prompt,
        max_new: usize,
        profile: Option<Profile>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Session> {
        let input = (prompt.text, prompt.ids, Some(prompt.info));
        Self::prefill_and_decode(loaded, cache, input, max_new, profile, progress)
    }

    /// [`new`](Self::new) for a prompt already tokenized (`ids` are `prompt_text`'s).
    pub fn from_ids(
        loaded: &Loaded,
        prompt_text: String,
        ids: Vec<u32>,
        max_new: usize,
        profile: Option<Profile>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Session> {
        Self::from_ids_cached(loaded, None, prompt_text, ids, max_new, profile, progress)
    }

    /// [`from_ids`](Self::from_ids) reading and filling `cache`.
    pub fn from_ids_cached(
        loaded: &Loaded,
        cache: Option<&PrefillCache>,
        prompt_text: String,
        ids: Vec<u32>,
        max_new: usize,
        profile: Option<Profile>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Session> {
        let input = (prompt_text, ids, None);
        Self::prefill_and_decode(loaded, cache, input, max_new, profile, progress)
    }

    fn prefill_and_decode(
        loaded: &Loaded,
        cache: Option<&PrefillCache>,
        (prompt_text, ids, prompt_info): (String, Vec<u32>, Option<PromptInfo>),
        max_new: usize,
        profile: Option<Profile>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Session> {
        // Before the prefill, which takes minutes on a long prompt, not after it.
        check_fits(ids.len(), max_new, loaded.model.config.context_length)?;
        let kv_name = loaded.model.kv_dtype().name();
        let key = cache.map(|c| c.key(kv_name, &ids));
        let t = Instant::now();
        let mut buffers = Buffers::default();
        let (trace, stored, mut report) = match cache.zip(key.as_ref()).map(|(c, k)| c.lookup(k)) {
            Some(Ok(Some(hit))) => {
                progress(hit.trace.len, hit.trace.len);
                (hit.trace, Some(hit.full), Some(hit.report))
            }
            looked => {
                let notice = match looked {
                    Some(Err(n)) => Some(n),
                    _ => None,
                };
                let (trace, held) = loaded
                    .model
                    .prefill_measured(&ids, PREFILL_CHUNK, progress)?;
                buffers.prefill = held;
                let report = cache.map(|_| prefill_cache::Report {
                    notice,
                    ..Default::default()
                });
                (trace, None, report)
            }
        };
        let prefill = ms(t);
        let t = Instant::now();
        // On a hit, the generation stored with the entry, else a longer one stored beside
        // it by an earlier reopen (greedy decoding: a prefix answers a shorter request).
        let mut side_notice = None;
        let mut source = "entry";
        let mut from_store = stored.as_ref().and_then(|f| f.answer(max_new));
        if let (None, Some(c), Some(k), Some(_)) = (&from_store, cache, &key, &stored) {
            source = "sidecar";
            from_store = c.lookup_gen(k, max_new).unwrap_or_else(|n| {
                side_notice = Some(n);
                None
            });
        }
        let full_ids = match from_store {
            Some(ids) => ids,
            None => {
                source = "decoded";
                // Sliding-window layers hold only the entries they can still see.
                let all = crate::keepset::full_keep(&trace);
                let (ids, held) = loaded.model.generate_measured(
                    &trace,
                    &all,
                    max_new,
                    &loaded.tok.stop_ids,
                    None,
                )?;
                buffers.decode_full = held;
                ids
            }
        };
        let decode_full = ms(t);
        match (cache, &key, &stored) {
            (Some(c), Some(k), None) => {
                let full = prefill_cache::FullGen {
                    max_new,
                    ids: full_ids.clone(),
                };
                let wrote = c.store(k, &trace, &full);
                // A bad entry's notice stays the one shown (the write replaced the entry).
                if let Some(r) = report.as_mut() {
                    let notice = r.notice.take().or(wrote.notice.clone());
                    *r = prefill_cache::Report { notice, ..wrote };
                }
            }
            // A hit whose stored generations were too short: the longer one is kept
            // beside the entry, so the next reopen with this max_new decodes nothing.
            (Some(c), Some(k), Some(_)) if source == "decoded" => {
                let full = prefill_cache::FullGen {
                    max_new,
                    ids: full_ids.clone(),
                };
                let wrote = c.store_gen(k, &full);
                if let Some(r) = report.as_mut() {
                    r.notice = r.notice.take().or(side_notice.take()).or(wrote);
                }
            }
            _ => {}
        }
        if let Some(r) = report.as_mut() {
            r.generation = Some(source);
            if let Some(n) = side_notice {
                r.notice.get_or_insert(n);
            }
        }
        let full = Generation {
            text: loaded.tok.decode(&full_ids),
            ids: full_ids,
            kv_bytes: trace.full_kv_bytes(loaded.model.kv_dtype().bytes()),
        };
        Ok(Session {
            prompt_text,
            prompt_info,
            kv_dtype: loaded.model.kv_dtype().name(),
            trace,
            max_new,
            full,
            profile,
            compressed: None,
            full_pass: None,
            prefill_cache: report,
            buffers,
            future: None,
            cache: cache.cloned().zip(key),
            pass_unstored: false,
            timing: Timing {
                prefill,
                decode_full,
                ..Default::default()
            },
        })
    }

    /// The error-aware allocator reads the profile's layer errors. Without them it would
    /// give every layer `B` while the report says "error-aware"; refuse instead, naming
    /// what is missing (a budget of the whole prompt keeps everything and needs none).
    fn check_layer_errors(&self, settings: &Settings) -> Result<()> {
        if settings.effective_allocator() != eviction::Allocator::ErrorAware
            || settings.budget >= self.trace.len
        {
            return Ok(());
        }
        let missing = match &self.profile {
            // A method that needs a profile says so in its own error.
            None if settings.method.def().needs_profile.is_some() => return Ok(()),
            None => "no profile is loaded (pass --profile FILE)",
            Some(p) if p.layer_errors.is_none() => {
                "the profile has none (it holds SRH scores only; add them with `kvscope profile layers --profile FILE`)"
            }
            Some(_) => return Ok(()),
        };
        anyhow::bail!(
            "the error-aware allocator needs the profile's layer errors and {missing}; or choose another allocator (--allocator uniform)"
        )
    }

    /// The full-cache replay with capture, computed on first use (one decode of the
    /// generation's length over the full cache).
    pub fn full_pass(&mut self, model: &Model) -> Result<&FullPass> {
        if self.full_pass.is_none() {
            let (fp, _) = FullPass::compute(model, &self.trace, &self.full.ids, None)?;
            self.full_pass = Some(fp);
        }
        match &self.full_pass {
            Some(fp) => Ok(fp),
            None => anyhow::bail!("no full-cache replay"),
        }
    }

    /// [`full_pass`](Self::full_pass) read from the prefill cache when a reopen stored
    /// it beside the entry (the same generation, bit for bit what a replay gives), else
    /// replayed (the inspector's divergence analysis; a replay is a decode over the
    /// whole prompt), to be stored by [`store_full_pass`](Self::store_full_pass) once
    /// the caller has shown its result. Returns where it came from (`"sidecar"`,
    /// `"replayed"`, or `"held"` when the session had it) and a notice when a stored
    /// one was unusable.
    pub fn full_pass_cached(&mut self, model: &Model) -> Result<(&'static str, Option<String>)> {
        if self.full_pass.is_some() {
            return Ok(("held", None));
        }
        let Some((c, k)) = &self.cache else {
            self.full_pass(model)?;
            return Ok(("replayed", None));
        };
        let d = self.trace.dims;
        let expect = prefill_cache::pass::Expect {
            prompt_len: self.trace.len,
            n_rep: d.n_rep(),
            n_layers: d.n_layers,
            n_heads: d.n_heads,
            vocab: model.weights.lm_head().rows,
            ids: &self.full.ids,
        };
        let (stored, notice) = match c.lookup_pass(k, &expect) {
            Ok(p) => (p, None),
            Err(n) => (None, Some(n)),
        };
        if let Some(fp) = stored {
            self.full_pass = Some(fp);
            return Ok(("sidecar", notice));
        }
        let (fp, _) = FullPass::compute(model, &self.trace, &self.full.ids, None)?;
        self.full_pass = Some(fp);
        self.pass_unstored = true;
        Ok(("replayed", notice))
    }

    /// The window scores of `settings` stored beside the prefill cache's entry by an
    /// earlier reopen (bit for bit what [`ScoreTable::compute`] gives); `Err(notice)`
    /// when the stored table was unusable.
    pub fn stored_scores(&self, settings: &Settings) -> Result<Option<ScoreTable>, String> {
        match &self.cache {
            Some((c, k)) => c.lookup_scores(k, settings, self.trace.len, &self.trace.dims),
            None => Ok(None),
        }
    }

    /// Stores the window scores `t` beside the prefill cache's entry (best effort); a
    /// notice when that did not happen.
    pub fn store_scores(&self, t: &ScoreTable) -> Option<String> {
        let (c, k) = self.cache.as_ref()?;
        c.store_scores(k, t, &self.trace.dims)
    }

    /// Stores the replay [`full_pass_cached`](Self::full_pass_cached) computed beside
    /// the prefill cache's entry (hundreds of MB on a long prompt: once, after the
    /// result is on screen); a notice when that did not happen.
    pub fn store_full_pass(&mut self) -> Option<String> {
        if !std::mem::take(&mut self.pass_unstored) {
            return None;
        }
        match (&self.cache, &self.full_pass) {
            (Some((c, k)), Some(fp)) => c.store_pass(k, fp),
            _ => None,
        }
    }

    /// What the full cache attended to during the generation, once a method needed it.
    pub fn future(&self) -> Option<&FutureAttention> {
        self.future.as_ref()
    }

    /// Selects with `settings` and decodes over the compressed cache.
    pub fn apply(&mut self, model: &Model, tok: &Tok, settings: Settings) -> Result<&Compressed> {
        self.apply_with(model, tok, settings, None, false)
    }

    /// [`apply`](Self::apply), selecting from precomputed window scores where `table`
    /// holds them for `settings`; with `forced`, the same decode also gives the
    /// compressed cache's teacher-forced logits ([`Compressed::forced`]).
    pub fn apply_with(
        &mut self,
        model: &Model,
        tok: &Tok,
        settings: Settings,
        table: Option<&ScoreTable>,
        forced: bool,
    ) -> Result<&Compressed> {
        self.apply_then(model, tok, settings, table, forced, &mut |_, _| true)?;
        match &self.compressed {
            Some(c) => Ok(c),
            None => anyhow::bail!("no compressed result"),
        }
    }

    /// [`apply_with`](Self::apply_with), calling `on_generation` with the result as
    /// soon as the free-running generation is decoded: with `forced`, before the rest
    /// of the teacher-forced steps ([`replay::FreeRun`]), whose logits then fill
    /// [`Compressed::forced`] (so the inspector shows the generation while they run).
    /// `timing.decode_compressed` is the free-running decode's when `on_generation`
    /// sees it, both decodes' after. When `on_generation` returns false the
    /// teacher-forced rest is skipped (`forced` stays `None`).
    pub fn apply_then(
        &mut self,
        model: &Model,
        tok: &Tok,
        settings: Settings,
        table: Option<&ScoreTable>,
        forced: bool,
        on_generation: &mut dyn FnMut(&Compressed, &Timing) -> bool,
    ) -> Result<()> {
        self.check_layer_errors(&settings)?;
        if settings.method.def().needs_future && self.future.is_none() {
            let dims = self.trace.dims;
            let future = self.full_pass(model)?.future(&dims);
            self.future = Some(future);
        }
        let t = Instant::now();
        let selection = eviction::select(
            &eviction::Request::new(&self.trace, &settings)
                .profile(self.profile.as_ref())
                .table(table)
                .future(self.future.as_ref()),
        )?;
        self.timing.select = ms(t);
        let t = Instant::now();
        let (ids, free) = if forced {
            let f = replay::decode_free(
                model,
                &self.trace,
                &selection.keep,
                &self.full.ids,
                self.max_new,
                &tok.stop_ids,
            )?;
            self.buffers.decode_compressed = f.held_bytes;
            (f.ids.clone(), Some(f))
        } else {
            let (ids, held) = model.generate_measured(
                &self.trace,
                &selection.keep,
                self.max_new,
                &tok.stop_ids,
                None,
            )?;
            self.buffers.decode_compressed = held;
            (ids, None)
        };
        self.timing.decode_compressed = ms(t);
        let bytes = kv_bytes(
            &selection.keep,
            self.trace.dims.head_dim,
            model.kv_dtype().bytes(),
        );
        let agreement = agreement(&self.full.ids, &ids);
        let generation = Generation {
            text: tok.decode(&ids),
            ids,
            kv_bytes: bytes,
        };
        let c = self.compressed.insert(Compressed {
            kv_fraction: bytes as f64 / self.full.kv_bytes.max(1) as f64,
            settings,
            selection,
            generation,
            agreement,
            forced: None,
            decode_bytes: self.buffers.decode_compressed,
        });
        if !on_generation(c, &self.timing) {
            return Ok(());
        }
        if let Some(f) = free {
            let t2 = Instant::now();
            c.forced = Some(f.finish(&self.full.ids)?.forced);
            self.timing.decode_compressed += ms(t2);
        }
        Ok(())
    }
}

fn ms(t: Instant) -> f64 {
    (t.elapsed().as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agreement_counts_positions_up_to_the_longer_output() {
        assert_eq!(
            agreement(&[1, 2, 3], &[1, 2, 3]),
            Agreement {
                first_divergence: None,
                token_match: 1.0
            }
        );
        let a = agreement(&[1, 2, 3, 4], &[1, 9, 3]);
        assert_eq!(a.first_divergence, Some(1));
        assert!((a.token_match - 0.5).abs() < 1e-12);
        assert_eq!(agreement(&[1, 2], &[1, 2, 5]).first_divergence, Some(2));
    }
}
