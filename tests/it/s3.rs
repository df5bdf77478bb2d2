//! The S3 backend against a real server (Garage in CI): every command, the cache, an
//! interrupted upload, and the errors a user meets first (credentials, bucket, locks).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::util::{assert_trees_equal, random_bytes, s, write_file, Env};

fn init(env: &Env, extra: &[&str]) {
    let mut args = vec!["init", "--kdf-memory-mib", "8", "--kdf-iterations", "1"];
    args.extend_from_slice(extra);
    env.ok(&args);
}

/// Big random files (several packs), small files, a symlink, a hard link, an empty dir.
fn make_source(env: &Env, seed: u64) -> PathBuf {
    let src = env.path("src");
    for i in 0..3 {
        write_file(
            &src.join(format!("big/f{i}.bin")),
            &random_bytes(6 << 20, seed + i),
        );
    }
    let noise = random_bytes(200 * 3000, seed + 100);
    for i in 0..200 {
        write_file(
            &src.join(format!("small/d{}/f{i}", i % 7)),
            &noise[i * 3000..(i + 1) * 3000 - i],
        );
    }
    write_file(
        &src.join("etc/config.yaml"),
        b"apiVersion: v1\nkind: ConfigMap\n",
    );
    std::os::unix::fs::symlink("../etc/config.yaml", src.join("small/link")).unwrap();
    std::fs::hard_link(src.join("etc/config.yaml"), src.join("etc/hard")).unwrap();
    std::fs::create_dir_all(src.join("empty")).unwrap();
    src
}

fn restore_and_compare(env: &Env, src: &Path, target: &str, extra: &[&str]) {
    let target = env.path(target);
    let spec = format!("latest:{}", s(src));
    let mut args = vec!["restore", spec.as_str(), "--target", s(&target)];
    args.extend_from_slice(extra);
    env.ok(&args);
    assert_trees_equal(src, &target, false);
}

#[test]
fn s3_backup_restore_forget_prune_check() {
    let Some(env) = Env::s3("roundtrip") else {
        return;
    };
    init(&env, &["--pack-size-mib", "4"]);
    let src = make_source(&env, 1);

    let first = env.backup(&[s(&src)]);
    assert_eq!(first["errors"], 0, "{first}");
    restore_and_compare(&env, &src, "r1", &[]);

    // Change a few files, back up again: incremental against the parent from the cache.
    write_file(&src.join("small/d1/f1"), b"changed");
    write_file(&src.join("big/f0.bin"), &random_bytes(6 << 20, 77));
    let second = env.backup(&[s(&src)]);
    assert_eq!(second["parent"], first["snapshot_id"], "{second}");
    assert_eq!(second["files_changed"], 2, "{second}");
    assert_eq!(env.snapshots::<&str>(&[]).len(), 2);
    let ls = env.ok(&["ls", &format!("latest:{}/small/d1", s(&src))]);
    assert!(ls.stdout.contains("f1"), "{}", ls.dump());

    // Retention and prune over S3, then a full read of every pack.
    let forget = env.json(&["forget", "--keep-last", "1", "--prune"]);
    assert!(
        forget
            .to_string()
            .contains(first["snapshot_id"].as_str().unwrap()),
        "{forget}"
    );
    assert_eq!(env.snapshots::<&str>(&[]).len(), 1);
    env.ok(&["check", "--read-data"]);
    restore_and_compare(&env, &src, "r2", &[]);

    // Keys and locks work remotely too.
    let mut add = env.cmd();
    add.args(["key", "add"])
        .env("CAIRN_NEW_PASSWORD", "second password");
    crate::util::run_command(add, None).success();
    env.run_pw("second password", &["snapshots"]).success();
    env.run_pw("wrong", &["snapshots"])
        .assert_error(12, &["password"]);
}

