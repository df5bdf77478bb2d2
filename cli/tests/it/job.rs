//! The nightly job (`cairn run`) against a local repository: sources, retention, prune,
//! metrics; the same retention decisions as `cairn forget`; concurrent runs and lock waits.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::util::{random_bytes, s, write_file, Env, Forger, Output};

/// A job file for `env`'s repository with `sources` (TOML `[[source]]` tables) appended.
pub(crate) fn job_file(env: &Env, extra_repo: &str, sources: &str) -> PathBuf {
    let pw = env.path("password");
    std::fs::write(&pw, &env.password).unwrap();
    let job = env.path("job.toml");
    std::fs::write(
        &job,
        format!(
            "[repository]\npath = \"{}\"\npassword-file = \"{}\"\n{extra_repo}\n\n{sources}",
            s(&env.repo),
            s(&pw)
        ),
    )
    .unwrap();
    job
}

/// cairn with `args` and nothing else: the job file names repository and password.
pub(crate) fn job_cmd(env: &Env, args: &[&str]) -> Output {
    let mut c = crate::util::bare_cairn();
    c.args(args)
        .env("HOME", env.dir.path())
        .env("XDG_CACHE_HOME", env.dir.path().join(".cache"));
    crate::util::run_command(c, None)
}

/// `cairn run` with the job file alone naming repository and password.
pub(crate) fn run_job(env: &Env, args: &[&str]) -> Output {
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    job_cmd(env, &all)
}

#[test]
fn nightly_job_backs_up_retains_prunes_and_reports() {
    let env = Env::new();
    let data = env.path("data");
    write_file(&data.join("a.bin"), &random_bytes(300_000, 1));
    let metrics = env.path("metrics/cairn.prom");
    std::fs::create_dir_all(metrics.parent().unwrap()).unwrap();
    let job = job_file(
        &env,
        "",
        &format!(
            r#"[metrics]
textfile = "{}"

[[source]]
name = "data"
kind = "path"
paths = ["{}"]
keep-last = 2

[[source]]
name = "manifests"
kind = "command"
command = "printf 'apiVersion: v1\\nkind: List\\n'"
filename = "manifests.yaml"
keep-last = 1
"#,
            s(&metrics),
            s(&data)
        ),
    );
    for night in 0..3 {
        write_file(
            &data.join(format!("night-{night}")),
            &random_bytes(100_000, 10 + night),
        );
        let out = run_job(&env, &["--config", s(&job), "--json"]);
        out.success();
        let report = out.json();
        assert_eq!(report["report"]["ok"], true, "{report}");
    }
    // keep-last 2 and 1: three snapshots remain, and prune ran after the removals.
    assert_eq!(env.snapshots::<&str>(&[]).len(), 3);
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert!(text.contains("cairn_run_success 1"), "{text}");
    // Nothing else ran beside this job's prune: nothing waits.
    assert!(text.contains("cairn_prune_packs_waiting 0"), "{text}");
    assert_prometheus_text(&text);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&metrics).unwrap().permissions().mode() & 0o777,
        0o644,
        "node-exporter (nobody) must be able to read the metrics"
    );
    let last_ok = text
        .lines()
        .find_map(|l| l.strip_prefix("cairn_run_last_success_timestamp_seconds "))
        .unwrap()
        .to_owned();
    let check = env.json(&["check", "--read-data"]);
    assert_eq!(check["ok"], true, "{check}");
    env.restore_latest_exact(&data, &env.path("r"), &["--tag", "cairn-source=data"]);

    // A run that stops early (the repository is gone: exit 10) still writes the metrics,
    // and says so; the last fully successful run's time stays.
    std::fs::rename(&env.repo, env.path("repo-away")).unwrap();
    let out = run_job(&env, &["--config", s(&job)]);
    assert_eq!(out.code, 10, "{}", out.dump());
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert_prometheus_text(&text);
    assert!(text.contains("cairn_run_success 0"), "{text}");
    assert!(
        text.contains("cairn_source_success{source=\"data\"} 0"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "cairn_run_last_success_timestamp_seconds {last_ok}"
        )),
        "{text}"
    );
}

