//! Wire and on-disk formats of InterSync, with no I/O beyond byte slices,
//! `std::io::Read` and `std::io::Write`.
//!
//! - [`signature`]: librsync signature files (four formats, as `rdiff` writes them).
//! - [`delta`]: librsync delta files, decoded command by command and encoded.
//! - [`version`]: a file version, the BLAKE3 hash of its content, and its ETag form.
//! - [`path`]: paths inside a tree, which cannot escape it.
//! - [`kml`]: the modification log's segments and records.
//! - [`byteranges`]: multipart/byteranges answers to multi-range GETs.
//! - [`refine`]: the second round of a multi-round delta (copies, gaps and a
//!   fine signature of the gaps).
//! - [`api`]: the HTTP API's documents, header names and media types.
//! - [`batch`]: `POST /.intersync/ops`, batches of writes without content.
//! - [`fetch`]: `POST /.intersync/fetch`, many files in one request and
//!   their contents in one stream.
//! - [`push`]: `POST /.intersync/push`, many files written in one request.
//! - [`pack`]: packs, many small files' versions in one immutable file.
//! - [`varint`]: the LEB128 integers of the patch and fetch formats.
//!
//! Everything here parses bytes that may come from the network. Parsers return
//! typed errors that name what was wrong and where; none panics, and none
//! allocates more than a small multiple of its input.

pub mod api;
pub mod batch;
pub mod byteranges;
pub mod delta;
pub mod fetch;
pub mod kml;
pub mod pack;
pub mod path;
pub mod push;
pub mod refine;
pub mod signature;
pub mod varint;
pub mod version;

pub use batch::{Batch, BatchOp, BatchResult, OpResult};
pub use delta::{DELTA_MAGIC, DeltaCommand, DeltaError, DeltaReader, DeltaWriter};
pub use kml::{KmlError, KmlRecord, NodeId, Op};
pub use path::{PathError, TreePath};
pub use signature::{SignatureError, SignatureFormat, SignatureHeader, SignatureRef};
pub use version::{Version, VersionParseError};

#[cfg(test)]
mod golden;
