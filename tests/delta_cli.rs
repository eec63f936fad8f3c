//! Malformed signatures and deltas given to the `intersync` commands: each
//! gives a clear error and rsync's exit code for a corrupt stream (12), never
//! a panic (101), and never leaves an output file behind or changed.

use std::path::Path;

use crate::util::{Dir, intersync, ok, random_bytes, run};

const CORRUPT: i32 = 12;

fn sig_header(magic: u32, block_len: u32, strong_len: u32) -> Vec<u8> {
    [magic, block_len, strong_len]
        .iter()
        .flat_map(|w| w.to_be_bytes())
        .collect()
}

fn delta(body: &[u8]) -> Vec<u8> {
    [&0x7273_0236u32.to_be_bytes()[..], body].concat()
}

/// Runs `intersync ARGS` expecting failure with `code`, a message containing
/// `says`, and `out` left exactly as it was (absent, or holding "precious").
#[track_caller]
fn refused(args: &[&Path], out: &Path, code: i32, says: &str) {
    let existed = out.exists();
    let output = run(intersync().args(args).arg(out));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "{args:?}: {stderr}");
    assert!(
        stderr.contains(says),
        "{args:?}: expected {says:?} in {stderr:?}"
    );
    if existed {
        assert_eq!(std::fs::read(out).unwrap(), b"precious");
    } else {
        assert!(!out.exists(), "{} was created", out.display());
    }
    let stray: Vec<_> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".intersync-tmp")
        })
        .collect();
    assert!(stray.is_empty(), "temporary files left: {stray:?}");
}

#[test]
fn malformed_signatures() {
    let md4 = 0x7273_0136;
    let blake2 = 0x7273_0147;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "header needs 12 bytes, 0 available"),
        (
            "short header",
            vec![0x72, 0x73, 0x01],
            "header needs 12 bytes, 3 available",
        ),
        (
            "bad magic",
            sig_header(0xdead_beef, 2048, 8),
            "magic 0xdeadbeef",
        ),
        (
            "delta magic",
            sig_header(0x7273_0236, 2048, 8),
            "magic 0x72730236",
        ),
        ("block length 0", sig_header(md4, 0, 8), "block length 0"),
        (
            "absurd block length",
            sig_header(md4, u32::MAX, 8),
            "block length 4294967295",
        ),
        (
            "strong length 0",
            sig_header(md4, 2048, 0),
            "strong-sum length 0",
        ),
        (
            "md4 strong length 17",
            sig_header(md4, 2048, 17),
            "strong-sum length 17",
        ),
        (
            "blake2 strong length 33",
            sig_header(blake2, 2048, 33),
            "strong-sum length 33",
        ),
        (
            "partial record",
            [sig_header(md4, 2048, 8), vec![0; 12 + 5]].concat(),
            "5 stray bytes at offset 24",
        ),
    ];
    for (_case, bytes, says) in cases {
        let dir = Dir::new();
        let sig = dir.write("sig", &bytes);
        let new = dir.write("new", &random_bytes(1, 10_000));
        refused(
            &[Path::new("delta"), &sig, &new],
            &dir.path("delta"),
            CORRUPT,
            says,
        );
        dir.write("delta", b"precious");
        refused(
            &[Path::new("delta"), &sig, &new],
            &dir.path("delta"),
            CORRUPT,
            says,
        );
    }
}

#[test]
fn malformed_deltas() {
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "magic needs 4 bytes, 0 available"),
        (
            "signature magic",
            0x7273_0136u32.to_be_bytes().to_vec(),
            "magic 0x72730136",
        ),
        (
            "no END",
            delta(&[0x02, b'h', b'i']),
            "truncated at offset 7",
        ),
        (
            "short literal",
            delta(&[0x05, b'h']),
            "literal needs 5 bytes, 1 available",
        ),
        (
            "copy past end",
            delta(&[0x45, 90, 20, 0x00]),
            "reads 20 bytes from 90, past the end of the 100-byte base",
        ),
        (
            "overflowing offset",
            delta(&[
                0x51, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0x00,
            ]),
            "reads 2 bytes from 18446744073709551615",
        ),
        (
            "unknown command",
            delta(&[0x55, 0x00]),
            "unknown delta command 0x55 at offset 4",
        ),
        (
            "zero-length copy",
            delta(&[0x45, 0, 0, 0x00]),
            "zero-length copy at offset 4",
        ),
        (
            "data after END",
            delta(&[0x00, 1, 2, 3]),
            "3 bytes of data after the delta's END at offset 5",
        ),
    ];
    for (_case, bytes, says) in cases {
        let dir = Dir::new();
        let base = dir.write("base", &random_bytes(2, 100));
        let d = dir.write("delta", &bytes);
        refused(
            &[Path::new("patch"), &base, &d],
            &dir.path("out"),
            CORRUPT,
            says,
        );
        dir.write("out", b"precious");
        refused(
            &[Path::new("patch"), &base, &d],
            &dir.path("out"),
            CORRUPT,
            says,
        );
    }
}

