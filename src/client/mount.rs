//! `intersync mount`: a working copy shown through presto. Files the
//! export has and the cache does not are placeholders until first opened;
//! every change made through the mount is journaled in the cache's own KML
//! (`.intersync/kml/` of the cache, as a server's export keeps one) as it
//! happens and wakes a push. The cache's journal is reconciled with the
//! cache at every start, so a crash between a change and its record (or a
//! record and its data) is repaired there, before anything is pushed.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use rustix::fs::{Mode, OFlags, ResolveFlags};

use intersync_protocol::TreePath;
use intersync_protocol::kml::{Attrs, Op};

use super::pull::{fetch_one, set_attrs};
use super::working_copy::Placeholders;
use crate::export::Export;
use crate::transport::Remote;
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
