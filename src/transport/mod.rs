//! Where a client's bytes come from and go to. One trait, [`Remote`], for
//! every kind of source (the smart InterSync server now; a static web
//! server and a local folder later), so that the sync logic does not care,
//! and so tests can count exactly what crossed the wire.

mod counted;
pub mod get;
pub mod http;

use bytes::Bytes;
use intersync_protocol::api::{CheckpointRef, Head, PackList, PackRef, SegmentRef};
use intersync_protocol::batch::{BatchOp, OpResult};
use intersync_protocol::{TreePath, Version};
use thiserror::Error;

pub use http::HttpRemote;

/// The cause of a failed request as the HTTP stack gave it (hyper's errors
/// carry their own causes: a refused connection, a TLS alert).
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// Why a request failed.
#[derive(Debug, Error)]
pub enum TransportError {
    /// No answer at all: the server is down or unreachable. Worth retrying later.
    #[error("cannot reach {url}")]
    Unreachable { url: String, source: Cause },
    /// The TLS handshake failed: which check, in words. Not "offline":
    /// trying again later will not help until something is changed.
    #[error("TLS with {url} failed: {reason}")]
    Tls { url: String, reason: String },
    /// A precondition failed (412): the server's copy changed meanwhile.
    #[error("{what}: the server's copy changed meanwhile")]
    Changed { what: String },
    /// The server refused, with its reason.
    #[error("{what}: server answered {status}: {reason}")]
    Refused {
        what: String,
        status: u16,
        reason: String,
    },
    /// The answer is not what was asked for, or not what the protocol says.
    #[error("{what}: {reason}")]
    BadAnswer { what: String, reason: String },
    /// The answer could not be read as what it says it is.
    #[error("{what}: the answer is malformed")]
    Malformed { what: String, source: Cause },
    /// The answer broke off (a truncated body). Whatever arrived is kept
    /// where it can be resumed; unlike [`TransportError::Unreachable`], the
    /// server did answer, so other ways to the same bytes are worth a try.
    #[error("{what}: the answer broke off")]
    Interrupted { what: String, source: Cause },
    /// Writing what arrived here failed.
    #[error("{what}: writing it here")]
    Local {
        what: String,
        source: std::io::Error,
    },
    #[error("bad URL {url}: {reason}")]
    BadUrl { url: String, reason: String },
}

impl TransportError {
    pub fn is_unreachable(&self) -> bool {
        matches!(self, TransportError::Unreachable { .. })
    }

    /// The server would not take a write now (its copy moved on, or it
    /// refused for a reason other than authority): the write waits for
    /// the next round.
    pub fn waits(&self) -> bool {
        matches!(
            self,
            TransportError::Changed { .. } | TransportError::Refused { .. }
        ) && !self.is_auth()
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, TransportError::Tls { .. })
    }

    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            TransportError::Refused {
                status: 401 | 403,
                ..
            }
        )
    }
}

/// A delta from the server, written to a file: what it must produce.
pub struct RemoteDelta {
    /// Bytes of (decompressed) delta written.
    pub delta_len: u64,
    pub version: Version,
    pub size: u64,
}

/// How a write's body gives the result from its base.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeltaFormat {
    /// A librsync delta against the server's signature of the base.
    Librsync,
    /// A patch from the base's content (`delta::zpatch`).
    Patch,
}

/// What a refine request brought.
pub enum Refined {
    /// The server answered a delta against the coarse signature.
    Delta(RemoteDelta),
    /// A refine answer of `len` bytes.
    Answer { len: u64 },
}

/// A write the server acknowledged.
#[derive(Debug, Clone, Copy)]
pub struct Written {
    pub version: Version,
}

/// Counters of what crossed the wire, as a monitor or `--stats` shows them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub requests: u64,
    /// Request lines, headers and bodies sent.
    pub sent_bytes: u64,
    /// Status lines, headers and bodies received.
    pub received_bytes: u64,
}

/// Attributes a written file takes on the server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileMeta {
    pub mode: Option<u32>,
    pub mtime_ns: Option<i64>,
}

/// What precondition a write carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// The path must be free (`If-None-Match: *`).
    Absent,
    /// The file must have this version (`If-Match`).
    Version(Version),
}

/// The answer to a fetch of many files, decompressed, a piece at a time.
#[allow(async_fn_in_trait)]
pub trait Pieces {
    /// The next piece; `None` at the end of the answer.
    async fn next(&mut self) -> Result<Option<Bytes>, TransportError>;
}

