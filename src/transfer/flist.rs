//! The sender's file list: what a source argument puts into a transfer,
//! walked depth first in rsync's order (a folder, then its non-folders by
//! name, then its subfolders by name with a `/` appended), each name
//! judged by the sender-side filter rules as the walk goes, per-directory
//! merge files read from the folder being entered.
//!
//! What it trusts: the local file system, read without following
//! symlinks. Names are bytes and never contain `/`; an entry that cannot be
//! read is an error of the list (rsync's "I/O error"), not of the walk.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use intersync_compat::filter::{Filters, LocalFiles, Side};

/// What kind of file an entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink(Vec<u8>),
    /// A block or character device (rsync's "device").
    Device {
        rdev: u64,
        block: bool,
    },
    /// A FIFO or socket (rsync's "special").
    Special {
        fifo: bool,
    },
}

impl Kind {
    /// rsync's type letter in itemize output.
    pub fn letter(&self) -> char {
        match self {
            Kind::File => 'f',
            Kind::Dir => 'd',
            Kind::Symlink(_) => 'L',
            Kind::Device { .. } => 'D',
            Kind::Special { .. } => 'S',
        }
    }
}

/// One item of the list.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The path from the transfer root; empty for the root itself (".").
    pub name: Vec<u8>,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub dev: u64,
    pub ino: u64,
    pub nlink: u64,
    /// Where it is on disk (for an export's file, its path in the export).
    pub path: PathBuf,
    /// An export's file: its path and entry there, to fetch it by.
    pub remote: Option<(intersync_protocol::TreePath, crate::tree::Entry)>,
    /// Nothing is known of its attributes (an export's root, which its
    /// journal does not describe): made if missing, never changed.
    pub bare: bool,
    /// Its mtime is not known (an export's folders and symlinks: the
    /// journal does not record their times): never compared or set.
    pub time_unknown: bool,
}

impl Entry {
    pub fn from_meta(
        name: Vec<u8>,
        path: PathBuf,
        meta: &std::fs::Metadata,
    ) -> std::io::Result<Entry> {
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_file() {
            Kind::File
        } else if ft.is_symlink() {
            Kind::Symlink(std::fs::read_link(&path)?.as_os_str().as_bytes().to_vec())
        } else if ft.is_block_device() || ft.is_char_device() {
            Kind::Device {
                rdev: meta.rdev(),
                block: ft.is_block_device(),
            }
        } else {
            Kind::Special { fifo: ft.is_fifo() }
        };
        Ok(Entry {
            name,
            kind,
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
            size: if ft.is_file() { meta.len() } else { 0 },
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec() as u32,
            dev: meta.dev(),
            ino: meta.ino(),
            nlink: meta.nlink(),
            path,
            remote: None,
            bare: false,
            time_unknown: false,
        })
    }

    /// The name as rsync prints it: `./` for the root, a `/` after folders.
    pub fn display(&self) -> String {
        let mut s = if self.name.is_empty() {
            ".".to_string()
        } else {
            String::from_utf8_lossy(&self.name).into_owned()
        };
        if self.kind == Kind::Dir {
            s.push('/');
        }
        s
    }
}

/// A message of the sender about something it could not list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// rsync's "link_stat ... failed" or "opendir ... failed": an I/O error
    /// that also disables deletions.
    Io(String),
    /// Not sent, said as rsync says it ("skipping non-regular file ...").
    Skipped(String),
    /// A source argument that does not exist: an error of the transfer
    /// (exit 23), but unlike [`Problem::Io`] it does not stop deletions,
    /// as in rsync.
    Missing(String),
}

/// The list, and what went wrong while making it.
#[derive(Debug, Default)]
pub struct FileList {
    pub entries: Vec<Entry>,
    pub problems: Vec<Problem>,
    /// For each folder entry (by index), the names of its children in the
    /// list.
    pub children: std::collections::HashMap<usize, Vec<Vec<u8>>>,
    /// The folder (by index) whose listing met the first I/O error: rsync
    /// deletes in the folders before it, not in it or after.
    pub first_io_error: Option<usize>,
}

impl FileList {
    /// Notes an I/O error met while listing the folder at index `at`.
    fn io_error_at(&mut self, at: usize, problem: Problem) {
        self.first_io_error = Some(self.first_io_error.map_or(at, |k| k.min(at)));
        self.problems.push(problem);
    }

