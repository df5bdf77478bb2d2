//! The S3 backend against a real server (Garage in CI): every command, the cache, an
//! interrupted upload, and the errors a user meets first (credentials, bucket, locks, an
//! unreachable endpoint).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::util::{random_bytes, s, write_file, Env};

pub(crate) fn init(env: &Env, extra: &[&str]) {
    let mut args = vec!["init", "--kdf-memory-mib", "8", "--kdf-iterations", "1"];
    args.extend_from_slice(extra);
    env.ok(&args);
}

/// Big random files (several packs), small files, a symlink, a hard link, an empty dir.
pub(crate) fn make_source(env: &Env, seed: u64) -> PathBuf {
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

#[test]
fn s3_backup_restore_forget_prune_check() {
    let Some(env) = Env::s3("roundtrip") else {
        return;
    };
    init(&env, &["--pack-size-mib", "4"]);
    let src = make_source(&env, 1);

    let first = env.backup(&[s(&src)]);
    assert_eq!(first["errors"], 0, "{first}");
    env.restore_latest_exact(&src, &env.path("r1"), &[]);

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
    env.restore_latest_exact(&src, &env.path("r2"), &[]);

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
    // The first backup dies (abort: no cleanup, like SIGKILL) right after its 5th pack upload.
    env.backup_killed_after_packs(&src, 5);
    assert!(env.snapshots::<&str>(&[]).is_empty());
    // The dead process's lock is stale; the next backup proceeds and reuses what was uploaded.
    let resumed = env.backup(&[s(&src)]);
    assert_eq!(resumed["errors"], 0, "{resumed}");
    env.ok(&["check"]);
    // The orphaned packs of the killed run are found and removed by prune.
    env.ok(&["prune"]);
    env.ok(&["check", "--read-data"]);
    env.restore_latest_exact(&src, &env.path("r"), &[]);
}

#[test]
fn s3_cache_is_verified_and_rebuilt() {
    let Some(env) = Env::s3("cache") else { return };
    init(&env, &[]);
    let src = make_source(&env, 9);
    env.backup(&[s(&src)]);
    let cache = env.cache_dir();
    // The backup kept the tree packs it uploaded: the next run reads its parent's trees
    // locally.
    let tree_packs = walkdir::WalkDir::new(&cache)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_type().is_file()
                && e.path().parent().and_then(Path::file_name) == Some("data".as_ref())
                && !e.file_name().to_string_lossy().starts_with(".tmp-")
        })
        .count();
    assert!(tree_packs > 0, "the backup kept no tree pack in the cache");
    env.ok(&["ls", "latest"]);
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
    env.restore_latest_exact(&src, &env.path("r"), &[]);
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
    env.restore_latest_exact(&src, &env.path("r-nocache"), &["--no-cache"]);
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
    let bad_ca = env.path("not-a-ca.pem");
    std::fs::write(&bad_ca, "not a certificate\n").unwrap();
    env.run(&["-o", &format!("s3.ca-file={}", s(&bad_ca)), "snapshots"])
        .assert_error(1, &["no PEM certificate"]);

    // A backup reading stdin holds a shared lock while it waits for input: prune must refuse.
    // Its first JSON status line says it is running (the lock is taken before it starts).
    let mut cmd = env.cmd();
    cmd.args([
        "--json",
        "backup",
        "--stdin",
        "--stdin-filename",
        "kube.yaml",
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"apiVersion: v1\n").unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut tx = Some(tx);
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.unwrap_or_default();
            if line.contains("\"status\"") {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(());
                }
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the stdin backup never reported progress");
    // Prune runs beside a backup (format 3) and deletes nothing it may use; repair needs the
    // repository alone.
    env.ok(&["prune"]);
    env.run(&["repair", "index"]).assert_error(11, &["locked"]);
    drop(stdin);
    assert!(child.wait().unwrap().success());
    reader.join().unwrap();
    env.ok(&["prune"]);
    env.ok(&["check"]);
}

/// A bbolt-looking etcd snapshot file (the k3s-etcd source checks the magic).
fn fake_etcd_snapshot(path: &Path, seed: u64) -> Vec<u8> {
    let data = crate::util::etcd_snapshot(64, seed);
    write_file(path, &data);
    data
}

#[test]
fn s3_nightly_job_and_etcd_restore() {
    let Some(env) = Env::s3("job") else { return };
    init(&env, &[]);
    let snaps = env.path("k3s/server/db/snapshots");
    let token = env.path("k3s/server/token");
    write_file(&token, b"K10secret::server:abc\n");
    fake_etcd_snapshot(&snaps.join("etcd-snapshot-node1-1700000000"), 1);
    let pw = env.path("password");
    std::fs::write(&pw, &env.password).unwrap();
    let job = env.path("k3s.toml");
    std::fs::write(
        &job,
        format!(
            r#"[repository]
path = "{repo}"
password-file = "{pw}"
options = {{ "s3.connections" = "3" }}

[[source]]
name = "etcd"
kind = "k3s-etcd"
snapshot-dir = "{snaps}"
token-file = "{token}"
keep-last = 1

[[source]]
name = "manifests"
kind = "command"
command = "printf 'apiVersion: v1\\nkind: List\\n'"
filename = "manifests.yaml"
keep-last = 1
"#,
            repo = s(&env.repo),
            pw = s(&pw),
            snaps = s(&snaps),
            token = s(&token),
        ),
    )
    .unwrap();
    // The job file alone names the repository, its options and the password.
    let job_cmd = |args: &[&str]| {
        let mut c = crate::util::bare_cairn();
        c.args(args)
            .env("HOME", env.dir.path())
            .env("XDG_CACHE_HOME", env.dir.path().join(".cache"));
        crate::util::run_command(c, None)
    };
    job_cmd(&["run", "--config", s(&job)]).success();
    std::thread::sleep(Duration::from_millis(1100));
    let newest = fake_etcd_snapshot(&snaps.join("etcd-snapshot-node1-1700086400"), 2);
    job_cmd(&["run", "--config", s(&job)]).success();
    // keep-last 1 per source: one snapshot each.
    assert_eq!(env.snapshots::<&str>(&[]).len(), 2);

    let target = env.path("etcd-restore");
    let out = job_cmd(&[
        "k3s",
        "restore-etcd",
        "--config",
        s(&job),
        "--target",
        s(&target),
    ]);
    out.success();
    assert!(
        out.stdout.contains("--cluster-reset-restore-path="),
        "{}",
        out.dump()
    );
    let restored = target
        .join(s(&snaps).trim_start_matches('/'))
        .join("etcd-snapshot-node1-1700086400");
    assert_eq!(std::fs::read(&restored).unwrap(), newest);
}

