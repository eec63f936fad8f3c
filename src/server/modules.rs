//! `intersync serve --rsyncd-conf FILE`: every module of an rsync daemon's
//! configuration served as an export at `/MODULE/`, as the daemon would
//! serve it: `hosts allow`/`hosts deny` on the peer's address, `auth users`
//! with the `secrets file` as HTTP Basic (refused over plain HTTP unless
//! the operator says otherwise), `read only`/`write only` and per-user
//! `:ro`/`:rw`/`:deny`, `list` for the listing at `/`, `max connections` as
//! requests in flight, and `filter`/`exclude`/`include` (and their `from`
//! files) as paths the module's export leaves out: not journaled, not
//! served, not writable.
//!
//! What it trusts: nothing from the request. The module name is one path
//! segment matched exactly; credentials are compared in constant time; a
//! refusal is 401, 403 or 503 with rsync's words.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use hyper::header;
use hyper::{Method, Request, Response, StatusCode};
use intersync_compat::rsyncd::{self, Access, Config};

use super::{Body, Export, Incoming, Refusal, ServeOptions, Service, StartError, text};
use crate::tree::scan::Hide;

/// The long names of an rsync command line's options, as its client says
/// them, so that a module's `refuse options` can refuse them.
pub const HEADER_RSYNC_OPTIONS: &str = "x-intersync-rsync-options";

/// One module and its export.
struct Module {
    conf: rsyncd::Module,
    export: Arc<Export>,
    in_flight: AtomicU32,
}

/// Every module of a configuration.
pub struct Modules {
    modules: Vec<Module>,
    options: ServeOptions,
}

impl Modules {
    /// Opens the export of every module. `secure` says the server speaks
    /// TLS; without it, modules that need a login are refused unless
    /// `insecure_auth`.
    pub fn open(
        config: &Config,
        journal: crate::kml::JournalOptions,
        options: ServeOptions,
        secure: bool,
        insecure_auth: bool,
    ) -> Result<Modules, StartError> {
        let mut modules = Vec::new();
        for conf in &config.modules {
            if !conf.auth_users.is_empty() && !secure && !insecure_auth {
                return Err(StartError::Config(format!(
                    "module [{}] has auth users: their passwords would cross plain HTTP; serve over TLS (--tls-cert, --tls-key) or pass --insecure-auth",
                    conf.name
                )));
            }
            let hide = module_filters(conf)?;
            let incoming = conf
                .incoming_chmod
                .as_deref()
                .map(intersync_compat::chmod::Chmod::parse)
                .transpose()
                .map_err(|e| {
                    StartError::Config(format!("module [{}]: incoming chmod: {e}", conf.name))
                })?;
            let export = Export::open_hiding(&conf.path, journal, hide)
                .and_then(|e| match options.versions {
                    Some(budget) => e.with_versions(budget),
                    None => Ok(e),
                })
                .map_err(|e| {
                    StartError::Config(format!(
                        "module [{}] ({}): {e}",
                        conf.name,
                        conf.path.display()
                    ))
                })?
                .with_incoming_chmod(incoming)
                .with_outside_links(!conf.munge_symlinks);
            modules.push(Module {
                conf: conf.clone(),
                export: Arc::new(export),
                in_flight: AtomicU32::new(0),
            });
        }
        Ok(Modules { modules, options })
    }

    /// How many connections at once, and how long each phase may take.
    pub fn limits(&self) -> super::Limits {
        self.options.limits
    }

    /// The exports, for background work and shutdown.
    pub fn exports(&self) -> Vec<Arc<Export>> {
        self.modules.iter().map(|m| m.export.clone()).collect()
    }

    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        match self.route(req, peer).await {
            Ok(r) => r,
            Err(refusal) => refusal.into_response(),
        }
    }

    async fn route(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Response<Body>, Refusal> {
        let path = req.uri().path().to_owned();
        if path == "/" {
            return Ok(self.listing());
        }
        let trimmed = path.trim_start_matches('/');
        let (name, rest) = match trimmed.split_once('/') {
            Some((n, r)) => (n, format!("/{r}")),
            None => (trimmed, "/".to_string()),
        };
        let Some(module) = self.modules.iter().find(|m| m.conf.name == name) else {
            return Err(Refusal::new(
                StatusCode::NOT_FOUND,
                format!("@ERROR: Unknown module '{name}'"),
            ));
        };
        let conf = &module.conf;
        if !conf.host_allowed(peer.ip()) {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                format!("@ERROR: access denied to {name} from {}", peer.ip()),
            ));
        }
        let access = if conf.auth_users.is_empty() {
            Access::Default
        } else {
            login(conf, &req)?
        };
        let writable = conf.writable_by(access);
        let options = req
            .headers()
            .get(HEADER_RSYNC_OPTIONS)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if let Some(refused) = conf.refused_option(options.split_whitespace()) {
            // rsync's daemon answers this with "requested action not supported".
            return Err(Refusal::new(
                StatusCode::NOT_IMPLEMENTED,
                format!("@ERROR: the server is configured to refuse --{refused}"),
            ));
        }
        if conf.write_only && reads_content(req.method(), &rest) {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                format!("@ERROR: module '{name}' is write only"),
            ));
        }
        let max = conf.max_connections;
        let now = module.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        let _slot = Slot(&module.in_flight);
        if max > 0 && now > max {
            return Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("@ERROR: max connections ({max}) reached -- try again later"),
            )
            .with_header(header::RETRY_AFTER, "5"));
        }
        // The module's own export, as if it were the server's root.
        let (mut parts, body) = req.into_parts();
        let query = parts
            .uri
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        parts.uri = format!("{rest}{query}")
            .parse()
            .map_err(|_| Refusal::new(StatusCode::BAD_REQUEST, "bad path"))?;
        let service = Service {
            export: module.export.clone(),
            options: ServeOptions {
                token: None,
                allow_anonymous_writes: writable,
                ..self.options.clone()
            },
        };
        let mut response = service.handle(Request::from_parts(parts, body), peer).await;
        if !writable && response.status() == StatusCode::FORBIDDEN {
            // rsync's words for a write to a read-only module.
            response = text(
                StatusCode::FORBIDDEN,
                format!("@ERROR: module '{name}' is read only\n"),
            );
        }
        Ok(response)
    }

    /// rsync's module listing (`rsync host::`): listed modules, one a line.
    fn listing(&self) -> Response<Body> {
        let mut out = String::new();
        for m in self.modules.iter().filter(|m| m.conf.list) {
            out.push_str(&format!("{:<15}\t{}\n", m.conf.name, m.conf.comment));
        }
        text(StatusCode::OK, out)
    }
}

