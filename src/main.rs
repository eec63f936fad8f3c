//! The `intersync` command: parses arguments, sets up tracing, calls the
//! library through one subcommand of [`cli`] and turns the outcome into
//! rsync's exit codes. A command line that starts with none of the
//! subcommands is rsync's (`intersync -av src/ dst/`).

mod cli;

use std::path::PathBuf;
use std::process::ExitCode as ProcessExitCode;

use clap::{Parser, Subcommand};
use intersync_compat::ExitCode;

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
    Serve(cli::serve::ServeArgs),
    /// Write (or bring up to date) DIR/.intersync/ so that any web server serving DIR is an InterSync source.
    Export(cli::export::ExportArgs),
    /// Fetch one file from any web server into FILE: conditional, resumable, installed whole.
    Get(cli::get::GetArgs),
    /// One sync round between the export at URL and the working copy DIR, both ways.
    Sync(cli::sync::SyncArgs),
    /// Serve a generated tree, sync a copy, edit both sides, sync again, and show what moved.
    Demo,
    /// How much would InterSync save on your data? Serves NEW on loopback,
    /// brings a copy of OLD up to it, and compares with a full fetch (and
    /// rsync, if installed). Files or folders.
    Bench(cli::bench::BenchArgs),
    /// Stay in sync: a round whenever the server's journal moves or local files change.
    Watch(cli::sync::SyncArgs),
    /// Mount a working copy through presto: the export's files show at once
    /// and are fetched when first opened; what changes through the mount is
    /// journaled as it happens and pushed, like watch. Unmounts on SIGINT/SIGTERM.
    Mount(cli::mount::MountArgs),
    /// Show a working copy's last sync, pending local changes and conflicts.
    Status { dir: PathBuf },
    /// Write the signature of BASE to SIG (`-` or omitted: standard output), like `rdiff signature`.
    Signature(cli::rdiff::SignatureArgs),
    /// Write a delta from SIG's base to NEW, like `rdiff delta` (any of librsync's four signature formats).
    Delta(cli::rdiff::DeltaArgs),
    /// Apply DELTA to BASE, writing OUT, like `rdiff patch`; nothing is written unless the delta is sound.
    Patch(cli::rdiff::PatchArgs),
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
            return cli::rsync::main(&args[2..]).into();
        }
        if !ours {
            return cli::rsync::main(&args[1..]).into();
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
            cli::exit_code(&e).into()
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        // main() takes rsync command lines before clap sees them.
        Command::Rsync { .. } => unreachable!("handled in main"),
        Command::Serve(args) => cli::serve::run(args),
        Command::Export(args) => cli::export::run(args),
        Command::Get(args) => cli::get::run(args),
        Command::Sync(args) => cli::sync::sync(args),
        Command::Demo => cli::demo::main(),
        Command::Bench(args) => cli::bench::run(args),
        Command::Watch(args) => cli::sync::watch(args),
        Command::Mount(args) => cli::mount::run(args),
        Command::Status { dir } => cli::status::run(&dir),
        Command::Signature(args) => cli::rdiff::signature(args),
        Command::Delta(args) => cli::rdiff::delta(args),
        Command::Patch(args) => cli::rdiff::patch(args),
    }
}
