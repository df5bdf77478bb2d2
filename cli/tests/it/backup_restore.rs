//! Round trip of a tree with every kind of node and metadata, restored exactly.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use filetime::FileTime;

use crate::util::{assert_trees_equal, random_bytes, rel_to_root, s, write_file, Env};

/// Size of the sparse file and where its only data sits.
const SPARSE_SIZE: u64 = 64 << 20;
const SPARSE_DATA_AT: u64 = 40 << 20;
/// Random file spanning several chunks (the chunker's average is 1 MiB, minimum 512 KiB).
const BIG_SIZE: usize = 5 << 20;

fn name(bytes: &[u8]) -> &OsStr {
    OsStr::from_bytes(bytes)
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

fn lchown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
}

/// Build the source tree under `root`; returns the path of the sparse file.
pub fn build_full_tree(root: &Path) -> PathBuf {
    fs::create_dir_all(root).unwrap();
    // Regular files.
    write_file(&root.join("empty"), b"");
    write_file(&root.join("small.txt"), b"hello, cairn\n");
    write_file(&root.join("big.bin"), &random_bytes(BIG_SIZE, 1));
    // Nested and empty directories.
    write_file(&root.join("dir/a/b/c/deep.txt"), b"deep file\n");
    write_file(&root.join("dir/a/mid.txt"), &random_bytes(70_000, 2));
    fs::create_dir_all(root.join("emptydir")).unwrap();
    fs::create_dir_all(root.join("dir/a/b/empty-nested")).unwrap();
    // Symlinks: relative, absolute, dangling, non-UTF-8 target.
    symlink("small.txt", root.join("link-rel")).unwrap();
    symlink("../../small.txt", root.join("dir/a/link-up")).unwrap();
    symlink("/etc/hostname", root.join("link-abs")).unwrap();
    symlink("does/not/exist", root.join("link-dangling")).unwrap();
    symlink(name(b"odd-\xff-target"), root.join("link-bytes")).unwrap();
    // Hardlinks: a pair, and a triple spread over directories.
    write_file(&root.join("hl2-a"), b"two names\n");
    fs::hard_link(root.join("hl2-a"), root.join("hl2-b")).unwrap();
    write_file(&root.join("hl3-a"), &random_bytes(10_000, 3));
    fs::hard_link(root.join("hl3-a"), root.join("dir/hl3-b")).unwrap();
    fs::hard_link(root.join("hl3-a"), root.join("dir/a/b/hl3-c")).unwrap();
    // A FIFO.
    nix::unistd::mkfifo(
        &root.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    // Device nodes (we are root).
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    mknod(
        &root.join("chardev"),
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o620),
        makedev(1, 3),
    )
    .unwrap();
    mknod(
        &root.join("blockdev"),
        SFlag::S_IFBLK,
        Mode::from_bits_truncate(0o660),
        makedev(7, 200),
    )
    .unwrap();
    // A sparse file: a few bytes in the middle of a large hole.
    let sparse = root.join("sparse.img");
    {
        let f = File::create(&sparse).unwrap();
        f.set_len(SPARSE_SIZE).unwrap();
        f.write_all_at(b"data in the middle of a hole", SPARSE_DATA_AT)
            .unwrap();
        f.sync_all().unwrap();
    }
    // Extended attributes, text and binary, on files and a directory.
    xattr::set(root.join("small.txt"), "user.comment", b"a comment").unwrap();
    xattr::set(root.join("small.txt"), "user.binary", &[0u8, 1, 2, 0xff, 0]).unwrap();
    xattr::set(root.join("dir"), "user.dirattr", b"on a directory").unwrap();
    xattr::set(root.join("hl3-a"), "user.linked", b"shared by three names").unwrap();
    // Non-UTF-8 names.
    write_file(&root.join(name(b"caf\xe9.txt")), b"latin-1 name\n");
    fs::create_dir(root.join(name(b"\xff\xfe-dir"))).unwrap();
    write_file(
        &root.join(name(b"\xff\xfe-dir")).join(name(b"\x80\x81")),
        b"inside a non-UTF-8 dir\n",
    );
    // Unusual modes and owners (chown first: it clears set-uid bits).
    write_file(&root.join("private"), b"0600\n");
    chmod(&root.join("private"), 0o600);
    write_file(&root.join("script.sh"), b"#!/bin/sh\necho hi\n");
    chmod(&root.join("script.sh"), 0o755);
    write_file(&root.join("setuid"), b"set-uid\n");
    lchown(&root.join("setuid"), 1234, 2345);
    chmod(&root.join("setuid"), 0o4755);
    write_file(&root.join("setgid"), b"set-gid\n");
    chmod(&root.join("setgid"), 0o2750);
    write_file(&root.join("nothing"), b"mode 000\n");
    chmod(&root.join("nothing"), 0o000);
    fs::create_dir(root.join("sticky")).unwrap();
    write_file(&root.join("sticky/inside"), b"in a sticky dir\n");
    chmod(&root.join("sticky"), 0o1777);
    write_file(&root.join("owned"), b"owned by 1234:2345\n");
    lchown(&root.join("owned"), 1234, 2345);
    fs::create_dir(root.join("owned-dir")).unwrap();
    write_file(&root.join("owned-dir/f"), b"x");
    lchown(&root.join("owned-dir"), 1234, 2345);
    lchown(&root.join("link-rel"), 1234, 2345);
    chmod(&root.join("owned-dir"), 0o750);
    // Names with characters that are special to shells, globs and line-based output.
    write_file(&root.join("star*[x]?.txt"), b"glob characters\n");
    write_file(&root.join("new\nline"), b"newline in the name\n");
    write_file(&root.join("-dash"), b"leading dash\n");
    write_file(&root.join(" spaced name "), b"spaces\n");
    // Specific mtimes with nanoseconds on everything, directories last and deepest first.
    let mut entries: Vec<(PathBuf, bool, usize)> = walkdir::WalkDir::new(root)
        .into_iter()
        .map(|e| {
            let e = e.unwrap();
            (e.path().to_path_buf(), e.file_type().is_dir(), e.depth())
        })
        .collect();
    entries.sort_by_key(|(p, is_dir, depth)| (*is_dir, std::cmp::Reverse(*depth), p.clone()));
    for (i, (p, _, _)) in entries.iter().enumerate() {
        let secs = 1_600_000_000 + 86_400 * i as i64;
        let nanos = 123_456_789u32.wrapping_add(7_654_321 * i as u32) % 1_000_000_000;
        let t = FileTime::from_unix_time(secs, nanos);
        filetime::set_symlink_file_times(p, t, t)
            .unwrap_or_else(|e| panic!("utimes {}: {e}", p.display()));
    }
    // Times at and before the epoch.
    write_file(&root.join("epoch"), b"1970-01-01T00:00:00Z\n");
    let t = FileTime::from_unix_time(0, 0);
    filetime::set_symlink_file_times(root.join("epoch"), t, t).unwrap();
    write_file(&root.join("before-epoch"), b"1969\n");
    let t = FileTime::from_unix_time(-86_400 * 365 - 1, 250_000_001);
    filetime::set_symlink_file_times(root.join("before-epoch"), t, t).unwrap();
    // (Adding entries changed the root's mtime: set it again.)
    let t = FileTime::from_unix_time(1_500_000_000, 999_999_999);
    filetime::set_symlink_file_times(root, t, t).unwrap();
    sparse
}

