//! Incremental backups: the parent snapshot is found, unchanged files are not re-read.

use std::fs;

use serde_json::Value;

use crate::util::{assert_trees_equal, content_ids, random_bytes, s, write_file, Env};

const FILES: u64 = 6;

fn n(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("summary has no numeric {key:?}: {v}"))
}

#[test]
fn incremental_backup_reuses_unchanged_files() {
    let env = Env::new();
    let src = env.path("src");
    write_file(&src.join("a.txt"), b"alpha\n");
    write_file(&src.join("b.bin"), &random_bytes(300_000, 11));
    write_file(&src.join("sub/c.txt"), b"gamma\n");
    write_file(&src.join("sub/d.bin"), &random_bytes(900_000, 12));
    write_file(&src.join("sub/deeper/e.txt"), b"epsilon\n");
    write_file(&src.join("f-empty"), b"");

    let first = env.backup(&[s(&src)]);
    assert_eq!(n(&first, "files_new"), FILES, "{first}");
    assert_eq!(n(&first, "files_unmodified"), 0, "{first}");
    assert!(n(&first, "data_added") >= 1_200_000, "{first}");
    let first_id = first["snapshot_id"].as_str().unwrap().to_owned();

    // Same paths again: the parent is found by itself, nothing is re-read, no data is added.
    let second = env.backup(&[s(&src)]);
    assert_eq!(
        second["parent"].as_str(),
        Some(first_id.as_str()),
        "parent not found automatically: {second}"
    );
    assert_eq!(n(&second, "files_unmodified"), FILES, "{second}");
    assert_eq!(n(&second, "files_new"), 0, "{second}");
    assert_eq!(n(&second, "files_changed"), 0, "{second}");
    assert_eq!(n(&second, "data_blobs"), 0, "{second}");
    // Only trees may be new (the directories above src change as the test writes its repo).
    assert!(
        n(&second, "data_added") < 16 * 1024,
        "an unchanged backup added {} bytes: {second}",
        n(&second, "data_added")
    );
    assert_eq!(n(&second, "total_files_processed"), FILES, "{second}");
    let second_id = second["snapshot_id"].as_str().unwrap().to_owned();

    // One file modified, one added.
    write_file(&src.join("sub/c.txt"), b"gamma, changed and longer\n");
    write_file(&src.join("sub/new.txt"), b"a new file\n");
    let third = env.backup(&[s(&src)]);
    assert_eq!(
        third["parent"].as_str(),
        Some(second_id.as_str()),
        "{third}"
    );
    assert_eq!(n(&third, "files_changed"), 1, "{third}");
    assert_eq!(n(&third, "files_new"), 1, "{third}");
    assert_eq!(n(&third, "files_unmodified"), FILES - 1, "{third}");
    assert_eq!(n(&third, "data_blobs"), 2, "{third}");

    // --force re-reads everything (and finds all the data already stored).
    let forced = env.backup(&["--force", s(&src)]);
    assert_eq!(
        n(&forced, "files_unmodified"),
        0,
        "--force still skipped files: {forced}"
    );
    assert_eq!(
        n(&forced, "files_new") + n(&forced, "files_changed"),
        FILES + 1,
        "{forced}"
    );
    assert_eq!(
        n(&forced, "data_blobs"),
        0,
        "re-reading unchanged files stored new data: {forced}"
    );

    // A different path set does not pick that parent.
    let other = env.path("other");
    write_file(&other.join("x"), b"x");
    let unrelated = env.backup(&[s(&other)]);
    assert_eq!(unrelated["parent"], Value::Null, "{unrelated}");

    // And the latest snapshot of src restores exactly.
    let target = env.path("restored");
    env.ok(&[
        "restore",
        "--path",
        s(&src),
        &format!("latest:{}", s(&src)),
        "--target",
        s(&target),
    ]);
    assert_trees_equal(&src, &target, false);
    assert_eq!(
        fs::read(target.join("sub/c.txt")).unwrap(),
        b"gamma, changed and longer\n"
    );
}

