//! The smart InterSync server over HTTP(S): hyper's pooled client (keep-alive,
//! TCP_NODELAY), rustls for TLS with the system's roots or a given CA, and
//! counters of every byte each way.
//!
//! HTTP/2 where the server speaks it: over TLS as ALPN settles; in cleartext
//! (prior knowledge) for a sync whose server's head said so (in this sync
//! or, as the working copy remembers, an earlier one), once two requests
//! overlap. One request at a time (a no-op sync's head, one large file)
//! costs less in HTTP/1.1: no preface, settings or frame headers. From the
//! first overlap on, every request shares the one HTTP/2 connection, which
//! stays busy: no slow start after an idle pause. A server that turns out
//! not to speak it (a proxy in between) is spoken to in HTTP/1.1 from then
//! on.

use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, BodyStream, Full};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use intersync_protocol::api::{
    CheckpointRef, HEADER_MODE, HEADER_MTIME, HEADER_RESULT_SIZE, HEADER_RESULT_VERSION, Head,
    MEDIA_DELTA, MEDIA_PATCH, MEDIA_REFINE, PackList, PackRef, SegmentRef,
};
use intersync_protocol::batch::{Batch, BatchOp, BatchResult, OpResult};
use intersync_protocol::{TreePath, Version};

use super::counted::{CountingConnector, Counts};
use super::{
    DeltaFormat, Expect, FileMeta, Pieces, Refined, Remote, RemoteDelta, Traffic, TransportError,
    Written,
};

type HttpsConnector = hyper_rustls::HttpsConnector<CountingConnector>;

/// An InterSync server at a base URL.
pub struct HttpRemote {
    base: String,
    /// The `Authorization` header: a bearer token, or HTTP Basic from the
    /// URL's `user:password@` (the password may come from
    /// `RSYNC_PASSWORD`, as rsync takes it).
    authorization: Option<String>,
    client: Client<HttpsConnector, Full<Bytes>>,
    /// HTTP/2 with prior knowledge, for `http://` URLs at the base's origin
    /// while [`HttpRemote::h2c`] holds.
    h2c_client: Client<HttpsConnector, Full<Bytes>>,
    /// Cleartext requests to the origin go by HTTP/2: its head said it
    /// speaks it, and it was allowed ([`HttpRemote::with_cleartext_http2`]).
    h2c: AtomicBool,
    /// Cleartext HTTP/2 may be spoken ([`HttpRemote::with_cleartext_http2`]).
    h2c_allowed: bool,
    /// A cleartext HTTP/2 request has been answered: a failure now is the
    /// link's, not a sign that something in between speaks only HTTP/1.1.
    h2c_proven: AtomicBool,
    /// Cleartext HTTP/2 has been spoken: every request goes by it.
    h2c_open: AtomicBool,
    /// Requests sent whose answers are not yet read to their end.
    in_flight: Arc<AtomicUsize>,
    requests: AtomicU64,
    /// Bytes that crossed the sockets, each way.
    counts: std::sync::Arc<Counts>,
    /// Most bytes per second to receive, like rsync's --bwlimit.
    bwlimit: Option<u64>,
    /// Headers every request to the origin carries.
    extra_headers: Vec<(&'static str, String)>,
    started: std::time::Instant,
    progress: Option<std::sync::Arc<crate::monitor::Progress>>,
    /// The source serves versions at immutable URLs (a smart server, as its
    /// head document says); a static export only has paths.
    by_version: AtomicBool,
}

/// How long a kept-alive connection may wait for the next request: under
/// the 30 s after which our server closes one (nginx's is 75 s), so that a
/// request after a long pause (a scan of a large tree between two
/// requests) is never sent on a connection the server is closing.
const POOL_IDLE: Duration = Duration::from_secs(20);

/// Largest HTTP/2 frame the server may send: each costs 9 bytes, which at
/// the protocol's default of 16 KiB is 0.05% of a clone (60 KB of S0's 109 MB).
const H2_FRAME: u32 = 256 * 1024;

/// How much one HTTP/2 answer may send ahead of our reading it.
const H2_STREAM_WINDOW: u32 = 8 << 20;

/// Most redirects followed for one request.
const MAX_REDIRECTS: usize = 5;

fn percent_path(path: &TreePath) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'/')
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(path.as_str(), SET).to_string()
}

/// `scheme://user:password@host/...` into the URL without the login, and
/// the login (percent-decoded).
fn split_login(url: &str) -> (String, Option<(String, Option<String>)>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_owned(), None);
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return (url.to_owned(), None);
    };
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let (user, password) = match rest[..at].split_once(':') {
        Some((u, p)) => (decode(u), Some(decode(p))),
        None => (decode(&rest[..at]), None),
    };
    (
        format!("{scheme}://{}", &rest[at + 1..]),
        Some((user, password)),
    )
}

pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Body,
}

/// An answer's body, its request counted in flight until it is dropped.
pub(crate) struct Body {
    incoming: hyper::body::Incoming,
    _flight: Flight,
}

/// One request in [`HttpRemote::in_flight`].
struct Flight(Arc<AtomicUsize>);

impl Flight {
    fn new(count: &Arc<AtomicUsize>) -> Flight {
        count.fetch_add(1, Ordering::Relaxed);
        Flight(count.clone())
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.incoming).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.incoming.size_hint()
    }
}

