//! The frozen repositories `repo-format/testdata/repo-v1/` (format 1), `repo-v2/` (format
//! 2: small blobs in groups), `repo-v3/` (format 3: condemned index records), `repo-v4/`
//! (format 4: content lists) and `repo-v5/` (format 5: tree groups) must stay
//! readable: open each with its password through the engine API, restore its snapshot, and
//! compare every path with the manifest recorded when it was made. All were made from the
//! same source tree.
//!
//! The repository is never written to: it is copied (files only, as a git checkout has no
//! empty directories) into a temporary directory first.
//!
//! The source tree it was made from is generated here, deterministically
//! ([`build_source_tree`]); see `repo-format/testdata/repo-v1/README.md` and
//! `repo-format/testdata/make-repo-v1.sh` for how the repository was created.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cairn_engine::ops::restore::restore;
use cairn_engine::{LocalBackend, Progress, Repository, RestoreOptions};
use cairn_format::{FileKind, NodeKind};
use serde_json::{json, Value};

/// A frozen repository.
struct Fixture {
    /// Its format version.
    version: u16,
    /// Its password.
    password: &'static str,
    /// Where the source tree was when it was backed up (recorded in the snapshot).
    source_path: &'static str,
}

const V1: Fixture = Fixture {
    version: 1,
    password: "cairn-fixture-v1",
    source_path: "/tmp/cairn-fixture-v1/src",
};

const V2: Fixture = Fixture {
    version: 2,
    password: "cairn-fixture-v2",
    source_path: "/tmp/cairn-fixture-v2/src",
};

const V3: Fixture = Fixture {
    version: 3,
    password: "cairn-fixture-v3",
    source_path: "/tmp/cairn-fixture-v3/src",
};

const V4: Fixture = Fixture {
    version: 4,
    password: "cairn-fixture-v4",
    source_path: "/tmp/cairn-fixture-v4/src",
};

const V5: Fixture = Fixture {
    version: 5,
    password: "cairn-fixture-v5",
    source_path: "/tmp/cairn-fixture-v5/src",
};

/// `--host`.
const HOST: &str = "fixture";
/// `--time "2024-05-01 03:00:00"` with `TZ=UTC`.
const TIME_UNIX_NANOS: i64 = 1_714_532_400_000_000_000;
/// Fixed mtime of every generated file and directory: 2024-04-30 12:00:00 UTC.
const MTIME_SECS: i64 = 1_714_478_400;

fn fixture_dir(f: &Fixture) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../repo-format/testdata/repo-v{}", f.version))
}

// ---------------------------------------------------------------------------------------------
// The source tree
// ---------------------------------------------------------------------------------------------

/// splitmix64: a tiny deterministic generator, so the tree never depends on a crate version.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// ~3 MiB of log lines: seeded pseudo-random, but compressible (zstd shrinks it ~10x), and
/// varied enough for content-defined chunking to find several cut points.
fn log_text(len: usize) -> Vec<u8> {
    const LEVELS: [&str; 6] = ["INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR"];
    const COMPONENTS: [&str; 8] = [
        "api",
        "scheduler",
        "kubelet",
        "etcd",
        "ingress",
        "storage",
        "auth",
        "metrics",
    ];
    const MESSAGES: [&str; 12] = [
        "request completed",
        "cache miss, fetching from upstream",
        "lease renewed",
        "pod sandbox changed, it will be killed and re-created",
        "volume mounted successfully",
        "token refreshed",
        "compaction finished",
        "slow request",
        "connection reset by peer, retrying",
        "readiness probe failed",
        "scaled deployment",
        "garbage collection done",
    ];
    let mut rng = Rng(0xca17_0001);
    let mut out = Vec::with_capacity(len + 200);
    let mut ms: u64 = 0;
    while out.len() < len {
        ms += rng.below(2000);
        let (h, m, s, frac) = (
            (ms / 3_600_000) % 24,
            (ms / 60_000) % 60,
            (ms / 1000) % 60,
            ms % 1000,
        );
        let line = format!(
            "2024-04-30T{h:02}:{m:02}:{s:02}.{frac:03}Z {:<5} [{}] {} id={} took={}ms\n",
            LEVELS[rng.below(6) as usize],
            COMPONENTS[rng.below(8) as usize],
            MESSAGES[rng.below(12) as usize],
            rng.below(100),
            rng.below(50),
        );
        out.extend_from_slice(line.as_bytes());
    }
    out.truncate(len);
    out
}

fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next().to_le_bytes());
    }
    out.truncate(len);
    out
}

fn set_mtime(path: &Path) {
    let t = filetime::FileTime::from_unix_time(MTIME_SECS, 0);
    filetime::set_symlink_file_times(path, t, t).unwrap();
}

/// Write the fixture's source tree into `root` (which must not exist yet).
/// A file that the SQLite page rule cuts per page (the header names 4 KiB pages; the pages
/// hold log text, which compresses): 96 pages, cut into more blobs than a file may name
/// directly in format 4.
fn sqlite_like_pages() -> Vec<u8> {
    let mut db = log_text(96 * 4096);
    db[..16].copy_from_slice(b"SQLite format 3\0");
    db[16..18].copy_from_slice(&4096u16.to_be_bytes());
    db
}

/// The fixture's source tree. Format 4's adds `db/pages.sqlite` (content lists).
pub fn build_source_tree(root: &Path, version: u16) {
    let readme = b"cairn fixture repository, format v1\n\nThis tree is generated by engine/tests/fixture_v1.rs.\n";
    let notes: String = (1..=40)
        .map(|i| format!("- note {i}: the quick brown fox jumps over the lazy dog\n"))
        .collect();
    let files: [(&'static [u8], Vec<u8>, u32); 8] = [
        (b"README.txt", readme.to_vec(), 0o644),
        (b"empty.txt", Vec::new(), 0o644),
        (
            b"bin/run.sh",
            b"#!/bin/sh\necho \"hello from the fixture\"\n".to_vec(),
            0o755,
        ),
        (
            b"docs/notes.md",
            format!("# Notes\n\n{notes}").into_bytes(),
            0o644,
        ),
        (b"docs/copy-of-readme.txt", readme.to_vec(), 0o600),
        (b"big/log.txt", log_text(3 << 20), 0o644),
        (b"small-random.bin", random_bytes(0xca17_0002, 4096), 0o640),
        (
            b"caf\xe9-latin1.txt",
            b"a file whose name is not UTF-8\n".to_vec(),
            0o644,
        ),
    ];
    let mut files = files.to_vec();
    let mut dirs = vec!["bin", "docs", "docs/empty-dir", "big"];
    if version >= 4 {
        files.push((b"db/pages.sqlite", sqlite_like_pages(), 0o600));
        dirs.push("db");
    }
    fs::create_dir(root).unwrap();
    for dir in &dirs {
        fs::create_dir(root.join(dir)).unwrap();
    }
    for (name, content, mode) in &files {
        let p = root.join(std::ffi::OsStr::from_bytes(name));
        fs::write(&p, content).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(*mode)).unwrap();
    }
    symlink("README.txt", root.join("link-to-readme")).unwrap();
    symlink("../does/not/exist", root.join("docs/dangling-link")).unwrap();
    for dir in &dirs {
        fs::set_permissions(root.join(dir), fs::Permissions::from_mode(0o755)).unwrap();
    }
    // Times last, deepest first, so creating entries does not bump them again.
    let mut all: Vec<PathBuf> = walk(root).into_iter().map(|(p, _)| root.join(p)).collect();
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in all {
        set_mtime(&p);
    }
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).unwrap();
    set_mtime(root);
}

/// Every path below `root` (relative, sorted by bytes) with its metadata, not following links.
fn walk(root: &Path) -> Vec<(PathBuf, fs::Metadata)> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in fs::read_dir(root.join(&rel)).unwrap() {
            let e = e.unwrap();
            let p = rel.join(e.file_name());
            let m = fs::symlink_metadata(root.join(&p)).unwrap();
            if m.is_dir() {
                stack.push(p.clone());
            }
            out.push((p, m));
        }
    }
    out.sort_by(|a, b| a.0.as_os_str().as_bytes().cmp(b.0.as_os_str().as_bytes()));
    out
}

