//! The state of a tree at a point in its KML: every path with its kind,
//! content version and attributes. Replaying records onto a state is how a
//! server recovers its tree, how a checkpoint is written and read, and how a
//! client knows what it last synced.

use std::collections::BTreeMap;
use std::ops::Bound;

use intersync_protocol::kml::{Attrs, KmlRecord, Op};
use intersync_protocol::{TreePath, Version};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// What kind of thing is at a path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    File { version: Version, size: u64 },
    Dir,
    Symlink { target: Vec<u8> },
}

/// One path of a tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub kind: EntryKind,
    /// Permission bits (and setuid, setgid, sticky), without the file type.
    pub mode: u32,
    pub mtime_ns: i64,
    pub uid: u32,
    pub gid: u32,
}

impl Entry {
    pub fn is_dir(&self) -> bool {
        self.kind == EntryKind::Dir
    }

    pub fn version(&self) -> Option<Version> {
        match self.kind {
            EntryKind::File { version, .. } => Some(version),
            _ => None,
        }
    }
}

/// A record that does not fit the state it is applied to.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("KML record {seq} does not fit the tree: {reason}")]
pub struct TreeError {
    pub seq: u64,
    pub reason: String,
}

/// Every path of a tree, ordered so that a folder comes before what it holds.
/// What some applied records changed: each path they touched, as it was
/// before, in the order touched. Costs what the records touch, not the tree
/// (where a copy of the state would cost the tree on every append).
#[derive(Debug, Default)]
pub struct Undo {
    seq: Option<u64>,
    before: Vec<(TreePath, Option<Entry>)>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeState {
    /// Sequence number of the last record applied (0: none).
    pub seq: u64,
    entries: BTreeMap<TreePath, Entry>,
}

impl TreeState {
    /// The state of `entries` at `seq` (built in one pass when they come
    /// in path order, as a database reads them).
    pub fn from_entries(
        seq: u64,
        entries: impl IntoIterator<Item = (TreePath, Entry)>,
    ) -> TreeState {
        TreeState {
            seq,
            entries: entries.into_iter().collect(),
        }
    }

    pub fn get(&self, path: &TreePath) -> Option<&Entry> {
        self.entries.get(path)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&TreePath, &Entry)> {
        self.entries.iter()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The paths strictly inside `dir`.
    pub fn descendants<'a>(
        &'a self,
        dir: &'a TreePath,
    ) -> impl Iterator<Item = (&'a TreePath, &'a Entry)> {
        // "a/" sorts after "a" and "a.txt" but before "a/b": start there.
        let prefix = format!("{dir}/");
        self.entries
            .range::<str, _>((Bound::Included(prefix.as_str()), Bound::Unbounded))
            .take_while(move |(p, _)| p.starts_with(dir))
    }

    /// Puts an entry in place, outside the journal (a client's own bookkeeping).
    pub fn insert(&mut self, path: TreePath, entry: Entry) {
        self.entries.insert(path, entry);
    }

    /// Takes an entry out, outside the journal.
    pub fn remove(&mut self, path: &TreePath) -> Option<Entry> {
        self.entries.remove(path)
    }

    /// A path with the same content, if any: a local copy beats a download.
    pub fn find_version(&self, version: Version) -> Option<&TreePath> {
        self.entries
            .iter()
            .find(|(_, e)| e.version() == Some(version))
            .map(|(p, _)| p)
    }

    /// Applies one record. Records must come in sequence order.
    pub fn apply(&mut self, rec: &KmlRecord) -> Result<(), TreeError> {
        let fail = |reason: String| TreeError {
            seq: rec.seq,
            reason,
        };
        if rec.seq <= self.seq {
            return Err(fail(format!("already at sequence {}", self.seq)));
        }
        self.change(&rec.op, rec.time_ns).map_err(fail)?;
        self.seq = rec.seq;
        Ok(())
    }

    /// [`TreeState::apply`], noting in `undo` what it changes so that
    /// [`TreeState::undo`] can put it back. A record that fails is undone
    /// at once; those before it stay applied (and noted).
    pub fn apply_noting(&mut self, rec: &KmlRecord, undo: &mut Undo) -> Result<(), TreeError> {
        undo.seq.get_or_insert(self.seq);
        let mark = undo.before.len();
        let note = |p: &TreePath, before: &mut Vec<(TreePath, Option<Entry>)>| {
            before.push((p.clone(), self.entries.get(p).cloned()));
        };
        match &rec.op {
            Op::Rename { from, to } => {
                note(from, &mut undo.before);
                note(to, &mut undo.before);
                for (p, e) in self.descendants(from) {
                    undo.before.push((p.clone(), Some(e.clone())));
                    if let Ok(landing) = to.join(&p.as_str()[from.as_str().len() + 1..]) {
                        note(&landing, &mut undo.before);
                    }
                }
            }
            op => note(op.path(), &mut undo.before),
        }
        let (seq, applied) = (self.seq, self.apply(rec));
        if applied.is_err() {
            for (p, e) in undo.before.drain(mark..).rev() {
                self.put_back(p, e);
            }
            self.seq = seq;
        }
        applied
    }