#[test]
fn s3_killed_backup_is_resumed_and_checked() {
    let Some(env) = Env::s3("killed") else { return };
    init(&env, &["--pack-size-mib", "1"]);
    let src = env.path("src");
    for i in 0..6 {
        write_file(&src.join(format!("f{i}")), &random_bytes(10 << 20, 500 + i));
    }
    // Kill the first backup while packs are being uploaded.
    let mut killed = false;
    for delay in [600u64, 1500] {
        let mut cmd = env.cmd();
        cmd.args(["backup", s(&src)])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().unwrap();
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(delay) {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            killed = true;
        }
        child.wait().unwrap();
        if killed {
            break;
        }
    }
    assert!(killed, "the backup finished before it could be killed");
    // The dead process's lock is stale; the next backup proceeds and reuses what was uploaded.
    let resumed = env.backup(&[s(&src)]);
    assert_eq!(resumed["errors"], 0, "{resumed}");
    env.ok(&["check"]);
    // The orphaned packs of the killed run are found and removed by prune.
    env.ok(&["prune"]);
    env.ok(&["check", "--read-data"]);
    restore_and_compare(&env, &src, "r", &[]);
}

#[test]
fn s3_cache_is_verified_and_rebuilt() {
    let Some(env) = Env::s3("cache") else { return };
    init(&env, &[]);
    let src = make_source(&env, 9);
    env.backup(&[s(&src)]);
    env.ok(&["ls", "latest"]);
    let cache = env.cache_dir();
    let files: Vec<PathBuf> = walkdir::WalkDir::new(&cache)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file() && e.file_name() != "CACHEDIR.TAG")
        .map(|e| e.into_path())
        .collect();
    let dirs: Vec<String> = files
        .iter()
        .map(|p| {
            p.parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    for kind in ["snapshots", "index", "data"] {
        assert!(
            dirs.iter().any(|d| d == kind),
            "nothing cached in {kind}: {files:?}"
        );
    }
    // Corrupt every cached file: reads must notice, refetch and repair the cache.
    for f in &files {
        let mut data = std::fs::read(f).unwrap();
        let mid = data.len() / 2;
        data[mid] ^= 0x55;
        std::fs::write(f, &data).unwrap();
    }
    env.ok(&["snapshots"]);
    env.ok(&["ls", "latest"]);
    restore_and_compare(&env, &src, "r", &[]);
    for f in &files {
        let data = std::fs::read(f).unwrap();
        let name = f.file_name().unwrap().to_str().unwrap();
        assert_eq!(
            cairn_format::Id::of_object(&data).to_hex(),
            name,
            "{} was not rebuilt",
            f.display()
        );
    }
    // And without a cache at all.
    restore_and_compare(&env, &src, "r-nocache", &["--no-cache"]);
}

#[test]
fn s3_errors_are_clear() {
    let Some(env) = Env::s3("errors") else { return };
    // Nothing there yet.
    env.run(&["snapshots"])
        .assert_error(10, &["not a cairn repository"]);
    init(&env, &[]);
    env.run(&["init"]).assert_error(1, &["already exists"]);

    let mut bad = env.cmd();
    bad.args(["snapshots"])
        .env("AWS_SECRET_ACCESS_KEY", "not-the-secret");
    crate::util::run_command(bad, None).assert_error(1, &["access denied"]);

    let loc = s(&env.repo).to_owned();
    let (endpoint_and_bucket, _) = loc.split_once("/cairn-it/").unwrap();
    let (endpoint, _) = endpoint_and_bucket.rsplit_once('/').unwrap();
    let mut missing = crate::util::bare_cairn();
    missing
        .args(["-r", &format!("{endpoint}/no-such-bucket-cairn/x"), "init"])
        .env("CAIRN_PASSWORD", "x")
        .env("HOME", env.dir.path());
    crate::util::run_command(missing, None).assert_error(1, &["bucket does not exist"]);

    env.run(&["-o", "s3.nonsense=1", "snapshots"])
        .assert_error(1, &["unknown option s3.nonsense"]);

    // A backup reading stdin holds a shared lock while it waits for input: prune must refuse.
    let mut cmd = env.cmd();
    cmd.args(["backup", "--stdin", "--stdin-filename", "kube.yaml"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"apiVersion: v1\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = env.run(&["prune"]);
        if out.code == 11 {
            out.assert_error(11, &["locked"]);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "prune never saw the backup's lock: {}",
            out.dump()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
    env.ok(&["prune"]);
    env.ok(&["check"]);
}