/// The manifest of a tree: one JSON object per path.
fn manifest_of(root: &Path) -> Vec<Value> {
    walk(root)
        .into_iter()
        .map(|(rel, m)| {
            let bytes = rel.as_os_str().as_bytes();
            let mut e = json!({
                "path": String::from_utf8_lossy(bytes),
                "path_hex": hex::encode(bytes),
                "mode": format!("{:04o}", m.mode() & 0o7777),
            });
            let full = root.join(&rel);
            if m.file_type().is_symlink() {
                e["type"] = json!("symlink");
                e["target"] = json!(String::from_utf8_lossy(
                    fs::read_link(&full).unwrap().as_os_str().as_bytes()
                ));
                e.as_object_mut().unwrap().remove("mode");
            } else if m.is_dir() {
                e["type"] = json!("dir");
                e["mtime_ns"] = json!(m.mtime() * 1_000_000_000 + m.mtime_nsec());
            } else {
                let data = fs::read(&full).unwrap();
                e["type"] = json!("file");
                e["size"] = json!(data.len());
                e["blake3"] = json!(blake3::hash(&data).to_hex().to_string());
                e["mtime_ns"] = json!(m.mtime() * 1_000_000_000 + m.mtime_nsec());
            }
            e
        })
        .collect()
}

fn manifest_document(f: &Fixture, entries: Vec<Value>) -> Value {
    json!({
        "comment": format!("Expected content of the only snapshot of repo-v{}, relative to snapshot.paths[0]. \
                    path_hex is authoritative (path is lossy UTF-8). Generated by engine/tests/fixture_v1.rs.", f.version),
        "password": f.password,
        "snapshot": {
            "hostname": HOST,
            "paths": [f.source_path],
            "time_unix_nanos": TIME_UNIX_NANOS,
            "utc_offset_secs": 0,
        },
        "entries": entries,
    })
}

/// Writes the source tree to `$CAIRN_FIXTURE_SRC` (default `/tmp/cairn-fixture-v1/src`) and
/// its manifest to `$CAIRN_FIXTURE_MANIFEST` (default next to it). Used by
/// `repo-format/testdata/make-repo-v1.sh`; not part of the normal test run.
#[test]
#[ignore = "generator for repo-format/testdata/make-repo-v1.sh"]
fn make_fixture_source() {
    // CAIRN_FIXTURE_VERSION=2 for repo-v2 (make-repo-v2.sh).
    let f = match std::env::var("CAIRN_FIXTURE_VERSION").as_deref() {
        Ok("2") => &V2,
        Ok("3") => &V3,
        Ok("4") => &V4,
        Ok("5") => &V5,
        _ => &V1,
    };
    let src = std::env::var_os("CAIRN_FIXTURE_SRC")
        .map_or_else(|| PathBuf::from(f.source_path), PathBuf::from);
    let manifest = std::env::var_os("CAIRN_FIXTURE_MANIFEST").map_or_else(
        || src.parent().unwrap().join("manifest.json"),
        PathBuf::from,
    );
    build_source_tree(&src, f.version);
    let doc = manifest_document(f, manifest_of(&src));
    fs::write(
        &manifest,
        serde_json::to_string_pretty(&doc).unwrap() + "\n",
    )
    .unwrap();
    eprintln!(
        "source tree in {}, manifest in {}",
        src.display(),
        manifest.display()
    );
}

// ---------------------------------------------------------------------------------------------
// The checks
// ---------------------------------------------------------------------------------------------

