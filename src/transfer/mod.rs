//! An rsync-style transfer between local folders: the [`Plan`] of an rsync
//! command line carried out with rsync's semantics (which files are
//! skipped by the quick check, which attributes are kept, what is deleted
//! and when, what is itemized), so that `intersync -a src/ dst/` leaves
//! the same tree and exit code as `rsync -a src/ dst/`.
//!
//! The parts: [`flist`] lists the sources as rsync's sender does; this
//! module is the receiver. Files are copied whole (as rsync does between
//! local folders), into a temporary file beside the target that is renamed
//! over it once complete, so no file is ever seen half-written.
//!
//! What it trusts: the local file system. Names come from directory
//! listings (never containing `/` or `..`); an existing destination entry
//! of another type (a symlink where a folder goes, say) is replaced, never
//! followed.
//!
//! The library never prints: everything rsync would say is an [`Event`].

pub mod flist;
mod push;

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use intersync_compat::ExitCode;
use intersync_compat::filter::{Filters, LocalFiles};
use intersync_compat::options::{DeleteMode, Location, Plan};
use intersync_compat::output::{Count, Stats};

use flist::{Entry, FileList, Kind, Problem, Walk, os_error};

/// What the transfer has to say, in the order rsync would say it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// `created directory DEST` (or `created N directories for DEST`).
    CreatedDest(String),
    /// An item of the list and what happened to it: rsync's 11-character
    /// itemize string (`>f.st......`), the name as printed, a symlink's
    /// target; `changed` when `-i` shows it (`-ii` shows every item).
    Item {
        itemize: String,
        name: String,
        target: Option<String>,
        changed: bool,
        /// A file's content was copied (what `-v` lists).
        transferred: bool,
    },
    /// A destination item deleted (`*deleting   NAME`).
    Deleted(String),
    /// A file copied so far: bytes done of size.
    Progress { name: String, done: u64, size: u64 },
    /// Information rsync prints on stdout ("skipping directory .").
    Info(String),
    /// An error rsync prints on stderr; the exit code says how bad.
    Error(String),
}

pub(crate) fn count(c: &mut Count, kind: &Kind) {
    match kind {
        Kind::File => c.reg += 1,
        Kind::Dir => c.dir += 1,
        Kind::Symlink(_) => c.link += 1,
        Kind::Device { .. } => c.dev += 1,
        Kind::Special { .. } => c.special += 1,
    }
}

impl Event {
    /// The itemize event of a list entry.
    fn item(itemize: String, e: &Entry, changed: bool, transferred: bool) -> Event {
        Event::Item {
            itemize,
            name: e.display(),
            target: match &e.kind {
                Kind::Symlink(t) => Some(String::from_utf8_lossy(t).into_owned()),
                _ => None,
            },
            changed,
            transferred,
        }
    }
}

/// How a transfer ended.
#[derive(Debug)]
pub struct Outcome {
    pub stats: Stats,
    pub exit: ExitCode,
}

/// The receiving side's state.
struct Receiver<'a> {
    plan: &'a Plan,
    events: &'a mut dyn FnMut(Event),
    stats: Stats,
    umask: u32,
    am_root: bool,
    errors: bool,
    vanished: bool,
    deletions_left: Option<u64>,
    deletions_skipped: u64,
    /// Folders whose times and modes are set once their contents are done.
    dir_fixups: Vec<(PathBuf, Entry, bool)>,
    /// Times set last on items that are not folders (an rsync quirk).
    time_fixups: Vec<(PathBuf, i64, u32)>,
    /// Where each (dev, ino) of the sources went, and its name, for `-H`.
    linked: std::collections::HashMap<(u64, u64), (PathBuf, String)>,
    started: Instant,
    /// The destination folder was made by this transfer: its root entry
    /// is new.
    made_dest: bool,
    /// Where an export's files come from.
    export: Option<Export>,
    /// rsync's "IO error encountered -- skipping file deletion" was said.
    said_io_error: bool,
}

/// An export a transfer reads from.
pub struct Export {
    pub runtime: tokio::runtime::Runtime,
    pub remote: crate::transport::HttpRemote,
}

/// Carries out `plan`: between local folders, or from an export (an
/// `http(s)://` source) into a local folder.
pub fn run(plan: &Plan, events: &mut dyn FnMut(Event)) -> Outcome {
    let started = Instant::now();
    if let Location::Url(url) = &plan.dest {
        return push_to(plan, url, events);
    }
    let Location::Local {
        path: dest,
        contents: dest_slash,
    } = &plan.dest
    else {
        unreachable!("a destination is a path or a URL");
    };
    let (lists, export) = match list_sources(plan, events) {
        Ok(listed) => listed,
        Err(exit) => {
            return Outcome {
                stats: Stats::default(),
                exit,
            };
        }
    };
    let mut receiver = Receiver {
        plan,
        events,
        stats: Stats::default(),
        umask: current_umask(),
        am_root: rustix::process::geteuid().is_root(),
        errors: false,
        vanished: false,
        deletions_left: plan.max_delete,
        deletions_skipped: 0,
        dir_fixups: Vec::new(),
        time_fixups: Vec::new(),
        linked: Default::default(),
        started,
        made_dest: false,
        export,
        said_io_error: false,
    };
    receiver.stats.file_list_seconds = started.elapsed().as_secs_f64();
    for list in &lists {
        for p in &list.problems {
            match p {
                Problem::Io(msg) | Problem::Missing(msg) => {
                    receiver.errors = true;
                    (receiver.events)(Event::Error(format!("[sender] {msg}")));
                }
                Problem::Skipped(msg) => (receiver.events)(Event::Info(msg.clone())),
            }
        }
    }
    if lists.iter().all(|l| l.entries.is_empty()) {
        return receiver.finish();
    }
    let target_file = match receiver.prepare_dest(&lists, dest, *dest_slash) {
        Ok(target_file) => target_file,
        Err(code) => return receiver.finish_with(code),
    };
    for list in &lists {
        receiver.transfer_list(list, dest, target_file);
    }
    receiver.fix_dirs();
    receiver.finish()
}

