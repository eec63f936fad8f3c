//! rsync's words on stdout: numbers with thousands separators or `-h`
//! units, the `--stats` block, the `-v` summary, the itemize line and the
//! `--progress` line. Pure functions of figures the transfer collects.

/// Counts by kind, as `--stats` breaks them down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Count {
    pub reg: u64,
    pub dir: u64,
    pub link: u64,
    pub dev: u64,
    pub special: u64,
}

impl Count {
    pub fn total(&self) -> u64 {
        self.reg + self.dir + self.link + self.dev + self.special
    }

    /// "12 (reg: 6, dir: 4, link: 1, special: 1)"; kinds with none left
    /// out, as rsync does.
    fn describe(&self, human: u8) -> String {
        let parts: Vec<String> = [
            ("reg", self.reg),
            ("dir", self.dir),
            ("link", self.link),
            ("dev", self.dev),
            ("special", self.special),
        ]
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{k}: {}", number(*n, human)))
        .collect();
        if parts.is_empty() {
            number(self.total(), human)
        } else {
            format!("{} ({})", number(self.total(), human), parts.join(", "))
        }
    }
}

/// The figures of `--stats`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    pub files: Count,
    pub created: Count,
    pub deleted: Count,
    pub regular_transferred: u64,
    pub total_size: u64,
    pub transferred_size: u64,
    pub literal_bytes: u64,
    pub matched_bytes: u64,
    pub file_list_bytes: u64,
    pub file_list_seconds: f64,
    pub sent_bytes: u64,
    pub received_bytes: u64,
    pub seconds: f64,
}

/// `v` in `-h` units (1000s; 1024s with `-hh`), and the unit's letter.
fn scaled(mut v: f64, human: u8) -> (f64, &'static str) {
    let base = if human > 1 { 1024.0 } else { 1000.0 };
    let mut unit = "";
    for u in ["K", "M", "G", "T", "P"] {
        if v < base {
            break;
        }
        v /= base;
        unit = u;
    }
    (v, unit)
}

/// A number as rsync prints it: `1,234,567` by default; with `-h`,
/// `1.23M` (units of 1000); with `-hh`, `1.18M` (units of 1024).
pub fn number(n: u64, human: u8) -> String {
    if human > 0 {
        let (v, unit) = scaled(n as f64, human);
        return if unit.is_empty() {
            n.to_string()
        } else {
            format!("{v:.2}{unit}")
        };
    }
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

/// A rate as rsync prints it: "1,544.00" or with `-h` "1.46K".
fn rate(v: f64, human: u8) -> String {
    if human > 0 {
        let (v, unit) = scaled(v, human);
        return format!("{v:.2}{unit}");
    }
    let whole = number(v.trunc() as u64, 0);
    format!(
        "{whole}.{:02}",
        ((v.fract() * 100.0).round() as u64).min(99)
    )
}

/// The `--stats` block (without the summary that follows it).
pub fn stats_block(s: &Stats, human: u8) -> String {
    let n = |v: u64| number(v, human);
    format!(
        "\nNumber of files: {}\n\
         Number of created files: {}\n\
         Number of deleted files: {}\n\
         Number of regular files transferred: {}\n\
         Total file size: {} bytes\n\
         Total transferred file size: {} bytes\n\
         Literal data: {} bytes\n\
         Matched data: {} bytes\n\
         File list size: {}\n\
         File list generation time: {:.3} seconds\n\
         File list transfer time: 0.000 seconds\n\
         Total bytes sent: {}\n\
         Total bytes received: {}\n",
        s.files.describe(human),
        s.created.describe(human),
        s.deleted.describe(human),
        n(s.regular_transferred),
        n(s.total_size),
        n(s.transferred_size),
        n(s.literal_bytes),
        n(s.matched_bytes),
        n(s.file_list_bytes),
        s.file_list_seconds,
        n(s.sent_bytes),
        n(s.received_bytes),
    )
}

/// The two summary lines of `-v` and `--stats`.
pub fn summary(s: &Stats, human: u8, dry_run: bool) -> String {
    let moved = s.sent_bytes + s.received_bytes;
    let per_sec = if s.seconds > 0.0 {
        moved as f64 / s.seconds
    } else {
        moved as f64
    };
    let speedup = if moved > 0 {
        s.total_size as f64 / moved as f64
    } else {
        0.0
    };
    format!(
        "\nsent {} bytes  received {} bytes  {} bytes/sec\ntotal size is {}  speedup is {:.2}{}\n",
        number(s.sent_bytes, human),
        number(s.received_bytes, human),
        rate(per_sec, human),
        number(s.total_size, human),
        speedup,
        if dry_run { " (DRY RUN)" } else { "" }
    )
}

/// The line `-i` prints for an item.
pub fn itemize_line(itemize: &str, name: &str, target: Option<&str>) -> String {
    match target {
        Some(t) => format!("{itemize} {name} -> {t}"),
        None => format!("{itemize} {name}"),
    }
}

/// The line `-i` prints for a deletion.
pub fn deleting_line(name: &str) -> String {
    format!("{:<11} {name}", "*deleting")
}

/// The end of a file's `--progress` line.
pub fn progress_line(size: u64, human: u8, seconds: f64, xfr: u64, to_check: (u64, u64)) -> String {
    let per_sec = if seconds > 0.0 {
        size as f64 / seconds
    } else {
        0.0
    };
    let secs = seconds.round() as u64;
    format!(
        "{:>15} 100% {:>10}B/s {}:{:02}:{:02} (xfr#{xfr}, to-chk={}/{})",
        number(size, human),
        rate(per_sec / 1000.0, 0) + "k",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        to_check.0,
        to_check.1
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(number(0, 0), "0");
        assert_eq!(number(999, 0), "999");
        assert_eq!(number(1000, 0), "1,000");
        assert_eq!(number(3_145_728, 0), "3,145,728");
        assert_eq!(number(3_145_728, 2), "3.00M");
        assert_eq!(number(3_145_728, 1), "3.15M");
        assert_eq!(number(18, 1), "18");
        assert_eq!(rate(1544.0, 0), "1,544.00");
        assert_eq!(rate(1464.0, 1), "1.46K");
    }

    #[test]
    fn stats_lines_are_rsyncs() {
        let s = Stats {
            files: Count {
                reg: 6,
                dir: 4,
                link: 1,
                special: 1,
                dev: 0,
            },
            total_size: 18,
            ..Stats::default()
        };
        let block = stats_block(&s, 0);
        assert!(block.contains("Number of files: 12 (reg: 6, dir: 4, link: 1, special: 1)\n"));
        assert!(block.contains("Number of deleted files: 0\n"));
        assert!(block.contains("Total file size: 18 bytes\n"));
        assert_eq!(deleting_line("extra/"), "*deleting   extra/");
        assert_eq!(
            itemize_line("cL+++++++++", "link", Some("a")),
            "cL+++++++++ link -> a"
        );
    }
}