fn load_manifest(f: &Fixture) -> Value {
    let path = fixture_dir(f).join("manifest.json");
    serde_json::from_str(
        &fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
}

/// Copy the regular files of `from` into `to`, recreating only the directories that hold a
/// file (like a git checkout).
fn copy_files(from: &Path, to: &Path) {
    for (rel, m) in walk(from) {
        if m.is_file() {
            let dst = to.join(&rel);
            fs::create_dir_all(dst.parent().unwrap()).unwrap();
            fs::copy(from.join(&rel), &dst).unwrap();
        }
    }
}

fn entries_by_path(entries: &[Value]) -> BTreeMap<String, Value> {
    entries
        .iter()
        .map(|e| (e["path_hex"].as_str().unwrap().to_owned(), e.clone()))
        .collect()
}

#[test]
fn fixture_v1_opens_and_restores_exactly() {
    opens_and_restores_exactly(&V1);
}

#[test]
fn fixture_v2_opens_and_restores_exactly() {
    opens_and_restores_exactly(&V2);
}

#[test]
fn fixture_v3_opens_and_restores_exactly() {
    opens_and_restores_exactly(&V3);
}

#[test]
fn fixture_v4_opens_and_restores_exactly() {
    opens_and_restores_exactly(&V4);
}

#[test]
fn fixture_v5_opens_and_restores_exactly() {
    opens_and_restores_exactly(&V5);
}

/// Format 4's content lists: the page file names them, check reads them and sums their
/// blobs, and a prune keeps them and their blobs (nothing else is unused).
#[test]
fn fixture_v4_content_lists_are_checked_and_kept_by_prune() {
    content_lists_are_checked_and_kept_by_prune(&V4);
}

/// The same in format 5, whose content lists and trees are sealed in tree groups.
#[test]
fn fixture_v5_content_lists_are_checked_and_kept_by_prune() {
    content_lists_are_checked_and_kept_by_prune(&V5);
}

fn content_lists_are_checked_and_kept_by_prune(f: &Fixture) {
    use cairn_engine::ops::check::{check, ReadData};
    use cairn_engine::ops::prune::{prune, PruneOptions};
    let tmp = tempfile::tempdir().unwrap();
    let repo_dir = tmp.path().join("repo");
    copy_files(&fixture_dir(f), &repo_dir);
    let repo = Repository::open(
        Arc::new(LocalBackend::new(&repo_dir)),
        f.password.as_bytes(),
    )
    .unwrap();
    let snaps = repo.load_snapshots().unwrap();
    let ix = repo.indexed().unwrap();
    let db = cairn_engine::ops::ls::find_node(
        &ix,
        &snaps[0].1.tree,
        &Path::new(f.source_path).join("db/pages.sqlite"),
    )
    .unwrap()
    .expect("db/pages.sqlite in the snapshot");
    let cairn_format::Content::Lists(lists) = &db.content else {
        panic!("db/pages.sqlite names its blobs directly: {:?}", db.content);
    };
    assert!(lists.len() >= 2, "{} content lists", lists.len());
    let blobs = ix.file_blobs(&db.content).unwrap();
    assert!(
        blobs.len() > cairn_format::LIST_THRESHOLD,
        "{} blobs",
        blobs.len()
    );
    let held: u64 = blobs
        .iter()
        .map(|b| u64::from(ix.index().get(b).unwrap().raw_length))
        .sum();
    assert_eq!(held, db.size);
    drop(blobs);
    let no_wait = std::time::Duration::ZERO;
    let report = check(
        &repo.lock_shared(no_wait).unwrap(),
        ReadData::All,
        &Progress::default(),
    )
    .unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.content_lists, lists.len() as u64);
    let r = prune(
        repo.lock_maintenance(no_wait).unwrap().as_maintenance(),
        &PruneOptions::default(),
        &Progress::default(),
    )
    .unwrap();
    assert_eq!(r.packs_deleted, 0, "{r:?}");
    drop(ix);
    drop(repo);
    opens_and_restores_exactly_in(f, tmp.path());
}

