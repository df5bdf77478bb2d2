//! K3s cluster state: what the job's K3s sources check before they store anything as good,
//! and what a restore checks before it prints the commands that put it back.
//!
//! - [`etcd`]: etcd snapshots (plain or K3s-zipped): SHA-256 trailer and bbolt structure.
//! - [`sqlite`]: kine's SQLite datastore: a consistent online copy and its integrity check.
//! - [`kube`]: every listable API resource, exported as YAML, one file per namespace and
//!   kind, straight from the API server (no kubectl).
//!
//! Which file plays which role in a snapshot (etcd snapshot, SQLite datastore, token) is
//! recorded in the snapshot's tags by [`role_tag`], so a restore never guesses by name.

pub mod etcd;
pub mod kube;
pub mod sqlite;

/// Entry points of the fuzz targets (`fuzz/fuzz_targets/k3s_*.rs`), here so that the
/// in-tree smoke test runs the same code.
#[doc(hidden)]
pub mod fuzz {
    use std::path::Path;

    /// An etcd snapshot, plain or zipped: whatever is accepted has a matching trailer.
    pub fn snapshot(data: &[u8]) {
        if let Ok(info) = super::etcd::verify_etcd_snapshot_bytes(data, Path::new("fuzz")) {
            assert!(info.pages >= 4 && info.db_bytes % 512 == 0);
        }
    }

    /// A kubeconfig: parsed or refused, never a panic (files it names do not exist).
    pub fn kubeconfig(data: &[u8]) {
        let _ = super::kube::KubeAccess::from_kubeconfig_bytes(
            data,
            Path::new("/nonexistent/k3s.yaml"),
        );
    }

    /// A list page from the API server: see [`super::kube::fuzz_list_page`].
    pub fn list_page(data: &[u8]) {
        super::kube::fuzz_list_page(data);
    }
}

use std::path::{Path, PathBuf};

pub use etcd::{verify_etcd_snapshot, verify_etcd_snapshot_from, EtcdSnapshotInfo};
pub use sqlite::{backup_sqlite, check_restored_sqlite, check_sqlite, SqliteInfo};

/// The part a file plays in a cluster-state snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// An etcd snapshot (`k3s etcd-snapshot save`).
    EtcdSnapshot,
    /// kine's SQLite database.
    Sqlite,
    /// The server token.
    Token,
}

impl Role {
    fn key(self) -> &'static str {
        match self {
            Role::EtcdSnapshot => "etcd-snapshot",
            Role::Sqlite => "sqlite",
            Role::Token => "token",
        }
    }
}

const ROLE_PREFIX: &str = "cairn-k3s-";

/// The tag recording that `path` (as stored in the snapshot) plays `role`; `None` for a path
/// a tag cannot carry (not UTF-8, or with a `,` that `--tag a,b` would split).
pub fn role_tag(role: Role, path: &Path) -> Option<String> {
    let p = path.to_str()?;
    (!p.contains(',')).then(|| format!("{ROLE_PREFIX}{}={p}", role.key()))
}

/// The stored path of the file playing `role`, from a snapshot's tags: absolute, and only
/// plain names below `/` (anyone who can write tags could otherwise point a restore at
/// `/../../etc/shadow`). A tag that fails this is treated as absent.
pub fn role_path(tags: &[String], role: Role) -> Option<PathBuf> {
    let want = format!("{ROLE_PREFIX}{}=", role.key());
    let p = PathBuf::from(tags.iter().find_map(|t| t.strip_prefix(&want))?);
    let mut parts = p.components();
    let rooted = parts.next() == Some(std::path::Component::RootDir);
    let plain = parts.all(|c| matches!(c, std::path::Component::Normal(_)));
    (rooted && plain && p.components().count() > 1).then_some(p)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_through_tags() {
        let t = role_tag(Role::Token, Path::new("/etc/k3s/token.txt")).unwrap();
        let tags = vec!["cairn-source=etcd".to_owned(), t];
        assert_eq!(
            role_path(&tags, Role::Token).unwrap(),
            Path::new("/etc/k3s/token.txt")
        );
        assert_eq!(role_path(&tags, Role::EtcdSnapshot), None);
        assert_eq!(role_tag(Role::Token, Path::new("/a,b")), None);
        for hostile in [
            "cairn-k3s-token=/../../etc/shadow",
            "cairn-k3s-token=relative/token",
            "cairn-k3s-token=/",
        ] {
            assert_eq!(
                role_path(&[hostile.to_owned()], Role::Token),
                None,
                "{hostile}"
            );
        }
    }
}
