//! `migrate`: raise a repository's format version in place (FORMAT.md §16).
//!
//! Under the exclusive lock: check that every index file decodes (a damaged index is
//! repaired first, by `repair index`, under the old version), then rewrite the config. Nothing
//! else is rewritten: objects of the old version stay readable, and new writes use the new
//! version. Run again, it changes nothing.

use serde::Serialize;

use crate::lock::ExclusiveLock;
use crate::repository::Repository;
use crate::Result;

/// What `migrate` did (or, already at the newest version, did not need to do).
#[derive(Debug, Clone, Serialize)]
pub struct MigrateReport {
    /// Format version before.
    pub from: u16,
    /// Format version after.
    pub to: u16,
    /// Index files checked.
    pub index_files: u64,
}

/// Upgrade the repository under `lock` to the newest format version this build writes.
pub fn migrate(lock: &ExclusiveLock<'_>) -> Result<MigrateReport> {
    let repo: &Repository = lock;
    let from = repo.config().version;
    let to = cairn_format::FORMAT_VERSION;
    let mut report = MigrateReport {
        from,
        to: from.max(to),
        index_files: 0,
    };
    if from >= to {
        return Ok(report);
    }
    // Every index file must decode: a damaged one is repaired under the version that wrote
    // it, before anything of the new version joins it.
    let index = repo.load_index_strict()?;
    report.index_files = index.files.len() as u64;
    let mut config = repo.config().clone();
    config.version = to;
    let mut upgraded = repo.clone();
    upgraded.rewrite_config(config)?;
    Ok(report)
}
