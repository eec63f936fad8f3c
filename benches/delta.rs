//! Throughput of the delta engine against C librsync (through the `librsync`
//! crate) on the same 64 MiB inputs in the same run: signature, delta of
//! similar data (S1's scattered edits), delta of unrelated data (S4), and
//! patch. Both sides use the legacy MD4 + rollsum format with the same block
//! and strong-sum lengths. Our signature also hashes the file with BLAKE3 in
//! the same pass (librsync's does not), and is charged for it.
//!
//! `cargo bench --bench delta` prints criterion's figures, then a table of
//! MB/s and the ratio ours / librsync. `INTERSYNC_BENCH_LEN` changes the size.

use std::hint::black_box;
use std::io::{self, Cursor};
use std::path::PathBuf;

use criterion::{Criterion, Throughput};
use intersync::delta::{Signature, SignatureOptions, apply, write_delta};
use intersync_bench::scenario::FileScenario;
use intersync_protocol::signature::SignatureFormat;

const BLOCK_LEN: u32 = 4096;
const STRONG_LEN: u32 = 8;

struct Inputs {
    old: Vec<u8>,
    similar: Vec<u8>,
    unrelated: Vec<u8>,
    sig: Vec<u8>,
    delta: Vec<u8>,
}

fn inputs(len: usize) -> Inputs {
    let s1 = FileScenario::S1.generate(len);
    let s4 = FileScenario::S4.generate(len);
    let options = SignatureOptions::new(
        len as u64,
        SignatureFormat::Md4Rollsum,
        Some(BLOCK_LEN),
        Some(STRONG_LEN),
    )
    .expect("valid options");
    let (sig, _) = Signature::calculate(&s1.old, options);
    let mut delta = Vec::new();
    write_delta(sig.view(), &s1.new, &mut delta).expect("delta to memory");
    Inputs {
        old: s1.old,
        similar: s1.new,
        unrelated: s4.new,
        sig: sig.into_bytes(),
        delta,
    }
}

fn librsync_signature(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    librsync::whole::signature_with_options(
        &mut Cursor::new(data),
        &mut out,
        BLOCK_LEN as usize,
        STRONG_LEN as usize,
        librsync::SignatureType::MD4,
    )
    .expect("librsync signature");
    out
}

fn bench(c: &mut Criterion, len: usize) {
    let inp = inputs(len);
    assert_eq!(
        librsync_signature(&inp.old),
        inp.sig,
        "the two signatures differ"
    );
    let options = SignatureOptions::new(
        len as u64,
        SignatureFormat::Md4Rollsum,
        Some(BLOCK_LEN),
        Some(STRONG_LEN),
    )
    .expect("valid options");
    let sig = Signature::from_bytes(inp.sig.clone()).expect("our own signature");

    let mut g = c.benchmark_group("signature");
    g.throughput(Throughput::Bytes(len as u64));
    g.bench_function("intersync", |b| {
        b.iter(|| Signature::calculate(black_box(&inp.old), options))
    });
    g.bench_function("librsync", |b| {
        b.iter(|| librsync_signature(black_box(&inp.old)))
    });
    g.finish();

    for (name, new) in [
        ("delta-similar", &inp.similar),
        ("delta-unrelated", &inp.unrelated),
    ] {
        let mut g = c.benchmark_group(name);
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function("intersync", |b| {
            b.iter(|| write_delta(sig.view(), black_box(new), io::sink()).expect("delta"))
        });
        g.bench_function("librsync", |b| {
            b.iter(|| {
                librsync::whole::delta(
                    &mut Cursor::new(black_box(new)),
                    &mut Cursor::new(&inp.sig),
                    &mut io::sink(),
                )
                .expect("librsync delta")
            })
        });
        g.finish();
    }

    let mut g = c.benchmark_group("patch");
    g.throughput(Throughput::Bytes(inp.similar.len() as u64));
    // Both write into memory: a sink would let a patcher skip the copying.
    let mut out = Vec::with_capacity(inp.similar.len());
    g.bench_function("intersync", |b| {
        b.iter(|| {
            out.clear();
            apply(black_box(&inp.old), &inp.delta, &mut out, u64::MAX).expect("patch")
        })
    });
    assert_eq!(out, inp.similar, "our patch is wrong");
    g.bench_function("librsync", |b| {
        b.iter(|| {
            out.clear();
            librsync::whole::patch(
                &mut Cursor::new(black_box(&inp.old)),
                &mut Cursor::new(&inp.delta),
                &mut out,
            )
            .expect("librsync patch")
        })
    });
    assert_eq!(out, inp.similar, "librsync's patch is wrong");
    g.finish();
}

fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return home.into();
    }
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from);
    target.join("criterion")
}

/// Mean time of one benchmark, in nanoseconds, from criterion's estimates.
fn mean_ns(group: &str, function: &str) -> Option<f64> {
    let path = criterion_dir()
        .join(group)
        .join(function)
        .join("new/estimates.json");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    json["mean"]["point_estimate"].as_f64()
}

fn main() {
    let len = std::env::var("INTERSYNC_BENCH_LEN")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64 << 20);
    let mut c = Criterion::default().sample_size(10).configure_from_args();
    bench(&mut c, len);
    c.final_summary();

    println!(
        "\n| operation ({} MiB) | intersync MB/s | librsync MB/s | ratio |",
        len >> 20
    );
    println!("|---|---|---|---|");
    for group in ["signature", "delta-similar", "delta-unrelated", "patch"] {
        let (Some(ours), Some(theirs)) = (mean_ns(group, "intersync"), mean_ns(group, "librsync"))
        else {
            println!("| {group} | (not measured in this run) | | |");
            continue;
        };
        let mbps = |ns: f64| len as f64 / 1e6 / (ns / 1e9);
        println!(
            "| {group} | {:.0} | {:.0} | {:.2} |",
            mbps(ours),
            mbps(theirs),
            theirs / ours
        );
    }
}
