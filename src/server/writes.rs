//! Writes: `PUT /PATH` with a whole body or a librsync delta against the
//! version named in `If-Match`, and `POST /.intersync/ops` for batches of
//! everything else. Each write checks its precondition before the body is
//! read and again, under the export's lock, just before installing; a
//! result is verified before it is installed, installed atomically, and
//! journaled before the answer goes out.

use std::fs;
use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::BodyStream;
use hyper::header;
use hyper::{Request, Response, StatusCode};
use intersync_protocol::api::{
    HEADER_MODE, HEADER_MTIME, HEADER_RESULT_SIZE, HEADER_RESULT_VERSION, MEDIA_DELTA, MEDIA_PATCH,
};
use intersync_protocol::batch::{Batch, BatchOp, BatchResult, OpResult};
use intersync_protocol::kml::{Attrs, Op};
use intersync_protocol::push::Precondition;
use intersync_protocol::{TreePath, Version};

use super::{Body, Incoming, Refusal, full};
use crate::delta::{self, MappedFile};
use crate::export::{Export, Inner};
use crate::install::PendingFile;
use crate::tree::{Entry, EntryKind};

/// Largest delta body accepted.
const MAX_DELTA_BYTES: u64 = 1 << 30;

/// What a write requires of the current state: from `If-None-Match: *`
/// (the path must be free) or `If-Match: "b3-…"` (the file must have that
/// version), or nothing.
fn precondition(req: &Request<Incoming>) -> Result<Precondition, Refusal> {
    let h = req.headers();
    if let Some(v) = h.get(header::IF_NONE_MATCH) {
        return match v.to_str() {
            Ok("*") => Ok(Precondition::Absent),
            _ => Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "a write takes If-None-Match: * only",
            )),
        };
    }
    match h.get(header::IF_MATCH).map(|v| v.to_str()) {
        None => Ok(Precondition::None),
        Some(Ok(tag)) => Version::from_etag(tag)
            .map(Precondition::Version)
            .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, format!("If-Match: {e}"))),
        Some(Err(_)) => Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "If-Match is not text",
        )),
    }
}

/// Whether `current` allows a write that requires `precondition`.
pub(super) fn check(precondition: Precondition, current: Option<&Entry>) -> Result<(), Refusal> {
    let failed = |why: &str| Err(Refusal::new(StatusCode::PRECONDITION_FAILED, why));
    match (precondition, current) {
        (_, Some(e)) if e.is_dir() => Err(Refusal::new(StatusCode::CONFLICT, "a folder is there")),
        (_, Some(e)) if matches!(e.kind, EntryKind::Symlink { .. }) => Err(Refusal::new(
            StatusCode::CONFLICT,
            "a symbolic link is there",
        )),
        (Precondition::None, _) => Ok(()),
        (Precondition::Absent, None) => Ok(()),
        (Precondition::Absent, Some(_)) => failed("the path exists"),
        (Precondition::Version(v), Some(e)) if e.version() == Some(v) => Ok(()),
        (Precondition::Version(_), Some(_)) => failed("the file has changed"),
        (Precondition::Version(_), None) => failed("the file does not exist"),
    }
}

fn header_str<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// A failure of the server's own: 507 when its disk is full (or the
/// quota spent), 500 otherwise.
pub(super) fn internal(e: impl std::error::Error + 'static) -> Refusal {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    let mut full = false;
    while let Some(c) = cause {
        let errno = c
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error);
        full |= matches!(errno, Some(libc::ENOSPC | libc::EDQUOT));
        cause = c.source();
    }
    let status = match full {
        true => StatusCode::INSUFFICIENT_STORAGE,
        false => StatusCode::INTERNAL_SERVER_ERROR,
    };
    Refusal::new(status, crate::monitor::Chain(&e).to_string())
}

/// What a written file requires of the current state, and the attributes
/// it takes.
pub(super) struct Landing {
    pub precondition: Precondition,
    /// The mode the file takes (a module's `incoming chmod` applied).
    pub mode: Option<u32>,
    pub mtime_ns: Option<i64>,
}

/// What a PUT's headers ask for.
struct PutHeaders {
    landing: Landing,
    /// The body is a delta (or patch) in this format, giving this many bytes.
    delta: Option<(DeltaFormat, u64)>,
    /// The version the result must have.
    expected: Option<Version>,
}

