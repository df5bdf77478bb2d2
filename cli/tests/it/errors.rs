//! Error paths: each has its documented exit code and a clear message on stderr.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::util::{
    bare_cairn, content_ids, mtime_ns, random_bytes, run_command, s, write_file, Env, Output,
    PASSWORD,
};

#[test]
fn wrong_password_exits_12() {
    let env = Env::new();
    env.run_pw("not the password", &["snapshots"])
        .assert_error(12, &["wrong password"]);
    // The same with --json also prints a JSON error object.
    let out = env.run_pw("not the password", &["--json", "snapshots"]);
    out.expect_code(12);
    let v: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(v["message_type"], "error");
    assert_eq!(v["exit_code"], 12);
}

#[test]
fn usage_error_exits_2() {
    let env = Env::new();
    let out = env.run(&["backup", "--no-such-flag", "x"]);
    out.expect_code(2);
    assert!(out.stderr.contains("--no-such-flag"), "{}", out.dump());
    env.run(&["no-such-command"]).expect_code(2);
    // --stdin and paths conflict.
    env.run(&["backup", "--stdin", "x"]).expect_code(2);
    for bad in ["0/7", "8/7", "150%", "x"] {
        env.run(&["check", "--read-data-subset", bad])
            .assert_error(2, &["--read-data-subset"]);
    }
    // restic's spelling of "unlimited" is a value, not a flag.
    env.ok(&["forget", "--keep-daily", "-1", "--dry-run"]);
}

#[test]
fn missing_repository_exits_10() {
    let env = Env::uninitialized();
    let missing = env.path("no-such-repo");
    let mut cmd = bare_cairn();
    cmd.env("CAIRN_PASSWORD", PASSWORD)
        .args(["-r", s(&missing), "snapshots"]);
    run_command(cmd, None).assert_error(10, &[s(&missing), "does not exist"]);
    // Also via CAIRN_REPOSITORY.
    let mut cmd = bare_cairn();
    cmd.env("CAIRN_PASSWORD", PASSWORD)
        .env("CAIRN_REPOSITORY", &missing)
        .arg("snapshots");
    run_command(cmd, None).assert_error(10, &["does not exist"]);
    // And no repository at all is a plain usage error.
    let mut cmd = bare_cairn();
    cmd.env("CAIRN_PASSWORD", PASSWORD).arg("snapshots");
    let out = run_command(cmd, None);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("no repository given"), "{}", out.dump());
}

#[test]
fn not_a_repository_exits_10() {
    let env = Env::uninitialized();
    fs::create_dir(&env.repo).unwrap();
    write_file(&env.repo.join("some-file"), b"hello");
    env.run(&["snapshots"])
        .assert_error(10, &[s(&env.repo), "not a cairn repository"]);
    // A regular file is not a repository either.
    let file = env.path("a-file");
    write_file(&file, b"x");
    let mut cmd = bare_cairn();
    cmd.env("CAIRN_PASSWORD", PASSWORD)
        .args(["-r", s(&file), "snapshots"]);
    let out = run_command(cmd, None);
    assert!(
        out.code == 10,
        "a regular file as repository: {}",
        out.dump()
    );
}

#[test]
fn init_refuses_existing_repository() {
    let env = Env::new();
    let out = env.run(&["init", "--kdf-memory-mib", "8", "--kdf-iterations", "1"]);
    assert_ne!(
        out.code,
        0,
        "init over an existing repository succeeded: {}",
        out.dump()
    );
    assert!(out.stderr.contains("already exists"), "{}", out.dump());
    // The repository still opens.
    env.ok(&["snapshots"]);
}

/// Flip `mask` in the byte of blob `id`'s sealed box at `at(its sealed length)`, in its pack.
fn flip_in_blob(env: &Env, id: &str, at: impl Fn(u64) -> u64, mask: u8) {
    let blob = env.json(&["cat", "blob", id]);
    let pack = blob["pack"].as_str().unwrap();
    let pack_path = env.repo.join("data").join(&pack[..2]).join(pack);
    let mut bytes = fs::read(&pack_path).unwrap();
    let offset = blob["offset"].as_u64().unwrap() + at(blob["length"].as_u64().unwrap());
    bytes[offset as usize] ^= mask;
    fs::write(&pack_path, &bytes).unwrap();
}