#[test]
fn full_tree_round_trip() {
    let env = Env::new();
    let src = env.path("src");
    let sparse = build_full_tree(&src);
    // The test is only meaningful if the source really is sparse.
    let sm = fs::metadata(&sparse).unwrap();
    assert!(
        sm.blocks() * 512 < 1 << 20,
        "the source sparse file is not sparse ({} blocks)",
        sm.blocks()
    );

    let summary = env.backup(&[s(&src)]);
    assert_eq!(summary["errors"], 0, "{summary}");
    assert_eq!(summary["parent"], serde_json::Value::Null);

    // The big random file was cut into several chunks.
    let big = env.json(&["ls", &format!("latest:{}/big.bin", s(&src))]);
    let chunks = big[0]["content"].as_u64().unwrap();
    assert!(
        chunks >= 2,
        "a {BIG_SIZE}-byte random file should span several chunks, got {chunks}: {big}"
    );

    // 1. `latest` restores the absolute path under the target.
    let t1 = env.path("restore-full");
    env.ok(&["restore", "latest", "--target", s(&t1)]);
    let restored = t1.join(rel_to_root(&src));
    assert!(
        restored.is_dir(),
        "restore of latest did not place {} under the target",
        src.display()
    );
    assert_trees_equal(&src, &restored, true);
    // Nothing but the snapshot's path is in the target.
    let top: Vec<_> = fs::read_dir(&t1)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let first = rel_to_root(&src)
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_owned();
    assert_eq!(
        top,
        vec![first],
        "unexpected entries at the top of the target"
    );
    check_sparse_and_links(&restored);
    // The directories above src are recreated with their recorded mode and owner.
    for anc in src.ancestors().skip(1).filter(|a| *a != Path::new("/")) {
        let (m0, m1) = (
            fs::metadata(anc).unwrap(),
            fs::metadata(t1.join(rel_to_root(anc))).unwrap(),
        );
        assert_eq!(
            (m1.mode() & 0o7777, m1.uid(), m1.gid()),
            (m0.mode() & 0o7777, m0.uid(), m0.gid()),
            "restored ancestor {} has the wrong mode/owner",
            anc.display()
        );
    }

    // 2. `latest:/abs/src` restores the contents of src directly into the target.
    let t2 = env.path("restore-sub");
    env.ok(&[
        "restore",
        &format!("latest:{}", s(&src)),
        "--target",
        s(&t2),
    ]);
    assert!(
        t2.join("small.txt").is_file(),
        "restore of latest:{} did not put src's contents into the target",
        s(&src)
    );
    assert_trees_equal(&src, &t2, false);
    check_sparse_and_links(&t2);

    // 3. Restoring again over a tampered copy puts everything back.
    write_file(&t2.join("small.txt"), b"tampered");
    fs::set_permissions(t2.join("private"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::remove_file(t2.join("link-rel")).unwrap();
    write_file(&t2.join("link-rel"), b"now a file");
    fs::remove_file(t2.join("hl2-b")).unwrap();
    write_file(&t2.join("hl2-b"), b"no longer a hardlink");
    fs::remove_file(t2.join("big.bin")).unwrap();
    write_file(&t2.join("dir/a/mid.txt"), b"short");
    xattr::remove(t2.join("small.txt"), "user.comment").unwrap();
    env.restore_latest_exact(&src, &t2, &[]);
    check_sparse_and_links(&t2);
}

/// Modification times outside what fits in i64 nanoseconds since 1970 (1677..2262) are legal
/// on ext4 (up to 2446) and must not be silently changed.
#[test]
fn far_future_mtime_round_trip() {
    let env = Env::new();
    let src = env.path("src");
    write_file(&src.join("future"), b"from the future\n");
    // 2400-01-01T00:00:00.5Z
    let t = FileTime::from_unix_time(13_569_465_600, 500_000_000);
    filetime::set_symlink_file_times(src.join("future"), t, t).unwrap();
    let m = fs::metadata(src.join("future")).unwrap();
    assert_eq!(
        m.mtime(),
        13_569_465_600,
        "the file system cannot store the test's mtime"
    );
    let backup = env.run(&["backup", s(&src)]);
    if backup.code != 0 && backup.stderr.contains("future") {
        return; // refusing or warning about the unrepresentable time is fine too
    }
    backup.success();
    let target = env.path("restored");
    env.ok(&[
        "restore",
        &format!("latest:{}", s(&src)),
        "--target",
        s(&target),
    ]);
    let r = fs::metadata(target.join("future")).unwrap();
    assert_eq!(
        (r.mtime(), r.mtime_nsec()),
        (m.mtime(), m.mtime_nsec()),
        "the mtime of a file dated 2400-01-01 was silently changed by backup + restore (backup said:\n{})",
        backup.dump()
    );
}

fn check_sparse_and_links(root: &Path) {
    let m = fs::metadata(root.join("sparse.img")).unwrap();
    assert_eq!(m.len(), SPARSE_SIZE);
    assert!(
        m.blocks() * 512 <= 1 << 20,
        "restored sparse file allocates {} bytes for {} bytes of size: holes were not preserved",
        m.blocks() * 512,
        m.len()
    );
    let mut buf = [0u8; 28];
    File::open(root.join("sparse.img"))
        .unwrap()
        .read_exact_at(&mut buf, SPARSE_DATA_AT)
        .unwrap();
    assert_eq!(&buf, b"data in the middle of a hole");
    // Hardlinks share one inode within the restored tree, and have the right link count.
    let a = fs::metadata(root.join("hl3-a")).unwrap();
    for other in ["dir/hl3-b", "dir/a/b/hl3-c"] {
        assert_eq!(
            fs::metadata(root.join(other)).unwrap().ino(),
            a.ino(),
            "{other} is not a hardlink of hl3-a"
        );
    }
    assert_eq!(a.nlink(), 3);
    assert_eq!(
        fs::metadata(root.join("hl2-b")).unwrap().ino(),
        fs::metadata(root.join("hl2-a")).unwrap().ino()
    );
    // Special bits survived the chown.
    assert_eq!(
        fs::metadata(root.join("setuid")).unwrap().mode() & 0o7777,
        0o4755
    );
    assert_eq!(
        fs::metadata(root.join("sticky")).unwrap().mode() & 0o7777,
        0o1777
    );
}

#[test]
fn hard_linked_fifos_and_symlinks_stay_linked() {
    // Regular files were restored as hard-link groups; FIFOs and symlinks came back as
    // separate inodes.
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    nix::unistd::mkfifo(
        &src.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    fs::hard_link(src.join("fifo"), src.join("fifo2")).unwrap();
    symlink("somewhere", src.join("link")).unwrap();
    fs::hard_link(src.join("link"), src.join("link2")).unwrap();
    env.backup(&[s(&src)]);
    let target = env.path("r");
    env.restore_latest_exact(&src, &target, &[]);
    for (a, b) in [("fifo", "fifo2"), ("link", "link2")] {
        let (ma, mb) = (
            fs::symlink_metadata(target.join(a)).unwrap(),
            fs::symlink_metadata(target.join(b)).unwrap(),
        );
        assert_eq!(ma.ino(), mb.ino(), "{a} and {b} are no longer one inode");
        assert_eq!(ma.nlink(), 2);
    }
    assert_eq!(
        fs::read_link(target.join("link2")).unwrap(),
        Path::new("somewhere")
    );
    // `dump` as tar keeps them linked too: later names are link entries, which tar extracts
    // as hard links.
    let tar = env.path("out.tar");
    let mut c = env.cmd();
    c.args(["dump", "latest", s(&src)])
        .stdout(fs::File::create(&tar).unwrap());
    assert!(c.status().unwrap().success());
    let out = env.path("extracted");
    fs::create_dir_all(&out).unwrap();
    let st = std::process::Command::new("tar")
        .args(["-x", "-f", s(&tar), "-C", s(&out)])
        .status()
        .unwrap();
    assert!(st.success());
    for (a, b) in [("fifo", "fifo2"), ("link", "link2")] {
        let (ma, mb) = (
            fs::symlink_metadata(out.join("src").join(a)).unwrap(),
            fs::symlink_metadata(out.join("src").join(b)).unwrap(),
        );
        assert_eq!(ma.ino(), mb.ino(), "dump: {a} and {b} are not one inode");
    }
}

#[test]
fn stdin_backup_round_trip() {
    let env = Env::new();
    // A few MB of YAML-ish text with random parts.
    let mut data = Vec::new();
    let noise = random_bytes(1 << 20, 9);
    let mut i = 0usize;
    while data.len() < (3 << 20) + 12_345 {
        data.extend_from_slice(
            format!(
                "- name: item-{i}\n  value: \"{:02x}{:02x}{:02x}\"\n",
                noise[i % noise.len()],
                noise[(i * 7) % noise.len()],
                noise[(i * 13) % noise.len()]
            )
            .as_bytes(),
        );
        i += 1;
    }
    let out = env.run_stdin(
        &[
            "--json",
            "backup",
            "--stdin",
            "--stdin-filename",
            "manifests.yaml",
        ],
        data.clone(),
    );
    out.success();
    let summary = out.summary();
    assert_eq!(summary["files_new"], 1, "{summary}");
    assert_eq!(
        summary["total_bytes_processed"],
        data.len() as u64,
        "{summary}"
    );

    let ls = env.ok(&["ls", "latest"]);
    assert!(
        ls.stdout.lines().any(|l| l == "/manifests.yaml"),
        "ls latest does not show /manifests.yaml:\n{}",
        ls.stdout
    );
    let snaps = env.snapshots::<&str>(&[]);
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0]["paths"], serde_json::json!(["/manifests.yaml"]));

    let target = env.path("restored");
    env.ok(&["restore", "latest", "--target", s(&target)]);
    let got = fs::read(target.join("manifests.yaml")).unwrap();
    assert_eq!(
        got.len(),
        data.len(),
        "restored stdin data has the wrong length"
    );
    assert!(
        got == data,
        "restored stdin data differs from what was piped in"
    );
}

/// Backing up a path whose parent directory is reached through a symlink (`/var/run` ->
/// `/run` style) must give a snapshot that can be listed and restored.
#[test]
fn backup_through_a_symlinked_parent_is_restorable() {
    let env = Env::new();
    write_file(&env.path("real/sub/f.txt"), b"through a symlink\n");
    symlink("real", env.path("link")).unwrap();
    let path = env.path("link/sub");
    let backup = env.run(&["--json", "backup", s(&path)]);
    if backup.code != 0 {
        // Refusing is acceptable, if it says why.
        assert!(backup.stderr.contains("link"), "{}", backup.dump());
        return;
    }
    let ls = env.run(&["ls", "--recursive", "latest"]);
    ls.success();
    assert!(
        ls.stdout
            .lines()
            .any(|l| l == format!("{}/f.txt", s(&path))),
        "{}",
        ls.dump()
    );
    let target = env.path("restored");
    env.ok(&["restore", "latest", "--target", s(&target)]);
    assert_eq!(
        fs::read(target.join(rel_to_root(&path)).join("f.txt")).unwrap(),
        b"through a symlink\n"
    );
    let t2 = env.path("restored-sub");
    env.ok(&[
        "restore",
        &format!("latest:{}", s(&path)),
        "--target",
        s(&t2),
    ]);
    assert_trees_equal(&env.path("real/sub"), &t2, false);
}

/// SQLite databases are cut around their cells (many small blobs, restored in gathered
/// writes), and a vacuumed copy of a database stores little beyond the rows that changed.
#[test]
fn sqlite_databases_dedup_across_vacuum_and_restore_exactly() {
    let env = Env::new();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../repo-format/testdata/sqlite");
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::copy(fixtures.join("before.db"), src.join("state.db")).unwrap();
    let first = env.backup(&[s(&src)]);
    let pages = fs::metadata(src.join("state.db")).unwrap().len() / 4096;
    let blobs = first["data_blobs"].as_u64().unwrap();
    assert!(
        blobs > 2 * pages,
        "{blobs} blobs for {pages} pages: not cut by cells"
    );

    // The night after a VACUUM: most rows are stored already.
    fs::copy(fixtures.join("after.db"), src.join("state.db")).unwrap();
    let second = env.backup(&[s(&src)]);
    let added = second["data_added"].as_u64().unwrap();
    let size = fs::metadata(src.join("state.db")).unwrap().len();
    assert!(
        added * 3 < size,
        "a vacuumed database added {added} of {size} bytes"
    );

    let target = env.path("restored");
    env.restore_latest_exact(&src, &target, &[]);
}

/// Text (a log growing by appends, a kubectl export) is cut into smaller content-defined
/// chunks (512 KiB on average) than bulk data (1 MiB, at least 512 KiB), recognised by its
/// bytes, not its name; binary data keeps the bulk chunking.
#[test]
fn text_gets_smaller_chunks_than_bulk_data() {
    let env = Env::new();
    let src = env.path("src");
    // Log lines with random request ids: strictly periodic text would find fewer cut points
    // than the average promises, and make the chunk counts below a matter of luck.
    let mut log = String::new();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    while log.len() < 32 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        log.push_str(&format!(
            "2026-11-{:02}T03:{:02}:{:02}Z INFO request id={x:016x} path=/api/v1/items/{} took {}ms\n",
            1 + x % 28,
            (x >> 8) % 60,
            (x >> 16) % 60,
            (x >> 24) % 1000,
            (x >> 40) % 97
        ));
    }
    // No `.log` name: recognition is by content.
    write_file(&src.join("text/app.out"), log.as_bytes());
    // Data blobs under 512 KiB, the bulk minimum: only a file's last chunk can be that small
    // under bulk chunking; text chunks start at 128 KiB and about a third are below 512 KiB.
    let small_blobs = || -> usize {
        env.objects("index")
            .iter()
            .map(|f| {
                let name = f.file_name().unwrap().to_str().unwrap().to_owned();
                let index = env.json(&["cat", "index", &name]);
                index["packs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .flat_map(|p| p["blobs"].as_array().unwrap().clone())
                    .filter(|b| b["blob_type"] == "Data")
                    .filter(|b| b["raw_length"].as_u64().unwrap() < 512 << 10)
                    .count()
            })
            .sum()
    };
    let text = env.backup(&[s(&src.join("text"))]);
    let small_text = small_blobs();
    assert!(
        small_text >= 3,
        "{small_text} of {} chunks of 32 MiB of text are below 512 KiB: not cut as text",
        text["data_blobs"]
    );
    write_file(&src.join("bin/blob"), &random_bytes(32 << 20, 1));
    env.backup(&[s(&src.join("bin"))]);
    assert!(
        small_blobs() - small_text <= 1,
        "random bytes were cut into chunks below the bulk minimum"
    );

    // A night of appended lines: only the chunk that ended the old file changes, and text
    // chunks are at most 2 MiB (bulk ones: 8 MiB).
    let appended = "2026-11-22T03:00:00Z INFO one more line\n".repeat(500);
    log.push_str(&appended);
    write_file(&src.join("text/app.out"), log.as_bytes());
    let again = env.backup(&[s(&src.join("text"))]);
    let added = again["data_added"].as_u64().unwrap();
    assert!(
        added <= (2 << 20) + appended.len() as u64,
        "appending {} bytes to a 32 MiB log added {added} bytes",
        appended.len()
    );
    env.restore_latest_exact(&src.join("text"), &env.path("restored"), &[]);
}

/// A pack of many small files restores under a low open-file limit. Each restore task used to
/// keep every file it had written to open until its pack was done: 400 files in one pack
/// failed with EMFILE ("Too many open files") under `ulimit -n 64`.
#[test]
fn many_small_files_restore_under_a_low_open_file_limit() {
    let env = Env::new();
    let src = env.path("src");
    for i in 0..400u64 {
        write_file(&src.join(format!("f{i:04}")), &random_bytes(1500, i));
    }
    env.backup(&[s(&src)]);
    let target = env.path("restored");
    // `ulimit -n` lowers the soft and the hard limit, so cairn cannot raise it back.
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg("ulimit -n 40 && exec \"$0\" \"$@\"")
        .arg(crate::util::cairn_bin())
        .arg("-r")
        .arg(&env.repo)
        .args([
            "restore",
            &format!("latest:{}", s(&src)),
            "--target",
            s(&target),
        ])
        .env("CAIRN_PASSWORD", &env.password)
        .env("HOME", env.dir.path())
        .env_remove("CAIRN_REPOSITORY")
        .env_remove("CAIRN_PASSWORD_FILE")
        .env_remove("CAIRN_PASSWORD_COMMAND");
    crate::util::run_command(cmd, None).success();
    assert_trees_equal(&src, &target, false);
}

/// More files than one restore batch holds (4 096), in read-only and writable directories,
/// with hard links whose first file is several batches before them, a symlink and an empty
/// directory at the end, and a small file whose only block is zero (its length comes from
/// the writer, not from a pre-sized file): the streamed restore is exact, and `--delete`
/// with `--verify` in a second restore over it changes nothing and removes the stray file.
#[test]
fn restore_across_many_batches_is_exact() {
    let env = Env::new();
    let src = env.path("many");
    for d in 0..12 {
        let dir = src.join(format!("d{d:02}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..900 {
            write_file(
                &dir.join(format!("f{f:03}")),
                format!("{d} {f}\n").as_bytes(),
            );
        }
    }
    write_file(&src.join("d00/zero-block"), &[0u8; 4096]);
    for i in 0..5 {
        fs::hard_link(src.join("d00/f001"), src.join(format!("d11/link{i}"))).unwrap();
    }
    symlink("../d00/f000", src.join("d11/sym")).unwrap();
    fs::create_dir(src.join("d11/empty")).unwrap();
    for d in [3, 7] {
        chmod(&src.join(format!("d{d:02}")), 0o555);
    }
    env.backup(&[s(&src)]);
    let target = env.path("out");
    env.restore_latest_exact(&src, &target, &[]);
    let restored = target.clone();
    assert_eq!(
        fs::metadata(restored.join("d11/link3")).unwrap().ino(),
        fs::metadata(restored.join("d00/f001")).unwrap().ino()
    );
    assert_eq!(
        fs::metadata(restored.join("d00/zero-block")).unwrap().len(),
        4096
    );
    write_file(&restored.join("d00/stray"), b"not in the snapshot");
    env.restore_latest_exact(&src, &target, &["--delete", "--verify"]);
    assert!(!restored.join("d00/stray").exists());
    for d in [3, 7] {
        chmod(&src.join(format!("d{d:02}")), 0o755);
        chmod(&restored.join(format!("d{d:02}")), 0o755);
    }
}
