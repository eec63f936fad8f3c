//! The last rung: the whole file, into a partial download kept under
//! `.intersync/partial/` by version, so that a download cut short resumes
//! where it stopped (`Range`, guarded by `If-Range`). A download that does
//! not hash to its version is never installed: it starts over once.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use intersync_protocol::Version;

use super::{Wanted, set_attrs, spool_beside};
use crate::client::working_copy::WorkingCopy;
use crate::client::{LocalError, SyncError, SyncReport};
use crate::delta::MappedFile;
use crate::install::PendingFile;
use crate::transport::Remote;
use crate::tree::scan;

pub async fn fetch(
    wc: &WorkingCopy,
    remote: &impl Remote,
    want: &Wanted<'_>,
    report: &mut SyncReport,
) -> Result<Version, SyncError> {
    let dir = wc.partial_dir();
    fs::create_dir_all(&dir).map_err(|e| SyncError::local(&dir, e))?;
    let partial = dir.join(want.version.to_string());
    let local = |e| SyncError::local(&partial, e);
    for attempt in 0..2 {
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(false)
            .write(true)
            .truncate(false)
            .open(&partial)
            .map_err(local)?;
        let received = match remote
            .fetch_into(want.path, want.version, &mut file)
            .await
            .map_err(SyncError::from)
            .and_then(|n| file.sync_all().map(|()| n).map_err(local))
        {
            Ok(received) => received,
            // A partial that filled the disk is given up: its space back,
            // for the push and for whatever else needs it.
            Err(e) if e.is_disk_full() => {
                drop(file);
                let _ = fs::remove_file(&partial);
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        report.literal_bytes += received;
        drop(file);
        let got = scan::hash_file(&partial).map_err(|e| SyncError::local(&partial, e))?;
        if got == want.version {
            let dest = want.path.under(wc.root());
            set_attrs(&partial, want.entry).map_err(local)?;
            fs::rename(&partial, &dest).map_err(|e| SyncError::local(&dest, e))?;
            if let Some(parent) = dest.parent() {
                File::open(parent)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| SyncError::local(parent, e))?;
            }
            return Ok(got);
        }
        // A partial that does not add up is never installed: start over once.
        tracing::warn!(path = %want.path, attempt, "download did not verify; fetching again from zero");
        let _ = fs::remove_file(&partial);
    }
    Err(SyncError::local(want.path, LocalError::NeverVerified))
}

/// The whole file to `dest`, through a temporary file beside it (a
/// placeholder fetched for a mount); the bytes received.
pub async fn fetch_to(
    remote: &impl Remote,
    want: &Wanted<'_>,
    dest: &Path,
) -> Result<(u64, u64), SyncError> {
    let local = |e| SyncError::local(dest, e);
    for attempt in 0..2 {
        let mut out = PendingFile::create(dest).map_err(local)?;
        let mut spool = spool_beside(dest)?;
        let received = remote
            .fetch_into(want.path, want.version, &mut spool)
            .await?;
        let data = MappedFile::map(&spool).map_err(local)?;
        if Version::of(&data) == want.version {
            out.write_all(&data).map_err(local)?;
            out.install().map_err(local)?;
            return Ok((received, 0));
        }
        tracing::warn!(path = %want.path, attempt, "download did not verify; fetching again");
    }
    Err(SyncError::local(want.path, LocalError::NeverVerified))
}
