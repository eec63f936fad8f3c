//! Push: turn what a scan finds against the base into requests, each with
//! its precondition: small files many to a request (`POST
//! /.intersync/push`), larger ones one by one, each new one whole and each
//! edited one as an exact patch from the kept base, or a delta against the
//! server's signature of the base version, or whole, whichever is smallest
//! (see `upload`); batches of operations for the rest. A write the server refuses because its copy moved on waits
//! for the next round, after a pull.
//!
//! Files and operations are sent in the order the scan found them, but a
//! small file waits for its batch, and the operations waiting always go
//! before the files waiting: an operation that touches a file waiting (its
//! path, or a folder above it) first sends both batches. So a file goes
//! after every operation before it, and ahead of no operation that touches
//! it; the result on the server is the one the order gives, and a tree of
//! new folders and files costs two requests.

use std::collections::HashSet;

use bytes::Bytes;
use intersync_protocol::batch::BatchOp;
use intersync_protocol::kml::Op;
use intersync_protocol::{TreePath, Version};

use super::pull::Scanned;
use super::upload::{self, Outgoing, Upload};
use super::{Change, SyncError, SyncReport, WorkingCopy};
use crate::delta::MappedFile;
use crate::transport::{FileMeta, Remote, TransportError};
use crate::tree::{EntryKind, TreeState};

/// One step of a push, in the order the scan found the changes.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// The file's content, by one PUT; `is_new`: the path must be free.
    Put { path: TreePath, is_new: bool },
    /// An operation for the next batch.
    Batch(BatchOp, Change),
    /// Not pushed, and why.
    Defer(Change),
}

/// What to send for the operations a scan found against `base`; `local`
/// is the tree they lead to. Pure.
fn plan(ops: &[Op], base: &TreeState, local: &TreeState) -> Vec<Step> {
    let change = |path: &TreePath, what: &str| Change {
        path: path.clone(),
        what: what.into(),
    };
    let mut steps = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let step = match op {
            // Its content follows as a Write, if any: a new file is one PUT.
            Op::Create { path, .. } => match ops.get(i + 1) {
                Some(Op::Write { path: p, .. }) if p == path => continue,
                _ => Step::Put {
                    path: path.clone(),
                    is_new: true,
                },
            },
            Op::Write { path, .. } => Step::Put {
                path: path.clone(),
                is_new: i >= 1 && matches!(&ops[i - 1], Op::Create { path: p, .. } if p == path),
            },
            Op::Mkdir { path, mode } => Step::Batch(
                BatchOp::Mkdir {
                    path: path.clone(),
                    mode: Some(*mode),
                },
                change(path, "folder created"),
            ),
            Op::Rmdir { path } => Step::Batch(
                BatchOp::Rmdir { path: path.clone() },
                change(path, "folder deleted"),
            ),
            Op::Unlink { path } => Step::Batch(
                BatchOp::Unlink {
                    path: path.clone(),
                    if_match: base.get(path).and_then(|e| e.version()),
                },
                change(path, "deleted"),
            ),
            Op::Rename { from, to } => Step::Batch(
                BatchOp::Rename {
                    from: from.clone(),
                    to: to.clone(),
                    if_match: base.get(from).and_then(|e| e.version()),
                    // Never replace something at `to` the base did not know of.
                    if_absent: base.get(to).is_none(),
                },
                change(to, &format!("renamed from {from}")),
            ),
            Op::Setattr { path, attrs } => {
                let is_dir = matches!(local.get(path).map(|e| &e.kind), Some(EntryKind::Dir));
                // Ownership is not pushed, nor the mtimes of folders.
                if attrs.mode.is_none() && (attrs.mtime_ns.is_none() || is_dir) {
                    continue;
                }
                Step::Batch(
                    BatchOp::Setattr {
                        path: path.clone(),
                        mode: attrs.mode,
                        mtime_ns: attrs.mtime_ns,
                    },
                    change(path, "attributes"),
                )
            }
            Op::Symlink { path, target } => Step::Batch(
                BatchOp::Symlink {
                    path: path.clone(),
                    target: target.clone(),
                },
                change(path, "symlink"),
            ),
            Op::Link { path, .. } => Step::Defer(change(path, "hard links are not pushed yet")),
        };
        steps.push(step);
    }
    steps
}

