//! `intersync sync` (one round both ways) and `intersync watch` (rounds
//! whenever either side moves).

use std::path::PathBuf;

use super::{Connect, Partial, print_report, read_token, shutdown_signal};

#[derive(clap::Args)]
pub struct SyncArgs {
    /// The export, e.g. http://host:8740/
    pub url: String,
    /// The working copy (created on first use).
    pub dir: PathBuf,
    /// Only bring the server's changes here.
    #[arg(long, conflicts_with = "push_only")]
    pub pull_only: bool,
    /// Only send local changes to the server.
    #[arg(long)]
    pub push_only: bool,
    /// List what changed.
    #[arg(short, long)]
    pub verbose: bool,
    /// Show a progress bar: bytes, rate and time left.
    #[arg(long)]
    pub progress: bool,
    /// Print rsync-style transfer statistics.
    #[arg(long)]
    pub stats: bool,
    #[command(flatten)]
    pub connect: Connect,
    /// Limit the receiving rate, like rsync: a number of KiB/s, or with a
    /// suffix (K, M, G: powers of 1024; KB, MB, GB: of 1000), e.g. 1.5M.
    #[arg(long, value_parser = intersync_compat::bwlimit::parse)]
    pub bwlimit: Option<u64>,
    /// The URL is an HTTP cache or CDN in front of the server: read only
    /// with cacheable GETs (signatures and block ranges of immutable
    /// versions), so that what one client fetched serves the others.
    #[arg(long)]
    pub via_cache: bool,
    /// Bytes of synced versions (of files of 64 KiB and more) to keep under
    /// DIR/.intersync/versions/, so that edits made here are pushed as exact
    /// patches from them; 0 keeps none (edits go as deltas against the
    /// server's signature).
    #[arg(long, default_value_t = 1 << 30)]
    pub version_budget: u64,
    /// Requests in flight at once where the server cannot batch (a static
    /// export behind a plain web server, a cache with --via-cache): small
    /// files come by so many GETs over as many keep-alive connections.
    #[arg(long, default_value_t = intersync::client::CONNECTIONS as u16, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub connections: u16,
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
            .with_cleartext_http2(!args.via_cache)
            .with_progress(progress);
    let wc = intersync::client::WorkingCopy::open_or_create(&args.dir, &args.url)?;
    remote.assume_cleartext_http2(wc.saved.http2);
    let options = intersync::client::SyncOptions {
        pull: !args.push_only,
        push: !args.pull_only,
        cacheable_reads: args.via_cache,
        lazy: false,
        keep_versions: (args.version_budget > 0).then(|| intersync::versions::Budget {
            bytes: args.version_budget,
            ..Default::default()
        }),
        connections: args.connections.into(),
    };
    Ok((remote, wc, options))
}

pub fn sync(args: SyncArgs) -> anyhow::Result<()> {
    let progress = std::sync::Arc::new(intersync::monitor::Progress::default());
    let (remote, mut wc, options) = open_sync(&args, progress.clone())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let started = std::time::Instant::now();
    let bar = args.progress.then(|| show_progress(progress));
    let report = runtime.block_on(intersync::client::sync(&mut wc, &remote, options));
    if let Some((bar, stop)) = bar {
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = bar.join();
    }
    let report = report?;
    if let Some(was) = &wc.moved_from {
        eprintln!(
            "intersync: the export of {} is now reached at {} (was {was})",
            args.dir.display(),
            wc.saved.url
        );
    }
    print_report(&report, args.verbose);
    if args.stats {
        print!("{}", report.rsync_stats(started.elapsed()));
    }
    if report.is_partial() {
        return Err(Partial.into());
    }
    Ok(())
}

pub fn watch(args: SyncArgs) -> anyhow::Result<()> {
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
                eprintln!(
                    "intersync: {}; retrying in {}s",
                    intersync::monitor::Chain(&error),
                    retry_in.as_secs()
                );
            }
        },
        shutdown_signal(),
    ))?;
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
