//! `cairn tag`: change the tags of snapshots. A snapshot is immutable and named by its
//! content, so a changed one is saved anew (same tree, time, paths; new tags) and the old
//! one removed — under the exclusive lock, as every snapshot removal.

use cairn_format::{FileKind, Id, Snapshot};
use serde::Serialize;

use crate::lock::ExclusiveLock;
use crate::{Error, Result};

/// What to change.
#[derive(Debug, Clone, Default)]
pub struct TagOptions {
    /// Tags to add.
    pub add: Vec<String>,
    /// Tags to remove.
    pub remove: Vec<String>,
    /// Replace all tags with these (with `add`/`remove` applied after).
    pub set: Option<Vec<String>>,
}

/// One snapshot whose tags change.
#[derive(Debug, Clone, Serialize)]
pub struct TagChange {
    /// The snapshot as it is.
    pub old: String,
    /// Its tags before.
    pub before: Vec<String>,
    /// Its tags after.
    pub after: Vec<String>,
    /// The new snapshot's id (empty until applied).
    pub new: String,
}

/// Which of `snaps` change, and how. Snapshots whose tags stay the same are left alone.
pub fn plan(snaps: &[(Id, Snapshot)], opts: &TagOptions) -> Result<Vec<(TagChange, Snapshot)>> {
    if opts.add.is_empty() && opts.remove.is_empty() && opts.set.is_none() {
        return Err(Error::Invalid(
            "nothing to do: give --add, --remove or --set".into(),
        ));
    }
    let clean = |v: &[String]| -> Result<Vec<String>> {
        v.iter()
            .flat_map(|t| t.split(','))
            .filter(|t| !t.is_empty())
            .map(|t| {
                if t.chars().any(char::is_control) {
                    Err(Error::Invalid(format!("invalid tag {t:?}")))
                } else {
                    Ok(t.to_owned())
                }
            })
            .collect()
    };
    let (add, remove) = (clean(&opts.add)?, clean(&opts.remove)?);
    let set = opts.set.as_deref().map(clean).transpose()?;
    let mut out = Vec::new();
    for (id, s) in snaps {
        let mut tags = set.clone().unwrap_or_else(|| s.tags.clone());
        tags.extend(add.iter().cloned());
        tags.retain(|t| !remove.contains(t));
        tags.sort();
        tags.dedup();
        if tags != s.tags {
            let mut new = s.clone();
            new.tags = tags.clone();
            out.push((
                TagChange {
                    old: id.to_hex(),
                    before: s.tags.clone(),
                    after: tags,
                    new: String::new(),
                },
                new,
            ));
        }
    }
    Ok(out)
}

/// Save each changed snapshot, then remove the old one: a crash in between leaves both
/// (the same data twice, never none).
pub fn apply(lock: &ExclusiveLock<'_>, plan: Vec<(TagChange, Snapshot)>) -> Result<Vec<TagChange>> {
    let mut done = Vec::with_capacity(plan.len());
    for (mut change, snap) in plan {
        let new = lock.save(FileKind::Snapshot, &snap)?;
        let old = Id::from_hex(&change.old)
            .map_err(|_| Error::Invalid(format!("bad snapshot id {}", change.old)))?;
        if new != old {
            lock.delete_snapshot(&old)?;
        }
        change.new = new.to_hex();
        done.push(change);
    }
    Ok(done)
}
