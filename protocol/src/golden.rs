//! Golden files in `testdata/`: format bytes that must not drift. The
//! librsync ones come from the real `rdiff` (`testdata/make-goldens.sh`);
//! the KML one from these tests (`INTERSYNC_BLESS=1` rewrites it).

use std::path::PathBuf;

use crate::kml::SegmentReader;
use crate::kml::tests::{every_op, segment};
use crate::signature::{SignatureFormat, SignatureRef};
use crate::{DeltaCommand, DeltaReader};

/// Every file in `testdata/`, each used by a test below (the engine's tests
/// use the signatures too).
const GOLDEN: &[&str] = &[
    "every-op.kml",
    "base.bin",
    "new.bin",
    "base.md4-rollsum.sig",
    "base.blake2-rollsum.sig",
    "base.md4-rabinkarp.sig",
    "base.blake2-rabinkarp.sig",
    "base-to-new.rdelta",
    "make-goldens.sh",
];

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name)
}

fn read(name: &str) -> Vec<u8> {
    assert!(GOLDEN.contains(&name), "{name} is not listed in GOLDEN");
    std::fs::read(testdata(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn every_golden_file_is_listed() {
    for entry in std::fs::read_dir(testdata("")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(
            GOLDEN.contains(&name.as_str()),
            "testdata/{name} is used by no test"
        );
    }
}

#[test]
fn kml_format_is_stable() {
    let bytes = segment(&every_op());
    if std::env::var_os("INTERSYNC_BLESS").is_some() {
        std::fs::write(testdata("every-op.kml"), &bytes).unwrap();
    }
    let golden = read("every-op.kml");
    assert_eq!(
        bytes, golden,
        "the KML encoding changed; if on purpose, bump the format version"
    );
    let decoded: Vec<_> = SegmentReader::new(&golden)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(decoded, every_op());
}

#[test]
fn rdiff_signatures_parse() {
    for (name, format) in [
        ("base.md4-rollsum.sig", SignatureFormat::Md4Rollsum),
        ("base.blake2-rollsum.sig", SignatureFormat::Blake2Rollsum),
        ("base.md4-rabinkarp.sig", SignatureFormat::Md4RabinKarp),
        (
            "base.blake2-rabinkarp.sig",
            SignatureFormat::Blake2RabinKarp,
        ),
    ] {
        let bytes = read(name);
        let sig = SignatureRef::parse(&bytes).unwrap();
        assert_eq!(sig.header.format, format, "{name}");
        assert_eq!((sig.header.block_len, sig.header.strong_len), (1024, 8));
        assert_eq!(sig.block_count(), 10, "{name}");
    }
}

#[test]
fn rdiff_delta_decodes_to_new() {
    let base = read("base.bin");
    let delta = read("base-to-new.rdelta");
    let mut out = Vec::new();
    for cmd in DeltaReader::new(&delta).unwrap() {
        match cmd.unwrap().1 {
            DeltaCommand::Literal(bytes) => out.extend_from_slice(bytes),
            DeltaCommand::Copy { offset, len } => {
                out.extend_from_slice(&base[offset as usize..(offset + len) as usize])
            }
        }
    }
    assert_eq!(out, read("new.bin"));
}
