//! `intersync mount`: a working copy shown through presto. Files the
//! export has and the cache does not are placeholders until first opened;
//! every change made through the mount is journaled in the cache's own KML
//! (`.intersync/kml/` of the cache, as a server's export keeps one) as it
//! happens and wakes a push. The cache's journal is reconciled with the
//! cache at every start, so a crash between a change and its record (or a
//! record and its data) is repaired there, before anything is pushed.
//!
//! [`run`] is the whole of `intersync mount`: the first round, the mount,
//! prefetching, and rounds whenever either side moves, until shutdown.

use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustix::fs::{Mode, OFlags, ResolveFlags};

use intersync_protocol::TreePath;
use intersync_protocol::kml::{Attrs, Op};

use super::fetch::{fetch_one, set_attrs};
use super::watch::{WatchEvent, follow};
use super::working_copy::Placeholders;
use super::{SyncError, SyncOptions, SyncReport, WorkingCopy, WorkingCopyError};
use crate::export::{Export, ExportError};
use crate::transport::{HttpRemote, Remote, TransportError};
use crate::tree::scan::{self, CachedStat, StatKey};
use crate::tree::{Entry, EntryKind};

/// Fetches placeholders for the mount, on the runtime the syncs run on.
pub struct Fetcher<R> {
    placeholders: Arc<Placeholders>,
    one_at_a_time: std::sync::Mutex<()>,
    remote: Arc<R>,
    runtime: tokio::runtime::Handle,
    /// The cache's own journal: a fetched file is recorded there.
    local: Arc<Export>,
}

impl<R: Remote + Send + Sync + 'static> Fetcher<R> {
    pub fn new(
        placeholders: Arc<Placeholders>,
        remote: Arc<R>,
        runtime: tokio::runtime::Handle,
        local: Arc<Export>,
    ) -> Fetcher<R> {
        Fetcher {
            placeholders,
            one_at_a_time: std::sync::Mutex::new(()),
            remote,
            runtime,
            local,
        }
    }

    /// Fetches every placeholder, one after another (`--prefetch`);
    /// returns those that failed, and why.
    pub fn fetch_all(&self) -> Vec<(TreePath, io::Error)> {
        self.placeholders
            .paths()
            .into_iter()
            .filter_map(|path| {
                crate::fuse::Lazy::fetch(self, &path)
                    .err()
                    .map(|e| (path, e))
            })
            .collect()
    }
}

impl<R: Remote + Send + Sync + 'static> crate::fuse::Lazy for Fetcher<R> {
    fn get(&self, path: &TreePath) -> Option<Entry> {
        self.placeholders.get(path)
    }

    fn list(&self, dir: Option<&TreePath>) -> Vec<(String, Entry)> {
        self.placeholders.list(dir)
    }

    fn fetch(&self, path: &TreePath) -> io::Result<()> {
        // One fetch at a time: a second opener waits, then finds it done.
        let _one = self.one_at_a_time.lock().unwrap_or_else(|p| p.into_inner());
        let Some(entry) = self.placeholders.get(path) else {
            return Ok(());
        };
        let EntryKind::File { version, size } = entry.kind else {
            return Ok(());
        };
        // The folder, reached without following a symbolic link anywhere.
        let root = self.local.root();
        let root_fd = rustix::fs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let dir = match path.parent() {
            Some(parent) => rustix::fs::openat2(
                &root_fd,
                parent.as_str(),
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
            )?,
            None => root_fd,
        };
        // Fetched and verified beside it under a temporary name, then
        // installed only if it is still this placeholder (a pull or an
        // unlink may have moved on meanwhile) and nothing took the name.
        let dir_path = std::path::PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
        let temp = format!("{}fetch-{version}", crate::install::TEMP_PREFIX);
        let _ = rustix::fs::unlinkat(&dir, temp.as_str(), rustix::fs::AtFlags::empty());
        self.runtime
            .block_on(fetch_one(
                &*self.remote,
                path,
                &entry,
                &dir_path.join(&temp),
            ))
            .map_err(io::Error::other)?;
        set_attrs(&dir_path.join(&temp), &entry)?;
        let installed = self.placeholders.install_if(path, &entry, || {
            rustix::fs::renameat_with(
                &dir,
                temp.as_str(),
                &dir,
                path.file_name(),
                rustix::fs::RenameFlags::NOREPLACE,
            )
            .map_err(io::Error::from)
        });
        if !installed {
            let _ = rustix::fs::unlinkat(&dir, temp.as_str(), rustix::fs::AtFlags::empty());
            return Ok(());
        }
        let dest = dir_path.join(path.file_name());
        let meta = std::fs::symlink_metadata(&dest)?;
        let stat = CachedStat {
            key: StatKey::of(&meta),
            seen_ns: scan::now_ns(),
        };
        self.placeholders.fetched(path.clone(), entry.clone(), stat);
        let mut inner = self.local.lock();
        let ops = vec![
            Op::Write {
                path: path.clone(),
                version,
                size,
                mtime_ns: entry.mtime_ns,
            },
            Op::Setattr {
                path: path.clone(),
                attrs: Attrs {
                    mode: Some(entry.mode),
                    ..Attrs::default()
                },
            },
        ];
        if self.local.journal_ops(&mut inner, ops).is_err() {
            // The cache's journal is behind the cache: bring it up to date.
            self.local
                .rescan_locked(&mut inner)
                .map_err(io::Error::other)?;
        }
        self.local.remember_stat(&mut inner, path);
        Ok(())
    }

    fn forget(&self, path: &TreePath) {
        self.placeholders.remove(path, None);
    }

    fn any_under(&self, dir: &TreePath) -> bool {
        self.placeholders.any_under(dir)
    }
}

