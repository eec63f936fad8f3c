//! Installing files so that a reader never sees a half-written or unverified
//! one: write to a temporary file in the destination's folder, fsync it,
//! rename it over the destination, fsync the folder. Until
//! [`PendingFile::install`] succeeds, the destination is untouched, and a
//! pending file that is dropped removes its temporary.

use std::ffi::OsString;
use std::fs::{File, Permissions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use intersync_protocol::TreePath;
use rand::RngCore;
use rustix::fs::{Mode, OFlags};
use tempfile::NamedTempFile;

use crate::beneath::{BeneathError, Folder};

/// Prefix of temporary files, so a scan can recognise and skip them.
pub const TEMP_PREFIX: &str = ".intersync-tmp-";

/// A temporary file in a folder held by descriptor: made, renamed and (when
/// dropped before it is installed) removed relative to that descriptor, so
/// it never lands anywhere else, whatever is swapped on the path meanwhile.
pub struct Temp {
    folder: Arc<Folder>,
    name: String,
    /// Where it is, for messages.
    path: PathBuf,
    installed: bool,
}

impl Temp {
    /// A new temporary file in `folder` (found at `dir`, for messages),
    /// created as an ordinary new file would be (0666 less the umask), and
    /// the file open for writing.
    pub fn create(folder: Arc<Folder>, dir: &Path) -> io::Result<(Temp, File)> {
        loop {
            let name = format!("{TEMP_PREFIX}{:016x}", rand::rng().next_u64());
            match rustix::fs::openat(
                folder.fd(),
                name.as_str(),
                OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o666),
            ) {
                Ok(fd) => {
                    let path = dir.join(&name);
                    let temp = Temp {
                        folder,
                        name,
                        path,
                        installed: false,
                    };
                    return Ok((temp, File::from(fd)));
                }
                Err(rustix::io::Errno::EXIST) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Gives the (written, closed) file its permission bits and
    /// modification time, then renames it to `dest` in its folder; what it
    /// is as installed. Not durable until the caller syncs.
    pub fn install(
        mut self,
        dest: &std::ffi::OsStr,
        mode: Option<u32>,
        mtime_ns: Option<i64>,
    ) -> io::Result<rustix::fs::Stat> {
        self.folder.set_attrs(&self.name, mode, mtime_ns)?;
        let stat = self.folder.lstat(&self.name)?;
        rustix::fs::renameat(self.folder.fd(), self.name.as_str(), self.folder.fd(), dest)?;
        self.installed = true;
        Ok(stat)
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        if !self.installed {
            let _ = self.folder.unlink(&self.name);
        }
    }
}

/// A file being written, to be installed at `dest` when complete.
pub struct PendingFile {
    dest: PathBuf,
    name: OsString,
    temp: Temp,
    out: BufWriter<File>,
}

impl PendingFile {
    /// A file to be installed at `dest`, a path the caller trusts.
    pub fn create(dest: &Path) -> io::Result<PendingFile> {
        let dir = parent_dir(dest);
        let folder = Arc::new(Folder::at(dir)?);
        PendingFile::in_folder(folder, dir, dest)
    }

    /// A file to be installed at `path` below `root`, in its folder as
    /// found beneath the root through no symbolic link.
    pub fn create_beneath(root: &Path, path: &TreePath) -> Result<PendingFile, BeneathError> {
        let folder = Arc::new(Folder::holding(root, path)?);
        let dest = path.under(root);
        PendingFile::in_folder(folder, parent_dir(&dest), &dest).map_err(|source| {
            BeneathError::Io {
                path: path.clone(),
                source,
            }
        })
    }

    fn in_folder(folder: Arc<Folder>, dir: &Path, dest: &Path) -> io::Result<PendingFile> {
        let name = dest
            .file_name()
            .ok_or_else(|| io::Error::other(format!("{}: not a file name", dest.display())))?
            .to_owned();
        let (temp, file) = Temp::create(folder, dir)?;
        Ok(PendingFile {
            dest: dest.to_owned(),
            name,
            temp,
            out: BufWriter::with_capacity(256 * 1024, file),
        })
    }

    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Makes the content durable and renames it into place.
    pub fn install(self) -> io::Result<()> {
        self.install_with(None, None).map(drop)
    }

    /// [`PendingFile::install`], giving the file `mode` and `mtime_ns`
    /// first: what it is as installed.
    pub fn install_with(
        self,
        mode: Option<u32>,
        mtime_ns: Option<i64>,
    ) -> io::Result<rustix::fs::Stat> {
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        let folder = self.temp.folder.clone();
        let stat = self.temp.install(&self.name, mode, mtime_ns)?;
        folder.sync()?;
        Ok(stat)
    }
}

impl Write for PendingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.out.write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Files written whole and checked, waiting to be installed together: the
/// durability of a batch of small files costs two file-system syncs, not
/// two fsyncs a file. Each is written to a temporary file beside its
/// destination ([`Staged::create`]), closed and [`StagedInstalls::add`]ed;
/// [`StagedInstalls::commit`] makes every one durable (`syncfs`), renames
/// them all into place, and syncs again so that the renames are durable
/// too. Until then no destination is touched; what is dropped uncommitted
/// is removed. A crash between the two syncs leaves some files at their
/// names, each whole and verified, and the others not at all.
#[derive(Default)]
pub struct StagedInstalls {
    staged: Vec<(tempfile::TempPath, PathBuf)>,
}

/// A file being written for a [`StagedInstalls`].
pub struct Staged {
    dest: PathBuf,
    temp: NamedTempFile,
}

impl Staged {
    /// [`Staged::create`], making the folders above `dest` first if they
    /// are missing (tried only then: a pull makes folders before files).
    pub fn create_in_new_folder(dest: &Path) -> io::Result<Staged> {
        match Staged::create(dest) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir_all(parent_dir(dest))?;
                Staged::create(dest)
            }
            other => other,
        }
    }

    /// A temporary file beside `dest`, created as a new file would be.
    pub fn create(dest: &Path) -> io::Result<Staged> {
        let temp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .permissions(Permissions::from_mode(0o666))
            .tempfile_in(parent_dir(dest))?;
        Ok(Staged {
            dest: dest.to_owned(),
            temp,
        })
    }

    pub fn file(&mut self) -> &mut File {
        self.temp.as_file_mut()
    }

    /// Where it is being written.
    pub fn path(&self) -> &Path {
        self.temp.path()
    }

    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Closes the file (its temporary stays, removed when the path is
    /// dropped), for a caller that renames it into place itself between
    /// two [`sync_fs`].
    pub fn close(self) -> tempfile::TempPath {
        self.temp.into_temp_path()
    }
}

/// Makes everything written on the file system that holds `root` durable.
pub fn sync_fs(root: &Path) -> io::Result<()> {
    Ok(rustix::fs::syncfs(&File::open(root)?)?)
}

impl StagedInstalls {
    /// Adds a written file (closing it: a batch holds no descriptors).
    pub fn add(&mut self, staged: Staged) {
        self.staged
            .push((staged.temp.into_temp_path(), staged.dest));
    }

    /// Installs every file added (see the type's documentation); the
    /// files installed, in the order added. On an error, those before it
    /// are installed and the rest removed.
    pub fn commit(&mut self, root: &Path) -> io::Result<Vec<Landed>> {
        if self.staged.is_empty() {
            return Ok(Vec::new());
        }
        let fs = File::open(root)?;
        rustix::fs::syncfs(&fs)?;
        let seen = SystemTime::now();
        let mut installed = Vec::with_capacity(self.staged.len());
        for (temp, dest) in self.staged.drain(..) {
            temp.persist(&dest).map_err(|e| e.error)?;
            let stat = std::fs::symlink_metadata(&dest).ok();
            installed.push(Landed { dest, stat, seen });
        }
        rustix::fs::syncfs(&fs)?;
        Ok(installed)
    }

    /// [`StagedInstalls::commit`] on a thread of its own: the next batch is
    /// received and written while this one's syncs wait for the disk
    /// (on 200,000 small files, 3-4 s of a 16 s clone).
    pub fn commit_behind(mut self, root: &Path) -> Committing {
        let root = root.to_owned();
        Committing(std::thread::spawn(move || self.commit(&root)))
    }
}

/// A file [`StagedInstalls::commit`] put at its name.
pub struct Landed {
    pub dest: PathBuf,
    /// Its stat right after the rename (the rename moves its ctime).
    pub stat: Option<std::fs::Metadata>,
    /// A time before that stat, for a scanner's test of racy stats.
    pub seen: SystemTime,
}

/// A [`StagedInstalls::commit_behind`] under way. Dropped, the thread
/// still finishes: each file is installed whole or not at all.
pub struct Committing(std::thread::JoinHandle<io::Result<Vec<Landed>>>);

impl Committing {
    /// What the commit installed; its error, if it stopped.
    pub fn wait(self) -> io::Result<Vec<Landed>> {
        self.0
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the thread installing a batch panicked")))
    }
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_only_on_success() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f");
        std::fs::write(&dest, b"old").unwrap();

        let mut pending = PendingFile::create(&dest).unwrap();
        pending.write_all(b"half").unwrap();
        drop(pending);
        assert_eq!(std::fs::read(&dest).unwrap(), b"old");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "temp left behind"
        );

        let mut pending = PendingFile::create(&dest).unwrap();
        pending.write_all(b"new").unwrap();
        pending.install().unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
