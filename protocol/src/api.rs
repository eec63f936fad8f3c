//! Types and names of the HTTP API (see `SPEC.md`): the head document,
//! header names and media types.

use serde::{Deserialize, Serialize};

/// Format version of the head document and the KML.
pub const FORMAT_VERSION: u32 = 1;

/// Request header: the version a write must produce (64 hex digits).
pub const HEADER_RESULT_VERSION: &str = "x-intersync-version";
/// Request header: the size a delta write must produce.
pub const HEADER_RESULT_SIZE: &str = "x-intersync-size";
/// Request header: the mtime (ns since the epoch) a written file takes.
pub const HEADER_MTIME: &str = "x-intersync-mtime";
/// Request header: the permission bits (octal) a written file takes.
pub const HEADER_MODE: &str = "x-intersync-mode";
/// Response header: the node id of the server (on every answer but a
/// head's, whose body says it as `server_id`).
pub const HEADER_SERVER_ID: &str = "x-intersync-server";
/// Media type of a librsync delta body.
pub const MEDIA_DELTA: &str = "application/x-librsync-delta";
/// Media type of a patch: one zstd frame whose reference prefix is the
/// base version's content (`GET /.intersync/patch/FROM/TO`).
pub const MEDIA_PATCH: &str = "application/x-intersync-patch";
/// Media type of a refine answer (`intersync_protocol::refine`), the second
/// round of a multi-round delta (`POST /.intersync/refine/PATH`).
pub const MEDIA_REFINE: &str = "application/x-intersync-refine";
/// Media type of a librsync signature body.
pub const MEDIA_SIGNATURE: &str = "application/x-librsync-signature";

/// `GET /.intersync/head`: where the journal stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub format: u32,
    /// The server's node id, 16 hex digits.
    pub server_id: String,
    /// Sequence number of the newest record (0: none yet).
    pub latest_seq: u64,
    /// The segments still kept, oldest first; the last is open and grows.
    pub segments: Vec<SegmentRef>,
    /// The newest checkpoint, if any (left out when none: every sync reads
    /// a head, and `"checkpoint":null` is 18 of its bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<CheckpointRef>,
    /// Written by `intersync export` for a plain web server: no smart
    /// endpoints (deltas, writes), signatures as files, ranges for blocks.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub static_export: bool,
    /// The server keeps the versions its clients hold and answers patches
    /// from them (`/.intersync/patch/FROM/TO`). Written only when false
    /// (`"patches": false`), so that the head most servers send, and every
    /// client reads on every sync, carries nothing more for it.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub patches: bool,
    /// The server speaks HTTP/2 in cleartext, on the port this head came
    /// from, to a client that opens with HTTP/2's preface (prior knowledge,
    /// RFC 9113 section 3.4). Over TLS, ALPN says the same for itself.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub http2: bool,
}

/// Where a static export lists its packs (`pack`): a [`PackList`]. Not in
/// the head, which every sync reads: only a client with many files to
/// bring whole reads it.
pub const PACK_LIST: &str = ".intersync/packs/list.json";

/// The packs of a static export, at [`PACK_LIST`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackList {
    pub packs: Vec<PackRef>,
}

/// A pack as the list names it: `/.intersync/packs/<name>`, immutable,
/// read by range.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackRef {
    /// File name under `/.intersync/packs/`.
    pub name: String,
    pub length: u64,
    /// Bytes of its index, at its start.
    pub index_length: u64,
    /// Files in it, and their bytes (before compression).
    pub files: u64,
    pub bytes: u64,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentRef {
    /// File name under `/.intersync/kml/`.
    pub name: String,
    pub first_seq: u64,
    pub last_seq: u64,
    /// Bytes in the segment now, header included.
    pub length: u64,
    /// A sealed segment never changes again.
    pub sealed: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRef {
    /// File name under `/.intersync/checkpoints/`.
    pub name: String,
    /// The checkpoint is the tree after this record.
    pub seq: u64,
    pub length: u64,
}
