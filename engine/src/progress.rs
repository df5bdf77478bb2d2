//! Live counters that the CLI renders as a progress bar or JSON status lines.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Set by the CLI's SIGINT/SIGTERM handler; long operations poll it and stop cleanly.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether an interrupt was requested.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// Counters updated by workers.
#[derive(Debug, Default)]
pub struct Progress {
    /// Files (non-directory nodes) finished.
    pub files: AtomicU64,
    /// Directories finished.
    pub dirs: AtomicU64,
    /// Content bytes processed (read or reused).
    pub bytes: AtomicU64,
    /// Total bytes expected, when known (restore).
    pub total_bytes: AtomicU64,
    /// Total files expected, when known.
    pub total_files: AtomicU64,
    /// Errors so far.
    pub errors: AtomicU64,
}

impl Progress {
    /// Add to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Read a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
