//! The `intersync` command: parses arguments, sets up tracing, calls the
//! library and turns the outcome into rsync's exit codes.

use std::path::PathBuf;
use std::process::ExitCode as ProcessExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use intersync::delta::{self, ErrorKind, PatchLimits};
use intersync::server;
use intersync_compat::ExitCode;
use intersync_protocol::Version;
use intersync_protocol::signature::{SignatureFormat, StrongSumKind, WeakSumKind};

#[path = "cli/demo.rs"]
mod demo;
#[path = "cli/rsync.rs"]
mod rsync;

#[derive(Parser)]
#[command(
    name = "intersync",
    version,
    about = "Keep directory trees in sync over HTTP(S)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// rsync's command line: `intersync [OPTIONS] SRC... DEST` (this word may be left out).
    #[command(disable_help_flag = true)]
    Rsync {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Export DIR over HTTP(S): files, the modification log, signatures, deltas and writes.
    Serve(ServeArgs),
    /// Write (or bring up to date) DIR/.intersync/ so that any web server serving DIR is an InterSync source.
    Export { dir: PathBuf },
    /// Fetch one file from any web server into FILE: conditional, resumable, installed whole.
    Get {
        url: String,
        file: PathBuf,
        /// Say what happened.
        #[arg(short, long)]
        verbose: bool,
        /// File holding a bearer token.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// PEM certificate of a CA to trust besides the system's.
        #[arg(long)]
        cacert: Option<PathBuf>,
        /// Limit the receiving rate (rsync's units).
        #[arg(long, value_parser = intersync_compat::bwlimit::parse)]
        bwlimit: Option<u64>,
    },
    /// One sync round between the export at URL and the working copy DIR, both ways.
    Sync(SyncArgs),
    /// Serve a generated tree, sync a copy, edit both sides, sync again, and show what moved.
    Demo,
    /// How much would InterSync save on your data? Serves NEW on loopback,
    /// brings a copy of OLD up to it, and compares with a full fetch (and
    /// rsync, if installed). Files or folders.
    Bench {
        old: PathBuf,
        new: PathBuf,
        /// Emulate a link of this rate, e.g. 8mbit, 512kbit, 1gbit.
        #[arg(long, value_parser = parse_rate)]
        link: Option<u64>,
        /// Round-trip time to add, in milliseconds.
        #[arg(long, default_value_t = 0)]
        rtt: u64,
        /// Runs of each tool; times are their median.
        #[arg(long, default_value_t = 1)]
        runs: usize,
    },
    /// Stay in sync: a round whenever the server's journal moves or local files change.
    Watch(SyncArgs),
    /// Mount a working copy through presto: the export's files show at once
    /// and are fetched when first opened; what changes through the mount is
    /// journaled as it happens and pushed, like watch. Unmounts on SIGINT/SIGTERM.
    Mount(MountArgs),
    /// Show a working copy's last sync, pending local changes and conflicts.
    Status { dir: PathBuf },
    /// Write the signature of BASE to SIG (`-` or omitted: standard output), like `rdiff signature`.
    Signature {
        /// Block length in bytes (default: InterSync's block-size policy).
        #[arg(short = 'b', long = "block-size")]
        block_size: Option<u32>,
        /// Strong-sum length in bytes (default: by file size).
        #[arg(short = 'S', long = "sum-size")]
        sum_size: Option<u32>,
        /// Strong hash.
        #[arg(short = 'H', long = "hash", value_enum, default_value = "md4")]
        hash: Hash,
        /// Rolling checksum.
        #[arg(short = 'R', long = "rollsum", value_enum, default_value = "rollsum")]
        rollsum: Rollsum,
        base: PathBuf,
        sig: Option<PathBuf>,
    },
    /// Write a delta from SIG's base to NEW, like `rdiff delta` (any of librsync's four signature formats).
    Delta {
        /// Print literal and matched byte counts to standard error.
        #[arg(short = 's', long = "statistics")]
        statistics: bool,
        sig: PathBuf,
        new: PathBuf,
        delta: Option<PathBuf>,
    },
    /// Apply DELTA to BASE, writing OUT, like `rdiff patch`; nothing is written unless the delta is sound.
    Patch {
        /// Print literal and matched byte counts to standard error.
        #[arg(short = 's', long = "statistics")]
        statistics: bool,
        /// Refuse a delta whose result would be larger than this many bytes.
        #[arg(long = "max-output")]
        max_output: Option<u64>,
        /// Install OUT only if its BLAKE3 hash is this (64 hex digits).
        #[arg(long = "expect-version")]
        expect_version: Option<Version>,
        base: PathBuf,
        delta: PathBuf,
        out: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct MountArgs {
    /// The export, e.g. http://host:8740/
    url: String,
    /// The working copy that holds what is fetched (created on first use).
    cache: PathBuf,
    /// The empty folder to mount at.
    mountpoint: PathBuf,
    /// Fetch every file in the background, not only when opened.
    #[arg(long)]
    prefetch: bool,
    /// List each change of every round.
    #[arg(short, long)]
    verbose: bool,
    #[command(flatten)]
    connect: Connect,
}

/// How a client reaches a server that asks for credentials or a private CA.
#[derive(clap::Args)]
struct Connect {
    /// File holding the server's bearer token.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// PEM certificate of a CA to trust besides the system's.
    #[arg(long)]
    cacert: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// The folder to export (or give --rsyncd-conf).
    #[arg(required_unless_present = "rsyncd_conf")]
    dir: Option<PathBuf>,
    /// Serve every module of this rsyncd.conf at /MODULE/ (path, read only,
    /// write only, list, auth users with secrets file as HTTP Basic, hosts
    /// allow/deny, max connections).
    #[arg(long, conflicts_with = "dir")]
    rsyncd_conf: Option<PathBuf>,
    /// Accept the Basic logins of rsyncd.conf's auth users over plain HTTP
    /// (passwords then cross the network readable; use TLS instead).
    #[arg(long)]
    insecure_auth: bool,
    /// Address to listen on (port 0 picks a free one; the URL is printed).
    #[arg(long, default_value = "127.0.0.1:8740")]
    listen: std::net::SocketAddr,
    /// PEM certificate chain: serve HTTPS (with --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// File holding the bearer token every request must carry; with it, writes are allowed.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Without a token, accept writes from anyone (default: read-only).
    #[arg(long)]
    allow_anonymous_writes: bool,
    /// Do not watch the folder for changes made by other programs (scan only at start).
    #[arg(long)]
    no_watch: bool,
    /// Mount the folder through presto at this empty folder: whatever
    /// programs change through it is journaled as it happens, with no scan
    /// (the folder itself is then not watched; change it through the mount).
    #[arg(long, conflicts_with = "rsyncd_conf")]
    mount: Option<PathBuf>,
    /// Longest a head long-poll may be held, in seconds.
    #[arg(long, default_value_t = 300)]
    max_wait: u64,
    /// Write a checkpoint of the tree every this many journal records.
    #[arg(long, default_value_t = 10_000)]
    checkpoint_every: u64,
    /// Seal a journal segment once it is this many bytes long.
    #[arg(long, default_value_t = 4 << 20)]
    segment_bytes: u64,
    /// Append a line for every request to this file: time, peer, method,
    /// path, status and body bytes.
    #[arg(long)]
    access_log: Option<PathBuf>,
    /// Bytes of the versions clients hold to keep under .intersync/versions/
    /// (with the patches made from them), so that a client's next update is
    /// an exact patch instead of a signature and blocks; 0 keeps none.
    /// The least recently used go first.
    #[arg(long, default_value_t = 1 << 30)]
    version_budget: u64,
    /// Drop a kept version or patch unused for this many seconds.
    #[arg(long, default_value_t = 7 * 24 * 3600)]
    version_max_age: u64,
}

#[derive(clap::Args)]
struct SyncArgs {
    /// The export, e.g. http://host:8740/
    url: String,
    /// The working copy (created on first use).
    dir: PathBuf,
    /// Only bring the server's changes here.
    #[arg(long, conflicts_with = "push_only")]
    pull_only: bool,
    /// Only send local changes to the server.
    #[arg(long)]
    push_only: bool,
    /// List what changed.
    #[arg(short, long)]
    verbose: bool,
    /// Show a progress bar: bytes, rate and time left.
    #[arg(long)]
    progress: bool,
    /// Print rsync-style transfer statistics.
    #[arg(long)]
    stats: bool,
    #[command(flatten)]
    connect: Connect,
    /// Limit the receiving rate, like rsync: a number of KiB/s, or with a
    /// suffix (K, M, G: powers of 1024; KB, MB, GB: of 1000), e.g. 1.5M.
    #[arg(long, value_parser = intersync_compat::bwlimit::parse)]
    bwlimit: Option<u64>,
    /// The URL is an HTTP cache or CDN in front of the server: read only
    /// with cacheable GETs (signatures and block ranges of immutable
    /// versions), so that what one client fetched serves the others.
    #[arg(long)]
    via_cache: bool,
    /// Bytes of synced versions (of files of 64 KiB and more) to keep under
    /// DIR/.intersync/versions/, so that edits made here are pushed as exact
    /// patches from them; 0 keeps none (edits go as deltas against the
    /// server's signature).
    #[arg(long, default_value_t = 1 << 30)]
    version_budget: u64,
}

#[derive(Clone, Copy, ValueEnum)]
enum Hash {
    Md4,
    Blake2,
}

#[derive(Clone, Copy, ValueEnum)]
enum Rollsum {
    Rollsum,
    Rabinkarp,
}

fn main() -> ProcessExitCode {
    // A command line that does not start with one of our subcommands is
    // rsync's (`intersync -av src/ dst/`); `intersync rsync ...` says so.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(first) = args.get(1).and_then(|a| a.to_str()) {
        use clap::CommandFactory;
        let ours = Cli::command()
            .get_subcommands()
            .any(|c| c.get_name() == first)
            || matches!(first, "help" | "--help" | "-V" | "--version");
        if first == "rsync" {
            return rsync::main(&args[2..]).into();
        }
        if !ours {
            return rsync::main(&args[1..]).into();
        }
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::Syntax.into()
            } else {
                ExitCode::Ok.into()
            };
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("INTERSYNC_LOG"))
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::Ok.into(),
        Err(e) => {
            eprintln!("intersync: {e:#}");
            exit_code(&e).into()
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let stdout = || PathBuf::from("-");
    match cli.command {
        // main() takes rsync command lines before clap sees them.
        Command::Rsync { .. } => unreachable!("handled in main"),
        Command::Serve(args) => serve(args)?,
        Command::Sync(args) => return sync(args),
        Command::Watch(args) => watch(args)?,
        Command::Mount(args) => mount(args)?,
        Command::Status { dir } => status(&dir)?,
        Command::Get {
            url,
            file,
            verbose,
            token_file,
            cacert,
            bwlimit,
        } => {
            let remote = intersync::transport::HttpRemote::new(
                &url,
                read_token(&token_file)?,
                cacert.as_deref(),
            )?
            .with_bwlimit(bwlimit);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let got = runtime.block_on(intersync::transport::get::get(&remote, &url, &file))?;
            if verbose {
                match got {
                    intersync::transport::get::Got::Unchanged => {
                        println!("{}: unchanged", file.display())
                    }
                    intersync::transport::get::Got::Fetched {
                        bytes,
                        resumed_from,
                    } => {
                        println!(
                            "{}: fetched {bytes} bytes, resumed from {resumed_from}",
                            file.display()
                        )
                    }
                }
            }
        }
        Command::Export { dir } => {
            let export = intersync::export::Export::open(&dir, Default::default())?;
            let (files, written) = export.write_static()?;
            println!(
                "intersync: exported {files} files of {} (journal at sequence {}, {written} new signatures)",
                dir.display(),
                export.head().latest_seq
            );
        }
        Command::Demo => demo()?,
        Command::Bench {
            old,
            new,
            link,
            rtt,
            runs,
        } => bench(&old, &new, link, rtt, runs)?,
        Command::Signature {
            block_size,
            sum_size,
            hash,
            rollsum,
            base,
            sig,
        } => {
            let weak = match rollsum {
                Rollsum::Rollsum => WeakSumKind::Rollsum,
                Rollsum::Rabinkarp => WeakSumKind::RabinKarp,
            };
            let strong = match hash {
                Hash::Md4 => StrongSumKind::Md4,
                Hash::Blake2 => StrongSumKind::Blake2,
            };
            let format = SignatureFormat::from_sums(weak, strong);
            delta::signature_file(
                &base,
                &sig.unwrap_or_else(stdout),
                format,
                block_size,
                sum_size,
            )
            .context("signature")?;
        }
        Command::Delta {
            statistics,
            sig,
            new,
            delta,
        } => {
            let stats =
                delta::delta_file(&sig, &new, &delta.unwrap_or_else(stdout)).context("delta")?;
            if statistics {
                eprintln!(
                    "delta statistics: literal {} bytes, matched {} bytes, delta {} bytes",
                    stats.literal_bytes, stats.matched_bytes, stats.delta_bytes
                );
            }
        }
        Command::Patch {
            statistics,
            max_output,
            expect_version,
            base,
            delta,
            out,
        } => {
            let limits = PatchLimits {
                max_output,
                expect: expect_version,
            };
            let (stats, version) =
                delta::patch_file(&base, &delta, &out.unwrap_or_else(stdout), limits)
                    .context("patch")?;
            if statistics {
                eprintln!(
                    "patch statistics: literal {} bytes, matched {} bytes, result version {version}",
                    stats.literal_bytes, stats.matched_bytes
                );
            }
        }
    }
    Ok(())
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
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

fn read_token(path: &Option<PathBuf>) -> anyhow::Result<Option<String>> {
    let Some(path) = path else { return Ok(None) };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(text.trim().to_owned()))
}

/// The remote, the working copy and the options a `sync` or `watch` needs.
fn open_sync(
    args: &SyncArgs,
    progress: std::sync::Arc<intersync::monitor::Progress>,
) -> anyhow::Result<(
    intersync::transport::HttpRemote,
    intersync::client::WorkingCopy,
    intersync::client::SyncOptions,
)> {
    let token = read_token(&args.connect.token_file)?;
    let remote =
        intersync::transport::HttpRemote::new(&args.url, token, args.connect.cacert.as_deref())?
            .with_bwlimit(args.bwlimit)
            .with_progress(progress);
    let wc = intersync::client::WorkingCopy::open_or_create(&args.dir, &args.url)?;
    let options = intersync::client::SyncOptions {
        pull: !args.push_only,
        push: !args.pull_only,
        cacheable_reads: args.via_cache,
        lazy: false,
        keep_versions: (args.version_budget > 0).then(|| intersync::versions::Budget {
            bytes: args.version_budget,
            ..Default::default()
        }),
    };
    Ok((remote, wc, options))
}

/// What a round did: the changes with -v, conflicts and deferred changes always.
fn print_report(report: &intersync::client::SyncReport, verbose: bool) {
    if verbose {
        for c in &report.pulled {
            println!("<  {}  {}", c.path, c.what);
        }
        for c in &report.pushed {
            println!(">  {}  {}", c.path, c.what);
        }
        for c in &report.deferred {
            println!("!  {}  {}", c.path, c.what);
        }
    }
    for c in &report.conflicts {
        match &c.kept_as {
            Some(aside) => eprintln!(
                "intersync: conflict: {}: {} (local version kept as {aside})",
                c.path, c.what
            ),
            None => eprintln!("intersync: conflict: {}: {}", c.path, c.what),
        }
    }
    for c in &report.deferred {
        eprintln!("intersync: not synced yet: {}: {}", c.path, c.what);
    }
}

fn sync(args: SyncArgs) -> anyhow::Result<()> {
    let progress = std::sync::Arc::new(intersync::monitor::Progress::default());
    let (remote, mut wc, options) = open_sync(&args, progress.clone())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let started = std::time::Instant::now();
    let bar = args.progress.then(|| show_progress(progress));
    let report = runtime.block_on(wc.sync(&remote, options));
    if let Some((bar, stop)) = bar {
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = bar.join();
    }
    let report = report?;
    print_report(&report, args.verbose);
    if args.stats {
        print!("{}", report.rsync_stats(started.elapsed()));
    }
    if report.is_partial() {
        return Err(Partial.into());
    }
    Ok(())
}

fn watch(args: SyncArgs) -> anyhow::Result<()> {
    use intersync::client::watch::WatchEvent;
    let (remote, mut wc, options) = open_sync(&args, Default::default())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(intersync::client::watch::watch(
        &mut wc,
        &remote,
        options,
        |event| match event {
            WatchEvent::Synced(report) => print_report(&report, args.verbose),
            WatchEvent::Offline { error, retry_in } => {
                eprintln!("intersync: {error:#}; retrying in {}s", retry_in.as_secs());
            }
        },
        shutdown_signal(),
    ))?;
    Ok(())
}

fn mount(args: MountArgs) -> anyhow::Result<()> {
    use intersync::client::watch::WatchEvent;
    use std::sync::Arc;
    let remote = Arc::new(intersync::transport::HttpRemote::new(
        &args.url,
        read_token(&args.connect.token_file)?,
        args.connect.cacert.as_deref(),
    )?);
    let mut wc = intersync::client::WorkingCopy::open_or_create(&args.cache, &args.url)?;
    anyhow::ensure!(
        !args
            .mountpoint
            .canonicalize()
            .is_ok_and(|m| m.starts_with(wc.root())),
        "the mount point {} is inside the cache {}",
        args.mountpoint.display(),
        wc.root().display()
    );
    let options = intersync::client::SyncOptions {
        lazy: true,
        ..Default::default()
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    // The cache's own journal, reconciled with the cache (a crash repaired)
    // before the first round pushes anything.
    let local = Arc::new(
        intersync::export::Export::open(wc.root(), Default::default())
            .context("opening the cache's journal")?,
    );
    match runtime.block_on(wc.sync(&*remote, options)) {
        Ok(report) => print_report(&report, args.verbose),
        Err(e) if e.is_unreachable() => {
            eprintln!("intersync: {e:#}; working offline, syncing when the server is back")
        }
        Err(e) => return Err(e.into()),
    }
    let _ = local.rescan();
    let fetcher = Arc::new(intersync::client::mount::Fetcher::new(
        wc.placeholders().clone(),
        remote.clone(),
        runtime.handle().clone(),
        local.clone(),
    ));
    let (tx, local_changes) = tokio::sync::mpsc::unbounded_channel();
    let session = intersync::fuse::Presto::new(local.clone())?
        .with_lazy(fetcher.clone())
        .on_change(move || {
            let _ = tx.send(());
        })
        .mount(&args.mountpoint)
        .with_context(|| format!("mounting at {}", args.mountpoint.display()))?;
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "intersync: {} mounted at {}",
            args.url,
            args.mountpoint.display()
        );
        let _ = out.flush();
    }
    // --prefetch: fetch every placeholder now, and again after every round
    // (new files, and whatever failed before).
    let prefetch = args.prefetch.then(|| {
        let (again, rounds) = std::sync::mpsc::channel::<()>();
        let fetcher = fetcher.clone();
        std::thread::spawn(move || {
            loop {
                for (path, e) in fetcher.fetch_all() {
                    eprintln!(
                        "intersync: prefetching {path}: {e}; trying again after the next round"
                    );
                }
                if rounds.recv().is_err() {
                    break;
                }
                while rounds.try_recv().is_ok() {}
            }
        });
        again
    });
    let mut on_event = |event| match event {
        WatchEvent::Synced(report) => {
            print_report(&report, args.verbose);
            // What the round changed in the cache, in the cache's journal.
            if let Err(e) = local.rescan() {
                tracing::warn!(error = %e, "rescanning the cache");
            }
            if let Some(again) = &prefetch {
                let _ = again.send(());
            }
        }
        WatchEvent::Offline { error, retry_in } => {
            eprintln!("intersync: {error:#}; retrying in {}s", retry_in.as_secs());
        }
    };
    let mut local_changes = local_changes;
    let followed = runtime.block_on(async {
        let shutdown = shutdown_signal();
        tokio::pin!(shutdown);
        loop {
            let round = intersync::client::watch::follow(
                &mut wc,
                &*remote,
                options,
                &mut local_changes,
                &mut on_event,
                &mut shutdown,
            )
            .await;
            match round {
                // A failed round does not take the mount away: programs
                // keep their files, and the next round tries again.
                Err(e) if !e.is_auth() => {
                    eprintln!("intersync: {e:#}; syncing again in 10s");
                    tokio::select! {
                        () = &mut shutdown => return Ok(()),
                        () = tokio::time::sleep(std::time::Duration::from_secs(10)) => {}
                    }
                }
                other => return other,
            }
        }
    });
    intersync::fuse::unmount_quietly(session);
    local.save_index();
    wc.save()?;
    followed?;
    Ok(())
}

