//! The KML on disk: segments under `.intersync/kml/`, checkpoints under
//! `.intersync/checkpoints/`, appends made durable before they are
//! acknowledged, and recovery that truncates a torn last record but refuses
//! to start over corruption anywhere else.
//!
//! Segment files are named by the sequence number of their first record (16
//! hex digits, `.kml`). A segment past [`JournalOptions::seal_bytes`] is
//! sealed (never written again) and a new one started. A checkpoint is a
//! file in segment format whose records, numbered from 1, rebuild the whole
//! tree from nothing; its name is the KML sequence number it stands for.
//! Sealed segments wholly before the newest checkpoint may be dropped.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use intersync_protocol::kml::{
    KmlError, KmlRecord, NodeId, Op, SEGMENT_HEADER_LEN, SegmentReader, segment_header,
};
use thiserror::Error;

use crate::install::PendingFile;
use crate::tree::{TreeError, TreeState, Undo};

/// When to seal segments and write checkpoints.
#[derive(Clone, Copy, Debug)]
pub struct JournalOptions {
    /// Seal the open segment once it is at least this long.
    pub seal_bytes: u64,
    /// Write a checkpoint once this many records follow the last one, so a
    /// new client reads one file of the tree instead of all of history.
    pub checkpoint_every: u64,
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            seal_bytes: 4 << 20,
            checkpoint_every: 10_000,
        }
    }
}

#[derive(Debug, Error)]
pub enum JournalError {
    #[error("journal file {} is damaged", path.display())]
    Corrupt { path: PathBuf, source: KmlError },
    #[error("KML segment {} starts at sequence {found}, expected {expected}: a segment is missing", path.display())]
    Gap {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("KML segment {} is named for sequence {named} but starts at {found}", path.display())]
    Misnamed {
        path: PathBuf,
        named: u64,
        found: u64,
    },
    #[error("KML does not replay")]
    Replay(#[from] TreeError),
    #[error("{}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A segment as the head document describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    pub first_seq: u64,
    /// Sequence number of the last record, or `first_seq - 1` when empty.
    pub last_seq: u64,
    pub len: u64,
    pub sealed: bool,
}

impl SegmentInfo {
    pub fn name(&self) -> String {
        segment_name(self.first_seq)
    }
}

pub fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:016x}.kml")
}

/// A checkpoint: the tree at `seq`, in `len` bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointInfo {
    pub seq: u64,
    pub len: u64,
}

impl CheckpointInfo {
    pub fn name(&self) -> String {
        segment_name(self.seq)
    }
}

/// What opening the journal had to repair.
#[derive(Debug, Default)]
pub struct Recovery {
    /// A torn record cut from the end of the open segment: its path, the
    /// offset it started at, and the bytes dropped.
    pub truncated: Option<(PathBuf, u64, u64)>,
}

/// The journal of one tree, open for appending.
pub struct Journal {
    kml_dir: PathBuf,
    checkpoint_dir: PathBuf,
    segments: Vec<SegmentInfo>,
    open: File,
    checkpoint: Option<CheckpointInfo>,
    options: JournalOptions,
}

