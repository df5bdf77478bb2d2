//! forget / prune / check through the CLI.

use std::fs;

use crate::util::{random_bytes, s, write_file, Env};

fn two_generations(env: &Env) -> std::path::PathBuf {
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..8 {
        write_file(&src.join(format!("f{i}")), &random_bytes(300_000, i));
    }
    env.backup(&[s(&src), "--tag", "pv", "--time", "2024-05-01 02:00:00"]);
    for i in 0..4 {
        fs::remove_file(src.join(format!("f{i}"))).unwrap();
        write_file(&src.join(format!("g{i}")), &random_bytes(300_000, 100 + i));
    }
    env.backup(&[s(&src), "--tag", "pv", "--time", "2024-05-02 02:00:00"]);
    src
}

#[test]
fn forget_prune_check_keeps_what_the_policy_keeps() {
    let env = Env::new();
    let src = two_generations(&env);
    let out = env.json(&[
        "forget",
        "--keep-last",
        "1",
        "--prune",
        "--max-unused",
        "0%",
    ]);
    assert_eq!(out["removed"].as_array().unwrap().len(), 1, "{out}");
    let prune = &out["prune"];
    assert!(
        prune["packs_deleted"].as_u64().unwrap() + prune["packs_repacked"].as_u64().unwrap() > 0,
        "{prune}"
    );
    assert_eq!(env.snapshots::<&str>(&[]).len(), 1);
    env.ok(&["check", "--read-data"]);
    let target = env.path("restored");
    env.restore_latest_exact(&src, &target, &[]);
}

#[test]
fn forget_never_empties_a_group_unless_asked() {
    let env = Env::new();
    two_generations(&env);
    // A keep-tag rule that matches nothing would remove everything.
    let out = env.run(&["forget", "--keep-tag", "no-such-tag"]);
    out.success();
    assert!(out.stderr.contains("would remove all"), "{}", out.dump());
    assert_eq!(env.snapshots::<&str>(&[]).len(), 2);
    env.ok(&["forget", "--keep-tag", "no-such-tag", "--allow-empty-group"]);
    assert_eq!(env.snapshots::<&str>(&[]).len(), 0);
    // An empty policy is refused outright.
    let out = env.run(&["forget"]);
    assert_ne!(out.code, 0, "{}", out.dump());
}

#[test]
fn check_reports_a_corrupt_pack_with_exit_13() {
    let env = Env::new();
    two_generations(&env);
    env.ok(&["check", "--read-data-subset", "1/2"]);
    let pack = env.objects("data").into_iter().next().unwrap();
    let mut bytes = fs::read(&pack).unwrap();
    bytes[100] ^= 1;
    fs::write(&pack, bytes).unwrap();
    let out = env.run(&["check", "--read-data"]);
    assert_eq!(out.code, 13, "{}", out.dump());
    let name = pack.file_name().unwrap().to_string_lossy().into_owned();
    assert!(out.stderr.contains(&name[..8]), "{}", out.dump());
}