/// Draws an indicatif bar from `progress` until the returned flag is set.
fn show_progress(
    progress: std::sync::Arc<intersync::monitor::Progress>,
) -> (
    std::thread::JoinHandle<()>,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let handle = std::thread::spawn(move || {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {msg}",
            )
            .expect("valid template"),
        );
        loop {
            let (done, planned, files) = progress.snapshot();
            bar.set_length(planned.max(done));
            bar.set_position(done);
            bar.set_message(format!("{files} files"));
            if flag.load(Ordering::Relaxed) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        bar.finish();
    });
    (handle, stop)
}

/// Some changes were not carried out (conflicts or deferred writes): rsync's 23.
#[derive(Debug, thiserror::Error)]
#[error("some changes were not synced (see above)")]
struct Partial;

fn demo() -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("making a temporary folder")?;
    println!(
        "InterSync demo in {}: a server exports a generated tree (300 small text files,",
        dir.path().display()
    );
    println!("a 16 MiB binary, a 4 MiB text); a laptop clones it; both sides edit; they sync.\n");
    let runtime = tokio::runtime::Runtime::new()?;
    let steps = runtime.block_on(demo::run(dir.path()))?;
    print!("{}", demo::table(&steps));
    println!(
        "\nServer edits: 20 scattered edits in the binary, 10 in the text, a file added, one deleted,"
    );
    println!(
        "one renamed. Laptop edits: a line appended to one file, a new file. InterSync moved bytes"
    );
    println!(
        "count HTTP headers and bodies both ways; a full fetch counts only the changed files' bytes."
    );
    Ok(())
}

