use std::io;
use std::path::Path;

use cairn_format::{FileKind, FormatError};
use thiserror::Error;

/// Engine errors. Each maps to a documented process exit code ([`Error::exit_code`]).
#[derive(Debug, Error)]
pub enum Error {
    /// Nothing at the repository location.
    #[error("repository {0} does not exist (create it with `cairn init`)")]
    RepoNotFound(String),
    /// Something there, but not a cairn repository (the message says why).
    #[error("{0}")]
    NotARepository(String),
    /// `init` on an existing repository.
    #[error("repository {0} already exists")]
    RepoExists(String),
    /// Decoding / authentication / version problems.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// A stored object's name does not match the hash of its bytes.
    #[error("{kind} {name} is corrupt: its content hashes to {actual}")]
    ObjectHashMismatch {
        /// Kind of object.
        kind: &'static str,
        /// Stored name.
        name: String,
        /// Hash of what was read.
        actual: String,
    },
    /// A requested object does not exist.
    #[error("{kind} {name} not found in the repository")]
    ObjectNotFound {
        /// Kind.
        kind: &'static str,
        /// Name.
        name: String,
    },
    /// Local I/O failed.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Remote/backend failure that is not a local file error.
    #[error("backend: {0}")]
    Backend(String),
    /// Another process holds a conflicting lock.
    #[error("repository is locked: {0}")]
    Locked(String),
    /// This process's lock may have expired while it worked (suspended, or cut off from the
    /// repository): what depends on it was not committed.
    #[error("lock lost: {0}")]
    LockLost(String),
    /// A blob the index or a tree names is missing or unreadable.
    #[error("data integrity: {0}")]
    Integrity(String),
    /// Bad user input (unknown snapshot, bad path, bad pattern…).
    #[error("{0}")]
    Invalid(String),
    /// Some files could not be restored (the rest were).
    #[error("{failed} of {total} files could not be restored")]
    RestoreIncomplete {
        /// Failed count.
        failed: u64,
        /// Total files.
        total: u64,
    },
    /// SIGINT/SIGTERM.
    #[error("interrupted")]
    Interrupted,
    /// The repository server refused the credentials (401) or the operation (403: an
    /// append-only credential asked to delete or overwrite).
    #[error("access denied: {0}")]
    Denied(String),
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wrap an I/O error with the path it concerns.
    pub fn io(path: impl AsRef<Path>, source: io::Error) -> Error {
        Error::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }

    /// The object is missing.
    pub fn not_found(kind: FileKind, name: &str) -> Error {
        Error::ObjectNotFound {
            kind: kind.name(),
            name: name.to_owned(),
        }
    }

    /// A ranged read came back short: the object is truncated.
    pub fn truncated(kind: FileKind, name: &str, offset: u64, len: u64, got: usize) -> Error {
        Error::Integrity(format!(
            "{} {name} is truncated: wanted {len} bytes at offset {offset}, got {got}",
            kind.name()
        ))
    }

    /// Whether this error says the stored bytes are damaged (exit code 13), as opposed to
    /// being unreachable right now (I/O, network) or a usage problem.
    pub fn is_damage(&self) -> bool {
        self.exit_code() == 13
    }

    /// Whether the object could not be read at all (I/O, network, access refused), which says
    /// nothing about what it holds: `check` and `repair index` stop on this rather than
    /// report the object as damaged.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            Error::Io { .. } | Error::Backend(_) | Error::Denied(_) | Error::Interrupted
        )
    }

    /// Exit codes, documented in README.md:
    /// 1 error, 3 incomplete backup/restore, 10 no repository, 11 locked, 12 wrong password,
    /// 13 corrupt data, 14 unsupported format version, 130 interrupted.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::RepoNotFound(_) | Error::NotARepository(_) => 10,
            Error::Locked(_) | Error::LockLost(_) => 11,
            Error::Format(FormatError::WrongPassword) => 12,
            Error::Format(FormatError::UnsupportedVersion { .. }) => 14,
            Error::Format(_) | Error::ObjectHashMismatch { .. } | Error::Integrity(_) => 13,
            Error::RestoreIncomplete { .. } => 3,
            Error::Interrupted => 130,
            Error::Denied(_) => 15,
            _ => 1,
        }
    }
}
