//! `intersync serve`: the HTTP(S) service of an export. Files by GET (with
//! ranges and conditions), the journal and its head, signatures and deltas,
//! and writes with preconditions. Built on hyper 1.x; takes a bound listener
//! and a shutdown future so tests can run it on `127.0.0.1:0`.
//!
//! Every request path is checked as a [`TreePath`] before it touches the
//! disk; every refusal is a 4xx with a one-line reason.

mod budget;
mod coding;
mod conn;
pub use conn::Limits;
mod fetch;
mod files;
mod meta;
pub mod modules;
mod push;
mod writes;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use intersync_protocol::TreePath;
use intersync_protocol::api::HEADER_SERVER_ID;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::beneath::BeneathError;
use crate::export::{Export, ExportError, watch};

/// Everything `intersync serve` needs.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub root: std::path::PathBuf,
    pub listen: SocketAddr,
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    pub options: ServeOptions,
    /// Watch the folder for changes made by other programs.
    pub watch: bool,
    pub journal: crate::kml::JournalOptions,
    /// Serve an rsyncd.conf's modules at `/MODULE/` instead of `root`.
    pub rsyncd: Option<intersync_compat::rsyncd::Config>,
    /// Accept HTTP Basic logins over plain HTTP.
    pub insecure_auth: bool,
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error("listening on {addr}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("watching the folder")]
    Watch(#[from] notify::Error),
    #[error("the server stopped: {0}")]
    Stopped(String),
    #[error("{0}")]
    Config(String),
    #[error("mounting at {}", path.display())]
    Mount {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Opens the export, listens, calls `ready` with the bound address and the
/// URL to give clients, and serves until `shutdown` completes.
pub async fn run(
    config: ServeConfig,
    ready: impl FnOnce(SocketAddr, String),
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    if let Some(conf) = config.rsyncd.clone() {
        return run_modules(config, conf, ready, shutdown).await;
    }
    let export = open(&config).await?;
    run_export(Arc::new(export), config, ready, shutdown).await
}

/// Opens the export `config` names (recovering its journal and journaling
/// what changed in the folder meanwhile), with its version store.
pub async fn open(config: &ServeConfig) -> Result<Export, StartError> {
    let root = config.root.clone();
    let journal = config.journal;
    let budget = config.options.versions;
    let outside_links = config.options.allow_outside_symlinks;
    tokio::task::spawn_blocking(move || {
        let export = Export::open(&root, journal)?.with_outside_links(outside_links);
        match budget {
            Some(budget) => export.with_versions(budget),
            None => Ok(export),
        }
    })
    .await
    .map_err(|e| StartError::Stopped(e.to_string()))?
    .map_err(StartError::from)
}

/// [`run`] for an export already open (one that a presto mount journals
/// into, say): listens, calls `ready`, and serves until `shutdown`.
pub async fn run_export(
    export: Arc<Export>,
    config: ServeConfig,
    ready: impl FnOnce(SocketAddr, String),
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let (listener, addr) = bind(config.listen).await?;
    let tls = config
        .tls
        .as_ref()
        .map(|(cert, key)| tls_acceptor(cert, key))
        .transpose()?;
    let _watcher = if config.watch {
        Some(watch::watch(export.clone())?)
    } else {
        None
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    ready(addr, format!("{scheme}://{addr}/"));
    let exports = vec![export.clone()];
    tokio::select! {
        served = serve(listener, tls, export, config.options, shutdown) => {
            served.map_err(|source| StartError::Listen { addr, source })
        }
        gone = journals_gone(exports) => Err(gone.into()),
    }
}

/// Completes when the journal of one of `exports` is removed or made anew
/// under the running server, which must then stop rather than serve a
/// history that no longer exists.
async fn journals_gone(exports: Vec<Arc<Export>>) -> ExportError {
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        for export in &exports {
            if let Err(gone) = export.journal_intact() {
                tracing::error!(error = %crate::monitor::Chain(&gone), "stopping");
                return gone;
            }
        }
    }
}

/// Listens on `addr` (port 0: any free one); the address bound.
async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let listen = |source| StartError::Listen { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(listen)?;
    let bound = listener.local_addr().map_err(listen)?;
    Ok((listener, bound))
}

/// `run` for an rsyncd.conf: every module's export, one listener.
async fn run_modules(
    config: ServeConfig,
    conf: intersync_compat::rsyncd::Config,
    ready: impl FnOnce(SocketAddr, String),
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let tls = config
        .tls
        .as_ref()
        .map(|(cert, key)| tls_acceptor(cert, key))
        .transpose()?;
    let (journal, options, secure, insecure) = (
        config.journal,
        config.options.clone(),
        tls.is_some(),
        config.insecure_auth,
    );
    let modules = tokio::task::spawn_blocking(move || {
        modules::Modules::open(&conf, journal, options, secure, insecure)
    })
    .await
    .map_err(|e| StartError::Stopped(e.to_string()))??;
    let modules = Arc::new(modules);
    let (listener, addr) = bind(config.listen).await?;
    let mut watchers = Vec::new();
    if config.watch {
        for export in modules.exports() {
            watchers.push(watch::watch(export)?);
        }
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    ready(addr, format!("{scheme}://{addr}/"));
    let exports = modules.exports();
    tokio::select! {
        served = serve_root(listener, tls, Root::Modules(modules), shutdown) => {
            served.map_err(|source| StartError::Listen { addr, source })
        }
        gone = journals_gone(exports) => Err(gone.into()),
    }
}

/// A server running inside this process (for the demo and benchmarks),
/// stopped when dropped or by [`LocalServer::stop`].
pub struct LocalServer {
    pub url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), StartError>>,
}

impl LocalServer {
    /// Starts serving `root` on 127.0.0.1 (anonymous writes allowed, watching the folder).
    pub async fn start(root: &std::path::Path) -> Result<LocalServer, StartError> {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let config = ServeConfig {
            root: root.to_owned(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: None,
            options: ServeOptions {
                allow_anonymous_writes: true,
                // A local copy is the user's own: links go as rsync copies them.
                allow_outside_symlinks: true,
                max_wait: Duration::from_secs(10),
                versions: Some(Default::default()),
                ..Default::default()
            },
            watch: true,
            journal: Default::default(),
            rsyncd: None,
            insecure_auth: false,
        };
        let task = tokio::spawn(run(
            config,
            move |_, url| {
                let _ = ready_tx.send(url);
            },
            async move {
                let _ = stop_rx.await;
            },
        ));
        match ready_rx.await {
            Ok(url) => Ok(LocalServer {
                url,
                stop: Some(stop_tx),
                task,
            }),
            Err(_) => Err(match task.await {
                Ok(Err(e)) => e,
                _ => StartError::Stopped("before it started".into()),
            }),
        }
    }

    /// Stops the server and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// A TLS acceptor from PEM files: a certificate chain and its private key.
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<TlsAcceptor, StartError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect())
        .map_err(|e| StartError::Tls(format!("{}: {e}", cert.display())))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| StartError::Tls(format!("{}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StartError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| StartError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

pub type Body = BoxBody<Bytes, std::io::Error>;

/// A request's body, as the handlers read it: hyper's, with a bound on
/// how long it may stall.
pub(crate) type Incoming = conn::IdleBody;

/// `Cache-Control` of everything immutable: versions, their signatures,
/// sealed segments and checkpoints.
pub const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// How an export is served.
#[derive(Clone, Debug, Default)]
pub struct ServeOptions {
    /// With a token, every request must carry `Authorization: Bearer TOKEN`.
    pub token: Option<String>,
    /// Without a token, writes are refused unless this is set.
    pub allow_anonymous_writes: bool,
    /// Writers may make symbolic links that lead out of the export.
    pub allow_outside_symlinks: bool,
    /// Longest a head long-poll may wait.
    pub max_wait: Duration,
    /// Where to log every request, one line each.
    pub access_log: Option<Arc<AccessLog>>,
    /// Keep the versions clients hold, within this budget, to answer exact
    /// patches from them (`None`: no store, no patches).
    pub versions: Option<crate::versions::Budget>,
    /// How many connections at once, and how long each phase may take.
    pub limits: Limits,
}

/// One line a request: `TIME PEER METHOD PATH STATUS BYTES PROTOCOL`, with
/// the time as `YYYYMMDDTHHMMSSZ`, BYTES the body's length (`-` when
/// streamed without one) and PROTOCOL `HTTP/1.1` or `HTTP/2.0`. Written
/// whole, a line at a time, so a reader never sees half.
#[derive(Debug)]
pub struct AccessLog {
    file: std::sync::Mutex<std::fs::File>,
}

impl AccessLog {
    /// Appends to `path`, creating it.
    pub fn open(path: &std::path::Path) -> std::io::Result<AccessLog> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(AccessLog {
            file: std::sync::Mutex::new(file),
        })
    }

    fn log(
        &self,
        peer: SocketAddr,
        method: &Method,
        path: &str,
        version: hyper::Version,
        response: &Response<Body>,
    ) {
        use std::io::Write;
        let bytes = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        let stamp = crate::tree::scan::utc_stamp(crate::tree::scan::now_ns() / 1_000_000_000);
        let line = format!(
            "{stamp} {peer} {method} {path} {} {bytes} {version:?}\n",
            response.status().as_u16()
        );
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = file.write_all(line.as_bytes()) {
            tracing::warn!(error = %e, "could not write the access log");
        }
    }
}

struct Service {
    export: Arc<Export>,
    options: ServeOptions,
}

/// What a server serves: one export at `/`, or an rsyncd.conf's modules.
pub enum Root {
    One(Arc<Export>, ServeOptions),
    Modules(Arc<modules::Modules>),
}

impl Root {
    fn exports(&self) -> Vec<Arc<Export>> {
        match self {
            Root::One(e, _) => vec![e.clone()],
            Root::Modules(m) => m.exports(),
        }
    }
}

/// Serves `export` on `listener` (through TLS when `tls` is given) until
/// `shutdown` completes; connections in flight are then dropped.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    export: Arc<Export>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve_root(listener, tls, Root::One(export, options), shutdown).await
}

/// Serves `root` on `listener` until `shutdown` completes.
pub async fn serve_root(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    root: Root,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let exports = root.exports();
    let background: Vec<_> = exports
        .iter()
        .map(|e| tokio::spawn(maintain(e.clone())))
        .collect();
    let root = Arc::new(match root {
        Root::One(export, options) => Handler::One(Arc::new(Service { export, options })),
        Root::Modules(m) => Handler::Modules(m),
    });
    tokio::pin!(shutdown);
    let limits = root.limits();
    let registry = Arc::new(conn::Registry::default());
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        // Room for the next connection first: the longest idle one goes
        // when all are taken, or the accept waits.
        tokio::select! {
            () = registry.room(limits.connections) => {}
            () = &mut shutdown => break,
        }
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, most likely: wait for some
                    // to close rather than spin.
                    tracing::warn!(error = %e, retry_in = ?backoff, "accept failed");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = &mut shutdown => break,
                    }
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        backoff = ACCEPT_BACKOFF_MIN;
        let _ = stream.set_nodelay(true);
        let member = registry.join();
        tokio::spawn(connection(
            stream,
            peer,
            tls.clone(),
            root.clone(),
            member,
            limits,
        ));
    }
    for b in background {
        b.abort();
    }
    for export in exports {
        let _ = tokio::task::spawn_blocking(move || export.save_index()).await;
    }
    Ok(())
}

enum Handler {
    One(Arc<Service>),
    Modules(Arc<modules::Modules>),
}

impl Handler {
    fn limits(&self) -> Limits {
        match self {
            Handler::One(service) => service.options.limits,
            Handler::Modules(m) => m.limits(),
        }
    }
}

/// The first pause after a failed accept, and the longest.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Serves one connection until it ends, the registry closes it for
/// another, or one of its phases takes too long (see [`conn`]).
async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    root: Arc<Handler>,
    member: conn::Member,
    limits: conn::Limits,
) {
    let member = Arc::new(member);
    let busy_of = member.clone();
    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
        let root = root.clone();
        let busy = busy_of.busy();
        let req = req.map(|body| conn::IdleBody::new(body, limits.body_idle));
        async move {
            let response = match &*root {
                Handler::One(service) => service.handle(req, peer).await,
                Handler::Modules(m) => m.handle(req, peer).await,
            };
            Ok::<_, Infallible>(response.map(|body| conn::Tracked::new(body, busy)))
        }
    });
    let served = async {
        match tls {
            Some(tls) => match tokio::time::timeout(limits.handshake, tls.accept(stream)).await {
                Ok(Ok(s)) => {
                    let h2 = s.get_ref().1.alpn_protocol() == Some(b"h2");
                    speak(conn::StallGuard::new(s, limits.write_idle), h2, svc, limits).await
                }
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %crate::monitor::Chain(&e), "TLS handshake failed");
                    Ok(())
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake took too long");
                    Ok(())
                }
            },
            // Cleartext: HTTP/2 from a client that knows (the head says
            // so), HTTP/1.1 from everyone else, on the same port.
            None => {
                let io = conn::StallGuard::new(stream, limits.write_idle);
                match tokio::time::timeout(limits.headers, conn::sniff(io)).await {
                    Ok(Ok((h2, io))) => speak(io, h2, svc, limits).await,
                    Ok(Err(_)) | Err(_) => {
                        tracing::debug!(%peer, "sent no request in time");
                        Ok(())
                    }
                }
            }
        }
    };
    tokio::select! {
        result = served => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %crate::monitor::Chain(&e), "connection ended");
            }
        }
        () = member.evicted() => tracing::debug!(%peer, "closed for a newer connection"),
    }
}

