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
    /// Runs of each figure on loopback; times are their median.
    pub runs: usize,
    /// Runs on the slow links.
    #[serde(default)]
    pub slow_runs: usize,
    pub figures: Vec<Figure>,
    /// What a reader must know about these figures (how a run was put
    /// together, a column to read with care).
    #[serde(default)]
    pub notes: Vec<String>,
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    intersync_compat::output::number(n, 0)
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

/// The Markdown table: one row per scenario, link and tool.
pub fn markdown(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Scenario benchmark, scale {}, times the median of {} run(s) on loopback and {} on the slow \
         links, {} ({}). Bytes counted at the socket, both ways, headers included; `total / changed` \
         is against the bytes the change really made.\n",
        report.scale, report.runs, report.slow_runs, report.date, report.machine
    );
    for note in &report.notes {
        let _ = writeln!(out, "Note: {note}\n");
    }
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

/// The short table: per scenario and tool, the bytes and requests on
/// loopback, the wall time on every link, the client's peak memory.
pub fn summary(report: &Report) -> String {
    let mut links: Vec<&str> = Vec::new();
    for f in &report.figures {
        if !links.contains(&f.link.as_str()) {
            links.push(&f.link);
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Scale {}, {} ({}). Bytes and requests on loopback, counted at the socket both ways; \
         `/ changed` against the bytes the change made; wall times per link.\n",
        report.scale, report.date, report.machine
    );
    for note in &report.notes {
        let _ = writeln!(out, "Note: {note}\n");
    }
    let mut head = "| scenario | tool | bytes | / changed | requests |".to_string();
    let mut rule = "|---|---|---|---|---|".to_string();
    for l in &links {
        let _ = write!(head, " wall, {l} |");
        rule.push_str("---|");
    }
    head.push_str(" client peak MiB | right |");
    rule.push_str("---|---|");
    let _ = writeln!(out, "{head}\n{rule}");
    let first = links.first().copied().unwrap_or("loopback");
    for f in report.figures.iter().filter(|f| f.link == first) {
        let ratio = if f.changed_bytes == 0 {
            "-".to_owned()
        } else {
            format!("{:.2}", f.total_bytes() as f64 / f.changed_bytes as f64)
        };
        let mut row = format!(
            "| {} | {} | {} | {} | {} |",
            f.scenario,
            f.tool,
            thousands(f.total_bytes()),
            ratio,
            f.requests.map_or("-".into(), |r| r.to_string())
        );
        for l in &links {
            let wall = report
                .figures
                .iter()
                .find(|g| g.link == *l && g.scenario == f.scenario && g.tool == f.tool)
                .map_or("-".into(), |g| format!("{:.2} s", g.wall_s));
            let _ = write!(row, " {wall} |");
        }
        let right = report
            .figures
            .iter()
            .filter(|g| g.scenario == f.scenario && g.tool == f.tool)
            .all(|g| g.correct);
        let _ = write!(
            row,
            " {} | {} |",
            mib(f.client_peak_kib),
            if right { "yes" } else { "NO" }
        );
        let _ = writeln!(out, "{row}");
    }
    out
}

/// A chart of the report: for each scenario, a bar per tool for the bytes
/// moved (on a log scale) and, beside it, for the time over the first slow
/// link in the report (log scale too), or over loopback if there is none.
pub fn svg(report: &Report) -> String {
    let mut scenarios: Vec<&str> = Vec::new();
    let mut tools: Vec<&str> = Vec::new();
    for f in &report.figures {
        if !scenarios.contains(&f.scenario.as_str()) {
            scenarios.push(&f.scenario);
        }
        if !tools.contains(&f.tool.as_str()) {
            tools.push(&f.tool);
        }
    }
    let time_link = report
        .figures
        .iter()
        .map(|f| f.link.as_str())
        .find(|l| *l != "loopback")
        .unwrap_or("loopback");
    let colours = [
        "#1f77b4", "#9467bd", "#aec7e8", "#7f7f7f", "#d62728", "#ff9896", "#2ca02c", "#8c564b",
    ];
    let (bar, gap, label_w, panel_w) = (9.0, 10.0, 40.0, 420.0);
    let group = bar * tools.len() as f64 + gap;
    let top = 40.0 + 16.0 * tools.len() as f64;
    let height = top + group * scenarios.len() as f64 + 40.0;
    let width = label_w + 2.0 * panel_w + 60.0;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    let _ = writeln!(
        out,
        "<text x=\"{label_w}\" y=\"16\" font-size=\"13\">Bytes moved (log scale) and time over {time_link} (log scale), scale {}, {}</text>",
        report.scale, report.date
    );
    legend(&mut out, &tools, &colours, label_w);
    let bytes = |f: &Figure| f.total_bytes() as f64;
    let loopback: Vec<&Figure> = report
        .figures
        .iter()
        .filter(|f| f.link == "loopback")
        .collect();
    let timed: Vec<&Figure> = report
        .figures
        .iter()
        .filter(|f| f.link == time_link)
        .collect();
    let bx = log_scale(loopback.iter().map(|f| bytes(f)).collect(), panel_w);
    let tx = log_scale(timed.iter().map(|f| f.wall_s).collect(), panel_w);
    let panels = [
        (label_w, "bytes", &loopback),
        (label_w + panel_w + 40.0, "time", &timed),
    ];
    for (si, s) in scenarios.iter().enumerate() {
        let y0 = top + group * si as f64;
        let _ = writeln!(out, "<text x=\"4\" y=\"{}\">{s}</text>", y0 + group / 2.0);
        for (x0, what, figures) in &panels {
            for (ti, t) in tools.iter().enumerate() {
                let Some(f) = figures.iter().find(|f| f.scenario == *s && f.tool == *t) else {
                    continue;
                };
                let (w, label) = if *what == "bytes" {
                    (bx(bytes(f)), thousands(f.total_bytes()))
                } else {
                    (tx(f.wall_s), format!("{:.2} s", f.wall_s))
                };
                let y = y0 + bar * ti as f64;
                let _ = writeln!(
                    out,
                    "<rect x=\"{x0}\" y=\"{y}\" width=\"{:.1}\" height=\"{}\" fill=\"{}\"><title>{} {}: {label}</title></rect>",
                    w.max(1.0),
                    bar - 1.0,
                    colours[ti % colours.len()],
                    escape(s),
                    escape(t)
                );
            }
        }
    }
    for (x0, what, _) in &panels {
        let _ = writeln!(
            out,
            "<text x=\"{x0}\" y=\"{}\">{}</text>",
            height - 14.0,
            if *what == "bytes" {
                "total bytes, loopback (log)".to_owned()
            } else {
                format!("wall time, {time_link} (log)")
            }
        );
    }
    out.push_str("</svg>\n");
    out
}

/// A swatch and the name of each tool, one a line.
fn legend(out: &mut String, tools: &[&str], colours: &[&str], label_w: f64) {
    for (i, t) in tools.iter().enumerate() {
        let y = 30.0 + 16.0 * i as f64;
        let _ = writeln!(
            out,
            "<rect x=\"{label_w}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{}</text>",
            y - 9.0,
            colours[i % colours.len()],
            label_w + 14.0,
            y,
            escape(t)
        );
    }
}

/// A log scale from the smallest to the largest value present onto
/// `0..=width`.
fn log_scale(values: Vec<f64>, width: f64) -> impl Fn(f64) -> f64 {
    let lo = values
        .iter()
        .copied()
        .filter(|v| *v > 0.0)
        .fold(f64::MAX, f64::min);
    let hi = values.iter().copied().fold(0.0, f64::max);
    let (lo, hi) = (
        lo.min(hi).max(1e-9).log10().floor(),
        hi.max(1e-9).log10().ceil(),
    );
    move |v: f64| {
        if v <= 0.0 {
            0.0
        } else {
            ((v.log10() - lo) / (hi - lo).max(1.0)).clamp(0.0, 1.0) * width
        }
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
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
