//! A working copy on disk: its folder, and under `.intersync/` the base
//! (the server's tree as of the last pull, with stats), the journal cursor,
//! the node id, partial downloads and the conflicts not yet looked at. The
//! state lives in `state.db` (`client::state_db`); what each save must
//! write is tracked here, as the base is replaced and placeholders fetched.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use intersync_protocol::kml::NodeId;
use intersync_protocol::path::STATE_DIR;
use intersync_protocol::{TreePath, Version};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::SyncError;
use super::state_db::{self, Dirty, StateDb};
use crate::tree::Entry;
use crate::tree::scan::{self, CachedStat, Index};
use crate::versions::{Budget, VersionStore};

#[derive(Debug, Error)]
pub enum WorkingCopyError {
    #[error("{}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: not a working copy state file: {reason}", path.display())]
    BadState { path: PathBuf, reason: String },
    #[error("{}: {source}", path.display())]
    Db {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "{}: damaged ({what} does not match its checksum), and not used; move it away and \
         sync again to rebuild it from the server",
        path.display()
    )]
    DamagedDb { path: PathBuf, what: String },
    #[error(
        "{}: damaged in bytes {start}..{end} (their checksum does not match), and not used; \
         move it away and sync again to rebuild it from the server",
        path.display()
    )]
    DamagedState { path: PathBuf, start: u64, end: u64 },
    #[error(
        "{url} serves export {found}, not export {expected} that this working copy was synced \
         with{}: it is another export, or one whose .intersync/ was made anew (its history is \
         gone); sync it into a new folder, and copy over what you changed here",
        match synced_at { Some(at) if at != url => format!(" at {at}"), _ => String::new() }
    )]
    OtherServer {
        url: String,
        /// Where the working copy last synced, when that was elsewhere.
        synced_at: Option<String>,
        expected: String,
        found: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> WorkingCopyError + '_ {
    move |source| WorkingCopyError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Where reading the journal resumes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// The segment last read, and how many of its bytes were read.
    pub segment: Option<String>,
    pub offset: u64,
}

/// A conflict: both sides changed a path since the last sync.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    pub path: TreePath,
    /// Where the local version now is, when it was moved aside.
    pub kept_as: Option<TreePath>,
    pub what: String,
}

/// Everything a working copy remembers (once one JSON file, `state.json`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Saved {
    pub url: String,
    pub server_id: Option<String>,
    pub node: u64,
    /// The server's tree at `base.state.seq`, with the stat of each local file.
    pub base: Index,
    pub cursor: Cursor,
    pub conflicts: Vec<Conflict>,
    /// When the last sync finished (ns since the epoch), if ever.
    pub last_sync_ns: Option<i64>,
    /// The source is a static export behind a plain web server: read only.
    #[serde(default)]
    pub static_export: bool,
    /// The server's head said it speaks HTTP/2 in cleartext: the next sync
    /// speaks it from its first request.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub http2: bool,
    /// Files of the base not fetched yet (a mounted working copy fetches
    /// them on first open): absent from the disk, yet not deleted.
    #[serde(default)]
    pub placeholders: BTreeSet<TreePath>,
    /// Where the base is not the server's tree at its sequence (files a
    /// pull could not bring in keep their old base entry, so that they are
    /// not taken for local edits): the server's entries there, or `None`
    /// where it had none. The journal is followed from the server's tree.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub server_differs: BTreeMap<TreePath, Option<Entry>>,
}

/// The placeholders of a working copy, shared with a mount that shows them:
/// each with the base's entry for it.
#[derive(Debug, Default)]
pub struct Placeholders {
    map: Mutex<BTreeMap<TreePath, Entry>>,
    /// Placeholders fetched since the last sync, with the stat of what was
    /// installed: the base learns it, so that a later scan recognises the
    /// file (a rename of it is pushed as a rename, not as new data).
    fetched: Mutex<Vec<(TreePath, Entry, CachedStat)>>,
}

impl Placeholders {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<TreePath, Entry>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `path` was fetched as `entry` and installed with `stat`.
    pub fn fetched(&self, path: TreePath, entry: Entry, stat: CachedStat) {
        self.fetched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((path, entry, stat));
    }

