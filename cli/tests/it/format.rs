//! Format version 2 (grouped small blobs) and the migration from version 1 (FORMAT.md §9.1,
//! §16), through the binary.

use std::fs;
use std::path::Path;

use serde_json::Value;

use crate::util::*;

/// Small compressible files of varied content: each is one data blob of a few KiB, the
/// kind of blob that is grouped.
fn small_files(dir: &Path, n: usize, seed: u64) {
    for i in 0..n {
        let words = [
            "apiVersion",
            "kind",
            "metadata",
            "spec",
            "status",
            "replicas",
            "image",
        ];
        let mut text = String::new();
        for j in 0..(50 + (i * 37 + seed as usize) % 300) {
            text.push_str(words[(i + j * 7 + seed as usize) % words.len()]);
            text.push_str(&format!(": {}\n", (i * 131 + j * 17) as u64 ^ seed));
        }
        write_file(&dir.join(format!("d{}/f{i}.yaml", i % 7)), text.as_bytes());
    }
}

/// Every blob entry of every index file, as `cat index` prints them.
fn index_entries(env: &Env) -> Vec<Value> {
    index_entries_by_pack(env)
        .into_iter()
        .map(|(_, e)| e)
        .collect()
}

/// [`index_entries`] with the name of each entry's pack.
fn index_entries_by_pack(env: &Env) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for p in env.objects("index") {
        let name = p.file_name().unwrap().to_str().unwrap().to_owned();
        let index = env.json(&["cat", "index", &name]);
        for pack in index["packs"].as_array().unwrap() {
            let id = pack["id"].as_str().unwrap().to_owned();
            for e in pack["blobs"].as_array().unwrap() {
                out.push((id.clone(), e.clone()));
            }
        }
    }
    out
}

/// The preamble versions of the stored objects of a kind directory.
fn versions(env: &Env, dir: &str) -> Vec<u16> {
    env.objects(dir)
        .iter()
        .map(|p| {
            let b = fs::read(p).unwrap();
            u16::from_le_bytes([b[6], b[7]])
        })
        .collect()
}

#[test]
fn small_blobs_are_grouped_and_survive_prune_and_check() {
    let env = Env::new();
    let src = env.path("src");
    small_files(&src, 400, 1);
    env.backup(&[s(&src)]);
    let entries = index_entries(&env);
    let grouped = entries
        .iter()
        .filter(|e| !e["group_offset"].is_null())
        .count();
    assert!(
        grouped >= 400,
        "{grouped} of {} entries grouped",
        entries.len()
    );
    assert!(versions(&env, "data").iter().all(|&v| v == 5));
    assert!(versions(&env, "index").iter().all(|&v| v == 5));
    // Trees are grouped too (format 5): 400 files in 1 directory make one tree, so look for
    // the root's chain of directories.
    assert!(
        entries
            .iter()
            .any(|e| e["blob_type"] == "Tree" && !e["group_offset"].is_null()),
        "no tree blob is grouped"
    );
    env.ok(&["check", "--read-data"]);
    env.restore_latest_exact(&src, &env.path("out1"), &[]);

    // Change a third of the files: the next prune finds partly used groups and repacks.
    for i in (0..400).step_by(3) {
        let p = src.join(format!("d{}/f{i}.yaml", i % 7));
        let mut b = fs::read(&p).unwrap();
        b.extend_from_slice(b"changed: true\n");
        write_file(&p, &b);
    }
    env.backup(&[s(&src)]);
    env.ok(&["forget", "--keep-last", "1", "--prune", "--max-unused", "0"]);
    env.ok(&["check", "--read-data"]);
    env.restore_latest_exact(&src, &env.path("out2"), &[]);
    // What prune kept is exactly what the one snapshot left uses.
    let stats = env.json(&["stats", "--json"]);
    let data = stats["data_blobs"].as_u64().unwrap();
    assert_eq!(data, 400, "{stats}");
    // Fully used groups are not unused space: a second prune has nothing to repack.
    let again = env.json(&["prune", "--max-unused", "0"]);
    assert_eq!(again["report"]["packs_repacked"], 0, "{again}");
    assert_eq!(again["report"]["bytes_unused_left"], 0, "{again}");
}

