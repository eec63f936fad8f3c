//! Finding what changed in a folder since the last look: walk it, compare
//! each path with the tree state and the stat cache (size, mtime, inode,
//! ctime), hash only where those disagree, and turn the differences into KML
//! operations that apply cleanly to the state, in order. A path that moved
//! (same inode, same size and mtime, gone from where it was) is a rename,
//! not a delete and a create. Folder mtimes are not followed: every change
//! inside a folder moves its mtime, and journaling each would double the log.
//!
//! The scan trusts nothing it reads: names that are not valid tree paths
//! (not UTF-8, too long) are skipped and reported, never journaled.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use intersync_protocol::kml::{Attrs, KmlRecord, NodeId, Op};
use intersync_protocol::path::STATE_DIR;
use intersync_protocol::{TreePath, Version};
use serde::{Deserialize, Serialize};

use super::state::{Entry, EntryKind, TreeState};
use crate::install::TEMP_PREFIX;

/// What identifies a file's content on disk without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatKey {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl StatKey {
    pub fn of(meta: &Metadata) -> StatKey {
        StatKey {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: mtime_ns(meta),
            ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        }
    }
}

impl StatKey {
    /// The key of a stat taken with `fstatat` (the scan's, relative to its
    /// folder): the same fields, so that it equals the key of a
    /// [`Metadata`] of the same file.
    pub fn of_stat(st: &rustix::fs::Stat) -> StatKey {
        StatKey {
            dev: st.st_dev,
            ino: st.st_ino,
            size: st.st_size as u64,
            mtime_ns: st.st_mtime * 1_000_000_000 + st.st_mtime_nsec as i64,
            ctime_ns: st.st_ctime * 1_000_000_000 + st.st_ctime_nsec as i64,
        }
    }
}

pub fn mtime_ns(meta: &Metadata) -> i64 {
    meta.mtime() * 1_000_000_000 + meta.mtime_nsec()
}

/// A path's stat as last seen, and when it was seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedStat {
    pub key: StatKey,
    pub seen_ns: i64,
}

impl CachedStat {
    /// The stat an install took, if it did (`install::Landed`).
    pub fn landed(landed: &crate::install::Landed) -> Option<CachedStat> {
        let seen_ns = landed
            .seen
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        landed.stat.as_ref().map(|meta| CachedStat {
            key: StatKey::of(meta),
            seen_ns,
        })
    }

    /// Whether an unchanged stat proves unchanged content. A file modified
    /// within the filesystem's timestamp granularity of being looked at may
    /// change again without its stat moving, so such a stat is not trusted.
    pub fn vouches_for(&self, key: &StatKey) -> bool {
        self.key == *key && self.key.mtime_ns < self.seen_ns - 2_000_000_000
    }
}

/// The tree state plus what the disk looked like when each path was last
/// seen: the index a scan compares against. Persisted between runs.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Index {
    pub state: TreeState,
    /// Stat of each path when last looked at. A path missing here is hashed.
    pub stats: HashMap<TreePath, CachedStat>,
    /// What changed since the index was last saved, when someone saves it
    /// in part (the export's): `None` keeps no account.
    #[serde(skip)]
    pub touched: Option<Dirty>,
}

/// What changed in a saved state since its last save.
#[derive(Clone, Debug)]
pub enum Dirty {
    /// Nothing on disk can be trusted: write every row.
    All,
    Paths(BTreeSet<TreePath>),
}

impl Default for Dirty {
    fn default() -> Dirty {
        Dirty::Paths(BTreeSet::new())
    }
}

impl Dirty {
    pub fn mark(&mut self, path: &TreePath) {
        if let Dirty::Paths(paths) = self {
            paths.insert(path.clone());
        }
    }

    /// Whether a save would write nothing.
    pub fn is_clean(&self) -> bool {
        matches!(self, Dirty::Paths(paths) if paths.is_empty())
    }
}

impl Index {
    /// A state and its stats, with no list of touched paths.
    pub fn new(state: TreeState, stats: HashMap<TreePath, CachedStat>) -> Index {
        Index {
            state,
            stats,
            touched: None,
        }
    }

    /// Notes that `path`'s stat changed, if an account is kept.
    pub fn touch(&mut self, path: &TreePath) {
        if let Some(touched) = &mut self.touched {
            touched.mark(path);
        }
    }
}

