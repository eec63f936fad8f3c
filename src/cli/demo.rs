//! `intersync demo`: the whole product on one machine, in a temporary
//! folder. It exports a generated tree from a server on 127.0.0.1, clones a
//! working copy, edits both sides (scattered edits in a large file, small
//! text edits, a rename, files added and deleted), syncs, syncs again with
//! nothing to do, and reports what each step moved against what fetching
//! every changed file whole would have moved.

use std::fs;
use std::path::Path;

use anyhow::Context;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use intersync::client::{SyncError, SyncOptions, SyncReport, WorkingCopy};
use intersync::server;
use intersync::transport::{HttpRemote, Remote, Traffic};
use intersync_bench::scenario;

/// One step of the demo and what it cost.
#[derive(Debug, Clone)]
pub struct DemoStep {
    pub name: &'static str,
    /// Files that changed hands, either way.
    pub files: u64,
    /// What fetching (or sending) each of them whole would have moved.
    pub full_fetch_bytes: u64,
    /// What actually crossed the wire, both ways, headers included.
    pub moved_bytes: u64,
    pub requests: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("demo")]
    Io(#[from] std::io::Error),
    #[error("demo server")]
    Start(#[from] server::StartError),
    #[error("demo sync")]
    Sync(#[from] SyncError),
    #[error("demo: {0}")]
    Other(String),
}

/// Runs the demo in `dir` (which should be empty and will be filled).
pub async fn run(dir: &Path) -> Result<Vec<DemoStep>, DemoError> {
    let export = dir.join("export");
    let laptop = dir.join("laptop");
    generate_tree(&export)?;

    let server = server::LocalServer::start(&export).await?;
    let url = server.url.clone();
    let mut steps = Vec::new();
    let mut wc = WorkingCopy::open_or_create(&laptop, &url).map_err(SyncError::from)?;

    let remote = HttpRemote::new(&url, None, None).map_err(|e| DemoError::Other(e.to_string()))?;
    let report = intersync::client::sync(&mut wc, &remote, SyncOptions::default()).await?;
    steps.push(step("first sync (clone)", &report, Traffic::default()));

    // Edits on the server, as another program would make them, and on the laptop.
    let seq = remote
        .head(None, 0)
        .await
        .map_err(|e| DemoError::Other(e.to_string()))?
        .map_or(0, |h| h.latest_seq);
    edit_server(&export)?;
    wait_for_journal(&remote, seq, 5).await?;
    edit_laptop(&laptop)?;
    let remote = HttpRemote::new(&url, None, None).map_err(|e| DemoError::Other(e.to_string()))?;
    let report = intersync::client::sync(&mut wc, &remote, SyncOptions::default()).await?;
    steps.push(step(
        "sync after edits on both sides",
        &report,
        Traffic::default(),
    ));

    let remote = HttpRemote::new(&url, None, None).map_err(|e| DemoError::Other(e.to_string()))?;
    let report = intersync::client::sync(&mut wc, &remote, SyncOptions::default()).await?;
    steps.push(step("sync with nothing to do", &report, Traffic::default()));

    server.stop().await;
    Ok(steps)
}

/// The demo's steps as a Markdown table.
pub fn table(steps: &[DemoStep]) -> String {
    let mut out = String::from(
        "| step | files moved | a full fetch would move | InterSync moved | ratio | requests |\n|---|---|---|---|---|---|\n",
    );
    for s in steps {
        let ratio = if s.full_fetch_bytes == 0 {
            "-".to_string()
        } else {
            format!(
                "{:.2}%",
                100.0 * s.moved_bytes as f64 / s.full_fetch_bytes as f64
            )
        };
        out.push_str(&format!(
            "| {} | {} | {} bytes | {} bytes | {ratio} | {} |\n",
            s.name, s.files, s.full_fetch_bytes, s.moved_bytes, s.requests
        ));
    }
    out
}

fn step(name: &'static str, r: &SyncReport, before: Traffic) -> DemoStep {
    DemoStep {
        name,
        files: r.files_local
            + r.files_patched
            + r.files_delta
            + r.files_blocks
            + r.files_whole
            + r.pushed
                .iter()
                .filter(|c| c.what != "folder created")
                .count() as u64,
        full_fetch_bytes: r.full_fetch_bytes,
        moved_bytes: r.traffic.sent_bytes + r.traffic.received_bytes
            - before.sent_bytes
            - before.received_bytes,
        requests: r.traffic.requests - before.requests,
    }
}

/// 300 small files in 10 folders, a 16 MiB binary and a 4 MiB text file.
fn generate_tree(root: &Path) -> std::io::Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(2026);
    for d in 0..10 {
        let dir = root.join(format!("project-{d}"));
        fs::create_dir_all(&dir)?;
        for f in 0..30 {
            let len = rng.random_range(1024..20 * 1024);
            fs::write(
                dir.join(format!("file-{f:02}.txt")),
                scenario::text(&mut rng, len),
            )?;
        }
    }
    fs::create_dir_all(root.join("media"))?;
    fs::write(
        root.join("media/video.bin"),
        scenario::random_bytes(&mut rng, 16 << 20),
    )?;
    fs::write(root.join("book.txt"), scenario::text(&mut rng, 4 << 20))?;
    Ok(())
}

fn edit_server(root: &Path) -> std::io::Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    // 20 scattered edits of up to 2 KiB in the large binary.
    let path = root.join("media/video.bin");
    let mut data = fs::read(&path)?;
    for _ in 0..20 {
        let len = rng.random_range(1..2048);
        let at = rng.random_range(0..data.len() - len);
        rng.fill_bytes(&mut data[at..at + len]);
    }
    fs::write(&path, data)?;
    // A few words changed in the book, a file added, one deleted, one renamed.
    let mut book = fs::read(root.join("book.txt"))?;
    for _ in 0..10 {
        let at = rng.random_range(0..book.len() - 20);
        book.splice(at..at + 10, scenario::text(&mut rng, 12));
    }
    fs::write(root.join("book.txt"), book)?;
    fs::write(
        root.join("project-1/new-on-server.txt"),
        scenario::text(&mut rng, 5000),
    )?;
    fs::remove_file(root.join("project-2/file-00.txt"))?;
    fs::rename(
        root.join("project-3/file-01.txt"),
        root.join("project-3/renamed.txt"),
    )
}

