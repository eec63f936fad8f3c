//! A TCP relay between a client and a server that counts every byte each
//! way at the socket (so every tool is counted the same way, whatever its
//! own statistics say) and can hold each chunk back for a fixed time, so
//! that a link has a round-trip time (tbf adds none, and netem is not
//! available here).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Bytes and connections through a relay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counted {
    /// Client to server.
    pub up: u64,
    /// Server to client.
    pub down: u64,
    pub connections: u64,
}

#[derive(Default)]
struct Counters {
    up: AtomicU64,
    down: AtomicU64,
    connections: AtomicU64,
}

/// A running relay; stops when dropped.
pub struct Relay {
    pub addr: SocketAddr,
    counters: Arc<Counters>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Listens on `ip` and forwards every connection to `target`, each
    /// byte arriving `one_way` later on the other side and, with a `rate`
    /// (bytes a second, each way, shared by all connections), no sooner
    /// than the rate allows.
    pub async fn start(
        ip: std::net::Ipv4Addr,
        target: SocketAddr,
        one_way: Duration,
        rate: Option<u64>,
    ) -> std::io::Result<Relay> {
        let listener = TcpListener::bind((ip, 0)).await?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let shared = counters.clone();
        let pacers = rate.map(|r| (Arc::new(Pacer::new(r)), Arc::new(Pacer::new(r))));
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                shared.connections.fetch_add(1, Ordering::Relaxed);
                let counters = shared.clone();
                let (up_pace, down_pace) = pacers.clone().unzip();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let up = pipe(cr, sw, one_way, up_pace, counters.clone(), true);
                    let down = pipe(sr, cw, one_way, down_pace, counters, false);
                    let _ = tokio::join!(up, down);
                });
            }
        });
        Ok(Relay {
            addr,
            counters,
            task,
        })
    }

    /// What crossed so far.
    pub fn counted(&self) -> Counted {
        Counted {
            up: self.counters.up.load(Ordering::Relaxed),
            down: self.counters.down.load(Ordering::Relaxed),
            connections: self.counters.connections.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How much sending time a paced link buffers before it pushes back.
const BUFFERED: Duration = Duration::from_millis(50);

/// One direction's rate: when the link is next free.
struct Pacer {
    bytes_per_sec: u64,
    free_at: std::sync::Mutex<Instant>,
}

impl Pacer {
    fn new(bytes_per_sec: u64) -> Pacer {
        Pacer {
            bytes_per_sec: bytes_per_sec.max(1),
            free_at: std::sync::Mutex::new(Instant::now()),
        }
    }

    /// When `n` bytes that arrived now have been sent at the rate.
    fn send(&self, n: usize) -> Instant {
        let mut free = self.free_at.lock().unwrap_or_else(|p| p.into_inner());
        let start = (*free).max(Instant::now());
        *free = start + Duration::from_secs_f64(n as f64 / self.bytes_per_sec as f64);
        *free
    }
}

/// Copies `from` to `to`, counting, each chunk held back by `delay` after
/// the pacer (if any) has let it through (chunks in flight keep flowing: a
/// delay line, not a stop-and-wait).
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
    pacer: Option<Arc<Pacer>>,
    counters: Arc<Counters>,
    up: bool,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async move {
        // Small reads under a rate, so that pacing is smooth.
        let mut buf = vec![
            0u8;
            if pacer.is_some() {
                16 * 1024
            } else {
                64 * 1024
            }
        ];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let counter = if up { &counters.up } else { &counters.down };
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                    let sent = pacer.as_ref().map_or_else(Instant::now, |p| p.send(n));
                    if tx.send((sent + delay, buf[..n].to_vec())).is_err() {
                        break;
                    }
                    // A link holds little: stop reading while what it holds
                    // would take more than a moment to send, so the sender
                    // feels the rate as TCP would make it.
                    let backlog = sent.saturating_duration_since(Instant::now());
                    if backlog > BUFFERED {
                        tokio::time::sleep(backlog - BUFFERED).await;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
