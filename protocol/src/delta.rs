//! librsync delta files: the magic `0x72730236`, then commands until `END`.
//!
//! | opcode | meaning |
//! |---|---|
//! | `0x00` | END |
//! | `0x01`..=`0x40` | literal of 1 to 64 bytes, which follow |
//! | `0x41`..=`0x44` | literal whose length follows as a 1, 2, 4 or 8-byte integer |
//! | `0x45`..=`0x54` | copy from the base: offset then length, each 1, 2, 4 or 8 bytes |
//!
//! Integers are big-endian. A copy's opcode is `0x45 + 4 * w(offset) + w(length)`
//! where `w` is 0, 1, 2, 3 for widths 1, 2, 4, 8. Opcodes `0x55`..=`0xff` are
//! reserved by librsync and rejected here.

use std::io::{self, Write};

use thiserror::Error;

/// The magic number that starts every delta.
pub const DELTA_MAGIC: u32 = 0x7273_0236;

const OP_END: u8 = 0x00;
const OP_LITERAL_64: u8 = 0x40;
const OP_LITERAL_N1: u8 = 0x41;
const OP_LITERAL_N8: u8 = 0x44;
const OP_COPY_N1_N1: u8 = 0x45;
const OP_COPY_N8_N8: u8 = 0x54;

/// One instruction of a delta.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeltaCommand<'a> {
    /// Bytes carried in the delta itself.
    Literal(&'a [u8]),
    /// `len` bytes of the base file starting at `offset`.
    Copy { offset: u64, len: u64 },
}

/// What is wrong with a delta, and where (`offset` is in the delta's bytes).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DeltaError {
    #[error(
        "delta truncated at offset {offset}: {what} needs {wanted} bytes, {available} available"
    )]
    Truncated {
        offset: usize,
        what: &'static str,
        wanted: u64,
        available: usize,
    },
    #[error("not a librsync delta: magic {magic:#010x}")]
    BadMagic { magic: u32 },
    #[error("unknown delta command {command:#04x} at offset {offset}")]
    UnknownCommand { offset: usize, command: u8 },
    #[error("zero-length copy at offset {offset}")]
    EmptyCopy { offset: usize },
    #[error("{length} bytes of data after the delta's END at offset {offset}")]
    TrailingData { offset: usize, length: usize },
}

impl DeltaError {
    /// True when more bytes could make the delta valid: a reader tailing a
    /// growing stream waits on this, and treats every other error as corruption.
    pub fn is_truncation(&self) -> bool {
        matches!(self, DeltaError::Truncated { .. })
    }
}

/// Decodes a whole delta, command by command. After `END` it checks that
/// nothing follows, then yields `None`; after an error it yields `None`.
///
/// # Security
/// Accepts any bytes and never allocates. Copy ranges are not checked against
/// a base here (the reader does not know it): the patcher does that.
#[derive(Clone, Debug)]
pub struct DeltaReader<'a> {
    bytes: &'a [u8],
    pos: usize,
    done: bool,
}

