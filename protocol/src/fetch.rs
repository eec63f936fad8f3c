//! `POST /.intersync/fetch`: many files in one request, and their contents
//! in one stream, so that a tree of small files costs a few round trips,
//! not one a file, and small similar files share one compression window.
//!
//! The request names each file by the version wanted, with what the client
//! can build it from: nothing (the whole content), a version it holds (a
//! patch from it, when the server keeps it), or a signature of its copy (a
//! librsync delta). The answer is one zstd stream (RFC 8878, one or more
//! frames) of a *fetch stream*: an answer for every entry, in the order
//! asked, each one's bytes in chunks, so the server never needs to know a
//! length before it streams and a client can install each file as it
//! arrives, with memory bounded by one chunk.
//!
//! Everything here may come from the network: the parsers bound every
//! count and length, tell "need more bytes" from "malformed", and never
//! panic.

use thiserror::Error;

use crate::Version;
use crate::varint::{self, Read};

/// Media type of a request body.
pub const MEDIA_FETCH: &str = "application/x-intersync-fetch";
/// Media type of an answer: a zstd-compressed fetch stream.
pub const MEDIA_FETCH_STREAM: &str = "application/x-intersync-fetch-stream";

const REQUEST_MAGIC: &[u8; 4] = b"ISF1";
const STREAM_MAGIC: &[u8; 4] = b"ISB1";
/// The byte after the last entry: a stream cut short never looks whole.
const STREAM_END: u8 = 0xff;

/// Most entries in one request.
pub const MAX_ENTRIES: usize = 1 << 16;
/// Largest chunk of an entry's bytes.
pub const MAX_CHUNK: usize = 1 << 20;
/// Largest signature in an entry.
pub const MAX_SIGNATURE: usize = 16 << 20;

/// What the client asks for one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Want<'a> {
    /// The whole content of `version`.
    Whole(Version),
    /// `version` as a patch from `from`, which the client holds, when the
    /// server keeps `from`; when it does not, the whole content if
    /// `or_whole`, else [`Form::NoPatch`] (the client asks another way).
    Patch {
        version: Version,
        from: Version,
        or_whole: bool,
    },
    /// `version` as a librsync delta against the base `signature`
    /// describes, or whole when that is no larger.
    Delta {
        version: Version,
        signature: &'a [u8],
    },
    /// The server's librsync signature of `version` (InterSync's block
    /// size policy): what a client needs to push an edit of it as a delta.
    Signature(Version),
    /// The whole content of the version that begins with these bytes:
    /// 9 bytes an entry instead of 33, what a clone of many small files
    /// asks for. The client checks what comes against the whole version it
    /// knows (another version with the same first bytes fails the check).
    WholeByPrefix([u8; PREFIX_LEN]),
}

/// Bytes of a version in [`Want::WholeByPrefix`].
pub const PREFIX_LEN: usize = 8;

/// How an entry of the stream answers its request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// The whole content.
    Whole = 0,
    /// A patch (SPEC's *Patches*) from the version the client holds.
    Patch = 1,
    /// A librsync delta against the signature sent; the size of the result
    /// is given.
    Delta = 2,
    /// No file has that version now: it changed again, or went.
    Gone = 3,
    /// No patch could be made (the server does not keep the version the
    /// client holds): ask another way.
    NoPatch = 4,
    /// A librsync signature of the version asked for.
    Signature = 5,
}

impl Form {
    fn from_byte(b: u8) -> Option<Form> {
        Some(match b {
            0 => Form::Whole,
            1 => Form::Patch,
            2 => Form::Delta,
            3 => Form::Gone,
            4 => Form::NoPatch,
            5 => Form::Signature,
            _ => return None,
        })
    }

    /// The answer carries bytes.
    pub fn has_data(self) -> bool {
        matches!(
            self,
            Form::Whole | Form::Patch | Form::Delta | Form::Signature
        )
    }
}

/// Why a request or stream is refused.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum FetchError {
    #[error("not a fetch request or stream (bad magic)")]
    BadMagic,
    #[error("{what} at offset {offset}: the bytes end inside it")]
    Truncated { what: &'static str, offset: usize },
    #[error("{what} at offset {offset}: {value} is over the limit of {limit}")]
    TooLarge {
        what: &'static str,
        offset: usize,
        value: u64,
        limit: u64,
    },
    #[error("unknown {what} {value} at offset {offset}")]
    Unknown {
        what: &'static str,
        offset: usize,
        value: u8,
    },
    #[error("a varint at offset {offset} is too long")]
    Overlong { offset: usize },
    #[error("{0} bytes after the request's last entry")]
    Trailing(usize),
    #[error("the stream has {extra} bytes after its end")]
    AfterEnd { extra: usize },
    #[error("the stream ends after {answered} of {asked} answers")]
    Unfinished { answered: usize, asked: usize },
    #[error("the stream's end came after {answered} of {asked} answers")]
    EarlyEnd { answered: usize, asked: usize },
}

