//! Restores must never write outside their target: not through symlinks already in the target,
//! and not for a hand-crafted hostile repository.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use cairn_format::{BlobType, NodeKind};

use crate::util::{file_list, rel_to_root, s, walk, write_file, Env, Forger};

/// Every entry under `dir` (relative paths), for "nothing appeared here" checks.
fn listing(dir: &Path) -> Vec<String> {
    walk(dir, false)
        .keys()
        .map(|p| p.to_string_lossy().into_owned())
        .collect()
}

/// A restore that did not succeed must at least have failed cleanly.
fn assert_clean_failure(out: &crate::util::Output) {
    assert!(
        out.code != 101 && !out.stderr.contains("panicked"),
        "cairn crashed\n{}",
        out.dump()
    );
    assert!(
        out.stderr.lines().any(|l| l.starts_with("cairn: error:")),
        "failed without an error message\n{}",
        out.dump()
    );
}

#[test]
fn symlinks_in_the_target_are_not_followed() {
    let env = Env::new();
    let src = env.path("src");
    write_file(&src.join("f.txt"), b"restored content");
    write_file(&src.join("sub/g.txt"), b"nested");
    env.backup(&[s(&src)]);

    // Every directory level of the full restore path, in turn, is a symlink to outside.
    let rel = rel_to_root(&src).to_path_buf();
    let levels: Vec<PathBuf> = rel
        .ancestors()
        .filter(|a| !a.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .collect();
    assert!(levels.len() >= 3);
    for (i, level) in levels.iter().enumerate() {
        let outside = env.path(&format!("outside-{i}"));
        fs::create_dir(&outside).unwrap();
        let target = env.path(&format!("target-{i}"));
        let link = target.join(level);
        fs::create_dir_all(link.parent().unwrap()).unwrap();
        symlink(&outside, &link).unwrap();
        let out = env.run(&["restore", "latest", "--target", s(&target)]);
        assert!(
            listing(&outside).is_empty(),
            "restore wrote through the symlink {} into {}: {:?}\n{}",
            link.display(),
            outside.display(),
            listing(&outside),
            out.dump()
        );
        if out.code == 0 {
            let restored = target.join(&rel);
            assert!(
                fs::symlink_metadata(&link).unwrap().is_dir(),
                "{} is still a symlink after a successful restore",
                link.display()
            );
            assert_eq!(
                fs::read(restored.join("f.txt")).unwrap(),
                b"restored content"
            );
            assert_eq!(fs::read(restored.join("sub/g.txt")).unwrap(), b"nested");
        } else {
            assert_clean_failure(&out);
        }
    }

    // A file-level symlink in the way, pointing at a file outside: the outside file stays intact.
    let outside = env.path("outside-file");
    write_file(&outside.join("victim"), b"do not overwrite");
    let target = env.path("target-file");
    let restored = target.join(&rel);
    fs::create_dir_all(restored.join("sub")).unwrap();
    symlink(outside.join("victim"), restored.join("f.txt")).unwrap();
    symlink(outside.join("victim"), restored.join("sub/g.txt")).unwrap();
    let out = env.run(&["restore", "latest", "--target", s(&target)]);
    assert_eq!(
        fs::read(outside.join("victim")).unwrap(),
        b"do not overwrite",
        "restore wrote through a file symlink\n{}",
        out.dump()
    );
    assert_eq!(listing(&outside), vec!["victim".to_owned()]);
    if out.code == 0 {
        assert_eq!(
            fs::read(restored.join("f.txt")).unwrap(),
            b"restored content"
        );
        assert!(!fs::symlink_metadata(restored.join("f.txt"))
            .unwrap()
            .file_type()
            .is_symlink());
    } else {
        assert_clean_failure(&out);
    }

    // A file in the target that is a hardlink of a file outside: restoring over it must
    // replace the name, not write into the shared inode.
    let outside = env.path("outside-hardlink");
    write_file(&outside.join("victim"), b"do not overwrite");
    let target = env.path("target-hardlink");
    let restored = target.join(&rel);
    fs::create_dir_all(&restored).unwrap();
    fs::hard_link(outside.join("victim"), restored.join("f.txt")).unwrap();
    let out = env.run(&["restore", "latest", "--target", s(&target)]);
    assert_eq!(
        fs::read(outside.join("victim")).unwrap(),
        b"do not overwrite",
        "restore wrote through a hardlink into a file outside the target\n{}",
        out.dump()
    );
    out.success();
    assert_eq!(
        fs::read(restored.join("f.txt")).unwrap(),
        b"restored content"
    );

    // Sub-path restore with a symlinked directory in the target.
    let outside = env.path("outside-sub");
    fs::create_dir(&outside).unwrap();
    let target = env.path("target-sub");
    fs::create_dir(&target).unwrap();
    symlink(&outside, target.join("sub")).unwrap();
    let out = env.run(&[
        "restore",
        &format!("latest:{}", s(&src)),
        "--target",
        s(&target),
    ]);
    assert!(
        listing(&outside).is_empty(),
        "restore wrote into {}: {:?}\n{}",
        outside.display(),
        listing(&outside),
        out.dump()
    );
    if out.code == 0 {
        assert_eq!(fs::read(target.join("sub/g.txt")).unwrap(), b"nested");
    } else {
        assert_clean_failure(&out);
    }
}

#[test]
fn hostile_repository_cannot_escape_the_target() {
    let env = Env::new();
    let forger = Forger::new(&env);
    let payload = b"written by a hostile snapshot\n".to_vec();
    let data_id = forger.store(&[(BlobType::Data, payload.clone())])[0];
    let file = |name: &[u8]| {
        let mut n = Forger::node(name, NodeKind::File);
        n.size = payload.len() as u64;
        n.content = cairn_format::Content::Blobs(vec![data_id]);
        n
    };

    // Control: the same machinery with a benign name restores fine, so the failures below are
    // the restorer refusing the names, not a broken forgery.
    let good = forger.snapshot(vec![file(b"good.txt")], "benign");
    let arena = env.path("arena-good");
    let target = arena.join("target");
    env.ok(&["restore", &good, "--target", s(&target)]);
    assert_eq!(
        fs::read(target.join("x/good.txt")).unwrap(),
        payload,
        "the forged benign snapshot did not restore"
    );

    let abs_escape = env.path("abs-escape");
    let hostile: Vec<(&str, Vec<u8>)> = vec![
        ("dotdot-slash", b"../escape".to_vec()),
        ("double-dotdot", b"../../escape".to_vec()),
        ("dotdot", b"..".to_vec()),
        ("dot", b".".to_vec()),
        ("nested", b"a/../../../escape".to_vec()),
        (
            "absolute",
            abs_escape.as_os_str().as_encoded_bytes().to_vec(),
        ),
        ("empty", Vec::new()),
    ];
    for (label, name) in hostile {
        // The hostile node sits next to a good one, in a subdirectory.
        let mut nodes = vec![file(&name), file(b"zz-good.txt")];
        if name.as_slice() > b"zz-good.txt".as_slice() {
            nodes.reverse();
        }
        let snap = forger.snapshot(nodes, label);
        let arena = env.path(&format!("arena-{label}"));
        fs::create_dir(&arena).unwrap();
        let target = arena.join("target");
        let out = env.run(&["restore", &snap, "--target", s(&target)]);
        assert_ne!(
            out.code,
            0,
            "[{label}] restore of a tree with node name {:?} succeeded\n{}",
            String::from_utf8_lossy(&name),
            out.dump()
        );
        assert!(
            out.code != 101 && !out.stderr.contains("panicked"),
            "[{label}] cairn crashed\n{}",
            out.dump()
        );
        assert!(
            out.stderr.lines().any(|l| l.starts_with("cairn: error:")),
            "[{label}] no error message\n{}",
            out.dump()
        );
        let around = listing(&arena);
        assert!(
            around
                .iter()
                .all(|p| p == "target" || p.starts_with("target/")),
            "[{label}] something appeared outside the target: {around:?}"
        );
        assert!(
            !abs_escape.exists(),
            "[{label}] restore wrote to the absolute path {}",
            abs_escape.display()
        );
        assert!(
            !env.path("escape").exists()
                && !env.dir.path().parent().unwrap().join("escape").exists(),
            "[{label}] escaped"
        );
        // `ls` refuses the tree the same way instead of printing a path outside the snapshot.
        let ls = env.run(&["ls", "--recursive", &snap]);
        assert_ne!(
            ls.code,
            0,
            "[{label}] ls accepted the hostile tree:\n{}",
            ls.dump()
        );
        if target.exists() {
            assert!(
                file_list(&target).iter().all(|p| !p.contains("escape")),
                "[{label}] {:?}",
                file_list(&target)
            );
        }
    }
}
