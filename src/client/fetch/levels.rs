//! The static path in rounds, for large files: the version's coarse
//! signature whole, then the records of its fine signature that cover the
//! coarse blocks the copy here lacks, by ranges, then the bytes still
//! missing (`delta::refine::static_levels`).

use std::fs::File;
use std::ops::Range;
use std::path::Path;

use intersync_protocol::Version;
use intersync_protocol::refine::RefineAnswer;
use intersync_protocol::signature::SIGNATURE_HEADER_LEN;

use super::Wanted;
use super::ranges::RANGES_A_REQUEST;
use super::refine::last_round;
use crate::client::{LocalError, SyncError};
use crate::delta::{self, DeltaStats, MappedFile, Signature};
use crate::transport::Remote;

/// `None` when the export has no levels for the version.
pub async fn fetch(
    remote: &impl Remote,
    dest: &Path,
    want: &Wanted<'_>,
) -> Result<Option<(Version, DeltaStats)>, SyncError> {
    let unfit = |what| SyncError::local(want.path, LocalError::Unfit(what));
    let Some(coarse) = remote.coarse_signature(want.version).await? else {
        return Ok(None);
    };
    let coarse =
        Signature::from_bytes(coarse.to_vec()).map_err(|e| SyncError::local(want.path, e))?;
    let coarse_len = u64::from(coarse.header().block_len);
    if coarse.header() != delta::refine::coarse_options(want.size).header()
        || coarse.view().block_count() as u64 != want.size.div_ceil(coarse_len)
    {
        return Err(unfit("the coarse signature"));
    }
    let file = File::open(dest).map_err(|e| SyncError::local(dest, e))?;
    let base = MappedFile::map(&file).map_err(|e| SyncError::local(dest, e))?;
    let segments = delta::refine::static_segments(coarse.view(), want.size, &base);
    let options = delta::refine::static_fine_options(want.size);
    let header = options.header();
    let records = delta::refine::static_records(&segments, want.size, options)
        .ok_or_else(|| unfit("the fine signature"))?;
    let fine = if records.is_empty() {
        // No record is worth a round: the gaps are fetched as they are.
        header.to_bytes().to_vec()
    } else {
        let fine = fetch_fine_records(remote, want.version, &records, header.record_len()).await?;
        if fine.get(..SIGNATURE_HEADER_LEN) != Some(&header.to_bytes()[..]) {
            return Err(unfit("the fine signature's header"));
        }
        fine
    };
    let fine = Signature::from_bytes(fine).map_err(|e| SyncError::local(want.path, e))?;
    let answer = RefineAnswer {
        version: want.version,
        size: want.size,
        segments,
        fine: fine.view(),
    };
    last_round(remote, &answer, base, dest, want, RANGES_A_REQUEST)
        .await
        .map(Some)
}

/// The header of a static fine signature and its records numbered
/// `records` (in order, `record_len` bytes each), fetched by ranges, runs of
/// records in one range: a signature of those records alone.
async fn fetch_fine_records(
    remote: &impl Remote,
    version: Version,
    records: &[u64],
    record_len: usize,
) -> Result<Vec<u8>, SyncError> {
    let (head_len, record_len) = (SIGNATURE_HEADER_LEN as u64, record_len as u64);
    let mut ranges: Vec<Range<u64>> = Vec::with_capacity(records.len() + 1);
    ranges.push(0..head_len);
    for &i in records {
        let r = head_len + i * record_len..head_len + (i + 1) * record_len;
        match ranges.last_mut() {
            Some(last) if last.end == r.start => last.end = r.end,
            _ => ranges.push(r),
        }
    }
    let mut fine = Vec::with_capacity((head_len + records.len() as u64 * record_len) as usize);
    for chunk in ranges.chunks(RANGES_A_REQUEST) {
        for part in remote.fine_signature_ranges(version, chunk).await? {
            fine.extend_from_slice(&part);
        }
    }
    Ok(fine)
}
