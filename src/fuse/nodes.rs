//! The inodes the kernel knows: each an `O_PATH` descriptor of the backing
//! file (one per backing inode, so hard links share a number), or a
//! placeholder's path. Numbers live until the kernel forgets them.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex};

use fuser::Errno;
use intersync_protocol::TreePath;
use intersync_protocol::path::STATE_DIR;
use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags, Stat};

use super::{lock, proc_path, rerr};

/// What an inode number stands for.
#[derive(Clone)]
pub enum Target {
    Fd(Arc<OwnedFd>),
    Placeholder(TreePath),
}

impl Target {
    pub fn fd(&self) -> Result<Arc<OwnedFd>, Errno> {
        match self {
            Target::Fd(fd) => Ok(fd.clone()),
            Target::Placeholder(_) => Err(Errno::ENOENT),
        }
    }

    pub fn stat(&self) -> Result<Stat, Errno> {
        rustix::fs::statat(
            self.fd()?,
            "",
            AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(rerr)
    }

    /// The file itself, open for I/O.
    pub fn reopen(&self, flags: OFlags) -> Result<File, Errno> {
        let fd = rustix::fs::openat(
            rustix::fs::CWD,
            proc_path(&self.fd()?),
            flags | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(rerr)?;
        Ok(File::from(fd))
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum Key {
    Disk(u64, u64),
    Placeholder(TreePath),
}

struct Node {
    key: Key,
    fd: Option<Arc<OwnedFd>>,
    lookups: u64,
}

#[derive(Default)]
struct Inner {
    by_ino: HashMap<u64, Node>,
    by_key: HashMap<Key, u64>,
    next: u64,
}

pub struct Nodes {
    root: Arc<OwnedFd>,
    inner: Mutex<Inner>,
}

/// Names the mount never shows: the state folder at the top, and the
/// temporaries of installs in progress.
pub fn hidden(parent: u64, name: &OsStr) -> bool {
    (parent == fuser::INodeNo::ROOT.0 && name == STATE_DIR)
        || name
            .to_str()
            .is_some_and(|n| n.starts_with(crate::install::TEMP_PREFIX))
}

/// `name` in `dir` as an `O_PATH` descriptor, never following a link.
pub fn open_path(dir: &Target, name: &OsStr) -> Result<OwnedFd, Errno> {
    rustix::fs::openat(
        dir.fd()?,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(rerr)
}

impl Nodes {
    pub fn new(root: &Path) -> std::io::Result<Nodes> {
        let fd = Arc::new(rustix::fs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?);
        let stat = rustix::fs::fstat(&fd)?;
        let key = Key::Disk(stat.st_dev, stat.st_ino);
        let root_ino = fuser::INodeNo::ROOT.0;
        let mut inner = Inner {
            next: root_ino + 1,
            ..Inner::default()
        };
        inner.by_key.insert(key.clone(), root_ino);
        inner.by_ino.insert(
            root_ino,
            Node {
                key,
                fd: Some(fd.clone()),
                lookups: u64::MAX / 2,
            },
        );
        Ok(Nodes {
            root: fd,
            inner: Mutex::new(inner),
        })
    }

    fn remember(&self, key: Key, fd: Option<Arc<OwnedFd>>) -> u64 {
        let mut inner = lock(&self.inner);
        if let Some(&ino) = inner.by_key.get(&key) {
            let node = inner.by_ino.get_mut(&ino).expect("indexed");
            node.lookups += 1;
            if fd.is_some() {
                // The freshest name: an older one may have been unlinked.
                node.fd = fd;
            }
            return ino;
        }
        let ino = inner.next;
        inner.next += 1;
        inner.by_key.insert(key.clone(), ino);
        inner.by_ino.insert(
            ino,
            Node {
                key,
                fd,
                lookups: 1,
            },
        );
        ino
    }

    /// Finds `name` in `dir` on disk and counts a lookup of it.
    pub fn lookup(&self, dir: &Target, name: &OsStr) -> Result<(u64, Stat), Errno> {
        let fd = open_path(dir, name)?;
        let stat = rustix::fs::statat(&fd, "", AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW)
            .map_err(rerr)?;
        let key = Key::Disk(stat.st_dev, stat.st_ino);
        Ok((self.remember(key, Some(Arc::new(fd))), stat))
    }

    pub fn lookup_placeholder(&self, path: &TreePath) -> u64 {
        self.remember(Key::Placeholder(path.clone()), None)
    }

    pub fn forget(&self, ino: u64, n: u64) {
        let mut inner = lock(&self.inner);
        let Some(node) = inner.by_ino.get_mut(&ino) else {
            return;
        };
        node.lookups = node.lookups.saturating_sub(n);
        if node.lookups == 0 {
            let node = inner.by_ino.remove(&ino).expect("present");
            if inner.by_key.get(&node.key) == Some(&ino) {
                inner.by_key.remove(&node.key);
            }
        }
    }

    pub fn target(&self, ino: u64) -> Result<Target, Errno> {
        let inner = lock(&self.inner);
        let node = inner.by_ino.get(&ino).ok_or(Errno::ENOENT)?;
        Ok(match (&node.fd, &node.key) {
            (Some(fd), _) => Target::Fd(fd.clone()),
            (None, Key::Placeholder(p)) => Target::Placeholder(p.clone()),
            (None, Key::Disk(..)) => return Err(Errno::ENOENT),
        })
    }

    /// The file at `path` on disk now (a placeholder just fetched), never
    /// leaving the tree on the way.
    pub fn resolve(&self, path: &TreePath) -> Result<Target, Errno> {
        let fd = rustix::fs::openat2(
            &self.root,
            path.as_str(),
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(rerr)?;
        Ok(Target::Fd(Arc::new(fd)))
    }

    pub fn stat_path(&self, path: &TreePath) -> Result<Stat, Errno> {
        self.resolve(path)?.stat()
    }

    /// Where `target` is in the tree now (`None`: the top). A file no
    /// longer in the tree (unlinked while open) has no path.
    pub fn path_of(&self, target: &Target, root: &Path) -> Result<Option<TreePath>, Errno> {
        match target {
            Target::Placeholder(p) => Ok(Some(p.clone())),
            Target::Fd(fd) => self.path_of_fd(&**fd, root),
        }
    }

    /// Where the file open as `fd` is in the tree now (`None`: the top):
    /// the name the kernel gives it, if that name still leads to this very
    /// file (a name unlinked since reads as "NAME (deleted)", and may have
    /// been taken by another file).
    pub fn path_of_fd(&self, fd: &impl AsFd, root: &Path) -> Result<Option<TreePath>, Errno> {
        let fd = fd.as_fd();
        let link = std::fs::read_link(proc_path(&fd)).map_err(|_| Errno::ENOENT)?;
        if link == root {
            return Ok(None);
        }
        let rel = link.strip_prefix(root).map_err(|_| Errno::ENOENT)?;
        let rel = rel.to_str().ok_or(Errno::ENOENT)?;
        let path = TreePath::new(rel).map_err(|_| Errno::ENOENT)?;
        let here = rustix::fs::fstat(fd).map_err(rerr)?;
        let there = self.stat_path(&path)?;
        if (here.st_dev, here.st_ino) != (there.st_dev, there.st_ino) {
            return Err(Errno::ENOENT);
        }
        Ok(Some(path))
    }

    /// A placeholder's inode, once fetched, is the file on disk.
    pub fn promote(&self, ino: u64, target: &Target) {
        let (Target::Fd(fd), Ok(stat)) = (target, target.stat()) else {
            return;
        };
        let mut inner = lock(&self.inner);
        let disk = Key::Disk(stat.st_dev, stat.st_ino);
        let Some(node) = inner.by_ino.get_mut(&ino) else {
            return;
        };
        let old = std::mem::replace(&mut node.key, disk.clone());
        node.fd = Some(fd.clone());
        if inner.by_key.get(&old) == Some(&ino) {
            inner.by_key.remove(&old);
        }
        inner.by_key.entry(disk).or_insert(ino);
    }
}