/// Format 3's condemned records: check accepts them, restore does not need them, and a prune
/// (nothing else running) deletes the condemned packs and leaves the snapshot intact.
#[test]
fn fixture_v3_condemned_packs_are_checked_then_deleted_by_prune() {
    use cairn_engine::ops::check::{check, ReadData};
    use cairn_engine::ops::prune::{prune, PruneOptions};
    let tmp = tempfile::tempdir().unwrap();
    let repo_dir = tmp.path().join("repo");
    copy_files(&fixture_dir(&V3), &repo_dir);
    let repo = Repository::open(
        Arc::new(LocalBackend::new(&repo_dir)),
        V3.password.as_bytes(),
    )
    .unwrap();
    let no_wait = std::time::Duration::ZERO;
    let before = check(
        &repo.lock_shared(no_wait).unwrap(),
        ReadData::All,
        &Progress::default(),
    )
    .unwrap();
    assert!(before.errors.is_empty(), "{:?}", before.errors);
    assert!(
        before.condemned_packs > 0,
        "the fixture has condemned packs"
    );
    let r = prune(
        repo.lock_maintenance(no_wait).unwrap().as_maintenance(),
        &PruneOptions::default(),
        &Progress::default(),
    )
    .unwrap();
    assert_eq!(r.packs_deleted, before.condemned_packs, "{r:?}");
    let after = check(
        &repo.lock_shared(no_wait).unwrap(),
        ReadData::All,
        &Progress::default(),
    )
    .unwrap();
    assert!(
        after.errors.is_empty() && after.condemned_packs == 0,
        "{after:?}"
    );
    // The one snapshot still restores exactly (the full comparison, on the pruned copy).
    drop(repo);
    opens_and_restores_exactly_in(&V3, tmp.path());
}

fn opens_and_restores_exactly(f: &Fixture) {
    let tmp = tempfile::tempdir().unwrap();
    copy_files(&fixture_dir(f), &tmp.path().join("repo"));
    opens_and_restores_exactly_in(f, tmp.path());
}

/// [`opens_and_restores_exactly`] on a copy already in `dir/repo`.
fn opens_and_restores_exactly_in(f: &Fixture, dir: &Path) {
    let manifest = load_manifest(f);
    let repo_dir = dir.join("repo");

    let repo = Repository::open(
        Arc::new(LocalBackend::new(&repo_dir)),
        f.password.as_bytes(),
    )
    .unwrap();
    assert_eq!(repo.config().version, f.version);
    repo.config().validate().unwrap();
    assert!(Repository::open(Arc::new(LocalBackend::new(&repo_dir)), b"not the password").is_err());

    let snaps = repo.load_snapshots().unwrap();
    assert_eq!(snaps.len(), 1, "the fixture has exactly one snapshot");
    let (_, snap) = &snaps[0];
    let want = &manifest["snapshot"];
    assert_eq!(snap.hostname, want["hostname"].as_str().unwrap());
    assert_eq!(
        snap.time.unix_nanos,
        want["time_unix_nanos"].as_i64().unwrap()
    );
    assert_eq!(
        i64::from(snap.time.utc_offset_secs),
        want["utc_offset_secs"].as_i64().unwrap()
    );
    assert_eq!(snap.paths, vec![f.source_path.as_bytes().to_vec()]);
    assert_eq!(snap.parent, None);
    assert_eq!(snap.summary.as_ref().map(|s| s.errors), Some(0));

    let ix = repo.indexed().unwrap();
    let index = ix.index();
    // Every pack listed in the index is present, and the index covers every pack (the
    // condemned ones of format 3 included, until a prune deletes them).
    let mut packs: Vec<_> = index.packs().to_vec();
    packs.sort();
    assert_eq!(packs, repo.list_ids(FileKind::Pack).unwrap());
    // Version 2 groups its small blobs (the small files of the tree), version 1 never.
    let grouped = index
        .iter()
        .filter(|(_, l)| l.group_offset.is_some())
        .count();
    if f.version == 1 {
        assert_eq!(grouped, 0);
    } else {
        assert!(grouped >= 4, "{grouped} grouped blobs");
    }
    // Version 5 groups its small tree blobs too, earlier versions never.
    let trees_grouped = index
        .iter()
        .filter(|(_, l)| l.group_offset.is_some() && l.blob_type == cairn_format::BlobType::Tree)
        .count();
    if f.version >= 5 {
        assert!(trees_grouped >= 4, "{trees_grouped} grouped tree blobs");
    } else {
        assert_eq!(trees_grouped, 0);
    }

    // The big file was cut into several chunks.
    let big = cairn_engine::ops::ls::find_node(
        &ix,
        &snap.tree,
        &Path::new(f.source_path).join("big/log.txt"),
    )
    .unwrap()
    .expect("big/log.txt in the snapshot");
    assert_eq!(big.kind, NodeKind::File);
    assert!(
        big.content.refs().len() >= 2,
        "big/log.txt has {} chunk(s)",
        big.content.refs().len()
    );

    let target = dir.join("restored");
    let opts = RestoreOptions {
        target: target.clone(),
        ..RestoreOptions::default()
    };
    let sub = Path::new(f.source_path.trim_start_matches('/'));
    let lock = repo.lock_shared(std::time::Duration::ZERO).unwrap();
    let res = restore(&lock, &ix, &snap.tree, sub, &opts, &Progress::default()).unwrap();
    assert!(res.failed.is_empty(), "restore failures: {:?}", res.failed);
    drop(lock);

    let want = entries_by_path(manifest["entries"].as_array().unwrap());
    let got = entries_by_path(&manifest_of(&target));
    let missing: Vec<_> = want
        .keys()
        .filter(|k| !got.contains_key(*k))
        .map(|k| &want[k]["path"])
        .collect();
    let extra: Vec<_> = got
        .keys()
        .filter(|k| !want.contains_key(*k))
        .map(|k| &got[k]["path"])
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, unexpected {extra:?}"
    );
    for (k, w) in &want {
        assert_eq!(
            &got[k], w,
            "restored {} differs from the manifest",
            w["path"]
        );
    }
    // No object was left in the repository copy (restoring writes only its lock, removed
    // again when released).
    assert!(repo.list_ids(FileKind::Lock).unwrap().is_empty());
}