/// A link rate in bits a second: a number with `kbit`, `mbit` or `gbit`.
fn parse_rate(s: &str) -> Result<u64, String> {
    let lower = s.to_ascii_lowercase();
    let (number, unit) = lower
        .find(|c: char| c.is_ascii_alphabetic())
        .map_or((lower.as_str(), ""), |i| lower.split_at(i));
    let factor = match unit {
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        _ => return Err(format!("{s}: a rate like 8mbit, 512kbit or 1gbit")),
    };
    number
        .parse::<f64>()
        .ok()
        .filter(|n| *n > 0.0)
        .map(|n| (n * factor) as u64)
        .ok_or_else(|| format!("{s}: a rate like 8mbit, 512kbit or 1gbit"))
}

fn bench(
    old: &std::path::Path,
    new: &std::path::Path,
    link: Option<u64>,
    rtt: u64,
    runs: usize,
) -> anyhow::Result<()> {
    use intersync_bench::{self as bench, Tool, link::Link, report::thousands};
    anyhow::ensure!(
        old.is_dir() == new.is_dir(),
        "OLD and NEW must both be files or both be folders"
    );
    let work = tempfile::tempdir().context("making a temporary folder")?;
    let pair = bench::pair(old, new, work.path())?;
    let mut tools = vec![Tool::Smart, Tool::Get];
    if intersync_bench::harness::installed("rsync") {
        tools.push(Tool::Rsync);
    }
    let options = bench::Options {
        scale: 1.0,
        runs: runs.max(1),
        tools: tools.clone(),
        scenarios: Vec::new(),
        intersync: std::env::current_exe().context("finding this program")?,
        link: if link.is_none() && rtt == 0 {
            Link::Loopback
        } else {
            Link::Emulated {
                bits_per_sec: link,
                rtt_ms: rtt,
            }
        },
        max_step: None,
    };
    let bar = indicatif::ProgressBar::new((tools.len() * options.runs) as u64).with_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
            .expect("a valid template"),
    );
    let runtime = tokio::runtime::Runtime::new()?;
    let figures = runtime.block_on(bench::run_prepared(
        work.path(),
        std::slice::from_ref(&pair),
        &options,
        |_, tool, n| {
            bar.set_message(format!("{} (run {})", tool.name(), n + 1));
            bar.inc(1);
        },
    ));
    bar.finish_and_clear();
    let figures = figures?;
    println!(
        "{} -> {} over {}: {} bytes of changed files",
        old.display(),
        new.display(),
        options.link.name(),
        thousands(pair.full_fetch_bytes)
    );
    println!("| tool | bytes moved | against a full fetch | requests | time | right result |");
    println!("|---|---|---|---|---|---|");
    let full = figures
        .iter()
        .find(|f| f.tool == Tool::Get.name())
        .map_or(0, |f| f.total_bytes());
    for f in &figures {
        println!(
            "| {} | {} | {} | {} | {:.3} s | {} |",
            f.tool,
            thousands(f.total_bytes()),
            if full == 0 {
                "-".into()
            } else {
                format!("{:.2}%", 100.0 * f.total_bytes() as f64 / full as f64)
            },
            f.requests.map_or("-".into(), |r| r.to_string()),
            f.wall_s,
            if f.correct { "yes" } else { "NO" }
        );
    }
    println!(
        "\nBytes are counted at the socket, both ways, headers included; InterSync's include its signature."
    );
    Ok(())
}

