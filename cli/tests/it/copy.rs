//! `copy` between repositories: exact round trips, nothing sent twice, resumption after a
//! crash; local ↔ S3 in `s3.rs`.

use serde_json::Value;

use crate::util::{random_bytes, run_command, s, write_file, Env, Output};

/// `cairn -r dst copy ARGS --from-repo src` (source password from the environment).
pub(crate) fn copy(dst: &Env, src: &Env, args: &[&str], failpoint: Option<&str>) -> Output {
    let mut c = dst.cmd();
    c.arg("copy")
        .args(args)
        .arg("--from-repo")
        .arg(&src.repo)
        .env("CAIRN_FROM_PASSWORD", &src.password);
    if let Some(f) = failpoint {
        c.env("CAIRN_FAILPOINT", f);
    }
    run_command(c, None)
}

pub(crate) fn copy_report(out: &Output) -> Value {
    out.success();
    let v: Value = serde_json::from_str(out.stdout.lines().last().unwrap()).unwrap();
    v["report"].clone()
}

/// A destination created to name blobs like `src`.
pub(crate) fn init_like(dst: &Env, src: &Env, extra: &[&str]) {
    let mut c = dst.cmd();
    c.args([
        "init",
        "--kdf-memory-mib",
        "8",
        "--kdf-iterations",
        "1",
        "--copy-chunker-params",
    ])
    .args(extra)
    .arg("--from-repo")
    .arg(&src.repo)
    .env("CAIRN_FROM_PASSWORD", &src.password);
    run_command(c, None).success();
}

#[test]
fn copy_round_trips_and_never_sends_a_blob_twice() {
    let src = Env::new();
    let data = src.path("data");
    crate::backup_restore::build_full_tree(&data);
    src.backup(&["--tag", "night1", s(&data)]);
    write_file(&data.join("new"), &random_bytes(300_000, 77));
    src.backup(&["--tag", "night2", s(&data)]);

    let dst = Env::uninitialized();
    init_like(&dst, &src, &[]);
    let first = copy_report(&copy(&dst, &src, &["--json"], None));
    assert_eq!(first["same_ids"], true);
    assert_eq!(first["copied"].as_array().unwrap().len(), 2);
    // The second night's blobs were mostly the first night's: read once.
    let sent = first["blobs_sent"].as_u64().unwrap();
    assert_eq!(first["blobs_read"].as_u64().unwrap(), sent, "{first}");
    let again = copy_report(&copy(&dst, &src, &["--json"], None));
    assert_eq!(again["skipped"], 2);
    assert_eq!(again["blobs_sent"], 0);
    assert_eq!(again["blobs_read"], 0);
    dst.ok(&["check", "--read-data"]);
    // Same time, host, tags; contents exactly.
    let (a, b) = (src.snapshots::<&str>(&[]), dst.snapshots::<&str>(&[]));
    for (x, y) in a.iter().zip(&b) {
        for k in ["time", "hostname", "tags", "paths", "tree"] {
            assert_eq!(x[k], y[k], "{k}");
        }
    }
    dst.restore_latest_exact(&data, &dst.path("restored"), &[]);

    // Into a repository with its own blob naming: still exact, every blob read once.
    let other = Env::new();
    let r = copy_report(&copy(&other, &src, &["--json", "--tag", "night1"], None));
    assert_eq!(r["same_ids"], false);
    assert_eq!(r["copied"].as_array().unwrap().len(), 1);
    other.ok(&["check", "--read-data"]);
    let r = copy_report(&copy(&other, &src, &["--json"], None));
    assert_eq!(
        (r["skipped"].as_u64(), r["copied"].as_array().unwrap().len()),
        (Some(1), 1)
    );
    other.restore_latest_exact(&data, &other.path("restored"), &[]);

    // A snapshot rewritten at the source (same time, host, paths) is copied again: the
    // offsite copy must not keep what was rewritten away.
    src.ok(&["rewrite", "--exclude", "**/small.txt", "--forget"]);
    let r = copy_report(&copy(&dst, &src, &["--json"], None));
    assert_eq!(r["copied"].as_array().unwrap().len(), 2, "{r}");
}

#[test]
fn an_interrupted_copy_resumes_without_resending_stored_packs() {
    let src = Env::with_init_args(&["--pack-size-mib", "1"]);
    let data = src.path("data");
    for i in 0..6 {
        write_file(&data.join(format!("f{i}")), &random_bytes(2 << 20, 900 + i));
    }
    src.backup(&[s(&data)]);
    let dst = Env::uninitialized();
    init_like(&dst, &src, &["--pack-size-mib", "1"]);
    let crashed = copy(&dst, &src, &[], Some("abort-after-packs:6"));
    assert!(
        crashed.code != 0 && crashed.stderr.contains("aborting after 6 packs"),
        "{}",
        crashed.dump()
    );
    assert!(dst.snapshots::<&str>(&[]).is_empty());
    // What the crashed run stored and indexed (an index file follows every pack).
    let stored = dst.ok(&["list", "blobs"]).stdout.lines().count() as u64;
    assert!(stored >= 5, "the crashed run indexed only {stored} blobs");
    let resumed = copy_report(&copy(&dst, &src, &["--json"], None));
    let (sent, present) = (
        resumed["blobs_sent"].as_u64().unwrap(),
        resumed["blobs_present"].as_u64().unwrap(),
    );
    // None of it is sent again; only the rest is.
    assert!(
        present >= stored,
        "{stored} stored, but only {present} reused: {resumed}"
    );
    assert!(sent > 0, "{resumed}");
    dst.ok(&["check", "--read-data"]);
    dst.restore_latest_exact(&data, &dst.path("restored"), &[]);
    // The crashed run's unindexed leftovers are prune's to remove.
    dst.ok(&["prune"]);
    dst.ok(&["check", "--read-data"]);
}

#[test]
fn copy_refuses_the_same_repository_and_a_wrong_source_password() {
    let env = Env::new();
    let out = copy(&env, &env, &[], None);
    out.assert_error(1, &["same repository"]);
    let dst = Env::new();
    let mut c = dst.cmd();
    c.args(["copy", "--from-repo"])
        .arg(&env.repo)
        .env("CAIRN_FROM_PASSWORD", "wrong");
    let out = run_command(c, None);
    assert_eq!(out.code, 12, "{}", out.dump());
}
