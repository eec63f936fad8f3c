//! `intersync bench OLD NEW`: the scenario benchmark's tools on the user's
//! own data.

use std::path::PathBuf;

use anyhow::Context;

/// How much would InterSync save on your data? Serves NEW on loopback,
/// brings a copy of OLD up to it, and compares with a full fetch (and
/// rsync, if installed). Files or folders.
#[derive(clap::Args)]
pub struct BenchArgs {
    pub old: PathBuf,
    pub new: PathBuf,
    /// Emulate a link of this rate, e.g. 8mbit, 512kbit, 1gbit.
    #[arg(long, value_parser = parse_rate)]
    pub link: Option<u64>,
    /// Round-trip time to add, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub rtt: u64,
    /// Runs of each tool; times are their median.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
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

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let BenchArgs {
        old,
        new,
        link,
        rtt,
        runs,
    } = args;
    let (old, new) = (old.as_path(), new.as_path());
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
