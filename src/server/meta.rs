//! The InterSync resources under `/.intersync/`: the head document (with
//! long-poll), signatures of versions, and deltas against a client's signature.

use std::io::{Seek, SeekFrom};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::header::{self};
use hyper::{Request, Response, StatusCode};
use intersync_protocol::api::{
    HEADER_RESULT_SIZE, MEDIA_DELTA, MEDIA_PATCH, MEDIA_REFINE, MEDIA_SIGNATURE,
};
use intersync_protocol::{TreePath, Version};

use super::files::stream;
use super::{Body, Incoming, Refusal, full};
use crate::delta::{MappedFile, Signature, write_delta_until};
use crate::export::Export;

/// Literal bytes below which compressing a delta is not worth a round of zstd.
const MIN_COMPRESSIBLE: u64 = 4096;

/// Largest signature a client may upload: that of a file of about 20 GiB.
pub const MAX_SIGNATURE_BYTES: usize = 64 << 20;

/// Smallest block length of an uploaded signature. InterSync's policy
/// never goes under 512, librsync's under 256; tiny blocks only make the
/// server hash the same bytes over and over.
pub const MIN_SIGNATURE_BLOCK_LEN: u32 = 64;

/// A flag set when it is dropped: held by a request's handler, whose
/// future hyper drops when the client goes away.
#[derive(Default)]
struct GoneOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for GoneOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// `GET /.intersync/head[?wait=SECONDS]`. With `If-None-Match` naming the
/// current head and a wait, the answer is held until the journal moves or
/// the wait runs out (then 304).
pub async fn head(
    export: &Arc<Export>,
    req: &Request<Incoming>,
    max_wait: Duration,
) -> Result<Response<Body>, Refusal> {
    let wait = req
        .uri()
        .query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("wait="))
        .map(|v| {
            v.parse::<u64>()
                .map_err(|_| Refusal::new(StatusCode::BAD_REQUEST, "wait is whole seconds"))
        })
        .transpose()?
        .map_or(Duration::ZERO, |s| Duration::from_secs(s).min(max_wait));
    let known = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let tag = |seq: u64| format!("\"seq-{seq}\"");
    let mut rx = export.subscribe();
    let current = *rx.borrow_and_update();
    if known.as_deref() == Some(&tag(current)) {
        if !wait.is_zero() {
            let _ = tokio::time::timeout(wait, rx.changed()).await;
        }
        if *rx.borrow() == current {
            return Ok(Response::builder()
                .status(StatusCode::NOT_MODIFIED)
                .header(header::ETAG, tag(current))
                .header(header::CACHE_CONTROL, "no-cache")
                .body(full(Bytes::new()))
                .expect("valid response"));
        }
    }
    let mut head = export.head();
    head.http2 = true;
    let body = serde_json::to_vec(&head).expect("head serializes");
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ETAG, tag(head.latest_seq))
        .header(header::CACHE_CONTROL, "no-cache")
        .body(full(body))
        .expect("valid response"))
}

/// `GET /.intersync/sig/<version>`: the signature of a version the export
/// holds, computed once and kept. Immutable, like the version it describes.
pub async fn signature(export: &Arc<Export>, version: &str) -> Result<Response<Body>, Refusal> {
    let version: Version = version
        .parse()
        .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, format!("bad version: {e}")))?;
    let export = export.clone();
    let bytes = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, Refusal> {
        export
            .signature(version)?
            .ok_or_else(|| Refusal::new(StatusCode::NOT_FOUND, "no file has that version now"))
    })
    .await
    .map_err(|e| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, MEDIA_SIGNATURE)
        .header(header::ETAG, format!("\"sig-{version}\""))
        .header(header::CACHE_CONTROL, super::IMMUTABLE)
        .header(header::CONTENT_LENGTH, bytes.len())
        .body(full(bytes))
        .expect("valid response"))
}