/// Pushes local changes (those of `scanned`, a scan against the current
/// base, or else of a new scan); returns whether anything reached the server.
pub async fn push(
    wc: &mut WorkingCopy,
    remote: &impl Remote,
    scanned: Option<Scanned>,
    report: &mut SyncReport,
) -> Result<bool, SyncError> {
    wc.absorb_fetched();
    let Scanned {
        local: scratch,
        ops,
    } = match scanned {
        Some(s) => s,
        None => {
            let mut local = wc.saved.base.clone();
            let ops = wc.scan(&mut local)?.ops;
            Scanned { local, ops }
        }
    };
    let steps = plan(&ops, &wc.saved.base.state, &scratch.state);
    let mut pusher = Pusher {
        remote,
        wc,
        local: &scratch.state,
        report,
        batch: Vec::new(),
        batch_paths: HashSet::new(),
        files: Vec::new(),
        file_paths: HashSet::new(),
        file_folders: HashSet::new(),
        files_bytes: 0,
        many: true,
        pushed: false,
    };
    for step in steps {
        match step {
            Step::Put { path, is_new } => {
                let size = match pusher.local.get(&path).map(|e| &e.kind) {
                    Some(EntryKind::File { size, .. }) => *size,
                    _ => continue,
                };
                if size < upload::MAX_BATCHED && pusher.many {
                    pusher.files_bytes += size;
                    pusher
                        .file_folders
                        .extend(with_folders(&path).into_iter().skip(1));
                    pusher.file_paths.insert(path.clone());
                    pusher.files.push((path, is_new));
                    if pusher.files.len() >= upload::FILES_A_BATCH
                        || pusher.files_bytes >= upload::BYTES_A_BATCH
                    {
                        pusher.flush_files().await?;
                    }
                } else {
                    if touches(&pusher.batch_paths, &path) {
                        pusher.flush().await?;
                    }
                    pusher.put_file(&path, is_new).await?;
                }
            }
            Step::Batch(op, change) => {
                let touched = |p: &TreePath| {
                    pusher.file_folders.contains(p) || touches(&pusher.file_paths, p)
                };
                if op.paths().into_iter().any(touched) {
                    pusher.flush_files().await?;
                }
                pusher.batch_paths.extend(op.paths().into_iter().cloned());
                pusher.batch.push((op, change));
            }
            Step::Defer(change) => pusher.report.deferred.push(change),
        }
    }
    pusher.flush_files().await?;
    Ok(pusher.pushed)
}

/// `path` and every folder above it.
fn with_folders(path: &TreePath) -> Vec<TreePath> {
    std::iter::successors(Some(path.clone()), TreePath::parent).collect()
}

/// Whether `path`, or a folder above it, is in `paths`.
fn touches(paths: &HashSet<TreePath>, path: &TreePath) -> bool {
    !paths.is_empty() && with_folders(path).iter().any(|p| paths.contains(p))
}

/// A push under way.
struct Pusher<'a, R> {
    remote: &'a R,
    wc: &'a WorkingCopy,
    /// The disk's tree, as the scan found it.
    local: &'a TreeState,
    report: &'a mut SyncReport,
    /// Operations waiting for the next batch, and the paths they touch.
    batch: Vec<(BatchOp, Change)>,
    batch_paths: HashSet<TreePath>,
    /// Small files waiting for theirs (`is_new`), their paths, the
    /// folders above them, and their bytes.
    files: Vec<(TreePath, bool)>,
    file_paths: HashSet<TreePath>,
    file_folders: HashSet<TreePath>,
    files_bytes: u64,
    /// The server takes batched writes (until it says it does not).
    many: bool,
    /// Something reached the server.
    pushed: bool,
}