impl<'a> DeltaReader<'a> {
    /// Checks the magic and positions the reader at the first command.
    pub fn new(bytes: &'a [u8]) -> Result<DeltaReader<'a>, DeltaError> {
        let mut reader = DeltaReader {
            bytes,
            pos: 0,
            done: false,
        };
        let magic = reader.int(4, "magic")? as u32;
        if magic != DELTA_MAGIC {
            return Err(DeltaError::BadMagic { magic });
        }
        Ok(reader)
    }

    /// Offset in the delta of the next command.
    pub fn offset(&self) -> usize {
        self.pos
    }

    fn take(&mut self, n: u64, what: &'static str) -> Result<&'a [u8], DeltaError> {
        let available = self.bytes.len() - self.pos;
        if n > available as u64 {
            return Err(DeltaError::Truncated {
                offset: self.pos,
                what,
                wanted: n,
                available,
            });
        }
        let slice = &self.bytes[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(slice)
    }

    fn int(&mut self, width: usize, what: &'static str) -> Result<u64, DeltaError> {
        let bytes = self.take(width as u64, what)?;
        Ok(bytes.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
    }

    fn command(&mut self) -> Result<Option<DeltaCommand<'a>>, DeltaError> {
        let at = self.pos;
        let op = self.int(1, "command")? as u8;
        match op {
            OP_END => {
                if self.pos != self.bytes.len() {
                    return Err(DeltaError::TrailingData {
                        offset: self.pos,
                        length: self.bytes.len() - self.pos,
                    });
                }
                Ok(None)
            }
            1..=OP_LITERAL_64 => Ok(Some(DeltaCommand::Literal(
                self.take(u64::from(op), "literal")?,
            ))),
            OP_LITERAL_N1..=OP_LITERAL_N8 => {
                let len = self.int(1 << (op - OP_LITERAL_N1), "literal length")?;
                Ok(Some(DeltaCommand::Literal(self.take(len, "literal")?)))
            }
            OP_COPY_N1_N1..=OP_COPY_N8_N8 => {
                let mode = op - OP_COPY_N1_N1;
                let offset = self.int(1 << (mode / 4), "copy offset")?;
                let len = self.int(1 << (mode % 4), "copy length")?;
                if len == 0 {
                    return Err(DeltaError::EmptyCopy { offset: at });
                }
                Ok(Some(DeltaCommand::Copy { offset, len }))
            }
            command => Err(DeltaError::UnknownCommand {
                offset: at,
                command,
            }),
        }
    }
}

impl<'a> Iterator for DeltaReader<'a> {
    /// The command's offset in the delta, and the command.
    type Item = Result<(usize, DeltaCommand<'a>), DeltaError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let at = self.pos;
        match self.command() {
            Ok(Some(cmd)) => Some(Ok((at, cmd))),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Smallest of librsync's integer widths (1, 2, 4, 8) that holds `v`, as a
/// width code 0 to 3.
fn width_code(v: u64) -> u8 {
    match v {
        0..=0xff => 0,
        0x100..=0xffff => 1,
        0x1_0000..=0xffff_ffff => 2,
        _ => 3,
    }
}

/// Encodes a delta with the shortest commands librsync defines. Callers
/// coalesce adjacent copies themselves; this writes what it is given.
pub struct DeltaWriter<W: Write> {
    out: W,
    written: u64,
}

impl<W: Write> DeltaWriter<W> {
    pub fn new(mut out: W) -> io::Result<DeltaWriter<W>> {
        out.write_all(&DELTA_MAGIC.to_be_bytes())?;
        Ok(DeltaWriter { out, written: 4 })
    }

    fn int(&mut self, v: u64, code: u8) -> io::Result<()> {
        let width = 1usize << code;
        self.out.write_all(&v.to_be_bytes()[8 - width..])?;
        self.written += width as u64;
        Ok(())
    }

    /// Writes `data` as one literal command (nothing when empty).
    pub fn literal(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let len = data.len() as u64;
        if len <= u64::from(OP_LITERAL_64) {
            self.out.write_all(&[len as u8])?;
            self.written += 1;
        } else {
            let code = width_code(len);
            self.out.write_all(&[OP_LITERAL_N1 + code])?;
            self.written += 1;
            self.int(len, code)?;
        }
        self.out.write_all(data)?;
        self.written += len;
        Ok(())
    }

    /// Writes a copy of `len` base bytes from `offset` (nothing when `len` is 0).
    pub fn copy(&mut self, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        let (oc, lc) = (width_code(offset), width_code(len));
        self.out.write_all(&[OP_COPY_N1_N1 + 4 * oc + lc])?;
        self.written += 1;
        self.int(offset, oc)?;
        self.int(len, lc)
    }

    /// Writes END and returns the sink with the number of bytes written.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        self.out.write_all(&[OP_END])?;
        self.written += 1;
        self.out.flush()?;
        Ok((self.out, self.written))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode(bytes: &[u8]) -> Result<Vec<DeltaCommand<'_>>, DeltaError> {
        DeltaReader::new(bytes)?
            .map(|r| r.map(|(_, c)| c))
            .collect()
    }

    #[test]
    fn encodes_shortest_widths() {
        let mut w = DeltaWriter::new(Vec::new()).unwrap();
        w.literal(b"abc").unwrap();
        w.literal(&[7; 300]).unwrap();
        w.copy(0, 5).unwrap();
        w.copy(0x1_0000, 0x100).unwrap();
        w.copy(1 << 40, 1).unwrap();
        let (bytes, n) = w.finish().unwrap();
        assert_eq!(n as usize, bytes.len());
        assert_eq!(
            &bytes[..8],
            &[0x72, 0x73, 0x02, 0x36, 0x03, b'a', b'b', b'c']
        );
        assert_eq!(&bytes[8..11], &[0x42, 0x01, 0x2c]);
        let copies = &bytes[11 + 300..];
        assert_eq!(
            copies,
            &[
                0x45, 0, 5, // N1 N1
                0x4e, 0, 1, 0, 0, 1, 0, // N4 N2
                0x51, 0, 0, 1, 0, 0, 0, 0, 0, 1, // N8 N1
                0x00
            ]
        );
        assert_eq!(
            decode(&bytes).unwrap(),
            vec![
                DeltaCommand::Literal(b"abc"),
                DeltaCommand::Literal(&[7; 300]),
                DeltaCommand::Copy { offset: 0, len: 5 },
                DeltaCommand::Copy {
                    offset: 0x1_0000,
                    len: 0x100
                },
                DeltaCommand::Copy {
                    offset: 1 << 40,
                    len: 1
                },
            ]
        );
    }

    #[test]
    fn rejects_each_malformation() {
        let magic = DELTA_MAGIC.to_be_bytes();
        let with = |body: &[u8]| [&magic[..], body].concat();
        let cases: Vec<(Vec<u8>, DeltaError)> = vec![
            (
                vec![0x72],
                DeltaError::Truncated {
                    offset: 0,
                    what: "magic",
                    wanted: 4,
                    available: 1,
                },
            ),
            (
                vec![0x72, 0x73, 0x01, 0x36, 0],
                DeltaError::BadMagic { magic: 0x7273_0136 },
            ),
            (
                with(&[]),
                DeltaError::Truncated {
                    offset: 4,
                    what: "command",
                    wanted: 1,
                    available: 0,
                },
            ),
            (
                with(&[0x03, b'a']),
                DeltaError::Truncated {
                    offset: 5,
                    what: "literal",
                    wanted: 3,
                    available: 1,
                },
            ),
            (
                with(&[0x44, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0]),
                DeltaError::Truncated {
                    offset: 13,
                    what: "literal",
                    wanted: u64::MAX,
                    available: 1,
                },
            ),
            (
                with(&[0x55, 0]),
                DeltaError::UnknownCommand {
                    offset: 4,
                    command: 0x55,
                },
            ),
            (with(&[0x45, 0, 0, 0]), DeltaError::EmptyCopy { offset: 4 }),
            (
                with(&[0x00, 1, 2]),
                DeltaError::TrailingData {
                    offset: 5,
                    length: 2,
                },
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(decode(&bytes).unwrap_err(), want, "{bytes:02x?}");
        }
    }

    #[derive(Debug, Clone)]
    enum Cmd {
        Literal(Vec<u8>),
        Copy(u64, u64),
    }

    fn cmd() -> impl Strategy<Value = Cmd> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 1..400).prop_map(Cmd::Literal),
            (any::<u64>(), 1..u64::MAX).prop_map(|(o, l)| Cmd::Copy(o, l)),
        ]
    }

    proptest! {
        #[test]
        fn round_trips(cmds in proptest::collection::vec(cmd(), 0..20)) {
            let mut w = DeltaWriter::new(Vec::new()).unwrap();
            for c in &cmds {
                match c {
                    Cmd::Literal(d) => w.literal(d).unwrap(),
                    Cmd::Copy(o, l) => w.copy(*o, *l).unwrap(),
                }
            }
            let (bytes, _) = w.finish().unwrap();
            let decoded = decode(&bytes).unwrap();
            prop_assert_eq!(decoded.len(), cmds.len());
            for (d, c) in decoded.iter().zip(&cmds) {
                match (d, c) {
                    (DeltaCommand::Literal(a), Cmd::Literal(b)) => prop_assert_eq!(*a, &b[..]),
                    (DeltaCommand::Copy { offset, len }, Cmd::Copy(o, l)) => {
                        prop_assert_eq!((*offset, *len), (*o, *l))
                    }
                    _ => prop_assert!(false, "command kind changed"),
                }
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(body: Vec<u8>) {
            let bytes = [&DELTA_MAGIC.to_be_bytes()[..], &body].concat();
            let _ = decode(&bytes);
        }
    }
}
