//! Any bytes as a delta against a fixed base: applying must give a result or
//! a typed error, never a panic, and never more output than the limit.
#![no_main]

use intersync::delta::apply;
use libfuzzer_sys::fuzz_target;

const BASE: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
const LIMIT: u64 = 4096;

fuzz_target!(|bytes: &[u8]| {
    let mut out = Vec::new();
    let _ = apply(BASE, bytes, &mut out, LIMIT);
    assert!(out.len() as u64 <= LIMIT);
});