impl Journal {
    /// Opens (or creates) the journal in `state_dir` and replays it, from
    /// the newest checkpoint on, into the tree state it describes.
    pub fn open(
        state_dir: &Path,
        options: JournalOptions,
    ) -> Result<(Journal, TreeState, Recovery), JournalError> {
        let kml_dir = state_dir.join("kml");
        let checkpoint_dir = state_dir.join("checkpoints");
        for dir in [&kml_dir, &checkpoint_dir] {
            fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        let mut state = TreeState::default();
        let checkpoint = newest_numbered(&checkpoint_dir)?;
        let checkpoint = match checkpoint {
            Some((seq, path)) => {
                let len = load_checkpoint(&path, &mut state)?;
                state.seq = seq;
                Some(CheckpointInfo { seq, len })
            }
            None => None,
        };
        let mut recovery = Recovery::default();
        let names = numbered(&kml_dir)?;
        let mut segments = Vec::new();
        let count = names.len();
        for (i, (named, path)) in names.into_iter().enumerate() {
            let is_last = i + 1 == count;
            let info = read_segment(&path, named, is_last, &mut state, &mut recovery)?;
            if let Some(prev) = segments.last().map(|s: &SegmentInfo| s.last_seq) {
                if info.first_seq != prev + 1 {
                    return Err(JournalError::Gap {
                        path,
                        expected: prev + 1,
                        found: info.first_seq,
                    });
                }
            } else if info.first_seq > state.seq + 1 {
                return Err(JournalError::Gap {
                    path,
                    expected: state.seq + 1,
                    found: info.first_seq,
                });
            }
            segments.push(SegmentInfo {
                sealed: !is_last,
                ..info
            });
        }
        if segments.is_empty() {
            let first = state.seq + 1;
            create_segment(&kml_dir, first)?;
            segments.push(SegmentInfo {
                first_seq: first,
                last_seq: first - 1,
                len: SEGMENT_HEADER_LEN as u64,
                sealed: false,
            });
        }
        let open_path = kml_dir.join(segments.last().expect("one at least").name());
        let open = OpenOptions::new()
            .append(true)
            .open(&open_path)
            .map_err(io_err(&open_path))?;
        let journal = Journal {
            kml_dir,
            checkpoint_dir,
            segments,
            open,
            checkpoint,
            options,
        };
        Ok((journal, state, recovery))
    }

    /// Sequence number of the last record (0 for an empty journal).
    pub fn last_seq(&self) -> u64 {
        self.segments.last().map_or(0, |s| s.last_seq)
    }

    pub fn segments(&self) -> &[SegmentInfo] {
        &self.segments
    }

    pub fn checkpoint(&self) -> Option<&CheckpointInfo> {
        self.checkpoint.as_ref()
    }

    /// Whether enough has happened since the last checkpoint to write another.
    pub fn wants_checkpoint(&self) -> bool {
        let since = self.last_seq() - self.checkpoint.as_ref().map_or(0, |c| c.seq);
        since >= self.options.checkpoint_every
    }

    pub fn segment_path(&self, name: &str) -> PathBuf {
        self.kml_dir.join(name)
    }

    pub fn checkpoint_path(&self, name: &str) -> PathBuf {
        self.checkpoint_dir.join(name)
    }

    /// Appends `ops`, made by `node`, as consecutive records, applying each
    /// to `state`; returns the records once they are on stable storage. The
    /// ops must fit the state (see [`TreeState::apply`]); if one does not,
    /// nothing is appended and the state is left as it was.
    pub fn append(
        &mut self,
        node: NodeId,
        ops: Vec<Op>,
        state: &mut TreeState,
    ) -> Result<Vec<KmlRecord>, JournalError> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let time_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        let mut undo = Undo::default();
        let mut records = Vec::with_capacity(ops.len());
        let mut bytes = Vec::new();
        for op in ops {
            let rec = KmlRecord {
                seq: state.seq + 1,
                time_ns,
                node,
                op,
            };
            if let Err(e) = state.apply_noting(&rec, &mut undo) {
                state.undo(undo);
                return Err(e.into());
            }
            rec.encode(&mut bytes);
            records.push(rec);
        }
        let open_path = self
            .kml_dir
            .join(self.segments.last().expect("open segment").name());
        let before = self.segments.last().expect("open segment").len;
        let written = self
            .open
            .write_all(&bytes)
            .and_then(|()| self.open.sync_data());
        if let Err(e) = written {
            // Leave no partial record for the next append to follow.
            let _ = self.open.set_len(before);
            state.undo(undo);
            return Err(JournalError::Io {
                path: open_path,
                source: e,
            });
        }
        let seg = self.segments.last_mut().expect("open segment");
        seg.len += bytes.len() as u64;
        seg.last_seq = state.seq;
        if seg.len >= self.options.seal_bytes
            && let Err(e) = self.seal()
        {
            // The records are durable; sealing is tried again next append.
            tracing::warn!(error = %crate::monitor::Chain(&e), "could not seal the KML segment");
        }
        Ok(records)
    }

    /// Seals the open segment and starts the next.
    fn seal(&mut self) -> Result<(), JournalError> {
        let next = self.last_seq() + 1;
        let path = create_segment(&self.kml_dir, next)?;
        self.open = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        if let Some(last) = self.segments.last_mut() {
            last.sealed = true;
        }
        self.segments.push(SegmentInfo {
            first_seq: next,
            last_seq: next - 1,
            len: SEGMENT_HEADER_LEN as u64,
            sealed: false,
        });
        Ok(())
    }

    /// Writes a checkpoint of `state` (which must be this journal's current
    /// state) and drops sealed segments that it makes unnecessary.
    pub fn write_checkpoint(&mut self, state: &TreeState) -> Result<CheckpointInfo, JournalError> {
        let seq = state.seq;
        let path = self.checkpoint_dir.join(segment_name(seq));
        let mut bytes = segment_header(1).to_vec();
        for (i, op) in state.rebuild_ops().into_iter().enumerate() {
            KmlRecord {
                seq: i as u64 + 1,
                time_ns: 0,
                node: NodeId(0),
                op,
            }
            .encode(&mut bytes);
        }
        let mut file = PendingFile::create(&path).map_err(io_err(&path))?;
        file.write_all(&bytes).map_err(io_err(&path))?;
        file.install().map_err(io_err(&path))?;
        let info = CheckpointInfo {
            seq,
            len: bytes.len() as u64,
        };
        // Older checkpoints and segments wholly before this one are history.
        for (old, old_path) in numbered(&self.checkpoint_dir)? {
            if old < seq {
                let _ = fs::remove_file(old_path);
            }
        }
        while self.segments.len() > 1 && self.segments[0].sealed && self.segments[0].last_seq <= seq
        {
            let gone = self.segments.remove(0);
            let _ = fs::remove_file(self.kml_dir.join(gone.name()));
        }
        self.checkpoint = Some(info.clone());
        Ok(info)
    }
}

