//! The `intersync` command's subcommands, one file each, and what they
//! share: reading a token, the shutdown signal, the report of a sync round
//! and rsync's exit codes for the library's errors. Everything here turns
//! arguments into a call of the library and its result into text and an
//! exit code; the work itself is the library's.

pub mod bench;
pub mod demo;
pub mod export;
pub mod get;
pub mod mount;
pub mod rdiff;
pub mod rsync;
pub mod serve;
pub mod status;
pub mod sync;

use std::path::PathBuf;

use anyhow::Context;
use intersync::delta::{self, ErrorKind};
use intersync_compat::ExitCode;

/// How a client reaches a server that asks for credentials or a private CA.
#[derive(clap::Args)]
pub struct Connect {
    /// File holding the server's bearer token.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// PEM certificate of a CA to trust besides the system's.
    #[arg(long)]
    pub cacert: Option<PathBuf>,
}

pub fn read_token(path: &Option<PathBuf>) -> anyhow::Result<Option<String>> {
    let Some(path) = path else { return Ok(None) };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(text.trim().to_owned()))
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// What a round did: the changes with -v, conflicts and deferred changes always.
pub fn print_report(report: &intersync::client::SyncReport, verbose: bool) {
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

/// Some changes were not carried out (conflicts or deferred writes): rsync's 23.
#[derive(Debug, thiserror::Error)]
#[error("some changes were not synced (see above)")]
pub struct Partial;

/// rsync's exit code for an error: corrupt input is a protocol data stream
/// error (12), impossible options a usage error (1), anything else about
/// files is file I/O (11).
pub fn exit_code(e: &anyhow::Error) -> ExitCode {
    if e.downcast_ref::<intersync::server::StartError>().is_some() {
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
        } else if sync.is_auth() || sync.is_tls() {
            // As rsync does when a daemon refuses a login (a TLS handshake
            // that fails is the same kind of refusal: not "offline").
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
