//! The prompt lengths a profile was measured at, and the notice for a prompt far longer
//! than any of them (METHOD-MORE.md: a profile measured at 1K says little about a 14K
//! prompt).

use crate::profile_format::Profile;

/// A prompt longer than this many times the longest profiled length gets a notice.
pub const NOTICE_FACTOR: usize = 2;

/// The SRH step's prompt lengths, as recorded in the provenance by `profile srh` and
/// `profile make` (`settings.srh.lengths`); `None` for a profile that does not say
/// (an imported one).
pub fn profiled_lengths(p: &Profile) -> Option<Vec<usize>> {
    let v = p.provenance.settings.get("srh")?.get("lengths")?;
    let v: Vec<usize> = serde_json::from_value(v.clone()).ok()?;
    (!v.is_empty()).then_some(v)
}

/// One line when `prompt_len` is more than [`NOTICE_FACTOR`] times the longest length
/// the profile was measured at.
pub fn length_notice(p: &Profile, prompt_len: usize) -> Option<String> {
    let longest = profiled_lengths(p)?.into_iter().max()?;
    (prompt_len > NOTICE_FACTOR * longest).then(|| {
        format!(
            "the profile was measured on prompts of up to {longest} tokens and this prompt has {prompt_len}; its SRHs and layer errors may not hold this far (remake it with `kvscope profile make --lengths ...`)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile_format::{Fingerprint, Provenance, FORMAT_VERSION};

    fn with_settings(settings: serde_json::Value) -> Profile {
        Profile {
            format_version: FORMAT_VERSION,
            model: Fingerprint {
                arch: "llama".into(),
                n_layers: 1,
                n_heads: 1,
                n_kv_heads: 1,
                head_dim: 1,
                sha256: String::new(),
            },
            srh_scores: vec![vec![0.0]],
            srh_ranking: vec![vec![0]],
            retrieval_scores: vec![vec![0.0]],
            layer_errors: None,
            provenance: Provenance {
                command: String::new(),
                settings,
                trials_counted: 1,
                kvscope_version: String::new(),
            },
        }
    }

    #[test]
    fn notice_only_past_twice_the_longest_length() {
        let p = with_settings(serde_json::json!({"srh": {"lengths": [1024, 2048]}}));
        assert_eq!(profiled_lengths(&p), Some(vec![1024, 2048]));
        assert_eq!(length_notice(&p, 4096), None);
        let n = length_notice(&p, 4097).unwrap();
        assert!(n.contains("up to 2048 tokens") && n.contains("4097"), "{n}");
        // A profile that does not record its lengths gets no notice.
        let q = with_settings(serde_json::json!({"imported": {}}));
        assert_eq!(profiled_lengths(&q), None);
        assert_eq!(length_notice(&q, 100_000), None);
    }

    #[test]
    fn the_shipped_profiles_record_their_lengths() {
        for f in [
            "profiles/SmolLM2-135M-Instruct.Q4_1.json",
            "profiles/gemma-3-270m-q4_k_m.json",
        ] {
            let p = Profile::load(f).unwrap();
            assert!(profiled_lengths(&p).is_some(), "{f}");
        }
    }
}
