//! Sending one file to an export the cheapest way, for both pushes (a
//! working copy's, and an rsync command line's whose destination is an
//! export): a new file whole with `If-None-Match: *`; an edited one as an
//! exact patch from its base when this side kept the base's content, else
//! as a librsync delta against the server's signature of the base when
//! that is smaller than the file, else whole; each with `If-Match` of the
//! base, so that a file the server changed meanwhile is refused (412),
//! never overwritten.

use bytes::Bytes;
use intersync_protocol::{TreePath, Version};

use crate::delta::{Signature, write_delta, zpatch};
use crate::transport::{DeltaFormat, Expect, FileMeta, Remote, TransportError};

/// How a file reached the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Way {
    /// New there, sent whole.
    Created,
    /// Sent whole over the base (no delta was smaller).
    Whole,
    /// A librsync delta against the server's signature of the base.
    Delta,
    /// An exact patch from the base this side kept.
    Patch,
}

impl Way {
    /// How a sync round's report says it.
    pub fn describe(self) -> &'static str {
        match self {
            Way::Created => "created",
            Way::Whole => "sent whole",
            Way::Delta => "updated by delta",
            Way::Patch => "updated by patch",
        }
    }
}

/// What sending a file cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sent {
    pub way: Way,
    /// Bytes of content that crossed as data (a patch or delta's literals,
    /// or the whole file).
    pub literal_bytes: u64,
    /// Bytes rebuilt from what the server had.
    pub matched_bytes: u64,
}

/// One file to send: its content, which must hash to `version`, and the
/// attributes it takes there.
pub struct Upload<'a> {
    pub path: &'a TreePath,
    pub data: Bytes,
    pub version: Version,
    pub meta: FileMeta,
}

/// Sends `file` over `base`, the version the server's copy must still
/// have (`None`: the path must be free there). `kept_base` is the base's
/// content if this side kept it, to send a patch from.
pub async fn send(
    remote: &impl Remote,
    file: &Upload<'_>,
    base: Option<Version>,
    kept_base: Option<&[u8]>,
) -> Result<Sent, TransportError> {
    let size = file.data.len() as u64;
    let whole = |way| Sent {
        way,
        literal_bytes: size,
        matched_bytes: 0,
    };
    let Some(base) = base else {
        remote
            .put_whole(
                file.path,
                file.data.clone(),
                Expect::Absent,
                file.version,
                file.meta,
            )
            .await?;
        return Ok(whole(Way::Created));
    };
    if let Some(old) = kept_base
        && let Some(sent) = send_patch(remote, file, base, old).await?
    {
        return Ok(sent);
    }
    let delta = match remote.signature(base).await {
        Ok(sig) => Signature::from_bytes(sig.to_vec()).ok().map(|sig| {
            let mut delta = Vec::new();
            let stats = write_delta(sig.view(), &file.data, &mut delta).expect("writing to memory");
            (delta, stats)
        }),
        Err(TransportError::Refused { status: 404, .. }) => None,
        Err(e) => return Err(e),
    };
    match delta {
        Some((delta, stats)) if (delta.len() as u64) < size => {
            remote
                .put_delta(
                    file.path,
                    delta,
                    DeltaFormat::Librsync,
                    base,
                    (file.version, size),
                    file.meta,
                )
                .await?;
            Ok(Sent {
                way: Way::Delta,
                literal_bytes: stats.literal_bytes,
                matched_bytes: stats.matched_bytes,
            })
        }
        _ => {
            remote
                .put_whole(
                    file.path,
                    file.data.clone(),
                    Expect::Version(base),
                    file.version,
                    file.meta,
                )
                .await?;
            Ok(whole(Way::Whole))
        }
    }
}

/// Sends the file as an exact patch from `old` (the base's content), if
/// the patch is smaller than the file; `None` leaves it to the signature
/// path (also when the server does not take patches).
async fn send_patch(
    remote: &impl Remote,
    file: &Upload<'_>,
    base: Version,
    old: &[u8],
) -> Result<Option<Sent>, TransportError> {
    let size = file.data.len() as u64;
    let Ok(patch) = zpatch::encode(old, &file.data, Vec::new()) else {
        return Ok(None);
    };
    let len = patch.len() as u64;
    if len >= size {
        return Ok(None);
    }
    let put = remote
        .put_delta(
            file.path,
            patch,
            DeltaFormat::Patch,
            base,
            (file.version, size),
            file.meta,
        )
        .await;
    match put {
        Ok(_) => Ok(Some(Sent {
            way: Way::Patch,
            literal_bytes: len,
            matched_bytes: size - len,
        })),
        // A server that does not know patches (415, or 400 from one that
        // took it for something else): the signature path, then.
        Err(TransportError::Refused {
            status: 400 | 415, ..
        }) => Ok(None),
        Err(e) => Err(e),
    }
}
