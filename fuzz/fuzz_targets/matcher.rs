//! Any signature against any data: the strong sums a scan computes stay
//! within what the data bounds them to (a block's worth of hashing each,
//! about five times the data in all), whatever the signature. The first
//! bytes choose the block length and where the signature's records end;
//! the header is made here so that every input reaches the matcher.
#![no_main]

use intersync::delta::matcher::{BlockIndex, collision_budget};
use intersync_protocol::signature::SignatureRef;
use libfuzzer_sys::fuzz_target;

const STRONG_LEN: usize = 8;

fuzz_target!(|bytes: &[u8]| {
    let [len_byte, split_byte, rest @ ..] = bytes else {
        return;
    };
    let block_len = 1 + u32::from(*len_byte % 64);
    let records = (rest.len() * usize::from(*split_byte) / 256) / (4 + STRONG_LEN);
    let (body, data) = rest.split_at(records * (4 + STRONG_LEN));
    let mut sig = Vec::with_capacity(12 + body.len());
    sig.extend_from_slice(&0x7273_0136u32.to_be_bytes());
    sig.extend_from_slice(&block_len.to_be_bytes());
    sig.extend_from_slice(&(STRONG_LEN as u32).to_be_bytes());
    sig.extend_from_slice(body);
    let Ok(sig) = SignatureRef::parse(&sig) else {
        return;
    };
    if sig.block_count() == 0 {
        return;
    }
    let sums = BlockIndex::new(sig).scan(data, |_| {});
    let bound = data.len() as u64 / u64::from(block_len) + collision_budget(data.len(), block_len as usize) + u64::from(block_len);
    assert!(sums <= bound, "{sums} strong sums for {} bytes", data.len());
});
