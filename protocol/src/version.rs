//! A file version: the BLAKE3 hash of its whole content. Versions name file
//! contents everywhere (KML records, ETags, the version store), so two files
//! with the same bytes have the same version, wherever they live.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// The BLAKE3 hash of a file's content: [`Version::of`] bytes in memory,
/// or a `blake3::Hasher` over a stream finalized into one.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version(pub [u8; 32]);

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum VersionParseError {
    #[error("a version is 64 hex digits, got {len} characters")]
    BadLength { len: usize },
    #[error("not a hex digit at position {position}")]
    BadDigit { position: usize },
    #[error("an InterSync ETag looks like \"b3-<64 hex digits>\"")]
    NotAnEtag,
}

impl Version {
    /// The version of `content`.
    pub fn of(content: &[u8]) -> Version {
        Version(*blake3::hash(content).as_bytes())
    }

    /// The version a hasher fed a file's whole content has found.
    pub fn from_hasher(hasher: &blake3::Hasher) -> Version {
        Version(*hasher.finalize().as_bytes())
    }

    pub fn to_hex(&self) -> String {
        self.to_string()
    }

    /// The 64 lowercase hex digits, without an allocation: a working
    /// copy's state writes one a file (200,000 of them through `write!`
    /// cost a fifth of a clone's last second).
    fn hex_digits(&self) -> [u8; 64] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 64];
        for (i, b) in self.0.iter().enumerate() {
            out[2 * i] = DIGITS[usize::from(b >> 4)];
            out[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
        }
        out
    }

    /// The strong HTTP entity tag of this version: `"b3-<hex>"`, quotes included.
    pub fn etag(&self) -> String {
        format!("\"b3-{self}\"")
    }

    /// Reads an entity tag written by [`Version::etag`], or by a server for
    /// the version's bytes in a content coding (`"b3-<hex>.zst"`, `.gz`).
    /// Weak tags are refused: a weak tag does not promise the bytes, and
    /// versions are about bytes.
    pub fn from_etag(tag: &str) -> Result<Version, VersionParseError> {
        let hex = tag
            .trim()
            .strip_prefix("\"b3-")
            .and_then(|t| t.strip_suffix('"'))
            .ok_or(VersionParseError::NotAnEtag)?;
        // The same version's bytes compressed for the wire.
        let hex = hex
            .strip_suffix(".zst")
            .or_else(|| hex.strip_suffix(".gz"))
            .unwrap_or(hex);
        hex.parse()
    }
}

impl serde::Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let digits = self.hex_digits();
        s.serialize_str(std::str::from_utf8(&digits).expect("hex digits"))
    }
}

impl<'de> serde::Deserialize<'de> for Version {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Version, D::Error> {
        struct Hex;
        impl serde::de::Visitor<'_> for Hex {
            type Value = Version;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a version: 64 hex digits")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Version, E> {
                text.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(Hex)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(std::str::from_utf8(&self.hex_digits()).expect("hex digits"))
    }
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = self.to_string();
        write!(f, "Version({})", &hex[..16])
    }
}

impl FromStr for Version {
    type Err = VersionParseError;

    fn from_str(s: &str) -> Result<Version, VersionParseError> {
        if s.len() != 64 {
            return Err(VersionParseError::BadLength { len: s.len() });
        }
        let digit = |i: usize| {
            (s.as_bytes()[i] as char)
                .to_digit(16)
                .ok_or(VersionParseError::BadDigit { position: i })
        };
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = (digit(2 * i)? << 4 | digit(2 * i + 1)?) as u8;
        }
        Ok(Version(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etag_round_trip() {
        let v = Version([0xab; 32]);
        let tag = v.etag();
        assert_eq!(tag.len(), 64 + 5);
        assert!(tag.starts_with("\"b3-abab"));
        assert_eq!(Version::from_etag(&tag), Ok(v));
    }

    #[test]
    fn rejects_bad_spellings() {
        assert_eq!(
            Version::from_etag("W/\"b3-00\""),
            Err(VersionParseError::NotAnEtag)
        );
        assert_eq!(
            "abc".parse::<Version>(),
            Err(VersionParseError::BadLength { len: 3 })
        );
        let mut s = "0".repeat(64);
        s.replace_range(10..11, "g");
        assert_eq!(
            s.parse::<Version>(),
            Err(VersionParseError::BadDigit { position: 10 })
        );
        // Multi-byte characters must not slice through a char boundary.
        let s = "é".repeat(32);
        assert!(s.parse::<Version>().is_err());
    }
}
