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

/// Pushes local changes; returns whether anything reached the server.
pub async fn push(
    wc: &mut WorkingCopy,
    remote: &impl Remote,
    report: &mut SyncReport,
) -> Result<bool, SyncError> {
    wc.absorb_fetched();
    let root = wc.root().to_owned();
    let base = wc.saved.base.state.clone();
    let mut scratch = wc.saved.base.clone();
    let ops = wc.scan(&mut scratch)?.ops;
    let local = scratch.state;
    let mut batch: Vec<(BatchOp, Change)> = Vec::new();
    let mut pushed = false;
    let mut i = 0;
    while i < ops.len() {
        let op = &ops[i];
        i += 1;
        match op {
            Op::Create { path, .. } => {
                // Its content follows as a Write, if any: a new file is one PUT.
                if let Some(Op::Write { path: p, .. }) = ops.get(i)
                    && p == path
                {
                    continue;
                }
                flush(remote, &mut batch, report, &mut pushed).await?;
                put_file(
                    remote,
                    wc,
                    &root,
                    &base,
                    &local,
                    path,
                    true,
                    report,
                    &mut pushed,
                )
                .await?;
            }
            Op::Write { path, .. } => {
                flush(remote, &mut batch, report, &mut pushed).await?;
                let is_new =
                    i >= 2 && matches!(&ops[i - 2], Op::Create { path: p, .. } if p == path);
                put_file(
                    remote,
                    wc,
                    &root,
                    &base,
                    &local,
                    path,
                    is_new,
                    report,
                    &mut pushed,
                )
                .await?;
            }
            Op::Mkdir { path, mode } => batch.push((
                BatchOp::Mkdir {
                    path: path.clone(),
                    mode: Some(*mode),
                },
                Change {
                    path: path.clone(),
                    what: "folder created".into(),
                },
            )),
            Op::Rmdir { path } => batch.push((
                BatchOp::Rmdir { path: path.clone() },
                Change {
                    path: path.clone(),
                    what: "folder deleted".into(),
                },
            )),
            Op::Unlink { path } => {
                batch.push((
                    BatchOp::Unlink {
                        path: path.clone(),
                        if_match: base.get(path).and_then(|e| e.version()),
                    },
                    Change {
                        path: path.clone(),
                        what: "deleted".into(),
                    },
                ));
            }
            Op::Rename { from, to } => {
                batch.push((
                    BatchOp::Rename {
                        from: from.clone(),
                        to: to.clone(),
                        if_match: base.get(from).and_then(|e| e.version()),
                        // Never replace something at `to` the base did not know of.
                        if_absent: base.get(to).is_none(),
                    },
                    Change {
                        path: to.clone(),
                        what: format!("renamed from {from}"),
                    },
                ));
            }
            Op::Setattr { path, attrs } => {
                if attrs.mode.is_none() && attrs.mtime_ns.is_none() {
                    continue; // ownership is not pushed
                }
                if matches!(local.get(path).map(|e| &e.kind), Some(EntryKind::Dir))
                    && attrs.mode.is_none()
                {
                    continue; // folder mtimes are not synced
                }
                batch.push((
                    BatchOp::Setattr {
                        path: path.clone(),
                        mode: attrs.mode,
                        mtime_ns: attrs.mtime_ns,
                    },
                    Change {
                        path: path.clone(),
                        what: "attributes".into(),
                    },
                ));
            }
            Op::Symlink { path, target } => batch.push((
                BatchOp::Symlink {
                    path: path.clone(),
                    target: target.clone(),
                },
                Change {
                    path: path.clone(),
                    what: "symlink".into(),
                },
            )),
            Op::Link { path, .. } => report.deferred.push(Change {
                path: path.clone(),
                what: "hard links are not pushed yet".into(),
            }),
        }
    }
    flush(remote, &mut batch, report, &mut pushed).await?;
    Ok(pushed)
}

async fn flush(
    remote: &impl Remote,
    batch: &mut Vec<(BatchOp, Change)>,
    report: &mut SyncReport,
    pushed: &mut bool,
) -> Result<(), SyncError> {
    if batch.is_empty() {
        return Ok(());
    }
    let (ops, changes): (Vec<_>, Vec<_>) = std::mem::take(batch).into_iter().unzip();
    let results = remote.ops(ops).await?;
    for (result, change) in results.into_iter().zip(changes) {
        // A folder that is already there is a folder made on both sides.
        let merged_folder = result.status == 412 && change.what == "folder created";
        if result.is_ok() || merged_folder {
            *pushed |= result.is_ok();
            report.pushed.push(change);
        } else {
            report.deferred.push(Change {
                what: format!("{}: {} {}", change.what, result.status, result.reason()),
                ..change
            });
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn put_file(
    remote: &impl Remote,
    wc: &WorkingCopy,
    root: &std::path::Path,
    base: &TreeState,
    local: &TreeState,
    path: &TreePath,
    is_new: bool,
    report: &mut SyncReport,
    pushed: &mut bool,
) -> Result<(), SyncError> {
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
    let data = Bytes::from_owner(MappedFile::open(&full).map_err(|e| SyncError::local(path, e))?);
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
    match upload::send(remote, &file, base_version, kept.as_deref()).await {
        Ok(sent) => {
            *pushed = true;
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
