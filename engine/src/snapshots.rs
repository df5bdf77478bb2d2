//! Choosing snapshots: `latest`, id prefixes, and filters by host, tag and path.

use std::path::{Path, PathBuf};

use cairn_format::{Id, Snapshot};

use crate::{Error, Result};

/// Filters shared by `snapshots`, `ls`, `restore`, `forget`.
#[derive(Debug, Default, Clone)]
pub struct SnapshotFilter {
    /// Any of these hosts.
    pub hosts: Vec<String>,
    /// Any of these tag lists; each list (`a,b`) needs all its tags.
    pub tags: Vec<String>,
    /// All of these paths.
    pub paths: Vec<String>,
}

impl SnapshotFilter {
    /// Whether `s` passes.
    pub fn matches(&self, s: &Snapshot) -> bool {
        (self.hosts.is_empty() || self.hosts.contains(&s.hostname))
            && (self.tags.is_empty()
                || self.tags.iter().any(|list| {
                    list.split(',')
                        .filter(|t| !t.is_empty())
                        .all(|t| s.tags.iter().any(|x| x == t))
                }))
            && self.paths.iter().all(|p| {
                s.paths
                    .iter()
                    .any(|x| x.as_slice() == p.trim_end_matches('/').as_bytes())
            })
    }
}

/// The newest snapshot among `snaps` (oldest first) that `pred` accepts: the one definition
/// of "the latest snapshot of X" (a backup's parent, `latest`, a source's newest).
pub fn latest(
    snaps: &[(Id, Snapshot)],
    pred: impl Fn(&Snapshot) -> bool,
) -> Option<&(Id, Snapshot)> {
    snaps.iter().rev().find(|(_, s)| pred(s))
}

/// Resolve `latest` or an id prefix among `snaps` (oldest first).
pub fn resolve<'a>(
    snaps: &'a [(Id, Snapshot)],
    spec: &str,
    filter: &SnapshotFilter,
) -> Result<&'a (Id, Snapshot)> {
    if spec == "latest" {
        return latest(snaps, |s| filter.matches(s))
            .ok_or_else(|| Error::Invalid("no snapshot matches".into()));
    }
    if spec.is_empty() || !spec.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::Invalid(format!(
            "{spec:?} is neither `latest` nor a snapshot id"
        )));
    }
    let found: Vec<_> = snaps
        .iter()
        .filter(|(id, _)| id.has_hex_prefix(spec))
        .collect();
    match found.len() {
        1 => Ok(found[0]),
        0 => Err(Error::Invalid(format!("no snapshot with id {spec}"))),
        n => Err(Error::Invalid(format!(
            "snapshot id prefix {spec} is ambiguous ({n} matches)"
        ))),
    }
}

/// Split `ID[:/path]` at its first `:`. The path is raw bytes (file names need not be
/// UTF-8, and a restore of one must be possible); the id, a hex prefix or `latest`, must be
/// UTF-8.
pub fn split_spec(spec: &std::ffi::OsStr) -> Result<(&str, &std::ffi::OsStr)> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = spec.as_bytes();
    let (id, path) = match bytes.iter().position(|&b| b == b':') {
        Some(i) => (&bytes[..i], std::ffi::OsStr::from_bytes(&bytes[i + 1..])),
        None => (bytes, std::ffi::OsStr::new("/")),
    };
    let id = std::str::from_utf8(id).map_err(|_| {
        Error::Invalid(format!(
            "{:?} does not start with a snapshot id or `latest`",
            spec.to_string_lossy()
        ))
    })?;
    Ok((id, path))
}

/// The path inside a snapshot that `spec` (the part after `SNAPSHOT:`) names, refusing `..`:
/// silently dropping it would restore or list something other than what was asked for.
pub fn snapshot_subpath(spec: &std::ffi::OsStr) -> Result<PathBuf> {
    let p = Path::new(spec);
    if p.components().any(|c| c == std::path::Component::ParentDir) {
        return Err(Error::Invalid(format!(
            "path {:?} contains '..': name the path inside the snapshot without it",
            spec.to_string_lossy()
        )));
    }
    Ok(p.components()
        .filter(|c| matches!(c, std::path::Component::Normal(_)))
        .collect())
}

/// A directory node standing for a snapshot's root, which has no node of its own: owned by
/// the snapshot's user, timed at the snapshot, its tree the snapshot's (for `mount` and
/// `dump`, which show a snapshot as a directory).
pub fn root_node(s: &Snapshot) -> cairn_format::Node {
    let t = cairn_format::FileTime::from_unix_nanos(s.time.unix_nanos);
    cairn_format::Node {
        name: b"snapshot".to_vec(),
        kind: cairn_format::NodeKind::Dir,
        mode: 0o755,
        uid: s.uid,
        gid: s.gid,
        user: s.username.clone(),
        group: String::new(),
        mtime: t,
        atime: t,
        ctime: t,
        size: 0,
        inode: 0,
        device: 0,
        rdev: 0,
        links: 2,
        link_target: Vec::new(),
        xattrs: Vec::new(),
        content: cairn_format::Content::default(),
        subtree: Some(s.tree),
    }
}