#[test]
fn fixture_v1_objects_are_intact() {
    objects_are_intact(&V1);
}

#[test]
fn fixture_v2_objects_are_intact() {
    objects_are_intact(&V2);
}

#[test]
fn fixture_v3_objects_are_intact() {
    objects_are_intact(&V3);
}

#[test]
fn fixture_v4_objects_are_intact() {
    objects_are_intact(&V4);
}

#[test]
fn fixture_v5_objects_are_intact() {
    objects_are_intact(&V5);
}

fn objects_are_intact(f: &Fixture) {
    // Every object's name is the BLAKE3 of its bytes; the fixture is under 1 MiB.
    let dir = fixture_dir(f);
    let mut total = 0u64;
    for (rel, m) in walk(&dir) {
        if !m.is_file() {
            continue;
        }
        total += m.len();
        let name = rel.file_name().unwrap().to_str().unwrap().to_owned();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_str()
            .unwrap()
            .to_owned();
        let kind = match top.as_str() {
            "keys" => FileKind::Key,
            "snapshots" => FileKind::Snapshot,
            "index" => FileKind::Index,
            "data" => FileKind::Pack,
            "locks" => panic!("the fixture must not contain a lock: {}", rel.display()),
            _ => continue, // config, README.md, manifest.json
        };
        let data = fs::read(dir.join(&rel)).unwrap();
        cairn_engine::verify_name(kind, &name, &data).unwrap();
        let (version, _) = cairn_format::check_preamble(&data, kind).unwrap();
        assert_eq!(
            version,
            cairn_format::object_version(kind, f.version),
            "{}",
            rel.display()
        );
    }
    assert!(total < 1 << 20, "the fixture grew to {total} bytes");
}

#[test]
fn source_tree_generator_still_matches_the_manifest() {
    // The generator is the documentation of how the fixture's content was made: it must keep
    // producing exactly the manifest (names, modes, sizes, hashes, times).
    for f in [&V1, &V2, &V3, &V4, &V5] {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        build_source_tree(&src, f.version);
        let manifest = load_manifest(f);
        let want = manifest["entries"].as_array().unwrap();
        assert_eq!(&manifest_of(&src), want, "fixture v{}", f.version);
    }
}
