//! The KML (kernel modification log, after InterMezzo): the append-only
//! journal of every change to a tree, in segments of framed records.
//!
//! A segment is a 16-byte header (the magic `ISKML\0\0\x01`, then the
//! sequence number of its first record as a big-endian `u64`) followed by
//! records. A record is framed as `len: u32 BE`, `crc: u32 BE` (CRC-32 of
//! the payload), then `len` bytes of payload. `protocol/SPEC.md` gives the
//! payload of each operation byte by byte.
//!
//! Readers must tell "not enough bytes yet" (a record still being appended,
//! or torn by a crash) from "these bytes are wrong" (corruption): the first
//! is [`KmlError::Incomplete`], everything else is corruption.

use thiserror::Error;

use crate::path::{PathError, TreePath};
use crate::version::Version;

/// The first eight bytes of every segment; the last byte is the format version.
pub const SEGMENT_MAGIC: [u8; 8] = *b"ISKML\0\0\x01";
/// Magic, then the first record's sequence number.
pub const SEGMENT_HEADER_LEN: usize = 16;
/// Length and CRC before each payload.
pub const RECORD_FRAME_LEN: usize = 8;
/// Largest payload accepted: two paths of 4096 bytes and change.
pub const MAX_RECORD_LEN: u32 = 16 * 1024;

/// Who made a change: a server or a working copy, by a random 64-bit id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u64);

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// One change to the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KmlRecord {
    /// Position in the journal: 1 for the first record, then one more each.
    pub seq: u64,
    /// When the change was journaled, in nanoseconds since the Unix epoch.
    pub time_ns: i64,
    pub node: NodeId,
    pub op: Op,
}

/// Attribute changes; `None` leaves an attribute as it was.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attrs {
    pub mode: Option<u32>,
    pub mtime_ns: Option<i64>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// What changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A new, empty regular file.
    Create {
        path: TreePath,
        mode: u32,
    },
    /// A regular file's content is now `version`, `size` bytes, modified at `mtime_ns`.
    Write {
        path: TreePath,
        version: Version,
        size: u64,
        mtime_ns: i64,
    },
    Mkdir {
        path: TreePath,
        mode: u32,
    },
    /// A file or symbolic link was removed.
    Unlink {
        path: TreePath,
    },
    /// An empty folder was removed.
    Rmdir {
        path: TreePath,
    },
    /// `from` now lives at `to`, replacing whatever was there.
    Rename {
        from: TreePath,
        to: TreePath,
    },
    Setattr {
        path: TreePath,
        attrs: Attrs,
    },
    /// A symbolic link holding `target`, which is stored, never followed.
    Symlink {
        path: TreePath,
        target: Vec<u8>,
    },
    /// A hard link at `path` to the file at `target`.
    Link {
        path: TreePath,
        target: TreePath,
    },
}

impl Op {
    fn code(&self) -> u8 {
        match self {
            Op::Create { .. } => 1,
            Op::Write { .. } => 2,
            Op::Mkdir { .. } => 3,
            Op::Unlink { .. } => 4,
            Op::Rmdir { .. } => 5,
            Op::Rename { .. } => 6,
            Op::Setattr { .. } => 7,
            Op::Symlink { .. } => 8,
            Op::Link { .. } => 9,
        }
    }

    /// The path the operation changes (for a rename, where it lands).
    pub fn path(&self) -> &TreePath {
        match self {
            Op::Create { path, .. }
            | Op::Write { path, .. }
            | Op::Mkdir { path, .. }
            | Op::Unlink { path }
            | Op::Rmdir { path }
            | Op::Setattr { path, .. }
            | Op::Symlink { path, .. }
            | Op::Link { path, .. } => path,
            Op::Rename { to, .. } => to,
        }
    }
}

