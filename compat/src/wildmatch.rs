//! rsync's wildcard matching (its `lib/wildmatch.c` semantics, written anew):
//! `?` and `*` never match `/`, `**` matches anything including `/`,
//! `[...]` is a byte class (`!` or `^` negates, ranges, `[:alpha:]` and the
//! other POSIX classes in the C locale) that never matches `/`, and `\`
//! makes the next byte literal. Patterns and names are bytes: file names
//! need not be UTF-8.
//!
//! Matching never panics and is linear in practice: a `*` that fails at a
//! `/` tells the enclosing `**` to stop retrying (rsync's two abort codes).

/// How a match attempt ended.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Outcome {
    Match,
    NoMatch,
    /// The text ran out: no later start can match either.
    AbortAll,
    /// A single `*` hit a `/`: only an enclosing `**` may go on.
    AbortToStarStar,
}

/// Whether `pattern` matches the whole of `text`.
pub fn wildmatch(pattern: &[u8], text: &[u8]) -> bool {
    dowild(pattern, text) == Outcome::Match
}

/// Where in a path a pattern may start matching.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Anchor {
    /// At the start of the text only.
    Start,
    /// At the start or just after any `/`.
    AnySlash,
    /// Against the last `n` `/`-separated elements only.
    LastElements(usize),
}

/// Whether `pattern` matches `text` from the place `anchor` allows.
pub fn wildmatch_at(pattern: &[u8], text: &[u8], anchor: Anchor) -> bool {
    match anchor {
        Anchor::Start => wildmatch(pattern, text),
        Anchor::LastElements(n) => {
            trailing_elements(text, n).is_some_and(|tail| wildmatch(pattern, tail))
        }
        Anchor::AnySlash => {
            let first = dowild(pattern, text);
            if first == Outcome::Match {
                return true;
            }
            if first == Outcome::AbortAll {
                return false;
            }
            for (i, &b) in text.iter().enumerate() {
                if b != b'/' {
                    continue;
                }
                match dowild(pattern, &text[i + 1..]) {
                    Outcome::Match => return true,
                    Outcome::NoMatch | Outcome::AbortToStarStar => {}
                    Outcome::AbortAll => return false,
                }
            }
            false
        }
    }
}

/// Whether `literal` equals `text` from where `anchor` allows (no
/// wildcards: rsync compares such patterns as plain strings).
pub fn litmatch_at(literal: &[u8], text: &[u8], anchor: Anchor) -> bool {
    match anchor {
        Anchor::Start => literal == text,
        Anchor::LastElements(n) => trailing_elements(text, n) == Some(literal),
        Anchor::AnySlash => {
            literal == text
                || text
                    .iter()
                    .enumerate()
                    .any(|(i, &b)| b == b'/' && &text[i + 1..] == literal)
        }
    }
}

/// The last `n` elements of `text`, or `None` if it has fewer.
fn trailing_elements(text: &[u8], n: usize) -> Option<&[u8]> {
    if n == 0 {
        return None;
    }
    let mut left = n;
    for i in (0..text.len()).rev() {
        if text[i] == b'/' {
            left -= 1;
            if left == 0 {
                return Some(&text[i + 1..]);
            }
        }
    }
    (left == 1).then_some(text)
}

fn dowild(p: &[u8], t: &[u8]) -> Outcome {
    let (mut pi, mut ti) = (0, 0);
    while pi < p.len() {
        let pc = p[pi];
        let Some(&tc) = t.get(ti) else {
            if pc != b'*' {
                return Outcome::AbortAll;
            }
            return star(p, pi, t, ti);
        };
        match pc {
            b'\\' => {
                // A trailing backslash matches nothing.
                pi += 1;
                if p.get(pi) != Some(&tc) {
                    return Outcome::NoMatch;
                }
            }
            b'?' => {
                if tc == b'/' {
                    return Outcome::NoMatch;
                }
            }
            b'*' => return star(p, pi, t, ti),
            b'[' => match class(p, pi + 1, tc) {
                Some((true, end)) if tc != b'/' => pi = end,
                Some(_) => return Outcome::NoMatch,
                None => return Outcome::AbortAll,
            },
            _ => {
                if pc != tc {
                    return Outcome::NoMatch;
                }
            }
        }
        pi += 1;
        ti += 1;
    }
    if ti == t.len() {
        Outcome::Match
    } else {
        Outcome::NoMatch
    }
}

