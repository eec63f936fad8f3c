//! `POST /.intersync/push`: many files written in one request
//! (`protocol::push`), each with its own precondition and its own result,
//! as a lone PUT of it would have had (201, 204, 412, 409, 422, 403).
//!
//! The body is spooled to an unnamed file (bounded), then read as a stream:
//! each file is written beside its destination and checked against the
//! version announced. Only when the whole stream has been read and found
//! well formed is anything installed, so a malformed or cut body changes
//! nothing (400). Then, under the export's lock, each file whose
//! precondition still holds is renamed into place, the file system synced
//! once, and all of them journaled in one append: durability costs two
//! syncs for the batch, not two a file.

use std::collections::HashSet;
use std::io::{BufReader, Read, Seek, Write};
use std::path::Path;
use std::sync::Arc;

use hyper::header;
use hyper::{Request, Response, StatusCode};
use intersync_protocol::push::{Entry, Form, PushError, PushReader};
use intersync_protocol::{BatchResult, OpResult, TreePath};

use super::writes::{self, DeltaFormat, HashWriter, Landing, internal};
use super::{Body, Incoming, Refusal};
use crate::beneath::Folder;
use crate::export::Export;
use crate::install::{Temp, sync_fs};

/// Largest body (compressed): the client sends at most 64 MiB of files a
/// request.
const MAX_BODY: u64 = 1 << 30;
/// A patch or delta is held in memory to be applied: at most this.
const MAX_DELTA: u64 = 64 << 20;

pub async fn push(export: &Arc<Export>, req: Request<Incoming>) -> Result<Response<Body>, Refusal> {
    let zstd = match req.headers().get(header::CONTENT_ENCODING) {
        None => false,
        Some(v) if v == "zstd" => true,
        Some(_) => {
            return Err(Refusal::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "a push body is zstd or as it is",
            ));
        }
    };
    let spool = writes::spool_body(req.into_body(), MAX_BODY).await?;
    let export = export.clone();
    let result = tokio::task::spawn_blocking(move || receive(&export, spool, zstd))
        .await
        .map_err(internal)??;
    Ok(writes::results(&result))
}

/// A file of the stream, written and checked, or why not.
type Received = Result<(Temp, u64), Refusal>;

/// The folder the last file was written in: files of a push come in path
/// order, so most share their folder's descriptor (a batch of 1,024 files
/// must not hold 1,024 of them).
#[derive(Default)]
struct Folders {
    last: Option<(Option<TreePath>, Arc<Folder>)>,
}

impl Folders {
    fn holding(&mut self, root: &Path, path: &TreePath) -> Result<Arc<Folder>, Refusal> {
        let parent = path.parent();
        if let Some((p, folder)) = &self.last
            && *p == parent
        {
            return Ok(folder.clone());
        }
        let folder = Arc::new(Folder::holding(root, path)?);
        self.last = Some((parent, folder.clone()));
        Ok(folder)
    }
}

fn receive(export: &Export, mut spool: std::fs::File, zstd: bool) -> Result<BatchResult, Refusal> {
    spool.rewind().map_err(internal)?;
    let input: Box<dyn Read> = if zstd {
        Box::new(zstd::stream::read::Decoder::new(spool).map_err(internal)?)
    } else {
        Box::new(BufReader::new(spool))
    };
    let bad = |e: PushError| Refusal::new(StatusCode::BAD_REQUEST, format!("bad push: {e}"));
    let mut reader = PushReader::new(input).map_err(bad)?;
    let mut received: Vec<(Entry, Received)> = Vec::new();
    let mut seen = HashSet::new();
    let mut folders = Folders::default();
    while let Some(entry) = reader.next_entry().map_err(bad)? {
        let got = if !seen.insert(entry.path.clone()) {
            Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "the path is in this push twice",
            ))
        } else if export.hidden(&entry.path, false) {
            Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "excluded by the module's rules",
            ))
        } else if let Err(refusal) = writes::room_for(export, entry.size) {
            Err(refusal)
        } else {
            receive_one(export, &entry, &mut reader, &mut folders).map_err(bad)?
        };
        received.push((entry, got));
    }
    install(export, received)
}