/// What is wrong with journal bytes. Offsets count from the start of the segment.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum KmlError {
    #[error("KML incomplete at offset {offset}: {wanted} bytes needed, {available} available")]
    Incomplete {
        offset: u64,
        wanted: u64,
        available: u64,
    },
    #[error("not a KML segment (or an unknown version): header {found:02x?}")]
    BadMagic { found: Vec<u8> },
    #[error("KML record at offset {offset} has CRC {computed:#010x}, stored {stored:#010x}")]
    BadCrc {
        offset: u64,
        stored: u32,
        computed: u32,
    },
    #[error("KML record at offset {offset} claims {len} bytes, more than {MAX_RECORD_LEN}")]
    TooLong { offset: u64, len: u32 },
    #[error("KML record at offset {offset} is malformed: {reason}")]
    BadRecord { offset: u64, reason: String },
    #[error("KML record at offset {offset} has sequence {found}, expected {expected}")]
    OutOfSequence {
        offset: u64,
        expected: u64,
        found: u64,
    },
}

impl KmlError {
    /// True when more bytes could complete the journal; false for corruption.
    pub fn is_incomplete(&self) -> bool {
        matches!(self, KmlError::Incomplete { .. })
    }

    /// Where in the segment the problem starts.
    pub fn offset(&self) -> u64 {
        match self {
            KmlError::BadMagic { .. } => 0,
            KmlError::Incomplete { offset, .. }
            | KmlError::BadCrc { offset, .. }
            | KmlError::TooLong { offset, .. }
            | KmlError::BadRecord { offset, .. }
            | KmlError::OutOfSequence { offset, .. } => *offset,
        }
    }
}

/// Writes a segment header for a segment whose first record is `first_seq`.
pub fn segment_header(first_seq: u64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut out = [0; SEGMENT_HEADER_LEN];
    out[..8].copy_from_slice(&SEGMENT_MAGIC);
    out[8..].copy_from_slice(&first_seq.to_be_bytes());
    out
}

/// Reads a segment header, returning the first record's sequence number.
pub fn parse_segment_header(bytes: &[u8]) -> Result<u64, KmlError> {
    let magic_len = bytes.len().min(SEGMENT_MAGIC.len());
    if bytes[..magic_len] != SEGMENT_MAGIC[..magic_len] {
        return Err(KmlError::BadMagic {
            found: bytes[..magic_len].to_vec(),
        });
    }
    let Some(seq) = bytes.get(8..SEGMENT_HEADER_LEN) else {
        return Err(KmlError::Incomplete {
            offset: 0,
            wanted: SEGMENT_HEADER_LEN as u64,
            available: bytes.len() as u64,
        });
    };
    Ok(u64::from_be_bytes(seq.try_into().expect("8 bytes")))
}