fn edit_laptop(root: &Path) -> std::io::Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let path = root.join("project-5/file-05.txt");
    let mut text = fs::read(&path)?;
    text.extend_from_slice(b"\nA line written on the laptop.\n");
    fs::write(&path, text)?;
    fs::write(
        root.join("project-6/from-laptop.txt"),
        scenario::text(&mut rng, 8000),
    )
}

/// Waits (long-polling) until the server journaled at least `records` more
/// records after `seq` (edits made behind its back, found by its watcher),
/// and then until the journal has been still for a second.
async fn wait_for_journal(remote: &impl Remote, seq: u64, records: u64) -> Result<(), DemoError> {
    let mut latest = seq;
    for _ in 0..60 {
        let settled = latest >= seq + records;
        match remote.head(Some(latest), if settled { 1 } else { 2 }).await {
            Ok(Some(head)) => latest = head.latest_seq,
            Ok(None) if settled => return Ok(()),
            Ok(None) => {}
            Err(e) => return Err(DemoError::Other(e.to_string())),
        }
    }
    Err(DemoError::Other(
        "the server never journaled the edits".into(),
    ))
}

pub fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("making a temporary folder")?;
    println!(
        "InterSync demo in {}: a server exports a generated tree (300 small text files,",
        dir.path().display()
    );
    println!("a 16 MiB binary, a 4 MiB text); a laptop clones it; both sides edit; they sync.\n");
    let runtime = tokio::runtime::Runtime::new()?;
    let steps = runtime.block_on(run(dir.path()))?;
    print!("{}", table(&steps));
    println!(
        "\nServer edits: 20 scattered edits in the binary, 10 in the text, a file added, one deleted,"
    );
    println!(
        "one renamed. Laptop edits: a line appended to one file, a new file. InterSync moved bytes"
    );
    println!(
        "count HTTP headers and bodies both ways; a full fetch counts only the changed files' bytes."
    );
    Ok(())
}
