//! The floors of docs/ARCHITECTURE.md, checked: every `use crate::...`, `use super::...`
//! and inline `crate::` / `super::` path in src/ (test modules aside) may only point at
//! its own floor or one below, the top-level modules import each other without a
//! circle, and the files of each folder import each other without a circle. The checker is plain text parsing, so it is tested on planted
//! sources too: it must be able to fail.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Floor of every top-level module, lowest first (docs/ARCHITECTURE.md draws them).
const FLOORS: &[(&str, u8)] = &[
    // The data shapes model and eviction share, and small utilities.
    ("trace", 0),
    ("keepset", 0),
    ("signals", 0),
    ("input", 0),
    ("score", 0),
    ("shard", 0),
    ("output", 0),
    ("huge_pages", 0),
    ("model", 1),
    ("eviction", 2),
    ("profile_format", 2),
    ("prefill_cache", 2),
    ("session", 3),
    ("memory", 3),
    // The analysis wing.
    ("profile", 4),
    ("divergence", 4),
    ("eval", 4),
    ("haystack", 4),
    ("report", 4),
    ("tui", 5),
    ("cli", 5),
    // Test support: only test code imports it (it sits above everything).
    ("testing", 6),
    ("testing_formats", 6),
];

/// Known problems being fixed in other steps of the same refloor (issue 23), each to
/// be removed here when its fix lands: the test fails on any problem not listed, and on
/// a listed one that is gone.
const PENDING: &[&str] = &[];

/// Inside every folder the files must not import each other in a circle. A folder's
/// `mod.rs` is its front door (it declares, re-exports and dispatches to its files), so
/// its imports of its own files count only in the folders listed here, which must be
/// acyclic with their `mod.rs` included.
const STRICT_DIRS: &[&str] = &["eviction", "profile"];

/// One source file: its module path (`["eviction", "snapkv"]`; `[]` for lib.rs) and its
/// text.
struct Source {
    file: String,
    module: Vec<String>,
    text: String,
}

fn module_of(rel: &str) -> Vec<String> {
    let trimmed = rel.trim_end_matches(".rs");
    let mut parts: Vec<String> = trimmed.split('/').map(str::to_string).collect();
    if parts.last().map(|p| p == "mod").unwrap_or(false) || parts == ["lib"] {
        parts.pop();
    }
    parts
}

fn sources_in(root: &Path) -> Vec<Source> {
    let mut out = Vec::new();
    let mut raw: Vec<(String, String)> = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
            .map(|e| e.expect("directory entry").path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().map(|e| e == "rs").unwrap_or(false) {
                let rel = p
                    .strip_prefix(root)
                    .expect("under src")
                    .to_string_lossy()
                    .replace('\\', "/");
                // The binary is its own crate: it reaches the library as `kvscope::`.
                if rel == "main.rs" {
                    continue;
                }
                let text = std::fs::read_to_string(&p).expect("readable source");
                raw.push((rel, text));
            }
        }
    }
    // A file holding a test module (`#[cfg(test)] mod tests;` in its parent) is test
    // code, left aside like the `#[cfg(test)]` items inside a file.
    let modules: BTreeMap<Vec<String>, &str> = raw
        .iter()
        .map(|(rel, text)| (module_of(rel), text.as_str()))
        .collect();
    for (rel, text) in &raw {
        let module = module_of(rel);
        let test_only = module.split_last().is_some_and(|(name, parent)| {
            modules.get(parent).is_some_and(|p| {
                p.split("#[cfg(test)]")
                    .skip(1)
                    .any(|after| after.trim_start().starts_with(&format!("mod {name};")))
            })
        });
        if !test_only {
            out.push(source(rel, text));
        }
    }
    out
}

fn source(rel: &str, text: &str) -> Source {
    Source {
        file: format!("src/{rel}"),
        module: module_of(rel),
        text: strip_tests(&strip_comments_and_strings(text)),
    }
}

