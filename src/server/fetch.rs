//! `POST /.intersync/fetch`: many files in one request, their contents in
//! one zstd-compressed stream (`protocol::fetch`). Each entry is answered
//! the cheapest way the server can: a patch from the version the client
//! holds, a librsync delta against the signature it sent, or the whole
//! content; or it says why not (gone, no patch).
//!
//! The stream is written by a blocking task into a bounded channel that
//! the response body drains, so memory stays a few chunks whatever the
//! batch; when the client goes away, the body is dropped, the channel
//! closes and the task stops at its next write. Whole files are read with
//! ordinary reads, so a file truncated meanwhile only makes its entry fail
//! the client's check; a file a delta is made from is mapped under the
//! SIGBUS guard and its bytes checked against the version before the
//! delta is sent.

use std::io::{self, Write};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::header;
use hyper::{Request, Response, StatusCode};
use intersync_protocol::Version;
use intersync_protocol::fetch::{
    Form, MAX_SIGNATURE, MEDIA_FETCH_STREAM, StreamWriter, Want, parse_request,
};

use super::{Body, Incoming, Refusal};
use crate::delta::{MappedFile, Signature, write_delta};
use crate::export::Export;

/// Largest request body: the entries of a batch and their signatures.
const MAX_REQUEST_BYTES: usize = MAX_SIGNATURE * 4;
/// zstd's level for the stream: fast, and within a few percent of level 9
/// on source trees.
const LEVEL: i32 = 3;
/// Bytes handed to the response body at a time, and how many may wait.
const PIECE: usize = 256 * 1024;
const PIECES_WAITING: usize = 8;
/// Files up to this size may be answered by a delta made in memory.
const MAX_DELTA_FILE: u64 = 16 << 20;

pub async fn fetch(
    export: &Arc<Export>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Refusal> {
    let (body, share) =
        super::budget::read_whole(req.into_body(), MAX_REQUEST_BYTES, "fetch request").await?;
    parse_request(&body)
        .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, format!("bad fetch request: {e}")))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(PIECES_WAITING);
    let export = export.clone();
    tokio::task::spawn_blocking(move || {
        // The request's memory is counted until its answer is written.
        let _share = share;
        let sink = Pieces {
            tx: tx.clone(),
            buf: Vec::with_capacity(PIECE),
        };
        if let Err(e) = answer(&export, &body, sink) {
            // The client went away (the channel closed), or a read failed:
            // the stream ends unfinished, which the client sees.
            tracing::debug!(error = %crate::monitor::Chain(&e), "fetch stream ended early");
            let _ = tx.blocking_send(Err(e));
        }
    });
    let frames = tokio_stream_from(rx).map(|piece| piece.map(Frame::data));
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, MEDIA_FETCH_STREAM)
        .header(header::CACHE_CONTROL, "no-store")
        .body(BodyExt::boxed(StreamBody::new(frames)))
        .expect("valid response"))
}

fn tokio_stream_from<T>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Writes the answer to the request in `body` (already checked) into `sink`.
fn answer(export: &Export, body: &[u8], sink: Pieces) -> io::Result<()> {
    let wants = parse_request(body).map_err(io::Error::other)?;
    let encoder = zstd::stream::write::Encoder::new(sink, LEVEL)?;
    let mut stream = StreamWriter::new(encoder)?;
    for want in &wants {
        answer_one(export, want, &mut stream)?;
    }
    let encoder = stream.finish()?;
    encoder.finish()?.send_rest()
}

