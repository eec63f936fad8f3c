//! rsync's `--chmod` (and rsyncd.conf's `incoming chmod`/`outgoing
//! chmod`): comma-separated items, each an octal mode or chmod(1)'s
//! symbolic `[ugoa]*[-+=][rwxXst]*`, optionally for folders only (`D`) or
//! files only (`F`), applied in order to an item's permission bits.
//!
//! What it trusts: nothing; a malformed item is a [`ChmodError`] naming it.

/// A `--chmod` value that cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid chmod item {item:?}: {reason}")]
pub struct ChmodError {
    pub item: String,
    pub reason: &'static str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Applies {
    All,
    Dirs,
    Files,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Change {
    Octal(u32),
    Symbolic(Vec<(u32, char, Perms)>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
struct Perms {
    r: bool,
    w: bool,
    x: bool,
    big_x: bool,
    s: bool,
    t: bool,
}

/// A parsed `--chmod` value.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Chmod {
    items: Vec<(Applies, Change)>,
}

const WHO_U: u32 = 0o4700;
const WHO_G: u32 = 0o2070;
const WHO_O: u32 = 0o1007;

impl Chmod {
    /// Parses one `--chmod` value (several may be given: see [`Chmod::extend`]).
    pub fn parse(text: &str) -> Result<Chmod, ChmodError> {
        let mut out = Chmod::default();
        out.extend(text)?;
        Ok(out)
    }

    /// Adds the items of another `--chmod` value after these.
    pub fn extend(&mut self, text: &str) -> Result<(), ChmodError> {
        for item in text.split(',') {
            let bad = |reason| ChmodError {
                item: item.to_string(),
                reason,
            };
            let (applies, rest) = match item.as_bytes().first() {
                Some(b'D') => (Applies::Dirs, &item[1..]),
                Some(b'F') => (Applies::Files, &item[1..]),
                _ => (Applies::All, item),
            };
            if rest.is_empty() {
                return Err(bad("empty"));
            }
            if rest.bytes().all(|b| b.is_ascii_digit()) {
                let mode = u32::from_str_radix(rest, 8).map_err(|_| bad("not an octal mode"))?;
                if mode > 0o7777 {
                    return Err(bad("octal mode out of range"));
                }
                self.items.push((applies, Change::Octal(mode)));
                continue;
            }
            let mut ops = Vec::new();
            let bytes = rest.as_bytes();
            let mut i = 0;
            let mut who = 0;
            while i < bytes.len() && matches!(bytes[i], b'u' | b'g' | b'o' | b'a') {
                who |= match bytes[i] {
                    b'u' => WHO_U,
                    b'g' => WHO_G,
                    b'o' => WHO_O,
                    _ => WHO_U | WHO_G | WHO_O,
                };
                i += 1;
            }
            if who == 0 {
                who = WHO_U | WHO_G | WHO_O;
            }
            if i == bytes.len() {
                return Err(bad("no operator (+, - or =)"));
            }
            while i < bytes.len() {
                let op = bytes[i] as char;
                if !matches!(op, '+' | '-' | '=') {
                    return Err(bad("expected +, - or ="));
                }
                i += 1;
                let mut perms = Perms::default();
                while i < bytes.len() && !matches!(bytes[i], b'+' | b'-' | b'=') {
                    match bytes[i] {
                        b'r' => perms.r = true,
                        b'w' => perms.w = true,
                        b'x' => perms.x = true,
                        b'X' => perms.big_x = true,
                        b's' => perms.s = true,
                        b't' => perms.t = true,
                        _ => return Err(bad("unknown permission letter")),
                    }
                    i += 1;
                }
                ops.push((who, op, perms));
            }
            self.items.push((applies, Change::Symbolic(ops)));
        }
        Ok(())
    }

    /// The permission bits (`mode & 0o7777`) after every item that applies.
    pub fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        let mut m = mode & 0o7777;
        for (applies, change) in &self.items {
            match applies {
                Applies::Dirs if !is_dir => continue,
                Applies::Files if is_dir => continue,
                _ => {}
            }
            match change {
                Change::Octal(o) => m = *o,
                Change::Symbolic(ops) => {
                    for &(who, op, p) in ops {
                        let mut bits = 0;
                        if p.r {
                            bits |= 0o444;
                        }
                        if p.w {
                            bits |= 0o222;
                        }
                        if p.x || (p.big_x && (is_dir || m & 0o111 != 0)) {
                            bits |= 0o111;
                        }
                        if p.s {
                            bits |= 0o6000;
                        }
                        if p.t {
                            bits |= 0o1000;
                        }
                        bits &= who;
                        match op {
                            '+' => m |= bits,
                            '-' => m &= !bits,
                            _ => m = (m & !who) | bits,
                        }
                    }
                }
            }
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octal_and_symbolic() {
        let c = Chmod::parse("D755,F644").unwrap();
        assert_eq!(c.apply(0o700, true), 0o755);
        assert_eq!(c.apply(0o600, false), 0o644);
        let c = Chmod::parse("u+rwx,g-w,o=").unwrap();
        assert_eq!(c.apply(0o666, false), 0o740);
        let c = Chmod::parse("a+X").unwrap();
        assert_eq!(c.apply(0o644, false), 0o644);
        assert_eq!(c.apply(0o744, false), 0o755);
        assert_eq!(c.apply(0o644, true), 0o755);
        let c = Chmod::parse("Dg+s,+t,go-rwx").unwrap();
        assert_eq!(c.apply(0o755, true), 0o3700);
        assert_eq!(c.apply(0o755, false), 0o1700);
        let c = Chmod::parse("ug=rw,o+r-w").unwrap();
        assert_eq!(c.apply(0o777, false), 0o665);
    }

    #[test]
    fn malformed_items_are_named() {
        for bad in ["", "D", "u", "u*r", "u+q", "99999", "F8"] {
            assert!(Chmod::parse(bad).is_err(), "{bad:?}");
        }
        let e = Chmod::parse("u+r,zz").unwrap_err();
        assert_eq!(e.item, "zz");
    }
}