impl PutHeaders {
    fn parse(req: &Request<Incoming>, export: &Export) -> Result<PutHeaders, Refusal> {
        let precondition = precondition(req)?;
        let mtime_ns = parse_header(req, HEADER_MTIME, "nanoseconds", |v| v.parse::<i64>().ok())?;
        let mode = parse_header(req, HEADER_MODE, "octal permission bits", |v| {
            u32::from_str_radix(v, 8).ok().filter(|m| *m <= 0o7777)
        })?;
        let format = header_str(req, header::CONTENT_TYPE.as_str()).and_then(|t| {
            if t.starts_with(MEDIA_DELTA) {
                Some(DeltaFormat::Librsync)
            } else if t.starts_with(MEDIA_PATCH) {
                Some(DeltaFormat::Patch)
            } else {
                None
            }
        });
        let expected = header_str(req, HEADER_RESULT_VERSION)
            .map(|v| {
                v.parse::<Version>().map_err(|e| {
                    Refusal::new(
                        StatusCode::BAD_REQUEST,
                        format!("{HEADER_RESULT_VERSION}: {e}"),
                    )
                })
            })
            .transpose()?;
        let expected_size = parse_header(req, HEADER_RESULT_SIZE, "a byte count", |v| {
            v.parse::<u64>().ok()
        })?;
        let delta = match (format, expected_size) {
            (None, _) => None,
            (Some(format), Some(size))
                if expected.is_some() && matches!(precondition, Precondition::Version(_)) =>
            {
                Some((format, size))
            }
            (Some(_), _) => {
                return Err(Refusal::new(
                    StatusCode::PRECONDITION_REQUIRED,
                    format!(
                        "a delta needs If-Match (its base), {HEADER_RESULT_VERSION} and {HEADER_RESULT_SIZE}"
                    ),
                ));
            }
        };
        Ok(PutHeaders {
            landing: Landing {
                precondition,
                // A module's `incoming chmod` applies to what clients write.
                mode: export.incoming_mode(mode, false),
                mtime_ns,
            },
            delta,
            expected,
        })
    }
}

/// A header parsed by `parse`; 400 saying it is `what` when it does not parse.
fn parse_header<T>(
    req: &Request<Incoming>,
    name: &str,
    what: &str,
    parse: impl FnOnce(&str) -> Option<T>,
) -> Result<Option<T>, Refusal> {
    header_str(req, name)
        .map(|v| {
            parse(v)
                .ok_or_else(|| Refusal::new(StatusCode::BAD_REQUEST, format!("{name} is {what}")))
        })
        .transpose()
}

pub async fn put(
    export: &Arc<Export>,
    req: Request<Incoming>,
    path: TreePath,
) -> Result<Response<Body>, Refusal> {
    let put = PutHeaders::parse(&req, export)?;
    // Fail fast, before reading a body that could not be used.
    {
        let (export, path) = (export.clone(), path.clone());
        tokio::task::spawn_blocking(move || -> Result<(), Refusal> {
            let mut inner = export.lock();
            let current = export.current(&mut inner, &path)?;
            check(put.landing.precondition, current.as_ref())?;
            need_folder(&inner, export.root(), &path)
        })
        .await
        .map_err(internal)??;
    }
    // What the result will take, announced by a delta or by the length of
    // a whole body.
    let size = put.delta.map(|(_, size)| size).or_else(|| {
        req.headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok())
    });
    if let Some(size) = size {
        room_for(export, size)?;
    }
    let pending = PendingFile::create_beneath(export.root(), &path).map_err(|e| match e {
        crate::beneath::BeneathError::Io { source, .. } => Refusal::new(
            StatusCode::CONFLICT,
            format!("cannot write there: {source}"),
        ),
        e => Refusal::from(e),
    })?;
    let (pending, version, size) = match put.delta {
        Some((format, limit)) => {
            // Spooled to an unnamed file, not held in memory, up to a bound.
            let spool = spool_body(req.into_body(), MAX_DELTA_BYTES).await?;
            let (export, base_path) = (export.clone(), path.clone());
            tokio::task::spawn_blocking(move || {
                let delta = MappedFile::map(&spool).map_err(internal)?;
                let mut pending = pending;
                let (version, size) =
                    apply_delta(&export, &base_path, &delta, format, &mut pending, limit)?;
                Ok::<_, Refusal>((pending, version, size))
            })
            .await
            .map_err(internal)??
        }
        None => receive_whole(req.into_body(), pending).await?,
    };
    if let Some(want) = put.expected
        && want != version
    {
        return Err(Refusal::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "the result has version {version}, not the {want} announced; nothing was written"
            ),
        ));
    }
    let export = export.clone();
    let created = tokio::task::spawn_blocking(move || {
        let mut inner = export.lock();
        let (created, ops) = land(
            &export,
            &mut inner,
            &path,
            |mode, mtime| pending.install_with(mode, mtime),
            &put.landing,
            (version, size),
        )?;
        export.journal_ops(&mut inner, ops)?;
        export.remember_stat(&mut inner, &path);
        drop(inner);
        // The writer holds this version now: keep it for patches.
        if let Ok(file) = crate::beneath::open_file(export.root(), &path) {
            export.keep(version, &file, size);
        }
        Ok::<_, Refusal>(created)
    })
    .await
    .map_err(internal)??;
    Ok(Response::builder()
        .status(if created {
            StatusCode::CREATED
        } else {
            StatusCode::NO_CONTENT
        })
        .header(header::ETAG, version.etag())
        .body(full(Bytes::new()))
        .expect("valid response"))
}