#[test]
fn output_larger_than_announced() {
    let dir = Dir::new();
    let base = dir.write("base", &random_bytes(3, 1000));
    // Forty-five bytes of delta that ask for ten copies of the whole base.
    let body: Vec<u8> = (0..10)
        .flat_map(|_| [0x46, 0, 0x03, 0xe8])
        .chain([0])
        .collect();
    let d = dir.write("delta", &delta(&body));
    refused(
        &[
            Path::new("patch"),
            Path::new("--max-output"),
            Path::new("5000"),
            &base,
            &d,
        ],
        &dir.path("out"),
        CORRUPT,
        "output passes its limit of 5000 bytes",
    );
    // Within the limit it applies.
    ok(intersync()
        .args(["patch", "--max-output", "10000"])
        .arg(&base)
        .arg(&d)
        .arg(dir.path("out")));
    assert_eq!(dir.read("out").len(), 10_000);

    // A version patch (`/.intersync/patch/`) that says its result is 10,000
    // bytes, or copies from past the base's end, is refused the same way.
    let mut big = b"ISP1".to_vec();
    big.extend_from_slice(&[0x90, 0x4e, 1, 0, 0, 0, 0, 0x90, 0x4e]);
    let p = dir.write("patch", &big);
    refused(
        &[
            Path::new("patch"),
            Path::new("--max-output"),
            Path::new("5000"),
            &base,
            &p,
        ],
        &dir.path("out2"),
        CORRUPT,
        "output passes its limit of 5000 bytes",
    );
    refused(
        &[Path::new("patch"), &base, &p],
        &dir.path("out2"),
        CORRUPT,
        "reads past the old content",
    );
}

#[test]
fn result_of_the_wrong_version_is_not_installed() {
    let dir = Dir::new();
    let base = dir.write("base", &random_bytes(4, 5000));
    let new = dir.write("new", &random_bytes(5, 5000));
    ok(intersync().arg("signature").arg(&base).arg(dir.path("sig")));
    ok(intersync()
        .arg("delta")
        .arg(dir.path("sig"))
        .arg(&new)
        .arg(dir.path("delta")));
    let wrong = "ab".repeat(32);
    refused(
        &[
            Path::new("patch"),
            Path::new("--expect-version"),
            Path::new(&wrong),
            &base,
            &dir.path("delta"),
        ],
        &dir.path("out"),
        CORRUPT,
        &format!("expected {wrong}"),
    );
    let right = blake3::hash(&dir.read("new")).to_hex().to_string();
    ok(intersync()
        .args(["patch", "--expect-version", &right])
        .arg(&base)
        .arg(dir.path("delta"))
        .arg(dir.path("out")));
    assert_eq!(dir.read("out"), dir.read("new"));
}

#[test]
fn usage_and_io_errors_use_rsyncs_codes() {
    let out = run(intersync().args(["signature", "--block-size", "many"]));
    assert_eq!(out.status.code(), Some(1), "usage error");
    let out = run(intersync().arg("frobnicate"));
    assert_eq!(out.status.code(), Some(1), "unknown command");
    let out = run(intersync().arg("--help"));
    assert_eq!(out.status.code(), Some(0));
    let dir = Dir::new();
    let out = run(intersync()
        .arg("signature")
        .arg(dir.path("missing"))
        .arg(dir.path("sig")));
    assert_eq!(
        out.status.code(),
        Some(11),
        "missing input is a file I/O error"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing"));
    let out = run(intersync()
        .args(["signature", "-b", "0"])
        .arg(dir.write("f", b"x"))
        .arg(dir.path("sig")));
    assert_eq!(
        out.status.code(),
        Some(1),
        "block length 0 is a usage error"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("block length 0"));
    assert!(!dir.path("sig").exists());
}
