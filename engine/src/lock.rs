//! Repository locks: shared for backup/restore/check, maintenance for forget/prune,
//! exclusive for repair and the like.
//!
//! Operations say which lock they need by type: [`SharedLock`], [`MaintenanceLock`] and
//! [`ExclusiveLock`] are what [`Repository::lock_shared`], [`Repository::lock_maintenance`]
//! and [`Repository::lock_exclusive`] return, and derefer to the repository. All can wait for
//! a conflicting lock to go away (`--retry-lock`); snapshots are deleted only through
//! [`MaintenanceLock::delete_snapshot`] and [`ExclusiveLock::delete_snapshot`].
//!
//! In a repository of format 3, a maintenance lock coexists with shared ones (prune beside
//! running backups, FORMAT.md §15); in older ones it is written and honoured as exclusive.
//!
//! A lock is an ordinary immutable object. Refreshing writes a new lock object and deletes the
//! old one (no rename on object stores). A lock is stale when it was not refreshed for
//! [`STALE_AFTER`], or when it belongs to this host and its process is gone. A holder that
//! could not refresh for [`LOST_AFTER`] must assume others treat its lock as stale
//! ([`LockGuard::check_held`]).

use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cairn_format::{FileKind, Id, Lock, LockMode, Timestamp};
use parking_lot::Mutex;

use crate::repository::Repository;
use crate::util::{hostname, now_timestamp, username};
use crate::{Error, Result};

/// A lock not refreshed for this long is stale.
pub const STALE_AFTER: Duration = Duration::from_secs(30 * 60);
/// Held locks are rewritten this often.
pub const REFRESH_EVERY: Duration = Duration::from_secs(5 * 60);
/// A holder whose last successful refresh is this old considers its lock lost: by the time
/// the next refresh could land, others may already treat it as stale.
pub const LOST_AFTER: Duration =
    Duration::from_secs(STALE_AFTER.as_secs() - REFRESH_EVERY.as_secs());

/// Whether a lock may still belong to a live holder when the reader's clock may be up to
/// `skew` ahead of the holder's: prune's view for holding deletions back, and for removing
/// locks (a removed live lock would be invisible to the next prune until its holder's next
/// refresh). Its holder gives up at [`LOST_AFTER`], well inside this.
pub fn may_be_live(lock: &Lock, skew: Duration) -> bool {
    if lock.hostname == hostname() {
        return !is_stale(lock);
    }
    let now = now_timestamp().unix_nanos;
    let age = Duration::from_nanos(now.saturating_sub(lock.time.unix_nanos).max(0) as u64);
    age <= STALE_AFTER + skew
}

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

/// Whether a held lock has certainly stayed live: shared by the lock's refresher and by what
/// commits work that relies on the lock (a backup's snapshot, every index file written under
/// it, prune's deletions).
#[derive(Debug, Clone)]
pub struct LockWatch(Arc<Mutex<WatchState>>);

#[derive(Debug)]
struct WatchState {
    /// When the lock was last written successfully (wall clock: a suspended machine's
    /// monotonic clock may not advance, but others' clocks do).
    refreshed: std::time::SystemTime,
    /// Once a refresh came too late, the lock may have been taken for stale meanwhile, and
    /// stays lost even after later refreshes succeed.
    lost: Option<u64>,
}

impl LockWatch {
    fn new() -> LockWatch {
        LockWatch(Arc::new(Mutex::new(WatchState {
            refreshed: std::time::SystemTime::now(),
            lost: None,
        })))
    }

    /// Seconds since the last successful refresh.
    fn age(st: &WatchState) -> u64 {
        std::time::SystemTime::now()
            .duration_since(st.refreshed)
            .unwrap_or_default()
            .as_secs()
    }

    /// Record a successful refresh written at `at` (its write started then).
    fn refreshed(&self, at: std::time::SystemTime) {
        let mut st = self.0.lock();
        let gap = at.duration_since(st.refreshed).unwrap_or_default();
        if gap > LOST_AFTER && st.lost.is_none() {
            st.lost = Some(gap.as_secs());
        }
        st.refreshed = at;
    }