/// Installs a verified write at `path` if its precondition still holds,
/// under the export's lock, with its attributes (`install` is given the
/// mode and time to set before the file takes its name, and says what the
/// file is as installed): whether the file is new, and the records that say
/// so, for the caller to journal (with `remember_stat` after).
pub(super) fn land(
    export: &Export,
    inner: &mut Inner,
    path: &TreePath,
    install: impl FnOnce(Option<u32>, Option<i64>) -> std::io::Result<rustix::fs::Stat>,
    landing: &Landing,
    (version, size): (Version, u64),
) -> Result<(bool, Vec<Op>), Refusal> {
    // Nothing lands that could not be journaled.
    export.journal_intact()?;
    let current = export.current(inner, path)?;
    check(landing.precondition, current.as_ref())?;
    need_folder(inner, export.root(), path)?;
    let stat = install(landing.mode, landing.mtime_ns).map_err(internal)?;
    let mut ops = Vec::new();
    let created = current.is_none();
    if created {
        ops.push(Op::Create {
            path: path.clone(),
            mode: stat.st_mode & 0o7777,
        });
    }
    ops.push(Op::Write {
        path: path.clone(),
        version,
        size,
        mtime_ns: stat.st_mtime * 1_000_000_000 + stat.st_mtime_nsec as i64,
    });
    Ok((created, ops))
}

/// A result of `size` bytes must fit in the space left on the export's
/// file system (a delta announces its result: 2^62 bytes must not be
/// written out before they are found too many): 507 otherwise.
pub(super) fn room_for(export: &Export, size: u64) -> Result<(), Refusal> {
    let free = rustix::fs::statvfs(export.root())
        .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
        .unwrap_or(u64::MAX);
    if size > free {
        return Err(Refusal::new(
            StatusCode::INSUFFICIENT_STORAGE,
            format!(
                "not enough space: a result of {size} bytes does not fit in the {free} bytes free"
            ),
        ));
    }
    Ok(())
}

/// The folder that will hold `path` must exist, as the journal knows it
/// and on disk, and be reached through no symbolic link.
pub(super) fn need_folder(
    inner: &Inner,
    root: &std::path::Path,
    path: &TreePath,
) -> Result<(), Refusal> {
    match path.parent() {
        None => Ok(()),
        Some(p) if inner.index.state.get(&p).is_some_and(Entry::is_dir) => {
            Ok(crate::beneath::check_folders(root, path)?)
        }
        Some(p) => Err(Refusal::new(StatusCode::CONFLICT, format!("no folder {p}"))),
    }
}

