//! librsync signature files: a 12-byte header (magic, block length, strong-sum
//! length, all big-endian `u32`) followed by one record per block of the base
//! file: a 4-byte weak (rolling) sum and `strong_len` bytes of strong sum.
//!
//! The magic names both sums, which is why there are four formats. This module
//! only checks the shape of a signature; computing sums is the engine's job.
//! A signature's records are trusted for nothing but finding candidate blocks:
//! whatever a delta built from them produces is verified against its version.

use thiserror::Error;

/// Length of the fixed header: magic, block length, strong-sum length.
pub const SIGNATURE_HEADER_LEN: usize = 12;

/// Largest block length accepted from a signature. librsync sets no limit, but
/// a block larger than this only makes sense for files of many terabytes, and
/// refusing it bounds the work of matching a window.
pub const MAX_BLOCK_LEN: u32 = 1 << 26;

/// Which weak and strong sums a signature uses, named by its magic number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SignatureFormat {
    /// MD4 strong sums with rsync's rollsum: the legacy format every librsync reads.
    Md4Rollsum,
    /// BLAKE2b strong sums with rollsum (`rdiff signature -R rollsum`).
    Blake2Rollsum,
    /// MD4 strong sums with the RabinKarp rolling hash (`rdiff signature -H md4`).
    Md4RabinKarp,
    /// BLAKE2b strong sums with RabinKarp: what `rdiff signature` writes by default.
    Blake2RabinKarp,
}

/// The rolling (weak) checksum of a format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeakSumKind {
    Rollsum,
    RabinKarp,
}

/// The strong checksum of a format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StrongSumKind {
    Md4,
    Blake2,
}

impl SignatureFormat {
    pub const ALL: [SignatureFormat; 4] = [
        SignatureFormat::Md4Rollsum,
        SignatureFormat::Blake2Rollsum,
        SignatureFormat::Md4RabinKarp,
        SignatureFormat::Blake2RabinKarp,
    ];

    pub fn magic(self) -> u32 {
        match self {
            SignatureFormat::Md4Rollsum => 0x7273_0136,
            SignatureFormat::Blake2Rollsum => 0x7273_0137,
            SignatureFormat::Md4RabinKarp => 0x7273_0146,
            SignatureFormat::Blake2RabinKarp => 0x7273_0147,
        }
    }

    pub fn from_magic(magic: u32) -> Option<SignatureFormat> {
        Self::ALL.into_iter().find(|f| f.magic() == magic)
    }

    pub fn from_sums(weak: WeakSumKind, strong: StrongSumKind) -> SignatureFormat {
        match (weak, strong) {
            (WeakSumKind::Rollsum, StrongSumKind::Md4) => SignatureFormat::Md4Rollsum,
            (WeakSumKind::Rollsum, StrongSumKind::Blake2) => SignatureFormat::Blake2Rollsum,
            (WeakSumKind::RabinKarp, StrongSumKind::Md4) => SignatureFormat::Md4RabinKarp,
            (WeakSumKind::RabinKarp, StrongSumKind::Blake2) => SignatureFormat::Blake2RabinKarp,
        }
    }

    pub fn weak(self) -> WeakSumKind {
        match self {
            SignatureFormat::Md4Rollsum | SignatureFormat::Blake2Rollsum => WeakSumKind::Rollsum,
            SignatureFormat::Md4RabinKarp | SignatureFormat::Blake2RabinKarp => {
                WeakSumKind::RabinKarp
            }
        }
    }

    pub fn strong(self) -> StrongSumKind {
        match self {
            SignatureFormat::Md4Rollsum | SignatureFormat::Md4RabinKarp => StrongSumKind::Md4,
            SignatureFormat::Blake2Rollsum | SignatureFormat::Blake2RabinKarp => {
                StrongSumKind::Blake2
            }
        }
    }

    /// The longest strong sum the format can carry: all of MD4's 16 bytes, or
    /// the 32 bytes of librsync's BLAKE2b (which is BLAKE2b-256, not a
    /// truncated BLAKE2b-512).
    pub fn max_strong_len(self) -> u32 {
        match self.strong() {
            StrongSumKind::Md4 => 16,
            StrongSumKind::Blake2 => 32,
        }
    }
}

/// The fixed part of a signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignatureHeader {
    pub format: SignatureFormat,
    pub block_len: u32,
    pub strong_len: u32,
}

impl SignatureHeader {
    /// Checks the parameters, as [`SignatureRef::parse`] does for a header read from bytes.
    pub fn new(
        format: SignatureFormat,
        block_len: u32,
        strong_len: u32,
    ) -> Result<SignatureHeader, SignatureError> {
        if block_len == 0 || block_len > MAX_BLOCK_LEN {
            return Err(SignatureError::BadBlockLen { block_len });
        }
        if strong_len == 0 || strong_len > format.max_strong_len() {
            return Err(SignatureError::BadStrongLen {
                strong_len,
                max: format.max_strong_len(),
            });
        }
        Ok(SignatureHeader {
            format,
            block_len,
            strong_len,
        })
    }

    /// Bytes per block record: the weak sum and the strong sum.
    pub fn record_len(&self) -> usize {
        4 + self.strong_len as usize
    }

    pub fn to_bytes(&self) -> [u8; SIGNATURE_HEADER_LEN] {
        let mut out = [0; SIGNATURE_HEADER_LEN];
        out[0..4].copy_from_slice(&self.format.magic().to_be_bytes());
        out[4..8].copy_from_slice(&self.block_len.to_be_bytes());
        out[8..12].copy_from_slice(&self.strong_len.to_be_bytes());
        out
    }
}