/// Ctrl-C reaches a request that waits in retry back-off: an unreachable endpoint must not
/// hold the operator for minutes of retries. Needs no server (nothing listens on port 9).
#[test]
fn s3_request_in_back_off_is_interruptible() {
    use nix::sys::signal::{kill, Signal};
    let home = tempfile::tempdir().unwrap();
    let mut cmd = crate::util::bare_cairn();
    cmd.args([
        "-r",
        "s3:http://127.0.0.1:9/bucket/cairn",
        "-o",
        "s3.retries=20",
        "snapshots",
    ])
    .env("CAIRN_PASSWORD", "x")
    .env("AWS_ACCESS_KEY_ID", "test")
    .env("AWS_SECRET_ACCESS_KEY", "test")
    .env("HOME", home.path())
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    // By then the first attempts were refused and the request sleeps before a retry.
    std::thread::sleep(Duration::from_millis(1500));
    kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGINT,
    )
    .unwrap();
    let signalled = std::time::Instant::now();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(stderr.contains("retry"), "no retry was under way: {stderr}");
    // Twenty retries with back-off up to 20 s each would take minutes.
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "took {:?} to stop after SIGINT",
        signalled.elapsed()
    );
}

/// HTTPS with a private CA (`-o s3.ca-file`): refused with a hint without the CA, a full
/// round trip with it. A Python TLS-terminating proxy (`tls_proxy.py`) in front of the test
/// server stands in for MinIO/Garage behind a self-signed certificate.
#[test]
fn s3_over_tls_with_a_private_ca() {
    use std::io::BufRead;
    use std::process::Command;
    let Some(mut env) = Env::s3("tls") else {
        return;
    };
    let loc = s(&env.repo).to_owned();
    // The proxy forwards to a plain-HTTP server on this machine (Garage in CI).
    let Some(rest) = loc.strip_prefix("s3:http://127.0.0.1:") else {
        eprintln!("skipping s3_over_tls_with_a_private_ca: {loc} is not plain HTTP on 127.0.0.1");
        return;
    };
    let (upstream_port, path) = rest.split_once('/').unwrap();

    let (cert, key) = (env.path("ca.pem"), env.path("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=cairn test"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-keyout", s(&key), "-out", s(&cert)])
        .stderr(Stdio::null())
        .status()
        .expect("openssl (needed to make a test certificate)");
    assert!(made.success(), "openssl req failed");

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/tls_proxy.py");
    let proxy = Command::new("python3")
        .arg(&script)
        .args([s(&cert), s(&key), upstream_port])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 (runs the TLS proxy)");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut proxy = Kill(proxy);
    let mut line = String::new();
    std::io::BufReader::new(proxy.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line.trim().parse().expect("the proxy printed its port");
    env.repo = PathBuf::from(format!("s3:https://127.0.0.1:{port}/{path}"));

    env.run(&["init", "-o", "s3.retries=0"])
        .assert_error(1, &["certificate", "s3.ca-file"]);
    let ca = format!("s3.ca-file={}", s(&cert));
    init(&env, &["-o", &ca]);
    let src = make_source(&env, 5);
    let summary = env.backup(&[s(&src), "-o", &ca]);
    assert_eq!(summary["errors"], 0, "{summary}");
    env.restore_latest_exact(&src, &env.path("restored"), &["-o", &ca]);
    env.ok(&["check", "--read-data", "-o", &ca]);
}

/// The 3-2-1 round: local → S3 → local, byte-exact, and a second copy sends nothing.
#[test]
fn s3_copy_round_trips_local_to_s3_and_back() {
    let Some(mid) = Env::s3("copy") else { return };
    let src = Env::new();
    let data = make_source(&src, 31);
    src.backup(&[s(&data)]);
    crate::copy::init_like(&mid, &src, &[]);
    let up = crate::copy::copy_report(&crate::copy::copy(&mid, &src, &["--json"], None));
    assert_eq!(up["copied"].as_array().unwrap().len(), 1, "{up}");
    let again = crate::copy::copy_report(&crate::copy::copy(&mid, &src, &["--json"], None));
    assert_eq!(
        (again["skipped"].as_u64(), again["blobs_sent"].as_u64()),
        (Some(1), Some(0))
    );
    mid.ok(&["check", "--read-data"]);
    let back = Env::uninitialized();
    crate::copy::init_like(&back, &mid, &[]);
    let down = crate::copy::copy_report(&crate::copy::copy(&back, &mid, &["--json"], None));
    assert_eq!(down["copied"].as_array().unwrap().len(), 1, "{down}");
    back.ok(&["check", "--read-data"]);
    back.restore_latest_exact(&data, &back.path("restored"), &[]);
}
