//! The refine answer: the second round of a multi-round delta, for a base
//! the server never saw. The client sent a coarse signature of its copy;
//! the server answers how the new version tiles into copies from that copy
//! (what the coarse blocks matched) and gaps (what they did not), with a
//! fine signature of the gaps. The client finds the fine blocks in its copy
//! and fetches only the rest by ranges.
//!
//! Layout (integers big-endian, as librsync's):
//!
//! ```text
//! magic "ISR1" | version (32 bytes) | size u64 | segment count u32
//! segments: kind u8 (0 copy, 1 gap) | length u64 | [copy: base offset u64]
//! the fine signature (a librsync signature) to the end
//! ```
//!
//! The segments tile the new version in order. The fine signature has one
//! block for each window [`fine_windows`] gives, in that order: every gap at
//! least a block long is covered by whole blocks, the last one ending at the
//! gap's end (overlapping the one before), so no block is ever short.

use thiserror::Error;

use crate::signature::{SignatureError, SignatureRef};
use crate::version::Version;

pub const REFINE_MAGIC: [u8; 4] = *b"ISR1";

/// One piece of the new version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment {
    /// `len` bytes the base has at `base_offset`.
    Copy { base_offset: u64, len: u64 },
    /// `len` bytes the coarse blocks did not find.
    Gap { len: u64 },
}

impl Segment {
    pub fn len(&self) -> u64 {
        match *self {
            Segment::Copy { len, .. } | Segment::Gap { len } => len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RefineError {
    #[error("refine answer truncated at offset {offset}: {wanted} bytes needed, {available} left")]
    Truncated {
        offset: usize,
        wanted: usize,
        available: usize,
    },
    #[error("not a refine answer: magic {magic:02x?}")]
    BadMagic { magic: [u8; 4] },
    #[error("refine answer: unknown segment kind {kind} at offset {offset}")]
    UnknownKind { offset: usize, kind: u8 },
    #[error("refine answer: segment {index} is empty")]
    EmptySegment { index: usize },
    #[error("refine answer: segments add up to {sum} bytes, not the {size} announced")]
    SizeMismatch { sum: u128, size: u64 },
    #[error(
        "refine answer: segment {index} copies {len} bytes from {base_offset}, past the end of the {base_len}-byte base"
    )]
    CopyOutOfBounds {
        index: usize,
        base_offset: u64,
        len: u64,
        base_len: u64,
    },
    #[error("refine answer: fine signature")]
    Signature(#[from] SignatureError),
    #[error("refine answer: the fine signature has {actual} blocks, the gaps need {expected}")]
    BlockCount { expected: u64, actual: u64 },
}

/// A parsed, checked refine answer.
#[derive(Clone, Debug)]
pub struct RefineAnswer<'a> {
    pub version: Version,
    pub size: u64,
    pub segments: Vec<Segment>,
    pub fine: SignatureRef<'a>,
}

impl<'a> RefineAnswer<'a> {
    /// Parses and checks an answer against a base of `base_len` bytes.
    ///
    /// # Security
    /// `bytes` is untrusted. Every length is checked before use; the segment
    /// list is allocated only as far as the input holds whole segments; the
    /// segments must tile exactly `size` bytes, every copy must lie within
    /// the base, and the fine signature must have exactly one block for
    /// each window of the gaps.
    pub fn parse(bytes: &'a [u8], base_len: u64) -> Result<RefineAnswer<'a>, RefineError> {
        let mut r = Reader { bytes, at: 0 };
        let magic: [u8; 4] = r.take(4)?.try_into().expect("4 bytes");
        if magic != REFINE_MAGIC {
            return Err(RefineError::BadMagic { magic });
        }
        let version = Version(r.take(32)?.try_into().expect("32 bytes"));
        let size = r.u64()?;
        let count = r.u32()? as usize;
        // A segment is at least 9 bytes: never allocate past the input.
        let mut segments = Vec::with_capacity(count.min(r.left() / 9));
        let mut sum: u128 = 0;
        for index in 0..count {
            let offset = r.at;
            let kind = r.take(1)?[0];
            let len = r.u64()?;
            if len == 0 {
                return Err(RefineError::EmptySegment { index });
            }
            let segment = match kind {
                0 => {
                    let base_offset = r.u64()?;
                    if base_offset
                        .checked_add(len)
                        .is_none_or(|end| end > base_len)
                    {
                        return Err(RefineError::CopyOutOfBounds {
                            index,
                            base_offset,
                            len,
                            base_len,
                        });
                    }
                    Segment::Copy { base_offset, len }
                }
                1 => Segment::Gap { len },
                kind => return Err(RefineError::UnknownKind { offset, kind }),
            };
            sum += u128::from(len);
            segments.push(segment);
        }
        if sum != u128::from(size) {
            return Err(RefineError::SizeMismatch { sum, size });
        }
        let fine = SignatureRef::parse(&bytes[r.at..])?;
        let expected = window_count(&segments, u64::from(fine.header.block_len));
        let actual = fine.block_count() as u64;
        if expected != actual {
            return Err(RefineError::BlockCount { expected, actual });
        }
        Ok(RefineAnswer {
            version,
            size,
            segments,
            fine,
        })
    }
}

/// Writes an answer's head (all but the fine signature, which follows).
pub fn write_head(version: &Version, size: u64, segments: &[Segment], out: &mut Vec<u8>) {
    out.extend_from_slice(&REFINE_MAGIC);
    out.extend_from_slice(&version.0);
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&(segments.len() as u32).to_be_bytes());
    for s in segments {
        match *s {
            Segment::Copy { base_offset, len } => {
                out.push(0);
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&base_offset.to_be_bytes());
            }
            Segment::Gap { len } => {
                out.push(1);
                out.extend_from_slice(&len.to_be_bytes());
            }
        }
    }
}

