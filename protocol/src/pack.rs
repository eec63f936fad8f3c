//! Packs: the small files of a static export (or of a server's tree, for
//! caches in front of it) in a few large immutable files, so that a first
//! clone from a plain web server is a few GETs rather than one a file.
//!
//! A pack is its index followed by one zstd frame of the files' contents,
//! one after another in the index's order (path order when written, so
//! that similar neighbours share zstd's window). The index:
//!
//! ```text
//! magic   8 bytes  "ISPACK1\n"
//! count   u32 BE   entries, at most MAX_ENTRIES
//! entries count x: version prefix (the first 8 bytes of the BLAKE3
//!                  version), size u32 BE (under MAX_ENTRY_SIZE)
//! ```
//!
//! The prefix only says which entry a client may want; every file is
//! checked against its whole version before it is used, so a collision
//! costs a fetch, never a wrong file. The head document lists the packs
//! (`api::PackRef`), and a pack is named by a hash of its bytes.

use thiserror::Error;

use crate::Version;

pub const MAGIC: &[u8; 8] = b"ISPACK1\n";
/// Entries in one pack.
pub const MAX_ENTRIES: u32 = 1 << 20;
/// Files of this size and more are never packed.
pub const MAX_ENTRY_SIZE: u32 = 1 << 20;
const HEADER_LEN: usize = 12;
const ENTRY_LEN: usize = 12;

/// One file of a pack, as its index names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackEntry {
    pub prefix: [u8; 8],
    pub size: u32,
}

impl PackEntry {
    pub fn of(version: &Version, size: u32) -> PackEntry {
        PackEntry {
            prefix: prefix(version),
            size,
        }
    }
}

/// A pack's file name as exports write it (32 hex digits, `.pack`): what
/// a server serves and a client asks for, so that a name from a list
/// cannot lead anywhere else.
pub fn is_name(name: &str) -> bool {
    name.strip_suffix(".pack")
        .is_some_and(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The first 8 bytes of a version: how an index names it.
pub fn prefix(version: &Version) -> [u8; 8] {
    version.0[..8].try_into().expect("a version is 32 bytes")
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PackError {
    #[error("not a pack index (no magic)")]
    BadMagic,
    #[error("pack index truncated: {wanted} bytes needed, {available} there")]
    Truncated { wanted: usize, available: usize },
    #[error("pack index of {0} entries, over {MAX_ENTRIES}")]
    TooMany(u32),
    #[error("pack entry {index} of {size} bytes, not under {MAX_ENTRY_SIZE}")]
    TooLarge { index: usize, size: u32 },
}

/// The length of the index of `count` entries.
pub fn index_len(count: usize) -> usize {
    HEADER_LEN + count * ENTRY_LEN
}

/// The index of `entries`.
pub fn encode_index(entries: &[PackEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(index_len(entries.len()));
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    for e in entries {
        out.extend_from_slice(&e.prefix);
        out.extend_from_slice(&e.size.to_be_bytes());
    }
    out
}

/// The entries of an index at the start of `bytes` (which may go on
/// with the pack's contents), and the index's length.
pub fn parse_index(bytes: &[u8]) -> Result<(Vec<PackEntry>, usize), PackError> {
    let truncated = |wanted: usize| PackError::Truncated {
        wanted,
        available: bytes.len(),
    };
    let header = bytes.get(..HEADER_LEN).ok_or(truncated(HEADER_LEN))?;
    if &header[..8] != MAGIC {
        return Err(PackError::BadMagic);
    }
    let count = u32::from_be_bytes(header[8..12].try_into().expect("4 bytes"));
    if count > MAX_ENTRIES {
        return Err(PackError::TooMany(count));
    }
    let len = index_len(count as usize);
    let body = bytes.get(HEADER_LEN..len).ok_or(truncated(len))?;
    let entries = body
        .chunks_exact(ENTRY_LEN)
        .enumerate()
        .map(|(index, e)| {
            let size = u32::from_be_bytes(e[8..12].try_into().expect("4 bytes"));
            if size >= MAX_ENTRY_SIZE {
                return Err(PackError::TooLarge { index, size });
            }
            Ok(PackEntry {
                prefix: e[..8].try_into().expect("8 bytes"),
                size,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((entries, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_round_trip_and_refuse_what_is_wrong() {
        let entries: Vec<PackEntry> = (0..5u8)
            .map(|i| PackEntry::of(&Version::of(&[i]), u32::from(i) * 100))
            .collect();
        let mut bytes = encode_index(&entries);
        let len = bytes.len();
        bytes.extend_from_slice(b"the contents follow");
        assert_eq!(parse_index(&bytes), Ok((entries, len)));
        assert_eq!(
            parse_index(&bytes[..len - 1]),
            Err(PackError::Truncated {
                wanted: len,
                available: len - 1
            })
        );
        assert_eq!(parse_index(b"ISPACK2\n\0\0\0\0"), Err(PackError::BadMagic));
        let mut many = MAGIC.to_vec();
        many.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(parse_index(&many), Err(PackError::TooMany(u32::MAX)));
        let mut large = encode_index(&[PackEntry {
            prefix: [0; 8],
            size: MAX_ENTRY_SIZE,
        }]);
        large.truncate(index_len(1));
        assert_eq!(
            parse_index(&large),
            Err(PackError::TooLarge {
                index: 0,
                size: MAX_ENTRY_SIZE
            })
        );
    }
}
