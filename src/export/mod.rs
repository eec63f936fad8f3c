//! The journaled tree: a folder, its journal (the KML) and the index that
//! says what the journal last recorded. Every change, whether it came
//! through the server's API, through a presto mount or was made in the
//! folder by another program (found by a scan, which [`watch`] wakes), goes
//! through here to be journaled before anyone is told it happened.
//!
//! It belongs to no front end: the server serves it, presto journals into
//! it, and a mounted working copy keeps its cache's journal in one. It
//! trusts the folder only as far as a scan checks it; files are opened
//! beneath the root ([`crate::beneath`]), never through a symbolic link.

pub mod index_db;
pub mod packs;
pub mod watch;

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::{Mutex, MutexGuard};

use intersync_protocol::api::{CheckpointRef, FORMAT_VERSION, Head, SegmentRef};
use intersync_protocol::kml::{NodeId, Op};
use intersync_protocol::path::STATE_DIR;
use intersync_protocol::{TreePath, Version};
use rand::RngCore;
use thiserror::Error;
use tokio::sync::watch as latest;

use crate::delta::{MappedFile, Signature, SignatureOptions, zpatch};
use crate::install::PendingFile;
use crate::kml::{Journal, JournalError, JournalOptions};
use crate::tree::scan::{self, CachedStat, Index, StatKey};
use crate::tree::{Entry, EntryKind, TreeState};
use crate::versions::{Budget, VersionStore};
use index_db::IndexDb;
use intersync_protocol::signature::SignatureFormat;

#[derive(Debug, Error)]
pub enum ExportError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("{}", path.display())]
    Io { path: PathBuf, source: io::Error },
    /// `.intersync/` went away, or was made anew, under the running
    /// export: its history is not the one this process holds.
    #[error(
        "the journal in {} was {how} while the server ran (by another program: an \
         `rsync --delete` into the export, say); nothing more is journaled or served from it: \
         start the server again to journal the tree anew (working copies then sync afresh)",
        state_dir.display()
    )]
    JournalGone {
        state_dir: PathBuf,
        how: &'static str,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The exported tree.
pub struct Export {
    root: PathBuf,
    state_dir: PathBuf,
    /// The device and inode `state_dir` had when opened.
    state_dir_id: (u64, u64),
    node: NodeId,
    inner: Mutex<Inner>,
    /// The latest sequence number, for long-polls of the head document.
    seq: latest::Sender<u64>,
    /// What is left out of the export (an rsync module's exclude rules).
    hide: Option<Arc<scan::Hide>>,
    /// An rsync module's `incoming chmod`, applied to modes clients write.
    incoming_chmod: Option<intersync_compat::chmod::Chmod>,
    /// Whether writers may make symbolic links that lead out of the tree.
    outside_links: bool,
    /// Versions clients hold, kept for exact patches from them.
    versions: Option<Arc<VersionStore>>,
    /// Versions to keep in the background: a batch of many files is not
    /// held up creating a copy of each.
    keeper: Option<std::sync::mpsc::SyncSender<(Version, TreePath)>>,
    /// The packs' list as last written for a smart server's readers
    /// through caches, and the checkpoint it was written at.
    packs: Mutex<Option<(u64, Arc<Vec<u8>>)>>,
    /// Files the first scan hashed: what the index did not vouch for.
    hashed_at_open: u64,
}

pub struct Inner {
    pub journal: Journal,
    pub index: Index,
    /// Where the index is saved (none if it could not be opened).
    index_db: Option<IndexDb>,
    /// Which path has each version, as of a journal sequence number:
    /// rebuilt on the first lookup after the journal moved.
    /// In order, so that a version can be found by its first bytes too.
    by_version: Option<(u64, std::collections::BTreeMap<Version, TreePath>)>,
}

impl Inner {
    /// Drops every stat: the state moved where they were taken (a scan
    /// the journal did not take), so none can vouch for it. The next scan
    /// hashes everything, and the next save rewrites the index.
    fn forget_stats(&mut self) {
        self.index.stats.clear();
        self.index.touched = Some(scan::Dirty::All);
    }

    fn by_version(&mut self) -> &std::collections::BTreeMap<Version, TreePath> {
        let seq = self.index.state.seq;
        if self.by_version.as_ref().is_none_or(|(at, _)| *at != seq) {
            let map = self
                .index
                .state
                .iter()
                .filter_map(|(p, e)| Some((e.version()?, p.clone())))
                .collect();
            self.by_version = Some((seq, map));
        }
        &self.by_version.as_ref().expect("just made").1
    }

    /// A path whose file has `version` now, as journaled.
    pub fn path_of(&mut self, version: Version) -> Option<&TreePath> {
        self.by_version().get(&version)
    }

    /// A version some file has now that begins with `prefix` (the first
    /// in order, should two).
    pub fn version_with_prefix(&mut self, prefix: &[u8]) -> Option<Version> {
        let (mut low, mut high) = ([0u8; 32], [0xffu8; 32]);
        let n = prefix.len().min(32);
        low[..n].copy_from_slice(&prefix[..n]);
        high[..n].copy_from_slice(&prefix[..n]);
        self.by_version()
            .range(Version(low)..=Version(high))
            .next()
            .map(|(v, _)| *v)
    }
}

/// Versions waiting to be kept in the background, at most.
const KEEP_QUEUE: usize = 16 * 1024;

/// The static path's two signature levels of a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureLevel {
    Coarse,
    Fine,
}