impl FetchError {
    /// The bytes ended early (a stream cut off): not a malformed one.
    pub fn is_incomplete(&self) -> bool {
        matches!(
            self,
            FetchError::Truncated { .. } | FetchError::Unfinished { .. }
        )
    }
}

/// Appends a request for `wants` to `out`.
pub fn encode_request(wants: &[Want<'_>], out: &mut Vec<u8>) {
    out.extend_from_slice(REQUEST_MAGIC);
    varint::put(out, wants.len() as u64);
    for want in wants {
        match want {
            Want::Whole(v) => {
                out.push(0);
                out.extend_from_slice(&v.0);
            }
            Want::Patch {
                version,
                from,
                or_whole,
            } => {
                out.push(if *or_whole { 2 } else { 1 });
                out.extend_from_slice(&version.0);
                out.extend_from_slice(&from.0);
            }
            Want::Delta { version, signature } => {
                out.push(3);
                out.extend_from_slice(&version.0);
                varint::put(out, signature.len() as u64);
                out.extend_from_slice(signature);
            }
            Want::Signature(v) => {
                out.push(4);
                out.extend_from_slice(&v.0);
            }
            Want::WholeByPrefix(prefix) => {
                out.push(5);
                out.extend_from_slice(prefix);
            }
        }
    }
}

/// Reads a request (the whole body).
///
/// # Security
///
/// At most [`MAX_ENTRIES`] entries and signatures of [`MAX_SIGNATURE`]
/// bytes; the entries borrow from `bytes`, so memory is bounded by it.
pub fn parse_request(bytes: &[u8]) -> Result<Vec<Want<'_>>, FetchError> {
    let mut r = Reader { bytes, at: 0 };
    if r.take(4, "magic")? != REQUEST_MAGIC {
        return Err(FetchError::BadMagic);
    }
    let count = r.varint("entry count", MAX_ENTRIES as u64)? as usize;
    // Each entry takes at least 9 bytes: a count past that is a lie.
    if count > bytes.len() / (1 + PREFIX_LEN) + 1 {
        return Err(FetchError::Truncated {
            what: "entries",
            offset: r.at,
        });
    }
    let mut wants = Vec::with_capacity(count);
    for _ in 0..count {
        let at = r.at;
        let tag = r.take(1, "entry kind")?[0];
        if tag == 5 {
            let prefix = r.take(PREFIX_LEN, "version prefix")?;
            wants.push(Want::WholeByPrefix(
                prefix.try_into().expect("PREFIX_LEN bytes"),
            ));
            continue;
        }
        let version = r.version()?;
        wants.push(match tag {
            0 => Want::Whole(version),
            1 | 2 => Want::Patch {
                version,
                from: r.version()?,
                or_whole: tag == 2,
            },
            3 => {
                let len = r.varint("signature length", MAX_SIGNATURE as u64)? as usize;
                Want::Delta {
                    version,
                    signature: r.take(len, "signature")?,
                }
            }
            4 => Want::Signature(version),
            value => {
                return Err(FetchError::Unknown {
                    what: "entry kind",
                    offset: at,
                    value,
                });
            }
        });
    }
    match bytes.len() - r.at {
        0 => Ok(wants),
        n => Err(FetchError::Trailing(n)),
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], FetchError> {
        let got =
            self.bytes
                .get(self.at..self.at.saturating_add(n))
                .ok_or(FetchError::Truncated {
                    what,
                    offset: self.at,
                })?;
        self.at += n;
        Ok(got)
    }

    fn version(&mut self) -> Result<Version, FetchError> {
        let b = self.take(32, "version")?;
        Ok(Version(b.try_into().expect("32 bytes")))
    }

    fn varint(&mut self, what: &'static str, limit: u64) -> Result<u64, FetchError> {
        match varint::get(&self.bytes[self.at..]) {
            Read::Done(n, len) if n <= limit => {
                self.at += len;
                Ok(n)
            }
            Read::Done(n, _) => Err(FetchError::TooLarge {
                what,
                offset: self.at,
                value: n,
                limit,
            }),
            Read::Incomplete => Err(FetchError::Truncated {
                what,
                offset: self.at,
            }),
            Read::Overlong => Err(FetchError::Overlong { offset: self.at }),
        }
    }
}

