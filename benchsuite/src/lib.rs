//! InterSync's support code, kept out of the product (as ripgrep keeps its
//! `benchsuite/`): the scenario benchmark, the deterministic scenarios it,
//! the tests and the demo share ([`scenario`]), and the real programs they
//! measure through ([`harness`]). It depends on no part of the engine: it
//! runs the `intersync` binary as any user would, and checks the trees it
//! leaves with its own reading of them.
//!
//! The scenario benchmark: S0 to S7 of docs/ARCHITECTURE.md, generated from fixed
//! seeds, each run side by side with the tools people would use instead
//! (InterSync's smart server, its static export behind nginx, a full fetch
//! with curl from nginx, rsync's daemon plain and with `-z`, zsync behind
//! nginx), every one as a real process reaching its server through one
//! counting relay, so that bytes are counted the same way for all.
//!
//! For each tool, scenario and run: bytes each way at the socket and by
//! the tool's own account, requests, wall time of the measured step only
//! (the median of the runs is reported), the client's CPU seconds and peak
//! memory, and the server's where it is one process. Every run starts from
//! fresh copies and must end with the new tree, byte for byte, or it says
//! why not.

pub mod harness;
pub mod link;
pub mod proc;
pub mod relay;
pub mod report;
pub mod scenario;
mod tools;
pub mod tree;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::scenario::{FULL_LEN, FULL_TREE_FILES, FileScenario};

/// Why the benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("{scenario} with {tool}: {reason}")]
    Run {
        scenario: String,
        tool: String,
        reason: String,
    },
}

/// A tool measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Tool {
    /// `intersync serve` and `intersync sync`.
    Smart,
    /// The same with the server's kept versions emptied before the update:
    /// a base the server never saw (a migrated copy), the signature path.
    SmartUnknownBase,
    /// `intersync export`, nginx, `intersync sync`.
    Static,
    /// curl from nginx, of every changed file whole.
    FullFetch,
    /// `rsync --daemon` and `rsync -a --delete`.
    Rsync,
    /// The same with `-z`.
    RsyncZ,
    /// zsyncmake for every file, nginx, zsync for every file.
    Zsync,
    /// `intersync get` of every changed file whole from `intersync serve`:
    /// a full fetch that needs nothing else installed.
    Get,
}

impl Tool {
    pub const ALL: [Tool; 7] = [
        Tool::Smart,
        Tool::SmartUnknownBase,
        Tool::Static,
        Tool::FullFetch,
        Tool::Rsync,
        Tool::RsyncZ,
        Tool::Zsync,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Tool::Smart => "InterSync",
            Tool::SmartUnknownBase => "InterSync, base unknown to the server",
            Tool::Static => "InterSync static (nginx)",
            Tool::FullFetch => "full fetch (curl, nginx)",
            Tool::Rsync => "rsync",
            Tool::RsyncZ => "rsync -z",
            Tool::Zsync => "zsync (nginx)",
            Tool::Get => "full fetch (intersync get)",
        }
    }

    /// The programs the tool needs besides `intersync`.
    pub fn programs(self) -> &'static [&'static str] {
        match self {
            Tool::Smart | Tool::SmartUnknownBase | Tool::Get => &[],
            Tool::Static => &["nginx"],
            Tool::FullFetch => &["nginx", "curl"],
            Tool::Rsync | Tool::RsyncZ => &["rsync"],
            Tool::Zsync => &["nginx", "zsync", "zsyncmake"],
        }
    }
}

/// What a run is given.
#[derive(Clone, Debug)]
pub struct Options {
    /// 1.0: 100 MiB files and 10,000-file trees.
    pub scale: f64,
    /// Runs of each tool and scenario; times are their median.
    pub runs: usize,
    pub tools: Vec<Tool>,
    /// Scenario ids (`S0` to `S8`, `S8u`, and S9's `S9`, `S9e1` and
    /// `S9e100`) to run.
    pub scenarios: Vec<String>,
    /// The `intersync` binary to measure.
    pub intersync: PathBuf,
    /// The link the clients reach their servers over (a slow one needs this
    /// process to run inside a [`link::Namespace`]).
    pub link: link::Link,
    /// Longest a measured step may take; past it the tool is stopped and
    /// its figure says so.
    pub max_step: Option<Duration>,
}

