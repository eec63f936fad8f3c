//! The version store: recent contents of files, kept by version under
//! `.intersync/versions/`, for exact patches from them (`delta::zpatch`),
//! and the patches made, so that each pair is made once.
//!
//! A server keeps every version it hands to a client (a whole file, a
//! delta's result, a patch's result) and every version a client writes,
//! stored as it is served, so that when the file changes later its old
//! content is still here to patch from. A working copy keeps the versions
//! it synced, so that it can push its own edits as patches. A version
//! larger than the byte budget on its own is never stored.
//!
//! Policy: every use (store or read) renews an entry's time. What has not
//! been used for `max_age` goes first, then the least recently used until
//! the store fits `budget_bytes`; versions and patches share the budget.
//!
//! Trust: nothing here is trusted without a check. A version is hashed as
//! it is read and a stored copy that does not match its name is deleted and
//! reported absent; a patch carries the BLAKE3 hash of its bytes and is
//! checked the same way. So the store needs no fsync: a copy a crash left
//! torn is found and dropped.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use intersync_protocol::Version;

use crate::delta::MappedFile;

/// How much the store may keep.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub bytes: u64,
    pub max_age: Duration,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            bytes: 1 << 30,
            max_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

pub struct VersionStore {
    dir: PathBuf,
    budget: Budget,
    /// Bytes stored, as of the last eviction plus what was put since:
    /// spares a listing of the folder on every put.
    total: AtomicU64,
}

/// What one eviction pass removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Evicted {
    pub entries: usize,
    pub bytes: u64,
}

/// Length of the hash that ends a stored patch.
const PATCH_HASH_LEN: usize = 32;

impl VersionStore {
    /// The store in `dir` (created when missing).
    pub fn open(dir: &Path, budget: Budget) -> io::Result<VersionStore> {
        fs::create_dir_all(dir)?;
        let store = VersionStore {
            dir: dir.to_owned(),
            budget,
            total: AtomicU64::new(0),
        };
        store.sweep_temporaries();
        store.evict()?;
        Ok(store)
    }

