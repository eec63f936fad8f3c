//! Round trips of the whole engine, and a differential check of our patcher
//! against fast_rsync's on every delta we write.

use intersync_protocol::DeltaWriter;
use intersync_protocol::signature::SignatureFormat;
use proptest::prelude::*;

use super::*;

fn round_trip(old: &[u8], new: &[u8], options: SignatureOptions) -> DeltaStats {
    let (sig, _) = Signature::calculate(old, options);
    let mut delta = Vec::new();
    let written = write_delta(sig.view(), new, &mut delta).unwrap();
    assert_eq!(written.delta_bytes, delta.len() as u64);
    let mut out = Vec::new();
    let applied = apply(old, &delta, &mut out, new.len() as u64).unwrap();
    assert_eq!(out, new, "{options:?}");
    assert_eq!(
        (applied.literal_bytes, applied.matched_bytes),
        (written.literal_bytes, written.matched_bytes)
    );
    let mut theirs = Vec::new();
    fast_rsync::apply_limited(old, &delta, &mut theirs, new.len()).unwrap();
    assert_eq!(theirs, new, "fast_rsync disagrees on {options:?}");
    written
}

fn options(format: SignatureFormat, block_len: u32) -> SignatureOptions {
    SignatureOptions::new(0, format, Some(block_len), None).unwrap()
}

proptest! {
    #[test]
    fn arbitrary_old_and_new(
        old in proptest::collection::vec(any::<u8>(), 0..3000),
        new in proptest::collection::vec(any::<u8>(), 0..3000),
        block_len in 1u32..300,
        format in proptest::sample::select(SignatureFormat::ALL.to_vec()),
    ) {
        round_trip(&old, &new, options(format, block_len));
    }

    #[test]
    fn edits_of_old(
        old in proptest::collection::vec(any::<u8>(), 1..5000),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0usize..3), 0..8),
        block_len in 16u32..200,
        format in proptest::sample::select(SignatureFormat::ALL.to_vec()),
    ) {
        let mut new = old.clone();
        for (at, byte, op) in edits {
            let at = at.index(new.len() + 1);
            match op {
                0 if at < new.len() => new[at] = byte,
                1 => new.insert(at, byte),
                _ if at < new.len() => { new.remove(at); }
                _ => {}
            }
        }
        round_trip(&old, &new, options(format, block_len));
    }
}

#[test]
fn unchanged_data_is_all_matched() {
    let data: Vec<u8> = (0..100_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for format in SignatureFormat::ALL {
        // 100_000 is not a multiple of 700: the short last block matches too.
        let stats = round_trip(&data, &data, options(format, 700));
        assert_eq!(stats.literal_bytes, 0, "{format:?}");
        assert_eq!(stats.matched_bytes, 100_000);
        // One coalesced copy: magic, one copy command, END.
        assert!(stats.delta_bytes < 16, "{format:?}: {stats:?}");
    }
}

#[test]
fn scattered_edit_costs_about_a_block() {
    let old: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let mut new = old.clone();
    new[123_456] ^= 0xff;
    let stats = round_trip(&old, &new, options(SignatureFormat::Md4Rollsum, 1024));
    assert_eq!(stats.literal_bytes, 1024);
}

#[test]
fn patch_refuses_bad_deltas() {
    let base = b"0123456789";
    let delta = |build: &dyn Fn(&mut DeltaWriter<&mut Vec<u8>>)| {
        let mut bytes = Vec::new();
        let mut w = DeltaWriter::new(&mut bytes).unwrap();
        build(&mut w);
        w.finish().unwrap();
        bytes
    };
    let past_end = delta(&|w| w.copy(5, 6).unwrap());
    let err = apply(base, &past_end, &mut Vec::new(), 100).unwrap_err();
    assert!(
        matches!(
            err,
            Error::CopyOutOfBounds {
                delta_offset: 4,
                copy_offset: 5,
                len: 6,
                base_len: 10
            }
        ),
        "{err}"
    );
    let overflow = delta(&|w| w.copy(u64::MAX, 2).unwrap());
    let err = apply(base, &overflow, &mut Vec::new(), 100).unwrap_err();
    assert!(matches!(err, Error::CopyOutOfBounds { .. }), "{err}");
    // A 20-byte delta that would expand a 10-byte base to 100 bytes.
    let amplify = delta(&|w| (0..10).for_each(|_| w.copy(0, 10).unwrap()));
    let mut out = Vec::new();
    let err = apply(base, &amplify, &mut out, 55).unwrap_err();
    assert!(
        matches!(err, Error::OutputTooLarge { limit: 55, .. }),
        "{err}"
    );
    assert!(out.len() <= 55);
    let garbage = [&intersync_protocol::DELTA_MAGIC.to_be_bytes()[..], &[0x60]].concat();
    let err = apply(base, &garbage, &mut Vec::new(), 100).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    let said = crate::monitor::Chain(&err).to_string();
    assert!(
        said.contains("unknown delta command 0x60 at offset 4"),
        "{said}"
    );
}

#[test]
fn hostile_signature_stays_linear() {
    // Every block has the weak sum of a window of zeros but a strong sum
    // that never matches: without the collision cap each position would
    // compute a strong sum and compare against every block.
    let block_len = 64u32;
    let zeros = vec![0u8; 1 << 20];
    let opts = options(SignatureFormat::Md4Rollsum, block_len);
    let (honest, _) = Signature::calculate(&zeros[..block_len as usize], opts);
    let record = &honest.as_bytes()[12..];
    let mut bytes = honest.as_bytes()[..12].to_vec();
    for i in 0..10_000u32 {
        bytes.extend_from_slice(&record[..4]);
        let mut strong = record[4..].to_vec();
        strong[0] ^= 0x80 | (i as u8);
        bytes.extend_from_slice(&strong);
    }
    let sig = Signature::from_bytes(bytes).unwrap();
    let stats = write_delta(sig.view(), &zeros, std::io::sink()).unwrap();
    assert_eq!(stats.literal_bytes, zeros.len() as u64);
}

#[test]
fn signatures_equal_rdiffs_goldens() {
    let testdata = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("protocol/testdata");
    let base = std::fs::read(testdata.join("base.bin")).unwrap();
    for (name, format) in [
        ("base.md4-rollsum.sig", SignatureFormat::Md4Rollsum),
        ("base.blake2-rollsum.sig", SignatureFormat::Blake2Rollsum),
        ("base.md4-rabinkarp.sig", SignatureFormat::Md4RabinKarp),
        (
            "base.blake2-rabinkarp.sig",
            SignatureFormat::Blake2RabinKarp,
        ),
    ] {
        let options = SignatureOptions::new(0, format, Some(1024), Some(8)).unwrap();
        let (sig, _) = Signature::calculate(&base, options);
        assert_eq!(
            sig.as_bytes(),
            std::fs::read(testdata.join(name)).unwrap(),
            "{name}"
        );
    }
}
