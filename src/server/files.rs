//! Serving files: whole, by one range or several (multipart/byteranges),
//! with ETag, Last-Modified, If-None-Match, If-Range and 416. Tree files are
//! opened without following symbolic links, and only below the export's root.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
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
        })
    })
    .await
    .map_err(|e| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    respond(req, served).await
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
    if committed.is_none()
        && req.method() == Method::GET
        && !req.headers().contains_key(header::RANGE)
        && accepts_zstd(req.headers())
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
        },
    )
    .await
}

/// The client takes `Content-Encoding: zstd` (`zstd;q=0` refuses it).
pub(super) fn accepts_zstd(headers: &hyper::HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';');
            let name = parts.next().unwrap_or("").trim();
            let q = parts
                .find_map(|p| p.trim().strip_prefix("q="))
                .and_then(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            name.eq_ignore_ascii_case("zstd") && q > 0.0
        })
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
    if req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|inm| etag_matches(inm, &etag))
    {
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

fn etag_matches(list: &str, etag: &str) -> bool {
    list.split(',')
        .map(str::trim)
        .any(|t| t == "*" || t == etag)
}

/// Answers a GET or HEAD for a file, honouring the conditional and range headers.
pub async fn respond(req: &Request<Incoming>, served: Served) -> Result<Response<Body>, Refusal> {
    let headers = req.headers();
    let mut builder = Response::builder()
        .header(header::ETAG, &served.etag)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CACHE_CONTROL, served.cache_control);
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
    let Served { mut file, len, .. } = served;
    match ranges {
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
            let body = tokio::task::spawn_blocking(move || multipart(&mut file, &r, len, total))
                .await
                .map_err(|e| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
                .map_err(|e| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            Ok(builder
                .status(StatusCode::PARTIAL_CONTENT)
                .header(
                    header::CONTENT_TYPE,
                    format!("multipart/byteranges; boundary={BOUNDARY}"),
                )
                .header(header::CONTENT_LENGTH, body.len())
                .body(if head_only {
                    full(Bytes::new())
                } else {
                    full(body)
                })
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

/// A multipart/byteranges body of `ranges` of `file` (`len` bytes in all;
/// `total` bytes of ranges).
fn multipart(
    file: &mut File,
    ranges: &[std::ops::RangeInclusive<u64>],
    len: u64,
    total: u64,
) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(total as usize + ranges.len() * 100);
    for range in ranges {
        let (start, end) = (*range.start(), *range.end());
        out.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes {start}-{end}/{len}\r\n\r\n"
            )
            .as_bytes(),
        );
        file.seek(SeekFrom::Start(start))?;
        let at = out.len();
        out.resize(at + (end - start + 1) as usize, 0);
        file.read_exact(&mut out[at..])?;
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    Ok(out)
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
