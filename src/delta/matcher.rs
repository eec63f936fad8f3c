//! Finding the blocks of a signature in other data with the rolling checksum.
//!
//! This is the core of both directions of delta transfer: the rsync direction
//! (signature of the old file, scan the new one, emit a delta) and the zsync
//! direction (signature of the new file, scan the old local copy, learn which
//! blocks are already here). The scan reports matches; callers decide what
//! they mean.
//!
//! A signature may come from anyone. The index is sized by the signature
//! and sorted by weak sum, then strong sum, then block number, so that a
//! lookup is two binary searches however many blocks share a sum (a file of
//! zeros has one block repeated thousands of times). The scan computes at
//! most one strong sum per position; a weak sum that keeps colliding
//! without a strong match is ignored after [`MAX_WEAK_COLLISIONS`], and
//! all lookups stop once [`collision_budget`] strong sums have been
//! computed in vain. The strong sums a scan computes thus hash at most
//! about five times the data, whatever the signature. A scan can also be
//! stopped from outside ([`BlockIndex::stop_when`]), when its answer is no
//! longer wanted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use intersync_protocol::signature::{SignatureRef, StrongSumKind, WeakSumKind};

use super::strong::strong_sum;
use super::weak::{RabinKarp, Rollsum, WeakSum};

/// False positives allowed per weak-sum value before it is no longer tried.
pub const MAX_WEAK_COLLISIONS: u32 = 256;

/// Strong sums a scan of `data_len` bytes with blocks of `block_len` may
/// compute without finding a block, in all: four a block of data, and a
/// few hundred more for small data. Each costs a block's worth of hashing.
pub fn collision_budget(data_len: usize, block_len: usize) -> u64 {
    4 * (data_len / block_len.max(1)) as u64 + 256
}

/// A block of the signature found in the scanned data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockMatch {
    /// Where the match starts in the scanned data.
    pub data_offset: u64,
    /// Which block of the signature matched.
    pub block: u32,
    /// Bytes matched: the block length, or less for the signature's last block.
    pub len: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lookup {
    /// No block has this weak sum.
    Absent,
    /// Blocks have this weak sum, but none has the window's strong sum.
    Collision,
    Found(u32),
}

/// A signature indexed by weak sum, ready to scan data with.
pub struct BlockIndex<'a> {
    sig: SignatureRef<'a>,
    /// (weak sum, block number), sorted by weak sum, then strong sum, then
    /// block number.
    entries: Vec<(u32, u32)>,
    /// A Bloom filter of weak sums (two bits each): a cheap "certainly
    /// absent" for the common case, a window that matches nothing, that is
    /// wrong about 0.4% of the time.
    filter: Vec<u64>,
    filter_shift: u32,
    /// Set from outside when the scan's answer is no longer wanted.
    stop: Option<&'a AtomicBool>,
}