#[test]
fn corrupt_pack_restores_the_rest_and_names_the_damaged_file() {
    let env = Env::new();
    let src = env.path("src");
    let names = ["good-1.bin", "victim.bin", "good-2.bin", "good-3.txt"];
    for (i, n) in names.iter().enumerate() {
        write_file(
            &src.join(n),
            &random_bytes(40_000 + i * 1000, 100 + i as u64),
        );
    }
    env.backup(&[s(&src)]);
    let victim_ids = content_ids(&env, &src, "victim.bin");
    assert_eq!(victim_ids.len(), 1);
    flip_in_blob(&env, &victim_ids[0], |length| length / 2, 0x01);

    let target = env.path("restored");
    let out = env.run(&[
        "--json",
        "restore",
        &format!("latest:{}", s(&src)),
        "--target",
        s(&target),
    ]);
    // Damaged repository data is an integrity error (13), not a write failure (3).
    out.expect_code(13);
    let victim_path = target.join("victim.bin");
    assert!(
        out.stderr
            .lines()
            .any(|l| l.contains(s(&victim_path)) && !l.starts_with("cairn: error:")),
        "the damaged file is not named on stderr:\n{}",
        out.dump()
    );
    for n in names.iter().filter(|n| **n != "victim.bin") {
        assert!(
            !out.stderr.contains(n),
            "intact file {n} reported as failed:\n{}",
            out.dump()
        );
        assert_eq!(
            fs::read(target.join(n)).unwrap(),
            fs::read(src.join(n)).unwrap(),
            "{n} was not restored correctly"
        );
        assert_eq!(
            mtime_ns(&fs::metadata(target.join(n)).unwrap()),
            mtime_ns(&fs::metadata(src.join(n)).unwrap())
        );
    }
    let last = out
        .stderr_lines()
        .last()
        .copied()
        .unwrap_or_default()
        .to_owned();
    assert!(
        last.starts_with("cairn: error:") && last.contains("1 of 4"),
        "final error line: {last:?}\n{}",
        out.dump()
    );
    let summary = out.summary();
    assert_eq!(summary["errors"], 1, "{summary}");
    assert_eq!(
        summary["files_restored"], 3,
        "the damaged file was counted as restored: {summary}"
    );
    // If the damaged file was left behind, it must not pass for a good restore: its content
    // is wrong, so its metadata must not claim it is the snapshot's file.
    if let Ok(m) = fs::symlink_metadata(&victim_path) {
        let original = fs::metadata(src.join("victim.bin")).unwrap();
        let content = fs::read(&victim_path).unwrap_or_default();
        assert_ne!(
            content,
            fs::read(src.join("victim.bin")).unwrap(),
            "flipping a byte did not damage anything?"
        );
        assert!(
            mtime_ns(&m) != mtime_ns(&original) || m.len() != original.len(),
            "the damaged file was left with the snapshot's size and mtime, indistinguishable from a good restore"
        );
    }
}