/// One list per source, each with its own transfer root; the export when
/// the source is one.
fn list_sources(
    plan: &Plan,
    events: &mut dyn FnMut(Event),
) -> Result<(Vec<FileList>, Option<Export>), ExitCode> {
    let walk = Walk::of(plan);
    let mut lists = Vec::new();
    let mut export = None;
    for source in &plan.sources {
        let mut list = FileList::default();
        match source {
            Location::Local { path, contents } => walk.list(path, *contents, &mut list),
            Location::Url(url) => {
                if plan.sources.len() > 1 {
                    events(Event::Error(
                        "an export must be the only source of a transfer".into(),
                    ));
                    return Err(ExitCode::Unsupported);
                }
                match open_export(url, plan) {
                    Ok((found, tree)) => {
                        flist::list_export(&tree, &walk, &mut list);
                        export = Some(found);
                    }
                    Err((code, message)) => {
                        events(Event::Error(message));
                        return Err(code);
                    }
                }
            }
        }
        if plan.prune_empty_dirs {
            prune_empty_dirs(&mut list);
        }
        lists.push(list);
    }
    Ok((lists, export))
}

/// A push: the local sources to the export at `url`.
fn push_to(plan: &Plan, url: &str, events: &mut dyn FnMut(Event)) -> Outcome {
    let walk = Walk::of(plan);
    let mut lists = Vec::new();
    for source in &plan.sources {
        let Location::Local { path, contents } = source else {
            events(Event::Error(
                "from one export to another: not supported".into(),
            ));
            return Outcome {
                stats: Stats::default(),
                exit: ExitCode::Unsupported,
            };
        };
        let mut list = FileList::default();
        walk.list(path, *contents, &mut list);
        for p in &list.problems {
            match p {
                Problem::Io(msg) | Problem::Missing(msg) => {
                    events(Event::Error(format!("[sender] {msg}")))
                }
                Problem::Skipped(msg) => events(Event::Info(msg.clone())),
            }
        }
        lists.push(list);
    }
    match open_export(url, plan) {
        Ok((export, tree)) => push::push(plan, &lists, &export, &tree, events),
        Err((code, message)) => {
            events(Event::Error(message));
            Outcome {
                stats: Stats::default(),
                exit: code,
            }
        }
    }
}

/// Connects to the export at `url` and reads its tree; on failure, rsync's
/// exit code and the message.
fn open_export(
    url: &str,
    plan: &Plan,
) -> Result<(Export, crate::tree::TreeState), (ExitCode, String)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| (ExitCode::Ipc, format!("cannot start the runtime: {e}")))?;
    let token = std::env::var("INTERSYNC_TOKEN").ok();
    let remote = crate::transport::HttpRemote::new(url, token, None)
        .map_err(|e| (ExitCode::Syntax, e.to_string()))?
        .with_bwlimit(plan.bwlimit)
        .with_header(
            crate::server::modules::HEADER_RSYNC_OPTIONS,
            plan.option_names.join(" "),
        );
    let tree = runtime
        .block_on(crate::client::export_tree(&remote))
        .map_err(|e| {
            let code = if matches!(
                e,
                crate::client::SyncError::Transport(crate::transport::TransportError::Refused {
                    status: 501,
                    ..
                })
            ) {
                // A module's `refuse options`.
                ExitCode::Unsupported
            } else if e.is_auth() {
                ExitCode::StartClient
            } else if e.is_unreachable() {
                ExitCode::SocketIo
            } else {
                ExitCode::StreamIo
            };
            (code, format!("{url}: {}", crate::monitor::Chain(&e)))
        })?;
    Ok((Export { runtime, remote }, tree))
}

/// Drops folders with nothing but folders in them (rsync's `-m`).
fn prune_empty_dirs(list: &mut FileList) {
    loop {
        let names: std::collections::HashSet<Vec<u8>> =
            list.entries.iter().map(|e| e.name.clone()).collect();
        let mut has_child: std::collections::HashSet<Vec<u8>> = Default::default();
        for name in &names {
            if let Some(i) = name.iter().rposition(|&b| b == b'/') {
                has_child.insert(name[..i].to_vec());
            } else if !name.is_empty() {
                has_child.insert(Vec::new());
            }
        }
        let before = list.entries.len();
        list.entries
            .retain(|e| e.kind != Kind::Dir || e.name.is_empty() || has_child.contains(&e.name));
        if list.entries.len() == before {
            return;
        }
    }
}

pub(crate) fn current_umask() -> u32 {
    use rustix::fs::Mode;
    // umask can only be read by setting it; set it straight back.
    let m = rustix::process::umask(Mode::from_raw_mode(0o022));
    rustix::process::umask(m);
    m.as_raw_mode()
}

/// Two mtimes the same, within `--modify-window`.
pub(crate) fn same_mtime(plan: &Plan, a: (i64, u32), b: (i64, u32)) -> bool {
    if plan.modify_window < 0 {
        a == b
    } else {
        (a.0 - b.0).abs() <= plan.modify_window
    }
}

/// rsync's itemize string for an item that is not new.
fn itemize(update: char, kind: char, flags: &str) -> String {
    // flags: the 9 attribute letters; '.' where unchanged.
    format!("{update}{kind}{flags}")
}

