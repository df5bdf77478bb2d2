//! The K3s sources end to end: a live SQLite datastore, K3s's zipped etcd snapshots, the
//! API export against a stand-in API server, and the cluster-state restore that checks what
//! it puts back; plus the run-level guards (`[run] timeout`, `on-failure`) and the in-place
//! restore (`restore --delete`, `--dry-run`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::job::{job_cmd, job_file, run_job};
use crate::util::{assert_trees_equal, s, write_file, Env};

/// `cairn k3s restore --config JOB --target TARGET`.
fn k3s_restore(env: &Env, job: &Path, target: &Path) -> crate::util::Output {
    job_cmd(
        env,
        &["k3s", "restore", "--config", s(job), "--target", s(target)],
    )
}

fn have(bin: &str, arg: &str) -> bool {
    Command::new(bin)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Kills a helper process when the test ends, however it ends.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A kine-like writer: every transaction inserts 20 rows sharing one transaction number and
/// commits; after each commit the number of committed transactions goes to `progress`.
const SQLITE_WRITER: &str = r#"
import os, sqlite3, sys
db, progress, stop = sys.argv[1:4]
c = sqlite3.connect(db, isolation_level=None)
c.execute("PRAGMA journal_mode=WAL")
c.execute("""CREATE TABLE IF NOT EXISTS kine (id INTEGER PRIMARY KEY AUTOINCREMENT,
  name TEXT, created INTEGER, deleted INTEGER, create_revision INTEGER,
  prev_revision INTEGER, lease INTEGER, value BLOB, old_value BLOB)""")
n = 0
while not os.path.exists(stop):
    n += 1
    c.execute("BEGIN IMMEDIATE")
    for i in range(20):
        c.execute("INSERT INTO kine (name, created, deleted, create_revision, prev_revision, lease, value, old_value) VALUES (?, 1, 0, ?, 0, 0, ?, NULL)",
                  (f"/registry/configmaps/ns{n % 7}/cm{i}", n, os.urandom(200 + (n * i) % 900)))
    c.execute("COMMIT")
    with open(progress + ".tmp", "w") as f:
        f.write(str(n))
    os.replace(progress + ".tmp", progress)
"#;

fn committed(progress: &Path) -> u64 {
    std::fs::read_to_string(progress)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_live_sqlite_datastore_is_stored_consistently_and_restored_verified() {
    if !have("python3", "--version") {
        eprintln!("SKIPPED: python3 not installed");
        return;
    }
    let env = Env::new();
    let db = env.path("k3s/server/db/state.db");
    let token = env.path("k3s/server/token.txt");
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    write_file(&token, b"K10sqlite::server:abc\n");
    let progress = env.path("progress");
    let stop = env.path("stop");
    let _writer = Reaper(
        Command::new("python3")
            .args(["-c", SQLITE_WRITER, s(&db), s(&progress), s(&stop)])
            .spawn()
            .unwrap(),
    );
    let t0 = Instant::now();
    while committed(&progress) < 200 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "writer did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let job = job_file(
        &env,
        "",
        &format!(
            "[[source]]\nname = \"datastore\"\nkind = \"k3s-sqlite\"\ndatabase = \"{}\"\ntoken-file = \"{}\"\nkeep-last = 3\n",
            s(&db),
            s(&token)
        ),
    );
    // Several nights while the writer goes on: each copy is taken mid-stream.
    let mut before = 0;
    for _ in 0..3 {
        before = committed(&progress);
        let out = run_job(&env, &["--config", s(&job)]);
        out.success();
        assert!(out.stdout.contains("ok   datastore"), "{}", out.dump());
    }
    std::fs::write(&stop, b"").unwrap();
    // The staging copy is gone; nothing but the repository holds it.
    let staging = env.dir.path().join(format!(
        ".cache/cairn/cairn-staging-{}",
        nix::unistd::geteuid().as_raw()
    ));
    assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);

    // The stored snapshot is the copy and the token, under stable names.
    let ls = env.ok(&["ls", "latest", "--tag", "cairn-source=datastore"]);
    assert!(
        ls.stdout.contains("/state.db") && ls.stdout.contains("/token"),
        "{}",
        ls.dump()
    );
    let target = env.path("restored");
    let out = k3s_restore(&env, &job, &target);
    out.success();
    let restored = target.join("state.db");
    assert!(
        out.stdout.contains("integrity_check ok")
            && out.stdout.contains(&format!(
                "install -m 0600 {} /var/lib/rancher/k3s/server/db/state.db",
                s(&restored)
            ))
            && out.stdout.contains(&format!(
                "install -m 0600 {} /var/lib/rancher/k3s/server/token",
                s(&target.join("token"))
            )),
        "{}",
        out.dump()
    );
    assert_eq!(
        std::fs::read(target.join("token")).unwrap(),
        b"K10sqlite::server:abc\n"
    );
    env.ok(&["k3s", "verify", s(&restored)]);
    // Every transaction is whole, none is missing, and all committed before the last run
    // started are there.
    let q = Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); print(c.execute('PRAGMA integrity_check').fetchone()[0]); rows=c.execute('SELECT create_revision, count(*) FROM kine GROUP BY create_revision ORDER BY 1').fetchall(); print(len(rows), rows[0][0], rows[-1][0], all(n == 20 for _, n in rows))",
            s(&restored),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&q.stdout);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("ok"), "{text}");
    let f: Vec<&str> = lines.next().unwrap().split(' ').collect();
    let (count, first, last): (u64, u64, u64) = (
        f[0].parse().unwrap(),
        f[1].parse().unwrap(),
        f[2].parse().unwrap(),
    );
    assert_eq!((first, f[3]), (1, "True"), "{text}");
    assert_eq!(count, last, "transactions missing: {text}");
    assert!(last >= before, "{last} < {before} committed before the run");

    // A database that is not kine's (a wrong `database =`) fails the source, stores nothing.
    let other = env.path("other.db");
    Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; sqlite3.connect(sys.argv[1]).execute('CREATE TABLE t (x)')",
            s(&other),
        ])
        .status()
        .unwrap();
    let bad = job_file(
        &env,
        "",
        &format!(
            "[[source]]\nname = \"datastore\"\nkind = \"k3s-sqlite\"\ndatabase = \"{}\"\ntoken-file = \"{}\"\nkeep-last = 1\n",
            s(&other),
            s(&token)
        ),
    );
    let n = env.snapshots(&["--tag", "cairn-source=datastore"]).len();
    let out = run_job(&env, &["--config", s(&bad)]);
    assert_ne!(out.code, 0);
    assert!(
        out.stdout.contains("FAIL") && out.stdout.contains("not a K3s (kine) datastore"),
        "{}",
        out.dump()
    );
    assert_eq!(env.snapshots(&["--tag", "cairn-source=datastore"]).len(), n);
}

