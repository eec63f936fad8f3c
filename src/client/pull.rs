//! Pull: follow the journal to the server's tree, scan the disk, plan
//! ([`reconcile`](super::reconcile)) and carry the plan out: move
//! conflicting local versions aside, remove what went, install what came
//! (each file by the cheapest way, [`fetch`](super::fetch)), set
//! attributes. Returns the new base rather than writing it, so that the
//! round saves it once the disk matches.
//!
//! A working copy mounted through presto shares its placeholders with the
//! mount, which may fetch one at any moment: the plan is made from a
//! snapshot of them, and every step that depends on one looks again when
//! its turn comes.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs;

use intersync_protocol::{TreePath, Version};

use super::fetch::batch::{self, Outcome};
use super::fetch::{self, Here, Ways, set_attrs};
use super::follow::{self, Followed};
use super::reconcile::{self, FileInstall, Install, Plan, Removal, same, same_content};
use super::working_copy::{Cursor, WorkingCopy};
use super::{Change, SyncError, SyncOptions, SyncReport};
use crate::transport::{Remote, TransportError};
use crate::tree::TreeState;
use crate::tree::scan::{self, CachedStat, Index, StatKey};

/// What a pull changed in the working copy's memory of the server.
pub struct Pulled {
    /// The new base: the server's tree (but where this pull could not
    /// bring a path in, what the disk still has), with the stats of what
    /// the disk is known to hold. `None`: the base as it was.
    pub base: Option<Index>,
    pub cursor: Cursor,
    pub server_id: String,
    /// The source is a static export: read only.
    pub static_export: bool,
    /// The server speaks HTTP/2 in cleartext (its head says so).
    pub http2: bool,
    /// The disk filled up: the files not brought in wait for the next
    /// round (the push still goes); the error to end the sync with.
    pub disk_full: Option<SyncError>,
    /// Where the new base is not the server's tree: the server's entries
    /// (see [`Saved::server_differs`](super::working_copy::Saved)).
    pub server_differs: BTreeMap<TreePath, Option<crate::tree::Entry>>,
    /// The scan this pull made, when it found no local change or the pull
    /// changed nothing (on disk or in the base): what a push would find by
    /// scanning again.
    pub scan: Option<Scanned>,
}

/// A scan against the base: the disk's tree, and the operations that
/// bring the base to it.
pub struct Scanned {
    pub local: Index,
    pub ops: Vec<intersync_protocol::kml::Op>,
}

