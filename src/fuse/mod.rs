//! presto: the journaling passthrough filesystem. A folder mounted through
//! presto behaves as the folder itself, and every call that changes it
//! appends its KML record as it happens (as InterMezzo's kernel module did),
//! so nothing needs a scan to be noticed and a rename is a rename.
//!
//! Each inode the kernel knows is held as an `O_PATH` descriptor of the
//! backing file, so the operations are `*at` calls relative to it, renames
//! and unlinks by other names never confuse it, and a journaled path is
//! what the kernel says the descriptor's path is at that moment. The disk
//! change and its record are made under the export's lock, so a scan never
//! sees one without the other and records are appended in the order the
//! changes happened, however many threads serve the mount.
//!
//! Content is journaled when a written file is flushed (every `close`),
//! fsynced or released: one `Write` with the file's version. A file written
//! from its start in order is hashed as the writes pass, not read again.
//!
//! A working copy mounted through presto also shows *placeholders*: files
//! the export has that are not fetched yet, with their size, mode and time.
//! Opening one fetches it first ([`Lazy`]).

mod attr;
mod nodes;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fuser::{
    BackingId, Errno, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
};
use intersync_protocol::kml::{Attrs, Op};
use intersync_protocol::{TreePath, Version};
use rustix::fs::{AtFlags, Mode, OFlags};

use crate::export::Export;
use crate::export::Inner;
use crate::tree::Entry;
use nodes::{Nodes, Target};

/// How long the kernel may keep names and attributes without asking again.
/// Short, because a working copy's sync changes the folder underneath.
const TTL: Duration = Duration::from_secs(1);

/// Files listed by the export but not fetched yet (a working copy's
/// placeholders), and the way to fetch them.
pub trait Lazy: Send + Sync {
    /// The placeholder at `path`, if it is one.
    fn get(&self, path: &TreePath) -> Option<Entry>;
    /// The placeholders directly in `dir` (`None`: the top), by name.
    fn list(&self, dir: Option<&TreePath>) -> Vec<(String, Entry)>;
    /// Fetches the placeholder at `path` and installs it, verified; returns
    /// once the file is on disk (at once if it is not a placeholder).
    fn fetch(&self, path: &TreePath) -> io::Result<()>;
    /// The placeholder was deleted here (or replaced): forget it.
    fn forget(&self, path: &TreePath);
    /// Whether any placeholder is inside the folder `dir`.
    fn any_under(&self, dir: &TreePath) -> bool;
}

/// What a mount is built from.
pub struct Presto {
    root: PathBuf,
    export: Arc<Export>,
    lazy: Option<Arc<dyn Lazy>>,
    on_change: Option<Box<dyn Fn() + Send + Sync>>,
    nodes: Nodes,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    dirs: Mutex<HashMap<u64, Vec<DirItem>>>,
    next_fh: AtomicU64,
    /// Owner of what is created: the caller (when we may chown).
    as_root: bool,
    /// The kernel passes reads and writes straight to the backing files
    /// (FUSE passthrough, Linux 6.9 on): presto sees opens, flushes and
    /// releases, and journals what changed.
    passthrough: bool,
    backings: Mutex<HashMap<u64, std::sync::Weak<BackingId>>>,
}

/// What was made, as it is on disk: mode, owner and group.
struct Made {
    mode: u32,
    uid: u32,
    gid: u32,
}

/// One name of an open folder's listing: (inode, kind, name).
type DirItem = (u64, FileType, Vec<u8>);

/// An open file.
struct Handle {
    file: File,
    /// Written through presto since its content was last journaled.
    dirty: AtomicBool,
    /// The hash of the file so far, while it has only been written in
    /// order from its start: (hasher, bytes hashed).
    /// (hasher, bytes hashed, the file's stamp after this handle's last
    /// write): trusted only while no one else has written since.
    in_order: Mutex<Option<(blake3::Hasher, u64, Stamp)>>,
    /// Open for writing: (size, mtime, ctime) when last journaled or
    /// opened. Writes the kernel passes straight to the backing file are
    /// noticed by this changing.
    seen: Option<Mutex<Stamp>>,
    /// The kernel reads and writes the backing file itself (passthrough).
    _backing: Option<Arc<BackingId>>,
}

/// What says a file was written: size, mtime and ctime (which any write moves).
type Stamp = (i64, i64, i64);

fn written_stamp(file: &File) -> Stamp {
    rustix::fs::fstat(file).map_or((-1, -1, -1), |s| {
        (
            s.st_size,
            attr::mtime_ns(&s),
            s.st_ctime.saturating_mul(1_000_000_000) + s.st_ctime_nsec as i64,
        )
    })
}

fn errno(e: impl Into<io::Error>) -> Errno {
    Errno::from(e.into())
}