impl Receiver<'_> {
    fn say(&mut self, e: Event) {
        (self.events)(e);
    }

    /// Makes sure the items have somewhere to go: the destination folder
    /// (made if need be), or for a single file the folder that will hold
    /// it. Whether the destination names that single file.
    fn prepare_dest(
        &mut self,
        lists: &[FileList],
        dest: &Path,
        dest_slash: bool,
    ) -> Result<bool, ExitCode> {
        let plan = self.plan;
        let single_file = lists.len() == 1
            && lists[0].entries.len() == 1
            && lists[0].entries[0].kind != Kind::Dir
            && plan.sources.len() == 1;
        let dest_meta = std::fs::symlink_metadata(dest).ok();
        let dest_is_dir = dest_meta.as_ref().is_some_and(|m| m.is_dir());
        let target_file = single_file && !dest_is_dir && !dest_slash;
        // A list of just the root folder makes the destination as that item.
        let only_root = lists.iter().map(|l| l.entries.len()).sum::<usize>() == 1
            && lists
                .iter()
                .any(|l| l.entries.first().is_some_and(|e| e.name.is_empty()));
        if !dest_is_dir && !target_file && !only_root {
            if dest_meta.as_ref().is_some_and(|m| !m.is_dir()) {
                (self.events)(Event::Error(format!(
                    "ERROR: destination must be a directory when copying more than 1 file: {}",
                    dest.display()
                )));
                self.errors = true;
                return Err(ExitCode::FileSelect);
            }
            self.make_dest(dest)?;
        } else if target_file {
            let parent = dest
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if !parent.is_dir() {
                if !plan.mkpath {
                    (self.events)(Event::Error(format!(
                        "[Receiver] change_dir#3 \"{}\" failed: No such file or directory (2)",
                        flist::absolute(parent).display()
                    )));
                    return Err(ExitCode::FileSelect);
                }
                self.make_dest(parent)?;
            }
        }
        Ok(target_file)
    }

    /// After an I/O error in the sources rsync deletes nothing more (unless
    /// --ignore-errors), and says so once.
    fn skip_deletions(&mut self) {
        if !self.said_io_error {
            self.said_io_error = true;
            // rsync says it on stdout.
            (self.events)(Event::Info(
                "IO error encountered -- skipping file deletion".into(),
            ));
        }
    }

    /// Deletions before or after a list, unless its listing met an I/O
    /// error (and --ignore-errors was not given).
    fn deletions_of(&mut self, list: &FileList, dest: &Path) {
        if list.first_io_error.is_none() || self.plan.ignore_errors {
            self.deletion_pass(list, dest);
        } else {
            self.skip_deletions();
        }
    }

    /// Every item of one source's list, with the deletions `--delete`'s
    /// timing puts around and among them.
    fn transfer_list(&mut self, list: &FileList, dest: &Path, target_file: bool) {
        let plan = self.plan;
        let delete = plan.delete;
        if delete == Some(DeleteMode::Before) {
            self.deletions_of(list, dest);
        }
        // With -H, the last of each group of hard links is copied and the
        // others are linked to it once it is in place (as rsync does).
        let mut master: std::collections::HashMap<(u64, u64), usize> = Default::default();
        if plan.hard_links {
            for (i, e) in list.entries.iter().enumerate() {
                if e.kind == Kind::File && e.nlink > 1 {
                    master.insert((e.dev, e.ino), i);
                }
            }
        }
        let mut deferred = Vec::new();
        for (i, entry) in list.entries.iter().enumerate() {
            let path = if target_file || entry.name.is_empty() {
                dest.to_path_buf()
            } else {
                dest.join(OsStr::from_bytes(&entry.name))
            };
            count(&mut self.stats.files, &entry.kind);
            match &entry.kind {
                Kind::File => self.stats.total_size += entry.size,
                Kind::Symlink(t) => self.stats.total_size += t.len() as u64,
                _ => {}
            }
            if master
                .get(&(entry.dev, entry.ino))
                .is_some_and(|&m| m != i && entry.kind == Kind::File)
            {
                deferred.push((entry, path));
                continue;
            }
            let is_dir_ok = self.item(entry, &path);
            if entry.kind != Kind::Dir || delete != Some(DeleteMode::During) {
                continue;
            }
            match list.children.get(&i) {
                Some(names) if is_dir_ok => {
                    if plan.ignore_errors || list.first_io_error.is_none_or(|k| i < k) {
                        self.delete_in_dir(&entry.name, &path, names, dest);
                    } else {
                        self.skip_deletions();
                    }
                }
                _ if !plan.ignore_errors && list.first_io_error == Some(i) => self.skip_deletions(),
                _ => {}
            }
        }
        for (entry, path) in deferred {
            self.item(entry, &path);
        }
        if matches!(delete, Some(DeleteMode::After | DeleteMode::Delay)) {
            self.deletions_of(list, dest);
        }
    }

    fn finish(self) -> Outcome {
        let code = if self.errors {
            ExitCode::Partial
        } else if self.vanished {
            ExitCode::Vanished
        } else if self.deletions_skipped > 0 {
            ExitCode::DelLimit
        } else {
            ExitCode::Ok
        };
        self.finish_with(code)
    }

    fn finish_with(mut self, code: ExitCode) -> Outcome {
        // Between local folders the bytes that move are the literal data;
        // rsync's own figures add its protocol's overhead.
        self.stats.sent_bytes = self.stats.literal_bytes;
        if let Some(export) = &self.export {
            use crate::transport::Remote;
            let t = export.remote.traffic();
            self.stats.sent_bytes = t.sent_bytes;
            self.stats.received_bytes = t.received_bytes;
        }
        self.stats.seconds = self.started.elapsed().as_secs_f64();
        if self.deletions_skipped > 0 {
            let n = self.deletions_skipped;
            self.say(Event::Error(format!(
                "Deletions stopped due to --max-delete limit ({n} skipped)"
            )));
        }
        Outcome {
            stats: self.stats,
            exit: code,
        }
    }

    fn make_dest(&mut self, dest: &Path) -> Result<(), ExitCode> {
        if dest.is_dir() {
            return Ok(());
        }
        let parent = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut missing = Vec::new();
        if self.plan.mkpath {
            let mut p = parent.to_path_buf();
            while !p.as_os_str().is_empty() && !p.is_dir() {
                missing.push(p.clone());
                if !p.pop() {
                    break;
                }
            }
        }
        if self.plan.dry_run {
            self.made_dest = true;
            self.say(Event::CreatedDest(format!(
                "created directory {}",
                shown(dest)
            )));
            return Ok(());
        }
        let made = if self.plan.mkpath {
            std::fs::create_dir_all(dest)
        } else {
            std::fs::create_dir(dest)
        };
        if let Err(e) = made {
            self.say(Event::Error(format!(
                "[Receiver] mkdir \"{}\" failed: {}",
                flist::absolute(dest).display(),
                os_error(&e)
            )));
            return Err(ExitCode::FileIo);
        }
        // rsync treats a destination --mkpath made as one that existed.
        self.made_dest = missing.is_empty();
        let text = if missing.is_empty() {
            format!("created directory {}", shown(dest))
        } else {
            let n = missing.len() + 1;
            format!("created {n} directories for {}", shown(dest))
        };
        self.say(Event::CreatedDest(text));
        Ok(())
    }

    /// Brings one item of the list into place; for a folder, whether it
    /// now exists (so its contents and deletions may follow).
    fn item(&mut self, e: &Entry, path: &Path) -> bool {
        let plan = self.plan;
        let existing = std::fs::symlink_metadata(path).ok();
        if plan.existing && existing.is_none() {
            return false;
        }
        if plan.ignore_existing
            && let Some(meta) = &existing
            && !(e.kind == Kind::Dir && meta.is_dir())
        {
            if e.kind == Kind::Dir && plan.times && !plan.omit_dir_times && !plan.dry_run {
                // rsync still sets the folder's time on what is there.
                self.time_fixups
                    .push((path.to_path_buf(), e.mtime, e.mtime_nsec));
            }
            return false;
        }
        if e.kind == Kind::File
            && (plan.max_size.is_some_and(|m| e.size > m)
                || plan.min_size.is_some_and(|m| e.size < m))
        {
            return false;
        }
        // Something of another kind is in the way: replace it.
        let mut existing = existing;
        if let Some(meta) = &existing {
            let same_kind = match e.kind {
                Kind::File => meta.is_file(),
                Kind::Dir => meta.is_dir(),
                Kind::Symlink(_) => meta.file_type().is_symlink(),
                Kind::Device { .. } | Kind::Special { .. } => {
                    let ft = meta.file_type();
                    !(ft.is_file() || ft.is_dir() || ft.is_symlink())
                }
            };
            if !same_kind {
                if meta.is_dir() && plan.delete.is_none() && !dir_is_empty(path) {
                    // Only deletions may take a folder's contents with it.
                    self.say(Event::Info(format!(
                        "cannot delete non-empty directory: {}",
                        String::from_utf8_lossy(&e.name)
                    )));
                    self.no_room(e);
                    return false;
                }
                // Under --delete a folder's contents are deletions like any
                // other, and count against --max-delete.
                if meta.is_dir() && !self.delete_contents(&Filters::new(false), &e.name, path) {
                    self.say(Event::Info(format!(
                        "cannot delete non-empty directory: {}",
                        String::from_utf8_lossy(&e.name)
                    )));
                    self.no_room(e);
                    return false;
                }
                if !plan.dry_run
                    && let Err(err) = remove_any(path, meta.is_dir())
                {
                    self.errors = true;
                    self.say(Event::Error(format!(
                        "delete_file: unlink \"{}\" failed: {}",
                        path.display(),
                        os_error(&err)
                    )));
                    return false;
                }
                existing = None;
            }
        }
        match &e.kind {
            Kind::Dir => self.dir(e, path, existing.as_ref()),
            Kind::File => {
                self.file(e, path, existing.as_ref());
                false
            }
            Kind::Symlink(target) => {
                self.symlink(e, path, target, existing.as_ref());
                false
            }
            Kind::Device { .. } | Kind::Special { .. } => {
                self.node(e, path, existing.as_ref());
                false
            }
        }
    }

    /// rsync's error when something in the way could not be removed.
    fn no_room(&mut self, e: &Entry) {
        let what = match e.kind {
            Kind::File => "regular file",
            Kind::Symlink(_) => "symlink",
            Kind::Device { .. } => "device file",
            _ => "special file",
        };
        self.errors = true;
        self.say(Event::Error(format!(
            "could not make way for new {what}: {}",
            String::from_utf8_lossy(&e.name)
        )));
    }

    /// The attribute letters (positions 3 to 11) for an existing item.
    fn attr_flags(&self, e: &Entry, meta: &std::fs::Metadata, content: char, size: bool) -> String {
        let plan = self.plan;
        let mut f = ['.'; 9];
        if e.bare {
            return f.iter().collect();
        }
        f[0] = content;
        if size {
            f[1] = 's';
        }
        let time_applies = match e.kind {
            Kind::Dir => plan.times && !plan.omit_dir_times,
            Kind::Device { .. } | Kind::Special { .. } | Kind::File | Kind::Symlink(_) => {
                plan.times
            }
        };
        if time_applies
            && !e.time_unknown
            && !same_mtime(
                plan,
                (e.mtime, e.mtime_nsec),
                (meta.mtime(), meta.mtime_nsec() as u32),
            )
        {
            f[2] = 't';
        }
        if plan.perms
            && !matches!(e.kind, Kind::Symlink(_))
            && (e.mode & 0o7777) != (meta.mode() & 0o7777)
        {
            f[3] = 'p';
        }
        if plan.owner && self.am_root && e.uid != meta.uid() {
            f[4] = 'o';
        }
        if plan.group && e.gid != meta.gid() {
            f[5] = 'g';
        }
        f.iter().collect()
    }

    fn report(&mut self, update: char, e: &Entry, flags: Option<String>, transferred: bool) {
        let kind = e.kind.letter();
        let (itemize, changed) = match flags {
            None => (format!("{update}{kind}+++++++++"), true),
            Some(f) => {
                let quiet = f.chars().all(|c| c == '.');
                if quiet && update == '.' {
                    (format!(".{kind}         "), false)
                } else {
                    (itemize(update, kind, &f), true)
                }
            }
        };
        self.say(Event::item(itemize, e, changed, transferred));
    }

    fn dir(&mut self, e: &Entry, path: &Path, existing: Option<&std::fs::Metadata>) -> bool {
        let plan = self.plan;
        if e.name.is_empty() && self.made_dest {
            // The folder made for the destination is this root.
            count(&mut self.stats.created, &e.kind);
            self.report('c', e, None, false);
            if !plan.dry_run {
                self.dir_fixups.push((path.to_path_buf(), e.clone(), true));
            }
            return !plan.dry_run;
        }
        match existing {
            None => {
                count(&mut self.stats.created, &e.kind);
                self.report('c', e, None, false);
                if plan.dry_run {
                    return false;
                }
                if let Err(err) = std::fs::create_dir(path) {
                    self.errors = true;
                    self.say(Event::Error(format!(
                        "recv_generator: mkdir \"{}\" failed: {}",
                        flist::absolute(path).display(),
                        os_error(&err)
                    )));
                    return false;
                }
                // Writable by us until its contents are in.
                let mode = self.new_mode(e) | 0o700;
                let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
                self.dir_fixups.push((path.to_path_buf(), e.clone(), true));
                true
            }
            Some(meta) => {
                let flags = self.attr_flags(e, meta, '.', false);
                self.report('.', e, Some(flags), false);
                if !plan.dry_run {
                    self.dir_fixups.push((path.to_path_buf(), e.clone(), false));
                }
                true
            }
        }
    }

    /// The mode of a new item without `-p`: the source's, less the umask.
    fn new_mode(&self, e: &Entry) -> u32 {
        if self.plan.perms {
            e.mode & 0o7777
        } else {
            e.mode & 0o777 & !self.umask
        }
    }

    fn file(&mut self, e: &Entry, path: &Path, existing: Option<&std::fs::Metadata>) {
        let plan = self.plan;
        if plan.hard_links
            && e.nlink > 1
            && let Some((first, first_name)) = self.linked.get(&(e.dev, e.ino)).cloned()
        {
            self.hard_link(e, path, &first, &first_name, existing);
            return;
        }
        if let Some(meta) = existing {
            if plan.update
                && (meta.mtime(), meta.mtime_nsec() as u32) > (e.mtime, e.mtime_nsec)
                && !same_mtime(
                    plan,
                    (e.mtime, e.mtime_nsec),
                    (meta.mtime(), meta.mtime_nsec() as u32),
                )
            {
                return;
            }
            let size_differs = meta.len() != e.size;
            let mut content = '.';
            let unchanged = if plan.checksum {
                let same = !size_differs
                    && match &e.remote {
                        // An export's versions are the BLAKE3 of the content.
                        Some((_, entry)) => crate::tree::scan::hash_file(path)
                            .is_ok_and(|v| Some(v) == entry.version()),
                        None => same_content(&e.path, path).unwrap_or(false),
                    };
                if !same {
                    content = 'c';
                }
                same
            } else if plan.size_only {
                !size_differs
            } else if plan.ignore_times {
                false
            } else {
                !size_differs
                    && same_mtime(
                        plan,
                        (e.mtime, e.mtime_nsec),
                        (meta.mtime(), meta.mtime_nsec() as u32),
                    )
            };
            if unchanged {
                let flags = self.attr_flags(e, meta, '.', false);
                self.report('.', e, Some(flags), false);
                if !plan.dry_run {
                    self.set_attrs(e, path, Some(meta), false);
                }
                self.note_link(e, path);
                return;
            }
            let mut flags = self.attr_flags(e, meta, content, size_differs);
            if !plan.times {
                // Set to the transfer time.
                flags.replace_range(2..3, "T");
            }
            self.report('>', e, Some(flags), true);
            self.copy(e, path, Some(meta));
        } else {
            count(&mut self.stats.created, &e.kind);
            self.report('>', e, None, true);
            self.copy(e, path, None);
        }
        self.note_link(e, path);
    }

    fn note_link(&mut self, e: &Entry, path: &Path) {
        if self.plan.hard_links && e.nlink > 1 {
            self.linked
                .entry((e.dev, e.ino))
                .or_insert_with(|| (path.to_path_buf(), e.display()));
        }
    }

    fn hard_link(
        &mut self,
        e: &Entry,
        path: &Path,
        first: &Path,
        first_name: &str,
        existing: Option<&std::fs::Metadata>,
    ) {
        if let Some(meta) = existing
            && let Ok(f) = std::fs::symlink_metadata(first)
            && f.ino() == meta.ino()
            && f.dev() == meta.dev()
        {
            let flags = self.attr_flags(e, meta, '.', false);
            self.report('.', e, Some(flags), false);
            return;
        }
        if existing.is_none() {
            count(&mut self.stats.created, &e.kind);
        }
        let name = e.display();
        self.say(Event::Item {
            itemize: "hf+++++++++".into(),
            name: format!("{name} => {first_name}"),
            target: None,
            changed: true,
            transferred: false,
        });
        if self.plan.dry_run {
            return;
        }
        if existing.is_some() {
            let _ = std::fs::remove_file(path);
        }
        if let Err(err) = std::fs::hard_link(first, path) {
            self.errors = true;
            self.say(Event::Error(format!(
                "link \"{}\" => \"{}\" failed: {}",
                path.display(),
                first.display(),
                os_error(&err)
            )));
        }
    }

    /// Copies a file's content into place through a temporary file.
    fn copy(&mut self, e: &Entry, path: &Path, existing: Option<&std::fs::Metadata>) {
        self.stats.regular_transferred += 1;
        self.stats.transferred_size += e.size;
        if self.plan.dry_run {
            self.stats.literal_bytes += e.size;
            return;
        }
        if let (Some((tree_path, entry)), Some(export)) = (&e.remote, &self.export) {
            let got = export.runtime.block_on(crate::client::fetch_one(
                &export.remote,
                tree_path,
                entry,
                path,
            ));
            match got {
                Ok((literal, matched)) => {
                    self.stats.literal_bytes += literal;
                    self.stats.matched_bytes += matched;
                    self.set_attrs(e, path, existing, true);
                    if !self.plan.times {
                        // The transfer's time, as rsync leaves it.
                        set_mtime_now(path);
                    }
                }
                Err(err) => {
                    self.errors = true;
                    self.say(Event::Error(format!(
                        "fetching \"{tree_path}\" failed: {}",
                        crate::monitor::Chain(&err)
                    )));
                }
            }
            return;
        }
        self.stats.literal_bytes += e.size;
        match self.copy_into_place(e, path) {
            Ok(()) => self.set_attrs(e, path, existing, true),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && !e.path.exists() => {
                self.vanished = true;
                self.say(Event::Error(format!(
                    "file has vanished: \"{}\"",
                    flist::absolute(&e.path).display()
                )));
            }
            Err(err) => {
                self.errors = true;
                self.say(Event::Error(format!(
                    "[receiver] copying \"{}\" to \"{}\" failed: {}",
                    e.path.display(),
                    path.display(),
                    os_error(&err)
                )));
            }
        }
    }

    fn copy_into_place(&mut self, e: &Entry, path: &Path) -> std::io::Result<()> {
        let mut src = std::fs::File::open(&e.path)?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let base = path.file_name().unwrap_or(OsStr::new("file"));
        let (mut out, temp) = if self.plan.inplace {
            (
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(path)?,
                None,
            )
        } else {
            let mut prefix = std::ffi::OsString::from(".");
            prefix.push(base);
            prefix.push(".");
            let t = tempfile::Builder::new()
                .prefix(&prefix)
                .rand_bytes(6)
                .tempfile_in(dir)?;
            let (f, p) = t.into_parts();
            (f, Some(p))
        };
        let mut buf = vec![0u8; 256 * 1024];
        let mut done = 0u64;
        let started = Instant::now();
        loop {
            let n = src.read(&mut buf)?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])?;
            done += n as u64;
            if let Some(rate) = self.plan.bwlimit {
                let due = std::time::Duration::from_secs_f64(done as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            self.say(Event::Progress {
                name: e.display(),
                done,
                size: e.size,
            });
        }
        out.flush()?;
        if let Some(temp) = temp {
            let mode = self.new_mode(e);
            std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(mode))?;
            temp.persist(path).map_err(|err| err.error)?;
        }
        Ok(())
    }

    /// Sets mode, owner and times as the plan asks. `fresh` for an item
    /// made by this transfer (whose mode came from the source already).
    fn set_attrs(
        &mut self,
        e: &Entry,
        path: &Path,
        existing: Option<&std::fs::Metadata>,
        fresh: bool,
    ) {
        let plan = self.plan;
        if e.bare {
            return;
        }
        let is_link = matches!(e.kind, Kind::Symlink(_));
        if (plan.owner && self.am_root) || plan.group {
            let uid = (plan.owner && self.am_root).then(|| rustix::fs::Uid::from_raw(e.uid));
            let gid = plan.group.then(|| rustix::fs::Gid::from_raw(e.gid));
            // A failure to chown is rsync's error 23 too, but only when
            // something was asked that differs.
            let r = rustix::fs::chownat(
                rustix::fs::CWD,
                path,
                uid,
                gid,
                rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            );
            if let Err(err) = r {
                let err = std::io::Error::from(err);
                let differs = existing.is_none_or(|m| {
                    (plan.owner && m.uid() != e.uid) || (plan.group && m.gid() != e.gid)
                });
                if differs {
                    self.errors = true;
                    self.say(Event::Error(format!(
                        "chown \"{}\" failed: {}",
                        path.display(),
                        os_error(&err)
                    )));
                }
            }
        }
        if !is_link {
            let want = if plan.perms {
                Some(e.mode & 0o7777)
            } else if fresh && existing.is_none() {
                Some(self.new_mode(e))
            } else if fresh {
                // Replaced content keeps the old file's mode.
                existing.map(|m| m.mode() & 0o7777)
            } else {
                None
            };
            if let Some(mode) = want {
                let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
            }
        }
        let times = match e.kind {
            Kind::Dir => plan.times && !plan.omit_dir_times,
            _ => plan.times,
        };
        let differs = existing.is_none_or(|m| {
            fresh
                || !same_mtime(
                    plan,
                    (e.mtime, e.mtime_nsec),
                    (m.mtime(), m.mtime_nsec() as u32),
                )
        });
        if times && differs && !e.time_unknown {
            set_mtime(path, e.mtime, e.mtime_nsec);
        }
    }

    fn symlink(
        &mut self,
        e: &Entry,
        path: &Path,
        target: &[u8],
        existing: Option<&std::fs::Metadata>,
    ) {
        if let Some(meta) = existing {
            let same = std::fs::read_link(path)
                .map(|t| t.as_os_str().as_bytes() == target)
                .unwrap_or(false);
            if same {
                let flags = self.attr_flags(e, meta, '.', false);
                self.report('.', e, Some(flags), false);
                if !self.plan.dry_run {
                    self.set_attrs(e, path, Some(meta), false);
                }
                return;
            }
            let mut flags = self.attr_flags(e, meta, 'c', false);
            if !self.plan.times {
                flags.replace_range(2..3, "T");
            }
            self.report('c', e, Some(flags), false);
            if self.plan.dry_run {
                return;
            }
            let _ = std::fs::remove_file(path);
        } else {
            count(&mut self.stats.created, &e.kind);
            self.report('c', e, None, false);
            if self.plan.dry_run {
                return;
            }
        }
        if let Err(err) = std::os::unix::fs::symlink(OsStr::from_bytes(target), path) {
            self.errors = true;
            self.say(Event::Error(format!(
                "symlink \"{}\" -> \"{}\" failed: {}",
                path.display(),
                String::from_utf8_lossy(target),
                os_error(&err)
            )));
            return;
        }
        self.set_attrs(e, path, None, true);
    }

    fn node(&mut self, e: &Entry, path: &Path, existing: Option<&std::fs::Metadata>) {
        let rdev = match e.kind {
            Kind::Device { rdev, .. } => rdev,
            _ => 0,
        };
        if let Some(meta) = existing {
            let same = meta.mode() & libc::S_IFMT == e.mode & libc::S_IFMT && meta.rdev() == rdev;
            if same {
                let flags = self.attr_flags(e, meta, '.', false);
                self.report('.', e, Some(flags), false);
                if !self.plan.dry_run {
                    self.set_attrs(e, path, Some(meta), false);
                }
                return;
            }
            let flags = self.attr_flags(e, meta, 'c', false);
            self.report('c', e, Some(flags), false);
            if self.plan.dry_run {
                return;
            }
            let _ = std::fs::remove_file(path);
        } else {
            count(&mut self.stats.created, &e.kind);
            self.report('c', e, None, false);
            if self.plan.dry_run {
                return;
            }
        }
        let r = rustix::fs::mknodat(
            rustix::fs::CWD,
            path,
            rustix::fs::FileType::from_raw_mode(e.mode),
            rustix::fs::Mode::from_raw_mode(self.new_mode(e)),
            rdev,
        );
        if let Err(err) = r {
            let err = std::io::Error::from(err);
            self.errors = true;
            self.say(Event::Error(format!(
                "mknod \"{}\" failed: {}",
                path.display(),
                os_error(&err)
            )));
            return;
        }
        self.set_attrs(e, path, None, true);
    }

    /// Sets the folders' modes and times last, deepest first, since
    /// filling a folder changes its mtime.
    fn fix_dirs(&mut self) {
        for (path, secs, nsec) in std::mem::take(&mut self.time_fixups) {
            set_mtime(&path, secs, nsec);
        }
        let fixups = std::mem::take(&mut self.dir_fixups);
        for (path, e, fresh) in fixups.iter().rev() {
            if e.bare {
                continue;
            }
            if *fresh {
                let mode = if self.plan.perms {
                    e.mode & 0o7777
                } else {
                    self.new_mode(e)
                };
                let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
                if self.plan.times && !self.plan.omit_dir_times && !e.time_unknown {
                    set_mtime(path, e.mtime, e.mtime_nsec);
                }
                if (self.plan.owner && self.am_root) || self.plan.group {
                    self.set_attrs(e, path, None, false);
                }
            } else {
                let meta = std::fs::symlink_metadata(path).ok();
                self.set_attrs(e, path, meta.as_ref(), false);
            }
        }
    }

    /// Deletions for every folder of the list (before or after).
    fn deletion_pass(&mut self, list: &FileList, dest: &Path) {
        for (i, e) in list.entries.iter().enumerate() {
            if e.kind != Kind::Dir {
                continue;
            }
            let Some(names) = list.children.get(&i) else {
                continue;
            };
            let path = if e.name.is_empty() {
                dest.to_path_buf()
            } else {
                dest.join(OsStr::from_bytes(&e.name))
            };
            if path.is_dir() {
                self.delete_in_dir(&e.name, &path, names, dest);
            }
        }
    }

    /// The receiver's filter rules as they stand in the destination folder
    /// `rel` (per-directory merge files read from the destination).
    fn receiver_filters(&self, rel: &[u8], dest: &Path) -> Option<Filters> {
        let mut f = self.plan.filters.clone();
        f.enter_root(&flist::absolute(dest), &LocalFiles).ok()?;
        let mut prefix = Vec::new();
        for part in rel.split(|&b| b == b'/').filter(|p| !p.is_empty()) {
            if !prefix.is_empty() {
                prefix.push(b'/');
            }
            prefix.extend_from_slice(part);
            f.enter_dir(&prefix, &dest.join(OsStr::from_bytes(&prefix)), &LocalFiles)
                .ok()?;
        }
        Some(f)
    }

    /// Deletes what the destination folder `path` (list name `rel`) has
    /// and the source does not, unless protected.
    fn delete_in_dir(&mut self, rel: &[u8], path: &Path, names: &[Vec<u8>], dest: &Path) {
        let keep: std::collections::HashSet<&[u8]> = names.iter().map(Vec::as_slice).collect();
        let mut gone = deletion_order(path);
        gone.retain(|(base, _)| !keep.contains(base.as_slice()));
        if gone.is_empty() {
            return;
        }
        let Some(filters) = self.receiver_filters(rel, dest) else {
            return;
        };
        for (base, is_dir) in gone {
            let mut name = rel.to_vec();
            if !name.is_empty() {
                name.push(b'/');
            }
            name.extend_from_slice(&base);
            if filters.excluded(&name, is_dir, intersync_compat::filter::Side::Receiver) {
                continue;
            }
            let target = path.join(OsStr::from_bytes(&base));
            self.delete_item(&filters, &name, &target, is_dir);
        }
    }

    /// Deletes what a folder holds, deepest first; `false` if anything
    /// was protected or could not be removed.
    fn delete_contents(&mut self, filters: &Filters, name: &[u8], target: &Path) -> bool {
        let mut all = true;
        for (base, kid_dir) in deletion_order(target) {
            let mut kid_name = name.to_vec();
            kid_name.push(b'/');
            kid_name.extend_from_slice(&base);
            if filters.protected_in_deleted_dir(&kid_name, kid_dir) {
                all = false;
                continue;
            }
            all &= self.delete_item(
                filters,
                &kid_name,
                &target.join(OsStr::from_bytes(&base)),
                kid_dir,
            );
        }
        all
    }

    /// Deletes one item (a folder with its contents first); `false` if
    /// something in it was protected or could not be removed.
    fn delete_item(&mut self, filters: &Filters, name: &[u8], target: &Path, is_dir: bool) -> bool {
        if is_dir && !self.delete_contents(filters, name, target) {
            self.say(Event::Info(format!(
                "cannot delete non-empty directory: {}",
                String::from_utf8_lossy(name)
            )));
            return false;
        }
        if let Some(left) = self.deletions_left.as_mut() {
            if *left == 0 {
                self.deletions_skipped += 1;
                return false;
            }
            *left -= 1;
        }
        let mut shown = String::from_utf8_lossy(name).into_owned();
        if is_dir {
            shown.push('/');
        }
        let link = std::fs::symlink_metadata(target).is_ok_and(|m| m.file_type().is_symlink());
        if !self.plan.dry_run
            && let Err(err) = remove_any(target, is_dir)
        {
            self.errors = true;
            self.say(Event::Error(format!(
                "delete_file: unlink \"{}\" failed: {}",
                target.display(),
                os_error(&err)
            )));
            return false;
        }
        let kind = if is_dir {
            Kind::Dir
        } else if link {
            Kind::Symlink(Vec::new())
        } else {
            Kind::File
        };
        count(&mut self.stats.deleted, &kind);
        self.say(Event::Deleted(shown));
        true
    }
}

