//! Exact deltas between two versions that one side holds both of. Unlike
//! an rsync delta a patch needs no signature and pays nothing per block:
//! an edit costs about its own size.
//!
//! A patch is a list of copies from the old content, found exactly (at
//! content-defined anchors, then each match grown byte by byte both ways),
//! and the bytes between them, the literals, as one zstd frame compressed
//! with the old content as its reference prefix (what `zstd
//! --patch-from=OLD NEW` does), so that short matches the copies miss
//! still cost little; a few literal bytes that a frame would not make
//! smaller go as they are. A patch that is one zstd frame over the whole new
//! content would pay a few bytes for each of zstd's 128 KiB blocks even
//! where nothing changed: 11 KB between two equal 100 MiB versions, 6% on
//! top of the benchmark's scattered edits (S1: 202,168 bytes against
//! 190,698 for 190,057 edited; S5: 12,240 against 671).
//!
//! Layout (integers are LEB128; `delta` is zigzag-coded):
//!
//! ```text
//! "ISP1" result_len copies literal_len coding(1 byte)
//! copies x (literal_run copy_from_delta copy_len)
//! the literal_len literal bytes: as they are (coding 0), or a zstd frame (1)
//! ```
//!
//! The result is, for each copy, the next `literal_run` literal bytes and
//! then `copy_len` bytes of the old content from `copy_from`, and after the
//! last copy the literals left. `copy_from` is coded against where an
//! in-place edit would put it: the end of the previous copy plus the run.
//!
//! The literal frame's window must reach from its end back to the start of
//! the old content, so old and new content together may span at most
//! [`MAX_PATCH_SPAN`] bytes (a window log of 31, zstd's largest). Past that
//! there is no patch and the caller takes the signature path. Memory: the
//! encoder's table of the old content's anchors is at most a sixteenth of
//! it; zstd's tables for the literal frame are about a sixteenth of the
//! window; the decoder streams. The old and new content are only
//! referenced (mapped), never copied.
//!
//! A patch names neither version: the caller knows which base it used and
//! checks the result's version before trusting it.

use std::io::{self, BufRead, Read, Write};

use intersync_protocol::varint;
use thiserror::Error;

/// Old and new content together may span at most this (a window log of 31).
pub const MAX_PATCH_SPAN: u64 = 1 << 31;

const MAGIC: &[u8; 4] = b"ISP1";

/// zstd level of the literal frame: its default. The literals are the
/// edits, a small part of the file, so the level costs little time: on the
/// benchmark's 100 MiB scenarios levels 1 and 3 took the same, and 3 gave
/// the same bytes or fewer (S5: 664 against 671).
const LEVEL: i32 = 3;