/// The Prometheus text exposition format, as node-exporter's textfile collector parses it:
/// `# HELP`/`# TYPE` lines, then samples `name{label="value",…} number` of declared metrics.
fn assert_prometheus_text(text: &str) {
    let mut typed = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let name = it.next().unwrap();
            assert!(matches!(it.next(), Some("gauge" | "counter")), "{line}");
            assert!(typed.insert(name.to_owned()), "TYPE twice: {line}");
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        assert!(value.parse::<f64>().is_ok(), "bad value in {line:?}");
        let name = series.split('{').next().unwrap();
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "bad name in {line:?}"
        );
        assert!(typed.contains(name), "sample before its TYPE: {line:?}");
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                let inner = labels
                    .strip_prefix('{')
                    .and_then(|l| l.strip_suffix('}'))
                    .unwrap_or_else(|| panic!("bad labels in {line:?}"));
                for pair in inner.split(',') {
                    let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("{line:?}"));
                    assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
                    assert!(
                        v.len() >= 2 && v.starts_with('"') && v.ends_with('"'),
                        "{line:?}"
                    );
                }
            }
        }
    }
}

/// Snapshots of source `data` on host `h`, one per `days_ago`, via `backup --time`.
fn snapshots_at(env: &Env, src: &Path, days_ago: &[i64]) {
    let now = jiff::Zoned::now();
    for d in days_ago {
        let t = now
            .checked_sub(jiff::Span::new().days(*d).minutes(7))
            .unwrap()
            .strftime("%Y-%m-%d %H:%M:%S")
            .to_string();
        write_file(&src.join("f"), format!("{d}").as_bytes());
        env.backup(&[
            "--host",
            "h",
            "--tag",
            "cairn-source=data",
            "--time",
            &t,
            s(src),
        ]);
    }
}

