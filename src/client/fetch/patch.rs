//! The second rung: the copy here is the version last synced, which the
//! server keeps: the exact patch between the two named versions
//! (`GET /.intersync/patch/FROM/TO`), with no signature at all.

use std::fs::File;
use std::path::Path;

use intersync_protocol::Version;

use super::{HashingWriter, Wanted, install_checked, spool_beside};
use crate::client::SyncError;
use crate::delta::{self, MappedFile};
use crate::install::PendingFile;
use crate::transport::Remote;

/// Updates `dest`, which holds version `from`, by the server's patch to
/// `want`; the patch's length, or `None` when the server has none.
pub async fn fetch(
    remote: &impl Remote,
    dest: &Path,
    from: Version,
    want: &Wanted<'_>,
) -> Result<Option<u64>, SyncError> {
    let local = |e| SyncError::local(dest, e);
    let mut spool = spool_beside(dest)?;
    let Some(size) = remote.patch(from, want.version, &mut spool).await? else {
        return Ok(None);
    };
    let patch = MappedFile::map(&spool).map_err(local)?;
    let file = File::open(dest).map_err(local)?;
    let base = MappedFile::map(&file).map_err(local)?;
    let mut out = PendingFile::create(dest).map_err(local)?;
    let mut hashing = HashingWriter::new(&mut out);
    delta::zpatch::decode(&base, &patch, &mut hashing, size)
        .map_err(|e| SyncError::local(dest, e))?;
    let got = hashing.version();
    drop(base);
    // Content of another size has another version: one check covers both.
    install_checked(out, got, want.version, size, dest, want)?;
    Ok(Some(patch.len() as u64))
}