/// One tool's figures on one scenario.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Figure {
    pub scenario: String,
    pub tool: String,
    pub link: String,
    /// Bytes of new content the change made: the floor.
    pub changed_bytes: u64,
    /// Bytes of the changed files: what fetching them whole moves.
    pub full_fetch_bytes: u64,
    /// Client to server, counted at the socket.
    pub up_bytes: u64,
    /// Server to client, counted at the socket.
    pub down_bytes: u64,
    /// The tool's own count (client to server, server to client), if it gives one.
    pub tool_bytes: Option<(u64, u64)>,
    /// HTTP requests (for HTTP tools).
    pub requests: Option<u64>,
    pub connections: u64,
    /// Median wall time of the measured step, seconds.
    pub wall_s: f64,
    pub walls_s: Vec<f64>,
    pub client_cpu_s: f64,
    pub client_peak_kib: u64,
    pub server_cpu_s: Option<f64>,
    pub server_peak_kib: Option<u64>,
    /// The client ended with exactly the new tree.
    pub correct: bool,
    pub note: String,
}

impl Figure {
    pub fn total_bytes(&self) -> u64 {
        self.up_bytes + self.down_bytes
    }
}

/// A scenario on disk: the client's tree before, the server's after.
pub struct Prepared {
    pub id: String,
    pub old: PathBuf,
    pub new: PathBuf,
    pub changed_bytes: u64,
    pub full_fetch_bytes: u64,
}

/// Writes the scenarios asked for under `dir` at `scale`.
pub fn prepare(dir: &Path, scale: f64, ids: &[String]) -> Result<Vec<Prepared>, BenchError> {
    let len = ((FULL_LEN as f64 * scale) as usize).max(1 << 16);
    let files = ((FULL_TREE_FILES as f64 * scale) as usize).max(200);
    let mut out = Vec::new();
    let tree = dir.join("tree");
    let changed_tree = dir.join("tree-changed");
    let mut change = None;
    let mut upgrade = None;
    for id in ids {
        let (old, new) = (dir.join(id).join("old"), dir.join(id).join("new"));
        std::fs::create_dir_all(&old)?;
        std::fs::create_dir_all(&new)?;
        let single = FileScenario::ALL.into_iter().find(|s| s.id() == id);
        let (changed_bytes, full_fetch_bytes) = match (id.as_str(), single) {
            (_, Some(s)) => {
                let pair = s.generate(len);
                std::fs::write(old.join("data.bin"), &pair.old)?;
                std::fs::write(new.join("data.bin"), &pair.new)?;
                (pair.changed_bytes, pair.new.len() as u64)
            }
            ("S0" | "S6" | "S7", None) => {
                if !tree.exists() {
                    std::fs::create_dir_all(&tree)?;
                    scenario::write_tree(&tree, files)?;
                    tree::mirror(&tree, &changed_tree)?;
                    change = Some(scenario::change_tree(&changed_tree, files)?);
                }
                let c = change.as_ref().expect("made with the tree");
                match id.as_str() {
                    "S0" => {
                        tree::mirror(&tree, &new)?;
                        let total = tree::files(&new)?
                            .iter()
                            .map(|p| new.join(p).metadata().map(|m| m.len()))
                            .sum::<std::io::Result<u64>>()?;
                        (total, total)
                    }
                    "S6" => {
                        tree::mirror(&tree, &old)?;
                        tree::mirror(&changed_tree, &new)?;
                        (c.changed_bytes, c.full_fetch_bytes)
                    }
                    _ => {
                        tree::mirror(&changed_tree, &old)?;
                        tree::mirror(&changed_tree, &new)?;
                        (0, 0)
                    }
                }
            }
            ("S8" | "S8u", None) => {
                let source = dir.join("source");
                let upgraded = dir.join("source-upgraded");
                let source_files = ((scenario::FULL_SOURCE_FILES as f64 * scale) as usize).max(200);
                if !source.exists() {
                    std::fs::create_dir_all(&source)?;
                    scenario::write_source_tree(&source, source_files)?;
                    tree::mirror(&source, &upgraded)?;
                    upgrade = Some(scenario::upgrade_source_tree(&upgraded, source_files)?);
                }
                if id == "S8" {
                    tree::mirror(&source, &new)?;
                    let total = tree::files(&new)?
                        .iter()
                        .map(|p| new.join(p).metadata().map(|m| m.len()))
                        .sum::<std::io::Result<u64>>()?;
                    (total, total)
                } else {
                    let u = upgrade.as_ref().expect("made with the tree");
                    tree::mirror(&source, &old)?;
                    tree::mirror(&upgraded, &new)?;
                    (u.changed_bytes, u.full_fetch_bytes)
                }
            }
            ("S9" | "S9e1" | "S9e100", None) => {
                // One tree for the three: nothing changed, one file, a hundred.
                let million = dir.join("million");
                let count = ((scenario::FULL_MILLION_FILES as f64 * scale) as usize).max(200);
                if !million.exists() {
                    std::fs::create_dir_all(&million)?;
                    scenario::write_million_tree(&million, count)?;
                }
                tree::mirror(&million, &old)?;
                tree::mirror(&million, &new)?;
                let edits = match id.as_str() {
                    "S9" => 0,
                    "S9e1" => 1,
                    _ => 100,
                };
                let c = scenario::edit_million_tree(&new, count, edits)?;
                (c.changed_bytes, c.full_fetch_bytes)
            }
            _ => {
                return Err(BenchError::Io(std::io::Error::other(format!(
                    "no scenario {id}"
                ))));
            }
        };
        settle_times(&old, &new)?;
        out.push(Prepared {
            id: id.clone(),
            old,
            new,
            changed_bytes,
            full_fetch_bytes,
        });
    }
    Ok(out)
}

