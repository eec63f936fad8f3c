//! Bringing one file of the server's tree in, verified and installed
//! whole, by the cheapest way the source offers: the ladder. Cheapest first:
//!
//! 1. [`local`]: the content is here already: a file going away is moved,
//!    or another is copied;
//! 2. [`patch`]: the copy here is the version last synced, which a smart
//!    server may still hold: an exact patch from it, no signature;
//! 3. a delta against the copy here: one round ([`delta`]); for large
//!    files several ([`refine`]); from a static source, by the new
//!    version's signature and ranges ([`blocks`], [`levels`]);
//! 4. [`whole`]: the whole file, resuming a partial download.
//!
//! A way that fails for any reason but an unreachable server hands over to
//! the next. Nothing is installed unless it hashes to the version wanted.

pub mod batch;
mod blocks;
mod delta;
mod levels;
pub mod local;
mod packs;
mod parallel;
mod patch;
mod ranges;
mod refine;
mod whole;

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use intersync_protocol::{TreePath, Version};

use super::working_copy::{MIN_KEPT_LEN, WorkingCopy};
use super::{Change, SyncError, SyncReport};
use crate::delta::{DeltaStats, MappedFile};
use crate::install::PendingFile;
use crate::transport::{Remote, TransportError};
use crate::tree::{Entry, EntryKind, TreeState};

/// A file to bring in: its path, the entry the server has for it, and
/// that entry's version and size.
pub struct Wanted<'a> {
    pub path: &'a TreePath,
    pub entry: &'a Entry,
    pub version: Version,
    pub size: u64,
}

/// Which ways to a changed file a source offers.
#[derive(Clone, Copy)]
pub struct Ways {
    /// Exact patches from the version last synced (a smart server; they
    /// are immutable GETs, so a cache in front serves them too).
    pub patches: bool,
    /// The static path (the new version's signature and ranges) instead of
    /// a delta from the server.
    pub by_blocks: bool,
    /// Small files many in one request (`POST /.intersync/fetch`).
    pub batch: bool,
    /// Otherwise, small whole files by so many GETs at once.
    pub parallel: usize,
}

/// What the ladder builds on here.
pub struct Here<'a> {
    pub wc: &'a WorkingCopy,
    /// The disk's tree as the pull left it so far.
    pub local: &'a TreeState,
    /// Files going away, by version: moved to where their content is wanted.
    pub moves: &'a mut HashMap<Version, Vec<TreePath>>,
}

/// Brings `want` in by the cheapest way (see the module documentation);
/// `copy_from` is a local file with the same content. Returns the version
/// installed, and keeps it (for files large enough) as the base of the
/// next local edit, pushed as a patch from it.
pub async fn fetch(
    here: &mut Here<'_>,
    remote: &impl Remote,
    want: &Wanted<'_>,
    copy_from: Option<&TreePath>,
    ways: Ways,
    report: &mut SyncReport,
) -> Result<Version, SyncError> {
    report.full_fetch_bytes += want.size;
    let progress = remote.progress();
    if let Some(p) = progress {
        p.plan(want.size);
    }
    let got = by_cheapest(here, remote, want, copy_from, ways, report).await;
    if let (Some(p), Ok(_)) = (progress, &got) {
        p.file_done();
    }
    if let Ok(version) = &got {
        keep(here.wc, want, *version);
    }
    got
}

/// Only the first rung: `want` moved or copied from here, if something
/// here has its content; the version installed.
pub fn fetch_locally(
    here: &mut Here<'_>,
    remote: &impl Remote,
    want: &Wanted<'_>,
    copy_from: Option<&TreePath>,
    report: &mut SyncReport,
) -> Result<Option<Version>, SyncError> {
    let root = here.wc.root();
    let dest = want.path.under(root);
    let Some(what) = local::fetch(root, here.moves, copy_from, &dest, want)? else {
        return Ok(None);
    };
    report.full_fetch_bytes += want.size;
    report.files_local += 1;
    report.matched_bytes += want.size;
    report.pulled.push(Change {
        path: want.path.clone(),
        what,
    });
    if let Some(p) = remote.progress() {
        p.plan(want.size);
        p.file_done();
    }
    keep(here.wc, want, want.version);
    Ok(Some(want.version))
}