    /// Fail unless the lock has certainly stayed live since it was taken: a holder that was
    /// suspended, or cut off from the repository, for [`LOST_AFTER`] may have been taken for
    /// dead, and a prune may then have deleted packs it relies on.
    pub fn check(&self) -> Result<()> {
        let st = self.0.lock();
        let gap = st.lost.unwrap_or(0).max(Self::age(&st));
        if gap > LOST_AFTER.as_secs() {
            return Err(Error::LockLost(format!(
                "the repository lock went {gap}s without a refresh (the process was suspended or could not reach the repository); others may have taken it for stale, so nothing that relies on it is committed — run the command again"
            )));
        }
        Ok(())
    }
}

/// A held lock; released on drop.
#[derive(Debug)]
pub struct LockGuard {
    repo: Repository,
    current: Arc<Mutex<Id>>,
    watch: LockWatch,
    /// What the lock objects say about its holder.
    started: Timestamp,
    stop: Option<std::sync::mpsc::Sender<()>>,
    refresher: Option<JoinHandle<()>>,
}

impl LockGuard {
    /// When this lock was taken (its `started`).
    pub fn started(&self) -> Timestamp {
        self.started
    }

    /// Whether `lock` is one of this guard's lock objects (the current one or an earlier
    /// refresh still listed).
    pub fn owns(&self, lock: &Lock) -> bool {
        // A version-1 lock (format 1 and 2) stores no start time: it reads as the epoch.
        (lock.started == self.started || lock.started == Timestamp::default())
            && lock.pid == std::process::id()
            && lock.hostname == hostname()
    }

    /// Fail unless this lock has certainly stayed live ([`LockWatch::check`]). Called before
    /// committing what depends on the lock (a backup's snapshot, prune's deletions).
    pub fn check_held(&self) -> Result<()> {
        self.watch.check()
    }

    /// The lock's watch, for writers that commit under it (the packer's index files).
    pub fn watch(&self) -> LockWatch {
        self.watch.clone()
    }

    /// Take a lock; while a conflicting live lock exists, try again until `wait` has passed
    /// (zero: fail at once with [`Error::Locked`]).
    fn acquire_waiting(repo: &Repository, mode: LockMode, wait: Duration) -> Result<LockGuard> {
        // An absurd wait means "as long as it takes", not a panic.
        let deadline = Instant::now()
            .checked_add(wait)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(100 * 365 * 86_400));
        let mut pause = Duration::from_millis(250);
        let mut told = false;
        loop {
            match Self::acquire(repo, mode) {
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
    fn acquire(repo: &Repository, mode: LockMode) -> Result<LockGuard> {
        // Before format 3 nothing may run beside maintenance.
        let mode = match mode {
            LockMode::Maintenance if repo.config().version < 3 => LockMode::Exclusive,
            m => m,
        };
        check_conflicts(repo, mode, None)?;
        let started = now_timestamp();
        let id = write_lock(repo, mode, started)?;
        // Two processes may have passed the first check at once: look again now that ours is
        // visible, and back off if we conflict.
        if let Err(e) = check_conflicts(repo, mode, Some(id)) {
            let _ = repo.backend().delete(FileKind::Lock, &id.to_hex());
            return Err(e);
        }
        let current = Arc::new(Mutex::new(id));
        let watch = LockWatch::new();
        // Dropping the sender wakes the refresher at once: a sleeping poll loop would add up to
        // its period to every command's exit.
        let (stop, wake) = std::sync::mpsc::channel::<()>();
        let refresher = {
            let (repo, current, watch) = (repo.clone(), current.clone(), watch.clone());
            std::thread::Builder::new()
                .name("cairn-lock".into())
                .spawn(move || {
                    while let Err(RecvTimeoutError::Timeout) = wake.recv_timeout(REFRESH_EVERY) {
                        let before = std::time::SystemTime::now();
                        if let Ok(new) = write_lock(&repo, mode, started) {
                            watch.refreshed(before);
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
            watch,
            started,
            stop: Some(stop),
            refresher,
        })
    }
}

/// A shared lock on a repository (backup, restore, check): other shared locks and a
/// maintenance lock may coexist, an exclusive one may not. Released on drop.
#[derive(Debug)]
pub struct SharedLock<'r> {
    repo: &'r Repository,
    /// None: reading without a lock ([`Repository::read_unlocked`]).
    guard: Option<LockGuard>,
}

/// A maintenance lock on a repository (forget, prune): at most one at a time, beside any
/// number of shared locks (in format 3; before, it is exclusive). Released on drop.
#[derive(Debug)]
pub struct MaintenanceLock<'r> {
    repo: &'r Repository,
    guard: LockGuard,
}

/// An exclusive lock on a repository (repair, migrate, rewrite, tag): nothing else holds a
/// lock. Released on drop.
#[derive(Debug)]
pub struct ExclusiveLock<'r> {
    repo: &'r Repository,
    guard: LockGuard,
}

macro_rules! lock_type {
    ($t:ident) => {
        impl std::ops::Deref for $t<'_> {
            type Target = Repository;
            fn deref(&self) -> &Repository {
                self.repo
            }
        }
    };
    ($t:ident, held) => {
        lock_type!($t);

        impl $t<'_> {
            /// The held lock.
            pub fn guard(&self) -> &LockGuard {
                &self.guard
            }
        }
    };
}
lock_type!(SharedLock);
lock_type!(MaintenanceLock, held);
lock_type!(ExclusiveLock, held);

