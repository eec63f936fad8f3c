//! Golden outputs of the real rsync (`compat/testdata/golden/`, made by
//! `compat/testdata/capture.py` from `compat/testdata/cases.txt`): intersync
//! run the same way on the same trees must print the same itemize, name
//! and statistics lines and exit the same. Unlike the differential tests,
//! these need no rsync at test time, and a change in rsync's output shows
//! up as a diff of the golden files when they are captured again.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{intersync, ok, run};

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("compat/testdata")
}

fn cases() -> Vec<(String, Vec<String>)> {
    std::fs::read_to_string(testdata().join("cases.txt"))
        .expect("cases.txt")
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (name, args) = l.split_once('|').expect("NAME|ARGS");
            (
                name.to_string(),
                args.split(' ').map(String::from).collect(),
            )
        })
        .collect()
}

/// capture.py's `comparable`: the lines, deduplicated and sorted, without
/// those that depend on protocol overhead or time.
fn comparable(stdout: &[u8]) -> Vec<String> {
    let skip = [
        "sent ",
        "total size is",
        "Total bytes sent",
        "Total bytes received",
        "File list ",
        "sending incremental file list",
    ];
    let mut lines: Vec<String> = String::from_utf8_lossy(stdout)
        .lines()
        .filter(|l| !l.is_empty() && !skip.iter().any(|s| l.starts_with(s)))
        .map(String::from)
        .collect();
    lines.sort();
    lines.dedup();
    lines
}

#[test]
fn intersync_prints_what_rsync_printed() {
    let mut failures = Vec::new();
    for (name, args) in cases() {
        let golden = std::fs::read_to_string(testdata().join(format!("golden/{name}.txt")))
            .unwrap_or_else(|e| panic!("golden/{name}.txt: {e} (run capture.py)"));
        let base = tempfile::tempdir().unwrap();
        let script = testdata().join("capture.py");
        ok(Command::new("python3")
            .arg(&script)
            .arg("--tree")
            .arg(base.path().join("src")));
        if args.iter().any(|a| a.starts_with("OLD:")) {
            ok(Command::new("python3")
                .arg(&script)
                .arg("--old")
                .arg(base.path().join("src"))
                .arg(base.path().join("dst")));
        }
        let out = run(intersync()
            .current_dir(base.path())
            .args(args.iter().map(|a| {
                a.replace("OLD:", "")
                    .replace("SRC", "src")
                    .replace("DST", "dst")
            })));
        let mut got = format!("exit {}\n", out.status.code().unwrap_or(-1));
        for l in comparable(&out.stdout) {
            got.push_str(&l);
            got.push('\n');
        }
        if got != golden {
            failures.push(format!(
                "--- {name} {args:?}\nrsync printed:\n{golden}intersync printed:\n{got}{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_golden_file_has_its_case() {
    let names: Vec<String> = cases().into_iter().map(|(n, _)| n).collect();
    assert!(names.len() >= 15);
    for entry in std::fs::read_dir(testdata().join("golden")).unwrap() {
        let file = entry.unwrap().file_name().to_string_lossy().into_owned();
        let name = file.strip_suffix(".txt").unwrap_or(&file).to_string();
        assert!(
            names.contains(&name),
            "golden/{file} has no case in cases.txt"
        );
    }
}
