//! Opening a tree's paths so that nothing leads out of it: every lookup is
//! resolved beneath the tree's root by the kernel (`openat2` with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, and `O_NOFOLLOW` for the last
//! name), so a symbolic link anywhere on the way, planted before or during
//! the call, is refused rather than followed.
//!
//! What it trusts: the kernel's resolution, nothing else. Paths are
//! [`TreePath`]s, which hold no `..` and no leading `/`; the resolve flags
//! would refuse those anyway.
//!
//! The errors say what stood in the way, with the path; the server turns
//! them into HTTP refusals, other callers into their own errors.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use intersync_protocol::TreePath;
use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
use thiserror::Error;

/// Why a path beneath a root could not be opened.
#[derive(Debug, Error)]
pub enum BeneathError {
    /// The path's last name is a symbolic link.
    #[error("{path}: a symbolic link, not a file")]
    Symlink { path: TreePath },
    /// A folder on the way is a symbolic link, or not a folder at all.
    #[error("{path}: path goes through a symbolic link")]
    ThroughLink { path: TreePath },
    #[error("{path}: no such file")]
    NoFile { path: TreePath },
    #[error("{path}: no such folder")]
    NoFolder { path: TreePath },
    /// Something that is neither a regular file nor a link (a folder, a device).
    #[error("{path}: not a regular file")]
    NotAFile { path: TreePath },
    #[error("{path}")]
    Io { path: TreePath, source: io::Error },
}

impl BeneathError {
    /// The path did not lead to something there (as opposed to something
    /// refused on the way, or a failure of the disk).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            BeneathError::NoFile { .. } | BeneathError::NoFolder { .. }
        )
    }

    /// A symbolic link stood in the way.
    pub fn is_link(&self) -> bool {
        matches!(
            self,
            BeneathError::Symlink { .. } | BeneathError::ThroughLink { .. }
        )
    }
}

const BENEATH: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_SYMLINKS);

/// Opens the regular file at `path` below `root` for reading, refusing
/// symbolic links anywhere on the way.
pub fn open_file(root: &Path, path: &TreePath) -> Result<File, BeneathError> {
    let root_fd = open_root(root, path)?;
    let fd = rustix::fs::openat2(
        &root_fd,
        path.as_str(),
        // Not blocking: a FIFO put in a file's place must not hang the
        // open (it is refused below, as not a regular file).
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
        BENEATH,
    )
    .map_err(|e| match e {
        // The last name is a link, or one on the way is: say which.
        rustix::io::Errno::LOOP => match folders(&root_fd, path) {
            Ok(()) => BeneathError::Symlink { path: path.clone() },
            Err(e) => e,
        },
        rustix::io::Errno::NOENT => match folders(&root_fd, path) {
            Ok(()) => BeneathError::NoFile { path: path.clone() },
            Err(e) => e,
        },
        rustix::io::Errno::NOTDIR | rustix::io::Errno::XDEV => {
            BeneathError::ThroughLink { path: path.clone() }
        }
        e => BeneathError::Io {
            path: path.clone(),
            source: e.into(),
        },
    })?;
    let file = File::from(fd);
    match file.metadata() {
        Ok(m) if m.is_file() => {
            // Reads of a regular file never block; clear the flag anyway.
            let _ = rustix::fs::fcntl_setfl(&file, OFlags::empty());
            Ok(file)
        }
        Ok(_) => Err(BeneathError::NotAFile { path: path.clone() }),
        Err(source) => Err(BeneathError::Io {
            path: path.clone(),
            source,
        }),
    }
}

/// Every folder on the way to `path` below `root` is there and is a real
/// folder, not a symbolic link.
pub fn check_folders(root: &Path, path: &TreePath) -> Result<(), BeneathError> {
    folders(&open_root(root, path)?, path)
}

/// The folder that holds a path of the tree, opened beneath the tree's root
/// and held by descriptor: what is made, renamed or removed through it
/// lands in that folder, even if a local process swaps a folder on the way
/// for a symbolic link meanwhile (names are resolved relative to the
/// descriptor, one name deep, never following a link).
pub struct Folder {
    fd: OwnedFd,
}