    pub fn io_error(&self) -> bool {
        self.problems.iter().any(|p| matches!(p, Problem::Io(_)))
    }
}

/// What the walk needs to know of the plan.
pub struct Walk<'a> {
    pub recursive: bool,
    pub dirs: bool,
    pub links: bool,
    pub devices: bool,
    pub specials: bool,
    pub one_file_system: bool,
    pub filters: &'a Filters,
    /// `--chmod`, applied to permissions as they are read.
    pub chmod: Option<&'a intersync_compat::chmod::Chmod>,
}

/// rsync's order of the children of one folder.
fn sort_children(v: &mut [Entry]) {
    v.sort_by(|a, b| {
        let key = |e: &Entry| {
            let mut n = e.name.rsplit(|&c| c == b'/').next().unwrap_or(&[]).to_vec();
            if e.kind == Kind::Dir {
                n.push(b'/');
            }
            (e.kind == Kind::Dir, n)
        };
        key(a).cmp(&key(b))
    });
}

impl<'a> Walk<'a> {
    /// The walk an rsync command line asks for.
    pub fn of(plan: &'a intersync_compat::options::Plan) -> Walk<'a> {
        Walk {
            recursive: plan.recursive,
            dirs: plan.dirs,
            links: plan.links,
            devices: plan.devices,
            specials: plan.specials,
            one_file_system: plan.one_file_system,
            filters: &plan.filters,
            chmod: plan.chmod.as_ref(),
        }
    }
}

impl Walk<'_> {
    /// The entry as the sender describes it: `--chmod` applied.
    fn adjust(&self, mut e: Entry) -> Entry {
        if let Some(c) = self.chmod
            && !matches!(e.kind, Kind::Symlink(_))
        {
            e.mode = (e.mode & !0o7777) | c.apply(e.mode, e.kind == Kind::Dir);
        }
        e
    }

    /// Lists one source argument. `contents` is its trailing slash: the
    /// folder's contents go into the destination, not the folder.
    pub fn list(&self, source: &Path, contents: bool, list: &mut FileList) {
        let meta = match std::fs::symlink_metadata(source) {
            Ok(m) => m,
            Err(e) => {
                list.problems.push(Problem::Missing(format!(
                    "link_stat \"{}\" failed: {}",
                    absolute(source).display(),
                    os_error(&e)
                )));
                return;
            }
        };
        let mut filters = self.filters.clone();
        if contents && meta.is_dir() {
            if !self.recursive && !self.dirs {
                list.problems
                    .push(Problem::Skipped("skipping directory .".into()));
                return;
            }
            if let Err(e) = filters.enter_root(&absolute(source), &LocalFiles) {
                list.io_error_at(0, Problem::Io(e.to_string()));
                return;
            }
            let root = match Entry::from_meta(Vec::new(), source.to_path_buf(), &meta) {
                Ok(e) => self.adjust(e),
                Err(e) => {
                    list.io_error_at(0, Problem::Io(os_error(&e)));
                    return;
                }
            };
            let dev = root.dev;
            list.entries.push(root);
            let at = list.entries.len() - 1;
            // The root's merge files were read by enter_root.
            self.walk_dir(&mut filters, source, b"", at, dev, list, true);
            return;
        }
        // "src" without a slash: the transfer root is its parent and "src"
        // is one name in it.
        let name = source
            .file_name()
            .map(|n| n.as_bytes().to_vec())
            .unwrap_or_else(|| b".".to_vec());
        let parent = absolute(source)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"));
        if let Err(e) = filters.enter_root(&parent, &LocalFiles) {
            list.io_error_at(0, Problem::Io(e.to_string()));
            return;
        }
        let entry = match Entry::from_meta(name.clone(), source.to_path_buf(), &meta) {
            Ok(e) => self.adjust(e),
            Err(e) => {
                list.io_error_at(0, Problem::Io(os_error(&e)));
                return;
            }
        };
        if filters.excluded(&name, entry.kind == Kind::Dir, Side::Sender) {
            return;
        }
        if !self.admit(&entry, list) {
            return;
        }
        let is_dir = entry.kind == Kind::Dir;
        let dev = entry.dev;
        list.entries.push(entry);
        if is_dir && self.recursive {
            let at = list.entries.len() - 1;
            self.walk_dir(&mut filters, source, &name, at, dev, list, false);
        }
    }

