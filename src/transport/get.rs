//! `intersync get URL FILE`: one file from any web server, with no InterSync
//! metadata at all. Conditional (If-None-Match, If-Modified-Since), so an
//! unchanged file costs one small request; resumable (Range from the
//! partial's length, guarded by If-Range) after an interruption; redirects
//! followed (at most five); installed only whole and atomically.
//!
//! What is known of FILE's source sits beside it in `.FILE.intersync-get`
//! (JSON), and an unfinished download in `.FILE.intersync-partial`.

use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::BodyStream;
use hyper::header;
use hyper::{Method, StatusCode};
use serde::{Deserialize, Serialize};

use super::{HttpRemote, TransportError};
use crate::install::PendingFile;

/// What the server said about the copy we hold (or are fetching).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Validators {
    url: String,
    etag: Option<String>,
    last_modified: Option<String>,
}

/// What a `get` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Got {
    /// The server said the file has not changed (304).
    Unchanged,
    /// Fetched; `resumed_from` bytes were already here.
    Fetched { bytes: u64, resumed_from: u64 },
}

fn side(file: &Path, suffix: &str) -> PathBuf {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    file.with_file_name(format!(".{name}.{suffix}"))
}

fn local(path: &Path) -> impl FnOnce(std::io::Error) -> TransportError + '_ {
    move |source| TransportError::Local {
        what: path.display().to_string(),
        source,
    }
}

fn validators(headers: &header::HeaderMap, url: &str) -> Validators {
    let text = |h| {
        headers
            .get(h)
            .and_then(|v: &header::HeaderValue| v.to_str().ok())
            .map(str::to_owned)
    };
    Validators {
        url: url.to_owned(),
        etag: text(header::ETAG).filter(|t| !t.starts_with("W/")),
        last_modified: text(header::LAST_MODIFIED),
    }
}

/// Fetches `url` into `file` (see the module documentation).
pub async fn get(remote: &HttpRemote, url: &str, file: &Path) -> Result<Got, TransportError> {
    match get_once(remote, url, file).await {
        // The partial was already whole, the server changed its mind about
        // ranges, or it resumed another version: start from zero, once.
        Err(TransportError::Refused { status: 416, .. } | TransportError::Changed { .. }) => {
            let _ = fs::remove_file(side(file, "intersync-partial"));
            let _ = fs::remove_file(side(file, "intersync-partial-get"));
            get_once(remote, url, file).await
        }
        other => other,
    }
}

async fn get_once(remote: &HttpRemote, url: &str, file: &Path) -> Result<Got, TransportError> {
    let meta_path = side(file, "intersync-get");
    let partial_path = side(file, "intersync-partial");
    let known: Option<Validators> = fs::read(&meta_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let partial_known: Option<Validators> = fs::read(side(file, "intersync-partial-get"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let mut partial = OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(false)
        .open(&partial_path)
        .map_err(local(&partial_path))?;
    let have = partial.metadata().map_err(local(&partial_path))?.len();
    let (have, headers) = conditions(url, file, have, known.as_ref(), partial_known.as_ref());
    if have == 0 {
        partial.set_len(0).map_err(local(&partial_path))?;
    }
    let answer = remote
        .send_url(Method::GET, url, &headers, Bytes::new(), url)
        .await?;
    if answer.status == StatusCode::NOT_MODIFIED {
        return Ok(Got::Unchanged);
    }
    let v = validators(&answer.headers, url);
    let resumed = resumed_at(&answer, url, have, &v, partial_known.as_ref())?;
    if resumed.is_none() {
        // The whole file (the partial was stale, or ranges are not served).
        partial.set_len(0).map_err(local(&partial_path))?;
    }
    let resumed_from = resumed.unwrap_or(0);
    partial
        .seek(SeekFrom::Start(resumed_from))
        .map_err(local(&partial_path))?;
    let expected = answer
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // Remember what the partial's bytes are, so an interruption can resume.
    write_json(&side(file, "intersync-partial-get"), &v)?;
    let mut received = 0u64;
    let mut frames = BodyStream::new(answer.body);
    while let Some(frame) = frames.next().await {
        let frame = frame.map_err(|e| TransportError::Interrupted {
            what: url.into(),
            source: Box::new(e),
        })?;
        if let Ok(data) = frame.into_data() {
            partial.write_all(&data).map_err(local(&partial_path))?;
            received += data.len() as u64;
            remote.pace().await;
        }
    }
    if let Some(len) = expected
        && len != received
    {
        return Err(TransportError::BadAnswer {
            what: url.into(),
            reason: format!("{received} bytes of {len}: truncated"),
        });
    }
    partial.sync_all().map_err(local(&partial_path))?;
    drop(partial);
    fs::rename(&partial_path, file).map_err(local(file))?;
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(local(dir))?;
    }
    write_json(&meta_path, &v)?;
    let _ = fs::remove_file(side(file, "intersync-partial-get"));
    Ok(Got::Fetched {
        bytes: received,
        resumed_from,
    })
}

/// What to ask for, given the partial's `have` bytes: the rest of it,
/// with a strong validator of its bytes (`If-Range`); else the whole, with
/// a condition on the copy already fetched. The bytes kept of the partial
/// (0: start over) and the headers.
fn conditions(
    url: &str,
    file: &Path,
    have: u64,
    known: Option<&Validators>,
    partial_known: Option<&Validators>,
) -> (u64, Vec<(&'static str, String)>) {
    let mut headers = Vec::new();
    if let Some(v) = partial_known
        && have > 0
        && v.url == url
        && let Some(etag) = &v.etag
    {
        headers.push(("range", format!("bytes={have}-")));
        headers.push(("if-range", etag.clone()));
        return (have, headers);
    }
    if let Some(k) = known.filter(|k| k.url == url && file.exists()) {
        if let Some(etag) = &k.etag {
            headers.push(("if-none-match", etag.clone()));
        } else if let Some(lm) = &k.last_modified {
            headers.push(("if-modified-since", lm.clone()));
        }
    }
    (0, headers)
}

/// Where the answer resumes the partial (`None`: it is the whole file),
/// checked: a 206 must start at byte `have` and be of the same version.
fn resumed_at(
    answer: &super::http::Answer,
    url: &str,
    have: u64,
    v: &Validators,
    partial_known: Option<&Validators>,
) -> Result<Option<u64>, TransportError> {
    if answer.status != StatusCode::PARTIAL_CONTENT {
        return Ok(None);
    }
    let want = format!("bytes {have}-");
    let cr = answer
        .headers
        .get(header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !cr.starts_with(&want) {
        return Err(TransportError::BadAnswer {
            what: url.into(),
            reason: format!("resumed at {cr:?}, not byte {have}"),
        });
    }
    // A server that ignores If-Range sends the rest of another version;
    // its own ETag gives it away.
    if v.etag.is_some() && v.etag != partial_known.and_then(|k| k.etag.clone()) {
        return Err(TransportError::Changed { what: url.into() });
    }
    Ok(Some(have))
}

fn write_json(path: &Path, v: &Validators) -> Result<(), TransportError> {
    let mut out = PendingFile::create(path).map_err(local(path))?;
    out.write_all(&serde_json::to_vec(v).expect("json"))
        .map_err(local(path))?;
    out.install().map_err(local(path))
}
