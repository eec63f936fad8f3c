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
//! 3. the client finds the fine blocks in its copy, looking around where
//!    each gap's neighbours are, and fetches the rest of the gaps by
//!    ranges.
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
/// What another round costs besides its signature, in bytes the link
/// could have carried meanwhile: one round trip on the benchmark's slow
/// link (8 Mbit/s, 100 ms). Measured there, refining paid in time as well
/// as bytes on S1 and S5 with the base unknown (1.92 s against 2.48 s for
/// one round, and 1.65 s against 1.81 s). The rule does not know the
/// actual link.
pub const ROUND_COST_BYTES: u64 = 100_000;

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

/// Files shorter than this take one round (on either path): below it one
/// signature is small anyway, and a coarse one would save too little to
/// pay for another round.
pub const MIN_LEN: u64 = 1 << 20;

/// The fine blocks that go with coarse blocks of `coarse_block_len`.
fn fine_block_len(coarse_block_len: u32) -> u32 {
    (coarse_block_len / FINE_DIVISOR).max(MIN_FINE_BLOCK_LEN)
}

/// The static path's two levels of a version (what `intersync export`
/// writes beside its signature, for files of [`MIN_LEN`] and more): a
/// coarse signature of its blocks, fetched whole, and a fine one of the
/// windows [`fine_windows`] gives for the whole file as one gap, fetched by
/// ranges for the gaps only. Coarse blocks are a whole number of fine
/// ones, so every gap a client finds starts on a fine window; the last
/// window ends the file, overlapping the one before, as a refine answer's
/// last window of a gap does.
/// Returns the coarse signature, the fine one and the data's version.
pub fn static_levels(data: &[u8]) -> (Signature, Signature, Version) {
    let size = data.len() as u64;
    let (coarse, version) = Signature::calculate(data, coarse_options(size));
    let options = static_fine_options(size);
    let windows = fine_windows(&[Segment::Gap { len: size }], u64::from(options.block_len));
    (
        coarse,
        Signature::of_windows(data, &windows, options),
        version,
    )
}

/// The options of the static fine signature of `size` bytes.
pub fn static_fine_options(size: u64) -> SignatureOptions {
    let block_len = fine_block_len(coarse_options(size).block_len);
    let windows = fine_windows(&[Segment::Gap { len: size }], u64::from(block_len)).len();
    SignatureOptions::for_blocks(size, block_len, windows as u64, SignatureFormat::Md4Rollsum)
}

/// How a version of `size` bytes, whose coarse signature is `coarse`,
/// tiles against `base`: copies of the coarse blocks `base` has (adjacent
/// ones merged), gaps for the rest. The client's side of [`plan`] on the
/// static path, where the coarse signature is of the new version.
pub fn static_segments(coarse: SignatureRef<'_>, size: u64, base: &[u8]) -> Vec<Segment> {
    let block_len = u64::from(coarse.header.block_len);
    let blocks = coarse.block_count();
    let len_of = |b: usize| size.min((b as u64 + 1) * block_len) - b as u64 * block_len;
    let mut source: Vec<Option<u64>> = vec![None; blocks];
    let mut by_sum = std::collections::HashMap::new();
    BlockIndex::new(coarse).scan(base, |m| {
        let b = m.block as usize;
        if u64::from(m.len) == len_of(b) && source[b].is_none() {
            source[b] = Some(m.data_offset);
            if len_of(b) == block_len {
                by_sum.insert(coarse.block(b), m.data_offset);
            }
        }
    });
    let mut segments: Vec<Segment> = Vec::new();
    for (b, found) in source.iter().enumerate() {
        let len = len_of(b);
        // Whole blocks with the same sums (runs of zeros) share one source.
        let found = found.or_else(|| {
            (len == block_len)
                .then(|| by_sum.get(&coarse.block(b)).copied())
                .flatten()
        });
        match (found, segments.last_mut()) {
            (
                Some(at),
                Some(Segment::Copy {
                    base_offset,
                    len: l,
                }),
            ) if *base_offset + *l == at => *l += len,
            (Some(at), _) => segments.push(Segment::Copy {
                base_offset: at,
                len,
            }),
            (None, Some(Segment::Gap { len: l })) => *l += len,
            (None, _) => segments.push(Segment::Gap { len }),
        }
    }
    segments
}

/// Which records of the static fine signature of `size` bytes (`options`
/// its options) are worth fetching for the gaps of `segments`: those whose
/// windows tile the gaps, in order, or none when another round would not
/// pay ([`worth_refining`]). `None` if a window is not among the
/// signature's (one that does not fit the size).
pub fn static_records(
    segments: &[Segment],
    size: u64,
    options: SignatureOptions,
) -> Option<Vec<u64>> {
    let block_len = u64::from(options.block_len);
    let all = fine_windows(&[Segment::Gap { len: size }], block_len);
    let records: Vec<u64> = fine_windows(segments, block_len)
        .into_iter()
        .map(|w| {
            let i = if w % block_len == 0 {
                w / block_len
            } else {
                all.len() as u64 - 1
            };
            (all.get(i as usize) == Some(&w)).then_some(i)
        })
        .collect::<Option<_>>()?;
    let gap_bytes = segments
        .iter()
        .filter(|s| matches!(s, Segment::Gap { .. }))
        .map(Segment::len)
        .sum();
    let sig_bytes = records.len() as u64 * options.header().record_len() as u64;
    Some(if worth_refining(gap_bytes, size, sig_bytes) {
        records
    } else {
        Vec::new()
    })
}