    /// Puts the children of the folder at `at` into the list in rsync's
    /// order: its non-folders now, its subfolders returned to be listed
    /// each with its own contents after them.
    fn place(&self, mut kids: Vec<Entry>, at: usize, list: &mut FileList) -> Vec<Entry> {
        sort_children(&mut kids);
        let mut names = Vec::new();
        let mut subdirs = Vec::new();
        for kid in kids {
            if !self.admit(&kid, list) {
                continue;
            }
            let base = kid.name.rsplit(|&c| c == b'/').next().unwrap_or(&[]);
            names.push(base.to_vec());
            if kid.kind == Kind::Dir {
                subdirs.push(kid);
            } else {
                list.entries.push(kid);
            }
        }
        list.children.insert(at, names);
        subdirs
    }

    /// Whether the kind of `entry` is sent, noting why not.
    fn admit(&self, entry: &Entry, list: &mut FileList) -> bool {
        let said = |list: &mut FileList, what: &str| {
            list.problems.push(Problem::Skipped(format!(
                "skipping {what} \"{}\"",
                String::from_utf8_lossy(&entry.name)
            )));
            false
        };
        match entry.kind {
            Kind::Dir if !self.recursive && !self.dirs => said(list, "directory"),
            Kind::Symlink(_) if !self.links => said(list, "non-regular file"),
            Kind::Device { .. } if !self.devices => said(list, "non-regular file"),
            Kind::Special { .. } if !self.specials => said(list, "non-regular file"),
            _ => true,
        }
    }

