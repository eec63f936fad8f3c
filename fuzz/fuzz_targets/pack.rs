//! Any bytes as a pack's index: parsed or refused, never a panic; what is
//! parsed is as long as it says, and encodes back to the same bytes.
#![no_main]

use intersync_protocol::pack::{encode_index, index_len, parse_index};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok((entries, len)) = parse_index(bytes) {
        assert_eq!(len, index_len(entries.len()));
        assert_eq!(encode_index(&entries), bytes[..len]);
    }
});
