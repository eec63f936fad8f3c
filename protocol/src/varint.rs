//! Unsigned LEB128 integers, as the patch and fetch formats write them:
//! seven bits a byte, least significant first, the high bit set on every
//! byte but the last. At most ten bytes; a longer one, one past 2^64, or
//! one with a needless last byte of zero (so that every number has one
//! encoding) is refused.

/// Appends `n`.
pub fn put(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// What reading a varint found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    /// The number, and how many bytes it took.
    Done(u64, usize),
    /// The bytes end inside the number.
    Incomplete,
    /// More than ten bytes, a value past 2^64, or more bytes than needed.
    Overlong,
}

/// Reads one from the start of `bytes`.
pub fn get(bytes: &[u8]) -> Read {
    let mut n = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        let part = u64::from(b & 0x7f);
        if i == 9 && part > 1 {
            return Read::Overlong;
        }
        n |= part << (7 * i);
        if b & 0x80 == 0 {
            if b == 0 && i > 0 {
                return Read::Overlong;
            }
            return Read::Done(n, i + 1);
        }
    }
    if bytes.len() >= 10 {
        Read::Overlong
    } else {
        Read::Incomplete
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_what_does_not_fit() {
        for n in [0, 1, 127, 128, 300, 1 << 35, u64::MAX - 1, u64::MAX] {
            let mut out = Vec::new();
            put(&mut out, n);
            assert_eq!(get(&out), Read::Done(n, out.len()), "{n}");
            assert_eq!(get(&out[..out.len() - 1]), Read::Incomplete, "{n}");
        }
        assert_eq!(get(&[0xff; 11]), Read::Overlong);
        assert_eq!(
            get(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]),
            Read::Overlong
        );
        assert_eq!(get(&[]), Read::Incomplete);
        assert_eq!(get(&[0x80, 0x00]), Read::Overlong, "zero in two bytes");
        assert_eq!(get(&[0x81, 0x80, 0x00]), Read::Overlong);
    }
}