    /// Applies `recs` in order: all of them, or (when one cannot apply)
    /// none. The [`Undo`] takes them all back.
    pub fn apply_all(&mut self, recs: &[KmlRecord]) -> Result<Undo, TreeError> {
        let mut undo = Undo::default();
        for rec in recs {
            if let Err(e) = self.apply_noting(rec, &mut undo) {
                self.undo(undo);
                return Err(e);
            }
        }
        Ok(undo)
    }

    /// Takes back what the records noted in `undo` did: the state is as
    /// before the first of them.
    pub fn undo(&mut self, undo: Undo) {
        for (p, e) in undo.before.into_iter().rev() {
            self.put_back(p, e);
        }
        if let Some(seq) = undo.seq {
            self.seq = seq;
        }
    }

    fn put_back(&mut self, path: TreePath, entry: Option<Entry>) {
        match entry {
            Some(e) => {
                self.entries.insert(path, e);
            }
            None => {
                self.entries.remove(&path);
            }
        }
    }

    /// What `op` (made at `time_ns`) does to the tree; why it cannot.
    fn change(&mut self, op: &Op, time_ns: i64) -> Result<(), String> {
        match op {
            Op::Create { path, mode } => {
                self.need_parent(path)?;
                let empty = EntryKind::File {
                    version: empty_version(),
                    size: 0,
                };
                self.entries
                    .insert(path.clone(), new_entry(empty, *mode, time_ns));
            }
            Op::Write {
                path,
                version,
                size,
                mtime_ns,
            } => {
                self.need_parent(path)?;
                let kind = EntryKind::File {
                    version: *version,
                    size: *size,
                };
                match self.entries.get_mut(path) {
                    Some(e) if !e.is_dir() => {
                        e.kind = kind;
                        e.mtime_ns = *mtime_ns;
                    }
                    Some(_) => return Err(format!("write to folder {path}")),
                    None => {
                        self.entries
                            .insert(path.clone(), new_entry(kind, 0o644, *mtime_ns));
                    }
                }
            }
            Op::Mkdir { path, mode } => {
                self.need_parent(path)?;
                if self.entries.get(path).is_some_and(|e| !e.is_dir()) {
                    return Err(format!("mkdir over a file at {path}"));
                }
                self.entries
                    .insert(path.clone(), new_entry(EntryKind::Dir, *mode, time_ns));
            }
            Op::Unlink { path } => match self.entries.get(path) {
                Some(e) if !e.is_dir() => {
                    self.entries.remove(path);
                }
                Some(_) => return Err(format!("unlink of folder {path}")),
                None => return Err(format!("unlink of missing {path}")),
            },
            Op::Rmdir { path } => {
                if !self.entries.get(path).is_some_and(Entry::is_dir) {
                    return Err(format!("rmdir of non-folder {path}"));
                }
                if self.descendants(path).next().is_some() {
                    return Err(format!("rmdir of non-empty {path}"));
                }
                self.entries.remove(path);
            }
            Op::Rename { from, to } => self.rename(from, to)?,
            Op::Setattr { path, attrs } => {
                let Some(e) = self.entries.get_mut(path) else {
                    return Err(format!("setattr of missing {path}"));
                };
                set_attrs(e, attrs);
            }
            Op::Symlink { path, target } => {
                self.need_parent(path)?;
                let link = EntryKind::Symlink {
                    target: target.clone(),
                };
                self.entries
                    .insert(path.clone(), new_entry(link, 0o777, time_ns));
            }
            Op::Link { path, target } => {
                self.need_parent(path)?;
                let Some(e) = self.entries.get(target).filter(|e| !e.is_dir()).cloned() else {
                    return Err(format!("link to missing file {target}"));
                };
                self.entries.insert(path.clone(), e);
            }
        }
        Ok(())
    }

    fn need_parent(&self, path: &TreePath) -> Result<(), String> {
        match path.parent() {
            None => Ok(()),
            Some(parent) if self.entries.get(&parent).is_some_and(Entry::is_dir) => Ok(()),
            Some(parent) => Err(format!("{path} has no folder {parent}")),
        }
    }

