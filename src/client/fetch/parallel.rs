//! Small files with nothing here to build them from, from a source without
//! batched fetches (a static export behind a plain web server, reads
//! through a cache): whole, by many GETs at once over the client's pool of
//! keep-alive connections, so that a tree of small files is not one round
//! trip a file in sequence. Each is written beside its destination, checked
//! against its version, and installed with the others a batch at a time
//! (`install::StagedInstalls`: two file-system syncs a batch). What fails
//! to arrive or to check goes to the ladder, which tries again its own way.

use std::fs;
use std::io::Read;

use futures_util::StreamExt;
use intersync_protocol::Version;

use super::batch::{Job, Outcome};
use super::{Here, set_file_attrs};
use crate::client::{Change, SyncError, SyncReport};
use crate::install::{Staged, StagedInstalls};
use crate::transport::{Remote, TransportError};
use crate::tree::scan::CachedStat;

/// Files installed together.
const A_BATCH: usize = 1024;

/// Brings `jobs[picked]` in whole, `parallel` at a time (see the module
/// documentation), noting each one's outcome.
pub async fn fetch_whole(
    here: &Here<'_>,
    remote: &impl Remote,
    jobs: &mut [Job],
    picked: &[usize],
    parallel: usize,
    report: &mut SyncReport,
) -> Result<(), SyncError> {
    let parallel = parallel.max(1);
    for chunk in picked.chunks(A_BATCH) {
        let arrived: Vec<(usize, Result<Option<Staged>, SyncError>)> =
            futures_util::stream::iter(chunk.iter().map(|&i| {
                let job = &jobs[i];
                async move { (i, fetch_one(remote, job).await) }
            }))
            .buffer_unordered(parallel)
            .collect()
            .await;
        let mut staged = StagedInstalls::default();
        let mut order = Vec::new();
        let mut unreachable = None;
        for (i, got) in arrived {
            match got {
                Ok(Some(file)) => {
                    staged.add(file);
                    order.push(i);
                }
                Err(SyncError::Transport(e)) if e.is_unreachable() => unreachable = Some(e),
                // Did not arrive whole, or not as the version: the ladder.
                Ok(None) | Err(_) => jobs[i].outcome = Some(Outcome::Ladder),
            }
        }
        let installed = staged
            .commit(here.wc.root())
            .map_err(|e| SyncError::local(here.wc.root(), e));
        let landed = installed.as_deref().unwrap_or_default();
        for (n, i) in order.into_iter().enumerate() {
            let job = &mut jobs[i];
            let Some(landed) = landed.get(n) else {
                job.outcome = Some(Outcome::Ladder);
                continue;
            };
            report.full_fetch_bytes += job.file.size;
            report.literal_bytes += job.file.size;
            report.files_whole += 1;
            if let Some(p) = remote.progress() {
                p.file_done();
            }
            report.pulled.push(Change {
                path: job.file.path.clone(),
                what: "fetched whole".into(),
            });
            job.outcome = Some(Outcome::Installed(
                job.file.version,
                CachedStat::landed(landed),
            ));
        }
        installed?;
        if let Some(e) = unreachable {
            return Err(e.into());
        }
    }
    Ok(())
}

/// One file whole into a staged copy beside its destination: `None` when
/// what arrived is not the version wanted.
async fn fetch_one(remote: &impl Remote, job: &Job) -> Result<Option<Staged>, SyncError> {
    let local = |e| SyncError::local(&job.dest, e);
    let mut staged = Staged::create_in_new_folder(&job.dest).map_err(local)?;
    if let Some(p) = remote.progress() {
        p.plan(job.file.size);
    }
    match remote
        .fetch_into(&job.file.path, job.file.version, staged.file())
        .await
    {
        Ok(_) => {}
        Err(TransportError::Changed { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let mut hasher = blake3::Hasher::new();
    let mut len = 0u64;
    let mut file = fs::File::open(staged.path()).map_err(local)?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(local)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    if Version::from_hasher(&hasher) != job.file.version || len != job.file.size {
        return Ok(None);
    }
    set_file_attrs(staged.file(), &job.file.entry).map_err(local)?;
    Ok(Some(staged))
}
