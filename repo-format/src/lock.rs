//! `locks/<id>`: who is using the repository, since when, and how.
//!
//! Version 1 knows two modes (shared, exclusive); version 3 adds the maintenance mode, which
//! `forget` and `prune` take so that backups can run beside them, and the time the holder's
//! operation started, which lets prune tell whether a running operation may have loaded the
//! index before a pack was condemned (FORMAT.md §13).

use serde::{Deserialize, Serialize};

use crate::{FormatError, Timestamp};

/// What a lock allows others to do beside its holder.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub enum LockMode {
    /// Backup, restore, check, copy: other shared and maintenance locks may coexist.
    Shared,
    /// Forget and prune: shared locks may coexist, no other maintenance or exclusive lock.
    Maintenance,
    /// Repair, migrate, rewrite, tag: nothing else holds a lock.
    Exclusive,
}

impl LockMode {
    /// Whether a lock of this mode and one of `other` cannot be held at once.
    pub fn conflicts_with(self, other: LockMode) -> bool {
        use LockMode::*;
        !matches!(
            (self, other),
            (Shared, Shared) | (Shared, Maintenance) | (Maintenance, Shared)
        )
    }

    /// The word used in messages.
    pub fn name(self) -> &'static str {
        match self {
            LockMode::Shared => "shared",
            LockMode::Maintenance => "maintenance",
            LockMode::Exclusive => "exclusive",
        }
    }
}

/// A lock. `Serialize` is for JSON output (`cairn cat lock`); the stored encodings are
/// [`Lock::encode`]'s.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Lock {
    /// Written (or last refreshed) at.
    pub time: Timestamp,
    /// When the holder took the lock: its first lock object's `time`, kept by every refresh.
    /// Version 1 does not store it: it reads as the Unix epoch, earlier than anything, so a
    /// live version-1 lock holds back every deletion of condemned packs.
    pub started: Timestamp,
    /// Shared, maintenance or exclusive. Version 1 stores only "exclusive or not": a
    /// maintenance lock is written as exclusive there.
    pub mode: LockMode,
    /// Host holding it.
    pub hostname: String,
    /// User holding it.
    pub username: String,
    /// Process id on that host.
    pub pid: u32,
}

/// Version 1's field order.
#[derive(Serialize, Deserialize)]
struct V1 {
    time: Timestamp,
    exclusive: bool,
    hostname: String,
    username: String,
    pid: u32,
}

/// Version 3's field order.
#[derive(Serialize, Deserialize)]
struct V3 {
    time: Timestamp,
    started: Timestamp,
    mode: LockMode,
    hostname: String,
    username: String,
    pid: u32,
}

impl Lock {
    /// The postcard encoding of this lock in lock version `version` (1 or 3).
    pub fn encode(&self, version: u16) -> Result<Vec<u8>, FormatError> {
        let l = self.clone();
        match version {
            1 => Ok(crate::file::to_postcard(&V1 {
                time: l.time,
                exclusive: l.mode != LockMode::Shared,
                hostname: l.hostname,
                username: l.username,
                pid: l.pid,
            })),
            3 => Ok(crate::file::to_postcard(&V3 {
                time: l.time,
                started: l.started,
                mode: l.mode,
                hostname: l.hostname,
                username: l.username,
                pid: l.pid,
            })),
            v => Err(crate::pack::unknown_version(v)),
        }
    }

    /// Decode the postcard encoding of a lock of version `version`.
    pub fn decode(version: u16, plain: &[u8]) -> Result<Lock, FormatError> {
        match version {
            1 => {
                let v: V1 = crate::file::from_postcard(plain, "lock")?;
                Ok(Lock {
                    time: v.time,
                    started: Timestamp::default(),
                    mode: if v.exclusive {
                        LockMode::Exclusive
                    } else {
                        LockMode::Shared
                    },
                    hostname: v.hostname,
                    username: v.username,
                    pid: v.pid,
                })
            }
            3 => {
                let v: V3 = crate::file::from_postcard(plain, "lock")?;
                Ok(Lock {
                    time: v.time,
                    started: v.started,
                    mode: v.mode,
                    hostname: v.hostname,
                    username: v.username,
                    pid: v.pid,
                })
            }
            v => Err(crate::pack::unknown_version(v)),
        }
    }

    /// Encode and seal this lock at lock version `version`.
    pub fn encode_sealed(
        &self,
        key: &crate::MasterKey,
        version: u16,
        level: i32,
    ) -> Result<Vec<u8>, FormatError> {
        self.encode_sealed_with_nonce(key, version, level, &crate::crypto::random_nonce())
    }

    /// [`Lock::encode_sealed`] with an explicit nonce, for test vectors.
    pub fn encode_sealed_with_nonce(
        &self,
        key: &crate::MasterKey,
        version: u16,
        level: i32,
        nonce: &[u8; crate::NONCE_LEN],
    ) -> Result<Vec<u8>, FormatError> {
        Ok(crate::file::seal_file(
            key,
            crate::FileKind::Lock,
            version,
            &self.encode(version)?,
            level,
            nonce,
        ))
    }

    /// Open and decode a sealed lock of any version.
    pub fn decode_sealed(key: &crate::MasterKey, data: &[u8]) -> Result<Lock, FormatError> {
        let (version, plain) = crate::file::open_file(key, crate::FileKind::Lock, data)?;
        Lock::decode(version, &plain)
    }
}