/// What `intersync mount` is given.
#[derive(Clone, Debug)]
pub struct MountConfig {
    /// The export, e.g. `http://host:8740/`.
    pub url: String,
    /// The working copy that holds what is fetched (created on first use).
    pub cache: PathBuf,
    /// The empty folder to mount at.
    pub mountpoint: PathBuf,
    /// Fetch every file in the background, not only when opened.
    pub prefetch: bool,
    pub token: Option<String>,
    /// PEM certificate of a CA to trust besides the system's.
    pub cacert: Option<PathBuf>,
}

/// What a mount has to say while it runs.
#[derive(Debug)]
pub enum MountEvent {
    /// A round with the server ended (the first one included).
    Synced(SyncReport),
    /// The first round could not reach the server: the mount works
    /// offline and syncs when the server is back.
    StartedOffline(SyncError),
    /// The mount is there for programs to use.
    Mounted,
    /// The server could not be reached; the next try is after `retry_in`.
    Offline {
        error: SyncError,
        retry_in: Duration,
    },
    /// A round failed for another reason; the mount stays, and the next
    /// round is tried after `retry_in`.
    RoundFailed {
        error: SyncError,
        retry_in: Duration,
    },
    /// A placeholder could not be prefetched; it is tried again after the
    /// next round.
    PrefetchFailed { path: TreePath, error: io::Error },
}