/// Serves HTTP/2 or HTTP/1.1 on a connection until it ends.
///
/// HTTP/2 streams are bounded in number and header size; their flow
/// control windows are sized for a long fat link (a push at 8 Mbit/s and
/// 100 ms of latency needs 100 KB in flight), not hyper's 64 KiB default.
/// HTTP/1.1 connections end with a lingering close ([`conn::linger`]).
async fn speak<S, Svc>(io: S, h2: bool, svc: Svc, limits: conn::Limits) -> Result<(), hyper::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    Svc: hyper::service::Service<
            Request<hyper::body::Incoming>,
            Response = Response<conn::Tracked<Body>>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    Svc::Future: Send + 'static,
{
    let timer = hyper_util::rt::TokioTimer::new();
    if h2 {
        hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .timer(timer)
            .max_concurrent_streams(H2_STREAMS)
            .max_header_list_size(MAX_HEADERS as u32)
            .initial_stream_window_size(H2_STREAM_WINDOW)
            .initial_connection_window_size(4 * H2_STREAM_WINDOW)
            .max_frame_size(H2_FRAME)
            .keep_alive_interval(Some(limits.headers))
            .keep_alive_timeout(limits.headers)
            .serve_connection(TokioIo::new(io), svc)
            .await
    } else {
        let parts = hyper::server::conn::http1::Builder::new()
            .max_buf_size(MAX_HEADERS)
            .timer(timer)
            .header_read_timeout(limits.headers)
            .serve_connection(TokioIo::new(io), svc)
            .without_shutdown()
            .await?;
        conn::linger(parts.io.into_inner()).await;
        Ok(())
    }
}