fn create_segment(dir: &Path, first_seq: u64) -> Result<PathBuf, JournalError> {
    let path = dir.join(segment_name(first_seq));
    let mut file = PendingFile::create(&path).map_err(io_err(&path))?;
    file.write_all(&segment_header(first_seq))
        .map_err(io_err(&path))?;
    file.install().map_err(io_err(&path))?;
    Ok(path)
}

/// Files in `dir` named `<16 hex digits>.kml`, in order of that number.
fn numbered(dir: &Path) -> Result<Vec<(u64, PathBuf)>, JournalError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".kml")) else {
            continue;
        };
        if hex.len() == 16
            && let Ok(n) = u64::from_str_radix(hex, 16)
        {
            out.push((n, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

fn newest_numbered(dir: &Path) -> Result<Option<(u64, PathBuf)>, JournalError> {
    Ok(numbered(dir)?.pop())
}

fn load_checkpoint(path: &Path, state: &mut TreeState) -> Result<u64, JournalError> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    let corrupt = |source| JournalError::Corrupt {
        path: path.to_owned(),
        source,
    };
    // A checkpoint comes in path order: built in one pass, not by lookups.
    let mut built = crate::tree::InOrder::default();
    for rec in SegmentReader::new(&bytes).map_err(corrupt)? {
        built.push(&rec.map_err(corrupt)?)?;
    }
    *state = built.finish();
    Ok(bytes.len() as u64)
}

/// Replays one segment into `state` (skipping records a checkpoint already
/// covers). In the last segment, a torn tail is cut off and reported.
fn read_segment(
    path: &Path,
    named: u64,
    is_last: bool,
    state: &mut TreeState,
    recovery: &mut Recovery,
) -> Result<SegmentInfo, JournalError> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    let corrupt = |source| JournalError::Corrupt {
        path: path.to_owned(),
        source,
    };
    if bytes.len() < SEGMENT_HEADER_LEN && is_last && segment_header(named).starts_with(&bytes) {
        // Torn while being created: write the header again.
        create_segment(path.parent().expect("in kml/"), named)?;
        recovery.truncated = Some((path.to_owned(), 0, bytes.len() as u64));
        return Ok(SegmentInfo {
            first_seq: named,
            last_seq: named - 1,
            len: SEGMENT_HEADER_LEN as u64,
            sealed: false,
        });
    }
    let mut reader = SegmentReader::new(&bytes).map_err(corrupt)?;
    let first_seq = reader.next_seq();
    if first_seq != named {
        return Err(JournalError::Misnamed {
            path: path.to_owned(),
            named,
            found: first_seq,
        });
    }
    let mut valid_end = SEGMENT_HEADER_LEN as u64;
    loop {
        match reader.next() {
            None => break,
            Some(Ok(rec)) => {
                valid_end = reader.offset();
                if rec.seq > state.seq {
                    state.apply(&rec)?;
                }
            }
            Some(Err(e)) => {
                if is_last && is_torn_tail(&bytes, &e) {
                    let dropped = bytes.len() as u64 - valid_end;
                    let file = OpenOptions::new()
                        .write(true)
                        .open(path)
                        .map_err(io_err(path))?;
                    file.set_len(valid_end)
                        .and_then(|()| file.sync_all())
                        .map_err(io_err(path))?;
                    tracing::warn!(path = %path.display(), offset = valid_end, dropped, "truncated a torn KML record");
                    recovery.truncated = Some((path.to_owned(), valid_end, dropped));
                    break;
                }
                return Err(corrupt(e));
            }
        }
    }
    Ok(SegmentInfo {
        first_seq,
        last_seq: reader.next_seq() - 1,
        len: valid_end,
        sealed: false,
    })
}

/// A bad record is a torn append, not corruption, when nothing valid can
/// follow it: the record as framed reaches the end of the file, or all that
/// follows is zeros (a file extended by a crash before its data landed).
fn is_torn_tail(bytes: &[u8], e: &KmlError) -> bool {
    use intersync_protocol::kml::RECORD_FRAME_LEN;
    let offset = e.offset() as usize;
    if matches!(e, KmlError::Incomplete { .. }) {
        return true;
    }
    if matches!(e, KmlError::BadMagic { .. }) {
        return false;
    }
    let claimed = bytes.get(offset..offset + 4).map_or(0, |b| {
        u32::from_be_bytes(b.try_into().expect("4 bytes")) as usize
    });
    offset + RECORD_FRAME_LEN + claimed >= bytes.len() || bytes[offset..].iter().all(|&b| b == 0)
}

/// Reads `len` bytes at `offset` of a file (for serving segments by range).
pub fn read_at(path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let file = File::open(path)?;
    let mut buf = vec![0; len];
    file.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

#[cfg(test)]
mod tests;
