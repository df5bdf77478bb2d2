//! The cairn backup engine: everything that does I/O on a repository or a file system.
//!
//! - [`backend`]: where objects live ([`LocalBackend`], [`S3Backend`]); [`cache`]: a verified
//!   local cache of a remote repository's metadata.
//! - [`Repository`]: keys, config, typed objects and blobs.
//! - [`chunker`]: FastCDC v2020, sequential and two-stage parallel.
//! - [`archiver`]: the backup pipeline; [`packer`]: pack assembly and uploads.
//! - [`restorer`]: parallel restore; [`lock`]: repository locks.
//!
//! Only `cairn-format` types are serialized; this crate never defines on-disk structures.

pub mod archiver;
pub mod backend;
pub mod cache;
pub mod chunker;
mod durable;
mod error;
pub mod forget;
pub mod fsmeta;
pub mod index;
pub mod job;
pub mod lock;
pub mod longpath;
pub mod maintenance;
pub mod packer;
pub mod progress;
pub mod repair;
mod repository;
pub mod restorer;
pub mod snapshots;
pub mod util;

pub use archiver::{backup, BackupOptions, BackupResult};
pub use backend::{Backend, LocalBackend, ObjectInfo, S3Backend, S3Config, TempFile};
pub use durable::{sync_dir, write_atomic};
pub use error::{Error, Result};
pub use index::MasterIndex;
pub use lock::LockGuard;
pub use progress::Progress;
pub use repository::{verify_name, InitOptions, Repository, DEFAULT_COMPRESSION_LEVEL};
pub use restorer::{restore, RestoreOptions, RestoreResult};
pub use snapshots::SnapshotFilter;
