//! The cairn backup engine: everything that does I/O on a repository or a file system.
//!
//! - [`ops`]: the operations (backup, restore, ls, forget, prune, check, repair, stats, the
//!   nightly job), each with typed options and a typed report. Front ends call these.
//! - [`Repository`]: keys, config, typed objects; [`SharedLock`] / [`ExclusiveLock`] say
//!   which lock a caller holds, [`Indexed`] that its index is loaded.
//! - [`backend`]: where objects live ([`LocalBackend`], [`S3Backend`]); [`cache`]: a verified
//!   local cache of a remote repository's metadata.
//! - [`chunker`]: FastCDC v2020, sequential and two-stage parallel; [`packer`]: pack
//!   assembly and uploads.
//! - [`retention`]: `forget` policies; [`pattern`]: the include/exclude pattern language;
//!   [`snapshots`]: choosing snapshots.
//!
//! Only `cairn-format` types are serialized; this crate never defines on-disk structures.

pub mod alloc;
pub mod backend;
pub mod cache;
pub mod chunker;
mod durable;
mod error;
pub mod fsmeta;
pub mod index;
pub mod k3s;
pub mod lock;
pub mod longpath;
pub mod ops;
pub mod packer;
pub mod pattern;
pub mod progress;
mod repository;
pub mod retention;
pub mod snapshots;
pub mod util;

pub use backend::{
    fuzz_rest_answer, fuzz_sftp_reply, Backend, LocalBackend, ObjectInfo, S3Backend, S3Config,
    SftpBackend, SftpConfig, TempFile,
};
pub use durable::{sync_dir, write_atomic, write_atomic_mode};
pub use error::{Error, Result};
pub use index::MasterIndex;
pub use lock::{ExclusiveLock, MaintenanceLock, MaintenanceView, SharedLock};
pub use ops::backup::{BackupOptions, BackupResult};
pub use ops::restore::{RestoreOptions, RestoreResult};
pub use progress::Progress;
pub use repository::{verify_name, Indexed, InitOptions, Repository, DEFAULT_COMPRESSION_LEVEL};
pub use snapshots::SnapshotFilter;
