//! The prefill cache on the tiny model: an entry reads back bit for bit, its key misses
//! on one token of difference, a damaged or foreign file is refused and replaced, the
//! cap evicts the least recently used, concurrent writers leave one good file, and a
//! cached `run --json` equals an uncached one but for the cache's own fields.

use kvscope::model::replay::FullPass;
use kvscope::model::Model;
use kvscope::prefill_cache::{FullGen, Key, PrefillCache};
use kvscope::session::Session;
use kvscope::testing::{self, GgufSpec};
use kvscope::trace::{KvStore, Trace};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn model() -> Model {
    testing::tiny_model(64, 512, 7)
}

fn trace(m: &Model, ids: &[u32]) -> Trace {
    m.prefill(ids, 16, &mut |_, _| {}).expect("prefill")
}

fn cache(dir: &Path, cap: u64) -> PrefillCache {
    PrefillCache {
        dir: dir.to_path_buf(),
        cap,
        model_sha256: "ab".repeat(32),
        model_name: "tiny.gguf".into(),
    }
}

fn full() -> FullGen {
    FullGen {
        max_new: 4,
        ids: vec![1, 2, 3, 4],
    }
}

/// Every array of two Traces, bit for bit.
fn same(a: &Trace, b: &Trace) -> bool {
    let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    a.dims == b.dims
        && a.len == b.len
        && a.w_max == b.w_max
        && a.ids == b.ids
        && a.windows == b.windows
        && bits(&a.last_logits) == bits(&b.last_logits)
        && a.layers.iter().zip(&b.layers).all(|(x, y)| {
            x.k == y.k
                && x.v == y.v
                && bits(&x.q_last) == bits(&y.q_last)
                && bits(&x.col_sums) == bits(&y.col_sums)
                && x.maps == y.maps
        })
        && a.layers.len() == b.layers.len()
}

fn entry_path(c: &PrefillCache, ids: &[u32]) -> PathBuf {
    c.dir.join(c.key("f32", ids).file_name())
}

#[test]
fn an_entry_reads_back_bit_for_bit_and_one_token_misses() {
    let dir = testing::temp_dir("pfc-key");
    let (m, c) = (model(), cache(&dir, 1 << 30));
    let ids = testing::random_ids(90, 64, 1);
    let t = trace(&m, &ids);
    let key = c.key("f32", &ids);
    assert!(c.lookup(&key).unwrap().is_none(), "empty cache misses");
    let r = c.store(&key, &t, &full());
    assert!(r.notice.is_none(), "{r:?}");
    assert!(r.bytes > 0 && r.store_ms.is_some());
    let hit = c.lookup(&key).unwrap().expect("hit");
    assert!(hit.report.hit);
    assert!(same(&hit.trace, &t), "the stored Trace differs");
    assert_eq!(hit.full, full());
    // One token different, another dtype, another model file: all miss.
    let mut other = ids.clone();
    other[40] = (other[40] + 1) % 64;
    assert!(c.lookup(&c.key("f32", &other)).unwrap().is_none());
    assert!(c.lookup(&c.key("f16", &ids)).unwrap().is_none());
    let mut c2 = c.clone();
    c2.model_sha256 = "cd".repeat(32);
    assert!(c2.lookup(&c2.key("f32", &ids)).unwrap().is_none());
    // A hit the cache gives is the prefill the model gives.
    assert!(same(&trace(&m, &ids), &hit.trace));
    let _ = std::fs::remove_dir_all(&dir);
}