/// Writes one file of the stream beside its destination and checks it.
fn receive_one<R: Read>(
    export: &Export,
    entry: &Entry,
    reader: &mut PushReader<R>,
    folders: &mut Folders,
) -> Result<Received, PushError> {
    let root = export.root();
    let staged = folders.holding(root, &entry.path).and_then(|folder| {
        let dir = entry.path.under(root);
        Temp::create(folder, dir.parent().unwrap_or(root))
            .map_err(|e| Refusal::new(StatusCode::CONFLICT, format!("cannot write there: {e}")))
    });
    let (temp, mut file) = match staged {
        Ok(staged) => staged,
        // The bytes are skipped by the next head.
        Err(refusal) => return Ok(Err(refusal)),
    };
    // What is not read of a file is skipped by the next head: a file that
    // brings more than it may is refused without reading the rest.
    let mut buf = vec![0u8; 64 * 1024];
    let written = match entry.form {
        Form::Whole => {
            let mut out = HashWriter::new(&mut file);
            loop {
                let n = reader.read(&mut buf)?;
                if n == 0 {
                    break out.flush().map(|()| out.result()).map_err(internal);
                }
                if out.size + n as u64 > entry.size {
                    break Err(not_as_announced(entry));
                }
                if let Err(e) = out.write_all(&buf[..n]) {
                    break Err(internal(e));
                }
            }
        }
        Form::Patch | Form::Delta => {
            let mut delta = Vec::new();
            let over = loop {
                let n = reader.read(&mut buf)?;
                if n == 0 {
                    break false;
                }
                if (delta.len() + n) as u64 > MAX_DELTA {
                    break true;
                }
                delta.extend_from_slice(&buf[..n]);
            };
            let format = if entry.form == Form::Patch {
                DeltaFormat::Patch
            } else {
                DeltaFormat::Librsync
            };
            if over {
                Err(Refusal::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("a patch or delta over {MAX_DELTA} bytes"),
                ))
            } else {
                let mut out = std::io::BufWriter::new(&mut file);
                let applied =
                    writes::apply_delta(export, &entry.path, &delta, format, &mut out, entry.size);
                applied.and_then(|got| out.flush().map(|()| got).map_err(internal))
            }
        }
    };
    Ok(written.and_then(|(version, size)| {
        if version != entry.version || size != entry.size {
            return Err(not_as_announced(entry));
        }
        Ok((temp, size))
    }))
}

/// 422: what arrived is not the file announced.
fn not_as_announced(entry: &Entry) -> Refusal {
    Refusal::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        format!(
            "the result is not the {} bytes of version {} announced; nothing was written",
            entry.size, entry.version
        ),
    )
}

/// Installs what was received, each file if its precondition still holds,
/// and journals them together (see the module documentation).
fn install(export: &Export, received: Vec<(Entry, Received)>) -> Result<BatchResult, Refusal> {
    let root = export.root();
    if received.iter().any(|(_, got)| got.is_ok()) {
        sync_fs(root).map_err(internal)?;
    }
    let mut inner = export.lock();
    let mut ops = Vec::new();
    let mut landed = Vec::new();
    let mut results = Vec::with_capacity(received.len());
    for (entry, got) in received {
        let landing = Landing {
            precondition: entry.precondition,
            mode: export.incoming_mode(entry.mode, false),
            mtime_ns: entry.mtime_ns,
        };
        let done = got.and_then(|(temp, size)| {
            let name = std::ffi::OsStr::new(entry.path.file_name());
            let install = |mode, mtime| temp.install(name, mode, mtime);
            writes::land(
                export,
                &mut inner,
                &entry.path,
                install,
                &landing,
                (entry.version, size),
            )
        });
        results.push(match done {
            Ok((created, mut records)) => {
                ops.append(&mut records);
                landed.push((entry.path, entry.version));
                OpResult {
                    status: if created { 201 } else { 204 },
                    reason: None,
                }
            }
            Err(refusal) => refusal.into_result(),
        });
    }
    if !landed.is_empty() {
        // The renames are durable before the journal says they happened.
        sync_fs(root).map_err(internal)?;
        export.journal_ops(&mut inner, ops)?;
        for (path, _) in &landed {
            export.remember_stat(&mut inner, path);
        }
    }
    let latest_seq = inner.journal.last_seq();
    drop(inner);
    // The writer holds these versions now: keep them for patches.
    for (path, version) in landed {
        export.keep_soon(version, path);
    }
    Ok(BatchResult {
        results,
        latest_seq,
    })
}