/// An unchanged file's xattrs and symlink target come from the parent snapshot (same inode
/// and change time); any metadata change updates the change time and is read afresh.
#[test]
fn incremental_backup_keeps_and_updates_metadata() {
    use std::os::unix::fs::{symlink, PermissionsExt};
    let env = Env::new();
    let src = env.path("src");
    write_file(&src.join("kept.txt"), b"kept\n");
    write_file(&src.join("xa.txt"), b"xattr changes\n");
    write_file(&src.join("xr.txt"), b"xattr removed\n");
    write_file(&src.join("mode.txt"), b"mode changes\n");
    write_file(&src.join("sub/target-a"), b"a\n");
    write_file(&src.join("sub/target-b"), b"b\n");
    symlink("target-a", src.join("sub/link")).unwrap();
    xattr::set(src.join("kept.txt"), "user.kept", b"stays").unwrap();
    xattr::set(src.join("xa.txt"), "user.v", b"one").unwrap();
    xattr::set(src.join("xr.txt"), "user.gone", b"soon").unwrap();
    xattr::set(src.join("sub"), "user.dir", b"d1").unwrap();
    env.backup(&[s(&src)]);

    // Unchanged: restoring the second snapshot still has every xattr.
    let second = env.backup(&[s(&src)]);
    assert_eq!(n(&second, "files_unmodified"), 6, "{second}");
    let t2 = env.path("t2");
    env.restore_latest_exact(&src, &t2, &[]);

    xattr::set(src.join("xa.txt"), "user.v", b"two").unwrap();
    xattr::set(src.join("xa.txt"), "user.w", b"new").unwrap();
    xattr::remove(src.join("xr.txt"), "user.gone").unwrap();
    xattr::set(src.join("sub"), "user.dir", b"d2").unwrap();
    fs::set_permissions(src.join("mode.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::remove_file(src.join("sub/link")).unwrap();
    symlink("target-b", src.join("sub/link")).unwrap();
    let third = env.backup(&[s(&src)]);
    assert!(third["parent"].is_string(), "{third}");
    let t3 = env.path("t3");
    env.restore_latest_exact(&src, &t3, &[]);
    assert_eq!(
        xattr::get(t3.join("xa.txt"), "user.w").unwrap().as_deref(),
        Some(&b"new"[..])
    );
    assert_eq!(xattr::get(t3.join("xr.txt"), "user.gone").unwrap(), None);
    assert_eq!(
        fs::read_link(t3.join("sub/link")).unwrap(),
        std::path::Path::new("target-b")
    );
}

/// A backup reads files and directories without updating their access times (`O_NOATIME`):
/// tools that expire files by atime must see the same atimes afterwards, and a directory's
/// atime refreshed by each night's listing would change its node, and so every tree up to the
/// root, every night.
#[test]
fn backup_leaves_access_times_alone() {
    use std::os::unix::fs::MetadataExt;

    let env = Env::new();
    let src = env.path("src");
    write_file(&src.join("dir/file.txt"), b"read me\n");
    write_file(&src.join("dir/sub/deeper.txt"), b"and me\n");
    let control = env.path("control");
    write_file(&control.join("file.txt"), b"control\n");
    // Three days ago: relatime (the usual mount option) refreshes an atime older than a day
    // on the next read.
    let old = filetime::FileTime::from_unix_time(
        filetime::FileTime::now().unix_seconds() - 3 * 86_400,
        0,
    );
    let age = |p: &std::path::Path| {
        let m = fs::metadata(p).unwrap();
        filetime::set_file_times(p, old, filetime::FileTime::from_last_modification_time(&m))
            .unwrap();
    };
    let atime = |p: &std::path::Path| fs::metadata(p).unwrap().atime();
    let paths = [
        src.join("dir/file.txt"),
        src.join("dir/sub/deeper.txt"),
        src.join("dir/sub"),
        src.join("dir"),
        control.join("file.txt"),
        control.clone(),
    ];
    for p in &paths {
        age(p);
    }

    // Does this file system update atimes on reads at all (not with noatime)?
    fs::read(control.join("file.txt")).unwrap();
    fs::read_dir(&control).unwrap().for_each(drop);
    if atime(&control.join("file.txt")) == old.unix_seconds()
        && atime(&control) == old.unix_seconds()
    {
        eprintln!("skipped: this file system does not update atimes on read");
        return;
    }

    env.backup(&[s(&src)]);
    for p in &paths[..4] {
        assert_eq!(
            atime(p),
            old.unix_seconds(),
            "{} lost its atime",
            p.display()
        );
    }
    // The incremental run lists every directory again.
    write_file(&src.join("dir/sub/deeper.txt"), b"changed\n");
    age(&src.join("dir/sub/deeper.txt"));
    env.backup(&[s(&src)]);
    for p in &paths[..4] {
        assert_eq!(
            atime(p),
            old.unix_seconds(),
            "{} lost its atime",
            p.display()
        );
    }
}

/// `n` lines of log text (hex ids, so that it compresses about as a real log does).
fn log_lines(n: usize, seed: u64) -> Vec<u8> {
    let ids = random_bytes(n * 16, seed);
    let mut out = Vec::new();
    for (i, id) in ids.chunks(16).enumerate() {
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        out.extend(
            format!(
                "2026-12-07T02:{:02}:00Z level=info msg=\"request {i}\" id={hex}\n",
                i % 60
            )
            .bytes(),
        );
    }
    out
}

/// A log that grows at its end stores only its new lines: its chunks from the last snapshot
/// are cut the same way again (content-defined cutting would store its old last chunk again,
/// as that chunk ended at the old end of the file). A change inside the file ends the guide
/// and the rest is cut by content; short tail chunks do not pile up without bound.
#[test]
fn a_file_that_grows_at_its_end_stores_only_its_new_bytes() {
    let env = Env::new();
    let src = env.path("src");
    let log_path = src.join("app.log");
    // ~3 MB: more than the 2 MiB largest text chunk, so at least two chunks whatever the
    // repository's chunker seed, the last cut at EOF.
    let mut log = log_lines(30_000, 41);
    write_file(&log_path, &log);
    env.backup(&[s(&src)]);
    let first = content_ids(&env, &src, "app.log");
    assert!(first.len() >= 2, "{first:?}");

    let appended = log_lines(200, 42);
    log.extend(&appended);
    write_file(&log_path, &log);
    let second = env.backup(&[s(&src)]);
    let ids = content_ids(&env, &src, "app.log");
    assert_eq!(
        ids[..first.len()],
        first[..],
        "the old chunks were not kept"
    );
    assert_eq!(ids.len(), first.len() + 1, "{ids:?}");
    assert_eq!(n(&second, "data_blobs"), 1, "{second}");
    // Bytes of new blobs: the new lines and four small trees, no old byte stored again
    // (content-defined cutting stores ~0.5 MB here).
    let added = n(&second, "data_added");
    assert!(
        (appended.len() as u64..appended.len() as u64 + 4096).contains(&added),
        "{} new bytes added {added}: {second}",
        appended.len()
    );

    // Many small appends: the short chunks at the end are cut again by content before
    // they reach a dozen.
    let mut most = 0;
    for night in 0..12 {
        log.extend(log_lines(50, 100 + night));
        write_file(&log_path, &log);
        env.backup(&[s(&src)]);
        most = most.max(content_ids(&env, &src, "app.log").len());
    }
    assert!(most <= first.len() + 9, "{most} chunks after 12 appends");
    assert!(
        most > first.len() + 2,
        "appends were not kept as chunks: {most}"
    );

    // A change near the start: the guide ends there, the file is cut by content again.
    log[100..110].copy_from_slice(b"CHANGED!!!");
    write_file(&log_path, &log);
    let changed = env.backup(&[s(&src)]);
    let ids = content_ids(&env, &src, "app.log");
    assert_ne!(ids[0], first[0]);
    assert!(n(&changed, "data_blobs") >= 1, "{changed}");
    let out = env.path("out");
    env.ok(&["restore", "latest", "--target", s(&out)]);
    assert_eq!(
        std::fs::read(out.join(s(&log_path).trim_start_matches('/'))).unwrap(),
        log
    );
    env.ok(&["check", "--read-data"]);
}
