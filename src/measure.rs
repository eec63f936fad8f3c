//! The end-to-end scenarios of DESIGN.md against the smart server, measured:
//! the old version is synced to a working copy, the server's copy is
//! changed behind its back (as another program would), and one sync brings
//! the working copy up to date. Reported per scenario: bytes both ways and
//! requests (from the client's transport), next to what fetching every
//! changed file whole would cost and to the bytes that really changed.
//!
//! This covers InterSync's smart path for S1, S6 and S7, and its static
//! path against zsync through one real nginx for S1, S2 and S7; the
//! comparison with rsync and the slow links arrive with the benchmark harness.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::client::{SyncOptions, WorkingCopy};
use crate::demo::{DemoError, wait_for_journal};
use crate::scenario::{self, FULL_LEN, FULL_TREE_FILES, FileScenario};
use crate::server::LocalServer;
use crate::transport::{HttpRemote, Remote};

/// One scenario's figures.
#[derive(Debug, Clone)]
pub struct Measurement {
    pub id: &'static str,
    /// What a full fetch of the changed files moves.
    pub full_fetch_bytes: u64,
    /// Bytes of new content: the floor.
    pub changed_bytes: u64,
    pub sent_bytes: u64,
    pub received_bytes: u64,
    pub requests: u64,
    pub wall: Duration,
}

impl Measurement {
    pub fn moved_bytes(&self) -> u64 {
        self.sent_bytes + self.received_bytes
    }
}

fn err(e: impl std::fmt::Display) -> DemoError {
    DemoError::Other(e.to_string())
}

/// Runs S1, S6 and S7 at `scale` (1.0: 100 MiB and 10,000 files) in `dir`.
pub async fn measure(dir: &Path, scale: f64) -> Result<Vec<Measurement>, DemoError> {
    let mut out = Vec::new();
    // S1: one large file with scattered edits.
    let s1 = FileScenario::S1.generate(((FULL_LEN as f64 * scale) as usize).max(1 << 16));
    let export = dir.join("s1-export");
    std::fs::create_dir_all(&export)?;
    std::fs::write(export.join("data.bin"), &s1.old)?;
    out.push(
        one_change(
            &export,
            &dir.join("s1-wc"),
            "S1",
            s1.new.len() as u64,
            s1.changed_bytes,
            1,
            |root| std::fs::write(root.join("data.bin"), &s1.new),
        )
        .await?,
    );
    // S6 and S7: the tree.
    let files = ((FULL_TREE_FILES as f64 * scale) as usize).max(200);
    let export = dir.join("s6-export");
    std::fs::create_dir_all(&export)?;
    scenario::write_tree(&export, files)?;
    let mut change = scenario::TreeChange::default();
    let wc = dir.join("s6-wc");
    let records = (files / 100 + 2 * (files / 200)) as u64;
    let s6 = one_change(&export, &wc, "S6", 0, 0, records, |root| {
        change = scenario::change_tree(root, files)?;
        Ok(())
    })
    .await?;
    out.push(Measurement {
        full_fetch_bytes: change.full_fetch_bytes,
        changed_bytes: change.changed_bytes,
        ..s6
    });
    // S7: the same again, nothing changed.
    let server = LocalServer::start(&export).await.map_err(err)?;
    let remote = HttpRemote::new(&server.url, None, None).map_err(err)?;
    let mut copy = WorkingCopy::open(&wc).map_err(err)?;
    copy.saved.url = server.url.clone();
    let started = Instant::now();
    let report = copy.sync(&remote, SyncOptions::default()).await?;
    out.push(Measurement {
        id: "S7",
        full_fetch_bytes: 0,
        changed_bytes: 0,
        sent_bytes: report.traffic.sent_bytes,
        received_bytes: report.traffic.received_bytes,
        requests: report.traffic.requests,
        wall: started.elapsed(),
    });
    server.stop().await;
    Ok(out)
}