/// Most bytes of one request's headers (what they may make us buffer).
const MAX_HEADERS: usize = 256 * 1024;
/// Requests one HTTP/2 connection may have in flight at once.
const H2_STREAMS: u32 = 64;
/// Largest HTTP/2 frame a client may send (9 bytes each: the protocol's
/// default of 16 KiB costs 0.05% of a push).
const H2_FRAME: u32 = 256 * 1024;
/// How much one HTTP/2 request's body may send ahead of our reading it.
const H2_STREAM_WINDOW: u32 = 2 << 20;

/// Background work: save the index now and then, and drop kept versions
/// past their age every hour (the byte budget is kept as they are added).
async fn maintain(export: Arc<Export>) {
    const TICK: Duration = Duration::from_secs(5);
    const EVICT_EVERY: u32 = 720;
    let mut tick = tokio::time::interval(TICK);
    for n in 1u32.. {
        tick.tick().await;
        let export = export.clone();
        let _ = tokio::task::spawn_blocking(move || {
            export.save_index();
            if n % EVICT_EVERY == 0
                && let Some(store) = export.versions()
                && let Err(e) = store.evict()
            {
                tracing::warn!(error = %e, "could not evict kept versions");
            }
        })
        .await;
    }
}

impl Service {
    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let method = req.method().clone();
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        // A refused request's body may be left unread: the connection
        // then ends after the answer, and says so, so that the client does
        // not send its next request on it.
        let version = req.version();
        let has_body = !hyper::body::Body::is_end_stream(req.body());
        let mut response = match self.route(req).await {
            Ok(r) => r,
            Err(refusal) => refusal.into_response(),
        };
        // (HTTP/2 resets the stream instead, and has no such header.)
        if has_body
            && version < hyper::Version::HTTP_2
            && (response.status().is_client_error() || response.status().is_server_error())
        {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        // A head's body names the server already; every sync reads one.
        let named = path.split('?').next() == Some("/.intersync/head")
            && response.status() == StatusCode::OK;
        if !named {
            response.headers_mut().insert(
                HEADER_SERVER_ID,
                HeaderValue::from_str(&self.export.node().to_string()).expect("hex"),
            );
        }
        tracing::debug!(%peer, %method, %path, status = response.status().as_u16(), "request");
        if let Some(log) = &self.options.access_log {
            log.log(peer, &method, &path, version, &response);
        }
        response
    }