fn removed_by_forget(env: &Env, policy: &[&str]) -> (Vec<String>, String) {
    let mut args = vec![
        "--json",
        "forget",
        "--dry-run",
        "--host",
        "h",
        "--tag",
        "cairn-source=data",
        "--group-by",
        "",
    ];
    args.extend_from_slice(policy);
    let out = env.run(&args);
    out.success();
    let v = out.json();
    let mut ids: Vec<String> = v["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    (ids, out.stderr)
}

fn removed_by_run(env: &Env, src: &Path, rules: &str) -> (Vec<String>, String) {
    let job = job_file(
        env,
        "host = \"h\"",
        &format!(
            "[[source]]\nname = \"data\"\nkind = \"path\"\npaths = [\"{}\"]\n{rules}\n",
            s(src)
        ),
    );
    let out = run_job(env, &["--config", s(&job), "--dry-run", "--json"]);
    out.success();
    // Warnings come as JSON lines of their own before the report.
    let v: serde_json::Value = out
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message_type"] == "run")
        .unwrap_or_else(|| panic!("no run report: {}", out.dump()));
    let r = v["report"]["retention"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "data")
        .unwrap_or_else(|| panic!("no retention for source data: {v}"))
        .clone();
    let mut ids: Vec<String> = r["remove"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    (ids, out.stderr)
}

#[test]
fn forget_and_run_make_the_same_retention_decisions() {
    let env = Env::new();
    let src = env.path("src");
    snapshots_at(&env, &src, &[40, 30, 21, 14, 9, 6, 4, 3, 2, 1, 1, 0]);
    // A mix of count and calendar-window rules, --keep-within-daily among them.
    let (forget, _) = removed_by_forget(
        &env,
        &[
            "--keep-last",
            "2",
            "--keep-within-daily",
            "5d",
            "--keep-weekly",
            "2",
        ],
    );
    let (run, _) = removed_by_run(
        &env,
        &src,
        "keep-last = 2\nkeep-within-daily = \"5d\"\nkeep-weekly = 2",
    );
    assert!(!forget.is_empty() && forget.len() < 12, "{forget:?}");
    assert_eq!(forget, run, "forget and run disagree");

    // A policy that would empty the group: both keep everything, and both say so.
    let (forget, ferr) = removed_by_forget(&env, &["--keep-tag", "no-such-tag"]);
    let (run, rerr) = removed_by_run(&env, &src, "keep-tag = [\"no-such-tag\"]");
    assert!(forget.is_empty() && run.is_empty(), "{forget:?} {run:?}");
    assert!(ferr.contains("would remove all"), "{ferr}");
    assert!(rerr.contains("would remove all"), "{rerr}");
}

#[test]
fn two_runs_started_together_both_succeed() {
    let env = Env::with_init_args(&["--pack-size-mib", "1"]);
    let data = env.path("data");
    for i in 0..4 {
        write_file(&data.join(format!("f{i}")), &random_bytes(4 << 20, 70 + i));
    }
    let job = job_file(
        &env,
        "",
        &format!(
            "[[source]]\nname = \"data\"\nkind = \"path\"\npaths = [\"{}\"]\nkeep-last = 1\n",
            s(&data)
        ),
    );
    // Seed one snapshot so that both runs have retention and prune to do.
    run_job(&env, &["--config", s(&job)]).success();
    let mut children = Vec::new();
    for i in 0..2 {
        write_file(
            &data.join(format!("new-{i}")),
            &random_bytes(2 << 20, 90 + i),
        );
        let mut c = crate::util::bare_cairn();
        c.args(["run", "--config", s(&job)])
            .env("HOME", env.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        children.push(c.spawn().unwrap());
    }
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "a concurrent run failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        env.snapshots::<&str>(&[]).len(),
        1,
        "keep-last 1 after both runs"
    );
    let check = env.json(&["check", "--read-data"]);
    assert_eq!(check["ok"], true, "{check}");
}

/// An exclusive lock of a live process on another host.
fn plant_foreign_lock(env: &Env) -> PathBuf {
    let forger = Forger::new(env);
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
        hostname: "other-node".into(),
        username: "root".into(),
        pid: 4242,
    };
    let bytes = lock.encode_sealed(&forger.key, 3, 3).unwrap();
    env.repo.join("locks").join(forger.put("locks", &bytes))
}

#[test]
fn retry_lock_waits_for_a_lock_to_go_away_and_zero_fails_fast() {
    let env = Env::new();
    let src = env.path("src");
    write_file(&src.join("f"), b"data");
    let lock = plant_foreign_lock(&env);
    // Fail-fast: the default for commands, and --retry-lock 0 for the job.
    env.run(&["backup", s(&src)])
        .assert_error(11, &["other-node"]);
    let job = job_file(
        &env,
        "",
        &format!(
            "[[source]]\nname = \"d\"\nkind = \"path\"\npaths = [\"{}\"]\n",
            s(&src)
        ),
    );
    let started = Instant::now();
    let out = run_job(&env, &["--config", s(&job), "--retry-lock", "0"]);
    assert_eq!(out.code, 11, "{}", out.dump());
    assert!(started.elapsed() < Duration::from_secs(5));
    // Waiting: the lock goes away after a second and the backup then runs.
    let remover = {
        let lock = lock.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1200));
            std::fs::remove_file(lock).unwrap();
        })
    };
    let started = Instant::now();
    let out = env.run(&["backup", "--retry-lock", "30s", s(&src)]);
    remover.join().unwrap();
    out.success();
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "did not wait"
    );
    assert!(out.stderr.contains("waiting"), "{}", out.dump());
    // A wait that runs out fails with the lock error.
    plant_foreign_lock(&env);
    let started = Instant::now();
    env.run(&["backup", "--retry-lock", "1s", s(&src)])
        .assert_reports(11, &["other-node"]);
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[test]
fn usage_errors_of_backup_and_forget_exit_2() {
    let env = Env::new();
    env.run(&["backup"])
        .assert_error(2, &["nothing to back up"]);
    env.run(&["forget"]).assert_error(2, &["no policy"]);
    env.run(&["backup", "--retry-lock", "soon", "x"])
        .expect_code(2);
}