/// What a destination folder holds, (name, is a folder), in the order
/// rsync deletes: the reverse of its sort (non-folders before folders, by
/// name).
fn deletion_order(path: &Path) -> Vec<(Vec<u8>, bool)> {
    let mut items: Vec<(Vec<u8>, bool)> = std::fs::read_dir(path)
        .map(|r| {
            r.flatten()
                .map(|i| {
                    let is_dir = i.file_type().is_ok_and(|t| t.is_dir());
                    (i.file_name().as_bytes().to_vec(), is_dir)
                })
                .collect()
        })
        .unwrap_or_default();
    items.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
    items.reverse();
    items
}

fn dir_is_empty(path: &Path) -> bool {
    std::fs::read_dir(path).is_ok_and(|mut r| r.next().is_none())
}

/// A destination as rsync names it in messages: without trailing slashes.
fn shown(dest: &Path) -> String {
    let text = dest.to_string_lossy();
    let trimmed = text.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".into()
    } else {
        trimmed.into()
    }
}

fn remove_any(path: &Path, is_dir: bool) -> std::io::Result<()> {
    if is_dir {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
}

/// Whether two files hold the same bytes (`-c`).
fn same_content(a: &Path, b: &Path) -> std::io::Result<bool> {
    let hash = |p: &Path| -> std::io::Result<blake3::Hash> {
        let mut h = blake3::Hasher::new();
        h.update_reader(std::fs::File::open(p)?)?;
        Ok(h.finalize())
    };
    Ok(hash(a)? == hash(b)?)
}

fn set_mtime_now(path: &Path) {
    use rustix::fs::{Timespec, Timestamps, UTIME_NOW};
    let now = Timespec {
        tv_sec: 0,
        tv_nsec: UTIME_NOW,
    };
    let times = Timestamps {
        last_access: now,
        last_modification: now,
    };
    let _ = rustix::fs::utimensat(rustix::fs::CWD, path, &times, rustix::fs::AtFlags::empty());
}

/// Sets an item's mtime without following a symlink.
fn set_mtime(path: &Path, secs: i64, nsec: u32) {
    use rustix::fs::{Timespec, Timestamps, UTIME_OMIT};
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: secs,
            tv_nsec: nsec.into(),
        },
    };
    let _ = rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &times,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    );
}