/// `YYYYMMDDTHHMMSSZ` for seconds since the epoch.
pub fn utc_stamp(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// A path the scan could not journal, and why.
#[derive(Debug)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}

/// What a scan found.
#[derive(Debug, Default)]
pub struct ScanOutcome {
    /// Operations that bring the index's state to the folder's, in order.
    pub ops: Vec<Op>,
    /// Files hashed because their stat did not settle the question.
    pub hashed_files: u64,
    pub skipped: Vec<Skipped>,
    /// Files named as a write's temporaries: left by a crash if no write
    /// is in flight (their owner decides), never part of the tree.
    pub temporaries: Vec<PathBuf>,
    /// What applying `ops` changed in the index's state, to take it back.
    pub undo: super::state::Undo,
}

/// One path as found on disk.
struct Found {
    key: StatKey,
    /// Permission bits, without the file type.
    mode: u32,
    uid: u32,
    gid: u32,
    kind: FoundKind,
}

enum FoundKind {
    File,
    Dir,
    Symlink(Vec<u8>),
}

/// Scans `root` against `index`, and updates `index` (state and stats) to
/// what it found. The returned operations, journaled in order, take any
/// copy of the old state to the new one.
pub fn scan(root: &Path, index: &mut Index) -> io::Result<ScanOutcome> {
    scan_hiding(root, index, None)
}

/// Decides that a path (and, for a folder, everything in it) is not part
/// of the tree: (path, is_dir).
pub type Hide = dyn Fn(&TreePath, bool) -> bool + Send + Sync;

/// [`scan`], leaving out what `hide` hides (an rsync module's exclude
/// rules): hidden paths are neither journaled nor descended into.
pub fn scan_hiding(root: &Path, index: &mut Index, hide: Option<&Hide>) -> io::Result<ScanOutcome> {
    scan_with(root, index, hide, None)
}

/// Paths the disk lacks that are nonetheless there (a working copy's
/// placeholders, not fetched yet): a scan leaves them in the state.
pub type Keep = dyn Fn(&TreePath) -> bool + Send + Sync;

/// [`scan_hiding`], keeping what `keep` keeps.
pub fn scan_with(
    root: &Path,
    index: &mut Index,
    hide: Option<&Hide>,
    keep: Option<&Keep>,
) -> io::Result<ScanOutcome> {
    scan_walked(root, index, walk_tree(root, hide)?, keep)
}

/// The folder as a walk found it, in path order: what a scan compares
/// with an index. Made without one, so it may be made while the index is
/// still being read.
pub struct Walk {
    found: Sorted,
    skipped: Vec<Skipped>,
    temporaries: Vec<PathBuf>,
}

/// Walks `root` on every core, stat'ing each name, leaving out what
/// `hide` hides.
pub fn walk_tree(root: &Path, hide: Option<&Hide>) -> io::Result<Walk> {
    let walked = Walked::default();
    rayon::scope(|s| walk(s, root.to_owned(), None, &walked, hide));
    let Walked {
        found,
        skipped,
        temporaries,
        failed,
    } = walked;
    if let Some(e) = failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    let mut found = found.into_inner().unwrap_or_else(|p| p.into_inner());
    found.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok(Walk {
        found: Sorted(found),
        skipped: skipped.into_inner().unwrap_or_else(|p| p.into_inner()),
        temporaries: temporaries.into_inner().unwrap_or_else(|p| p.into_inner()),
    })
}

/// [`scan_with`] of what `walk` found.
pub fn scan_walked(
    root: &Path,
    index: &mut Index,
    walk: Walk,
    keep: Option<&Keep>,
) -> io::Result<ScanOutcome> {
    let Walk {
        found,
        skipped,
        temporaries,
    } = walk;
    let outcome = ScanOutcome {
        skipped,
        temporaries,
        ..ScanOutcome::default()
    };
    let start_seq = index.state.seq;
    let mut scan = Scan {
        root,
        by_inode: None,
        index,
        found: &found,
        outcome,
        now_ns: now_ns(),
    };
    // Only what the state cannot vouch for is looked at closely: in a tree
    // where nothing changed, nothing.
    let changed: Vec<&(TreePath, Found)> = {
        let (state, stats) = (&scan.index.state, &scan.index.stats);
        let mut known = state.iter().peekable();
        found
            .0
            .iter()
            .filter(|(path, f)| {
                while known.next_if(|(p, _)| *p < path).is_some() {}
                let entry = known.next_if(|(p, _)| *p == path).map(|(_, e)| e);
                !entry.is_some_and(|e| unchanged(e, stats.get(path), f))
            })
            .collect()
    };
    if let Err(e) = scan.apply(changed, keep) {
        // The state is as it was; the stats the scan changed are the
        // caller's to forget.
        let undo = std::mem::take(&mut scan.outcome.undo);
        scan.index.state.undo(undo);
        return Err(e);
    }
    debug_assert_eq!(
        scan.index.state.seq - start_seq,
        scan.outcome.ops.len() as u64
    );
    Ok(scan.outcome)
}

/// What a walk found, in path order.
struct Sorted(Vec<(TreePath, Found)>);

impl Sorted {
    fn get(&self, path: &TreePath) -> Option<&Found> {
        self.0
            .binary_search_by(|(p, _)| p.cmp(path))
            .ok()
            .map(|i| &self.0[i].1)
    }
}

/// A scan under way: the index it brings to what was found, and the
/// operations that do so.
struct Scan<'a> {
    root: &'a Path,
    index: &'a mut Index,
    found: &'a Sorted,
    /// Where each inode was, for rename detection: made when a path first
    /// holds an inode its stat does not name (never, when nothing moved).
    by_inode: Option<HashMap<(u64, u64), TreePath>>,
    outcome: ScanOutcome,
    now_ns: i64,
}

