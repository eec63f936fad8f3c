//! Pull: read the journal from the cursor, fold it into the server's tree,
//! resolve conflicts with local changes, and bring the disk to that tree.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, UNIX_EPOCH};

use intersync_protocol::kml::{KmlRecord, SEGMENT_HEADER_LEN, SegmentReader, parse_segment_header};
use intersync_protocol::signature::SignatureFormat;
use intersync_protocol::{TreePath, Version};

use super::working_copy::{Conflict, Cursor, WorkingCopy, WorkingCopyError};
use super::{Change, SyncError, SyncOptions, SyncReport};
use crate::delta::{self, MappedFile, Signature, SignatureOptions};
use crate::install::PendingFile;
use crate::transport::{Refined, Remote, TransportError};
use crate::tree::scan::{self, CachedStat, Index, StatKey};
use crate::tree::{Entry, EntryKind, TreeState};

/// Whether two entries describe the same thing for syncing: kind and
/// content, permissions, and the mtime of files (folder mtimes and
/// ownership are not synced).
pub fn same(a: Option<&Entry>, b: Option<&Entry>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a.kind == b.kind
                && (matches!(a.kind, EntryKind::Symlink { .. }) || a.mode == b.mode)
                && (!matches!(a.kind, EntryKind::File { .. }) || a.mtime_ns == b.mtime_ns)
        }
        _ => false,
    }
}

fn same_content(a: Option<&Entry>, b: Option<&Entry>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.kind == b.kind,
        _ => false,
    }
}

/// The server's tree as the journal says, where reading stopped, and the server's id.
async fn server_tree(
    wc: &WorkingCopy,
    remote: &impl Remote,
) -> Result<(TreeState, Cursor, intersync_protocol::api::Head), SyncError> {
    let head = remote
        .head(None, 0)
        .await?
        .ok_or_else(|| SyncError::Journal("no head document".into()))?;
    match &wc.saved.server_id {
        Some(id) if *id != head.server_id => {
            return Err(WorkingCopyError::OtherServer {
                url: wc.saved.url.clone(),
                expected: id.clone(),
                found: head.server_id,
            }
            .into());
        }
        _ => {}
    }
    tree_from(remote, head, &wc.saved.base.state, &wc.saved.cursor).await
}

/// The export's tree as it stands now, read from nothing (a checkpoint and
/// the journal after it): what a one-way copy of an export starts from.
pub async fn export_tree(remote: &impl Remote) -> Result<TreeState, SyncError> {
    let head = remote
        .head(None, 0)
        .await?
        .ok_or_else(|| SyncError::Journal("no head document".into()))?;
    let (tree, _, _) = tree_from(remote, head, &TreeState::default(), &Cursor::default()).await?;
    Ok(tree)
}

/// Folds the journal after `base` (read up to `cursor`) into the tree the
/// head describes.
async fn tree_from(
    remote: &impl Remote,
    head: intersync_protocol::api::Head,
    base: &TreeState,
    known: &Cursor,
) -> Result<(TreeState, Cursor, intersync_protocol::api::Head), SyncError> {
    let first_kept = head
        .segments
        .first()
        .map_or(head.latest_seq + 1, |s| s.first_seq);
    let use_checkpoint = head
        .checkpoint
        .as_ref()
        .is_some_and(|c| c.seq > base.seq && (base.seq + 1 < first_kept || base.seq == 0));
    let (mut tree, mut cursor) = if use_checkpoint {
        let cp = head.checkpoint.as_ref().expect("checked");
        let bytes = remote.checkpoint(&cp.name).await?;
        let mut tree = TreeState::default();
        for rec in SegmentReader::new(&bytes)
            .map_err(|e| SyncError::Journal(format!("checkpoint: {e}")))?
        {
            let rec = rec.map_err(|e| SyncError::Journal(format!("checkpoint: {e}")))?;
            tree.apply(&rec)
                .map_err(|e| SyncError::Journal(format!("checkpoint: {e}")))?;
        }
        tree.seq = cp.seq;
        (tree, Cursor::default())
    } else if base.seq + 1 < first_kept {
        return Err(SyncError::Journal(format!(
            "the server dropped the journal past sequence {} and has no checkpoint to start from",
            base.seq
        )));
    } else {
        (base.clone(), known.clone())
    };
    for seg in &head.segments {
        if seg.last_seq <= tree.seq {
            // Already covered (by a checkpoint, or read before): the next
            // read of this segment starts after everything it holds now.
            cursor = Cursor {
                segment: Some(seg.name.clone()),
                offset: seg.length,
            };
            continue;
        }
        let offset = match &cursor.segment {
            Some(name) if *name == seg.name && cursor.offset <= seg.length => cursor.offset,
            _ => 0,
        };
        let bytes = remote.segment(&seg.name, offset).await?;
        let bad =
            |e: intersync_protocol::KmlError| SyncError::Journal(format!("{}: {e}", seg.name));
        let mut pos = 0usize;
        if offset == 0 {
            parse_segment_header(&bytes).map_err(bad)?;
            pos = SEGMENT_HEADER_LEN;
        }
        while pos < bytes.len() {
            match KmlRecord::decode(&bytes[pos..], offset + pos as u64) {
                Ok((rec, len)) => {
                    pos += len;
                    if rec.seq <= tree.seq {
                        continue;
                    }
                    if rec.seq != tree.seq + 1 {
                        return Err(SyncError::Journal(format!(
                            "record {} follows {}",
                            rec.seq, tree.seq
                        )));
                    }
                    tree.apply(&rec)
                        .map_err(|e| SyncError::Journal(e.to_string()))?;
                }
                // A record still being appended: read it next time.
                Err(e) if e.is_incomplete() => break,
                Err(e) => return Err(bad(e)),
            }
        }
        cursor = Cursor {
            segment: Some(seg.name.clone()),
            offset: offset + pos as u64,
        };
    }
    Ok((tree, cursor, head))
}

