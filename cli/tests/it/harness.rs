//! The comparison the round-trip tests rely on must itself notice every kind of difference.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::process::Command;

use filetime::FileTime;

use crate::util::{assert_trees_equal, write_file};

fn sample(root: &Path) {
    write_file(&root.join("a.txt"), b"alpha");
    write_file(&root.join("sub/b.txt"), b"beta");
    fs::hard_link(root.join("a.txt"), root.join("sub/a-link")).unwrap();
    write_file(&root.join("c.txt"), b"gamma");
    symlink("a.txt", root.join("link")).unwrap();
    nix::unistd::mkfifo(
        &root.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    xattr::set(root.join("c.txt"), "user.k", b"v").unwrap();
    for p in ["a.txt", "sub/b.txt", "c.txt", "link", "fifo", "sub", ""] {
        let t = FileTime::from_unix_time(1_650_000_000, 123_456_789);
        filetime::set_symlink_file_times(root.join(p), t, t).unwrap();
    }
}

fn copy(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

/// Set `p`'s mtime back to what `sample` gave it.
fn retime(p: &Path) {
    let t = FileTime::from_unix_time(1_650_000_000, 123_456_789);
    filetime::set_symlink_file_times(p, t, t).unwrap();
}

#[test]
fn tree_comparison_detects_every_difference() {
    let dir = tempfile::tempdir().unwrap();
    let orig = dir.path().join("orig");
    fs::create_dir(&orig).unwrap();
    sample(&orig);
    type Mutation = Box<dyn Fn(&Path)>;
    let mutations: Vec<(&str, Mutation)> = vec![
        (
            "content",
            Box::new(|r| {
                write_file(&r.join("c.txt"), b"GAMMA");
                retime(&r.join("c.txt"));
            }),
        ),
        (
            "mode",
            Box::new(|r| {
                fs::set_permissions(r.join("c.txt"), fs::Permissions::from_mode(0o640)).unwrap()
            }),
        ),
        (
            "owner",
            Box::new(|r| std::os::unix::fs::lchown(r.join("c.txt"), Some(1), None).unwrap()),
        ),
        (
            "mtime",
            Box::new(|r| {
                let t = FileTime::from_unix_time(1_650_000_000, 123_456_790);
                filetime::set_symlink_file_times(r.join("sub/b.txt"), t, t).unwrap();
            }),
        ),
        (
            "dir mtime",
            Box::new(|r| {
                let t = FileTime::from_unix_time(1_650_000_001, 123_456_789);
                filetime::set_symlink_file_times(r.join("sub"), t, t).unwrap();
            }),
        ),
        (
            "xattr",
            Box::new(|r| xattr::set(r.join("c.txt"), "user.k", b"w").unwrap()),
        ),
        (
            "symlink target",
            Box::new(|r| {
                fs::remove_file(r.join("link")).unwrap();
                symlink("c.txt", r.join("link")).unwrap();
                retime(&r.join("link"));
                retime(r);
            }),
        ),
        (
            "hardlink broken",
            Box::new(|r| {
                fs::copy(r.join("a.txt"), r.join("sub/tmp")).unwrap();
                fs::rename(r.join("sub/tmp"), r.join("sub/a-link")).unwrap();
                retime(&r.join("sub/a-link"));
                retime(&r.join("sub"));
            }),
        ),
        (
            "missing",
            Box::new(|r| fs::remove_file(r.join("c.txt")).unwrap()),
        ),
        ("extra", Box::new(|r| write_file(&r.join("sub/extra"), b""))),
        (
            "fifo replaced",
            Box::new(|r| {
                fs::remove_file(r.join("fifo")).unwrap();
                write_file(&r.join("fifo"), b"");
                fs::set_permissions(r.join("fifo"), fs::Permissions::from_mode(0o600)).unwrap();
                retime(&r.join("fifo"));
                retime(r);
            }),
        ),
    ];
    // An exact copy compares equal.
    let same = dir.path().join("same");
    copy(&orig, &same);
    assert_trees_equal(&orig, &same, true);
    for (i, (what, mutate)) in mutations.iter().enumerate() {
        let c = dir.path().join(format!("copy-{i}"));
        copy(&orig, &c);
        mutate(&c);
        let r = catch_unwind(AssertUnwindSafe(|| assert_trees_equal(&orig, &c, true)));
        assert!(
            r.is_err(),
            "assert_trees_equal did not notice a changed {what}"
        );
    }
}