    /// Removes what a put cut short by a crash left: temporary files an
    /// hour old (a put in progress is younger).
    fn sweep_temporaries(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let temporary = e
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(".tmp"));
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(3600));
            if temporary && old {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    fn path(&self, version: &Version) -> PathBuf {
        self.dir.join(version.to_string())
    }

    fn patch_path(&self, from: &Version, to: &Version) -> PathBuf {
        self.dir.join(format!("{from}-{to}"))
    }

    /// Keeps the content `from` reads, if it is `version` and fits the
    /// budget; whether it is stored now. Then evicts what the budget says.
    pub fn put(&self, version: Version, from: &mut impl Read, len: u64) -> io::Result<bool> {
        if len > self.budget.bytes {
            return Ok(false);
        }
        let dest = self.path(&version);
        if dest.exists() {
            touch(&dest);
            return Ok(true);
        }
        let mut out = tempfile::NamedTempFile::new_in(&self.dir)?;
        let mut hasher = blake3::Hasher::new();
        // No bigger than the content (plus one byte, to see a file that
        // grew): a zeroed MiB for each small file costs more than its copy.
        let mut buf = vec![0; (len as usize).saturating_add(1).min(1 << 20)];
        let mut copied = 0u64;
        loop {
            let n = from.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])?;
            copied += n as u64;
            if copied > len {
                return Ok(false);
            }
        }
        if Version::from_hasher(&hasher) != version {
            // Changed while being read: not this version, so not kept.
            return Ok(false);
        }
        out.persist(&dest).map_err(|e| e.error)?;
        self.added(copied)?;
        Ok(self.path(&version).exists())
    }

    /// [`VersionStore::put`] from an open file, read from its start
    /// whatever its position.
    pub fn put_file(&self, version: Version, file: &File, len: u64) -> io::Result<bool> {
        self.put(version, &mut ReadAt { file, at: 0 }, len)
    }

    /// The stored content of `version`, mapped and checked against it. A
    /// copy that does not match is deleted and `None` returned.
    pub fn get(&self, version: &Version) -> io::Result<Option<MappedFile>> {
        let path = self.path(version);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        // Stored copies are only ever replaced whole (renamed over), never
        // written in place, so the mapping stays what was hashed.
        let data = MappedFile::map(&file)?;
        if Version::of(&data) != *version {
            tracing::warn!(path = %path.display(), "a stored version does not match its hash; deleted");
            let _ = fs::remove_file(&path);
            return Ok(None);
        }
        touch(&path);
        Ok(Some(data))
    }

    /// The patch from `from` to `to`, if one was kept and is intact: the
    /// file, positioned nowhere in particular, and the patch's length.
    pub fn patch(&self, from: &Version, to: &Version) -> io::Result<Option<(File, u64)>> {
        let path = self.patch_path(from, to);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let stored = file.metadata()?.len();
        let intact = stored >= PATCH_HASH_LEN as u64 && {
            let len = stored - PATCH_HASH_LEN as u64;
            let mut hasher = blake3::Hasher::new();
            hasher.update_reader((ReadAt { file: &file, at: 0 }).take(len))?;
            let mut hash = [0u8; PATCH_HASH_LEN];
            file.read_exact_at(&mut hash, len)?;
            *hasher.finalize().as_bytes() == hash
        };
        if !intact {
            tracing::warn!(path = %path.display(), "a stored patch does not match its hash; deleted");
            let _ = fs::remove_file(&path);
            return Ok(None);
        }
        touch(&path);
        Ok(Some((file, stored - PATCH_HASH_LEN as u64)))
    }

    /// Makes and keeps the patch from `from` to `to`: `write` writes it,
    /// and the hash of its bytes is added. Returns it as [`VersionStore::patch`] does.
    pub fn put_patch<E: From<io::Error>>(
        &self,
        from: &Version,
        to: &Version,
        write: impl FnOnce(&mut dyn Write) -> Result<(), E>,
    ) -> Result<(File, u64), E> {
        let temp = tempfile::NamedTempFile::new_in(&self.dir)?;
        let mut out = HashingWriter {
            inner: io::BufWriter::new(temp),
            hasher: blake3::Hasher::new(),
            len: 0,
        };
        write(&mut out)?;
        let HashingWriter { inner, hasher, len } = out;
        let mut temp = inner.into_inner().map_err(|e| e.into_error())?;
        temp.write_all(hasher.finalize().as_bytes())?;
        let file = temp
            .persist(self.patch_path(from, to))
            .map_err(|e| e.error)?;
        self.added(len + PATCH_HASH_LEN as u64)?;
        Ok((file, len))
    }

    fn added(&self, len: u64) -> io::Result<()> {
        let total = self.total.fetch_add(len, Ordering::Relaxed) + len;
        if total > self.budget.bytes {
            self.evict()?;
        }
        Ok(())
    }

    /// Total bytes stored.
    pub fn size(&self) -> io::Result<u64> {
        Ok(self.entries()?.iter().map(|e| e.1).sum())
    }

    /// (path, length, last use) of every stored version and patch, least
    /// recent first.
    fn entries(&self) -> io::Result<Vec<(PathBuf, u64, SystemTime)>> {
        let hex = |n: &str| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit());
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let ours = name.to_str().is_some_and(|n| {
                hex(n) || n.split_once('-').is_some_and(|(a, b)| hex(a) && hex(b))
            });
            if !ours {
                continue;
            }
            let meta = entry.metadata()?;
            if meta.is_file() {
                out.push((entry.path(), meta.len(), meta.modified()?));
            }
        }
        out.sort_by_key(|e| e.2);
        Ok(out)
    }

    /// Removes what is past `max_age`, then the least recently used until
    /// the store fits its byte budget.
    pub fn evict(&self) -> io::Result<Evicted> {
        let now = SystemTime::now();
        let entries = self.entries()?;
        let mut total: u64 = entries.iter().map(|e| e.1).sum();
        let mut evicted = Evicted::default();
        for (path, len, used) in entries {
            let stale = now.duration_since(used).unwrap_or_default() > self.budget.max_age;
            if !stale && total <= self.budget.bytes {
                continue;
            }
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            total -= len;
            evicted.entries += 1;
            evicted.bytes += len;
        }
        self.total.store(total, Ordering::Relaxed);
        Ok(evicted)
    }
}

/// Reads a file from a position of its own, leaving the file's alone.
struct ReadAt<'a> {
    file: &'a File,
    at: u64,
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

