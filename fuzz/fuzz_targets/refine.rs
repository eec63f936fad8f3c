//! Any bytes as a refine answer: parsing must accept or give a typed error,
//! never panic, and what it accepts must tile its size within the base.
#![no_main]

use intersync_protocol::refine::{RefineAnswer, Segment, fine_windows};
use libfuzzer_sys::fuzz_target;

const BASE_LEN: u64 = 1 << 20;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(a) = RefineAnswer::parse(bytes, BASE_LEN) {
        let total: u64 = a.segments.iter().map(Segment::len).sum();
        assert_eq!(total, a.size);
        let windows = fine_windows(&a.segments, u64::from(a.fine.header.block_len));
        assert_eq!(windows.len(), a.fine.block_count());
    }
});