/// K3s's `--etcd-snapshot-compress` writes `NAME.zip` holding the snapshot.
fn zip(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
    let inner = dir.join(".zip-src").join(name);
    write_file(&inner, content);
    let out = dir.join(format!("{name}.zip"));
    let st = Command::new("python3")
        .args([
            "-c",
            "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1], 'w', zipfile.ZIP_DEFLATED); z.write(sys.argv[2], sys.argv[3]); z.close()",
            s(&out),
            s(&inner),
            name,
        ])
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::remove_dir_all(dir.join(".zip-src")).unwrap();
    out
}

#[test]
fn zipped_etcd_snapshots_are_verified_inside_and_restored_by_role() {
    if !have("python3", "--version") {
        eprintln!("SKIPPED: python3 not installed");
        return;
    }
    let env = Env::new();
    let snaps = env.path("snapshots");
    std::fs::create_dir_all(&snaps).unwrap();
    let token = env.path("conf/token.txt");
    write_file(&token, b"K10zip::server:def\n");
    let good = crate::util::etcd_snapshot(40, 3);
    let good_zip = zip(&snaps, "on-demand-n1-1700000000", &good);
    let job = job_file(
        &env,
        "",
        &format!(
            "[[source]]\nname = \"etcd\"\nkind = \"k3s-etcd\"\nsnapshot-dir = \"{}\"\ntoken-file = \"{}\"\nkeep-last = 1\n",
            s(&snaps),
            s(&token)
        ),
    );
    let out = run_job(&env, &["--config", s(&job)]);
    out.success();
    assert!(
        !out.stderr.contains("without verification"),
        "{}",
        out.dump()
    );
    let v = env.ok(&["k3s", "verify", s(&good_zip)]);
    assert!(v.stdout.contains("zip"), "{}", v.dump());

    // A zipped truncated snapshot fails its source; the good one stays.
    std::thread::sleep(Duration::from_millis(20));
    let bad = zip(
        &snaps,
        "on-demand-n1-1700000100",
        &good[..good.len() - 4096],
    );
    let out = run_job(&env, &["--config", s(&job)]);
    assert_ne!(out.code, 0, "{}", out.dump());
    assert!(
        out.stdout
            .contains("on-demand-n1-1700000100 is not a valid etcd snapshot"),
        "{}",
        out.dump()
    );
    assert_eq!(env.snapshots(&["--tag", "cairn-source=etcd"]).len(), 1);
    std::fs::remove_file(bad).unwrap();

    // Restore: the roles come from the snapshot, the zip is checked again, and the stored
    // snapshot can be verified without restoring it by hand.
    let target = env.path("restore");
    let out = k3s_restore(&env, &job, &target);
    out.success();
    let restored = target.join(s(&good_zip).trim_start_matches('/'));
    let restored_token = target.join(s(&token).trim_start_matches('/'));
    assert!(
        out.stdout.contains(&format!(
            "--cluster-reset-restore-path={} --token-file={}",
            s(&restored),
            s(&restored_token)
        )) && out
            .stdout
            .contains("rm -rf /var/lib/rancher/k3s/server/db/"),
        "{}",
        out.dump()
    );
    let v = job_cmd(
        &env,
        &["k3s", "verify", "--config", s(&job), "--snapshot", "latest"],
    );
    v.success();
    assert!(v.stdout.starts_with("ok   snapshot"), "{}", v.dump());
    let snap = env.snapshots(&["--tag", "cairn-source=etcd"]);
    let tags: Vec<&str> = snap[0]["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(
        tags.contains(&format!("cairn-k3s-token={}", s(&token)).as_str()),
        "{tags:?}"
    );
}

