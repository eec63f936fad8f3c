//! The InterSync client: a working copy kept in sync with an export in both
//! directions.
//!
//! A working copy remembers the server's tree as of the last pull (the
//! *base*, a [`TreeState`](crate::tree::TreeState) at a KML sequence number) with the stat of every
//! file it holds. Local changes are whatever a scan finds between the disk
//! and the base, so nothing needs recording at the moment of a change and a
//! crash loses nothing: the next scan finds the same changes. One sync round:
//!
//! 1. scan the disk against the base: the local changes;
//! 2. pull: read the journal from the cursor (or a checkpoint), fold it into
//!    the server's tree, resolve conflicts (the server keeps the name, the
//!    local version moves to `NAME.conflict-<node>-<time>`), and bring the
//!    disk to the server's tree, each file by the cheapest way: a local copy
//!    of the same version, a delta against the local copy, or a whole fetch
//!    that resumes from a partial;
//! 3. push what is still different, each write with its precondition;
//! 4. pull again, which moves the base past our own writes.
//!
//! Files are installed only once verified against their version, atomically.
//! The base is saved after the disk matches it.

mod pull;
mod push;
pub mod watch;
pub mod working_copy;

use intersync_protocol::TreePath;

use crate::transport::{Traffic, TransportError};
pub use working_copy::{Conflict, WorkingCopy, WorkingCopyError};

/// What a sync round does.
#[derive(Clone, Copy, Debug)]
pub struct SyncOptions {
    pub pull: bool,
    pub push: bool,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            pull: true,
            push: true,
        }
    }
}

/// How a file reached the working copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fetch {
    /// Moved or copied from a local file with the same content.
    Local,
    /// A delta against the local copy.
    Delta,
    /// The whole file (resumed from a partial when one was there).
    Whole,
}

/// One change carried out by a sync, in either direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub path: TreePath,
    pub what: String,
}

/// What a sync round did and what it cost.
#[derive(Clone, Debug, Default)]
pub struct SyncReport {
    pub pulled: Vec<Change>,
    pub pushed: Vec<Change>,
    pub conflicts: Vec<Conflict>,
    /// Local changes not pushed this time (the server's copy moved), for the next round.
    pub deferred: Vec<Change>,
    pub files_local: u64,
    pub files_delta: u64,
    pub files_whole: u64,
    /// Bytes of file content that crossed the wire as literal data.
    pub literal_bytes: u64,
    /// Bytes of file content rebuilt from what was already on the other side.
    pub matched_bytes: u64,
    /// Sum of the sizes of every file transferred: what fetching or sending
    /// each whole would have moved.
    pub full_fetch_bytes: u64,
    /// Files in the working copy after the sync, and their total size.
    pub files: u64,
    pub total_size: u64,
    pub traffic: Traffic,
}

impl SyncReport {
    pub fn is_partial(&self) -> bool {
        !self.conflicts.is_empty() || !self.deferred.is_empty()
    }
}

/// Why a sync failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    WorkingCopy(#[from] WorkingCopyError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("the server's journal does not fit the working copy: {0}")]
    Journal(String),
    #[error("{path}: {reason}")]
    Local { path: String, reason: String },
}

impl SyncError {
    pub fn local(path: impl std::fmt::Display, e: impl std::fmt::Display) -> SyncError {
        SyncError::Local {
            path: path.to_string(),
            reason: e.to_string(),
        }
    }

    pub fn is_unreachable(&self) -> bool {
        matches!(self, SyncError::Transport(t) if t.is_unreachable())
    }

    /// The server refused our credentials (401 or 403).
    pub fn is_auth(&self) -> bool {
        matches!(self, SyncError::Transport(t) if t.is_auth())
    }
}
