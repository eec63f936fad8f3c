//! The export's index on disk: `.intersync/index.db`, an SQLite table of
//! the stat each path had when it was last looked at, so that a restart
//! hashes only what changed while the server was down.
//!
//! The index is a cache; the journal is the truth. A row vouches for a
//! path only together with what the path held when the stat was taken (a
//! file's version, or that it was a folder or a link): loaded against a
//! journal whose entry differs, it is dropped, and the file is hashed. So
//! a save may lag the journal by any amount (it runs every few seconds and
//! at shutdown, and SIGKILL may land anywhere) without a stale stat ever
//! vouching for content it did not see. No CRC is kept: a damaged row can
//! only fail to match, and a database SQLite cannot read is made anew.
//!
//! A save writes the rows of the paths touched since the last one, in one
//! transaction; a no-op writes nothing.
//!
//! The index before this one (`index.json`, rewritten whole) is not read:
//! the first start after it hashes the tree once, and removes it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use intersync_protocol::TreePath;
use rusqlite::{Connection, params};

use crate::tree::scan::{CachedStat, Dirty, Index, StatKey};
use crate::tree::{EntryKind, TreeState};

pub const FILE_NAME: &str = "index.db";
/// Where the index was kept before.
pub const LEGACY_FILE_NAME: &str = "index.json";

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS stat (
        path TEXT PRIMARY KEY,
        kind INTEGER NOT NULL,
        version BLOB,
        dev INTEGER NOT NULL,
        ino INTEGER NOT NULL,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        ctime_ns INTEGER NOT NULL,
        seen_ns INTEGER NOT NULL
    ) WITHOUT ROWID;
";

const FILE: i64 = 0;
const DIR: i64 = 1;
const SYMLINK: i64 = 2;

pub struct IndexDb {
    conn: Connection,
    path: PathBuf,
}

impl IndexDb {
    /// Opens the index in `state_dir`, or makes it anew if SQLite cannot
    /// read what is there (the index is only a cache).
    pub fn open(state_dir: &Path) -> rusqlite::Result<IndexDb> {
        let path = state_dir.join(FILE_NAME);
        match IndexDb::open_at(&path) {
            Ok(db) => Ok(db),
            Err(e) => {
                tracing::warn!(
                    path = %path.display(), error = %e,
                    "the index cannot be read; making it anew (the tree is hashed once)"
                );
                for suffix in ["", "-wal", "-shm"] {
                    let mut name = path.clone().into_os_string();
                    name.push(suffix);
                    let _ = std::fs::remove_file(name);
                }
                IndexDb::open_at(&path)
            }
        }
    }

    fn open_at(path: &Path) -> rusqlite::Result<IndexDb> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(30))?;
        // NORMAL in WAL mode: a kill loses at most the last saves, never
        // the database; the journal holds everything they would have.
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")?;
        conn.execute_batch(SCHEMA)?;
        // Reading one row makes SQLite look at the file: damage shows now.
        conn.query_row("SELECT count(*) FROM stat", [], |r| r.get::<_, i64>(0))?;
        Ok(IndexDb {
            conn,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every row, as saved, in path order: to be matched with the journal's
    /// state by [`stats_for`].
    pub fn load(&self) -> rusqlite::Result<Vec<Saved>> {
        let mut query = self.conn.prepare("SELECT * FROM stat ORDER BY path")?;
        let rows = query.query_map([], |r| {
            Ok(Saved {
                path: r.get(0)?,
                kind: r.get(1)?,
                version: r.get(2)?,
                stat: CachedStat {
                    key: StatKey {
                        dev: r.get::<_, i64>(3)? as u64,
                        ino: r.get::<_, i64>(4)? as u64,
                        size: r.get::<_, i64>(5)? as u64,
                        mtime_ns: r.get(6)?,
                        ctime_ns: r.get(7)?,
                    },
                    seen_ns: r.get(8)?,
                },
            })
        })?;
        rows.collect()
    }

    /// Writes the rows of `touched` as `index` now has them (a path with
    /// no stat, or no entry, loses its row), in one transaction.
    pub fn save(&mut self, index: &Index, touched: &Dirty) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut put = tx.prepare_cached(
                "INSERT OR REPLACE INTO stat VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            let mut delete = tx.prepare_cached("DELETE FROM stat WHERE path = ?1")?;
            let mut write = |p: &TreePath, stat: Option<&CachedStat>| -> rusqlite::Result<()> {
                let held = index.state.get(p).map(|e| match &e.kind {
                    EntryKind::File { version, .. } => (FILE, Some(version.0.to_vec())),
                    EntryKind::Dir => (DIR, None),
                    EntryKind::Symlink { .. } => (SYMLINK, None),
                });
                match (held, stat) {
                    (Some((kind, version)), Some(s)) => put
                        .execute(params![
                            p.as_str(),
                            kind,
                            version,
                            s.key.dev as i64,
                            s.key.ino as i64,
                            s.key.size as i64,
                            s.key.mtime_ns,
                            s.key.ctime_ns,
                            s.seen_ns,
                        ])
                        .map(drop),
                    _ => delete.execute([p.as_str()]).map(drop),
                }
            };
            match touched {
                Dirty::All => {
                    tx.execute("DELETE FROM stat", [])?;
                    for (p, s) in &index.stats {
                        write(p, Some(s))?;
                    }
                }
                Dirty::Paths(paths) => {
                    for p in paths {
                        write(p, index.stats.get(p))?;
                    }
                }
            }
        }
        tx.commit()
    }
}

/// One row as read.
pub struct Saved {
    path: String,
    kind: i64,
    version: Option<Vec<u8>>,
    stat: CachedStat,
}

/// The stats of `rows` (in path order) that still describe what `state`
/// holds: a row whose path is gone, or now holds another version or kind,
/// is dropped. One walk along both, no lookups.
pub fn stats_for(rows: Vec<Saved>, state: &TreeState) -> HashMap<TreePath, CachedStat> {
    let mut stats = HashMap::with_capacity(rows.len());
    let mut held = state.iter().peekable();
    for row in rows {
        while held
            .next_if(|(p, _)| p.as_str() < row.path.as_str())
            .is_some()
        {}
        let Some((path, entry)) = held.next_if(|(p, _)| p.as_str() == row.path) else {
            continue;
        };
        let holds = match (&entry.kind, row.kind) {
            (EntryKind::File { version, .. }, FILE) => {
                row.version.as_deref() == Some(&version.0[..])
            }
            (EntryKind::Dir, DIR) | (EntryKind::Symlink { .. }, SYMLINK) => true,
            _ => false,
        };
        if holds {
            stats.insert(path.clone(), row.stat);
        }
    }
    stats
}
