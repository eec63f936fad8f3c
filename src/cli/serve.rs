//! `intersync serve`: an export (or an rsyncd.conf's modules) over
//! HTTP(S), and with `--mount` the export mounted through presto.

use std::path::PathBuf;

use anyhow::Context;
use intersync::server;

use super::shutdown_signal;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// The folder to export (or give --rsyncd-conf).
    #[arg(required_unless_present = "rsyncd_conf")]
    pub dir: Option<PathBuf>,
    /// Serve every module of this rsyncd.conf at /MODULE/ (path, read only,
    /// write only, list, auth users with secrets file as HTTP Basic, hosts
    /// allow/deny, max connections).
    #[arg(long, conflicts_with = "dir")]
    pub rsyncd_conf: Option<PathBuf>,
    /// Accept the Basic logins of rsyncd.conf's auth users over plain HTTP
    /// (passwords then cross the network readable; use TLS instead).
    #[arg(long)]
    pub insecure_auth: bool,
    /// Address to listen on (port 0 picks a free one; the URL is printed).
    #[arg(long, default_value = "127.0.0.1:8740")]
    pub listen: std::net::SocketAddr,
    /// PEM certificate chain: serve HTTPS (with --tls-key).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// File holding the bearer token every request must carry; with it, writes are allowed.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Without a token, accept writes from anyone (default: read-only).
    #[arg(long)]
    pub allow_anonymous_writes: bool,
    /// Let writers make symbolic links that point out of the folder
    /// (absolute targets, or ones that climb past its root with `..`);
    /// refused by default, as a web server serving the folder, and every
    /// working copy, would follow them.
    #[arg(long)]
    pub allow_outside_symlinks: bool,
    /// Do not watch the folder for changes made by other programs (scan only at start).
    #[arg(long)]
    pub no_watch: bool,
    /// Mount the folder through presto at this empty folder: whatever
    /// programs change through it is journaled as it happens, with no scan
    /// (the folder itself is then not watched; change it through the mount).
    #[arg(long, conflicts_with = "rsyncd_conf")]
    pub mount: Option<PathBuf>,
    /// Longest a head long-poll may be held, in seconds.
    #[arg(long, default_value_t = 300)]
    pub max_wait: u64,
    /// Write a checkpoint of the tree every this many journal records.
    #[arg(long, default_value_t = 10_000)]
    pub checkpoint_every: u64,
    /// Seal a journal segment once it is this many bytes long.
    #[arg(long, default_value_t = 4 << 20)]
    pub segment_bytes: u64,
    /// Append a line for every request to this file: time, peer, method,
    /// path, status and body bytes.
    #[arg(long)]
    pub access_log: Option<PathBuf>,
    /// Bytes of the versions clients hold to keep under .intersync/versions/
    /// (with the patches made from them), so that a client's next update is
    /// an exact patch instead of a signature and blocks; 0 keeps none.
    /// The least recently used go first.
    #[arg(long, default_value_t = 1 << 30)]
    pub version_budget: u64,
    /// Drop a kept version or patch unused for this many seconds.
    #[arg(long, default_value_t = 7 * 24 * 3600)]
    pub version_max_age: u64,
    /// Connections served at once (default: half the open files this
    /// process may have); when all are taken, the one idle the longest is
    /// closed for a newcomer.
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Seconds a request body or a response may stall before the
    /// connection is closed (headers have 30, a TLS handshake 15).
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let token = match &args.token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let token = text.trim().to_owned();
            anyhow::ensure!(!token.is_empty(), "{} holds no token", path.display());
            Some(token)
        }
        None => None,
    };
    let rsyncd = match &args.rsyncd_conf {
        Some(path) => {
            let conf = intersync_compat::rsyncd::Config::load(path)?;
            for warning in &conf.warnings {
                eprintln!("intersync: {warning}");
            }
            Some(conf)
        }
        None => None,
    };
    let what = match (&args.dir, &rsyncd) {
        (Some(dir), _) => dir.display().to_string(),
        (None, Some(conf)) => format!(
            "{} modules ({})",
            conf.modules.len(),
            conf.modules
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        (None, None) => unreachable!("clap requires one"),
    };
    let config = server::ServeConfig {
        root: args.dir.clone().unwrap_or_default(),
        rsyncd,
        insecure_auth: args.insecure_auth,
        listen: args.listen,
        tls: args.tls_cert.zip(args.tls_key),
        options: server::ServeOptions {
            token,
            allow_anonymous_writes: args.allow_anonymous_writes,
            allow_outside_symlinks: args.allow_outside_symlinks,
            max_wait: std::time::Duration::from_secs(args.max_wait),
            access_log: match &args.access_log {
                Some(path) => Some(std::sync::Arc::new(
                    server::AccessLog::open(path)
                        .with_context(|| format!("opening {}", path.display()))?,
                )),
                None => None,
            },
            versions: (args.version_budget > 0).then_some(intersync::versions::Budget {
                bytes: args.version_budget,
                max_age: std::time::Duration::from_secs(args.version_max_age),
            }),
            limits: {
                let default = server::Limits::default();
                let stall = std::time::Duration::from_secs(args.timeout.max(1));
                server::Limits {
                    connections: args.max_connections.unwrap_or(default.connections).max(1),
                    body_idle: stall,
                    write_idle: stall,
                    ..default
                }
            },
        },
        // A mount journals what changes through it: no watcher needed.
        watch: !args.no_watch && args.mount.is_none(),
        journal: intersync::kml::JournalOptions {
            seal_bytes: args.segment_bytes,
            checkpoint_every: args.checkpoint_every.max(1),
        },
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    let ready = |_, url| {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "intersync: serving {what} at {url}");
        let _ = out.flush();
    };
    match &args.mount {
        None => runtime.block_on(server::run(config, ready, shutdown_signal()))?,
        Some(mountpoint) => runtime.block_on(serve_mounted(config, mountpoint, ready))?,
    }
    Ok(())
}

/// `serve DIR --mount MNT`: the export opened, mounted through presto (so
/// that what programs change through MNT is journaled as it happens), then
/// served; unmounted when the server stops.
async fn serve_mounted(
    config: server::ServeConfig,
    mountpoint: &std::path::Path,
    ready: impl FnOnce(std::net::SocketAddr, String),
) -> Result<(), server::StartError> {
    let export = std::sync::Arc::new(server::open(&config).await?);
    if mountpoint
        .canonicalize()
        .is_ok_and(|m| m.starts_with(export.root()))
    {
        // A scan of the folder would walk into its own mount.
        return Err(server::StartError::Config(format!(
            "the mount point {} is inside the exported folder",
            mountpoint.display()
        )));
    }
    let failed = |source| server::StartError::Mount {
        path: mountpoint.to_owned(),
        source,
    };
    let session = intersync::fuse::Presto::new(export.clone())
        .map_err(failed)?
        .mount(mountpoint)
        .map_err(failed)?;
    let served = server::run_export(export, config, ready, shutdown_signal()).await;
    tokio::task::spawn_blocking(move || intersync::fuse::unmount_quietly(session))
        .await
        .map_err(|e| server::StartError::Stopped(e.to_string()))?;
    served
}