#[test]
fn a_file_restored_in_part_is_moved_off_its_name() {
    let env = Env::new();
    let src = env.path("src");
    // More than twice the largest chunk (8 MiB): at least three chunks whatever the seed.
    let original = random_bytes(17 << 20, 300);
    write_file(&src.join("big.bin"), &original);
    write_file(&src.join("small.txt"), b"intact\n");
    env.backup(&[s(&src)]);
    let ids = content_ids(&env, &src, "big.bin");
    assert!(ids.len() >= 3, "{ids:?}");
    // The second chunk is damaged; the first is restored before and the rest after it.
    let first = env.json(&["cat", "blob", &ids[0]])["raw_length"]
        .as_u64()
        .unwrap() as usize;
    flip_in_blob(&env, &ids[1], |_| 100, 0x04);

    let target = env.path("restored");
    let restore = || {
        env.run(&[
            "restore",
            &format!("latest:{}", s(&src)),
            "--target",
            s(&target),
        ])
    };
    let out = restore();
    out.expect_code(13);
    // Nothing answers to the file's name: a program opening it must not get wrong bytes.
    assert!(
        fs::symlink_metadata(target.join("big.bin")).is_err(),
        "{}",
        out.dump()
    );
    let partial = target.join("big.bin.cairn-partial");
    let kept = fs::read(&partial).unwrap();
    assert_eq!(kept.len(), original.len());
    assert_eq!(
        kept[..first],
        original[..first],
        "the bytes restored are kept"
    );
    assert_ne!(kept, original);
    assert!(
        out.stderr.contains(s(&partial)) && out.stderr.contains(s(&target.join("big.bin"))),
        "{}",
        out.dump()
    );
    assert_eq!(fs::read(target.join("small.txt")).unwrap(), b"intact\n");
    // Again, with that name taken: the other file stays, the partial one goes.
    fs::write(&partial, b"someone else's").unwrap();
    let out = restore();
    out.expect_code(13);
    assert!(out.stderr.contains("removed"), "{}", out.dump());
    assert_eq!(fs::read(&partial).unwrap(), b"someone else's");
    assert!(fs::symlink_metadata(target.join("big.bin")).is_err());
}

#[test]
fn corrupt_hardlinked_file_is_not_claimed_good() {
    let env = Env::new();
    let src = env.path("src");
    write_file(&src.join("intact.bin"), &random_bytes(30_000, 200));
    write_file(&src.join("linked-a.bin"), &random_bytes(50_000, 201));
    fs::hard_link(src.join("linked-a.bin"), src.join("linked-b.bin")).unwrap();
    env.backup(&[s(&src)]);
    let ids = content_ids(&env, &src, "linked-a.bin");
    assert_eq!(ids, content_ids(&env, &src, "linked-b.bin"));
    flip_in_blob(&env, &ids[0], |_| 100, 0x80);

    let target = env.path("restored");
    let out = env.run(&[
        "--json",
        "restore",
        &format!("latest:{}", s(&src)),
        "--target",
        s(&target),
    ]);
    // Damaged repository data is an integrity error (13), not a write failure (3).
    out.expect_code(13);
    assert_eq!(
        fs::read(target.join("intact.bin")).unwrap(),
        fs::read(src.join("intact.bin")).unwrap()
    );
    let original = fs::metadata(src.join("linked-a.bin")).unwrap();
    let good = fs::read(src.join("linked-a.bin")).unwrap();
    for name in ["linked-a.bin", "linked-b.bin"] {
        let p = target.join(name);
        let Ok(m) = fs::symlink_metadata(&p) else {
            continue;
        };
        let content = fs::read(&p).unwrap_or_default();
        if content == good {
            continue;
        }
        // Damaged content left in place must be reported, and must not carry the snapshot's
        // metadata (which would make it pass for a good restore).
        assert!(
            out.stderr.lines().any(|l| l.contains(s(&p))),
            "{name} has damaged content but is not reported as failed:\n{}",
            out.dump()
        );
        assert!(
            mtime_ns(&m) != mtime_ns(&original) || m.len() != original.len(),
            "{name} has damaged content with the snapshot's size and mtime, indistinguishable from a good restore\n{}",
            out.dump()
        );
    }
    let summary = out.summary();
    assert_eq!(
        summary["files_restored"], 1,
        "damaged hardlinked files were counted as restored: {summary}"
    );
}

/// Cut a repository file to half its length.
fn truncate_half(p: &Path) {
    let data = fs::read(p).unwrap();
    fs::write(p, &data[..data.len() / 2]).unwrap();
}