/// A file the pull must bring in.
struct Wanted<'a> {
    path: &'a TreePath,
    entry: &'a Entry,
    version: Version,
    size: u64,
}

/// One pull (see the module documentation of `client`).
pub async fn pull(
    wc: &mut WorkingCopy,
    remote: &impl Remote,
    options: SyncOptions,
    report: &mut SyncReport,
) -> Result<(), SyncError> {
    wc.absorb_fetched();
    let (mut server, cursor, head) = server_tree(wc, remote).await?;
    wc.saved.static_export = head.static_export;
    let ways = Ways {
        patches: head.patches && !head.static_export,
        by_blocks: head.static_export || options.cacheable_reads,
    };
    let root = wc.root().to_owned();
    let base = wc.saved.base.state.clone();
    let placeholders = wc.placeholders().clone();
    // The disk as it is, against the base.
    let mut local_index = wc.saved.base.clone();
    wc.scan(&mut local_index)?;
    let mut local = local_index.state.clone();

    let mut paths: Vec<TreePath> = base.iter().map(|(p, _)| p.clone()).collect();
    paths.extend(server.iter().map(|(p, _)| p.clone()));
    paths.extend(local.iter().map(|(p, _)| p.clone()));
    paths.sort();
    paths.dedup();
    let changed_on_server: HashSet<TreePath> = paths
        .iter()
        .filter(|p| !same(base.get(p), server.get(p)))
        .cloned()
        .collect();
    let server_changed = |p: &TreePath| changed_on_server.contains(p);
    // Changed here in content or kind (a touch or chmod alone does not make
    // a conflict: the server's change wins over local attributes).
    let locally_changed: HashSet<TreePath> = paths
        .iter()
        .filter(|p| !same_content(base.get(p), local.get(p)))
        .cloned()
        .collect();

    // Conflicts: both sides changed, to different things.
    let mut keep_local: HashSet<TreePath> = HashSet::new();
    let mut unresolved: Vec<TreePath> = Vec::new();
    for p in &paths {
        if !server_changed(p)
            || !locally_changed.contains(p)
            || same_content(local.get(p), server.get(p))
        {
            continue;
        }
        if keep_local.iter().any(|k| p.starts_with(k)) {
            continue;
        }
        let (l, s) = (local.get(p).cloned(), server.get(p).cloned());
        match (&l, &s) {
            (Some(l), Some(s)) if l.is_dir() && s.is_dir() => {}
            (Some(_), Some(_)) => {
                let aside = conflict_name(p, wc.node().0)?;
                fs::rename(p.under(&root), aside.under(&root))
                    .map_err(|e| SyncError::local(p, e))?;
                move_in_state(&mut local, p, &aside);
                report.conflicts.push(Conflict {
                    path: p.clone(),
                    kept_as: Some(aside.clone()),
                    what: "changed on both sides: the server's version keeps the name".into(),
                });
            }
            (Some(_), None) => {
                keep_local.insert(p.clone());
                if base.get(p).is_some() {
                    report.conflicts.push(Conflict {
                        path: p.clone(),
                        kept_as: None,
                        what: "deleted on the server but changed here: the local version is kept"
                            .into(),
                    });
                }
            }
            (None, Some(_)) => report.conflicts.push(Conflict {
                path: p.clone(),
                kept_as: None,
                what: "deleted here but changed on the server: the server's version is restored"
                    .into(),
            }),
            _ => {
                // Not resolved this time (a pull without push, or the pull
                // after a push): the base stays as it was, so the next
                // round sees both changes again and resolves them.
                keep_local.insert(p.clone());
                unresolved.push(p.clone());
            }
        }
    }
    let kept = |p: &TreePath| keep_local.iter().any(|k| p.starts_with(k));

    // Kind changes and removals of what the server no longer has, deepest first.
    let mut removed: HashSet<TreePath> = HashSet::new();
    let mut sources_going: HashMap<Version, Vec<TreePath>> = HashMap::new();
    let mut undeleted_dirs: Vec<TreePath> = Vec::new();
    for p in paths.iter().rev() {
        if kept(p) || !server_changed(p) {
            continue;
        }
        let (Some(l), s) = (local.get(p).cloned(), server.get(p)) else {
            continue;
        };
        if placeholders.contains(p) {
            // Never fetched: nothing on disk to move or remove.
            if s.is_none() || s.is_some_and(|s| s.version().is_none()) {
                placeholders.remove(p, None);
                local_remove(&mut local, p);
            }
            continue;
        }
        let kind_changes =
            s.is_some_and(|s| std::mem::discriminant(&s.kind) != std::mem::discriminant(&l.kind));
        if s.is_some() && !kind_changes {
            continue;
        }
        if locally_changed.contains(p) && !l.is_dir() {
            continue;
        }
        if let (EntryKind::File { version, .. }, false) = (&l.kind, kind_changes) {
            // Content that may be wanted elsewhere (a rename): move it, later.
            sources_going.entry(*version).or_default().push(p.clone());
            continue;
        }
        let full = p.under(&root);
        let gone = if l.is_dir() {
            fs::remove_dir(&full)
        } else {
            fs::remove_file(&full)
        };
        match gone {
            Ok(()) => {
                removed.insert(p.clone());
                local_remove(&mut local, p);
                report.pulled.push(Change {
                    path: p.clone(),
                    what: "deleted".into(),
                });
            }
            // Not empty yet: files kept for their content go later, then
            // this is tried again; local files keep it, to be pushed.
            Err(e) if e.raw_os_error() == Some(39) => undeleted_dirs.push(p.clone()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(SyncError::local(p, e)),
        }
    }

    // Folders, then files and symlinks, in tree order.
    let mut skipped: Vec<TreePath> = Vec::new();
    let mut installed: HashMap<TreePath, CachedStat> = HashMap::new();
    for (p, s) in server.iter() {
        // What the server did not change is the working copy's business
        // (a local edit or delete, pushed later).
        // A placeholder is fetched now unless this pull is lazy.
        let fill = !options.lazy && placeholders.contains(p);
        if !fill && (kept(p) || !server_changed(p) || same_content(local.get(p), Some(s))) {
            continue;
        }
        let full = p.under(&root);
        match &s.kind {
            EntryKind::Dir => {
                fs::create_dir(&full)
                    .or_else(|e| if full.is_dir() { Ok(()) } else { Err(e) })
                    .map_err(|e| SyncError::local(p, e))?;
                fs::set_permissions(&full, fs::Permissions::from_mode(s.mode))
                    .map_err(|e| SyncError::local(p, e))?;
                report.pulled.push(Change {
                    path: p.clone(),
                    what: "folder created".into(),
                });
            }
            EntryKind::Symlink { target } => {
                let _ = fs::remove_file(&full);
                let target = std::ffi::OsStr::from_bytes_compat(target);
                std::os::unix::fs::symlink(target, &full).map_err(|e| SyncError::local(p, e))?;
                report.pulled.push(Change {
                    path: p.clone(),
                    what: "symlink".into(),
                });
            }
            EntryKind::File { version, size } => {
                // Lazy: a file with nothing here to build it from waits,
                // as a placeholder, until it is opened.
                let nothing_here = placeholders.contains(p) || local.get(p).is_none();
                let copy_here = sources_going.contains_key(version)
                    || local
                        .find_version(*version)
                        .is_some_and(|q| !placeholders.contains(q));
                if options.lazy && nothing_here && !copy_here {
                    placeholders.insert(p.clone(), s.clone());
                    continue;
                }
                let want = Wanted {
                    path: p,
                    entry: s,
                    version: *version,
                    size: *size,
                };
                match fetch(wc, remote, &local, &mut sources_going, &want, ways, report).await {
                    Ok(got) if got == *version => {
                        placeholders.remove(p, None);
                        // The stat right after the install: if the file
                        // changes before the pull ends, it will not match.
                        if let Ok(meta) = fs::symlink_metadata(&full) {
                            installed.insert(
                                p.clone(),
                                CachedStat {
                                    key: StatKey::of(&meta),
                                    seen_ns: scan::now_ns(),
                                },
                            );
                        }
                    }
                    Ok(_) => skipped.push(p.clone()),
                    Err(SyncError::Transport(TransportError::Changed { .. })) => {
                        skipped.push(p.clone())
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }
    // Sources that were going away and were not wanted elsewhere.
    for p in sources_going.drain().flat_map(|(_, paths)| paths) {
        match fs::remove_file(p.under(&root)) {
            Ok(()) => report.pulled.push(Change {
                path: p.clone(),
                what: "deleted".into(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(SyncError::local(&p, e)),
        }
    }
    // Folders that were not empty before (deepest first, as collected).
    for p in undeleted_dirs {
        if fs::remove_dir(p.under(&root)).is_ok() {
            local_remove(&mut local, &p);
            report.pulled.push(Change {
                path: p.clone(),
                what: "deleted".into(),
            });
        }
    }
    // Attributes of what did not change content.
    for (p, s) in server.iter() {
        if kept(p) || skipped.contains(p) || !server_changed(p) {
            continue;
        }
        if placeholders.contains(p) {
            placeholders.retain(|q, e| {
                if q == p {
                    *e = s.clone();
                }
                true
            });
            continue;
        }
        if let Some(l) = local.get(p)
            && l.kind == s.kind
            && !same(Some(l), Some(s))
        {
            set_attrs(&p.under(&root), s).map_err(|e| SyncError::local(p, e))?;
            report.pulled.push(Change {
                path: p.clone(),
                what: "attributes".into(),
            });
        }
    }

    // The new base: the server's tree, but where this pull could not bring a
    // file in, what the disk still has (so that it is not pushed as an edit).
    for p in skipped.iter().chain(&unresolved) {
        match base.get(p) {
            Some(e) => server.insert(p.clone(), e.clone()),
            None => {
                server.remove(p);
            }
        }
    }
    let mut stats = HashMap::new();
    let now = scan::now_ns();
    for (p, e) in server.iter() {
        if kept(p) {
            continue;
        }
        // What the server left alone keeps its stat even where the disk
        // moved on: the next scan needs it to recognise a local rename.
        if !server_changed(p)
            && let Some(old) = wc.saved.base.stats.get(p)
        {
            stats.insert(p.clone(), *old);
            continue;
        }
        if let Ok(meta) = fs::symlink_metadata(p.under(&root)) {
            let on_disk = local_index.stats.get(p).copied();
            let fresh = CachedStat {
                key: StatKey::of(&meta),
                seen_ns: now,
            };
            // Keep a stat only where the disk is known to hold this entry.
            let vouched =
                same_content(local.get(p), Some(e)) && on_disk.is_some_and(|c| c.key == fresh.key);
            if vouched {
                stats.insert(p.clone(), on_disk.expect("checked"));
            } else if let Some(at_install) = installed.get(p).filter(|c| c.key == fresh.key) {
                // Unchanged since this pull installed it; otherwise no stat,
                // so the next scan hashes it and finds the local edit.
                stats.insert(p.clone(), *at_install);
            }
        }
    }
    // A placeholder is a file of the base that the disk does not have.
    placeholders.retain(|p, e| {
        server.get(p).is_some_and(|s| {
            s.version().is_some() && {
                *e = s.clone();
                true
            }
        }) && fs::symlink_metadata(p.under(&root)).is_err()
    });
    wc.saved.base = Index {
        state: server,
        stats,
    };
    wc.saved.cursor = cursor;
    wc.saved.server_id = Some(head.server_id);
    Ok(())
}

/// Brings one file in by the cheapest way; returns the version installed.
async fn fetch(
    wc: &WorkingCopy,
    remote: &impl Remote,
    local: &TreeState,
    sources_going: &mut HashMap<Version, Vec<TreePath>>,
    want: &Wanted<'_>,
    ways: Ways,
    report: &mut SyncReport,
) -> Result<Version, SyncError> {
    report.full_fetch_bytes += want.size;
    let progress = remote.progress();
    if let Some(p) = progress {
        p.plan(want.size);
    }
    let got = fetch_by_cheapest(wc, remote, local, sources_going, want, ways, report).await;
    if let (Some(p), Ok(_)) = (progress, &got) {
        p.file_done();
    }
    if let Ok(version) = &got
        && wc.versions().is_some()
        && want.size >= super::working_copy::MIN_KEPT_LEN
        && let Ok(data) = MappedFile::open(&want.path.under(wc.root()))
    {
        // The base of the next local edit: pushed as a patch from it.
        wc.keep(*version, &data);
    }
    got
}

/// Which ways to a changed file a source offers.
#[derive(Clone, Copy)]
struct Ways {
    /// Exact patches from the version last synced (a smart server; they
    /// are immutable GETs, so a cache in front serves them too).
    patches: bool,
    /// The static path (the new version's signature and ranges) instead of
    /// a delta from the server.
    by_blocks: bool,
}

async fn fetch_by_cheapest(
    wc: &WorkingCopy,
    remote: &impl Remote,
    local: &TreeState,
    sources_going: &mut HashMap<Version, Vec<TreePath>>,
    want: &Wanted<'_>,
    ways: Ways,
    report: &mut SyncReport,
) -> Result<Version, SyncError> {
    let Ways { patches, by_blocks } = ways;
    let root = wc.root();
    let dest = want.path.under(root);
    // A folder deleted here while the server changed something in it.
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(|e| SyncError::local(want.path, e))?;
    }
    let done = |n: u64| {
        if let Some(p) = remote.progress() {
            p.advance(n);
        }
    };
    // 1. The content is here already: move a file that is going away, or copy one.
    if let Some(src) = sources_going.get_mut(&want.version).and_then(Vec::pop) {
        fs::rename(src.under(root), &dest).map_err(|e| SyncError::local(&src, e))?;
        set_attrs(&dest, want.entry).map_err(|e| SyncError::local(want.path, e))?;
        report.files_local += 1;
        report.matched_bytes += want.size;
        report.pulled.push(Change {
            path: want.path.clone(),
            what: format!("renamed from {src}"),
        });
        return Ok(want.version);
    }
    if let Some(src) = local.find_version(want.version).filter(|q| *q != want.path) {
        let src_full = src.under(root);
        if let Ok(got) = copy_verified(&src_full, &dest, want) {
            report.files_local += 1;
            report.matched_bytes += want.size;
            report.pulled.push(Change {
                path: want.path.clone(),
                what: format!("copied from {src}"),
            });
            return Ok(got);
        }
    }
    // 2. The local copy is the version last synced, which the server may
    // still hold: an exact patch from it, with no signature.
    let here = local.get(want.path).and_then(Entry::version);
    let synced = wc.saved.base.state.get(want.path).and_then(Entry::version);
    if patches && let Some(from) = here.filter(|v| Some(*v) == synced) {
        match fetch_patch(remote, &dest, from, want).await {
            Ok(Some(received)) => {
                report.files_patched += 1;
                done(want.size);
                report.literal_bytes += received;
                report.matched_bytes += want.size.saturating_sub(received);
                report.pulled.push(Change {
                    path: want.path.clone(),
                    what: "updated by patch".into(),
                });
                return Ok(want.version);
            }
            Ok(None) => {}
            Err(SyncError::Transport(e)) if e.is_unreachable() => return Err(e.into()),
            Err(e) => tracing::info!(path = %want.path, error = %e, "patch failed; trying a delta"),
        }
    }
    // 3. A delta against the local copy.
    if matches!(
        local.get(want.path).map(|e| &e.kind),
        Some(EntryKind::File { .. })
    ) {
        let large = want.size >= delta::refine::MIN_LEN
            && fs::metadata(&dest).is_ok_and(|m| m.len() >= delta::refine::MIN_LEN);
        let delta = if by_blocks && large {
            match fetch_levels(remote, &dest, want).await {
                Ok(Some(done)) => Ok(done),
                Ok(None) => fetch_blocks(remote, &dest, want).await,
                Err(SyncError::Transport(e)) if e.is_unreachable() => Err(e.into()),
                Err(e) => {
                    tracing::info!(path = %want.path, error = %e, "signature levels failed; one signature then");
                    fetch_blocks(remote, &dest, want).await
                }
            }
        } else if by_blocks {
            fetch_blocks(remote, &dest, want).await
        } else if large {
            match fetch_refined(remote, &dest, want).await {
                // A server without refinement: one round, then.
                Err(SyncError::Transport(TransportError::Refused { status: 404, .. })) => {
                    fetch_delta(remote, &dest, want).await
                }
                other => other,
            }
        } else {
            fetch_delta(remote, &dest, want).await
        };
        match delta {
            Ok((version, stats)) => {
                if by_blocks {
                    report.files_blocks += 1;
                } else {
                    report.files_delta += 1;
                }
                done(want.size);
                report.literal_bytes += stats.literal_bytes;
                report.matched_bytes += stats.matched_bytes;
                report.pulled.push(Change {
                    path: want.path.clone(),
                    what: "updated by delta".into(),
                });
                return Ok(version);
            }
            Err(SyncError::Transport(e)) if e.is_unreachable() => return Err(e.into()),
            Err(e) => tracing::info!(path = %want.path, error = %e, "delta failed; fetching whole"),
        }
    }
    // 4. The whole file, resuming a partial.
    let version = fetch_whole(wc, remote, want, report).await?;
    report.files_whole += 1;
    report.pulled.push(Change {
        path: want.path.clone(),
        what: "fetched whole".into(),
    });
    Ok(version)
}

fn copy_verified(
    src: &std::path::Path,
    dest: &std::path::Path,
    want: &Wanted<'_>,
) -> Result<Version, SyncError> {
    let data = MappedFile::open(src).map_err(|e| SyncError::local(src.display(), e))?;
    let version = Version::of(&data);
    if version != want.version {
        return Err(SyncError::local(
            src.display(),
            "changed while being copied",
        ));
    }
    let mut out = PendingFile::create(dest).map_err(|e| SyncError::local(dest.display(), e))?;
    out.write_all(&data)
        .map_err(|e| SyncError::local(dest.display(), e))?;
    out.install()
        .map_err(|e| SyncError::local(dest.display(), e))?;
    set_attrs(dest, want.entry).map_err(|e| SyncError::local(dest.display(), e))?;
    Ok(version)
}

/// The static path (zsync's direction): the new version's signature, the
/// rolling checksum over the local copy, and only the missing blocks by
/// ranged GETs, adjacent blocks merged into one range.
async fn fetch_blocks(
    remote: &impl Remote,
    dest: &std::path::Path,
    want: &Wanted<'_>,
) -> Result<(Version, delta::DeltaStats), SyncError> {
    use crate::delta::matcher::BlockIndex;
    let sig_bytes = remote.signature(want.version).await?;
    let sig =
        Signature::from_bytes(sig_bytes.to_vec()).map_err(|e| SyncError::local(want.path, e))?;
    let view = sig.view();
    let block_len = u64::from(view.header.block_len);
    let blocks = view.block_count();
    if blocks as u64 != want.size.div_ceil(block_len) {
        return Err(SyncError::local(
            want.path,
            "signature does not fit the file's size",
        ));
    }
    let file = File::open(dest).map_err(|e| SyncError::local(dest.display(), e))?;
    let base = MappedFile::map(&file).map_err(|e| SyncError::local(dest.display(), e))?;
    // Where each block of the new version can be copied from locally.
    let mut source: Vec<Option<u64>> = vec![None; blocks];
    let mut by_sum: HashMap<(u32, Vec<u8>), u64> = HashMap::new();
    BlockIndex::new(view).scan(&base, |m| {
        let b = m.block as usize;
        let expected = want.size.min((b as u64 + 1) * block_len) - b as u64 * block_len;
        if u64::from(m.len) == expected && source[b].is_none() {
            source[b] = Some(m.data_offset);
            // Only whole blocks stand in for other blocks with the same sums.
            if u64::from(m.len) == block_len {
                let (weak, strong) = view.block(b);
                by_sum.insert((weak, strong.to_vec()), m.data_offset);
            }
        }
    });
    // Identical blocks (runs of zeros, repeated records) share one source.
    for (b, slot) in source.iter_mut().enumerate() {
        if slot.is_none() && (b as u64 + 1) * block_len <= want.size {
            let (weak, strong) = view.block(b);
            *slot = by_sum.get(&(weak, strong.to_vec())).copied();
        }
    }
    // The missing blocks, adjacent ones merged into one range.
    let mut missing: Vec<std::ops::Range<u64>> = Vec::new();
    for (b, slot) in source.iter().enumerate() {
        if slot.is_none() {
            let (start, end) = (
                b as u64 * block_len,
                want.size.min((b as u64 + 1) * block_len),
            );
            match missing.last_mut() {
                Some(last) if last.end == start => last.end = end,
                _ => missing.push(start..end),
            }
        }
    }
    let fetched = fetch_ranges(remote, want.path, want.version, &missing, RANGES_A_REQUEST).await?;
    let mut fetched = fetched.into_iter();
    let mut out = PendingFile::create(dest).map_err(|e| SyncError::local(dest.display(), e))?;
    let mut hashing = HashingWriter {
        inner: &mut out,
        hasher: blake3::Hasher::new(),
    };
    let mut stats = delta::DeltaStats::default();
    let mut b = 0usize;
    while b < blocks {
        let start = b as u64 * block_len;
        let bytes: &[u8];
        let owned;
        if let Some(from) = source[b] {
            let len = want.size.min(start + block_len) - start;
            bytes = &base[from as usize..(from + len) as usize];
            stats.matched_bytes += len;
        } else {
            owned = fetched
                .next()
                .expect("a range for every run of missing blocks");
            bytes = &owned;
            stats.literal_bytes += bytes.len() as u64;
        }
        hashing
            .write_all(bytes)
            .map_err(|e| SyncError::local(dest.display(), e))?;
        b = (start + bytes.len() as u64).div_ceil(block_len) as usize;
    }
    let got = Version::from_hasher(&hashing.hasher);
    if got != want.version {
        return Err(SyncError::local(
            dest.display(),
            "blocks did not add up to the version",
        ));
    }
    drop(base);
    out.install()
        .map_err(|e| SyncError::local(dest.display(), e))?;
    set_attrs(dest, want.entry).map_err(|e| SyncError::local(dest.display(), e))?;
    Ok((got, stats))
}

/// Single-range requests in flight at once when a server answers no multi-range.
const RANGES_IN_FLIGHT: usize = 4;

/// Ranges in one request to any web server (nginx takes many more; some
/// servers and caches take fewer).
const RANGES_A_REQUEST: usize = 64;
/// Ranges in one request to InterSync's own server, which takes 256: each
/// request saved is a round trip.
const RANGES_A_REQUEST_SMART: usize = 256;

/// Fetches `ranges` of a file: in multi-range requests of up to
/// `per_request` ranges where the server answers them correctly, else one
/// range a request.
async fn fetch_ranges(
    remote: &impl Remote,
    path: &TreePath,
    version: Version,
    ranges: &[std::ops::Range<u64>],
    per_request: usize,
) -> Result<Vec<bytes::Bytes>, SyncError> {
    let mut out = Vec::with_capacity(ranges.len());
    let mut multi = ranges.len() > 1;
    for chunk in ranges.chunks(per_request) {
        if multi && chunk.len() > 1 {
            match remote.ranges(path, version, chunk).await {
                Ok(parts) => {
                    out.extend(parts);
                    continue;
                }
                Err(e) if e.is_unreachable() => return Err(e.into()),
                Err(e) => {
                    tracing::info!(%path, error = %e, "multi-range refused; asking one range at a time");
                    multi = false;
                }
            }
        }
        // One range a request, a few in flight at once (each on its own
        // keep-alive connection), answers kept in order.
        use futures_util::StreamExt;
        let mut singles = futures_util::stream::iter(chunk)
            .map(|r| remote.range(path, version, r.clone()))
            .buffered(RANGES_IN_FLIGHT);
        while let Some(bytes) = singles.next().await {
            out.push(bytes?);
        }
    }
    Ok(out)
}

/// Brings one file of the export to `dest`, verified and installed whole:
/// by a delta against what `dest` holds when it holds a file, else whole.
/// Returns (literal, matched) bytes. The file's attributes are left to the
/// caller.
pub async fn fetch_one(
    remote: &impl Remote,
    path: &TreePath,
    entry: &Entry,
    dest: &std::path::Path,
) -> Result<(u64, u64), SyncError> {
    let EntryKind::File { version, size } = entry.kind else {
        return Err(SyncError::local(path, "not a file"));
    };
    let want = Wanted {
        path,
        entry,
        version,
        size,
    };
    if fs::symlink_metadata(dest).is_ok_and(|m| m.is_file()) {
        match fetch_delta(remote, dest, &want).await {
            Ok((_, stats)) => return Ok((stats.literal_bytes, stats.matched_bytes)),
            Err(SyncError::Transport(e)) if e.is_unreachable() => return Err(e.into()),
            Err(e) => tracing::info!(%path, error = %e, "delta failed; fetching whole"),
        }
    }
    let dir = dest.parent().unwrap_or(std::path::Path::new("."));
    for attempt in 0..2 {
        let mut out = PendingFile::create(dest).map_err(|e| SyncError::local(dest.display(), e))?;
        let mut spool =
            tempfile::tempfile_in(dir).map_err(|e| SyncError::local(dir.display(), e))?;
        let received = remote.fetch_into(path, version, &mut spool).await?;
        let data = MappedFile::map(&spool).map_err(|e| SyncError::local(dest.display(), e))?;
        if Version::of(&data) == version {
            out.write_all(&data)
                .map_err(|e| SyncError::local(dest.display(), e))?;
            out.install()
                .map_err(|e| SyncError::local(dest.display(), e))?;
            return Ok((received, 0));
        }
        tracing::warn!(%path, attempt, "download did not verify; fetching again");
    }
    Err(SyncError::local(
        path,
        "the download never matched its version",
    ))
}

/// Updates `dest`, which holds version `from`, by the server's patch to
/// `want`; the patch's length, or `None` when the server has none.
async fn fetch_patch(
    remote: &impl Remote,
    dest: &std::path::Path,
    from: Version,
    want: &Wanted<'_>,
) -> Result<Option<u64>, SyncError> {
    let mut spool = tempfile::tempfile_in(dest.parent().unwrap_or(std::path::Path::new(".")))
        .map_err(|e| SyncError::local(dest.display(), e))?;
    let Some(size) = remote.patch(from, want.version, &mut spool).await? else {
        return Ok(None);
    };
    let patch = MappedFile::map(&spool).map_err(|e| SyncError::local(dest.display(), e))?;
    let file = File::open(dest).map_err(|e| SyncError::local(dest.display(), e))?;
    let base = MappedFile::map(&file).map_err(|e| SyncError::local(dest.display(), e))?;
    let mut out = PendingFile::create(dest).map_err(|e| SyncError::local(dest.display(), e))?;
    let mut hashing = HashingWriter {
        inner: &mut out,
        hasher: blake3::Hasher::new(),
    };
    delta::zpatch::decode(&base, &patch, &mut hashing, size)
        .map_err(|e| SyncError::local(dest.display(), e))?;
    let got = Version::from_hasher(&hashing.hasher);
    if got != want.version || size != want.size {
        return Err(SyncError::local(
            dest.display(),
            format!("patch gave {got:?}, not {:?}", want.version),
        ));
    }
    drop(base);
    out.install()
        .map_err(|e| SyncError::local(dest.display(), e))?;
    set_attrs(dest, want.entry).map_err(|e| SyncError::local(dest.display(), e))?;
    Ok(Some(patch.len() as u64))
}

async fn fetch_delta(
    remote: &impl Remote,
    dest: &std::path::Path,
    want: &Wanted<'_>,
) -> Result<(Version, delta::DeltaStats), SyncError> {
    let (base, sig, mut spool) = signed_base(dest, |len| {
        SignatureOptions::for_len(len, SignatureFormat::Md4Rollsum)
    })?;
    let answer = remote
        .delta(want.path, sig.into_bytes(), &mut spool)
        .await?;
    install_delta(base, &spool, answer, dest, want)
}

/// A multi-round delta (`delta::refine`): a coarse signature up, copies,
/// gaps and a fine signature of the gaps down, the fine blocks found here,
/// the rest of the gaps by ranges.
async fn fetch_refined(
    remote: &impl Remote,
    dest: &std::path::Path,
    want: &Wanted<'_>,
) -> Result<(Version, delta::DeltaStats), SyncError> {
    use intersync_protocol::refine::RefineAnswer;
    let local = |e: std::io::Error| SyncError::local(dest.display(), e);
    let (base, sig, mut spool) = signed_base(dest, delta::refine::coarse_options)?;
    let answer = match remote
        .refine(want.path, sig.into_bytes(), &mut spool)
        .await?
    {
        Refined::Delta(answer) => return install_delta(base, &spool, answer, dest, want),
        Refined::Answer { .. } => MappedFile::map(&spool).map_err(local)?,
    };
    let answer = RefineAnswer::parse(&answer, base.len() as u64)
        .map_err(|e| SyncError::local(dest.display(), e))?;
    last_round(remote, &answer, base, dest, want, RANGES_A_REQUEST_SMART).await
}

/// The last round of a multi-round delta, on either path: finds the
/// answer's fine blocks in `base` (the copy at `dest`), fetches the rest of
/// the gaps, `per_request` ranges a request, and installs the result if it
/// has the version announced.
async fn last_round(
    remote: &impl Remote,
    answer: &intersync_protocol::refine::RefineAnswer<'_>,
    base: MappedFile,
    dest: &std::path::Path,
    want: &Wanted<'_>,
    per_request: usize,
) -> Result<(Version, delta::DeltaStats), SyncError> {
    let local = |e: std::io::Error| SyncError::local(dest.display(), e);
    let found = delta::refine::find(answer, &base);
    let missing = found.missing(answer);
    let fetched = fetch_ranges(remote, want.path, answer.version, &missing, per_request).await?;
    let mut out = PendingFile::create(dest).map_err(local)?;
    let mut hashing = HashingWriter {
        inner: &mut out,
        hasher: blake3::Hasher::new(),
    };
    let stats = found
        .assemble(answer, &base, &missing, &fetched, &mut hashing)
        .map_err(local)?;
    let got = Version::from_hasher(&hashing.hasher);
    drop(base);
    install_checked(out, got, answer.version, answer.size, dest, want)?;
    Ok((got, stats))
}

/// The static path in rounds, for large files: the version's coarse
/// signature whole, then the records of its fine signature that cover the
/// coarse blocks `dest` lacks, then the bytes still missing
/// (`delta::refine::static_levels`). `None` when the export has no levels
/// for the version.
async fn fetch_levels(
    remote: &impl Remote,
    dest: &std::path::Path,
    want: &Wanted<'_>,
) -> Result<Option<(Version, delta::DeltaStats)>, SyncError> {
    use intersync_protocol::refine::RefineAnswer;
    use intersync_protocol::signature::SIGNATURE_HEADER_LEN;
    let local = |e: std::io::Error| SyncError::local(dest.display(), e);
    let unfit = |what: &str| SyncError::local(want.path, format!("{what} does not fit the file"));
    let Some(coarse) = remote.coarse_signature(want.version).await? else {
        return Ok(None);
    };
    let coarse =
        Signature::from_bytes(coarse.to_vec()).map_err(|e| SyncError::local(want.path, e))?;
    let coarse_len = u64::from(coarse.header().block_len);
    if coarse.header() != delta::refine::coarse_options(want.size).header()
        || coarse.view().block_count() as u64 != want.size.div_ceil(coarse_len)
    {
        return Err(unfit("the coarse signature"));
    }
    let file = File::open(dest).map_err(local)?;
    let base = MappedFile::map(&file).map_err(local)?;
    let segments = delta::refine::static_segments(coarse.view(), want.size, &base);
    let options = delta::refine::static_fine_options(want.size);
    let header = options.header();
    let records = delta::refine::static_records(&segments, want.size, options)
        .ok_or_else(|| unfit("the fine signature"))?;
    let fine = if records.is_empty() {
        // No record is worth a round: the gaps are fetched as they are.
        header.to_bytes().to_vec()
    } else {
        let fine = fetch_fine_records(remote, want.version, &records, header.record_len()).await?;
        if fine.get(..SIGNATURE_HEADER_LEN) != Some(&header.to_bytes()[..]) {
            return Err(unfit("the fine signature's header"));
        }
        fine
    };
    let fine = Signature::from_bytes(fine).map_err(|e| SyncError::local(want.path, e))?;
    let answer = RefineAnswer {
        version: want.version,
        size: want.size,
        segments,
        fine: fine.view(),
    };
    last_round(remote, &answer, base, dest, want, RANGES_A_REQUEST)
        .await
        .map(Some)
}

/// The header of a static fine signature and its records numbered
/// `records` (in order, `record_len` bytes each), fetched by ranges, runs of
/// records in one range: a signature of those records alone.
async fn fetch_fine_records(
    remote: &impl Remote,
    version: Version,
    records: &[u64],
    record_len: usize,
) -> Result<Vec<u8>, SyncError> {
    use intersync_protocol::signature::SIGNATURE_HEADER_LEN;
    let (head_len, record_len) = (SIGNATURE_HEADER_LEN as u64, record_len as u64);
    let mut ranges: Vec<std::ops::Range<u64>> = Vec::new();
    ranges.push(0..head_len);
    for &i in records {
        let r = head_len + i * record_len..head_len + (i + 1) * record_len;
        match ranges.last_mut() {
            Some(last) if last.end == r.start => last.end = r.end,
            _ => ranges.push(r),
        }
    }
    let mut fine = Vec::with_capacity((head_len + records.len() as u64 * record_len) as usize);
    for chunk in ranges.chunks(RANGES_A_REQUEST) {
        for part in remote.fine_signature_ranges(version, chunk).await? {
            fine.extend_from_slice(&part);
        }
    }
    Ok(fine)
}

/// The local copy at `dest` mapped, its signature with the options
/// `options` gives for its length, and a temporary file in its folder for
/// the answer to land in.
fn signed_base(
    dest: &std::path::Path,
    options: impl FnOnce(u64) -> SignatureOptions,
) -> Result<(MappedFile, Signature, File), SyncError> {
    let local = |e: std::io::Error| SyncError::local(dest.display(), e);
    let file = File::open(dest).map_err(local)?;
    let base = MappedFile::map(&file).map_err(local)?;
    let (sig, _) = Signature::calculate(&base, options(base.len() as u64));
    let spool =
        tempfile::tempfile_in(dest.parent().unwrap_or(std::path::Path::new("."))).map_err(local)?;
    Ok((base, sig, spool))
}

/// Applies the delta spooled in `spool` to `base` and installs the result
/// at `dest` if it has the version the server said.
fn install_delta(
    base: MappedFile,
    spool: &File,
    answer: crate::transport::RemoteDelta,
    dest: &std::path::Path,
    want: &Wanted<'_>,
) -> Result<(Version, delta::DeltaStats), SyncError> {
    let local = |e: std::io::Error| SyncError::local(dest.display(), e);
    let delta = MappedFile::map(spool).map_err(local)?;
    let mut out = PendingFile::create(dest).map_err(local)?;
    let mut hashing = HashingWriter {
        inner: &mut out,
        hasher: blake3::Hasher::new(),
    };
    let stats = delta::apply(&base, &delta, &mut hashing, answer.size)
        .map_err(|e| SyncError::local(dest.display(), e))?;
    let got = Version::from_hasher(&hashing.hasher);
    drop(base);
    install_checked(out, got, answer.version, answer.size, dest, want)?;
    Ok((got, stats))
}

/// Installs `out` (whose content hashed to `got`) at `dest`, with `want`'s
/// attributes, if `got` is the version the server announced.
fn install_checked(
    out: PendingFile,
    got: Version,
    announced: Version,
    size: u64,
    dest: &std::path::Path,
    want: &Wanted<'_>,
) -> Result<(), SyncError> {
    if got != announced {
        return Err(SyncError::local(
            dest.display(),
            format!("the update gave {got:?}, not {announced:?}"),
        ));
    }
    out.install()
        .map_err(|e| SyncError::local(dest.display(), e))?;
    let entry = Entry {
        kind: EntryKind::File { version: got, size },
        ..want.entry.clone()
    };
    set_attrs(dest, &entry).map_err(|e| SyncError::local(dest.display(), e))
}

async fn fetch_whole(
    wc: &WorkingCopy,
    remote: &impl Remote,
    want: &Wanted<'_>,
    report: &mut SyncReport,
) -> Result<Version, SyncError> {
    let dir = wc.partial_dir();
    fs::create_dir_all(&dir).map_err(|e| SyncError::local(dir.display(), e))?;
    let partial = dir.join(want.version.to_string());
    for attempt in 0..2 {
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(false)
            .write(true)
            .truncate(false)
            .open(&partial)
            .map_err(|e| SyncError::local(partial.display(), e))?;
        let received = remote
            .fetch_into(want.path, want.version, &mut file)
            .await?;
        report.literal_bytes += received;
        file.sync_all()
            .map_err(|e| SyncError::local(partial.display(), e))?;
        drop(file);
        let got = scan::hash_file(&partial).map_err(|e| SyncError::local(partial.display(), e))?;
        if got == want.version {
            let dest = want.path.under(wc.root());
            set_attrs(&partial, want.entry).map_err(|e| SyncError::local(partial.display(), e))?;
            fs::rename(&partial, &dest).map_err(|e| SyncError::local(dest.display(), e))?;
            if let Some(parent) = dest.parent() {
                File::open(parent)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| SyncError::local(parent.display(), e))?;
            }
            return Ok(got);
        }
        // A partial that does not add up is never installed: start over once.
        tracing::warn!(path = %want.path, attempt, "download did not verify; fetching again from zero");
        let _ = fs::remove_file(&partial);
    }
    Err(SyncError::local(
        want.path,
        "the download never matched its version",
    ))
}

pub(super) fn set_attrs(path: &std::path::Path, e: &Entry) -> std::io::Result<()> {
    if matches!(e.kind, EntryKind::Symlink { .. }) {
        return Ok(());
    }
    fs::set_permissions(path, fs::Permissions::from_mode(e.mode))?;
    if matches!(e.kind, EntryKind::File { .. }) {
        let t = UNIX_EPOCH + Duration::from_nanos(e.mtime_ns.max(0) as u64);
        File::options().write(true).open(path)?.set_modified(t)?;
    }
    Ok(())
}

struct HashingWriter<'a> {
    inner: &'a mut PendingFile,
    hasher: blake3::Hasher,
}

impl Write for HashingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// `NAME.conflict-<node>-<UTC time>` beside `path`.
fn conflict_name(path: &TreePath, node: u64) -> Result<TreePath, SyncError> {
    let secs = scan::now_ns() / 1_000_000_000;
    let stamp = scan::utc_stamp(secs);
    // Keep the whole name within NAME_MAX, cutting the original if need be.
    let stem: String = path
        .file_name()
        .chars()
        .scan(0, |len, c| {
            *len += c.len_utf8();
            (*len <= 200).then_some(c)
        })
        .collect();
    let name = format!("{stem}.conflict-{node:016x}-{stamp}");
    match path.parent() {
        Some(parent) => parent.join(&name),
        None => TreePath::new(&name),
    }
    .map_err(|e| SyncError::local(path, e))
}

fn move_in_state(state: &mut TreeState, from: &TreePath, to: &TreePath) {
    let moved: Vec<(TreePath, Entry)> = std::iter::once(from)
        .filter_map(|p| state.get(p).map(|e| (p.clone(), e.clone())))
        .chain(state.descendants(from).map(|(p, e)| (p.clone(), e.clone())))
        .collect();
    for (p, e) in moved {
        state.remove(&p);
        let new = if &p == from {
            to.clone()
        } else {
            to.join(&p.as_str()[from.as_str().len() + 1..])
                .expect("valid")
        };
        state.insert(new, e);
    }
}

fn local_remove(state: &mut TreeState, p: &TreePath) {
    state.remove(p);
}

trait FromBytesCompat {
    fn from_bytes_compat(bytes: &[u8]) -> &std::ffi::OsStr;
}

impl FromBytesCompat for std::ffi::OsStr {
    fn from_bytes_compat(bytes: &[u8]) -> &std::ffi::OsStr {
        std::os::unix::ffi::OsStrExt::from_bytes(bytes)
    }
}