/// One pull (see the module documentation).
pub async fn pull(
    wc: &WorkingCopy,
    remote: &impl Remote,
    options: SyncOptions,
    report: &mut SyncReport,
) -> Result<Pulled, SyncError> {
    let started = std::time::Instant::now();
    let Followed {
        tree: server,
        cursor,
        head,
    } = follow::server_tree(wc, remote).await?;
    tracing::debug!(ms = started.elapsed().as_millis(), "followed the journal");
    let ways = Ways {
        patches: head.patches && !head.static_export,
        by_blocks: head.static_export || options.cacheable_reads,
        batch: !head.static_export && !options.cacheable_reads,
        parallel: options.connections,
    };
    // The disk as it is, against the base.
    let mut scanned = wc.saved.base.clone();
    let ops = wc.scan(&mut scanned)?.ops;
    tracing::debug!(
        ms = started.elapsed().as_millis(),
        ops = ops.len(),
        "scanned"
    );
    let placeholders: BTreeSet<TreePath> = wc.placeholders().paths().into_iter().collect();
    if ops.is_empty()
        && server.seq == wc.saved.base.state.seq
        && wc.saved.server_differs.is_empty()
        && (placeholders.is_empty() || options.lazy)
    {
        // Neither side moved since the last sync: the disk is the base,
        // which is the server's tree. Nothing to plan, nothing to store.
        drop_partials_except(wc, &HashSet::new());
        return Ok(Pulled {
            base: None,
            server_differs: BTreeMap::new(),
            scan: Some(Scanned {
                local: scanned,
                ops,
            }),
            cursor,
            server_id: head.server_id,
            static_export: head.static_export,
            http2: head.http2,
            disk_full: None,
        });
    }
    let stamp = scan::utc_stamp(scan::now_ns() / 1_000_000_000);
    let plan = reconcile::plan(&reconcile::Inputs {
        base: &wc.saved.base.state,
        server: &server,
        local: &scanned.state,
        placeholders: &placeholders,
        lazy: options.lazy,
        node: wc.node().0,
        stamp: &stamp,
    })
    .map_err(|e| SyncError::local(wc.root(), e))?;
    report.conflicts.extend(plan.conflicts.iter().cloned());
    tracing::debug!(ms = started.elapsed().as_millis(), "planned");
    let quiet = plan.does_nothing();
    let mut run = Run {
        wc,
        plan,
        report,
        skipped: Vec::new(),
        installed: HashMap::new(),
        undeleted: Vec::new(),
        disk_full: None,
        // Counted only where packs may be read (no batched fetches): a
        // smart server's pull does not walk the tree for it.
        small_files: match ways.batch {
            true => 0,
            false => server
                .iter()
                .filter(|(_, e)| {
                    matches!(e.kind, crate::tree::EntryKind::File { size, .. } if size < batch::MAX_BATCHED)
                })
                .count() as u64,
        },
    };
    run.drop_stale_partials();
    run.asides()?;
    run.removals(&scanned.state)?;
    run.installs(remote, ways).await?;
    run.leftovers()?;
    run.attributes()?;
    let (base, server_differs) = run.new_base(server, &scanned);
    tracing::debug!(ms = started.elapsed().as_millis(), "carried out");
    // With no local changes, the disk is the new base (but for what the
    // round itself is not to push): a push would scan for nothing. A
    // change made since the scan is found next round, as one made after a
    // push's own scan would be.
    let unchanged = quiet && run.skipped.is_empty() && base.state == wc.saved.base.state;
    let scan = (ops.is_empty() || unchanged).then_some(Scanned {
        local: scanned,
        ops,
    });
    Ok(Pulled {
        base: Some(base),
        server_differs,
        scan,
        cursor,
        server_id: head.server_id,
        static_export: head.static_export,
        http2: head.http2,
        disk_full: run.disk_full,
    })
}

