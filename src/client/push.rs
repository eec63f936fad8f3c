//! Push: turn what a scan finds against the base into requests, each with
//! its precondition: a whole PUT for a new file, a delta PUT against the
//! server's signature of the base version for an edited one, and batches of
//! operations for the rest. A write the server refuses because its copy
//! moved on waits for the next round, after a pull.

use bytes::Bytes;
use intersync_protocol::kml::Op;
use intersync_protocol::{TreePath, Version};
use serde_json::json;

use super::{Change, SyncError, SyncReport, WorkingCopy};
use crate::delta::zpatch;
use crate::delta::{MappedFile, Signature, write_delta};
use crate::transport::{DeltaFormat, Expect, FileMeta, Remote, TransportError};
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
    let mut batch: Vec<(serde_json::Value, Change)> = Vec::new();
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
                json!({"op": "mkdir", "path": path, "mode": mode}),
                Change {
                    path: path.clone(),
                    what: "folder created".into(),
                },
            )),
            Op::Rmdir { path } => batch.push((
                json!({"op": "rmdir", "path": path}),
                Change {
                    path: path.clone(),
                    what: "folder deleted".into(),
                },
            )),
            Op::Unlink { path } => {
                let if_match = base.get(path).and_then(|e| e.version()).map(|v| v.etag());
                batch.push((
                    json!({"op": "unlink", "path": path, "if_match": if_match}),
                    Change {
                        path: path.clone(),
                        what: "deleted".into(),
                    },
                ));
            }
            Op::Rename { from, to } => {
                let if_match = base.get(from).and_then(|e| e.version()).map(|v| v.etag());
                batch.push((
                    // Never replace something at `to` the base did not know of.
                    json!({"op": "rename", "from": from, "to": to, "if_match": if_match,
                           "if_absent": base.get(to).is_none()}),
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
                    json!({"op": "setattr", "path": path, "mode": attrs.mode, "mtime_ns": attrs.mtime_ns}),
                    Change { path: path.clone(), what: "attributes".into() },
                ));
            }
            Op::Symlink { path, target } => batch.push((
                json!({"op": "symlink", "path": path, "target": String::from_utf8_lossy(target)}),
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
    batch: &mut Vec<(serde_json::Value, Change)>,
    report: &mut SyncReport,
    pushed: &mut bool,
) -> Result<(), SyncError> {
    if batch.is_empty() {
        return Ok(());
    }
    let (ops, changes): (Vec<_>, Vec<_>) = std::mem::take(batch).into_iter().unzip();
    let results = remote.ops(json!({ "ops": ops })).await?;
    for ((status, reason), change) in results.into_iter().zip(changes) {
        // A folder that is already there is a folder made on both sides.
        let merged_folder = status == 412 && change.what == "folder created";
        if status == 200 || merged_folder {
            *pushed |= status == 200;
            report.pushed.push(change);
        } else {
            report.deferred.push(Change {
                what: format!("{}: {status} {reason}", change.what),
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
    if Version(*blake3::hash(&data).as_bytes()) != version {
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
    let patched = match base_version {
        Some(base) => put_patch(remote, wc, path, &data, base, (version, size), meta).await,
        None => None,
    };
    let result = match base_version {
        _ if patched.is_some() => patched.expect("checked"),
        Some(base_version) => {
            let delta = match remote.signature(base_version).await {
                Ok(sig) => Signature::from_bytes(sig.to_vec()).ok().map(|sig| {
                    let mut delta = Vec::new();
                    let stats =
                        write_delta(sig.view(), &data, &mut delta).expect("writing to memory");
                    (delta, stats)
                }),
                Err(TransportError::Refused { status: 404, .. }) => None,
                Err(e) => return Err(e.into()),
            };
            match delta {
                Some((delta, stats)) if (delta.len() as u64) < size => {
                    let r = remote
                        .put_delta(
                            path,
                            delta,
                            DeltaFormat::Librsync,
                            base_version,
                            (version, size),
                            meta,
                        )
                        .await;
                    if r.is_ok() {
                        report.literal_bytes += stats.literal_bytes;
                        report.matched_bytes += stats.matched_bytes;
                    }
                    r.map(|_| "updated by delta")
                }
                _ => {
                    let r = remote
                        .put_whole(
                            path,
                            data.clone(),
                            Expect::Version(base_version),
                            version,
                            meta,
                        )
                        .await;
                    if r.is_ok() {
                        report.literal_bytes += size;
                    }
                    r.map(|_| "sent whole")
                }
            }
        }
        None => {
            let r = remote
                .put_whole(path, data.clone(), Expect::Absent, version, meta)
                .await;
            if r.is_ok() {
                report.literal_bytes += size;
            }
            r.map(|_| "created")
        }
    };
    match result {
        Ok(what) => {
            *pushed = true;
            wc.keep(version, &data);
            report.pushed.push(Change {
                path: path.clone(),
                what: what.into(),
            });
            Ok(())
        }
        Err(e @ (TransportError::Changed { .. } | TransportError::Refused { .. }))
            if !e.is_auth() =>
        {
            report.deferred.push(Change {
                path: path.clone(),
                what: e.to_string(),
            });
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Writes the file as an exact patch from `base`, if this copy kept that
/// version and the patch is smaller than the file; `None` leaves it to the
/// signature path (also when the server does not take patches).
async fn put_patch(
    remote: &impl Remote,
    wc: &WorkingCopy,
    path: &TreePath,
    data: &[u8],
    base: Version,
    (version, size): (Version, u64),
    meta: FileMeta,
) -> Option<Result<&'static str, TransportError>> {
    let old = wc.versions()?.get(&base).ok()??;
    let patch = zpatch::encode(&old, data, Vec::new()).ok()?;
    if patch.len() as u64 >= size {
        return None;
    }
    let r = remote
        .put_delta(path, patch, DeltaFormat::Patch, base, (version, size), meta)
        .await;
    match r {
        Ok(_) => Some(Ok("updated by patch")),
        // A server that does not know patches (415, or 400 from one that
        // took it for something else): the signature path, then.
        Err(TransportError::Refused {
            status: 400 | 415, ..
        }) => None,
        Err(e) => Some(Err(e)),
    }
}
