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
//!
//! A working copy mounted through presto ([`mount`]) pulls lazily: a file
//! with nothing local to build on becomes a *placeholder*, in the base but
//! not on disk, which every scan of the working copy takes as present (so
//! it is never pushed as a deletion) and the mount fetches when it is first
//! opened. A plain `sync` of such a working copy fetches its placeholders.

mod fetch;
mod follow;
pub mod mount;
mod pull;
mod push;
pub mod reconcile;
mod round;
mod state_db;
pub mod upload;
pub mod watch;
pub mod working_copy;

pub use fetch::fetch_one;
pub use follow::export_tree;
pub use round::sync;

use intersync_protocol::TreePath;

use crate::transport::{Traffic, TransportError};
pub use working_copy::{Conflict, WorkingCopy, WorkingCopyError};

/// What a sync round does.
#[derive(Clone, Copy, Debug)]
pub struct SyncOptions {
    pub pull: bool,
    pub push: bool,
    /// Read only with cacheable GETs (the static path: signatures and
    /// block ranges of immutable versions), never POST for a delta: for a
    /// source behind an HTTP cache or CDN, so that one fetch serves many.
    pub cacheable_reads: bool,
    /// Leave files that have no local copy to build on as placeholders, to
    /// be fetched when first opened (a mounted working copy). Without it,
    /// placeholders left by a mount are fetched.
    pub lazy: bool,
    /// Keep the versions synced of files of at least 64 KiB under
    /// `.intersync/versions/`, within this budget, so that edits made here
    /// are pushed as exact patches from them (`None`: keep none).
    pub keep_versions: Option<crate::versions::Budget>,
    /// Requests in flight at once where the source cannot batch (a static
    /// export, reads through a cache): small whole files by so many GETs
    /// over as many keep-alive connections.
    pub connections: usize,
}

/// Requests in flight at once by default, where the source cannot batch.
pub const CONNECTIONS: usize = 8;

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            pull: true,
            push: true,
            cacheable_reads: false,
            lazy: false,
            keep_versions: Some(Default::default()),
            connections: CONNECTIONS,
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
    /// Files updated by an exact patch from the version last synced.
    pub files_patched: u64,
    pub files_delta: u64,
    /// Files rebuilt from local blocks and ranged GETs (a static source).
    pub files_blocks: u64,
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
    /// Adds what another part of the same round did (its traffic aside:
    /// the round reads that from the remote).
    pub fn absorb(&mut self, other: SyncReport) {
        self.pulled.extend(other.pulled);
        self.pushed.extend(other.pushed);
        self.conflicts.extend(other.conflicts);
        self.deferred.extend(other.deferred);
        self.files_local += other.files_local;
        self.files_patched += other.files_patched;
        self.files_delta += other.files_delta;
        self.files_blocks += other.files_blocks;
        self.files_whole += other.files_whole;
        self.literal_bytes += other.literal_bytes;
        self.matched_bytes += other.matched_bytes;
        self.full_fetch_bytes += other.full_fetch_bytes;
        self.files += other.files;
        self.total_size += other.total_size;
    }

    pub fn is_partial(&self) -> bool {
        !self.conflicts.is_empty() || !self.deferred.is_empty()
    }

    /// rsync's `--stats` block for this sync, and the bytes a full fetch
    /// would have moved.
    pub fn rsync_stats(&self, elapsed: std::time::Duration) -> String {
        let t = self.traffic;
        let moved = t.sent_bytes + t.received_bytes;
        let transferred = self.files_local
            + self.files_patched
            + self.files_delta
            + self.files_blocks
            + self.files_whole
            + self.pushed.len() as u64;
        format!(
            "\nNumber of files: {}\n\
             Number of regular files transferred: {transferred}\n\
             Files by way: {} local copies, {} patches, {} deltas, {} by blocks and ranges, {} whole\n\
             Total file size: {} bytes\n\
             Total transferred file size: {} bytes\n\
             Literal data: {} bytes\n\
             Matched data: {} bytes\n\
             Total bytes sent: {}\n\
             Total bytes received: {}\n\
             HTTP requests: {}\n\n\
             sent {} bytes  received {} bytes  {:.2} bytes/sec\n\
             total size is {}  speedup is {:.2}\n\
             A full fetch would have moved {} bytes\n",
            self.files,
            self.files_local,
            self.files_patched,
            self.files_delta,
            self.files_blocks,
            self.files_whole,
            self.total_size,
            self.full_fetch_bytes,
            self.literal_bytes,
            self.matched_bytes,
            t.sent_bytes,
            t.received_bytes,
            t.requests,
            t.sent_bytes,
            t.received_bytes,
            moved as f64 / elapsed.as_secs_f64().max(1e-3),
            self.total_size,
            self.total_size as f64 / moved.max(1) as f64,
            self.full_fetch_bytes,
        )
    }
}