impl Scan<'_> {
    /// Brings the index to each of `changed`, then removes what the disk
    /// no longer has.
    fn apply(&mut self, changed: Vec<&(TreePath, Found)>, keep: Option<&Keep>) -> io::Result<()> {
        for (path, f) in changed {
            self.path(path, f)?;
        }
        // Whatever the state still has that the disk does not: children first.
        let gone: Vec<TreePath> = {
            let mut on_disk = self.found.0.iter().map(|(p, _)| p).peekable();
            self.index
                .state
                .iter()
                .map(|(p, _)| p)
                .filter(|p| {
                    while on_disk.next_if(|d| d < p).is_some() {}
                    on_disk.next_if(|d| d == p).is_none() && !keep.is_some_and(|k| k(p))
                })
                .cloned()
                .collect()
        };
        for path in gone.iter().rev() {
            if self.index.state.get(path).is_some() {
                self.remove(path)?;
            }
        }
        Ok(())
    }

    /// Applies `op` to the index's state and records it.
    fn push(&mut self, op: Op) -> io::Result<()> {
        let rec = KmlRecord {
            seq: self.index.state.seq + 1,
            time_ns: self.now_ns,
            node: NodeId(0),
            op: op.clone(),
        };
        self.index
            .state
            .apply_noting(&rec, &mut self.outcome.undo)
            .map(|()| self.outcome.ops.push(op))
            .map_err(|e| io::Error::other(e.to_string()))
    }

    /// Brings the index to what was found at `path`.
    fn path(&mut self, path: &TreePath, f: &Found) -> io::Result<()> {
        let key = f.key;
        if let Some(from) = self.renamed_from(path, f, &key) {
            self.push(Op::Rename {
                from: from.clone(),
                to: path.clone(),
            })?;
            move_stats(self.index, &from, path);
            if let Some(by_inode) = &mut self.by_inode {
                by_inode.remove(&(key.dev, key.ino));
            }
            return Ok(());
        }
        if self
            .index
            .state
            .get(path)
            .is_some_and(|e| !same_kind(e, &f.kind))
        {
            self.remove(path)?;
        }
        let existing = self.index.state.get(path).cloned();
        let mode = f.mode;
        match (&f.kind, existing) {
            (FoundKind::Dir, None) => self.push(Op::Mkdir {
                path: path.clone(),
                mode,
            })?,
            (FoundKind::Dir, Some(_)) => {}
            (FoundKind::Symlink(target), existing) => {
                let same = existing.is_some_and(|e| {
                    e.kind
                        == EntryKind::Symlink {
                            target: target.clone(),
                        }
                });
                if !same {
                    if self.index.state.get(path).is_some() {
                        self.push(Op::Unlink { path: path.clone() })?;
                    }
                    self.push(Op::Symlink {
                        path: path.clone(),
                        target: target.clone(),
                    })?;
                }
            }
            (FoundKind::File, existing) => {
                if !self.content(path, &key, mode, existing.is_some())? {
                    // Vanished or unreadable since the walk: next scan will see.
                    return Ok(());
                }
            }
        }
        self.attributes(path, f, &key, mode)?;
        let seen = CachedStat {
            key,
            seen_ns: self.now_ns,
        };
        match self.index.stats.get_mut(path) {
            Some(s) => *s = seen,
            None => {
                self.index.stats.insert(path.clone(), seen);
            }
        }
        self.index.touch(path);
        Ok(())
    }

    /// Where the inode at `path` was, if this is a rename: it was
    /// elsewhere, that place no longer holds it, the kind is the same, and
    /// (for a file) so are its size and mtime.
    fn renamed_from(&mut self, path: &TreePath, f: &Found, key: &StatKey) -> Option<TreePath> {
        let inode = (key.dev, key.ino);
        if self
            .index
            .stats
            .get(path)
            .is_some_and(|s| (s.key.dev, s.key.ino) == inode)
        {
            return None;
        }
        let stats = &self.index.stats;
        let by_inode = self.by_inode.get_or_insert_with(|| {
            stats
                .iter()
                .map(|(p, s)| ((s.key.dev, s.key.ino), p.clone()))
                .collect()
        });
        let index = &*self.index;
        let from = by_inode.get(&inode)?;
        let old = index.state.get(from)?;
        let moved_away = self
            .found
            .get(from)
            .is_none_or(|g| (g.key.dev, g.key.ino) != inode);
        // A folder's mtime moves with its contents; its inode is enough.
        let same_file = matches!(f.kind, FoundKind::Dir)
            || index
                .stats
                .get(from)
                .is_some_and(|s| s.key.size == key.size && s.key.mtime_ns == key.mtime_ns);
        if from == path || !moved_away || !same_kind(old, &f.kind) || !same_file {
            return None;
        }
        let mut trial = index.state.clone();
        let rec = KmlRecord {
            seq: trial.seq + 1,
            time_ns: self.now_ns,
            node: NodeId(0),
            op: Op::Rename {
                from: from.clone(),
                to: path.clone(),
            },
        };
        trial.apply(&rec).is_ok().then(|| from.clone())
    }

    /// A file's content: hashed unless its stat vouches for it, and
    /// journaled if new or changed. False when it could not be read.
    fn content(
        &mut self,
        path: &TreePath,
        key: &StatKey,
        mode: u32,
        known: bool,
    ) -> io::Result<bool> {
        let trusted = known
            && self
                .index
                .stats
                .get(path)
                .is_some_and(|s| s.vouches_for(key));
        if trusted {
            return Ok(true);
        }
        let version = match hash_file(&self.root.join(path.as_str())) {
            Ok(v) => v,
            Err(e) => {
                self.outcome.skipped.push(Skipped {
                    path: self.root.join(path.as_str()),
                    reason: e.to_string(),
                });
                return Ok(false);
            }
        };
        self.outcome.hashed_files += 1;
        if !known {
            self.push(Op::Create {
                path: path.clone(),
                mode,
            })?;
        }
        let entry = self.index.state.get(path).expect("present");
        if entry.version() != Some(version) {
            self.push(Op::Write {
                path: path.clone(),
                version,
                size: key.size,
                mtime_ns: key.mtime_ns,
            })?;
        }
        Ok(true)
    }

    /// Attributes: mode, and mtime for files, and ownership.
    fn attributes(
        &mut self,
        path: &TreePath,
        f: &Found,
        key: &StatKey,
        mode: u32,
    ) -> io::Result<()> {
        let entry = self.index.state.get(path).expect("present after the above");
        let mut attrs = Attrs::default();
        if entry.mode != mode && !matches!(f.kind, FoundKind::Symlink(_)) {
            attrs.mode = Some(mode);
        }
        // The mtimes of files only: a folder's moves with its contents, and
        // a symbolic link's cannot be set portably.
        if matches!(entry.kind, EntryKind::File { .. }) && entry.mtime_ns != key.mtime_ns {
            attrs.mtime_ns = Some(key.mtime_ns);
        }
        if entry.uid != f.uid {
            attrs.uid = Some(f.uid);
        }
        if entry.gid != f.gid {
            attrs.gid = Some(f.gid);
        }
        if attrs != Attrs::default() {
            self.push(Op::Setattr {
                path: path.clone(),
                attrs,
            })?;
        }
        Ok(())
    }

    /// Removes `path` (and, for a folder, all inside it, deepest first).
    fn remove(&mut self, path: &TreePath) -> io::Result<()> {
        let mut doomed: Vec<(TreePath, bool)> = self
            .index
            .state
            .descendants(path)
            .map(|(p, e)| (p.clone(), e.is_dir()))
            .collect();
        let is_dir = self.index.state.get(path).is_some_and(Entry::is_dir);
        doomed.insert(0, (path.clone(), is_dir));
        for (p, is_dir) in doomed.into_iter().rev() {
            let op = if is_dir {
                Op::Rmdir { path: p.clone() }
            } else {
                Op::Unlink { path: p.clone() }
            };
            self.push(op)?;
            self.index.stats.remove(&p);
            self.index.touch(&p);
        }
        Ok(())
    }
}

