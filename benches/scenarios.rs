//! The scenario benchmark: S0 to S7 with InterSync (smart server and static
//! export behind nginx), a full fetch with curl, rsync (plain and `-z`) and
//! zsync, side by side, every byte counted at the socket.
//!
//!     cargo bench --bench scenarios [-- --scale 0.02] [--runs 3] [--tools smart,rsync]
//!                                      [--scenarios S1,S6] [--out target/bench]
//!
//! Needs nginx, curl, rsync, zsync and zsyncmake (`.ci/run` installs them).
//! Writes `scenarios.md` and `scenarios.json` to the output folder and
//! prints the table.

use std::path::PathBuf;

use intersync::bench::{self, Options, Tool, report};

fn main() {
    let mut options = Options {
        scale: 1.0,
        runs: 3,
        tools: Tool::ALL.to_vec(),
        scenarios: ["S0", "S1", "S2", "S3", "S4", "S5", "S6", "S7"]
            .map(String::from)
            .to_vec(),
        intersync: PathBuf::from(env!("CARGO_BIN_EXE_intersync")),
        one_way_delay: std::time::Duration::ZERO,
        link: "loopback".into(),
    };
    let mut out = PathBuf::from("target/bench");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--scale" => options.scale = value().parse().expect("--scale is a number"),
            "--runs" => options.runs = value().parse().expect("--runs is a number"),
            "--out" => out = PathBuf::from(value()),
            "--scenarios" => options.scenarios = value().split(',').map(String::from).collect(),
            "--tools" => {
                options.tools = value()
                    .split(',')
                    .map(|t| match t {
                        "smart" => Tool::Smart,
                        "static" => Tool::Static,
                        "full" => Tool::FullFetch,
                        "rsync" => Tool::Rsync,
                        "rsync-z" => Tool::RsyncZ,
                        "zsync" => Tool::Zsync,
                        other => {
                            panic!("no tool {other} (smart, static, full, rsync, rsync-z, zsync)")
                        }
                    })
                    .collect()
            }
            // What cargo bench passes to every bench binary.
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    let work = tempfile::tempdir().expect("temporary folder");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let figures = runtime
        .block_on(bench::run(work.path(), &options, |scenario, tool, n| {
            eprintln!("{scenario}: {} (run {})", tool.name(), n + 1);
        }))
        .unwrap_or_else(|e| panic!("{e}"));
    let report = report::Report {
        date: intersync::tree::scan::utc_stamp(intersync::tree::scan::now_ns() / 1_000_000_000),
        machine: report::machine(),
        scale: options.scale,
        runs: options.runs,
        figures,
    };
    let table = report::markdown(&report);
    println!("\n{table}");
    std::fs::create_dir_all(&out).expect("output folder");
    std::fs::write(out.join("scenarios.md"), &table).expect("write the table");
    std::fs::write(
        out.join("scenarios.json"),
        serde_json::to_vec_pretty(&report).expect("json"),
    )
    .expect("write the JSON");
    eprintln!("wrote {}/scenarios.md and scenarios.json", out.display());
}