impl<'a> BlockIndex<'a> {
    pub fn new(sig: SignatureRef<'a>) -> BlockIndex<'a> {
        let mut entries: Vec<(u32, u32)> = sig
            .blocks()
            .enumerate()
            .map(|(i, (weak, _))| (weak, i as u32))
            .collect();
        // Strong sums are compared only where weak sums are equal: rare in a
        // signature of real data.
        entries.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| sig.block(a.1 as usize).1.cmp(sig.block(b.1 as usize).1))
                .then(a.1.cmp(&b.1))
        });
        // 32 to 64 filter bits per block (the filter of a 100 MiB file's
        // signature fits in L2), at least 2^16.
        let bits = (entries.len() * 32).next_power_of_two().max(1 << 16);
        let filter_shift = 64 - bits.trailing_zeros();
        let mut index = BlockIndex {
            sig,
            entries,
            filter: vec![0; bits / 64],
            filter_shift,
            stop: None,
        };
        for i in 0..index.entries.len() {
            for bit in index.filter_bits(index.entries[i].0) {
                index.filter[bit / 64] |= 1 << (bit % 64);
            }
        }
        index
    }

    /// Stops scans (early, reporting what was found so far) once `stop` is
    /// set: the caller must then not use their result.
    pub fn stop_when(mut self, stop: &'a AtomicBool) -> BlockIndex<'a> {
        self.stop = Some(stop);
        self
    }

    fn stopped(&self) -> bool {
        self.stop.is_some_and(|s| s.load(Ordering::Relaxed))
    }

    #[inline(always)]
    fn filter_bits(&self, weak: u32) -> [usize; 2] {
        let h = u64::from(weak).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let second = (h ^ (h >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        [
            (h >> self.filter_shift) as usize,
            (second >> self.filter_shift) as usize,
        ]
    }

    #[inline(always)]
    fn maybe_present(&self, weak: u32) -> bool {
        self.filter_bits(weak)
            .iter()
            .all(|&bit| self.filter[bit / 64] & (1 << (bit % 64)) != 0)
    }

    fn candidates(&self, weak: u32) -> &[(u32, u32)] {
        let start = self.entries.partition_point(|e| e.0 < weak);
        let end = start + self.entries[start..].partition_point(|e| e.0 == weak);
        &self.entries[start..end]
    }

    /// Looks `window` up: the block whose strong sum matches it, preferring
    /// `preferred` (the block after the previous match, so copies coalesce).
    /// Weak sums in `collisions` too often are treated as absent.
    fn find(
        &self,
        weak: u32,
        window: &[u8],
        preferred: u32,
        collisions: &HashMap<u32, u32>,
    ) -> Lookup {
        let candidates = self.candidates(weak);
        if candidates.is_empty()
            || collisions
                .get(&weak)
                .is_some_and(|&n| n >= MAX_WEAK_COLLISIONS)
        {
            return Lookup::Absent;
        }
        let kind: StrongSumKind = self.sig.header.format.strong();
        let strong = strong_sum(kind, window);
        let strong = &strong[..self.sig.header.strong_len as usize];
        let strong_of = |&(_, block): &(u32, u32)| self.sig.block(block as usize).1;
        let lo = candidates.partition_point(|c| strong_of(c) < strong);
        let same = &candidates[lo..];
        let same = &same[..same.partition_point(|c| strong_of(c) == strong)];
        match same.first() {
            None => Lookup::Collision,
            _ if same.binary_search_by_key(&preferred, |c| c.1).is_ok() => Lookup::Found(preferred),
            Some(&(_, block)) => Lookup::Found(block),
        }
    }

    /// Scans `data` for blocks of the signature, reporting each match in
    /// order of `data_offset`; matches never overlap. Returns how many
    /// strong sums it computed (the measure of its work).
    pub fn scan(&self, data: &[u8], on_match: impl FnMut(BlockMatch)) -> u64 {
        match self.sig.header.format.weak() {
            WeakSumKind::Rollsum => self.scan_with::<Rollsum>(data, on_match),
            WeakSumKind::RabinKarp => self.scan_with::<RabinKarp>(data, on_match),
        }
    }

    fn scan_with<W: WeakSum>(&self, data: &[u8], mut on_match: impl FnMut(BlockMatch)) -> u64 {
        let block_len = self.sig.header.block_len as usize;
        let mut collisions: HashMap<u32, u32> = HashMap::new();
        let mut budget = collision_budget(data.len(), block_len);
        let mut strong_sums = 0u64;
        let mut preferred = 0u32;
        let mut here = 0usize;
        // Start of the data not yet matched.
        let mut unmatched = 0usize;
        if self.entries.is_empty() {
            return 0;
        }
        let mut weak = if data.len() >= block_len {
            W::of(&data[..block_len])
        } else {
            W::of(&[])
        };
        while here + block_len <= data.len() {
            if here & 0xffff == 0 && self.stopped() {
                return strong_sums;
            }
            let digest = weak.digest();
            if budget > 0 && self.maybe_present(digest) {
                let window = &data[here..here + block_len];
                let found = self.find(digest, window, preferred, &collisions);
                strong_sums += u64::from(found != Lookup::Absent);
                match found {
                    Lookup::Found(block) => {
                        on_match(BlockMatch {
                            data_offset: here as u64,
                            block,
                            len: block_len as u32,
                        });
                        preferred = block.wrapping_add(1);
                        here += block_len;
                        unmatched = here;
                        if here + block_len <= data.len() {
                            weak = W::of(&data[here..here + block_len]);
                        }
                        continue;
                    }
                    Lookup::Collision => {
                        *collisions.entry(digest).or_insert(0) += 1;
                        budget -= 1;
                    }
                    Lookup::Absent => {}
                }
            }
            if here + block_len < data.len() {
                weak.rotate(data[here], data[here + block_len]);
            }
            here += 1;
        }
        self.match_tail::<W>(&data[unmatched..], unmatched, &mut on_match);
        strong_sums
    }

    /// The last block of a signature may be shorter than the others. Tries
    /// every suffix of the unmatched tail shorter than a block against it,
    /// growing the suffix one byte at a time, and reports the longest match.
    fn match_tail<W: WeakSum>(
        &self,
        tail: &[u8],
        tail_offset: usize,
        on_match: &mut impl FnMut(BlockMatch),
    ) {
        let last = self.sig.block_count() - 1;
        let (last_weak, _) = self.sig.block(last);
        let longest = tail.len().min(self.sig.header.block_len as usize - 1);
        let mut weak = W::of(&[]);
        let mut best = None;
        for len in 1..=longest {
            weak.prepend(tail[tail.len() - len]);
            if weak.digest() == last_weak {
                let window = &tail[tail.len() - len..];
                let found = self.find(last_weak, window, last as u32, &HashMap::new());
                if found == Lookup::Found(last as u32) {
                    best = Some(len);
                }
            }
        }
        if let Some(len) = best {
            on_match(BlockMatch {
                data_offset: (tail_offset + tail.len() - len) as u64,
                block: last as u32,
                len: len as u32,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::signature::{Signature, SignatureOptions};
    use intersync_protocol::signature::SignatureFormat;

    fn options(block_len: u32) -> SignatureOptions {
        SignatureOptions {
            format: SignatureFormat::Md4Rollsum,
            block_len,
            strong_len: 8,
        }
    }

    /// A file of zeros in 16-byte blocks: 262,144 blocks with one weak and
    /// one strong sum. Every window matches; each lookup must still cost
    /// one strong sum, not a walk of every block (that was 50 s for 2 MiB).
    #[test]
    fn identical_blocks_cost_one_strong_sum_a_block() {
        let zeros = vec![0u8; 4 << 20];
        let (sig, _) = Signature::calculate(&zeros, options(16));
        let mut matched = 0u64;
        let mut blocks = Vec::new();
        let sums = BlockIndex::new(sig.view()).scan(&zeros, |m| {
            matched += u64::from(m.len);
            if blocks.len() < 3 {
                blocks.push(m.block);
            }
        });
        assert_eq!(matched, zeros.len() as u64);
        // Consecutive blocks coalesce: block 0, then the one after it.
        assert_eq!(blocks, [0, 1, 2]);
        assert_eq!(sums, (zeros.len() / 16) as u64);
    }

    /// A hostile signature: block length 1 and every byte value, repeated,
    /// against data that matches nothing but its weak sums. The scan's
    /// strong sums stay within the budget, whatever the signature.
    #[test]
    fn a_hostile_signature_is_bounded_by_the_data() {
        let values: Vec<u8> = (0..=255u8).cycle().take(1 << 20).collect();
        let (sig, _) = Signature::calculate(&values, options(1));
        let data = vec![7u8; 64 << 10];
        let sums = BlockIndex::new(sig.view()).scan(&data, |_| {});
        assert!(
            sums <= data.len() as u64 + collision_budget(data.len(), 1),
            "{sums} strong sums for {} bytes",
            data.len()
        );
        // Data the signature does not describe at all, with a weak sum
        // that collides: in vain only up to the budget.
        let (zeros_sig, _) = Signature::calculate(&vec![0u8; 1 << 16], options(16));
        let other: Vec<u8> = (0..(1u32 << 16)).map(|i| (i % 251) as u8).collect();
        let sums = BlockIndex::new(zeros_sig.view()).scan(&other, |_| {});
        assert!(sums <= other.len() as u64 / 16 + collision_budget(other.len(), 16));
    }

    #[test]
    fn a_stopped_scan_stops() {
        let zeros = vec![0u8; 1 << 20];
        let (sig, _) = Signature::calculate(&zeros, options(512));
        let stop = AtomicBool::new(true);
        let mut matched = 0;
        BlockIndex::new(sig.view())
            .stop_when(&stop)
            .scan(&zeros, |_| matched += 1);
        assert!(matched <= 1, "{matched}");
    }
}