/// Whether what was found at a path is what the state has there, by its
/// stat alone: the same inode, a stat that vouches for the content, and
/// the same attributes. [`Scan::path`] would change nothing for it.
fn unchanged(e: &Entry, stat: Option<&CachedStat>, f: &Found) -> bool {
    let same_inode = stat.is_some_and(|s| (s.key.dev, s.key.ino) == (f.key.dev, f.key.ino));
    let same_owner = e.uid == f.uid && e.gid == f.gid;
    same_owner
        && match (&e.kind, &f.kind) {
            (EntryKind::File { .. }, FoundKind::File) => {
                same_inode
                    && stat.is_some_and(|s| s.vouches_for(&f.key))
                    && e.mode == f.mode
                    && e.mtime_ns == f.key.mtime_ns
            }
            // A folder the state has without a stat (a pull made it) is
            // still that folder: no rename can land on a path the state
            // holds, and its contents are looked at one by one.
            (EntryKind::Dir, FoundKind::Dir) => (same_inode || stat.is_none()) && e.mode == f.mode,
            (EntryKind::Symlink { target }, FoundKind::Symlink(found)) => {
                same_inode && target == found
            }
            _ => false,
        }
}

fn same_kind(e: &Entry, f: &FoundKind) -> bool {
    matches!(
        (&e.kind, f),
        (EntryKind::File { .. }, FoundKind::File)
            | (EntryKind::Dir, FoundKind::Dir)
            | (EntryKind::Symlink { .. }, FoundKind::Symlink(_))
    )
}