#[test]
fn truncated_snapshot_exits_13() {
    let env = Env::new();
    let src = env.path("src");
    write_file(&src.join("f"), b"data");
    env.backup(&[s(&src)]);
    let snaps = env.objects("snapshots");
    assert_eq!(snaps.len(), 1);
    truncate_half(&snaps[0]);
    // Listed around (named in a warning), and an error for check.
    env.run(&["snapshots"])
        .assert_reports(0, &["snapshot", "damaged", "repair snapshots"]);
    env.run(&["check"])
        .assert_reports(13, &["snapshot", "repair snapshots"]);
}

#[test]
fn truncated_index_exits_13() {
    let env = Env::new();
    let src = env.path("src");
    write_file(&src.join("f"), b"data");
    env.backup(&[s(&src)]);
    let index = env.objects("index");
    assert_eq!(index.len(), 1);
    truncate_half(&index[0]);
    env.run(&["ls", "latest"])
        .assert_reports(13, &["index file", "repair index"]);
    env.run(&["restore", "latest", "--target", s(&env.path("t"))])
        .assert_reports(13, &["index file", "repair index"]);
}

#[test]
fn future_format_version_exits_14() {
    let env = Env::new();
    let config = env.repo.join("config");
    let mut data = fs::read(&config).unwrap();
    assert_eq!(&data[..6], b"cairnC");
    assert_eq!(u16::from_le_bytes([data[6], data[7]]), 1);
    data[6..8].copy_from_slice(&2u16.to_le_bytes());
    fs::write(&config, &data).unwrap();
    env.run(&["snapshots"]).assert_error(14, &["version"]);
}

#[test]
fn backup_of_missing_path_fails_clearly() {
    let env = Env::new();
    let missing = env.path("does-not-exist");
    let out = env.run(&["backup", s(&missing)]);
    out.assert_error(1, &[s(&missing), "no such file"]);
    assert!(
        env.objects("snapshots").is_empty(),
        "a snapshot was written for a missing path"
    );
}

#[test]
fn restore_into_a_regular_file_fails_clearly() {
    let env = Env::new();
    let src = env.path("src");
    write_file(&src.join("f"), b"data");
    env.backup(&[s(&src)]);
    let file = env.path("i-am-a-file");
    write_file(&file, b"keep me");
    env.run(&["restore", "latest", "--target", s(&file)])
        .assert_error(1, &[s(&file), "not a directory"]);
    assert_eq!(fs::read(&file).unwrap(), b"keep me");
}

const NOBODY: u32 = 65534;