fn answer_one<W: Write>(
    export: &Export,
    want: &Want<'_>,
    out: &mut StreamWriter<W>,
) -> io::Result<()> {
    match *want {
        Want::Whole(version) => whole(export, version, out),
        Want::WholeByPrefix(prefix) => {
            // (The lock is let go before `whole` takes it again.)
            let found = export.lock().version_with_prefix(&prefix);
            match found {
                Some(version) => whole(export, version, out),
                None => {
                    out.start(Form::Gone, None)?;
                    out.end()
                }
            }
        }
        Want::Patch {
            version,
            from,
            or_whole,
        } => match export.patch(from, version).map_err(io::Error::other)? {
            Some(patch) => {
                out.start(Form::Patch, None)?;
                copy(&patch.file, patch.len, out)?;
                out.end()
            }
            None if or_whole => whole(export, version, out),
            None => {
                out.start(Form::NoPatch, None)?;
                out.end()
            }
        },
        Want::Delta { version, signature } => delta(export, version, signature, out),
        Want::Signature(version) => match export.signature(version).map_err(io::Error::other)? {
            Some(signature) => {
                out.start(Form::Signature, None)?;
                out.data(&signature)?;
                out.end()
            }
            None => {
                out.start(Form::Gone, None)?;
                out.end()
            }
        },
    }
}

/// The whole content of `version` (kept: the client holds it next), or Gone.
fn whole<W: Write>(export: &Export, version: Version, out: &mut StreamWriter<W>) -> io::Result<()> {
    let Some((file, meta, path)) = export.version_file(version).map_err(io::Error::other)? else {
        out.start(Form::Gone, None)?;
        return out.end();
    };
    out.start(Form::Whole, None)?;
    copy(&file, meta.len(), out)?;
    out.end()?;
    export.keep_soon(version, path);
    Ok(())
}

/// A delta from the base `signature` describes to `version`, or the whole
/// content when that is no smaller (or the signature is not usable).
fn delta<W: Write>(
    export: &Export,
    version: Version,
    signature: &[u8],
    out: &mut StreamWriter<W>,
) -> io::Result<()> {
    let sig = Signature::from_bytes(signature.to_vec())
        .ok()
        .filter(|s| s.header().block_len >= super::meta::MIN_SIGNATURE_BLOCK_LEN);
    let Some((file, meta, _)) = export.version_file(version).map_err(io::Error::other)? else {
        out.start(Form::Gone, None)?;
        return out.end();
    };
    let (Some(sig), true) = (sig, meta.len() <= MAX_DELTA_FILE) else {
        return whole(export, version, out);
    };
    let data = MappedFile::map(&file)?;
    let mut delta = Vec::new();
    write_delta(sig.view(), &data, &mut delta)?;
    if !data.intact() || Version::of(&data) != version {
        out.start(Form::Gone, None)?;
        return out.end();
    }
    if delta.len() as u64 >= meta.len() {
        return whole(export, version, out);
    }
    out.start(Form::Delta, Some(data.len() as u64))?;
    out.data(&delta)?;
    out.end()?;
    export.keep_bytes(version, &data);
    Ok(())
}

/// `len` bytes of `file` from its start into the open entry, a piece at a
/// time (a file that shrank meanwhile gives fewer).
fn copy<W: Write>(file: &std::fs::File, len: u64, out: &mut StreamWriter<W>) -> io::Result<()> {
    // No bigger than the file: a zeroed 128 KiB for each of 10,000 small
    // files is a fresh mapping each, and costs more than their bytes.
    let mut buf = vec![0u8; (len as usize).clamp(1, 128 * 1024)];
    let mut at = 0u64;
    loop {
        let n = std::os::unix::fs::FileExt::read_at(file, &mut buf, at)?;
        let n = n.min((len - at) as usize);
        if n == 0 {
            break;
        }
        out.data(&buf[..n])?;
        at += n as u64;
        if at >= len {
            break;
        }
    }
    Ok(())
}

/// A writer that hands what it is given to the response body in pieces.
struct Pieces {
    tx: tokio::sync::mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl Pieces {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(PIECE)));
        self.tx
            .blocking_send(Ok(piece))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }

    fn send_rest(mut self) -> io::Result<()> {
        self.send()
    }
}

impl Write for Pieces {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= PIECE {
            self.send()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}