impl Folder {
    /// The folder holding `path` (the root itself for a top-level name),
    /// reached through no symbolic link.
    pub fn holding(root: &Path, path: &TreePath) -> Result<Folder, BeneathError> {
        let Some(parent) = path.parent() else {
            return Folder::at(root).map_err(|source| BeneathError::Io {
                path: path.clone(),
                source,
            });
        };
        rustix::fs::openat2(
            &open_root(root, path)?,
            parent.as_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            BENEATH,
        )
        .map(|fd| Folder { fd })
        .map_err(|e| folder_error(e, path))
    }

    /// A folder trusted by its path (the caller's own state, not a tree
    /// that others write).
    pub fn at(dir: &Path) -> io::Result<Folder> {
        let fd = rustix::fs::open(
            dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Folder { fd })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Makes the folder's own entries (names made, renamed, removed) durable.
    pub fn sync(&self) -> io::Result<()> {
        Ok(rustix::fs::fsync(&self.fd)?)
    }

    /// Makes the folder `name` with exactly `mode` (not less the umask).
    pub fn mkdir(&self, name: &str, mode: u32) -> io::Result<()> {
        rustix::fs::mkdirat(&self.fd, name, Mode::from_raw_mode(0o700))?;
        self.set_attrs(name, Some(mode), None)
    }

    pub fn unlink(&self, name: &str) -> io::Result<()> {
        Ok(rustix::fs::unlinkat(&self.fd, name, AtFlags::empty())?)
    }

    pub fn rmdir(&self, name: &str) -> io::Result<()> {
        Ok(rustix::fs::unlinkat(&self.fd, name, AtFlags::REMOVEDIR)?)
    }

    pub fn symlink(&self, target: &[u8], name: &str) -> io::Result<()> {
        let target = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(target);
        Ok(rustix::fs::symlinkat(target, &self.fd, name)?)
    }

    /// Renames `name` here to `to_name` in `to` (replacing what is there).
    pub fn rename(&self, name: &str, to: &Folder, to_name: &str) -> io::Result<()> {
        Ok(rustix::fs::renameat(&self.fd, name, &to.fd, to_name)?)
    }

    /// What `name` is, not following a link.
    pub fn lstat(&self, name: &str) -> io::Result<rustix::fs::Stat> {
        Ok(rustix::fs::statat(
            &self.fd,
            name,
            AtFlags::SYMLINK_NOFOLLOW,
        )?)
    }

    /// Sets the permission bits and the modification time of `name`, a
    /// file or a folder; a symbolic link is refused, not followed. Works
    /// whatever the entry's own permissions (it is reached by an `O_PATH`
    /// descriptor and changed through `/proc/self/fd`, as `fchmodat` has
    /// no "do not follow" on Linux).
    pub fn set_attrs(
        &self,
        name: &str,
        mode: Option<u32>,
        mtime_ns: Option<i64>,
    ) -> io::Result<()> {
        if mode.is_none() && mtime_ns.is_none() {
            return Ok(());
        }
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let stat = rustix::fs::fstat(&fd)?;
        if rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::Symlink {
            return Err(io::Error::other(format!("{name}: a symbolic link")));
        }
        let proc = format!("/proc/self/fd/{}", fd.as_raw_fd());
        if let Some(mode) = mode {
            rustix::fs::chmod(&proc, Mode::from_raw_mode(mode & 0o7777))?;
        }
        if let Some(ns) = mtime_ns {
            let ns = ns.max(0);
            let times = rustix::fs::Timestamps {
                last_access: rustix::fs::Timespec {
                    tv_sec: 0,
                    tv_nsec: rustix::fs::UTIME_OMIT,
                },
                last_modification: rustix::fs::Timespec {
                    tv_sec: ns / 1_000_000_000,
                    tv_nsec: (ns % 1_000_000_000) as _,
                },
            };
            rustix::fs::utimensat(rustix::fs::CWD, &proc, &times, AtFlags::empty())?;
        }
        Ok(())
    }
}

fn folder_error(e: rustix::io::Errno, path: &TreePath) -> BeneathError {
    match e {
        rustix::io::Errno::NOENT => BeneathError::NoFolder { path: path.clone() },
        rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR | rustix::io::Errno::XDEV => {
            BeneathError::ThroughLink { path: path.clone() }
        }
        e => BeneathError::Io {
            path: path.clone(),
            source: e.into(),
        },
    }
}

fn open_root(root: &Path, path: &TreePath) -> Result<OwnedFd, BeneathError> {
    rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| BeneathError::Io {
        path: path.clone(),
        source: e.into(),
    })
}

