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
    let absolute = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
    // Where a role's file was restored: it must be a regular file of this snapshot (the tag
    // is only a claim), so what is verified and printed is what was restored.
    let restored = |role: Role| -> Result<Option<PathBuf>> {
        let Some(stored) = k3s::role_path(&snap.tags, role) else {
            return Ok(None);
        };
        let rel = stored.strip_prefix("/").unwrap_or(&stored).to_path_buf();
        match find_node(ix, &snap.tree, &rel)? {
            Some(n) if n.kind == NodeKind::File => Ok(Some(absolute(target.join(rel)))),
            _ => Err(Error::Invalid(format!(
                "snapshot {}: its tags name {} as the {role:?}, but it holds no such file",
                id.short(),
                stored.display()
            ))),
        }
    };
    let token = restored(Role::Token)?;
    if let Some(path) = restored(Role::EtcdSnapshot)? {
        let info = k3s::verify_etcd_snapshot(&path)?;
        return Ok(ClusterStateRestore {
            snapshot: id.to_hex(),
            datastore: Datastore::Etcd { path, info },
            token,
        });
    }
    if let Some(path) = restored(Role::Sqlite)? {
        let info = k3s::check_restored_sqlite(&path)?;
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
            if let Ok(info) = k3s::check_restored_sqlite(&path) {
                datastore = Some(Datastore::Sqlite { path, info });
                continue;
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
