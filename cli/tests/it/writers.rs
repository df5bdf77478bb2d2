//! Many writers, one repository (FORMAT.md §15): four "nodes" (own `--host`, own cache)
//! back up changing data in a loop while `forget --keep-last 2 --prune` runs in a loop beside
//! them, on a local repository and on S3. No backup and no prune may fail; at the end `check
//! --read-data` is clean and every snapshot left restores exactly what was backed up. The long
//! version (minutes, the 3-node Garage cluster with a node restarted) is
//! `scripts/stress-writers.sh`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::util::{assert_trees_equal, random_bytes, run_command, s, write_file, Env, Output};

const WRITERS: usize = 4;

/// A small deterministic generator, so that every writer's edits differ run to run only by
/// how many iterations fit in the time.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
}

/// A writer's first tree: a few larger files (several chunks) and many small ones.
fn seed_tree(src: &Path, w: usize) {
    for i in 0..3 {
        write_file(
            &src.join(format!("pv/vol{i}.img")),
            &random_bytes(600_000 + 100_000 * i, (w * 10 + i) as u64),
        );
    }
    for i in 0..40 {
        write_file(
            &src.join(format!("manifests/ns{}/obj{i}.yaml", i % 4)),
            format!("kind: ConfigMap\nmetadata:\n  name: w{w}-obj{i}\ndata:\n  k: {i}\n")
                .as_bytes(),
        );
    }
}

/// One night's changes: rewrite part of a volume, add and drop small files, edit one.
fn mutate(src: &Path, rng: &mut Lcg, round: u64) {
    let vol = src.join(format!("pv/vol{}.img", rng.next() % 3));
    let mut data = std::fs::read(&vol).unwrap();
    let at = (rng.next() as usize) % data.len().saturating_sub(70_000).max(1);
    let fresh = random_bytes(65_536, rng.next());
    let n = fresh.len().min(data.len() - at);
    data[at..at + n].copy_from_slice(&fresh[..n]);
    write_file(&vol, &data);
    write_file(
        &src.join(format!("manifests/new/r{round}.yaml")),
        format!("kind: Secret\nround: {round}\n").as_bytes(),
    );
    if round >= 2 {
        let _ = std::fs::remove_file(src.join(format!("manifests/new/r{}.yaml", round - 2)));
    }
    let edit = src.join(format!(
        "manifests/ns{}/obj{}.yaml",
        rng.next() % 4,
        rng.next() % 10 * 4
    ));
    if let Ok(mut b) = std::fs::read(&edit) {
        b.extend_from_slice(format!("# round {round}\n").as_bytes());
        write_file(&edit, &b);
    }
}