/// `p[pi]` is a `*`: try every split of the rest of the text.
fn star(p: &[u8], mut pi: usize, t: &[u8], mut ti: usize) -> Outcome {
    pi += 1;
    let double = p.get(pi) == Some(&b'*');
    while p.get(pi) == Some(&b'*') {
        pi += 1;
    }
    if pi == p.len() {
        // A trailing `**` matches everything, a trailing `*` only what has no
        // more slashes.
        return if !double && t[ti..].contains(&b'/') {
            Outcome::NoMatch
        } else {
            Outcome::Match
        };
    }
    while ti < t.len() {
        match dowild(&p[pi..], &t[ti..]) {
            Outcome::NoMatch => {
                if !double && t[ti] == b'/' {
                    return Outcome::AbortToStarStar;
                }
            }
            Outcome::AbortToStarStar if double => {}
            other => return other,
        }
        ti += 1;
    }
    Outcome::AbortAll
}

/// Matches `tc` against the class that starts at `p[start]` (just after the
/// `[`). Returns whether the class (negation applied) takes `tc` and the
/// index of its closing `]`, or `None` for a malformed class.
fn class(p: &[u8], start: usize, tc: u8) -> Option<(bool, usize)> {
    let mut i = start;
    let negated = matches!(p.get(i), Some(b'!' | b'^'));
    if negated {
        i += 1;
    }
    let mut matched = false;
    // The previous member, if it may start a range.
    let mut prev: Option<u8> = None;
    let mut first = true;
    loop {
        let c = *p.get(i)?;
        if c == b']' && !first {
            return Some((matched != negated, i));
        }
        first = false;
        if c == b'\\' {
            i += 1;
            let lit = *p.get(i)?;
            matched |= tc == lit;
            prev = Some(lit);
        } else if c == b'-' && prev.is_some() && p.get(i + 1).is_some_and(|&n| n != b']') {
            i += 1;
            let mut hi = p[i];
            if hi == b'\\' {
                i += 1;
                hi = *p.get(i)?;
            }
            let lo = prev.unwrap_or(0);
            matched |= lo <= tc && tc <= hi;
            prev = None;
        } else if c == b'[' && p.get(i + 1) == Some(&b':') {
            let name_start = i + 2;
            let close = name_start + p[name_start..].iter().position(|&b| b == b']')?;
            if close == name_start || p[close - 1] != b':' {
                // No ":]": the `[` is an ordinary member.
                matched |= tc == b'[';
                prev = Some(b'[');
                i += 1;
                continue;
            }
            matched |= posix_class(&p[name_start..close - 1], tc)?;
            prev = None;
            i = close;
        } else {
            matched |= tc == c;
            prev = Some(c);
        }
        i += 1;
    }
}