/// Why a sync failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    WorkingCopy(#[from] WorkingCopyError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("the server's journal does not fit the working copy")]
    Journal(#[from] BadJournal),
    /// Something here, at `path` (a path of the tree, or of the disk).
    #[error("{}", path.display())]
    Local {
        path: std::path::PathBuf,
        source: LocalError,
    },
}

/// What went wrong with a file here.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Delta(#[from] crate::delta::Error),
    #[error(transparent)]
    Patch(#[from] crate::delta::zpatch::PatchError),
    #[error(transparent)]
    Signature(#[from] intersync_protocol::SignatureError),
    #[error(transparent)]
    Refine(#[from] intersync_protocol::refine::RefineError),
    #[error(transparent)]
    Path(#[from] intersync_protocol::PathError),
    #[error(transparent)]
    Watch(#[from] notify::Error),
    /// What was built here is not the version the server announced.
    #[error("the update gave {got:?}, not {want:?}")]
    NotTheVersion {
        got: intersync_protocol::Version,
        want: intersync_protocol::Version,
    },
    #[error("changed while being copied")]
    ChangedWhileCopied,
    #[error("the download never matched its version")]
    NeverVerified,
    /// A signature, or a level of one, that cannot describe the file.
    #[error("{0} does not fit the file")]
    Unfit(&'static str),
    #[error("not a file")]
    NotAFile,
}

/// How the server's journal fails to describe a tree this working copy can follow.
#[derive(Debug, thiserror::Error)]
pub enum BadJournal {
    #[error("no head document")]
    NoHead,
    #[error("checkpoint {name}")]
    Checkpoint {
        name: String,
        source: intersync_protocol::KmlError,
    },
    #[error("segment {name}")]
    Segment {
        name: String,
        source: intersync_protocol::KmlError,
    },
    #[error(transparent)]
    Replay(#[from] crate::tree::TreeError),
    #[error("record {found} follows {last}")]
    OutOfOrder { found: u64, last: u64 },
    #[error(
        "the server dropped the journal past sequence {seq} and has no checkpoint to start from"
    )]
    Dropped { seq: u64 },
}

impl SyncError {
    /// A failure at `path` here.
    pub fn local(path: impl AsRef<std::path::Path>, e: impl Into<LocalError>) -> SyncError {
        SyncError::Local {
            path: path.as_ref().to_owned(),
            source: e.into(),
        }
    }

    /// The disk here is full (or the user's quota is): somewhere in the
    /// chain of causes is `ENOSPC` or `EDQUOT`.
    pub fn is_disk_full(&self) -> bool {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = cause {
            if let Some(io) = e.downcast_ref::<std::io::Error>()
                && (io.kind() == std::io::ErrorKind::StorageFull
                    || io.kind() == std::io::ErrorKind::QuotaExceeded
                    || matches!(io.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)))
            {
                return true;
            }
            cause = e.source();
        }
        false
    }

    pub fn is_unreachable(&self) -> bool {
        matches!(self, SyncError::Transport(t) if t.is_unreachable())
    }

    /// The TLS handshake failed (see [`TransportError::Tls`]).
    pub fn is_tls(&self) -> bool {
        matches!(self, SyncError::Transport(t) if t.is_tls())
    }

    /// The server refused our credentials (401 or 403).
    pub fn is_auth(&self) -> bool {
        matches!(self, SyncError::Transport(t) if t.is_auth())
    }
}
