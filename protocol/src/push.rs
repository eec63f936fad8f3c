//! `POST /.intersync/push`: many new or changed files in one request body,
//! each with its own precondition and its own result, so that pushing a
//! tree of small files costs a few round trips, not one a file.
//!
//! The body (zstd-compressed on the way, `Content-Encoding: zstd`) is a
//! *push stream*: for each file a head (its path, what the server's copy
//! must be, how its bytes build it, the version and size of the result,
//! the attributes it takes) and then its bytes in chunks, so that neither
//! side needs a length before the bytes. The answer is a
//! [`crate::BatchResult`]: one result a file, in order.
//!
//! Everything here may come from the network: the reader bounds every
//! length, reads the body as it comes with memory bounded by one chunk,
//! and never panics.

use std::io::{self, Read, Write};

use thiserror::Error;

use crate::varint::{self, Read as Varint};
use crate::{PathError, TreePath, Version};

/// Media type of a request body.
pub const MEDIA_PUSH: &str = "application/x-intersync-push";

const MAGIC: &[u8; 4] = b"ISU1";
const ENTRY: u8 = 1;
const END: u8 = 0xff;
/// Most files in one request.
pub const MAX_ENTRIES: usize = 1 << 16;
/// Largest chunk of a file's bytes (as in a fetch stream).
pub const MAX_CHUNK: usize = crate::fetch::MAX_CHUNK;
/// Longest path.
const MAX_PATH: u64 = 4096;

/// What the server's copy must be for a file to be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precondition {
    /// Nothing: the write goes over whatever is there.
    None,
    /// The path must be free (a new file).
    Absent,
    /// The file must have this version (the base the client changed).
    Version(Version),
}

/// How a file's bytes give its new content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// The whole content.
    Whole = 0,
    /// A patch (SPEC's *Patches*) from the version the precondition names.
    Patch = 1,
    /// A librsync delta against the version the precondition names.
    Delta = 2,
}

/// One file's head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub path: TreePath,
    pub precondition: Precondition,
    pub form: Form,
    /// The version the result must have.
    pub version: Version,
    /// Its length.
    pub size: u64,
    /// Permission bits (at most `0o7777`).
    pub mode: Option<u32>,
    pub mtime_ns: Option<i64>,
}

