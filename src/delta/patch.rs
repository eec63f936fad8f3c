//! Applying a delta to a base, streaming the result to a writer.
//!
//! The delta and the base are slices (usually mapped files); the output goes
//! straight to its writer, so patching a file of any size takes no more heap
//! than a write buffer.

use std::io::Write;

use intersync_protocol::{DeltaCommand, DeltaReader};

use super::Error;
use super::diff::DeltaStats;

/// Applies `delta` to `base`, writing at most `max_output` bytes to `out`.
///
/// # Security
/// `delta` may come from anyone. Every command is checked before it acts:
/// copies must lie inside `base`, and output past `max_output` (the size the
/// sender announced, or a caller's bound) stops the patch, so a tiny delta
/// cannot expand without limit. A delta that applies cleanly can still
/// produce the wrong bytes; callers verify the result against its version.
pub fn apply(
    base: &[u8],
    delta: &[u8],
    out: &mut impl Write,
    max_output: u64,
) -> Result<DeltaStats, Error> {
    let mut stats = DeltaStats {
        delta_bytes: delta.len() as u64,
        ..DeltaStats::default()
    };
    let mut written = 0u64;
    for command in DeltaReader::new(delta)? {
        let (at, command) = command?;
        let (bytes, is_literal) = match command {
            DeltaCommand::Literal(bytes) => (bytes, true),
            DeltaCommand::Copy { offset, len } => {
                let range = offset
                    .checked_add(len)
                    .filter(|&end| end <= base.len() as u64)
                    .map(|end| &base[offset as usize..end as usize]);
                let Some(bytes) = range else {
                    return Err(Error::CopyOutOfBounds {
                        delta_offset: at,
                        copy_offset: offset,
                        len,
                        base_len: base.len() as u64,
                    });
                };
                (bytes, false)
            }
        };
        written += bytes.len() as u64;
        if written > max_output {
            return Err(Error::OutputTooLarge {
                delta_offset: at,
                limit: max_output,
            });
        }
        out.write_all(bytes).map_err(Error::Write)?;
        if is_literal {
            stats.literal_bytes += bytes.len() as u64;
        } else {
            stats.matched_bytes += bytes.len() as u64;
        }
    }
    Ok(stats)
}