impl SharedLock<'_> {
    /// The held lock, for operations that write (backup, copy): they refuse to run without
    /// one, so that a prune beside them knows what they use.
    pub fn guard(&self) -> Result<&LockGuard> {
        self.guard.as_ref().ok_or_else(|| {
            Error::Invalid(
                "this command writes to the repository and needs a lock (--no-lock is only for reading)"
                    .into(),
            )
        })
    }
}

impl MaintenanceLock<'_> {
    /// Delete a snapshot ([`MaintenanceView::delete_snapshot`]).
    pub fn delete_snapshot(&self, id: &Id) -> Result<()> {
        self.as_maintenance().delete_snapshot(id)
    }
}

impl ExclusiveLock<'_> {
    /// Delete a snapshot (`rewrite --forget`, `repair snapshots --forget`;
    /// [`MaintenanceView::delete_snapshot`]).
    pub fn delete_snapshot(&self, id: &Id) -> Result<()> {
        self.as_maintenance().delete_snapshot(id)
    }

    /// Everything a maintenance lock allows is allowed under an exclusive one.
    pub fn as_maintenance(&self) -> MaintenanceView<'_> {
        MaintenanceView(self.repo, &self.guard)
    }
}

/// What a maintenance operation needs of its lock: the repository and the lock's
/// [`LockGuard`]. Held by a [`MaintenanceLock`], or borrowed from an [`ExclusiveLock`].
#[derive(Debug, Clone, Copy)]
pub struct MaintenanceView<'a>(&'a Repository, &'a LockGuard);

impl<'a> MaintenanceView<'a> {
    /// The repository.
    pub fn repo(&self) -> &'a Repository {
        self.0
    }

    /// The held lock.
    pub fn guard(&self) -> &'a LockGuard {
        self.1
    }

    /// Delete a snapshot: the one place snapshots are removed.
    pub fn delete_snapshot(&self, id: &Id) -> Result<()> {
        self.0.backend().delete(FileKind::Snapshot, &id.to_hex())
    }
}

impl MaintenanceLock<'_> {
    /// The view maintenance operations take.
    pub fn as_maintenance(&self) -> MaintenanceView<'_> {
        MaintenanceView(self.repo, &self.guard)
    }
}

