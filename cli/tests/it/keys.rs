//! Key management: add, list, remove, passwd.

use serde_json::Value;

use crate::util::{s, write_file, Env, PASSWORD};

const CHEAP: [&str; 4] = ["--kdf-memory-mib", "8", "--kdf-iterations", "1"];

fn keys(env: &Env, password: &str) -> Vec<Value> {
    let out = env.run_pw(password, &["--json", "key", "list"]);
    out.success();
    out.json().as_array().unwrap().clone()
}

fn current(keys: &[Value]) -> String {
    let cur: Vec<&Value> = keys.iter().filter(|k| k["current"] == true).collect();
    assert_eq!(cur.len(), 1, "exactly one key must be current: {keys:?}");
    cur[0]["id"].as_str().unwrap().to_owned()
}

#[test]
fn key_add_list_remove_passwd() {
    let env = Env::new();
    let src = env.path("src");
    write_file(&src.join("f"), b"data");
    env.backup(&[s(&src)]);

    let initial = keys(&env, PASSWORD);
    assert_eq!(initial.len(), 1, "{initial:?}");
    let first_key = current(&initial);

    // Add a second password.
    let pw_file = env.path("pw2");
    write_file(&pw_file, b"second password\n");
    let mut args = vec!["key", "add", "--new-password-file", s(&pw_file)];
    args.extend_from_slice(&CHEAP);
    env.ok(&args);

    // Both passwords open the repository.
    assert_eq!(
        env.run_pw("second password", &["--json", "snapshots"])
            .success()
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let two = keys(&env, PASSWORD);
    assert_eq!(two.len(), 2, "{two:?}");
    assert_eq!(
        current(&two),
        first_key,
        "with the first password, the first key is current"
    );
    let second_key = current(&keys(&env, "second password"));
    assert_ne!(second_key, first_key);

    // The key in use cannot be removed, even when another exists.
    let out = env.run(&["key", "remove", &first_key]);
    assert_ne!(
        out.code,
        0,
        "removing the key in use succeeded: {}",
        out.dump()
    );
    assert!(out.stderr.contains("refusing"), "{}", out.dump());
    assert_eq!(keys(&env, PASSWORD).len(), 2);

    // Removing the other one works (by prefix), and its password stops working.
    env.ok(&["key", "remove", &second_key[..12]]);
    let after = keys(&env, PASSWORD);
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(current(&after), first_key);
    env.run_pw("second password", &["snapshots"])
        .assert_error(12, &["wrong password"]);

    // The last key cannot be removed.
    let out = env.run(&["key", "remove", &first_key]);
    assert_ne!(
        out.code,
        0,
        "removing the last key succeeded: {}",
        out.dump()
    );
    assert!(out.stderr.contains("refusing"), "{}", out.dump());
    assert_eq!(env.objects("keys").len(), 1);

    // An unknown key id is an error.
    let out = env.run(&["key", "remove", "0000000000"]);
    assert_ne!(out.code, 0, "{}", out.dump());

    // passwd: the new password works, the old one does not.
    let pw_file3 = env.path("pw3");
    write_file(&pw_file3, b"third password\n");
    let mut args = vec!["key", "passwd", "--new-password-file", s(&pw_file3)];
    args.extend_from_slice(&CHEAP);
    env.ok(&args);
    env.run(&["snapshots"])
        .assert_error(12, &["wrong password"]);
    let snaps = env
        .run_pw("third password", &["--json", "snapshots"])
        .success()
        .json();
    assert_eq!(snaps.as_array().unwrap().len(), 1);
    let final_keys = keys(&env, "third password");
    assert_eq!(
        final_keys.len(),
        1,
        "passwd must replace the key, not add one: {final_keys:?}"
    );
    assert_ne!(current(&final_keys), first_key);

    // Data is still readable with the new password.
    let target = env.path("t");
    env.run_pw(
        "third password",
        &[
            "restore",
            &format!("latest:{}", s(&src)),
            "--target",
            s(&target),
        ],
    )
    .success();
    assert_eq!(std::fs::read(target.join("f")).unwrap(), b"data");
}

#[test]
fn key_add_via_env_and_second_key_survives_passwd_of_first() {
    let env = Env::new();
    let mut cmd = env.cmd();
    cmd.env("CAIRN_NEW_PASSWORD", "from env")
        .args(["key", "add"])
        .args(CHEAP);
    crate::util::run_command(cmd, None).success();
    let mut cmd = env.cmd();
    cmd.env("CAIRN_NEW_PASSWORD", "changed")
        .args(["key", "passwd"])
        .args(CHEAP);
    crate::util::run_command(cmd, None).success();
    // The other key is untouched by passwd of the first.
    env.run_pw("from env", &["snapshots"]).success();
    env.run_pw("changed", &["snapshots"]).success();
    env.run(&["snapshots"])
        .assert_error(12, &["wrong password"]);
    assert_eq!(keys(&env, "changed").len(), 2);

    // --password-file takes the first line of a file, and wins over CAIRN_PASSWORD.
    let f = env.path("pwfile");
    write_file(&f, b"from env\nsecond line is ignored\n");
    env.run_pw("wrong", &["--password-file", s(&f), "snapshots"])
        .success();
    write_file(&f, b"wrong\n");
    env.run_pw("changed", &["--password-file", s(&f), "snapshots"])
        .assert_error(12, &["wrong password"]);
}
