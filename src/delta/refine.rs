//! Multi-round deltas, for a base the server never saw (a migrated copy,
//! a version it no longer keeps). One signature fine enough to find small
//! edits is large; one coarse enough to be cheap makes every edit cost a
//! whole coarse block. So:
//!
//! 1. the client sends a coarse signature of its copy (blocks 8 times the
//!    policy's: about 35 KB for 100 MiB);
//! 2. the server tiles the new version into copies of what the coarse
//!    blocks matched and gaps, and answers with a fine signature of the gaps
//!    only (blocks a 32nd of the coarse), see `intersync_protocol::refine`;
//! 3. the client finds the fine blocks in its copy and fetches the rest of
//!    the gaps by ranges.
//!
//! When refining cannot pay (the gaps are mostly new data, or so small that
//! a round trip and a fine signature cost more than sending them) the
//! server answers an ordinary delta against the coarse signature instead.
//!
//! Trust: the server trusts only a parsed signature; the client trusts the
//! answer only after `RefineAnswer::parse` and the result only after its
//! version is checked.

use std::io::{self, Write};
use std::ops::Range;

use intersync_protocol::Version;
use intersync_protocol::refine::{RefineAnswer, Segment, fine_windows, write_head};
use intersync_protocol::signature::{SignatureFormat, SignatureRef};

use super::DeltaStats;
use super::matcher::BlockIndex;
use super::signature::{MAX_POLICY_BLOCK_LEN, Signature, SignatureOptions, block_sums};

/// Coarse blocks are this many times the policy's.
const COARSE_FACTOR: u32 = 8;
/// Fine blocks are this fraction of the coarse.
const FINE_DIVISOR: u32 = 32;
/// The smallest fine block: below it a record costs too much per byte.
const MIN_FINE_BLOCK_LEN: u32 = 256;
/// What another round costs besides its signature, in bytes a link could
/// have carried meanwhile: a round trip of about 60 ms at 8 Mbit/s.
pub const ROUND_COST_BYTES: u64 = 64 << 10;

/// The first round's options for a base of `len` bytes.
pub fn coarse_options(len: u64) -> SignatureOptions {
    let policy = SignatureOptions::for_len(len, SignatureFormat::Md4Rollsum);
    let block_len = (policy.block_len * COARSE_FACTOR).min(MAX_POLICY_BLOCK_LEN * COARSE_FACTOR);
    SignatureOptions::for_blocks(
        len,
        block_len,
        len / u64::from(block_len) + 1,
        SignatureFormat::Md4Rollsum,
    )
}

/// How the new version tiles against a coarse signature.
#[derive(Debug)]
pub struct Plan {
    pub segments: Vec<Segment>,
    pub gap_bytes: u64,
    coarse_block_len: u32,
}

/// Tiles `new` into copies of the coarse signature's blocks (adjacent ones
/// merged) and the gaps between them.
pub fn plan(coarse: SignatureRef<'_>, new: &[u8]) -> Plan {
    let block_len = u64::from(coarse.header.block_len);
    let mut segments = Vec::new();
    let mut at = 0u64;
    let mut gap_bytes = 0;
    BlockIndex::new(coarse).scan(new, |m| {
        if m.data_offset > at {
            segments.push(Segment::Gap {
                len: m.data_offset - at,
            });
            gap_bytes += m.data_offset - at;
        }
        let base_offset = u64::from(m.block) * block_len;
        let len = u64::from(m.len);
        match segments.last_mut() {
            Some(Segment::Copy {
                base_offset: b,
                len: l,
            }) if *b + *l == base_offset => *l += len,
            _ => segments.push(Segment::Copy { base_offset, len }),
        }
        at = m.data_offset + len;
    });
    let end = new.len() as u64;
    if end > at {
        segments.push(Segment::Gap { len: end - at });
        gap_bytes += end - at;
    }
    Plan {
        segments,
        gap_bytes,
        coarse_block_len: coarse.header.block_len,
    }
}

impl Plan {
    fn fine_block_len(&self) -> u32 {
        (self.coarse_block_len / FINE_DIVISOR).max(MIN_FINE_BLOCK_LEN)
    }

    /// The refine answer for `new` (whose version is `version`), or `None`
    /// when another round would not pay: the gaps are more than half the
    /// file (mostly new data: a fine signature would find little), or they
    /// cost less to send than a fine signature of them plus a round trip.
    pub fn answer(&self, new: &[u8], version: &Version) -> Option<Vec<u8>> {
        let size = new.len() as u64;
        let block_len = self.fine_block_len();
        let windows = fine_windows(&self.segments, u64::from(block_len));
        let options = SignatureOptions::for_blocks(
            size,
            block_len,
            windows.len() as u64,
            SignatureFormat::Md4Rollsum,
        );
        let sig_bytes = windows.len() as u64 * u64::from(4 + options.strong_len);
        if self.gap_bytes > size / 2 || self.gap_bytes <= sig_bytes + ROUND_COST_BYTES {
            return None;
        }
        let mut out = Vec::new();
        write_head(version, size, &self.segments, &mut out);
        out.extend_from_slice(Signature::of_windows(new, &windows, options).as_bytes());
        Some(out)
    }
}