#[derive(Debug, Error)]
pub enum PatchError {
    #[error("no patch: {old} + {new} bytes is more than a patch window spans ({MAX_PATCH_SPAN})")]
    TooLarge { old: u64, new: u64 },
    #[error("bad patch: {0}")]
    Malformed(&'static str),
    #[error("bad patch: copy {index} reads past the old content's {old_len} bytes")]
    CopyOutside { index: u64, old_len: u64 },
    #[error("bad patch: its literals: {0}")]
    Corrupt(io::Error),
    #[error("bad patch: its output passes the {limit} bytes expected")]
    OutputTooLarge { limit: u64 },
    #[error("bad patch: it gives {got} bytes, not the {want} expected")]
    WrongSize { got: u64, want: u64 },
    #[error("writing a patch")]
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

/// One copy of the old content, after `literal_run` literal bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Copy {
    literal_run: u64,
    from: u64,
    len: u64,
}

/// Writes the patch from `old` to `new` into `out`; returns `out` back.
pub fn encode<W: Write>(old: &[u8], new: &[u8], mut out: W) -> Result<W, PatchError> {
    let (old_len, new_len) = (old.len() as u64, new.len() as u64);
    window_log(old_len, new_len).ok_or(PatchError::TooLarge {
        old: old_len,
        new: new_len,
    })?;
    let copies = find_copies(old, new);
    let copied: u64 = copies.iter().map(|c| c.len).sum();
    let literal_len = new_len - copied;
    let mut head = MAGIC.to_vec();
    for n in [new_len, copies.len() as u64, literal_len] {
        varint::put(&mut head, n);
    }
    // The literal coding goes here, once it is chosen.
    let coding_at = head.len();
    let mut old_end = 0u64;
    for c in &copies {
        let expected = old_end + c.literal_run;
        varint::put(&mut head, c.literal_run);
        varint::put(&mut head, zigzag(c.from as i64 - expected as i64));
        varint::put(&mut head, c.len);
        old_end = c.from + c.len;
    }
    let literals = || {
        let mut at = 0usize;
        copies
            .iter()
            .map(move |c| {
                let run = &new[at..at + c.literal_run as usize];
                at += (c.literal_run + c.len) as usize;
                run
            })
            .chain(std::iter::once(
                &new[new.len() - tail_len(&copies, new_len)..],
            ))
    };
    // A few literal bytes are sent as they are when a frame would not be
    // smaller (random bytes, and a frame's own header is 10 bytes or so).
    if literal_len <= RAW_UP_TO {
        let frame = match literal_len {
            0 => Vec::new(),
            _ => literal_frame(old, literal_len, literals(), Vec::new())?,
        };
        let raw = frame.len() as u64 >= literal_len;
        head.insert(coding_at, if raw { CODING_RAW } else { CODING_ZSTD });
        out.write_all(&head)?;
        if raw {
            for run in literals() {
                out.write_all(run)?;
            }
        } else {
            out.write_all(&frame)?;
        }
        return Ok(out);
    }
    head.insert(coding_at, CODING_ZSTD);
    out.write_all(&head)?;
    literal_frame(old, literal_len, literals(), out)
}

/// The literals go as they are.
const CODING_RAW: u8 = 0;
/// The literals go as one zstd frame with the old content as prefix.
const CODING_ZSTD: u8 = 1;

/// Up to this many literal bytes may go raw.
const RAW_UP_TO: u64 = 4096;

/// How many bytes of a result of `new_len` follow the last copy.
fn tail_len(copies: &[Copy], new_len: u64) -> usize {
    let covered: u64 = copies.iter().map(|c| c.literal_run + c.len).sum();
    (new_len - covered) as usize
}

/// Writes `runs` (`len` bytes in all) to `out` as one zstd frame with
/// `old` as its reference prefix.
fn literal_frame<'a, W: Write>(
    old: &[u8],
    len: u64,
    runs: impl Iterator<Item = &'a [u8]>,
    out: W,
) -> Result<W, PatchError> {
    let log = window_log(old.len() as u64, len).expect("literals are part of the new content");
    let mut enc = zstd::stream::write::Encoder::with_ref_prefix(out, LEVEL, old)?;
    enc.window_log(log)?;
    enc.long_distance_matching(true)?;
    enc.set_pledged_src_size(Some(len))?;
    enc.include_contentsize(true)?;
    // The caller checks the result's BLAKE3 version instead.
    enc.include_checksum(false)?;
    for run in runs {
        enc.write_all(run)?;
    }
    Ok(enc.finish()?)
}

