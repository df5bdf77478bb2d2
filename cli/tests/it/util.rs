//! Test harness: a temporary directory with a repository, and a runner for the real `cairn`
//! binary that returns (exit code, stdout, stderr).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cairn_format::{
    encode_sealed, finish_pack, preamble, seal_blob, to_postcard, BlobType, FileKind, Id,
    IndexFile, IndexPack, MasterKey, Node, NodeKind, PackEntry, PackHeader, Snapshot, Timestamp,
    Tree,
};
use rand::{RngCore, SeedableRng};
use serde_json::Value;

/// The password every test repository is created with.
pub const PASSWORD: &str = "correct horse battery staple";

/// Longest any single `cairn` invocation may take before the test fails (instead of hanging).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(180);

/// The `cairn` binary Cargo built for these tests (`CARGO_BIN_EXE_cairn`): always the one
/// of this source tree, never a stale build, and no nested `cargo build`.
pub fn cairn_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_cairn"))
}

/// What one `cairn` run produced.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit code (128 + signal number if killed by a signal).
    pub code: i32,
    /// Standard output (lossy UTF-8).
    pub stdout: String,
    /// Standard error (lossy UTF-8).
    pub stderr: String,
    /// The command line, for messages.
    pub cmdline: String,
}

impl Output {
    /// Panic with the full output unless the exit code is `code`.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Output {
        assert_eq!(
            self.code,
            code,
            "unexpected exit code for `{}`\n{}",
            self.cmdline,
            self.dump()
        );
        self
    }

    /// Panic unless the command succeeded.
    #[track_caller]
    pub fn success(&self) -> &Output {
        self.expect_code(0)
    }

    /// Stdout and stderr for failure messages.
    pub fn dump(&self) -> String {
        format!(
            "--- exit code: {}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    /// Non-empty stderr lines.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }

    /// Parse stdout as one JSON document. A run that lasts past the progress interval prints
    /// `"message_type": "status"` lines before its report; those (and only those) are
    /// skipped, so the parse does not depend on how fast the machine is.
    #[track_caller]
    pub fn json(&self) -> Value {
        let mut rest = self.stdout.trim_start();
        while let Some((line, tail)) = rest.split_once('\n') {
            match serde_json::from_str::<Value>(line) {
                Ok(v) if v["message_type"] == "status" => rest = tail,
                _ => break,
            }
        }
        serde_json::from_str(rest.trim()).unwrap_or_else(|e| {
            panic!(
                "stdout of `{}` is not JSON: {e}\n{}",
                self.cmdline,
                self.dump()
            )
        })
    }

    /// The last `"message_type": "summary"` line of a `--json` run.
    #[track_caller]
    pub fn summary(&self) -> Value {
        self.message("summary")
    }

    /// The last line of a `--json` run with this `message_type` (progress lines of a long
    /// run come before it).
    #[track_caller]
    pub fn message(&self, message_type: &str) -> Value {
        self.stdout
            .lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["message_type"] == message_type)
            .unwrap_or_else(|| {
                panic!(
                    "no {message_type} line in the output of `{}`\n{}",
                    self.cmdline,
                    self.dump()
                )
            })
    }

    /// Exit code `code`, and stderr (warnings, hints and the error line) mentions every
    /// needle (case-insensitive).
    #[track_caller]
    pub fn assert_reports(&self, code: i32, needles: &[&str]) {
        self.expect_code(code);
        let lower = self.stderr.to_lowercase();
        for n in needles {
            assert!(
                lower.contains(&n.to_lowercase()),
                "stderr does not mention {n:?}\n{}",
                self.dump()
            );
        }
    }

    /// Assert a failed run: exit code `code`, and exactly one non-empty stderr line, which is
    /// cairn's error line and contains every one of `needles` (case-insensitive).
    #[track_caller]
    pub fn assert_error(&self, code: i32, needles: &[&str]) {
        self.expect_code(code);
        let lines = self.stderr_lines();
        assert_eq!(
            lines.len(),
            1,
            "expected a one-line error message from `{}`\n{}",
            self.cmdline,
            self.dump()
        );
        let line = lines[0];
        assert!(
            line.starts_with("cairn: error: "),
            "error line has the wrong form: {line:?}"
        );
        let lower = line.to_lowercase();
        for n in needles {
            assert!(
                lower.contains(&n.to_lowercase()),
                "error line {line:?} does not mention {n:?}\n{}",
                self.dump()
            );
        }
    }
}