    async fn route(&self, req: Request<Incoming>) -> Result<Response<Body>, Refusal> {
        self.authorize(&req)?;
        let raw = req.uri().path().to_owned();
        let method = req.method().clone();
        if let Some(rest) = raw.strip_prefix("/.intersync/") {
            return match (&method, rest.split_once('/').unwrap_or((rest, ""))) {
                (&Method::GET, ("head", "")) => {
                    meta::head(&self.export, &req, self.options.max_wait).await
                }
                (&Method::GET | &Method::HEAD, ("kml", name)) => {
                    let path = self.export.kml_path(check_name(name)?);
                    files::serve_state_file(&req, &path, self.committed_length(name)).await
                }
                (&Method::GET | &Method::HEAD, ("checkpoints", name)) => {
                    let path = self.export.checkpoint_path(check_name(name)?);
                    files::serve_state_file(&req, &path, None).await
                }
                (&Method::GET | &Method::HEAD, ("sig", name)) if name.contains('.') => {
                    meta::signature_level(&self.export, &req, name).await
                }
                (&Method::GET | &Method::HEAD, ("packs", "list.json")) => {
                    files::serve_pack_list(&self.export, &req).await
                }
                (&Method::GET | &Method::HEAD, ("packs", name)) => {
                    let path = self
                        .export
                        .pack_path(name)
                        .ok_or_else(|| Refusal::new(StatusCode::NOT_FOUND, "no such pack"))?;
                    files::serve_pack(&req, &path).await
                }
                (&Method::GET, ("sig", version)) => meta::signature(&self.export, version).await,
                (&Method::GET, ("patch", pair)) => meta::patch(&self.export, pair).await,
                (&Method::GET | &Method::HEAD, ("version", version)) => {
                    files::serve_version(&self.export, &req, version).await
                }
                (&Method::POST, ("delta", path)) => {
                    let path = self.visible(tree_path(path)?)?;
                    meta::delta(&self.export, path, req).await
                }
                (&Method::POST, ("refine", path)) => {
                    let path = self.visible(tree_path(path)?)?;
                    meta::refine(&self.export, path, req).await
                }
                (&Method::POST, ("fetch", "")) => fetch::fetch(&self.export, req).await,
                (&Method::POST, ("push", "")) => {
                    self.may_write()?;
                    push::push(&self.export, req).await
                }
                (&Method::POST, ("ops", "")) => {
                    self.may_write()?;
                    writes::ops(&self.export, req).await
                }
                _ => Err(Refusal::new(
                    StatusCode::NOT_FOUND,
                    "no such InterSync resource",
                )),
            };
        }
        let path = self.visible(tree_path(raw.strip_prefix('/').unwrap_or(&raw))?)?;
        match method {
            Method::GET | Method::HEAD => files::serve_tree_file(&self.export, &req, path).await,
            Method::PUT => {
                self.may_write()?;
                writes::put(&self.export, req, path).await
            }
            _ => Err(Refusal::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed",
            )),
        }
    }

    /// For the open segment, the length of what is durable: bytes past it
    /// may belong to an append still being fsynced, and are not served.
    fn committed_length(&self, name: &str) -> Option<u64> {
        self.export
            .head()
            .segments
            .into_iter()
            .find(|s| s.name == name && !s.sealed)
            .map(|s| s.length)
    }

    fn authorize(&self, req: &Request<Incoming>) -> Result<(), Refusal> {
        let Some(token) = &self.options.token else {
            return Ok(());
        };
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(g) if constant_time_eq(g.as_bytes(), token.as_bytes()) => Ok(()),
            Some(_) => Err(Refusal::new(StatusCode::FORBIDDEN, "wrong token")),
            None => Err(
                Refusal::new(StatusCode::UNAUTHORIZED, "a bearer token is required")
                    .with_header(header::WWW_AUTHENTICATE, "Bearer"),
            ),
        }
    }

    /// Refuses a path the export leaves out as if it did not exist.
    fn visible(&self, path: TreePath) -> Result<TreePath, Refusal> {
        if self.export.hidden(&path, false) {
            return Err(Refusal::new(
                StatusCode::NOT_FOUND,
                "excluded by the module's rules",
            ));
        }
        Ok(path)
    }

    fn may_write(&self) -> Result<(), Refusal> {
        if self.options.token.is_some() || self.options.allow_anonymous_writes {
            Ok(())
        } else {
            Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "this export is read-only",
            ))
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A request path, percent-decoded and checked.
fn tree_path(raw: &str) -> Result<TreePath, Refusal> {
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| Refusal::new(StatusCode::BAD_REQUEST, "path is not UTF-8"))?;
    TreePath::new(&decoded)
        .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, format!("bad path: {e}")))
}