impl HttpRemote {
    /// A client for the export at `base` (an `http://` or `https://` URL).
    /// `ca_pem` adds a certificate authority to the system's.
    pub fn new(
        base: &str,
        token: Option<String>,
        ca_pem: Option<&std::path::Path>,
    ) -> Result<HttpRemote, TransportError> {
        let bad = |reason: String| TransportError::BadUrl {
            url: base.to_owned(),
            reason,
        };
        let (mut base, login) = split_login(base);
        if !base.ends_with('/') {
            base.push('/');
        }
        let authorization = match (token, login) {
            (Some(t), _) => Some(format!("Bearer {t}")),
            (None, Some((user, password))) => {
                use base64::Engine;
                let password = password
                    .or_else(|| std::env::var("RSYNC_PASSWORD").ok())
                    .unwrap_or_default();
                let pair = format!("{user}:{password}");
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                ))
            }
            (None, None) => None,
        };
        let uri: hyper::Uri = base.parse().map_err(|e| bad(format!("{e}")))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(bad("not http:// or https://".into()));
        }
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        if let Some(ca) = ca_pem {
            use rustls::pki_types::CertificateDer;
            use rustls::pki_types::pem::PemObject;
            let certs = CertificateDer::pem_file_iter(ca)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| bad(format!("--cacert {}: {e}", ca.display())))?;
            if certs.is_empty() {
                return Err(bad(format!(
                    "--cacert {}: no certificate in it (a PEM file of \"BEGIN CERTIFICATE\" blocks)",
                    ca.display()
                )));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| bad(format!("--cacert {}: {e}", ca.display())))?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let counts = std::sync::Arc::new(Counts::default());
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(CountingConnector::new(http, counts.clone()));
        // Flow control windows for a long fat link: hyper's 64 KiB would
        // hold a 100 ms link to 5 Mbit/s.
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(POOL_IDLE)
            .http2_initial_stream_window_size(H2_STREAM_WINDOW)
            .http2_initial_connection_window_size(4 * H2_STREAM_WINDOW)
            .http2_max_frame_size(H2_FRAME)
            .timer(hyper_util::rt::TokioTimer::new())
            .http2_keep_alive_interval(Duration::from_secs(30));
        let client = builder.build(connector.clone());
        let h2c_client = builder.http2_only(true).build(connector);
        Ok(HttpRemote {
            base,
            authorization,
            client,
            h2c_client,
            h2c: AtomicBool::new(false),
            h2c_allowed: false,
            h2c_proven: AtomicBool::new(false),
            h2c_open: AtomicBool::new(false),
            in_flight: Arc::default(),
            requests: AtomicU64::new(0),
            counts,
            bwlimit: None,
            extra_headers: Vec::new(),
            started: std::time::Instant::now(),
            progress: None,
            by_version: AtomicBool::new(false),
        })
    }

    /// Counts file content received into `progress`.
    pub fn with_progress(
        mut self,
        progress: std::sync::Arc<crate::monitor::Progress>,
    ) -> HttpRemote {
        self.progress = Some(progress);
        self
    }

    /// Whether cleartext HTTP/2 may be spoken to a server whose head offers
    /// it (or [`HttpRemote::assume_cleartext_http2`] says so), from the
    /// first request sent while another is in flight. Off unless asked for: a
    /// command that makes one request after the head would pay a second
    /// connection for it; and never through a cache or proxy, which would
    /// pass the origin's head on but speak only HTTP/1.1 itself.
    pub fn with_cleartext_http2(mut self, allowed: bool) -> HttpRemote {
        self.h2c_allowed = allowed;
        self
    }

    /// Speaks HTTP/2 in cleartext from the next request on, if allowed:
    /// the server's head said it does (in an earlier sync).
    pub fn assume_cleartext_http2(&self, speaks: bool) {
        self.h2c
            .store(speaks && self.h2c_allowed, Ordering::Relaxed);
    }

    /// Sends `name: value` with every request to the export's origin.
    pub fn with_header(mut self, name: &'static str, value: String) -> HttpRemote {
        self.extra_headers.push((name, value));
        self
    }

    /// Limits the receiving rate to `bytes_per_sec` on average.
    pub fn with_bwlimit(mut self, bytes_per_sec: Option<u64>) -> HttpRemote {
        self.bwlimit = bytes_per_sec.filter(|&r| r > 0);
        self
    }

    /// Under a bandwidth limit, waits until the average rate of what was
    /// received is back under it (after each piece of a body, in this
    /// module or outside it).
    pub(crate) async fn pace(&self) {
        if let Some(rate) = self.bwlimit {
            let total = self.counts.received.load(Ordering::Relaxed);
            let due = Duration::from_secs_f64(total as f64 / rate as f64);
            let elapsed = self.started.elapsed();
            if due > elapsed {
                tokio::time::sleep(due - elapsed).await;
            }
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Where to read `version` of the file at `path`: its immutable URL on
    /// a smart server (cacheable by anything in between), else the path.
    fn file_url(&self, path: &TreePath, version: Version) -> String {
        if self.by_version.load(Ordering::Relaxed) {
            format!(".intersync/version/{version}")
        } else {
            percent_path(path)
        }
    }

    fn interrupted(what: &str, e: hyper::Error) -> TransportError {
        TransportError::Interrupted {
            what: what.to_owned(),
            source: Box::new(e),
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Bytes,
        what: &str,
    ) -> Result<Answer, TransportError> {
        self.send_url(method, &format!("{}{path}", self.base), headers, body, what)
            .await
    }

    /// Sends a request; GETs and HEADs follow redirects (at most
    /// [`MAX_REDIRECTS`]), and the bearer token goes only to the base's origin.
    pub(crate) async fn send_url(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, String)],
        body: Bytes,
        what: &str,
    ) -> Result<Answer, TransportError> {
        let follows = method == Method::GET || method == Method::HEAD;
        let mut target = url.to_owned();
        for _ in 0..=MAX_REDIRECTS {
            let answer = self
                .send_once(method.clone(), &target, headers, body.clone(), what)
                .await?;
            if !(follows && answer.status.is_redirection())
                || answer.status == StatusCode::NOT_MODIFIED
            {
                return Ok(answer);
            }
            let location = answer
                .headers
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| TransportError::BadAnswer {
                    what: what.to_owned(),
                    reason: format!("{} without a Location", answer.status),
                })?;
            target = resolve(&target, location);
        }
        Err(TransportError::BadAnswer {
            what: what.to_owned(),
            reason: format!("more than {MAX_REDIRECTS} redirects"),
        })
    }

    async fn send_once(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, String)],
        body: Bytes,
        what: &str,
    ) -> Result<Answer, TransportError> {
        let url = url.to_owned();
        let mut req = Request::builder().method(method.clone()).uri(&url);
        if let Some(value) = &self.authorization
            && origin(&url) == origin(&self.base)
        {
            req = req.header(header::AUTHORIZATION, value);
        }
        if origin(&url) == origin(&self.base) {
            for (k, v) in &self.extra_headers {
                req = req.header(*k, v);
            }
        }
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let req = req
            .body(Full::new(body.clone()))
            .map_err(|e| TransportError::BadUrl {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        self.requests.fetch_add(1, Ordering::Relaxed);
        let overlapping = self.in_flight.load(Ordering::Relaxed) > 0;
        let flight = Flight::new(&self.in_flight);
        let h2c = url.starts_with("http://")
            && self.h2c.load(Ordering::Relaxed)
            && origin(&url) == origin(&self.base)
            && (overlapping || self.h2c_open.load(Ordering::Relaxed));
        let resp = if h2c {
            if !self.h2c_open.swap(true, Ordering::Relaxed) {
                tracing::debug!(base = %self.base, "two requests at once: HTTP/2 from now on");
            }
            let retry = (!self.h2c_proven.load(Ordering::Relaxed)).then(|| clone_request(&req));
            match self.h2c_client.request(req).await {
                Ok(resp) => {
                    self.h2c_proven.store(true, Ordering::Relaxed);
                    Ok(resp)
                }
                Err(e) if let Some(req) = retry => {
                    tracing::debug!(base = %self.base, error = %crate::monitor::Chain(&e),
                        "HTTP/2 refused on the way: HTTP/1.1 from now on");
                    self.h2c.store(false, Ordering::Relaxed);
                    self.client.request(req).await
                }
                Err(e) => Err(e),
            }
        } else {
            self.client.request(req).await
        };
        let resp = resp.map_err(|e| match tls_failure(&e) {
            Some(reason) => TransportError::Tls {
                url: url.clone(),
                reason,
            },
            None => TransportError::Unreachable {
                url: url.clone(),
                source: Box::new(e),
            },
        })?;
        let (parts, incoming) = resp.into_parts();
        let answer = Answer {
            status: parts.status,
            headers: parts.headers,
            body: Body {
                incoming,
                _flight: flight,
            },
        };
        if answer.status == StatusCode::PRECONDITION_FAILED {
            return Err(TransportError::Changed {
                what: what.to_owned(),
            });
        }
        if answer.status.is_client_error() || answer.status.is_server_error() {
            let status = answer.status.as_u16();
            let reason = self
                .collect(answer.body, what)
                .await
                .map(|b| String::from_utf8_lossy(&b).trim().to_owned());
            return Err(TransportError::Refused {
                what: what.to_owned(),
                status,
                reason: reason.unwrap_or_default(),
            });
        }
        Ok(answer)
    }

    /// POSTs to a request a server may not have (a static export, an
    /// older server): `None` when it answers 404 or 405.
    async fn post_if_served(
        &self,
        path: &str,
        headers: &[(&str, String)],
        body: Bytes,
        what: &str,
    ) -> Result<Option<Answer>, TransportError> {
        match self.send(Method::POST, path, headers, body, what).await {
            Err(TransportError::Refused {
                status: 404 | 405, ..
            }) => Ok(None),
            other => other.map(Some),
        }
    }

    /// POSTs a signature to `.intersync/KIND/PATH`, taking zstd.
    async fn post_signature(
        &self,
        kind: &str,
        path: &TreePath,
        signature: Vec<u8>,
        what: &str,
    ) -> Result<Answer, TransportError> {
        self.send(
            Method::POST,
            &format!(".intersync/{kind}/{}", percent_path(path)),
            &[
                ("accept-encoding", "zstd".into()),
                ("content-type", "application/x-librsync-signature".into()),
            ],
            Bytes::from(signature),
            what,
        )
        .await
    }

    /// A delta answer, written (decompressed) into `out`.
    async fn read_delta(
        &self,
        answer: Answer,
        out: &mut std::fs::File,
        what: &str,
    ) -> Result<RemoteDelta, TransportError> {
        let version = etag_version(&answer.headers, what)?;
        let size = result_size(&answer.headers, what)?;
        let zstd =
            answer.headers.get(header::CONTENT_ENCODING) == Some(&HeaderValue::from_static("zstd"));
        // A delta never needs much more than its result: refuse one that does.
        let limit = size + size / 8 + 4096;
        let bad = |e: std::io::Error| sink_error(what, e);
        let file = LimitedWriter {
            inner: &mut *out,
            left: limit,
            written: 0,
        };
        let mut sink: Box<dyn Write + '_> = if zstd {
            Box::new(zstd::stream::write::Decoder::new(file).map_err(bad)?)
        } else {
            Box::new(file)
        };
        self.read_body(answer.body, &mut sink, what).await?;
        sink.flush().map_err(bad)?;
        drop(sink);
        let written = out.metadata().map_err(bad)?.len();
        Ok(RemoteDelta {
            delta_len: written,
            version,
            size,
        })
    }

    /// Streams a body into `sink`, counting what arrives.
    async fn read_body(
        &self,
        body: Body,
        sink: &mut impl Write,
        what: &str,
    ) -> Result<(), TransportError> {
        let mut frames = BodyStream::new(body);
        while let Some(frame) = frames.next().await {
            let frame = frame.map_err(|e| Self::interrupted(what, e))?;
            if let Ok(data) = frame.into_data() {
                sink.write_all(&data).map_err(|e| sink_error(what, e))?;
                self.pace().await;
            }
        }
        Ok(())
    }

    /// One range of what `url` names; anything but exactly that range is
    /// refused (the caller falls back).
    async fn range_of(
        &self,
        url: &str,
        range: std::ops::Range<u64>,
        what: String,
    ) -> Result<Bytes, TransportError> {
        let header = format!("bytes={}-{}", range.start, range.end - 1);
        let answer = self
            .send(Method::GET, url, &[("range", header)], Bytes::new(), &what)
            .await?;
        let want = format!("bytes {}-{}/", range.start, range.end - 1);
        let content_range = answer
            .headers
            .get(header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let ok = answer.status == StatusCode::PARTIAL_CONTENT && content_range.starts_with(&want);
        let status = answer.status;
        if !ok {
            // Not what was asked (perhaps the whole file): not read.
            drop(answer.body);
            return Err(TransportError::BadAnswer {
                what,
                reason: format!("asked for a range, got {status} {content_range:?}"),
            });
        }
        let bytes = self.collect(answer.body, &what).await?;
        if bytes.len() as u64 != range.end - range.start {
            return Err(TransportError::BadAnswer {
                what,
                reason: format!(
                    "{} bytes for a range of {}",
                    bytes.len(),
                    range.end - range.start
                ),
            });
        }
        Ok(bytes)
    }

    /// Several ranges of what `url` names in one request
    /// (multipart/byteranges), in the order asked; anything but exactly
    /// those ranges is an error.
    async fn ranges_of(
        &self,
        url: &str,
        ranges: &[std::ops::Range<u64>],
        what: String,
    ) -> Result<Vec<Bytes>, TransportError> {
        let spec: Vec<String> = ranges
            .iter()
            .map(|r| format!("{}-{}", r.start, r.end - 1))
            .collect();
        let header = format!("bytes={}", spec.join(","));
        let answer = self
            .send(Method::GET, url, &[("range", header)], Bytes::new(), &what)
            .await?;
        let status = answer.status;
        let content_type = answer
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let bad = |reason: String| TransportError::BadAnswer {
            what: what.clone(),
            reason,
        };
        if status != StatusCode::PARTIAL_CONTENT {
            // Most likely the whole file (ranges unsupported): not read, the
            // connection is dropped instead.
            drop(answer.body);
            return Err(bad(format!(
                "asked for {} ranges, got {status}",
                ranges.len()
            )));
        }
        let body = self.collect(answer.body, &what).await?;
        let malformed =
            |e: intersync_protocol::byteranges::ByterangesError| TransportError::Malformed {
                what: what.clone(),
                source: Box::new(e),
            };
        let boundary =
            intersync_protocol::byteranges::boundary(&content_type).map_err(malformed)?;
        let parts = intersync_protocol::byteranges::parse(&body, &boundary).map_err(malformed)?;
        if parts.len() != ranges.len() || parts.iter().zip(ranges).any(|(p, r)| p.range != *r) {
            return Err(bad("the parts are not the ranges asked for".into()));
        }
        Ok(parts.into_iter().map(|p| body.slice_ref(p.bytes)).collect())
    }

    /// A whole resource below the base, read into memory.
    async fn get_all(&self, path: &str, what: &str) -> Result<Bytes, TransportError> {
        let answer = self
            .send(Method::GET, path, &[], Bytes::new(), what)
            .await?;
        self.collect(answer.body, what).await
    }

    /// A whole immutable file, taking zstd: decoded, it must be `length`
    /// bytes (the head said so), and decoding stops past that.
    async fn get_compressed(
        &self,
        path: &str,
        length: u64,
        what: &str,
    ) -> Result<Bytes, TransportError> {
        let answer = self
            .send(
                Method::GET,
                path,
                &[("accept-encoding", "zstd".into())],
                Bytes::new(),
                what,
            )
            .await?;
        let zstd =
            answer.headers.get(header::CONTENT_ENCODING) == Some(&HeaderValue::from_static("zstd"));
        let bytes = self.collect(answer.body, what).await?;
        if !zstd {
            return Ok(bytes);
        }
        let malformed = |reason: String| TransportError::Malformed {
            what: what.to_owned(),
            source: reason.into(),
        };
        let mut out = Vec::with_capacity(length.min(256 << 20) as usize);
        zstd::stream::read::Decoder::new(&bytes[..])
            .and_then(|d| {
                std::io::Read::read_to_end(&mut std::io::Read::take(d, length + 1), &mut out)
            })
            .map_err(|e| malformed(format!("does not decompress: {e}")))?;
        if out.len() as u64 != length {
            return Err(malformed(format!(
                "{} bytes decompressed, not the {length} the head gave",
                out.len()
            )));
        }
        Ok(Bytes::from(out))
    }

    async fn collect(&self, body: Body, what: &str) -> Result<Bytes, TransportError> {
        let bytes = body
            .collect()
            .await
            .map_err(|e| Self::interrupted(what, e))?
            .to_bytes();
        self.pace().await;
        Ok(bytes)
    }
}

/// A write of an answer into its file failed: the answer's fault when it
/// would not decode or passed its bound (`InvalidData`, or zstd's
/// `Other`), else this side's (a full disk, say).
fn sink_error(what: &str, e: std::io::Error) -> TransportError {
    match e.kind() {
        std::io::ErrorKind::InvalidData | std::io::ErrorKind::Other => TransportError::Malformed {
            what: what.to_owned(),
            source: Box::new(e),
        },
        _ => TransportError::Local {
            what: what.to_owned(),
            source: e,
        },
    }
}

/// Writes at most `left` bytes in all, then fails.
struct LimitedWriter<W: Write> {
    inner: W,
    left: u64,
    written: u64,
}

impl<W: Write> Write for LimitedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.len() as u64 > self.left {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "delta larger than its result allows",
            ));
        }
        let n = self.inner.write(buf)?;
        self.left -= n as u64;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A file being written that counts what it takes into a progress bar