    /// The list entry of one item of the folder `rel` (at index `at`);
    /// `None` when it vanished or could not be looked at (said in `list`).
    fn entry_of(
        &self,
        item: &std::fs::DirEntry,
        rel: &[u8],
        at: usize,
        list: &mut FileList,
    ) -> Option<Entry> {
        let mut name = rel.to_vec();
        if !name.is_empty() {
            name.push(b'/');
        }
        name.extend_from_slice(item.file_name().as_bytes());
        let path = item.path();
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) => {
                // Gone between readdir and stat: not an error (rsync says
                // nothing either).
                if e.kind() != std::io::ErrorKind::NotFound {
                    list.io_error_at(
                        at,
                        Problem::Io(format!(
                            "link_stat \"{}\" failed: {}",
                            absolute(&path).display(),
                            os_error(&e)
                        )),
                    );
                }
                return None;
            }
        };
        match Entry::from_meta(name, path, &meta) {
            Ok(e) => Some(self.adjust(e)),
            Err(e) => {
                list.io_error_at(at, Problem::Io(os_error(&e)));
                None
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn walk_dir(
        &self,
        filters: &mut Filters,
        dir: &Path,
        rel: &[u8],
        at: usize,
        root_dev: u64,
        list: &mut FileList,
        is_root: bool,
    ) {
        if !is_root && let Err(e) = filters.enter_dir(rel, dir, &LocalFiles) {
            list.io_error_at(at, Problem::Io(e.to_string()));
            return;
        }
        let read = match std::fs::read_dir(dir) {
            Ok(r) => r,
            Err(e) => {
                list.io_error_at(
                    at,
                    Problem::Io(format!(
                        "opendir \"{}\" failed: {}",
                        absolute(dir).display(),
                        os_error(&e)
                    )),
                );
                // It lists as empty: with --ignore-errors, rsync deletes
                // what the destination has there.
                list.children.insert(at, Vec::new());
                if !is_root {
                    filters.leave_dir();
                }
                return;
            }
        };
        let mut kids = Vec::new();
        for item in read {
            let item = match item {
                Ok(i) => i,
                Err(e) => {
                    list.io_error_at(
                        at,
                        Problem::Io(format!(
                            "readdir \"{}\" failed: {}",
                            absolute(dir).display(),
                            os_error(&e)
                        )),
                    );
                    continue;
                }
            };
            if let Some(entry) = self.entry_of(&item, rel, at, list)
                && !filters.excluded(&entry.name, entry.kind == Kind::Dir, Side::Sender)
            {
                kids.push(entry);
            }
        }
        let subdirs = self.place(kids, at, list);
        // Depth first: each subfolder comes with its own listing, after
        // the folder's non-folders.
        for sub in subdirs {
            let descend = self.recursive && !(self.one_file_system && sub.dev != root_dev);
            let (path, name) = (sub.path.clone(), sub.name.clone());
            list.entries.push(sub);
            let sub_at = list.entries.len() - 1;
            if descend {
                self.walk_dir(filters, &path, &name, sub_at, root_dev, list, false);
            }
        }
        if !is_root {
            filters.leave_dir();
        }
    }
}

/// Lists an export's tree (its root's contents) as rsync's sender would,
/// judged by the sender-side rules. Per-directory merge files are not read
/// from an export.
pub fn list_export(tree: &crate::tree::TreeState, walk: &Walk, list: &mut FileList) {
    use crate::tree::EntryKind;
    use std::collections::BTreeMap;
    let mut kids: BTreeMap<Vec<u8>, Vec<Entry>> = BTreeMap::new();
    for (path, e) in tree.iter() {
        let name = path.as_str().as_bytes().to_vec();
        let parent = match name.iter().rposition(|&b| b == b'/') {
            Some(i) => name[..i].to_vec(),
            None => Vec::new(),
        };
        let (kind, type_bits, size) = match &e.kind {
            EntryKind::File { size, .. } => (Kind::File, libc::S_IFREG, *size),
            EntryKind::Dir => (Kind::Dir, libc::S_IFDIR, 0),
            EntryKind::Symlink { target } => (Kind::Symlink(target.clone()), libc::S_IFLNK, 0),
        };
        let entry = Entry {
            name,
            kind,
            mode: (e.mode & 0o7777) | type_bits,
            uid: e.uid,
            gid: e.gid,
            size,
            mtime: e.mtime_ns.div_euclid(1_000_000_000),
            mtime_nsec: e.mtime_ns.rem_euclid(1_000_000_000) as u32,
            dev: 0,
            ino: 0,
            nlink: 1,
            path: PathBuf::from(path.as_str()),
            remote: Some((path.clone(), e.clone())),
            bare: false,
            time_unknown: !matches!(e.kind, EntryKind::File { .. }),
        };
        kids.entry(parent).or_default().push(walk.adjust(entry));
    }
    let mut filters = walk.filters.clone();
    let _ = filters.enter_root(Path::new("/"), &NoFiles);
    list.entries.push(Entry {
        name: Vec::new(),
        kind: Kind::Dir,
        mode: 0o755 | libc::S_IFDIR,
        uid: 0,
        gid: 0,
        size: 0,
        mtime: 0,
        mtime_nsec: 0,
        dev: 0,
        ino: 0,
        nlink: 1,
        path: PathBuf::new(),
        remote: None,
        bare: true,
        time_unknown: true,
    });
    export_dir(walk, &filters, &mut kids, Vec::new(), 0, list);
}

fn export_dir(
    walk: &Walk,
    filters: &Filters,
    kids: &mut std::collections::BTreeMap<Vec<u8>, Vec<Entry>>,
    dir: Vec<u8>,
    at: usize,
    list: &mut FileList,
) {
    let mine: Vec<Entry> = kids
        .remove(&dir)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| !filters.excluded(&e.name, e.kind == Kind::Dir, Side::Sender))
        .collect();
    let subdirs = walk.place(mine, at, list);
    for sub in subdirs {
        let name = sub.name.clone();
        list.entries.push(sub);
        let sub_at = list.entries.len() - 1;
        if walk.recursive {
            export_dir(walk, filters, kids, name, sub_at, list);
        }
    }
}

/// No merge files: an export's per-directory files are not read.
pub(crate) struct NoFiles;

impl intersync_compat::filter::RuleSource for NoFiles {
    fn read(&self, _: &Path) -> std::io::Result<Option<Vec<u8>>> {
        Ok(None)
    }
}

/// `path` made absolute against the current folder (without resolving
/// symlinks), for messages and the `/` filter modifier.
pub fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_path_buf();
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let mut out = cwd;
    for c in path.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// An I/O error as rsync prints it: "No such file or directory (2)".
pub fn os_error(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => {
            let text = e.to_string();
            let text = text.split(" (os error").next().unwrap_or(&text).to_string();
            format!("{text} ({n})")
        }
        None => e.to_string(),
    }
}
