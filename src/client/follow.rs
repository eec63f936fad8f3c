//! Following the server's journal: the head document, then a checkpoint
//! when the working copy is new or too far behind, then the records after
//! what it read last, folded into the tree they describe. Records must
//! follow one another; a record still being appended is read next time.

use intersync_protocol::api::Head;
use intersync_protocol::kml::{KmlRecord, SEGMENT_HEADER_LEN, SegmentReader, parse_segment_header};

use super::working_copy::{Cursor, WorkingCopy, WorkingCopyError};
use super::{BadJournal, SyncError};
use crate::transport::Remote;
use crate::tree::TreeState;

/// The server's tree as its journal says, where reading stopped, and the
/// head it was read from.
pub struct Followed {
    pub tree: TreeState,
    pub cursor: Cursor,
    pub head: Head,
}

/// The server's tree after the working copy's base: the journal read on
/// from its cursor (or a checkpoint). The server must be the export the
/// working copy was made from.
pub async fn server_tree(wc: &WorkingCopy, remote: &impl Remote) -> Result<Followed, SyncError> {
    let head = same_export(wc, remote).await?;
    let saved = &wc.saved;
    if saved.server_differs.is_empty() {
        return tree_from(remote, head, &saved.base.state, &saved.cursor).await;
    }
    // The base keeps old entries where the last pull could not bring a
    // file in; the journal goes on from what the server had there.
    let mut start = saved.base.state.clone();
    for (path, entry) in &saved.server_differs {
        match entry {
            Some(e) => start.insert(path.clone(), e.clone()),
            None => {
                start.remove(path);
            }
        }
    }
    tree_from(remote, head, &start, &saved.cursor).await
}

/// The head, if it is the export the working copy was synced with (by
/// its id, whatever the URL).
pub async fn same_export(wc: &WorkingCopy, remote: &impl Remote) -> Result<Head, SyncError> {
    let head = head(remote).await?;
    match &wc.saved.server_id {
        Some(id) if *id != head.server_id => Err(WorkingCopyError::OtherServer {
            url: wc.saved.url.clone(),
            synced_at: wc.moved_from.clone(),
            expected: id.clone(),
            found: head.server_id,
        }
        .into()),
        _ => Ok(head),
    }
}

/// The export's tree as it stands now, read from nothing (a checkpoint and
/// the journal after it): what a one-way copy of an export starts from.
pub async fn export_tree(remote: &impl Remote) -> Result<TreeState, SyncError> {
    let head = head(remote).await?;
    let followed = tree_from(remote, head, &TreeState::default(), &Cursor::default()).await?;
    Ok(followed.tree)
}

async fn head(remote: &impl Remote) -> Result<Head, SyncError> {
    Ok(remote.head(None, 0).await?.ok_or(BadJournal::NoHead)?)
}

/// Folds the journal after `base` (read up to `known`) into the tree the
/// head describes.
async fn tree_from(
    remote: &impl Remote,
    head: Head,
    base: &TreeState,
    known: &Cursor,
) -> Result<Followed, SyncError> {
    let first_kept = head
        .segments
        .first()
        .map_or(head.latest_seq + 1, |s| s.first_seq);
    let checkpoint = head
        .checkpoint
        .as_ref()
        .filter(|c| c.seq > base.seq && (base.seq + 1 < first_kept || base.seq == 0));
    let (mut tree, mut cursor) = if let Some(cp) = checkpoint {
        let bytes = remote.checkpoint(cp).await?;
        (
            read_checkpoint(&bytes, &cp.name, cp.seq)?,
            Cursor::default(),
        )
    } else if base.seq + 1 < first_kept {
        return Err(BadJournal::Dropped { seq: base.seq }.into());
    } else {
        (base.clone(), known.clone())
    };
    for seg in &head.segments {
        if seg.last_seq <= tree.seq {
            // Already covered (by a checkpoint, or read before): the next
            // read of this segment starts after everything it holds now.
            cursor = Cursor {
                segment: Some(seg.name.clone()),
                offset: seg.length,
            };
            continue;
        }
        let offset = match &cursor.segment {
            Some(name) if *name == seg.name && cursor.offset <= seg.length => cursor.offset,
            _ => 0,
        };
        let bytes = remote.segment(seg, offset).await?;
        let read = fold_records(&mut tree, &bytes, offset, &seg.name)?;
        cursor = Cursor {
            segment: Some(seg.name.clone()),
            offset: offset + read as u64,
        };
    }
    Ok(Followed { tree, cursor, head })
}

/// The tree a checkpoint holds, at sequence `seq`.
fn read_checkpoint(bytes: &[u8], name: &str, seq: u64) -> Result<TreeState, BadJournal> {
    let bad = |source| BadJournal::Checkpoint {
        name: name.to_owned(),
        source,
    };
    let mut tree = TreeState::default();
    for rec in SegmentReader::new(bytes).map_err(bad)? {
        tree.apply(&rec.map_err(bad)?)?;
    }
    tree.seq = seq;
    Ok(tree)
}

/// Applies the records of `bytes` (a segment from `offset` on) that come
/// after `tree`; how many bytes were read. A record still being appended
/// is left for the next read.
fn fold_records(
    tree: &mut TreeState,
    bytes: &[u8],
    offset: u64,
    name: &str,
) -> Result<usize, BadJournal> {
    let bad = |source| BadJournal::Segment {
        name: name.to_owned(),
        source,
    };
    let mut pos = 0usize;
    if offset == 0 {
        parse_segment_header(bytes).map_err(bad)?;
        pos = SEGMENT_HEADER_LEN;
    }
    while pos < bytes.len() {
        match KmlRecord::decode(&bytes[pos..], offset + pos as u64) {
            Ok((rec, len)) => {
                pos += len;
                if rec.seq <= tree.seq {
                    continue;
                }
                if rec.seq != tree.seq + 1 {
                    return Err(BadJournal::OutOfOrder {
                        found: rec.seq,
                        last: tree.seq,
                    });
                }
                tree.apply(&rec)?;
            }
            Err(e) if e.is_incomplete() => break,
            Err(e) => return Err(bad(e)),
        }
    }
    Ok(pos)
}