/// An entry an older kvscope stored (an earlier format version, so another file name)
/// is not read: the lookup removes it and gives the notice, and the fresh prefill
/// replaces it. The Trace holds K and V in the decode cache's type, f16 on the fast path,
/// and reads back as it was stored.
#[test]
fn an_older_format_entry_is_removed_with_a_notice_and_f16_reads_back() {
    let dir = testing::temp_dir("pfc-old");
    let (m, c) = (model(), cache(&dir, 1 << 30));
    let ids = testing::random_ids(80, 64, 4);
    let t = trace(&m, &ids);
    assert!(
        matches!(t.layers[0].k, KvStore::F16(_)),
        "fast path stores f16"
    );
    let key = c.key("f16", &ids);
    let older = Key {
        version: key.version - 1,
        ..key.clone()
    };
    assert!(c.store(&older, &t, &full()).notice.is_none());
    let old_path = c.dir.join(older.file_name());
    assert!(old_path.is_file());
    let notice = c.lookup(&key).err().expect("a notice");
    assert!(
        notice.contains("older format") && !notice.contains('\n'),
        "{notice}"
    );
    assert!(!old_path.exists(), "the old entry is removed");
    assert!(c.lookup(&key).unwrap().is_none(), "then a plain miss");
    assert!(c.store(&key, &t, &full()).notice.is_none());
    let hit = c.lookup(&key).unwrap().expect("hit");
    assert!(same(&hit.trace, &t), "the stored f16 Trace differs");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn damaged_truncated_foreign_and_garbage_files_are_refused_and_removed() {
    let dir = testing::temp_dir("pfc-bad");
    let (m, c) = (model(), cache(&dir, 1 << 30));
    let ids = testing::random_ids(70, 64, 2);
    let t = trace(&m, &ids);
    let key = c.key("f32", &ids);
    let path = entry_path(&c, &ids);
    let good = |c: &PrefillCache| {
        c.store(&key, &t, &full());
        std::fs::read(&path).unwrap()
    };
    let bytes = good(&c);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("checksum", {
            let mut b = bytes.clone();
            let n = b.len();
            b[n - 7] ^= 0x10;
            b
        }),
        ("truncated", bytes[..bytes.len() - 100].to_vec()),
        ("truncated", bytes[..10].to_vec()),
        (
            "not a kvscope",
            b"garbage garbage garbage garbage garbage".to_vec(),
        ),
        ("version", {
            let mut b = bytes.clone();
            b[12] ^= 0x7f;
            b
        }),
    ];
    for (what, b) in cases {
        std::fs::write(&path, &b).unwrap();
        let err = match c.lookup(&key) {
            Err(e) => e,
            Ok(h) => panic!("{what}: a bad file was trusted (hit: {})", h.is_some()),
        };
        assert!(err.contains(what), "{what}: {err}");
        assert!(!err.contains('\n'), "one line: {err}");
        assert!(!path.exists(), "{what}: the bad file stays");
    }
    // A whole entry of another prompt copied under this key's name: foreign.
    let other = testing::random_ids(70, 64, 3);
    c.store(&c.key("f32", &other), &trace(&m, &other), &full());
    std::fs::copy(entry_path(&c, &other), &path).unwrap();
    let err = c.lookup(&key).err().expect("foreign file refused");
    assert!(err.contains("foreign"), "{err}");
    // The next store replaces it and reads back.
    good(&c);
    assert!(same(&c.lookup(&key).unwrap().unwrap().trace, &t));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_cap_evicts_the_least_recently_used_and_refuses_what_cannot_fit() {
    let dir = testing::temp_dir("pfc-lru");
    let m = model();
    let idss: Vec<Vec<u32>> = (0..4)
        .map(|s| testing::random_ids(80, 64, 10 + s))
        .collect();
    let traces: Vec<Trace> = idss.iter().map(|i| trace(&m, i)).collect();
    let probe = cache(&dir, u64::MAX);
    let one = probe
        .store(&probe.key("f32", &idss[0]), &traces[0], &full())
        .bytes;
    // Room for three entries of this size.
    let c = cache(&dir, one * 3 + one / 2);
    for i in 1..3 {
        std::thread::sleep(std::time::Duration::from_millis(30));
        assert!(c
            .store(&c.key("f32", &idss[i]), &traces[i], &full())
            .notice
            .is_none());
    }
    // Entry 0 is the oldest write but is used now, so entry 1 is the least recent.
    std::thread::sleep(std::time::Duration::from_millis(30));
    assert!(c.lookup(&c.key("f32", &idss[0])).unwrap().is_some());
    std::thread::sleep(std::time::Duration::from_millis(30));
    c.store(&c.key("f32", &idss[3]), &traces[3], &full());
    let present: Vec<bool> = idss.iter().map(|i| entry_path(&c, i).exists()).collect();
    assert_eq!(present, vec![true, false, true, true]);
    let listed = kvscope::prefill_cache::list(&dir);
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().map(|l| l.bytes).sum::<u64>() <= c.cap);
    assert!(listed
        .iter()
        .all(|l| l.meta.as_ref().is_ok_and(|m| m.len == 80)));
    // An entry larger than the whole cap is not stored, with a notice.
    let small = cache(&dir, one / 2);
    let r = small.store(&small.key("f32", &idss[1]), &traces[1], &full());
    assert!(
        r.notice.as_deref().is_some_and(|n| n.contains("cap")),
        "{r:?}"
    );
    // Garbage files in the folder: listed as unreadable, cleared, others left alone.
    std::fs::write(dir.join("junk.kvp"), b"junk").unwrap();
    std::fs::write(dir.join("notes.txt"), b"mine").unwrap();
    assert!(kvscope::prefill_cache::list(&dir)
        .iter()
        .any(|l| l.meta.is_err()));
    let (n, _) = kvscope::prefill_cache::clear(&dir).unwrap();
    assert_eq!(n, 4);
    assert!(dir.join("notes.txt").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn concurrent_writers_of_one_entry_leave_one_good_file() {
    let dir = testing::temp_dir("pfc-race");
    let m = model();
    let ids = testing::random_ids(100, 64, 4);
    let t = trace(&m, &ids);
    let c = cache(&dir, 1 << 30);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..3 {
                    let r = c.store(&c.key("f32", &ids), &t, &full());
                    assert!(r.notice.is_none(), "{r:?}");
                }
            });
        }
    });
    let files: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
    assert_eq!(files.len(), 1, "temp files left: {files:?}");
    assert!(same(
        &c.lookup(&c.key("f32", &ids)).unwrap().unwrap().trace,
        &t
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_folder_that_cannot_be_written_is_a_notice() {
    let dir = testing::temp_dir("pfc-ro");
    let m = model();
    let ids = testing::random_ids(50, 64, 5);
    let t = trace(&m, &ids);
    // The cache folder's path is taken by a file (root ignores permission bits, so
    // this is how a test makes a folder unwritable for everyone).
    let blocked = dir.join("file");
    std::fs::write(&blocked, b"x").unwrap();
    let c = cache(&blocked.join("prefill"), 1 << 30);
    let r = c.store(&c.key("f32", &ids), &t, &full());
    let n = r.notice.expect("a notice");
    assert!(n.contains("cannot create") && !n.contains('\n'), "{n}");
    assert!(c.lookup(&c.key("f32", &ids)).unwrap().is_none());
    // The entry's name taken by a folder: left alone, with a notice.
    let c = cache(&dir.join("p"), 1 << 30);
    std::fs::create_dir_all(entry_path(&c, &ids)).unwrap();
    let r = c.store(&c.key("f32", &ids), &t, &full());
    assert!(r.notice.is_some_and(|n| n.contains("not a regular file")));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The full-cache generation kept beside an entry (the `gen` sidecar): read back for the
/// same key, refused with a one-line notice (and removed) when it is damaged, truncated,
/// foreign or garbage; evicted and cleared with its entry, and counted in its size.
#[test]
fn a_generation_sidecar_reads_back_and_a_bad_one_is_refused() {
    let dir = testing::temp_dir("pfc-gen");
    let (m, c) = (model(), cache(&dir, 1 << 30));
    let ids = testing::random_ids(60, 64, 5);
    let t = trace(&m, &ids);
    let key = c.key("f32", &ids);
    assert!(c.store(&key, &t, &full()).notice.is_none());
    assert_eq!(c.lookup_gen(&key, 8), Ok(None), "no sidecar yet");
    let long = FullGen {
        max_new: 8,
        ids: vec![1, 2, 3, 4, 5, 6, 7, 8],
    };
    assert_eq!(c.store_gen(&key, &long), None);
    let side = entry_path(&c, &ids).with_extension("gen");
    assert!(side.is_file());
    assert_eq!(c.lookup_gen(&key, 8), Ok(Some(long.ids.clone())));
    assert_eq!(c.lookup_gen(&key, 5), Ok(Some(long.ids[..5].to_vec())));
    assert_eq!(c.lookup_gen(&key, 9), Ok(None), "it may go on past 8");
    // The entry's size in the listing counts its sidecar.
    let listed = kvscope::prefill_cache::list(&dir);
    let entry_len = std::fs::metadata(entry_path(&c, &ids)).unwrap().len();
    let side_len = std::fs::metadata(&side).unwrap().len();
    assert_eq!(listed[0].bytes, entry_len + side_len);
    assert!(
        listed[0].meta.is_ok(),
        "an entry with a sidecar still lists: {:?}",
        listed[0].meta.as_ref().err()
    );
    let good = std::fs::read(&side).unwrap();
    let mut damaged = good.clone();
    let n = damaged.len();
    damaged[n - 2] ^= 0x20;
    let mut other = ids.clone();
    other[3] = (other[3] + 1) % 64;
    let bad: [(&str, Vec<u8>); 4] = [
        ("checksum", damaged),
        ("truncated", good[..good.len() - 3].to_vec()),
        (
            "not a kvscope",
            b"garbage, not a sidecar at all, long enough to pass the header".repeat(2),
        ),
        ("foreign", Vec::new()),
    ];
    for (why, bytes) in bad {
        if why == "foreign" {
            // Another prompt's sidecar under this entry's name.
            let okey = c.key("f32", &other);
            assert_eq!(c.store_gen(&okey, &long), None);
            let oside = c.dir.join(okey.file_name()).with_extension("gen");
            std::fs::rename(&oside, &side).unwrap();
        } else {
            std::fs::write(&side, bytes).unwrap();
        }
        let notice = c.lookup_gen(&key, 8).expect_err(why);
        assert!(
            notice.contains(why) && notice.contains("unusable") && !notice.contains('\n'),
            "{why}: {notice}"
        );
        assert!(!side.exists(), "{why}: the bad sidecar is removed");
        assert_eq!(c.lookup_gen(&key, 8), Ok(None));
    }
    // Evicting the entry takes its sidecar; so does replacing the entry.
    assert_eq!(c.store_gen(&key, &long), None);
    assert!(c.store(&key, &t, &full()).notice.is_none());
    assert!(!side.exists(), "a rewritten entry drops the old sidecar");
    assert_eq!(c.store_gen(&key, &long), None);
    let small = cache(&dir, entry_len + entry_len / 2);
    let ids2 = testing::random_ids(60, 64, 6);
    let r = small.store(&small.key("f32", &ids2), &trace(&m, &ids2), &full());
    assert!(r.notice.is_none(), "{r:?}");
    assert!(
        !entry_path(&c, &ids).exists() && !side.exists(),
        "evicted together"
    );
    assert_eq!(c.store_gen(&small.key("f32", &ids2), &long), None);
    let (files, _) = kvscope::prefill_cache::clear(&dir).unwrap();
    assert_eq!(files, 2, "the entry and its sidecar");
    let _ = std::fs::remove_dir_all(&dir);
}

struct Env {
    dir: PathBuf,
    model: PathBuf,
}

impl Env {
    fn new(tag: &str) -> Env {
        let dir = testing::temp_dir(tag);
        let model = dir.join("tiny.gguf");
        let spec = GgufSpec {
            context_length: 512,
            ..GgufSpec::default()
        };
        testing::write_tiny_gguf(&model, &spec).expect("write tiny gguf");
        Env { dir, model }
    }

    fn run(&self, prompt: &str, args: &[&str]) -> Output {
        let p = self.dir.join("prompt.txt");
        std::fs::write(&p, prompt).unwrap();
        Command::new(env!("CARGO_BIN_EXE_kvscope"))
            .arg("run")
            .arg(&p)
            .arg("--model")
            .arg(&self.model)
            .args(["--method", "snapkv", "--budget", "24", "--window", "4"])
            .arg("--json")
            .args(args)
            .env("KVSCOPE_HOME", self.dir.join("home"))
            .output()
            .expect("run kvscope")
    }

    /// `run --json` with `--max-new 6` unless `args` sets it.
    fn report(&self, prompt: &str, args: &[&str]) -> (Value, String) {
        let mut a = args.to_vec();
        if !a.contains(&"--max-new") {
            a.extend(["--max-new", "6"]);
        }
        let out = self.run(prompt, &a);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "kvscope run failed: {err}");
        (serde_json::from_slice(&out.stdout).expect("JSON"), err)
    }
}

/// The report without the fields that differ between runs by design.
fn stable(mut v: Value) -> Value {
    let o = v.as_object_mut().unwrap();
    o.remove("timing_ms");
    o.remove("prefill_cache");
    // A hit holds no prefill buffers and decodes nothing for the full generation (the
    // test below checks those); the Trace's buffers are the same.
    if let Some(m) = o.get_mut("memory").and_then(Value::as_object_mut) {
        for k in ["prefill_kv_f32", "prefill_block_sums", "prefill_scratch"] {
            m.remove(k);
        }
        m.remove("decode_full");
        m.remove("peak_rss");
    }
    v
}

const PROMPT: &str = "The keeper wrote the code 7421 in the log while the waves hit \
    the rocks all night. Question: what is the code?";

#[test]
fn a_cached_run_reports_the_same_as_an_uncached_one() {
    let env = Env::new("pfc-cli");
    let (first, _) = env.report(PROMPT, &[]);
    assert_eq!(first["prefill_cache"]["hit"], false);
    assert!(
        first["prefill_cache"]["store_ms"].is_number(),
        "{}",
        first["prefill_cache"]
    );
    let (second, _) = env.report(PROMPT, &[]);
    assert_eq!(second["prefill_cache"]["hit"], true);
    assert!(second["prefill_cache"]["load_ms"].is_number());
    let (off, _) = env.report(PROMPT, &["--no-cache"]);
    assert!(off.get("prefill_cache").is_none());
    // The memory breakdown: the miss and the uncached run held prefill's f32 K/V and
    // decoded the full generation; the hit did neither.
    for (v, held) in [(&first, true), (&second, false), (&off, true)] {
        let m = &v["memory"];
        assert_eq!(m["prefill_kv_f32"].as_u64().unwrap() > 0, held, "{m}");
        assert_eq!(m["decode_full"].as_u64().unwrap() > 0, held, "{m}");
        assert!(m["trace_kv"].as_u64().unwrap() > 0, "{m}");
    }
    let bytes = |v: Value| serde_json::to_vec(&stable(v)).unwrap();
    assert_eq!(bytes(second.clone()), bytes(off.clone()));
    assert_eq!(bytes(first), bytes(off));
    // A shorter generation is answered from the stored one, a longer one decodes.
    let (short, _) = env.report(PROMPT, &["--max-new", "3"]);
    let (short_off, _) = env.report(PROMPT, &["--max-new", "3", "--no-cache"]);
    assert_eq!(short["prefill_cache"]["hit"], true);
    assert_eq!(bytes(short), bytes(short_off));
    // One more word is another prompt: a miss.
    let (other, _) = env.report(&format!("{PROMPT} Now."), &[]);
    assert_eq!(other["prefill_cache"]["hit"], false);
    // A damaged entry: one notice line, then the right answer, stored again.
    let pdir = env.dir.join("home").join("prefill");
    for e in std::fs::read_dir(&pdir).unwrap().flatten() {
        let mut b = std::fs::read(e.path()).unwrap();
        let n = b.len();
        b[n / 2] ^= 0xff;
        std::fs::write(e.path(), b).unwrap();
    }
    let (again, err) = env.report(PROMPT, &[]);
    assert_eq!(again["prefill_cache"]["hit"], false);
    let notices: Vec<&str> = err.lines().filter(|l| l.contains("unusable")).collect();
    assert_eq!(notices.len(), 1, "{err}");
    assert!(again["prefill_cache"]["notice"].is_string());
    assert_eq!(bytes(again), bytes(second));
    let (fixed, _) = env.report(PROMPT, &[]);
    assert_eq!(fixed["prefill_cache"]["hit"], true);
    // `cache ls` names the entries; `cache clear` empties the folder.
    let ls = Command::new(env!("CARGO_BIN_EXE_kvscope"))
        .args(["cache", "ls"])
        .env("KVSCOPE_HOME", env.dir.join("home"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&ls.stdout);
    assert!(ls.status.success());
    assert_eq!(text.matches("tiny.gguf").count(), 2, "{text}");
    let clear = Command::new(env!("CARGO_BIN_EXE_kvscope"))
        .args(["cache", "clear"])
        .env("KVSCOPE_HOME", env.dir.join("home"))
        .output()
        .unwrap();
    assert!(clear.status.success());
    assert!(kvscope::prefill_cache::list(&pdir).is_empty());
    let _ = std::fs::remove_dir_all(&env.dir);
}

/// A reopen asking for a longer generation than the entry holds decodes it once and keeps
/// it beside the entry: the next reopen reads it (`"generation": "sidecar"`, no full-cache
/// decode), and every report equals the uncached one but for the cache's fields. A
/// damaged sidecar is one notice line and a fresh decode.
#[test]
fn a_longer_generation_is_kept_beside_the_entry_for_the_next_reopen() {
    let env = Env::new("pfc-gen-cli");
    let bytes = |v: Value| serde_json::to_vec(&stable(v)).unwrap();
    let (first, _) = env.report(PROMPT, &["--max-new", "3"]);
    assert_eq!(first["prefill_cache"]["generation"], "decoded");
    assert_eq!(first["full"]["ids"].as_array().unwrap().len(), 3, "{first}");
    let (off, _) = env.report(PROMPT, &["--max-new", "7", "--no-cache"]);
    assert_eq!(
        off["full"]["ids"].as_array().unwrap().len(),
        7,
        "no early stop"
    );
    let (longer, _) = env.report(PROMPT, &["--max-new", "7"]);
    assert_eq!(longer["prefill_cache"]["hit"], true);
    assert_eq!(longer["prefill_cache"]["generation"], "decoded");
    assert!(longer["memory"]["decode_full"].as_u64().unwrap() > 0);
    assert_eq!(bytes(longer.clone()), bytes(off.clone()));
    let (again, err) = env.report(PROMPT, &["--max-new", "7"]);
    assert_eq!(again["prefill_cache"]["generation"], "sidecar", "{err}");
    assert_eq!(again["memory"]["decode_full"], 0, "nothing decoded");
    assert_eq!(bytes(again), bytes(off.clone()));
    let (shorter, _) = env.report(PROMPT, &["--max-new", "2"]);
    assert_eq!(shorter["prefill_cache"]["generation"], "entry");
    let pdir = env.dir.join("home").join("prefill");
    let side: Vec<_> = std::fs::read_dir(&pdir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "gen"))
        .collect();
    assert_eq!(side.len(), 1, "{side:?}");
    let mut b = std::fs::read(&side[0]).unwrap();
    let n = b.len();
    b[n - 1] ^= 0x01;
    std::fs::write(&side[0], b).unwrap();
    let (fixed, err) = env.report(PROMPT, &["--max-new", "7"]);
    let notices: Vec<&str> = err.lines().filter(|l| l.contains("unusable")).collect();
    assert_eq!(notices.len(), 1, "{err}");
    assert!(notices[0].contains("sidecar"), "{err}");
    assert_eq!(fixed["prefill_cache"]["hit"], true);
    assert_eq!(fixed["prefill_cache"]["generation"], "decoded");
    assert_eq!(bytes(fixed), bytes(off.clone()));
    let (healed, _) = env.report(PROMPT, &["--max-new", "7"]);
    assert_eq!(healed["prefill_cache"]["generation"], "sidecar");
    assert_eq!(bytes(healed), bytes(off));
    let _ = std::fs::remove_dir_all(&env.dir);
}

/// Two replays, bit for bit.
fn same_pass(a: &FullPass, b: &FullPass) -> bool {
    let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    a.prompt_len == b.prompt_len
        && a.n_rep == b.n_rep
        && a.ids == b.ids
        && a.held_from == b.held_from
        && a.logits.len() == b.logits.len()
        && a.logits
            .iter()
            .zip(&b.logits)
            .all(|(x, y)| bits(x) == bits(y))
        && a.attn.len() == b.attn.len()
        && a.attn.iter().zip(&b.attn).all(|(x, y)| {
            x.len() == y.len()
                && x.iter().zip(y).all(|(p, q)| {
                    p.len() == q.len() && p.iter().zip(q).all(|(r, s)| bits(r) == bits(s))
                })
        })
}

/// The inspector's full-cache replay (the divergence analysis' input) is stored beside
/// the entry once computed and read back on the next reopen bit for bit as a fresh
/// replay gives it; a damaged one or another generation's is refused with a one-line
/// notice and replayed (and stored again); one that cannot fit the cap is not stored.
#[test]
fn the_full_cache_replay_is_kept_beside_the_entry_bit_for_bit() {
    let env = Env::new("pfc-pass");
    let loaded = kvscope::model::load(&env.model).expect("load");
    let c = cache(&env.dir.join("prefill"), 1 << 30);
    let ids = loaded.tok.encode(PROMPT).expect("encode");
    let open = |c: &PrefillCache, max_new: usize| {
        Session::from_ids_cached(
            &loaded,
            Some(c),
            PROMPT.to_string(),
            ids.clone(),
            max_new,
            None,
            &mut |_, _| {},
        )
        .expect("session")
    };
    let side = c
        .dir
        .join(c.key(loaded.model.kv_dtype().name(), &ids).file_name())
        .with_extension("pass");
    let mut first = open(&c, 6);
    assert!(!first.prefill_cache.as_ref().unwrap().hit);
    assert_eq!(first.full.ids.len(), 6, "no early stop");
    assert_eq!(
        first.full_pass_cached(&loaded.model).unwrap(),
        ("replayed", None)
    );
    assert!(
        !side.exists(),
        "stored only when asked, after the result is shown"
    );
    assert_eq!(first.store_full_pass(), None);
    assert!(side.is_file());
    assert_eq!(first.store_full_pass(), None, "stored once");
    let mut second = open(&c, 6);
    assert!(second.prefill_cache.as_ref().unwrap().hit);
    assert_eq!(
        second.full_pass_cached(&loaded.model).unwrap(),
        ("sidecar", None)
    );
    assert_eq!(second.store_full_pass(), None);
    let fresh = FullPass::compute(&loaded.model, &second.trace, &second.full.ids, None)
        .unwrap()
        .0;
    assert!(same_pass(second.full_pass.as_ref().unwrap(), &fresh));
    assert!(same_pass(first.full_pass.as_ref().unwrap(), &fresh));
    // Damaged: refused, removed, replayed, stored again.
    let mut b = std::fs::read(&side).unwrap();
    let n = b.len();
    b[n / 2] ^= 0x04;
    std::fs::write(&side, b).unwrap();
    let mut third = open(&c, 6);
    let (from, notice) = third.full_pass_cached(&loaded.model).unwrap();
    assert_eq!(from, "replayed");
    let notice = notice.expect("a notice");
    assert!(
        notice.contains("checksum") && notice.contains("unusable") && !notice.contains('\n'),
        "{notice}"
    );
    assert!(same_pass(third.full_pass.as_ref().unwrap(), &fresh));
    assert_eq!(third.store_full_pass(), None);
    // Another generation (a shorter --max-new): refused, replayed for this one.
    let mut short = open(&c, 3);
    let (from, notice) = short.full_pass_cached(&loaded.model).unwrap();
    assert_eq!(from, "replayed");
    assert!(notice.is_some_and(|n| n.contains("another generation")));
    let want = FullPass::compute(&loaded.model, &short.trace, &short.full.ids, None)
        .unwrap()
        .0;
    assert!(same_pass(short.full_pass.as_ref().unwrap(), &want));
    // A cap the entry and the replay cannot fit together: not stored, with a notice.
    let entry_len = std::fs::metadata(side.with_extension("kvp")).unwrap().len();
    let tight = PrefillCache {
        cap: entry_len + 10,
        ..c.clone()
    };
    let mut fourth = open(&tight, 6);
    assert_eq!(
        fourth.full_pass_cached(&loaded.model).unwrap().0,
        "replayed"
    );
    let n = fourth.store_full_pass().expect("a notice");
    assert!(n.contains("cap") && !n.contains('\n'), "{n}");
    assert!(!side.exists());
    // `cache clear` takes the sidecars too.
    let mut again = open(&c, 6);
    again.full_pass_cached(&loaded.model).unwrap();
    assert_eq!(again.store_full_pass(), None);
    let (files, _) = kvscope::prefill_cache::clear(&c.dir).unwrap();
    assert_eq!(files, 2, "the entry and its replay");
    let _ = std::fs::remove_dir_all(&env.dir);
}

/// The inspector's window scores are stored beside the entry and read back bit for bit
/// for the same window, kernel and pooling; another setting's table is a plain miss
/// (the next store replaces it), a damaged one a one-line notice.
#[test]
fn window_scores_are_kept_beside_the_entry_for_their_settings() {
    use kvscope::eviction::{ScoreTable, Settings};
    let env = Env::new("pfc-scores");
    let loaded = kvscope::model::load(&env.model).expect("load");
    let c = cache(&env.dir.join("prefill"), 1 << 30);
    let ids = loaded.tok.encode(PROMPT).expect("encode");
    let open = || {
        Session::from_ids_cached(
            &loaded,
            Some(&c),
            PROMPT.to_string(),
            ids.clone(),
            4,
            None,
            &mut |_, _| {},
        )
        .expect("session")
    };
    let s = Settings {
        method: kvscope::eviction::snapkv::METHOD,
        budget: 16,
        window: 4,
        kernel: 3,
        ..Settings::default()
    };
    let first = open();
    assert!(matches!(first.stored_scores(&s), Ok(None)));
    let t = ScoreTable::compute(&first.trace, &s);
    assert!(t.heads.iter().flatten().any(|h| !h.is_empty()));
    assert_eq!(first.store_scores(&t), None);
    let second = open();
    assert!(second.prefill_cache.as_ref().unwrap().hit);
    let back = second.stored_scores(&s).unwrap().expect("stored");
    let bits = |t: &ScoreTable| {
        t.heads
            .iter()
            .flatten()
            .map(|h| h.iter().map(|x| x.to_bits()).collect::<Vec<_>>())
            .collect::<Vec<_>>()
    };
    assert_eq!(bits(&back), bits(&ScoreTable::compute(&second.trace, &s)));
    assert!(back.fits(second.trace.len, &s));
    let wider = Settings {
        window: 6,
        ..s.clone()
    };
    assert!(
        matches!(second.stored_scores(&wider), Ok(None)),
        "another window misses"
    );
    let side = c
        .dir
        .join(c.key(loaded.model.kv_dtype().name(), &ids).file_name())
        .with_extension("scores");
    let mut b = std::fs::read(&side).unwrap();
    let n = b.len();
    b[n - 5] ^= 0x10;
    std::fs::write(&side, b).unwrap();
    let notice = second.stored_scores(&s).expect_err("damaged");
    assert!(
        notice.contains("checksum") && notice.contains("unusable") && !notice.contains('\n'),
        "{notice}"
    );
    assert!(!side.exists());
    let _ = std::fs::remove_dir_all(&env.dir);
}
