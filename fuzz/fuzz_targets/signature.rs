//! Any bytes as a signature: parsing must refuse or accept without panicking,
//! and an accepted signature must drive a delta whose patch applies cleanly
//! to something (the delta is well-formed whatever the signature said).
#![no_main]

use intersync::delta::{Signature, write_delta};
use libfuzzer_sys::fuzz_target;

const NEW: &[u8] = b"the quick brown fox jumps over the lazy dog, again and again and again";

fuzz_target!(|bytes: &[u8]| {
    let Ok(sig) = Signature::from_bytes(bytes.to_vec()) else {
        return;
    };
    let mut delta = Vec::new();
    let stats = write_delta(sig.view(), NEW, &mut delta).expect("writing to memory");
    assert_eq!(stats.literal_bytes + stats.matched_bytes, NEW.len() as u64);
    intersync_protocol::DeltaReader::new(&delta)
        .expect("our delta has the magic")
        .for_each(|cmd| {
            cmd.expect("our delta decodes");
        });
});
