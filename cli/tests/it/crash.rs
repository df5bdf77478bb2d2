//! Crash safety: a backup killed at any moment leaves a repository that the next backup,
//! `snapshots` and `restore` work with.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::util::{random_bytes, s, write_file, Env};

/// Random data for the runs that get killed: big files (cut with the parallel chunker) and
/// many small ones, ~100 MiB in all, so that kills at a few hundred milliseconds land mid-run.
const BIG_FILES: usize = 8;
const BIG_SIZE: usize = 12 << 20;
const SMALL_FILES: usize = 300;

fn make_source(env: &Env) -> std::path::PathBuf {
    let src = env.path("src");
    for i in 0..BIG_FILES {
        write_file(
            &src.join(format!("big/file-{i:02}.bin")),
            &random_bytes(BIG_SIZE, 1000 + i as u64),
        );
    }
    let noise = random_bytes(SMALL_FILES * 4096, 999);
    for i in 0..SMALL_FILES {
        write_file(
            &src.join(format!("small/d{}/f-{i:03}", i % 10)),
            &noise[i * 4096..(i + 1) * 4096 - i],
        );
    }
    write_file(&src.join("small.txt"), b"small\n");
    src
}

/// Every object file (not an in-progress temp file) hashes to its name: a crash never leaves
/// a half-written object where readers look.
fn assert_objects_intact(env: &Env) {
    for dir in ["data", "index", "snapshots", "keys", "locks"] {
        for p in env.objects(dir) {
            let name = p.file_name().unwrap().to_str().unwrap().to_owned();
            let actual = cairn_format::Id::of_object(&std::fs::read(&p).unwrap()).to_hex();
            assert_eq!(
                actual,
                name,
                "{} does not hash to its name: a torn write is visible",
                p.display()
            );
        }
    }
}

#[test]
fn killed_backups_leave_a_usable_repository() {
    // Small packs, so packs are written all along the run and a kill can land mid-upload.
    let env = Env::with_init_args(&["--pack-size-mib", "1"]);
    let src = make_source(&env);

    let mut completed = 0usize;
    let mut saved = 0usize;
    let mut killed_mid_run = 0usize;
    // From a few milliseconds on: an unloaded machine backs the source up in ~0.2 s.
    for delay_ms in [20u64, 60, 150, 400, 1300] {
        let mut cmd = env.cmd();
        cmd.args(["backup", s(&src)])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().unwrap();
        let start = Instant::now();
        let mut finished = None;
        while start.elapsed() < Duration::from_millis(delay_ms) {
            if let Some(st) = child.try_wait().unwrap() {
                finished = Some(st);
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        match finished {
            Some(st) => {
                assert!(st.success(), "backup failed by itself: {st}");
                completed += 1;
            }
            None => {
                child.kill().unwrap(); // SIGKILL
                let st = child.wait().unwrap();
                if st.success() {
                    completed += 1; // it finished just before the signal
                } else {
                    killed_mid_run += 1;
                }
            }
        }
        assert_objects_intact(&env);
        // After each crash the repository is still readable.
        // (A kill can land after the snapshot was saved, before the process exited.)
        let snaps = env.snapshots::<&str>(&[]);
        assert!(
            snaps.len() >= completed && snaps.len() <= completed + killed_mid_run,
            "{} snapshots after {completed} completed and {killed_mid_run} killed runs: {snaps:?}",
            snaps.len()
        );
        saved = snaps.len();
    }
    eprintln!("{killed_mid_run} of 5 backups were killed mid-run, {completed} completed");
    assert!(
        killed_mid_run >= 1,
        "no backup was killed mid-run; the test did not test anything"
    );

    // Locks of killed processes are stale: `unlock` removes exactly those.
    let leftover = env.objects("locks").len();
    assert!(
        leftover <= killed_mid_run,
        "{leftover} locks for {killed_mid_run} killed runs"
    );
    let removed = env.json(&["unlock"]);
    assert_eq!(
        removed["removed"], leftover,
        "unlock did not remove the dead processes' locks"
    );
    assert!(env.objects("locks").is_empty());

    // A normal backup now succeeds and restores exactly.
    let summary = env.backup(&[s(&src)]);
    assert_eq!(summary["errors"], 0, "{summary}");
    assert_eq!(env.snapshots::<&str>(&[]).len(), saved + 1);
    let target = env.path("restored");
    env.restore_latest_exact(&src, &target, &[]);

    // A second backup on top finds everything stored (the crashed runs' leftovers do not
    // confuse deduplication or the parent lookup).
    let again = env.backup(&[s(&src)]);
    assert_eq!(again["data_blobs"], 0, "{again}");
    assert_eq!(again["parent"], summary["snapshot_id"], "{again}");
}

#[test]
fn interrupted_backup_exits_130_without_a_snapshot() {
    use nix::sys::signal::Signal;
    let env = Env::with_init_args(&["--pack-size-mib", "1"]);
    // Plenty of data: only the first fraction of a second is ever read.
    let src = make_source(&env);
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        let mut cmd = env.cmd();
        cmd.args(["backup", s(&src)])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let child = cmd.spawn().unwrap();
        // Once its lock is visible, the backup is past start-up (signal handlers installed).
        let start = Instant::now();
        while env.objects("locks").is_empty() && start.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(5));
        }
        // cairn installs its handlers before it takes the lock, so signal right away: a
        // fast machine finishes this backup within a fraction of a second.
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, sig).unwrap();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(130),
            "{sig} did not give exit code 130 (the backup may have finished first): {}\n{stderr}",
            out.status
        );
        assert!(stderr.contains("interrupted"), "{stderr}");
        assert!(
            env.snapshots::<&str>(&[]).is_empty(),
            "a backup interrupted by {sig} wrote a snapshot"
        );
        assert!(
            env.objects("locks").is_empty(),
            "a backup interrupted by {sig} left its lock behind"
        );
        assert_objects_intact(&env);
    }
    // And the next backup works.
    let summary = env.backup(&[s(&src.join("small.txt"))]);
    assert_eq!(summary["files_new"], 1, "{summary}");
    assert_eq!(env.snapshots::<&str>(&[]).len(), 1);
}