/// (the file's own bytes, whatever the coding that brought them).
struct Advancing<'a, W: Write> {
    inner: W,
    progress: Option<&'a crate::monitor::Progress>,
}

impl<W: Write> Write for Advancing<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        if let Some(p) = self.progress {
            p.advance(n as u64);
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn push_meta(headers: &mut Vec<(&str, String)>, meta: FileMeta) {
    if let Some(mode) = meta.mode {
        headers.push((HEADER_MODE, format!("{mode:o}")));
    }
    if let Some(ns) = meta.mtime_ns {
        headers.push((HEADER_MTIME, ns.to_string()));
    }
}

/// `X-InterSync-Size`: the length of the result a delta or patch gives.
fn result_size(headers: &HeaderMap, what: &str) -> Result<u64, TransportError> {
    headers
        .get(HEADER_RESULT_SIZE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| TransportError::BadAnswer {
            what: what.to_owned(),
            reason: "no size".into(),
        })
}

fn etag_version(headers: &HeaderMap, what: &str) -> Result<Version, TransportError> {
    headers
        .get(header::ETAG)
        .and_then(|v| v.to_str().ok())
        .and_then(|t| Version::from_etag(t).ok())
        .ok_or_else(|| TransportError::BadAnswer {
            what: what.to_owned(),
            reason: "no version in ETag".into(),
        })
}

/// A fetch stream as it arrives, decompressed (see [`Remote::fetch_many`]).
pub struct FetchPieces<'a> {
    remote: &'a HttpRemote,
    frames: BodyStream<Body>,
    decoder: zstd::stream::raw::Decoder<'static>,
    input: Bytes,
    at: usize,
    /// The last piece filled its buffer: the decoder may hold more.
    full: bool,
}

