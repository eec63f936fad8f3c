//! `intersync status DIR`: a working copy's last sync, pending local
//! changes, files not fetched yet and conflicts.

pub fn run(dir: &std::path::Path) -> anyhow::Result<()> {
    let wc = intersync::client::WorkingCopy::open(dir)?;
    println!("working copy of {}", wc.saved.url);
    match wc.saved.last_sync_ns {
        Some(ns) => println!(
            "last sync: {} (journal sequence {})",
            httpdate::fmt_http_date(
                std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns.max(0) as u64)
            ),
            wc.saved.base.state.seq
        ),
        None => println!("never synced"),
    }
    let pending = wc.pending()?;
    println!("pending local changes: {}", pending.len());
    for op in &pending {
        println!("  {op:?}");
    }
    let placeholders = wc.placeholders().paths();
    if !placeholders.is_empty() {
        println!(
            "not fetched yet: {} files (fetched when opened through `intersync mount`, or by `sync`)",
            placeholders.len()
        );
    }
    println!("conflicts: {}", wc.saved.conflicts.len());
    for c in &wc.saved.conflicts {
        println!(
            "  {}: {}{}",
            c.path,
            c.what,
            c.kept_as
                .as_ref()
                .map(|a| format!(" (kept as {a})"))
                .unwrap_or_default()
        );
    }
    Ok(())
}
