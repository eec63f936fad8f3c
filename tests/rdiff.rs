//! Files written by `intersync signature/delta` are read by the real `rdiff`
//! and the other way round, in all four signature formats, on the shapes of
//! data where block arithmetic goes wrong: random edits, empty files, files
//! smaller than a block, and exact multiples of the block length.

use crate::util::{Dir, intersync, ok, random_bytes, tool};

struct Case {
    name: &'static str,
    old: Vec<u8>,
    new: Vec<u8>,
    /// `-b` for both tools; `None` leaves each to its default.
    block_len: Option<u32>,
}

fn cases() -> Vec<Case> {
    let old = random_bytes(1, 300_000);
    let mut edited = old.clone();
    edited[1000..1100].copy_from_slice(&random_bytes(2, 100));
    edited.splice(150_000..150_000, random_bytes(3, 5000));
    edited.drain(200_000..203_000);
    edited.extend_from_slice(&random_bytes(4, 777));
    let multiple = random_bytes(5, 8 * 1024);
    let mut multiple_new = multiple.clone();
    multiple_new[3 * 1024..4 * 1024].copy_from_slice(&random_bytes(6, 1024));
    multiple_new.extend_from_slice(&random_bytes(7, 1024));
    vec![
        Case {
            name: "random edits",
            old,
            new: edited,
            block_len: None,
        },
        Case {
            name: "empty old",
            old: vec![],
            new: random_bytes(8, 1000),
            block_len: None,
        },
        Case {
            name: "empty new",
            old: random_bytes(9, 5000),
            new: vec![],
            block_len: None,
        },
        Case {
            name: "both empty",
            old: vec![],
            new: vec![],
            block_len: None,
        },
        Case {
            name: "smaller than a block",
            old: random_bytes(10, 100),
            new: [&random_bytes(10, 100)[..], b"tail"].concat(),
            block_len: Some(2048),
        },
        Case {
            name: "exact block multiple",
            old: multiple,
            new: multiple_new,
            block_len: Some(1024),
        },
        Case {
            name: "block of one byte",
            old: b"abcabcabd".to_vec(),
            new: b"xabcabdabc".to_vec(),
            block_len: Some(1),
        },
    ]
}

/// `rdiff signature` flags for each format, and ours (`rdiff` defaults to
/// BLAKE2 + RabinKarp, `intersync` to MD4 + rollsum).
const FORMATS: [(&str, &[&str], &[&str]); 4] = [
    ("md4+rollsum", &["-H", "md4", "-R", "rollsum"], &[]),
    ("blake2+rollsum", &["-R", "rollsum"], &["-H", "blake2"]),
    ("md4+rabinkarp", &["-H", "md4"], &["-R", "rabinkarp"]),
    (
        "blake2+rabinkarp",
        &[],
        &["-H", "blake2", "-R", "rabinkarp"],
    ),
];

fn block_args(case: &Case) -> Vec<String> {
    case.block_len
        .map(|b| vec!["-b".to_string(), b.to_string()])
        .unwrap_or_default()
}

#[test]
fn rdiff_signatures_feed_intersync_deltas() {
    for case in cases() {
        for (format, rdiff_flags, _) in FORMATS {
            let dir = Dir::new();
            let old = dir.write("old", &case.old);
            let new = dir.write("new", &case.new);
            ok(tool("rdiff")
                .arg("signature")
                .args(rdiff_flags)
                .args(block_args(&case))
                .arg(&old)
                .arg(dir.path("sig")));
            ok(intersync()
                .arg("delta")
                .arg(dir.path("sig"))
                .arg(&new)
                .arg(dir.path("delta")));
            ok(tool("rdiff")
                .arg("patch")
                .arg(&old)
                .arg(dir.path("delta"))
                .arg(dir.path("by-rdiff")));
            assert_eq!(dir.read("by-rdiff"), case.new, "{}, {format}", case.name);
            // And rdiff's own delta from the same signature patches with ours.
            ok(tool("rdiff")
                .args(["-f", "delta"])
                .arg(dir.path("sig"))
                .arg(&new)
                .arg(dir.path("rdelta")));
            ok(intersync()
                .arg("patch")
                .arg(&old)
                .arg(dir.path("rdelta"))
                .arg(dir.path("by-intersync")));
            assert_eq!(
                dir.read("by-intersync"),
                case.new,
                "{}, {format}",
                case.name
            );
        }
    }
}

#[test]
fn intersync_signatures_feed_rdiff_deltas() {
    for case in cases() {
        for (format, _, our_flags) in FORMATS {
            let dir = Dir::new();
            let old = dir.write("old", &case.old);
            let new = dir.write("new", &case.new);
            ok(intersync()
                .arg("signature")
                .args(our_flags)
                .args(block_args(&case))
                .arg(&old)
                .arg(dir.path("sig")));
            let sig = dir.read("sig");
            let magic = u32::from_be_bytes(sig[..4].try_into().unwrap());
            let want_magic = match format {
                "md4+rollsum" => 0x7273_0136,
                "blake2+rollsum" => 0x7273_0137,
                "md4+rabinkarp" => 0x7273_0146,
                _ => 0x7273_0147,
            };
            assert_eq!(magic, want_magic, "{format}");
            ok(tool("rdiff")
                .arg("delta")
                .arg(dir.path("sig"))
                .arg(&new)
                .arg(dir.path("rdelta")));
            ok(intersync()
                .arg("patch")
                .arg(&old)
                .arg(dir.path("rdelta"))
                .arg(dir.path("by-intersync")));
            assert_eq!(
                dir.read("by-intersync"),
                case.new,
                "{}, {format}",
                case.name
            );
            ok(intersync()
                .arg("delta")
                .arg(dir.path("sig"))
                .arg(&new)
                .arg(dir.path("delta")));
            ok(tool("rdiff")
                .arg("patch")
                .arg(&old)
                .arg(dir.path("delta"))
                .arg(dir.path("by-rdiff")));
            assert_eq!(dir.read("by-rdiff"), case.new, "{}, {format}", case.name);
        }
    }
}

#[test]
fn signatures_match_rdiff_byte_for_byte() {
    // Same parameters, same bytes: our sums are librsync's, not just compatible.
    let dir = Dir::new();
    let old = dir.write("old", &random_bytes(11, 100_000));
    for (format, rdiff_flags, our_flags) in FORMATS {
        ok(tool("rdiff")
            .args(["-f", "signature", "-b", "1000", "-S", "8"])
            .args(rdiff_flags)
            .arg(&old)
            .arg(dir.path("rsig")));
        ok(intersync()
            .args(["signature", "-b", "1000", "-S", "8"])
            .args(our_flags)
            .arg(&old)
            .arg(dir.path("isig")));
        assert_eq!(dir.read("isig"), dir.read("rsig"), "{format}");
    }
}

#[test]
fn pipes_work_like_rdiff() {
    let dir = Dir::new();
    let old = dir.write("old", &random_bytes(12, 50_000));
    let new = dir.write("new", &[&random_bytes(12, 20_000)[..], b"changed"].concat());
    let sig = ok(intersync().arg("signature").arg(&old)).stdout;
    let sig_path = dir.write("sig", &sig);
    let delta = ok(intersync().arg("delta").arg(&sig_path).arg(&new)).stdout;
    let delta_path = dir.write("delta", &delta);
    let out = ok(tool("rdiff")
        .arg("patch")
        .arg(&old)
        .arg(&delta_path)
        .arg("-"))
    .stdout;
    assert_eq!(out, dir.read("new"));
}
