//! `cairn serve` and `rest:` locations: a real server process per test, HTTPS with a private
//! CA (made with openssl), one full-access credential (`admin`) and four append-only ones
//! (`node0`…`node3`). The round trip, an interrupted backup and the next one, the nightly
//! job; what an append-only credential cannot do (through cairn and through crafted
//! requests); credentials refused; garbage uploads refused without being stored; four nodes
//! backing up at once beside a prune.

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::s3::{init, make_source};
use crate::util::{cairn_bin, random_bytes, s, write_file, Env};

const ADMIN_PASSWORD: &str = "admin-secret";

pub(crate) fn node_name(w: usize) -> String {
    format!("node{w}")
}

pub(crate) fn node_password(w: usize) -> String {
    format!("node{w}-secret")
}

/// A running `cairn serve` (killed on drop).
pub(crate) struct Server {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl (needed to make the test CA)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn credential(dir: &Path, name: &str, password: &str, access: &str) -> String {
    let pw = dir.join(format!("{name}.pw"));
    std::fs::write(&pw, password).unwrap();
    let out = crate::util::bare_cairn()
        .args([
            "serve-credential",
            name,
            "--access",
            access,
            "--new-password-file",
        ])
        .arg(&pw)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

impl Server {
    pub(crate) fn start() -> Server {
        let dir = tempfile::Builder::new()
            .prefix("cairn-serve-")
            .tempdir()
            .unwrap();
        let p = |n: &str| s(&dir.path().join(n)).to_owned();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        let (ca_key, ca_pem) = (p("ca.key"), p("ca.pem"));
        ca.extend([
            "-days",
            "2",
            "-subj",
            "/CN=cairn test CA",
            "-keyout",
            &ca_key,
            "-out",
            &ca_pem,
        ]);
        openssl(&ca);
        let (key, csr, cert, ext) = (p("server.key"), p("server.csr"), p("server.pem"), p("ext"));
        let mut req = vec!["req"];
        req.extend(ec);
        req.extend(["-subj", "/CN=localhost", "-keyout", &key, "-out", &csr]);
        openssl(&req);
        std::fs::write(&ext, "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &cert,
        ]);
        let mut creds = credential(dir.path(), "admin", ADMIN_PASSWORD, "full");
        for w in 0..4 {
            creds.push_str(&credential(
                dir.path(),
                &node_name(w),
                &node_password(w),
                "append-only",
            ));
        }
        std::fs::write(dir.path().join("credentials"), creds).unwrap();
        std::fs::create_dir(dir.path().join("root")).unwrap();
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let mut child = Command::new(cairn_bin())
            .args(["serve", &p("root"), "--listen", "127.0.0.1:0"])
            .args([
                "--credentials",
                &p("credentials"),
                "--tls-cert",
                &cert,
                "--tls-key",
                &key,
            ])
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .split("https://127.0.0.1:")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no address in the server's first line {line:?}"));
        Server { child, port, dir }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The server's directory of repository `name`.
    fn repo_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join("root").join(name)
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}/{path}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// An environment using repository `name` on this server with the admin credential.
    fn env(&self, name: &str) -> Env {
        let mut env = Env::uninitialized();
        env.repo = PathBuf::from(format!("rest:{}", self.url(name)));
        env.options = vec!["-o".into(), format!("rest.ca-file={}", s(&self.ca()))];
        env.vars = vec![
            ("CAIRN_REST_USERNAME".into(), "admin".into()),
            ("CAIRN_REST_PASSWORD".into(), ADMIN_PASSWORD.into()),
        ];
        env
    }

