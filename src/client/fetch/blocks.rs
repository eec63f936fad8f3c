//! The static path in one round (zsync's direction): the new version's
//! signature, the rolling checksum over the copy here, and only the
//! missing blocks by ranged GETs, adjacent blocks merged into one range.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::ops::Range;
use std::path::Path;

use intersync_protocol::Version;

use super::ranges::{RANGES_A_REQUEST, fetch_ranges};
use super::{HashingWriter, Wanted, install_checked};
use crate::client::{LocalError, SyncError};
use crate::delta::matcher::BlockIndex;
use crate::delta::{DeltaStats, MappedFile, Signature};
use crate::install::PendingFile;
use crate::transport::Remote;
use intersync_protocol::SignatureRef;

pub async fn fetch(
    remote: &impl Remote,
    dest: &Path,
    want: &Wanted<'_>,
) -> Result<(Version, DeltaStats), SyncError> {
    let local = |e| SyncError::local(dest, e);
    let sig_bytes = remote.signature(want.version).await?;
    let sig =
        Signature::from_bytes(sig_bytes.to_vec()).map_err(|e| SyncError::local(want.path, e))?;
    let view = sig.view();
    let block_len = u64::from(view.header.block_len);
    let blocks = view.block_count();
    if blocks as u64 != want.size.div_ceil(block_len) {
        return Err(SyncError::local(
            want.path,
            LocalError::Unfit("the signature"),
        ));
    }
    let file = File::open(dest).map_err(local)?;
    let base = MappedFile::map(&file).map_err(local)?;
    let source = sources(view, want.size, &base);
    let missing = missing(&source, block_len, want.size);
    let fetched = fetch_ranges(remote, want.path, want.version, &missing, RANGES_A_REQUEST).await?;
    let mut fetched = fetched.into_iter();
    let mut out = PendingFile::create(dest).map_err(local)?;
    let mut hashing = HashingWriter::new(&mut out);
    let mut stats = DeltaStats::default();
    let mut b = 0usize;
    while b < blocks {
        let start = b as u64 * block_len;
        let bytes: &[u8];
        let owned;
        if let Some(from) = source[b] {
            let len = want.size.min(start + block_len) - start;
            bytes = &base[from as usize..(from + len) as usize];
            stats.matched_bytes += len;
        } else {
            owned = fetched
                .next()
                .expect("a range for every run of missing blocks");
            bytes = &owned;
            stats.literal_bytes += bytes.len() as u64;
        }
        hashing.write_all(bytes).map_err(local)?;
        b = (start + bytes.len() as u64).div_ceil(block_len) as usize;
    }
    let got = hashing.version();
    drop(base);
    install_checked(out, got, want.version, want.size, dest, want)?;
    Ok((got, stats))
}

/// Where each block of the new version (`size` bytes) can be copied from
/// in `base`, by offset.
fn sources(view: SignatureRef<'_>, size: u64, base: &[u8]) -> Vec<Option<u64>> {
    let block_len = u64::from(view.header.block_len);
    let mut source: Vec<Option<u64>> = vec![None; view.block_count()];
    let mut by_sum: HashMap<(u32, Vec<u8>), u64> = HashMap::new();
    BlockIndex::new(view).scan(base, |m| {
        let b = m.block as usize;
        let expected = size.min((b as u64 + 1) * block_len) - b as u64 * block_len;
        if u64::from(m.len) == expected && source[b].is_none() {
            source[b] = Some(m.data_offset);
            // Only whole blocks stand in for other blocks with the same sums.
            if u64::from(m.len) == block_len {
                let (weak, strong) = view.block(b);
                by_sum.insert((weak, strong.to_vec()), m.data_offset);
            }
        }
    });
    // Identical blocks (runs of zeros, repeated records) share one source.
    for (b, slot) in source.iter_mut().enumerate() {
        if slot.is_none() && (b as u64 + 1) * block_len <= size {
            let (weak, strong) = view.block(b);
            *slot = by_sum.get(&(weak, strong.to_vec())).copied();
        }
    }
    source
}

/// The blocks with no source, adjacent ones merged into one range.
fn missing(source: &[Option<u64>], block_len: u64, size: u64) -> Vec<Range<u64>> {
    let mut missing: Vec<Range<u64>> = Vec::new();
    for (b, slot) in source.iter().enumerate() {
        if slot.is_none() {
            let (start, end) = (b as u64 * block_len, size.min((b as u64 + 1) * block_len));
            match missing.last_mut() {
                Some(last) if last.end == start => last.end = end,
                _ => missing.push(start..end),
            }
        }
    }
    missing
}