impl KmlRecord {
    /// Appends the framed record to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; RECORD_FRAME_LEN]);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.time_ns.to_be_bytes());
        out.extend_from_slice(&self.node.0.to_be_bytes());
        out.push(self.op.code());
        let path = |out: &mut Vec<u8>, p: &TreePath| bytes16(out, p.as_str().as_bytes());
        match &self.op {
            Op::Create { path: p, mode } | Op::Mkdir { path: p, mode } => {
                path(out, p);
                out.extend_from_slice(&mode.to_be_bytes());
            }
            Op::Write {
                path: p,
                version,
                size,
                mtime_ns,
            } => {
                path(out, p);
                out.extend_from_slice(&version.0);
                out.extend_from_slice(&size.to_be_bytes());
                out.extend_from_slice(&mtime_ns.to_be_bytes());
            }
            Op::Unlink { path: p } | Op::Rmdir { path: p } => path(out, p),
            Op::Rename { from, to } => {
                path(out, from);
                path(out, to);
            }
            Op::Setattr { path: p, attrs } => {
                path(out, p);
                let flags = u8::from(attrs.mode.is_some())
                    | u8::from(attrs.mtime_ns.is_some()) << 1
                    | u8::from(attrs.uid.is_some()) << 2
                    | u8::from(attrs.gid.is_some()) << 3;
                out.push(flags);
                if let Some(mode) = attrs.mode {
                    out.extend_from_slice(&mode.to_be_bytes());
                }
                if let Some(mtime) = attrs.mtime_ns {
                    out.extend_from_slice(&mtime.to_be_bytes());
                }
                if let Some(uid) = attrs.uid {
                    out.extend_from_slice(&uid.to_be_bytes());
                }
                if let Some(gid) = attrs.gid {
                    out.extend_from_slice(&gid.to_be_bytes());
                }
            }
            Op::Symlink { path: p, target } => {
                path(out, p);
                bytes16(out, target);
            }
            Op::Link { path: p, target } => {
                path(out, p);
                path(out, target);
            }
        }
        let payload = &out[start + RECORD_FRAME_LEN..];
        let len = payload.len() as u32;
        let crc = crc32fast::hash(payload);
        out[start..start + 4].copy_from_slice(&len.to_be_bytes());
        out[start + 4..start + 8].copy_from_slice(&crc.to_be_bytes());
    }

    /// Decodes one record at the start of `bytes`, which begin at `offset` in
    /// the segment. Returns the record and its framed length.
    ///
    /// # Security
    /// Accepts any bytes: the length is bounded before anything is read, the
    /// CRC is checked before the payload is parsed, and every path is
    /// validated as a [`TreePath`].
    pub fn decode(bytes: &[u8], offset: u64) -> Result<(KmlRecord, usize), KmlError> {
        let incomplete = |wanted: usize| KmlError::Incomplete {
            offset,
            wanted: wanted as u64,
            available: bytes.len() as u64,
        };
        let Some(frame) = bytes.get(..RECORD_FRAME_LEN) else {
            return Err(incomplete(RECORD_FRAME_LEN));
        };
        let len = u32::from_be_bytes(frame[..4].try_into().expect("4 bytes"));
        let stored = u32::from_be_bytes(frame[4..].try_into().expect("4 bytes"));
        if len > MAX_RECORD_LEN {
            return Err(KmlError::TooLong { offset, len });
        }
        let total = RECORD_FRAME_LEN + len as usize;
        let Some(payload) = bytes.get(RECORD_FRAME_LEN..total) else {
            return Err(incomplete(total));
        };
        let computed = crc32fast::hash(payload);
        if computed != stored {
            return Err(KmlError::BadCrc {
                offset,
                stored,
                computed,
            });
        }
        let record = Payload { bytes: payload }
            .record()
            .map_err(|reason| KmlError::BadRecord { offset, reason })?;
        Ok((record, total))
    }
}

fn bytes16(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// A CRC-checked payload being parsed; errors are reasons, placed by the caller.
struct Payload<'a> {
    bytes: &'a [u8],
}

impl<'a> Payload<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if self.bytes.len() < n {
            return Err(format!("{what} runs past the end of the record"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        Ok(self.take(N, what)?.try_into().expect("N bytes"))
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        self.array(what).map(u32::from_be_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        self.array(what).map(u64::from_be_bytes)
    }

    fn i64(&mut self, what: &str) -> Result<i64, String> {
        self.array(what).map(i64::from_be_bytes)
    }

    fn bytes16(&mut self, what: &str) -> Result<&'a [u8], String> {
        let len = u16::from_be_bytes(self.array(what)?);
        self.take(len as usize, what)
    }

    fn path(&mut self, what: &str) -> Result<TreePath, String> {
        TreePath::from_bytes(self.bytes16(what)?).map_err(|e: PathError| format!("{what}: {e}"))
    }

    fn record(mut self) -> Result<KmlRecord, String> {
        let seq = self.u64("sequence")?;
        let time_ns = self.i64("time")?;
        let node = NodeId(self.u64("node")?);
        let code = self.array::<1>("operation")?[0];
        let op = match code {
            1 => Op::Create {
                path: self.path("path")?,
                mode: self.u32("mode")?,
            },
            2 => Op::Write {
                path: self.path("path")?,
                version: Version(self.array("version")?),
                size: self.u64("size")?,
                mtime_ns: self.i64("mtime")?,
            },
            3 => Op::Mkdir {
                path: self.path("path")?,
                mode: self.u32("mode")?,
            },
            4 => Op::Unlink {
                path: self.path("path")?,
            },
            5 => Op::Rmdir {
                path: self.path("path")?,
            },
            6 => Op::Rename {
                from: self.path("from")?,
                to: self.path("to")?,
            },
            7 => {
                let path = self.path("path")?;
                let flags = self.array::<1>("attribute flags")?[0];
                if flags & !0x0f != 0 {
                    return Err(format!("unknown attribute flags {flags:#04x}"));
                }
                let mut attrs = Attrs::default();
                if flags & 1 != 0 {
                    attrs.mode = Some(self.u32("mode")?);
                }
                if flags & 2 != 0 {
                    attrs.mtime_ns = Some(self.i64("mtime")?);
                }
                if flags & 4 != 0 {
                    attrs.uid = Some(self.u32("uid")?);
                }
                if flags & 8 != 0 {
                    attrs.gid = Some(self.u32("gid")?);
                }
                Op::Setattr { path, attrs }
            }
            8 => Op::Symlink {
                path: self.path("path")?,
                target: self.bytes16("target")?.to_vec(),
            },
            9 => Op::Link {
                path: self.path("path")?,
                target: self.path("target")?,
            },
            other => return Err(format!("unknown operation {other}")),
        };
        if !self.bytes.is_empty() {
            return Err(format!(
                "{} stray bytes after the operation",
                self.bytes.len()
            ));
        }
        Ok(KmlRecord {
            seq,
            time_ns,
            node,
            op,
        })
    }
}