/// An InterSync source and destination.
#[allow(async_fn_in_trait)]
pub trait Remote {
    /// What [`Remote::fetch_many`] answers with.
    type Pieces<'a>: Pieces
    where
        Self: 'a;
    /// Many files in one request (`intersync_protocol::fetch`): its
    /// answer, a fetch stream. `None` from a server that has no such
    /// request (a static export, an older server).
    async fn fetch_many(&self, request: Bytes) -> Result<Option<Self::Pieces<'_>>, TransportError>;
    /// The head document; `None` when it has not moved past `known_seq`
    /// within `wait_secs` (a long-poll).
    async fn head(
        &self,
        known_seq: Option<u64>,
        wait_secs: u64,
    ) -> Result<Option<Head>, TransportError>;
    /// Bytes of a journal segment from `offset` on (a sealed one read
    /// whole comes compressed, when the server can).
    async fn segment(&self, seg: &SegmentRef, offset: u64) -> Result<Bytes, TransportError>;
    /// A checkpoint, whole (compressed on the way, when the server can).
    async fn checkpoint(&self, cp: &CheckpointRef) -> Result<Bytes, TransportError>;
    /// Appends the file's bytes from `out`'s current length on (a resume),
    /// as long as the file still has `version`; a server that cannot resume
    /// sends it all again, and `out` is rewritten. Returns the bytes received.
    async fn fetch_into(
        &self,
        path: &TreePath,
        version: Version,
        out: &mut std::fs::File,
    ) -> Result<u64, TransportError>;
    /// A delta from the base described by `signature` to the file's
    /// current content, written (decompressed) into `out`, so that a delta
    /// of any size costs no heap.
    async fn delta(
        &self,
        path: &TreePath,
        signature: Vec<u8>,
        out: &mut std::fs::File,
    ) -> Result<RemoteDelta, TransportError>;
    /// The second round of a multi-round delta (`delta::refine`): the
    /// answer to a coarse `signature`, written into `out` as it came, or a
    /// delta (decompressed) when the server found refining not worth it.
    async fn refine(
        &self,
        path: &TreePath,
        signature: Vec<u8>,
        out: &mut std::fs::File,
    ) -> Result<Refined, TransportError>;
    /// The patch from version `from` (held here) to version `to`, written
    /// as it came into `out`; the length of the result it gives. `None`
    /// when the server has no patch between them (it no longer holds
    /// `from`, or cannot make one): the signature path is left.
    async fn patch(
        &self,
        from: Version,
        to: Version,
        out: &mut std::fs::File,
    ) -> Result<Option<u64>, TransportError>;
    /// Bytes `range` of `version` of a file, by a ranged GET. A server that
    /// answers with anything but exactly that range is refused (the caller
    /// falls back).
    async fn range(
        &self,
        path: &TreePath,
        version: Version,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes, TransportError>;
    /// Several ranges of `version` of a file in one request
    /// (multipart/byteranges), in the order asked. Anything but exactly
    /// those ranges is an error.
    async fn ranges(
        &self,
        path: &TreePath,
        version: Version,
        ranges: &[std::ops::Range<u64>],
    ) -> Result<Vec<Bytes>, TransportError>;
    /// A static export's list of packs (`api::PACK_LIST`); `None` when it
    /// has none.
    async fn pack_list(&self) -> Result<Option<PackList>, TransportError>;
    /// Bytes `range` of a pack the list names (its index, or its
    /// contents), by a ranged GET; or the whole pack, when the server
    /// answered with all of it (a cache filling itself does). Anything
    /// else is an error.
    async fn pack_range(
        &self,
        pack: &PackRef,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes, TransportError>;
    /// The server's signature of a version.
    async fn signature(&self, version: Version) -> Result<Bytes, TransportError>;
    /// The static path's coarse signature of a version
    /// (`delta::refine::static_levels`); `None` when the export has none
    /// (a small file, an export written before there were levels, or a
    /// smart server).
    async fn coarse_signature(&self, version: Version) -> Result<Option<Bytes>, TransportError>;
    /// Byte ranges of the static path's fine signature of a version, in the
    /// order asked. Anything but exactly those ranges is an error.
    async fn fine_signature_ranges(
        &self,
        version: Version,
        ranges: &[std::ops::Range<u64>],
    ) -> Result<Vec<Bytes>, TransportError>;
    async fn put_whole(
        &self,
        path: &TreePath,
        body: Bytes,
        expect: Expect,
        result: Version,
        meta: FileMeta,
    ) -> Result<Written, TransportError>;
    /// Writes the file as `delta` (in `format`) against `base`, which the
    /// server's copy must still be.
    async fn put_delta(
        &self,
        path: &TreePath,
        delta: Vec<u8>,
        format: DeltaFormat,
        base: Version,
        result: (Version, u64),
        meta: FileMeta,
    ) -> Result<Written, TransportError>;
    /// A batch of operations without content, applied in order; the
    /// result of each.
    async fn ops(&self, ops: Vec<BatchOp>) -> Result<Vec<OpResult>, TransportError>;
    /// Many files written in one request (`intersync_protocol::push`; the
    /// body a zstd-compressed push stream): the result of each. `None`
    /// from a server that has no such request.
    async fn push_many(&self, body: Bytes) -> Result<Option<Vec<OpResult>>, TransportError>;
    fn traffic(&self) -> Traffic;
    /// Where to count content progress, if anyone is watching.
    fn progress(&self) -> Option<&crate::monitor::Progress> {
        None
    }
}