/// Whether another round pays for gaps of `gap_bytes` in a version of
/// `size` bytes whose fine signature would be `sig_bytes`: not when the
/// gaps are more than half the file (mostly new data, where a fine
/// signature finds little), nor when sending them costs less than the
/// fine signature and a round trip.
pub fn worth_refining(gap_bytes: u64, size: u64, sig_bytes: u64) -> bool {
    gap_bytes <= size / 2 && gap_bytes > sig_bytes + ROUND_COST_BYTES
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
    plan_until(coarse, new, &std::sync::atomic::AtomicBool::new(false))
}

/// [`plan`], cut short once `stop` is set (the caller then drops it).
pub fn plan_until(
    coarse: SignatureRef<'_>,
    new: &[u8],
    stop: &std::sync::atomic::AtomicBool,
) -> Plan {
    let block_len = u64::from(coarse.header.block_len);
    let mut segments = Vec::new();
    let mut at = 0u64;
    let mut gap_bytes = 0;
    BlockIndex::new(coarse).stop_when(stop).scan(new, |m| {
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
        fine_block_len(self.coarse_block_len)
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
        if !worth_refining(self.gap_bytes, size, sig_bytes) {
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

/// Looks for the answer's fine blocks in `base`: a rolling scan of the
/// stretches of `base` around each gap (see [`near_gaps`]), then each
/// block still missing is tried where its neighbour's match says it would
/// be (the scan never reports overlapping matches, and the last block of a
/// gap overlaps the one before).
pub fn find(answer: &RefineAnswer<'_>, base: &[u8]) -> Found {
    let fine = answer.fine;
    let block_len = u64::from(fine.header.block_len);
    let windows = fine_windows(&answer.segments, block_len);
    let mut base_offsets: Vec<Option<u64>> = vec![None; windows.len()];
    let index = BlockIndex::new(fine);
    for stretch in near_gaps(&answer.segments, base.len() as u64, block_len) {
        let start = stretch.start;
        index.scan(&base[stretch.start as usize..stretch.end as usize], |m| {
            let slot = &mut base_offsets[m.block as usize];
            if u64::from(m.len) == block_len && slot.is_none() {
                *slot = Some(start + m.data_offset);
            }
        });
    }
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

/// The stretches of a base of `base_len` bytes worth scanning for the
/// fine blocks, in order and apart: for each gap, the base from the end of
/// the copy before it to the start of the copy after it, widened by
/// `margin` each way. That is where an edit's surroundings are, whether
/// it replaced, inserted or deleted bytes; content moved there from far
/// away, in pieces smaller than a coarse block, is fetched instead. When
/// the stretches cover half the base or more, the whole base is one: on
/// 100 MiB with 50 scattered edits they are about 4 MiB, and the scan of
/// the whole base was most of what a second round cost.
pub fn near_gaps(segments: &[Segment], base_len: u64, margin: u64) -> Vec<Range<u64>> {
    // The start of the next copy after each segment, from the end.
    let mut next_start = vec![base_len; segments.len()];
    for i in (0..segments.len().saturating_sub(1)).rev() {
        next_start[i] = match segments[i + 1] {
            Segment::Copy { base_offset, .. } => base_offset,
            Segment::Gap { .. } => next_start[i + 1],
        };
    }
    let mut stretches: Vec<Range<u64>> = Vec::new();
    let mut before = 0;
    for (s, &after) in segments.iter().zip(&next_start) {
        match *s {
            Segment::Copy { base_offset, len } => before = base_offset.saturating_add(len),
            Segment::Gap { .. } => {
                let start = before.min(after).saturating_sub(margin);
                let end = before.max(after).saturating_add(margin).min(base_len);
                stretches.push(start..end.max(start));
            }
        }
    }
    stretches.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<u64>> = Vec::new();
    for r in stretches {
        match merged.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    let covered: u64 = merged.iter().map(|r| r.end - r.start).sum();
    if covered >= base_len / 2 {
        merged.clear();
        merged.push(0..base_len);
    }
    merged
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
        let version = Version::of(new);
        let Some(bytes) = plan.answer(new, &version) else {
            return (None, Vec::new());
        };
        let answer = RefineAnswer::parse(&bytes, old.len() as u64).unwrap();
        let (out, fetched) = last_round(&answer, old, new);
        let moved = coarse.as_bytes().len() as u64 + bytes.len() as u64 + fetched;
        (Some(moved), out)
    }

    /// The client's last round in memory: the result, and the bytes of
    /// `new` it fetched.
    fn last_round(answer: &RefineAnswer<'_>, old: &[u8], new: &[u8]) -> (Vec<u8>, u64) {
        let found = find(answer, old);
        let missing = found.missing(answer);
        let fetched: Vec<&[u8]> = missing
            .iter()
            .map(|r| &new[r.start as usize..r.end as usize])
            .collect();
        let mut out = Vec::new();
        let stats = found
            .assemble(answer, old, &missing, &fetched, &mut out)
            .unwrap();
        (out, stats.literal_bytes)
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
    fn insertions_and_deletions_are_found_near_their_gaps() {
        let (old, _) = scattered(16 << 20, 0, 7);
        let mut new = old.clone();
        // 20 insertions and 20 deletions of 2,000 bytes, a coarse block
        // and more apart: every fine block beside them is found in the
        // stretches scanned, so what is fetched is the insertions and at
        // most a fine block beside each edit.
        for k in 0..20 {
            let at = (k * 2 + 1) * (380 << 10);
            new.splice(at..at, std::iter::repeat_n(k as u8, 2000));
            new.drain(at + (190 << 10)..at + (190 << 10) + 2000);
        }
        let (moved, out) = exchange(&old, &new);
        assert!(out == new, "the result is not the new version");
        let moved = moved.expect("worth refining");
        assert!(moved < 120_000, "{moved} bytes");
    }

    /// The static path in memory: the levels of `new`, the records of the
    /// fine one the client needs, and what it fetches; bytes moved.
    fn static_exchange(old: &[u8], new: &[u8]) -> (u64, Vec<u8>) {
        let size = new.len() as u64;
        let (coarse, fine_all, version) = static_levels(new);
        let segments = static_segments(coarse.view(), size, old);
        let records = static_records(&segments, size, static_fine_options(size)).unwrap();
        let mut fine = fine_all.header().to_bytes().to_vec();
        for &i in &records {
            let (weak, strong) = fine_all.view().block(i as usize);
            fine.extend_from_slice(&weak.to_be_bytes());
            fine.extend_from_slice(strong);
        }
        let fine = Signature::from_bytes(fine).unwrap();
        let answer = RefineAnswer {
            version,
            size,
            segments,
            fine: fine.view(),
        };
        let (out, fetched) = last_round(&answer, old, new);
        let moved = coarse.as_bytes().len() + fine.as_bytes().len();
        (moved as u64 + fetched, out)
    }

    #[test]
    fn static_levels_cost_a_fraction_of_one_signature() {
        let (old, new) = scattered(16 << 20, 30, 3);
        let (moved, out) = static_exchange(&old, &new);
        assert!(out == new, "the result is not the new version");
        // One signature at the policy's blocks is 180 KB (16,384 blocks of
        // 11 bytes) before any data.
        assert!(moved < 130_000, "{moved} bytes");
        // Ends, a short tail, insertions and a file of one coarse block
        // and a bit.
        for seed in 0..4 {
            let (old, mut new) = scattered(3 << 20, 5, seed);
            new.splice(1000..1000, [7u8; 3333]);
            new.truncate(new.len() - 12_345);
            new.extend_from_slice(&[9; 100]);
            assert!(static_exchange(&old, &new).1 == new, "seed {seed}");
        }
        let (old, _) = scattered(1 << 20, 0, 9);
        let mut new = old.clone();
        new.extend_from_slice(&old[..77_777]);
        assert!(static_exchange(&old, &new).1 == new);
        assert!(static_exchange(&new, &old).1 == old);
        // All new data: no fine records, only the coarse level and the data.
        let (other, _) = scattered(4 << 20, 0, 10);
        let (moved, out) = static_exchange(&other, &new);
        assert!(out == new);
        let coarse = Signature::calculate(&new, coarse_options(new.len() as u64)).0;
        let floor = (new.len() + coarse.as_bytes().len() + 12) as u64;
        assert_eq!(moved, floor);
    }

    #[test]
    fn near_gaps_spans_each_gap_and_merges() {
        let copy = |base_offset, len| Segment::Copy { base_offset, len };
        let gap = |len| Segment::Gap { len };
        // A replacement at 1,000, an insertion at 5,000, a deletion at
        // 9,000 and a new tail, in a 100,000-byte base.
        let segments = [
            copy(0, 1000),
            gap(50),
            copy(1050, 3950),
            gap(70),
            copy(5000, 4000),
            gap(10),
            copy(9500, 80_000),
            gap(300),
        ];
        assert_eq!(
            near_gaps(&segments, 100_000, 16),
            [984..1066, 4984..5016, 8984..9516, 89_484..100_000]
        );
        // Stretches that overlap are one.
        assert_eq!(
            near_gaps(&segments, 100_000, 2000),
            [0..11_500, 87_500..100_000]
        );
        // Half the base or more: all of it.
        let mostly_new = [copy(0, 4000), gap(9000), copy(13_000, 3000)];
        let whole: Range<u64> = 0..16_000;
        assert_eq!(near_gaps(&mostly_new, 16_000, 16), vec![whole]);
        assert_eq!(near_gaps(&[gap(10)], 0, 16).len(), 1);
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
