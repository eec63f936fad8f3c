//! Connections: how many at once and how long each phase may take, so that
//! clients that stall (half-sent headers, a body that never comes, a reader
//! that never reads) cannot keep the server from everyone else.
//!
//! - Headers must arrive within [`Limits::headers`] of the connection
//!   waiting for them (hyper's header timer, which also closes idle
//!   keep-alive connections).
//! - A request body may stall at most [`Limits::body_idle`] between two
//!   pieces ([`IdleBody`]); a response may wait at most
//!   [`Limits::write_idle`] for the client to read ([`StallGuard`]).
//! - A TLS handshake must end within [`Limits::handshake`].
//! - At most [`Limits::connections`] connections at once. When all are
//!   taken, the one idle the longest (waiting for headers, or between
//!   requests) is closed for the newcomer; a connection with a request in
//!   flight, or a response still being sent, is never closed that way.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// How long each phase of a connection may take, and how many at once.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub connections: usize,
    pub headers: Duration,
    pub body_idle: Duration,
    pub write_idle: Duration,
    pub handshake: Duration,
}

impl Default for Limits {
    /// Half the open files this process may have (each connection is one,
    /// and serving a file is another), between 16 and 4096; 30 s for
    /// headers, 60 s of silence in a body or a response, 15 s for TLS.
    fn default() -> Limits {
        let files = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(8192);
        Limits {
            connections: (files / 2).clamp(16, 4096) as usize,
            headers: Duration::from_secs(30),
            body_idle: Duration::from_secs(60),
            write_idle: Duration::from_secs(60),
            handshake: Duration::from_secs(15),
        }
    }
}

/// One connection as the registry sees it.
struct Entry {
    /// Requests in flight, responses still being sent.
    busy: Arc<AtomicUsize>,
    /// When it last became idle (or was accepted).
    idle_since: Arc<Mutex<Instant>>,
    evict: Arc<Notify>,
}

/// Every open connection.
#[derive(Default)]
pub struct Registry {
    open: Mutex<HashMap<u64, Entry>>,
    next: AtomicU64,
    /// Told when a connection closes.
    closed: Notify,
}

/// A connection's membership of the registry; it leaves when dropped.
pub struct Member {
    registry: Arc<Registry>,
    id: u64,
    busy: Arc<AtomicUsize>,
    idle_since: Arc<Mutex<Instant>>,
    evict: Arc<Notify>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes room for one more connection within `max`: closes the one
    /// idle the longest, or waits until one closes.
    pub async fn room(&self, max: usize) {
        loop {
            let closed = self.closed.notified();
            {
                let open = self.lock();
                if open.len() < max {
                    return;
                }
                let idlest = open
                    .values()
                    .filter(|e| e.busy.load(Ordering::Acquire) == 0)
                    .min_by_key(|e| *e.idle_since.lock().unwrap_or_else(|p| p.into_inner()));
                if let Some(e) = idlest {
                    e.evict.notify_one();
                }
            }
            closed.await;
        }
    }

    /// Registers a new connection.
    pub fn join(self: &Arc<Registry>) -> Member {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (busy, idle_since, evict) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(Mutex::new(Instant::now())),
            Arc::new(Notify::new()),
        );
        self.lock().insert(
            id,
            Entry {
                busy: busy.clone(),
                idle_since: idle_since.clone(),
                evict: evict.clone(),
            },
        );
        Member {
            registry: self.clone(),
            id,
            busy,
            idle_since,
            evict,
        }
    }
}

impl Member {
    /// Completes when the registry closes this connection for another.
    pub async fn evicted(&self) {
        self.evict.notified().await
    }