/// The copies that make `new` out of `old`, in order. Each is exact and as
/// long as it can be, on both sides; what lies between them is literal.
///
/// Matches are looked for only at anchors: the positions where a gear hash
/// of the last 64 bytes has its top bits clear, about one in
/// [`ANCHOR_EVERY`]. Anchors depend on content, not offsets, so the same
/// bytes give the same anchors in both versions wherever they sit, and a
/// position that is no anchor costs a shift and an add. A match is tried
/// first where the last copy's offset puts it (in-place edits, and the
/// bytes after an insertion, continue it), then at the old anchor with the
/// same hash, and grown both ways byte by byte; the bytes scanned before
/// the first anchor past an edit are won back by growing the match
/// backwards. Content with few anchors (a short period repeated) is
/// probed at the last copy's offset every [`ANCHOR_EVERY`] bytes still.
/// Matching stretches too short to hold an anchor are left to the literal
/// frame.
fn find_copies(old: &[u8], new: &[u8]) -> Vec<Copy> {
    let anchors = Anchors::new(old);
    let mut copies = Vec::new();
    // Where the literals not yet given to a copy start, and the last
    // copy's offset from new to old.
    let (mut literal_start, mut offset) = (0usize, 0i64);
    let mut hash = 0u64;
    let (mut at, mut next_probe) = (0usize, ANCHOR_EVERY);
    while at < new.len() {
        hash = gear(hash, new[at]);
        let anchor = is_anchor(hash);
        if !anchor && at < next_probe {
            at += 1;
            continue;
        }
        next_probe = at + ANCHOR_EVERY;
        let guess = usize::try_from(at as i64 + offset).ok();
        let listed = anchor.then(|| anchors.get(hash)).flatten();
        let found = [guess, listed]
            .into_iter()
            .flatten()
            .find_map(|from| grow(old, new, literal_start, at, from));
        let Some((start, from, len)) = found else {
            at += 1;
            continue;
        };
        copies.push(Copy {
            literal_run: (start - literal_start) as u64,
            from: from as u64,
            len: len as u64,
        });
        offset = from as i64 - start as i64;
        literal_start = start + len;
        // Take up the hash again from the 64 bytes before the next one.
        at = literal_start;
        next_probe = at + ANCHOR_EVERY;
        hash = new[at.saturating_sub(64)..at]
            .iter()
            .fold(0, |h, &b| gear(h, b));
    }
    copies
}

/// One in this many positions is an anchor, in random data. Fewer anchors
/// keep the old content's table small (2 MiB for 100 MiB) and quick to
/// fill: at one in 64 it was too large for the cache, and filling it took
/// longer than the whole patch does now. The price is that a stretch must
/// be a few hundred bytes long to be sure of an anchor; shorter ones are
/// the literal frame's.
const ANCHOR_EVERY: usize = 256;

/// A copy shorter than this is left to the literal frame: its three
/// numbers would cost about as much as the bytes.
const MIN_COPY: usize = 32;

/// The match through `new[at]` and `old[from]`, grown back to
/// `literal_start` at most and forward as far as it goes: its start in
/// new, its start in old and its length, if it is long enough for a copy.
fn grow(
    old: &[u8],
    new: &[u8],
    literal_start: usize,
    at: usize,
    from: usize,
) -> Option<(usize, usize, usize)> {
    if from >= old.len() || old[from] != new[at] {
        return None;
    }
    let back = new[literal_start..at]
        .iter()
        .rev()
        .zip(old[..from].iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    let len = back + common_prefix(&new[at..], &old[from..]);
    (len >= MIN_COPY).then_some((at - back, from - back, len))
}

/// How many bytes `a` and `b` share from their starts.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    const CHUNK: usize = 256;
    let n = a.len().min(b.len());
    let mut i = 0;
    while i + CHUNK <= n && a[i..i + CHUNK] == b[i..i + CHUNK] {
        i += CHUNK;
    }
    i + a[i..n]
        .iter()
        .zip(&b[i..n])
        .take_while(|(x, y)| x == y)
        .count()
}

/// The gear hash with `byte` taken in: each byte's random value is shifted
/// out after 64 more, so the hash is of the last 64 bytes.
fn gear(hash: u64, byte: u8) -> u64 {
    (hash << 1).wrapping_add(GEAR[byte as usize])
}

fn is_anchor(hash: u64) -> bool {
    hash >> (64 - ANCHOR_EVERY.trailing_zeros()) == 0
}

/// A random value for each byte (splitmix64 from a fixed seed).
const GEAR: [u64; 256] = {
    let (mut table, mut state, mut i) = ([0u64; 256], 0x1234_5678_9abc_def0u64, 0);
    while i < 256 {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        table[i] = z ^ (z >> 31);
        i += 1;
    }
    table
};

/// The old content's anchors by hash. A slot holds one anchor (the first
/// to land there): one lost to a shared slot costs a few bytes of scanning
/// in the new content, since the copy found at the next anchor is grown
/// back over it.
struct Anchors {
    /// The anchor's position plus one (0 is empty); the span limit keeps
    /// it within 32 bits.
    slots: Vec<u32>,
    mask: usize,
}

