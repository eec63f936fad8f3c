//! Writing a delta: the new data expressed as copies from the base that a
//! signature describes, and literal bytes for the rest.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use intersync_protocol::DeltaWriter;
use intersync_protocol::signature::SignatureRef;

use super::matcher::{BlockIndex, BlockMatch};

/// What a delta carries: bytes sent as literals, and bytes the receiver
/// already has and copies from its base.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeltaStats {
    pub literal_bytes: u64,
    pub matched_bytes: u64,
    /// Size of the encoded delta.
    pub delta_bytes: u64,
}

/// Writes a delta that turns the base described by `sig` into `data`.
pub fn write_delta(sig: SignatureRef<'_>, data: &[u8], out: impl Write) -> io::Result<DeltaStats> {
    write_delta_until(sig, data, out, &AtomicBool::new(false))
}

/// [`write_delta`], given up (`Interrupted`) as soon as `stop` is set: for
/// an answer whose asker has gone.
pub fn write_delta_until(
    sig: SignatureRef<'_>,
    data: &[u8],
    out: impl Write,
    stop: &AtomicBool,
) -> io::Result<DeltaStats> {
    let mut emitter = Emitter {
        writer: DeltaWriter::new(out)?,
        data,
        block_len: u64::from(sig.header.block_len),
        unmatched_from: 0,
        pending_copy: None,
        stats: DeltaStats::default(),
        error: None,
    };
    if sig.block_count() > 0 {
        BlockIndex::new(sig)
            .stop_when(stop)
            .scan(data, |m| emitter.on_match(m));
    }
    if stop.load(Ordering::Relaxed) {
        return Err(io::Error::new(
            io::ErrorKind::Interrupted,
            "the delta is no longer wanted",
        ));
    }
    if let Some(e) = emitter.error.take() {
        return Err(e);
    }
    emitter.literal_up_to(data.len())?;
    emitter.flush_copy()?;
    let (_, written) = emitter.writer.finish()?;
    Ok(DeltaStats {
        delta_bytes: written,
        ..emitter.stats
    })
}

struct Emitter<'d, W: Write> {
    writer: DeltaWriter<W>,
    data: &'d [u8],
    block_len: u64,
    unmatched_from: usize,
    /// A copy not yet written, grown while matches continue it: (offset, len).
    pending_copy: Option<(u64, u64)>,
    stats: DeltaStats,
    /// The first write error; the scan cannot be stopped from its callback.
    error: Option<io::Error>,
}

impl<W: Write> Emitter<'_, W> {
    fn on_match(&mut self, m: BlockMatch) {
        if self.error.is_none()
            && let Err(e) = self.copy(m)
        {
            self.error = Some(e);
        }
    }

    fn copy(&mut self, m: BlockMatch) -> io::Result<()> {
        self.literal_up_to(m.data_offset as usize)?;
        let offset = u64::from(m.block) * self.block_len;
        let len = u64::from(m.len);
        self.pending_copy = match self.pending_copy {
            Some((o, l)) if o + l == offset => Some((o, l + len)),
            _ => {
                self.flush_copy()?;
                Some((offset, len))
            }
        };
        self.stats.matched_bytes += len;
        self.unmatched_from = m.data_offset as usize + m.len as usize;
        Ok(())
    }

    fn literal_up_to(&mut self, end: usize) -> io::Result<()> {
        if end > self.unmatched_from {
            self.flush_copy()?;
            self.writer.literal(&self.data[self.unmatched_from..end])?;
            self.stats.literal_bytes += (end - self.unmatched_from) as u64;
            self.unmatched_from = end;
        }
        Ok(())
    }

    fn flush_copy(&mut self) -> io::Result<()> {
        if let Some((offset, len)) = self.pending_copy.take() {
            self.writer.copy(offset, len)?;
        }
        Ok(())
    }
}