/// A module's `filter`, `exclude`, `include`, `exclude from` and `include
/// from`, in order, as what its export leaves out.
fn module_filters(conf: &rsyncd::Module) -> Result<Option<Arc<Hide>>, StartError> {
    use intersync_compat::filter::{Filters, LocalFiles, Side};
    use intersync_compat::rsyncd::ModuleFilter;
    if conf.filters.is_empty() {
        return Ok(None);
    }
    let bad = |e: intersync_compat::filter::FilterError| {
        StartError::Config(format!("module [{}]: {e}", conf.name))
    };
    let mut filters = Filters::new(false);
    for f in &conf.filters {
        match f {
            ModuleFilter::Rules(text) => filters.add_words(text, None, &LocalFiles),
            ModuleFilter::Patterns { include, patterns } => {
                filters.add_words(patterns, Some(*include), &LocalFiles)
            }
            ModuleFilter::From { include, file } => {
                filters.add_pattern_file(file, *include, false, &LocalFiles)
            }
        }
        .map_err(bad)?;
    }
    filters.enter_root(&conf.path, &LocalFiles).map_err(bad)?;
    Ok(Some(Arc::new(
        move |path: &intersync_protocol::TreePath, is_dir: bool| {
            filters.excluded(path.as_str().as_bytes(), is_dir, Side::Sender)
        },
    )))
}

/// Gives back a request slot when the request is done.
struct Slot<'a>(&'a AtomicU32);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Whether a request reads files' content (which `write only` refuses;
/// the head and journal stay readable so that writers can follow).
fn reads_content(method: &Method, rest: &str) -> bool {
    let meta = rest.starts_with("/.intersync/head")
        || rest.starts_with("/.intersync/kml/")
        || rest.starts_with("/.intersync/checkpoints/");
    match *method {
        Method::GET | Method::HEAD => !meta,
        Method::POST => {
            rest.starts_with("/.intersync/delta/")
                || rest.starts_with("/.intersync/refine/")
                || rest.starts_with("/.intersync/fetch")
        }
        _ => false,
    }
}

/// HTTP Basic against the module's users and secrets file; the access the
/// first matching `auth users` rule gives.
fn login(conf: &rsyncd::Module, req: &Request<Incoming>) -> Result<Access, Refusal> {
    use base64::Engine;
    let challenge = || {
        Refusal::new(
            StatusCode::UNAUTHORIZED,
            format!("@ERROR: auth failed on module {}", conf.name),
        )
        .with_header(
            header::WWW_AUTHENTICATE,
            &format!("Basic realm=\"{}\", charset=\"UTF-8\"", conf.name),
        )
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok());
    let Some(given) = given else {
        return Err(challenge());
    };
    let Some((user, password)) = given.split_once(':') else {
        return Err(challenge());
    };
    let Some(access) = conf.user_access(user) else {
        return Err(challenge());
    };
    let Some(secrets) = &conf.secrets_file else {
        tracing::warn!(module = %conf.name, "auth users without a secrets file: nobody can log in");
        return Err(challenge());
    };
    let expected = match rsyncd::secret_for(secrets, user, conf.strict_modes) {
        Ok(found) => found,
        Err(e) => {
            tracing::error!(module = %conf.name, error = %e, "secrets file refused");
            return Err(challenge());
        }
    };
    let ok = expected.is_some_and(|p| super::constant_time_eq(p.as_bytes(), password.as_bytes()));
    if !ok {
        return Err(challenge());
    }
    if access == Access::Deny {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            format!("@ERROR: access denied to {} for {user}", conf.name),
        ));
    }
    Ok(access)
}