    /// Gives `index` the stats of fetched files it still has as fetched;
    /// the paths it gave a stat.
    fn teach(&self, index: &mut Index, drain: bool) -> Vec<TreePath> {
        let mut fetched = self.fetched.lock().unwrap_or_else(|p| p.into_inner());
        let mut taught = Vec::new();
        for (path, entry, stat) in fetched.iter() {
            if index.state.get(path) == Some(entry) {
                index.stats.insert(path.clone(), *stat);
                taught.push(path.clone());
            }
        }
        if drain {
            fetched.clear();
        }
        taught
    }

    pub fn get(&self, path: &TreePath) -> Option<Entry> {
        self.lock().get(path).cloned()
    }

    pub fn contains(&self, path: &TreePath) -> bool {
        self.lock().contains_key(path)
    }

    pub fn insert(&self, path: TreePath, entry: Entry) {
        self.lock().insert(path, entry);
    }

    /// Runs `install` and forgets the placeholder, both while no one else
    /// can change it, if `path` is still the placeholder `entry`; whether
    /// it was installed. A name already taken (`EEXIST`) installs nothing.
    pub fn install_if(
        &self,
        path: &TreePath,
        entry: &Entry,
        install: impl FnOnce() -> io::Result<()>,
    ) -> bool {
        let mut map = self.lock();
        if map.get(path) != Some(entry) {
            return false;
        }
        match install() {
            Ok(()) => {
                map.remove(path);
                true
            }
            Err(e) => {
                tracing::info!(%path, error = %e, "fetched placeholder not installed");
                false
            }
        }
    }

    /// Forgets `path`; with `only`, only while its entry is still that one
    /// (a fetch finishing after a pull moved the placeholder on).
    pub fn remove(&self, path: &TreePath, only: Option<&Entry>) -> bool {
        let mut map = self.lock();
        if only.is_some_and(|e| map.get(path) != Some(e)) {
            return false;
        }
        map.remove(path).is_some()
    }

    /// The placeholders directly in `dir` (`None`: the top), by name.
    pub fn list(&self, dir: Option<&TreePath>) -> Vec<(String, Entry)> {
        self.lock()
            .iter()
            .filter(|(p, _)| p.parent().as_ref() == dir)
            .map(|(p, e)| (p.file_name().to_owned(), e.clone()))
            .collect()
    }

    pub fn any_under(&self, dir: &TreePath) -> bool {
        self.lock().keys().any(|p| p != dir && p.starts_with(dir))
    }

    pub fn paths(&self) -> Vec<TreePath> {
        self.lock().keys().cloned().collect()
    }

    /// Keeps only what `keep` says.
    pub fn retain(&self, mut keep: impl FnMut(&TreePath, &mut Entry) -> bool) {
        self.lock().retain(|p, e| keep(p, e));
    }
}

/// A folder kept in sync with an export.
pub struct WorkingCopy {
    root: PathBuf,
    state_dir: PathBuf,
    /// Read freely; the base is replaced only through
    /// [`WorkingCopy::replace_base`], which tells the next save what to write.
    pub saved: Saved,
    db: StateDb,
    /// The paths whose rows the next save writes.
    dirty: Dirty,
    /// The placeholders as last saved.
    saved_placeholders: BTreeSet<TreePath>,
    placeholders: Arc<Placeholders>,
    /// The versions synced, to push edits as patches from.
    versions: Option<VersionStore>,
    /// The URL it last synced with, when it was opened with another: kept
    /// (the new one saved) once the head there names the same export.
    pub moved_from: Option<String>,
}

/// Smaller files are not kept: pushing them whole or by a delta costs
/// little, and a clone of many small files would write each twice.
pub const MIN_KEPT_LEN: u64 = 64 << 10;

