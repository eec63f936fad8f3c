//! The strong sums of librsync: MD4, and BLAKE2b with a 32-byte digest
//! (BLAKE2b-256, which differs from a truncated BLAKE2b-512). A signature
//! stores only a prefix of `strong_len` bytes; callers compare prefixes.

use blake2::Blake2b;
use blake2::digest::Digest;
use blake2::digest::consts::U32;
use intersync_protocol::signature::StrongSumKind;
use md4::Md4;

/// Longest strong sum of any format.
pub const MAX_STRONG_LEN: usize = 32;

/// A strong sum, zero-padded to [`MAX_STRONG_LEN`].
pub type StrongSum = [u8; MAX_STRONG_LEN];

pub fn strong_sum(kind: StrongSumKind, block: &[u8]) -> StrongSum {
    let mut out = [0u8; MAX_STRONG_LEN];
    match kind {
        StrongSumKind::Md4 => out[..16].copy_from_slice(&Md4::digest(block)),
        StrongSumKind::Blake2 => out.copy_from_slice(&Blake2b::<U32>::digest(block)),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn known_digests() {
        // RFC 1320's test vector for MD4, and BLAKE2b-256 of the empty string.
        assert_eq!(
            hex(&strong_sum(StrongSumKind::Md4, b"abc")[..16]),
            "a448017aaf21d8525fc10ae87aa6729d"
        );
        assert_eq!(
            hex(&strong_sum(StrongSumKind::Blake2, b"")),
            "0e5751c026e543b2e8ab2eb06099daa1d1e5df47778f7787faab45cdf12fe3a8"
        );
    }
}