/// Reads the records of a segment's bytes (header included), checking that
/// sequence numbers run on from the header's without a gap.
#[derive(Debug)]
pub struct SegmentReader<'a> {
    bytes: &'a [u8],
    pos: usize,
    next_seq: u64,
    failed: bool,
}

impl<'a> SegmentReader<'a> {
    pub fn new(bytes: &'a [u8]) -> Result<SegmentReader<'a>, KmlError> {
        let first_seq = parse_segment_header(bytes)?;
        Ok(SegmentReader {
            bytes,
            pos: SEGMENT_HEADER_LEN,
            next_seq: first_seq,
            failed: false,
        })
    }

    /// Offset just past the last record read: where the valid part ends.
    pub fn offset(&self) -> u64 {
        self.pos as u64
    }

    /// Sequence number the next record must have.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }
}

impl Iterator for SegmentReader<'_> {
    type Item = Result<KmlRecord, KmlError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos == self.bytes.len() {
            return None;
        }
        let offset = self.pos as u64;
        let result = KmlRecord::decode(&self.bytes[self.pos..], offset).and_then(|(rec, len)| {
            if rec.seq != self.next_seq {
                return Err(KmlError::OutOfSequence {
                    offset,
                    expected: self.next_seq,
                    found: rec.seq,
                });
            }
            self.pos += len;
            self.next_seq += 1;
            Ok(rec)
        });
        self.failed = result.is_err();
        Some(result)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn p(s: &str) -> TreePath {
        TreePath::new(s).unwrap()
    }

    /// One record of every operation, as in `testdata/every-op.kml`.
    pub(crate) fn every_op() -> Vec<KmlRecord> {
        let ops = vec![
            Op::Mkdir {
                path: p("docs"),
                mode: 0o755,
            },
            Op::Create {
                path: p("docs/a.txt"),
                mode: 0o644,
            },
            Op::Write {
                path: p("docs/a.txt"),
                version: Version([0x5a; 32]),
                size: 12345,
                mtime_ns: 1_764_000_000_123_456_789,
            },
            Op::Rename {
                from: p("docs/a.txt"),
                to: p("docs/b.txt"),
            },
            Op::Setattr {
                path: p("docs/b.txt"),
                attrs: Attrs {
                    mode: Some(0o600),
                    mtime_ns: Some(-1),
                    uid: None,
                    gid: Some(100),
                },
            },
            Op::Symlink {
                path: p("latest"),
                target: b"docs/b.txt".to_vec(),
            },
            Op::Link {
                path: p("docs/c.txt"),
                target: p("docs/b.txt"),
            },
            Op::Unlink {
                path: p("docs/c.txt"),
            },
            Op::Unlink { path: p("latest") },
            Op::Unlink {
                path: p("docs/b.txt"),
            },
            Op::Rmdir { path: p("docs") },
        ];
        ops.into_iter()
            .enumerate()
            .map(|(i, op)| KmlRecord {
                seq: 7 + i as u64,
                time_ns: 1_764_000_000_000_000_000 + i as i64,
                node: NodeId(0x0123_4567_89ab_cdef),
                op,
            })
            .collect()
    }

