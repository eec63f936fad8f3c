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

/// An error and every cause below it, `: `-separated on one line: how the
/// library says an error in its events, logs and refusals, as the binary
/// says one with anyhow's `{:#}`. Errors here say only their own part
/// (`bad delta`, `KML segment PATH`) and give the cause as `source()`.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(e) = cause {
            write!(f, ": {e}")?;
            cause = e.source();
        }
        Ok(())
    }
}
