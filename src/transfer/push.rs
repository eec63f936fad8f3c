//! The sending side of a push: an rsync command line whose destination is
//! an export (`intersync -a src/ https://host/export/`). The source is
//! listed as for a local copy; the export's journal says what it holds;
//! each difference becomes a request with its precondition: a whole PUT for
//! a new file, a delta PUT against the server's signature of its version
//! for a changed one, batches of folder, symlink and delete operations for
//! the rest. rsync's itemize letters are those of a sender (`<f`).
//!
//! What it trusts: the export's journal for what is there; every write
//! carries the version it expects, so a file that changed on the server
//! meanwhile is refused (and reported), never overwritten blindly.

use bytes::Bytes;
use intersync_compat::ExitCode;
use intersync_compat::filter::Side;
use intersync_compat::options::{DeleteMode, Plan};
use intersync_compat::output::Stats;
use intersync_protocol::batch::BatchOp;
use intersync_protocol::{TreePath, Version};

use super::flist::{Entry, FileList, Kind, NoFiles};
use super::{Event, Export, Outcome, count, same_mtime};
use crate::client::upload::{self, Upload};
use crate::delta::MappedFile;
use crate::transport::{FileMeta, Remote, TransportError};
use crate::tree::{EntryKind, TreeState};

struct Pusher<'a> {
    plan: &'a Plan,
    events: &'a mut dyn FnMut(Event),
    export: &'a Export,
    tree: &'a TreeState,
    stats: Stats,
    batch: Vec<(BatchOp, String)>,
    errors: bool,
    refused: Option<String>,
    umask: u32,
}

/// Sends the lists to the export.
pub(super) fn push(
    plan: &Plan,
    lists: &[FileList],
    export: &Export,
    tree: &TreeState,
    events: &mut dyn FnMut(Event),
) -> Outcome {
    let started = std::time::Instant::now();
    let mut p = Pusher {
        plan,
        events,
        export,
        tree,
        stats: Stats::default(),
        batch: Vec::new(),
        errors: false,
        refused: None,
        umask: super::current_umask(),
    };
    let io_error = lists.iter().any(FileList::io_error);
    let missing = lists.iter().any(|l| {
        l.problems
            .iter()
            .any(|p| matches!(p, super::flist::Problem::Missing(_)))
    });
    let deleting = plan.delete.is_some() && (!io_error || plan.ignore_errors);
    for list in lists {
        if deleting && plan.delete == Some(DeleteMode::Before) {
            p.deletions(list);
        }
        for entry in &list.entries {
            if p.refused.is_some() {
                break;
            }
            count(&mut p.stats.files, &entry.kind);
            match &entry.kind {
                Kind::File => p.stats.total_size += entry.size,
                Kind::Symlink(t) => p.stats.total_size += t.len() as u64,
                _ => {}
            }
            p.item(entry);
        }
        if deleting && plan.delete != Some(DeleteMode::Before) && p.refused.is_none() {
            p.deletions(list);
        }
    }
    p.flush();
    let t = export.remote.traffic();
    p.stats.sent_bytes = t.sent_bytes;
    p.stats.received_bytes = t.received_bytes;
    p.stats.seconds = started.elapsed().as_secs_f64();
    let exit = if let Some(why) = p.refused.take() {
        (p.events)(Event::Error(why));
        ExitCode::StartClient
    } else if p.errors || io_error || missing {
        ExitCode::Partial
    } else {
        ExitCode::Ok
    };
    Outcome {
        stats: p.stats,
        exit,
    }
}

