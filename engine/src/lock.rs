//! Repository locks: shared for backup/restore/check, exclusive for maintenance.
//!
//! Operations say which lock they need by type: [`SharedLock`] and [`ExclusiveLock`] are
//! what [`Repository::lock_shared`] and [`Repository::lock_exclusive`] return, and derefer
//! to the repository. Both can wait for a conflicting lock to go away (`--retry-lock`);
//! snapshots are deleted only through [`ExclusiveLock::delete_snapshot`].
//!
//! A lock is an ordinary immutable object. Refreshing writes a new lock object and deletes the
//! old one (no rename on object stores). A lock is stale when it was not refreshed for
//! [`STALE_AFTER`], or when it belongs to this host and its process is gone.

use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cairn_format::{FileKind, Id, Lock};
use parking_lot::Mutex;

use crate::repository::Repository;
use crate::util::{hostname, now_timestamp, username};
use crate::{Error, Result};

/// A lock not refreshed for this long is stale.
pub const STALE_AFTER: Duration = Duration::from_secs(30 * 60);
/// Held locks are rewritten this often.
pub const REFRESH_EVERY: Duration = Duration::from_secs(5 * 60);

/// Whether a lock can be ignored.
pub fn is_stale(lock: &Lock) -> bool {
    let now = now_timestamp().unix_nanos;
    let age = Duration::from_nanos(now.saturating_sub(lock.time.unix_nanos).max(0) as u64);
    if age > STALE_AFTER {
        return true;
    }
    if lock.hostname == hostname() {
        // kill(pid, 0): ESRCH means no such process on this host.
        return matches!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(lock.pid as i32), None),
            Err(nix::errno::Errno::ESRCH)
        );
    }
    false
}

/// A held lock; released on drop.
#[derive(Debug)]
struct LockGuard {
    repo: Repository,
    current: Arc<Mutex<Id>>,
    stop: Option<std::sync::mpsc::Sender<()>>,
    refresher: Option<JoinHandle<()>>,
}

impl LockGuard {
    /// Take a lock; while a conflicting live lock exists, try again until `wait` has passed
    /// (zero: fail at once with [`Error::Locked`]).
    fn acquire_waiting(repo: &Repository, exclusive: bool, wait: Duration) -> Result<LockGuard> {
        // An absurd wait means "as long as it takes", not a panic.
        let deadline = Instant::now()
            .checked_add(wait)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(100 * 365 * 86_400));
        let mut pause = Duration::from_millis(250);
        let mut told = false;
        loop {
            match Self::acquire(repo, exclusive) {
                Err(Error::Locked(msg)) if Instant::now() < deadline => {
                    if !told {
                        tracing::warn!("repository is locked ({msg}); waiting up to {wait:?}");
                        told = true;
                    }
                    // Short steps, so that Ctrl-C is not held up by the wait.
                    // Jitter, so that two waiters started by the same timer do not retry in
                    // lock step for ever.
                    let jitter = pause.mul_f64(rand::random::<f64>() * 0.5);
                    let until = (Instant::now() + pause + jitter).min(deadline);
                    while Instant::now() < until {
                        if crate::progress::interrupted() {
                            return Err(Error::Interrupted);
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    pause = (pause * 2).min(Duration::from_secs(10));
                }
                other => return other,
            }
        }
    }

    /// Take a lock, refusing if a conflicting live lock exists.
    fn acquire(repo: &Repository, exclusive: bool) -> Result<LockGuard> {
        check_conflicts(repo, exclusive, None)?;
        let id = write_lock(repo, exclusive)?;
        // Two processes may have passed the first check at once: look again now that ours is
        // visible, and back off if we conflict.
        if let Err(e) = check_conflicts(repo, exclusive, Some(id)) {
            let _ = repo.backend().delete(FileKind::Lock, &id.to_hex());
            return Err(e);
        }
        let current = Arc::new(Mutex::new(id));
        // Dropping the sender wakes the refresher at once: a sleeping poll loop would add up to
        // its period to every command's exit.
        let (stop, wake) = std::sync::mpsc::channel::<()>();
        let refresher = {
            let (repo, current) = (repo.clone(), current.clone());
            std::thread::Builder::new()
                .name("cairn-lock".into())
                .spawn(move || {
                    while let Err(RecvTimeoutError::Timeout) = wake.recv_timeout(REFRESH_EVERY) {
                        if let Ok(new) = write_lock(&repo, exclusive) {
                            let old = std::mem::replace(&mut *current.lock(), new);
                            let _ = repo.backend().delete(FileKind::Lock, &old.to_hex());
                        }
                    }
                })
                .ok()
        };
        Ok(LockGuard {
            repo: repo.clone(),
            current,
            stop: Some(stop),
            refresher,
        })
    }
}

/// A shared lock on a repository (backup, restore, check): other shared locks may coexist,
/// an exclusive one may not. Released on drop.
#[derive(Debug)]
pub struct SharedLock<'r> {
    repo: &'r Repository,
    _guard: LockGuard,
}

/// An exclusive lock on a repository (forget, prune, repair): nothing else holds a lock.
/// Released on drop.
#[derive(Debug)]
pub struct ExclusiveLock<'r> {
    repo: &'r Repository,
    _guard: LockGuard,
}

