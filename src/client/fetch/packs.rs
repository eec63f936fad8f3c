//! Small files from packs (`intersync_protocol::pack`), for a source
//! without batched fetches (a static export): the index of every pack its
//! list names is read (all at once, one round trip), then the contents of
//! the packs worth reading (at least half of their bytes wanted), and each
//! wanted file is checked against its whole version as it is decompressed,
//! and installed with the others of its pack (`install::StagedInstalls`).
//! What no pack brings, or brings wrong, goes on by the other ways.

use std::collections::HashMap;
use std::io::{Read, Write};

use futures_util::StreamExt;
use intersync_protocol::Version;
use intersync_protocol::api::PackRef;
use intersync_protocol::pack::{self, PackEntry};

use super::batch::{Job, Outcome};
use super::{Here, set_file_attrs};
use crate::client::{Change, SyncError, SyncReport};
use crate::install::{Staged, StagedInstalls};
use crate::transport::{Remote, TransportError};
use crate::tree::scan::CachedStat;

/// Fewer files than this are not worth reading pack indexes for.
const MIN_FILES: usize = 32;
/// Nor bytes of files fewer than this many times the indexes' bytes.
const INDEX_RATIO: u64 = 8;

/// Brings what it can of `jobs[picked]` from `packs` (see the module
/// documentation), noting each one's outcome.
pub async fn fetch_packed(
    here: &Here<'_>,
    remote: &impl Remote,
    jobs: &mut [Job],
    picked: &[usize],
    small_files: u64,
    parallel: usize,
    report: &mut SyncReport,
) -> Result<(), SyncError> {
    // The indexes cost 12 bytes a packed file (about every small file of
    // the tree): worth reading for a clone or a large addition, not for a
    // few new files in a big tree.
    let wanted_bytes: u64 = picked.iter().map(|&i| jobs[i].file.size).sum();
    if picked.len() < MIN_FILES || wanted_bytes < INDEX_RATIO * 12 * small_files {
        return Ok(());
    }
    let Some(list) = remote.pack_list().await? else {
        return Ok(());
    };
    let packs: &[PackRef] = &list.packs;
    let parallel = parallel.max(1);
    let mut wanted: HashMap<[u8; 8], Vec<usize>> = HashMap::new();
    for &i in picked {
        wanted
            .entry(pack::prefix(&jobs[i].file.version))
            .or_default()
            .push(i);
    }
    let indexes: Vec<(usize, Result<bytes::Bytes, TransportError>)> =
        futures_util::stream::iter(packs.iter().enumerate())
            .map(|(n, p)| async move { (n, remote.pack_range(p, 0..p.index_length).await) })
            .buffer_unordered(parallel)
            .collect()
            .await;
    let mut chosen = Vec::new();
    // Packs that came whole when their index was asked for.
    let mut whole = HashMap::new();
    for (n, got) in indexes {
        let bytes = match got {
            Ok(bytes) => bytes,
            Err(e) if e.is_unreachable() => return Err(e.into()),
            Err(_) => continue,
        };
        if bytes.len() as u64 == packs[n].length && packs[n].length > packs[n].index_length {
            whole.insert(n, bytes.slice(packs[n].index_length as usize..));
        }
        let Ok((entries, len)) = pack::parse_index(&bytes) else {
            continue;
        };
        let total: u64 = entries.iter().map(|e| u64::from(e.size)).sum();
        let useful: u64 = entries
            .iter()
            .filter(|e| {
                wanted
                    .get(&e.prefix)
                    .is_some_and(|js| js.iter().any(|&i| jobs[i].file.size == u64::from(e.size)))
            })
            .map(|e| u64::from(e.size))
            .sum();
        if len as u64 == packs[n].index_length && useful > 0 && useful * 2 >= total {
            chosen.push((n, entries));
        }
    }
    let mut contents = futures_util::stream::iter(chosen)
        .map(|(n, entries)| {
            let (p, came) = (&packs[n], whole.remove(&n));
            async move {
                let got = match came {
                    Some(bytes) => Ok(bytes),
                    None => remote.pack_range(p, p.index_length..p.length).await,
                };
                (entries, got)
            }
        })
        .buffer_unordered(parallel);
    while let Some((entries, got)) = contents.next().await {
        match got {
            Ok(bytes) => install_from(here, remote, jobs, &wanted, &entries, &bytes, report)?,
            Err(e) if e.is_unreachable() => return Err(e.into()),
            Err(_) => {}
        }
    }
    Ok(())
}

/// Installs the wanted files of one pack's `contents`, each checked.
fn install_from(
    here: &Here<'_>,
    remote: &impl Remote,
    jobs: &mut [Job],
    wanted: &HashMap<[u8; 8], Vec<usize>>,
    entries: &[PackEntry],
    contents: &[u8],
    report: &mut SyncReport,
) -> Result<(), SyncError> {
    let Ok(mut decoder) = zstd::stream::read::Decoder::new(contents) else {
        return Ok(());
    };
    let mut staged = StagedInstalls::default();
    let mut order = Vec::new();
    let mut data = Vec::new();
    for entry in entries {
        data.resize(entry.size as usize, 0);
        // A pack that does not decode as its index says brings no more.
        if decoder.read_exact(&mut data).is_err() {
            break;
        }
        let Some(candidates) = wanted.get(&entry.prefix) else {
            continue;
        };
        let version = Version::of(&data);
        for &i in candidates {
            let job = &jobs[i];
            if job.outcome.is_some() || job.file.version != version {
                continue;
            }
            let local = |e| SyncError::local(&job.dest, e);
            let mut file = Staged::create_in_new_folder(&job.dest).map_err(local)?;
            file.file().write_all(&data).map_err(local)?;
            set_file_attrs(file.file(), &job.file.entry).map_err(local)?;
            staged.add(file);
            order.push(i);
        }
    }
    let installed = staged
        .commit(here.wc.root())
        .map_err(|e| SyncError::local(here.wc.root(), e))?;
    for (&i, landed) in order.iter().zip(&installed) {
        let job = &mut jobs[i];
        report.full_fetch_bytes += job.file.size;
        report.literal_bytes += job.file.size;
        report.files_whole += 1;
        if let Some(p) = remote.progress() {
            p.plan(job.file.size);
            p.file_done();
        }
        report.pulled.push(Change {
            path: job.file.path.clone(),
            what: "fetched from a pack".into(),
        });
        job.outcome = Some(Outcome::Installed(
            job.file.version,
            CachedStat::landed(landed),
        ));
    }
    Ok(())
}
