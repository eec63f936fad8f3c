//! The version store: recent contents of the export's files, kept by
//! version under `.intersync/versions/` so that the server can answer a
//! client that names the version it holds with an exact delta from it
//! (issue #9; this is the store, not yet the deltas).
//!
//! Policy: a version is stored whole when it is journaled, if it fits the
//! byte budget on its own. Every use (store or read) renews its time. What
//! has not been used for `max_age` goes first, then the least recently used
//! until the store fits `budget_bytes`. Every read hashes what it read: a
//! stored copy that does not match its name is deleted and reported as
//! absent, never used.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use intersync_protocol::Version;

use crate::install::PendingFile;

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
}

/// What one eviction pass removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Evicted {
    pub versions: usize,
    pub bytes: u64,
}

impl VersionStore {
    /// The store in `dir` (created when missing).
    pub fn open(dir: &Path, budget: Budget) -> io::Result<VersionStore> {
        fs::create_dir_all(dir)?;
        Ok(VersionStore {
            dir: dir.to_owned(),
            budget,
        })
    }

    fn path(&self, version: &Version) -> PathBuf {
        self.dir.join(version.to_string())
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
        let mut out = PendingFile::create(&dest)?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0; 1 << 20];
        loop {
            let n = from.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])?;
        }
        if Version(*hasher.finalize().as_bytes()) != version {
            // Changed while being read: not this version, so not kept.
            return Ok(false);
        }
        out.install()?;
        self.evict()?;
        Ok(self.path(&version).exists())
    }

    /// The stored content of `version`, checked against it. A copy that
    /// does not match is deleted and `None` returned.
    pub fn get(&self, version: &Version) -> io::Result<Option<Vec<u8>>> {
        let path = self.path(version);
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if Version(*blake3::hash(&data).as_bytes()) != *version {
            tracing::warn!(path = %path.display(), "a stored version does not match its hash; deleted");
            let _ = fs::remove_file(&path);
            return Ok(None);
        }
        touch(&path);
        Ok(Some(data))
    }

    /// Total bytes stored.
    pub fn size(&self) -> io::Result<u64> {
        Ok(self.entries()?.iter().map(|e| e.1).sum())
    }

    /// (path, length, last use) of every stored version, least recent first.
    fn entries(&self) -> io::Result<Vec<(PathBuf, u64, SystemTime)>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let is_version = name
                .to_str()
                .is_some_and(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()));
            if !is_version {
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
            evicted.versions += 1;
            evicted.bytes += len;
        }
        Ok(evicted)
    }
}

/// Marks a stored version as just used.
fn touch(path: &Path) {
    if let Ok(f) = File::options().write(true).open(path) {
        let _ = f.set_modified(SystemTime::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version_of(data: &[u8]) -> Version {
        Version(*blake3::hash(data).as_bytes())
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
        let f = File::options()
            .write(true)
            .open(s.path(&version_of(data)))
            .unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(secs))
            .unwrap();
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
        assert_eq!(s.get(&version_of(&b)).unwrap(), None);
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
                versions: 1,
                bytes: 1000
            }
        );
        assert_eq!(s.get(&version_of(&c)).unwrap(), None);
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
        assert_eq!(s.get(&version_of(&data)).unwrap(), None);
        assert!(!path.exists(), "the corrupt copy is deleted");
        // Content that is not the version it is stored as is refused.
        assert!(
            !s.put(version_of(&data), &mut &bad[..], bad.len() as u64)
                .unwrap()
        );
        assert!(!path.exists());
        assert!(put(&s, &data));
        assert_eq!(s.get(&version_of(&data)).unwrap(), Some(data));
    }
}