/// Writes `bytes` as chunks of at most [`MAX_CHUNK`], each its length
/// (LEB128) and its bytes: how fetch and push streams carry a file.
pub(crate) fn write_chunks(out: &mut impl std::io::Write, bytes: &[u8]) -> std::io::Result<()> {
    for chunk in bytes.chunks(MAX_CHUNK) {
        let mut head = Vec::with_capacity(4);
        varint::put(&mut head, chunk.len() as u64);
        out.write_all(&head)?;
        out.write_all(chunk)?;
    }
    Ok(())
}

/// Writes a fetch stream (uncompressed) into `out`: [`StreamWriter::start`]
/// each answer in the order asked, its bytes, [`StreamWriter::end`], and
/// [`StreamWriter::finish`] after the last.
pub struct StreamWriter<W: std::io::Write> {
    out: W,
    open: bool,
}

impl<W: std::io::Write> StreamWriter<W> {
    pub fn new(mut out: W) -> std::io::Result<StreamWriter<W>> {
        out.write_all(STREAM_MAGIC)?;
        Ok(StreamWriter { out, open: false })
    }

    /// The next entry's answer; `result_size` for a delta.
    pub fn start(&mut self, form: Form, result_size: Option<u64>) -> std::io::Result<()> {
        debug_assert!(!self.open, "an entry is still open");
        let mut head = vec![form as u8];
        if form == Form::Delta {
            varint::put(&mut head, result_size.unwrap_or(0));
        }
        self.out.write_all(&head)?;
        self.open = form.has_data();
        Ok(())
    }

    /// Bytes of the open entry.
    pub fn data(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        debug_assert!(self.open, "no entry is open");
        write_chunks(&mut self.out, bytes)
    }

    /// Ends the open entry (nothing for one without bytes).
    pub fn end(&mut self) -> std::io::Result<()> {
        if self.open {
            self.open = false;
            self.out.write_all(&[0])?;
        }
        Ok(())
    }

    /// Ends the stream; the writer back.
    pub fn finish(mut self) -> std::io::Result<W> {
        self.out.write_all(&[STREAM_END])?;
        Ok(self.out)
    }
}

/// What a [`StreamParser`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// The answer to entry `index` begins.
    Start {
        index: usize,
        form: Form,
        /// For a delta, the size of its result.
        result_size: Option<u64>,
    },
    /// Bytes of the current answer.
    Data(&'a [u8]),
    /// The current answer is whole.
    End { index: usize },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Magic,
    Entry,
    DeltaSize(usize),
    Chunk,
    InChunk(usize),
    Done,
}

/// Reads a fetch stream (already decompressed) as it arrives: feed it
/// bytes in pieces of any size, and it calls back with each [`Event`].
///
/// # Security
///
/// Chunks are at most [`MAX_CHUNK`] bytes and are handed on as they
/// arrive, so memory is bounded by the few bytes of a header split across
/// two pieces, whatever the stream.
pub struct StreamParser {
    asked: usize,
    answered: usize,
    state: State,
    /// A header split across two pieces.
    pending: Vec<u8>,
    /// Bytes fed so far, for messages.
    offset: usize,
}

impl StreamParser {
    /// A parser of the answer to a request of `asked` entries.
    pub fn new(asked: usize) -> StreamParser {
        StreamParser {
            asked,
            answered: 0,
            state: State::Magic,
            pending: Vec::new(),
            offset: 0,
        }
    }