fn move_stats(index: &mut Index, from: &TreePath, to: &TreePath) {
    let moved: Vec<TreePath> = index
        .stats
        .keys()
        .filter(|p| p.starts_with(from))
        .cloned()
        .collect();
    for p in moved {
        let key = index.stats.remove(&p).expect("listed");
        index.touch(&p);
        let new = if &p == from {
            to.clone()
        } else {
            match to.join(&p.as_str()[from.as_str().len() + 1..]) {
                Ok(n) => n,
                Err(_) => continue,
            }
        };
        index.touch(&new);
        index.stats.insert(new, key);
    }
}

/// The version of a file, read with ordinary reads: another program may
/// truncate it meanwhile, which would kill a process reading it mapped.
/// Opened without blocking and refused unless it is a regular file, so a
/// FIFO put in its place meanwhile cannot hang the scan.
pub fn hash_file(path: &Path) -> io::Result<Version> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(file)?;
    Ok(Version::from_hasher(&hasher))
}

/// What the walkers found, shared between them.
#[derive(Default)]
struct Walked {
    found: std::sync::Mutex<Vec<(TreePath, Found)>>,
    skipped: std::sync::Mutex<Vec<Skipped>>,
    temporaries: std::sync::Mutex<Vec<PathBuf>>,
    /// The first error that stops the scan.
    failed: std::sync::Mutex<Option<io::Error>>,
}

