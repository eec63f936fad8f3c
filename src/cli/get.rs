//! `intersync get URL FILE`: one file from any web server, conditional and
//! resumable, installed whole.

use std::path::PathBuf;

use intersync::transport::HttpRemote;
use intersync::transport::get::{self, Got};

use super::read_token;

/// Fetch one file from any web server into FILE: conditional, resumable, installed whole.
#[derive(clap::Args)]
pub struct GetArgs {
    pub url: String,
    pub file: PathBuf,
    /// Say what happened.
    #[arg(short, long)]
    pub verbose: bool,
    /// File holding a bearer token.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// PEM certificate of a CA to trust besides the system's.
    #[arg(long)]
    pub cacert: Option<PathBuf>,
    /// Limit the receiving rate (rsync's units).
    #[arg(long, value_parser = intersync_compat::bwlimit::parse)]
    pub bwlimit: Option<u64>,
}

pub fn run(args: GetArgs) -> anyhow::Result<()> {
    let remote = HttpRemote::new(
        &args.url,
        read_token(&args.token_file)?,
        args.cacert.as_deref(),
    )?
    .with_bwlimit(args.bwlimit);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let got = runtime.block_on(get::get(&remote, &args.url, &args.file))?;
    if args.verbose {
        match got {
            Got::Unchanged => println!("{}: unchanged", args.file.display()),
            Got::Fetched {
                bytes,
                resumed_from,
            } => println!(
                "{}: fetched {bytes} bytes, resumed from {resumed_from}",
                args.file.display()
            ),
        }
    }
    Ok(())
}
