//! Serving files: whole, by one range or several (multipart/byteranges),
//! with ETag, Last-Modified, If-None-Match, If-Range and 416. Tree files are
//! opened without following symbolic links, and only below the export's root.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::TryStreamExt;
use http_body_util::{BodyExt, StreamBody};
use http_range_header::RangeUnsatisfiableError;
use hyper::body::Frame;
use hyper::header;
use hyper::{Method, Request, Response, StatusCode};
use intersync_protocol::{TreePath, Version};
use tokio_util::io::ReaderStream;

use super::coding;
use super::{Body, Incoming, Refusal, full};
use crate::export::Export;
use crate::tree::EntryKind;

/// Most bytes a multi-range answer carries; past this, ask for fewer ranges.
const MAX_MULTIRANGE_BYTES: u64 = 64 << 20;
/// Most ranges in one request.
const MAX_RANGES: usize = 256;

/// A file ready to be answered with.
pub struct Served {
    pub file: File,
    pub len: u64,
    pub etag: String,
    pub modified: Option<SystemTime>,
    pub cache_control: &'static str,
    /// The whole file may be answered compressed, if it compresses and
    /// the client takes a coding ([`coding`]): a file's content, not a
    /// journal file, signature or pack (compressed already, or read by range).
    pub codable: bool,
}

pub async fn serve_tree_file(
    export: &Arc<Export>,
    req: &Request<Incoming>,
    path: TreePath,
) -> Result<Response<Body>, Refusal> {
    let export = export.clone();
    // Whoever GETs a file holds its version next: keep it for patches.
    let keeps = req.method() == Method::GET;
    let served = tokio::task::spawn_blocking(move || -> Result<Served, Refusal> {
        let mut inner = export.lock();
        let entry = export
            .current(&mut inner, &path)?
            .ok_or_else(|| Refusal::new(StatusCode::NOT_FOUND, "no such file"))?;
        let version = match entry.kind {
            EntryKind::File { version, .. } => version,
            EntryKind::Dir => {
                return Err(Refusal::new(StatusCode::NOT_FOUND, "a folder, not a file"));
            }
            EntryKind::Symlink { .. } => {
                return Err(Refusal::new(
                    StatusCode::NOT_FOUND,
                    "a symbolic link, not a file",
                ));
            }
        };
        let file = crate::beneath::open_file(export.root(), &path)?;
        let meta = file
            .metadata()
            .map_err(|e| Refusal::new(StatusCode::NOT_FOUND, e.to_string()))?;
        drop(inner);
        if keeps {
            export.keep(version, &file, meta.len());
        }
        Ok(Served {
            len: meta.len(),
            modified: meta.modified().ok(),
            file,
            etag: version.etag(),
            cache_control: "no-cache",
            codable: true,
        })
    })
    .await
    .map_err(|e| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    respond(req, served).await
}

/// `GET /.intersync/version/<hex>`: the content of a version, from the file
/// that has it now. An immutable URL must never carry other bytes (a cache
/// would keep them for a year), so the file is served only while its stat
/// still vouches for the journaled version, or after hashing to it.
pub async fn serve_version(
    export: &Arc<Export>,
    req: &Request<Incoming>,
    version: &str,
) -> Result<Response<Body>, Refusal> {
    let version: Version = version
        .parse()
        .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, format!("bad version: {e}")))?;
    let gone = || Refusal::new(StatusCode::NOT_FOUND, "no file has that version now");
    let export = export.clone();
    let keeps = req.method() == Method::GET;
    let served = tokio::task::spawn_blocking(move || -> Result<Served, Refusal> {
        let (file, meta, _) = export.version_file(version)?.ok_or_else(gone)?;
        if keeps {
            export.keep(version, &file, meta.len());
        }
        Ok(Served {
            len: meta.len(),
            modified: None,
            file,
            etag: version.etag(),
            cache_control: super::IMMUTABLE,
            codable: true,
        })
    })
    .await
    .map_err(|e| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    respond(req, served).await
}

