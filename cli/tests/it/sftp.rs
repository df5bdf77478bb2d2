//! The `sftp:` backend against a real OpenSSH server on loopback (`scripts/sshd-server.sh`,
//! started by `.ci/run`): the round trip, an interrupted backup and the next one, the
//! nightly job, concurrent writers and prune, and the errors of a host that cannot be reached.

use std::path::PathBuf;

use crate::s3::{init, make_source};
use crate::util::{random_bytes, s, write_file, Env};

#[test]
fn sftp_backup_restore_forget_prune_check() {
    let Some(env) = Env::sftp("roundtrip") else {
        return;
    };
    init(&env, &["--pack-size-mib", "4"]);
    let src = make_source(&env, 1);
    let first = env.backup(&[s(&src)]);
    assert_eq!(first["errors"], 0, "{first}");
    env.restore_latest_exact(&src, &env.path("r1"), &[]);
    env.ok(&["check", "--read-data"]);

    write_file(&src.join("small/d1/f1"), b"changed");
    write_file(&src.join("big/f0.bin"), &random_bytes(6 << 20, 77));
    let second = env.backup(&[s(&src)]);
    assert_eq!(second["parent"], first["snapshot_id"], "{second}");
    assert_eq!(second["files_changed"], 2, "{second}");
    // The second backup loads the index through the cache: nothing to fetch but what the
    // first one did not write.
    assert!(
        second["index_bytes_fetched"].as_u64().unwrap() <= second["index_bytes"].as_u64().unwrap()
    );

    env.ok(&["forget", "--keep-last", "1", "--prune"]);
    assert_eq!(env.snapshots::<&str>(&[]).len(), 1);
    env.ok(&["check", "--read-data"]);
    env.restore_latest_exact(&src, &env.path("r2"), &[]);
    // Wrong password over sftp, too.
    env.run_pw("wrong", &["snapshots"])
        .assert_error(12, &["password"]);
}

#[test]
fn sftp_killed_backup_is_resumed_and_its_leftovers_pruned() {
    let Some(env) = Env::sftp("killed") else {
        return;
    };
    init(&env, &["--pack-size-mib", "1"]);
    let src = env.path("src");
    for i in 0..4 {
        write_file(&src.join(format!("f{i}")), &random_bytes(6 << 20, 500 + i));
    }
    // Dies (abort: no cleanup, like SIGKILL) right after its 4th pack upload.
    env.backup_killed_after_packs(&src, 4);
    assert!(env.snapshots::<&str>(&[]).is_empty());
    let resumed = env.backup(&[s(&src)]);
    assert_eq!(resumed["errors"], 0, "{resumed}");
    env.ok(&["check"]);
    let pruned = env.ok(&["--json", "prune"]).message("prune");
    assert!(
        pruned["report"]["packs_unreferenced"].as_u64().unwrap() > 0,
        "the killed run's packs are found: {pruned}"
    );
    let check = env.ok(&["--json", "check", "--read-data"]).message("check");
    assert_eq!(
        check["report"]["unreferenced_packs"]
            .as_array()
            .unwrap()
            .len(),
        0,
        "{check}"
    );
    assert_eq!(check["report"]["leftover_temp_files"], 0, "{check}");
    env.restore_latest_exact(&src, &env.path("r"), &[]);
}

#[test]
fn sftp_nightly_job() {
    let Some(env) = Env::sftp("job") else { return };
    init(&env, &[]);
    let data = env.path("pv/data");
    write_file(&data.join("db.bin"), &random_bytes(2 << 20, 9));
    let pw = env.path("password");
    std::fs::write(&pw, &env.password).unwrap();
    let command = env.options[1]
        .strip_prefix("sftp.command=")
        .unwrap()
        .to_owned();
    let job = env.path("job.toml");
    std::fs::write(
        &job,
        format!(
            r#"[repository]
path = "{repo}"
password-file = "{pw}"
options = {{ "sftp.command" = "{command}", "sftp.connections" = "2" }}

[[source]]
name = "volumes"
kind = "path"
paths = ["{data}"]
keep-last = 1
"#,
            repo = s(&env.repo),
            pw = s(&pw),
            data = s(&data),
        ),
    )
    .unwrap();
    let job_cmd = |args: &[&str]| {
        let mut c = crate::util::bare_cairn();
        c.args(args)
            .env("HOME", env.dir.path())
            .env("XDG_CACHE_HOME", env.dir.path().join(".cache"));
        crate::util::run_command(c, None)
    };
    job_cmd(&["run", "--config", s(&job)]).success();
    write_file(&data.join("db.bin"), &random_bytes(2 << 20, 10));
    job_cmd(&["run", "--config", s(&job)]).success();
    assert_eq!(env.snapshots::<&str>(&[]).len(), 1);
    env.ok(&["check", "--read-data"]);
    env.restore_latest_exact(&data, &env.path("r"), &[]);
}

#[test]
fn sftp_unreachable_host_and_missing_repository_are_clear_errors() {
    let Some(env) = Env::sftp("errors") else {
        return;
    };
    // No repository at that path yet.
    env.run(&["snapshots"]).assert_reports(10, &["repository"]);
    // A host that refuses the connection: ssh's own message, no hang.
    let mut bad = Env::uninitialized();
    bad.repo = PathBuf::from("sftp:nobody@127.0.0.1:/nowhere");
    bad.options = vec![
        "-o".into(),
        "sftp.command=ssh -F none -p 9 -o BatchMode=yes -o ConnectTimeout=5 nobody@127.0.0.1 -s sftp".into(),
    ];
    bad.run(&["snapshots"])
        .assert_reports(1, &["sftp", "connection"]);
}