impl Anchors {
    fn new(old: &[u8]) -> Anchors {
        let count = (2 * old.len() / ANCHOR_EVERY).max(1).next_power_of_two();
        let mut anchors = Anchors {
            slots: vec![0; count],
            mask: count - 1,
        };
        let mut hash = 0u64;
        for (at, &b) in old.iter().enumerate() {
            hash = gear(hash, b);
            if is_anchor(hash) {
                let slot = anchors.slot(hash);
                if anchors.slots[slot] == 0 {
                    anchors.slots[slot] = (at + 1) as u32;
                }
            }
        }
        anchors
    }

    /// The slot for `hash`, from bits of a well-mixed product (Fibonacci
    /// hashing) below the top ones, which the anchor condition has fixed.
    fn slot(&self, hash: u64) -> usize {
        (hash.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 24) as usize & self.mask
    }

    fn get(&self, hash: u64) -> Option<usize> {
        match self.slots[self.slot(hash)] {
            0 => None,
            p => Some(p as usize - 1),
        }
    }
}

fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

fn unzigzag(n: u64) -> i64 {
    (n >> 1) as i64 ^ -((n & 1) as i64)
}

/// Reads the patch's header fields in order.
struct Header<'a> {
    rest: &'a [u8],
}

impl Header<'_> {
    fn varint(&mut self, what: &'static str) -> Result<u64, PatchError> {
        match varint::get(self.rest) {
            varint::Read::Done(n, len) => {
                self.rest = &self.rest[len..];
                Ok(n)
            }
            _ => Err(PatchError::Malformed(what)),
        }
    }
}

/// The size of the result a patch gives, read from the start of its header
/// (at most 14 bytes are needed); `None` if it does not say, or is no
/// patch.
pub fn result_len(head: &[u8]) -> Option<u64> {
    let rest = head.strip_prefix(MAGIC)?;
    Header { rest }.varint("result length").ok()
}

/// Applies `patch` to `old`, writing exactly `size` bytes to `out`;
/// returns how many of them were literal (the rest were copied).
///
/// # Security
/// `patch` is untrusted. Every copy must lie within `old`, and the copies
/// and literals must add up to `size` before a byte is written (no
/// decompression bomb); zstd checks the literal frame, which may give
/// neither more nor fewer bytes than the header says, and a window larger
/// than a patch may use is refused. Whether the bytes are the right ones
/// is the caller's check of the result's version.
pub fn decode(old: &[u8], patch: &[u8], mut out: impl Write, size: u64) -> Result<u64, PatchError> {
    let rest = patch
        .strip_prefix(MAGIC)
        .ok_or(PatchError::Malformed("not a patch (no ISP1 magic)"))?;
    let mut head = Header { rest };
    let result = head.varint("result length")?;
    if result > size {
        return Err(PatchError::OutputTooLarge { limit: size });
    }
    let count = head.varint("copy count")?;
    let literal_len = head.varint("literal length")?;
    let (&coding, rest) = head
        .rest
        .split_first()
        .ok_or(PatchError::Malformed("no literal coding"))?;
    head.rest = rest;
    // Each copy takes three bytes at least.
    if count > head.rest.len() as u64 / 3 {
        return Err(PatchError::Malformed("more copies than the header holds"));
    }
    let mut copies = Vec::with_capacity(count as usize);
    let (mut old_end, mut literals, mut copied) = (0u64, 0u64, 0u64);
    for index in 0..count {
        let literal_run = head.varint("literal run")?;
        let delta = unzigzag(head.varint("copy start")?);
        let len = head.varint("copy length")?;
        let outside = PatchError::CopyOutside {
            index,
            old_len: old.len() as u64,
        };
        let from = old_end
            .checked_add(literal_run)
            .and_then(|e| e.checked_add_signed(delta))
            .ok_or(PatchError::Malformed("copy start out of range"))?;
        let end = from
            .checked_add(len)
            .ok_or(PatchError::Malformed("copy length"))?;
        if end > old.len() as u64 {
            return Err(outside);
        }
        literals = literals.saturating_add(literal_run);
        copied = copied.saturating_add(len);
        if literals > literal_len {
            return Err(PatchError::Malformed("literal runs pass the literals"));
        }
        copies.push(Copy {
            literal_run,
            from,
            len,
        });
        old_end = end;
    }
    let total = copied.saturating_add(literal_len);
    if total != result {
        return Err(PatchError::Malformed(
            "copies and literals do not make the result",
        ));
    }
    if total > size {
        return Err(PatchError::OutputTooLarge { limit: size });
    }
    if total < size {
        return Err(PatchError::WrongSize {
            got: total,
            want: size,
        });
    }
    let mut lit = Literals::new(old, coding, head.rest, literal_len)?;
    for c in &copies {
        lit.copy_to(&mut out, c.literal_run)?;
        out.write_all(&old[c.from as usize..(c.from + c.len) as usize])?;
    }
    lit.copy_to(&mut out, literal_len - literals)?;
    lit.finish()?;
    Ok(literal_len)
}