struct HashingWriter<W: Write> {
    inner: W,
    hasher: blake3::Hasher,
    len: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Marks a stored entry as just used.
fn touch(path: &Path) {
    if let Ok(f) = File::options().write(true).open(path) {
        let _ = f.set_modified(SystemTime::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version_of(data: &[u8]) -> Version {
        Version::of(data)
    }

    fn store(dir: &Path, bytes: u64) -> VersionStore {
        VersionStore::open(
            dir,
            Budget {
                bytes,
                max_age: Duration::from_secs(3600),
            },
        )
        .unwrap()
    }

    fn put(s: &VersionStore, data: &[u8]) -> bool {
        s.put(version_of(data), &mut &data[..], data.len() as u64)
            .unwrap()
    }

    fn age(s: &VersionStore, data: &[u8], secs: u64) {
        age_path(&s.path(&version_of(data)), secs);
    }

    #[test]
    fn eviction_keeps_the_store_under_its_budget_least_recently_used_first() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), 3000);
        let (a, b, c) = (vec![1u8; 1000], vec![2u8; 1000], vec![3u8; 1000]);
        assert!(put(&s, &a) && put(&s, &b) && put(&s, &c));
        age(&s, &a, 30);
        age(&s, &b, 20);
        age(&s, &c, 10);
        // Reading `a` makes it the most recent: `b` goes first.
        assert_eq!(s.get(&version_of(&a)).unwrap().as_deref(), Some(&a[..]));
        let d = vec![4u8; 1000];
        assert!(put(&s, &d));
        assert!(s.size().unwrap() <= 3000);
        assert!(s.get(&version_of(&b)).unwrap().is_none());
        for kept in [&a, &c, &d] {
            assert!(s.get(&version_of(kept)).unwrap().is_some());
        }
        // Larger than the whole budget: never stored.
        assert!(!put(&s, &vec![5u8; 4000]));
        // Past the age limit: gone at the next pass, whatever the size.
        age(&s, &c, 7200);
        assert_eq!(
            s.evict().unwrap(),
            Evicted {
                entries: 1,
                bytes: 1000
            }
        );
        assert!(s.get(&version_of(&c)).unwrap().is_none());
    }

    #[test]
    fn a_corrupt_stored_version_is_detected_and_never_used() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), 1 << 20);
        let data = b"the content as journaled".to_vec();
        assert!(put(&s, &data));
        let path = s.path(&version_of(&data));
        let mut bad = data.clone();
        bad[3] ^= 0x20;
        fs::write(&path, &bad).unwrap();
        assert!(s.get(&version_of(&data)).unwrap().is_none());
        assert!(!path.exists(), "the corrupt copy is deleted");
        // Content that is not the version it is stored as is refused.
        assert!(
            !s.put(version_of(&data), &mut &bad[..], bad.len() as u64)
                .unwrap()
        );
        assert!(!path.exists());
        assert!(put(&s, &data));
        assert_eq!(
            s.get(&version_of(&data)).unwrap().as_deref(),
            Some(&data[..])
        );
    }

    #[test]
    fn patches_are_checked_and_share_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), 2000);
        let (from, to) = (version_of(b"from"), version_of(b"to"));
        let patch = |w: &mut dyn Write| w.write_all(&[7u8; 900]);
        s.put_patch(&from, &to, patch).unwrap();
        let (file, len) = s.patch(&from, &to).unwrap().unwrap();
        let mut back = vec![0; len as usize];
        file.read_exact_at(&mut back, 0).unwrap();
        assert_eq!(back, vec![7u8; 900]);
        assert!(s.patch(&to, &from).unwrap().is_none());
        // A flipped byte: deleted, never served.
        let path = s.patch_path(&from, &to);
        let mut bytes = fs::read(&path).unwrap();
        bytes[10] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(s.patch(&from, &to).unwrap().is_none());
        assert!(!path.exists());
        // A version and a patch together past the budget: the older goes.
        s.put_patch(&from, &to, patch).unwrap();
        age_path(&path, 10);
        assert!(put(&s, &[1u8; 1500]));
        assert!(s.size().unwrap() <= 2000);
        assert!(s.patch(&from, &to).unwrap().is_none());
    }

    #[test]
    fn temporaries_a_crash_left_are_swept_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (dir.path().join(".tmpOLD"), dir.path().join(".tmpNEW"));
        fs::write(&old, b"cut short").unwrap();
        fs::write(&new, b"in progress").unwrap();
        age_path(&old, 7200);
        store(dir.path(), 1 << 20);
        assert!(!old.exists() && new.exists());
    }

    fn age_path(path: &Path, secs: u64) {
        let f = File::options().write(true).open(path).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(secs))
            .unwrap();
    }
}