    pub(crate) fn segment(records: &[KmlRecord]) -> Vec<u8> {
        let mut bytes = segment_header(records.first().map_or(1, |r| r.seq)).to_vec();
        for r in records {
            r.encode(&mut bytes);
        }
        bytes
    }

    #[test]
    fn round_trips_every_op() {
        let records = every_op();
        let bytes = segment(&records);
        let read: Vec<KmlRecord> = SegmentReader::new(&bytes)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(read, records);
    }

    #[test]
    fn tells_incomplete_from_corrupt() {
        let bytes = segment(&every_op());
        // Every proper prefix past the header is incomplete, never corrupt.
        let ends: Vec<usize> = {
            let mut r = SegmentReader::new(&bytes).unwrap();
            let mut ends = vec![r.offset() as usize];
            while r.next().is_some() {
                ends.push(r.offset() as usize);
            }
            ends
        };
        for cut in SEGMENT_HEADER_LEN..bytes.len() {
            let result: Result<Vec<_>, _> = SegmentReader::new(&bytes[..cut]).unwrap().collect();
            if ends.contains(&cut) {
                assert!(result.is_ok(), "cut at a record boundary {cut}");
            } else {
                let err = result.unwrap_err();
                assert!(err.is_incomplete(), "cut {cut}: {err}");
            }
        }
        // A flipped payload byte is corruption, at the record's offset.
        let mut flipped = bytes.clone();
        flipped[ends[3] + 20] ^= 1;
        let err = SegmentReader::new(&flipped)
            .unwrap()
            .find_map(Result::err)
            .unwrap();
        assert!(
            matches!(err, KmlError::BadCrc { offset, .. } if offset == ends[3] as u64),
            "{err}"
        );
        // An absurd length is corruption too, not a wait for 4 GiB.
        let mut long = bytes.clone();
        long[ends[1]..ends[1] + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        let err = SegmentReader::new(&long)
            .unwrap()
            .find_map(Result::err)
            .unwrap();
        assert!(matches!(err, KmlError::TooLong { .. }), "{err}");
    }

    #[test]
    fn refuses_bad_payloads_with_good_crcs() {
        let mut rec = every_op()[0].clone();
        rec.seq = 1;
        let mut framed = Vec::new();
        rec.encode(&mut framed);
        let reframe = |mut payload: Vec<u8>| {
            let mut out = (payload.len() as u32).to_be_bytes().to_vec();
            out.extend_from_slice(&crc32fast::hash(&payload).to_be_bytes());
            out.append(&mut payload);
            out
        };
        let payload = framed[RECORD_FRAME_LEN..].to_vec();
        let mut unknown = payload.clone();
        unknown[24] = 99;
        let mut escape = payload[..25].to_vec();
        bytes16(&mut escape, b"../etc");
        escape.extend_from_slice(&0o755u32.to_be_bytes());
        let mut stray = payload.clone();
        stray.push(0);
        for (bytes, says) in [
            (reframe(unknown), "unknown operation 99"),
            (reframe(escape), "`.` or `..`"),
            (reframe(stray), "1 stray bytes"),
            (reframe(payload[..30].to_vec()), "runs past the end"),
        ] {
            let err = KmlRecord::decode(&bytes, 16).unwrap_err();
            assert!(err.to_string().contains(says), "{err}");
            assert_eq!(err.offset(), 16);
        }
    }

    #[test]
    fn checks_sequence_and_magic() {
        let mut records = every_op();
        records[2].seq = 100;
        let bytes = segment(&records);
        let err = SegmentReader::new(&bytes)
            .unwrap()
            .find_map(Result::err)
            .unwrap();
        assert!(
            matches!(
                err,
                KmlError::OutOfSequence {
                    expected: 9,
                    found: 100,
                    ..
                }
            ),
            "{err}"
        );
        assert!(matches!(
            SegmentReader::new(b"ISKML\0\0\x02........"),
            Err(KmlError::BadMagic { .. })
        ));
        assert!(SegmentReader::new(b"ISKML").unwrap_err().is_incomplete());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(body: Vec<u8>) {
            let bytes = [&segment_header(1)[..], &body].concat();
            for r in SegmentReader::new(&bytes).unwrap() {
                let _ = r;
            }
        }
    }
}
