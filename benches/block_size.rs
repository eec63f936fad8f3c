//! Chooses the block-size policy by measurement: for each single-file
//! scenario of docs/ARCHITECTURE.md, the bytes a signature-up, delta-down transfer moves
//! (signature plus delta) at each candidate block length, next to what the
//! policy in `SignatureOptions::for_len` picks.
//!
//! `cargo bench --bench block_size` runs the 100 MiB scenarios;
//! `INTERSYNC_BENCH_LEN=4194304` runs smaller ones.

use intersync::delta::{Signature, SignatureOptions, write_delta};
use intersync_bench::scenario::{FULL_LEN, FileScenario};
use intersync_protocol::signature::SignatureFormat;

fn transfer_bytes(old: &[u8], new: &[u8], options: SignatureOptions) -> (u64, u64) {
    let (sig, _) = Signature::calculate(old, options);
    let stats = write_delta(sig.view(), new, std::io::sink()).expect("writing to a sink");
    (sig.as_bytes().len() as u64, stats.delta_bytes)
}

fn main() {
    let len = std::env::var("INTERSYNC_BENCH_LEN")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(FULL_LEN);
    let format = SignatureFormat::Md4Rollsum;
    let candidates: Vec<u32> = (9..=16).map(|p| 1 << p).collect();
    println!("# signature + delta bytes by block length, files of {len} bytes");
    print!("| scenario | changed |");
    for b in &candidates {
        print!(" {b} |");
    }
    println!(" policy (block) | policy / best |");
    println!("|---|---|{}---|---|", "---|".repeat(candidates.len()));
    for scenario in FileScenario::ALL {
        let pair = scenario.generate(len);
        let policy = SignatureOptions::for_len(pair.old.len() as u64, format);
        print!("| {} | {} |", scenario.id(), pair.changed_bytes);
        let mut best = u64::MAX;
        for &block_len in &candidates {
            let options = SignatureOptions {
                block_len,
                ..policy
            };
            let (sig, delta) = transfer_bytes(&pair.old, &pair.new, options);
            best = best.min(sig + delta);
            print!(" {} |", sig + delta);
        }
        let (sig, delta) = transfer_bytes(&pair.old, &pair.new, policy);
        println!(
            " {} ({}) | {:.3} |",
            sig + delta,
            policy.block_len,
            (sig + delta) as f64 / best as f64
        );
    }
}
