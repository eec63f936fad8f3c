//! The two rolling checksums of librsync, bit for bit: rsync's `rollsum`
//! (Adler-style, with librsync's character offset of 31) and `RabinKarp`
//! (a polynomial hash modulo 2^32). Both can slide their window by one byte
//! in constant time, and both can grow at the front, which lets the matcher
//! try every suffix of a file's tail against a short last block.

/// A rolling checksum over a window of bytes.
pub trait WeakSum: Copy {
    /// The sum of `window`.
    fn of(window: &[u8]) -> Self;
    /// Slides the window one byte: `out` leaves at the front, `inn` enters at the back.
    fn rotate(&mut self, out: u8, inn: u8);
    /// Grows the window by one byte at the front.
    fn prepend(&mut self, inn: u8);
    fn digest(&self) -> u32;
}

const ROLLSUM_CHAR_OFFSET: u32 = 31;

/// rsync's rolling checksum as librsync computes it. Only the low 16 bits of
/// `s1` and `s2` reach the digest, so wrapping `u32` arithmetic is exact.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rollsum {
    count: u32,
    s1: u32,
    s2: u32,
}

impl WeakSum for Rollsum {
    fn of(window: &[u8]) -> Rollsum {
        let (mut s1, mut s2) = (0u32, 0u32);
        for &b in window {
            s1 = s1.wrapping_add(u32::from(b));
            s2 = s2.wrapping_add(s1);
        }
        let len = window.len() as u32;
        s1 = s1.wrapping_add(len.wrapping_mul(ROLLSUM_CHAR_OFFSET));
        let tri = (u64::from(len) * (u64::from(len) + 1) / 2) as u32;
        s2 = s2.wrapping_add(tri.wrapping_mul(ROLLSUM_CHAR_OFFSET));
        Rollsum { count: len, s1, s2 }
    }

    #[inline(always)]
    fn rotate(&mut self, out: u8, inn: u8) {
        self.s1 = self
            .s1
            .wrapping_add(u32::from(inn))
            .wrapping_sub(u32::from(out));
        self.s2 = self.s2.wrapping_add(self.s1).wrapping_sub(
            self.count
                .wrapping_mul(u32::from(out) + ROLLSUM_CHAR_OFFSET),
        );
    }

    fn prepend(&mut self, inn: u8) {
        // A byte's weight in s2 is its distance from the window's end, so the
        // bytes already there keep theirs and the new one enters with count + 1.
        let c = u32::from(inn) + ROLLSUM_CHAR_OFFSET;
        self.count += 1;
        self.s1 = self.s1.wrapping_add(c);
        self.s2 = self.s2.wrapping_add(self.count.wrapping_mul(c));
    }

    #[inline(always)]
    fn digest(&self) -> u32 {
        (self.s2 << 16) | (self.s1 & 0xffff)
    }
}

const RABINKARP_SEED: u32 = 1;
const RABINKARP_MULT: u32 = 0x0810_4225;
/// `(MULT - 1) * SEED`: folds the seed's contribution into the byte leaving.
const RABINKARP_ADJ: u32 = 0x0810_4224;

/// librsync's RabinKarp rolling hash: `SEED * M^n + sum(b[i] * M^(n-1-i))` mod 2^32.
#[derive(Clone, Copy, Debug)]
pub struct RabinKarp {
    hash: u32,
    /// `MULT^count`, the weight of the byte about to leave.
    mult: u32,
}

impl WeakSum for RabinKarp {
    fn of(window: &[u8]) -> RabinKarp {
        let mut hash = RABINKARP_SEED;
        let mut mult = 1u32;
        for &b in window {
            hash = hash.wrapping_mul(RABINKARP_MULT).wrapping_add(u32::from(b));
            mult = mult.wrapping_mul(RABINKARP_MULT);
        }
        RabinKarp { hash, mult }
    }

    #[inline(always)]
    fn rotate(&mut self, out: u8, inn: u8) {
        self.hash = self
            .hash
            .wrapping_mul(RABINKARP_MULT)
            .wrapping_add(u32::from(inn))
            .wrapping_sub(
                self.mult
                    .wrapping_mul(u32::from(out).wrapping_add(RABINKARP_ADJ)),
            );
    }

    fn prepend(&mut self, inn: u8) {
        self.hash = self.hash.wrapping_add(
            self.mult
                .wrapping_mul(u32::from(inn).wrapping_add(RABINKARP_ADJ)),
        );
        self.mult = self.mult.wrapping_mul(RABINKARP_MULT);
    }

    #[inline(always)]
    fn digest(&self) -> u32 {
        self.hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rolls_like_fresh<W: WeakSum>(data: &[u8], window: usize) {
        let mut sum = W::of(&data[..window]);
        for start in 1..=data.len() - window {
            sum.rotate(data[start - 1], data[start + window - 1]);
            assert_eq!(sum.digest(), W::of(&data[start..start + window]).digest());
        }
    }

    fn prepends_like_fresh<W: WeakSum>(data: &[u8]) {
        let mut sum = W::of(&[]);
        for start in (0..data.len()).rev() {
            sum.prepend(data[start]);
            assert_eq!(sum.digest(), W::of(&data[start..]).digest());
        }
    }

    #[test]
    fn rollsum_known_values() {
        // Values from librsync's rollsum definition: s1 = sum + n*31,
        // s2 = sum of prefix sums + n(n+1)/2 * 31.
        assert_eq!(Rollsum::of(b"").digest(), 0);
        let s1 = u32::from(b'a') + 31;
        assert_eq!(Rollsum::of(b"a").digest(), (s1 << 16) | s1);
    }

    #[test]
    fn rabinkarp_known_values() {
        assert_eq!(RabinKarp::of(b"").digest(), 1);
        assert_eq!(
            RabinKarp::of(b"a").digest(),
            RABINKARP_MULT.wrapping_add(u32::from(b'a'))
        );
    }

    proptest! {
        #[test]
        fn rolling_matches_fresh(data in proptest::collection::vec(any::<u8>(), 1..300), w in 1usize..64) {
            let window = w.min(data.len());
            rolls_like_fresh::<Rollsum>(&data, window);
            rolls_like_fresh::<RabinKarp>(&data, window);
            prepends_like_fresh::<Rollsum>(&data);
            prepends_like_fresh::<RabinKarp>(&data);
        }
    }
}