    fn rename(&mut self, from: &TreePath, to: &TreePath) -> Result<(), String> {
        if from == to {
            return Ok(());
        }
        self.need_parent(to)?;
        let Some(entry) = self.entries.get(from).cloned() else {
            return Err(format!("rename of missing {from}"));
        };
        if to.starts_with(from) {
            return Err(format!("rename of {from} into itself"));
        }
        if let Some(existing) = self.entries.get(to) {
            if existing.is_dir() != entry.is_dir() {
                return Err(format!("rename of {from} over {to} of another kind"));
            }
            if existing.is_dir() && self.descendants(to).next().is_some() {
                return Err(format!("rename over non-empty folder {to}"));
            }
        }
        let moved: Vec<(TreePath, Entry)> = self
            .descendants(from)
            .map(|(p, e)| (p.clone(), e.clone()))
            .collect();
        self.entries.remove(from);
        self.entries.insert(to.clone(), entry);
        for (path, e) in moved {
            self.entries.remove(&path);
            let rest = &path.as_str()[from.as_str().len() + 1..];
            let new_path = to.join(rest).map_err(|e| format!("rename to {to}: {e}"))?;
            self.entries.insert(new_path, e);
        }
        Ok(())
    }

    /// The operations that rebuild this state from nothing, folders first:
    /// the body of a checkpoint.
    pub fn rebuild_ops(&self) -> Vec<Op> {
        let mut ops = Vec::with_capacity(self.entries.len() * 2);
        let mut dir_times = Vec::new();
        for (path, e) in &self.entries {
            let path = path.clone();
            match &e.kind {
                EntryKind::Dir => {
                    ops.push(Op::Mkdir {
                        path: path.clone(),
                        mode: e.mode,
                    });
                    dir_times.push((path, e));
                    continue;
                }
                EntryKind::File { version, size } => {
                    ops.push(Op::Create {
                        path: path.clone(),
                        mode: e.mode,
                    });
                    ops.push(Op::Write {
                        path: path.clone(),
                        version: *version,
                        size: *size,
                        mtime_ns: e.mtime_ns,
                    });
                }
                EntryKind::Symlink { target } => ops.push(Op::Symlink {
                    path: path.clone(),
                    target: target.clone(),
                }),
            }
            ops.push(times_and_owner(path, e));
        }
        // Folder times last, since filling a folder changes its mtime.
        for (path, e) in dir_times {
            ops.push(times_and_owner(path, e));
        }
        ops
    }
}

/// The setattr that gives `path` the mtime and ownership of `e`.
fn times_and_owner(path: TreePath, e: &Entry) -> Op {
    Op::Setattr {
        path,
        attrs: Attrs {
            mode: None,
            mtime_ns: Some(e.mtime_ns),
            uid: Some(e.uid),
            gid: Some(e.gid),
        },
    }
}

/// Builds a state from records that mostly come in path order, as a
/// checkpoint's do (each path's records together, paths ascending, the
/// folders' times at the end): a record that makes or changes the last
/// path built, its parent already there, is applied to a list, and the
/// tree is made from the list in one pass; at the first record that does
/// not fit that form, the rest go through [`TreeState::apply`]. Either way
/// the result, and any refusal, is `apply`'s.
#[derive(Debug, Default)]
pub struct InOrder {
    seq: u64,
    built: Vec<(TreePath, Entry)>,
    rest: Option<TreeState>,
}

impl InOrder {
    pub fn push(&mut self, rec: &KmlRecord) -> Result<(), TreeError> {
        if let Some(state) = &mut self.rest {
            return state.apply(rec);
        }
        if rec.seq > self.seq && self.in_order(rec) {
            self.seq = rec.seq;
            return Ok(());
        }
        let mut state = TreeState::from_entries(self.seq, std::mem::take(&mut self.built));
        let applied = state.apply(rec);
        self.rest = Some(state);
        applied
    }

