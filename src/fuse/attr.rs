//! File attributes for the kernel: from a stat of the backing file, or from
//! a placeholder's journal entry.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};
use rustix::fs::Stat;

use crate::tree::{Entry, EntryKind};

fn time(secs: i64, nanos: i64) -> SystemTime {
    let nanos = nanos.clamp(0, 999_999_999) as u32;
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nanos)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nanos as u64)
    }
}

pub fn mtime_ns(s: &Stat) -> i64 {
    s.st_mtime
        .saturating_mul(1_000_000_000)
        .saturating_add(s.st_mtime_nsec as i64)
}

fn kind(mode: u32) -> FileType {
    match rustix::fs::FileType::from_raw_mode(mode) {
        rustix::fs::FileType::Directory => FileType::Directory,
        rustix::fs::FileType::Symlink => FileType::Symlink,
        rustix::fs::FileType::Fifo => FileType::NamedPipe,
        rustix::fs::FileType::Socket => FileType::Socket,
        rustix::fs::FileType::CharacterDevice => FileType::CharDevice,
        rustix::fs::FileType::BlockDevice => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

pub fn of_stat(ino: u64, s: &Stat) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: s.st_size as u64,
        blocks: s.st_blocks as u64,
        atime: time(s.st_atime, s.st_atime_nsec as i64),
        mtime: time(s.st_mtime, s.st_mtime_nsec as i64),
        ctime: time(s.st_ctime, s.st_ctime_nsec as i64),
        crtime: UNIX_EPOCH,
        kind: kind(s.st_mode),
        perm: (s.st_mode & 0o7777) as u16,
        nlink: s.st_nlink as u32,
        uid: s.st_uid,
        gid: s.st_gid,
        rdev: s.st_rdev as u32,
        blksize: s.st_blksize as u32,
        flags: 0,
    }
}

/// A placeholder: what the export says the file will be once fetched.
pub fn of_entry(ino: u64, e: &Entry) -> FileAttr {
    let size = match e.kind {
        EntryKind::File { size, .. } => size,
        _ => 0,
    };
    let mtime = time(
        e.mtime_ns.div_euclid(1_000_000_000),
        e.mtime_ns.rem_euclid(1_000_000_000),
    );
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: mtime,
        mtime,
        ctime: mtime,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: (e.mode & 0o7777) as u16,
        nlink: 1,
        uid: e.uid,
        gid: e.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}