/// A k3s-etcd job over `snaps` (snapshot dir) and `token`, keep-last 1, and a manifests
/// source.
fn etcd_job(env: &Env, snaps: &Path, token: &Path) -> PathBuf {
    job_file(
        env,
        "",
        &format!(
            r#"[[source]]
name = "etcd"
kind = "k3s-etcd"
snapshot-dir = "{}"
token-file = "{}"
keep-last = 1

[[source]]
name = "manifests"
kind = "command"
command = "printf 'apiVersion: v1\\nkind: List\\n'"
filename = "manifests.yaml"
keep-last = 1
"#,
            s(snaps),
            s(token)
        ),
    )
}

#[test]
fn a_bad_etcd_snapshot_fails_its_source_and_never_replaces_a_good_one() {
    let env = Env::new();
    let snaps = env.path("k3s/snapshots");
    // The token's name does not end in "token": roles are told by content.
    let token = env.path("k3s/token.txt");
    write_file(&token, b"K10secret::server:abc\n");
    let good = crate::util::etcd_snapshot(32, 1);
    write_file(&snaps.join("etcd-snapshot-n1-1700000000"), &good);
    let job = etcd_job(&env, &snaps, &token);
    run_job(&env, &["--config", s(&job)]).success();
    let good_snap = env.snapshots(&["--tag", "cairn-source=etcd"]);
    assert_eq!(good_snap.len(), 1);
    let good_id = good_snap[0]["id"].as_str().unwrap().to_owned();

    let mut newest = 1_700_000_100u64;
    let mut bad = |name: &str, bytes: Vec<u8>| {
        newest += 100;
        std::thread::sleep(Duration::from_millis(20));
        let p = snaps.join(format!("etcd-snapshot-n1-{newest}"));
        write_file(&p, &bytes);
        let out = run_job(&env, &["--config", s(&job)]);
        assert_ne!(out.code, 0, "{name}: {}", out.dump());
        assert!(
            out.stdout.contains("FAIL") && out.stdout.contains("etcd"),
            "{name}: {}",
            out.dump()
        );
        // Still exactly the good snapshot: nothing stored, retention did not touch it.
        let now: Vec<String> = env
            .snapshots(&["--tag", "cairn-source=etcd"])
            .iter()
            .map(|v| v["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(now, vec![good_id.clone()], "{name}");
        let v = env.run(&["k3s", "verify", s(&p)]);
        assert_ne!(v.code, 0, "{name}: {}", v.dump());
        std::fs::remove_file(p).unwrap();
    };
    bad("truncated", good[..good.len() / 2].to_vec());
    let mut flipped = good.clone();
    flipped[10 * 4096 + 17] ^= 0x40;
    bad("bit-flipped", flipped);
    bad("hash-less", good[..good.len() - 32].to_vec());
    // A file that cannot be read says why, not only which.
    let gone = env.path("no-such-snapshot");
    let v = env.run(&["k3s", "verify", s(&gone)]);
    assert!(
        v.code != 0 && v.stdout.contains("FAIL") && v.stdout.contains("No such file"),
        "{}",
        v.dump()
    );

    // restore-etcd: the snapshot and the token by content, the command to run, and the
    // restored file verified.
    let target = env.path("etcd-restore");
    let out = job_cmd(
        &env,
        &[
            "k3s",
            "restore-etcd",
            "--config",
            s(&job),
            "--target",
            s(&target),
        ],
    );
    out.success();
    let restored_token = target.join(s(&token).trim_start_matches('/'));
    let restored_snap = target
        .join(s(&snaps).trim_start_matches('/'))
        .join("etcd-snapshot-n1-1700000000");
    assert!(
        out.stdout.contains(&format!(
            "--cluster-reset-restore-path={}",
            s(&restored_snap)
        )) && out
            .stdout
            .contains(&format!("--token-file={}", s(&restored_token))),
        "{}",
        out.dump()
    );
    env.ok(&["k3s", "verify", s(&restored_snap)]);

    // A snapshot of another source is refused, not printed as a cluster-reset path.
    let manifests = env.snapshots(&["--tag", "cairn-source=manifests"]);
    let mid = manifests[0]["short_id"].as_str().unwrap();
    let out = job_cmd(
        &env,
        &[
            "k3s",
            "restore-etcd",
            "--config",
            s(&job),
            "--target",
            s(&env.path("wrong")),
            "--snapshot",
            mid,
        ],
    );
    assert_ne!(out.code, 0, "{}", out.dump());
    assert!(
        out.stderr.contains("holds no verified etcd snapshot")
            && !out.stdout.contains("cluster-reset"),
        "{}",
        out.dump()
    );
}

/// A real etcd on loopback, a real `etcdctl snapshot save`, backed up by the job, restored
/// by `k3s restore-etcd`, and accepted by `etcdctl snapshot restore`. Skipped (with a
/// message) where etcd is not installed; `.ci/run` installs it.
#[test]
fn a_real_etcd_snapshot_round_trips_through_the_job() {
    let have = |b: &str, arg: &str| {
        std::process::Command::new(b)
            .arg(arg)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !have("etcd", "--version") || !have("etcdctl", "version") {
        eprintln!("SKIPPED: etcd/etcdctl not installed (apt-get install etcd-server etcd-client)");
        return;
    }
    let env = Env::new();
    let port = 23_000 + (std::process::id() % 2000) as u16 * 2;
    let client = format!("http://127.0.0.1:{port}");
    let peer = format!("http://127.0.0.1:{}", port + 1);
    let data = env.path("etcd-data");
    let mut etcd = std::process::Command::new("etcd")
        .args(["--data-dir", s(&data), "--listen-client-urls", &client])
        .args([
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            &peer,
        ])
        .args(["--initial-advertise-peer-urls", &peer])
        .arg(format!("--initial-cluster=default={peer}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ctl = |args: &[&str]| {
        std::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &client])
            .args(args)
            .output()
            .unwrap()
    };
    let started = Instant::now();
    while !ctl(&["put", "/registry/ready", "1"]).status.success() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "etcd did not start"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for i in 0..50 {
        assert!(
            ctl(&["put", &format!("/registry/pods/p{i}"), &"x".repeat(300)])
                .status
                .success()
        );
    }
    let snaps = env.path("k3s/snapshots");
    std::fs::create_dir_all(&snaps).unwrap();
    let snap = snaps.join("etcd-snapshot-real-1700000000");
    let saved = ctl(&["snapshot", "save", s(&snap)]);
    let _ = etcd.kill();
    let _ = etcd.wait();
    assert!(
        saved.status.success(),
        "{}",
        String::from_utf8_lossy(&saved.stderr)
    );
    let token = env.path("k3s/token");
    write_file(&token, b"K10real::server:xyz\n");
    let job = etcd_job(&env, &snaps, &token);
    run_job(&env, &["--config", s(&job)]).success();
    let target = env.path("restore");
    job_cmd(
        &env,
        &[
            "k3s",
            "restore-etcd",
            "--config",
            s(&job),
            "--target",
            s(&target),
        ],
    )
    .success();
    let restored = target.join(s(&snap).trim_start_matches('/'));
    assert_eq!(
        std::fs::read(&restored).unwrap(),
        std::fs::read(&snap).unwrap()
    );
    let out = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "snapshot",
            "restore",
            s(&restored),
            "--data-dir",
            s(&env.path("etcd-restored")),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "etcdctl refused the restored snapshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_command_that_hangs_past_its_timeout_fails_its_source_only() {
    let env = Env::new();
    let data = env.path("data");
    write_file(&data.join("f"), b"data");
    let job = job_file(
        &env,
        "",
        &format!(
            r#"[[source]]
name = "stuck"
kind = "command"
command = "printf partial; sleep 60"
filename = "stuck.yaml"
timeout = "1s"

[[source]]
name = "data"
kind = "path"
paths = ["{}"]
"#,
            s(&data)
        ),
    );
    let started = Instant::now();
    let out = run_job(&env, &["--config", s(&job)]);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert_ne!(out.code, 0, "{}", out.dump());
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("FAIL") && l.contains("stuck") && l.contains("timeout")),
        "{}",
        out.dump()
    );
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("ok") && l.contains("data")),
        "{}",
        out.dump()
    );
    // Nothing of the stuck command was stored; the other source was.
    assert!(env.snapshots(&["--tag", "cairn-source=stuck"]).is_empty());
    assert_eq!(env.snapshots(&["--tag", "cairn-source=data"]).len(), 1);
}

