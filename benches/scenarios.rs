//! The end-to-end scenarios through the smart server: bytes both ways and
//! requests per scenario, next to a full fetch of the changed files and to
//! the bytes that really changed. Then the static path against zsync,
//! through the same real nginx (needs `nginx`, `zsync` and `zsyncmake`).
//!
//! `cargo bench --bench scenarios` runs the full sizes (100 MiB, 10,000
//! files); `INTERSYNC_SCALE=0.05` runs smaller ones.

fn main() {
    let scale: f64 = std::env::var("INTERSYNC_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    let dir = tempfile::tempdir().expect("temporary folder");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let rows = runtime
        .block_on(intersync::measure::measure(dir.path(), scale))
        .expect("scenarios run");
    println!("\n# InterSync smart server, scale {scale}, loopback");
    println!(
        "| scenario | changed bytes | full fetch | sent | received | total | total / full fetch | requests | wall |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for m in rows {
        let ratio = if m.full_fetch_bytes == 0 {
            "-".into()
        } else {
            format!("{:.4}", m.moved_bytes() as f64 / m.full_fetch_bytes as f64)
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {ratio} | {} | {:.3} s |",
            m.id,
            m.changed_bytes,
            m.full_fetch_bytes,
            m.sent_bytes,
            m.received_bytes,
            m.moved_bytes(),
            m.requests,
            m.wall.as_secs_f64()
        );
    }
    let rows = runtime
        .block_on(intersync::measure::static_against_zsync(dir.path(), scale))
        .expect("static scenarios run");
    println!("\n# Static export against zsync, both behind one nginx, scale {scale}, loopback");
    println!(
        "| scenario | tool | file bytes | sent | received | total | total / file | requests | wall |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let ratio = if r.file_bytes == 0 {
            "-".into()
        } else {
            format!("{:.4}", r.moved_bytes() as f64 / r.file_bytes as f64)
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {ratio} | {} | {:.3} s |",
            r.scenario,
            r.tool,
            r.file_bytes,
            r.sent_bytes,
            r.received_bytes,
            r.moved_bytes(),
            r.requests,
            r.wall.as_secs_f64()
        );
    }
}