impl Pusher<'_> {
    fn say(&mut self, e: Event) {
        (self.events)(e);
    }

    fn item_event(&mut self, itemize: String, e: &Entry, changed: bool, transferred: bool) {
        self.say(Event::item(itemize, e, changed, transferred));
    }

    /// A failed request: a refusal of rights stops the push (rsync's exit
    /// 5), anything else is this item's error (exit 23).
    fn failed(&mut self, what: &str, e: TransportError) {
        if e.is_auth() {
            self.refused = Some(format!("{what}: {}", crate::monitor::Chain(&e)));
        } else {
            self.errors = true;
            self.say(Event::Error(format!(
                "{what}: {}",
                crate::monitor::Chain(&e)
            )));
        }
    }

    fn flush(&mut self) {
        if self.batch.is_empty() || self.plan.dry_run {
            self.batch.clear();
            return;
        }
        let (ops, names): (Vec<_>, Vec<_>) = std::mem::take(&mut self.batch).into_iter().unzip();
        let answer = self.export.runtime.block_on(self.export.remote.ops(ops));
        match answer {
            Ok(results) => {
                for (result, name) in results.into_iter().zip(names) {
                    let (status, reason) = (result.status, result.reason());
                    if status != 200 {
                        if status == 401 || status == 403 {
                            self.refused = Some(format!("{name}: {status} {reason}"));
                        } else {
                            self.errors = true;
                            self.say(Event::Error(format!("{name}: {status} {reason}")));
                        }
                    }
                }
            }
            Err(e) => self.failed("sending changes", e),
        }
    }

    fn new_mode(&self, e: &Entry) -> u32 {
        if self.plan.perms {
            e.mode & 0o7777
        } else {
            e.mode & 0o777 & !self.umask
        }
    }

    fn item(&mut self, e: &Entry) {
        if e.name.is_empty() {
            // The export's root is there; its attributes are not journaled.
            let itemize = ".d         ".to_string();
            self.item_event(itemize, e, false, false);
            return;
        }
        let Ok(text) = std::str::from_utf8(&e.name) else {
            self.errors = true;
            let name = String::from_utf8_lossy(&e.name).into_owned();
            self.say(Event::Error(format!("{name}: an export's names are UTF-8")));
            return;
        };
        let Ok(path) = TreePath::new(text) else {
            self.errors = true;
            self.say(Event::Error(format!(
                "{text}: not a path an export can hold"
            )));
            return;
        };
        let there = self.tree.get(&path).cloned();
        match &there {
            Some(t) if self.plan.ignore_existing && !(t.is_dir() && e.kind == Kind::Dir) => {
                if e.kind == Kind::Dir && self.plan.times && !t.is_dir() && !self.plan.dry_run {
                    // rsync still sets the folder's time on what is there.
                    self.batch.push((
                        BatchOp::Setattr {
                            path: path.clone(),
                            mode: None,
                            mtime_ns: Some(e.mtime * 1_000_000_000 + i64::from(e.mtime_nsec)),
                        },
                        e.display(),
                    ));
                }
                return;
            }
            None if self.plan.existing => return,
            _ => {}
        }
        // Something of another kind is in the way.
        if let Some(t) = &there {
            let same_kind = matches!(
                (&e.kind, &t.kind),
                (Kind::File, EntryKind::File { .. })
                    | (Kind::Dir, EntryKind::Dir)
                    | (Kind::Symlink(_), EntryKind::Symlink { .. })
            );
            if !same_kind {
                if t.is_dir()
                    && self.plan.delete.is_none()
                    && self.tree.descendants(&path).next().is_some()
                {
                    self.say(Event::Info(format!(
                        "cannot delete non-empty directory: {text}"
                    )));
                    self.errors = true;
                    self.say(Event::Error(format!(
                        "could not make way for new item: {text}"
                    )));
                    return;
                }
                self.remove(&path, false);
                self.flush();
                return self.create(e, &path, None);
            }
        }
        self.create(e, &path, there.as_ref())
    }

    fn create(&mut self, e: &Entry, path: &TreePath, there: Option<&crate::tree::Entry>) {
        let plan = self.plan;
        match (&e.kind, there) {
            (Kind::Dir, None) => {
                count(&mut self.stats.created, &e.kind);
                self.item_event("cd+++++++++".into(), e, true, false);
                let mode = self.new_mode(e) | 0o700;
                self.batch.push((
                    BatchOp::Mkdir {
                        path: path.clone(),
                        mode: Some(mode),
                    },
                    e.display(),
                ));
            }
            (Kind::Dir, Some(t)) => {
                let perms = plan.perms && (e.mode & 0o7777) != (t.mode & 0o7777);
                let flags = if perms { ".d...p....." } else { ".d         " };
                self.item_event(flags.into(), e, perms, false);
                if perms {
                    self.batch.push((
                        BatchOp::Setattr {
                            path: path.clone(),
                            mode: Some(e.mode & 0o7777),
                            mtime_ns: None,
                        },
                        e.display(),
                    ));
                }
            }
            (Kind::Symlink(target), there) => {
                let same = matches!(there.map(|t| &t.kind), Some(EntryKind::Symlink { target: t }) if t == target);
                if same {
                    self.item_event(".L         ".into(), e, false, false);
                    return;
                }
                if there.is_some() {
                    self.item_event("cLc........".into(), e, true, false);
                    self.batch.push((
                        BatchOp::Unlink {
                            path: path.clone(),
                            if_match: None,
                        },
                        e.display(),
                    ));
                } else {
                    count(&mut self.stats.created, &e.kind);
                    self.item_event("cL+++++++++".into(), e, true, false);
                }
                self.batch.push((
                    BatchOp::Symlink {
                        path: path.clone(),
                        target: target.clone(),
                    },
                    e.display(),
                ));
            }
            (Kind::File, there) => self.file(e, path, there),
            (Kind::Device { .. } | Kind::Special { .. }, _) => {
                self.say(Event::Info(format!(
                    "skipping non-regular file \"{}\" (an export holds files, folders and symlinks)",
                    e.display()
                )));
            }
        }
    }

    fn file(&mut self, e: &Entry, path: &TreePath, there: Option<&crate::tree::Entry>) {
        let plan = self.plan;
        let base = there.and_then(|t| match t.kind {
            EntryKind::File { version, size } => Some((version, size, t.mode, t.mtime_ns)),
            _ => None,
        });
        let mtime = |ns: i64| {
            (
                ns.div_euclid(1_000_000_000),
                ns.rem_euclid(1_000_000_000) as u32,
            )
        };
        let mut itemize = "<f+++++++++".to_string();
        if let Some((version, size, mode, mtime_ns)) = base {
            if plan.update && mtime(mtime_ns) > (e.mtime, e.mtime_nsec) {
                return;
            }
            let size_differs = size != e.size;
            let time_differs = !same_mtime(plan, (e.mtime, e.mtime_nsec), mtime(mtime_ns));
            let unchanged = if plan.checksum {
                !size_differs && crate::tree::scan::hash_file(&e.path).is_ok_and(|v| v == version)
            } else if plan.size_only {
                !size_differs
            } else {
                !plan.ignore_times && !size_differs && !time_differs
            };
            let perms = plan.perms && (e.mode & 0o7777) != (mode & 0o7777);
            let mut flags = ['.'; 9];
            if plan.checksum && !unchanged {
                flags[0] = 'c';
            }
            if size_differs {
                flags[1] = 's';
            }
            if plan.times && time_differs {
                flags[2] = 't';
            }
            if perms {
                flags[3] = 'p';
            }
            if unchanged {
                let flags: String = flags.iter().collect();
                let changed = flags.chars().any(|c| c != '.');
                let shown = if changed {
                    format!(".f{flags}")
                } else {
                    ".f         ".into()
                };
                self.item_event(shown, e, changed, false);
                if changed && !plan.dry_run {
                    let attrs = BatchOp::Setattr {
                        path: path.clone(),
                        mode: perms.then_some(e.mode & 0o7777),
                        mtime_ns: (plan.times && time_differs)
                            .then(|| e.mtime * 1_000_000_000 + i64::from(e.mtime_nsec)),
                    };
                    self.batch.push((attrs, e.display()));
                }
                return;
            }
            if !plan.times {
                // Set to the transfer time.
                flags[2] = 'T';
            }
            itemize = format!("<f{}", flags.iter().collect::<String>());
            self.item_event(itemize, e, true, true);
            self.send(e, path, Some((version, mode)));
        } else {
            count(&mut self.stats.created, &e.kind);
            self.item_event(itemize, e, true, true);
            self.send(e, path, None);
        }
    }

    /// A PUT of the file: a delta against `base` when the server has a
    /// signature of it and the delta is smaller, else whole.
    fn send(&mut self, e: &Entry, path: &TreePath, base: Option<(Version, u32)>) {
        let plan = self.plan;
        self.stats.regular_transferred += 1;
        self.stats.transferred_size += e.size;
        if plan.dry_run {
            self.stats.literal_bytes += e.size;
            return;
        }
        self.flush();
        if self.refused.is_some() {
            return;
        }
        let data = match MappedFile::open(&e.path) {
            Ok(m) => Bytes::from_owner(m),
            Err(err) => {
                self.errors = true;
                self.say(Event::Error(format!(
                    "send_files failed to open \"{}\": {err}",
                    e.path.display()
                )));
                return;
            }
        };
        let version = Version::of(&data);
        let mode = match (plan.perms, base) {
            (true, _) => e.mode & 0o7777,
            (false, Some((_, m))) => m & 0o7777,
            (false, None) => self.new_mode(e),
        };
        let meta = FileMeta {
            mode: Some(mode),
            mtime_ns: plan
                .times
                .then(|| e.mtime * 1_000_000_000 + i64::from(e.mtime_nsec)),
        };
        let file = Upload {
            path,
            data,
            version,
            meta,
        };
        let result = self.export.runtime.block_on(upload::send(
            &self.export.remote,
            &file,
            base.map(|(version, _)| version),
            None,
        ));
        match result {
            Ok(sent) => {
                self.stats.literal_bytes += sent.literal_bytes;
                self.stats.matched_bytes += sent.matched_bytes;
            }
            Err(err) => self.failed(&e.display(), err),
        }
    }

    /// Deletes what the export holds under each listed folder and the
    /// source does not, unless the receiver-side rules protect it.
    fn deletions(&mut self, list: &FileList) {
        let mut filters = self.plan.filters.clone();
        let _ = filters.enter_root(std::path::Path::new("/"), &NoFiles);
        for (i, e) in list.entries.iter().enumerate() {
            if e.kind != Kind::Dir {
                continue;
            }
            let Some(names) = list.children.get(&i) else {
                continue;
            };
            let dir = std::str::from_utf8(&e.name)
                .ok()
                .map(String::from)
                .unwrap_or_default();
            let keep: std::collections::HashSet<&[u8]> = names.iter().map(Vec::as_slice).collect();
            let gone: Vec<TreePath> = self
                .tree
                .iter()
                .filter(|(p, _)| {
                    let parent = p
                        .parent()
                        .map(|q| q.as_str().to_string())
                        .unwrap_or_default();
                    parent == dir && !keep.contains(p.file_name().as_bytes())
                })
                .map(|(p, _)| p.clone())
                .collect();
            for p in gone.into_iter().rev() {
                let is_dir = self.tree.get(&p).is_some_and(|t| t.is_dir());
                if filters.excluded(p.as_str().as_bytes(), is_dir, Side::Receiver) {
                    continue;
                }
                self.remove(&p, true);
            }
        }
    }

    /// Removes a path of the export (a folder with all it holds, deepest
    /// first); `shown` says it as a deletion.
    fn remove(&mut self, path: &TreePath, shown: bool) {
        // Deepest first: what a folder holds sorts after it.
        let mut order: Vec<TreePath> = self
            .tree
            .descendants(path)
            .map(|(p, _)| p.clone())
            .collect();
        order.push(path.clone());
        order.sort();
        order.reverse();
        if shown {
            // What the receiver's rules protect stays, and so do the
            // folders that hold it.
            let mut filters = self.plan.filters.clone();
            let _ = filters.enter_root(std::path::Path::new("/"), &NoFiles);
            let kept: Vec<TreePath> = order
                .iter()
                .filter(|p| *p != path)
                .filter(|p| {
                    let is_dir = self.tree.get(p).is_some_and(|t| t.is_dir());
                    filters.protected_in_deleted_dir(p.as_str().as_bytes(), is_dir)
                })
                .cloned()
                .collect();
            if !kept.is_empty() {
                order.retain(|p| !kept.iter().any(|k| k.starts_with(p) || p.starts_with(k)));
                for dir in self
                    .tree
                    .descendants(path)
                    .map(|(p, _)| p.clone())
                    .chain([path.clone()])
                {
                    let holds_kept = kept.iter().any(|k| k != &dir && k.starts_with(&dir));
                    if holds_kept && self.tree.get(&dir).is_some_and(|t| t.is_dir()) {
                        let name = dir.as_str().to_string();
                        self.say(Event::Info(format!(
                            "cannot delete non-empty directory: {name}"
                        )));
                    }
                }
            }
        }
        for p in order {
            let Some(t) = self.tree.get(&p) else { continue };
            let is_dir = t.is_dir();
            if shown {
                let mut name = p.as_str().to_string();
                if is_dir {
                    name.push('/');
                }
                let kind = if is_dir { Kind::Dir } else { Kind::File };
                count(&mut self.stats.deleted, &kind);
                self.say(Event::Deleted(name));
            }
            let op = if is_dir {
                BatchOp::Rmdir { path: p.clone() }
            } else {
                BatchOp::Unlink {
                    path: p.clone(),
                    if_match: t.version(),
                }
            };
            self.batch.push((op, p.as_str().to_string()));
        }
    }
}
