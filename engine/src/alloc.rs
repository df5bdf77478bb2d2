//! The process's allocator policy (glibc malloc), set once by the front end with [`tune`] and
//! narrowed by the engine around phases that allocate and free large transient buffers in
//! bursts ([`transient`]).
//!
//! Why it matters: peak RSS is what a pod's memory limit kills on, and with glibc's defaults
//! the freed buffers of one phase stay resident beside the next phase's data. Other
//! allocators and targets: every function here is a no-op.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
use std::sync::atomic::{AtomicBool, Ordering};

/// Set when [`tune`] applied its thresholds (the user set none of their own).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
static TUNED: AtomicBool = AtomicBool::new(false);

/// Steady-state mmap threshold: blocks of 4 MiB and more are mapped and handed straight back
/// to the kernel on `free`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: i32 = 4 << 20;
/// Steady-state trim threshold: up to 16 MiB of free heap top is kept for the next chunk's
/// buffers.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: i32 = 16 << 20;
/// Both thresholds inside [`transient`]: glibc's own starting mmap threshold, frozen.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRANSIENT_THRESHOLD: i32 = 128 << 10;
/// Both thresholds inside [`reusing`]: above every buffer a restore allocates per span and
/// per blob (≤ 8 MiB each), so freed ones are taken again instead of mapped anew.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const REUSE_MMAP_THRESHOLD: i32 = 32 << 20;
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const REUSE_TRIM_THRESHOLD: i32 = 64 << 20;
// A restore's spans and the default 8 MiB maximum chunk stay below it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const _: () = assert!(REUSE_MMAP_THRESHOLD > 8 << 20);
/// How many [`transient`] and [`reusing`] scopes are open (they nest: a backup loads its
/// index inside one). A transient scope wins over a reusing one: memory comes first.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
static OPEN: parking_lot::Mutex<Open> = parking_lot::const_mutex(Open {
    transient: 0,
    reusing: 0,
});

#[cfg(all(target_os = "linux", target_env = "gnu"))]
struct Open {
    transient: usize,
    reusing: usize,
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
impl Open {
    /// The mmap and trim thresholds for the scopes open: a transient scope wins.
    fn thresholds(&self) -> (i32, i32) {
        if self.transient > 0 {
            (TRANSIENT_THRESHOLD, TRANSIENT_THRESHOLD)
        } else if self.reusing > 0 {
            (REUSE_MMAP_THRESHOLD, REUSE_TRIM_THRESHOLD)
        } else {
            (MMAP_THRESHOLD, TRIM_THRESHOLD)
        }
    }

    /// How many scopes of a kind are open.
    fn count(&mut self, transient: bool) -> &mut usize {
        if transient {
            &mut self.transient
        } else {
            &mut self.reusing
        }
    }

    /// Apply the thresholds of the scopes now open; first trim the heap when the last scope
    /// of a kind was just left (`trim`).
    fn apply(&self, trim: bool) {
        let (mmap, trim_at) = self.thresholds();
        // SAFETY: mallopt takes the allocator's own lock; the thresholds are plain words
        // that other threads' mallocs read as either value, both valid. malloc_trim takes
        // each arena's lock.
        unsafe {
            if trim {
                libc::malloc_trim(0);
            }
            libc::mallopt(libc::M_MMAP_THRESHOLD, mmap);
            libc::mallopt(libc::M_TRIM_THRESHOLD, trim_at);
        }
    }
}

/// Set the allocator policy. Call once, before any thread exists.
///
/// glibc raises its mmap threshold each time a large block is freed, after which 16 MiB pack
/// buffers, 8 MiB chunks and 10 MiB read windows are carved from the per-thread arenas and
/// stay resident after `free`. A fixed threshold (which also disables that adjustment) hands
/// blocks of 4 MiB and more straight back to the kernel (the archiver recycles its read
/// windows, so that costs no page faults). Measured on the 2 GB tree: peak RSS of a first
/// backup to S3 280 -> 100 MiB; 1 GB incompressible file at unchanged speed.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any thread exists.
    unsafe {
        // One arena per thread keeps each thread's freed small blocks out of the others'
        // reach: a first backup of a million small files peaked at 135 MiB with the
        // default arenas and 111 MiB with two, at the same speed. A user's own
        // MALLOC_ARENA_MAX (already applied by glibc) wins.
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
        // A user's own MALLOC_MMAP_THRESHOLD_ (already applied by glibc) wins, and then
        // `transient` leaves the thresholds alone too.
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            // Fixing one threshold freezes the other at its 128 KiB default, and trimming
            // the heap that eagerly re-faults the next chunk's buffers: keep up to 16 MiB.
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
            TUNED.store(true, Ordering::Relaxed);
        }
    }
}