impl WorkingCopy {
    /// Opens the working copy in `dir`, creating it (and `dir`) on first use.
    pub fn open_or_create(dir: &Path, url: &str) -> Result<WorkingCopy, WorkingCopyError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let root = dir.canonicalize().map_err(io_err(dir))?;
        let state_dir = root.join(STATE_DIR);
        if has_saved_state(&state_dir)? {
            // A working copy follows its export's id, not a URL: the same
            // export at a new address (another port, another name, a cache
            // in front) is taken, once its head says it is the same one.
            let mut wc = WorkingCopy::open(&root)?;
            if normalise(&wc.saved.url) != normalise(url) {
                wc.moved_from = Some(std::mem::replace(&mut wc.saved.url, url.to_owned()));
            }
            return Ok(wc);
        }
        fs::create_dir_all(&state_dir).map_err(io_err(&state_dir))?;
        let saved = Saved {
            url: url.to_owned(),
            node: rand::rng().next_u64(),
            ..Saved::default()
        };
        let mut wc = WorkingCopy::with(root, state_dir, saved, Dirty::All)?;
        wc.save()?;
        Ok(wc)
    }

    /// Opens an existing working copy; one whose state is still the JSON
    /// file of before is moved into the database first.
    pub fn open(dir: &Path) -> Result<WorkingCopy, WorkingCopyError> {
        let root = dir.canonicalize().map_err(io_err(dir))?;
        let state_dir = root.join(STATE_DIR);
        let legacy = state_dir.join(LEGACY_STATE);
        if !state_dir.join(state_db::FILE_NAME).exists() {
            // Not a working copy: say which file is missing, and create nothing.
            fs::metadata(&legacy).map_err(io_err(&legacy))?;
        }
        let db = StateDb::open(&state_dir)?;
        let empty = db.is_empty()?;
        if !empty && legacy.exists() {
            // Moved in by a sync killed before it could remove the old file.
            fs::remove_file(&legacy).map_err(io_err(&legacy))?;
        }
        if empty && !legacy.exists() {
            let path = state_dir.join(state_db::FILE_NAME);
            let source = io::Error::new(io::ErrorKind::NotFound, "no state saved in it yet");
            return Err(WorkingCopyError::Io { path, source });
        }
        if empty {
            drop(db);
            let saved = read_legacy(&legacy)?;
            let mut wc = WorkingCopy::with(root, state_dir, saved, Dirty::All)?;
            wc.save()?;
            fs::remove_file(&legacy).map_err(io_err(&legacy))?;
            tracing::info!(path = %legacy.display(), "working copy state moved into state.db");
            return Ok(wc);
        }
        let started = std::time::Instant::now();
        let saved = db.load()?;
        drop(db);
        tracing::debug!(
            ms = started.elapsed().as_millis(),
            rows = saved.base.state.len(),
            "state loaded"
        );
        WorkingCopy::with(root, state_dir, saved, Dirty::default())
    }

    fn with(
        root: PathBuf,
        state_dir: PathBuf,
        saved: Saved,
        dirty: Dirty,
    ) -> Result<WorkingCopy, WorkingCopyError> {
        let placeholders = Placeholders::default();
        for path in &saved.placeholders {
            if let Some(e) = saved.base.state.get(path).filter(|e| e.version().is_some()) {
                placeholders.insert(path.clone(), e.clone());
            }
        }
        Ok(WorkingCopy {
            db: StateDb::open(&state_dir)?,
            root,
            state_dir,
            saved_placeholders: saved.placeholders.clone(),
            saved,
            dirty,
            placeholders: Arc::new(placeholders),
            versions: None,
            moved_from: None,
        })
    }

    /// Keeps the versions synced within `budget` from now on (`None`: not).
    pub fn keep_versions(&mut self, budget: Option<Budget>) {
        let dir = self.state_dir.join("versions");
        self.versions = budget.and_then(|b| {
            VersionStore::open(&dir, b)
                .inspect_err(
                    |e| tracing::warn!(error = %e, "no version store; edits are pushed as deltas"),
                )
                .ok()
        });
    }

    pub fn versions(&self) -> Option<&VersionStore> {
        self.versions.as_ref()
    }

    /// Keeps `data` as `version` (checked), if it is large enough to be
    /// worth it and there is a store.
    pub fn keep(&self, version: Version, data: &[u8]) {
        if let Some(store) = &self.versions
            && data.len() as u64 >= MIN_KEPT_LEN
            && let Err(e) = store.put(version, &mut &data[..], data.len() as u64)
        {
            tracing::warn!(error = %e, %version, "could not keep a version");
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    pub fn node(&self) -> NodeId {
        NodeId(self.saved.node)
    }

    /// The files of the base not fetched yet.
    pub fn placeholders(&self) -> &Arc<Placeholders> {
        &self.placeholders
    }

    /// Moves the stats of placeholders fetched since into the base.
    pub fn absorb_fetched(&mut self) {
        for path in self.placeholders.teach(&mut self.saved.base, true) {
            self.dirty.mark(&path);
        }
    }

    /// Makes `base` the base; the next save writes the rows it changed.
    pub fn replace_base(&mut self, base: Index) {
        let old = std::mem::replace(&mut self.saved.base, base);
        mark_changes(&mut self.dirty, &old, &self.saved.base);
    }

    /// Scans the disk against `index` (the base, or a copy of it), taking
    /// placeholders as present: the local changes.
    pub fn scan(&self, index: &mut Index) -> Result<scan::ScanOutcome, SyncError> {
        self.placeholders.teach(index, false);
        let placeholders = self.placeholders.clone();
        let keep = move |p: &TreePath| placeholders.contains(p);
        scan::scan_with(&self.root, index, None, Some(&keep))
            .map_err(|e| SyncError::local(&self.root, e))
    }

    /// Saves the state in one transaction: the head, and the rows of the
    /// base that changed since the last save.
    pub fn save(&mut self) -> Result<(), WorkingCopyError> {
        let placeholders: BTreeSet<TreePath> = self.placeholders.paths().into_iter().collect();
        for p in self.saved_placeholders.symmetric_difference(&placeholders) {
            self.dirty.mark(p);
        }
        self.saved.placeholders = placeholders;
        let started = std::time::Instant::now();
        self.db.save(&self.saved, &self.dirty)?;
        tracing::debug!(ms = started.elapsed().as_millis(), "state saved");
        self.dirty = Dirty::default();
        self.saved_placeholders = self.saved.placeholders.clone();
        Ok(())
    }

    /// Local changes not yet pushed: what a scan finds against the base.
    pub fn pending(&self) -> Result<Vec<intersync_protocol::kml::Op>, SyncError> {
        let mut scratch = self.saved.base.clone();
        Ok(self.scan(&mut scratch)?.ops)
    }

    /// Forgets the conflicts reported so far (after a person looked at them).
    pub fn clear_conflicts(&mut self) -> Result<(), WorkingCopyError> {
        self.saved.conflicts.clear();
        self.save()
    }

    /// Folder for partial downloads, by version.
    pub fn partial_dir(&self) -> PathBuf {
        self.state_dir.join("partial")
    }
}

/// Whether `state_dir` holds a saved state: the database with its head
/// row, or the JSON file of before. A database a first save never reached
/// (killed at its creation) is none: the working copy is made anew.
fn has_saved_state(state_dir: &Path) -> Result<bool, WorkingCopyError> {
    if state_dir.join(LEGACY_STATE).exists() {
        return Ok(true);
    }
    if !state_dir.join(state_db::FILE_NAME).exists() {
        return Ok(false);
    }
    Ok(!StateDb::open(state_dir)?.is_empty()?)
}

/// The state file of before the database: its JSON (one line: serde_json
/// writes no raw newline) and a line of CRC-32s, one for each [`CHECKED`]
/// bytes of it.
const LEGACY_STATE: &str = "state.json";
const CHECKED: usize = 64 << 10;
const CHECKSUMS: &[u8] = b"#crc32/65536";

/// The state saved in `path` by a version before the database.
fn read_legacy(path: &Path) -> Result<Saved, WorkingCopyError> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    let json = checked(&bytes).map_err(|(start, end)| WorkingCopyError::DamagedState {
        path: path.to_owned(),
        start,
        end,
    })?;
    serde_json::from_slice(json).map_err(|e| WorkingCopyError::BadState {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Marks what differs between `old` and `new`: a path in one only, or with
/// another entry or stat.
fn mark_changes(dirty: &mut Dirty, old: &Index, new: &Index) {
    if matches!(dirty, Dirty::All) {
        return;
    }
    let (mut a, mut b) = (old.state.iter().peekable(), new.state.iter().peekable());
    loop {
        let path = match (a.peek().copied(), b.peek().copied()) {
            (None, None) => break,
            (Some((pa, _)), None) => {
                a.next();
                Some(pa)
            }
            (None, Some((pb, _))) => {
                b.next();
                Some(pb)
            }
            (Some((pa, ea)), Some((pb, eb))) => match pa.cmp(pb) {
                std::cmp::Ordering::Less => {
                    a.next();
                    Some(pa)
                }
                std::cmp::Ordering::Greater => {
                    b.next();
                    Some(pb)
                }
                std::cmp::Ordering::Equal => {
                    a.next();
                    b.next();
                    (ea != eb || old.stats.get(pa) != new.stats.get(pb)).then_some(pa)
                }
            },
        };
        if let Some(p) = path {
            dirty.mark(p);
        }
    }
}

#[cfg(test)]
/// The line of checksums of `json`, as versions before the database wrote it.
fn checksums(json: &[u8]) -> Vec<u8> {
    let mut line = Vec::with_capacity(CHECKSUMS.len() + 2 + json.len() / CHECKED * 8 + 8);
    line.push(b'\n');
    line.extend_from_slice(CHECKSUMS);
    for piece in json.chunks(CHECKED) {
        line.extend_from_slice(format!(" {:08x}", crc32fast::hash(piece)).as_bytes());
    }
    line.push(b'\n');
    line
}

/// The JSON of a state file whose checksums match, or the first damaged
/// byte range. A file without checksums (written before they were) is
/// taken as it is.
fn checked(bytes: &[u8]) -> Result<&[u8], (u64, u64)> {
    let Some(newline) = bytes.iter().position(|&b| b == b'\n') else {
        return Ok(bytes);
    };
    let (json, line) = (&bytes[..newline], &bytes[newline + 1..]);
    let whole = (0, bytes.len() as u64);
    let sums = line
        .strip_prefix(CHECKSUMS)
        .and_then(|l| l.strip_suffix(b"\n"))
        .and_then(|l| std::str::from_utf8(l).ok())
        .ok_or((newline as u64, bytes.len() as u64))?;
    let mut sums = sums.split(' ').skip(1);
    for (i, piece) in json.chunks(CHECKED).enumerate() {
        let start = (i * CHECKED) as u64;
        let end = start + piece.len() as u64;
        let stored = sums.next().and_then(|s| u32::from_str_radix(s, 16).ok());
        if stored != Some(crc32fast::hash(piece)) {
            return Err((start, end));
        }
    }
    if sums.next().is_some() {
        return Err(whole);
    }
    Ok(json)
}

fn normalise(url: &str) -> &str {
    url.trim_end_matches('/')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::EntryKind;

    /// A working copy saved as one JSON file (before the database) opens,
    /// moves into `state.db` once, and keeps all it knew.
    #[test]
    fn a_state_of_before_the_database_is_moved_into_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join(STATE_DIR);
        fs::create_dir_all(&state_dir).unwrap();
        let mut saved = Saved {
            url: "http://127.0.0.1:9/".into(),
            server_id: Some("s1".into()),
            node: 99,
            last_sync_ns: Some(5),
            ..Saved::default()
        };
        for n in 0..3u8 {
            saved.base.state.insert(
                TreePath::new(&format!("f{n}")).unwrap(),
                Entry {
                    kind: EntryKind::File {
                        version: Version([n; 32]),
                        size: 1,
                    },
                    mode: 0o600,
                    mtime_ns: 10,
                    uid: 0,
                    gid: 0,
                },
            );
        }
        saved.base.state.seq = 3;
        saved.conflicts.push(Conflict {
            path: TreePath::new("f1").unwrap(),
            kept_as: None,
            what: "both edited".into(),
        });
        let json = serde_json::to_vec(&saved).unwrap();
        let legacy = state_dir.join(LEGACY_STATE);
        fs::write(&legacy, [json.clone(), checksums(&json)].concat()).unwrap();

        let wc = WorkingCopy::open(dir.path()).unwrap();
        assert_eq!(wc.saved.base.state, saved.base.state);
        assert_eq!(wc.saved.conflicts, saved.conflicts);
        assert_eq!((wc.saved.node, wc.saved.last_sync_ns), (99, Some(5)));
        assert!(!legacy.exists(), "the JSON state was left behind");
        drop(wc);
        let again = WorkingCopy::open(dir.path()).unwrap();
        assert_eq!(again.saved.base.state, saved.base.state);
        assert_eq!(again.saved.server_id.as_deref(), Some("s1"));
    }

    /// A working copy whose first save never happened (its database made,
    /// then the process killed) is made anew by the next sync.
    #[test]
    fn a_database_that_never_got_its_first_save_is_made_anew() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join(STATE_DIR);
        fs::create_dir_all(&state_dir).unwrap();
        drop(StateDb::open(&state_dir).unwrap());
        assert!(WorkingCopy::open(dir.path()).is_err());
        let wc = WorkingCopy::open_or_create(dir.path(), "http://127.0.0.1:9/").unwrap();
        assert_eq!(wc.saved.url, "http://127.0.0.1:9/");
        drop(wc);
        assert!(WorkingCopy::open(dir.path()).is_ok());
    }

    /// A folder that is not a working copy opens as an error, and is left
    /// without a database.
    #[test]
    fn opening_a_folder_that_is_not_a_working_copy_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join(STATE_DIR)).unwrap();
        assert!(WorkingCopy::open(dir.path()).is_err());
        assert!(
            !dir.path()
                .join(STATE_DIR)
                .join(state_db::FILE_NAME)
                .exists()
        );
    }
}