/// Whether `c` is in the named POSIX class (C locale); `None` for a name
/// that is no class.
fn posix_class(name: &[u8], c: u8) -> Option<bool> {
    Some(match name {
        b"alnum" => c.is_ascii_alphanumeric(),
        b"alpha" => c.is_ascii_alphabetic(),
        b"blank" => c == b' ' || c == b'\t',
        b"cntrl" => c.is_ascii_control(),
        b"digit" => c.is_ascii_digit(),
        b"graph" => c.is_ascii_graphic(),
        b"lower" => c.is_ascii_lowercase(),
        b"print" => c.is_ascii_graphic() || c == b' ',
        b"punct" => c.is_ascii_punctuation(),
        b"space" => matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r'),
        b"upper" => c.is_ascii_uppercase(),
        b"xdigit" => c.is_ascii_hexdigit(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (matches, pattern, text): our own vectors, one or more for each rule
    /// of rsync's wildmatch.
    const CASES: &[(bool, &str, &str)] = &[
        // Literals and `?`.
        (true, "foo", "foo"),
        (false, "foo", "bar"),
        (false, "foo", "foobar"),
        (true, "", ""),
        (true, "???", "abc"),
        (false, "??", "abc"),
        (false, "a?c", "a/c"),
        // `*` stays within one element.
        (true, "*", "foo"),
        (true, "*", ""),
        (false, "*", "foo/bar"),
        (true, "f*", "foo"),
        (true, "*o", "foo"),
        (true, "*.c", "main.c"),
        (false, "*.c", "src/main.c"),
        (true, "*/*.c", "src/main.c"),
        (true, "a*b*c", "aXXbYYc"),
        (false, "a*b*c", "aXXbYY"),
        (true, "a*", "a"),
        (false, "a*/b", "a/x/b"),
        // `**` crosses slashes.
        (true, "**", "a/b/c"),
        (true, "**/c", "a/b/c"),
        (true, "a/**", "a/b/c"),
        (true, "a/**/c", "a/b/c"),
        (true, "a/**/c", "a/b/x/c"),
        (false, "a/**/c", "a/c"),
        (true, "a**c", "a/b/c"),
        (true, "**.o", "x/y/z.o"),
        (true, "a/***", "a/b"),
        (false, "**/x", "a/b/y"),
        // Classes.
        (true, "[abc]", "b"),
        (false, "[abc]", "d"),
        (true, "[!abc]", "d"),
        (true, "[^abc]", "d"),
        (false, "[!abc]", "a"),
        (true, "[a-c]x", "bx"),
        (false, "[a-c]x", "dx"),
        (true, "[]]", "]"),
        (true, "[]a]", "a"),
        (true, "[!]]", "a"),
        (false, "[!]]", "]"),
        (true, "[a-]", "-"),
        (true, "[-a]", "-"),
        (false, "[a/]", "/"),
        (false, "[!a]", "/"),
        (true, "[[:alpha:]]", "Q"),
        (false, "[[:alpha:]]", "7"),
        (true, "[[:digit:][:upper:]]", "7"),
        (true, "[[:digit:][:upper:]]", "Z"),
        (false, "[[:digit:][:upper:]]", "z"),
        (true, "[[:space:]]", "\t"),
        (true, "[[:xdigit:]]", "f"),
        (true, "[[:punct:]]", "!"),
        (true, "[[:blank:]]", " "),
        (true, "[[:lower:]]x", "ax"),
        (true, "[[:alnum:]]", "5"),
        (true, "[[:print:]]", " "),
        (false, "[[:graph:]]", " "),
        (true, "[[:cntrl:]]", "\x07"),
        (false, "[[:nope:]]", "a"),
        (true, "[[:x]", "x"),
        (true, "[[:x]", "["),
        (true, "[\\]]", "]"),
        (true, "[a\\-c]", "-"),
        (false, "[a\\-c]", "b"),
        (false, "[abc", "a"),
        // Escapes.
        (true, "\\*", "*"),
        (false, "\\*", "x"),
        (true, "a\\?c", "a?c"),
        (false, "a\\?c", "abc"),
        (false, "foo\\", "foo"),
        // Mixed.
        (true, "*/b/*.txt", "a/b/c.txt"),
        (true, "**/b/*.txt", "x/a/b/c.txt"),
        (false, "*/b/*.txt", "x/a/b/c.txt"),
        (true, "*[0-9]", "file7"),
        (
            true,
            "-*-*-*-*-*-*-12-*-*-*-m-*-*-*",
            "-adobe-courier-bold-o-normal--12-120-75-75-m-70-iso8859-1",
        ),
        (
            false,
            "-*-*-*-*-*-*-12-*-*-*-m-*-*-*",
            "-adobe-courier-bold-o-normal--12-120-75-75-X-70-iso8859-1",
        ),
        (
            true,
            "**/*a*b*g*n*t",
            "abcd/abcdefg/abcdefghijk/abcdefghijklmnop.txt",
        ),
        (
            false,
            "**/*a*b*g*n*t",
            "abcd/abcdefg/abcdefghijk/abcdefghijklmnop.txtz",
        ),
    ];

    #[test]
    fn vectors() {
        for &(want, pattern, text) in CASES {
            assert_eq!(
                wildmatch(pattern.as_bytes(), text.as_bytes()),
                want,
                "{pattern:?} against {text:?}"
            );
        }
    }

    #[test]
    fn anchors() {
        let at = |p: &str, t: &str, a| wildmatch_at(p.as_bytes(), t.as_bytes(), a);
        assert!(at("b/*.c", "a/b/x.c", Anchor::LastElements(2)));
        assert!(!at("b/*.c", "a/b/x.c", Anchor::Start));
        assert!(!at("a/*.c", "a/b/x.c", Anchor::LastElements(2)));
        assert!(!at("a/b/c", "b/c", Anchor::LastElements(3)));
        assert!(at("b/**", "a/b/c/d", Anchor::AnySlash));
        assert!(!at("b/**", "a/xb/c", Anchor::AnySlash));
        assert!(at("b/**", "b/c", Anchor::AnySlash));
        let lit = |p: &str, t: &str, a| litmatch_at(p.as_bytes(), t.as_bytes(), a);
        assert!(lit("b/c", "a/b/c", Anchor::LastElements(2)));
        assert!(!lit("b/c", "a/xb/c", Anchor::LastElements(2)));
        assert!(lit("b/c", "a/b/c", Anchor::AnySlash));
    }

    #[test]
    fn deep_stars_stay_fast() {
        // Exponential without the abort codes.
        let text = "a/".repeat(40) + "b";
        assert!(!wildmatch(b"*/*/*/*/*/*/*/*/*/*/*/*/c", text.as_bytes()));
        assert!(!wildmatch(b"**a**a**a**a**a**a**a**c", text.as_bytes()));
    }
}