    /// Parses `input`, calling `on` for each event; an error from `on`
    /// stops it.
    pub fn feed<E: From<FetchError>>(
        &mut self,
        mut input: &[u8],
        on: &mut impl FnMut(Event<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        while !input.is_empty() {
            if let State::InChunk(left) = self.state {
                let n = left.min(input.len());
                on(Event::Data(&input[..n]))?;
                self.offset += n;
                input = &input[n..];
                self.state = if n == left {
                    State::Chunk
                } else {
                    State::InChunk(left - n)
                };
                continue;
            }
            if self.state == State::Done {
                return Err(FetchError::AfterEnd { extra: input.len() }.into());
            }
            // A header: from what was left over and the new bytes.
            let take = input.len().min(16 - self.pending.len().min(16));
            let joined_len = self.pending.len();
            self.pending.extend_from_slice(&input[..take]);
            match self.header(on)? {
                Some(used) => {
                    // Of the header's bytes, those that came from `input`.
                    let from_input = used - joined_len;
                    self.offset += used;
                    self.pending.clear();
                    input = &input[from_input..];
                }
                None => {
                    input = &input[take..];
                    if self.pending.len() >= 16 {
                        return Err(FetchError::Overlong {
                            offset: self.offset,
                        }
                        .into());
                    }
                }
            }
        }
        Ok(())
    }

    /// Reads one header from `self.pending`; how many of its bytes it
    /// took, or `None` when it needs more.
    fn header<E: From<FetchError>>(
        &mut self,
        on: &mut impl FnMut(Event<'_>) -> Result<(), E>,
    ) -> Result<Option<usize>, E> {
        let bytes = &self.pending;
        let at = self.offset;
        let varint_at = |bytes: &[u8], start: usize| match varint::get(&bytes[start..]) {
            Read::Done(n, len) => Ok(Some((n, start + len))),
            Read::Incomplete => Ok(None),
            Read::Overlong => Err(FetchError::Overlong { offset: at + start }),
        };
        match self.state {
            State::Magic => {
                if bytes.len() < 4 {
                    return Ok(None);
                }
                if &bytes[..4] != STREAM_MAGIC {
                    return Err(FetchError::BadMagic.into());
                }
                self.state = State::Entry;
                Ok(Some(4))
            }
            State::Entry => {
                let b = bytes[0];
                if b == STREAM_END {
                    if self.answered < self.asked {
                        return Err(FetchError::EarlyEnd {
                            answered: self.answered,
                            asked: self.asked,
                        }
                        .into());
                    }
                    self.state = State::Done;
                    return Ok(Some(1));
                }
                let form = Form::from_byte(b).ok_or(FetchError::Unknown {
                    what: "answer form",
                    offset: at,
                    value: b,
                })?;
                if self.answered >= self.asked {
                    return Err(FetchError::AfterEnd { extra: bytes.len() }.into());
                }
                let index = self.answered;
                if form == Form::Delta {
                    self.state = State::DeltaSize(index);
                    return Ok(Some(1));
                }
                on(Event::Start {
                    index,
                    form,
                    result_size: None,
                })?;
                if form.has_data() {
                    self.state = State::Chunk;
                } else {
                    self.answered += 1;
                    on(Event::End { index })?;
                }
                Ok(Some(1))
            }
            State::DeltaSize(index) => {
                let Some((size, used)) = varint_at(bytes, 0)? else {
                    return Ok(None);
                };
                on(Event::Start {
                    index,
                    form: Form::Delta,
                    result_size: Some(size),
                })?;
                self.state = State::Chunk;
                Ok(Some(used))
            }
            State::Chunk => {
                let Some((len, used)) = varint_at(bytes, 0)? else {
                    return Ok(None);
                };
                if len == 0 {
                    let index = self.answered;
                    self.answered += 1;
                    self.state = State::Entry;
                    on(Event::End { index })?;
                } else if len > MAX_CHUNK as u64 {
                    return Err(FetchError::TooLarge {
                        what: "chunk",
                        offset: at,
                        value: len,
                        limit: MAX_CHUNK as u64,
                    }
                    .into());
                } else {
                    self.state = State::InChunk(len as usize);
                }
                Ok(Some(used))
            }
            State::InChunk(_) | State::Done => unreachable!("not a header"),
        }
    }

    /// After the last byte: the stream must have ended.
    pub fn finish(&self) -> Result<(), FetchError> {
        match self.state {
            State::Done => Ok(()),
            _ if self.offset == 0 && self.pending.len() < 4 => Err(FetchError::Truncated {
                what: "magic",
                offset: 0,
            }),
            _ => Err(FetchError::Unfinished {
                answered: self.answered,
                asked: self.asked,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(n: u8) -> Version {
        Version([n; 32])
    }

    #[test]
    fn requests_round_trip_and_refuse_lies() {
        let sig = b"a signature".to_vec();
        let wants = vec![
            Want::Whole(v(1)),
            Want::Patch {
                version: v(2),
                from: v(3),
                or_whole: true,
            },
            Want::Patch {
                version: v(4),
                from: v(5),
                or_whole: false,
            },
            Want::Delta {
                version: v(6),
                signature: &sig,
            },
            Want::Signature(v(7)),
            Want::WholeByPrefix([8; PREFIX_LEN]),
        ];
        let mut bytes = Vec::new();
        encode_request(&wants, &mut bytes);
        assert_eq!(parse_request(&bytes).unwrap(), wants);
        for cut in 0..bytes.len() {
            assert!(parse_request(&bytes[..cut]).is_err(), "{cut}");
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(parse_request(&trailing), Err(FetchError::Trailing(1)));
        // A count far past what the body could hold.
        let mut lie = REQUEST_MAGIC.to_vec();
        varint::put(&mut lie, 60_000);
        assert!(parse_request(&lie).is_err());
        let mut unknown = REQUEST_MAGIC.to_vec();
        varint::put(&mut unknown, 1);
        unknown.push(9);
        unknown.extend_from_slice(&[0; 32]);
        assert!(matches!(
            parse_request(&unknown),
            Err(FetchError::Unknown { value: 9, .. })
        ));
    }

    fn stream() -> Vec<u8> {
        stream_with(3 * MAX_CHUNK / 2)
    }

    /// Four answers: whole, gone, a delta of `delta_len` bytes, empty.
    fn stream_with(delta_len: usize) -> Vec<u8> {
        let mut w = StreamWriter::new(Vec::new()).unwrap();
        w.start(Form::Whole, None).unwrap();
        w.data(b"hello ").unwrap();
        w.data(b"world").unwrap();
        w.end().unwrap();
        w.start(Form::Gone, None).unwrap();
        w.end().unwrap();
        w.start(Form::Delta, Some(300)).unwrap();
        w.data(&vec![7; delta_len]).unwrap();
        w.end().unwrap();
        w.start(Form::Whole, None).unwrap();
        w.end().unwrap();
        w.finish().unwrap()
    }

    /// Every event, with the data of each answer joined.
    fn parse_in_pieces(
        bytes: &[u8],
        piece: usize,
        asked: usize,
    ) -> Result<Vec<String>, FetchError> {
        let mut p = StreamParser::new(asked);
        let mut seen = Vec::new();
        let mut data = 0usize;
        for part in bytes.chunks(piece.max(1)) {
            p.feed(part, &mut |e: Event<'_>| -> Result<(), FetchError> {
                match e {
                    Event::Start {
                        index,
                        form,
                        result_size,
                    } => {
                        data = 0;
                        seen.push(format!("{index} {form:?} {result_size:?}"));
                    }
                    Event::Data(d) => data += d.len(),
                    Event::End { index } => seen.push(format!("{index} end {data}")),
                }
                Ok(())
            })?;
        }
        p.finish()?;
        Ok(seen)
    }

    #[test]
    fn streams_parse_the_same_in_pieces_of_any_size() {
        let bytes = stream();
        let whole = parse_in_pieces(&bytes, bytes.len(), 4).unwrap();
        assert_eq!(
            whole,
            [
                "0 Whole None",
                "0 end 11",
                "1 Gone None",
                "1 end 0",
                "2 Delta Some(300)",
                &format!("2 end {}", 3 * MAX_CHUNK / 2),
                "3 Whole None",
                "3 end 0"
            ]
        );
        for piece in [1, 2, 3, 5, 7, 4096] {
            assert_eq!(parse_in_pieces(&bytes, piece, 4).unwrap(), whole, "{piece}");
        }
    }

    #[test]
    fn cut_and_damaged_streams_are_typed_errors() {
        let bytes = stream_with(300);
        for cut in 0..bytes.len() {
            let e = parse_in_pieces(&bytes[..cut], 5, 4).unwrap_err();
            assert!(e.is_incomplete(), "cut at {cut}: {e}");
        }
        // More answers than asked, fewer, a byte after the end.
        assert!(parse_in_pieces(&bytes, 64, 3).is_err());
        assert!(matches!(
            parse_in_pieces(&bytes, 64, 5),
            Err(FetchError::EarlyEnd { .. })
        ));
        let mut after = bytes.clone();
        after.push(0);
        assert!(matches!(
            parse_in_pieces(&after, 64, 4),
            Err(FetchError::AfterEnd { .. })
        ));
        let mut form = bytes.clone();
        form[4] = 9;
        assert!(matches!(
            parse_in_pieces(&form, 64, 4),
            Err(FetchError::Unknown { value: 9, .. })
        ));
        let mut chunk = STREAM_MAGIC.to_vec();
        chunk.push(0);
        varint::put(&mut chunk, MAX_CHUNK as u64 + 1);
        assert!(matches!(
            parse_in_pieces(&chunk, 3, 1),
            Err(FetchError::TooLarge { .. })
        ));
        assert_eq!(parse_in_pieces(b"ISBX", 4, 1), Err(FetchError::BadMagic));
        let mut overlong = STREAM_MAGIC.to_vec();
        overlong.push(0);
        overlong.extend_from_slice(&[0xff; 12]);
        assert!(matches!(
            parse_in_pieces(&overlong, 2, 1),
            Err(FetchError::Overlong { .. })
        ));
    }
}