/// Why a mount could not start or went down.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error(transparent)]
    Remote(#[from] TransportError),
    #[error(transparent)]
    WorkingCopy(#[from] WorkingCopyError),
    #[error("the mount point {} is inside the cache {}", mountpoint.display(), cache.display())]
    InsideCache { mountpoint: PathBuf, cache: PathBuf },
    #[error("starting the runtime")]
    Runtime(#[source] io::Error),
    #[error("opening the cache's journal")]
    Journal(#[source] ExportError),
    #[error("mounting at {}", path.display())]
    Mount { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Sync(#[from] SyncError),
}

/// How long a mount waits after a failed round before the next.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(10);

/// Mounts the working copy `config.cache` of `config.url` at
/// `config.mountpoint` and keeps it in sync until `shutdown` completes,
/// then unmounts and saves. A failed round does not take the mount away:
/// programs keep their files, and the next round tries again; only a
/// refused login ends it.
pub fn run(
    config: MountConfig,
    events: impl Fn(MountEvent) + Send + Sync + 'static,
    shutdown: impl Future<Output = ()>,
) -> Result<(), MountError> {
    let events = Arc::new(events);
    let remote = Arc::new(HttpRemote::new(
        &config.url,
        config.token.clone(),
        config.cacert.as_deref(),
    )?);
    let mut wc = open_cache(&config)?;
    let options = SyncOptions {
        lazy: true,
        ..Default::default()
    };
    let runtime = tokio::runtime::Runtime::new().map_err(MountError::Runtime)?;
    // The cache's own journal, reconciled with the cache (a crash repaired)
    // before the first round pushes anything.
    let local = Arc::new(Export::open(wc.root(), Default::default()).map_err(MountError::Journal)?);
    match runtime.block_on(super::sync(&mut wc, &*remote, options)) {
        Ok(report) => events(MountEvent::Synced(report)),
        Err(e) if e.is_unreachable() => events(MountEvent::StartedOffline(e)),
        Err(e) => return Err(e.into()),
    }
    let _ = local.rescan();
    let fetcher = Arc::new(Fetcher::new(
        wc.placeholders().clone(),
        remote.clone(),
        runtime.handle().clone(),
        local.clone(),
    ));
    let (tx, mut local_changes) = tokio::sync::mpsc::unbounded_channel();
    let session = crate::fuse::Presto::new(local.clone())
        .and_then(|presto| {
            presto
                .with_lazy(fetcher.clone())
                .on_change(move || {
                    let _ = tx.send(());
                })
                .mount(&config.mountpoint)
        })
        .map_err(|source| MountError::Mount {
            path: config.mountpoint.clone(),
            source,
        })?;
    events(MountEvent::Mounted);
    let prefetch = config
        .prefetch
        .then(|| prefetcher(fetcher.clone(), events.clone()));
    let mut on_event = |event| match event {
        WatchEvent::Synced(report) => {
            events(MountEvent::Synced(report));
            // What the round changed in the cache, in the cache's journal.
            if let Err(e) = local.rescan() {
                tracing::warn!(error = %crate::monitor::Chain(&e), "rescanning the cache");
            }
            if let Some(again) = &prefetch {
                let _ = again.send(());
            }
        }
        WatchEvent::Offline { error, retry_in } => events(MountEvent::Offline { error, retry_in }),
    };
    let followed = runtime.block_on(follow_until(
        &mut wc,
        &*remote,
        options,
        &mut local_changes,
        &mut on_event,
        &*events,
        shutdown,
    ));
    crate::fuse::unmount_quietly(session);
    local.save_index();
    wc.save()?;
    followed?;
    Ok(())
}

/// The working copy `config.cache`, which the mount point must not be in
/// (a scan of it would walk into its own mount).
fn open_cache(config: &MountConfig) -> Result<WorkingCopy, MountError> {
    let wc = WorkingCopy::open_or_create(&config.cache, &config.url)?;
    if config
        .mountpoint
        .canonicalize()
        .is_ok_and(|m| m.starts_with(wc.root()))
    {
        return Err(MountError::InsideCache {
            mountpoint: config.mountpoint.clone(),
            cache: wc.root().to_owned(),
        });
    }
    Ok(wc)
}

/// `--prefetch`: fetches every placeholder now, and again whenever the
/// returned sender is told a round ended (new files, and whatever failed
/// before). The thread ends when the sender is dropped, without holding up
/// the unmount.
fn prefetcher<R: Remote + Send + Sync + 'static>(
    fetcher: Arc<Fetcher<R>>,
    events: Arc<impl Fn(MountEvent) + Send + Sync + 'static>,
) -> std::sync::mpsc::Sender<()> {
    let (again, rounds) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        loop {
            for (path, error) in fetcher.fetch_all() {
                events(MountEvent::PrefetchFailed { path, error });
            }
            if rounds.recv().is_err() {
                break;
            }
            while rounds.try_recv().is_ok() {}
        }
    });
    again
}

/// Rounds whenever either side moves, until `shutdown`: a failed round
/// waits [`RETRY_AFTER_FAILURE`] and tries again; a refused login ends it.
async fn follow_until(
    wc: &mut WorkingCopy,
    remote: &impl Remote,
    options: SyncOptions,
    local_changes: &mut tokio::sync::mpsc::UnboundedReceiver<()>,
    on_event: &mut impl FnMut(WatchEvent),
    events: &impl Fn(MountEvent),
    shutdown: impl Future<Output = ()>,
) -> Result<(), SyncError> {
    tokio::pin!(shutdown);
    loop {
        let round = follow(
            wc,
            remote,
            options,
            local_changes,
            &mut *on_event,
            &mut shutdown,
        )
        .await;
        match round {
            Err(error) if !error.is_auth() => {
                events(MountEvent::RoundFailed {
                    error,
                    retry_in: RETRY_AFTER_FAILURE,
                });
                tokio::select! {
                    () = &mut shutdown => return Ok(()),
                    () = tokio::time::sleep(RETRY_AFTER_FAILURE) => {}
                }
            }
            other => return other,
        }
    }
}