/// Keeps an installed version (of a file large enough) as the base of the
/// next local edit, pushed as a patch from it.
pub fn keep(wc: &WorkingCopy, want: &Wanted<'_>, version: Version) {
    if wc.versions().is_some()
        && want.size >= MIN_KEPT_LEN
        && let Ok(data) = MappedFile::open(&want.path.under(wc.root()))
    {
        wc.keep(version, &data);
    }
}

async fn by_cheapest(
    here: &mut Here<'_>,
    remote: &impl Remote,
    want: &Wanted<'_>,
    copy_from: Option<&TreePath>,
    ways: Ways,
    report: &mut SyncReport,
) -> Result<Version, SyncError> {
    let root = here.wc.root();
    let dest = want.path.under(root);
    // A folder deleted here while the server changed something in it.
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(|e| SyncError::local(want.path, e))?;
    }
    let pulled = |report: &mut SyncReport, what: String| {
        report.pulled.push(Change {
            path: want.path.clone(),
            what,
        })
    };
    let done = |n: u64| {
        if let Some(p) = remote.progress() {
            p.advance(n);
        }
    };
    if let Some(what) = local::fetch(root, here.moves, copy_from, &dest, want)? {
        report.files_local += 1;
        report.matched_bytes += want.size;
        pulled(report, what);
        return Ok(want.version);
    }
    let here_version = here.local.get(want.path).and_then(Entry::version);
    let synced = here
        .wc
        .saved
        .base
        .state
        .get(want.path)
        .and_then(Entry::version);
    if ways.patches
        && let Some(from) = here_version.filter(|v| Some(*v) == synced)
    {
        match patch::fetch(remote, &dest, from, want).await {
            Ok(Some(received)) => {
                report.files_patched += 1;
                done(want.size);
                report.literal_bytes += received;
                report.matched_bytes += want.size.saturating_sub(received);
                pulled(report, "updated by patch".into());
                return Ok(want.version);
            }
            Ok(None) => {}
            Err(SyncError::Transport(e)) if e.is_unreachable() => return Err(e.into()),
            Err(e) => {
                tracing::info!(path = %want.path, error = %chain(&e), "patch failed; trying a delta")
            }
        }
    }
    if matches!(
        here.local.get(want.path).map(|e| &e.kind),
        Some(EntryKind::File { .. })
    ) {
        match by_delta(remote, &dest, want, ways.by_blocks).await {
            Ok((version, stats)) => {
                if ways.by_blocks {
                    report.files_blocks += 1;
                } else {
                    report.files_delta += 1;
                }
                done(want.size);
                report.literal_bytes += stats.literal_bytes;
                report.matched_bytes += stats.matched_bytes;
                pulled(report, "updated by delta".into());
                return Ok(version);
            }
            Err(SyncError::Transport(e)) if e.is_unreachable() => return Err(e.into()),
            Err(e) => {
                tracing::info!(path = %want.path, error = %chain(&e), "delta failed; fetching whole")
            }
        }
    }
    let version = whole::fetch(here.wc, remote, want, report).await?;
    report.files_whole += 1;
    pulled(report, "fetched whole".into());
    Ok(version)
}

/// A delta against the copy at `dest`: from the server in one round, or in
/// several for large files; from a static source by the new version's
/// signature (in two levels for large files) and ranges.
async fn by_delta(
    remote: &impl Remote,
    dest: &Path,
    want: &Wanted<'_>,
    by_blocks: bool,
) -> Result<(Version, DeltaStats), SyncError> {
    let min = crate::delta::refine::MIN_LEN;
    let large = want.size >= min && fs::metadata(dest).is_ok_and(|m| m.len() >= min);
    match (by_blocks, large) {
        (true, true) => match levels::fetch(remote, dest, want).await {
            Ok(Some(done)) => Ok(done),
            Ok(None) => blocks::fetch(remote, dest, want).await,
            Err(SyncError::Transport(e)) if e.is_unreachable() => Err(e.into()),
            Err(e) => {
                tracing::info!(path = %want.path, error = %chain(&e), "signature levels failed; one signature then");
                blocks::fetch(remote, dest, want).await
            }
        },
        (true, false) => blocks::fetch(remote, dest, want).await,
        (false, true) => match refine::fetch(remote, dest, want).await {
            // A server without refinement: one round, then.
            Err(SyncError::Transport(TransportError::Refused { status: 404, .. })) => {
                delta::fetch(remote, dest, want).await
            }
            other => other,
        },
        (false, false) => delta::fetch(remote, dest, want).await,
    }
}