fn folders(root_fd: &OwnedFd, path: &TreePath) -> Result<(), BeneathError> {
    let Some(parent) = path.parent() else {
        return Ok(());
    };
    rustix::fs::openat2(
        root_fd,
        parent.as_str(),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        BENEATH,
    )
    .map(drop)
    .map_err(|e| folder_error(e, path))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn p(s: &str) -> TreePath {
        TreePath::new(s).unwrap()
    }

    #[test]
    fn opens_files_and_refuses_every_way_out() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("d/e")).unwrap();
        std::fs::write(root.join("d/e/f"), b"inside").unwrap();
        std::fs::write(outside.path().join("secret"), b"outside").unwrap();
        symlink(outside.path().join("secret"), root.join("to-secret")).unwrap();
        symlink("e/f", root.join("d/relative")).unwrap();
        symlink(outside.path(), root.join("out")).unwrap();
        symlink("d", root.join("d-link")).unwrap();

        let mut file = open_file(root, &p("d/e/f")).unwrap();
        let mut text = String::new();
        io::Read::read_to_string(&mut file, &mut text).unwrap();
        assert_eq!(text, "inside");

        // The last name a link: refused by O_NOFOLLOW, whether it points
        // out of the tree or stays inside.
        for link in ["to-secret", "d/relative"] {
            let e = open_file(root, &p(link)).unwrap_err();
            assert!(matches!(e, BeneathError::Symlink { .. }), "{link}: {e}");
            assert!(e.is_link());
        }
        // A folder on the way a link.
        for through in ["out/secret", "d-link/e/f"] {
            let e = open_file(root, &p(through)).unwrap_err();
            assert!(
                matches!(e, BeneathError::ThroughLink { .. }),
                "{through}: {e}"
            );
            assert!(check_folders(root, &p(through)).is_err());
        }
        assert!(matches!(
            open_file(root, &p("d/missing")).unwrap_err(),
            BeneathError::NoFile { .. }
        ));
        assert!(matches!(
            open_file(root, &p("nowhere/f")).unwrap_err(),
            BeneathError::NoFolder { .. }
        ));
        assert!(matches!(
            open_file(root, &p("d/e")).unwrap_err(),
            BeneathError::NotAFile { .. }
        ));
        // A file where a folder should be.
        assert!(matches!(
            open_file(root, &p("d/e/f/g")).unwrap_err(),
            BeneathError::ThroughLink { .. }
        ));
        check_folders(root, &p("d/e/new")).unwrap();
        check_folders(root, &p("top-level")).unwrap();
    }

    /// The refusal of a last-name link rests on the platform's own
    /// `O_NOFOLLOW`, whatever its value (0o400000 on x86, 0o100000 on
    /// arm64): opened with it, a link gives `ELOOP`; the same call without
    /// it would follow the link.
    #[test]
    fn the_platforms_own_o_nofollow_refuses_a_link() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("target"), b"x").unwrap();
        symlink("target", dir.path().join("link")).unwrap();
        let at =
            rustix::fs::open(dir.path(), OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let followed = rustix::fs::openat(&at, "link", OFlags::RDONLY, Mode::empty());
        assert!(followed.is_ok(), "without O_NOFOLLOW the link is followed");
        let refused = rustix::fs::openat(
            &at,
            "link",
            OFlags::RDONLY | OFlags::NOFOLLOW,
            Mode::empty(),
        );
        assert_eq!(refused.unwrap_err(), rustix::io::Errno::LOOP);
        assert_eq!(OFlags::NOFOLLOW.bits(), libc::O_NOFOLLOW as u32);
    }
}