pub(crate) fn as_nobody(env: &Env, args: &[&str]) -> Output {
    let mut cmd = Command::new("/usr/bin/setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]);
    cmd.arg(crate::util::cairn_bin());
    cmd.args(["-r", s(&env.repo)]).args(args);
    for var in [
        "CAIRN_REPOSITORY",
        "CAIRN_PASSWORD_FILE",
        "CAIRN_PASSWORD_COMMAND",
        "CAIRN_NEW_PASSWORD",
        "CAIRN_LOG",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("CAIRN_PASSWORD", PASSWORD)
        .env("HOME", env.dir.path());
    run_command(cmd, None)
}

pub(crate) fn chown_nobody(p: &Path) {
    std::os::unix::fs::lchown(p, Some(NOBODY), Some(NOBODY)).unwrap();
}

#[test]
fn unreadable_file_gives_partial_snapshot_and_exit_3() {
    let env = Env::uninitialized();
    // The temp dir is 0700 root: let the unprivileged user in.
    fs::set_permissions(env.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let work = env.dir.path();
    let src = work.join("src");
    write_file(&src.join("readable.txt"), b"readable\n");
    write_file(&src.join("sub/also-readable.txt"), b"also\n");
    write_file(&src.join("secret.txt"), b"top secret\n");
    write_file(&src.join("locked-dir/hidden.txt"), b"hidden\n");
    for e in walkdir::WalkDir::new(&src) {
        chown_nobody(e.unwrap().path());
    }
    fs::set_permissions(src.join("secret.txt"), fs::Permissions::from_mode(0o000)).unwrap();
    fs::set_permissions(src.join("locked-dir"), fs::Permissions::from_mode(0o000)).unwrap();
    fs::create_dir(&env.repo).unwrap();
    chown_nobody(&env.repo);

    as_nobody(
        &env,
        &["init", "--kdf-memory-mib", "8", "--kdf-iterations", "1"],
    )
    .success();
    assert_eq!(fs::metadata(env.repo.join("config")).unwrap().uid(), NOBODY);

    let out = as_nobody(&env, &["--json", "backup", s(&src)]);
    out.expect_code(3);
    let secret = src.join("secret.txt");
    assert!(
        out.stderr.lines().any(|l| l.contains("warning")
            && l.contains(s(&secret))
            && l.to_lowercase().contains("permission denied")),
        "no warning naming the unreadable file:\n{}",
        out.dump()
    );
    let locked = src.join("locked-dir");
    assert!(
        out.stderr.lines().any(|l| l.contains("warning")
            && l.contains(s(&locked))
            && l.to_lowercase().contains("permission denied")),
        "no warning naming the unreadable directory:\n{}",
        out.dump()
    );
    let summary = out.summary();
    assert_eq!(summary["errors"], 2, "{summary}");
    assert_eq!(summary["files_new"], 2, "{summary}");

    // The snapshot exists and holds the readable files.
    let snaps = as_nobody(&env, &["--json", "snapshots"]).success().json();
    assert_eq!(
        snaps.as_array().unwrap().len(),
        1,
        "the partial snapshot was not saved"
    );
    let ls = as_nobody(&env, &["ls", "--recursive", "latest"]);
    ls.success();
    assert!(
        ls.stdout
            .lines()
            .any(|l| l == format!("{}/readable.txt", s(&src))),
        "{}",
        ls.stdout
    );
    assert!(
        ls.stdout
            .lines()
            .any(|l| l == format!("{}/sub/also-readable.txt", s(&src))),
        "{}",
        ls.stdout
    );
    assert!(
        !ls.stdout.contains("secret.txt"),
        "an unreadable file is listed in the snapshot:\n{}",
        ls.stdout
    );
    assert!(!ls.stdout.contains("hidden.txt"), "{}", ls.stdout);

    // Restore them (as nobody, into a directory nobody owns).
    let target = work.join("restored");
    fs::create_dir(&target).unwrap();
    chown_nobody(&target);
    as_nobody(
        &env,
        &[
            "restore",
            &format!("latest:{}", s(&src)),
            "--target",
            s(&target),
        ],
    )
    .success();
    assert_eq!(
        fs::read(target.join("readable.txt")).unwrap(),
        b"readable\n"
    );
    assert_eq!(
        fs::read(target.join("sub/also-readable.txt")).unwrap(),
        b"also\n"
    );
    assert!(!target.join("secret.txt").exists());

    // A restore target nobody cannot write to fails clearly.
    let root_only = work.join("root-only");
    fs::create_dir(&root_only).unwrap();
    fs::set_permissions(&root_only, fs::Permissions::from_mode(0o755)).unwrap();
    let inside = root_only.join("target");
    as_nobody(&env, &["restore", "latest", "--target", s(&inside)])
        .assert_error(1, &[s(&inside), "permission denied"]);
    assert!(!inside.exists());
}

#[test]
fn foreign_exclusive_lock_exits_11_until_removed() {
    let env = Env::new();
    let src = env.path("src");
    write_file(&src.join("f"), b"data");
    // An exclusive lock held by a live process on another host, written a moment ago.
    let forger = crate::util::Forger::new(&env);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let lock = cairn_format::Lock {
        time: cairn_format::Timestamp {
            unix_nanos: now,
            utc_offset_secs: 0,
        },
        started: cairn_format::Timestamp {
            unix_nanos: now,
            utc_offset_secs: 0,
        },
        mode: cairn_format::LockMode::Exclusive,
        hostname: "some-other-host".into(),
        username: "maintenance".into(),
        pid: 4242,
    };
    let bytes = lock.encode_sealed(&forger.key, 3, 3).unwrap();
    forger.put("locks", &bytes);

    env.run(&["backup", s(&src)])
        .assert_error(11, &["locked", "some-other-host"]);
    env.run(&["restore", "latest", "--target", s(&env.path("t"))])
        .assert_error(11, &["locked"]);
    assert!(env.objects("snapshots").is_empty());
    // Not stale, so plain `unlock` keeps it; --remove-all removes it.
    assert_eq!(env.json(&["unlock"])["removed"], 0);
    env.run(&["backup", s(&src)]).expect_code(11);
    assert_eq!(env.json(&["unlock", "--remove-all"])["removed"], 1);
    env.backup(&[s(&src)]);
}

#[test]
fn corrupt_tree_blob_exits_13() {
    let env = Env::new();
    let src = env.path("src");
    write_file(&src.join("f"), b"data");
    env.backup(&[s(&src)]);
    let snaps = env.snapshots::<&str>(&[]);
    let root_tree = snaps[0]["tree"].as_str().unwrap();
    assert_eq!(env.json(&["cat", "blob", root_tree])["type"], "Tree");
    flip_in_blob(&env, root_tree, |length| length / 2, 0x10);
    env.run(&["ls", "latest"])
        .assert_error(13, &[&root_tree[..8]]);
    let target = env.path("t");
    let out = env.run(&["restore", "latest", "--target", s(&target)]);
    out.assert_error(13, &[]);
    assert!(
        !target.exists() || crate::util::file_list(&target).is_empty(),
        "files restored from a corrupt tree"
    );
}

#[test]
fn invalid_stdin_filename_is_refused() {
    let env = Env::new();
    for name in ["../evil", "a/b", ".."] {
        let out = env.run_stdin(
            &["backup", "--stdin", "--stdin-filename", name],
            b"data".to_vec(),
        );
        out.assert_error(1, &["stdin-filename"]);
    }
    assert!(env.objects("snapshots").is_empty());
}

/// Output into a pipe whose reader went away (`cairn cat … | head`) ends quietly with 141,
/// like a tool killed by SIGPIPE, not with a panic.
#[test]
fn closed_output_pipe_exits_quietly() {
    use std::io::Read;
    let env = Env::new();
    let src = env.path("src");
    // Far more listing than a pipe buffers (64 KiB), so cairn is still writing when the
    // reader leaves.
    for i in 0..2000 {
        write_file(
            &src.join(format!("a-rather-long-file-name-for-the-listing-{i:05}")),
            b"x",
        );
    }
    env.backup(&[s(&src)]);
    let tree = format!("latest:{}", s(&src));
    // `ls` writes from inside a tree walk, `cat` with println!: both paths.
    for args in [
        vec!["ls", "latest", "--recursive", "-l"],
        vec!["cat", "tree", tree.as_str()],
    ] {
        let mut cmd = env.cmd();
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let mut first = [0u8; 16];
        stdout.read_exact(&mut first).unwrap();
        drop(stdout);
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(141), "{args:?}: {stderr}");
    }
}

/// A password command that hangs is killed, with what it started, after
/// `--password-command-timeout`: a nightly job gets an error instead of hanging for ever.
#[test]
fn a_hanging_password_command_is_killed_after_its_timeout() {
    let env = Env::new();
    let with_command = |command: &str, timeout: &str| {
        let mut cmd = bare_cairn();
        cmd.args(["-r", s(&env.repo), "--password-command", command])
            .args(["--password-command-timeout", timeout, "snapshots"]);
        let start = std::time::Instant::now();
        (run_command(cmd, None), start.elapsed())
    };
    let (out, _) = with_command(&format!("echo '{PASSWORD}'"), "5");
    assert_eq!(out.code, 0, "{}", out.dump());
    // Silent for ever; then printing the password but keeping its output open (a child
    // left behind): both are given up on, and the children do not outlive cairn.
    for command in ["sleep 600", &format!("echo '{PASSWORD}'; sleep 600")] {
        let (out, took) = with_command(command, "1");
        out.assert_error(1, &["did not finish within 1 s"]);
        assert!(
            took < std::time::Duration::from_secs(60),
            "{command}: {took:?}"
        );
    }
}
