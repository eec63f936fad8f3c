//! One round of the delta algorithm against the copy here: its signature
//! up (`POST /.intersync/delta/PATH`), a librsync delta down, applied to
//! the copy, the result installed only if it is the version announced.

use std::fs::File;
use std::path::Path;

use intersync_protocol::Version;
use intersync_protocol::signature::SignatureFormat;

use super::{HashingWriter, Wanted, install_checked, spool_beside};
use crate::client::SyncError;
use crate::delta::{self, DeltaStats, MappedFile, Signature, SignatureOptions};
use crate::install::PendingFile;
use crate::transport::{Remote, RemoteDelta};

pub async fn fetch(
    remote: &impl Remote,
    dest: &Path,
    want: &Wanted<'_>,
) -> Result<(Version, DeltaStats), SyncError> {
    let (base, sig, mut spool) = signed_base(dest, |len| {
        SignatureOptions::for_len(len, SignatureFormat::Md4Rollsum)
    })?;
    let answer = remote
        .delta(want.path, sig.into_bytes(), &mut spool)
        .await?;
    install_delta(base, &spool, answer, dest, want)
}

/// The local copy at `dest` mapped, its signature with the options
/// `options` gives for its length, and a temporary file in its folder for
/// the answer to land in.
pub(super) fn signed_base(
    dest: &Path,
    options: impl FnOnce(u64) -> SignatureOptions,
) -> Result<(MappedFile, Signature, File), SyncError> {
    let local = |e| SyncError::local(dest, e);
    let file = File::open(dest).map_err(local)?;
    let base = MappedFile::map(&file).map_err(local)?;
    let (sig, _) = Signature::calculate(&base, options(base.len() as u64));
    Ok((base, sig, spool_beside(dest)?))
}

/// Applies the delta spooled in `spool` to `base` and installs the result
/// at `dest` if it has the version the server said.
pub(super) fn install_delta(
    base: MappedFile,
    spool: &File,
    answer: RemoteDelta,
    dest: &Path,
    want: &Wanted<'_>,
) -> Result<(Version, DeltaStats), SyncError> {
    let local = |e| SyncError::local(dest, e);
    let delta = MappedFile::map(spool).map_err(local)?;
    let mut out = PendingFile::create(dest).map_err(local)?;
    let mut hashing = HashingWriter::new(&mut out);
    let stats = delta::apply(&base, &delta, &mut hashing, answer.size)
        .map_err(|e| SyncError::local(dest, e))?;
    let got = hashing.version();
    drop(base);
    install_checked(out, got, answer.version, answer.size, dest, want)?;
    Ok((got, stats))
}
