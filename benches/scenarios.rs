//! The scenario benchmark: S0 to S9 with InterSync (smart server and static
//! export behind nginx), a full fetch with curl, rsync (plain and `-z`) and
//! zsync, side by side, every byte counted at the socket, over loopback and
//! two slow links.
//!
//!     cargo bench --bench scenarios [-- --scale 0.02] [--runs 3] [--slow-runs 1] [--max-step 300]
//!         [--links loopback,slow,slow-delayed] [--tools smart,static,full,rsync,rsync-z,zsync]
//!         [--scenarios S0,S1,...] [--out target/bench] [--add EARLIER.json] [--note TEXT]
//!
//! S9 (a million files: `S9`, `S9e1`, `S9e100`) runs only when named, as
//! `--scenarios S9,S9e1,S9e100 --tools smart,rsync`: each run of each tool
//! copies and first syncs the whole tree before the step it measures.
//!
//! Needs nginx, curl, rsync, zsync, zsyncmake and, for the slow links, root
//! and iproute2 (`.ci/run` installs them). Writes `scenarios.md`,
//! `scenarios.json` and `scenarios.svg` to the output folder and prints the
//! table (and `summary.md`, the short one). `--add` keeps an earlier
//! report's figures for the links this run does not measure. Each slow link runs in a network namespace made for it: this
//! program runs itself again inside it (`--in-namespace`) and reads back
//! the figures as JSON.

use std::path::PathBuf;

use intersync_bench::link::{Link, Namespace};
use intersync_bench::{self as bench, Figure, Options, Tool, report};

struct Args {
    options: Options,
    slow_runs: usize,
    links: Vec<Link>,
    out: PathBuf,
    /// Run one link here and write its figures to this file.
    in_namespace: Option<PathBuf>,
    /// Every argument, to pass on to the run inside a namespace.
    raw: Vec<String>,
    /// An earlier report whose figures for links not run now are kept.
    add: Option<PathBuf>,
    notes: Vec<String>,
}