fn rerr(e: rustix::io::Errno) -> Errno {
    Errno::from_i32(e.raw_os_error())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `/proc/self/fd/N`: reopening an `O_PATH` descriptor as a real one.
fn proc_path(fd: &impl AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

impl Presto {
    /// presto over `export`'s folder, journaling into it.
    pub fn new(export: Arc<Export>) -> io::Result<Presto> {
        let root = export.root().to_owned();
        let nodes = Nodes::new(&root)?;
        Ok(Presto {
            root,
            export,
            lazy: None,
            on_change: None,
            nodes,
            handles: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            as_root: rustix::process::geteuid().is_root(),
            passthrough: false,
            backings: Mutex::new(HashMap::new()),
        })
    }

    /// Shows `lazy`'s placeholders and fetches them on first open.
    pub fn with_lazy(mut self, lazy: Arc<dyn Lazy>) -> Presto {
        self.lazy = Some(lazy);
        self
    }

    /// Calls `f` after every change made through the mount (to wake a push).
    pub fn on_change(mut self, f: impl Fn() + Send + Sync + 'static) -> Presto {
        self.on_change = Some(Box::new(f));
        self
    }

    /// Mounts at `mountpoint` and serves from background threads until the
    /// returned session is unmounted (or dropped).
    pub fn mount(self, mountpoint: &Path) -> io::Result<fuser::BackgroundSession> {
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName(format!("presto:{}", self.root.display())),
            fuser::MountOption::Subtype("intersync".into()),
            // The kernel checks permissions against the attributes we give.
            fuser::MountOption::DefaultPermissions,
            fuser::MountOption::Suid,
            fuser::MountOption::Dev,
        ];
        config.acl = fuser::SessionACL::All;
        config.n_threads = Some(4);
        config.clone_fd = true;
        fuser::spawn_mount(self, mountpoint, &config)
    }

    /// The tree path of `name` in the folder `parent`; errors for names a
    /// tree cannot hold (and for the state folder).
    fn child(&self, parent: u64, name: &OsStr) -> Result<(Target, TreePath), Errno> {
        let dir = self.nodes.target(parent)?;
        let name = name.to_str().ok_or(Errno::EINVAL)?;
        if name.starts_with(crate::install::TEMP_PREFIX) {
            // The names of installs in progress: hidden, and swept at start.
            return Err(Errno::EACCES);
        }
        let path = match self.nodes.path_of(&dir, &self.root)? {
            Some(p) => p.join(name),
            None => TreePath::new(name),
        }
        .map_err(|_| Errno::EACCES)?;
        Ok((dir, path))
    }

    /// [`Presto::child`] for a name about to be made: a placeholder holds it.
    fn new_child(&self, parent: u64, name: &OsStr) -> Result<(Target, TreePath), Errno> {
        let (dir, path) = self.child(parent, name)?;
        if self.placeholder(&path).is_some() {
            return Err(Errno::EEXIST);
        }
        Ok((dir, path))
    }

    fn placeholder(&self, path: &TreePath) -> Option<Entry> {
        self.lazy.as_ref()?.get(path)
    }

    fn fetch(&self, path: &TreePath) -> Result<(), Errno> {
        match &self.lazy {
            Some(lazy) if lazy.get(path).is_some() => lazy.fetch(path).map_err(|e| {
                tracing::warn!(%path, error = %crate::monitor::Chain(&e), "could not fetch a placeholder");
                errno(e)
            }),
            _ => Ok(()),
        }
    }

    /// Runs a change on disk and journals it, under the export's lock. `ops`
    /// turns what `change` returned into records (it sees the journaled
    /// tree, for the other names of a hard-linked file); every path they
    /// leave in place gets its stat remembered, so no scan hashes it again.
    fn change<T>(
        &self,
        change: impl FnOnce() -> Result<T, Errno>,
        ops: impl FnOnce(&T, &Inner) -> Vec<Op>,
    ) -> Result<T, Errno> {
        let mut inner = self.export.lock();
        let done = change()?;
        let ops = ops(&done, &inner);
        if !ops.is_empty() {
            let touched: Vec<TreePath> = ops.iter().filter_map(result_path).cloned().collect();
            if let Err(e) = self.export.journal_ops(&mut inner, ops) {
                // The disk moved without the journal (someone changed the
                // folder behind the mount): a scan brings them together.
                tracing::warn!(error = %crate::monitor::Chain(&e), "journal append refused; rescanning");
                if let Err(e) = self.export.rescan_locked(&mut inner) {
                    tracing::error!(error = %crate::monitor::Chain(&e), "rescan failed");
                }
            }
            for p in &touched {
                self.export.remember_stat(&mut inner, p);
            }
        }
        drop(inner);
        if let Some(f) = &self.on_change {
            f();
        }
        Ok(done)
    }

    /// Journals the content of an open file if it was written.
    fn settle(&self, handle: &Handle) {
        let written = handle.seen.as_ref().is_some_and(|seen| {
            let now = written_stamp(&handle.file);
            std::mem::replace(&mut *lock(seen), now) != now
        });
        if !handle.dirty.swap(false, Ordering::AcqRel) && !written {
            return;
        }
        // Hashed outside the lock, journaled under it only if the file has
        // not moved since (else hashed again): the record is what the disk has.
        for _ in 0..4 {
            let before = written_stamp(&handle.file);
            let Ok(meta) = handle.file.metadata() else {
                return;
            };
            if meta.nlink() == 0 {
                return; // unlinked while open: nothing in the tree to journal
            }
            let size = meta.len();
            let hashed = lock(&handle.in_order)
                .as_ref()
                .filter(|(_, n, stamp)| *n == size && *stamp == before)
                .map(|(h, _, _)| Version::from_hasher(h));
            let version = match hashed {
                Some(v) => v,
                None => match rustix::fs::openat(
                    rustix::fs::CWD,
                    proc_path(&handle.file),
                    OFlags::RDONLY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(io::Error::from)
                .and_then(|fd| hash(&File::from(fd)))
                {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not hash a written file");
                        return;
                    }
                },
            };
            let mtime_ns = crate::tree::scan::mtime_ns(&meta);
            let mut settled = false;
            let _ = self.change(
                || Ok(()),
                |_, inner| {
                    if written_stamp(&handle.file) != before {
                        return Vec::new();
                    }
                    settled = true;
                    let all = match self.nodes.path_of_fd(&handle.file, &self.root) {
                        Ok(Some(path)) => names(inner, &path, &meta),
                        _ => names_of_inode(inner, &meta),
                    };
                    all.into_iter()
                        .map(|path| Op::Write {
                            path,
                            version,
                            size,
                            mtime_ns,
                        })
                        .collect()
                },
            );
            if settled {
                return;
            }
        }
        tracing::warn!("a file kept changing while being journaled; the next flush journals it");
        handle.dirty.store(true, Ordering::Release);
    }

    fn handle(&self, fh: FileHandle) -> Result<Arc<Handle>, Errno> {
        lock(&self.handles).get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    /// Registers an open file; with `backing` (a passthrough open) the
    /// kernel does its reads and writes itself.
    fn add_handle(&self, file: File, writable: bool, backing: Option<Arc<BackingId>>) -> u64 {
        let fresh = file.metadata().is_ok_and(|m| m.len() == 0);
        let stamp = written_stamp(&file);
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let handle = Handle {
            seen: writable.then(|| Mutex::new(stamp)),
            file,
            dirty: AtomicBool::new(false),
            in_order: Mutex::new(fresh.then(|| (blake3::Hasher::new(), 0, stamp))),
            _backing: backing,
        };
        lock(&self.handles).insert(fh, Arc::new(handle));
        fh
    }

    /// The passthrough backing of inode `ino` (one per inode, shared by
    /// its open files), registered with `open` if there is none yet.
    fn backing(
        &self,
        ino: u64,
        open: impl FnOnce() -> io::Result<BackingId>,
    ) -> Option<Arc<BackingId>> {
        if !self.passthrough {
            return None;
        }
        let mut map = lock(&self.backings);
        if let Some(id) = map.get(&ino).and_then(std::sync::Weak::upgrade) {
            return Some(id);
        }
        match open() {
            Ok(id) => {
                let id = Arc::new(id);
                map.retain(|_, w| w.strong_count() > 0);
                map.insert(ino, Arc::downgrade(&id));
                Some(id)
            }
            Err(e) => {
                tracing::debug!(error = %e, "no passthrough for this file");
                None
            }
        }
    }

    /// The entry reply for a child just made or found on disk.
    fn entry_of(&self, dir: &Target, name: &OsStr) -> Result<fuser::FileAttr, Errno> {
        let (ino, stat) = self.nodes.lookup(dir, name)?;
        Ok(attr::of_stat(ino, &stat))
    }

    /// What `name` just made in `dir` is, once given its owner and mode.
    fn made(
        &self,
        req: &Request,
        dir: &Target,
        name: &OsStr,
        perm: Option<u32>,
    ) -> Result<Made, Errno> {
        let made = nodes::open_path(dir, name)?;
        Ok(self.owner(req, &made, dir, perm))
    }

    /// Gives what was just made in `dir` its owner (the caller, when we
    /// may chown; the folder's group where it is setgid) and exactly the
    /// mode asked for (our own umask must not apply twice; a chown clears
    /// setuid bits): what it is now, to be journaled.
    fn owner(&self, req: &Request, made: impl AsFd, dir: &Target, perm: Option<u32>) -> Made {
        let setgid_dir = dir.stat().is_ok_and(|s| s.st_mode & 0o2000 != 0);
        if self.as_root {
            let _ = rustix::fs::chownat(
                &made,
                "",
                Some(rustix::fs::Uid::from_raw(req.uid())),
                (!setgid_dir).then(|| rustix::fs::Gid::from_raw(req.gid())),
                AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
            );
        }
        let stat = rustix::fs::statat(&made, "", AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW);
        if let (Some(perm), Ok(st)) = (perm, &stat) {
            let is_dir = rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir();
            let want = perm | if is_dir { st.st_mode & 0o2000 } else { 0 };
            if st.st_mode & 0o7777 != want {
                let _ = rustix::fs::chmodat(
                    rustix::fs::CWD,
                    proc_path(&made.as_fd()),
                    Mode::from_raw_mode(want),
                    AtFlags::empty(),
                );
            }
        }
        match rustix::fs::statat(&made, "", AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Made {
                mode: st.st_mode & 0o7777,
                uid: st.st_uid,
                gid: st.st_gid,
            },
            Err(_) => Made {
                mode: perm.unwrap_or(0),
                uid: 0,
                gid: 0,
            },
        }
    }
}

/// The names `path`'s file has in the journaled tree: itself, and for a
/// hard-linked file every other path whose remembered stat is its inode.
fn names(inner: &Inner, path: &TreePath, meta: &std::fs::Metadata) -> Vec<TreePath> {
    use std::os::unix::fs::MetadataExt;
    let mut all = vec![path.clone()];
    if meta.nlink() > 1 {
        all.extend(
            inner
                .index
                .stats
                .iter()
                .filter(|(p, s)| {
                    *p != path
                        && (s.key.dev, s.key.ino) == (meta.dev(), meta.ino())
                        && inner
                            .index
                            .state
                            .get(p)
                            .is_some_and(|e| e.version().is_some())
                })
                .map(|(p, _)| p.clone()),
        );
    }
    all
}

/// The journaled names of a file whose own name is gone (it was open by a
/// hard link since unlinked): the paths whose remembered stat is its inode.
fn names_of_inode(inner: &Inner, meta: &std::fs::Metadata) -> Vec<TreePath> {
    use std::os::unix::fs::MetadataExt;
    inner
        .index
        .stats
        .iter()
        .filter(|(_, s)| (s.key.dev, s.key.ino) == (meta.dev(), meta.ino()))
        .filter(|(p, _)| {
            inner
                .index
                .state
                .get(p)
                .is_some_and(|e| e.version().is_some())
        })
        .map(|(p, _)| p.clone())
        .collect()
}

/// `op` (which makes something), and the owner it was given if not root's.
fn with_owner(op: Op, made: &Made) -> Vec<Op> {
    let path = result_path(&op)
        .expect("an op that makes something")
        .clone();
    let mut ops = vec![op];
    if made.uid != 0 || made.gid != 0 {
        ops.push(Op::Setattr {
            path,
            attrs: Attrs {
                uid: Some(made.uid),
                gid: Some(made.gid),
                ..Attrs::default()
            },
        });
    }
    ops
}

/// The path an op leaves something at.
fn result_path(op: &Op) -> Option<&TreePath> {
    match op {
        Op::Create { path, .. }
        | Op::Write { path, .. }
        | Op::Mkdir { path, .. }
        | Op::Setattr { path, .. }
        | Op::Symlink { path, .. }
        | Op::Link { path, .. } => Some(path),
        Op::Rename { to, .. } => Some(to),
        Op::Unlink { .. } | Op::Rmdir { .. } => None,
    }
}

/// Answers a lookup or a making of something with its attributes.
fn answer_entry(reply: ReplyEntry, found: Result<fuser::FileAttr, Errno>) {
    match found {
        Ok(a) => reply.entry(&TTL, &a, Generation(0)),
        Err(e) => reply.error(e),
    }
}

/// What a `setattr` call asks for.
struct SetAttr {
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    size: Option<u64>,
    atime: Option<TimeOrNow>,
    mtime: Option<TimeOrNow>,
}

impl SetAttr {
    /// The records of the change for each name of the file: its new
    /// content (after a truncate) and attributes.
    fn records(
        &self,
        names: Vec<TreePath>,
        stat: &rustix::fs::Stat,
        version: Option<Version>,
    ) -> Vec<Op> {
        let attrs = Attrs {
            mode: self.mode.map(|m| m & 0o7777),
            mtime_ns: self.mtime.map(|_| attr::mtime_ns(stat)),
            uid: self.uid,
            gid: self.gid,
        };
        let mut ops = Vec::new();
        for path in names {
            if let Some(version) = version {
                ops.push(Op::Write {
                    path: path.clone(),
                    version,
                    size: stat.st_size as u64,
                    mtime_ns: attr::mtime_ns(stat),
                });
            }
            if attrs != Attrs::default() {
                ops.push(Op::Setattr { path, attrs });
            }
        }
        ops
    }
}

/// Carries out a `setattr` on the backing file: mode, owner, size (the
/// content's new version then), times.
fn set_attributes(
    target: &Target,
    handle: Option<&Handle>,
    asked: &SetAttr,
) -> Result<Option<Version>, Errno> {
    if let Some(mode) = asked.mode {
        rustix::fs::chmodat(
            rustix::fs::CWD,
            proc_path(&target.fd()?),
            Mode::from_raw_mode(mode & 0o7777),
            AtFlags::empty(),
        )
        .map_err(rerr)?;
    }
    if asked.uid.is_some() || asked.gid.is_some() {
        rustix::fs::chownat(
            target.fd()?,
            "",
            asked.uid.map(rustix::fs::Uid::from_raw),
            asked.gid.map(rustix::fs::Gid::from_raw),
            AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(rerr)?;
    }
    let mut version = None;
    if let Some(size) = asked.size {
        let file = match handle {
            Some(h) => h.file.try_clone().map_err(errno)?,
            None => target.reopen(OFlags::WRONLY)?,
        };
        file.set_len(size).map_err(errno)?;
        if let Some(h) = handle {
            *lock(&h.in_order) =
                (size == 0).then(|| (blake3::Hasher::new(), 0, written_stamp(&h.file)));
        }
        version = Some(if size == 0 {
            crate::tree::state::empty_version()
        } else {
            hash(&target.reopen(OFlags::RDONLY)?).map_err(errno)?
        });
    }
    if asked.atime.is_some() || asked.mtime.is_some() {
        let times = rustix::fs::Timestamps {
            last_access: asked.atime.map_or(OMIT, mtime_of),
            last_modification: asked.mtime.map_or(OMIT, mtime_of),
        };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            proc_path(&target.fd()?),
            &times,
            AtFlags::empty(),
        )
        .map_err(rerr)?;
    }
    Ok(version)
}

/// The version of a file written through the mount, on every core: a
/// close waits for it. Read, not mapped: another program may truncate the
/// file meanwhile, which would kill a process reading it mapped.
fn hash(file: &File) -> io::Result<Version> {
    const CHUNK: usize = 16 << 20;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0; CHUNK];
    let mut offset = 0;
    loop {
        let mut filled = 0;
        while filled < CHUNK {
            match file.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        hasher.update_rayon(&buf[..filled]);
        offset += filled as u64;
        if filled < CHUNK {
            break;
        }
    }
    Ok(Version::from_hasher(&hasher))
}

fn mtime_of(t: TimeOrNow) -> rustix::fs::Timespec {
    match t {
        TimeOrNow::Now => rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        },
        TimeOrNow::SpecificTime(t) => {
            let (secs, nanos) = match t.duration_since(std::time::UNIX_EPOCH) {
                Ok(d) => (d.as_secs() as i64, d.subsec_nanos() as i64),
                Err(e) => {
                    let d = e.duration();
                    let (s, n) = (d.as_secs() as i64, d.subsec_nanos() as i64);
                    if n == 0 {
                        (-s, 0)
                    } else {
                        (-s - 1, 1_000_000_000 - n)
                    }
                }
            };
            rustix::fs::Timespec {
                tv_sec: secs,
                tv_nsec: nanos,
            }
        }
    }
}

const OMIT: rustix::fs::Timespec = rustix::fs::Timespec {
    tv_sec: 0,
    tv_nsec: rustix::fs::UTIME_OMIT,
};

impl Filesystem for Presto {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        self.passthrough = std::env::var_os("INTERSYNC_NO_PASSTHROUGH").is_none()
            && config
                .add_capabilities(fuser::InitFlags::FUSE_PASSTHROUGH)
                .is_ok()
            && config.set_max_stack_depth(2).is_ok();
        tracing::info!(passthrough = self.passthrough, "presto mounted");
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let found = (|| {
            if nodes::hidden(parent.0, name) {
                return Err(Errno::ENOENT);
            }
            let (dir, path) = self.child(parent.0, name)?;
            match self.nodes.lookup(&dir, name) {
                Ok((ino, stat)) => Ok(attr::of_stat(ino, &stat)),
                Err(e) if e == Errno::ENOENT => {
                    let entry = self.placeholder(&path).ok_or(Errno::ENOENT)?;
                    let ino = self.nodes.lookup_placeholder(&path);
                    Ok(attr::of_entry(ino, &entry))
                }
                Err(e) => Err(e),
            }
        })();
        answer_entry(reply, found)
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.nodes.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let got = (|| {
            if let Some(fh) = fh
                && let Ok(h) = self.handle(fh)
            {
                return Ok(attr::of_stat(
                    ino.0,
                    &rustix::fs::fstat(&h.file).map_err(rerr)?,
                ));
            }
            match self.nodes.target(ino.0)? {
                Target::Placeholder(path) => match self.placeholder(&path) {
                    Some(e) => Ok(attr::of_entry(ino.0, &e)),
                    None => Ok(attr::of_stat(ino.0, &self.nodes.stat_path(&path)?)),
                },
                t => Ok(attr::of_stat(ino.0, &t.stat()?)),
            }
        })();
        match got {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let done = (|| {
            let mut target = self.nodes.target(ino.0)?;
            if let Target::Placeholder(path) = &target {
                self.fetch(path)?;
                target = self.nodes.resolve(path)?;
                self.nodes.promote(ino.0, &target);
            }
            let path = self.nodes.path_of(&target, &self.root)?;
            let handle = fh.and_then(|fh| self.handle(fh).ok());
            let asked = SetAttr {
                mode,
                uid,
                gid,
                size,
                atime,
                mtime,
            };
            let stat = self.change(
                || {
                    let version = set_attributes(&target, handle.as_deref(), &asked)?;
                    Ok((target.stat()?, version))
                },
                |(stat, version), inner| {
                    let Some(path) = &path else { return Vec::new() };
                    let meta = std::fs::symlink_metadata(path.under(&self.root));
                    let all = match &meta {
                        Ok(meta) => names(inner, path, meta),
                        Err(_) => vec![path.clone()],
                    };
                    asked.records(all, stat, *version)
                },
            )?;
            Ok(attr::of_stat(ino.0, &stat.0))
        })();
        match done {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let got = (|| {
            let t = self.nodes.target(ino.0)?;
            rustix::fs::readlinkat(t.fd()?, "", Vec::new()).map_err(rerr)
        })();
        match got {
            Ok(target) => reply.data(target.as_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let made = (|| {
            let (dir, path) = self.new_child(parent.0, name)?;
            let kind = rustix::fs::FileType::from_raw_mode(mode);
            let perm = mode & !umask & 0o7777;
            let regular = kind == rustix::fs::FileType::RegularFile;
            self.change(
                || {
                    let fd = dir.fd()?;
                    rustix::fs::mknodat(&fd, name, kind, Mode::from_raw_mode(perm), rdev as u64)
                        .map_err(rerr)?;
                    self.made(req, &dir, name, Some(perm))
                },
                |made, _| {
                    // FIFOs, sockets and devices are not part of a tree.
                    if !regular {
                        return Vec::new();
                    }
                    with_owner(
                        Op::Create {
                            path: path.clone(),
                            mode: made.mode,
                        },
                        made,
                    )
                },
            )?;
            self.entry_of(&dir, name)
        })();
        answer_entry(reply, made)
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let made = (|| {
            let (dir, path) = self.new_child(parent.0, name)?;
            let perm = mode & !umask & 0o7777;
            self.change(
                || {
                    let fd = dir.fd()?;
                    rustix::fs::mkdirat(&fd, name, Mode::from_raw_mode(perm)).map_err(rerr)?;
                    self.made(req, &dir, name, Some(perm))
                },
                |made, _| {
                    with_owner(
                        Op::Mkdir {
                            path: path.clone(),
                            mode: made.mode,
                        },
                        made,
                    )
                },
            )?;
            self.entry_of(&dir, name)
        })();
        answer_entry(reply, made)
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let done = (|| {
            let (dir, path) = self.child(parent.0, name)?;
            if let Some(lazy) = &self.lazy
                && lazy.get(&path).is_some()
            {
                lazy.forget(&path);
                if let Some(f) = &self.on_change {
                    f();
                }
                return Ok(());
            }
            self.change(
                || rustix::fs::unlinkat(dir.fd()?, name, AtFlags::empty()).map_err(rerr),
                |_, _| vec![Op::Unlink { path: path.clone() }],
            )
        })();
        match done {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let done = (|| {
            let (dir, path) = self.child(parent.0, name)?;
            if self
                .lazy
                .as_ref()
                .is_some_and(|l| !l.list(Some(&path)).is_empty())
            {
                return Err(Errno::ENOTEMPTY);
            }
            self.change(
                || rustix::fs::unlinkat(dir.fd()?, name, AtFlags::REMOVEDIR).map_err(rerr),
                |_, _| vec![Op::Rmdir { path: path.clone() }],
            )
        })();
        match done {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let made = (|| {
            let (dir, path) = self.new_child(parent.0, link_name)?;
            self.change(
                || {
                    let fd = dir.fd()?;
                    rustix::fs::symlinkat(target, &fd, link_name).map_err(rerr)?;
                    self.made(req, &dir, link_name, None)?;
                    Ok(())
                },
                |_, _| {
                    vec![Op::Symlink {
                        path: path.clone(),
                        target: target.as_os_str().as_bytes().to_vec(),
                    }]
                },
            )?;
            self.entry_of(&dir, link_name)
        })();
        answer_entry(reply, made)
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let done = (|| {
            if flags.contains(RenameFlags::RENAME_EXCHANGE)
                || !(flags - RenameFlags::RENAME_NOREPLACE).is_empty()
            {
                // The journal has no exchange (nor whiteouts); refuse as
                // filesystems without them do.
                return Err(Errno::EINVAL);
            }
            let (from_dir, from) = self.child(parent.0, name)?;
            let (to_dir, to) = self.child(newparent.0, newname)?;
            self.fetch(&from)?;
            let from_stat = rustix::fs::statat(from_dir.fd()?, name, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(rerr)?;
            let from_is_dir = rustix::fs::FileType::from_raw_mode(from_stat.st_mode).is_dir();
            let over_placeholder = self.placeholder(&to).is_some();
            if let Some(lazy) = &self.lazy {
                if from_is_dir && lazy.any_under(&from) {
                    // Files not fetched cannot move with their folder: `mv`
                    // then moves it file by file, fetching each.
                    return Err(Errno::EXDEV);
                }
                if over_placeholder && flags.contains(RenameFlags::RENAME_NOREPLACE) {
                    return Err(Errno::EEXIST);
                }
                if over_placeholder && from_is_dir {
                    return Err(Errno::ENOTDIR);
                }
            }
            // Two names of one file: POSIX makes the rename do nothing.
            let same_file = rustix::fs::statat(to_dir.fd()?, newname, AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|s| (s.st_dev, s.st_ino) == (from_stat.st_dev, from_stat.st_ino));
            let mut raw = rustix::fs::RenameFlags::empty();
            if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                raw |= rustix::fs::RenameFlags::NOREPLACE;
            }
            self.change(
                || {
                    rustix::fs::renameat_with(from_dir.fd()?, name, to_dir.fd()?, newname, raw)
                        .map_err(rerr)?;
                    if over_placeholder && let Some(lazy) = &self.lazy {
                        lazy.forget(&to);
                    }
                    Ok(())
                },
                |_, _| {
                    if same_file {
                        return Vec::new();
                    }
                    vec![Op::Rename {
                        from: from.clone(),
                        to: to.clone(),
                    }]
                },
            )
        })();
        match done {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let made = (|| {
            let mut target = self.nodes.target(ino.0)?;
            if let Target::Placeholder(path) = &target {
                self.fetch(path)?;
                target = self.nodes.resolve(path)?;
                self.nodes.promote(ino.0, &target);
            }
            let (dir, path) = self.new_child(newparent.0, newname)?;
            let from = self.nodes.path_of(&target, &self.root)?;
            self.change(
                || {
                    rustix::fs::linkat(
                        rustix::fs::CWD,
                        proc_path(&target.fd()?),
                        dir.fd()?,
                        newname,
                        AtFlags::SYMLINK_FOLLOW,
                    )
                    .map_err(rerr)
                },
                |_, _| match &from {
                    Some(from) => vec![Op::Link {
                        path: path.clone(),
                        target: from.clone(),
                    }],
                    None => Vec::new(),
                },
            )?;
            self.entry_of(&dir, newname)
        })();
        answer_entry(reply, made)
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let opened = (|| {
            let mut target = self.nodes.target(ino.0)?;
            if let Target::Placeholder(path) = &target {
                self.fetch(path)?;
                target = self.nodes.resolve(path)?;
                self.nodes.promote(ino.0, &target);
            }
            let mut raw = OFlags::from_bits_retain(flags.0 as u32)
                - (OFlags::CREATE | OFlags::EXCL | OFlags::NOCTTY | OFlags::NOFOLLOW);
            if !self.passthrough {
                // Our reads and writes use our own buffers, never aligned for it.
                raw -= OFlags::DIRECT;
            }
            let truncate = raw.contains(OFlags::TRUNC);
            let writable = raw.contains(OFlags::WRONLY) || raw.contains(OFlags::RDWR);
            let file = target.reopen(raw)?;
            let backing = self.backing(ino.0, || reply.open_backing(&file));
            let fh = self.add_handle(file, writable, backing.clone());
            if truncate {
                // Journaled at the flush that follows, with what was written.
                self.handle(FileHandle(fh))?
                    .dirty
                    .store(true, Ordering::Release);
            }
            Ok((fh, backing))
        })();
        match opened {
            Ok((fh, Some(id))) => {
                reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id)
            }
            Ok((fh, None)) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let got = (|| {
            let h = self.handle(fh)?;
            let mut buf = vec![0; size as usize];
            let mut filled = 0;
            while filled < buf.len() {
                match h.file.read_at(&mut buf[filled..], offset + filled as u64) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(errno(e)),
                }
            }
            buf.truncate(filled);
            Ok(buf)
        })();
        match got {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: fuser::WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        let done = (|| {
            let h = self.handle(fh)?;
            h.file.write_all_at(data, offset).map_err(errno)?;
            h.dirty.store(true, Ordering::Release);
            let mut in_order = lock(&h.in_order);
            match in_order.as_mut() {
                Some((hasher, n, stamp)) if *n == offset => {
                    hasher.update(data);
                    *n += data.len() as u64;
                    *stamp = written_stamp(&h.file);
                }
                _ => *in_order = None,
            }
            Ok(data.len() as u32)
        })();
        match done {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        match self.handle(fh) {
            Ok(h) => {
                self.settle(&h);
                reply.ok()
            }
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let handle = lock(&self.handles).remove(&fh.0);
        if let Some(h) = handle {
            self.settle(&h);
        }
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let done = (|| {
            let h = self.handle(fh)?;
            if datasync {
                h.file.sync_data().map_err(errno)?;
            } else {
                h.file.sync_all().map_err(errno)?;
            }
            self.settle(&h);
            Ok(())
        })();
        match done {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let done = (|| {
            let h = self.handle(fh)?;
            rustix::fs::fallocate(
                &h.file,
                rustix::fs::FallocateFlags::from_bits_retain(mode as u32),
                offset,
                length,
            )
            .map_err(rerr)?;
            h.dirty.store(true, Ordering::Release);
            *lock(&h.in_order) = None;
            Ok(())
        })();
        match done {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let listed = (|| {
            let target = self.nodes.target(ino.0)?;
            let mut items = vec![
                (ino.0, FileType::Directory, b".".to_vec()),
                (ino.0, FileType::Directory, b"..".to_vec()),
            ];
            let mut names = std::collections::HashSet::new();
            for entry in std::fs::read_dir(proc_path(&target.fd()?)).map_err(errno)? {
                let entry = entry.map_err(errno)?;
                let name = entry.file_name();
                if nodes::hidden(ino.0, &name) {
                    continue;
                }
                let kind = entry
                    .file_type()
                    .ok()
                    .and_then(FileType::from_std)
                    .unwrap_or(FileType::RegularFile);
                use std::os::unix::fs::DirEntryExt;
                names.insert(name.as_bytes().to_vec());
                items.push((entry.ino(), kind, name.as_bytes().to_vec()));
            }
            if let Some(lazy) = &self.lazy {
                let dir = self.nodes.path_of(&target, &self.root)?;
                for (name, _) in lazy.list(dir.as_ref()) {
                    if names.insert(name.as_bytes().to_vec()) {
                        items.push((u64::MAX, FileType::RegularFile, name.into_bytes()));
                    }
                }
            }
            let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
            lock(&self.dirs).insert(fh, items);
            Ok(fh)
        })();
        match listed {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let dirs = lock(&self.dirs);
        let Some(items) = dirs.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        for (i, (ino, kind, name)) in items.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), i as u64 + 1, *kind, OsStr::from_bytes(name)) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.dirs).remove(&fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match rustix::fs::statvfs(&self.root) {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(rerr(e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let made = (|| {
            let (dir, path) = self.new_child(parent.0, name)?;
            let perm = mode & !umask & 0o7777;
            let raw = OFlags::from_bits_retain(flags as u32)
                - (OFlags::CREATE | OFlags::EXCL | OFlags::NOCTTY | OFlags::NOFOLLOW);
            let (file, made) = self.change(
                || {
                    let fd = dir.fd()?;
                    match rustix::fs::openat(
                        &fd,
                        name,
                        raw | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
                        Mode::from_raw_mode(perm),
                    ) {
                        Ok(file) => {
                            let made = self.owner(req, &file, &dir, Some(perm));
                            Ok((file, Some(made)))
                        }
                        Err(rustix::io::Errno::EXIST)
                            if !OFlags::from_bits_retain(flags as u32).contains(OFlags::EXCL) =>
                        {
                            let file =
                                rustix::fs::openat(&fd, name, raw | OFlags::CLOEXEC, Mode::empty())
                                    .map_err(rerr)?;
                            Ok((file, None))
                        }
                        Err(e) => Err(rerr(e)),
                    }
                },
                |(_, made), _| {
                    let Some(made) = made else {
                        return Vec::new();
                    };
                    with_owner(
                        Op::Create {
                            path: path.clone(),
                            mode: made.mode,
                        },
                        made,
                    )
                },
            )?;
            let attr = self.entry_of(&dir, name)?;
            let file = File::from(file);
            let backing = self.backing(attr.ino.0, || reply.open_backing(&file));
            let fh = self.add_handle(file, true, backing.clone());
            if made.is_none() && raw.contains(OFlags::TRUNC) {
                self.handle(FileHandle(fh))?
                    .dirty
                    .store(true, Ordering::Release);
            }
            Ok((attr, fh, backing))
        })();
        match made {
            Ok((a, fh, Some(id))) => reply.created_passthrough(
                &TTL,
                &a,
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
                &id,
            ),
            Ok((a, fh, None)) => {
                reply.created(&TTL, &a, Generation(0), FileHandle(fh), FopenFlags::empty())
            }
            Err(e) => reply.error(e),
        }
    }
}

/// Unmounts and waits for the serving threads; a failure is logged (the
/// mount may already be gone).
pub fn unmount_quietly(session: fuser::BackgroundSession) {
    if let Err(e) = session.umount_and_join() {
        tracing::warn!(error = %e, "unmounting");
    }
}