/// Run `f`, a phase that grows large long-lived structures while it allocates and frees
/// buffers of 128 KiB to a few MiB beside them: loading the index (per thread the sealed
/// file, its plaintext and its decoded entries, beside the growing array) and a backup (per
/// group and chunk the compressed and sealed buffers, beside the run's dedup set and its
/// pending index entries). With the steady thresholds those buffers are carved from the
/// arenas, and the growing structures pin them: freed, they stay resident as holes.
///
/// Inside, blocks of 128 KiB and more are mapped and unmapped one by one, and the heap top
/// is trimmed past 128 KiB; afterwards the heap is trimmed and the steady thresholds
/// return. Not for restores: there every span read would be faulted in anew (measured:
/// restore of the 3 GB tree 10.9 -> 13.9 s), while a backup's speed did not move; restores
/// run inside [`reusing`].
/// Peak RSS at a million files, before and after: ARCHITECTURE.md, "Concurrency and
/// memory". Without [`tune`] (another allocator policy, or the user's own `MALLOC_*`
/// settings) this only runs `f`.
pub fn transient<T>(f: impl FnOnce() -> T) -> T {
    scope(true, f)
}

/// Run `f`, a phase that allocates and frees buffers of up to a few MiB at a high rate
/// without growing long-lived structures beside them: a restore's writes (per span of a
/// pack the sealed bytes, per blob its plaintext). With the steady 4 MiB mmap threshold the
/// larger of those were mapped and faulted in anew each time; inside, they are kept and taken
/// again (measured on the 3 GB tree into tmpfs: 167 000 -> 31 500 minor faults, 6.17 ->
/// 5.41 s, peak RSS 74.3 -> 76.9 MiB). The heap is trimmed when it ends, and a
/// [`transient`] scope opened inside still wins.
pub fn reusing<T>(f: impl FnOnce() -> T) -> T {
    scope(false, f)
}

#[cfg_attr(
    not(all(target_os = "linux", target_env = "gnu")),
    allow(unused_variables)
)]
fn scope<T>(transient: bool, f: impl FnOnce() -> T) -> T {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if TUNED.load(Ordering::Relaxed) {
        {
            let mut open = OPEN.lock();
            *open.count(transient) += 1;
            open.apply(false);
        }
        struct Close(bool);
        impl Drop for Close {
            fn drop(&mut self) {
                let mut open = OPEN.lock();
                let n = open.count(self.0);
                *n -= 1;
                // The freed buffers go back to the kernel when the last scope of a kind ends
                // (not when a backup's index load ends inside the backup's own scope).
                let last = *n == 0;
                open.apply(last);
            }
        }
        // Closed on unwinding too.
        let _close = Close(transient);
        return f();
    }
    f()
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    #[test]
    fn memory_first_scope_wins_and_steady_returns() {
        let open = |transient, reusing| Open { transient, reusing }.thresholds();
        assert_eq!(open(0, 0), (MMAP_THRESHOLD, TRIM_THRESHOLD));
        assert_eq!(open(0, 1), (REUSE_MMAP_THRESHOLD, REUSE_TRIM_THRESHOLD));
        assert_eq!(open(1, 0), (TRANSIENT_THRESHOLD, TRANSIENT_THRESHOLD));
        assert_eq!(open(2, 1), (TRANSIENT_THRESHOLD, TRANSIENT_THRESHOLD));
    }

    #[test]
    fn scopes_nest_and_run_their_closure() {
        // Whether or not `tune` ran in this process, the closures run and return.
        assert_eq!(reusing(|| transient(|| 7) + 1), 8);
        assert_eq!(transient(|| reusing(|| 2)), 2);
    }
}
