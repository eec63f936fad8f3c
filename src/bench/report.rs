//! The benchmark's report: a Markdown table for people and a JSON file with
//! every figure, so that a later run can be compared with an earlier one.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::Figure;

/// Everything one benchmark run measured, and where.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// UTC, `YYYYMMDDTHHMMSSZ`.
    pub date: String,
    pub machine: String,
    pub scale: f64,
    pub runs: usize,
    pub figures: Vec<Figure>,
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

/// The Markdown table: one row per scenario, link and tool.
pub fn markdown(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Scenario benchmark, scale {}, median of {} run(s), {} ({}). Bytes counted at the socket, \
         both ways, headers included; `total / changed` is against the bytes the change really made.\n",
        report.scale, report.runs, report.date, report.machine
    );
    let _ = writeln!(
        out,
        "| scenario | link | tool | up | down | total | total / changed | total / full fetch | requests | wall | client CPU | client peak MiB | server CPU | server peak MiB | right tree | note |"
    );
    let _ = writeln!(
        out,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for f in &report.figures {
        let ratio = |d: u64| {
            if d == 0 {
                "-".to_owned()
            } else {
                format!("{:.3}", f.total_bytes() as f64 / d as f64)
            }
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.3} s | {:.2} s | {} | {} | {} | {} | {} |",
            f.scenario,
            f.link,
            f.tool,
            thousands(f.up_bytes),
            thousands(f.down_bytes),
            thousands(f.total_bytes()),
            ratio(f.changed_bytes),
            ratio(f.full_fetch_bytes),
            f.requests.map_or("-".into(), |r| r.to_string()),
            f.wall_s,
            f.client_cpu_s,
            mib(f.client_peak_kib),
            f.server_cpu_s.map_or("-".into(), |c| format!("{c:.2} s")),
            f.server_peak_kib.map_or("-".into(), mib),
            if f.correct { "yes" } else { "NO" },
            f.note
        );
    }
    out
}

/// A one-line description of this machine: CPUs and memory.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    format!("{cpus} × {model}, {mem_gib:.0} GiB")
}

#[cfg(test)]
mod tests {
    use super::thousands;

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(104_857_600), "104,857,600");
    }
}