/// Serves a pack (immutable, by range too; its files are checked by the
/// client, each against its version).
pub async fn serve_pack(req: &Request<Incoming>, path: &Path) -> Result<Response<Body>, Refusal> {
    let file = File::open(path).map_err(|_| Refusal::new(StatusCode::NOT_FOUND, "no such pack"))?;
    let len = file
        .metadata()
        .map_err(|e| Refusal::new(StatusCode::NOT_FOUND, e.to_string()))?
        .len();
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("pack");
    let served = Served {
        file,
        len,
        etag: format!("\"{name}\""),
        modified: None,
        cache_control: super::IMMUTABLE,
        codable: false,
    };
    respond(req, served).await
}

/// Serves the list of packs, written first when a newer checkpoint is
/// there (`Export::pack_list`): revalidated by caches, as the head is not
/// cached at all.
pub async fn serve_pack_list(
    export: &Arc<Export>,
    req: &Request<Incoming>,
) -> Result<Response<Body>, Refusal> {
    let export = export.clone();
    let list = tokio::task::spawn_blocking(move || export.pack_list())
        .await
        .map_err(|e| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(super::writes::internal)?;
    let etag = format!("\"packs-{}\"", &blake3::hash(&list).to_hex()[..16]);
    let builder = Response::builder()
        .header(header::ETAG, &etag)
        .header(header::CACHE_CONTROL, "no-cache")
        .header(header::CONTENT_TYPE, "application/json");
    if has_it_already(req, &etag) {
        return Ok(builder
            .status(StatusCode::NOT_MODIFIED)
            .body(full(Bytes::new()))
            .expect("valid response"));
    }
    let body = match req.method() == Method::HEAD {
        true => Bytes::new(),
        false => Bytes::from(list.as_ref().clone()),
    };
    Ok(builder
        .header(header::CONTENT_LENGTH, list.len())
        .body(full(body))
        .expect("valid response"))
}

/// Serves a journal segment or checkpoint: immutable once sealed; the open
/// segment (`committed` is its durable length) only up to what is durable.
pub async fn serve_state_file(
    req: &Request<Incoming>,
    path: &Path,
    committed: Option<u64>,
) -> Result<Response<Body>, Refusal> {
    let file = File::open(path)
        .map_err(|_| Refusal::new(StatusCode::NOT_FOUND, "no such journal file"))?;
    let on_disk = file
        .metadata()
        .map_err(|e| Refusal::new(StatusCode::NOT_FOUND, e.to_string()))?
        .len();
    let len = committed.map_or(on_disk, |c| c.min(on_disk));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("kml");
    if committed.is_none() {
        let (path, name) = (path.to_owned(), name.to_owned());
        tokio::task::spawn_blocking(move || intact_state_file(&path, &name))
            .await
            .map_err(|e| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    }
    if committed.is_none()
        && req.method() == Method::GET
        && !req.headers().contains_key(header::RANGE)
        && coding::accepts(req.headers(), "zstd")
    {
        return compressed_state_file(req, path, file, name).await;
    }
    let (etag, cache_control) = if committed.is_some() {
        // The open segment only grows: a length names its content.
        (format!("\"{name}-{len}\""), "no-cache")
    } else {
        (format!("\"{name}\""), super::IMMUTABLE)
    };
    respond(
        req,
        Served {
            file,
            len,
            etag,
            modified: None,
            cache_control,
            codable: false,
        },
    )
    .await
}

/// Sealed segments and checkpoints found intact, by path and what their
/// metadata said then: each is read and checked once, not at every request.
static INTACT: std::sync::Mutex<Vec<(std::path::PathBuf, FileId)>> =
    std::sync::Mutex::new(Vec::new());
/// Inode, length, modification and change times: a file the same by all
/// four was not written since.
type FileId = (u64, u64, i64, i64);
/// How many [`INTACT`] remembers.
const INTACT_KEPT: usize = 1024;

/// Refuses a sealed segment or checkpoint whose records do not all check
/// (a byte flipped on disk since it was written): the server never hands
/// out a damaged journal. Written once and never changed, a file is
/// checked again only when its inode, length or times change.
fn intact_state_file(path: &Path, name: &str) -> Result<(), Refusal> {
    use std::os::unix::fs::MetadataExt;
    let internal = |e: io::Error| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    let meta = std::fs::metadata(path).map_err(internal)?;
    let id = (
        meta.ino(),
        meta.len(),
        meta.mtime_nsec() + meta.mtime() * 1_000_000_000,
        meta.ctime(),
    );
    let lock = || INTACT.lock().unwrap_or_else(|p| p.into_inner());
    if lock().iter().any(|(p, i)| p == path && *i == id) {
        return Ok(());
    }
    let bytes = std::fs::read(path).map_err(internal)?;
    let damage = match intersync_protocol::kml::SegmentReader::new(&bytes) {
        Err(e) => Some(e),
        Ok(records) => records.filter_map(Result::err).next(),
    };
    if let Some(e) = damage {
        tracing::error!(file = %path.display(), error = %e, "a journal file is damaged; it is not served");
        return Err(Refusal::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the journal file {name} is damaged ({e}); the server does not serve it"),
        ));
    }
    let mut intact = lock();
    intact.retain(|(p, _)| p != path);
    if intact.len() >= INTACT_KEPT {
        intact.remove(0);
    }
    intact.push((path.to_owned(), id));
    Ok(())
}

/// The compressed forms of the journal files asked for last, shared by
/// every export of the process (their paths differ): a checkpoint is read
/// whole by every new client, and compressing it once is enough.
static COMPRESSED: std::sync::Mutex<Vec<(std::path::PathBuf, Bytes)>> =
    std::sync::Mutex::new(Vec::new());
/// Most bytes [`COMPRESSED`] keeps.
const COMPRESSED_BUDGET: usize = 64 << 20;
/// zstd's level for journal files: records compress about threefold.
const STATE_LEVEL: i32 = 3;

/// A sealed segment or checkpoint, whole, as one zstd frame
/// (`Content-Encoding: zstd`, an ETag of its own).
async fn compressed_state_file(
    req: &Request<Incoming>,
    path: &Path,
    file: File,
    name: &str,
) -> Result<Response<Body>, Refusal> {
    let etag = format!("\"{name}.zst\"");
    let builder = Response::builder()
        .header(header::ETAG, &etag)
        .header(header::CACHE_CONTROL, super::IMMUTABLE)
        .header(header::VARY, "accept-encoding");
    if has_it_already(req, &etag) {
        return Ok(builder
            .status(StatusCode::NOT_MODIFIED)
            .body(full(Bytes::new()))
            .expect("valid response"));
    }
    let path = path.to_owned();
    let bytes = tokio::task::spawn_blocking(move || -> io::Result<Bytes> {
        let cached = |cache: &Vec<(std::path::PathBuf, Bytes)>| {
            cache
                .iter()
                .find(|(p, _)| *p == path)
                .map(|(_, b)| b.clone())
        };
        if let Some(bytes) = cached(&COMPRESSED.lock().unwrap_or_else(|p| p.into_inner())) {
            return Ok(bytes);
        }
        let bytes = Bytes::from(zstd::stream::encode_all(file, STATE_LEVEL)?);
        let mut cache = COMPRESSED.lock().unwrap_or_else(|p| p.into_inner());
        if bytes.len() <= COMPRESSED_BUDGET / 4 && cached(&cache).is_none() {
            cache.push((path, bytes.clone()));
            while cache.iter().map(|(_, b)| b.len()).sum::<usize>() > COMPRESSED_BUDGET {
                cache.remove(0);
            }
        }
        Ok(bytes)
    })
    .await
    .map_err(|e| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(builder
        .header(header::CONTENT_ENCODING, "zstd")
        .header(header::CONTENT_LENGTH, bytes.len())
        .body(full(bytes))
        .expect("valid response"))
}

/// The request's `If-None-Match` names `etag`: the client holds it (304).
fn has_it_already(req: &Request<Incoming>, etag: &str) -> bool {
    req.headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|inm| etag_matches(inm, etag))
}

fn etag_matches(list: &str, etag: &str) -> bool {
    list.split(',')
        .map(str::trim)
        .any(|t| t == "*" || t == etag)
}

/// Answers a GET or HEAD for a file, honouring the conditional and range
/// headers, and `Accept-Encoding` for the whole of a file that compresses.
pub async fn respond(
    req: &Request<Incoming>,
    mut served: Served,
) -> Result<Response<Body>, Refusal> {
    let headers = req.headers();
    let codable = served.codable && served.len >= coding::MIN_CODED;
    let coded = match coding::chosen(headers) {
        Some(c) if codable && !headers.contains_key(header::RANGE) => {
            let file = served
                .file
                .try_clone()
                .map_err(|e| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            let len = served.len;
            tokio::task::spawn_blocking(move || coding::pays(&file, len))
                .await
                .unwrap_or(false)
                .then_some(c)
        }
        _ => None,
    };
    if let Some(c) = coded {
        served.etag = c.etag(&served.etag);
    }
    let mut builder = Response::builder()
        .header(header::ETAG, &served.etag)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CACHE_CONTROL, served.cache_control);
    if codable {
        builder = builder.header(header::VARY, "accept-encoding");
    }
    if let Some(m) = served.modified {
        builder = builder.header(header::LAST_MODIFIED, httpdate::fmt_http_date(m));
    }
    if let Some(inm) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        && etag_matches(inm, &served.etag)
    {
        return Ok(builder
            .status(StatusCode::NOT_MODIFIED)
            .body(full(Bytes::new()))
            .expect("valid response"));
    }
    let head_only = req.method() == Method::HEAD;
    let ranges = match ranges_asked(headers, &served) {
        Ok(ranges) => ranges,
        Err(()) => {
            return Ok(builder
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{}", served.len))
                .body(full(Bytes::new()))
                .expect("valid response"));
        }
    };
    let Served { file, len, .. } = served;
    match ranges {
        None if let Some(c) = coded => Ok(builder
            .status(StatusCode::OK)
            .header(header::CONTENT_ENCODING, c.name())
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(if head_only {
                full(Bytes::new())
            } else {
                coding::compressed(file, len, c)
            })
            .expect("valid response")),
        None => {
            let body = if head_only {
                full(Bytes::new())
            } else {
                stream(file, 0, len)
            };
            Ok(builder
                .status(StatusCode::OK)
                .header(header::CONTENT_LENGTH, len)
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .body(body)
                .expect("valid response"))
        }
        Some(r) if r.len() == 1 => {
            let (start, end) = (*r[0].start(), *r[0].end());
            let body = if head_only {
                full(Bytes::new())
            } else {
                stream(file, start, end - start + 1)
            };
            Ok(builder
                .status(StatusCode::PARTIAL_CONTENT)
                .header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"))
                .header(header::CONTENT_LENGTH, end - start + 1)
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .body(body)
                .expect("valid response"))
        }
        Some(r) => {
            let total: u64 = r.iter().map(|x| x.end() - x.start() + 1).sum();
            if total > MAX_MULTIRANGE_BYTES {
                return Err(Refusal::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "too many bytes in one multi-range request",
                ));
            }
            let (length, body) = multipart(file, &r, len);
            Ok(builder
                .status(StatusCode::PARTIAL_CONTENT)
                .header(
                    header::CONTENT_TYPE,
                    format!("multipart/byteranges; boundary={BOUNDARY}"),
                )
                .header(header::CONTENT_LENGTH, length)
                .body(if head_only { full(Bytes::new()) } else { body })
                .expect("valid response"))
        }
    }
}

