//! A profile made for the model the user is looking at, with `kvscope profile make`'s
//! defaults: where it is written (the folder a profile is looked up in, so the next
//! open finds it), the lengths a prompt asks for, the calibration prompts. The command
//! and the inspector's background run (`P`) both use these.

use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

use super::make::{MakeConfig, Protocol, MIN_LENGTH};
use crate::haystack::needles::PROFILE_NEEDLES;
use crate::model::{fetch, Tok};

/// `profile make`'s defaults (the command line's flags say the same numbers).
pub const PER_HAYSTACK: usize = 6;
pub const MAX_NEW: usize = 24;
pub const LAYER_BUDGET: usize = 64;
pub const LAYER_WINDOW: usize = 8;
pub const LAYER_FIRST_K: usize = 4;
pub const LAYER_MAX_NEW: usize = 32;
/// The calibration prompts of the layer step, relative to the working folder.
pub const CALIBRATION_DIR: &str = "sample-prompts/calibration";

/// Where a profile made without `--out` goes: the cache's `profiles/` folder (searched
/// by [`super::discover::profile_dirs`]), named after the model file.
pub fn default_out(model_path: &Path) -> Result<PathBuf> {
    let stem = model_path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    Ok(fetch::cache_dir()?
        .join("profiles")
        .join(format!("{stem}.json")))
}

/// The folder a run writing `out` keeps its finished units in (`OUT.parts`).
pub fn parts_dir(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_os_string();
    s.push(".parts");
    PathBuf::from(s)
}

/// The profiling lengths for a prompt of `prompt_len` tokens: the prompt's length
/// rounded down to a multiple of 64, and half of it (so a profile covers the prompt
/// and the lengths just below; the status line warns beyond 2x the longest), each at
/// least [`MIN_LENGTH`] and at most what the model's context leaves for the question
/// and `max_new` answer tokens.
pub fn lengths_for_prompt(prompt_len: usize, context: usize, max_new: usize) -> Result<Vec<usize>> {
    let longest = context.saturating_sub(max_new + 64);
    if longest < MIN_LENGTH {
        bail!(
            "this model's context of {context} tokens is too short to profile (at least {} needed)",
            MIN_LENGTH + max_new + 64
        );
    }
    let round = |n: usize| (n / 64 * 64).clamp(MIN_LENGTH, longest);
    let top = round(prompt_len);
    let mut v = vec![round(top / 2), top];
    v.dedup();
    Ok(v)
}

/// The default calibration prompts, built into the binary: `profile make` (and the
/// inspector's `P`) run from any folder, not only from a checkout of this repository.
const BUILT_IN_CALIBRATION: [(&str, &str); 4] = [
    (
        "01-council-minutes.txt",
        include_str!("../../sample-prompts/calibration/01-council-minutes.txt"),
    ),
    (
        "02-water-treatment.txt",
        include_str!("../../sample-prompts/calibration/02-water-treatment.txt"),
    ),
    (
        "03-clockmaker-story.txt",
        include_str!("../../sample-prompts/calibration/03-clockmaker-story.txt"),
    ),
    (
        "04-canal-history.txt",
        include_str!("../../sample-prompts/calibration/04-canal-history.txt"),
    ),
];

/// The calibration texts of `dir` (`*.txt`, name order) as (name, text). The default
/// folder, when it does not exist (a run outside the repository), is the built-in copy
/// of the same prompts; any other folder must exist.
pub fn calibration_texts(dir: &Path) -> Result<Vec<(String, String)>> {
    if dir.ends_with(CALIBRATION_DIR) && !dir.exists() {
        return Ok(BUILT_IN_CALIBRATION
            .iter()
            .map(|(name, text)| (format!("built-in {name}"), text.to_string()))
            .collect());
    }
    super::layers::calibration_files(dir)?
        .into_iter()
        .map(|f| Ok((f.display().to_string(), crate::input::read_prompt(&f)?)))
        .collect()
}

/// The calibration prompts of `dir` ([`calibration_texts`]), templated and encoded;
/// one too long for the model's context is refused.
pub fn calibration_prompts(
    dir: &Path,
    tok: &Tok,
    context: usize,
    max_new: usize,
) -> Result<Vec<(String, Vec<u32>)>> {
    let mut v = Vec::new();
    for (name, text) in calibration_texts(dir)? {
        let ids = tok.encode(&tok.apply_template(&text, false))?;
        if ids.len().saturating_add(max_new) > context {
            bail!(
                "calibration prompt {name} has {} tokens, too long for the model's context",
                ids.len()
            );
        }
        v.push((name, ids));
    }
    Ok(v)
}

/// `profile make`'s default run (shared protocol, every profiling needle) at `lengths`.
pub fn standard_config(lengths: Vec<usize>, calibration: Vec<(String, Vec<u32>)>) -> MakeConfig {
    MakeConfig {
        protocol: Protocol::Shared,
        lengths,
        needles: (0..PROFILE_NEEDLES).collect(),
        per_haystack: PER_HAYSTACK,
        depths: Vec::new(),
        max_new: MAX_NEW,
        budget: LAYER_BUDGET,
        window: LAYER_WINDOW,
        first_k: LAYER_FIRST_K,
        layer_max_new: LAYER_MAX_NEW,
        calibration,
        count_every_trial: false,
    }
}

#[cfg(test)]
mod tests {
    /// Outside the repository the default folder is missing: the built-in prompts are
    /// the same texts as the repository's files, in the same order; another missing
    /// folder is still an error naming it.
    #[test]
    fn default_calibration_falls_back_to_the_built_in_prompts() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join(CALIBRATION_DIR);
        let on_disk = calibration_texts(&repo).expect("repository prompts");
        let missing = Path::new("/nonexistent-kvscope-test").join(CALIBRATION_DIR);
        let built_in = calibration_texts(&missing).expect("built-in prompts");
        assert_eq!(on_disk.len(), built_in.len());
        for ((_, a), (name, b)) in on_disk.iter().zip(&built_in) {
            assert_eq!(a, b, "{name}");
        }
        let err = calibration_texts(Path::new("/nonexistent-kvscope-test/other"))
            .expect_err("a missing folder that is not the default");
        assert!(format!("{err:#}").contains("/nonexistent-kvscope-test/other"));
    }

    use super::*;

    #[test]
    fn lengths_follow_the_prompt_within_the_context() {
        // A 14K prompt on a 32K model: 14,144 and half of it.
        assert_eq!(
            lengths_for_prompt(14_181, 32_768, 24).unwrap(),
            vec![7_040, 14_144]
        );
        // Short prompts: never below the shortest profiling length, no duplicates.
        assert_eq!(lengths_for_prompt(100, 2048, 24).unwrap(), vec![64]);
        assert_eq!(lengths_for_prompt(200, 2048, 24).unwrap(), vec![64, 192]);
        // A prompt near the context: the longest length leaves room for the question.
        assert_eq!(
            lengths_for_prompt(8190, 8192, 24).unwrap(),
            vec![4032, 8104]
        );
        assert!(lengths_for_prompt(500, 100, 24).is_err());
    }

    #[test]
    fn parts_sit_beside_the_output() {
        assert_eq!(
            parts_dir(Path::new("/a/b.json")),
            PathBuf::from("/a/b.json.parts")
        );
    }
}