/// Every file's path and version, and every folder and symlink, below `root`.
pub fn contents(root: &Path) -> std::io::Result<Vec<(String, String)>> {
    let mut index = crate::tree::scan::Index::default();
    crate::tree::scan::scan(root, &mut index)?;
    Ok(index
        .state
        .iter()
        .map(|(p, e)| {
            let what = match &e.kind {
                crate::tree::EntryKind::File { version, .. } => version.to_string(),
                crate::tree::EntryKind::Dir => "folder".into(),
                crate::tree::EntryKind::Symlink { target } => {
                    String::from_utf8_lossy(target).into_owned()
                }
            };
            (p.to_string(), what)
        })
        .collect())
}

/// Clones `export` into `wc`, applies `change` to the export behind the
/// server's back, waits until `records` records were journaled, and
/// measures the sync that follows.
async fn one_change(
    export: &Path,
    wc: &Path,
    id: &'static str,
    full_fetch_bytes: u64,
    changed_bytes: u64,
    records: u64,
    change: impl FnOnce(&Path) -> std::io::Result<()>,
) -> Result<Measurement, DemoError> {
    let server = LocalServer::start(export).await.map_err(err)?;
    let mut copy = WorkingCopy::open_or_create(wc, &server.url).map_err(err)?;
    let clone = HttpRemote::new(&server.url, None, None).map_err(err)?;
    copy.sync(&clone, SyncOptions::default()).await?;
    let seq = clone
        .head(None, 0)
        .await
        .map_err(err)?
        .map_or(0, |h| h.latest_seq);
    change(export)?;
    wait_for_journal(&clone, seq, records).await?;
    let remote = HttpRemote::new(&server.url, None, None).map_err(err)?;
    let started = Instant::now();
    let report = copy.sync(&remote, SyncOptions::default()).await?;
    let wall = started.elapsed();
    server.stop().await;
    if !report.conflicts.is_empty() || !report.deferred.is_empty() {
        return Err(err(format!("{id}: the sync was partial: {report:?}")));
    }
    if contents(export)? != contents(wc)? {
        return Err(err(format!(
            "{id}: the working copy differs from the export after the sync"
        )));
    }
    Ok(Measurement {
        id,
        full_fetch_bytes,
        changed_bytes,
        sent_bytes: report.traffic.sent_bytes,
        received_bytes: report.traffic.received_bytes,
        requests: report.traffic.requests,
        wall,
    })
}

/// One tool's figures for one scenario, as nginx's access log counts them
/// (request lines, headers and bodies, both ways), so that every tool
/// measured through the same nginx is counted the same way.
#[derive(Debug, Clone)]
pub struct StaticRow {
    pub scenario: &'static str,
    pub tool: &'static str,
    /// Bytes of the changed file: what a full fetch moves, without headers.
    pub file_bytes: u64,
    /// Client to server.
    pub sent_bytes: u64,
    /// Server to client.
    pub received_bytes: u64,
    pub requests: u64,
    pub wall: Duration,
}

impl StaticRow {
    pub fn moved_bytes(&self) -> u64 {
        self.sent_bytes + self.received_bytes
    }
}