/// Streams a request body of at most `max` bytes into an unnamed temporary file.
pub(super) async fn spool_body(body: Incoming, max: u64) -> Result<std::fs::File, Refusal> {
    let mut file = tempfile::tempfile().map_err(internal)?;
    let mut size = 0u64;
    let mut frames = BodyStream::new(body);
    while let Some(frame) = frames.next().await {
        let frame =
            frame.map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, format!("body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            size += data.len() as u64;
            if size > max {
                return Err(Refusal::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("body over {max} bytes"),
                ));
            }
            file.write_all(&data).map_err(internal)?;
        }
    }
    Ok(file)
}

/// Streams a request body into `pending`, hashing it on the way.
async fn receive_whole(
    body: Incoming,
    mut pending: PendingFile,
) -> Result<(PendingFile, Version, u64), Refusal> {
    let mut hasher = blake3::Hasher::new();
    let mut size = 0u64;
    let mut frames = BodyStream::new(body);
    while let Some(frame) = frames.next().await {
        let frame =
            frame.map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, format!("body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            hasher.update(&data);
            size += data.len() as u64;
            // Small blocking writes into the page cache; fsync happens at install.
            pending.write_all(&data).map_err(internal)?;
        }
    }
    Ok((pending, Version::from_hasher(&hasher), size))
}

/// How a delta write's body gives the result from the current file.
#[derive(Clone, Copy)]
pub(super) enum DeltaFormat {
    Librsync,
    Patch,
}

/// Applies `delta` to the file at `path` into `out`: the result's version
/// and size.
pub(super) fn apply_delta(
    export: &Export,
    path: &TreePath,
    delta: &[u8],
    format: DeltaFormat,
    out: &mut impl Write,
    limit: u64,
) -> Result<(Version, u64), Refusal> {
    let file = crate::beneath::open_file(export.root(), path)?;
    let base = MappedFile::map(&file).map_err(internal)?;
    let mut hashing = HashWriter::new(out);
    match format {
        DeltaFormat::Librsync => {
            delta::apply(&base, delta, &mut hashing, limit).map_err(|e| match e.kind() {
                delta::ErrorKind::Corrupt => Refusal::new(
                    StatusCode::BAD_REQUEST,
                    crate::monitor::Chain(&e).to_string(),
                ),
                _ => internal(e),
            })?;
        }
        // A patch gives exactly the size announced, or it is refused.
        DeltaFormat::Patch => {
            delta::zpatch::decode(&base, delta, &mut hashing, limit).map_err(|e| match e {
                delta::zpatch::PatchError::Write(e) => internal(e),
                e => Refusal::new(
                    StatusCode::BAD_REQUEST,
                    crate::monitor::Chain(&e).to_string(),
                ),
            })?;
        }
    }
    let (version, size) = hashing.result();
    if !base.intact() {
        return Err(Refusal::new(
            StatusCode::CONFLICT,
            "the file changed while the delta was applied to it",
        ));
    }
    Ok((version, size))
}

/// Writes on to `inner`, hashing and counting what it writes.
pub(super) struct HashWriter<'a, W: Write> {
    inner: &'a mut W,
    hasher: blake3::Hasher,
    pub size: u64,
}

impl<'a, W: Write> HashWriter<'a, W> {
    pub fn new(inner: &'a mut W) -> HashWriter<'a, W> {
        HashWriter {
            inner,
            hasher: blake3::Hasher::new(),
            size: 0,
        }
    }

    /// The version and length of what was written.
    pub fn result(&self) -> (Version, u64) {
        (Version::from_hasher(&self.hasher), self.size)
    }
}

impl<W: Write> Write for HashWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

const MAX_BATCH_BYTES: usize = 16 << 20;
/// Most operations in one batch, and how many are applied under one hold
/// of the export's lock.
const MAX_BATCH_OPS: usize = 1 << 16;
const OPS_A_LOCK: usize = 64;

/// `POST /.intersync/ops`: operations applied in order, each on its own
/// (all or nothing), each with its own result.
pub async fn ops(export: &Arc<Export>, req: Request<Incoming>) -> Result<Response<Body>, Refusal> {
    let (body, share) =
        super::budget::read_whole(req.into_body(), MAX_BATCH_BYTES, "batch of operations").await?;
    let batch: Batch = serde_json::from_slice(&body)
        .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, format!("bad batch: {e}")))?;
    drop((body, share));
    if batch.ops.len() > MAX_BATCH_OPS {
        return Err(Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} operations in one batch; at most {MAX_BATCH_OPS}",
                batch.ops.len()
            ),
        ));
    }
    let export = export.clone();
    let result = tokio::task::spawn_blocking(move || -> Result<BatchResult, Refusal> {
        export.rescan_locked(&mut export.lock())?;
        let mut results = Vec::with_capacity(batch.ops.len());
        let mut ops = batch.ops.into_iter().peekable();
        // The lock is let go between a few operations and the next, so
        // that a long batch never starves other clients.
        while ops.peek().is_some() {
            let mut inner = export.lock();
            for op in ops.by_ref().take(OPS_A_LOCK) {
                results.push(match apply_op(&export, &mut inner, op) {
                    Ok(()) => OpResult::ok(),
                    Err(r) => r.into_result(),
                });
            }
            drop(inner);
            // The lock is not fair: without a pause this thread would take
            // it again before a waiting one wakes.
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        Ok(BatchResult {
            results,
            latest_seq: export.lock().journal.last_seq(),
        })
    })
    .await
    .map_err(internal)??;
    Ok(results(&result))
}

