//! Progress of long operations, as counters the library advances and a
//! front end reads (the library never prints). Counter names carry units.

use std::sync::atomic::{AtomicU64, Ordering};

/// Content bytes a sync plans to move and has moved so far.
#[derive(Debug, Default)]
pub struct Progress {
    planned_bytes: AtomicU64,
    done_bytes: AtomicU64,
    files_done: AtomicU64,
}

impl Progress {
    /// A file of `bytes` will be transferred.
    pub fn plan(&self, bytes: u64) {
        self.planned_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// `bytes` more of the planned content are done.
    pub fn advance(&self, bytes: u64) {
        self.done_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn file_done(&self) {
        self.files_done.fetch_add(1, Ordering::Relaxed);
    }

    /// (done bytes, planned bytes, files done).
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.done_bytes.load(Ordering::Relaxed),
            self.planned_bytes.load(Ordering::Relaxed),
            self.files_done.load(Ordering::Relaxed),
        )
    }
}
