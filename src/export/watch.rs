//! Noticing changes that other programs make in the exported folder: a
//! notify watcher wakes a rescan, debounced so that a burst of events (an
//! unpacked archive) costs one scan. The scan, not the events, decides what
//! changed, so a missed or reordered event loses nothing.

use std::sync::Arc;
use std::time::Duration;

use intersync_protocol::path::STATE_DIR;
use notify::{RecursiveMode, Watcher};
use tokio::sync::Notify;

use super::Export;

/// Quiet time after the last event before scanning.
const DEBOUNCE: Duration = Duration::from_millis(150);
/// Longest a scan waits for quiet: a file written without pause (a log)
/// must not keep every other change from being journaled.
const MAX_DEBOUNCE: Duration = Duration::from_secs(2);

/// Watches the export's folder until the returned watcher is dropped.
pub fn watch(export: Arc<Export>) -> notify::Result<notify::RecommendedWatcher> {
    let wake = Arc::new(Notify::new());
    let state_dir = export.root().join(STATE_DIR);
    let tx = wake.clone();
    let mut watcher = watcher(move |event: notify::Result<notify::Event>| {
        let relevant = match &event {
            Ok(e) => may_change(e) && e.paths.iter().any(|p| !p.starts_with(&state_dir)),
            Err(_) => true,
        };
        if relevant {
            tx.notify_one();
        }
    })?;
    watcher.watch(export.root(), RecursiveMode::Recursive)?;
    tokio::spawn(async move {
        loop {
            wake.notified().await;
            // Let the burst finish, up to a point.
            let woken = tokio::time::Instant::now();
            while woken.elapsed() < MAX_DEBOUNCE
                && tokio::time::timeout(DEBOUNCE, wake.notified())
                    .await
                    .is_ok()
            {}
            tracing::debug!("rescanning the folder");
            let export = export.clone();
            let scanned = tokio::task::spawn_blocking(move || export.rescan()).await;
            match scanned {
                Ok(Ok(report)) if report.records > 0 => {
                    tracing::info!(
                        records = report.records,
                        hashed = report.hashed_files,
                        "journaled changes made in the folder"
                    );
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::error!(error = %crate::monitor::Chain(&e), "rescan failed"),
                Err(e) => tracing::error!(error = %e, "rescan panicked"),
            }
        }
    });
    Ok(watcher)
}

/// A watcher told of changes only. Opens and closes without writing are
/// never asked of the kernel: a server opens every file it serves, and
/// each open queued an event that was read and dropped. Without them a
/// clone of 200,000 small files costs the server 4.5 s of CPU, not 8.
pub fn watcher(handler: impl notify::EventHandler) -> notify::Result<notify::RecommendedWatcher> {
    use notify::{Config, EventKindMask};
    let kinds = EventKindMask::CORE | EventKindMask::ACCESS_CLOSE;
    notify::RecommendedWatcher::new(handler, Config::default().with_event_kinds(kinds))
}

/// Whether an event can mean that the tree changed. Reads can not: an open,
/// a read or a close without writing (which a scan itself, or serving a
/// file, causes) wakes nothing; a close after writing does.
pub fn may_change(event: &notify::Event) -> bool {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode};
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use notify::{RecursiveMode, Watcher};

    /// Reading a file raises nothing (the kernel is not asked for opens or
    /// closes without a write); writing one does.
    #[test]
    fn the_watcher_hears_writes_and_not_reads() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"first").unwrap();
        let (tx, rx) = mpsc::channel();
        let mut watcher = super::watcher(move |e: notify::Result<notify::Event>| {
            let _ = tx.send(e.map(|e| e.kind));
        })
        .unwrap();
        watcher.watch(dir.path(), RecursiveMode::Recursive).unwrap();
        for _ in 0..20 {
            std::fs::read(&file).unwrap();
        }
        let heard: Vec<_> = rx.try_iter().collect();
        std::thread::sleep(Duration::from_millis(300));
        let heard: Vec<_> = heard.into_iter().chain(rx.try_iter()).collect();
        assert!(heard.is_empty(), "reads were heard: {heard:?}");
        std::fs::write(&file, b"second").unwrap();
        let written = rx.recv_timeout(Duration::from_secs(5));
        assert!(
            matches!(written, Ok(Ok(_))),
            "a write was not heard: {written:?}"
        );
    }
}