/// Decompressed bytes handed on at a time.
const PIECE: usize = 256 * 1024;

impl Pieces for FetchPieces<'_> {
    async fn next(&mut self) -> Result<Option<Bytes>, TransportError> {
        use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
        let what = "the fetch stream";
        loop {
            if self.at < self.input.len() || self.full {
                let mut out = vec![0u8; PIECE];
                let mut input = InBuffer::around(&self.input[self.at..]);
                let mut output = OutBuffer::around(&mut out[..]);
                self.decoder.run(&mut input, &mut output).map_err(|e| {
                    TransportError::Malformed {
                        what: what.into(),
                        source: Box::new(e),
                    }
                })?;
                let (used, made) = (input.pos(), output.pos());
                self.at += used;
                self.full = made == PIECE;
                if made > 0 {
                    out.truncate(made);
                    return Ok(Some(Bytes::from(out)));
                }
                if used > 0 {
                    continue;
                }
            }
            match self.frames.next().await {
                Some(frame) => {
                    let frame = frame.map_err(|e| HttpRemote::interrupted(what, e))?;
                    if let Ok(data) = frame.into_data() {
                        self.remote.pace().await;
                        self.input = data;
                        self.at = 0;
                    }
                }
                None => return Ok(None),
            }
        }
    }
}

