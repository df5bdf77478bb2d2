//! `snapshots/<id>`: one backup run's root tree and what it was.

use serde::{Deserialize, Serialize};

use crate::Id;

/// A point in time with the UTC offset it was recorded in, so that retention buckets
/// ("the newest snapshot of each local day") mean what the operator saw on the clock.
#[derive(
    Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
pub struct Timestamp {
    /// Nanoseconds since 1970-01-01T00:00:00Z.
    pub unix_nanos: i64,
    /// Offset from UTC in seconds at that moment.
    pub utc_offset_secs: i32,
}

/// Counters recorded at the end of a backup.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotSummary {
    /// When the backup started.
    pub backup_start: Timestamp,
    /// When it ended.
    pub backup_end: Timestamp,
    /// Files not in the parent snapshot.
    pub files_new: u64,
    /// Files whose metadata changed since the parent, and were re-read.
    pub files_changed: u64,
    /// Files reused from the parent without reading.
    pub files_unmodified: u64,
    /// Directories not in the parent.
    pub dirs_new: u64,
    /// Directories whose tree changed.
    pub dirs_changed: u64,
    /// Directories whose tree is identical to the parent's.
    pub dirs_unmodified: u64,
    /// Data blobs written.
    pub data_blobs: u64,
    /// Tree blobs written.
    pub tree_blobs: u64,
    /// Plaintext bytes of the new blobs.
    pub data_added: u64,
    /// Bytes the new blobs take in packs.
    pub data_added_packed: u64,
    /// Files (and other non-directory nodes) in the snapshot.
    pub total_files_processed: u64,
    /// Bytes of file content in the snapshot.
    pub total_bytes_processed: u64,
    /// Paths that could not be read completely (the snapshot is then partial).
    pub errors: u64,
}

/// A snapshot.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Snapshot {
    /// When the backup was taken (or `--time`).
    pub time: Timestamp,
    /// The snapshot this one was based on.
    pub parent: Option<Id>,
    /// Root tree.
    pub tree: Id,
    /// The absolute paths given to `backup`, as raw bytes.
    pub paths: Vec<Vec<u8>>,
    /// Host name (or `--host`).
    pub hostname: String,
    /// User that ran the backup.
    pub username: String,
    /// That user's uid.
    pub uid: u32,
    /// That user's gid.
    pub gid: u32,
    /// Tags, sorted.
    pub tags: Vec<String>,
    /// Exclude patterns in force.
    pub excludes: Vec<String>,
    /// `cairn <version>`.
    pub program_version: String,
    /// Counters.
    pub summary: Option<SnapshotSummary>,
}