/// CA, server (127.0.0.1) and client certificates, as a K3s server has them.
fn make_certs(dir: &Path) -> bool {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/k3s_certs.sh");
    Command::new("sh")
        .arg(&script)
        .arg(dir)
        .status()
        .is_ok_and(|st| st.success())
}

struct StandIn {
    _proc: Reaper,
    kubeconfig: PathBuf,
    log: PathBuf,
}

/// The stand-in API server, over TLS with client certificates like K3s when openssl is
/// there (else plain HTTP with a bearer token), and a kubeconfig for it.
fn stand_in(env: &Env, name: &str, extra: &[&str]) -> StandIn {
    let dir = env.path(name);
    std::fs::create_dir_all(&dir).unwrap();
    let port_file = dir.join("port");
    let log = dir.join("requests.log");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kube_standin.py");
    let mut cmd = Command::new("python3");
    cmd.arg(&script)
        .arg(&port_file)
        .args(["--log", s(&log)])
        .args(extra)
        .stdout(Stdio::null());
    let tls = have("openssl", "version") && make_certs(&dir);
    if tls {
        cmd.arg("--tls")
            .arg(dir.join("server.crt"))
            .arg(dir.join("server.key"))
            .arg(dir.join("ca.crt"));
    } else {
        eprintln!("note: openssl missing, the stand-in API server runs without TLS");
        cmd.args(["--token", "t0ken"]);
    }
    let proc = Reaper(cmd.spawn().unwrap());
    let t0 = Instant::now();
    while !port_file.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "stand-in did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let port = std::fs::read_to_string(&port_file).unwrap();
    let kubeconfig = dir.join("k3s.yaml");
    let text = if tls {
        // K3s's own layout: certificates embedded as base64 data.
        let b64 = |f: &str| {
            let out = Command::new("base64")
                .args(["-w0", s(&dir.join(f))])
                .output()
                .unwrap();
            String::from_utf8(out.stdout).unwrap()
        };
        format!(
            "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: https://127.0.0.1:{port}\n  name: default\ncontexts:\n- context:\n    cluster: default\n    user: default\n  name: default\ncurrent-context: default\nkind: Config\npreferences: {{}}\nusers:\n- name: default\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
            b64("ca.crt"),
            b64("client.crt"),
            b64("client.key")
        )
    } else {
        format!(
            "apiVersion: v1\nclusters:\n- cluster:\n    server: http://127.0.0.1:{port}\n  name: default\ncontexts:\n- context:\n    cluster: default\n    user: default\n  name: default\ncurrent-context: default\nkind: Config\nusers:\n- name: default\n  user:\n    token: t0ken\n"
        )
    };
    std::fs::write(&kubeconfig, text).unwrap();
    StandIn {
        _proc: proc,
        kubeconfig,
        log,
    }
}

fn yaml_docs(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.split("\n---\n")
        .map(|d| d.trim_start_matches("---\n"))
        .filter(|d| !d.trim().is_empty())
        .map(|d| {
            serde_yaml_ng::from_str(d).unwrap_or_else(|e| panic!("{}: {e}\n{d}", path.display()))
        })
        .collect()
}

