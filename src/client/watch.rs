//! `intersync watch`: stay in sync. A round runs at start, whenever the
//! server's journal moves (a long-poll of the head document), and shortly
//! after local changes stop (a file-system watcher, debounced). While the
//! server cannot be reached, rounds are retried with exponential backoff;
//! local changes wait on disk meanwhile, so nothing is lost.

use std::future::Future;
use std::time::Duration;

use intersync_protocol::path::STATE_DIR;
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::{SyncError, SyncOptions, SyncReport, WorkingCopy};
use crate::transport::Remote;

/// Quiet time after the last local change before a round starts.
const LOCAL_DEBOUNCE: Duration = Duration::from_millis(500);
/// Longest a round waits for local quiet (a file written without pause
/// must not hold every other change back).
const MAX_LOCAL_DEBOUNCE: Duration = Duration::from_secs(5);
/// How long one head long-poll is held.
const LONG_POLL_SECS: u64 = 25;
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What `watch` reports as it goes.
#[derive(Debug)]
pub enum WatchEvent {
    Synced(SyncReport),
    /// The server could not be reached; the next try is after `retry_in`.
    Offline {
        error: SyncError,
        retry_in: Duration,
    },
}

/// Keeps `wc` in sync with `remote` until `shutdown` completes.
pub async fn watch(
    wc: &mut WorkingCopy,
    remote: &impl Remote,
    options: SyncOptions,
    on_event: impl FnMut(WatchEvent),
    shutdown: impl Future<Output = ()>,
) -> Result<(), SyncError> {
    let (tx, local_changes) = mpsc::unbounded_channel::<()>();
    let state_dir = wc.root().join(STATE_DIR);
    let mut watcher = crate::export::watch::watcher(move |event: notify::Result<notify::Event>| {
        let relevant = match &event {
            Ok(e) => {
                crate::export::watch::may_change(e)
                    && e.paths.iter().any(|p| !p.starts_with(&state_dir))
            }
            Err(_) => true,
        };
        if relevant {
            let _ = tx.send(());
        }
    })
    .map_err(|e| SyncError::local(wc.root(), e))?;
    watcher
        .watch(wc.root(), RecursiveMode::Recursive)
        .map_err(|e| SyncError::local(wc.root(), e))?;
    let mut local_changes = local_changes;
    follow(wc, remote, options, &mut local_changes, on_event, shutdown).await
}

/// [`watch`], told of local changes by `local_changes` instead of a
/// file-system watcher (a mount that sees every change itself).
pub async fn follow(
    wc: &mut WorkingCopy,
    remote: &impl Remote,
    options: SyncOptions,
    local_changes: &mut mpsc::UnboundedReceiver<()>,
    mut on_event: impl FnMut(WatchEvent),
    shutdown: impl Future<Output = ()>,
) -> Result<(), SyncError> {
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_secs(1);
    let mut need_round = true;
    loop {
        if need_round {
            tracing::debug!("a sync round");
            match super::sync(wc, remote, options).await {
                Ok(report) => {
                    backoff = Duration::from_secs(1);
                    need_round = false;
                    on_event(WatchEvent::Synced(report));
                }
                Err(error) if error.is_unreachable() => {
                    on_event(WatchEvent::Offline {
                        error,
                        retry_in: backoff,
                    });
                    tokio::select! {
                        () = &mut shutdown => return Ok(()),
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        let seq = wc.saved.base.state.seq;
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            head = remote.head(Some(seq), LONG_POLL_SECS) => match head {
                Ok(Some(_)) => need_round = true,
                Ok(None) => {}
                Err(e) if e.is_unreachable() => need_round = true,
                Err(e) => return Err(e.into()),
            },
            Some(()) = local_changes.recv() => {
                let woken = tokio::time::Instant::now();
                while woken.elapsed() < MAX_LOCAL_DEBOUNCE
                    && tokio::time::timeout(LOCAL_DEBOUNCE, local_changes.recv()).await.is_ok()
                {}
                need_round = true;
            }
        }
    }
}