/// `GET /.intersync/sig/<version>.coarse` and `.fine`: the static path's
/// two signature levels of a version of 1 MiB or more, as `intersync
/// export` writes them, made once and kept, so that clients reading
/// through a cache (`sync --via-cache`) take that path too. Immutable, with
/// ranges (the fine level is read by ranges). 404 for a smaller file, or
/// when no file has the version now.
pub async fn signature_level(
    export: &Arc<Export>,
    req: &Request<Incoming>,
    name: &str,
) -> Result<Response<Body>, Refusal> {
    use crate::export::SignatureLevel;
    let (version, level) = match name.rsplit_once('.') {
        Some((v, "coarse")) => (v, SignatureLevel::Coarse),
        Some((v, "fine")) => (v, SignatureLevel::Fine),
        _ => {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "no such signature level",
            ));
        }
    };
    let version: Version = version
        .parse()
        .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, format!("bad version: {e}")))?;
    let export = export.clone();
    let file = tokio::task::spawn_blocking(move || -> Result<std::fs::File, Refusal> {
        if !export.write_levels(version)? {
            return Err(Refusal::new(
                StatusCode::NOT_FOUND,
                "no file of 1 MiB or more has that version now",
            ));
        }
        std::fs::File::open(export.level_path(&version, level))
            .map_err(|e| Refusal::new(StatusCode::NOT_FOUND, e.to_string()))
    })
    .await
    .map_err(|e| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    let len = file
        .metadata()
        .map_err(|e| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .len();
    super::files::respond(
        req,
        super::files::Served {
            file,
            len,
            etag: format!("\"sig-{name}\""),
            modified: None,
            cache_control: super::IMMUTABLE,
            codable: false,
        },
    )
    .await
}

/// `GET /.intersync/patch/FROM/TO`: the patch from version FROM (which a
/// client holds) to version TO (which a file has now): deterministic, so
/// immutable and cacheable by anyone in between. 404 when the server no
/// longer has FROM, no file has TO, or the pair is too large for a patch:
/// the client takes the signature path then.
pub async fn patch(export: &Arc<Export>, pair: &str) -> Result<Response<Body>, Refusal> {
    let parse = |v: &str| {
        v.parse::<Version>()
            .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, format!("bad version: {e}")))
    };
    let (from, to) = pair
        .split_once('/')
        .ok_or_else(|| Refusal::new(StatusCode::BAD_REQUEST, "a patch is FROM/TO"))?;
    let (from, to) = (parse(from)?, parse(to)?);
    let export = export.clone();
    let patch = tokio::task::spawn_blocking(move || export.patch(from, to))
        .await
        .map_err(|e| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??
        .ok_or_else(|| Refusal::new(StatusCode::NOT_FOUND, "no patch between those versions"))?;
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, MEDIA_PATCH)
        .header(header::ETAG, format!("\"patch-{from}-{to}\""))
        .header(header::CACHE_CONTROL, super::IMMUTABLE)
        .header(HEADER_RESULT_SIZE, patch.result_len)
        .header(header::CONTENT_LENGTH, patch.len)
        .body(stream(patch.file, 0, patch.len))
        .expect("valid response"))
}

/// `POST /.intersync/delta/PATH` with a signature: a delta from that base to
/// the file's current content. The ETag is the version of exactly the bytes
/// the delta was made from, hashed in the same pass.
pub async fn delta(
    export: &Arc<Export>,
    path: TreePath,
    req: Request<Incoming>,
) -> Result<Response<Body>, Refusal> {
    answer_signature(export, path, req, false).await
}

/// `POST /.intersync/refine/PATH` with a coarse signature: the second round
/// of a multi-round delta (`delta::refine`), the file's current content
/// tiled into copies and gaps with a fine signature of the gaps; or, when
/// another round would not pay, a delta against the coarse signature, as
/// `delta` answers it.
pub async fn refine(
    export: &Arc<Export>,
    path: TreePath,
    req: Request<Incoming>,
) -> Result<Response<Body>, Refusal> {
    answer_signature(export, path, req, true).await
}

async fn answer_signature(
    export: &Arc<Export>,
    path: TreePath,
    req: Request<Incoming>,
    refine: bool,
) -> Result<Response<Body>, Refusal> {
    let (sig, zstd_ok, share) = read_signature(req).await?;
    let export = export.clone();
    // Set when this request is dropped (its client went away): the work
    // for it stops.
    let gone = GoneOnDrop::default();
    let stop = gone.0.clone();
    let answer = tokio::task::spawn_blocking(move || -> Result<_, Refusal> {
        // The signature's memory is counted until the work on it ends,
        // even when its client has gone.
        let _share = share;
        let (data, version) = current_content(&export, &path)?;
        let answer = match refine {
            true => crate::delta::refine::plan_until(sig.view(), &data, &stop)
                .answer(&data, &version)
                .map(|body| Answer::Refine {
                    body,
                    version,
                    size: data.len() as u64,
                }),
            false => None,
        };
        let answer = match answer {
            Some(answer) => answer,
            None => delta_answer(&sig, &data, version, zstd_ok, &stop)?,
        };
        if !data.intact() {
            return Err(shrank());
        }
        Ok(answer)
    })
    .await
    .map_err(|e| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(answer.into_response())
}

/// A signature from a request's body, and whether the client takes zstd.
/// The share of the memory budget it holds goes back when the returned
/// [`Share`](super::budget::Share) is dropped, after the answer is made.
async fn read_signature(
    req: Request<Incoming>,
) -> Result<(Signature, bool, super::budget::Share), Refusal> {
    let zstd_ok = super::coding::accepts(req.headers(), "zstd");
    let (body, share) =
        super::budget::read_whole(req.into_body(), MAX_SIGNATURE_BYTES, "signature").await?;
    let sig = Signature::from_bytes(body)
        .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, format!("bad signature: {e}")))?;
    let block_len = sig.header().block_len;
    if block_len < MIN_SIGNATURE_BLOCK_LEN {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            format!(
                "a block length of {block_len} is under {MIN_SIGNATURE_BLOCK_LEN}: more work than a delta could save"
            ),
        ));
    }
    Ok((sig, zstd_ok, share))
}

