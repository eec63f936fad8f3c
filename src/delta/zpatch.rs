//! Exact deltas between two versions that one side holds both of: the new
//! content as one zstd frame compressed with the old content as its
//! reference prefix (what `zstd --patch-from=OLD NEW` does). Unlike an
//! rsync delta it needs no signature and pays nothing per block: an edit
//! costs about its own compressed size.
//!
//! The window must reach from the end of the new content back to the start
//! of the old, so it spans both: at most [`MAX_PATCH_SPAN`] bytes (a
//! window log of 31, zstd's largest). Past that there is no patch and the
//! caller takes the signature path. Memory: the encoder's long-distance
//! table is about a sixteenth of the window, its input buffer at most the
//! new content; the decoder's buffer is about the new content. The old
//! content is only referenced (mapped), never copied.
//!
//! The frame names neither version: the caller knows which base it used
//! and checks the result's version before trusting it.

use std::io::{self, Write};

use thiserror::Error;

/// Old and new content together may span at most this (a window log of 31).
pub const MAX_PATCH_SPAN: u64 = 1 << 31;

/// zstd level: the long-distance matcher finds the long matches at any
/// level, so the level only decides how the rest is coded. On the
/// benchmark's 100 MiB scenarios, level 1 (the fast strategy) came within
/// 0.02% of the smallest patch of levels 1 to 6 for scattered edits and
/// insertions (S1: 202,168 bytes for 190,057 edited, against 202,140 at
/// level 6 and 212,544 at level 3; S2, S3: 1% over the bytes inserted,
/// against 2% at level 3), where levels 5 and 6 took up to twice the time;
/// it is 0.7% larger than level 3 for text (S5).
const LEVEL: i32 = 1;

#[derive(Debug, Error)]
pub enum PatchError {
    #[error("no patch: {old} + {new} bytes is more than a patch window spans ({MAX_PATCH_SPAN})")]
    TooLarge { old: u64, new: u64 },
    #[error("bad patch: {0}")]
    Corrupt(io::Error),
    #[error("bad patch: its output passes the {limit} bytes expected")]
    OutputTooLarge { limit: u64 },
    #[error("bad patch: it gives {got} bytes, not the {want} expected")]
    WrongSize { got: u64, want: u64 },
    #[error("writing a patch: {0}")]
    Write(#[from] io::Error),
}

/// The window log a patch from `old` bytes to `new` bytes needs, or `None`
/// when they span more than any window.
pub fn window_log(old: u64, new: u64) -> Option<u32> {
    let span = old.checked_add(new)?;
    if span > MAX_PATCH_SPAN {
        return None;
    }
    // The smallest power of two that holds the span, within zstd's limits.
    let log = 64 - span.saturating_sub(1).leading_zeros();
    Some(log.clamp(10, 31))
}

/// Writes the patch from `old` to `new` into `out`; returns `out` back.
pub fn encode<W: Write>(old: &[u8], new: &[u8], out: W) -> Result<W, PatchError> {
    let (old_len, new_len) = (old.len() as u64, new.len() as u64);
    let log = window_log(old_len, new_len).ok_or(PatchError::TooLarge {
        old: old_len,
        new: new_len,
    })?;
    let mut enc = zstd::stream::write::Encoder::with_ref_prefix(out, LEVEL, old)
        .map_err(PatchError::Write)?;
    let setup = |enc: &mut zstd::stream::write::Encoder<'_, W>| -> io::Result<()> {
        enc.window_log(log)?;
        enc.long_distance_matching(true)?;
        enc.set_pledged_src_size(Some(new_len))?;
        enc.include_contentsize(true)?;
        // The caller checks the result's BLAKE3 version instead.
        enc.include_checksum(false)
    };
    setup(&mut enc).map_err(PatchError::Write)?;
    enc.write_all(new).map_err(PatchError::Write)?;
    enc.finish().map_err(PatchError::Write)
}

/// The size of the result a patch gives, read from the start of its frame
/// (at most 18 bytes are needed); `None` if the header does not say.
pub fn result_len(head: &[u8]) -> Option<u64> {
    zstd::zstd_safe::get_frame_content_size(head).ok().flatten()
}

