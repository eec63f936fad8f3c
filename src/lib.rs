//! InterSync keeps directory trees in sync over HTTP(S), moving only the
//! blocks that changed.
//!
//! The main parts:
//! - [`beneath`]: opening a tree's paths so that no symbolic link leads out.
//! - [`client`]: a working copy kept in sync both ways: pull, push, conflicts.
//! - [`delta`]: signatures, deltas and patches in librsync's formats, and
//!   BLAKE3 file versions; every transfer goes through it.
//! - [`export`]: the journaled tree: a folder, its KML and its index, which
//!   the server serves and presto journals into.
//! - [`fuse`]: presto, the journaling passthrough filesystem.
//! - [`install`]: putting files in place atomically, never half-written.
//! - [`kml`]: the modification log on disk: durable appends, segments,
//!   checkpoints, recovery from torn writes.
//! - [`server`]: `intersync serve`, the HTTP(S) service of an export.
//! - [`transfer`]: an rsync command line carried out with rsync's semantics.
//! - [`transport`]: where a client's bytes come from: one trait, the smart HTTP server first.
//! - [`tree`]: the state of a tree as the KML describes it, and scanning folders for changes.
//! - [`versions`]: recent versions kept by content, for exact patches from
//!   them (the server's of what clients hold, a client's of what it synced).
//! - [`monitor`]: progress counters the library advances and front ends read.
//!
//! Wire and on-disk formats live in the `intersync-protocol` crate, and what
//! exists only to match rsync in `intersync-compat`. The library never
//! prints; the `intersync` binary renders what it returns. How the parts
//! fit, and one file's journey through them: `docs/ARCHITECTURE.md`.

pub mod beneath;
#[cfg(feature = "net")]
pub mod client;
pub mod delta;
#[cfg(feature = "net")]
pub mod export;
#[cfg(feature = "net")]
pub mod fuse;
pub mod install;
pub mod kml;
pub mod monitor;
#[cfg(feature = "net")]
pub mod server;
#[cfg(feature = "net")]
pub mod transfer;
#[cfg(feature = "net")]
pub mod transport;
pub mod tree;
pub mod versions;