/// The answer to a batch: its results as JSON.
pub(super) fn results(result: &BatchResult) -> Response<Body> {
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(serde_json::to_vec(result).expect("serializes")))
        .expect("valid response")
}

fn apply_op(export: &Export, inner: &mut Inner, op: BatchOp) -> Result<(), Refusal> {
    if op.paths().iter().any(|p| export.hidden(p, false)) {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "excluded by the module's rules",
        ));
    }
    let done = Applying {
        export,
        inner: &*inner,
    }
    .apply(op)?;
    let root = export.root();
    // The change itself must be durable before the journal says it happened.
    let mut folders: Vec<&TreePath> = Vec::new();
    if let Op::Rename { from, .. } = &done {
        folders.push(from);
    }
    folders.push(done.path());
    for path in folders {
        let folder = path.parent().map_or(root.to_path_buf(), |p| p.under(root));
        fs::File::open(&folder)
            .and_then(|f| f.sync_all())
            .map_err(internal)?;
    }
    let touched = done.path().clone();
    export.journal_ops(inner, vec![done])?;
    export.remember_stat(inner, &touched);
    Ok(())
}

/// One operation of a batch being carried out on disk, checked against the
/// journaled state; each gives the record that says what it did.
struct Applying<'a> {
    export: &'a Export,
    inner: &'a Inner,
}

fn conflict(why: impl Into<String>) -> Refusal {
    Refusal::new(StatusCode::CONFLICT, why)
}

/// 403: a writer's symbolic link would lead out of the export.
fn outside_link() -> Refusal {
    Refusal::new(
        StatusCode::FORBIDDEN,
        "the link's target leads out of the export (absolute, or up past its root); \
         the server allows that only with --allow-outside-symlinks",
    )
}

fn precondition_failed(why: &str) -> Refusal {
    Refusal::new(StatusCode::PRECONDITION_FAILED, why.to_owned())
}

fn io(e: std::io::Error) -> Refusal {
    conflict(e.to_string())
}

/// A file has the version asked for, if one was.
fn check_version(entry: Option<&Entry>, want: Option<Version>) -> Result<(), Refusal> {
    match (want, entry) {
        (None, _) => Ok(()),
        (Some(v), Some(e)) if e.version() == Some(v) => Ok(()),
        (Some(_), _) => Err(precondition_failed("the file has changed")),
    }
}