/// Run `cmd` (stdin from `input`, or /dev/null), with a timeout.
pub fn run_command(mut cmd: Command, input: Option<Vec<u8>>) -> Output {
    let cmdline = format!("{cmd:?}");
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawning `{cmdline}`: {e}"));
    let writer = input.map(|data| {
        let mut stdin = child.stdin.take().expect("piped stdin");
        std::thread::spawn(move || {
            // The child may exit early (an error) and close its end: that is its answer, not ours.
            let _ = stdin.write_all(&data);
        })
    });
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("waiting for cairn") {
            break st;
        }
        if start.elapsed() > COMMAND_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`{cmdline}` did not finish within {COMMAND_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    let stdout_bytes = out_t.join().expect("stdout reader");
    let stderr = String::from_utf8_lossy(&err_t.join().expect("stderr reader")).into_owned();
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    Output {
        code,
        stdout: String::from_utf8_lossy(&stdout_bytes).into_owned(),
        stderr,
        cmdline,
    }
}

/// A `Command` for the cairn binary with a clean environment (no inherited repository or
/// password settings, no terminal to prompt on).
pub fn bare_cairn() -> Command {
    let mut cmd = Command::new(cairn_bin());
    for var in [
        "CAIRN_REPOSITORY",
        "CAIRN_PASSWORD",
        "CAIRN_PASSWORD_FILE",
        "CAIRN_PASSWORD_COMMAND",
        "CAIRN_PASSWORD_COMMAND_TIMEOUT",
        "CAIRN_NEW_PASSWORD",
        "CAIRN_LOG",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("TZ", "UTC");
    cmd
}

/// A temporary directory holding a repository at `repo/`.
#[derive(Debug)]
pub struct Env {
    /// The temporary directory (removed on drop).
    pub dir: tempfile::TempDir,
    /// The repository directory.
    pub repo: PathBuf,
    /// The password used by [`Env::run`].
    pub password: String,
    /// Global options every command gets (`-o sftp.command=…`).
    pub options: Vec<String>,
    /// Environment variables every command gets (`CAIRN_REST_USERNAME`, …).
    pub vars: Vec<(String, String)>,
}

impl Env {
    /// A new temporary directory with an initialized repository (cheap KDF).
    pub fn new() -> Env {
        Self::with_init_args(&[])
    }

    /// Like [`Env::new`] with extra `init` arguments.
    pub fn with_init_args(extra: &[&str]) -> Env {
        let env = Self::uninitialized();
        let mut args = vec!["init", "--kdf-memory-mib", "8", "--kdf-iterations", "1"];
        args.extend_from_slice(extra);
        env.run(&args).success();
        assert!(
            env.repo.join("config").is_file(),
            "init did not create a config file"
        );
        env
    }

    /// A repository under a fresh prefix of the S3 bucket the environment names
    /// (`AWS_ENDPOINT_URL`, `S3_BUCKET` and credentials, as `shared/s3/garage-up.sh` prints
    /// them), or `None` when no S3 server is configured. `CAIRN_TEST_S3_REQUIRED=1` (set by
    /// `.ci/run`) turns a missing server into a failure instead of a skip.
    pub fn s3(name: &str) -> Option<Env> {
        let endpoint = std::env::var("AWS_ENDPOINT_URL")
            .ok()
            .filter(|v| !v.is_empty());
        let bucket = std::env::var("S3_BUCKET").ok().filter(|v| !v.is_empty());
        let (Some(endpoint), Some(bucket)) = (endpoint, bucket) else {
            assert!(
                std::env::var("CAIRN_TEST_S3_REQUIRED").as_deref() != Ok("1"),
                "CAIRN_TEST_S3_REQUIRED=1 but AWS_ENDPOINT_URL/S3_BUCKET are not set"
            );
            eprintln!(
                "skipping {name}: no S3 server (set AWS_ENDPOINT_URL, S3_BUCKET, credentials)"
            );
            return None;
        };
        Some(Self::fresh_under(
            &format!("s3:{}/{bucket}/cairn-it", endpoint.trim_end_matches('/')),
            name,
        ))
    }

    /// A repository under a fresh directory on the SSH server the environment names
    /// (`CAIRN_TEST_SFTP_HOST`, `CAIRN_TEST_SFTP_COMMAND`, `CAIRN_TEST_SFTP_DIR`, as
    /// `scripts/sshd-server.sh up` prints them), or `None` without one.
    /// `CAIRN_TEST_SFTP_REQUIRED=1` (set by `.ci/run`) makes a missing server a failure.
    pub fn sftp(name: &str) -> Option<Env> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let (Some(host), Some(command), Some(dir)) = (
            var("CAIRN_TEST_SFTP_HOST"),
            var("CAIRN_TEST_SFTP_COMMAND"),
            var("CAIRN_TEST_SFTP_DIR"),
        ) else {
            assert!(
                std::env::var("CAIRN_TEST_SFTP_REQUIRED").as_deref() != Ok("1"),
                "CAIRN_TEST_SFTP_REQUIRED=1 but CAIRN_TEST_SFTP_* are not set"
            );
            eprintln!("skipping {name}: no SSH server (scripts/sshd-server.sh up)");
            return None;
        };
        let mut env = Self::fresh_under(&format!("sftp:{host}:{dir}"), name);
        env.options = vec!["-o".into(), format!("sftp.command={command}")];
        Some(env)
    }

    /// An environment whose repository is a fresh location under the remote `base` (named
    /// after the test, this process and the time, so runs never meet).
    pub(crate) fn fresh_under(base: &str, name: &str) -> Env {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let mut env = Self::uninitialized();
        env.repo = PathBuf::from(format!("{base}/{name}-{}-{nanos}", std::process::id()));
        env
    }

    /// `backup SRC` that dies (abort: no cleanup, like SIGKILL) right after its `packs`-th
    /// pack upload (`CAIRN_FAILPOINT`); requires that it did.
    #[track_caller]
    pub fn backup_killed_after_packs(&self, src: &Path, packs: u32) {
        let mut cmd = self.cmd();
        cmd.args(["backup", s(src)])
            .env("CAIRN_FAILPOINT", format!("abort-after-packs:{packs}"));
        let crashed = run_command(cmd, None);
        assert!(
            crashed.code != 0
                && crashed
                    .stderr
                    .contains(&format!("aborting after {packs} packs")),
            "the backup did not crash mid-upload: {}",
            crashed.dump()
        );
    }

    /// `restore latest:SRC --target TARGET EXTRA…`, then require TARGET to hold exactly SRC.
    #[track_caller]
    pub fn restore_latest_exact(&self, src: &Path, target: &Path, extra: &[&str]) {
        let spec = format!("latest:{}", s(src));
        let mut args = vec!["restore", spec.as_str(), "--target", s(target)];
        args.extend_from_slice(extra);
        self.ok(&args);
        assert_trees_equal(src, target, false);
    }

    /// The local cache directory of this environment's repositories.
    pub fn cache_dir(&self) -> PathBuf {
        self.dir.path().join(".cache").join("cairn")
    }

    /// A temporary directory without a repository (`repo` does not exist yet).
    pub fn uninitialized() -> Env {
        let dir = tempfile::Builder::new()
            .prefix("cairn-it-")
            .tempdir()
            .expect("creating a temp dir");
        let repo = dir.path().join("repo");
        Env {
            dir,
            repo,
            password: PASSWORD.to_owned(),
            options: Vec::new(),
            vars: Vec::new(),
        }
    }

    /// `dir/rel`.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// A cairn command with `-r repo` and the password in `CAIRN_PASSWORD`.
    pub fn cmd(&self) -> Command {
        let mut cmd = bare_cairn();
        cmd.arg("-r")
            .arg(&self.repo)
            .args(&self.options)
            .env("CAIRN_PASSWORD", &self.password)
            .envs(self.vars.iter().map(|(k, v)| (k, v)));
        // Keep any per-user state (caches) inside the test's directory.
        cmd.env("HOME", self.dir.path())
            .env("XDG_CACHE_HOME", self.dir.path().join(".cache"));
        cmd
    }

    /// Run cairn with `args`.
    pub fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        let mut cmd = self.cmd();
        cmd.args(args);
        run_command(cmd, None)
    }

    /// Run cairn with `args` and another password.
    pub fn run_pw<S: AsRef<OsStr>>(&self, password: &str, args: &[S]) -> Output {
        let mut cmd = self.cmd();
        cmd.env("CAIRN_PASSWORD", password).args(args);
        run_command(cmd, None)
    }

    /// Run cairn with `args`, feeding `input` on stdin.
    pub fn run_stdin<S: AsRef<OsStr>>(&self, args: &[S], input: Vec<u8>) -> Output {
        let mut cmd = self.cmd();
        cmd.args(args);
        run_command(cmd, Some(input))
    }

    /// Run and require exit code 0.
    #[track_caller]
    pub fn ok<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        let out = self.run(args);
        out.success();
        out
    }

    /// Run with `--json`, require success, parse stdout.
    #[track_caller]
    pub fn json<S: AsRef<OsStr>>(&self, args: &[S]) -> Value {
        let mut all: Vec<&OsStr> = vec![OsStr::new("--json")];
        all.extend(args.iter().map(AsRef::as_ref));
        self.ok(&all).json()
    }

    /// `backup --json ARGS`, require success, return the summary line.
    #[track_caller]
    pub fn backup<S: AsRef<OsStr>>(&self, args: &[S]) -> Value {
        let mut all: Vec<&OsStr> = vec![OsStr::new("--json"), OsStr::new("backup")];
        all.extend(args.iter().map(AsRef::as_ref));
        let out = self.ok(&all);
        let s = out.summary();
        assert!(
            s["snapshot_id"].as_str().is_some_and(|id| id.len() == 64),
            "summary without snapshot id: {s}"
        );
        s
    }

    /// `snapshots --json ARGS` as a list.
    #[track_caller]
    pub fn snapshots<S: AsRef<OsStr>>(&self, args: &[S]) -> Vec<Value> {
        let mut all: Vec<&OsStr> = vec![OsStr::new("snapshots")];
        all.extend(args.iter().map(AsRef::as_ref));
        match self.json(&all) {
            Value::Array(v) => v,
            other => panic!("snapshots --json printed {other}"),
        }
    }

    /// All object files of a kind directory (`snapshots`, `index`, `keys`, or `data` recursively).
    pub fn objects(&self, kind_dir: &str) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = walkdir::WalkDir::new(self.repo.join(kind_dir))
            .into_iter()
            .map(|e| e.expect("walking the repository"))
            .filter(|e| e.file_type().is_file() && !e.file_name().as_bytes().starts_with(b"."))
            .map(|e| e.path().to_path_buf())
            .collect();
        v.sort();
        v
    }
}