/// The literals, read as the copies need them.
enum Literals<'a> {
    Raw(&'a [u8]),
    Frame(Box<zstd::stream::read::Decoder<'a, &'a [u8]>>),
}

impl<'a> Literals<'a> {
    fn new(
        old: &'a [u8],
        coding: u8,
        rest: &'a [u8],
        len: u64,
    ) -> Result<Literals<'a>, PatchError> {
        match coding {
            CODING_RAW if rest.len() as u64 == len => Ok(Literals::Raw(rest)),
            CODING_RAW => Err(PatchError::Malformed(
                "the raw literals are not the header's length",
            )),
            CODING_ZSTD => {
                if zstd::zstd_safe::get_frame_content_size(rest).ok().flatten() != Some(len) {
                    return Err(PatchError::Malformed(
                        "the literal frame's size is not the header's",
                    ));
                }
                let mut dec = zstd::stream::read::Decoder::with_ref_prefix(rest, old)
                    .map_err(PatchError::Corrupt)?
                    .single_frame();
                dec.window_log_max(31).map_err(PatchError::Corrupt)?;
                Ok(Literals::Frame(Box::new(dec)))
            }
            _ => Err(PatchError::Malformed("unknown literal coding")),
        }
    }

    /// Passes the next `n` literal bytes on to `out`.
    fn copy_to(&mut self, out: &mut impl Write, mut n: u64) -> Result<(), PatchError> {
        let dec = match self {
            Literals::Raw(rest) => {
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                let run = rest
                    .get(..n)
                    .ok_or(PatchError::Malformed("literal runs pass the literals"))?;
                out.write_all(run)?;
                *rest = &rest[n..];
                return Ok(());
            }
            Literals::Frame(dec) => dec,
        };
        let mut buf = [0u8; 16 << 10];
        while n > 0 {
            let want = buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
            let got = dec.read(&mut buf[..want]).map_err(PatchError::Corrupt)?;
            if got == 0 {
                return Err(PatchError::Malformed("the literal frame ends early"));
            }
            out.write_all(&buf[..got])?;
            n -= got as u64;
        }
        Ok(())
    }

    /// Checks that the literals are all used, and nothing follows them.
    fn finish(self) -> Result<(), PatchError> {
        let mut dec = match self {
            Literals::Raw([]) => return Ok(()),
            Literals::Raw(_) => return Err(PatchError::Malformed("bytes after the literals")),
            Literals::Frame(dec) => dec,
        };
        let mut probe = [0u8; 1];
        if dec.read(&mut probe).map_err(PatchError::Corrupt)? != 0 {
            return Err(PatchError::Malformed(
                "the literal frame has more than the header says",
            ));
        }
        let mut rest = dec.finish();
        if !rest.fill_buf().map_err(PatchError::Corrupt)?.is_empty() {
            return Err(PatchError::Malformed("bytes after the literal frame"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn random(len: usize, seed: u64) -> Vec<u8> {
        use rand::{RngCore, SeedableRng};
        let mut bytes = vec![0; len];
        rand_chacha::ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut bytes);
        bytes
    }

    /// `old` with eight one-byte edits and a tail.
    fn edited(len: usize) -> (Vec<u8>, Vec<u8>) {
        let old = random(len, 9);
        let mut new = old.clone();
        for at in (0..len).step_by(len / 7 + 1) {
            new[at] ^= 0x5a;
        }
        new.extend_from_slice(b"and a tail");
        (old, new)
    }

    fn round_trip(old: &[u8], new: &[u8]) -> Vec<u8> {
        let patch = encode(old, new, Vec::new()).unwrap();
        assert_eq!(result_len(&patch), Some(new.len() as u64));
        let mut out = Vec::new();
        decode(old, &patch, &mut out, new.len() as u64).unwrap();
        assert!(out == new, "the patch gives other bytes");
        patch
    }

    #[test]
    fn round_trip_is_small_for_small_edits() {
        let (old, new) = edited(4 << 20);
        let patch = round_trip(&old, &new);
        // Eight one-byte edits and a tail in 4 MiB: a few bytes each for
        // nine copies and the 18 literal bytes as they are, where one
        // rsync block an edit would be 16 KiB and one zstd frame would pay
        // for each of its 32 blocks.
        assert!(patch.len() < 120, "patch of {} bytes", patch.len());
    }

    #[test]
    fn copies_are_exact_and_literals_are_the_edits() {
        let old = random(1 << 20, 1);
        let mut new = old.clone();
        let edits = [
            (1000, 1),
            (70_000, 4096),
            (70_000 + 4096 + 5, 100),
            (900_000, 3),
        ];
        for &(at, len) in &edits {
            new[at..at + len].iter_mut().for_each(|b| *b ^= 0xff);
        }
        let copies = find_copies(&old, &new);
        let literal: u64 = copies.iter().map(|c| c.literal_run).sum();
        let tail = new.len() as u64 - copies.iter().map(|c| c.literal_run + c.len).sum::<u64>();
        let edited: usize = edits.iter().map(|e| e.1).sum();
        // The 5 bytes between the second and third edit are too few for a
        // copy: they join the literals, and the two edits make one.
        assert_eq!(literal + tail, edited as u64 + 5);
        assert_eq!(copies.len(), edits.len());
        assert!(copies.iter().all(|c| c.from + c.len <= old.len() as u64));
        round_trip(&old, &new);
    }

    #[test]
    fn insertions_deletions_and_moves_are_copies() {
        let old = random(1 << 20, 2);
        // A block moved to the front, 10 KiB inserted, 5 KiB deleted.
        let mut new = old[600_000..650_000].to_vec();
        new.extend_from_slice(&old[..300_000]);
        new.extend_from_slice(&random(10 << 10, 3));
        new.extend_from_slice(&old[300_000..500_000]);
        new.extend_from_slice(&old[505_000..]);
        let patch = round_trip(&old, &new);
        assert!(
            patch.len() < (10 << 10) + 100,
            "patch of {} bytes",
            patch.len()
        );
    }

    #[test]
    fn edges_round_trip() {
        let text: Vec<u8> = b"the quick brown fox ".repeat(5000);
        let cases: [(&[u8], &[u8]); 7] = [
            (b"", b""),
            (b"", b"only new"),
            (b"only old", b""),
            (&text, &text),
            (&[0; 100_000], &[0; 150_000]),
            (&text, &text[7..90_001]),
            (&[7; 63], &[7; 64]),
        ];
        for (old, new) in cases {
            round_trip(old, new);
        }
        // Equal versions: one copy and no literal frame.
        assert!(round_trip(&text, &text).len() < 20);
    }

    proptest! {
        #[test]
        fn any_edit_round_trips(
            old in proptest::collection::vec(0u8..4, 0..5000),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), 0usize..300, proptest::collection::vec(any::<u8>(), 0..300)), 0..8),
        ) {
            let mut new = old.clone();
            for (at, remove, insert) in edits {
                let at = at.index(new.len() + 1);
                let end = (at + remove).min(new.len());
                new.splice(at..end, insert);
            }
            round_trip(&old, &new);
        }
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

    /// A patch written field by field (the literal coding is a field: as a
    /// varint, 0 and 1 are the bytes themselves).
    fn patch_of(fields: &[u64], frame: &[u8]) -> Vec<u8> {
        let mut patch = MAGIC.to_vec();
        for &f in fields {
            varint::put(&mut patch, f);
        }
        patch.extend_from_slice(frame);
        patch
    }

    #[test]
    fn malformed_headers_are_typed_errors() {
        let old = b"0123456789";
        let frame = zstd::bulk::compress(b"ab", 1).unwrap();
        let try_ = |patch: &[u8], size| decode(old, patch, Vec::new(), size);
        // Good ones: two literals (in a frame, or raw) then all of old.
        let good = [12, 1, 2, 1, 2, zigzag(-2), 10];
        try_(&patch_of(&good, &frame), 12).unwrap();
        let mut out = Vec::new();
        decode(
            old,
            &patch_of(&[12, 1, 2, 0, 2, zigzag(-2), 10], b"ab"),
            &mut out,
            12,
        )
        .unwrap();
        assert_eq!(out, b"ab0123456789");
        assert!(matches!(
            try_(&patch_of(&[12, 1, 2, 1, 2, zigzag(-1), 10], &frame), 12),
            Err(PatchError::CopyOutside { index: 0, .. })
        ));
        let malformed = [
            (b"ISP2".to_vec(), 0),
            (patch_of(&[12, 1000, 2, 1], &frame), 12),
            (patch_of(&[12, 1, 2, 1, 3, zigzag(-3), 9], &frame), 12),
            (patch_of(&[13, 1, 3, 1, 2, zigzag(-2), 10], &frame), 13),
            (patch_of(&[13, 1, 2, 1, 3, zigzag(-3), 10], &frame), 13),
            (patch_of(&[12, 1, 2, 1, 2, zigzag(-12), 10], &frame), 12),
            (patch_of(&[10, 1, 0, 0, 0, 0, 10], b"x"), 10),
            (patch_of(&[12, 1, 2, 0, 2, zigzag(-2), 10], b"abc"), 12),
            (patch_of(&[12, 1, 2, 0, 2, zigzag(-2), 10], b"a"), 12),
            (patch_of(&[12, 1, 2, 7, 2, zigzag(-2), 10], &frame), 12),
            (patch_of(&[12, 1, 2], b""), 12),
            ([patch_of(&good, &frame), b"x".to_vec()].concat(), 12),
            ([MAGIC.as_slice(), &[0xff; 11]].concat(), 12),
        ];
        for (i, (patch, size)) in malformed.iter().enumerate() {
            match try_(patch, *size) {
                Err(PatchError::Malformed(_)) | Err(PatchError::Corrupt(_)) => {}
                other => panic!("case {i}: {other:?}"),
            }
        }
        assert_eq!(result_len(b"ISP1"), None);
        assert_eq!(result_len(b"junk and more junk"), None);
    }

    #[test]
    fn damage_is_an_error_or_wrong_bytes_never_a_panic() {
        let (old, mut new) = edited(1 << 16);
        new[30_000..31_000].copy_from_slice(&random(1000, 5));
        let patch = encode(&old, &new, Vec::new()).unwrap();
        for at in 0..patch.len() {
            let mut bad = patch.clone();
            bad[at] ^= 0xff;
            let mut out = Vec::new();
            if decode(&old, &bad, &mut out, new.len() as u64).is_ok() {
                // No checksum here: the caller's version check is what
                // catches a flipped literal or copy start.
                assert_eq!(out.len(), new.len());
                assert_ne!(out, new, "flip at {at} went unnoticed");
            }
        }
        for cut in 0..patch.len() {
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
    fn varints_and_zigzag_round_trip() {
        for n in [0, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut bytes = Vec::new();
            varint::put(&mut bytes, n);
            assert_eq!(Header { rest: &bytes }.varint("n").unwrap(), n);
        }
        for n in [0i64, 1, -1, 63, -64, i64::MAX, i64::MIN] {
            assert_eq!(unzigzag(zigzag(n)), n);
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