/// Lists `dir` (the tree's `prefix`, `None` at the top) into `walked`,
/// each name stat'ed relative to the folder, and walks each folder in it
/// as a task of its own, so that both cores stat.
fn walk<'s>(
    s: &rayon::Scope<'s>,
    dir: PathBuf,
    prefix: Option<TreePath>,
    walked: &'s Walked,
    hide: Option<&'s Hide>,
) {
    let failed = |e: io::Error| {
        walked
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(e);
    };
    let listing = match list(&dir, prefix.as_ref(), hide) {
        Ok(l) => l,
        // A folder that vanished mid-walk is simply gone.
        Err(e) if e.kind() == io::ErrorKind::NotFound && prefix.is_some() => return,
        Err(e) => return failed(e),
    };
    let Listing {
        found,
        skipped,
        temporaries,
    } = listing;
    for (path, f) in &found {
        if matches!(f.kind, FoundKind::Dir) {
            let (dir, path) = (dir.join(path.file_name()), path.clone());
            s.spawn(move |s| walk(s, dir, Some(path), walked, hide));
        }
    }
    if !skipped.is_empty() {
        let mut all = walked.skipped.lock().unwrap_or_else(|p| p.into_inner());
        all.extend(skipped);
    }
    if !temporaries.is_empty() {
        let mut all = walked.temporaries.lock().unwrap_or_else(|p| p.into_inner());
        all.extend(temporaries);
    }
    let mut all = walked.found.lock().unwrap_or_else(|p| p.into_inner());
    all.extend(found);
}

/// One folder's entries.
struct Listing {
    found: Vec<(TreePath, Found)>,
    skipped: Vec<Skipped>,
    temporaries: Vec<PathBuf>,
}