/// `p` as `&str` (test paths are UTF-8).
/// Data blob ids of `file` in the latest snapshot.
pub fn content_ids(env: &Env, dir: &Path, file: &str) -> Vec<String> {
    let tree = env.json(&["cat", "tree", &format!("latest:{}", s(dir))]);
    let node = tree["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == file)
        .unwrap_or_else(|| panic!("{file} not in {tree}"));
    node["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// Deterministic pseudo-random bytes.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

/// Write `data` to `path`, creating parents.
pub fn write_file(path: &Path, data: &[u8]) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("creating parent dirs");
    }
    fs::write(path, data).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// Decode lowercase/uppercase hex.
pub fn hex_decode(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd-length hex {s:?}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
        .collect()
}

/// mtime in ns since the epoch.
pub fn mtime_ns(m: &fs::Metadata) -> i64 {
    m.mtime() * 1_000_000_000 + m.mtime_nsec()
}

fn kind_name(m: &fs::Metadata) -> &'static str {
    let t = m.file_type();
    if t.is_dir() {
        "dir"
    } else if t.is_symlink() {
        "symlink"
    } else if t.is_file() {
        "file"
    } else if t.is_fifo() {
        "fifo"
    } else if t.is_socket() {
        "socket"
    } else if t.is_char_device() {
        "chardev"
    } else if t.is_block_device() {
        "blockdev"
    } else {
        "unknown"
    }
}

fn xattrs_of(p: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut out = BTreeMap::new();
    // The xattr crate does not follow symlinks (l*xattr).
    if let Ok(names) = xattr::list(p) {
        for n in names {
            let v = xattr::get(p, &n).ok().flatten().unwrap_or_default();
            out.insert(n.as_bytes().to_vec(), v);
        }
    }
    out
}

fn same_content(a: &Path, b: &Path) -> std::io::Result<bool> {
    let mut fa = File::open(a)?;
    let mut fb = File::open(b)?;
    let mut ba = vec![0u8; 1 << 20];
    let mut bb = vec![0u8; 1 << 20];
    loop {
        let na = read_full(&mut fa, &mut ba)?;
        let nb = read_full(&mut fb, &mut bb)?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Relative path → metadata of every entry under `root` (symlinks not followed). With
/// `include_root`, the root itself is the entry `""`.
pub fn walk(root: &Path, include_root: bool) -> BTreeMap<PathBuf, fs::Metadata> {
    walkdir::WalkDir::new(root)
        .follow_links(false)
        .min_depth(usize::from(!include_root))
        .sort_by_file_name()
        .into_iter()
        .map(|e| {
            let e = e.unwrap_or_else(|err| panic!("walking {}: {err}", root.display()));
            let rel = e
                .path()
                .strip_prefix(root)
                .expect("walkdir stays under its root")
                .to_path_buf();
            let meta = fs::symlink_metadata(e.path())
                .unwrap_or_else(|err| panic!("lstat {}: {err}", e.path().display()));
            (rel, meta)
        })
        .collect()
}

/// Hardlink groups (regular files sharing an inode) as sets of relative paths.
fn link_groups(entries: &BTreeMap<PathBuf, fs::Metadata>) -> BTreeSet<Vec<PathBuf>> {
    let mut by_ino: BTreeMap<(u64, u64), Vec<PathBuf>> = BTreeMap::new();
    for (rel, m) in entries {
        if m.file_type().is_file() {
            by_ino
                .entry((m.dev(), m.ino()))
                .or_default()
                .push(rel.clone());
        }
    }
    by_ino
        .into_values()
        .map(|mut v| {
            v.sort();
            v
        })
        .collect()
}

/// Compare two trees exactly: the same relative paths, and for each entry the same type,
/// mode & 0o7777, uid, gid, mtime (ns), size (files and symlinks), symlink target bytes,
/// content, xattrs; and the same hardlink groups. Panics listing every difference.
#[track_caller]
pub fn assert_trees_equal(expected: &Path, actual: &Path, include_root: bool) {
    let a = walk(expected, include_root);
    let b = walk(actual, include_root);
    let mut diffs: Vec<String> = Vec::new();
    let ka: BTreeSet<&PathBuf> = a.keys().collect();
    let kb: BTreeSet<&PathBuf> = b.keys().collect();
    for missing in ka.difference(&kb) {
        diffs.push(format!("missing in restore: {}", missing.display()));
    }
    for extra in kb.difference(&ka) {
        diffs.push(format!("unexpected in restore: {}", extra.display()));
    }
    for (rel, ma) in &a {
        let Some(mb) = b.get(rel) else { continue };
        let pa = expected.join(rel);
        let pb = actual.join(rel);
        let name = rel.display();
        let (ta, tb) = (kind_name(ma), kind_name(mb));
        if ta != tb {
            diffs.push(format!("{name}: type {ta} vs {tb}"));
            continue;
        }
        if ma.mode() & 0o7777 != mb.mode() & 0o7777 {
            diffs.push(format!(
                "{name}: mode {:o} vs {:o}",
                ma.mode() & 0o7777,
                mb.mode() & 0o7777
            ));
        }
        if (ma.uid(), ma.gid()) != (mb.uid(), mb.gid()) {
            diffs.push(format!(
                "{name}: owner {}:{} vs {}:{}",
                ma.uid(),
                ma.gid(),
                mb.uid(),
                mb.gid()
            ));
        }
        if mtime_ns(ma) != mtime_ns(mb) {
            diffs.push(format!(
                "{name}: mtime {} vs {}",
                mtime_ns(ma),
                mtime_ns(mb)
            ));
        }
        if ta != "dir" && ma.size() != mb.size() {
            diffs.push(format!("{name}: size {} vs {}", ma.size(), mb.size()));
        }
        if ta == "symlink" {
            let la = fs::read_link(&pa).expect("readlink");
            let lb = fs::read_link(&pb).expect("readlink");
            if la.as_os_str().as_bytes() != lb.as_os_str().as_bytes() {
                diffs.push(format!("{name}: link target {la:?} vs {lb:?}"));
            }
        }
        if (ta == "chardev" || ta == "blockdev") && ma.rdev() != mb.rdev() {
            diffs.push(format!(
                "{name}: device number {:#x} vs {:#x}",
                ma.rdev(),
                mb.rdev()
            ));
        }
        if ta == "file" {
            match same_content(&pa, &pb) {
                Ok(true) => {}
                Ok(false) => diffs.push(format!("{name}: content differs")),
                Err(e) => diffs.push(format!("{name}: cannot compare content: {e}")),
            }
        }
        let (xa, xb) = (xattrs_of(&pa), xattrs_of(&pb));
        if xa != xb {
            diffs.push(format!("{name}: xattrs {xa:?} vs {xb:?}"));
        }
    }
    let (ga, gb) = (link_groups(&a), link_groups(&b));
    if ga != gb {
        let multi = |g: &BTreeSet<Vec<PathBuf>>| {
            g.iter()
                .filter(|v| v.len() > 1)
                .cloned()
                .collect::<Vec<_>>()
        };
        diffs.push(format!(
            "hardlink groups differ: {:?} vs {:?}",
            multi(&ga),
            multi(&gb)
        ));
    }
    assert!(
        diffs.is_empty(),
        "restored tree {} differs from {}:\n  {}",
        actual.display(),
        expected.display(),
        diffs.join("\n  ")
    );
}

/// Regular files under `root` (relative paths, as strings), sorted.
pub fn file_list(root: &Path) -> Vec<String> {
    walk(root, false)
        .into_iter()
        .filter(|(_, m)| !m.is_dir())
        .map(|(p, _)| p.to_string_lossy().into_owned())
        .collect()
}

/// `path` relative to `/`, for `target.join(...)` after a full restore.
pub fn rel_to_root(path: &Path) -> &Path {
    path.strip_prefix("/").expect("absolute path")
}

/// Writes hand-made packs, index files and snapshots into a repository, with its master key.
pub struct Forger<'a> {
    env: &'a Env,
    /// The repository's master key.
    pub key: MasterKey,
}

impl<'a> Forger<'a> {
    /// Read the master key with `cat masterkey`.
    pub fn new(env: &'a Env) -> Forger<'a> {
        let mk = env.json(&["cat", "masterkey"]);
        let mut encryption = [0u8; 32];
        encryption.copy_from_slice(&hex_decode(mk["encryption"].as_str().unwrap()));
        let mut id_key = [0u8; 32];
        id_key.copy_from_slice(&hex_decode(mk["id_key"].as_str().unwrap()));
        let chunker_seed = mk["chunker_seed"].as_u64().unwrap();
        Forger {
            env,
            key: MasterKey {
                encryption,
                id_key,
                chunker_seed,
            },
        }
    }

    /// A node with plain metadata.
    pub fn node(name: &[u8], kind: NodeKind) -> Node {
        Node {
            name: name.to_vec(),
            kind,
            mode: if kind == NodeKind::Dir { 0o755 } else { 0o644 },
            uid: 0,
            gid: 0,
            user: String::new(),
            group: String::new(),
            mtime: cairn_format::FileTime {
                secs: 1_700_000_000,
                nanos: 0,
            },
            atime: cairn_format::FileTime {
                secs: 1_700_000_000,
                nanos: 0,
            },
            ctime: cairn_format::FileTime {
                secs: 1_700_000_000,
                nanos: 0,
            },
            size: 0,
            inode: 0,
            device: 0,
            rdev: 0,
            links: 1,
            link_target: Vec::new(),
            xattrs: Vec::new(),
            content: cairn_format::Content::default(),
            subtree: None,
        }
    }

    /// Store `blobs` (type, plaintext) in one new pack plus an index file; returns their ids.
    pub fn store(&self, blobs: &[(BlobType, Vec<u8>)]) -> Vec<Id> {
        let mut pack = preamble(FileKind::Pack).to_vec();
        let mut entries = Vec::new();
        let mut ids = Vec::new();
        for (t, plain) in blobs {
            let id = self.key.blob_id(plain);
            let sealed = seal_blob(&self.key, *t, &id, plain, 0);
            entries.push(PackEntry {
                blob_type: *t,
                id,
                offset: pack.len() as u32,
                length: sealed.len() as u32,
                raw_length: plain.len() as u32,
                group_offset: None,
            });
            pack.extend_from_slice(&sealed);
            ids.push(id);
        }
        finish_pack(
            &self.key,
            1,
            &mut pack,
            &PackHeader {
                entries: entries.clone(),
            },
        )
        .unwrap();
        let pack_id = Id::of_object(&pack).to_hex();
        write_file(
            &self
                .env
                .repo
                .join("data")
                .join(&pack_id[..2])
                .join(&pack_id),
            &pack,
        );
        let index = IndexFile {
            supersedes: Vec::new(),
            packs: vec![IndexPack::new(Id::of_object(&pack), entries)],
        };
        self.put("index", &index.encode_sealed(&self.key, 1, 3).unwrap());
        ids
    }

    /// Store `bytes` under `dir/` named by their hash; returns the name.
    pub fn put(&self, dir: &str, bytes: &[u8]) -> String {
        let name = Id::of_object(bytes).to_hex();
        write_file(&self.env.repo.join(dir).join(&name), bytes);
        name
    }

    /// A snapshot whose root tree holds directory `x` with `nodes` (encoded as given, not
    /// canonicalized); file nodes get `content` as their data. Returns the snapshot id.
    pub fn snapshot(&self, nodes: Vec<Node>, hostname: &str) -> String {
        // Encoded as a writer would: version 4 where a node names content lists.
        let inner = Tree { nodes }.encode();
        let inner_id = self.key.blob_id(&inner);
        let mut x = Self::node(b"x", NodeKind::Dir);
        x.subtree = Some(inner_id);
        let root = to_postcard(&Tree { nodes: vec![x] });
        let ids = self.store(&[(BlobType::Tree, inner), (BlobType::Tree, root)]);
        let snap = Snapshot {
            time: Timestamp {
                unix_nanos: 1_700_000_000_000_000_000,
                utc_offset_secs: 0,
            },
            parent: None,
            tree: ids[1],
            paths: vec![b"/x".to_vec()],
            hostname: hostname.to_owned(),
            username: "mallory".into(),
            uid: 0,
            gid: 0,
            tags: Vec::new(),
            excludes: Vec::new(),
            program_version: "forged".into(),
            summary: None,
        };
        self.put(
            "snapshots",
            &encode_sealed(&self.key, FileKind::Snapshot, &snap, 3),
        )
    }
}

/// A well-formed etcd snapshot as `etcdctl snapshot save` writes it: a bbolt database (two
/// valid meta pages, `pages` pages of 4 KiB, contents from `seed`) plus its SHA-256.
pub fn etcd_snapshot(pages: u64, seed: u64) -> Vec<u8> {
    fn fnv(d: &[u8]) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in d {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h
    }
    let ps = 4096usize;
    let mut db = random_bytes(ps * pages as usize, seed);
    for (i, txid) in [(0usize, 7u64), (1, 8)] {
        let p = &mut db[i * ps..(i + 1) * ps];
        p[..16].fill(0);
        p[0..8].copy_from_slice(&(i as u64).to_le_bytes());
        p[8..10].copy_from_slice(&4u16.to_le_bytes());
        let m = &mut p[16..];
        m[0..4].copy_from_slice(&0xED0C_DAEDu32.to_le_bytes());
        m[4..8].copy_from_slice(&2u32.to_le_bytes());
        m[8..12].copy_from_slice(&(ps as u32).to_le_bytes());
        m[12..16].fill(0);
        m[16..24].copy_from_slice(&3u64.to_le_bytes());
        m[24..32].fill(0);
        m[32..40].copy_from_slice(&2u64.to_le_bytes());
        m[40..48].copy_from_slice(&pages.to_le_bytes());
        m[48..56].copy_from_slice(&txid.to_le_bytes());
        let sum = fnv(&m[..56]);
        m[56..64].copy_from_slice(&sum.to_le_bytes());
    }
    let h = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &db);
    db.extend_from_slice(h.as_ref());
    db
}

/// The harness's `--json` parse skips progress lines and nothing else.
#[test]
fn json_parse_skips_status_lines_only() {
    let out = |stdout: &str| Output {
        code: 0,
        stdout: stdout.to_owned(),
        stderr: String::new(),
        cmdline: "t".to_owned(),
    };
    let status = r#"{"message_type":"status","action":"prune"}"#;
    let report = "{\n  \"removed\": 3\n}\n";
    assert_eq!(out(report).json()["removed"], 3);
    assert_eq!(
        out(&format!("{status}\n{status}\n{report}")).json()["removed"],
        3
    );
    let garbage = format!("{{\"message_type\":\"other\"}}\n{report}");
    assert!(std::panic::catch_unwind(|| out(&garbage).json()).is_err());
}