    /// Applies `rec` to the list if it has the in-order form.
    fn in_order(&mut self, rec: &KmlRecord) -> bool {
        let path = rec.op.path();
        let last = self.built.last_mut();
        if let Some((at, e)) = last
            && at == path
        {
            match &rec.op {
                Op::Write {
                    version,
                    size,
                    mtime_ns,
                    ..
                } if !e.is_dir() => {
                    e.kind = EntryKind::File {
                        version: *version,
                        size: *size,
                    };
                    e.mtime_ns = *mtime_ns;
                }
                Op::Setattr { attrs, .. } => set_attrs(e, attrs),
                _ => return false,
            }
            return true;
        }
        if self.built.last().is_some_and(|(at, _)| at >= path) || !self.has_parent(path) {
            return false;
        }
        let entry = match &rec.op {
            Op::Create { mode, .. } => new_entry(
                EntryKind::File {
                    version: empty_version(),
                    size: 0,
                },
                *mode,
                rec.time_ns,
            ),
            Op::Write {
                version,
                size,
                mtime_ns,
                ..
            } => new_entry(
                EntryKind::File {
                    version: *version,
                    size: *size,
                },
                0o644,
                *mtime_ns,
            ),
            Op::Mkdir { mode, .. } => new_entry(EntryKind::Dir, *mode, rec.time_ns),
            Op::Symlink { target, .. } => new_entry(
                EntryKind::Symlink {
                    target: target.clone(),
                },
                0o777,
                rec.time_ns,
            ),
            _ => return false,
        };
        self.built.push((path.clone(), entry));
        true
    }

    fn has_parent(&self, path: &TreePath) -> bool {
        let Some(parent) = path.parent() else {
            return true;
        };
        self.built
            .binary_search_by(|(p, _)| p.cmp(&parent))
            .is_ok_and(|i| self.built[i].1.is_dir())
    }

    pub fn finish(self) -> TreeState {
        self.rest
            .unwrap_or_else(|| TreeState::from_entries(self.seq, self.built))
    }
}

fn new_entry(kind: EntryKind, mode: u32, mtime_ns: i64) -> Entry {
    Entry {
        kind,
        mode,
        mtime_ns,
        uid: 0,
        gid: 0,
    }
}

fn set_attrs(e: &mut Entry, attrs: &Attrs) {
    if let Some(mode) = attrs.mode {
        e.mode = mode;
    }
    if let Some(mtime) = attrs.mtime_ns {
        e.mtime_ns = mtime;
    }
    if let Some(uid) = attrs.uid {
        e.uid = uid;
    }
    if let Some(gid) = attrs.gid {
        e.gid = gid;
    }
}

/// The version of an empty file.
pub fn empty_version() -> Version {
    Version::of(b"")
}

#[cfg(test)]
mod tests {
    use intersync_protocol::NodeId;

    use super::*;

    fn p(s: &str) -> TreePath {
        TreePath::new(s).unwrap()
    }

    fn replay(state: &mut TreeState, ops: Vec<Op>) -> Result<(), TreeError> {
        for op in ops {
            let rec = KmlRecord {
                seq: state.seq + 1,
                time_ns: 5,
                node: NodeId(1),
                op,
            };
            state.apply(&rec)?;
        }
        Ok(())
    }

    fn write(path: &str, byte: u8) -> Op {
        Op::Write {
            path: p(path),
            version: Version([byte; 32]),
            size: 1,
            mtime_ns: 9,
        }
    }

    #[test]
    fn rename_moves_a_subtree() {
        let mut s = TreeState::default();
        replay(
            &mut s,
            vec![
                Op::Mkdir {
                    path: p("a"),
                    mode: 0o755,
                },
                Op::Mkdir {
                    path: p("a/b"),
                    mode: 0o755,
                },
                write("a/b/f", 1),
                write("a.txt", 2),
                write("ab", 3),
                Op::Rename {
                    from: p("a"),
                    to: p("z"),
                },
            ],
        )
        .unwrap();
        let paths: Vec<&str> = s.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["a.txt", "ab", "z", "z/b", "z/b/f"]);
        assert_eq!(
            s.get(&p("z/b/f")).unwrap().version(),
            Some(Version([1; 32]))
        );
        assert_eq!(s.seq, 6);
    }

    #[test]
    fn refuses_records_that_do_not_fit() {
        let mut s = TreeState::default();
        replay(
            &mut s,
            vec![
                Op::Mkdir {
                    path: p("d"),
                    mode: 0o755,
                },
                write("d/f", 1),
            ],
        )
        .unwrap();
        for (op, says) in [
            (write("nowhere/f", 1), "has no folder nowhere"),
            (Op::Rmdir { path: p("d") }, "non-empty"),
            (Op::Unlink { path: p("d") }, "unlink of folder"),
            (Op::Unlink { path: p("x") }, "missing x"),
            (
                Op::Rename {
                    from: p("d"),
                    to: p("d/e"),
                },
                "into itself",
            ),
            (
                Op::Link {
                    path: p("l"),
                    target: p("d"),
                },
                "link to missing file d",
            ),
        ] {
            let mut t = s.clone();
            let err = replay(&mut t, vec![op]).unwrap_err();
            assert!(err.reason.contains(says), "{err}");
        }
    }