/// A patch ready to serve: `len` bytes of `file` from its start.
pub struct Patch {
    pub file: File,
    pub len: u64,
    /// The length of the version it gives.
    pub result_len: u64,
}

/// What a scan of the folder added to the journal.
#[derive(Debug, Default)]
pub struct ScanReport {
    pub records: usize,
    pub hashed_files: u64,
    /// Files named as a write's temporaries (see [`scan::ScanOutcome`]).
    pub temporaries: Vec<PathBuf>,
}

impl Export {
    /// Opens `root` for export: recovers the journal, reconciles the folder
    /// with it (journaling what changed while nobody watched), and is ready
    /// to serve.
    pub fn open(root: &Path, options: JournalOptions) -> Result<Export, ExportError> {
        Export::open_hiding(root, options, None)
    }

    /// [`Export::open`], leaving out what `hide` hides: not journaled, not
    /// served, not writable.
    pub fn open_hiding(
        root: &Path,
        options: JournalOptions,
        hide: Option<Arc<scan::Hide>>,
    ) -> Result<Export, ExportError> {
        let started = std::time::Instant::now();
        let root = root.canonicalize().map_err(io_err(root))?;
        let state_dir = root.join(STATE_DIR);
        fs::create_dir_all(&state_dir).map_err(io_err(&state_dir))?;
        let state_dir_id = dev_ino(&state_dir).map_err(io_err(&state_dir))?;
        let node = node_id(&state_dir)?;
        // Only a crashed write leaves temporaries, and nothing is in flight
        // yet: those of the tree are found by the first scan, below.
        sweep_temporaries(&state_dir);
        // The journal and the index are read, and the folder walked, at
        // once: the walk needs neither, only its comparison does.
        let (journal, saved, walk) = std::thread::scope(|s| {
            let saved = s.spawn(|| {
                let db = IndexDb::open(&state_dir)?;
                let rows = db.load()?;
                Ok::<_, rusqlite::Error>((db, rows))
            });
            let walk = s.spawn(|| scan::walk_tree(&root, hide.as_deref()));
            let journal = Journal::open(&state_dir, options);
            (
                journal,
                saved.join().expect("reading the index does not panic"),
                walk.join().expect("the walk does not panic"),
            )
        });
        let (journal, state, recovery) = journal?;
        if let Some((path, offset, bytes)) = &recovery.truncated {
            tracing::warn!(path = %path.display(), offset, bytes, "KML recovered from a torn write");
        }
        tracing::debug!(ms = started.elapsed().as_millis(), "recovered the journal");
        let (index_db, stats) = match saved {
            Ok((db, rows)) => (Some(db), index_db::stats_for(rows, &state)),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "could not open the index; every start hashes the whole tree"
                );
                (None, Default::default())
            }
        };
        // An index that vouches for nothing is written whole at its first
        // save, rather than path by path.
        let touched = match stats.is_empty() {
            true => scan::Dirty::All,
            false => scan::Dirty::default(),
        };
        let mut index = Index::new(state, stats);
        index.touched = Some(touched);
        let _ = fs::remove_file(state_dir.join(index_db::LEGACY_FILE_NAME));
        tracing::debug!(ms = started.elapsed().as_millis(), "loaded the index");
        let seq = latest::Sender::new(journal.last_seq());
        let mut export = Export {
            root,
            state_dir,
            state_dir_id,
            node,
            inner: Mutex::new(Inner {
                journal,
                index,
                index_db,
                by_version: None,
            }),
            seq,
            hide,
            incoming_chmod: None,
            outside_links: false,
            versions: None,
            keeper: None,
            packs: Mutex::new(None),
            hashed_at_open: 0,
        };
        let walk = walk.map_err(io_err(&export.root))?;
        let report = {
            let mut inner = export.lock();
            export.rescan_walked(&mut inner, walk)?
        };
        export.hashed_at_open = report.hashed_files;
        for path in report.temporaries {
            tracing::info!(path = %path.display(), "removing a temporary left by a crash");
            let _ = fs::remove_file(path);
        }
        tracing::debug!(ms = started.elapsed().as_millis(), "scanned the folder");
        export.save_index();
        tracing::debug!(ms = started.elapsed().as_millis(), "opened the export");
        Ok(export)
    }

    /// Keeps the versions clients hold in a store of `budget` under
    /// `.intersync/versions/`, to answer patches from them.
    pub fn with_versions(mut self, budget: Budget) -> Result<Export, ExportError> {
        let dir = self.state_dir.join("versions");
        let store = Arc::new(VersionStore::open(&dir, budget).map_err(io_err(&dir))?);
        let (tx, rx) = std::sync::mpsc::sync_channel::<(Version, TreePath)>(KEEP_QUEUE);
        let (keeper, root) = (store.clone(), self.root.clone());
        std::thread::Builder::new()
            .name("intersync-keeper".into())
            .spawn(move || {
                // Keeping is an economy for later: it yields the CPU to the
                // answers being served now (on Linux a nice value is a
                // thread's own).
                // SAFETY: setpriority changes only this thread's nice value.
                unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
                for (version, path) in rx {
                    // Opened again by name (a queue of open files would use
                    // up descriptors); kept only if it still is the version.
                    if let Ok(file) = crate::beneath::open_file(&root, &path)
                        && let Ok(meta) = file.metadata()
                        && meta.len() >= MIN_KEPT_LEN
                    {
                        kept(version, keeper.put_file(version, &file, meta.len()));
                    }
                }
            })
            .map_err(io_err(&dir))?;
        self.versions = Some(store);
        self.keeper = Some(tx);
        Ok(self)
    }

    pub fn versions(&self) -> Option<&VersionStore> {
        self.versions.as_deref()
    }

    /// A client now holds `version`, the content of `file` (`len` bytes):
    /// keep it, if there is a store and it fits. Failing to keep it only
    /// costs a later patch, so it is reported, not returned.
    pub fn keep(&self, version: Version, file: &File, len: u64) {
        if let Some(store) = &self.versions
            && len >= MIN_KEPT_LEN
        {
            kept(version, store.put_file(version, file, len));
        }
    }

    /// [`Export::keep`] for the file at `path`, done in the background
    /// (skipped when too many wait: a later patch is only an economy).
    pub fn keep_soon(&self, version: Version, path: TreePath) {
        if let Some(keeper) = &self.keeper
            && keeper.try_send((version, path)).is_err()
        {
            tracing::debug!(%version, "too many versions waiting to be kept; not this one");
        }
    }

    /// [`Export::keep`] for content in memory (or mapped).
    pub fn keep_bytes(&self, version: Version, data: &[u8]) {
        if let Some(store) = &self.versions
            && data.len() as u64 >= MIN_KEPT_LEN
        {
            kept(
                version,
                store.put(version, &mut &data[..], data.len() as u64),
            );
        }
    }

    /// The patch from `from` to `to` (made once, then kept): its file and
    /// length, and the length of `to`. `None` when there is no store, the
    /// patch was not made and `from` is not kept or no file has `to` now, or
    /// the pair is too large for a patch window: the client takes the
    /// signature path then.
    pub fn patch(&self, from: Version, to: Version) -> Result<Option<Patch>, ExportError> {
        let Some(store) = &self.versions else {
            return Ok(None);
        };
        let store_err = |e| ExportError::Io {
            path: self.state_dir.join("versions"),
            source: e,
        };
        // A kept patch was made from both versions, checked: serve it as is.
        if let Some((file, len)) = store.patch(&from, &to).map_err(store_err)? {
            let mut head = [0u8; 18];
            let n = std::os::unix::fs::FileExt::read_at(&file, &mut head, 0).unwrap_or(0);
            if let Some(result_len) = zpatch::result_len(&head[..n]) {
                return Ok(Some(Patch {
                    file,
                    len,
                    result_len,
                }));
            }
        }
        let Some(new) = self.current_content(to)? else {
            return Ok(None);
        };
        let new_len = new.len() as u64;
        let Some(old) = store.get(&from).map_err(store_err)? else {
            return Ok(None);
        };
        if zpatch::window_log(old.len() as u64, new_len).is_none() {
            return Ok(None);
        }
        let (file, len) = store
            .put_patch(&from, &to, |out| {
                zpatch::encode(&old, &new, out)?;
                // A patch of bytes that vanished meanwhile is never kept.
                if old.intact() && new.intact() {
                    Ok(())
                } else {
                    Err(zpatch::PatchError::Write(io::Error::other(
                        "a version's file shrank while the patch was made",
                    )))
                }
            })
            .map_err(|e| match e {
                zpatch::PatchError::Write(e) => store_err(e),
                other => store_err(io::Error::other(other)),
            })?;
        // The client that asked will hold `to`: the next patch starts there.
        self.keep_bytes(to, &new);
        Ok(Some(Patch {
            file,
            len,
            result_len: new_len,
        }))
    }

    /// The content of `version` from the file that has it now (hashed to
    /// make sure), or from the store.
    fn current_content(&self, version: Version) -> Result<Option<MappedFile>, ExportError> {
        let path = self.lock().path_of(version).cloned();
        if let Some(path) = path
            && let Ok(file) = crate::beneath::open_file(&self.root, &path)
        {
            let data = MappedFile::map(&file).map_err(io_err(&path.under(&self.root)))?;
            if Version::of(&data) == version {
                return Ok(Some(data));
            }
        }
        match &self.versions {
            Some(store) => store.get(&version).map_err(io_err(&self.state_dir)),
            None => Ok(None),
        }
    }

    /// The file that has `version` now, opened, with its metadata: only
    /// while its stat still vouches for the journaled version, or after
    /// hashing to it (what is read from it after that may still differ,
    /// if another program writes it meanwhile; readers verify). `None`
    /// when no file has it.
    pub fn version_file(
        &self,
        version: Version,
    ) -> Result<Option<(File, fs::Metadata, TreePath)>, ExportError> {
        let (path, seen) = {
            let mut inner = self.lock();
            let Some(path) = inner.path_of(version).cloned() else {
                return Ok(None);
            };
            let seen = inner.index.stats.get(&path).copied();
            (path, seen)
        };
        let Ok(mut file) = crate::beneath::open_file(&self.root, &path) else {
            return Ok(None);
        };
        let full = path.under(&self.root);
        let meta = file.metadata().map_err(io_err(&full))?;
        if !seen.is_some_and(|s| s.vouches_for(&StatKey::of(&meta))) {
            let mut hasher = blake3::Hasher::new();
            hasher.update_reader(&mut file).map_err(io_err(&full))?;
            if Version::from_hasher(&hasher) != version {
                // Changed since it was journaled: the next scan records it.
                return Ok(None);
            }
            io::Seek::rewind(&mut file).map_err(io_err(&full))?;
        }
        Ok(Some((file, meta, path)))
    }

    /// Applies `incoming chmod` to the modes clients write from now on.
    pub fn with_incoming_chmod(mut self, chmod: Option<intersync_compat::chmod::Chmod>) -> Export {
        self.incoming_chmod = chmod;
        self
    }

    /// Lets writers make symbolic links that lead out of the tree (refused
    /// by default, see [`Export::link_allowed`]).
    pub fn with_outside_links(mut self, allowed: bool) -> Export {
        self.outside_links = allowed;
        self
    }

    /// Whether a writer may have a symbolic link at `path` point at
    /// `target`: unless outside links are allowed, the target must be
    /// relative and stay inside the tree, read as rsync's `--safe-links`
    /// reads it (each `..` climbs one folder from the link's own, and
    /// never above the root). A link out would be followed by a web
    /// server serving the folder, and by every program in every working
    /// copy that receives it.
    pub fn link_allowed(&self, path: &TreePath, target: &[u8]) -> bool {
        self.outside_links || link_stays_inside(path, target)
    }

    /// The mode a client's write gets: `mode` with `incoming chmod`
    /// applied (to the file's current mode, or 0644/0755, when the client
    /// names none).
    pub fn incoming_mode(&self, mode: Option<u32>, is_dir: bool) -> Option<u32> {
        // Set-id and sticky bits never come from a remote writer: a client
        // could otherwise plant a set-uid program owned by the server's
        // user. (A module's `incoming chmod` may still set them.)
        let mode = mode.map(|m| m & 0o777);
        let Some(c) = &self.incoming_chmod else {
            return mode;
        };
        let base = mode.unwrap_or(if is_dir { 0o755 } else { 0o644 });
        Some(c.apply(base, is_dir))
    }

    /// Whether `path` is left out of the export: it, or a folder above it,
    /// is hidden.
    pub fn hidden(&self, path: &TreePath, is_dir: bool) -> bool {
        let Some(hide) = &self.hide else {
            return false;
        };
        let mut above = path.parent();
        while let Some(dir) = above {
            if hide(&dir, true) {
                return true;
            }
            above = dir.parent();
        }
        hide(path, is_dir)
    }

    /// Files the scan at open hashed: those the saved index did not vouch
    /// for.
    pub fn hashed_at_open(&self) -> u64 {
        self.hashed_at_open
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether `.intersync/` is still the one opened: not removed, not
    /// made anew (a stat; the server checks every few seconds and before
    /// every append).
    pub fn journal_intact(&self) -> Result<(), ExportError> {
        let how = match dev_ino(&self.state_dir) {
            Ok(id) if id == self.state_dir_id => return Ok(()),
            Ok(_) => "made anew",
            Err(_) => "removed",
        };
        Err(ExportError::JournalGone {
            state_dir: self.state_dir.clone(),
            how,
        })
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn subscribe(&self) -> latest::Receiver<u64> {
        self.seq.subscribe()
    }

    /// Scans the folder and journals whatever changed behind our back.
    pub fn rescan(&self) -> Result<ScanReport, ExportError> {
        let mut inner = self.lock();
        self.rescan_locked(&mut inner)
    }

    pub fn rescan_locked(&self, inner: &mut Inner) -> Result<ScanReport, ExportError> {
        let walk = scan::walk_tree(&self.root, self.hide.as_deref()).map_err(io_err(&self.root))?;
        self.rescan_walked(inner, walk)
    }

    /// [`Export::rescan_locked`] of what `walk` found.
    fn rescan_walked(
        &self,
        inner: &mut Inner,
        walk: scan::Walk,
    ) -> Result<ScanReport, ExportError> {
        let scanned = scan::scan_walked(&self.root, &mut inner.index, walk, None);
        let mut outcome = match scanned {
            Ok(outcome) => outcome,
            Err(e) => {
                inner.forget_stats();
                return Err(io_err(&self.root)(e));
            }
        };
        for skipped in &outcome.skipped {
            tracing::warn!(path = %skipped.path.display(), reason = %skipped.reason, "not exported");
        }
        let records = outcome.ops.len();
        if records > 0 {
            // The scan brought the state to the disk; the journal takes it
            // there again, with its own times, or leaves it as it was.
            let Inner { journal, index, .. } = &mut *inner;
            index.state.undo(std::mem::take(&mut outcome.undo));
            if let Err(e) = journal.append(self.node, outcome.ops, &mut index.state) {
                inner.forget_stats();
                return Err(e.into());
            }
            self.committed(inner);
        }
        Ok(ScanReport {
            records,
            hashed_files: outcome.hashed_files,
            temporaries: outcome.temporaries,
        })
    }

    /// Journals `ops` (already carried out on disk) and tells long-polls.
    pub fn journal_ops(&self, inner: &mut Inner, ops: Vec<Op>) -> Result<(), ExportError> {
        if ops.is_empty() {
            return Ok(());
        }
        self.journal_intact()?;
        let Inner { journal, index, .. } = &mut *inner;
        journal.append(self.node, ops, &mut index.state)?;
        self.committed(inner);
        Ok(())
    }

    fn committed(&self, inner: &mut Inner) {
        if inner.journal.wants_checkpoint() {
            let Inner { journal, index, .. } = &mut *inner;
            if let Err(e) = journal.write_checkpoint(&index.state) {
                // The journal itself is intact; a later commit tries again.
                tracing::warn!(error = %crate::monitor::Chain(&e), "could not write a checkpoint");
            }
        }
        self.seq.send_replace(inner.journal.last_seq());
    }

    /// Saves what changed in the index since the last save. The index only
    /// spares the next start some hashing (the journal is the truth), so
    /// this runs now and then and at shutdown, not on every change.
    pub fn save_index(&self) {
        let mut inner = self.lock();
        let Inner {
            index,
            index_db: Some(db),
            ..
        } = &mut *inner
        else {
            return;
        };
        let Some(touched) = index.touched.as_mut().filter(|t| !t.is_clean()) else {
            return;
        };
        let touched = std::mem::take(touched);
        if let Err(e) = db.save(index, &touched) {
            tracing::warn!(
                path = %db.path().display(), error = %e,
                "could not save the index; trying again, whole, later"
            );
            index.touched = Some(scan::Dirty::All);
        }
    }

    /// The head document.
    pub fn head(&self) -> Head {
        let inner = self.lock();
        let j = &inner.journal;
        Head {
            format: FORMAT_VERSION,
            server_id: self.node.to_string(),
            latest_seq: j.last_seq(),
            segments: j
                .segments()
                .iter()
                .map(|s| SegmentRef {
                    name: s.name(),
                    first_seq: s.first_seq,
                    last_seq: s.last_seq,
                    length: s.len,
                    sealed: s.sealed,
                })
                .collect(),
            checkpoint: j.checkpoint().map(|c| CheckpointRef {
                name: c.name(),
                seq: c.seq,
                length: c.len,
            }),
            static_export: false,
            http2: false,
            patches: self.versions.is_some(),
        }
    }

    /// The entry at `path` as journaled, after making sure the journal is
    /// not behind the disk for it (a changed stat triggers a rescan first).
    pub fn current(
        &self,
        inner: &mut Inner,
        path: &TreePath,
    ) -> Result<Option<Entry>, ExportError> {
        let on_disk = fs::symlink_metadata(path.under(&self.root))
            .ok()
            .map(|m| StatKey::of(&m));
        let known = inner.index.stats.get(path).map(|c| c.key);
        let settled = match (&on_disk, inner.index.state.get(path)) {
            (None, None) => true,
            (Some(stat), Some(entry)) if entry.is_dir() || Some(*stat) == known => true,
            _ => false,
        };
        if !settled {
            self.rescan_locked(inner)?;
        }
        Ok(inner.index.state.get(path).cloned())
    }

    /// The state as journaled.
    pub fn state(&self) -> TreeState {
        self.lock().index.state.clone()
    }

    pub fn kml_path(&self, name: &str) -> PathBuf {
        self.lock().journal.segment_path(name)
    }

    pub fn checkpoint_path(&self, name: &str) -> PathBuf {
        self.lock().journal.checkpoint_path(name)
    }

    /// Where the signature of a version is kept: `.intersync/sig/<hex>`,
    /// the URL path a plain web server serving the export answers it at.
    pub fn sig_cache(&self, version: &Version) -> PathBuf {
        self.state_dir.join("sig").join(version.to_string())
    }

    /// The signature of `version` (legacy MD4 format, the block-size
    /// policy's parameters): from the cache, or computed from the file that
    /// has that version now and then cached. `None` when no file has it.
    pub fn signature(&self, version: Version) -> Result<Option<Vec<u8>>, ExportError> {
        let cache = self.sig_cache(&version);
        if let Ok(bytes) = fs::read(&cache) {
            return Ok(Some(bytes));
        }
        let Some(path) = self.lock().path_of(version).cloned() else {
            return Ok(None);
        };
        let Ok(file) = crate::beneath::open_file(&self.root, &path) else {
            return Ok(None);
        };
        let data = MappedFile::map(&file).map_err(io_err(&path.under(&self.root)))?;
        let options = SignatureOptions::for_len(data.len() as u64, SignatureFormat::Md4Rollsum);
        let (sig, actual) = Signature::calculate(&data, options);
        if actual != version || !data.intact() {
            // Changed on disk since it was journaled: the next scan says so.
            return Ok(None);
        }
        let bytes = sig.into_bytes();
        if let Some(dir) = cache.parent() {
            fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        let mut pending = PendingFile::create(&cache).map_err(io_err(&cache))?;
        pending.write_all(&bytes).map_err(io_err(&cache))?;
        pending.install().map_err(io_err(&cache))?;
        Ok(Some(bytes))
    }

    /// Where a signature level of a version is kept: `sig/<hex>.coarse`
    /// or `sig/<hex>.fine`.
    pub fn level_path(&self, version: &Version, level: SignatureLevel) -> PathBuf {
        self.sig_cache(version).with_extension(match level {
            SignatureLevel::Coarse => "coarse",
            SignatureLevel::Fine => "fine",
        })
    }

    /// Writes the static path's two signature levels of `version` (see
    /// `delta::refine::static_levels`) unless they are there. Returns
    /// whether they are there now: not when the file is under
    /// `delta::refine::MIN_LEN` or no file has the version.
    pub fn write_levels(&self, version: Version) -> Result<bool, ExportError> {
        let coarse = self.level_path(&version, SignatureLevel::Coarse);
        let fine = self.level_path(&version, SignatureLevel::Fine);
        if coarse.exists() && fine.exists() {
            return Ok(true);
        }
        let Some(path) = self.lock().path_of(version).cloned() else {
            return Ok(false);
        };
        let Ok(file) = crate::beneath::open_file(&self.root, &path) else {
            return Ok(false);
        };
        let data = MappedFile::map(&file).map_err(io_err(&path.under(&self.root)))?;
        if (data.len() as u64) < crate::delta::refine::MIN_LEN {
            return Ok(false);
        }
        let (coarse_sig, fine_sig, actual) = crate::delta::refine::static_levels(&data);
        if actual != version || !data.intact() {
            // Changed on disk since it was journaled: the next scan says so.
            return Ok(false);
        }
        if let Some(dir) = fine.parent() {
            fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        // The coarse level last: a client that finds it finds both.
        for (dest, bytes) in [
            (&fine, fine_sig.as_bytes()),
            (&coarse, coarse_sig.as_bytes()),
        ] {
            let mut pending = PendingFile::create(dest).map_err(io_err(dest))?;
            pending.write_all(bytes).map_err(io_err(dest))?;
            pending.install().map_err(io_err(dest))?;
        }
        Ok(true)
    }

    /// Makes the export complete for a plain web server: a signature for
    /// every current version (and its two levels, for large files), none
    /// for versions gone, and the head document
    /// at `.intersync/head`, with packs of the small files of about
    /// `pack_size` bytes each (none when 0; see [`packs`]). Returns (files,
    /// signatures written).
    pub fn write_static(&self, pack_size: u64) -> Result<(u64, u64), ExportError> {
        let state = self.state();
        let mut files = 0;
        let mut written = 0;
        let mut current = std::collections::HashSet::new();
        for (_, entry) in state.iter() {
            if let Some(version) = entry.version() {
                files += 1;
                current.insert(version.to_string());
                if !self.sig_cache(&version).exists() {
                    self.signature(version)?;
                    written += 1;
                }
                // Only large files have levels: no need to open the rest.
                let min = crate::delta::refine::MIN_LEN;
                if matches!(entry.kind, EntryKind::File { size, .. } if size >= min) {
                    self.write_levels(version)?;
                }
            }
        }
        let sig_dir = self.state_dir.join("sig");
        if let Ok(entries) = fs::read_dir(&sig_dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let version = name.split_once('.').map_or(name.as_str(), |(v, _)| v);
                if !current.contains(version) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        let mut head = self.head();
        head.static_export = true;
        packs::write(&self.root, &self.state_dir.join("packs"), &state, pack_size)?;
        // A static export answers no patches whatever the field says;
        // left out, as when true, it costs every sync nothing.
        head.patches = true;
        let path = self.state_dir.join("head");
        let mut file = PendingFile::create(&path).map_err(io_err(&path))?;
        serde_json::to_writer(&mut file, &head).map_err(|e| io_err(&path)(io::Error::other(e)))?;
        file.install().map_err(io_err(&path))?;
        Ok((files, written))
    }

    /// The list of packs (`api::PackList`, as JSON) for clients reading
    /// through caches, which cannot send a fetch request: packs follow the
    /// checkpoints (what first clones read), so they are written again,
    /// keeping those still mostly current, when a newer checkpoint is
    /// there. One caller writes; the others wait for its list.
    pub fn pack_list(&self) -> Result<Arc<Vec<u8>>, ExportError> {
        let mut held = self.packs.lock().unwrap_or_else(|p| p.into_inner());
        let at = self.head().checkpoint.map_or(0, |c| c.seq);
        if let Some((seq, list)) = &*held
            && *seq == at
        {
            return Ok(list.clone());
        }
        let dir = self.state_dir.join("packs");
        let packs = packs::write(&self.root, &dir, &self.state(), packs::DEFAULT_SIZE)?;
        let list = Arc::new(packs::list_bytes(packs));
        *held = Some((at, list.clone()));
        Ok(list)
    }

    /// A pack's file, by a name the list gave (32 hex digits and `.pack`).
    pub fn pack_path(&self, name: &str) -> Option<PathBuf> {
        intersync_protocol::pack::is_name(name).then(|| self.state_dir.join("packs").join(name))
    }

    /// Records a file's stat after the API wrote it, so that serving it
    /// does not rescan (a later scan still hashes it while its mtime is too
    /// recent to trust).
    pub fn remember_stat(&self, inner: &mut Inner, path: &TreePath) {
        if let Ok(meta) = fs::symlink_metadata(path.under(&self.root)) {
            let cached = CachedStat {
                key: StatKey::of(&meta),
                seen_ns: scan::now_ns(),
            };
            inner.index.stats.insert(path.clone(), cached);
            inner.index.touch(path);
        }
    }
}

/// Versions smaller than this are not kept: one would cost the server a
/// file of its own and a block of disk, written on every hand-out, to save
/// a later pull less than a kilobyte (its whole content, compressed in a
/// fetch stream with its neighbours, costs a few hundred bytes). On a
/// clone of 200,000 files of 100 bytes that writing took 13 of 35 s.
pub const MIN_KEPT_LEN: u64 = 1024;

fn kept(version: Version, result: io::Result<bool>) {
    if let Err(e) = result {
        tracing::warn!(error = %e, %version, "could not keep a version");
    }
}

fn sweep_temporaries(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Ok(ft) = entry.file_type() else { continue };
        if name
            .to_string_lossy()
            .starts_with(crate::install::TEMP_PREFIX)
            && ft.is_file()
        {
            tracing::info!(path = %entry.path().display(), "removing a temporary left by a crash");
            let _ = fs::remove_file(entry.path());
        } else if ft.is_dir() {
            sweep_temporaries(&entry.path());
        }
    }
}

fn dev_ino(path: &Path) -> io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::symlink_metadata(path)?;
    Ok((m.dev(), m.ino()))
}

fn node_id(state_dir: &Path) -> Result<NodeId, ExportError> {
    let path = state_dir.join("node-id");
    if let Ok(text) = fs::read_to_string(&path)
        && let Ok(id) = u64::from_str_radix(text.trim(), 16)
    {
        return Ok(NodeId(id));
    }
    let id = NodeId(rand::rng().next_u64());
    let mut file = PendingFile::create(&path).map_err(io_err(&path))?;
    writeln!(file, "{id}").map_err(io_err(&path))?;
    file.install().map_err(io_err(&path))?;
    Ok(id)
}

/// A link at `path` to `target` points inside the tree: `target` is
/// relative, and its `..`s never climb above the root, counting from the
/// folder that holds the link.
pub fn link_stays_inside(path: &TreePath, target: &[u8]) -> bool {
    if target.is_empty() || target.starts_with(b"/") {
        return false;
    }
    let mut depth = path.as_str().matches('/').count();
    for name in target.split(|&b| b == b'/') {
        match name {
            b"" | b"." => {}
            b".." => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            _ => depth += 1,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_stays_inside_as_safe_links_reads_it() {
        let p = |s: &str| TreePath::new(s).unwrap();
        for (path, target, inside) in [
            ("l", "f", true),
            ("l", "./d/f", true),
            ("l", "/etc/passwd", false),
            ("l", "../f", false),
            ("l", "", false),
            ("d/l", "../f", true),
            ("d/l", "../../f", false),
            ("d/l", "x/../../f", true),
            ("d/l", "x/../../../f", false),
            ("d/e/l", "../../f", true),
            ("d/l", "..", true),
            ("l", "d//f/", true),
        ] {
            assert_eq!(
                link_stays_inside(&p(path), target.as_bytes()),
                inside,
                "{path} -> {target}"
            );
        }
    }

    /// Writes `n` files under `root`, each with an mtime a minute old (so
    /// that a stat of it vouches for its content).
    fn aged_files(root: &Path, n: usize) {
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        for i in 0..n {
            let path = root.join(format!("d{}/f{i}", i % 5));
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, format!("file {i}")).unwrap();
            File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
    }

    /// The index on disk spares a restart the hashing of what did not
    /// change, even when the journal moved on after its last save (a
    /// kill): a path's saved stat vouches only for the version it was
    /// taken with. A damaged index is made anew.
    #[test]
    fn a_restart_hashes_only_what_the_saved_index_cannot_vouch_for() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        aged_files(root, 50);
        let opened = Export::open(root, Default::default()).unwrap();
        assert_eq!(opened.hashed_at_open(), 50);
        drop(opened);
        let opened = Export::open(root, Default::default()).unwrap();
        assert_eq!(opened.hashed_at_open(), 0, "everything was vouched for");
        // Journaled, and the index not saved after: as if killed.
        fs::write(root.join("d1/f1"), "an edit").unwrap();
        let report = opened.rescan().unwrap();
        assert_eq!(report.records, 1, "one write journaled");
        drop(opened);
        let opened = Export::open(root, Default::default()).unwrap();
        assert_eq!(opened.hashed_at_open(), 1, "only the edited file is hashed");
        assert_eq!(
            opened
                .state()
                .get(&TreePath::new("d1/f1").unwrap())
                .unwrap()
                .version(),
            Some(scan::hash_file(&root.join("d1/f1")).unwrap())
        );
        drop(opened);
        fs::write(root.join(STATE_DIR).join(index_db::FILE_NAME), [0x5a; 8192]).unwrap();
        let opened = Export::open(root, Default::default()).unwrap();
        assert_eq!(
            opened.hashed_at_open(),
            50,
            "a damaged index vouches for nothing"
        );
        drop(opened);
        let opened = Export::open(root, Default::default()).unwrap();
        assert_eq!(opened.hashed_at_open(), 1, "and is whole again");
    }

    /// Temporaries a crashed write left in the tree are removed at open,
    /// found by the first scan's walk; nothing else is.
    #[test]
    fn temporaries_a_crash_left_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        aged_files(root, 3);
        let temp = root
            .join("d1")
            .join(format!("{}crashed", crate::install::TEMP_PREFIX));
        fs::write(&temp, "half").unwrap();
        let opened = Export::open(root, Default::default()).unwrap();
        assert!(!temp.exists(), "the temporary is removed");
        assert!(root.join("d1/f1").exists());
        assert_eq!(
            opened
                .state()
                .iter()
                .filter(|(_, e)| e.version().is_some())
                .count(),
            3
        );
    }
}