#[test]
fn the_manifests_export_holds_every_listable_kind_one_file_per_namespace() {
    if !have("python3", "--version") {
        eprintln!("SKIPPED: python3 not installed");
        return;
    }
    let env = Env::new();
    let api = stand_in(&env, "api", &[]);
    let job = job_file(
        &env,
        "",
        &format!(
            "[[source]]\nname = \"manifests\"\nkind = \"k3s-manifests\"\nkubeconfig = \"{}\"\nkeep-last = 2\n",
            s(&api.kubeconfig)
        ),
    );
    run_job(&env, &["--config", s(&job), "--dry-run"]).success();
    let out = run_job(&env, &["--config", s(&job)]);
    out.success();
    assert!(out.stdout.contains("ok   manifests"), "{}", out.dump());
    let requests = std::fs::read_to_string(&api.log).unwrap();
    assert!(
        !requests.contains("metrics.k8s.io")
            && !requests.contains("/api/v1/events")
            && !requests.contains("/v1/events?"),
        "excluded kinds were requested:\n{requests}"
    );
    // Pagination followed, with the continue token escaped.
    assert!(requests.contains("continue=Mg%3D%3D"), "{requests}");

    let target = env.path("restored");
    env.ok(&[
        "restore",
        "latest",
        "--tag",
        "cairn-source=manifests",
        "--target",
        s(&target),
    ]);
    let mut files: Vec<String> = walkdir::WalkDir::new(&target)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            e.path()
                .strip_prefix(&target)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    files.sort();
    let expected = [
        "_cluster/clusterroles.rbac.authorization.k8s.io.yaml",
        "_cluster/customresourcedefinitions.apiextensions.k8s.io.yaml",
        "_cluster/namespaces.yaml",
        "_cluster/nodes.yaml",
        "_cluster/persistentvolumes.yaml",
        "default/serviceaccounts.yaml",
        "default/services.yaml",
        "kube-system/configmaps.yaml",
        "kube-system/deployments.apps.yaml",
        "kube-system/helmcharts.helm.cattle.io.yaml",
        "kube-system/pods.yaml",
        "kube-system/secrets.yaml",
        "kube-system/serviceaccounts.yaml",
        "shop/configmaps.yaml",
        "shop/deployments.apps.yaml",
        "shop/ingressroutes.traefik.io.yaml",
        "shop/persistentvolumeclaims.yaml",
        "shop/pods.yaml",
        "shop/secrets.yaml",
        "shop/serviceaccounts.yaml",
        "shop/services.yaml",
    ];
    assert_eq!(files, expected);
    // Three coredns pods over two pages, each a whole object with apiVersion and kind,
    // without the fields that would make `kubectl apply` refuse to create it.
    let pods = yaml_docs(&target.join("kube-system/pods.yaml"));
    assert_eq!(pods.len(), 3);
    for f in &files {
        for d in yaml_docs(&target.join(f)) {
            assert!(
                d["apiVersion"].is_string() && d["kind"].is_string(),
                "{f}: {d}"
            );
            let m = &d["metadata"];
            for gone in [
                "resourceVersion",
                "uid",
                "managedFields",
                "creationTimestamp",
            ] {
                assert!(m.get(gone).is_none(), "{f}: {gone} kept: {d}");
            }
            assert!(d.get("status").is_none(), "{f}: status kept");
        }
    }
    // Against the Kubernetes schemas, strictly (no unknown fields), as `kubectl apply` would
    // take them: kubernetes-validate from PyPI, which `.ci/run` installs
    // (`deploy/validate.sh --tool`). Custom resources have no schema there and are skipped
    // with a warning.
    match std::env::var("CAIRN_TEST_KUBERNETES_VALIDATE") {
        Ok(tool) if !tool.is_empty() => {
            let paths: Vec<std::path::PathBuf> = files.iter().map(|f| target.join(f)).collect();
            let out = std::process::Command::new(&tool)
                .args(["--strict", "--quiet", "--no-warn"])
                .args(&paths)
                .output()
                .unwrap_or_else(|e| panic!("{tool}: {e}"));
            assert!(
                out.status.success(),
                "restored manifests fail schema validation:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        _ => eprintln!("schema check skipped: CAIRN_TEST_KUBERNETES_VALIDATE is not set"),
    }
    let secret = &yaml_docs(&target.join("shop/secrets.yaml"))[0];
    assert_eq!(secret["kind"], "Secret");
    assert_eq!(secret["data"]["password"], "aHVudGVyMg==");
    // Strings YAML would read as other types stay strings.
    let settings = yaml_docs(&target.join("shop/configmaps.yaml"))
        .into_iter()
        .find(|d| d["metadata"]["name"] == "settings")
        .unwrap();
    assert_eq!(
        settings["data"],
        serde_json::json!({"yes": "no", "number": "0123", "empty": "", "colon": "a: b", "null": "null",
                           "time": "1:20", "octal": "0o17", "tricky": "nel\u{85} ls\u{2028} c1\u{9f} tab\t end\n"})
    );
    // A YAML 1.1 reader (libyaml, as kubectl's go-yaml) reads every file back the same.
    let pyyaml = Command::new("python3")
        .args(["-c", "import yaml; yaml.CSafeLoader"])
        .status()
        .is_ok_and(|st| st.success());
    if pyyaml {
        for f in &files {
            let out = Command::new("python3")
                .args([
                    "-c",
                    "import json, sys, yaml; print(json.dumps(list(yaml.load_all(open(sys.argv[1], encoding='utf-8'), Loader=yaml.CSafeLoader))))",
                    s(&target.join(f)),
                ])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{f}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let back: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(back, yaml_docs(&target.join(f)), "{f}");
        }
    } else {
        eprintln!("note: PyYAML (libyaml) missing; the YAML 1.1 read-back is not checked");
    }
    let deploy = &yaml_docs(&target.join("shop/deployments.apps.yaml"))[0];
    assert_eq!(deploy["apiVersion"], "apps/v1");
    assert_eq!(
        deploy["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.27"
    );

    // One namespace is one directory.
    let ns = env.path("shop-only");
    env.ok(&[
        "restore",
        "latest:/shop",
        "--tag",
        "cairn-source=manifests",
        "--target",
        s(&ns),
    ]);
    assert!(ns.join("secrets.yaml").is_file() && !ns.join("kube-system").exists());
}

#[test]
fn k3s_export_writes_a_large_cluster_page_by_page() {
    if !have("python3", "--version") {
        eprintln!("SKIPPED: python3 not installed");
        return;
    }
    let env = Env::new();
    // 3 000 generated objects in 30 namespaces: 1 050 pods, 750 config maps, 450 secrets,
    // 450 replica sets, 300 Helm charts, listed 200 at a time.
    let api = stand_in(&env, "api", &["--objects", "3000"]);
    let out_dir = env.path("export");
    // With --json: status lines while it runs (if it takes a second), then the report.
    let out = env.ok(&[
        "--json",
        "k3s",
        "export",
        "--kubeconfig",
        s(&api.kubeconfig),
        "--page-size",
        "200",
        s(&out_dir),
    ]);
    let report = out.message("k3s_export");
    for status in out
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message_type"] == "status")
    {
        assert_eq!(status["action"], "export", "{status}");
    }
    let r = &report["report"];
    let requests = std::fs::read_to_string(&api.log).unwrap();
    let pod_pages = requests
        .lines()
        .filter(|l| l.starts_with("/api/v1/pods?"))
        .count();
    // 1 054 pods (4 recorded ones besides) in pages of 200.
    assert_eq!(pod_pages, 6, "{requests}");
    let mut per_kind: std::collections::BTreeMap<String, usize> = Default::default();
    let mut names = std::collections::BTreeSet::new();
    let mut docs = 0;
    for e in walkdir::WalkDir::new(&out_dir) {
        let e = e.unwrap();
        if !e.file_type().is_file() {
            continue;
        }
        for d in yaml_docs(e.path()) {
            docs += 1;
            let ns = d["metadata"]["namespace"].as_str().unwrap_or("_cluster");
            assert_eq!(
                e.path().parent().unwrap().file_name().unwrap(),
                ns,
                "{}",
                e.path().display()
            );
            assert!(names.insert(format!("{}/{}/{}", d["kind"], ns, d["metadata"]["name"])));
            if ns.starts_with("team-") {
                *per_kind
                    .entry(d["kind"].as_str().unwrap().to_owned())
                    .or_default() += 1;
            }
        }
    }
    assert_eq!(r["objects"].as_u64(), Some(docs), "{report}");
    let expected: std::collections::BTreeMap<String, usize> = [
        ("ConfigMap", 750),
        ("HelmChart", 300),
        ("Pod", 1050),
        ("ReplicaSet", 450),
        ("Secret", 450),
    ]
    .into_iter()
    .map(|(k, n)| (k.to_owned(), n))
    .collect();
    assert_eq!(per_kind, expected);
    assert!(out_dir.join("team-29/pods.yaml").is_file());

    // Into a directory that holds something: refused, nothing requested.
    let again = env.run(&[
        "k3s",
        "export",
        "--kubeconfig",
        s(&api.kubeconfig),
        s(&out_dir),
    ]);
    assert_eq!(again.code, 1, "{}", again.dump());
    assert!(again.stderr.contains("not empty"), "{}", again.dump());
    assert_eq!(std::fs::read_to_string(&api.log).unwrap(), requests);
}

#[test]
fn a_kind_the_export_cannot_list_fails_the_source_loudly() {
    if !have("python3", "--version") {
        eprintln!("SKIPPED: python3 not installed");
        return;
    }
    let env = Env::new();
    let api = stand_in(&env, "api", &["--deny", "secrets"]);
    let job = |extra: &str| {
        job_file(
            &env,
            "",
            &format!(
                "[[source]]\nname = \"manifests\"\nkind = \"k3s-manifests\"\nkubeconfig = \"{}\"\n{extra}",
                s(&api.kubeconfig)
            ),
        )
    };
    let out = run_job(&env, &["--config", s(&job(""))]);
    assert_eq!(out.code, 1, "{}", out.dump());
    assert!(
        out.stdout.contains("FAIL") && out.stdout.contains("secrets") && out.stdout.contains("403"),
        "{}",
        out.dump()
    );
    // The same by hand: what could be listed is written, the rest named, exit 3
    // (finished, incomplete).
    let by_hand = env.path("by-hand");
    let out = env.run(&[
        "k3s",
        "export",
        "--kubeconfig",
        s(&api.kubeconfig),
        s(&by_hand),
    ]);
    assert_eq!(out.code, 3, "{}", out.dump());
    assert!(
        out.stderr.contains("secrets") && out.stderr.contains("403"),
        "{}",
        out.dump()
    );
    assert!(
        by_hand.join("shop/pods.yaml").is_file() && !by_hand.join("shop/secrets.yaml").exists()
    );
    // Excluding what the account may not read is the way out.
    let out = run_job(
        &env,
        &["--config", s(&job("exclude-resources = [\"secrets\"]\n"))],
    );
    out.success();

    // A server that cannot be reached fails the source with the reason.
    std::fs::write(
        &api.kubeconfig,
        "apiVersion: v1\nclusters:\n- cluster:\n    server: http://127.0.0.1:9\n  name: c\ncontexts:\n- context:\n    cluster: c\n    user: u\n  name: x\ncurrent-context: x\nusers:\n- name: u\n  user:\n    token: t\n",
    )
    .unwrap();
    let out = run_job(&env, &["--config", s(&job(""))]);
    assert_eq!(out.code, 1, "{}", out.dump());
    assert!(out.stdout.contains("127.0.0.1:9"), "{}", out.dump());
}

#[test]
fn a_run_past_its_timeout_stops_and_the_failure_hook_hears_of_every_failure() {
    let env = Env::new();
    let metrics = env.path("cairn.prom");
    let hook_dir = env.path("hook");
    std::fs::create_dir_all(&hook_dir).unwrap();
    let hook = format!(
        "cat > {d}/report.json; env | grep ^CAIRN_ | sort > {d}/env; echo called >> {d}/calls",
        d = s(&hook_dir)
    );
    let job = job_file(
        &env,
        &format!(
            "\n[metrics]\ntextfile = \"{}\"\n\n[run]\ntimeout = \"2s\"\non-failure = \"{}\"\n",
            s(&metrics),
            hook.replace('"', "\\\"")
        ),
        "[[source]]\nname = \"slow\"\nkind = \"command\"\ncommand = \"sleep 60\"\nfilename = \"slow\"\n\n[[source]]\nname = \"never\"\nkind = \"command\"\ncommand = \"echo hi\"\nfilename = \"never\"\n",
    );
    let t0 = Instant::now();
    let out = run_job(&env, &["--config", s(&job)]);
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    assert_ne!(out.code, 0, "{}", out.dump());
    assert!(out.stderr.contains("timeout (2s)"), "{}", out.dump());
    assert!(env.snapshots::<&str>(&[]).is_empty());
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert!(text.contains("cairn_run_success 0"), "{text}");
    let envs = std::fs::read_to_string(hook_dir.join("env")).unwrap();
    assert!(
        envs.contains("CAIRN_RUN_STATUS=1") && envs.contains("timeout"),
        "{envs}"
    );

    // A failed source: the hook gets the report and the failed source's name.
    let data = env.path("data");
    write_file(&data.join("f"), b"x");
    let job = job_file(
        &env,
        &format!("\n[run]\non-failure = \"{}\"\n", hook.replace('"', "\\\"")),
        &format!(
            "[[source]]\nname = \"data\"\nkind = \"path\"\npaths = [\"{}\"]\n\n[[source]]\nname = \"gone\"\nkind = \"path\"\npaths = [\"{}\"]\n",
            s(&data),
            s(&env.path("missing"))
        ),
    );
    let out = run_job(&env, &["--config", s(&job)]);
    assert_eq!(out.code, 1, "{}", out.dump());
    let envs = std::fs::read_to_string(hook_dir.join("env")).unwrap();
    assert!(envs.contains("CAIRN_FAILED_SOURCES=gone\n"), "{envs}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(hook_dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["ok"], false);
    assert_eq!(report["sources"][0]["ok"], true);
    assert_eq!(report["sources"][1]["ok"], false);
    // A run that succeeds does not call it.
    let calls = std::fs::read_to_string(hook_dir.join("calls")).unwrap();
    let job = job_file(
        &env,
        &format!("\n[run]\non-failure = \"{}\"\n", hook.replace('"', "\\\"")),
        &format!(
            "[[source]]\nname = \"data\"\nkind = \"path\"\npaths = [\"{}\"]\n",
            s(&data)
        ),
    );
    run_job(&env, &["--config", s(&job)]).success();
    assert_eq!(
        std::fs::read_to_string(hook_dir.join("calls")).unwrap(),
        calls
    );
}

#[test]
fn restore_delete_makes_the_target_exactly_the_snapshot_and_dry_run_touches_nothing() {
    let env = Env::new();
    let src = env.path("pv");
    write_file(&src.join("data/a.db"), b"aaaa");
    write_file(&src.join("data/keep.log"), b"log");
    write_file(&src.join("conf/app.yaml"), b"x: 1\n");
    env.backup(&[s(&src)]);
    let target = env.path("live");
    env.restore_latest_exact(&src, &target, &[]);
    // The volume moved on after the backup.
    write_file(&target.join("data/new.db"), b"newer");
    write_file(&target.join("data/newdir/f"), b"f");
    write_file(&target.join("stray"), b"s");
    write_file(&target.join("data/a.db"), b"changed");
    write_file(&target.join("cache.tmp"), b"t");
    std::os::unix::fs::symlink("/etc", target.join("data/link")).unwrap();
    let spec = format!("latest:{}", s(&src));

    let out = env.ok(&[
        "restore",
        &spec,
        "--target",
        s(&target),
        "--delete",
        "--dry-run",
        "--exclude",
        "*.tmp",
    ]);
    let would: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("would delete "))
        .collect();
    let t = |p: &str| s(&target.join(p)).to_owned();
    assert_eq!(
        would,
        [
            t("stray"),
            t("data/link"),
            t("data/new.db"),
            t("data/newdir")
        ]
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>(),
        "{}",
        out.dump()
    );
    assert!(out.stdout.contains("would restore"), "{}", out.dump());
    assert_eq!(std::fs::read(target.join("data/a.db")).unwrap(), b"changed");
    assert!(target.join("stray").exists());

    // Only inside what is restored: restoring data/ alone leaves `stray` beside it.
    let data_spec = format!("latest:{}/data", s(&src));
    env.ok(&[
        "restore",
        &data_spec,
        "--target",
        s(&target.join("data")),
        "--delete",
    ]);
    assert!(!target.join("data/new.db").exists() && !target.join("data/newdir").exists());
    assert!(target.join("stray").exists());
    assert!(std::fs::symlink_metadata("/etc").is_ok());

    env.ok(&[
        "restore",
        &spec,
        "--target",
        s(&target),
        "--delete",
        "--exclude",
        "*.tmp",
    ]);
    assert!(target.join("cache.tmp").exists(), "excluded paths are kept");
    std::fs::remove_file(target.join("cache.tmp")).unwrap();
    // Exactly the snapshot, directory mtimes included (deletions come before them).
    let again = env.path("reference");
    env.restore_latest_exact(&src, &again, &[]);
    assert_trees_equal(&again, &target, false);
}

#[test]
fn a_dry_run_lists_per_source_what_retention_would_remove() {
    let env = Env::new();
    let data = env.path("data");
    write_file(&data.join("f"), b"1");
    let job = job_file(
        &env,
        "",
        &format!(
            "[[source]]\nname = \"data\"\nkind = \"path\"\npaths = [\"{}\"]\nkeep-last = 1\n",
            s(&data)
        ),
    );
    run_job(&env, &["--config", s(&job)]).success();
    let first = env.snapshots(&["--tag", "cairn-source=data"])[0]["short_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // With a second snapshot there, keep-last 1 would remove the first.
    env.backup(&["--tag", "cairn-source=data", s(&data)]);
    let out = run_job(&env, &["--config", s(&job), "--dry-run"]);
    out.success();
    assert!(
        out.stdout.lines().any(|l| l.starts_with("retention data")
            && l.contains("would remove 1 snapshot(s)")
            && l.contains(&first)),
        "{}",
        out.dump()
    );
    assert_eq!(env.snapshots(&["--tag", "cairn-source=data"]).len(), 2);
}

#[test]
fn restore_overwrite_modes_and_verify() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let src = env.path("pv");
    write_file(&src.join("a"), b"original a");
    write_file(&src.join("b"), b"original b");
    write_file(&src.join("c"), b"original c");
    env.backup(&[s(&src)]);
    let target = env.path("live");
    env.restore_latest_exact(&src, &target, &[]);
    let spec = format!("latest:{}", s(&src));
    // a: changed content, same size, mtime moved; b: untouched; c: changed.
    write_file(&target.join("a"), b"CHANGED! a");
    write_file(&target.join("c"), b"changed c, longer");

    let out = env.ok(&[
        "restore",
        &spec,
        "--target",
        s(&target),
        "--overwrite",
        "never",
    ]);
    assert!(out.stdout.contains("3 left as they were"), "{}", out.dump());
    assert_eq!(std::fs::read(target.join("a")).unwrap(), b"CHANGED! a");

    // A dry run foresees what the overwrite mode leaves.
    let dry = env.ok(&[
        "restore",
        &spec,
        "--target",
        s(&target),
        "--overwrite",
        "if-changed",
        "--dry-run",
    ]);
    assert!(
        dry.stdout.contains("2 files") && dry.stdout.contains("would leave 1 as they are"),
        "{}",
        dry.dump()
    );
    let out = env.ok(&[
        "restore",
        &spec,
        "--target",
        s(&target),
        "--overwrite",
        "if-changed",
        "--verify",
    ]);
    // Only b matched size and mtime; a and c were written again and read back.
    assert!(
        out.stdout.contains("1 left as they were") && out.stdout.contains("2 verified"),
        "{}",
        out.dump()
    );
    assert_trees_equal(&src, &target, false);

    env.ok(&["restore", &spec, "--target", s(&target), "--verify"]);
    assert_trees_equal(&src, &target, false);

    // if-newer: a file edited after the backup stays; one older than the snapshot's is
    // replaced.
    write_file(&target.join("a"), b"edited later");
    std::fs::set_permissions(target.join("a"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let edited = std::fs::metadata(target.join("a")).unwrap();
    write_file(&target.join("b"), b"stale copy");
    filetime::set_file_mtime(
        target.join("b"),
        filetime::FileTime::from_unix_time(1_000, 0),
    )
    .unwrap();
    env.ok(&[
        "restore",
        &spec,
        "--target",
        s(&target),
        "--overwrite",
        "if-newer",
    ]);
    assert_eq!(std::fs::read(target.join("a")).unwrap(), b"edited later");
    // Kept as the user left it: a newer file given the snapshot's old mtime would look as
    // old as the copy it replaced.
    let kept = std::fs::metadata(target.join("a")).unwrap();
    assert_eq!(kept.permissions().mode() & 0o7777, 0o600);
    assert_eq!(kept.modified().unwrap(), edited.modified().unwrap());
    assert_eq!(std::fs::read(target.join("b")).unwrap(), b"original b");

    // never: an existing directory keeps its own mode and times too.
    let whole = env.path("whole");
    env.ok(&["restore", "latest", "--target", s(&whole)]);
    let dir = whole.join(src.strip_prefix("/").unwrap());
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let before = std::fs::metadata(&dir).unwrap().modified().unwrap();
    env.ok(&[
        "restore",
        "latest",
        "--target",
        s(&whole),
        "--overwrite",
        "never",
    ]);
    let after = std::fs::metadata(&dir).unwrap();
    assert_eq!(after.permissions().mode() & 0o7777, 0o700);
    assert_eq!(after.modified().unwrap(), before);
}

#[test]
fn restore_never_reaches_through_a_planted_symlink_nor_deletes_what_it_did_not_back_up() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let src = env.path("home");
    write_file(&src.join(".bashrc"), b"alias ll='ls -l'\n");
    std::fs::set_permissions(src.join(".bashrc"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    write_file(&src.join("big.iso"), b"left out at backup");
    env.backup(&["--exclude", "*.iso", s(&src)]);
    let target = env.path("restore");
    let spec = format!("latest:{}", s(&src));
    env.ok(&["restore", &spec, "--target", s(&target)]);
    // Someone replaces the file with a (newer) symlink to a file outside the target.
    let outside = env.path("outside-secret");
    write_file(&outside, b"secret");
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::remove_file(target.join(".bashrc")).unwrap();
    std::os::unix::fs::symlink(&outside, target.join(".bashrc")).unwrap();
    env.ok(&[
        "restore",
        &spec,
        "--target",
        s(&target),
        "--overwrite",
        "if-newer",
    ]);
    let mode = std::fs::metadata(&outside).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600, "the restore changed a file outside the target");
    assert!(!std::fs::symlink_metadata(target.join(".bashrc"))
        .unwrap()
        .file_type()
        .is_symlink());

    // --delete keeps what the backup excluded.
    write_file(&target.join("big.iso"), b"still needed");
    env.ok(&["restore", &spec, "--target", s(&target), "--delete"]);
    assert!(target.join("big.iso").exists());

    // --delete never crosses into another file system mounted inside the target.
    let mnt = target.join("mounted");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|st| st.success());
    if mounted {
        write_file(&mnt.join("data"), b"on another file system");
        let out = env.run(&["restore", &spec, "--target", s(&target), "--delete"]);
        let still = mnt.join("data").exists();
        let _ = Command::new("umount").arg(&mnt).status();
        out.success();
        assert!(still, "--delete removed files of a mounted file system");
    } else {
        eprintln!("note: cannot mount a tmpfs here; the mount-point case is not exercised");
    }
}

#[test]
fn staging_touches_nothing_of_a_shared_directory() {
    let env = Env::new();
    let base = env.path("backups");
    for d in ["daily.2", "daily.999999", "x.1"] {
        std::fs::create_dir_all(base.join(d)).unwrap();
    }
    let db = env.path("state.db");
    let token = env.path("token");
    write_file(&token, b"t");
    let made = Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute('create table kine (id integer primary key autoincrement, name text)'); c.execute(\"insert into kine (name) values ('x')\"); c.commit()",
            s(&db),
        ])
        .status()
        .is_ok_and(|st| st.success());
    if !made {
        eprintln!("SKIPPED: python3 not installed");
        return;
    }
    let job = job_file(
        &env,
        &format!("\n[run]\nstaging-dir = \"{}\"\n", s(&base)),
        &format!(
            "[[source]]\nname = \"db\"\nkind = \"k3s-sqlite\"\ndatabase = \"{}\"\ntoken-file = \"{}\"\n",
            s(&db),
            s(&token)
        ),
    );
    run_job(&env, &["--config", s(&job)]).success();
    for d in ["daily.2", "daily.999999", "x.1"] {
        assert!(base.join(d).is_dir(), "{d} was removed");
    }
}

#[test]
fn role_tags_cannot_point_a_restore_elsewhere_and_printed_paths_are_quoted() {
    let env = Env::new();
    let snaps = env.path("snap shots");
    let token = env.path("conf/it's token");
    write_file(&token, b"K10q::server:x\n");
    write_file(
        &snaps.join("etcd-snapshot-1"),
        &crate::util::etcd_snapshot(16, 5),
    );
    let job = job_file(
        &env,
        "",
        &format!(
            "[[source]]\nname = \"etcd\"\nkind = \"k3s-etcd\"\nsnapshot-dir = \"{}\"\ntoken-file = \"{}\"\n\n[[source]]\nname = \"notes\"\nkind = \"command\"\ncommand = \"echo hello\"\nfilename = \"notes.txt\"\n",
            s(&snaps),
            s(&token)
        ),
    );
    run_job(&env, &["--config", s(&job)]).success();
    let target = env.path("out");
    let out = k3s_restore(&env, &job, &target);
    out.success();
    let quoted_token = format!(
        "--token-file='{}'",
        s(&target.join(s(&token).trim_start_matches('/'))).replace('\'', "'\\''")
    );
    assert!(out.stdout.contains(&quoted_token), "{}", out.dump());
    // The printed command is one valid shell line: sh parses it (echo, not run).
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains("--cluster-reset "))
        .unwrap()
        .trim()
        .to_owned();
    let parsed = Command::new("sh")
        .args(["-c", &format!("printf '%s\\n' {line}")])
        .output()
        .unwrap();
    let words = String::from_utf8_lossy(&parsed.stdout).lines().count();
    assert_eq!(words, 5, "{line}");

    // A snapshot whose tags claim a datastore it does not hold is refused: a path out of
    // the target, or a file of the snapshot that is not a datastore.
    let mut other = env.snapshots(&["--tag", "cairn-source=notes"])[0]["short_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let live = env.path("live.db");
    write_file(&live, b"SQLite format 3\0");
    for claim in [
        format!("cairn-k3s-sqlite=/../../../../../..{}", s(&live)),
        "cairn-k3s-sqlite=/notes.txt".to_owned(),
        "cairn-k3s-etcd-snapshot=/no/such/file".to_owned(),
    ] {
        let tagged = env.ok(&[
            "--json",
            "tag",
            &other,
            "--set",
            &format!("cairn-source=notes,{claim}"),
        ]);
        let new: serde_json::Value =
            serde_json::from_str(tagged.stdout.lines().last().unwrap()).unwrap();
        let id = new["changed"][0]["new"].as_str().unwrap().to_owned();
        let out = job_cmd(
            &env,
            &["k3s", "verify", "--config", s(&job), "--snapshot", &id[..8]],
        );
        assert_ne!(out.code, 0, "{claim}: {}", out.dump());
        assert!(!out.stdout.contains("ok "), "{claim}: {}", out.dump());
        other.clone_from(&id[..8].to_owned());
    }
}