/// The ranges a request asks for and may have (`If-Range` naming this
/// version, or a date that is its `Last-Modified`): `None` for the whole
/// file (no ranges, or a header that is not a valid one), `Err` when none
/// can be satisfied.
fn ranges_asked(
    headers: &hyper::HeaderMap,
    served: &Served,
) -> Result<Option<Vec<std::ops::RangeInclusive<u64>>>, ()> {
    let range_applies = match headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(tag) if tag.starts_with('"') || tag.starts_with("W/") => tag == served.etag,
        Some(date) => match (httpdate::parse_http_date(date), served.modified) {
            (Ok(d), Some(m)) => httpdate::fmt_http_date(d) == httpdate::fmt_http_date(m),
            _ => false,
        },
    };
    let Some(range) = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .filter(|_| range_applies)
    else {
        return Ok(None);
    };
    match http_range_header::parse_range_header_with_max_ranges(
        range,
        MAX_RANGES.try_into().expect("nonzero"),
    )
    .and_then(|p| p.validate(served.len))
    {
        Err(RangeUnsatisfiableError::Invalid(_)) => Ok(None),
        Ok(r) if r.is_empty() => Ok(None),
        Ok(r) => Ok(Some(r)),
        Err(_) => Err(()),
    }
}

const BOUNDARY: &str = "intersync-byteranges-4e2b1c";