/// Where the client found each fine block in its copy.
pub struct Found {
    windows: Vec<u64>,
    base_offsets: Vec<Option<u64>>,
    block_len: u64,
}

/// Looks for the answer's fine blocks in `base`: one rolling scan, then
/// each block still missing is tried where its neighbour's match says it
/// would be (the scan never reports overlapping matches, and the last
/// block of a gap overlaps the one before).
pub fn find(answer: &RefineAnswer<'_>, base: &[u8]) -> Found {
    let fine = answer.fine;
    let block_len = u64::from(fine.header.block_len);
    let windows = fine_windows(&answer.segments, block_len);
    let mut base_offsets: Vec<Option<u64>> = vec![None; windows.len()];
    BlockIndex::new(fine).scan(base, |m| {
        let slot = &mut base_offsets[m.block as usize];
        if u64::from(m.len) == block_len && slot.is_none() {
            *slot = Some(m.data_offset);
        }
    });
    let options = SignatureOptions {
        format: fine.header.format,
        block_len: fine.header.block_len,
        strong_len: fine.header.strong_len,
    };
    let is_at = |i: usize, at: u64| -> bool {
        let Some(end) = at
            .checked_add(block_len)
            .filter(|e| *e <= base.len() as u64)
        else {
            return false;
        };
        let (weak, strong) = fine.block(i);
        let sums = block_sums(&base[at as usize..end as usize], options);
        sums[..4] == weak.to_be_bytes() && sums[4..] == *strong
    };
    let near = |a: u64, b: u64| a.abs_diff(b) <= block_len;
    for i in 1..windows.len() {
        if base_offsets[i].is_none()
            && near(windows[i - 1], windows[i])
            && let Some(prev) = base_offsets[i - 1]
        {
            let guess = prev + (windows[i] - windows[i - 1]);
            if is_at(i, guess) {
                base_offsets[i] = Some(guess);
            }
        }
    }
    for i in (0..windows.len().saturating_sub(1)).rev() {
        if base_offsets[i].is_none()
            && near(windows[i], windows[i + 1])
            && let Some(next) = base_offsets[i + 1]
            && let Some(guess) = next.checked_sub(windows[i + 1] - windows[i])
            && is_at(i, guess)
        {
            base_offsets[i] = Some(guess);
        }
    }
    Found {
        windows,
        base_offsets,
        block_len,
    }
}

impl Found {
    /// The ranges of the new version that must be fetched: whatever of the
    /// gaps no found block covers.
    pub fn missing(&self, answer: &RefineAnswer<'_>) -> Vec<Range<u64>> {
        let mut out = Vec::new();
        let mut found = self.found().peekable();
        let mut at = 0u64;
        for s in &answer.segments {
            let end = at + s.len();
            if let Segment::Gap { .. } = s {
                let mut pos = at;
                while let Some(&(start, _)) = found.peek().filter(|(w, _)| *w < end) {
                    found.next();
                    if start > pos {
                        out.push(pos..start);
                    }
                    pos = pos.max(start + self.block_len);
                }
                if pos < end {
                    out.push(pos..end);
                }
            }
            at = end;
        }
        out
    }

    /// (new offset, base offset) of every block found, by new offset.
    fn found(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.windows
            .iter()
            .zip(&self.base_offsets)
            .filter_map(|(w, b)| Some((*w, (*b)?)))
    }