impl Remote for HttpRemote {
    type Pieces<'a> = FetchPieces<'a>;

    async fn fetch_many(&self, request: Bytes) -> Result<Option<FetchPieces<'_>>, TransportError> {
        let what = "many files";
        let answer = self
            .post_if_served(
                ".intersync/fetch",
                &[(
                    "content-type",
                    intersync_protocol::fetch::MEDIA_FETCH.into(),
                )],
                request,
                what,
            )
            .await?;
        let Some(answer) = answer else {
            return Ok(None);
        };
        let decoder = zstd::stream::raw::Decoder::new().map_err(|e| TransportError::Local {
            what: what.into(),
            source: e,
        })?;
        Ok(Some(FetchPieces {
            remote: self,
            frames: BodyStream::new(answer.body),
            decoder,
            input: Bytes::new(),
            at: 0,
            full: false,
        }))
    }

    async fn head(
        &self,
        known_seq: Option<u64>,
        wait_secs: u64,
    ) -> Result<Option<Head>, TransportError> {
        let mut headers = Vec::new();
        if let Some(seq) = known_seq {
            headers.push(("if-none-match", format!("\"seq-{seq}\"")));
        }
        let path = if wait_secs > 0 {
            format!(".intersync/head?wait={wait_secs}")
        } else {
            ".intersync/head".into()
        };
        let answer = self
            .send(Method::GET, &path, &headers, Bytes::new(), "head")
            .await?;
        if answer.status == StatusCode::NOT_MODIFIED {
            return Ok(None);
        }
        let bytes = self.collect(answer.body, "head").await?;
        let head: Head = serde_json::from_slice(&bytes).map_err(|e| TransportError::Malformed {
            what: "head".into(),
            source: Box::new(e),
        })?;
        self.by_version
            .store(!head.static_export, Ordering::Relaxed);
        if head.http2 && self.h2c_allowed && !self.h2c.swap(true, Ordering::Relaxed) {
            tracing::debug!(base = %self.base, "the server speaks HTTP/2: requests that overlap go by it");
        }
        Ok(Some(head))
    }

    async fn segment(&self, seg: &SegmentRef, offset: u64) -> Result<Bytes, TransportError> {
        let name = &seg.name;
        let what = format!("journal segment {name}");
        let path = format!(".intersync/kml/{name}");
        if seg.sealed && offset == 0 {
            return self.get_compressed(&path, seg.length, &what).await;
        }
        let answer = self
            .send(
                Method::GET,
                &path,
                &[("range", format!("bytes={offset}-"))],
                Bytes::new(),
                &what,
            )
            .await?;
        let status = answer.status;
        let resumed = answer
            .headers
            .get(header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|r| r.starts_with(&format!("bytes {offset}-")));
        let whole = match status {
            StatusCode::PARTIAL_CONTENT if resumed => {
                return self.collect(answer.body, &what).await;
            }
            // A server that ignores ranges sends it all.
            StatusCode::OK => self.collect(answer.body, &what).await?,
            // Some other range than asked: not read; the whole instead.
            StatusCode::PARTIAL_CONTENT => {
                drop(answer.body);
                self.get_all(&path, &what).await?
            }
            other => {
                return Err(TransportError::BadAnswer {
                    what,
                    reason: format!("status {other}"),
                });
            }
        };
        Ok(whole.slice((offset as usize).min(whole.len())..))
    }

    async fn checkpoint(&self, cp: &CheckpointRef) -> Result<Bytes, TransportError> {
        let name = &cp.name;
        self.get_compressed(
            &format!(".intersync/checkpoints/{name}"),
            cp.length,
            &format!("checkpoint {name}"),
        )
        .await
    }

    async fn fetch_into(
        &self,
        path: &TreePath,
        version: Version,
        out: &mut std::fs::File,
    ) -> Result<u64, TransportError> {
        let what = path.to_string();
        let local = |source: std::io::Error| TransportError::Local {
            what: what.clone(),
            source,
        };
        let have = out.metadata().map_err(local)?.len();
        let mut headers = Vec::new();
        if have == 0 {
            // The whole file: compressed, where the server finds it pays.
            // (A resumed download asks for a range of the file's bytes.)
            headers.push(("accept-encoding", "zstd, gzip".to_owned()));
        } else {
            headers.push(("range", format!("bytes={have}-")));
            // A plain web server's validators are not versions, so an
            // If-Range would never match: resume blind there, and let the
            // caller's check of the whole against the version decide.
            if self.by_version.load(Ordering::Relaxed) {
                headers.push(("if-range", version.etag()));
            }
        }
        let answer = self
            .send(
                Method::GET,
                &self.file_url(path, version),
                &headers,
                Bytes::new(),
                &what,
            )
            .await;
        let answer = match answer {
            // Nothing left to fetch: the partial is whole.
            Err(TransportError::Refused { status: 416, .. }) if have > 0 => return Ok(0),
            // The version is gone from the server: the file moved on.
            Err(TransportError::Refused { status: 404, .. })
                if self.by_version.load(Ordering::Relaxed) =>
            {
                return Err(TransportError::Changed { what });
            }
            other => other?,
        };
        // An InterSync ETag names the version: a different one means the
        // file moved on. A plain web server's ETag says nothing about
        // versions; the caller verifies the bytes instead.
        if let Ok(served) = etag_version(&answer.headers, &what)
            && served != version
        {
            return Err(TransportError::Changed { what });
        }
        if answer.status == StatusCode::OK && have > 0 {
            out.set_len(0).map_err(local)?;
            use std::io::Seek;
            out.seek(std::io::SeekFrom::Start(0)).map_err(local)?;
        } else if have > 0 {
            use std::io::Seek;
            out.seek(std::io::SeekFrom::End(0)).map_err(local)?;
        }
        // What is decoded goes to the file as it comes, so that a download
        // cut short resumes (uncoded, by range) after what was decoded.
        let coding = answer
            .headers
            .get(header::CONTENT_ENCODING)
            .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase());
        let file = Advancing {
            inner: &mut *out,
            progress: self.progress.as_deref(),
        };
        let mut sink: Box<dyn Write + '_> = match coding.as_deref() {
            None | Some("identity") => Box::new(file),
            Some("zstd") => Box::new(zstd::stream::write::Decoder::new(file).map_err(local)?),
            Some("gzip") => Box::new(flate2::write::GzDecoder::new(file)),
            Some(other) => {
                return Err(TransportError::BadAnswer {
                    what,
                    reason: format!("a coding not asked for: {other}"),
                });
            }
        };
        let mut received = 0u64;
        let mut frames = BodyStream::new(answer.body);
        while let Some(frame) = frames.next().await {
            let frame = frame.map_err(|e| Self::interrupted(&what, e))?;
            if let Ok(data) = frame.into_data() {
                sink.write_all(&data).map_err(|e| sink_error(&what, e))?;
                received += data.len() as u64;
                self.pace().await;
            }
        }
        sink.flush().map_err(|e| sink_error(&what, e))?;
        Ok(received)
    }

    async fn delta(
        &self,
        path: &TreePath,
        signature: Vec<u8>,
        out: &mut std::fs::File,
    ) -> Result<RemoteDelta, TransportError> {
        let what = format!("delta of {path}");
        let answer = self.post_signature("delta", path, signature, &what).await?;
        self.read_delta(answer, out, &what).await
    }

    async fn refine(
        &self,
        path: &TreePath,
        signature: Vec<u8>,
        out: &mut std::fs::File,
    ) -> Result<Refined, TransportError> {
        let what = format!("refinement of {path}");
        let answer = self
            .post_signature("refine", path, signature, &what)
            .await?;
        if answer.headers.get(header::CONTENT_TYPE) != Some(&HeaderValue::from_static(MEDIA_REFINE))
        {
            return Ok(Refined::Delta(self.read_delta(answer, out, &what).await?));
        }
        let size = result_size(&answer.headers, &what)?;
        // Copies, gaps and a fine signature of at most half the file.
        let mut file = LimitedWriter {
            inner: &mut *out,
            left: size / 2 + (1 << 20),
            written: 0,
        };
        self.read_body(answer.body, &mut file, &what).await?;
        Ok(Refined::Answer { len: file.written })
    }

    async fn patch(
        &self,
        from: Version,
        to: Version,
        out: &mut std::fs::File,
    ) -> Result<Option<u64>, TransportError> {
        let what = format!("patch from {from:?} to {to:?}");
        let answer = match self
            .send(
                Method::GET,
                &format!(".intersync/patch/{from}/{to}"),
                &[],
                Bytes::new(),
                &what,
            )
            .await
        {
            Ok(a) => a,
            // No patch: the server lacks the base, or is one without patches.
            Err(TransportError::Refused { status: 404, .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let size = result_size(&answer.headers, &what)?;
        // A patch never needs much more than its result: refuse one that does.
        let mut file = LimitedWriter {
            inner: &mut *out,
            left: size + size / 8 + 4096,
            written: 0,
        };
        self.read_body(answer.body, &mut file, &what).await?;
        Ok(Some(size))
    }

    async fn range(
        &self,
        path: &TreePath,
        version: Version,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes, TransportError> {
        let what = format!("{path} bytes {}-{}", range.start, range.end);
        self.range_of(&self.file_url(path, version), range, what)
            .await
    }

    async fn ranges(
        &self,
        path: &TreePath,
        version: Version,
        ranges: &[std::ops::Range<u64>],
    ) -> Result<Vec<Bytes>, TransportError> {
        let what = format!("{path}, {} ranges", ranges.len());
        self.ranges_of(&self.file_url(path, version), ranges, what)
            .await
    }

    async fn pack_list(&self) -> Result<Option<PackList>, TransportError> {
        let what = "the list of packs";
        let bytes = match self.get_all(intersync_protocol::api::PACK_LIST, what).await {
            Ok(bytes) => bytes,
            Err(TransportError::Refused { status, .. }) if (400..500).contains(&status) => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| TransportError::Malformed {
                what: what.into(),
                source: Box::new(e),
            })
    }

    async fn pack_range(
        &self,
        pack: &PackRef,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes, TransportError> {
        let what = format!("pack {} bytes {}-{}", pack.name, range.start, range.end);
        // A name from the list: only what an export writes, so that it
        // cannot lead anywhere else on the server.
        if !intersync_protocol::pack::is_name(&pack.name) {
            return Err(TransportError::BadAnswer {
                what,
                reason: "not a pack's name".into(),
            });
        }
        let url = format!(".intersync/packs/{}", pack.name);
        let header = format!("bytes={}-{}", range.start, range.end - 1);
        let answer = self
            .send(Method::GET, &url, &[("range", header)], Bytes::new(), &what)
            .await?;
        let want = format!("bytes {}-{}/{}", range.start, range.end - 1, pack.length);
        let content_range = answer
            .headers
            .get(header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let (status, expected) = (
            answer.status,
            match answer.status {
                StatusCode::PARTIAL_CONTENT if content_range == want => range.end - range.start,
                // A cache filling itself answers with all of it.
                StatusCode::OK => pack.length,
                _ => u64::MAX,
            },
        );
        if expected == u64::MAX {
            drop(answer.body);
            return Err(TransportError::BadAnswer {
                what,
                reason: format!("asked for a range, got {status} {content_range:?}"),
            });
        }
        let bytes = self.collect(answer.body, &what).await?;
        if bytes.len() as u64 != expected {
            return Err(TransportError::BadAnswer {
                what,
                reason: format!("{} bytes where {expected} were due", bytes.len()),
            });
        }
        Ok(bytes)
    }

    async fn coarse_signature(&self, version: Version) -> Result<Option<Bytes>, TransportError> {
        let what = format!("coarse signature of {version:?}");
        match self
            .get_all(&format!(".intersync/sig/{version}.coarse"), &what)
            .await
        {
            Ok(bytes) => Ok(Some(bytes)),
            // An export written before there were levels, or a smart server.
            Err(TransportError::Refused { status, .. }) if (400..500).contains(&status) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn fine_signature_ranges(
        &self,
        version: Version,
        ranges: &[std::ops::Range<u64>],
    ) -> Result<Vec<Bytes>, TransportError> {
        let what = format!("fine signature of {version:?}, {} ranges", ranges.len());
        let url = format!(".intersync/sig/{version}.fine");
        if ranges.len() > 1 {
            match self.ranges_of(&url, ranges, what.clone()).await {
                Err(e) if !e.is_unreachable() => {
                    // A cache answers its first request whole while it
                    // fills (nginx does): one range a request, then.
                    tracing::info!(error = %crate::monitor::Chain(&e), "multi-range refused; asking one range at a time");
                }
                done => return done,
            }
        }
        use futures_util::StreamExt;
        futures_util::stream::iter(ranges)
            .map(|r| self.range_of(&url, r.clone(), what.clone()))
            .buffered(4)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect()
    }

    async fn signature(&self, version: Version) -> Result<Bytes, TransportError> {
        self.get_all(
            &format!(".intersync/sig/{version}"),
            &format!("signature of {version:?}"),
        )
        .await
    }

    async fn put_whole(
        &self,
        path: &TreePath,
        body: Bytes,
        expect: Expect,
        result: Version,
        meta: FileMeta,
    ) -> Result<Written, TransportError> {
        let what = path.to_string();
        let mut headers = vec![(HEADER_RESULT_VERSION, result.to_string())];
        push_meta(&mut headers, meta);
        match expect {
            Expect::Absent => headers.push(("if-none-match", "*".into())),
            Expect::Version(v) => headers.push(("if-match", v.etag())),
        }
        let answer = self
            .send(Method::PUT, &percent_path(path), &headers, body, &what)
            .await?;
        let version = etag_version(&answer.headers, &what)?;
        self.collect(answer.body, &what).await?;
        Ok(Written { version })
    }

    async fn put_delta(
        &self,
        path: &TreePath,
        delta: Vec<u8>,
        format: DeltaFormat,
        base: Version,
        (result, size): (Version, u64),
        meta: FileMeta,
    ) -> Result<Written, TransportError> {
        let what = path.to_string();
        let media = match format {
            DeltaFormat::Librsync => MEDIA_DELTA,
            DeltaFormat::Patch => MEDIA_PATCH,
        };
        let mut headers = vec![
            ("content-type", media.to_string()),
            ("if-match", base.etag()),
            (HEADER_RESULT_VERSION, result.to_string()),
            (HEADER_RESULT_SIZE, size.to_string()),
        ];
        push_meta(&mut headers, meta);
        let answer = self
            .send(
                Method::PUT,
                &percent_path(path),
                &headers,
                Bytes::from(delta),
                &what,
            )
            .await?;
        let version = etag_version(&answer.headers, &what)?;
        self.collect(answer.body, &what).await?;
        Ok(Written { version })
    }

    async fn ops(&self, ops: Vec<BatchOp>) -> Result<Vec<OpResult>, TransportError> {
        let body = Bytes::from(serde_json::to_vec(&Batch { ops }).expect("a batch serializes"));
        let answer = self
            .send(
                Method::POST,
                ".intersync/ops",
                &[("content-type", "application/json".into())],
                body,
                "operations",
            )
            .await?;
        let bytes = self.collect(answer.body, "operations").await?;
        let answer: BatchResult =
            serde_json::from_slice(&bytes).map_err(|e| TransportError::Malformed {
                what: "operations".into(),
                source: Box::new(e),
            })?;
        Ok(answer.results)
    }

    async fn push_many(&self, body: Bytes) -> Result<Option<Vec<OpResult>>, TransportError> {
        let what = "many files written";
        let answer = self
            .post_if_served(
                ".intersync/push",
                &[
                    ("content-type", intersync_protocol::push::MEDIA_PUSH.into()),
                    ("content-encoding", "zstd".into()),
                ],
                body,
                what,
            )
            .await?;
        let Some(answer) = answer else {
            return Ok(None);
        };
        let bytes = self.collect(answer.body, what).await?;
        let answer: BatchResult =
            serde_json::from_slice(&bytes).map_err(|e| TransportError::Malformed {
                what: what.into(),
                source: Box::new(e),
            })?;
        Ok(Some(answer.results))
    }

    fn progress(&self) -> Option<&crate::monitor::Progress> {
        self.progress.as_deref()
    }

    fn traffic(&self) -> Traffic {
        Traffic {
            requests: self.requests.load(Ordering::Relaxed),
            sent_bytes: self.counts.sent.load(Ordering::Relaxed),
            received_bytes: self.counts.received.load(Ordering::Relaxed),
        }
    }
}

/// `location` relative to `base` (absolute URLs and absolute paths).
pub(crate) fn resolve(base: &str, location: &str) -> String {
    if location.contains("://") {
        return location.to_owned();
    }
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| i + scheme_end);
    if location.starts_with('/') {
        format!("{}{location}", &base[..host_end])
    } else {
        let dir_end = base
            .rfind('/')
            .filter(|&i| i >= host_end)
            .map_or(base.len(), |i| i + 1);
        format!("{}{location}", &base[..dir_end])
    }
}

/// The scheme and authority of a URL, lowercased.
/// A copy of a request that has not been sent, to send it another way.
fn clone_request(req: &Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    let mut copy = Request::new(req.body().clone());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.headers_mut() = req.headers().clone();
    copy
}

fn origin(url: &str) -> String {
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let host_end = url[scheme_end..]
        .find('/')
        .map_or(url.len(), |i| i + scheme_end);
    url[..host_end].to_ascii_lowercase()
}

/// The TLS failure among `e`'s causes, in words that say which check
/// failed. (An `io::Error`'s `source` skips the error it wraps, so each
/// one is looked into.)
fn tls_failure(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(tls) = c.downcast_ref::<rustls::Error>() {
            return Some(describe_tls(tls));
        }
        cause = match c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => c.source(),
        };
    }
    None
}

fn describe_tls(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer => "the server's certificate is signed by no authority trusted here \
                 (name its CA with --cacert)"
                .to_owned(),
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                format!("the server's certificate is not for this host name ({c})")
            }
            C::Expired | C::ExpiredContext { .. } => {
                format!("the server's certificate has expired ({c})")
            }
            C::NotValidYet | C::NotValidYetContext { .. } => {
                format!("the server's certificate is not valid yet ({c})")
            }
            C::Other(other) if format!("{other:?}").contains("CaUsedAsEndEntity") => {
                "the server's certificate is a CA certificate (CA:TRUE) used as the server's \
                 own, which rustls refuses (curl may take it): serve a certificate signed by \
                 that CA, and name the CA with --cacert"
                    .to_owned()
            }
            c => format!("the server's certificate was refused ({c})"),
        },
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            format!("the server does not answer in TLS there (an http:// URL?): {e}")
        }
        rustls::Error::AlertReceived(alert) => {
            format!("the server ended the handshake ({alert:?})")
        }
        e => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::{origin, resolve};

    #[test]
    fn redirects_resolve() {
        assert_eq!(resolve("http://h:1/a/b", "/c"), "http://h:1/c");
        assert_eq!(resolve("http://h:1/a/b", "c"), "http://h:1/a/c");
        assert_eq!(resolve("http://h:1/a/b", "https://x/y"), "https://x/y");
    }

    #[test]
    fn origins() {
        assert_eq!(origin("http://H:1/a/b"), "http://h:1");
        assert_eq!(origin("https://x"), "https://x");
        assert_ne!(origin("http://h:1/"), origin("http://h:2/"));
    }
}
