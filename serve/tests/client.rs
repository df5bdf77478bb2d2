//! The `rest:` client (`cairn_engine::backend::RestBackend`) against this server, in one
//! process over plain HTTP on loopback: what each answer means to the client.
#![allow(clippy::unwrap_used)]

use cairn_engine::backend::{Backend, RestBackend, RestConfig};
use cairn_engine::Error;
use cairn_format::FileKind;
use cairn_serve::{credential_line, Access, Credentials, ServeConfig};

fn start(root: &std::path::Path) -> u16 {
    let text = [
        credential_line("admin", b"admin-pw", Access::Full, &[]).unwrap(),
        credential_line("node", b"node-pw", Access::AppendOnly, &["r".into()]).unwrap(),
    ]
    .join("\n");
    let (tx, rx) = std::sync::mpsc::channel();
    let root = root.to_path_buf();
    std::thread::spawn(move || {
        cairn_serve::serve(
            ServeConfig {
                root,
                listen: "127.0.0.1:0".into(),
                tls: None,
                credentials: Some(Credentials::parse(&text, false).unwrap()),
                open_access: Access::Full,
                max_connections: 8,
                max_pack_size: 1 << 20,
            },
            |addr| tx.send(addr.port()).unwrap(),
        )
        .unwrap();
    });
    rx.recv().unwrap()
}

fn client(port: u16, user: &str, pw: &str, repo: &str) -> RestBackend {
    let loc = format!("rest:http://{user}:{pw}@127.0.0.1:{port}/{repo}");
    RestBackend::new(RestConfig::parse(&loc, &[("rest.retries".into(), "0".into())]).unwrap())
        .unwrap()
}

fn object(kind: FileKind, body: &[u8]) -> (String, Vec<u8>) {
    let mut data = b"cairn".to_vec();
    data.push(kind.letter());
    data.extend_from_slice(&3u16.to_le_bytes());
    data.extend_from_slice(body);
    (blake3::hash(&data).to_hex().to_string(), data)
}

#[test]
fn what_each_answer_means_to_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let port = start(dir.path());
    let admin = client(port, "admin", "admin-pw", "r");
    let node = client(port, "node", "node-pw", "r");
    assert!(!admin.exists().unwrap());
    admin.create().unwrap();
    admin
        .put(FileKind::Config, "config", b"cairnC\x01\x00cfg")
        .unwrap();
    assert!(admin.exists().unwrap() && admin.may_delete().unwrap());
    assert!(!node.may_delete().unwrap(), "the server says append-only");

    let (name, data) = object(FileKind::Snapshot, b"a snapshot");
    node.put(FileKind::Snapshot, &name, &data).unwrap();
    // The size comes from the header of a HEAD answer, which has no body.
    assert_eq!(
        node.stat(FileKind::Snapshot, &name).unwrap(),
        Some(data.len() as u64)
    );
    assert_eq!(
        node.stat(FileKind::Snapshot, &"0".repeat(64)).unwrap(),
        None
    );
    // Stored already (an answer lost on the way, then a retry): the server refuses to write
    // the name again, and the client knows that its put did happen.
    node.put(FileKind::Snapshot, &name, &data).unwrap();
    assert_eq!(node.get(FileKind::Snapshot, &name).unwrap(), data);
    assert_eq!(
        node.get_range(FileKind::Snapshot, &name, 3, 4).unwrap(),
        data[3..7].to_vec()
    );
    assert_eq!(node.list(FileKind::Snapshot).unwrap().len(), 1);
    assert!(matches!(
        node.delete(FileKind::Snapshot, &name),
        Err(Error::Denied(_))
    ));
    assert!(matches!(
        node.put(FileKind::Config, "config", b"cairnC\x01\x00other"),
        Err(Error::Denied(_))
    ));
    // A body that is not what its name says.
    let (other, _) = object(FileKind::Snapshot, b"other");
    let e = node.put(FileKind::Snapshot, &other, &data).unwrap_err();
    assert!(e.to_string().contains("BLAKE3"), "{e}");
    // Missing objects are absent, not errors of another kind.
    assert!(matches!(
        node.get(FileKind::Snapshot, &other),
        Err(Error::ObjectNotFound { .. })
    ));
    // A node's own lock: it may delete it; another's not.
    let (lock, lock_data) = object(FileKind::Lock, b"node lock");
    node.put(FileKind::Lock, &lock, &lock_data).unwrap();
    let (admin_lock, admin_lock_data) = object(FileKind::Lock, b"admin lock");
    admin
        .put(FileKind::Lock, &admin_lock, &admin_lock_data)
        .unwrap();
    assert!(matches!(
        node.delete(FileKind::Lock, &admin_lock),
        Err(Error::Denied(_))
    ));
    node.delete(FileKind::Lock, &lock).unwrap();
    admin.delete(FileKind::Snapshot, &name).unwrap();
    admin.delete(FileKind::Snapshot, &name).unwrap();

    // Credentials and repositories.
    let wrong = client(port, "node", "wrong", "r");
    assert!(matches!(wrong.exists(), Err(Error::Denied(m)) if m.contains("401")));
    let elsewhere = client(port, "node", "node-pw", "s");
    assert!(matches!(elsewhere.exists(), Err(Error::Denied(m)) if m.contains("403")));
    // An append-only credential creates only the repositories it names; none nest.
    let unnamed = client(port, "node", "node-pw", "s");
    assert!(unnamed.create().is_err());
    let nested = client(port, "admin", "admin-pw", "r/inner");
    assert!(nested.create().is_err());
}
