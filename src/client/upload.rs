//! Sending one file to an export the cheapest way, for both pushes (a
//! working copy's, and an rsync command line's whose destination is an
//! export): a new file whole with `If-None-Match: *`; an edited one as an
//! exact patch from its base when this side kept the base's content, else
//! as a librsync delta against the server's signature of the base when
//! that is smaller than the file, else whole; each with `If-Match` of the
//! base, so that a file the server changed meanwhile is refused (412),
//! never overwritten.

use bytes::Bytes;
use intersync_protocol::push::{self, Precondition, PushWriter};
use intersync_protocol::{OpResult, TreePath, Version};

use crate::delta::{Signature, write_delta, zpatch};
use crate::transport::{DeltaFormat, Expect, FileMeta, Remote, TransportError};

/// Files smaller than this may go in a batch ([`send_many`]); larger ones
/// one by one (resumable, and a delta against the server's signature).
pub const MAX_BATCHED: u64 = crate::delta::refine::MIN_LEN;
/// Files in one batch, and bytes of them.
pub const FILES_A_BATCH: usize = 1024;
pub const BYTES_A_BATCH: u64 = 64 << 20;
/// zstd's level for a push body.
const LEVEL: i32 = 3;

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

/// One file of a batch: what [`send`] takes.
pub struct Outgoing<'a> {
    pub file: Upload<'a>,
    pub base: Option<Version>,
    pub kept_base: Option<crate::delta::MappedFile>,
}

/// Sends `files` in one request (`POST /.intersync/push`), each as an
/// exact patch from its kept base when that is smaller, else as a delta
/// against the server's signature of its base when that is smaller (the
/// signatures of every such file asked for in one request first), else
/// whole (the stream is compressed, so small similar files cost little):
/// the result of each, in order (an `Err` is the server's refusal of that
/// file). `None` from a server without batched writes: send them one by
/// one.
pub async fn send_many(
    remote: &impl Remote,
    files: &[Outgoing<'_>],
) -> Result<Option<Vec<Result<Sent, OpResult>>>, TransportError> {
    let encoder = zstd::stream::write::Encoder::new(Vec::new(), LEVEL).map_err(local)?;
    let mut stream = PushWriter::new(encoder).map_err(local)?;
    let mut sent = Vec::with_capacity(files.len());
    let mut deltas = deltas_for(remote, files).await?.into_iter();
    for out in files {
        let file = &out.file;
        let size = file.data.len() as u64;
        let patch = match (out.base, &out.kept_base) {
            (Some(_), Some(old)) => zpatch::encode(&old[..], &file.data, Vec::new())
                .ok()
                .filter(|p| (p.len() as u64) < size),
            _ => None,
        };
        let delta = match (out.base, &out.kept_base) {
            (Some(_), None) => deltas.next().flatten(),
            _ => None,
        };
        let (form, bytes, way, matched) = match (&patch, &delta, out.base) {
            (Some(patch), _, _) => (
                push::Form::Patch,
                &patch[..],
                Way::Patch,
                size.saturating_sub(patch.len() as u64),
            ),
            (None, Some((delta, stats)), _) => (
                push::Form::Delta,
                &delta[..],
                Way::Delta,
                stats.matched_bytes,
            ),
            (None, None, None) => (push::Form::Whole, &file.data[..], Way::Created, 0),
            (None, None, Some(_)) => (push::Form::Whole, &file.data[..], Way::Whole, 0),
        };
        stream
            .entry(&push::Entry {
                path: file.path.clone(),
                precondition: out.base.map_or(Precondition::Absent, Precondition::Version),
                form,
                version: file.version,
                size,
                mode: file.meta.mode,
                mtime_ns: file.meta.mtime_ns,
            })
            .map_err(local)?;
        stream.data(bytes).map_err(local)?;
        sent.push(Sent {
            way,
            literal_bytes: size - matched,
            matched_bytes: matched,
        });
    }
    let body = stream
        .finish()
        .and_then(|encoder| encoder.finish())
        .map_err(local)?;
    let Some(results) = remote.push_many(Bytes::from(body)).await? else {
        return Ok(None);
    };
    if results.len() != files.len() {
        return Err(TransportError::BadAnswer {
            what: "many files written".into(),
            reason: format!("{} results for {} files", results.len(), files.len()),
        });
    }
    Ok(Some(
        results
            .into_iter()
            .zip(sent)
            .map(|(result, sent)| match result.status {
                201 | 204 => Ok(sent),
                _ => Err(result),
            })
            .collect(),
    ))
}

/// For each file of `files` that is an edit whose base this side did not
/// keep, in order: a delta against the server's signature of the base,
/// when smaller than the file. The signatures come in one fetch request;
/// a server without it, or a base it no longer has, gives `None`.
async fn deltas_for(
    remote: &impl Remote,
    files: &[Outgoing<'_>],
) -> Result<Vec<Option<(Vec<u8>, crate::delta::DeltaStats)>>, TransportError> {
    use intersync_protocol::fetch::{Event, FetchError, Form, StreamParser, Want};

    use crate::transport::Pieces;
    let unkept = || {
        files
            .iter()
            .filter(|out| out.kept_base.is_none() && out.base.is_some())
    };
    let bases: Vec<Version> = unkept().filter_map(|out| out.base).collect();
    if bases.is_empty() {
        return Ok(Vec::new());
    }
    let mut signatures: Vec<Option<Vec<u8>>> = vec![None; bases.len()];
    let wants: Vec<Want<'_>> = bases.iter().map(|v| Want::Signature(*v)).collect();
    let mut request = Vec::new();
    intersync_protocol::fetch::encode_request(&wants, &mut request);
    if let Some(mut pieces) = remote.fetch_many(Bytes::from(request)).await? {
        let mut parser = StreamParser::new(bases.len());
        let mut open: Option<(usize, Vec<u8>)> = None;
        let mut on = |event: Event<'_>| -> Result<(), FetchError> {
            match event {
                Event::Start {
                    index,
                    form: Form::Signature,
                    ..
                } => open = Some((index, Vec::new())),
                Event::Start { .. } => open = None,
                Event::Data(bytes) => {
                    if let Some((_, sig)) = &mut open {
                        sig.extend_from_slice(bytes);
                    }
                }
                Event::End { .. } => {
                    if let Some((index, sig)) = open.take() {
                        signatures[index] = Some(sig);
                    }
                }
            }
            Ok(())
        };
        while let Some(piece) = pieces.next().await? {
            parser.feed(&piece, &mut on).map_err(malformed_signatures)?;
        }
        parser.finish().map_err(malformed_signatures)?;
    }
    Ok(unkept()
        .zip(signatures)
        .map(|(out, sig)| {
            let sig = Signature::from_bytes(sig?).ok()?;
            let mut delta = Vec::new();
            let stats =
                write_delta(sig.view(), &out.file.data, &mut delta).expect("writing to memory");
            ((delta.len() as u64) < out.file.data.len() as u64).then_some((delta, stats))
        })
        .collect())
}

fn malformed_signatures(e: intersync_protocol::fetch::FetchError) -> TransportError {
    TransportError::Malformed {
        what: "the signatures of the bases".into(),
        source: Box::new(e),
    }
}

fn local(source: std::io::Error) -> TransportError {
    TransportError::Local {
        what: "a push body".into(),
        source,
    }
}
