//! The delta engine: signatures, deltas and patches in librsync's formats,
//! over mapped files, and whole-file BLAKE3 versions.
//!
//! - [`signature`]: computing signatures and the block-size policy.
//! - [`matcher`]: finding a signature's blocks in other data (both the rsync
//!   and the zsync direction use it).
//! - [`diff`]: writing deltas; [`patch`]: applying them with limits.
//! - [`refine`]: multi-round deltas for a base the server never saw.
//! - [`zpatch`]: exact deltas between two versions one side holds (copies
//!   and a zstd frame of literals with the old version as reference prefix).
//! - [`files`]: the same over files, as the `signature`, `delta` and `patch`
//!   commands use them, with outputs installed atomically.
//!
//! Formats and their parsers live in `intersync-protocol`; this module trusts
//! a signature or delta only after that crate has accepted it, and trusts a
//! patched result only after its version has been checked.

pub mod diff;
pub mod files;
pub mod guard;
pub mod matcher;
pub mod patch;
pub mod refine;
pub mod signature;
pub mod strong;
pub mod weak;
pub mod zpatch;

use std::io;
use std::path::PathBuf;

use intersync_protocol::{SignatureError, Version};
use thiserror::Error;

pub use diff::{DeltaStats, write_delta, write_delta_until};
pub use files::{MappedFile, PatchLimits, delta_file, patch_file, signature_file};
pub use patch::apply;
pub use signature::{Signature, SignatureOptions};

/// Errors of the delta engine.
#[derive(Debug, Error)]
pub enum Error {
    #[error("bad signature")]
    Signature(#[from] SignatureError),
    #[error("bad signature options: {0}")]
    Options(SignatureError),
    #[error("bad delta")]
    Delta(#[from] intersync_protocol::DeltaError),
    #[error(
        "bad delta: the copy at offset {delta_offset} reads {len} bytes from {copy_offset}, \
         past the end of the {base_len}-byte base"
    )]
    CopyOutOfBounds {
        delta_offset: usize,
        copy_offset: u64,
        len: u64,
        base_len: u64,
    },
    #[error("bad delta: output passes its limit of {limit} bytes at offset {delta_offset}")]
    OutputTooLarge { delta_offset: usize, limit: u64 },
    #[error(transparent)]
    Patch(#[from] zpatch::PatchError),
    #[error("result has version {actual}, expected {expected}")]
    WrongVersion { expected: Version, actual: Version },
    #[error("writing output: {0}")]
    Write(io::Error),
    #[error("{}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

/// How a caller should treat an [`enum@Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The input was malformed or produced the wrong result: not worth retrying as is.
    Corrupt,
    /// Reading or writing a file failed.
    Io,
    /// The caller asked for something impossible.
    Usage,
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Signature(_)
            | Error::Delta(_)
            | Error::CopyOutOfBounds { .. }
            | Error::OutputTooLarge { .. }
            | Error::WrongVersion { .. } => ErrorKind::Corrupt,
            Error::Patch(zpatch::PatchError::Write(_)) => ErrorKind::Io,
            Error::Patch(_) => ErrorKind::Corrupt,
            Error::Write(_) | Error::Io { .. } => ErrorKind::Io,
            Error::Options(_) => ErrorKind::Usage,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}

#[cfg(test)]
mod tests;