    /// A client for crafted requests, trusting the test CA.
    fn http(&self) -> reqwest::blocking::Client {
        let ca = std::fs::read(self.ca()).unwrap();
        reqwest::blocking::Client::builder()
            .tls_certs_merge(reqwest::Certificate::from_pem_bundle(&ca).unwrap())
            .timeout(Duration::from_secs(300))
            .build()
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `env` acting as append-only node `w`.
fn as_node(env: &Env, w: usize) -> Env {
    let mut node = Env::uninitialized();
    node.repo = env.repo.clone();
    node.options = env.options.clone();
    node.vars = vec![
        ("CAIRN_REST_USERNAME".into(), node_name(w)),
        ("CAIRN_REST_PASSWORD".into(), node_password(w)),
    ];
    node
}

#[test]
fn rest_round_trip_over_https_killed_backup_and_nightly_job() {
    let server = Server::start();
    let env = server.env("k3s");
    init(&env, &["--pack-size-mib", "4"]);
    let node = as_node(&env, 0);
    let src = make_source(&env, 1);
    let first = node.backup(&[s(&src)]);
    assert_eq!(first["errors"], 0, "{first}");
    node.restore_latest_exact(&src, &env.path("r1"), &[]);
    env.ok(&["check", "--read-data"]);
    // The node's locks are gone: it could delete its own.
    assert_eq!(
        std::fs::read_dir(server.repo_dir("k3s/locks"))
            .unwrap()
            .count(),
        0
    );

    // Killed mid-upload (abort: no cleanup), then the next backup completes.
    write_file(&src.join("big/f0.bin"), &random_bytes(6 << 20, 77));
    node.backup_killed_after_packs(&src, 1);
    let second = node.backup(&[s(&src)]);
    assert_eq!(second["errors"], 0, "{second}");
    // The killed run's lock is left behind; the next prune sees that its process is dead.
    env.ok(&["check", "--read-data"]);
    env.ok(&["forget", "--keep-last", "1", "--prune"]);
    env.ok(&["check", "--read-data"]);
    node.restore_latest_exact(&src, &env.path("r2"), &[]);

    // The nightly job on a node, with the credential in the job file's options.
    let data = env.path("pv/data");
    write_file(&data.join("db.bin"), &random_bytes(2 << 20, 9));
    let pw = env.path("password");
    std::fs::write(&pw, &env.password).unwrap();
    let node_pw = env.path("node.pw");
    std::fs::write(&node_pw, node_password(1)).unwrap();
    let job = env.path("job.toml");
    std::fs::write(
        &job,
        format!(
            r#"[repository]
path = "{repo}"
password-file = "{pw}"
options = {{ "rest.ca-file" = "{ca}", "rest.username" = "{user}", "rest.password-file" = "{node_pw}" }}

[[source]]
name = "volumes"
kind = "path"
paths = ["{data}"]
keep-last = 1
"#,
            repo = s(&env.repo),
            pw = s(&pw),
            ca = s(&server.ca()),
            user = node_name(1),
            node_pw = s(&node_pw),
            data = s(&data),
        ),
    )
    .unwrap();
    for seed in [10, 11] {
        write_file(&data.join("db.bin"), &random_bytes(2 << 20, seed));
        let mut c = crate::util::bare_cairn();
        c.args(["run", "--config", s(&job)])
            .env("HOME", env.dir.path())
            .env("XDG_CACHE_HOME", env.dir.path().join(".cache-job"));
        let out = crate::util::run_command(c, None);
        out.success();
        // Retention is the server host's job: the node's append-only credential skips it
        // (and says so) instead of failing the night.
        assert!(
            out.stderr.contains("retention and prune skipped"),
            "{}",
            out.dump()
        );
    }
    assert_eq!(env.snapshots::<&str>(&[]).len(), 3);
    env.ok(&["check", "--read-data"]);
    env.restore_latest_exact(&data, &env.path("r3"), &[]);
}

#[test]
fn append_only_credentials_cannot_delete_or_overwrite() {
    let server = Server::start();
    let env = server.env("k3s");
    init(&env, &["--pack-size-mib", "4"]);
    let node = as_node(&env, 2);
    let src = make_source(&env, 3);
    node.backup(&[s(&src)]);
    write_file(&src.join("small/d1/f1"), b"second");
    node.backup(&[s(&src)]);
    assert_eq!(node.snapshots::<&str>(&[]).len(), 2);

    // Through cairn: refused before anything is written.
    let objects = |d: &str| {
        let mut v: Vec<String> = walkdir::WalkDir::new(server.repo_dir("k3s").join(d))
            .into_iter()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let before: Vec<_> = ["snapshots", "index", "data", "keys"].map(objects).into();
    node.run(&["forget", "--keep-last", "1"])
        .assert_error(15, &["append-only", "forget/prune"]);
    node.run(&["forget", "--keep-last", "1", "--prune"])
        .assert_error(15, &["append-only"]);
    node.run(&["prune"]).assert_error(15, &["append-only"]);
    node.run(&["repair", "index"])
        .assert_error(15, &["append-only"]);
    let after: Vec<_> = ["snapshots", "index", "data", "keys"].map(objects).into();
    assert_eq!(
        before, after,
        "nothing was added or removed by the refused commands"
    );

    // Crafted requests.
    let http = server.http();
    let snap = &before[0][0];
    let pack = &before[2][0];
    let pack_bytes = std::fs::read(
        server
            .repo_dir("k3s")
            .join("data")
            .join(&pack[..2])
            .join(pack),
    )
    .unwrap();
    let send = |method: reqwest::Method, path: &str, body: Option<Vec<u8>>| {
        let mut req = http
            .request(method, server.url(path))
            .basic_auth(node_name(2), Some(node_password(2)));
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req.send().unwrap();
        (resp.status().as_u16(), resp.text().unwrap_or_default())
    };
    for (method, path, body) in [
        (
            reqwest::Method::DELETE,
            format!("k3s/snapshots/{snap}"),
            None,
        ),
        (reqwest::Method::DELETE, format!("k3s/data/{pack}"), None),
        (reqwest::Method::DELETE, "k3s/config".to_owned(), None),
        (
            reqwest::Method::POST,
            "k3s/config".to_owned(),
            Some(b"cairnC\x03\x00junk".to_vec()),
        ),
        (
            reqwest::Method::PUT,
            format!("k3s/snapshots/{snap}"),
            Some(b"cairnS\x03\x00junk".to_vec()),
        ),
        // Even the very same bytes: an existing name is never written again.
        (
            reqwest::Method::POST,
            format!("k3s/data/{pack}"),
            Some(pack_bytes.clone()),
        ),
    ] {
        let (status, text) = send(method.clone(), &path, body);
        assert_eq!(status, 403, "{method} {path}: {text}");
        assert!(text.contains("append-only"), "{text}");
    }
    // Another repository than the credential's? node credentials cover all here; a
    // wrong user name or password is 401, through cairn and directly.
    let (status, _) = {
        let resp = http
            .get(server.url("k3s/keys/"))
            .basic_auth("node2", Some("wrong"))
            .send()
            .unwrap();
        (resp.status().as_u16(), ())
    };
    assert_eq!(status, 401);
    let mut wrong = as_node(&env, 2);
    wrong.vars[1].1 = "wrong".into();
    wrong
        .run(&["snapshots"])
        .assert_error(15, &["401", "node2"]);
    let mut unknown = as_node(&env, 2);
    unknown.vars[0].1 = "nobody".into();
    unknown.run(&["snapshots"]).assert_error(15, &["401"]);

    let log = server.log();
    assert!(
        log.matches("refused").count() >= 6 && log.contains("authentication failed for \"nobody\""),
        "refusals are logged:\n{log}"
    );
    assert_eq!(
        before,
        ["snapshots", "index", "data", "keys"].map(objects).to_vec(),
        "the crafted requests changed nothing"
    );
    env.ok(&["check", "--read-data"]);
    for snap in env.snapshots::<&str>(&[]) {
        let id = snap["id"].as_str().unwrap();
        let target = env.path(&format!("restored-{id}"));
        env.ok(&["restore", id, "--target", s(&target)]);
    }
    // With the full credential, forget and prune work.
    env.ok(&["forget", "--keep-last", "1", "--prune"]);
    assert_eq!(env.snapshots::<&str>(&[]).len(), 1);
}

/// A body of `len` pseudo-random bytes, generated as it is sent.
struct Garbage {
    left: u64,
    state: u64,
    prefix: Vec<u8>,
}

impl Read for Garbage {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize;
        for b in &mut buf[..n] {
            *b = if self.prefix.is_empty() {
                self.state = self
                    .state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (self.state >> 56) as u8
            } else {
                self.prefix.remove(0)
            };
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[test]
fn garbage_uploads_are_refused_without_being_stored() {
    let server = Server::start();
    let env = server.env("k3s");
    init(&env, &[]);
    let http = server.http();
    let name = "ab".repeat(32);
    let upload = |len: u64, prefix: &[u8], declared: Option<u64>| {
        let body = Garbage {
            left: len,
            state: len,
            prefix: prefix.to_vec(),
        };
        let mut req = http
            .post(server.url(&format!("k3s/data/{name}")))
            .basic_auth("node0", Some(node_password(0)))
            .body(reqwest::blocking::Body::sized(
                body,
                declared.unwrap_or(len),
            ));
        if let Some(d) = declared {
            req = req.header(reqwest::header::CONTENT_LENGTH, d);
        }
        // The server answers as soon as it knows and closes the connection: the client
        // sees the answer or, still sending, a broken connection.
        req.send().map(|r| {
            let status = r.status().as_u16();
            (status, r.text().unwrap_or_default())
        })
    };
    let started = std::time::Instant::now();
    // 2 GB of garbage: refused at its first bytes.
    if let Ok((status, text)) = upload(2_000_000_000, b"", None) {
        assert_eq!(status, 400, "{text}");
        assert!(text.contains("preamble"), "{text}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the 2 GB upload was refused early, not read to the end"
    );
    // Claimed bigger than any pack: refused before a byte is read.
    if let Ok((status, text)) = upload(1 << 20, b"", Some(3 << 30)) {
        assert_eq!(status, 413, "{text}");
    }
    // A pack preamble, then 64 MiB that do not hash to the name: refused at the end.
    let (status, text) = upload(64 << 20, b"cairnP\x03\x00", None).unwrap();
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("hash"), "{text}");
    // A lock body posted as a pack.
    let (status, _) = upload(100, b"cairnL\x03\x00", None).unwrap();
    assert_eq!(status, 400);
    // A name in the wrong case (no object can have it).
    let resp = http
        .post(server.url(&format!("k3s/data/{}", name.to_uppercase())))
        .basic_auth("node0", Some(node_password(0)))
        .body(b"cairnP\x03\x00".to_vec())
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);

    let leftovers: Vec<_> = walkdir::WalkDir::new(server.repo_dir("k3s/data"))
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.path().to_owned())
        .collect();
    assert!(leftovers.is_empty(), "stored or left behind: {leftovers:?}");
    let log = server.log();
    assert!(
        log.matches("wrong preamble").count() >= 2
            && log.contains("3221225472 bytes declared")
            && log.contains("BLAKE3"),
        "each refusal is logged:\n{log}"
    );
    env.ok(&["check"]);
}

#[test]
fn four_nodes_back_up_at_once_through_the_server() {
    let server = Server::start();
    let env = server.env("writers");
    init(&env, &[]);
    crate::writers::many_writers(&env, Duration::from_secs(10));
    // The nodes' refreshed and released locks were theirs to delete: none is left over.
    let log = server.log();
    assert!(!log.contains("refused"), "{log}");
    assert_eq!(
        std::fs::read_dir(server.repo_dir("writers/locks"))
            .unwrap()
            .count(),
        0
    );
}