    /// A request of this connection is being handled; it is until the
    /// returned guard (kept by the response's body) is dropped.
    pub fn busy(&self) -> Busy {
        self.busy.fetch_add(1, Ordering::AcqRel);
        Busy {
            busy: self.busy.clone(),
            idle_since: self.idle_since.clone(),
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
        self.registry.closed.notify_waiters();
    }
}

/// A request (and its response) in flight.
pub struct Busy {
    busy: Arc<AtomicUsize>,
    idle_since: Arc<Mutex<Instant>>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        *self.idle_since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its connection busy until it is sent.
pub struct Tracked<B> {
    inner: B,
    _busy: Busy,
}

impl<B> Tracked<B> {
    pub fn new(inner: B, busy: Busy) -> Tracked<B> {
        Tracked { inner, _busy: busy }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body whose pieces may be at most `idle` apart.
pub struct IdleBody {
    inner: hyper::body::Incoming,
    idle: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error(transparent)]
    Http(#[from] hyper::Error),
    #[error("no byte of the body for {0:?}")]
    Stalled(Duration),
}

impl IdleBody {
    pub fn new(inner: hyper::body::Incoming, idle: Duration) -> IdleBody {
        IdleBody {
            inner,
            idle,
            timer: None,
        }
    }
}

impl Body for IdleBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.timer = None;
                Poll::Ready(frame.map(|f| f.map_err(BodyError::from)))
            }
            Poll::Pending => {
                let idle = this.idle;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                ready!(timer.as_mut().poll(cx));
                Poll::Ready(Some(Err(BodyError::Stalled(idle))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Longest a closing connection reads on, and longest it waits for each
/// piece (nginx's `lingering_time` and `lingering_timeout`).
const LINGER: Duration = Duration::from_secs(30);
const LINGER_IDLE: Duration = Duration::from_secs(2);

/// Closes a connection the way nginx's lingering close does: the answer
/// is sent and the sending side shut, then what the client still sends
/// (the rest of a body refused before it was read, such as a 507 or 413)
/// is read and dropped until it stops, for a bounded time. Closing at once
/// would make the kernel answer those bytes with a reset, which can
/// destroy the answer before the client reads it: the client would see
/// "broken pipe" instead of why it was refused.
pub async fn linger<S: AsyncRead + AsyncWrite + Unpin>(mut io: S) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if io.shutdown().await.is_err() {
        return;
    }
    let until = tokio::time::Instant::now() + LINGER;
    let mut sink = vec![0u8; 64 * 1024];
    while let Ok(Ok(n)) = tokio::time::timeout(
        LINGER_IDLE.min(until.saturating_duration_since(tokio::time::Instant::now())),
        io.read(&mut sink),
    )
    .await
    {
        if n == 0 {
            break;
        }
    }
}

/// A connection whose writes may wait at most `idle` for the client to
/// read. (Reads are left alone: a long-poll waits on purpose, and headers
/// and bodies have their own timers.)
pub struct StallGuard<S> {
    inner: S,
    idle: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> StallGuard<S> {
    pub fn new(inner: S, idle: Duration) -> StallGuard<S> {
        StallGuard {
            inner,
            idle,
            timer: None,
        }
    }

    fn stalled(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Error> {
        let idle = self.idle;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the client has read nothing for too long",
        ))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for StallGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for StallGuard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => self.stalled(cx).map(Err),
            done => {
                self.timer = None;
                done
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => self.stalled(cx).map(Err),
            done => {
                self.timer = None;
                done
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.stalled(cx).map(Err),
            done => {
                self.timer = None;
                done
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// What a cleartext client with prior knowledge of HTTP/2 sends first
/// (RFC 9113, section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads the first bytes of a cleartext connection, no more than it takes
/// to tell HTTP/2's preface from an HTTP/1 request, and gives them back in
/// front of the rest ([`Rewind`]): whether it is HTTP/2, and the connection.
pub async fn sniff<S: AsyncRead + Unpin>(mut io: S) -> std::io::Result<(bool, Rewind<S>)> {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::with_capacity(H2_PREFACE.len());
    let mut piece = [0u8; H2_PREFACE.len()];
    while seen.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&seen) {
        let n = io.read(&mut piece[..H2_PREFACE.len() - seen.len()]).await?;
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&piece[..n]);
    }
    Ok((
        seen == H2_PREFACE,
        Rewind {
            prefix: seen,
            at: 0,
            inner: io,
        },
    ))
}

/// A connection with bytes already read from it put back in front.
pub struct Rewind<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.at < self.prefix.len() {
            let n = (self.prefix.len() - self.at).min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.prefix[at..at + n]);
            self.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn sniffed(sent: &[u8]) -> (bool, Vec<u8>) {
        let (mut near, far) = tokio::io::duplex(64);
        let sent = sent.to_vec();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            // One byte at a time: the preface may come in pieces.
            for b in sent {
                near.write_all(&[b]).await.unwrap();
            }
        });
        let (h2, mut io) = sniff(far).await.unwrap();
        writer.await.unwrap();
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        (h2, all)
    }

    #[tokio::test]
    async fn sniffing_tells_http2_from_http1_and_loses_no_byte() {
        let h2 = [H2_PREFACE, b"\0\0\0\x04\0\0\0\0\0"].concat();
        assert_eq!(sniffed(&h2).await, (true, h2.clone()));
        for http1 in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"PUT /a HTTP/1.1\r\n\r\n",
            b"PRI",
            b"",
        ] {
            assert_eq!(sniffed(http1).await, (false, http1.to_vec()));
        }
    }
}