/// Applies `patch` to `old`, writing exactly `size` bytes to `out`.
///
/// # Security
/// `patch` is untrusted. zstd checks the frame; on top of that the output
/// may not pass `size` (no decompression bomb), a window larger than a
/// patch may use is refused, and a patch that gives fewer bytes is an
/// error. Whether the bytes are the right ones is the caller's check of the
/// result's version.
pub fn decode(old: &[u8], patch: &[u8], out: impl Write, size: u64) -> Result<(), PatchError> {
    let mut limited = Limited {
        inner: out,
        left: size,
        over: false,
        failed: false,
    };
    let written = {
        let raw = zstd::stream::raw::Decoder::with_ref_prefix(old).map_err(PatchError::Corrupt)?;
        let mut dec = zstd::stream::write::Decoder::with_decoder(&mut limited, raw);
        dec.window_log_max(31).map_err(PatchError::Corrupt)?;
        let fed = dec.write_all(patch).and_then(|()| dec.flush());
        match fed {
            Ok(()) => size - dec.get_ref().left,
            Err(_) if dec.get_ref().over => return Err(PatchError::OutputTooLarge { limit: size }),
            Err(e) if dec.get_ref().failed => return Err(PatchError::Write(e)),
            Err(e) => return Err(PatchError::Corrupt(e)),
        }
    };
    if written != size {
        return Err(PatchError::WrongSize {
            got: written,
            want: size,
        });
    }
    Ok(())
}

/// Passes at most `left` bytes on; more is refused. Remembers whether it
/// refused (`over`) or its writer failed, to tell those from a bad frame.
struct Limited<W: Write> {
    inner: W,
    left: u64,
    over: bool,
    failed: bool,
}

impl<W: Write> Write for Limited<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() as u64 > self.left {
            self.over = true;
            return Err(io::Error::other("patch output past its size"));
        }
        let n = self.inner.write(buf).inspect_err(|_| self.failed = true)?;
        self.left -= n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().inspect_err(|_| self.failed = true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edited(len: usize) -> (Vec<u8>, Vec<u8>) {
        use rand::{RngCore, SeedableRng};
        let mut old = vec![0; len];
        rand_chacha::ChaCha8Rng::seed_from_u64(9).fill_bytes(&mut old);
        let mut new = old.clone();
        for at in (0..len).step_by(len / 7 + 1) {
            new[at] ^= 0x5a;
        }
        new.extend_from_slice(b"and a tail");
        (old, new)
    }

    #[test]
    fn round_trip_is_small_for_small_edits() {
        let (old, new) = edited(4 << 20);
        let patch = encode(&old, &new, Vec::new()).unwrap();
        assert_eq!(result_len(&patch[..18]), Some(new.len() as u64));
        // Eight one-byte edits and a tail in 4 MiB: block headers and a few
        // bytes an edit, where one rsync block an edit would be 16 KiB.
        assert!(patch.len() < 2000, "patch of {} bytes", patch.len());
        let mut out = Vec::new();
        decode(&old, &patch, &mut out, new.len() as u64).unwrap();
        assert_eq!(out, new);
    }

    #[test]
    fn wrong_size_and_bombs_are_refused() {
        let (old, new) = edited(1 << 16);
        let patch = encode(&old, &new, Vec::new()).unwrap();
        let short = decode(&old, &patch, Vec::new(), new.len() as u64 - 1);
        assert!(matches!(short, Err(PatchError::OutputTooLarge { .. })));
        let long = decode(&old, &patch, Vec::new(), new.len() as u64 + 1);
        assert!(matches!(long, Err(PatchError::WrongSize { .. })));
    }

    #[test]
    fn damage_is_an_error_or_wrong_bytes_never_a_panic() {
        let (old, new) = edited(1 << 16);
        let patch = encode(&old, &new, Vec::new()).unwrap();
        for at in [0, 3, 5, patch.len() / 2, patch.len() - 1] {
            let mut bad = patch.clone();
            bad[at] ^= 0xff;
            let mut out = Vec::new();
            if decode(&old, &bad, &mut out, new.len() as u64).is_ok() {
                // zstd has no checksum here: the caller's version check is
                // what catches a flipped literal.
                assert_ne!(out, new, "flip at {at} went unnoticed");
            }
        }
        for cut in [0, 4, patch.len() / 2, patch.len() - 1] {
            assert!(decode(&old, &patch[..cut], Vec::new(), new.len() as u64).is_err());
        }
        // Another base gives other bytes, or an error.
        let other = vec![0u8; old.len()];
        let mut out = Vec::new();
        if decode(&other, &patch, &mut out, new.len() as u64).is_ok() {
            assert_ne!(out, new);
        }
    }

    #[test]
    fn window_covers_both_and_stops_at_zstds_limit() {
        assert_eq!(window_log(0, 0), Some(10));
        assert_eq!(window_log(100 << 20, 100 << 20), Some(28));
        assert_eq!(window_log(1 << 30, 1 << 30), Some(31));
        assert_eq!(window_log(1 << 30, (1 << 30) + 1), None);
        assert_eq!(window_log(u64::MAX, 1), None);
    }
}