/// Brings one file of the export to `dest`, verified and installed whole:
/// by a delta against what `dest` holds when it holds a file, else whole.
/// Returns (literal, matched) bytes. The file's attributes are left to the
/// caller.
pub async fn fetch_one(
    remote: &impl Remote,
    path: &TreePath,
    entry: &Entry,
    dest: &Path,
) -> Result<(u64, u64), SyncError> {
    let EntryKind::File { version, size } = entry.kind else {
        return Err(SyncError::local(path, super::LocalError::NotAFile));
    };
    let want = Wanted {
        path,
        entry,
        version,
        size,
    };
    if fs::symlink_metadata(dest).is_ok_and(|m| m.is_file()) {
        match delta::fetch(remote, dest, &want).await {
            Ok((_, stats)) => return Ok((stats.literal_bytes, stats.matched_bytes)),
            Err(SyncError::Transport(e)) if e.is_unreachable() => return Err(e.into()),
            Err(e) => tracing::info!(%path, error = %chain(&e), "delta failed; fetching whole"),
        }
    }
    whole::fetch_to(remote, &want, dest).await
}

/// How the logs say an error: with its causes.
fn chain(e: &SyncError) -> crate::monitor::Chain<'_> {
    crate::monitor::Chain(e)
}

/// A temporary file beside `dest`, for an answer to land in.
fn spool_beside(dest: &Path) -> Result<File, SyncError> {
    tempfile::tempfile_in(dest.parent().unwrap_or(Path::new(".")))
        .map_err(|e| SyncError::local(dest, e))
}

/// Installs `out` (whose content hashed to `got`) at `dest`, with `want`'s
/// attributes, if `got` is the version the server announced.
fn install_checked(
    out: PendingFile,
    got: Version,
    announced: Version,
    size: u64,
    dest: &Path,
    want: &Wanted<'_>,
) -> Result<(), SyncError> {
    if got != announced {
        return Err(SyncError::local(
            dest,
            super::LocalError::NotTheVersion {
                got,
                want: announced,
            },
        ));
    }
    out.install().map_err(|e| SyncError::local(dest, e))?;
    let entry = Entry {
        kind: EntryKind::File { version: got, size },
        ..want.entry.clone()
    };
    set_attrs(dest, &entry).map_err(|e| SyncError::local(dest, e))
}

/// The permission bits a server may give what a client installs: never
/// set-uid, set-gid or sticky (a server could otherwise plant a set-uid
/// program owned by whoever runs the client).
pub fn remote_mode(mode: u32) -> fs::Permissions {
    fs::Permissions::from_mode(mode & 0o777)
}

/// Gives the file or folder at `path` the entry's permissions, and a file
/// its mtime (a symbolic link keeps its own).
pub fn set_attrs(path: &Path, e: &Entry) -> std::io::Result<()> {
    if matches!(e.kind, EntryKind::Symlink { .. }) {
        return Ok(());
    }
    fs::set_permissions(path, remote_mode(e.mode))?;
    if matches!(e.kind, EntryKind::File { .. }) {
        let t = UNIX_EPOCH + Duration::from_nanos(e.mtime_ns.max(0) as u64);
        File::options().write(true).open(path)?.set_modified(t)?;
    }
    Ok(())
}

/// [`set_attrs`] on an open file (one written here, not yet installed).
pub fn set_file_attrs(file: &File, e: &Entry) -> std::io::Result<()> {
    file.set_permissions(remote_mode(e.mode))?;
    let t = UNIX_EPOCH + Duration::from_nanos(e.mtime_ns.max(0) as u64);
    file.set_modified(t)
}

/// Writes into a pending file, hashing what it writes.
struct HashingWriter<'a> {
    inner: &'a mut PendingFile,
    hasher: blake3::Hasher,
}

impl<'a> HashingWriter<'a> {
    fn new(inner: &'a mut PendingFile) -> HashingWriter<'a> {
        HashingWriter {
            inner,
            hasher: blake3::Hasher::new(),
        }
    }

    fn version(&self) -> Version {
        Version::from_hasher(&self.hasher)
    }
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
