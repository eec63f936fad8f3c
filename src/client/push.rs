//! Push: turn what a scan finds against the base into requests, each with
//! its precondition: a whole PUT for a new file, a delta PUT against the
//! server's signature of the base version for an edited one, and batches of
//! operations for the rest. A write the server refuses because its copy
//! moved on waits for the next round, after a pull.

use bytes::Bytes;
use intersync_protocol::batch::BatchOp;
use intersync_protocol::kml::Op;
use intersync_protocol::{TreePath, Version};

use super::upload::{self, Upload};
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

/// Pushes local changes; returns whether anything reached the server.
pub async fn push(
    wc: &mut WorkingCopy,
    remote: &impl Remote,
    report: &mut SyncReport,
) -> Result<bool, SyncError> {
    wc.absorb_fetched();
    let mut scratch = wc.saved.base.clone();
    let ops = wc.scan(&mut scratch)?.ops;
    let steps = plan(&ops, &wc.saved.base.state, &scratch.state);
    let mut pusher = Pusher {
        remote,
        wc,
        local: &scratch.state,
        report,
        batch: Vec::new(),
        pushed: false,
    };
    for step in steps {
        match step {
            Step::Put { path, is_new } => {
                pusher.flush().await?;
                pusher.put_file(&path, is_new).await?;
            }
            Step::Batch(op, change) => pusher.batch.push((op, change)),
            Step::Defer(change) => pusher.report.deferred.push(change),
        }
    }
    pusher.flush().await?;
    Ok(pusher.pushed)
}

/// A push under way.
struct Pusher<'a, R> {
    remote: &'a R,
    wc: &'a WorkingCopy,
    /// The disk's tree, as the scan found it.
    local: &'a TreeState,
    report: &'a mut SyncReport,
    /// Operations waiting for the next batch.
    batch: Vec<(BatchOp, Change)>,
    /// Something reached the server.
    pushed: bool,
}

impl<R: Remote> Pusher<'_, R> {
    /// Sends the operations waiting, as one batch.
    async fn flush(&mut self) -> Result<(), SyncError> {
        if self.batch.is_empty() {
            return Ok(());
        }
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

    /// Sends the file at `path` (see `upload`); a write the server refuses
    /// because its copy moved on waits for the next round.
    async fn put_file(&mut self, path: &TreePath, is_new: bool) -> Result<(), SyncError> {
        let (wc, report) = (self.wc, &mut *self.report);
        let (root, base, local) = (wc.root(), &wc.saved.base.state, self.local);
        let Some(entry) = local.get(path) else {
            return Ok(());
        };
        let EntryKind::File { version, size } = entry.kind else {
            return Ok(());
        };
        let meta = FileMeta {
            mode: Some(entry.mode),
            mtime_ns: Some(entry.mtime_ns),
        };
        let full = path.under(root);
        // Mapped, and handed to the transport without a copy.
        let data =
            Bytes::from_owner(MappedFile::open(&full).map_err(|e| SyncError::local(path, e))?);
        if Version::of(&data) != version {
            // Changed again since the scan: the next round sends the newest.
            report.deferred.push(Change {
                path: path.clone(),
                what: "changed while syncing".into(),
            });
            return Ok(());
        }
        report.full_fetch_bytes += size;
        let base_version = if is_new {
            None
        } else {
            base.get(path).and_then(|e| e.version())
        };
        let kept = base_version.and_then(|b| wc.versions()?.get(&b).ok()?);
        let file = Upload {
            path,
            data,
            version,
            meta,
        };
        match upload::send(self.remote, &file, base_version, kept.as_deref()).await {
            Ok(sent) => {
                self.pushed = true;
                report.literal_bytes += sent.literal_bytes;
                report.matched_bytes += sent.matched_bytes;
                wc.keep(version, &file.data);
                report.pushed.push(Change {
                    path: path.clone(),
                    what: sent.way.describe().into(),
                });
                Ok(())
            }
            Err(e @ (TransportError::Changed { .. } | TransportError::Refused { .. }))
                if !e.is_auth() =>
            {
                report.deferred.push(Change {
                    path: path.clone(),
                    what: crate::monitor::Chain(&e).to_string(),
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
