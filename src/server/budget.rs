//! Memory for request bodies the server must hold whole before it can
//! answer (a signature for a delta, a fetch request, a batch of
//! operations): one budget for the whole process, because memory is one.
//!
//! A body that says its length takes that much of the budget before its
//! first byte is read, so that many large requests at once queue (first
//! come, first served) instead of each holding part of the budget and
//! waiting for the rest; a body without a length takes its share piece by
//! piece as it arrives. A request that cannot have its share within
//! [`WAIT`] is answered 503 with `Retry-After`. Once taken, the share must
//! arrive at [`MIN_RATE`] at least (after a grace of [`GRACE`]), so a
//! client trickling a large body holds the budget for minutes, not for
//! ever. The share goes back when the request is answered.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::StatusCode;
use hyper::body::Body as _;
use hyper::header;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{Incoming, Refusal};

/// Bytes of whole bodies held at once, by every request of the process.
/// Two of the largest signatures (64 MiB, each about 2.5 times its size
/// once indexed), or thousands of ordinary ones.
pub const BUDGET: usize = 128 << 20;
/// Longest a request waits for its share.
pub const WAIT: Duration = Duration::from_secs(30);
/// The slowest a body that holds a share may arrive, after [`GRACE`].
pub const MIN_RATE: u64 = 256 * 1024;
pub const GRACE: Duration = Duration::from_secs(60);

static HELD: LazyLock<Arc<Semaphore>> = LazyLock::new(|| Arc::new(Semaphore::new(BUDGET)));

/// A share of the budget, given back when dropped.
#[derive(Debug)]
pub struct Share(Option<OwnedSemaphorePermit>);

impl Share {
    fn merge(&mut self, more: OwnedSemaphorePermit) {
        match &mut self.0 {
            Some(held) => held.merge(more),
            None => self.0 = Some(more),
        }
    }
}

/// Takes `bytes` of the budget, waiting at most [`WAIT`].
async fn take(bytes: usize, what: &str) -> Result<OwnedSemaphorePermit, Refusal> {
    let n = u32::try_from(bytes.clamp(1, BUDGET)).expect("the budget fits in u32");
    match tokio::time::timeout(WAIT, HELD.clone().acquire_many_owned(n)).await {
        Ok(Ok(permit)) => Ok(permit),
        _ => Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the server is busy with other large requests; send the {what} again later"),
        )
        .with_header(header::RETRY_AFTER, "5")),
    }
}

/// The whole of a request's `body`, at most `limit` bytes, read within
/// the budget; the share is held until the returned [`Share`] is dropped.
/// `what` names the body in refusals.
pub async fn read_whole(
    mut body: Incoming,
    limit: usize,
    what: &str,
) -> Result<(Vec<u8>, Share), Refusal> {
    let too_large = || {
        Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the {what} is over {limit} bytes"),
        )
    };
    let declared = body.size_hint().exact();
    let mut share = Share(None);
    let mut buf = Vec::new();
    let deadline = match declared {
        Some(len) => {
            let len = usize::try_from(len)
                .ok()
                .filter(|&l| l <= limit)
                .ok_or_else(too_large)?;
            share.merge(take(len, what).await?);
            buf.reserve(len);
            tokio::time::Instant::now() + GRACE + Duration::from_secs(len as u64 / MIN_RATE)
        }
        None => tokio::time::Instant::now() + GRACE + Duration::from_secs(limit as u64 / MIN_RATE),
    };
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                return Err(Refusal::new(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("the {what} came slower than {MIN_RATE} bytes a second"),
                ));
            }
            Ok(None) => break,
            Ok(Some(frame)) => frame.map_err(|e| {
                Refusal::new(StatusCode::BAD_REQUEST, format!("reading the {what}: {e}"))
            })?,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if buf.len() + data.len() > limit {
            return Err(too_large());
        }
        if declared.is_none() {
            share.merge(take(data.len(), what).await?);
        }
        buf.extend_from_slice(&data);
    }
    Ok((buf, share))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shares queue rather than overlap: a second request for most of the
    /// budget waits until the first gives its share back.
    #[tokio::test]
    async fn shares_queue_until_given_back() {
        let first = take(BUDGET / 4 * 3, "test").await.unwrap();
        let second = tokio::spawn(take(BUDGET / 4 * 3, "test"));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!second.is_finished(), "two shares over the budget at once");
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("the second share once the first went back")
            .unwrap();
        assert!(second.is_ok());
    }
}
