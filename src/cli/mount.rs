//! `intersync mount URL CACHE MNT`: a working copy shown through presto,
//! what the library's [`intersync::client::mount::run`] says rendered as
//! the other subcommands render their rounds.

use std::io::Write;
use std::path::PathBuf;

use intersync::client::mount::{self, MountConfig, MountError, MountEvent};
use intersync::monitor::Chain;

use super::{Connect, print_report, read_token, shutdown_signal};

#[derive(clap::Args)]
pub struct MountArgs {
    /// The export, e.g. http://host:8740/
    pub url: String,
    /// The working copy that holds what is fetched (created on first use).
    pub cache: PathBuf,
    /// The empty folder to mount at.
    pub mountpoint: PathBuf,
    /// Fetch every file in the background, not only when opened.
    #[arg(long)]
    pub prefetch: bool,
    /// List each change of every round.
    #[arg(short, long)]
    pub verbose: bool,
    #[command(flatten)]
    pub connect: Connect,
}

pub fn run(args: MountArgs) -> anyhow::Result<()> {
    let config = MountConfig {
        url: args.url.clone(),
        cache: args.cache,
        mountpoint: args.mountpoint.clone(),
        prefetch: args.prefetch,
        token: read_token(&args.connect.token_file)?,
        cacert: args.connect.cacert,
    };
    let (url, mountpoint, verbose) = (args.url, args.mountpoint, args.verbose);
    let say = move |event| match event {
        MountEvent::Synced(report) => print_report(&report, verbose),
        MountEvent::StartedOffline(e) => {
            eprintln!(
                "intersync: {}; working offline, syncing when the server is back",
                Chain(&e)
            )
        }
        MountEvent::Mounted => {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "intersync: {url} mounted at {}", mountpoint.display());
            let _ = out.flush();
        }
        MountEvent::Offline { error, retry_in } => {
            eprintln!(
                "intersync: {}; retrying in {}s",
                Chain(&error),
                retry_in.as_secs()
            );
        }
        MountEvent::RoundFailed { error, retry_in } => {
            eprintln!(
                "intersync: {}; syncing again in {}s",
                Chain(&error),
                retry_in.as_secs()
            );
        }
        MountEvent::PrefetchFailed { path, error } => {
            eprintln!(
                "intersync: prefetching {path}: {}; trying again after the next round",
                Chain(&error)
            );
        }
    };
    // The errors that carry an exit code of their own keep it.
    mount::run(config, say, shutdown_signal()).map_err(|e| match e {
        MountError::Sync(e) => e.into(),
        MountError::Remote(e) => e.into(),
        e => e.into(),
    })
}
