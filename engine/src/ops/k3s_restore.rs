//! `cairn k3s restore`: put a cluster-state snapshot (etcd or SQLite, with the server
//! token) back on disk and verify it before anyone runs `k3s server --cluster-reset` on it.
//!
//! Which file is the datastore and which the token is read from the role tags the job
//! recorded ([`crate::k3s::role_tag`]). Snapshots from before those tags existed fall back
//! to content: the file that verifies as an etcd snapshot (or an SQLite kine database) is the
//! datastore, the other file the token. A snapshot holding neither — the manifests source's,
//! a PV's — is refused, never offered as a datastore.

use std::path::{Path, PathBuf};

use cairn_format::{Id, NodeKind, Snapshot};

use crate::k3s::{self, EtcdSnapshotInfo, Role, SqliteInfo};
use crate::lock::SharedLock;
use crate::ops::ls::find_node;
use crate::ops::restore::{restore, RestoreOptions};
use crate::progress::Progress;
use crate::repository::Indexed;
use crate::{Error, Result};

/// The restored datastore, verified.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Datastore {
    /// An etcd snapshot (plain or K3s-zipped).
    Etcd {
        /// Where it was restored.
        path: PathBuf,
        /// What verification found.
        info: EtcdSnapshotInfo,
    },
    /// kine's SQLite database.
    Sqlite {
        /// Where it was restored.
        path: PathBuf,
        /// What the integrity check found.
        info: SqliteInfo,
    },
}

/// What `restore_cluster_state` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClusterStateRestore {
    /// The snapshot restored.
    pub snapshot: String,
    /// The datastore, verified.
    pub datastore: Datastore,
    /// The server token, when the snapshot holds one.
    pub token: Option<PathBuf>,
}

/// Whether a snapshot's tags say it holds cluster state (a datastore).
pub fn is_cluster_state(snap: &Snapshot) -> bool {
    k3s::role_path(&snap.tags, Role::EtcdSnapshot).is_some()
        || k3s::role_path(&snap.tags, Role::Sqlite).is_some()
}

/// Restore snapshot `id` into `target` and verify its datastore.
pub fn restore_cluster_state(
    lock: &SharedLock<'_>,
    ix: &Indexed<'_>,
    id: &Id,
    snap: &Snapshot,
    target: &Path,
) -> Result<ClusterStateRestore> {
    let opts = RestoreOptions {
        target: target.to_owned(),
        ..RestoreOptions::default()
    };
    let res = restore(
        lock,
        ix,
        &snap.tree,
        Path::new(""),
        &opts,
        &Progress::default(),
    )?;
    if let Some((p, why)) = res.failed.first() {
        return Err(Error::Invalid(format!(
            "{} file(s) could not be restored; first: {}: {why}",
            res.failed.len(),
            p.display()
        )));
    }
    let restored = |stored: &Path| target.join(stored.strip_prefix("/").unwrap_or(stored));
    let absolute = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
    let token = k3s::role_path(&snap.tags, Role::Token).map(|p| absolute(restored(&p)));
    if let Some(p) = k3s::role_path(&snap.tags, Role::EtcdSnapshot) {
        let path = absolute(restored(&p));
        let info = k3s::verify_etcd_snapshot(&path)?;
        return Ok(ClusterStateRestore {
            snapshot: id.to_hex(),
            datastore: Datastore::Etcd { path, info },
            token,
        });
    }
    if let Some(p) = k3s::role_path(&snap.tags, Role::Sqlite) {
        let path = absolute(restored(&p));
        let info = k3s::check_sqlite(&path)?;
        return Ok(ClusterStateRestore {
            snapshot: id.to_hex(),
            datastore: Datastore::Sqlite { path, info },
            token,
        });
    }
    // No role tags: an older snapshot. Tell the files apart by what they hold.
    let mut datastore = None;
    let mut others = Vec::new();
    let mut refused = Vec::new();
    for p in &snap.paths {
        let rel = PathBuf::from(String::from_utf8_lossy(p).trim_start_matches('/'));
        if !find_node(ix, &snap.tree, &rel)?.is_some_and(|n| n.kind == NodeKind::File) {
            continue;
        }
        let path = absolute(target.join(&rel));
        if datastore.is_none() {
            match k3s::verify_etcd_snapshot(&path) {
                Ok(info) => {
                    datastore = Some(Datastore::Etcd { path, info });
                    continue;
                }
                Err(e) => refused.push(e.to_string()),
            }
        }
        others.push(path);
    }
    let datastore = datastore.ok_or_else(|| {
        Error::Invalid(format!(
            "snapshot {} holds no verified etcd snapshot or SQLite datastore (is it a snapshot of a k3s-etcd or k3s-sqlite source?){}",
            id.short(),
            refused.iter().map(|r| format!("\n  {r}")).collect::<String>()
        ))
    })?;
    Ok(ClusterStateRestore {
        snapshot: id.to_hex(),
        datastore,
        token: (others.len() == 1).then(|| others.remove(0)),
    })
}