/// `cp -a`: the copy keeps modes and mtimes, for an exact comparison after restore.
fn copy_tree(from: &Path, to: &Path) {
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

fn run_as_writer(env: &Env, w: usize, args: &[&str]) -> Output {
    let mut cmd = env.cmd();
    // Each writer is a separate node with its own cache (and, through `cairn serve`, its
    // own append-only credential; the pruner keeps the environment's full one).
    cmd.env("XDG_CACHE_HOME", env.path(&format!("cache{w}")));
    if w < WRITERS && env.vars.iter().any(|(k, _)| k == "CAIRN_REST_USERNAME") {
        cmd.env("CAIRN_REST_USERNAME", crate::rest::node_name(w))
            .env("CAIRN_REST_PASSWORD", crate::rest::node_password(w));
    }
    cmd.args(args);
    run_command(cmd, None)
}

#[derive(Default)]
struct Outcome {
    backups: usize,
    prunes: usize,
    condemned: u64,
    deleted: u64,
    failures: Vec<String>,
    /// Snapshot id → the copy of what it backed up.
    copies: Vec<(String, PathBuf)>,
}

pub(crate) fn many_writers(env: &Env, run_for: Duration) {
    let deadline = Instant::now() + run_for;
    let outcome = std::thread::scope(|scope| {
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                scope.spawn(move || {
                    let src = env.path(&format!("node{w}/data"));
                    seed_tree(&src, w);
                    let mut rng = Lcg(w as u64 + 1);
                    let mut out = Outcome::default();
                    let host = format!("node{w}");
                    let mut round = 0u64;
                    while Instant::now() < deadline {
                        mutate(&src, &mut rng, round);
                        round += 1;
                        let r =
                            run_as_writer(env, w, &["--json", "backup", "--host", &host, s(&src)]);
                        if r.code != 0 {
                            out.failures.push(format!("backup {host}: {}", r.dump()));
                            continue;
                        }
                        out.backups += 1;
                        let id = r.summary()["snapshot_id"].as_str().unwrap().to_owned();
                        let copy = env.path(&format!("copies/{id}"));
                        std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
                        copy_tree(&src, &copy);
                        out.copies.push((id, copy));
                    }
                    out
                })
            })
            .collect();
        let pruner = scope.spawn(move || {
            let mut out = Outcome::default();
            let mut round = 0;
            while Instant::now() < deadline {
                // Every other run assumes perfectly synchronized clocks (one host here), so
                // that packs are deleted while backups run, not only in quiet moments.
                round += 1;
                let skew = if round % 2 == 0 { "0s" } else { "10m" };
                let r = run_as_writer(
                    env,
                    WRITERS,
                    &[
                        "--json",
                        "forget",
                        "--keep-last",
                        "2",
                        "--prune",
                        "--max-unused",
                        "0",
                        "--clock-skew",
                        skew,
                    ],
                );
                if r.code != 0 {
                    out.failures.push(format!("forget --prune: {}", r.dump()));
                } else {
                    out.prunes += 1;
                    for line in r.stdout.lines() {
                        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
                        if let Some(p) = v.get("prune").filter(|p| p.is_object()) {
                            out.condemned += p["packs_condemned"].as_u64().unwrap_or(0);
                            out.deleted += p["packs_deleted"].as_u64().unwrap_or(0);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(300));
            }
            out
        });
        let mut all: Vec<Outcome> = writers.into_iter().map(|h| h.join().unwrap()).collect();
        all.push(pruner.join().unwrap());
        all
    });
    let failures: Vec<&String> = outcome.iter().flat_map(|o| &o.failures).collect();
    assert!(failures.is_empty(), "failed commands:\n{failures:#?}");
    let backups: usize = outcome.iter().map(|o| o.backups).sum();
    let prunes: usize = outcome.iter().map(|o| o.prunes).sum();
    let condemned: u64 = outcome.iter().map(|o| o.condemned).sum();
    let deleted: u64 = outcome.iter().map(|o| o.deleted).sum();
    eprintln!(
        "{backups} backups, {prunes} prunes ({condemned} packs condemned, {deleted} deleted)"
    );
    assert!(
        backups >= 2 * WRITERS && prunes >= 2,
        "too little ran to test anything: {backups} backups, {prunes} prunes"
    );

    env.ok(&["check", "--read-data"]);
    // Every snapshot left restores exactly what its backup read.
    let left: Vec<(String, String)> = env
        .snapshots::<&str>(&[])
        .iter()
        .map(|v| {
            (
                v["id"].as_str().unwrap().to_owned(),
                v["paths"][0].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(left.len() >= WRITERS, "{left:?}");
    for (id, copy) in outcome.iter().flat_map(|o| &o.copies) {
        let Some((_, path)) = left.iter().find(|(i, _)| i == id) else {
            continue;
        };
        let target = env.path(&format!("restored/{id}"));
        env.ok(&["restore", &format!("{id}:{path}"), "--target", s(&target)]);
        assert_trees_equal(copy, &target, false);
    }
    // With the writers gone, one more prune deletes everything condemned.
    env.ok(&["prune", "--max-unused", "0"]);
    let check = env.ok(&["--json", "check"]).message("check");
    assert_eq!(check["report"]["condemned_packs"], 0, "{check}");
    assert_eq!(
        check["report"]["unreferenced_packs"]
            .as_array()
            .unwrap()
            .len(),
        0,
        "{check}"
    );
}

#[test]
fn four_writers_and_a_prune_loop_on_a_local_repository() {
    let env = Env::new();
    many_writers(&env, Duration::from_secs(12));
}

#[test]
fn four_writers_and_a_prune_loop_over_sftp() {
    let Some(env) = Env::sftp("writers") else {
        return;
    };
    env.ok(&["init", "--kdf-memory-mib", "8", "--kdf-iterations", "1"]);
    many_writers(&env, Duration::from_secs(10));
}

#[test]
fn four_writers_and_a_prune_loop_on_s3() {
    let Some(env) = Env::s3("writers") else {
        return;
    };
    env.ok(&["init", "--kdf-memory-mib", "8", "--kdf-iterations", "1"]);
    many_writers(&env, Duration::from_secs(12));
}

/// A lock of another host's process, written with the given mode, start and refresh times
/// (seconds before now).
fn foreign_lock(env: &Env, mode: cairn_format::LockMode, started_ago: i64, refreshed_ago: i64) {
    let forger = crate::util::Forger::new(env);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let at = |ago: i64| cairn_format::Timestamp {
        unix_nanos: now - ago * 1_000_000_000,
        utc_offset_secs: 0,
    };
    let lock = cairn_format::Lock {
        time: at(refreshed_ago),
        started: at(started_ago),
        mode,
        hostname: "other-node".into(),
        username: "root".into(),
        pid: 4242,
    };
    forger.put("locks", &lock.encode_sealed(&forger.key, 3, 3).unwrap());
}

#[test]
fn one_prune_at_a_time_backups_beside_it_and_dead_locks_expire() {
    let env = Env::new();
    let src = env.path("src");
    write_file(&src.join("f"), &random_bytes(300_000, 1));
    env.backup(&[s(&src)]);
    write_file(&src.join("f"), &random_bytes(300_000, 2));
    env.backup(&[s(&src)]);

    // Another node's prune is running (refreshed a minute ago).
    foreign_lock(&env, cairn_format::LockMode::Maintenance, 600, 60);
    // Backups and restores go on beside it...
    write_file(&src.join("g"), b"beside a prune");
    env.backup(&[s(&src)]);
    env.restore_latest_exact(&src, &env.path("r1"), &[]);
    // ...a second prune or forget does not, even when it waits a little.
    env.run(&["prune"])
        .assert_error(11, &["maintenance lock", "other-node"]);
    env.run(&[
        "--retry-lock",
        "1s",
        "forget",
        "--keep-last",
        "1",
        "--prune",
    ])
    .assert_reports(11, &["maintenance lock", "waiting up to 1s"]);
    assert_eq!(env.snapshots::<&str>(&[]).len(), 3);
    // Repair needs the repository alone.
    env.run(&["repair", "index"])
        .assert_error(11, &["maintenance lock"]);
    env.ok(&["unlock", "--remove-all"]);

    // A node died in the middle of its backup. Its lock blocks nothing 30 minutes after its
    // last refresh; prune, whose clock may be up to --clock-skew ahead, holds deletions back
    // for it 10 minutes longer and then removes it (no `unlock` needed).
    foreign_lock(&env, cairn_format::LockMode::Shared, 3600, 31 * 60);
    env.ok(&["unlock"]);
    assert_eq!(
        env.objects("locks").len(),
        1,
        "stale, but within prune's skew"
    );
    let r = env.json(&["prune", "--dry-run"]);
    assert!(!r["report"]["quiet"].as_bool().unwrap(), "{r}");
    env.ok(&["unlock", "--remove-all"]);
    foreign_lock(&env, cairn_format::LockMode::Shared, 3600, 41 * 60);
    let r = env.json(&["forget", "--keep-last", "1", "--prune"]);
    assert_eq!(r["prune"]["stale_locks_removed"], 1, "{r}");
    assert!(r["prune"]["quiet"].as_bool().unwrap(), "{r}");
    assert!(r["prune"]["packs_deleted"].as_u64().unwrap() > 0, "{r}");
    assert!(env.objects("locks").is_empty());

    // A live backup on another node that started before the prune holds its deletions back:
    // what prune condemns waits, and goes once that backup is gone.
    write_file(&src.join("f"), &random_bytes(300_000, 3));
    env.backup(&[s(&src)]);
    foreign_lock(&env, cairn_format::LockMode::Shared, 5, 5);
    let r = env.json(&["forget", "--keep-last", "1", "--prune"]);
    assert_eq!(r["prune"]["packs_deleted"], 0, "{r}");
    assert!(r["prune"]["packs_waiting"].as_u64().unwrap() > 0, "{r}");
    env.ok(&["check", "--read-data"]);
    env.restore_latest_exact(&src, &env.path("r2"), &[]);
    // A host whose clock runs 20 minutes ahead (more than the skew): no time comparison is
    // trusted, nothing condemned goes while it runs, whatever its lock claims.
    env.ok(&["unlock", "--remove-all"]);
    foreign_lock(&env, cairn_format::LockMode::Shared, -1200, -1200);
    let r = env.json(&["prune"]);
    assert_eq!(r["report"]["packs_deleted"], 0, "{r}");
    assert!(r["report"]["packs_waiting"].as_u64().unwrap() > 0, "{r}");
    env.ok(&["unlock", "--remove-all"]);
    let r = env.json(&["prune"]);
    assert!(r["report"]["packs_deleted"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["report"]["packs_waiting"], 0, "{r}");
    let c = env.json(&["check", "--read-data"]);
    assert_eq!(c["report"]["condemned_packs"], 0, "{c}");
}