#[test]
fn generated_units_bound_the_run_and_the_cron_line_is_valid_shell() {
    let env = Env::new();
    let data = env.path("data");
    write_file(&data.join("f"), b"x");
    let job = job_file(
        &env,
        "",
        &format!(
            "[schedule]\nat = \"02:30\"\nrandomized-delay-minutes = 20\n\n[[source]]\nname = \"d\"\nkind = \"path\"\npaths = [\"{}\"]\n",
            s(&data)
        ),
    );
    let unit = env
        .ok(&["schedule", "--print", "systemd", "--config", s(&job)])
        .stdout;
    for want in [
        "TimeoutStartSec=",
        "EnvironmentFile=-/etc/cairn/cairn.env",
        "User=root",
        "OnCalendar=*-*-* 02:30:00",
        "RandomizedDelaySec=20m",
    ] {
        assert!(unit.contains(want), "{want} missing:\n{unit}");
    }
    assert!(!unit.contains("waits for the first"), "{unit}");
    let cron = env
        .ok(&["schedule", "--print", "cron", "--config", s(&job)])
        .stdout;
    let line = cron
        .lines()
        .find(|l| l.starts_with("30 2 * * * root "))
        .unwrap_or_else(|| panic!("{cron}"));
    assert!(
        line.contains("flock -n") && line.contains("\\% 1200"),
        "{line}"
    );
    assert!(cron.contains("MAILTO="), "{cron}");
    // What cron runs: the command after the user field, with `\%` unescaped.
    let cmd = line["30 2 * * * root ".len()..].replace("\\%", "%");
    let st = std::process::Command::new("sh")
        .args(["-n", "-c", &cmd])
        .status()
        .unwrap();
    assert!(st.success(), "not valid shell: {cmd}");
}

