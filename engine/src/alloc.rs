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
/// How many [`transient`] scopes are open (they nest: a backup loads its index inside one).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
static OPEN: parking_lot::Mutex<usize> = parking_lot::const_mutex(0);

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
/// restore of the 3 GB tree 10.9 -> 13.9 s), while a backup's speed did not move.
/// Peak RSS at a million files, before and after: ARCHITECTURE.md, "Concurrency and
/// memory". Without [`tune`] (another allocator policy, or the user's own `MALLOC_*`
/// settings) this only runs `f`.
pub fn transient<T>(f: impl FnOnce() -> T) -> T {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if TUNED.load(Ordering::Relaxed) {
        {
            let mut open = OPEN.lock();
            if *open == 0 {
                // SAFETY: mallopt takes the allocator's own lock; the thresholds are plain
                // words that other threads' mallocs read as either value, both valid.
                unsafe {
                    libc::mallopt(libc::M_MMAP_THRESHOLD, TRANSIENT_THRESHOLD);
                    libc::mallopt(libc::M_TRIM_THRESHOLD, TRANSIENT_THRESHOLD);
                }
            }
            *open += 1;
        }
        struct Close;
        impl Drop for Close {
            fn drop(&mut self) {
                let mut open = OPEN.lock();
                *open -= 1;
                if *open == 0 {
                    // SAFETY: as above; malloc_trim takes each arena's lock.
                    unsafe {
                        libc::malloc_trim(0);
                        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
                        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
                    }
                }
            }
        }
        // Closed on unwinding too.
        let _close = Close;
        return f();
    }
    f()
}
