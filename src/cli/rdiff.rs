//! `intersync signature`, `delta` and `patch`: librsync's files on the
//! command line, as `rdiff` makes and applies them (and InterSync's
//! patches), with nothing written unless the input is sound.

use std::path::PathBuf;

use anyhow::Context;
use clap::ValueEnum;
use intersync::delta::{self, PatchLimits};
use intersync_protocol::Version;
use intersync_protocol::signature::{SignatureFormat, StrongSumKind, WeakSumKind};

/// Write the signature of BASE to SIG (`-` or omitted: standard output), like `rdiff signature`.
#[derive(clap::Args)]
pub struct SignatureArgs {
    /// Block length in bytes (default: InterSync's block-size policy).
    #[arg(short = 'b', long = "block-size")]
    pub block_size: Option<u32>,
    /// Strong-sum length in bytes (default: by file size).
    #[arg(short = 'S', long = "sum-size")]
    pub sum_size: Option<u32>,
    /// Strong hash.
    #[arg(short = 'H', long = "hash", value_enum, default_value = "md4")]
    pub hash: Hash,
    /// Rolling checksum.
    #[arg(short = 'R', long = "rollsum", value_enum, default_value = "rollsum")]
    pub rollsum: Rollsum,
    pub base: PathBuf,
    pub sig: Option<PathBuf>,
}

/// Write a delta from SIG's base to NEW, like `rdiff delta` (any of librsync's four signature formats).
#[derive(clap::Args)]
pub struct DeltaArgs {
    /// Print literal and matched byte counts to standard error.
    #[arg(short = 's', long = "statistics")]
    pub statistics: bool,
    pub sig: PathBuf,
    pub new: PathBuf,
    pub delta: Option<PathBuf>,
}

/// Apply DELTA to BASE, writing OUT, like `rdiff patch`; nothing is written unless the delta is sound.
#[derive(clap::Args)]
pub struct PatchArgs {
    /// Print literal and matched byte counts to standard error.
    #[arg(short = 's', long = "statistics")]
    pub statistics: bool,
    /// Refuse a delta whose result would be larger than this many bytes.
    #[arg(long = "max-output")]
    pub max_output: Option<u64>,
    /// Install OUT only if its BLAKE3 hash is this (64 hex digits).
    #[arg(long = "expect-version")]
    pub expect_version: Option<Version>,
    pub base: PathBuf,
    pub delta: PathBuf,
    pub out: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Hash {
    Md4,
    Blake2,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Rollsum {
    Rollsum,
    Rabinkarp,
}

/// `-` (or nothing): standard output.
fn or_stdout(path: Option<PathBuf>) -> PathBuf {
    path.unwrap_or_else(|| PathBuf::from("-"))
}

pub fn signature(args: SignatureArgs) -> anyhow::Result<()> {
    let weak = match args.rollsum {
        Rollsum::Rollsum => WeakSumKind::Rollsum,
        Rollsum::Rabinkarp => WeakSumKind::RabinKarp,
    };
    let strong = match args.hash {
        Hash::Md4 => StrongSumKind::Md4,
        Hash::Blake2 => StrongSumKind::Blake2,
    };
    let format = SignatureFormat::from_sums(weak, strong);
    delta::signature_file(
        &args.base,
        &or_stdout(args.sig),
        format,
        args.block_size,
        args.sum_size,
    )
    .context("signature")?;
    Ok(())
}

pub fn delta(args: DeltaArgs) -> anyhow::Result<()> {
    let stats = delta::delta_file(&args.sig, &args.new, &or_stdout(args.delta)).context("delta")?;
    if args.statistics {
        eprintln!(
            "delta statistics: literal {} bytes, matched {} bytes, delta {} bytes",
            stats.literal_bytes, stats.matched_bytes, stats.delta_bytes
        );
    }
    Ok(())
}

pub fn patch(args: PatchArgs) -> anyhow::Result<()> {
    let limits = PatchLimits {
        max_output: args.max_output,
        expect: args.expect_version,
    };
    let (stats, version) = delta::patch_file(&args.base, &args.delta, &or_stdout(args.out), limits)
        .context("patch")?;
    if args.statistics {
        eprintln!(
            "patch statistics: literal {} bytes, matched {} bytes, result version {version}",
            stats.literal_bytes, stats.matched_bytes
        );
    }
    Ok(())
}
