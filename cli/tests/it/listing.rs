//! `snapshots` filters, `--host`/`--time`/`--tag` recording, `ls`, and restore include/exclude.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};

use serde_json::Value;

use crate::util::{file_list, s, write_file, Env};

fn ids(v: &[Value]) -> Vec<String> {
    let mut out: Vec<String> = v
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    out.sort();
    out
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn snapshot_filters_host_time_tags() {
    let env = Env::new();
    let src = env.path("src");
    write_file(&src.join("f"), b"content\n");

    let a = env.backup(&["--host", "alpha", "--tag", "daily,db", s(&src)]);
    let b = env.backup(&["--host", "beta", "--tag", "daily", s(&src)]);
    let c = env.backup(&["--host", "alpha", "--time", "2024-05-01 03:00:00", s(&src)]);
    let id = |v: &Value| v["snapshot_id"].as_str().unwrap().to_owned();
    let (a, b, c) = (id(&a), id(&b), id(&c));

    let all = env.snapshots::<&str>(&[]);
    assert_eq!(all.len(), 3);
    // Oldest first: the snapshot with --time 2024-05-01 comes first.
    assert_eq!(
        all[0]["id"],
        c.as_str(),
        "snapshots are not sorted by time: {all:?}"
    );
    let time = all[0]["time"].as_str().unwrap();
    assert!(
        time.starts_with("2024-05-01T03:00:00"),
        "--time not recorded: {time}"
    );
    assert_eq!(all[0]["hostname"], "alpha");
    assert_eq!(all[0]["tags"], serde_json::json!([]));
    let snap_a = all.iter().find(|s| s["id"] == a.as_str()).unwrap();
    assert_eq!(snap_a["hostname"], "alpha");
    assert_eq!(snap_a["tags"], serde_json::json!(["daily", "db"]));
    assert_eq!(snap_a["paths"], serde_json::json!([s(&src)]));

    assert_eq!(
        ids(&env.snapshots(&["--host", "alpha"])),
        sorted(vec![a.clone(), c.clone()])
    );
    assert_eq!(ids(&env.snapshots(&["--host", "beta"])), vec![b.clone()]);
    assert_eq!(
        ids(&env.snapshots(&["--host", "alpha", "--host", "beta"])).len(),
        3
    );
    assert_eq!(
        ids(&env.snapshots(&["--host", "gamma"])),
        Vec::<String>::new()
    );
    assert_eq!(
        ids(&env.snapshots(&["--tag", "daily"])),
        sorted(vec![a.clone(), b.clone()])
    );
    assert_eq!(ids(&env.snapshots(&["--tag", "db"])), vec![a.clone()]);
    // `a,b` needs both tags; repeating --tag means either.
    assert_eq!(ids(&env.snapshots(&["--tag", "daily,db"])), vec![a.clone()]);
    assert_eq!(
        ids(&env.snapshots(&["--tag", "db", "--tag", "nope"])),
        vec![a.clone()]
    );
    assert_eq!(
        ids(&env.snapshots(&["--tag", "daily", "--host", "beta"])),
        vec![b.clone()]
    );
    assert_eq!(ids(&env.snapshots(&["--path", s(&src)])).len(), 3);
    assert_eq!(ids(&env.snapshots(&["--path", "/nonexistent"])).len(), 0);

    // The text listing shows the short ids and hosts too.
    let text = env.ok(&["snapshots"]).stdout;
    for (id, host) in [(&a, "alpha"), (&b, "beta"), (&c, "alpha")] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&id[..8]) && l.contains(host)),
            "{id} / {host} missing from:\n{text}"
        );
    }
    assert!(text.contains("2024-05-01 03:00:00"), "{text}");

    // `latest` honours the filters: for host beta it is b, even though c was written after.
    let ls = env.json(&["ls", "--host", "beta", "latest"]);
    assert!(ls.as_array().is_some_and(|v| !v.is_empty()));
    let snap = env.json(&["cat", "snapshot", &b[..10]]);
    assert_eq!(snap["id"], b.as_str());
}