/// GET `path` from a plain HTTP server on loopback; the body.
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
    out.split_once("\r\n\r\n").unwrap().1.to_owned()
}

#[test]
fn daemon_runs_the_job_serves_metrics_and_stops_on_sigterm() {
    let env = Env::new();
    let data = env.path("pv");
    write_file(&data.join("db.bin"), &crate::util::random_bytes(1 << 20, 5));
    let job = job_file(
        &env,
        "",
        &format!(
            "[schedule]\nat = \"03:00\"\nrandomized-delay-minutes = 30\n\n[[source]]\nname = \"volumes\"\nkind = \"path\"\npaths = [\"{}\"]\nkeep-last = 3\n",
            s(&data)
        ),
    );
    let mut child = crate::util::bare_cairn()
        .args([
            "run",
            "--config",
            s(&job),
            "--daemon",
            "--run-now",
            "--host",
            "node-7",
        ])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .env("HOME", env.dir.path())
        .env("XDG_CACHE_HOME", env.dir.path().join(".cache"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    // Keep reading what it prints (each run's report): a closed pipe would end it.
    let drain = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut rest);
        rest
    });
    let port: u16 = line
        .split("http://127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    assert_eq!(http_get(port, "/healthz"), "ok\n");
    // The first run starts at once; its metrics appear when it is done.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let metrics = loop {
        let m = http_get(port, "/metrics");
        if m.contains("cairn_run_success 1") {
            break m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no successful run: {m}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_prometheus_text(&metrics);
    // The next run is tomorrow's 03:00 (local time) plus at most 30 minutes.
    let next: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("cairn_daemon_next_run_timestamp_seconds "))
        .unwrap()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        next > now && next < now + 86_400.0 + 1_800.0 + 60.0,
        "{next} vs {now}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    let printed = drain.join().unwrap();
    assert!(printed.contains("ok   volumes"), "{printed}");
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM while waiting ends the daemon cleanly"
    );
    let snaps = env.snapshots(&["--host", "node-7"]);
    assert_eq!(snaps.len(), 1, "one snapshot, under the --host name");
}
