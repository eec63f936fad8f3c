//! Any bytes as a patch against a fixed base: decoding must give the
//! expected number of bytes or a typed error, never a panic, and never more
//! output than the size it was told to expect. The input is tried as it is
//! and behind the magic, so that the fuzzer reaches the header and the
//! copies without first having to find the four bytes that start a patch.
#![no_main]

use intersync::delta::zpatch::decode;
use libfuzzer_sys::fuzz_target;

const BASE: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz";
const SIZE: u64 = 4096;

fuzz_target!(|bytes: &[u8]| {
    let framed = [b"ISP1".as_slice(), bytes].concat();
    for patch in [bytes, &framed[..]] {
        let mut out = Vec::new();
        let ok = decode(BASE, patch, &mut out, SIZE).is_ok();
        assert!(out.len() as u64 <= SIZE);
        assert!(!ok || out.len() as u64 == SIZE);
    }
});
