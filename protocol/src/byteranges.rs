//! `multipart/byteranges` answers to multi-range GETs (RFC 9110, 14.6): the
//! boundary from the Content-Type, then parts, each with its own headers
//! (one of them `Content-Range: bytes FIRST-LAST/LENGTH`) and body.
//!
//! The body comes from a web server we do not control. Everything is
//! checked: the boundary's shape, each part's framing, that its range is
//! well formed and its body exactly that long. What the caller asked for is
//! the caller's to check; this only reads what was sent.

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ByterangesError {
    #[error("not multipart/byteranges: {0:?}")]
    NotMultipart(String),
    #[error("bad boundary in {0:?}")]
    BadBoundary(String),
    #[error("part at offset {offset}: {reason}")]
    BadPart { offset: usize, reason: String },
    #[error("body ends before its closing boundary")]
    Unterminated,
}

/// One part: its byte range (`first..last + 1`) in the file and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part<'a> {
    pub range: std::ops::Range<u64>,
    pub bytes: &'a [u8],
}

/// The boundary of a `multipart/byteranges` Content-Type.
pub fn boundary(content_type: &str) -> Result<String, ByterangesError> {
    let (kind, params) = content_type.split_once(';').unwrap_or((content_type, ""));
    if !kind.trim().eq_ignore_ascii_case("multipart/byteranges") {
        return Err(ByterangesError::NotMultipart(content_type.to_owned()));
    }
    let value = params
        .split(';')
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim().trim_matches('"').to_owned())
        .ok_or_else(|| ByterangesError::BadBoundary(content_type.to_owned()))?;
    let ok = (1..=70).contains(&value.len())
        && value.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        && !value.ends_with(' ');
    if ok {
        Ok(value)
    } else {
        Err(ByterangesError::BadBoundary(content_type.to_owned()))
    }
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// Parses `bytes=FIRST-LAST/LENGTH` (the `bytes ` unit, then numbers).
fn content_range(value: &str) -> Option<std::ops::Range<u64>> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (span, _total) = rest.split_once('/')?;
    let (first, last) = span.split_once('-')?;
    let (first, last): (u64, u64) = (first.trim().parse().ok()?, last.trim().parse().ok()?);
    let end = last.checked_add(1)?;
    (first <= last).then_some(first..end)
}

/// Splits a multipart/byteranges body into its parts.
///
/// # Security
/// Accepts any bytes; never allocates beyond the list of parts.
pub fn parse<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<Part<'a>>, ByterangesError> {
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    let mut parts = Vec::new();
    let mut pos = find(body, delimiter, 0).ok_or(ByterangesError::Unterminated)?;
    loop {
        let after = pos + delimiter.len();
        if body.get(after..after + 2) == Some(b"--") {
            return Ok(parts);
        }
        let bad = |reason: &str| ByterangesError::BadPart {
            offset: pos,
            reason: reason.to_owned(),
        };
        if body.get(after..after + 2) != Some(b"\r\n") {
            return Err(bad("no line break after the boundary"));
        }
        let headers_end = find(body, b"\r\n\r\n", after).ok_or_else(|| bad("headers never end"))?;
        // No headers at all puts the blank line right after the boundary.
        let headers = body.get(after + 2..headers_end).unwrap_or(b"");
        let headers = std::str::from_utf8(headers).map_err(|_| bad("headers are not text"))?;
        let range = headers
            .split("\r\n")
            .filter_map(|line| line.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-range"))
            .and_then(|(_, v)| content_range(v))
            .ok_or_else(|| bad("no valid Content-Range"))?;
        let start = headers_end + 4;
        let len = usize::try_from(range.end - range.start).map_err(|_| bad("range too long"))?;
        let end = start
            .checked_add(len)
            .filter(|&e| e <= body.len())
            .ok_or(ByterangesError::Unterminated)?;
        parts.push(Part {
            range,
            bytes: &body[start..end],
        });
        // The part's bytes are followed by CRLF and the next delimiter.
        if body.len() < end + 2 + delimiter.len() {
            return Err(ByterangesError::Unterminated);
        }
        if &body[end..end + 2] != b"\r\n" || !body[end + 2..].starts_with(delimiter) {
            return Err(ByterangesError::BadPart {
                offset: end,
                reason: "part is longer than its range".into(),
            });
        }
        pos = end + 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NGINX: &[u8] = b"\r\n--00000000000000000001\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes 0-3/100\r\n\r\nabcd\r\n--00000000000000000001\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes 10-11/100\r\n\r\nxy\r\n--00000000000000000001--\r\n";

    #[test]
    fn reads_nginx_style_answers() {
        let b = boundary("multipart/byteranges; boundary=00000000000000000001").unwrap();
        let parts = parse(NGINX, &b).unwrap();
        assert_eq!(
            parts,
            vec![
                Part {
                    range: 0..4,
                    bytes: b"abcd"
                },
                Part {
                    range: 10..12,
                    bytes: b"xy"
                }
            ]
        );
    }

    #[test]
    fn refuses_what_does_not_add_up() {
        let b = "00000000000000000001";
        assert!(boundary("application/octet-stream").is_err());
        assert!(boundary("multipart/byteranges").is_err());
        let short = String::from_utf8_lossy(NGINX).replace("bytes 10-11/100", "bytes 10-12/100");
        assert!(
            parse(short.as_bytes(), b).is_err(),
            "a range longer than its bytes"
        );
        let long = String::from_utf8_lossy(NGINX).replace("bytes 10-11/100", "bytes 10-10/100");
        assert!(
            parse(long.as_bytes(), b).is_err(),
            "bytes longer than the range"
        );
        let reversed = String::from_utf8_lossy(NGINX).replace("bytes 10-11/100", "bytes 11-10/100");
        assert!(parse(reversed.as_bytes(), b).is_err());
        assert_eq!(
            parse(&NGINX[..NGINX.len() - 10], b),
            Err(ByterangesError::Unterminated)
        );
    }

    #[test]
    fn a_part_without_headers_is_refused_not_a_panic() {
        // Found by the fuzzer: the blank line right after the boundary.
        assert!(parse(b"--b\r\n\r\n--b--", "b").is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bodies_never_panic(body: Vec<u8>) {
            let _ = parse(&body, "b");
        }
    }
}