/// Where each fine block starts in the new version, in signature order:
/// for every gap of at least `block_len` bytes, whole blocks from its start
/// and, when they do not end at its end, one more block that does.
pub fn fine_windows(segments: &[Segment], block_len: u64) -> Vec<u64> {
    let mut out = Vec::new();
    let mut at = 0u64;
    for s in segments {
        if let Segment::Gap { len } = *s
            && block_len > 0
            && len >= block_len
        {
            out.extend((0..len / block_len).map(|i| at + i * block_len));
            if len % block_len != 0 {
                out.push(at + len - block_len);
            }
        }
        at += s.len();
    }
    out
}

fn window_count(segments: &[Segment], block_len: u64) -> u64 {
    segments
        .iter()
        .map(|s| match *s {
            Segment::Gap { len } if block_len > 0 && len >= block_len => {
                len / block_len + u64::from(len % block_len != 0)
            }
            _ => 0,
        })
        .sum()
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn left(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], RefineError> {
        if self.left() < n {
            return Err(RefineError::Truncated {
                offset: self.at,
                wanted: n,
                available: self.left(),
            });
        }
        let out = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(out)
    }

    fn u64(&mut self) -> Result<u64, RefineError> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn u32(&mut self) -> Result<u32, RefineError> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::{SignatureFormat, SignatureHeader};

    fn answer(segments: &[Segment], block_len: u32, blocks: usize) -> Vec<u8> {
        let size = segments.iter().map(Segment::len).sum();
        let mut out = Vec::new();
        write_head(&Version([7; 32]), size, segments, &mut out);
        let header = SignatureHeader::new(SignatureFormat::Md4Rollsum, block_len, 6).unwrap();
        out.extend_from_slice(&header.to_bytes());
        out.extend(std::iter::repeat_n(0xab, blocks * header.record_len()));
        out
    }

    #[test]
    fn windows_cover_every_gap_with_whole_blocks() {
        let segs = [
            Segment::Gap { len: 2500 },
            Segment::Copy {
                base_offset: 0,
                len: 100,
            },
            Segment::Gap { len: 999 },
            Segment::Gap { len: 2000 },
        ];
        assert_eq!(fine_windows(&segs, 1000), vec![0, 1000, 1500, 3599, 4599]);
        assert_eq!(window_count(&segs, 1000), 5);
    }

    /// 4096 bytes from offset 50 of the base, then 3000 new: three fine
    /// blocks of 1024.
    const COPY_THEN_GAP: [Segment; 2] = [
        Segment::Copy {
            base_offset: 50,
            len: 4096,
        },
        Segment::Gap { len: 3000 },
    ];

    #[test]
    fn a_good_answer_parses() {
        let segs = COPY_THEN_GAP;
        let bytes = answer(&segs, 1024, 3);
        let a = RefineAnswer::parse(&bytes, 5000).unwrap();
        assert_eq!(a.size, 7096);
        assert_eq!(a.segments, segs);
        assert_eq!(a.fine.block_count(), 3);
    }

    #[test]
    fn bad_answers_are_typed_errors() {
        let segs = COPY_THEN_GAP;
        let good = answer(&segs, 1024, 3);
        // The copy runs past a shorter base.
        assert!(matches!(
            RefineAnswer::parse(&good, 4000),
            Err(RefineError::CopyOutOfBounds { .. })
        ));
        // One fine block too few.
        assert!(matches!(
            RefineAnswer::parse(&answer(&segs, 1024, 2), 5000),
            Err(RefineError::BlockCount { .. })
        ));
        let mut bad = good.clone();
        bad[0] = b'X';
        assert!(matches!(
            RefineAnswer::parse(&bad, 5000),
            Err(RefineError::BadMagic { .. })
        ));
        // The size announced is not what the segments add up to.
        let mut bad = good.clone();
        bad[36 + 7] ^= 1;
        assert!(matches!(
            RefineAnswer::parse(&bad, 5000),
            Err(RefineError::SizeMismatch { .. })
        ));
        // A huge segment count with nothing behind it.
        let mut bad = good[..44].to_vec();
        bad.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            RefineAnswer::parse(&bad, 5000),
            Err(RefineError::Truncated { .. })
        ));
        // Every truncation is an error, never a panic.
        for cut in 0..good.len() {
            assert!(
                RefineAnswer::parse(&good[..cut], 5000).is_err(),
                "cut at {cut}"
            );
        }
        let mut bad = good.clone();
        bad[48] = 9;
        assert!(matches!(
            RefineAnswer::parse(&bad, 5000),
            Err(RefineError::UnknownKind { kind: 9, .. })
        ));
    }
}
