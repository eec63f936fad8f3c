//! Computing signatures, and choosing their parameters.
//!
//! A signature is computed over a mapped file in chunks of whole blocks, and
//! each chunk also feeds the file's BLAKE3 hash, so one pass over the bytes
//! gives both the signature and the [`Version`].

use intersync_protocol::Version;
use intersync_protocol::signature::{
    SIGNATURE_HEADER_LEN, SignatureError, SignatureFormat, SignatureHeader, SignatureRef,
    StrongSumKind, WeakSumKind,
};

use super::strong::strong_sum;
use super::weak::{RabinKarp, Rollsum, WeakSum};

/// Smallest block the policy picks. Below this a signature costs more than
/// 1% of the file (12-byte records), and small files are cheap to send whole.
pub const MIN_POLICY_BLOCK_LEN: u32 = 512;
/// Largest block the policy picks: past this, one scattered edit costs more
/// literal data than a signature record saves.
pub const MAX_POLICY_BLOCK_LEN: u32 = 64 * 1024;

/// How a signature is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignatureOptions {
    pub format: SignatureFormat,
    pub block_len: u32,
    pub strong_len: u32,
}

impl SignatureOptions {
    /// InterSync's block-size policy for a file of `len` bytes.
    ///
    /// The bytes a delta transfer moves are roughly `len / B * (4 + S)` of
    /// signature plus about `B` of literal data per scattered edit, which is
    /// least at `B = sqrt(len * (4 + S) / edits)`. rsync takes
    /// `B = sqrt(len)`, right for a dozen edits. The policy is
    /// `sqrt(len) / 4` rounded up to a power of two, within 512 B to 64 KiB,
    /// chosen with `cargo bench --bench block_size`, which measures signature
    /// plus delta bytes on the scenarios of docs/ARCHITECTURE.md for every power of two.
    /// At 100 MiB it picks 4 KiB, which was best of all candidates for S1
    /// (100 scattered edits: 0.89 MB, against 1.13 MB at 8 KiB and 0.96 MB
    /// at 2 KiB) and for S5 (50 text edits: 0.49 MB). One insertion (S2) or
    /// an append (S3) would rather have 64 KiB blocks (1.07 MB against the
    /// policy's 1.33 MB), and unrelated data (S4) pays 0.3% of signature;
    /// the smart server's version-aware deltas, not the block size, are
    /// what closes those gaps.
    ///
    /// The strong-sum length is librsync's: enough bits that a false block
    /// match is unlikely (about 2^-16) over the whole file. A false match
    /// would still be caught, since every result is checked against its
    /// version, but it would cost a whole-file fetch.
    pub fn for_len(len: u64, format: SignatureFormat) -> SignatureOptions {
        let target = (len as f64).sqrt() / 4.0;
        let block_len = (target.max(1.0) as u32)
            .next_power_of_two()
            .clamp(MIN_POLICY_BLOCK_LEN, MAX_POLICY_BLOCK_LEN);
        let blocks = len / u64::from(block_len) + 1;
        let bits = ilog2(len + (1 << 24)) + ilog2(blocks);
        let strong_len = (2 + bits.div_ceil(8)).min(format.max_strong_len());
        SignatureOptions {
            format,
            block_len,
            strong_len,
        }
    }

    /// Options for `blocks` blocks of `block_len` bytes to be looked for in
    /// about `len` bytes: the strong sum as long as [`SignatureOptions::for_len`]
    /// would make it for that many blocks. `block_len` must be in librsync's range.
    pub fn for_blocks(
        len: u64,
        block_len: u32,
        blocks: u64,
        format: SignatureFormat,
    ) -> SignatureOptions {
        let bits = ilog2(len + (1 << 24)) + ilog2(blocks);
        SignatureOptions {
            format,
            block_len,
            strong_len: (2 + bits.div_ceil(8)).min(format.max_strong_len()),
        }
    }

    /// Options as given on a command line: any omitted length comes from the
    /// policy, and the result is checked like a signature read from disk.
    pub fn new(
        len: u64,
        format: SignatureFormat,
        block_len: Option<u32>,
        strong_len: Option<u32>,
    ) -> Result<SignatureOptions, SignatureError> {
        let policy = SignatureOptions::for_len(len, format);
        let header = SignatureHeader::new(
            format,
            block_len.unwrap_or(policy.block_len),
            strong_len.unwrap_or(policy.strong_len),
        )?;
        Ok(SignatureOptions {
            format,
            block_len: header.block_len,
            strong_len: header.strong_len,
        })
    }

    /// The header a signature with these options has.
    pub fn header(&self) -> SignatureHeader {
        SignatureHeader {
            format: self.format,
            block_len: self.block_len,
            strong_len: self.strong_len,
        }
    }
}

fn ilog2(v: u64) -> u32 {
    v.max(1).ilog2()
}

/// An owned, validated signature in its serialized form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    bytes: Vec<u8>,
}

impl Signature {
    /// Validates serialized bytes (see [`SignatureRef::parse`]).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Signature, SignatureError> {
        SignatureRef::parse(&bytes)?;
        Ok(Signature { bytes })
    }

    pub fn view(&self) -> SignatureRef<'_> {
        SignatureRef::parse(&self.bytes).expect("validated on construction")
    }

    pub fn header(&self) -> SignatureHeader {
        self.view().header
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// The signature of `data` and its version, in one pass over the bytes.
    ///
    /// Options must have come through [`SignatureOptions::new`] or
    /// [`SignatureOptions::for_len`], which keep them in librsync's ranges.
    pub fn calculate(data: &[u8], options: SignatureOptions) -> (Signature, Version) {
        let header = options.header();
        let block_len = options.block_len as usize;
        let blocks = data.len().div_ceil(block_len);
        let mut bytes = Vec::with_capacity(SIGNATURE_HEADER_LEN + blocks * header.record_len());
        bytes.extend_from_slice(&header.to_bytes());
        let mut hasher = blake3::Hasher::new();
        // Chunks of about 1 MiB of whole blocks stay in cache between the
        // signature and the hash.
        let chunk_len = block_len * (1usize << 20).div_ceil(block_len);
        for chunk in data.chunks(chunk_len) {
            append_records(chunk, options, &mut bytes);
            hasher.update(chunk);
        }
        let version = Version::from_hasher(&hasher);
        (Signature { bytes }, version)
    }
}

