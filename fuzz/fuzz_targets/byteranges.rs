//! Any bytes as a multipart/byteranges answer: parsed or refused, never a
//! panic, and every part's bytes exactly as long as its range.
#![no_main]

use intersync_protocol::byteranges::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(parts) = parse(bytes, "b") {
        for p in parts {
            assert_eq!(p.bytes.len() as u64, p.range.end - p.range.start);
        }
    }
});
