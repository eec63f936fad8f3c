//! One sync round (see the module documentation of `client`): pull, push
//! what is still different, and pull again past our own writes; the base
//! is saved each time the disk matches it.

use intersync_protocol::TreePath;

use super::pull::{self, Pulled, Scanned};
use super::{Change, SyncError, SyncOptions, SyncReport, WorkingCopy, push};
use crate::transport::Remote;
use crate::tree::EntryKind;
use crate::tree::scan;

/// One sync round of `wc` with `remote`.
pub async fn sync(
    wc: &mut WorkingCopy,
    remote: &impl Remote,
    options: SyncOptions,
) -> Result<SyncReport, SyncError> {
    let mut report = SyncReport::default();
    // A full disk stops a pull's fetching, not the round: local changes
    // are still pushed, then the round ends with that error.
    let mut disk_full = None;
    // The pull's scan, when the push may take it as its own.
    let mut scanned = None;
    if wc.moved_from.is_some() && !options.pull {
        // A push alone reads no head: make sure the new URL is the same
        // export before anything is written there.
        super::follow::same_export(wc, remote).await?;
    }
    if wc.versions().is_none() {
        wc.keep_versions(options.keep_versions);
    }
    if options.pull {
        (disk_full, scanned) = pull_into(wc, remote, options, &mut report).await?;
        wc.save()?;
    }
    if options.push && wc.saved.static_export {
        let pending = match scanned {
            Some(s) => s.ops,
            None => wc.pending()?,
        };
        if !pending.is_empty() {
            report.deferred.push(Change {
                path: TreePath::new("(local changes)").expect("a valid path"),
                what: "the source is a static export, which is read only".into(),
            });
        }
    } else if options.push {
        let pushed_any = push::push(wc, remote, scanned, &mut report).await?;
        // Our own writes come back as journal records: move past them. A
        // write that waits may wait for nothing: the server may have got
        // that very file meanwhile (from a sync killed after it sent it,
        // whose request the server was still carrying out), and a pull
        // tells.
        if (pushed_any || !report.deferred.is_empty()) && options.pull {
            let (again, _) = pull_into(wc, remote, options, &mut report).await?;
            disk_full = disk_full.or(again);
            report.deferred.retain(|c| !settled(wc, &c.path));
        }
    }
    wc.saved.conflicts.extend(report.conflicts.iter().cloned());
    wc.saved.last_sync_ns = Some(scan::now_ns());
    wc.save()?;
    for (_, e) in wc.saved.base.state.iter() {
        if let EntryKind::File { size, .. } = e.kind {
            report.files += 1;
            report.total_size += size;
        }
    }
    report.traffic = remote.traffic();
    match disk_full {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

/// A pull, and what it found made the working copy's memory of the
/// server; the disk-full error that stopped its fetching, if one did, and
/// its scan if a push may take it (the pull changed nothing).
async fn pull_into(
    wc: &mut WorkingCopy,
    remote: &impl Remote,
    options: SyncOptions,
    report: &mut SyncReport,
) -> Result<(Option<SyncError>, Option<Scanned>), SyncError> {
    wc.absorb_fetched();
    let Pulled {
        base,
        cursor,
        server_id,
        static_export,
        http2,
        disk_full,
        server_differs,
        scan,
    } = pull::pull(wc, remote, options, report).await?;
    wc.saved.static_export = static_export;
    wc.saved.http2 = http2;
    if let Some(base) = base {
        wc.replace_base(base);
        wc.saved.server_differs = server_differs;
    }
    wc.saved.cursor = cursor;
    wc.saved.server_id = Some(server_id);
    Ok((disk_full, scan))
}

/// Whether the file at `path` is now the base's, as the last pull found:
/// the base has it with a stat the pull kept (the pull keeps one only where
/// the disk was hashed and held the server's content), and the disk still
/// has that stat.
fn settled(wc: &WorkingCopy, path: &TreePath) -> bool {
    let base = &wc.saved.base;
    base.state.get(path).is_some_and(|e| e.version().is_some())
        && base.stats.get(path).is_some_and(|s| {
            std::fs::symlink_metadata(path.under(wc.root()))
                .is_ok_and(|m| scan::StatKey::of(&m) == s.key)
        })
}