#[test]
fn a_damaged_group_is_damage_for_check_and_restore() {
    let env = Env::new();
    let src = env.path("src");
    small_files(&src, 50, 2);
    env.backup(&[s(&src)]);
    let (pack_id, entry) = index_entries_by_pack(&env)
        .into_iter()
        .find(|(_, e)| !e["group_offset"].is_null())
        .expect("a grouped blob");
    let offset = entry["offset"].as_u64().unwrap() as usize;
    let pack = env.repo.join("data").join(&pack_id[..2]).join(&pack_id);
    let mut bytes = fs::read(&pack).unwrap();
    bytes[offset + 30] ^= 0x40;
    fs::write(&pack, &bytes).unwrap();
    env.run(&["check", "--read-data"])
        .assert_reports(13, &[&pack_id[..8]]);
    let out = env.run(&["restore", "latest", "--target", s(&env.path("out"))]);
    assert_eq!(out.code, 13, "{}", out.dump());
}

#[test]
fn a_version_1_repository_stays_version_1_until_migrated() {
    let env = Env::with_init_args(&["--format-version", "1"]);
    let src = env.path("src");
    small_files(&src, 120, 3);
    env.backup(&[s(&src)]);
    assert_eq!(env.json(&["cat", "config"])["version"], 1);
    assert!(versions(&env, "data").iter().all(|&v| v == 1));
    assert!(versions(&env, "index").iter().all(|&v| v == 1));
    assert!(index_entries(&env)
        .iter()
        .all(|e| e["group_offset"].is_null()));

    let out = env.ok(&["migrate"]);
    assert!(
        out.stdout.contains("from format version 1 to 5"),
        "{}",
        out.dump()
    );
    assert_eq!(env.json(&["cat", "config"])["version"], 5);
    let out = env.ok(&["migrate"]);
    assert!(out.stdout.contains("already"), "{}", out.dump());

    // Old objects stay as they are; new packs are version 5 with groups (of trees too), new
    // index files version 5.
    let old_packs = env.objects("data");
    small_files(&src, 120, 4);
    env.backup(&[s(&src)]);
    let new_packs: Vec<_> = env
        .objects("data")
        .into_iter()
        .filter(|p| !old_packs.contains(p))
        .collect();
    assert!(!new_packs.is_empty());
    for p in &new_packs {
        assert_eq!(fs::read(p).unwrap()[6], 5, "{}", p.display());
    }
    assert!(versions(&env, "index").contains(&5));
    assert!(index_entries(&env)
        .iter()
        .any(|e| !e["group_offset"].is_null()));
    env.ok(&["check", "--read-data"]);
    env.restore_latest_exact(&src, &env.path("out"), &[]);
    let first = env.snapshots::<&str>(&[])[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    env.ok(&["restore", &first, "--target", s(&env.path("first"))]);
    // Prune across both versions (old version-1 packs are repacked into groups).
    env.ok(&["forget", "--keep-last", "1", "--prune", "--max-unused", "0"]);
    env.ok(&["check", "--read-data"]);
    env.restore_latest_exact(&src, &env.path("out2"), &[]);
}

#[test]
fn a_pack_listed_by_two_index_files_is_not_damage() {
    // An interrupted index replacement can leave a pack named by two index files: every
    // reader must open each box once (a group's box is decrypted in place).
    let env = Env::new();
    let src = env.path("src");
    small_files(&src, 60, 5);
    env.backup(&[s(&src)]);
    let forger = Forger::new(&env);
    for p in env.objects("index") {
        let f =
            cairn_format::IndexFile::decode_sealed(&forger.key, &fs::read(&p).unwrap()).unwrap();
        if f.packs
            .iter()
            .any(|p| p.blobs.iter().any(|e| e.group_offset.is_some()))
        {
            forger.put("index", &f.encode_sealed(&forger.key, 5, 3).unwrap());
        }
    }
    env.ok(&["check", "--read-data"]);
    let r = env.json(&["repair", "packs", "--dry-run"]);
    assert_eq!(r["report"]["packs"], serde_json::json!([]), "{r}");
    env.restore_latest_exact(&src, &env.path("out"), &[]);
}

#[test]
fn a_full_disk_while_groups_are_pending_loses_nothing() {
    // The repository on a 3 MiB file system: a backup of more than that fails cleanly,
    // whether the disk fills in a pack of groups or elsewhere, and leaves a repository that
    // `check` passes and the next backup can use.
    let env = Env::uninitialized();
    fs::create_dir_all(&env.repo).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
        .arg(&env.repo)
        .status()
        .is_ok_and(|st| st.success());
    if !mounted {
        eprintln!("note: cannot mount a tmpfs here; the full-disk case is not exercised");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(env.repo.clone());
    env.ok(&["init", "--kdf-memory-mib", "8", "--kdf-iterations", "1"]);
    let small = env.path("small");
    small_files(&small, 40, 6);
    env.backup(&[s(&small)]);
    let big = env.path("big");
    for i in 0..12 {
        // Incompressible small files: groups that do not shrink, 4 MiB in all.
        for j in 0..16 {
            write_file(
                &big.join(format!("d{i}/f{j}")),
                &random_bytes(20 << 10, (i * 16 + j) as u64),
            );
        }
    }
    let out = env.run(&["backup", s(&big)]);
    assert_ne!(out.code, 0, "{}", out.dump());
    assert!(
        out.stderr.to_lowercase().contains("space"),
        "{}",
        out.dump()
    );
    env.ok(&["check", "--read-data"]);
    env.restore_latest_exact(&small, &env.path("out"), &[]);
    // Space freed, the next backup works.
    fs::remove_dir_all(&big).unwrap();
    small_files(&small, 50, 7);
    env.backup(&[s(&small)]);
    env.ok(&["check", "--read-data"]);
}

#[test]
fn copy_moves_snapshots_between_format_versions() {
    // Grouped blobs read from a version-2 source are stored alone in a version-1
    // destination, and the other way round; both restore exactly.
    let src = Env::new();
    let data = src.path("data");
    small_files(&data, 150, 8);
    src.backup(&[s(&data)]);
    let v1 = Env::with_init_args(&["--format-version", "1"]);
    crate::copy::copy(&v1, &src, &[], None).success();
    assert!(versions(&v1, "data").iter().all(|&v| v == 1));
    assert!(index_entries(&v1)
        .iter()
        .all(|e| e["group_offset"].is_null()));
    v1.ok(&["check", "--read-data"]);
    v1.restore_latest_exact(&data, &v1.path("out"), &[]);
    let v2 = Env::new();
    crate::copy::copy(&v2, &v1, &[], None).success();
    assert!(index_entries(&v2)
        .iter()
        .any(|e| !e["group_offset"].is_null()));
    v2.ok(&["check", "--read-data"]);
    v2.restore_latest_exact(&data, &v2.path("out"), &[]);
}

/// `ls --json`'s entry for `path` in `snapshot`.
fn node_of(env: &Env, snapshot: &str, path: &Path) -> Value {
    let all = env.json(&["ls", snapshot]);
    all.as_array()
        .unwrap()
        .iter()
        .find(|n| n["path"] == s(path))
        .unwrap_or_else(|| panic!("{} not in {snapshot}", path.display()))
        .clone()
}

#[test]
fn content_lists_come_with_format_4_through_migrate_and_copy() {
    // A version-3 repository names the blobs of a big file directly.
    let env = Env::with_init_args(&["--format-version", "3"]);
    let src = env.path("src");
    small_files(&src, 20, 9);
    let db = src.join("db.snap");
    let mut snap = etcd_snapshot(400, 5);
    write_file(&db, &snap);
    env.backup(&[s(&src)]);
    let direct = node_of(&env, "latest", &db);
    assert!(direct["content_lists"].is_null(), "{direct}");
    assert!(direct["content"].as_u64().unwrap() > 64, "{direct}");
    let newest = |env: &Env| -> String {
        let mut all = env.snapshots::<&str>(&[]);
        all.sort_by(|a, b| a["time"].as_str().cmp(&b["time"].as_str()));
        all.last().unwrap()["id"].as_str().unwrap().to_owned()
    };
    let v3 = newest(&env);

    // After the migration the unchanged file is taken from the parent and named by lists.
    env.ok(&["migrate"]);
    env.backup(&[s(&src)]);
    let listed = node_of(&env, "latest", &db);
    let lists = listed["content_lists"].as_u64().unwrap();
    assert!(lists >= 2 && listed["content"].is_null(), "{listed}");
    let report = env.json(&["check", "--read-data"]);
    assert_eq!(report["report"]["content_lists"], lists, "{report}");
    // Named both ways, the data is the same: no content change.
    let diff = env.run(&["diff", &v3, "latest"]);
    diff.success();
    assert!(!diff.stdout.contains("db.snap"), "{}", diff.dump());
    env.restore_latest_exact(&src, &env.path("out"), &[]);
    let v4 = newest(&env);

    // A few pages change: the lists around them change, the others are kept.
    snap[200 * 4096..201 * 4096].copy_from_slice(&random_bytes(4096, 11));
    write_file(&db, &snap);
    env.backup(&[s(&src)]);
    let changed = node_of(&env, "latest", &db);
    let now = changed["content_lists"].as_u64().unwrap();
    assert!(now.abs_diff(lists) <= 2, "{changed}");
    let diff = env.run(&["diff", &v4, "latest"]);
    assert!(diff.stdout.contains("db.snap"), "{}", diff.dump());
    env.ok(&["check", "--read-data"]);
    env.restore_latest_exact(&src, &env.path("out2"), &[]);
    let mut dump = env.cmd();
    dump.args(["dump", "latest", s(&db)]);
    let bytes = dump.output().unwrap();
    assert!(bytes.status.success());
    assert!(bytes.stdout == snap, "dump differs from the file");

    // Copied into a version-3 repository that names blobs alike, trees are re-encoded:
    // the file names its blobs directly there, and restores the same.
    let old = Env::uninitialized();
    crate::copy::init_like(&old, &env, &["--format-version", "3"]);
    let report = crate::copy::copy_report(&crate::copy::copy(&old, &env, &["--json"], None));
    assert_eq!(report["same_ids"], false, "{report}");
    let there = node_of(&old, "latest", &db);
    assert!(there["content_lists"].is_null(), "{there}");
    old.ok(&["check", "--read-data"]);
    old.restore_latest_exact(&src, &old.path("out"), &[]);
    // Into a version-4 one, as they are.
    let new = Env::uninitialized();
    crate::copy::init_like(&new, &env, &[]);
    let report = crate::copy::copy_report(&crate::copy::copy(&new, &env, &["--json"], None));
    assert_eq!(report["same_ids"], true, "{report}");
    assert_eq!(node_of(&new, "latest", &db)["content_lists"], now);
    new.ok(&["check", "--read-data"]);

    // Forget the older snapshots and prune: the lists in use and their blobs stay.
    env.ok(&["forget", "--keep-last", "1", "--prune", "--max-unused", "0"]);
    let report = env.json(&["check", "--read-data"]);
    assert_eq!(report["report"]["content_lists"], now, "{report}");
    env.restore_latest_exact(&src, &env.path("out3"), &[]);
}
