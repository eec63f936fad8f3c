//! Several rounds for a large file the server cannot patch
//! (`delta::refine`): a coarse signature up; copies, gaps and a fine
//! signature of the gaps down; the fine blocks found here; the rest of the
//! gaps by ranges. [`last_round`] is shared with the static path's levels.

use std::path::Path;

use intersync_protocol::Version;
use intersync_protocol::refine::RefineAnswer;

use super::delta::{install_delta, signed_base};
use super::ranges::{RANGES_A_REQUEST_SMART, fetch_ranges};
use super::{HashingWriter, Wanted, install_checked};
use crate::client::SyncError;
use crate::delta::{self, DeltaStats, MappedFile};
use crate::install::PendingFile;
use crate::transport::{Refined, Remote};

pub async fn fetch(
    remote: &impl Remote,
    dest: &Path,
    want: &Wanted<'_>,
) -> Result<(Version, DeltaStats), SyncError> {
    let (base, sig, mut spool) = signed_base(dest, delta::refine::coarse_options)?;
    let answer = match remote
        .refine(want.path, sig.into_bytes(), &mut spool)
        .await?
    {
        Refined::Delta(answer) => return install_delta(base, &spool, answer, dest, want),
        Refined::Answer { .. } => MappedFile::map(&spool).map_err(|e| SyncError::local(dest, e))?,
    };
    let answer =
        RefineAnswer::parse(&answer, base.len() as u64).map_err(|e| SyncError::local(dest, e))?;
    last_round(remote, &answer, base, dest, want, RANGES_A_REQUEST_SMART).await
}

/// The last round of a multi-round delta, on either path: finds the
/// answer's fine blocks in `base` (the copy at `dest`), fetches the rest of
/// the gaps, `per_request` ranges a request, and installs the result if it
/// has the version announced.
pub(super) async fn last_round(
    remote: &impl Remote,
    answer: &RefineAnswer<'_>,
    base: MappedFile,
    dest: &Path,
    want: &Wanted<'_>,
    per_request: usize,
) -> Result<(Version, DeltaStats), SyncError> {
    let local = |e| SyncError::local(dest, e);
    let found = delta::refine::find(answer, &base);
    let missing = found.missing(answer);
    let fetched = fetch_ranges(remote, want.path, answer.version, &missing, per_request).await?;
    let mut out = PendingFile::create(dest).map_err(local)?;
    let mut hashing = HashingWriter::new(&mut out);
    let stats = found
        .assemble(answer, &base, &missing, &fetched, &mut hashing)
        .map_err(local)?;
    let got = hashing.version();
    drop(base);
    install_checked(out, got, answer.version, answer.size, dest, want)?;
    Ok((got, stats))
}