/// The static path against zsync, through one real nginx, on S1, S2 and S7
/// (S7: S1's file again, unchanged) at `scale`. A folder is served with
/// the export under `site/` (made by [`crate::server::Export::write_static`])
/// and zsync's control file under `zsync/` (made by `zsyncmake`, as its
/// manual says, pointing at `../site/data.bin`); both clients start from
/// the old file and must end with the new one, byte for byte.
pub async fn static_against_zsync(dir: &Path, scale: f64) -> Result<Vec<StaticRow>, DemoError> {
    let len = ((FULL_LEN as f64 * scale) as usize).max(1 << 16);
    let mut rows = Vec::new();
    for scenario in [FileScenario::S1, FileScenario::S2] {
        let pair = scenario.generate(len);
        let www = dir.join(format!("{}-www", scenario.id()));
        let site = www.join("site");
        std::fs::create_dir_all(&site)?;
        std::fs::create_dir_all(www.join("zsync"))?;
        std::fs::write(site.join("data.bin"), &pair.old)?;
        publish(&www)?;
        let nginx = crate::harness::Nginx::serve(&www, "")?;
        let site_url = format!("{}site/", nginx.url);
        let zsync_url = format!("{}zsync/data.bin.zsync", nginx.url);
        // The client side: a working copy and a plain copy of the old file.
        let wc = dir.join(format!("{}-wc", scenario.id()));
        let mut copy = WorkingCopy::open_or_create(&wc, &site_url).map_err(err)?;
        copy.sync(
            &HttpRemote::new(&site_url, None, None).map_err(err)?,
            SyncOptions::default(),
        )
        .await?;
        let plain = dir.join(format!("{}-plain", scenario.id()));
        std::fs::create_dir_all(&plain)?;
        std::fs::write(plain.join("old.bin"), &pair.old)?;

        std::fs::write(site.join("data.bin"), &pair.new)?;
        publish(&www)?;
        for again in [false, true] {
            let id = match (scenario, again) {
                (FileScenario::S1, true) => "S7",
                (_, true) => continue,
                _ => scenario.id(),
            };
            let file_bytes = if again { 0 } else { pair.new.len() as u64 };
            let started = Instant::now();
            let from = nginx.settled_requests().len();
            let remote = HttpRemote::new(&site_url, None, None).map_err(err)?;
            copy.sync(&remote, SyncOptions::default()).await?;
            if std::fs::read(wc.join("data.bin"))? != pair.new {
                return Err(err(format!("{id}: the static path gave the wrong file")));
            }
            rows.push(counted(
                &nginx,
                from,
                id,
                "InterSync static",
                file_bytes,
                started,
            ));

            let started = Instant::now();
            let from = nginx.settled_requests().len();
            let out = plain.join(if again { "again.bin" } else { "new.bin" });
            let base = plain.join(if again { "new.bin" } else { "old.bin" });
            run_zsync(&base, &out, &zsync_url).await?;
            if std::fs::read(&out)? != pair.new {
                return Err(err(format!("{id}: zsync gave the wrong file")));
            }
            rows.push(counted(&nginx, from, id, "zsync", file_bytes, started));
        }
    }
    Ok(rows)
}

/// Brings `www/site/.intersync/` and `www/zsync/data.bin.zsync` up to date.
fn publish(www: &Path) -> Result<(), DemoError> {
    let export = crate::server::Export::open(&www.join("site"), Default::default()).map_err(err)?;
    export.write_static().map_err(err)?;
    let made = crate::harness::program("zsyncmake")?
        .arg("-o")
        .arg(www.join("zsync/data.bin.zsync"))
        .args(["-u", "../site/data.bin"])
        .arg(www.join("site/data.bin"))
        .stdout(std::process::Stdio::null())
        .status()?;
    if !made.success() {
        return Err(err(format!("zsyncmake failed: {made}")));
    }
    Ok(())
}

async fn run_zsync(base: &Path, out: &Path, url: &str) -> Result<(), DemoError> {
    let mut command = crate::harness::program("zsync")?;
    command
        .arg("-q")
        .arg("-i")
        .arg(base)
        .arg("-o")
        .arg(out)
        .arg(url)
        .current_dir(out.parent().unwrap_or(Path::new(".")))
        .stdout(std::process::Stdio::null());
    let status = tokio::task::spawn_blocking(move || command.status())
        .await
        .map_err(err)??;
    if !status.success() {
        return Err(err(format!("zsync failed: {status}")));
    }
    Ok(())
}

fn counted(
    nginx: &crate::harness::Nginx,
    from: usize,
    scenario: &'static str,
    tool: &'static str,
    file_bytes: u64,
    started: Instant,
) -> StaticRow {
    let requests = nginx.settled_requests();
    let mine = &requests[from.min(requests.len())..];
    StaticRow {
        scenario,
        tool,
        file_bytes,
        sent_bytes: mine.iter().map(|r| r.received).sum(),
        received_bytes: mine.iter().map(|r| r.sent).sum(),
        requests: mine.len() as u64,
        wall: started.elapsed(),
    }
}
