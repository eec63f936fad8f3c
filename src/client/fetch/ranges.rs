//! Fetching byte ranges of a version: many in one multi-range request
//! where the server answers them correctly, else one a request with a few
//! in flight, answers kept in order.

use std::ops::Range;

use bytes::Bytes;
use futures_util::StreamExt;
use intersync_protocol::{TreePath, Version};

use crate::client::SyncError;
use crate::transport::Remote;

/// Single-range requests in flight at once when a server answers no multi-range.
const RANGES_IN_FLIGHT: usize = 4;

/// Ranges in one request to any web server (nginx takes many more; some
/// servers and caches take fewer).
pub const RANGES_A_REQUEST: usize = 64;
/// Ranges in one request to InterSync's own server, which takes 256: each
/// request saved is a round trip.
pub const RANGES_A_REQUEST_SMART: usize = 256;

/// Fetches `ranges` of a file: in multi-range requests of up to
/// `per_request` ranges where the server answers them correctly, else one
/// range a request.
pub async fn fetch_ranges(
    remote: &impl Remote,
    path: &TreePath,
    version: Version,
    ranges: &[Range<u64>],
    per_request: usize,
) -> Result<Vec<Bytes>, SyncError> {
    let mut out = Vec::with_capacity(ranges.len());
    let mut multi = ranges.len() > 1;
    for chunk in ranges.chunks(per_request) {
        if multi && chunk.len() > 1 {
            match remote.ranges(path, version, chunk).await {
                Ok(parts) => {
                    out.extend(parts);
                    continue;
                }
                Err(e) if e.is_unreachable() => return Err(e.into()),
                Err(e) => {
                    tracing::info!(%path, error = %crate::monitor::Chain(&e), "multi-range refused; asking one range at a time");
                    multi = false;
                }
            }
        }
        // One range a request, a few in flight at once (each on its own
        // keep-alive connection), answers kept in order.
        let mut singles = futures_util::stream::iter(chunk)
            .map(|r| remote.range(path, version, r.clone()))
            .buffered(RANGES_IN_FLIGHT);
        while let Some(bytes) = singles.next().await {
            out.push(bytes?);
        }
    }
    Ok(out)
}