    /// Writes the new version: copies and found blocks from `base`, the
    /// rest from `fetched` (the bytes of `missing`, in order).
    pub fn assemble(
        &self,
        answer: &RefineAnswer<'_>,
        base: &[u8],
        missing: &[Range<u64>],
        fetched: &[impl AsRef<[u8]>],
        mut out: impl Write,
    ) -> io::Result<DeltaStats> {
        let corrupt = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
        if fetched.len() != missing.len()
            || fetched
                .iter()
                .zip(missing)
                .any(|(f, r)| f.as_ref().len() as u64 != r.end - r.start)
        {
            return Err(corrupt(
                "the ranges fetched are not the ranges asked".into(),
            ));
        }
        let mut stats = DeltaStats::default();
        // Pieces of the gaps: (new start, length, bytes), by new start.
        let mut pieces: Vec<(u64, &[u8])> = self
            .found()
            .map(|(w, b)| (w, &base[b as usize..(b + self.block_len) as usize]))
            .chain(
                missing
                    .iter()
                    .zip(fetched)
                    .map(|(r, f)| (r.start, f.as_ref())),
            )
            .collect();
        pieces.sort_by_key(|p| p.0);
        let mut pieces = pieces.into_iter().peekable();
        let mut at = 0u64;
        for s in &answer.segments {
            let end = at + s.len();
            match *s {
                Segment::Copy { base_offset, len } => {
                    out.write_all(&base[base_offset as usize..(base_offset + len) as usize])?;
                }
                Segment::Gap { .. } => {
                    let mut pos = at;
                    while pos < end {
                        let (start, bytes) = pieces
                            .next()
                            .filter(|(start, _)| *start <= pos)
                            .ok_or_else(|| corrupt(format!("nothing covers byte {pos}")))?;
                        let piece_end = (start + bytes.len() as u64).min(end);
                        if piece_end <= pos {
                            continue;
                        }
                        out.write_all(
                            &bytes[(pos - start) as usize..(piece_end - start) as usize],
                        )?;
                        pos = piece_end;
                    }
                    // Pieces wholly behind us (an overlapped block) are done.
                    while pieces
                        .next_if(|(start, b)| start + b.len() as u64 <= end)
                        .is_some()
                    {}
                }
            }
            at = end;
        }
        stats.literal_bytes = fetched.iter().map(|f| f.as_ref().len() as u64).sum();
        stats.matched_bytes = answer.size - stats.literal_bytes.min(answer.size);
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, RngCore, SeedableRng};

    fn scattered(len: usize, edits: usize, seed: u64) -> (Vec<u8>, Vec<u8>) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut old = vec![0; len];
        rng.fill_bytes(&mut old);
        let mut new = old.clone();
        for _ in 0..edits {
            let n = rng.random_range(1..=3000usize);
            let at = rng.random_range(0..len - n);
            rng.fill_bytes(&mut new[at..at + n]);
        }
        (old, new)
    }

    /// The whole exchange in memory: what crossed (coarse signature, the
    /// answer, fetched bytes) and the result.
    fn exchange(old: &[u8], new: &[u8]) -> (Option<u64>, Vec<u8>) {
        let (coarse, _) = Signature::calculate(old, coarse_options(old.len() as u64));
        let plan = plan(coarse.view(), new);
        let version = Version(*blake3::hash(new).as_bytes());
        let Some(bytes) = plan.answer(new, &version) else {
            return (None, Vec::new());
        };
        let answer = RefineAnswer::parse(&bytes, old.len() as u64).unwrap();
        let found = find(&answer, old);
        let missing = found.missing(&answer);
        let fetched: Vec<&[u8]> = missing
            .iter()
            .map(|r| &new[r.start as usize..r.end as usize])
            .collect();
        let mut out = Vec::new();
        let stats = found
            .assemble(&answer, old, &missing, &fetched, &mut out)
            .unwrap();
        let moved = coarse.as_bytes().len() as u64 + bytes.len() as u64 + stats.literal_bytes;
        (Some(moved), out)
    }

    #[test]
    fn scattered_edits_cost_little_more_than_themselves() {
        let (old, new) = scattered(16 << 20, 30, 1);
        let (moved, out) = exchange(&old, &new);
        assert!(out == new, "the result is not the new version");
        let moved = moved.expect("worth refining");
        // 30 edits of at most 3000 bytes: 90 KB at worst, 45 KB on average.
        // One round at the policy's blocks would cost a 180 KB signature
        // (16,384 blocks of 1 KiB, 11 bytes each) and a block or two an edit.
        assert!(moved < 150_000, "{moved} bytes");
    }

    #[test]
    fn edits_at_the_ends_and_overlapping_blocks_assemble_right() {
        for seed in 0..6 {
            let (old, mut new) = scattered(4 << 20, 8, seed);
            let n = new.len();
            new[..100].fill(1);
            new[n - 100..].fill(2);
            if seed % 2 == 1 {
                new.truncate(n - 5000);
                new.extend_from_slice(&[3; 777]);
            }
            let (moved, out) = exchange(&old, &new);
            if moved.is_some() {
                assert!(out == new, "seed {seed}: wrong result");
            }
        }
    }

    #[test]
    fn new_data_is_not_refined() {
        let (old, _) = scattered(4 << 20, 0, 5);
        let (new, _) = scattered(4 << 20, 0, 6);
        assert_eq!(exchange(&old, &new).0, None);
        // Nor is one small edit: sending it costs less than a round trip.
        let mut one = old.clone();
        one[1000] ^= 1;
        assert_eq!(exchange(&old, &one).0, None);
    }
}