fn list(dir: &Path, prefix: Option<&TreePath>, hide: Option<&Hide>) -> io::Result<Listing> {
    use rustix::fs::{AtFlags, FileType, Mode, OFlags};
    let fd = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut listing = Listing {
        found: Vec::new(),
        skipped: Vec::new(),
        temporaries: Vec::new(),
    };
    for entry in rustix::fs::Dir::read_from(&fd)? {
        let entry = entry?;
        let raw = entry.file_name().to_bytes();
        if raw == b"." || raw == b".." {
            continue;
        }
        let Ok(name) = std::str::from_utf8(raw) else {
            listing.skipped.push(Skipped {
                path: dir.join(std::ffi::OsStr::from_bytes(raw)),
                reason: "name is not UTF-8".into(),
            });
            continue;
        };
        if prefix.is_none() && name == STATE_DIR {
            continue;
        }
        if name.starts_with(TEMP_PREFIX) {
            let regular = match entry.file_type() {
                FileType::Unknown => {
                    rustix::fs::statat(&fd, entry.file_name(), AtFlags::SYMLINK_NOFOLLOW).is_ok_and(
                        |st| FileType::from_raw_mode(st.st_mode) == FileType::RegularFile,
                    )
                }
                t => t == FileType::RegularFile,
            };
            if regular {
                listing.temporaries.push(dir.join(name));
            }
            continue;
        }
        let path = match prefix.map_or_else(|| TreePath::new(name), |p| p.join(name)) {
            Ok(p) => p,
            Err(e) => {
                listing.skipped.push(Skipped {
                    path: dir.join(name),
                    reason: e.to_string(),
                });
                continue;
            }
        };
        let st = match rustix::fs::statat(&fd, entry.file_name(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => return Err(e.into()),
        };
        let kind = match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => FoundKind::Dir,
            FileType::RegularFile => FoundKind::File,
            FileType::Symlink => match rustix::fs::readlinkat(&fd, entry.file_name(), Vec::new()) {
                Ok(t) => FoundKind::Symlink(t.into_bytes()),
                Err(_) => continue,
            },
            _ => {
                listing.skipped.push(Skipped {
                    path: dir.join(name),
                    reason: "not a file, folder or symlink".into(),
                });
                continue;
            }
        };
        if hide.is_some_and(|h| h(&path, matches!(kind, FoundKind::Dir))) {
            continue;
        }
        let found = Found {
            key: StatKey::of_stat(&st),
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            kind,
        };
        listing.found.push((path, found));
    }
    Ok(listing)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn utc_stamps() {
        assert_eq!(utc_stamp(0), "19700101T000000Z");
        assert_eq!(utc_stamp(1_764_100_000), "20251125T194640Z");
        assert_eq!(utc_stamp(951_782_400), "20000229T000000Z");
    }

    fn p(s: &str) -> TreePath {
        TreePath::new(s).unwrap()
    }

    /// Files older than the trust window, so stats are cached as they would
    /// be for a settled tree.
    fn age(path: &Path) {
        let old = SystemTime::now() - std::time::Duration::from_secs(60);
        fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }

    #[test]
    fn finds_creates_edits_renames_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("d/e")).unwrap();
        fs::create_dir(root.join(STATE_DIR)).unwrap();
        fs::write(root.join(STATE_DIR).join("ignored"), b"x").unwrap();
        for (name, body) in [
            ("a", "alpha"),
            ("d/b", "beta"),
            ("d/e/c", "gamma"),
            ("big", "0123456789"),
        ] {
            fs::write(root.join(name), body).unwrap();
            age(&root.join(name));
        }
        std::os::unix::fs::symlink("d/b", root.join("link")).unwrap();
        let mut index = Index::default();
        let first = scan(root, &mut index).unwrap();
        assert_eq!(first.hashed_files, 4);
        let creates = first
            .ops
            .iter()
            .filter(|o| matches!(o, Op::Create { .. }))
            .count();
        assert_eq!(creates, 4, "{:?}", first.ops);
        assert!(index.state.get(&p("link")).is_some());
        assert!(
            !index
                .state
                .iter()
                .any(|(p, _)| p.as_str().starts_with(".intersync"))
        );

        // Nothing changed: nothing to say, nothing hashed.
        let again = scan(root, &mut index).unwrap();
        assert!(again.ops.is_empty(), "{:?}", again.ops);
        assert_eq!(again.hashed_files, 0);

        fs::rename(root.join("big"), root.join("d/e/big2")).unwrap();
        fs::rename(root.join("d/e"), root.join("f")).unwrap();
        fs::write(root.join("a"), "ALPHA!").unwrap();
        fs::remove_file(root.join("d/b")).unwrap();
        fs::set_permissions(root.join("f/c"), fs::Permissions::from_mode(0o600)).unwrap();
        let changes = scan(root, &mut index).unwrap();
        let ops = &changes.ops;
        assert!(
            ops.contains(&Op::Rename {
                from: p("d/e"),
                to: p("f")
            }),
            "{ops:?}"
        );
        assert!(
            ops.contains(&Op::Rename {
                from: p("big"),
                to: p("f/big2")
            }),
            "{ops:?}"
        );
        assert!(ops.contains(&Op::Unlink { path: p("d/b") }), "{ops:?}");
        assert!(
            ops.iter()
                .any(|o| matches!(o, Op::Write { path, size: 6, .. } if path == &p("a")))
        );
        assert!(ops.iter().any(
            |o| matches!(o, Op::Setattr { path, attrs } if path == &p("f/c") && attrs.mode == Some(0o600))
        ));
        assert!(
            !ops.iter().any(|o| matches!(o, Op::Create { .. })),
            "renames are not creates: {ops:?}"
        );
        // Only the edited file and the chmod-ed one (its ctime moved) were read.
        assert_eq!(changes.hashed_files, 2);

        // A fresh scan of the folder agrees with the incrementally kept
        // state, but for folder and symlink mtimes, which scans do not follow.
        let mut fresh = Index::default();
        scan(root, &mut fresh).unwrap();
        let listing = |s: &TreeState| -> Vec<(TreePath, Entry)> {
            s.iter()
                .map(|(p, e)| {
                    let mut e = e.clone();
                    if !matches!(e.kind, EntryKind::File { .. }) {
                        e.mtime_ns = 0;
                    }
                    (p.clone(), e)
                })
                .collect()
        };
        assert_eq!(listing(&fresh.state), listing(&index.state));
    }

    #[test]
    fn kind_changes_and_deep_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("x/y/z")).unwrap();
        fs::write(root.join("x/y/z/f"), "f").unwrap();
        fs::write(root.join("k"), "file").unwrap();
        let mut index = Index::default();
        scan(root, &mut index).unwrap();
        fs::remove_dir_all(root.join("x")).unwrap();
        fs::remove_file(root.join("k")).unwrap();
        fs::create_dir(root.join("k")).unwrap();
        let out = scan(root, &mut index).unwrap();
        assert_eq!(
            out.ops,
            vec![
                Op::Unlink { path: p("k") },
                Op::Mkdir {
                    path: p("k"),
                    mode: 0o755
                },
                Op::Unlink { path: p("x/y/z/f") },
                Op::Rmdir { path: p("x/y/z") },
                Op::Rmdir { path: p("x/y") },
                Op::Rmdir { path: p("x") },
            ]
        );
    }
}