fn parse() -> Args {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let mut a = Args {
        options: Options {
            scale: 1.0,
            runs: 3,
            tools: Tool::ALL.to_vec(),
            scenarios: ["S0", "S1", "S2", "S3", "S4", "S5", "S6", "S7", "S8", "S8u"]
                .map(String::from)
                .to_vec(),
            intersync: PathBuf::from(env!("CARGO_BIN_EXE_intersync")),
            link: Link::Loopback,
            max_step: Some(std::time::Duration::from_secs(300)),
        },
        slow_runs: 1,
        links: Link::ALL.to_vec(),
        out: PathBuf::from("target/bench"),
        in_namespace: None,
        raw: raw.clone(),
        add: None,
        notes: Vec::new(),
    };
    let mut args = raw.into_iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--scale" => a.options.scale = value().parse().expect("--scale is a number"),
            "--runs" => a.options.runs = value().parse().expect("--runs is a number"),
            "--slow-runs" => a.slow_runs = value().parse().expect("--slow-runs is a number"),
            "--max-step" => {
                a.options.max_step = Some(std::time::Duration::from_secs(
                    value().parse().expect("--max-step is whole seconds"),
                ))
            }
            "--out" => a.out = PathBuf::from(value()),
            "--add" => a.add = Some(PathBuf::from(value())),
            "--note" => a.notes.push(value()),
            "--in-namespace" => a.in_namespace = Some(PathBuf::from(value())),
            "--scenarios" => a.options.scenarios = value().split(',').map(String::from).collect(),
            "--links" => {
                a.links = value()
                    .split(',')
                    .map(|l| {
                        Link::parse(l)
                            .unwrap_or_else(|| panic!("no link {l} (loopback, slow, slow-delayed)"))
                    })
                    .collect()
            }
            "--tools" => {
                a.options.tools = value()
                    .split(',')
                    .map(|t| match t {
                        "smart" => Tool::Smart,
                        "smart-unknown-base" => Tool::SmartUnknownBase,
                        "static" => Tool::Static,
                        "full" => Tool::FullFetch,
                        "rsync" => Tool::Rsync,
                        "rsync-z" => Tool::RsyncZ,
                        "zsync" => Tool::Zsync,
                        "get" => Tool::Get,
                        other => {
                            panic!(
                                "no tool {other} (smart, smart-unknown-base, static, full, rsync, rsync-z, zsync, get)"
                            )
                        }
                    })
                    .collect()
            }
            // What cargo bench passes to every bench binary.
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn run_here(options: &Options) -> Vec<Figure> {
    let work = tempfile::tempdir().expect("temporary folder");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime
        .block_on(bench::run(work.path(), options, |scenario, tool, n| {
            eprintln!(
                "{} {scenario}: {} (run {})",
                options.link.name(),
                tool.name(),
                n + 1
            );
        }))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `link` in a namespace of its own, through this same program.
fn run_in_namespace(args: &Args, link: Link) -> Vec<Figure> {
    let ns = Namespace::create().unwrap_or_else(|e| panic!("a namespace for {}: {e}", link.name()));
    let json = tempfile::NamedTempFile::new().expect("temporary file");
    let me = std::env::current_exe().expect("this program's path");
    let status = ns
        .command(&me)
        .expect("ip")
        .args(&args.raw)
        .args(["--links", link.arg(), "--runs", &args.slow_runs.to_string()])
        .arg("--in-namespace")
        .arg(json.path())
        .status()
        .expect("run in the namespace");
    assert!(status.success(), "the {} run failed: {status}", link.name());
    serde_json::from_slice(&std::fs::read(json.path()).expect("figures")).expect("figures")
}

/// Writes the table, JSON and chart of what has been measured so far, so
/// that a run cut short keeps every link it finished.
fn write_report(args: &Args, figures: &[Figure], done: &[Link]) -> String {
    let mut figures = figures.to_vec();
    let mut slow_runs = if done.iter().any(|l| l.shaped()) {
        args.slow_runs
    } else {
        0
    };
    if let Some(path) = &args.add {
        let earlier: report::Report = serde_json::from_slice(
            &std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let names: Vec<String> = args.links.iter().map(|l| l.name()).collect();
        let kept: Vec<Figure> = earlier
            .figures
            .into_iter()
            .filter(|f| !names.contains(&f.link))
            .collect();
        if !kept.is_empty() && slow_runs == 0 {
            slow_runs = earlier.slow_runs;
        }
        figures.extend(kept);
    }
    let report = report::Report {
        date: intersync::tree::scan::utc_stamp(intersync::tree::scan::now_ns() / 1_000_000_000),
        machine: report::machine(),
        scale: args.options.scale,
        runs: args.options.runs,
        slow_runs,
        figures,
        notes: args.notes.clone(),
    };
    let table = report::markdown(&report);
    std::fs::create_dir_all(&args.out).expect("output folder");
    std::fs::write(args.out.join("scenarios.md"), &table).expect("write the table");
    std::fs::write(
        args.out.join("scenarios.json"),
        serde_json::to_vec_pretty(&report).expect("json"),
    )
    .expect("write the JSON");
    std::fs::write(args.out.join("scenarios.svg"), report::svg(&report)).expect("write the chart");
    std::fs::write(args.out.join("summary.md"), report::summary(&report))
        .expect("write the summary");
    table
}

fn main() {
    let args = parse();
    if let Some(json) = &args.in_namespace {
        let mut options = args.options.clone();
        options.link = args.links[0];
        let figures = run_here(&options);
        std::fs::write(json, serde_json::to_vec(&figures).expect("json")).expect("write figures");
        return;
    }
    let mut figures = Vec::new();
    let mut done = Vec::new();
    let mut table = String::new();
    for &link in &args.links {
        if link.shaped() {
            figures.extend(run_in_namespace(&args, link));
        } else {
            let mut options = args.options.clone();
            options.link = link;
            figures.extend(run_here(&options));
        }
        done.push(link);
        table = write_report(&args, &figures, &done);
        eprintln!(
            "{} done: wrote scenarios.md, scenarios.json and scenarios.svg to {}",
            link.name(),
            args.out.display()
        );
    }
    println!("\n{table}");
}