/// The text without comments, string and char literals (a path in a doc comment or an
/// error message is not an import).
fn strip_comments_and_strings(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if b[i] == b'r' && (b[i..].starts_with(b"r\"") || b[i..].starts_with(b"r#")) {
            // Raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while j < b.len() && b[j] == b'#' {
                hashes += 1;
                j += 1;
            }
            if j < b.len() && b[j] == b'"' && (i == 0 || !is_ident(b[i - 1])) {
                let close: Vec<u8> = std::iter::once(b'"')
                    .chain(std::iter::repeat_n(b'#', hashes))
                    .collect();
                j += 1;
                while j < b.len() && !b[j..].starts_with(&close) {
                    j += 1;
                }
                i = (j + close.len()).min(b.len());
                out.push_str("\"\"");
            } else {
                out.push('r');
                i += 1;
            }
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
            let rest = &b[i + 1..];
            let lit_len = if rest.first() == Some(&b'\\') {
                rest.iter().position(|&c| c == b'\'').map(|p| p + 1)
            } else if rest.len() > 1 && rest[1] == b'\'' {
                Some(2)
            } else {
                // Multi-byte UTF-8 char literal.
                let ch = s[i + 1..].chars().next();
                match ch {
                    Some(c) if c.len_utf8() > 1 && s[i + 1 + c.len_utf8()..].starts_with('\'') => {
                        Some(c.len_utf8() + 1)
                    }
                    _ => None,
                }
            };
            match lit_len {
                Some(n) => {
                    out.push_str("' '");
                    i += 1 + n;
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            let ch = s[i..].chars().next().expect("char");
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// The text without `#[cfg(test)]` items (test modules may reach anywhere).
fn strip_tests(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        // The item runs to its `;` or to the brace that closes its first `{`.
        let semi = after.find(';');
        let brace = after.find('{');
        let end = match (semi, brace) {
            (Some(s), Some(b)) if s < b => s + 1,
            (_, Some(b)) => {
                let mut depth = 0;
                let mut end = after.len();
                for (k, c) in after[b..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = b + k + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                end
            }
            (Some(s), None) => s + 1,
            (None, None) => after.len(),
        };
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// Splits `a, b::{c, d}` at its top-level commas.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// Every path a use tree names, as segments (`a::{b, c::d}` -> `a::b`, `a::c::d`).
fn expand(prefix: &[String], tree: &str, out: &mut Vec<Vec<String>>) {
    let tree = tree.trim();
    if tree.is_empty() {
        return;
    }
    if let Some(open) = tree.find('{') {
        let head: Vec<String> = tree[..open]
            .split("::")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let mut p = prefix.to_vec();
        p.extend(head);
        for part in split_top(inner) {
            expand(&p, part, out);
        }
    } else {
        let path = tree.split(" as ").next().unwrap_or(tree);
        let mut p = prefix.to_vec();
        p.extend(
            path.split("::")
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        );
        out.push(p);
    }
}

/// The absolute module path (from the crate root) of every path in `src` that names a
/// module of this crate: `crate::`, `super::` and `self::` paths and paths starting at a
/// child module (`registry::knob`), in `use` statements and inline alike.
fn imports(src: &Source, modules: &BTreeSet<Vec<String>>) -> Vec<Vec<String>> {
    let mut raw: Vec<Vec<String>> = Vec::new();
    let t = &src.text;
    // use statements (a `use` tree may span lines).
    let mut from = 0;
    while let Some(k) = t[from..].find("use ") {
        let at = from + k;
        from = at + 4;
        if at > 0 && is_ident(t.as_bytes()[at - 1]) {
            continue;
        }
        let Some(end) = t[at..].find(';') else { break };
        expand(&[], &t[at + 4..at + end], &mut raw);
        from = at + end;
    }
    // Inline paths: every `a::b::c` whose first segment is not itself after a `::`.
    let b = t.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if is_ident(b[i]) && (i == 0 || (!is_ident(b[i - 1]) && b[i - 1] != b':')) {
            let path: String = t[i..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            i += path.len();
            if path.contains("::") {
                raw.push(
                    path.split("::")
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect(),
                );
            }
        } else {
            i += 1;
        }
    }
    raw.into_iter()
        .filter_map(|p| absolute(src, &p, modules))
        .collect()
}

/// `p` from the crate root; `None` for a path that names no module of this crate (std,
/// other crates, types and their items).
fn absolute(src: &Source, p: &[String], modules: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    let first = p.first()?;
    // `super` and `self` are relative to the file's own module.
    let mut base = src.module.clone();
    let mut rest = p;
    match first.as_str() {
        "crate" => {
            base.clear();
            rest = &p[1..];
        }
        "super" | "self" => {
            while let Some(s) = rest.first() {
                match s.as_str() {
                    "super" => {
                        base.pop()?;
                        rest = &rest[1..];
                    }
                    "self" => rest = &rest[1..],
                    _ => break,
                }
            }
        }
        // A path from a child module of this one (2018 paths), else not ours.
        child => {
            let mut m = src.module.clone();
            m.push(child.to_string());
            if !modules.contains(&m) {
                return None;
            }
        }
    }
    base.extend(rest.iter().cloned());
    Some(base)
}

/// The longest prefix of `path` that is a module with a file, as that file's module path.
fn target_file(path: &[String], modules: &BTreeSet<Vec<String>>) -> Vec<String> {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| modules.contains(p))
        .unwrap_or_default()
}

fn floor(top: &str) -> Option<u8> {
    FLOORS.iter().find(|(m, _)| *m == top).map(|&(_, f)| f)
}

/// Every problem found in `sources`: imports against the floors, modules not in
/// `FLOORS`, and import circles between top-level modules or between the files of a
/// folder.
fn check(sources: &[Source]) -> Vec<String> {
    let mut problems: Vec<String> = Vec::new();
    let modules: BTreeSet<Vec<String>> = sources.iter().map(|s| s.module.clone()).collect();
    let mut top_edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    // Per top-level folder, the import edges between its files.
    let mut file_edges: BTreeMap<String, BTreeMap<Vec<String>, BTreeSet<Vec<String>>>> =
        BTreeMap::new();
    for s in sources {
        let Some(top) = s.module.first() else {
            continue; // lib.rs only declares the modules
        };
        let Some(own) = floor(top) else {
            problems.push(format!("{}: module `{top}` has no floor in FLOORS", s.file));
            continue;
        };
        for path in imports(s, &modules) {
            let target = target_file(&path, &modules);
            let Some(ttop) = target.first() else {
                continue;
            };
            if ttop != top {
                match floor(ttop) {
                    Some(f) if f > own => problems.push(format!(
                        "{}: imports crate::{} (floor {f}) from floor {own}",
                        s.file,
                        path.join("::")
                    )),
                    None => problems.push(format!(
                        "{}: imports crate::{}, whose module has no floor",
                        s.file,
                        path.join("::")
                    )),
                    _ => {}
                }
                top_edges
                    .entry(top.clone())
                    .or_default()
                    .insert(ttop.clone());
            } else if target != s.module {
                let from_front_door = target.starts_with(&s.module);
                if !from_front_door || STRICT_DIRS.contains(&top.as_str()) {
                    file_edges
                        .entry(top.clone())
                        .or_default()
                        .entry(s.module.clone())
                        .or_default()
                        .insert(target);
                }
            }
        }
    }
    // One line per problem, however often the file repeats the import.
    let mut seen = BTreeSet::new();
    problems.retain(|p| seen.insert(p.clone()));
    if let Some(c) = find_cycle(&top_edges) {
        problems.push(format!(
            "top-level modules import in a circle: {}",
            c.join(" -> ")
        ));
    }
    for edges in file_edges.values() {
        if let Some(c) = find_cycle(edges) {
            let names: Vec<String> = c.iter().map(|m| m.join("::")).collect();
            problems.push(format!("files import in a circle: {}", names.join(" -> ")));
        }
    }
    problems
}

/// One circle of `edges`, if any (depth-first search).
fn find_cycle<N: Ord + Clone>(edges: &BTreeMap<N, BTreeSet<N>>) -> Option<Vec<N>> {
    fn visit<N: Ord + Clone>(
        n: &N,
        edges: &BTreeMap<N, BTreeSet<N>>,
        state: &mut BTreeMap<N, u8>,
        stack: &mut Vec<N>,
    ) -> Option<Vec<N>> {
        state.insert(n.clone(), 1);
        stack.push(n.clone());
        for m in edges.get(n).into_iter().flatten() {
            match state.get(m).copied().unwrap_or(0) {
                1 => {
                    let from = stack.iter().position(|x| x == m).unwrap_or(0);
                    let mut c = stack[from..].to_vec();
                    c.push(m.clone());
                    return Some(c);
                }
                0 => {
                    if let Some(c) = visit(m, edges, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in edges.keys() {
        if state.get(n).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(n, edges, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn imports_follow_the_floors() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let sources = sources_in(&root);
    assert!(
        sources.len() > 50,
        "found only {} source files",
        sources.len()
    );
    let problems = check(&sources);
    let new: Vec<&String> = problems
        .iter()
        .filter(|p| !PENDING.contains(&p.as_str()))
        .collect();
    let gone: Vec<&&str> = PENDING
        .iter()
        .filter(|p| !problems.iter().any(|x| x == *p))
        .collect();
    assert!(
        new.is_empty(),
        "imports against docs/ARCHITECTURE.md:\n{}",
        new.iter()
            .map(|p| p.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        gone.is_empty(),
        "fixed, so remove from PENDING in tests/architecture.rs:\n{}",
        gone.iter().map(|p| **p).collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn every_top_level_module_has_a_floor() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for s in sources_in(&root) {
        if let Some(top) = s.module.first() {
            assert!(floor(top).is_some(), "{} has no floor", s.file);
        }
    }
}

/// Planted sources: the checker must catch an upward import (use tree, inline path and
/// `super::` alike), a circle between files, and must not count tests or comments.
#[test]
fn catches_planted_upward_imports() {
    let base = |extra_model: &str, extra_snap: &str| {
        vec![
            source(
                "lib.rs",
                "pub mod model; pub mod eviction; pub mod session;",
            ),
            source(
                "model/mod.rs",
                &format!("use crate::trace::Dims;\n{extra_model}"),
            ),
            source("trace.rs", "pub struct Dims;"),
            source(
                "eviction/mod.rs",
                "pub mod snapkv; pub mod types; use crate::model::Model;\n\
                 pub fn select() { snapkv::DEF; }",
            ),
            source(
                "eviction/snapkv.rs",
                &format!("use super::types::Input;\n{extra_snap}"),
            ),
            source("eviction/types.rs", "pub struct Input;"),
            source("session.rs", "use crate::eviction::{self, snapkv::DEF};"),
        ]
    };
    // Clean: no problems.
    assert_eq!(check(&base("", "")), Vec::<String>::new());
    // Comments, strings and test modules do not count.
    let quiet = base(
        "// use crate::session::Session;\nconst S: &str = \"crate::session::X\";\n\
         #[cfg(test)]\nmod tests { use crate::session::Session; }",
        "",
    );
    assert_eq!(check(&quiet), Vec::<String>::new());
    // An upward use tree.
    let p = check(&base(
        "use crate::{trace::Dims as D, session::Session};",
        "",
    ));
    assert!(
        p.iter().any(|x| x
            .contains("src/model/mod.rs: imports crate::session::Session (floor 3) from floor 1")),
        "{p:?}"
    );
    // An inline upward path.
    let p = check(&base("fn f(_: &crate::eviction::Settings) {}", ""));
    assert!(
        p.iter()
            .any(|x| x.contains("crate::eviction::Settings (floor 2)")),
        "{p:?}"
    );
    // super:: reaching up a floor (eviction/snapkv -> crate::session via super::super).
    let p = check(&base("", "use super::super::session::Session;"));
    assert!(
        p.iter()
            .any(|x| x.contains("src/eviction/snapkv.rs: imports crate::session::Session")),
        "{p:?}"
    );
    // A circle through eviction/mod.rs (a strict folder).
    let p = check(&base("", "use super::Selection;"));
    assert!(
        p.iter().any(|x| x.contains("files import in a circle")),
        "{p:?}"
    );
    // A circle between two files of any folder (cli/mod.rs's own imports aside).
    let mut cli = base("", "");
    cli.push(source(
        "cli/mod.rs",
        "mod a; mod b; fn run() { a::go(); b::go(); }",
    ));
    cli.push(source("cli/a.rs", "use super::b::go;"));
    cli.push(source(
        "cli/b.rs",
        "pub fn go() {} fn f() { super::run(); }",
    ));
    assert_eq!(check(&cli), Vec::<String>::new());
    cli.push(source("cli/c.rs", "use super::a::go;"));
    let b = cli.len() - 2;
    cli[b] = source("cli/b.rs", "fn f() { super::c::go(); }");
    let p = check(&cli);
    assert!(
        p.iter()
            .any(|x| x.contains("files import in a circle: cli::")),
        "{p:?}"
    );
}