impl Applying<'_> {
    fn state(&self) -> &crate::tree::TreeState {
        &self.inner.index.state
    }

    /// The folder holding `path`, opened beneath the root: the operation
    /// acts on `path`'s name in it, whatever a local process swaps on the
    /// way meanwhile.
    fn folder(&self, path: &TreePath) -> Result<crate::beneath::Folder, Refusal> {
        Ok(crate::beneath::Folder::holding(self.export.root(), path)?)
    }

    fn apply(&self, op: BatchOp) -> Result<Op, Refusal> {
        match op {
            BatchOp::Mkdir { path, mode } => self.mkdir(path, mode),
            BatchOp::Unlink { path, if_match } => self.unlink(path, if_match),
            BatchOp::Rmdir { path } => {
                if !self.state().get(&path).is_some_and(Entry::is_dir) {
                    return Err(Refusal::new(StatusCode::NOT_FOUND, "no such folder"));
                }
                self.folder(&path)?.rmdir(path.file_name()).map_err(io)?;
                Ok(Op::Rmdir { path })
            }
            BatchOp::Rename {
                from,
                to,
                if_match,
                if_absent,
            } => self.rename(from, to, if_match, if_absent),
            BatchOp::Setattr {
                path,
                mode,
                mtime_ns,
            } => self.setattr(path, mode, mtime_ns),
            BatchOp::Symlink { path, target } => {
                if self.state().get(&path).is_some() {
                    return Err(precondition_failed("the path exists"));
                }
                if !self.export.link_allowed(&path, &target) {
                    return Err(outside_link());
                }
                need_folder(self.inner, self.export.root(), &path)?;
                self.folder(&path)?
                    .symlink(&target, path.file_name())
                    .map_err(io)?;
                Ok(Op::Symlink { path, target })
            }
        }
    }

    fn mkdir(&self, path: TreePath, mode: Option<u32>) -> Result<Op, Refusal> {
        if self.state().get(&path).is_some() {
            return Err(precondition_failed("the path exists"));
        }
        need_folder(self.inner, self.export.root(), &path)?;
        let mode = self
            .export
            .incoming_mode(Some(mode.unwrap_or(0o755)), true)
            .unwrap_or(0o755)
            & 0o7777;
        self.folder(&path)?
            .mkdir(path.file_name(), mode)
            .map_err(io)?;
        Ok(Op::Mkdir { path, mode })
    }

    fn unlink(&self, path: TreePath, if_match: Option<Version>) -> Result<Op, Refusal> {
        let entry = self.state().get(&path);
        match entry {
            None => return Err(Refusal::new(StatusCode::NOT_FOUND, "no such file")),
            Some(e) if e.is_dir() => return Err(conflict("a folder: use rmdir")),
            _ => {}
        }
        check_version(entry, if_match)?;
        self.folder(&path)?.unlink(path.file_name()).map_err(io)?;
        Ok(Op::Unlink { path })
    }

    fn rename(
        &self,
        from: TreePath,
        to: TreePath,
        if_match: Option<Version>,
        if_absent: bool,
    ) -> Result<Op, Refusal> {
        let entry = self.state().get(&from);
        if entry.is_none() {
            return Err(Refusal::new(StatusCode::NOT_FOUND, "nothing to rename"));
        }
        check_version(entry, if_match)?;
        // A link that pointed inside may point out from another folder.
        if let Some(EntryKind::Symlink { target }) = entry.map(|e| &e.kind)
            && !self.export.link_allowed(&to, target)
        {
            return Err(outside_link());
        }
        if if_absent && self.state().get(&to).is_some() {
            return Err(precondition_failed("the destination exists"));
        }
        need_folder(self.inner, self.export.root(), &to)?;
        // Check against the state before touching the disk.
        let mut trial = self.state().clone();
        let probe = intersync_protocol::KmlRecord {
            seq: trial.seq + 1,
            time_ns: 0,
            node: self.export.node(),
            op: Op::Rename {
                from: from.clone(),
                to: to.clone(),
            },
        };
        trial.apply(&probe).map_err(|e| conflict(e.reason))?;
        self.folder(&from)?
            .rename(from.file_name(), &self.folder(&to)?, to.file_name())
            .map_err(io)?;
        Ok(Op::Rename { from, to })
    }

    fn setattr(
        &self,
        path: TreePath,
        mode: Option<u32>,
        mtime_ns: Option<i64>,
    ) -> Result<Op, Refusal> {
        let entry = self
            .state()
            .get(&path)
            .ok_or_else(|| Refusal::new(StatusCode::NOT_FOUND, "no such path"))?;
        if matches!(entry.kind, EntryKind::Symlink { .. }) {
            return Err(conflict("attributes of symbolic links are not set"));
        }
        let mode = self.export.incoming_mode(mode, entry.is_dir());
        self.folder(&path)?
            .set_attrs(path.file_name(), mode, mtime_ns)
            .map_err(io)?;
        Ok(Op::Setattr {
            path,
            attrs: Attrs {
                mode: mode.map(|m| m & 0o7777),
                mtime_ns,
                ..Attrs::default()
            },
        })
    }
}