impl Repository {
    /// Take a shared lock, waiting up to `wait` for a conflicting one to go away.
    pub fn lock_shared(&self, wait: Duration) -> Result<SharedLock<'_>> {
        Ok(SharedLock {
            repo: self,
            guard: Some(LockGuard::acquire_waiting(self, LockMode::Shared, wait)?),
        })
    }

    /// Read without taking a lock (`--no-lock`): for a repository on read-only storage (a
    /// write-protected disk, a read-only export, an immutable bucket) or a full disk, where no
    /// lock can be written. Nothing tells a prune beside it what it reads, so a prune may
    /// delete packs it is reading; operations that write refuse such a lock.
    pub fn read_unlocked(&self) -> SharedLock<'_> {
        SharedLock {
            repo: self,
            guard: None,
        }
    }

    /// Refuse before anything is written when the backend's credential cannot delete: what
    /// needs a maintenance or exclusive lock deletes, and would otherwise fail halfway,
    /// leaving the packs and index files it wrote first.
    pub(crate) fn require_delete_rights(&self, what: &str) -> Result<()> {
        if self.backend().may_delete()? {
            return Ok(());
        }
        Err(Error::Denied(format!(
            "{what} needs a credential that may delete, and {} gave an append-only one: run it on the repository server (`cairn prune -r /path/to/repo`) or with a full-access credential",
            self.backend().location()
        )))
    }

    /// Take a maintenance lock, waiting up to `wait` for conflicting ones to go away.
    pub fn lock_maintenance(&self, wait: Duration) -> Result<MaintenanceLock<'_>> {
        self.require_delete_rights("forget/prune")?;
        Ok(MaintenanceLock {
            repo: self,
            guard: LockGuard::acquire_waiting(self, LockMode::Maintenance, wait)?,
        })
    }

    /// Take an exclusive lock, waiting up to `wait` for conflicting ones to go away.
    pub fn lock_exclusive(&self, wait: Duration) -> Result<ExclusiveLock<'_>> {
        self.require_delete_rights("this operation")?;
        Ok(ExclusiveLock {
            repo: self,
            guard: LockGuard::acquire_waiting(self, LockMode::Exclusive, wait)?,
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

fn write_lock(repo: &Repository, mode: LockMode, started: Timestamp) -> Result<Id> {
    let lock = Lock {
        time: now_timestamp(),
        started,
        mode,
        hostname: hostname(),
        username: username(),
        pid: std::process::id(),
    };
    repo.save_lock(&lock)
}

fn check_conflicts(repo: &Repository, mode: LockMode, ours: Option<Id>) -> Result<()> {
    for (id, lock) in list_locks(repo)? {
        if Some(id) == ours || is_stale(&lock) {
            continue;
        }
        if mode.conflicts_with(lock.mode) {
            return Err(Error::Locked(format!(
                "{} lock {} held by {}@{} (pid {}) since {}; wait for it with --retry-lock; a lock whose holder died expires {} min after its last refresh (or at once on its own host), or remove it with `cairn unlock`",
                lock.mode.name(),
                id.short(),
                lock.username,
                lock.hostname,
                lock.pid,
                crate::util::format_timestamp(&lock.started),
                STALE_AFTER.as_secs() / 60,
            )));
        }
    }
    Ok(())
}

/// How far the clocks of the hosts using a repository may disagree, unless prune is told
/// otherwise (`--clock-skew`).
pub const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(10 * 60);

/// Whether a lock, as read, is one nobody honours and `unlock` may remove: stale even for a
/// reader whose clock runs [`DEFAULT_CLOCK_SKEW`] ahead (a removed live lock would hide its
/// holder from prune until the next refresh), or undecodable (a live holder rewrites its
/// lock every [`REFRESH_EVERY`]). A lock deleted as it was read is neither.
fn abandoned(read: &Result<Lock>) -> bool {
    match read {
        Ok(l) => !may_be_live(l, DEFAULT_CLOCK_SKEW),
        Err(e) => e.is_damage(),
    }
}

/// Every lock: the readable ones, and the ids of the undecodable ones (each named in a
/// warning). A lock listed but gone when read was released, or replaced by its holder's
/// refresh (which writes the new object before deleting the old one): the locks are then
/// listed again, and the locks new in that listing read, until a round finds none gone —
/// so a live holder caught mid-refresh is never missed. Other errors fail.
#[allow(clippy::type_complexity)]
fn read_locks(repo: &Repository) -> Result<(Vec<(Id, Lock)>, Vec<Id>)> {
    let mut read: std::collections::HashMap<Id, Option<Lock>> = std::collections::HashMap::new();
    let listed = repo.read_until_settled(FileKind::Lock, |ids| {
        let mut vanished = false;
        for id in ids {
            match repo.load_lock(id) {
                Ok(l) => {
                    read.insert(*id, Some(l));
                }
                Err(Error::ObjectNotFound { .. }) => vanished = true,
                Err(e) if e.is_damage() => {
                    tracing::warn!(
                        "lock {} is damaged and was ignored ({e}); `cairn prune` or `cairn unlock` removes it",
                        id.short()
                    );
                    read.insert(*id, None);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(vanished)
    })?;
    // The locks of the last listing, as read.
    let mut locks = Vec::new();
    let mut damaged = Vec::new();
    for id in listed {
        match read.remove(&id) {
            Some(Some(l)) => locks.push((id, l)),
            Some(None) => damaged.push(id),
            None => {}
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
        if all || abandoned(&repo.load_lock(&id)) {
            repo.backend().delete(FileKind::Lock, &id.to_hex())?;
            n += 1;
        }
    }
    Ok(n)
}

/// What the locks say, from one read of every lock: the live ones (their holders may own
/// temporary files, see [`crate::util::writer_tag`], and may rely on packs a prune
/// condemned), and the stale or damaged ones that [`unlock`] without `all` (and `prune`)
/// would remove.
#[derive(Debug, Default)]
pub struct Survey {
    /// Live locks.
    pub live: Vec<(Id, Lock)>,
    /// Stale or undecodable locks.
    pub abandoned: Vec<Id>,
}

/// Read every lock once and sort them into a [`Survey`].
pub fn survey(repo: &Repository) -> Result<Survey> {
    survey_with_skew(repo, Duration::ZERO)
}

/// [`survey`] by a reader whose clock may be up to `skew` ahead of the holders'
/// ([`may_be_live`]).
pub fn survey_with_skew(repo: &Repository, skew: Duration) -> Result<Survey> {
    let (locks, abandoned) = read_locks(repo)?;
    let mut s = Survey {
        live: Vec::new(),
        abandoned,
    };
    for (id, l) in locks {
        if !may_be_live(&l, skew) {
            s.abandoned.push(id);
        } else {
            s.live.push((id, l));
        }
    }
    Ok(s)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_late_refresh_loses_the_lock_for_good() {
        let w = LockWatch::new();
        w.check().unwrap();
        // Suspended for longer than LOST_AFTER: the refresh that finally lands does not
        // make the lock trustworthy again.
        let long_ago = std::time::SystemTime::now() - LOST_AFTER - Duration::from_secs(60);
        w.0.lock().refreshed = long_ago;
        assert!(matches!(w.check(), Err(Error::LockLost(_))));
        w.refreshed(std::time::SystemTime::now());
        assert!(matches!(w.check(), Err(Error::LockLost(_))));
        // Refreshes on time never lose it.
        let w = LockWatch::new();
        w.0.lock().refreshed = std::time::SystemTime::now() - REFRESH_EVERY;
        w.refreshed(std::time::SystemTime::now());
        w.check().unwrap();
    }

    #[test]
    fn prune_counts_locks_live_for_the_clock_skew_beyond_staleness() {
        let now = now_timestamp().unix_nanos;
        let lock = |ago: Duration| Lock {
            time: Timestamp {
                unix_nanos: now - ago.as_nanos() as i64,
                utc_offset_secs: 0,
            },
            started: Timestamp::default(),
            mode: LockMode::Shared,
            hostname: "another-host".into(),
            username: "u".into(),
            pid: 1,
        };
        let stale = lock(STALE_AFTER + Duration::from_secs(60));
        assert!(is_stale(&stale));
        assert!(!may_be_live(&stale, Duration::ZERO));
        // A reader whose clock may be 10 min ahead still counts it.
        assert!(may_be_live(&stale, Duration::from_secs(600)));
        assert!(!may_be_live(
            &lock(STALE_AFTER + Duration::from_secs(660)),
            Duration::from_secs(600)
        ));
        // The holder gives up well before anyone may take it for dead.
        const { assert!(LOST_AFTER.as_secs() < STALE_AFTER.as_secs()) };
    }
}