#[test]
fn ls_long_recursive_and_subpath() {
    let env = Env::new();
    let src = env.path("src");
    write_file(&src.join("top.txt"), b"0123456789");
    write_file(&src.join("sub/path/inner.txt"), b"inner");
    write_file(&src.join("sub/path/deeper/leaf.txt"), b"leaf");
    write_file(&src.join("sub/other.txt"), b"other");
    fs::set_permissions(src.join("top.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    symlink("top.txt", src.join("link")).unwrap();
    env.backup(&[s(&src)]);
    let base = s(&src).to_owned();

    // The root directory's listing shows only the first component of the backed-up path.
    let root = env.ok(&["ls", "latest:/"]).stdout;
    let first = format!(
        "/{}",
        src.components()
            .nth(1)
            .unwrap()
            .as_os_str()
            .to_str()
            .unwrap()
    );
    assert_eq!(
        root.lines().collect::<Vec<_>>(),
        vec![first.as_str()],
        "ls latest:\n{root}"
    );

    // Recursive: everything, with absolute paths; as restic, the default for a whole snapshot.
    let rec = env.ok(&["ls", "--recursive", "latest"]).stdout;
    assert_eq!(env.ok(&["ls", "latest"]).stdout, rec);
    let rec: Vec<&str> = rec.lines().collect();
    for p in [
        "",
        "/top.txt",
        "/link",
        "/sub",
        "/sub/path",
        "/sub/path/inner.txt",
        "/sub/path/deeper",
        "/sub/path/deeper/leaf.txt",
        "/sub/other.txt",
    ] {
        let want = format!("{base}{p}");
        assert!(
            rec.contains(&want.as_str()),
            "ls --recursive lacks {want}:\n{}",
            rec.join("\n")
        );
    }
    assert!(rec.contains(&first.as_str()));

    // A sub path: its direct children only.
    let sub = env.ok(&["ls", &format!("latest:{base}/sub/path")]).stdout;
    assert_eq!(
        sub.lines().collect::<Vec<_>>(),
        vec![
            format!("{base}/sub/path/deeper"),
            format!("{base}/sub/path/inner.txt")
        ],
        "ls latest:{base}/sub/path"
    );
    // A sub path, recursively.
    let subr = env
        .ok(&["ls", "--recursive", &format!("latest:{base}/sub")])
        .stdout;
    assert_eq!(subr.lines().count(), 5, "{subr}");
    // A file path lists the file.
    let one = env.ok(&["ls", &format!("latest:{base}/top.txt")]).stdout;
    assert_eq!(one.trim(), format!("{base}/top.txt"));
    // A missing path is an error.
    env.run(&["ls", &format!("latest:{base}/nope")])
        .assert_error(1, &["not found"]);

    // Long listing: mode, owner, size, symlink target.
    let long = env.ok(&["ls", "-l", &format!("latest:{base}")]).stdout;
    let line = long
        .lines()
        .find(|l| l.ends_with("/top.txt"))
        .unwrap_or_else(|| panic!("no top.txt in:\n{long}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cols[0], "-rw-------", "{line}");
    assert_eq!(cols[1], "root", "{line}");
    assert_eq!(cols[3], "10", "{line}");
    let link = long
        .lines()
        .find(|l| l.contains("/link"))
        .unwrap_or_else(|| panic!("no link in:\n{long}"));
    assert!(
        link.starts_with('l') && link.ends_with("/link -> top.txt"),
        "{link}"
    );
    let dir = long.lines().find(|l| l.ends_with("/sub")).unwrap();
    assert!(dir.starts_with('d'), "{dir}");

    // JSON listing carries types and sizes.
    let js = env.json(&["ls", &format!("latest:{base}")]);
    let top = js
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "top.txt")
        .unwrap();
    assert_eq!(top["type"], "file");
    assert_eq!(top["size"], 10);
    assert_eq!(top["mode"], 0o600);
}

#[test]
fn restore_include_exclude() {
    let env = Env::new();
    let src = env.path("src");
    for f in [
        "a.txt",
        "b.log",
        "sub/c.txt",
        "sub/d.log",
        "sub/deep/e.txt",
        "other/f.txt",
        "other/g.dat",
    ] {
        write_file(&src.join(f), f.as_bytes());
    }
    env.backup(&[s(&src)]);
    let spec = format!("latest:{}", s(&src));
    let restore = |name: &str, extra: &[&str]| -> Vec<String> {
        let t = env.path(name);
        let mut args = vec!["restore", spec.as_str(), "--target", s(&t)];
        args.extend_from_slice(extra);
        env.ok(&args);
        file_list(&t)
    };
    let v = |x: &[&str]| x.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();

    assert_eq!(
        restore("inc-txt", &["--include", "*.txt"]),
        v(&["a.txt", "other/f.txt", "sub/c.txt", "sub/deep/e.txt"])
    );
    assert_eq!(
        restore("exc-log", &["--exclude", "*.log"]),
        v(&[
            "a.txt",
            "other/f.txt",
            "other/g.dat",
            "sub/c.txt",
            "sub/deep/e.txt"
        ])
    );
    // An include of a directory brings everything under it.
    assert_eq!(
        restore("inc-dir", &["--include", &format!("{}/sub", s(&src))]),
        v(&["sub/c.txt", "sub/d.log", "sub/deep/e.txt"])
    );
    // Exclude by directory name.
    assert_eq!(
        restore("exc-dir", &["--exclude", "sub"]),
        v(&["a.txt", "b.log", "other/f.txt", "other/g.dat"])
    );
    // Both: include *.txt but not under other/.
    assert_eq!(
        restore("both", &["--include", "*.txt", "--exclude", "other"]),
        v(&["a.txt", "sub/c.txt", "sub/deep/e.txt"])
    );
    // Several includes.
    assert_eq!(
        restore("multi", &["--include", "*.dat", "--include", "b.log"]),
        v(&["b.log", "other/g.dat"])
    );
    // A single file.
    let t = env.path("single");
    env.ok(&[
        "restore",
        &format!("{spec}/sub/deep/e.txt"),
        "--target",
        s(&t),
    ]);
    assert_eq!(file_list(&t), v(&["e.txt"]));
    // Restored contents are right.
    assert_eq!(
        fs::read(env.path("inc-txt/sub/deep/e.txt")).unwrap(),
        b"sub/deep/e.txt"
    );
    // Directories without a match are not created.
    assert!(
        !env.path("inc-dir/other").exists(),
        "--include created a directory with no match"
    );
}

#[test]
fn ls_long_shows_special_mode_bits() {
    let env = Env::new();
    let src = env.path("src");
    write_file(&src.join("setuid"), b"x");
    fs::set_permissions(src.join("setuid"), fs::Permissions::from_mode(0o4755)).unwrap();
    write_file(&src.join("setgid"), b"x");
    fs::set_permissions(src.join("setgid"), fs::Permissions::from_mode(0o2750)).unwrap();
    fs::create_dir(src.join("sticky")).unwrap();
    fs::set_permissions(src.join("sticky"), fs::Permissions::from_mode(0o1777)).unwrap();
    env.backup(&[s(&src)]);
    let long = env.ok(&["ls", "-l", &format!("latest:{}", s(&src))]).stdout;
    let mode_of = |name: &str| -> String {
        let line = long
            .lines()
            .find(|l| l.ends_with(&format!("/{name}")))
            .unwrap_or_else(|| panic!("{name} not in:\n{long}"));
        line.split_whitespace().next().unwrap().to_owned()
    };
    // As ls(1) shows them: s/S for set-uid/gid, t/T for sticky.
    assert_eq!(mode_of("setuid"), "-rwsr-xr-x", "ls -l output:\n{long}");
    assert_eq!(mode_of("setgid"), "-rwxr-s---", "ls -l output:\n{long}");
    assert_eq!(mode_of("sticky"), "drwxrwxrwt", "ls -l output:\n{long}");
}

#[test]
fn ls_long_shows_device_numbers() {
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    // As root only (the tests run as root in CI); otherwise there is nothing to list.
    if mknod(
        &src.join("chardev"),
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o620),
        makedev(1, 3),
    )
    .is_err()
    {
        return;
    }
    mknod(
        &src.join("blockdev"),
        SFlag::S_IFBLK,
        Mode::from_bits_truncate(0o660),
        makedev(7, 200),
    )
    .unwrap();
    env.backup(&[s(&src)]);
    let long = env.ok(&["ls", "-l", &format!("latest:{}", s(&src))]).stdout;
    // As ls(1): "major, minor" where a file's size goes.
    for (name, numbers) in [("chardev", "1, 3 "), ("blockdev", "7, 200 ")] {
        let line = long
            .lines()
            .find(|l| l.ends_with(&format!("/{name}")))
            .unwrap_or_else(|| panic!("{name} not in:\n{long}"));
        assert!(line.contains(numbers), "{line}");
    }
}

#[test]
fn backup_excludes() {
    let env = Env::new();
    let src = env.path("src");
    for f in [
        "keep.txt",
        "drop.log",
        "sub/keep2.txt",
        "sub/drop2.log",
        "cache/x.bin",
        "sub/cache/y.bin",
        "skipdir/z.txt",
    ] {
        write_file(&src.join(f), f.as_bytes());
    }
    let skipdir = format!("{}/skipdir", s(&src));
    env.backup(&[
        "--exclude",
        "*.log",
        "--exclude",
        "cache",
        "-e",
        &skipdir,
        s(&src),
    ]);
    let snap = &env.snapshots::<&str>(&[])[0];
    assert_eq!(
        snap["excludes"],
        serde_json::json!(["*.log", "cache", skipdir])
    );
    let rec = env
        .ok(&["ls", "--recursive", &format!("latest:{}", s(&src))])
        .stdout;
    let rel: Vec<String> = rec
        .lines()
        .map(|l| l.strip_prefix(s(&src)).unwrap().to_owned())
        .collect();
    assert_eq!(
        rel,
        vec!["/keep.txt", "/sub", "/sub/keep2.txt"],
        "ls --recursive:\n{rec}"
    );
}

#[test]
fn include_and_exclude_speak_one_pattern_language() {
    let env = Env::new();
    let src = env.path("src");
    for f in ["log/a.log", "log/nginx/b.log", "keep/c.txt"] {
        write_file(&src.join(f), f.as_bytes());
    }
    env.backup(&[s(&src)]);
    let spec = format!("latest:{}", s(&src));
    let restore = |name: &str, extra: &[&str]| -> crate::util::Output {
        let t = env.path(name);
        let mut args = vec!["restore", spec.as_str(), "--target", s(&t)];
        args.extend_from_slice(extra);
        env.run(&args)
    };
    let files = |name: &str| file_list(&env.path(name));
    // `*` stops at `/` in an include as in an exclude; `**` crosses directories.
    let one = format!("{}/log/*.log", s(&src));
    restore("star", &["--include", &one]).success();
    assert_eq!(files("star"), vec!["log/a.log".to_owned()]);
    restore("star-x", &["--exclude", &one]).success();
    assert_eq!(
        files("star-x"),
        vec!["keep/c.txt".to_owned(), "log/nginx/b.log".to_owned()]
    );
    let deep = format!("{}/log/**/*.log", s(&src));
    restore("globstar", &["--include", &deep]).success();
    assert_eq!(
        files("globstar"),
        vec!["log/a.log".to_owned(), "log/nginx/b.log".to_owned()]
    );
    // `/` includes everything; an include that matches nothing is an error, not an empty
    // restore that says it succeeded.
    restore("root", &["--include", "/"]).success();
    assert_eq!(files("root").len(), 3);
    restore("none", &["--include", "*.nothing"]).assert_error(1, &["matches --include"]);
}
