//! Finding the blocks of a signature in other data with the rolling checksum.
//!
//! This is the core of both directions of delta transfer: the rsync direction
//! (signature of the old file, scan the new one, emit a delta) and the zsync
//! direction (signature of the new file, scan the old local copy, learn which
//! blocks are already here). The scan reports matches; callers decide what
//! they mean.
//!
//! A signature may come from anyone. The index is sized by the signature,
//! the scan computes at most one strong sum per position, and a weak sum that
//! keeps colliding without a strong match is ignored after
//! [`MAX_WEAK_COLLISIONS`], so a hostile signature cannot make a scan
//! quadratic.

use std::collections::HashMap;

use intersync_protocol::signature::{SignatureRef, StrongSumKind, WeakSumKind};

use super::strong::strong_sum;
use super::weak::{RabinKarp, Rollsum, WeakSum};

/// False positives allowed per weak-sum value before it is no longer tried.
pub const MAX_WEAK_COLLISIONS: u32 = 256;

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
    /// (weak sum, block number), sorted.
    entries: Vec<(u32, u32)>,
    /// A Bloom filter of weak sums (two bits each): a cheap "certainly
    /// absent" for the common case, a window that matches nothing, that is
    /// wrong about 0.4% of the time.
    filter: Vec<u64>,
    filter_shift: u32,
}

impl<'a> BlockIndex<'a> {
    pub fn new(sig: SignatureRef<'a>) -> BlockIndex<'a> {
        let mut entries: Vec<(u32, u32)> = sig
            .blocks()
            .enumerate()
            .map(|(i, (weak, _))| (weak, i as u32))
            .collect();
        entries.sort_unstable();
        // 32 to 64 filter bits per block (the filter of a 100 MiB file's
        // signature fits in L2), at least 2^16.
        let bits = (entries.len() * 32).next_power_of_two().max(1 << 16);
        let filter_shift = 64 - bits.trailing_zeros();
        let mut index = BlockIndex {
            sig,
            entries,
            filter: vec![0; bits / 64],
            filter_shift,
        };
        for i in 0..index.entries.len() {
            for bit in index.filter_bits(index.entries[i].0) {
                index.filter[bit / 64] |= 1 << (bit % 64);
            }
        }
        index
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
        let mut found = Lookup::Collision;
        for &(_, block) in candidates {
            if self.sig.block(block as usize).1 == strong {
                if block == preferred {
                    return Lookup::Found(block);
                }
                if found == Lookup::Collision {
                    found = Lookup::Found(block);
                }
            }
        }
        found
    }

    /// Scans `data` for blocks of the signature, reporting each match in
    /// order of `data_offset`; matches never overlap.
    pub fn scan(&self, data: &[u8], on_match: impl FnMut(BlockMatch)) {
        match self.sig.header.format.weak() {
            WeakSumKind::Rollsum => self.scan_with::<Rollsum>(data, on_match),
            WeakSumKind::RabinKarp => self.scan_with::<RabinKarp>(data, on_match),
        }
    }

    fn scan_with<W: WeakSum>(&self, data: &[u8], mut on_match: impl FnMut(BlockMatch)) {
        let block_len = self.sig.header.block_len as usize;
        let mut collisions: HashMap<u32, u32> = HashMap::new();
        let mut preferred = 0u32;
        let mut here = 0usize;
        // Start of the data not yet matched.
        let mut unmatched = 0usize;
        if self.entries.is_empty() {
            return;
        }
        let mut weak = if data.len() >= block_len {
            W::of(&data[..block_len])
        } else {
            W::of(&[])
        };
        while here + block_len <= data.len() {
            let digest = weak.digest();
            if self.maybe_present(digest) {
                let window = &data[here..here + block_len];
                match self.find(digest, window, preferred, &collisions) {
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
                    Lookup::Collision => *collisions.entry(digest).or_insert(0) += 1,
                    Lookup::Absent => {}
                }
            }
            if here + block_len < data.len() {
                weak.rotate(data[here], data[here + block_len]);
            }
            here += 1;
        }
        self.match_tail::<W>(&data[unmatched..], unmatched, &mut on_match);
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