/// A user's own pair, for `intersync bench OLD NEW`: two folders as they
/// are, or two files (copied into folders under `work`, under NEW's name).
pub fn pair(old: &Path, new: &Path, work: &Path) -> Result<Prepared, BenchError> {
    let (old_dir, new_dir) = if new.is_dir() {
        (old.to_owned(), new.to_owned())
    } else {
        let name = new
            .file_name()
            .ok_or_else(|| std::io::Error::other(format!("{}: not a file name", new.display())))?;
        let (o, n) = (work.join("pair/old"), work.join("pair/new"));
        std::fs::create_dir_all(&o)?;
        std::fs::create_dir_all(&n)?;
        // Copies keep their times: rsync's quick check looks at them.
        for (from, to) in [(old, o.join(name)), (new, n.join(name))] {
            std::fs::copy(from, &to)?;
            std::fs::File::options()
                .write(true)
                .open(&to)?
                .set_modified(from.metadata()?.modified()?)?;
        }
        (o, n)
    };
    let mut full = 0;
    for f in tree::files(&new_dir)? {
        let bytes = std::fs::read(new_dir.join(&f))?;
        if std::fs::read(old_dir.join(&f)).ok().as_ref() != Some(&bytes) {
            full += bytes.len() as u64;
        }
    }
    Ok(Prepared {
        id: "yours".into(),
        old: old_dir,
        new: new_dir,
        changed_bytes: 0,
        full_fetch_bytes: full,
    })
}

/// Gives the trees the times a real change leaves: every old file a fixed
/// time, every new file that differs a day later, unchanged files the old
/// time (so that quick checks by size and time, like rsync's, see exactly
/// the files that changed, whatever second the scenario was written in).
fn settle_times(old: &Path, new: &Path) -> std::io::Result<()> {
    let before = std::time::UNIX_EPOCH + Duration::from_secs(1_767_225_600);
    let after = before + Duration::from_secs(86_400);
    let touch = |path: &Path, t| {
        std::fs::File::options()
            .write(true)
            .open(path)?
            .set_modified(t)
    };
    for f in tree::files(old)? {
        touch(&old.join(&f), before)?;
    }
    for f in tree::files(new)? {
        let same = std::fs::read(old.join(&f)).ok() == Some(std::fs::read(new.join(&f))?);
        touch(&new.join(&f), if same { before } else { after })?;
    }
    Ok(())
}

/// Runs every tool on every scenario (in `work`), `options.runs` times each.
/// `progress` hears of each run as it starts.
pub async fn run(
    work: &Path,
    options: &Options,
    progress: impl FnMut(&str, Tool, usize),
) -> Result<Vec<Figure>, BenchError> {
    let scenarios = prepare(&work.join("scenarios"), options.scale, &options.scenarios)?;
    run_prepared(work, &scenarios, options, progress).await
}

/// Runs every tool on `scenarios` (already on disk), `options.runs` times each.
pub async fn run_prepared(
    work: &Path,
    scenarios: &[Prepared],
    options: &Options,
    mut progress: impl FnMut(&str, Tool, usize),
) -> Result<Vec<Figure>, BenchError> {
    for tool in &options.tools {
        for program in tool.programs() {
            crate::harness::program(program)?;
        }
    }
    let mut figures = Vec::new();
    for s in scenarios {
        for &tool in &options.tools {
            let mut samples = Vec::new();
            for n in 0..options.runs.max(1) {
                progress(&s.id, tool, n);
                let dir = work.join("runs").join(format!("{}-{tool:?}-{n}", s.id));
                let sample = tools::run_once(tool, s, &dir, options)
                    .await
                    .map_err(|reason| BenchError::Run {
                        scenario: s.id.clone(),
                        tool: tool.name().into(),
                        reason,
                    })?;
                let _ = std::fs::remove_dir_all(&dir);
                samples.push(sample);
            }
            figures.push(tools::summarize(s, tool, &options.link.name(), samples));
        }
    }
    Ok(figures)
}