/// A multipart/byteranges body of `ranges` of `file` (`len` bytes in all),
/// and its length. It is streamed, a piece at a time, so that a slow
/// reader of many ranges holds a piece, not the whole answer; the file is
/// read with `pread`, so one truncated meanwhile ends the body early.
fn multipart(file: File, ranges: &[std::ops::RangeInclusive<u64>], len: u64) -> (u64, Body) {
    /// A part's head or the closing boundary, or bytes of the file.
    enum Piece {
        Text(Bytes),
        File { at: u64, len: u64 },
    }
    const PIECE: u64 = 256 * 1024;
    let mut pieces = std::collections::VecDeque::with_capacity(ranges.len() * 2 + 1);
    let mut length = 0;
    for (i, range) in ranges.iter().enumerate() {
        let (start, end) = (*range.start(), *range.end());
        // The CRLF before a boundary belongs to the boundary (RFC 2046).
        let head = format!(
            "{}--{BOUNDARY}\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes {start}-{end}/{len}\r\n\r\n",
            if i == 0 { "" } else { "\r\n" }
        );
        length += head.len() as u64 + (end - start + 1);
        pieces.push_back(Piece::Text(Bytes::from(head)));
        pieces.push_back(Piece::File {
            at: start,
            len: end - start + 1,
        });
    }
    let tail = format!("\r\n--{BOUNDARY}--\r\n");
    length += tail.len() as u64;
    pieces.push_back(Piece::Text(Bytes::from(tail)));
    let file = Arc::new(file);
    let frames =
        futures_util::stream::try_unfold((file, pieces), |(file, mut pieces)| async move {
            let data = match pieces.pop_front() {
                None => return Ok(None),
                Some(Piece::Text(text)) => text,
                Some(Piece::File { at, len }) => {
                    let n = len.min(PIECE);
                    if n < len {
                        pieces.push_front(Piece::File {
                            at: at + n,
                            len: len - n,
                        });
                    }
                    let from = file.clone();
                    tokio::task::spawn_blocking(move || {
                        let mut buf = vec![0; n as usize];
                        std::os::unix::fs::FileExt::read_exact_at(&*from, &mut buf, at)?;
                        Ok::<_, io::Error>(Bytes::from(buf))
                    })
                    .await
                    .map_err(io::Error::other)??
                }
            };
            Ok(Some((Frame::data(data), (file, pieces))))
        });
    (length, StreamBody::new(frames).boxed())
}

/// The `len` bytes of `file` from `start`, as a streamed body.
pub fn stream(mut file: File, start: u64, len: u64) -> Body {
    if let Err(e) = file.seek(SeekFrom::Start(start)) {
        let err = futures_util::stream::once(async move { Err::<Frame<Bytes>, _>(e) });
        return StreamBody::new(err).boxed();
    }
    let reader = tokio::io::AsyncReadExt::take(tokio::fs::File::from_std(file), len);
    let frames = ReaderStream::with_capacity(reader, 256 * 1024).map_ok(Frame::data);
    StreamBody::new(frames).boxed()
}