/// Why a push stream is refused.
#[derive(Debug, Error)]
pub enum PushError {
    #[error("not a push stream (bad magic)")]
    BadMagic,
    #[error("the stream ends inside {what}")]
    Truncated { what: &'static str },
    #[error("{what} of {value} is over the limit of {limit}")]
    TooLarge {
        what: &'static str,
        value: u64,
        limit: u64,
    },
    #[error("unknown {what} {value}")]
    Unknown { what: &'static str, value: u64 },
    #[error("a varint in {what} is too long, or longer than it needs to be")]
    Overlong { what: &'static str },
    #[error("path: {0}")]
    Path(#[from] PathError),
    #[error("a {0:?} names no base: it needs the precondition of a version")]
    NoBase(Form),
    #[error("bytes after the stream's end")]
    AfterEnd,
    #[error("reading the stream: {0}")]
    Read(#[source] io::Error),
}

/// Writes a push stream into `out`: [`PushWriter::entry`] for each file,
/// its bytes with [`PushWriter::data`], then [`PushWriter::finish`].
pub struct PushWriter<W: Write> {
    out: W,
    open: bool,
}

impl<W: Write> PushWriter<W> {
    pub fn new(mut out: W) -> io::Result<PushWriter<W>> {
        out.write_all(MAGIC)?;
        Ok(PushWriter { out, open: false })
    }

    /// The next file's head (ending the one before).
    pub fn entry(&mut self, entry: &Entry) -> io::Result<()> {
        self.end()?;
        let mut head = vec![ENTRY];
        varint::put(&mut head, entry.path.as_str().len() as u64);
        head.extend_from_slice(entry.path.as_str().as_bytes());
        match entry.precondition {
            Precondition::None => head.push(0),
            Precondition::Absent => head.push(1),
            Precondition::Version(v) => {
                head.push(2);
                head.extend_from_slice(&v.0);
            }
        }
        head.push(entry.form as u8);
        head.extend_from_slice(&entry.version.0);
        varint::put(&mut head, entry.size);
        head.push(u8::from(entry.mode.is_some()) | u8::from(entry.mtime_ns.is_some()) << 1);
        if let Some(mode) = entry.mode {
            varint::put(&mut head, u64::from(mode));
        }
        if let Some(ns) = entry.mtime_ns {
            varint::put(&mut head, ((ns << 1) ^ (ns >> 63)) as u64);
        }
        self.out.write_all(&head)?;
        self.open = true;
        Ok(())
    }

    /// Bytes of the open file.
    pub fn data(&mut self, bytes: &[u8]) -> io::Result<()> {
        debug_assert!(self.open, "no entry is open");
        crate::fetch::write_chunks(&mut self.out, bytes)
    }

    fn end(&mut self) -> io::Result<()> {
        if self.open {
            self.open = false;
            self.out.write_all(&[0])?;
        }
        Ok(())
    }

    /// Ends the stream; the writer back.
    pub fn finish(mut self) -> io::Result<W> {
        self.end()?;
        self.out.write_all(&[END])?;
        Ok(self.out)
    }
}

/// Reads a push stream from `input` as it comes: [`PushReader::next_entry`]
/// gives each head, [`PushReader::read`] that file's bytes (what is not
/// read is skipped by the next head).
pub struct PushReader<R: Read> {
    input: R,
    entries: usize,
    /// Bytes left in the current chunk; `None` when no file is open.
    left: Option<usize>,
    done: bool,
}

impl<R: Read> PushReader<R> {
    pub fn new(mut input: R) -> Result<PushReader<R>, PushError> {
        let mut magic = [0u8; 4];
        read_exact(&mut input, &mut magic, "the magic")?;
        if &magic != MAGIC {
            return Err(PushError::BadMagic);
        }
        Ok(PushReader {
            input,
            entries: 0,
            left: None,
            done: false,
        })
    }

    /// The next file's head, or `None` after the last (then nothing may
    /// follow).
    pub fn next_entry(&mut self) -> Result<Option<Entry>, PushError> {
        while self.left.is_some() {
            let mut sink = [0u8; 8192];
            while self.read(&mut sink)? > 0 {}
        }
        if self.done {
            return Ok(None);
        }
        match self.byte("an entry")? {
            END => {
                self.done = true;
                let mut extra = [0u8; 1];
                return match self.input.read(&mut extra).map_err(PushError::Read)? {
                    0 => Ok(None),
                    _ => Err(PushError::AfterEnd),
                };
            }
            ENTRY => {}
            value => {
                return Err(PushError::Unknown {
                    what: "entry tag",
                    value: value.into(),
                });
            }
        }
        self.entries += 1;
        if self.entries > MAX_ENTRIES {
            return Err(PushError::TooLarge {
                what: "entry count",
                value: self.entries as u64,
                limit: MAX_ENTRIES as u64,
            });
        }
        let entry = self.head()?;
        self.left = Some(0);
        Ok(Some(entry))
    }

    fn head(&mut self) -> Result<Entry, PushError> {
        let len = self.varint("the path length", MAX_PATH)? as usize;
        let mut path = vec![0u8; len];
        read_exact(&mut self.input, &mut path, "a path")?;
        let path = String::from_utf8(path).map_err(|_| PathError::NotUtf8)?;
        let path = TreePath::new(&path)?;
        let precondition = match self.byte("a precondition")? {
            0 => Precondition::None,
            1 => Precondition::Absent,
            2 => Precondition::Version(self.version()?),
            value => {
                return Err(PushError::Unknown {
                    what: "precondition",
                    value: value.into(),
                });
            }
        };
        let form = match self.byte("a form")? {
            0 => Form::Whole,
            1 => Form::Patch,
            2 => Form::Delta,
            value => {
                return Err(PushError::Unknown {
                    what: "form",
                    value: value.into(),
                });
            }
        };
        if form != Form::Whole && !matches!(precondition, Precondition::Version(_)) {
            return Err(PushError::NoBase(form));
        }
        let version = self.version()?;
        let size = self.varint("the size", u64::MAX)?;
        let flags = self.byte("the attribute flags")?;
        if flags > 3 {
            return Err(PushError::Unknown {
                what: "attribute flags",
                value: flags.into(),
            });
        }
        let mode = (flags & 1 != 0)
            .then(|| self.varint("the mode", 0o7777))
            .transpose()?
            .map(|m| m as u32);
        let mtime_ns = (flags & 2 != 0)
            .then(|| self.varint("the mtime", u64::MAX))
            .transpose()?
            .map(|z| ((z >> 1) as i64) ^ -((z & 1) as i64));
        Ok(Entry {
            path,
            precondition,
            form,
            version,
            size,
            mode,
            mtime_ns,
        })
    }

    /// Bytes of the file whose head came last; 0 at its end.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, PushError> {
        loop {
            match self.left {
                None => return Ok(0),
                Some(0) => {
                    let len = self.varint("a chunk length", MAX_CHUNK as u64)? as usize;
                    self.left = (len > 0).then_some(len);
                    if len == 0 {
                        return Ok(0);
                    }
                }
                Some(left) => {
                    let want = left.min(buf.len());
                    if want == 0 {
                        return Ok(0);
                    }
                    let n = self.input.read(&mut buf[..want]).map_err(PushError::Read)?;
                    if n == 0 {
                        return Err(PushError::Truncated { what: "a chunk" });
                    }
                    self.left = Some(left - n);
                    return Ok(n);
                }
            }
        }
    }

    fn byte(&mut self, what: &'static str) -> Result<u8, PushError> {
        let mut b = [0u8; 1];
        read_exact(&mut self.input, &mut b, what)?;
        Ok(b[0])
    }

    fn version(&mut self) -> Result<Version, PushError> {
        let mut v = [0u8; 32];
        read_exact(&mut self.input, &mut v, "a version")?;
        Ok(Version(v))
    }

    fn varint(&mut self, what: &'static str, limit: u64) -> Result<u64, PushError> {
        let mut bytes = Vec::with_capacity(10);
        loop {
            let b = self.byte(what)?;
            bytes.push(b);
            match varint::get(&bytes) {
                Varint::Done(n, _) if n <= limit => return Ok(n),
                Varint::Done(value, _) => {
                    return Err(PushError::TooLarge { what, value, limit });
                }
                Varint::Incomplete => {}
                Varint::Overlong => return Err(PushError::Overlong { what }),
            }
        }
    }
}

fn read_exact(input: &mut impl Read, buf: &mut [u8], what: &'static str) -> Result<(), PushError> {
    input.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => PushError::Truncated { what },
        _ => PushError::Read(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, precondition: Precondition, form: Form, data: &[u8]) -> Entry {
        Entry {
            path: TreePath::new(path).unwrap(),
            precondition,
            form,
            version: Version::of(data),
            size: data.len() as u64,
            mode: (data.len() % 2 == 0).then_some(0o640),
            mtime_ns: Some(-(data.len() as i64) * 1_000_000_007),
        }
    }

    fn stream(files: &[(Entry, Vec<u8>)]) -> Vec<u8> {
        let mut w = PushWriter::new(Vec::new()).unwrap();
        for (e, data) in files {
            w.entry(e).unwrap();
            w.data(data).unwrap();
        }
        w.finish().unwrap()
    }

    fn read_all(bytes: &[u8], piece: usize) -> Result<Vec<(Entry, Vec<u8>)>, PushError> {
        let mut r = PushReader::new(bytes)?;
        let mut out = Vec::new();
        while let Some(e) = r.next_entry()? {
            let mut data = Vec::new();
            let mut buf = vec![0u8; piece];
            loop {
                let n = r.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                data.extend_from_slice(&buf[..n]);
            }
            out.push((e, data));
        }
        Ok(out)
    }

    fn files() -> Vec<(Entry, Vec<u8>)> {
        let big = vec![7u8; MAX_CHUNK + 10];
        let base = Version::of(b"base");
        vec![
            (
                entry("a", Precondition::Absent, Form::Whole, b"new"),
                b"new".to_vec(),
            ),
            (
                entry("d/b", Precondition::None, Form::Whole, b""),
                Vec::new(),
            ),
            (
                entry("d/c", Precondition::Version(base), Form::Patch, b"pp"),
                b"pp".to_vec(),
            ),
            (
                entry("big", Precondition::Version(base), Form::Delta, &big),
                big,
            ),
        ]
    }

    #[test]
    fn streams_round_trip_read_in_pieces_of_any_size() {
        let files = files();
        let bytes = stream(&files);
        for piece in [1, 3, 8192, 2 << 20] {
            assert_eq!(read_all(&bytes, piece).unwrap(), files, "{piece}");
        }
        // Data left unread is skipped.
        let mut r = PushReader::new(&bytes[..]).unwrap();
        let mut paths = Vec::new();
        while let Some(e) = r.next_entry().unwrap() {
            paths.push(e.path.to_string());
        }
        assert_eq!(paths, ["a", "d/b", "d/c", "big"]);
    }

    #[test]
    fn cut_damaged_and_lying_streams_are_typed_errors() {
        let bytes = stream(&files());
        for cut in (0..bytes.len()).step_by(97).chain([bytes.len() - 1]) {
            assert!(read_all(&bytes[..cut], 4096).is_err(), "cut at {cut}");
        }
        let mut after = bytes.clone();
        after.push(0);
        assert!(matches!(read_all(&after, 64), Err(PushError::AfterEnd)));
        // A patch without a base, a path out of the tree, a huge chunk.
        let mut w = PushWriter::new(Vec::new()).unwrap();
        let mut e = entry("x", Precondition::Absent, Form::Whole, b"x");
        e.form = Form::Patch;
        w.entry(&e).unwrap();
        let bytes = w.finish().unwrap();
        assert!(matches!(
            read_all(&bytes, 64),
            Err(PushError::NoBase(Form::Patch))
        ));
        let mut evil = MAGIC.to_vec();
        evil.push(ENTRY);
        varint::put(&mut evil, 5);
        evil.extend_from_slice(b"../up");
        assert!(matches!(read_all(&evil, 64), Err(PushError::Path(_))));
        let mut w = PushWriter::new(Vec::new()).unwrap();
        w.entry(&entry("x", Precondition::None, Form::Whole, b"x"))
            .unwrap();
        let mut huge = w.finish().unwrap();
        huge.truncate(huge.len() - 2);
        varint::put(&mut huge, MAX_CHUNK as u64 + 1);
        assert!(matches!(
            read_all(&huge, 64),
            Err(PushError::TooLarge {
                what: "a chunk length",
                ..
            })
        ));
    }
}