/// Removes the partial downloads of versions not `wanted`.
fn drop_partials_except(wc: &WorkingCopy, wanted: &HashSet<String>) {
    let Ok(entries) = fs::read_dir(wc.partial_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !wanted.contains(name.to_string_lossy().as_ref()) {
            tracing::debug!(partial = ?name, "removing a partial download no longer wanted");
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// A plan being carried out, and what happened so far.
struct Run<'a> {
    wc: &'a WorkingCopy,
    plan: Plan,
    report: &'a mut SyncReport,
    /// Files this pull could not bring in (the server's copy moved on, or
    /// the result was not the version): the base keeps what it had.
    skipped: Vec<TreePath>,
    /// The stat of each file right after it was installed.
    installed: HashMap<TreePath, CachedStat>,
    /// Folders not empty when their turn came, deepest first.
    undeleted: Vec<TreePath>,
    /// The disk filled up: no more fetches this round.
    disk_full: Option<SyncError>,
    /// Files of the server's tree small enough to be packed (how much
    /// reading a static export's pack indexes would cost).
    small_files: u64,
}

impl Run<'_> {
    /// Partial downloads of versions this pull does not want (the server
    /// deleted or changed the file since) are removed: they would
    /// otherwise hold their space forever, on a disk that may be full
    /// because of them.
    fn drop_stale_partials(&self) {
        let wanted: HashSet<String> = self
            .plan
            .installs
            .iter()
            .filter_map(|i| match i {
                Install::File(f) => Some(f.version.to_string()),
                _ => None,
            })
            .collect();
        drop_partials_except(self.wc, &wanted);
    }

    fn pulled(&mut self, path: &TreePath, what: impl Into<String>) {
        self.report.pulled.push(Change {
            path: path.clone(),
            what: what.into(),
        });
    }

    /// Local versions moved out of the server's way.
    fn asides(&mut self) -> Result<(), SyncError> {
        let root = self.wc.root();
        for (from, to) in &self.plan.asides {
            fs::rename(from.under(root), to.under(root)).map_err(|e| SyncError::local(from, e))?;
        }
        Ok(())
    }

    /// A removal that did not happen: the disk still has what the scan found.
    fn keep_in_local(&mut self, p: &TreePath, scanned: &TreeState) {
        if let Some(e) = scanned.get(p) {
            self.plan.local.insert(p.clone(), e.clone());
        }
    }

    fn removals(&mut self, scanned: &TreeState) -> Result<(), SyncError> {
        let root = self.wc.root().to_owned();
        for removal in std::mem::take(&mut self.plan.removals) {
            let (p, gone) = match &removal {
                Removal::Placeholder(p) => {
                    self.wc.placeholders().remove(p, None);
                    continue;
                }
                Removal::Dir(p) => (p, fs::remove_dir(p.under(&root))),
                Removal::File(p) => (p, fs::remove_file(p.under(&root))),
            };
            match gone {
                Ok(()) => self.pulled(p, "deleted"),
                // Not empty yet: files kept for their content go later, then
                // this is tried again; local files keep it, to be pushed.
                Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {
                    self.keep_in_local(p, scanned);
                    self.undeleted.push(p.clone());
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    self.keep_in_local(p, scanned)
                }
                Err(e) => return Err(SyncError::local(p, e)),
            }
        }
        Ok(())
    }

    async fn installs(&mut self, remote: &impl Remote, ways: Ways) -> Result<(), SyncError> {
        let root = self.wc.root().to_owned();
        let mut moves = std::mem::take(&mut self.plan.moves);
        let mut files = Vec::new();
        for install in std::mem::take(&mut self.plan.installs) {
            match install {
                Install::Dir { path, mode } => {
                    let full = path.under(&root);
                    fs::create_dir(&full)
                        .or_else(|e| if full.is_dir() { Ok(()) } else { Err(e) })
                        .map_err(|e| SyncError::local(&path, e))?;
                    fs::set_permissions(&full, fetch::remote_mode(mode))
                        .map_err(|e| SyncError::local(&path, e))?;
                    self.pulled(&path, "folder created");
                }
                Install::Symlink { path, target } => {
                    let full = path.under(&root);
                    let _ = fs::remove_file(&full);
                    let target: &std::ffi::OsStr =
                        std::os::unix::ffi::OsStrExt::from_bytes(&target);
                    std::os::unix::fs::symlink(target, &full)
                        .map_err(|e| SyncError::local(&path, e))?;
                    self.pulled(&path, "symlink");
                }
                Install::File(file) => files.push(file),
            }
        }
        // Files in tree order: what has its content here first, then the
        // small ones together, the others one by one.
        let mut batched = Vec::new();
        for file in files {
            if self.left_lazy(&file, &moves) {
                continue;
            }
            if self.disk_full.is_some() {
                self.skipped.push(file.path);
                continue;
            }
            if !batch::batched(&file) {
                self.by_ladder(remote, file, ways, &mut moves).await?;
                continue;
            }
            let mut here = Here {
                wc: self.wc,
                local: &self.plan.local,
                moves: &mut moves,
            };
            let want = batch::wanted(&file);
            let local = fetch::fetch_locally(
                &mut here,
                remote,
                &want,
                file.copy_from.as_ref(),
                self.report,
            )?;
            match local {
                Some(version) => self.installed_as(file, Ok(version), None)?,
                None => batched.push(file),
            }
        }
        let mut here = Here {
            wc: self.wc,
            local: &self.plan.local,
            moves: &mut moves,
        };
        let batched = if self.disk_full.is_some() {
            self.skipped.extend(batched.into_iter().map(|f| f.path));
            Vec::new()
        } else {
            batched
        };
        let (outcomes, stopped) = batch::fetch(
            &mut here,
            remote,
            batched,
            ways,
            self.small_files,
            self.report,
        )
        .await?;
        if stopped.is_some() {
            self.disk_full = stopped;
        }
        let mut ladder = Vec::new();
        for (file, outcome) in outcomes {
            match outcome {
                Outcome::Installed(version, stat) => {
                    fetch::keep(self.wc, &batch::wanted(&file), version);
                    self.installed_as(file, Ok(version), stat)?;
                }
                Outcome::Skipped => self.skipped.push(file.path),
                Outcome::Ladder if self.disk_full.is_some() => self.skipped.push(file.path),
                Outcome::Ladder => ladder.push(file),
            }
        }
        self.plan.moves = moves;
        self.small_ones_by_ladder(remote, ladder, ways).await
    }

    /// Small files a batch could not bring (a static export's edits, which
    /// are a signature and ranges each), by the one-file ladder, up to
    /// `ways.parallel` at once: a round trip or two each, so many in
    /// flight. What is here to copy or move was tried before the batch.
    async fn small_ones_by_ladder(
        &mut self,
        remote: &impl Remote,
        files: Vec<FileInstall>,
        ways: Ways,
    ) -> Result<(), SyncError> {
        use futures_util::StreamExt;
        let (wc, local) = (self.wc, &self.plan.local);
        let results: Vec<_> = futures_util::stream::iter(files)
            .map(|file| async move {
                let mut moves = HashMap::new();
                let mut report = SyncReport::default();
                let got = {
                    let mut here = Here {
                        wc,
                        local,
                        moves: &mut moves,
                    };
                    let want = batch::wanted(&file);
                    fetch::fetch(
                        &mut here,
                        remote,
                        &want,
                        file.copy_from.as_ref(),
                        ways,
                        &mut report,
                    )
                    .await
                };
                (file, got, report)
            })
            .buffered(ways.parallel.max(1))
            .collect()
            .await;
        for (file, got, report) in results {
            self.report.absorb(report);
            self.installed_as(file, got, None)?;
        }
        Ok(())
    }

    /// Lazy: a file with nothing here to build it from waits, as a
    /// placeholder, until it is opened; unless the mount fetched it, or
    /// the copy it could be built from, since the plan was made
    /// (placeholders only go away meanwhile, so that is all that can
    /// change). Whether it was left as a placeholder.
    fn left_lazy(&self, file: &FileInstall, moves: &HashMap<Version, Vec<TreePath>>) -> bool {
        let placeholders = self.wc.placeholders();
        let still_nothing_here = placeholders.contains(&file.path) || file.local_missing;
        let still_no_copy = !moves.contains_key(&file.version)
            && file
                .copy_from
                .as_ref()
                .is_none_or(|q| placeholders.contains(q));
        if file.leave_lazy && still_nothing_here && still_no_copy {
            placeholders.insert(file.path.clone(), file.entry.clone());
            return true;
        }
        false
    }

    /// One file by the ladder (see `client::fetch`).
    async fn by_ladder(
        &mut self,
        remote: &impl Remote,
        file: FileInstall,
        ways: Ways,
        moves: &mut HashMap<Version, Vec<TreePath>>,
    ) -> Result<(), SyncError> {
        let want = batch::wanted(&file);
        let mut here = Here {
            wc: self.wc,
            local: &self.plan.local,
            moves,
        };
        let got = fetch::fetch(
            &mut here,
            remote,
            &want,
            file.copy_from.as_ref(),
            ways,
            self.report,
        )
        .await;
        self.installed_as(file, got, None)
    }

    /// What a fetch of `file` came to: installed (its stat noted: the one
    /// the install took, else one taken now), or left for the next round.
    fn installed_as(
        &mut self,
        file: FileInstall,
        got: Result<Version, SyncError>,
        stat: Option<CachedStat>,
    ) -> Result<(), SyncError> {
        match got {
            Ok(got) if got == file.version => {
                self.wc.placeholders().remove(&file.path, None);
                let seen_ns = scan::now_ns();
                let stat = stat.or_else(|| {
                    let meta = fs::symlink_metadata(file.path.under(self.wc.root())).ok()?;
                    Some(CachedStat {
                        key: StatKey::of(&meta),
                        seen_ns,
                    })
                });
                if let Some(stat) = stat {
                    self.installed.insert(file.path, stat);
                }
            }
            Ok(_) | Err(SyncError::Transport(TransportError::Changed { .. })) => {
                self.skipped.push(file.path)
            }
            // The disk is full: the fetching stops here, the sync does not.
            Err(e) if e.is_disk_full() => {
                tracing::warn!(path = %file.path, error = %crate::monitor::Chain(&e), "the disk is full: no more files are fetched this round");
                self.skipped.push(file.path);
                self.disk_full = Some(e);
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Files kept for their content that no install wanted, then the
    /// folders that were not empty before them (deepest first).
    fn leftovers(&mut self) -> Result<(), SyncError> {
        let root = self.wc.root().to_owned();
        for p in std::mem::take(&mut self.plan.moves).into_values().flatten() {
            match fs::remove_file(p.under(&root)) {
                Ok(()) => self.pulled(&p, "deleted"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(SyncError::local(&p, e)),
            }
        }
        for p in std::mem::take(&mut self.undeleted) {
            if fs::remove_dir(p.under(&root)).is_ok() {
                self.plan.local.remove(&p);
                self.pulled(&p, "deleted");
            }
        }
        Ok(())
    }

    /// The server's attributes on what did not change content.
    fn attributes(&mut self) -> Result<(), SyncError> {
        let placeholders = self.wc.placeholders().clone();
        for (p, s) in std::mem::take(&mut self.plan.attributes) {
            if self.skipped.contains(&p) {
                continue;
            }
            if placeholders.contains(&p) {
                placeholders.retain(|q, e| {
                    if *q == p {
                        *e = s.clone();
                    }
                    true
                });
                continue;
            }
            if let Some(l) = self.plan.local.get(&p)
                && l.kind == s.kind
                && !same(Some(l), Some(&s))
            {
                set_attrs(&p.under(self.wc.root()), &s).map_err(|e| SyncError::local(&p, e))?;
                self.pulled(&p, "attributes");
            }
        }
        Ok(())
    }

    /// The new base: the server's tree, but where this pull could not bring
    /// a file in, what the base had (so that it is not pushed as an edit);
    /// stats only where the disk is known to hold the entry.
    fn new_base(
        &self,
        mut server: TreeState,
        scanned: &Index,
    ) -> (Index, BTreeMap<TreePath, Option<crate::tree::Entry>>) {
        let base = &self.wc.saved.base;
        let mut differs = BTreeMap::new();
        for p in &self.skipped {
            if base.state.get(p) != server.get(p) {
                differs.insert(p.clone(), server.get(p).cloned());
            }
            match base.state.get(p) {
                Some(e) => server.insert(p.clone(), e.clone()),
                None => {
                    server.remove(p);
                }
            }
        }
        let mut stats = HashMap::with_capacity(server.len());
        let root = self.wc.root();
        for (p, e) in server.iter() {
            if self.plan.kept(p) {
                continue;
            }
            // What the server left alone keeps its stat even where the disk
            // moved on: the next scan needs it to recognise a local rename.
            if !self.plan.server_changed(p)
                && let Some(old) = base.stats.get(p)
            {
                stats.insert(p.clone(), *old);
                continue;
            }
            // Installed by this pull: its stat right after the install. An
            // edit since moves its ctime (or is racy with it), so the next
            // scan hashes it and finds the edit; no second stat here.
            if let Some(at_install) = self.installed.get(p) {
                stats.insert(p.clone(), *at_install);
                continue;
            }
            let Ok(meta) = fs::symlink_metadata(p.under(root)) else {
                continue;
            };
            // Keep a stat only where the disk is known to hold this entry.
            if let Some(on_disk) = scanned.stats.get(p)
                && same_content(self.plan.local.get(p), Some(e))
                && on_disk.key == StatKey::of(&meta)
            {
                stats.insert(p.clone(), *on_disk);
            }
        }
        // A placeholder is a file of the base that the disk does not have.
        self.wc.placeholders().retain(|p, e| {
            server.get(p).is_some_and(|s| {
                s.version().is_some() && {
                    *e = s.clone();
                    true
                }
            }) && fs::symlink_metadata(p.under(root)).is_err()
        });
        (Index::new(server, stats), differs)
    }
}