fn status(dir: &std::path::Path) -> anyhow::Result<()> {
    let wc = intersync::client::WorkingCopy::open(dir)?;
    println!("working copy of {}", wc.saved.url);
    match wc.saved.last_sync_ns {
        Some(ns) => println!(
            "last sync: {} (journal sequence {})",
            httpdate::fmt_http_date(
                std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns.max(0) as u64)
            ),
            wc.saved.base.state.seq
        ),
        None => println!("never synced"),
    }
    let pending = wc.pending()?;
    println!("pending local changes: {}", pending.len());
    for op in &pending {
        println!("  {op:?}");
    }
    let placeholders = wc.placeholders().paths();
    if !placeholders.is_empty() {
        println!(
            "not fetched yet: {} files (fetched when opened through `intersync mount`, or by `sync`)",
            placeholders.len()
        );
    }
    println!("conflicts: {}", wc.saved.conflicts.len());
    for c in &wc.saved.conflicts {
        println!(
            "  {}: {}{}",
            c.path,
            c.what,
            c.kept_as
                .as_ref()
                .map(|a| format!(" (kept as {a})"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// rsync's exit code for an error: corrupt input is a protocol data stream
/// error (12), impossible options a usage error (1), anything else about
/// files is file I/O (11).
fn exit_code(e: &anyhow::Error) -> ExitCode {
    if e.downcast_ref::<server::StartError>().is_some() {
        return ExitCode::StartClient;
    }
    if e.downcast_ref::<Partial>().is_some() {
        return ExitCode::Partial;
    }
    if let Some(sync) = e.downcast_ref::<intersync::client::SyncError>() {
        return if sync.is_unreachable()
            || matches!(
                sync,
                intersync::client::SyncError::Transport(
                    intersync::transport::TransportError::Interrupted { .. }
                )
            ) {
            ExitCode::SocketIo
        } else if sync.is_auth() {
            // As rsync does when a daemon refuses a login.
            ExitCode::StartClient
        } else {
            ExitCode::FileIo
        };
    }
    if e.downcast_ref::<intersync::transport::TransportError>()
        .is_some()
    {
        return ExitCode::Syntax;
    }
    match e.downcast_ref::<delta::Error>().map(delta::Error::kind) {
        Some(ErrorKind::Corrupt) => ExitCode::StreamIo,
        Some(ErrorKind::Usage) => ExitCode::Syntax,
        Some(ErrorKind::Io) | None => ExitCode::FileIo,
    }
}