/// The file's current content, mapped, and its version hashed from exactly
/// those bytes. The client will hold that version: it is kept for patches.
fn current_content(export: &Export, path: &TreePath) -> Result<(MappedFile, Version), Refusal> {
    let mut inner = export.lock();
    export
        .current(&mut inner, path)?
        .filter(|e| e.version().is_some())
        .ok_or_else(|| Refusal::new(StatusCode::NOT_FOUND, "no such file"))?;
    drop(inner);
    let file = crate::beneath::open_file(export.root(), path)?;
    let data =
        MappedFile::map(&file).map_err(|e| Refusal::new(StatusCode::NOT_FOUND, e.to_string()))?;
    let version = Version::of(&data);
    if !data.intact() {
        return Err(shrank());
    }
    export.keep_bytes(version, &data);
    Ok((data, version))
}

/// The file lost bytes while a request read it (another program truncated
/// it): nothing made from what was read is answered.
fn shrank() -> Refusal {
    Refusal::new(
        StatusCode::CONFLICT,
        "the file changed while it was read; ask again",
    )
}

/// What a delta or refine request is answered with.
enum Answer {
    Delta {
        file: std::fs::File,
        len: u64,
        version: Version,
        size: u64,
        compressed: bool,
    },
    Refine {
        body: Vec<u8>,
        version: Version,
        size: u64,
    },
}

impl Answer {
    fn into_response(self) -> Response<Body> {
        match self {
            Answer::Delta {
                file,
                len,
                version,
                size,
                compressed,
            } => {
                let mut builder = Response::builder();
                if compressed {
                    builder = builder.header(header::CONTENT_ENCODING, "zstd");
                }
                builder
                    .header(header::VARY, "accept-encoding")
                    .header(header::CONTENT_TYPE, MEDIA_DELTA)
                    .header(header::ETAG, version.etag())
                    .header(HEADER_RESULT_SIZE, size)
                    .header(header::CONTENT_LENGTH, len)
                    .header(header::CACHE_CONTROL, "no-store")
                    .body(stream(file, 0, len))
            }
            Answer::Refine {
                body,
                version,
                size,
            } => Response::builder()
                .header(header::CONTENT_TYPE, MEDIA_REFINE)
                .header(header::ETAG, version.etag())
                .header(HEADER_RESULT_SIZE, size)
                .header(header::CONTENT_LENGTH, body.len())
                .header(header::CACHE_CONTROL, "no-store")
                .body(full(body)),
        }
        .expect("valid response")
    }
}

/// A delta from `sig`'s base to `data`, spooled to a temporary file, and
/// zstd-compressed when the client takes it and that saves 10%.
fn delta_answer(
    sig: &Signature,
    data: &[u8],
    version: Version,
    zstd_ok: bool,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<Answer, Refusal> {
    let internal = |e: std::io::Error| match e.raw_os_error() {
        // The kernel read a page of `data` the file no longer has (a
        // write of its literals): the file shrank under us.
        Some(libc::EFAULT) => shrank(),
        _ => Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let mut out = tempfile::tempfile().map_err(internal)?;
    let stats = write_delta_until(sig.view(), data, std::io::BufWriter::new(&mut out), stop)
        .map_err(internal)?;
    out.seek(SeekFrom::Start(0)).map_err(internal)?;
    let size = data.len() as u64;
    // Literal data compresses when the file does; copies never need to.
    if zstd_ok && stats.literal_bytes >= MIN_COMPRESSIBLE {
        let mut packed = tempfile::tempfile().map_err(internal)?;
        zstd::stream::copy_encode(&mut out, &mut packed, 3).map_err(internal)?;
        let packed_len = packed.stream_position().map_err(internal)?;
        if packed_len < stats.delta_bytes * 9 / 10 {
            packed.seek(SeekFrom::Start(0)).map_err(internal)?;
            return Ok(Answer::Delta {
                file: packed,
                len: packed_len,
                version,
                size,
                compressed: true,
            });
        }
        out.seek(SeekFrom::Start(0)).map_err(internal)?;
    }
    Ok(Answer::Delta {
        file: out,
        len: stats.delta_bytes,
        version,
        size,
        compressed: false,
    })
}
