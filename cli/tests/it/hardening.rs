//! Hostile inputs and damaged repositories: deep trees, killed writers, damaged objects,
//! resource claims, odd restore paths, growing files. Each test here failed before its fix.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use cairn_format::{
    encode_sealed, BlobType, FileKind, Id, IndexFile, IndexPack, KdfParams, KeyFile, NodeKind,
    PackEntry, Snapshot, Timestamp, Tree,
};
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{mkdirat, Mode};

use crate::errors::{as_nobody, chown_nobody};
use crate::util::{random_bytes, s, write_file, Env, Forger};

fn open_dir(p: &Path) -> OwnedFd {
    File::open(p).unwrap().into()
}

fn sub_dir(fd: &OwnedFd, name: &str) -> OwnedFd {
    openat(
        fd,
        name,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY,
        Mode::empty(),
    )
    .unwrap()
}

/// `root/name/name/…` `depth` levels deep (built relative to each level: the path is far
/// beyond PATH_MAX), with a file `leaf` at the bottom and `mid` halfway.
fn make_deep(root: &Path, depth: usize, name: &str) {
    fs::create_dir_all(root).unwrap();
    let mut fd = open_dir(root);
    for i in 0..depth {
        mkdirat(&fd, name, Mode::from_bits_truncate(0o750)).unwrap();
        fd = sub_dir(&fd, name);
        if i == depth / 2 {
            let f = openat(
                &fd,
                "mid",
                OFlag::O_CREAT | OFlag::O_WRONLY,
                Mode::from_bits_truncate(0o640),
            )
            .unwrap();
            File::from(f).write_all(b"halfway down").unwrap();
        }
    }
    let f = openat(
        &fd,
        "leaf",
        OFlag::O_CREAT | OFlag::O_WRONLY,
        Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    File::from(f).write_all(b"at the bottom").unwrap();
}

/// How deep `root/name/name/…` goes, and the contents of `mid` and `leaf` found on the way.
fn read_deep(root: &Path, name: &str) -> (usize, Vec<u8>, Vec<u8>) {
    let mut fd = open_dir(root);
    let mut depth = 0;
    let (mut mid, mut leaf) = (Vec::new(), Vec::new());
    loop {
        if let Ok(f) = openat(&fd, "mid", OFlag::O_RDONLY, Mode::empty()) {
            File::from(f).read_to_end(&mut mid).unwrap();
        }
        match openat(
            &fd,
            name,
            OFlag::O_DIRECTORY | OFlag::O_RDONLY,
            Mode::empty(),
        ) {
            Ok(sub) => {
                fd = sub;
                depth += 1;
            }
            Err(_) => break,
        }
    }
    if let Ok(f) = openat(&fd, "leaf", OFlag::O_RDONLY, Mode::empty()) {
        File::from(f).read_to_end(&mut leaf).unwrap();
    }
    (depth, mid, leaf)
}

/// Remove `root/name/name/…` without recursion (std's `remove_dir_all` recurses once per
/// level and overflows the test thread's stack at this depth): pull each level up to the top.
fn remove_deep(root: &Path, name: &str) {
    let top = root.join(name);
    let tmp = root.join(".pulled-up");
    while fs::rename(top.join(name), &tmp).is_ok() {
        fs::remove_dir_all(&top).unwrap();
        fs::rename(&tmp, &top).unwrap();
    }
    let _ = fs::remove_dir_all(&top);
}

#[test]
fn tree_deeper_than_path_max_backs_up_and_restores() {
    let env = Env::new();
    let src = env.path("src");
    // 2500 levels of "dd/": 7.5 KB of path, far beyond PATH_MAX (4096).
    make_deep(&src, 2500, "dd");
    let summary = env.backup(&[s(&src)]);
    assert_eq!(summary["errors"], 0, "{summary}");
    assert!(summary["dirs_new"].as_u64().unwrap() >= 2500, "{summary}");
    let target = env.path("restored");
    env.ok(&["restore", "latest", "--target", s(&target)]);
    let restored = target.join(src.strip_prefix("/").unwrap());
    assert_eq!(
        read_deep(&restored, "dd"),
        (2500, b"halfway down".to_vec(), b"at the bottom".to_vec())
    );
    // ls walks it too, and an unchanged re-backup finds everything.
    let again = env.backup(&[s(&src)]);
    assert_eq!(again["data_blobs"], 0, "{again}");
    assert_eq!(again["files_unmodified"], 2, "{again}");
    env.ok(&["check", "--read-data"]);
    remove_deep(&restored, "dd");
    remove_deep(&src, "dd");
}

#[test]
fn crafted_twenty_thousand_level_snapshot_restores() {
    let env = Env::new();
    let forger = Forger::new(&env);
    let leaf_data = b"deep inside".to_vec();
    let data_id = forger.store(&[(BlobType::Data, leaf_data.clone())])[0];
    let mut leaf = Forger::node(b"leaf", NodeKind::File);
    leaf.size = leaf_data.len() as u64;
    leaf.content = cairn_format::Content::Blobs(vec![data_id]);
    // Bottom-up: each level is a tree holding one directory `d` pointing at the one below.
    let mut trees = Vec::new();
    let mut below = cairn_format::to_postcard(&Tree { nodes: vec![leaf] });
    const DEPTH: usize = 20_000;
    for _ in 0..DEPTH {
        let id = forger.key.blob_id(&below);
        trees.push((BlobType::Tree, below));
        let mut d = Forger::node(b"d", NodeKind::Dir);
        d.subtree = Some(id);
        below = cairn_format::to_postcard(&Tree { nodes: vec![d] });
    }
    let root = forger.key.blob_id(&below);
    trees.push((BlobType::Tree, below));
    for chunk in trees.chunks(5000) {
        forger.store(chunk);
    }
    let snap = snapshot_of(root, "deep");
    forger.put(
        "snapshots",
        &encode_sealed(&forger.key, FileKind::Snapshot, &snap, 3),
    );
    let target = env.path("restored");
    let started = Instant::now();
    env.ok(&["restore", "latest", "--target", s(&target)]);
    eprintln!("restored {DEPTH} levels in {:.1?}", started.elapsed());
    let (depth, _, leaf) = read_deep(&target, "d");
    assert_eq!(depth, DEPTH);
    assert_eq!(leaf, leaf_data);
    // check and ls walk it without overflowing either.
    env.ok(&["check"]);
    let listed = env.ok(&["ls", "latest", "--recursive"]);
    assert_eq!(listed.stdout.lines().count(), DEPTH + 1);
    remove_deep(&target, "d");
}

fn snapshot_of(tree: Id, host: &str) -> Snapshot {
    Snapshot {
        time: Timestamp {
            unix_nanos: 1_700_000_000_000_000_000,
            utc_offset_secs: 0,
        },
        parent: None,
        tree,
        paths: vec![b"/x".to_vec()],
        hostname: host.to_owned(),
        username: "mallory".into(),
        uid: 0,
        gid: 0,
        tags: Vec::new(),
        excludes: Vec::new(),
        program_version: "forged".into(),
        summary: None,
    }
}

/// `.tmp-*` files anywhere in the repository.
fn temp_files(repo: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(repo)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
        .map(|e| e.path().to_path_buf())
        .collect()
}

#[test]
fn killed_backups_and_prunes_leave_nothing_after_the_next_prune() {
    // Small packs: a backup has several temporary packs open or in flight at any time.
    let env = Env::with_init_args(&["--pack-size-mib", "1"]);
    let src = env.path("src");
    for i in 0..6 {
        write_file(
            &src.join(format!("f{i}.bin")),
            &random_bytes(6 << 20, 77 + i),
        );
    }
    let (mut killed_backups, mut killed_prunes) = (0, 0);
    let mut leaked_temp = 0;
    // Until 10 backups and 10 prunes were killed mid-run (a run that finishes before its kill
    // does not count), in a row on one repository.
    for round in 0..200u64 {
        if killed_backups >= 10 && killed_prunes >= 10 {
            break;
        }
        // Backups re-read everything (--force), so there is always work to interrupt; every
        // other round a forget + prune that repacks (--max-unused 0) runs instead.
        write_file(
            &src.join("changing.bin"),
            &random_bytes(4 << 20, 1000 + round),
        );
        let backup = if killed_backups >= 10 {
            false
        } else if killed_prunes >= 10 {
            true
        } else {
            round % 2 == 0
        };
        let args: &[&str] = if backup {
            &["backup", "--force", s(&src)]
        } else {
            &["forget", "--keep-last", "1", "--prune", "--max-unused", "0"]
        };
        let locks_before: Vec<PathBuf> = env.objects("locks");
        let mut child = env
            .cmd()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Wait until the run is under way (a backup has a pack in progress, a prune holds
        // its lock), then let it go on for a varying while before the kill.
        let start = Instant::now();
        while child.try_wait().unwrap().is_none() && start.elapsed() < Duration::from_secs(30) {
            let under_way = if backup {
                !temp_files(&env.repo.join("data")).is_empty()
            } else {
                env.objects("locks")
                    .iter()
                    .any(|l| !locks_before.contains(l))
            };
            if under_way {
                break;
            }
            std::thread::yield_now();
        }
        // A prune is over within milliseconds of taking its lock: kill it at once or soon.
        std::thread::sleep(if backup {
            Duration::from_millis((round * 53) % 120)
        } else {
            Duration::from_micros((round * 700) % 3000)
        });
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            if backup {
                killed_backups += 1;
            } else {
                killed_prunes += 1;
            }
        }
        child.wait().unwrap();
        leaked_temp = leaked_temp.max(temp_files(&env.repo).len());
    }
    eprintln!(
        "killed {killed_backups} backups and {killed_prunes} prunes; at most {leaked_temp} temp files left at once"
    );
    assert!(
        killed_backups >= 10 && killed_prunes >= 10,
        "too few runs were killed mid-way ({killed_backups} backups, {killed_prunes} prunes); the test tests little"
    );
    // Leftovers are reported by check and stats before prune removes them.
    let stats = env.json(&["stats"]);
    let leftover_locks = env.objects("locks").len();
    assert_eq!(
        stats["stale_locks"].as_u64().unwrap() as usize,
        leftover_locks,
        "{stats}"
    );
    assert_eq!(
        stats["leftover_temp_files"].as_u64().unwrap() as usize,
        temp_files(&env.repo).len(),
        "{stats}"
    );
    let report = env.json(&["prune"]);
    eprintln!("{report}");
    assert_eq!(
        temp_files(&env.repo),
        Vec::<PathBuf>::new(),
        "prune left temp files"
    );
    assert_eq!(
        fs::read_dir(env.repo.join("locks")).unwrap().count(),
        0,
        "prune left stale locks (or their temp files)"
    );
    let check = env.json(&["check", "--read-data"]);
    assert_eq!(check["ok"], true, "{check}");
    assert_eq!(check["report"]["leftover_temp_files"], 0, "{check}");
    assert_eq!(check["report"]["stale_locks"], 0, "{check}");
    // The next backup works and restores exactly.
    env.backup(&[s(&src)]);
    env.restore_latest_exact(&src, &env.path("restored"), &[]);
}

#[test]
fn running_writer_temp_files_survive_prune() {
    let env = Env::new();
    let src = env.path("src");
    write_file(&src.join("a"), b"a");
    env.backup(&[s(&src)]);
    // A temp file tagged with a live process on this host (this test) that holds no lock,
    // one of a dead process, and one of another host with no lock.
    let me = std::process::id();
    let tag = |host: &str, pid: u32| {
        let h = blake3_tag(host);
        format!("w{h}{pid:08x}")
    };
    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    let live = env
        .repo
        .join("data")
        .join(format!(".tmp-{}-pack-1", tag(&host, me)));
    let dead = env
        .repo
        .join("data")
        .join(format!(".tmp-{}-pack-2", tag(&host, 0x7fff_fff0)));
    let other = env
        .repo
        .join("index")
        .join(format!(".tmp-{}-3", tag("elsewhere", me)));
    let old_other = env
        .repo
        .join("index")
        .join(format!(".tmp-{}-4", tag("elsewhere", me + 1)));
    for p in [&live, &dead, &other, &old_other] {
        write_file(p, b"partial");
    }
    let long_ago = filetime::FileTime::from_unix_time(1_600_000_000, 0);
    filetime::set_file_mtime(&old_other, long_ago).unwrap();
    env.ok(&["prune"]);
    assert!(live.exists(), "prune removed a running writer's temp file");
    assert!(!dead.exists(), "prune kept a dead writer's temp file");
    assert!(
        other.exists(),
        "prune removed a fresh temp file of another host's writer"
    );
    assert!(
        !old_other.exists(),
        "prune kept an old temp file of another host's writer without a lock"
    );
}

/// The writer tag's host part: the first 4 bytes of BLAKE3(host), in hex (see
/// `cairn_engine::util::writer_tag`; recomputed here so a format change shows up).
fn blake3_tag(host: &str) -> String {
    let h = cairn_format::Id::of_object(host.as_bytes());
    h.to_hex()[..8].to_owned()
}

fn flip_byte(p: &Path, at: usize) {
    let mut b = fs::read(p).unwrap();
    let i = at.min(b.len() - 1);
    b[i] ^= 0x55;
    fs::write(p, b).unwrap();
}

#[test]
fn a_damaged_snapshot_index_or_lock_does_not_block_the_repository() {
    let env = Env::new();
    let src = env.path("src");
    write_file(&src.join("one"), &random_bytes(50_000, 1));
    env.backup(&[s(&src)]);
    write_file(&src.join("two"), &random_bytes(50_000, 2));
    env.backup(&[s(&src)]);

    // A damaged snapshot: listed around, named, and removed by repair snapshots.
    let snaps = env.objects("snapshots");
    flip_byte(&snaps[0], 40);
    let out = env.ok(&["snapshots", "--json"]);
    let listed: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{}", out.dump());
    assert!(out.stderr.contains("repair snapshots"), "{}", out.dump());
    let newest = env.backup(&[s(&src)])["snapshot_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // `latest` cannot be known while a snapshot's time does not read; by id it restores.
    env.run(&["restore", "latest", "--target", s(&env.path("r0"))])
        .assert_error(13, &["damaged", "latest"]);
    let spec = format!("{newest}:{}", s(&src));
    env.ok(&["restore", &spec, "--target", s(&env.path("r1"))]);
    crate::util::assert_trees_equal(&src, &env.path("r1"), false);
    env.run(&["prune"])
        .assert_reports(13, &["damaged", "repair snapshots"]);
    env.ok(&["repair", "snapshots", "--forget"]);
    env.ok(&["prune"]);

    // A damaged index file: backups and restores go on, prune refuses, repair index fixes it.
    let index = env.objects("index");
    flip_byte(&index[0], 30);
    env.backup(&[s(&src)]);
    env.restore_latest_exact(&src, &env.path("r2"), &[]);
    env.run(&["prune"]).assert_reports(13, &["repair index"]);
    env.ok(&["repair", "index"]);
    env.ok(&["prune"]);

    // A damaged lock: ignored, and prune removes it.
    let forger = Forger::new(&env);
    let lock = forger.put(
        "locks",
        b"cairnL\x01\x00 this is not a lock at all, only noise",
    );
    env.backup(&[s(&src)]);
    let out = env.json(&["prune"]);
    assert_eq!(out["report"]["stale_locks_removed"], 1, "{out}");
    assert!(!env.repo.join("locks").join(lock).exists());
    let check = env.json(&["check", "--read-data"]);
    assert_eq!(check["ok"], true, "{check}");
}

#[test]
fn lost_pack_is_repaired_and_new_backups_store_the_data_again() {
    let env = Env::with_init_args(&["--pack-size-mib", "1"]);
    let src = env.path("src");
    write_file(&src.join("keep.bin"), &random_bytes(3 << 20, 10));
    write_file(&src.join("gone.bin"), &random_bytes(3 << 20, 11));
    env.backup(&[s(&src)]);
    // Lose one pack holding part of gone.bin, and another holding part of keep.bin.
    let packs = env.objects("data");
    let gone_ids = content_of(&env, &src, "gone.bin");
    let keep_ids = content_of(&env, &src, "keep.bin");
    let locate = |blob: &str| -> (PathBuf, u64, u64) {
        let j = env.json(&["cat", "blob", blob]);
        let pack = j["pack"].as_str().unwrap().to_owned();
        let path = packs.iter().find(|p| p.ends_with(&pack)).unwrap().clone();
        (
            path,
            j["offset"].as_u64().unwrap(),
            j["length"].as_u64().unwrap(),
        )
    };
    // Blobs of both files are packed in parallel, and the chunker's seed is random per
    // repository: find a chunk of each file in two different packs (keep.bin's last
    // chunk first).
    let gone_packs: Vec<PathBuf> = gone_ids.iter().map(|id| locate(id).0).collect();
    let ((lost_b, off, len), lost_a) = keep_ids
        .iter()
        .rev()
        .map(|id| locate(id))
        .find_map(|b| {
            let a = gone_packs.iter().find(|p| **p != b.0)?.clone();
            Some((b, a))
        })
        .expect("keep.bin and gone.bin share every pack");
    fs::remove_file(&lost_a).unwrap();
    // Damage one of keep.bin's chunks itself (its pack's other blobs stay intact).
    flip_byte(&lost_b, (off + len / 2) as usize);

    // check says what happened and what to run.
    env.run(&["check", "--read-data"])
        .assert_reports(13, &["repair packs", "repair snapshots"]);

    // gone.bin disappears from the source; keep.bin is still there.
    fs::remove_file(src.join("gone.bin")).unwrap();
    let r = env.json(&["repair", "packs"]);
    assert_eq!(r["report"]["packs"].as_array().unwrap().len(), 2, "{r}");
    assert!(r["report"]["blobs_lost"].as_u64().unwrap() >= 2, "{r}");
    // The next backup stores keep.bin's lost chunk again instead of deduplicating against it.
    let b = env.backup(&[s(&src)]);
    assert!(b["data_blobs"].as_u64().unwrap() >= 1, "{b}");
    env.restore_latest_exact(&src, &env.path("r1"), &[]);
    // The first snapshot still names gone.bin's lost data: repair rewrites it.
    let r = env.json(&["repair", "snapshots", "--forget"]);
    assert_eq!(r["report"]["rewritten"].as_array().unwrap().len(), 1, "{r}");
    let dropped = r["report"]["paths_dropped"].to_string();
    assert!(
        dropped.contains("gone.bin") && !dropped.contains("keep.bin"),
        "{r}"
    );
    let check = env.json(&["check", "--read-data"]);
    assert_eq!(check["ok"], true, "{check}");
    // Every snapshot restores; the repaired one holds keep.bin whole.
    for snap in env.snapshots::<&str>(&[]) {
        let id = snap["short_id"].as_str().unwrap().to_owned();
        let t = env.path(&format!("r-{id}"));
        env.ok(&["restore", &id, "--target", s(&t)]);
        let kept = t.join(src.strip_prefix("/").unwrap()).join("keep.bin");
        assert_eq!(fs::read(kept).unwrap(), random_bytes(3 << 20, 10));
    }
    env.ok(&["prune"]);
}

#[test]
fn lost_index_file_is_reindexed_not_forgotten() {
    // One index file lost, every pack intact: the data is all there, only unindexed. check
    // must lead to `repair index`, and the repairs that assume a loss must refuse, or
    // following them (repair snapshots --forget, then prune) would delete intact data.
    let env = Env::with_init_args(&["--pack-size-mib", "1"]);
    let src = env.path("src");
    write_file(&src.join("a.bin"), &random_bytes(2 << 20, 20));
    env.backup(&[s(&src)]);
    write_file(&src.join("b.bin"), &random_bytes(2 << 20, 21));
    env.backup(&[s(&src)]);
    let mut index = env.objects("index");
    index.sort_by_key(|p| fs::metadata(p).unwrap().modified().unwrap());
    fs::remove_file(index.last().unwrap()).unwrap();

    let out = env.run(&["check"]);
    out.assert_reports(13, &["not in the index", "repair index"]);
    assert!(
        !out.stderr.contains("repair snapshots"),
        "check advises a repair that drops intact data\n{}",
        out.dump()
    );
    env.run(&["repair", "snapshots", "--forget"])
        .assert_error(13, &["not indexed", "repair index"]);
    env.run(&["prune"]).expect_code(13);
    env.ok(&["repair", "index"]);
    let check = env.json(&["check", "--read-data"]);
    assert_eq!(check["ok"], true, "{check}");
    env.restore_latest_exact(&src, &env.path("r"), &[]);
}

#[test]
fn backup_after_a_lost_pack_stores_its_data_again() {
    // Deduplicating against an index entry whose pack is gone would make every later
    // snapshot unrestorable while each backup reports success.
    let env = Env::with_init_args(&["--pack-size-mib", "1"]);
    let src = env.path("src");
    write_file(&src.join("a.bin"), &random_bytes(3 << 20, 30));
    env.backup(&[s(&src)]);
    let mut packs = env.objects("data");
    packs.sort();
    fs::remove_file(&packs[0]).unwrap();
    let out = env.run(&["backup", s(&src)]);
    out.assert_reports(0, &["missing from the repository", "cairn check"]);
    env.restore_latest_exact(&src, &env.path("r"), &[]);
}

#[test]
fn damaged_newest_snapshot_is_not_replaced_by_an_older_one() {
    // The damaged file may be the newest snapshot: `latest` must not quietly mean the one
    // before it (a restore of older data, a cluster reset to an older state).
    let env = Env::new();
    let src = env.path("src");
    write_file(&src.join("f"), b"night 1");
    env.backup(&[s(&src)]);
    let first = env.snapshots::<&str>(&[])[0]["short_id"]
        .as_str()
        .unwrap()
        .to_owned();
    write_file(&src.join("f"), b"night 2");
    env.backup(&[s(&src)]);
    let newest = env
        .objects("snapshots")
        .into_iter()
        .find(|p| !p.file_name().unwrap().to_str().unwrap().starts_with(&first))
        .unwrap();
    let len = fs::metadata(&newest).unwrap().len() as usize;
    flip_byte(&newest, len / 2);
    let target = env.path("r");
    env.run(&["restore", "latest", "--target", s(&target)])
        .assert_error(13, &["damaged", "latest", "repair snapshots"]);
    assert!(!target.exists(), "nothing may be restored");
    env.run(&["ls", "latest"]).assert_error(13, &["damaged"]);
    // Named by id, the readable snapshot still restores.
    env.ok(&["restore", &first, "--target", s(&target)]);
    let f = target.join(src.strip_prefix("/").unwrap()).join("f");
    assert_eq!(fs::read(f).unwrap(), b"night 1");
}

#[test]
fn unreadable_pack_is_an_error_not_damage() {
    // Permission denied says nothing about a pack's data: check must not prescribe
    // `repair packs` (which drops its blobs), and `repair index` must not write an index
    // without it.
    let env = Env::new();
    fs::set_permissions(env.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let src = env.path("src");
    write_file(&src.join("f.bin"), &random_bytes(1 << 20, 40));
    env.backup(&[s(&src)]);
    for e in walkdir::WalkDir::new(&env.repo) {
        crate::errors::chown_nobody(e.unwrap().path());
    }
    let pack = env.objects("data").remove(0);
    fs::set_permissions(&pack, fs::Permissions::from_mode(0o000)).unwrap();
    let index_before = env.objects("index");
    for args in [
        &["check"][..],
        &["check", "--read-data"],
        &["repair", "index"],
    ] {
        let out = crate::errors::as_nobody(&env, args);
        out.assert_error(1, &["permission denied"]);
        assert!(!out.stderr.contains("repair packs"), "{}", out.dump());
    }
    assert_eq!(env.objects("index"), index_before);
    fs::set_permissions(&pack, fs::Permissions::from_mode(0o644)).unwrap();
    let check = env.json(&["check", "--read-data"]);
    assert_eq!(check["ok"], true, "{check}");
}

#[test]
fn stray_files_in_the_repository_are_ignored() {
    // A file with a short hex name (or a directory with an id's name) is not an object:
    // listed as one, it failed to parse and stopped every command, `unlock` included.
    let env = Env::new();
    let src = env.path("src");
    write_file(&src.join("f"), b"data");
    env.backup(&[s(&src)]);
    let id_like = "ab".repeat(32);
    for stray in [
        "locks/abcdef",
        "snapshots/abcdef",
        "index/ABCDEF",
        "data/ab/abcdef",
        "keys/0123",
    ] {
        write_file(&env.repo.join(stray), b"x");
    }
    fs::create_dir(env.repo.join("locks").join(&id_like)).unwrap();
    fs::create_dir(env.repo.join("snapshots").join(&id_like)).unwrap();
    env.backup(&[s(&src)]);
    assert_eq!(env.snapshots::<&str>(&[]).len(), 2);
    let check = env.json(&["check", "--read-data"]);
    assert_eq!(check["ok"], true, "{check}");
    env.ok(&["unlock"]);
    env.ok(&["forget", "--keep-last", "1", "--prune"]);
    env.restore_latest_exact(&src, &env.path("r"), &[]);
}

#[test]
fn no_lock_reads_a_repository_where_no_lock_can_be_written() {
    // Read-only storage (here: a user who may read but not write the repository) must still
    // restore and check; what writes must refuse to run unlocked.
    let env = Env::new();
    fs::set_permissions(env.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let src = env.path("src");
    write_file(&src.join("f.bin"), &random_bytes(100_000, 50));
    env.backup(&[s(&src)]);
    for e in walkdir::WalkDir::new(&env.repo) {
        let p = e.unwrap().into_path();
        let mode = if p.is_dir() { 0o755 } else { 0o644 };
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    }
    let target = env.path("target");
    fs::create_dir(&target).unwrap();
    crate::errors::chown_nobody(&target);
    let spec = format!("latest:{}", s(&src));
    crate::errors::as_nobody(&env, &["restore", &spec, "--target", s(&target)]).expect_code(1);
    let out = crate::errors::as_nobody(
        &env,
        &["--no-lock", "restore", &spec, "--target", s(&target)],
    );
    out.expect_code(0);
    // (Owners differ: an unprivileged restore cannot give files away.)
    assert_eq!(
        fs::read(target.join("f.bin")).unwrap(),
        random_bytes(100_000, 50)
    );
    crate::errors::as_nobody(&env, &["--no-lock", "check", "--read-data"]).expect_code(0);
    crate::errors::as_nobody(&env, &["--no-lock", "backup", s(&src)])
        .assert_error(1, &["needs a lock", "--no-lock"]);
    assert!(env.objects("locks").is_empty());
}

#[test]
fn json_restore_names_each_file_it_could_not_write() {
    let env = Env::new();
    let src = env.path("src");
    write_file(&src.join("f"), b"data");
    write_file(&src.join("g"), b"more");
    env.backup(&[s(&src)]);
    let target = env.path("t");
    fs::create_dir_all(target.join("f").join("in-the-way")).unwrap();
    let spec = format!("latest:{}", s(&src));
    let out = env.run(&["--json", "restore", &spec, "--target", s(&target)]);
    out.expect_code(3);
    let errors: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message_type"] == "restore_error")
        .collect();
    assert_eq!(errors.len(), 1, "{}", out.dump());
    assert_eq!(errors[0]["path"], s(&target.join("f")), "{}", out.dump());
    assert!(errors[0]["error"].as_str().unwrap().contains("directory"));
    assert_eq!(fs::read(target.join("g")).unwrap(), b"more");
    // --delete removes what the snapshot does not have, a directory in a file's place too
    // (and the dry run says so).
    let dry = env.ok(&[
        "restore",
        &spec,
        "--target",
        s(&target),
        "--delete",
        "--dry-run",
    ]);
    assert!(
        dry.stdout
            .contains(&format!("would delete {}", s(&target.join("f")))),
        "{}",
        dry.dump()
    );
    env.ok(&["restore", &spec, "--target", s(&target), "--delete"]);
    assert_eq!(fs::read(target.join("f")).unwrap(), b"data");
}

/// The data blob ids of `file` in the latest snapshot.
fn content_of(env: &Env, src: &Path, file: &str) -> Vec<String> {
    let dir = format!("latest:{}", s(src));
    let t = env.json(&["cat", "tree", &dir]);
    let node = t["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == file)
        .unwrap()
        .clone();
    node["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| match v {
            serde_json::Value::String(h) => h.clone(),
            // Ids serialize as byte arrays.
            serde_json::Value::Array(b) => b
                .iter()
                .map(|x| format!("{:02x}", x.as_u64().unwrap()))
                .collect(),
            other => panic!("unexpected id {other}"),
        })
        .collect()
}

#[test]
fn claims_beyond_the_format_limits_are_refused_without_allocating() {
    let env = Env::new();
    let src = env.path("src");
    write_file(&src.join("f"), b"small");
    env.backup(&[s(&src)]);
    let forger = Forger::new(&env);

    // An index entry claiming a 4 GiB blob.
    let ids = forger.store(&[(BlobType::Data, b"hello".to_vec())]);
    let idx = IndexFile {
        supersedes: Vec::new(),
        packs: vec![IndexPack {
            condemned: None,
            id: Id([7; 32]),
            blobs: vec![PackEntry {
                blob_type: BlobType::Data,
                id: Id([9; 32]),
                offset: 8,
                length: u32::MAX,
                raw_length: u32::MAX,
                group_offset: None,
            }],
        }],
    };
    let name = forger.put("index", &idx.encode_sealed(&forger.key, 1, 3).unwrap());
    let out = env.run(&["cat", "blob", &"09".repeat(32)]);
    assert_ne!(out.code, 0, "{}", out.dump());
    assert!(out.stderr.contains("limit"), "{}", out.dump());
    env.run(&["prune"])
        .assert_reports(13, &["limit", "repair index"]);
    env.run(&["check"])
        .assert_reports(13, &["limit", "repair index"]);
    fs::remove_file(env.repo.join("index").join(name)).unwrap();
    let _ = ids;

    // A snapshot that inflates to 64 MiB (a few KiB stored): skipped, named.
    let mut bomb = snapshot_of(Id([1; 32]), "bomb");
    bomb.tags = vec!["x".repeat(64 << 20)];
    let name = forger.put(
        "snapshots",
        &encode_sealed(&forger.key, FileKind::Snapshot, &bomb, 3),
    );
    assert!(
        fs::metadata(env.repo.join("snapshots").join(&name))
            .unwrap()
            .len()
            < 1 << 20
    );
    let out = env.ok(&["snapshots", "--json"]);
    assert!(
        out.stderr.contains(&name[..8]) && out.stderr.contains("larger"),
        "{}",
        out.dump()
    );
    fs::remove_file(env.repo.join("snapshots").join(name)).unwrap();

    // A planted key file asking Argon2id for 1 GiB: never derived. The real key (cheaper,
    // so tried first) opens at once; a wrong password skips the planted one with a warning.
    let kf = KeyFile {
        created: Timestamp {
            unix_nanos: 0,
            utc_offset_secs: 0,
        },
        hostname: "mallory".into(),
        username: "mallory".into(),
        kdf: KdfParams::new(1 << 20, 3, 4),
        wrapped: vec![0; 72],
    };
    let bytes = kf.encode();
    let name = Id::of_object(&bytes).to_hex();
    write_file(&env.repo.join("keys").join(&name), &bytes);
    let started = Instant::now();
    env.ok(&["snapshots"]);
    let out = env.run_pw("not the password", &["snapshots"]);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    out.assert_reports(12, &["outside the allowed range", "wrong password"]);
    env.run(&["check"])
        .assert_reports(13, &["outside the allowed range"]);
    fs::remove_file(env.repo.join("keys").join(name)).unwrap();

    // A file node claiming 1 TiB over 5 bytes of data: damage for restore and for check,
    // and no 1 TiB sparse file appears.
    let mut f = Forger::node(b"huge", NodeKind::File);
    f.size = 1 << 40;
    f.content = cairn_format::Content::Blobs(forger.store(&[(BlobType::Data, b"12345".to_vec())]));
    forger.snapshot(vec![f], "liar");
    let target = env.path("restored");
    env.run(&[
        "restore",
        "latest",
        "--host",
        "liar",
        "--target",
        s(&target),
    ])
    .assert_reports(13, &["damaged"]);
    assert!(
        !target.join("x/huge").exists()
            || fs::metadata(target.join("x/huge")).unwrap().len() < 1 << 20
    );
    env.run(&["check"])
        .assert_reports(13, &["size 1099511627776"]);
}

/// Content lists (format 4) that lie: a data blob named as a list, a list naming a tree as
/// data, a list whose blobs hold less than the node claims, a tree-type blob that is not a
/// list. Each is damage for restore and check (exit 13), never data, and no huge file.
#[test]
fn lying_content_lists_are_damage() {
    use cairn_format::{encode_content_list, Content};
    let env = Env::new();
    let src = env.path("src");
    write_file(&src.join("f"), b"small");
    env.backup(&[s(&src)]);
    let forger = Forger::new(&env);
    let data = forger.store(&[(BlobType::Data, b"12345".to_vec())])[0];
    let tree = forger.store(&[(BlobType::Tree, Tree::default().encode())])[0];
    let lists = forger.store(&[
        (BlobType::Tree, encode_content_list(&[tree])),
        (BlobType::Tree, encode_content_list(&[data, data])),
        (BlobType::Tree, b"\x00L\x04\x00not a list".to_vec()),
    ]);
    let file = |name: &[u8], size: u64, content: Content| {
        let mut n = Forger::node(name, NodeKind::File);
        n.size = size;
        n.content = content;
        n
    };
    forger.snapshot(
        vec![
            file(b"data-as-list", 5, Content::Lists(vec![data])),
            file(b"not-a-list", 5, Content::Lists(vec![lists[2]])),
            file(b"short", 1 << 40, Content::Lists(vec![lists[1]])),
            file(b"tree-in-list", 1, Content::Lists(vec![lists[0]])),
        ],
        "lists",
    );
    let target = env.path("restored");
    env.run(&[
        "restore",
        "latest",
        "--host",
        "lists",
        "--target",
        s(&target),
    ])
    .assert_reports(13, &["damaged"]);
    for name in ["data-as-list", "not-a-list", "short", "tree-in-list"] {
        let p = target.join("x").join(name);
        assert!(
            !p.exists() || fs::metadata(&p).unwrap().len() <= 10,
            "{name} was restored as data"
        );
    }
    env.run(&["check"]).assert_reports(
        13,
        &[
            "is a Data blob, not Tree",
            "content list",
            "size 1099511627776",
            "is not indexed",
        ],
    );
}

#[test]
fn restore_refuses_dot_dot_in_the_snapshot_path() {
    let env = Env::new();
    let src = env.path("src");
    write_file(&src.join("a/f"), b"f");
    env.backup(&[s(&src)]);
    let target = env.path("t");
    let spec = format!("latest:{}/a/../..", s(&src));
    env.run(&["restore", &spec, "--target", s(&target)])
        .assert_error(1, &["'..'"]);
    assert!(!target.join("f").exists());
    env.run(&["ls", &spec]).assert_error(1, &["'..'"]);
}

#[test]
fn non_root_restore_runs_again_into_read_only_directories() {
    let env = Env::new();
    // The temp dir is 0700 root: let the unprivileged user in.
    fs::set_permissions(env.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let src = env.path("src");
    write_file(&src.join("ro/inner/file"), b"content");
    write_file(&src.join("ro/file2"), b"more");
    fs::set_permissions(src.join("ro/inner"), fs::Permissions::from_mode(0o555)).unwrap();
    fs::set_permissions(src.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
    env.backup(&[s(&src)]);
    // The repository must be readable by nobody for this test.
    for e in walkdir::WalkDir::new(&env.repo) {
        chown_nobody(e.unwrap().path());
    }
    let target = env.path("target");
    fs::create_dir(&target).unwrap();
    chown_nobody(&target);
    let sub = format!("latest:{}", s(&src));
    for run in 0..2 {
        let out = as_nobody(&env, &["restore", &sub, "--target", s(&target)]);
        assert_eq!(out.code, 0, "run {run}: {}", out.dump());
    }
    assert_eq!(fs::read(target.join("ro/inner/file")).unwrap(), b"content");
    let mode = fs::metadata(target.join("ro/inner"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o555);
    // A failure names its path once.
    fs::set_permissions(target.join("ro"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::remove_file(target.join("ro/file2")).unwrap();
    fs::create_dir(target.join("ro/file2")).unwrap();
    write_file(&target.join("ro/file2/blocker"), b"x");
    chown_nobody(&target.join("ro/file2"));
    let out = as_nobody(&env, &["restore", &sub, "--target", s(&target)]);
    let line = out
        .stderr
        .lines()
        .find(|l| l.contains("file2"))
        .unwrap_or_else(|| panic!("{}", out.dump()));
    assert_eq!(line.matches("file2").count(), 1, "{line}");
}

#[test]
fn a_growing_file_is_read_to_its_size_at_open() {
    let env = Env::new();
    let src = env.path("src");
    let path = src.join("growing.log");
    write_file(&path, &random_bytes(32 << 20, 5));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (path, stop) = (path.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut f = fs::OpenOptions::new().append(true).open(path).unwrap();
            let chunk = random_bytes(256 << 10, 6);
            let mut written = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && written < 512 << 20 {
                f.write_all(&chunk).unwrap();
                written += chunk.len() as u64;
            }
        })
    };
    let out = env.run(&["backup", s(&src)]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert_eq!(out.code, 3, "{}", out.dump());
    let warn = out
        .stderr
        .lines()
        .find(|l| l.contains("changed while it was read"))
        .unwrap_or_else(|| panic!("{}", out.dump()));
    // "(N bytes before, M read, K after)": exactly what the file held when it was opened,
    // and more by the end.
    let nums: Vec<u64> = warn
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|t| t.parse().ok())
        .collect();
    assert!(nums.len() >= 3, "{warn}");
    let [before, read, after] = [0, 1, 2].map(|i| nums[nums.len() - 3 + i]);
    assert_eq!(before, read, "{warn}");
    assert!(after >= read, "{warn}");
}

#[test]
fn length_mismatch_is_reported_as_such() {
    let env = Env::new();
    let src = env.path("src");
    write_file(&src.join("f"), b"x");
    env.backup(&[s(&src)]);
    let forger = Forger::new(&env);
    let plain = b"twelve bytes".to_vec();
    let id = forger.key.blob_id(&plain);
    // A correct pack, but an index that says the blob is 11 bytes long.
    forger.store(&[(BlobType::Data, plain)]);
    for p in env.objects("index") {
        let bytes = fs::read(&p).unwrap();
        let mut f: IndexFile = IndexFile::decode_sealed(&forger.key, &bytes).unwrap();
        let mut changed = false;
        for e in f.packs.iter_mut().flat_map(|p| p.blobs.iter_mut()) {
            if e.id == id {
                e.raw_length = 13;
                changed = true;
            }
        }
        if changed {
            fs::remove_file(&p).unwrap();
            forger.put("index", &f.encode_sealed(&forger.key, 1, 3).unwrap());
        }
    }
    let out = env.run(&["cat", "blob", &id.to_hex()]);
    assert_eq!(out.code, 13, "{}", out.dump());
    assert!(
        out.stderr.contains("12 bytes long") && out.stderr.contains("says 13"),
        "{}",
        out.dump()
    );
    assert!(!out.stderr.contains("hashes to"), "{}", out.dump());
}