impl<R: Remote> Pusher<'_, R> {
    /// Sends the operations waiting, as one batch.
    async fn flush(&mut self) -> Result<(), SyncError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        self.batch_paths.clear();
        let (ops, changes): (Vec<_>, Vec<_>) = std::mem::take(&mut self.batch).into_iter().unzip();
        let results = self.remote.ops(ops).await?;
        for (result, change) in results.into_iter().zip(changes) {
            // A folder that is already there is a folder made on both sides.
            let merged_folder = result.status == 412 && change.what == "folder created";
            if result.is_ok() || merged_folder {
                self.pushed |= result.is_ok();
                self.report.pushed.push(change);
            } else {
                self.report.deferred.push(Change {
                    what: format!("{}: {} {}", change.what, result.status, result.reason()),
                    ..change
                });
            }
        }
        Ok(())
    }

    /// The file at `path` ready to send, or `None` when it is not (gone,
    /// or changed again since the scan: the next round sends the newest).
    fn prepare<'p>(
        &mut self,
        path: &'p TreePath,
        is_new: bool,
    ) -> Result<Option<Outgoing<'p>>, SyncError> {
        let wc = self.wc;
        let Some(entry) = self.local.get(path) else {
            return Ok(None);
        };
        let EntryKind::File { version, size } = entry.kind else {
            return Ok(None);
        };
        let meta = FileMeta {
            mode: Some(entry.mode),
            mtime_ns: Some(entry.mtime_ns),
        };
        let full = path.under(wc.root());
        // Mapped, and handed to the transport without a copy.
        let data =
            Bytes::from_owner(MappedFile::open(&full).map_err(|e| SyncError::local(path, e))?);
        if Version::of(&data) != version {
            self.report.deferred.push(Change {
                path: path.clone(),
                what: "changed while syncing".into(),
            });
            return Ok(None);
        }
        self.report.full_fetch_bytes += size;
        let base = if is_new {
            None
        } else {
            wc.saved.base.state.get(path).and_then(|e| e.version())
        };
        Ok(Some(Outgoing {
            kept_base: base.and_then(|b| wc.versions()?.get(&b).ok()?),
            base,
            file: Upload {
                path,
                data,
                version,
                meta,
            },
        }))
    }

    /// Sends the file at `path` by itself (see `upload`).
    async fn put_file(&mut self, path: &TreePath, is_new: bool) -> Result<(), SyncError> {
        match self.prepare(path, is_new)? {
            Some(out) => self.send_alone(&out).await,
            None => Ok(()),
        }
    }

    async fn send_alone(&mut self, out: &Outgoing<'_>) -> Result<(), SyncError> {
        let sent = upload::send(self.remote, &out.file, out.base, out.kept_base.as_deref()).await;
        self.record(&out.file, sent)
    }

    /// Sends the operations waiting, then the small files waiting, in one
    /// request, or one by one to a server without batched writes.
    async fn flush_files(&mut self) -> Result<(), SyncError> {
        self.flush().await?;
        if self.files.is_empty() {
            return Ok(());
        }
        let files = std::mem::take(&mut self.files);
        self.file_paths.clear();
        self.file_folders.clear();
        self.files_bytes = 0;
        let mut outgoing = Vec::with_capacity(files.len());
        for (path, is_new) in &files {
            if let Some(out) = self.prepare(path, *is_new)? {
                outgoing.push(out);
            }
        }
        if outgoing.is_empty() {
            return Ok(());
        }
        let results = match upload::send_many(self.remote, &outgoing).await {
            Ok(Some(results)) => results,
            Ok(None) => {
                self.many = false;
                for out in &outgoing {
                    self.send_alone(out).await?;
                }
                return Ok(());
            }
            // Refused as a whole (a read-only module, say): each file waits.
            Err(e) if e.waits() => {
                let why = crate::monitor::Chain(&e).to_string();
                for out in &outgoing {
                    self.report.deferred.push(Change {
                        path: out.file.path.clone(),
                        what: why.clone(),
                    });
                }
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        for (out, result) in outgoing.iter().zip(results) {
            let what = out.file.path.to_string();
            let sent = result.map_err(|refused| match refused.status {
                412 => TransportError::Changed { what },
                status => TransportError::Refused {
                    what,
                    status,
                    reason: refused.reason().to_owned(),
                },
            });
            self.record(&out.file, sent)?;
        }
        Ok(())
    }

    /// Notes what became of a file sent: a write the server refused
    /// because its copy moved on (or any refusal but of authority) waits
    /// for the next round.
    fn record(
        &mut self,
        file: &Upload<'_>,
        sent: Result<upload::Sent, TransportError>,
    ) -> Result<(), SyncError> {
        let report = &mut *self.report;
        match sent {
            Ok(sent) => {
                self.pushed = true;
                report.literal_bytes += sent.literal_bytes;
                report.matched_bytes += sent.matched_bytes;
                self.wc.keep(file.version, &file.data);
                report.pushed.push(Change {
                    path: file.path.clone(),
                    what: sent.way.describe().into(),
                });
                Ok(())
            }
            Err(e) if e.waits() => {
                // The error names the file already; the change says it too.
                let said = crate::monitor::Chain(&e).to_string();
                let what = said
                    .strip_prefix(&format!("{}: ", file.path))
                    .unwrap_or(&said);
                report.deferred.push(Change {
                    path: file.path.clone(),
                    what: what.to_owned(),
                });
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use intersync_protocol::kml::Attrs;

    use super::*;
    use crate::tree::Entry;

    fn p(s: &str) -> TreePath {
        TreePath::new(s).unwrap()
    }

    #[test]
    fn a_new_file_is_one_put_and_what_is_not_synced_is_left_out() {
        let v = Version::of(b"x");
        let dir = Entry {
            kind: EntryKind::Dir,
            mode: 0o755,
            mtime_ns: 0,
            uid: 0,
            gid: 0,
        };
        let mut local = TreeState::default();
        local.insert(p("d"), dir);
        let ops = vec![
            Op::Create {
                path: p("f"),
                mode: 0o644,
            },
            Op::Write {
                path: p("f"),
                version: v,
                size: 1,
                mtime_ns: 5,
            },
            Op::Write {
                path: p("g"),
                version: v,
                size: 1,
                mtime_ns: 5,
            },
            Op::Setattr {
                path: p("f"),
                attrs: Attrs {
                    uid: Some(7),
                    ..Attrs::default()
                },
            },
            Op::Setattr {
                path: p("d"),
                attrs: Attrs {
                    mtime_ns: Some(9),
                    ..Attrs::default()
                },
            },
            Op::Rename {
                from: p("a"),
                to: p("b"),
            },
        ];
        let steps = plan(&ops, &TreeState::default(), &local);
        assert_eq!(
            steps,
            vec![
                Step::Put {
                    path: p("f"),
                    is_new: true
                },
                Step::Put {
                    path: p("g"),
                    is_new: false
                },
                Step::Batch(
                    BatchOp::Rename {
                        from: p("a"),
                        to: p("b"),
                        if_match: None,
                        if_absent: true
                    },
                    Change {
                        path: p("b"),
                        what: "renamed from a".into()
                    }
                ),
            ]
        );
    }
}