/// A journal or checkpoint file name: 16 hex digits and `.kml`.
fn check_name(name: &str) -> Result<&str, Refusal> {
    let ok = name.len() == 20
        && name.ends_with(".kml")
        && name[..16]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    if ok {
        Ok(name)
    } else {
        Err(Refusal::new(StatusCode::NOT_FOUND, "no such journal file"))
    }
}

/// A request refused, with the status and a one-line reason for the body.
#[derive(Debug)]
pub struct Refusal {
    status: StatusCode,
    reason: String,
    headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl Refusal {
    pub fn new(status: StatusCode, reason: impl Into<String>) -> Refusal {
        Refusal {
            status,
            reason: reason.into(),
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: header::HeaderName, value: &str) -> Refusal {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.push((name, v));
        }
        self
    }

    /// As one result of a batch.
    pub(crate) fn into_result(self) -> intersync_protocol::OpResult {
        intersync_protocol::OpResult {
            status: self.status.as_u16(),
            reason: Some(self.reason),
        }
    }

    pub(crate) fn into_response(self) -> Response<Body> {
        let mut r = text(self.status, format!("{}\n", self.reason));
        for (k, v) in self.headers {
            r.headers_mut().insert(k, v);
        }
        r
    }
}

impl From<BeneathError> for Refusal {
    fn from(e: BeneathError) -> Refusal {
        let (status, reason) = match e {
            BeneathError::Symlink { .. } => (StatusCode::FORBIDDEN, "a symbolic link, not a file"),
            BeneathError::ThroughLink { .. } => {
                (StatusCode::FORBIDDEN, "path goes through a symbolic link")
            }
            BeneathError::NoFolder { .. } => (StatusCode::NOT_FOUND, "no such folder"),
            BeneathError::NotAFile { .. } => (StatusCode::NOT_FOUND, "not a regular file"),
            BeneathError::NoFile { .. } | BeneathError::Io { .. } => {
                (StatusCode::NOT_FOUND, "no such file")
            }
        };
        Refusal::new(status, reason)
    }
}

impl From<ExportError> for Refusal {
    fn from(e: ExportError) -> Refusal {
        let said = crate::monitor::Chain(&e);
        tracing::error!(error = %said, "export failed");
        let status = match e {
            ExportError::JournalGone { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Refusal::new(status, format!("server error: {said}"))
    }
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