impl Signature {
    /// The signature of the blocks of `data` that start at `starts`, in that
    /// order (blocks anywhere, overlapping or not, each a whole block).
    pub fn of_windows(data: &[u8], starts: &[u64], options: SignatureOptions) -> Signature {
        let header = options.header();
        let block_len = options.block_len as usize;
        let mut bytes =
            Vec::with_capacity(SIGNATURE_HEADER_LEN + starts.len() * header.record_len());
        bytes.extend_from_slice(&header.to_bytes());
        for &start in starts {
            let block = &data[start as usize..start as usize + block_len];
            bytes.extend_from_slice(&block_sums(block, options));
        }
        Signature { bytes }
    }
}

/// The record of one block: weak sum, then the strong sum's prefix.
pub fn block_sums(block: &[u8], options: SignatureOptions) -> Vec<u8> {
    let weak = match options.format.weak() {
        WeakSumKind::Rollsum => Rollsum::of(block).digest(),
        WeakSumKind::RabinKarp => RabinKarp::of(block).digest(),
    };
    let mut out = weak.to_be_bytes().to_vec();
    out.extend_from_slice(
        &strong_sum(options.format.strong(), block)[..options.strong_len as usize],
    );
    out
}

/// Appends the records of every block of `chunk` (whole blocks but perhaps the last).
fn append_records(chunk: &[u8], options: SignatureOptions, out: &mut Vec<u8>) {
    let strong_len = options.strong_len as usize;
    if options.format == SignatureFormat::Md4Rollsum {
        // fast_rsync hashes several MD4 blocks at once with SIMD.
        let sig = fast_rsync::Signature::calculate(
            chunk,
            fast_rsync::SignatureOptions {
                block_size: options.block_len,
                crypto_hash_size: options.strong_len,
            },
        );
        out.extend_from_slice(&sig.serialized()[SIGNATURE_HEADER_LEN..]);
        return;
    }
    let strong_kind: StrongSumKind = options.format.strong();
    for block in chunk.chunks(options.block_len as usize) {
        let weak = match options.format.weak() {
            WeakSumKind::Rollsum => Rollsum::of(block).digest(),
            WeakSumKind::RabinKarp => RabinKarp::of(block).digest(),
        };
        out.extend_from_slice(&weak.to_be_bytes());
        out.extend_from_slice(&strong_sum(strong_kind, block)[..strong_len]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_stays_in_range() {
        for len in [
            0,
            1,
            4096,
            1 << 20,
            100 << 20,
            1 << 30,
            1 << 40,
            u64::MAX / 2,
        ] {
            let o = SignatureOptions::for_len(len, SignatureFormat::Md4Rollsum);
            assert!(o.block_len.is_power_of_two(), "{len}: {o:?}");
            assert!((MIN_POLICY_BLOCK_LEN..=MAX_POLICY_BLOCK_LEN).contains(&o.block_len));
            assert!((4..=16).contains(&o.strong_len), "{len}: {o:?}");
        }
        let o = SignatureOptions::for_len(100 << 20, SignatureFormat::Md4Rollsum);
        assert_eq!((o.block_len, o.strong_len), (4096, 7));
    }

    #[test]
    fn all_formats_agree_on_shape() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for format in SignatureFormat::ALL {
            let options =
                SignatureOptions::new(data.len() as u64, format, Some(1000), None).unwrap();
            let (sig, version) = Signature::calculate(&data, options);
            assert_eq!(sig.view().block_count(), 10);
            assert_eq!(version.0, *blake3::hash(&data).as_bytes());
            let (weak, strong) = sig.view().block(3);
            let block = &data[3000..4000];
            let want_weak = match format.weak() {
                WeakSumKind::Rollsum => Rollsum::of(block).digest(),
                WeakSumKind::RabinKarp => RabinKarp::of(block).digest(),
            };
            assert_eq!(weak, want_weak, "{format:?}");
            assert_eq!(strong, &strong_sum(format.strong(), block)[..strong.len()]);
        }
    }

    #[test]
    fn chunking_does_not_change_the_signature() {
        // Block length that does not divide 1 MiB, over more than one chunk.
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i ^ (i >> 7)) as u8).collect();
        let options =
            SignatureOptions::new(0, SignatureFormat::Md4Rollsum, Some(3000), Some(16)).unwrap();
        let (sig, _) = Signature::calculate(&data, options);
        let whole = fast_rsync::Signature::calculate(
            &data,
            fast_rsync::SignatureOptions {
                block_size: 3000,
                crypto_hash_size: 16,
            },
        );
        assert_eq!(sig.as_bytes(), whole.serialized());
    }

    #[test]
    fn rejects_out_of_range_options() {
        let f = SignatureFormat::Md4Rollsum;
        assert!(SignatureOptions::new(0, f, Some(0), None).is_err());
        assert!(SignatureOptions::new(0, f, None, Some(17)).is_err());
        assert!(SignatureOptions::new(0, SignatureFormat::Blake2Rollsum, None, Some(32)).is_ok());
    }
}