    #[test]
    fn rebuild_ops_rebuild_the_state() {
        let mut s = TreeState::default();
        replay(
            &mut s,
            vec![
                Op::Mkdir {
                    path: p("d"),
                    mode: 0o700,
                },
                Op::Create {
                    path: p("d/f"),
                    mode: 0o600,
                },
                write("d/f", 7),
                Op::Symlink {
                    path: p("l"),
                    target: b"d/f".to_vec(),
                },
                Op::Setattr {
                    path: p("d"),
                    attrs: Attrs {
                        mtime_ns: Some(77),
                        uid: Some(1000),
                        ..Attrs::default()
                    },
                },
            ],
        )
        .unwrap();
        let mut rebuilt = TreeState::default();
        replay(&mut rebuilt, s.rebuild_ops()).unwrap();
        assert_eq!(rebuilt.entries, s.entries);
    }

    fn any_op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        const PATHS: [&str; 7] = ["a", "b", "a/x", "a/y", "b/x", "a/x/z", "c"];
        let path = || proptest::sample::select(&PATHS[..]).prop_map(p);
        prop_oneof![
            path().prop_map(|path| Op::Create { path, mode: 0o644 }),
            (path(), any::<u8>()).prop_map(|(path, b)| Op::Write {
                path,
                version: Version([b; 32]),
                size: 1,
                mtime_ns: 9,
            }),
            path().prop_map(|path| Op::Mkdir { path, mode: 0o755 }),
            path().prop_map(|path| Op::Unlink { path }),
            path().prop_map(|path| Op::Rmdir { path }),
            (path(), path()).prop_map(|(from, to)| Op::Rename { from, to }),
            path().prop_map(|path| Op::Setattr {
                path,
                attrs: Attrs {
                    mode: Some(0o600),
                    ..Attrs::default()
                },
            }),
            path().prop_map(|path| Op::Symlink {
                path,
                target: b"t".to_vec(),
            }),
            (path(), path()).prop_map(|(path, target)| Op::Link { path, target }),
        ]
    }

    proptest::proptest! {
        /// Whatever records apply or fail, a failed one changes nothing,
        /// and the undo of all that applied gives the state they started
        /// from: what a journal append relies on instead of a copy.
        #[test]
        fn an_undo_takes_back_exactly_what_was_applied(
            ops in proptest::collection::vec(any_op(), 1..40),
        ) {
            let mut s = TreeState::default();
            replay(&mut s, vec![
                Op::Mkdir { path: p("a"), mode: 0o755 },
                Op::Mkdir { path: p("a/x"), mode: 0o755 },
                write("a/x/z", 1),
                write("a/y", 2),
            ]).unwrap();
            let start = s.clone();
            let mut undo = Undo::default();
            for (i, op) in ops.into_iter().enumerate() {
                let before = s.clone();
                let rec = KmlRecord { seq: s.seq + 1, time_ns: i as i64, node: NodeId(1), op };
                if s.apply_noting(&rec, &mut undo).is_err() {
                    proptest::prop_assert_eq!(&s, &before);
                }
            }
            s.undo(undo);
            proptest::prop_assert_eq!(s, start);
        }
    }

    proptest::proptest! {
        /// A checkpoint of any state built in order is that state, and any
        /// records after it (in order or not) give what `apply` gives.
        #[test]
        fn building_in_order_is_applying(
            ops in proptest::collection::vec(any_op(), 0..40),
            more in proptest::collection::vec(any_op(), 0..10),
        ) {
            let mut made = TreeState::default();
            for op in ops {
                let rec = KmlRecord { seq: made.seq + 1, time_ns: 3, node: NodeId(1), op };
                let _ = made.apply(&rec);
            }
            let mut records: Vec<KmlRecord> = made
                .rebuild_ops()
                .into_iter()
                .enumerate()
                .map(|(i, op)| KmlRecord { seq: i as u64 + 1, time_ns: 4, node: NodeId(1), op })
                .collect();
            let n = records.len() as u64;
            records.extend(more.into_iter().enumerate().map(|(i, op)| KmlRecord {
                seq: n + i as u64 + 1,
                time_ns: 5,
                node: NodeId(1),
                op,
            }));
            let (mut applied, mut built) = (TreeState::default(), InOrder::default());
            for rec in &records {
                let (a, b) = (applied.apply(rec), built.push(rec));
                proptest::prop_assert_eq!(&a, &b);
                if a.is_err() {
                    break;
                }
            }
            proptest::prop_assert_eq!(built.finish(), applied);
        }
    }
}