/// What is wrong with a signature, and where.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SignatureError {
    #[error("signature truncated: header needs {wanted} bytes, {available} available")]
    Truncated { wanted: usize, available: usize },
    #[error("not a librsync signature: magic {magic:#010x}")]
    BadMagic { magic: u32 },
    #[error("signature block length {block_len} is out of range (1 to {MAX_BLOCK_LEN})")]
    BadBlockLen { block_len: u32 },
    #[error("signature strong-sum length {strong_len} is out of range (1 to {max})")]
    BadStrongLen { strong_len: u32, max: u32 },
    #[error(
        "signature body is not whole records: {trailing} stray bytes at offset {offset} \
         (records are {record_len} bytes)"
    )]
    PartialRecord {
        offset: usize,
        record_len: usize,
        trailing: usize,
    },
}

/// A validated signature borrowed from its serialized bytes.
#[derive(Clone, Copy, Debug)]
pub struct SignatureRef<'a> {
    pub header: SignatureHeader,
    records: &'a [u8],
}

impl<'a> SignatureRef<'a> {
    /// Checks a whole serialized signature.
    ///
    /// # Security
    /// Accepts any bytes. The block and strong-sum lengths are bounded, and the
    /// body must be whole records, so later code may index records freely.
    pub fn parse(bytes: &'a [u8]) -> Result<SignatureRef<'a>, SignatureError> {
        let header = SignatureHeader::parse(bytes)?;
        let records = &bytes[SIGNATURE_HEADER_LEN..];
        let record_len = header.record_len();
        let trailing = records.len() % record_len;
        if trailing != 0 {
            return Err(SignatureError::PartialRecord {
                offset: bytes.len() - trailing,
                record_len,
                trailing,
            });
        }
        Ok(SignatureRef { header, records })
    }

    pub fn block_count(&self) -> usize {
        self.records.len() / self.header.record_len()
    }

    /// The weak and strong sums of block `index`. Panics if `index` is out of range.
    pub fn block(&self, index: usize) -> (u32, &'a [u8]) {
        let rec = &self.records[index * self.header.record_len()..][..self.header.record_len()];
        let weak = u32::from_be_bytes([rec[0], rec[1], rec[2], rec[3]]);
        (weak, &rec[4..])
    }

    pub fn blocks(&self) -> impl ExactSizeIterator<Item = (u32, &'a [u8])> + 'a {
        let record_len = self.header.record_len();
        self.records.chunks_exact(record_len).map(|rec| {
            let weak = u32::from_be_bytes([rec[0], rec[1], rec[2], rec[3]]);
            (weak, &rec[4..])
        })
    }
}

impl SignatureHeader {
    /// Reads and checks the 12-byte header at the start of `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<SignatureHeader, SignatureError> {
        let Some(head) = bytes.get(..SIGNATURE_HEADER_LEN) else {
            return Err(SignatureError::Truncated {
                wanted: SIGNATURE_HEADER_LEN,
                available: bytes.len(),
            });
        };
        let word = |i: usize| u32::from_be_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
        let magic = word(0);
        let format =
            SignatureFormat::from_magic(magic).ok_or(SignatureError::BadMagic { magic })?;
        SignatureHeader::new(format, word(4), word(8))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(magic: u32, block_len: u32, strong_len: u32) -> Vec<u8> {
        [magic, block_len, strong_len]
            .iter()
            .flat_map(|w| w.to_be_bytes())
            .collect()
    }

    #[test]
    fn parses_every_format() {
        for format in SignatureFormat::ALL {
            let mut bytes = header(format.magic(), 2048, 8);
            bytes.extend_from_slice(&[1; 24]);
            let sig = SignatureRef::parse(&bytes).unwrap();
            assert_eq!(sig.header.format, format);
            assert_eq!(sig.block_count(), 2);
            assert_eq!(sig.block(1), (0x0101_0101, &[1u8; 8][..]));
        }
    }

    #[test]
    fn rejects_each_malformation() {
        let md4 = SignatureFormat::Md4Rollsum.magic();
        let cases: Vec<(Vec<u8>, SignatureError)> = vec![
            (
                vec![0x72, 0x73],
                SignatureError::Truncated {
                    wanted: 12,
                    available: 2,
                },
            ),
            (
                header(0x7273_0236, 2048, 8),
                SignatureError::BadMagic { magic: 0x7273_0236 },
            ),
            (
                header(md4, 0, 8),
                SignatureError::BadBlockLen { block_len: 0 },
            ),
            (
                header(md4, u32::MAX, 8),
                SignatureError::BadBlockLen {
                    block_len: u32::MAX,
                },
            ),
            (
                header(md4, 2048, 0),
                SignatureError::BadStrongLen {
                    strong_len: 0,
                    max: 16,
                },
            ),
            (
                header(md4, 2048, 17),
                SignatureError::BadStrongLen {
                    strong_len: 17,
                    max: 16,
                },
            ),
            (
                [header(md4, 2048, 8), vec![0; 15]].concat(),
                SignatureError::PartialRecord {
                    offset: 24,
                    record_len: 12,
                    trailing: 3,
                },
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(SignatureRef::parse(&bytes).unwrap_err(), want);
        }
    }

    #[test]
    fn blake2_takes_32_byte_strong_sums() {
        let bytes = header(SignatureFormat::Blake2RabinKarp.magic(), 512, 32);
        assert!(SignatureRef::parse(&bytes).is_ok());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes: Vec<u8>) {
            if let Ok(sig) = SignatureRef::parse(&bytes) {
                for (i, block) in sig.blocks().enumerate() {
                    proptest::prop_assert_eq!(sig.block(i), block);
                }
            }
        }
    }
}