impl std::ops::Deref for SharedLock<'_> {
    type Target = Repository;
    fn deref(&self) -> &Repository {
        self.repo
    }
}

impl std::ops::Deref for ExclusiveLock<'_> {
    type Target = Repository;
    fn deref(&self) -> &Repository {
        self.repo
    }
}

impl ExclusiveLock<'_> {
    /// Delete a snapshot: the one place snapshots are removed.
    pub fn delete_snapshot(&self, id: &Id) -> Result<()> {
        self.repo.backend().delete(FileKind::Snapshot, &id.to_hex())
    }
}

impl Repository {
    /// Take a shared lock, waiting up to `wait` for a conflicting one to go away.
    pub fn lock_shared(&self, wait: Duration) -> Result<SharedLock<'_>> {
        Ok(SharedLock {
            repo: self,
            _guard: LockGuard::acquire_waiting(self, false, wait)?,
        })
    }

    /// Take an exclusive lock, waiting up to `wait` for conflicting ones to go away.
    pub fn lock_exclusive(&self, wait: Duration) -> Result<ExclusiveLock<'_>> {
        Ok(ExclusiveLock {
            repo: self,
            _guard: LockGuard::acquire_waiting(self, true, wait)?,
        })
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(h) = self.refresher.take() {
            let _ = h.join();
        }
        let _ = self
            .repo
            .backend()
            .delete(FileKind::Lock, &self.current.lock().to_hex());
    }
}

fn write_lock(repo: &Repository, exclusive: bool) -> Result<Id> {
    let lock = Lock {
        time: now_timestamp(),
        exclusive,
        hostname: hostname(),
        username: username(),
        pid: std::process::id(),
    };
    repo.save(FileKind::Lock, &lock)
}

fn check_conflicts(repo: &Repository, exclusive: bool, ours: Option<Id>) -> Result<()> {
    for (id, lock) in list_locks(repo)? {
        if Some(id) == ours || is_stale(&lock) {
            continue;
        }
        if exclusive || lock.exclusive {
            return Err(Error::Locked(format!(
                "{} lock {} held by {}@{} (pid {}) since {}; wait for it with --retry-lock, or if that process is gone, run `cairn unlock`",
                if lock.exclusive { "exclusive" } else { "shared" },
                id.short(),
                lock.username,
                lock.hostname,
                lock.pid,
                crate::util::format_timestamp(&lock.time)
            )));
        }
    }
    Ok(())
}

/// Whether a lock, as read, is one nobody honours: stale, or undecodable (a live holder
/// rewrites its lock every [`REFRESH_EVERY`]). A lock deleted as it was read is neither.
fn abandoned(read: &Result<Lock>) -> bool {
    match read {
        Ok(l) => is_stale(l),
        Err(e) => e.is_damage(),
    }
}

/// Every lock, read once: the readable ones, and the ids of the undecodable ones (each named
/// in a warning). Locks deleted as they are read are skipped; other errors fail.
#[allow(clippy::type_complexity)]
fn read_locks(repo: &Repository) -> Result<(Vec<(Id, Lock)>, Vec<Id>)> {
    let mut locks = Vec::new();
    let mut damaged = Vec::new();
    for id in repo.list_ids(FileKind::Lock)? {
        match repo.load::<Lock>(FileKind::Lock, &id) {
            Ok(l) => locks.push((id, l)),
            Err(Error::ObjectNotFound { .. }) => {}
            Err(e) if e.is_damage() => {
                tracing::warn!(
                    "lock {} is damaged and was ignored ({e}); `cairn prune` or `cairn unlock` removes it",
                    id.short()
                );
                damaged.push(id);
            }
            Err(e) => return Err(e),
        }
    }
    Ok((locks, damaged))
}

/// Every readable lock. Damaged ones are skipped with a warning: nobody honours them, and
/// they must not block the repository (`prune` and `unlock` remove them).
pub fn list_locks(repo: &Repository) -> Result<Vec<(Id, Lock)>> {
    Ok(read_locks(repo)?.0)
}

/// Remove stale locks (or all with `all`), and damaged ones; returns how many were removed.
pub fn unlock(repo: &Repository, all: bool) -> Result<usize> {
    let mut n = 0;
    for id in repo.list_ids(FileKind::Lock)? {
        if all || abandoned(&repo.load::<Lock>(FileKind::Lock, &id)) {
            repo.backend().delete(FileKind::Lock, &id.to_hex())?;
            n += 1;
        }
    }
    Ok(n)
}

/// What the locks say about writers, from one read of every lock: the (host, pid) of every
/// live lock (who may own a temporary file, see [`crate::util::writer_tag`]), and the stale
/// or damaged locks that [`unlock`] without `all` (and `prune`) would remove.
#[allow(clippy::type_complexity)]
pub fn survey(repo: &Repository) -> Result<(Vec<(String, u32)>, Vec<Id>)> {
    let (locks, mut abandoned_ids) = read_locks(repo)?;
    let mut live = Vec::new();
    for (id, l) in locks {
        if is_stale(&l) {
            abandoned_ids.push(id);
        } else {
            live.push((l.hostname, l.pid));
        }
    }
    Ok((live, abandoned_ids))
}
