//! The files of a pull brought in together: small files (under
//! `delta::refine::MIN_LEN`) in requests of many (`POST /.intersync/fetch`,
//! `protocol::fetch`), each answered the cheapest way (a patch from the
//! version last synced, a delta against the copy here, or whole) in one
//! compressed stream, and installed as they arrive: checked against their
//! version, then made durable and renamed into place a batch at a time
//! (`install::StagedInstalls`), on a thread of its own while the next
//! batch streams. What a batch cannot bring (a server
//! without the request, a patch the server cannot make for a larger file,
//! an answer that does not check) goes to the one-file ladder.
//!
//! The next batch's request goes out while the current one streams, so a
//! tree costs a few round trips however many files it has. A stream cut
//! short leaves what was installed installed; the next sync asks only for
//! the rest.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use intersync_protocol::Version;
use intersync_protocol::fetch::{
    Event, FetchError, Form, PREFIX_LEN, StreamParser, Want, encode_request,
};
use intersync_protocol::signature::SignatureFormat;

use super::{Here, Wanted, Ways, set_file_attrs};
use crate::client::reconcile::FileInstall;
use crate::client::{Change, SyncError, SyncReport};
use crate::delta::{self, DeltaStats, MappedFile, Signature, SignatureOptions};
use crate::install::{Committing, Staged, StagedInstalls};
use crate::transport::{Pieces, Remote, TransportError};
use crate::tree::EntryKind;
use crate::tree::scan::CachedStat;

/// Files at least this large go one by one (they resume, and their
/// patches are immutable GETs a cache can share).
pub const MAX_BATCHED: u64 = delta::refine::MIN_LEN;
/// Entries in one request. Each answer's installs cost two file-system
/// syncs: for 200,000 files of 100 bytes, 1,024 a request spent 4.2 s of
/// a 35 s clone in 392 syncs.
const ENTRIES_A_BATCH: usize = 4096;
/// Bytes of files in one request (their sizes, not what crosses).
const BYTES_A_BATCH: u64 = 64 << 20;
/// Files this small come whole when the server cannot patch them: a
/// second round for a signature would cost more.
const SMALL: u64 = 4096;
/// Patches and deltas are held in memory until applied: at most this much
/// more than the file they give.
const SPOOL_SLACK: u64 = 64 << 10;

/// What became of a file given to [`fetch`].
#[derive(Debug)]
pub enum Outcome {
    /// Installed, with this version (and its stat, where the install took
    /// it).
    Installed(Version, Option<CachedStat>),
    /// The server no longer has that version (the file changed again):
    /// left for the next round.
    Skipped,
    /// For the one-file ladder.
    Ladder,
}

/// One file of a batch: what was asked for it, and what happened.
pub(super) struct Job {
    pub(super) file: FileInstall,
    pub(super) dest: PathBuf,
    /// The copy here, when the request builds on it.
    base: Option<PathBuf>,
    pub(super) outcome: Option<Outcome>,
}

/// Brings `files` in (see the module documentation); an outcome for each,
/// in the order given. From a source without batched fetches (a static
/// export, reads through a cache, an older server), the files with nothing
/// here to build them from come whole, many GETs at once
/// (`fetch::parallel`), and the others go to the ladder. When the disk
/// here fills up, what was installed stays so and the rest is skipped,
/// with the error beside the outcomes.
pub async fn fetch(
    here: &mut Here<'_>,
    remote: &impl Remote,
    files: Vec<FileInstall>,
    ways: Ways,
    small_files: u64,
    report: &mut SyncReport,
) -> Result<(Vec<(FileInstall, Outcome)>, Option<SyncError>), SyncError> {
    let root = here.wc.root().to_owned();
    let mut jobs: Vec<Job> = files
        .into_iter()
        .map(|file| Job {
            dest: file.path.under(&root),
            file,
            base: None,
            outcome: None,
        })
        .collect();
    let fetched = async {
        if !(ways.batch && batches(here, remote, &mut jobs, ways.patches, report).await?) {
            let whole: Vec<usize> = (0..jobs.len())
                .filter(|&i| jobs[i].outcome.is_none() && base_here(here, &jobs[i]).is_none())
                .collect();
            super::packs::fetch_packed(
                here,
                remote,
                &mut jobs,
                &whole,
                small_files,
                ways.parallel,
                report,
            )
            .await?;
            let whole: Vec<usize> = whole
                .into_iter()
                .filter(|&i| jobs[i].outcome.is_none())
                .collect();
            super::parallel::fetch_whole(here, remote, &mut jobs, &whole, ways.parallel, report)
                .await?;
        }
        Ok::<_, SyncError>(())
    }
    .await;
    // A full disk stops the fetching, not the sync: what was installed
    // stays so, the rest waits (and the push still goes).
    let stopped = match fetched {
        Ok(()) => None,
        Err(e) if e.is_disk_full() => Some(e),
        Err(e) => return Err(e),
    };
    let full = stopped.is_some();
    let outcomes = jobs
        .into_iter()
        .map(|j| {
            let outcome = j.outcome.unwrap_or(if full {
                Outcome::Skipped
            } else {
                Outcome::Ladder
            });
            (j.file, outcome)
        })
        .collect();
    Ok((outcomes, stopped))
}

/// The two rounds of batches; false when the server has no fetch request.
async fn batches(
    here: &mut Here<'_>,
    remote: &impl Remote,
    jobs: &mut [Job],
    patches: bool,
    report: &mut SyncReport,
) -> Result<bool, SyncError> {
    // First round: patches, deltas against the copy here, whole files.
    let first: Vec<usize> = (0..jobs.len()).collect();
    let mut wants = Vec::new();
    for &i in &first {
        wants.push(first_want(here, &mut jobs[i], patches)?);
    }
    if !run_batches(here, remote, jobs, &first, wants, report).await? {
        return Ok(false);
    }
    // Second round: a delta for what the server could not patch.
    let second: Vec<usize> = (0..jobs.len())
        .filter(|&i| jobs[i].outcome.is_none() && jobs[i].base.is_some())
        .collect();
    let mut wants = Vec::new();
    for &i in &second {
        let base = jobs[i].base.clone().expect("filtered");
        wants.push(WantOwned::Delta(jobs[i].file.version, signature_of(&base)?));
    }
    run_batches(here, remote, jobs, &second, wants, report).await?;
    Ok(true)
}

/// The copy here a request could build on: a regular file at the path,
/// as the pull left the tree, small enough to be batched.
fn base_here(here: &Here<'_>, job: &Job) -> Option<PathBuf> {
    let local = here.local.get(&job.file.path);
    let is_file = matches!(local.map(|e| &e.kind), Some(EntryKind::File { .. }))
        && fs::metadata(&job.dest).is_ok_and(|m| m.is_file() && m.len() < MAX_BATCHED);
    is_file.then(|| job.dest.clone())
}

/// A request entry, owning its signature.
enum WantOwned {
    Whole(Version),
    Patch(Version, Version, bool),
    Delta(Version, Vec<u8>),
}

impl WantOwned {
    fn borrowed(&self) -> Want<'_> {
        match self {
            // The client checks the content against the whole version.
            WantOwned::Whole(v) => {
                Want::WholeByPrefix(v.0[..PREFIX_LEN].try_into().expect("a version is longer"))
            }
            WantOwned::Patch(version, from, or_whole) => Want::Patch {
                version: *version,
                from: *from,
                or_whole: *or_whole,
            },
            WantOwned::Delta(version, signature) => Want::Delta {
                version: *version,
                signature,
            },
        }
    }
}

/// What to ask first for a file: a patch from the version last synced
/// when the copy here still is it and the server keeps versions, a delta
/// against the copy here otherwise, the whole content when there is none.
fn first_want(here: &Here<'_>, job: &mut Job, patches: bool) -> Result<WantOwned, SyncError> {
    job.base = base_here(here, job);
    let file = &job.file;
    if job.base.is_none() {
        return Ok(WantOwned::Whole(file.version));
    }
    let here_version = here.local.get(&file.path).and_then(|e| e.version());
    let synced = here
        .wc
        .saved
        .base
        .state
        .get(&file.path)
        .and_then(|e| e.version());
    match here_version {
        Some(from) if patches && Some(from) == synced => {
            Ok(WantOwned::Patch(file.version, from, file.size < SMALL))
        }
        _ => Ok(WantOwned::Delta(file.version, signature_of(&job.dest)?)),
    }
}

fn signature_of(path: &Path) -> Result<Vec<u8>, SyncError> {
    let data = MappedFile::open(path).map_err(|e| SyncError::local(path, e))?;
    let options = SignatureOptions::for_len(data.len() as u64, SignatureFormat::Md4Rollsum);
    Ok(Signature::calculate(&data, options).0.into_bytes())
}

/// Asks for `wants` (for `jobs[picked]`) in batches, the next request in
/// flight while the current answer streams; false when the server has no
/// fetch request.
async fn run_batches(
    here: &mut Here<'_>,
    remote: &impl Remote,
    jobs: &mut [Job],
    picked: &[usize],
    wants: Vec<WantOwned>,
    report: &mut SyncReport,
) -> Result<bool, SyncError> {
    let mut batches: Vec<(&[usize], &[WantOwned])> = Vec::new();
    let (mut start, mut bytes) = (0usize, 0u64);
    for i in 0..picked.len() {
        bytes += jobs[picked[i]].file.size;
        let full = i + 1 - start >= ENTRIES_A_BATCH || bytes >= BYTES_A_BATCH;
        if full || i + 1 == picked.len() {
            batches.push((&picked[start..=i], &wants[start..=i]));
            start = i + 1;
            bytes = 0;
        }
    }
    let request = |wants: &[WantOwned]| {
        let borrowed: Vec<Want<'_>> = wants.iter().map(WantOwned::borrowed).collect();
        let mut body = Vec::new();
        encode_request(&borrowed, &mut body);
        Bytes::from(body)
    };
    let mut next = match batches.first() {
        Some((_, w)) => Some(remote.fetch_many(request(w)).await?),
        None => return Ok(true),
    };
    let root = here.wc.root().to_owned();
    let progress = remote.progress();
    // The batch before, being made durable while this one streams.
    let mut behind: Option<Behind> = None;
    let run: Result<bool, SyncError> = async {
        for k in 0..batches.len() {
            let Some(pieces) = next.take().expect("asked") else {
                return Ok(false);
            };
            let (indices, _) = batches[k];
            let following = batches.get(k + 1).map(|(_, w)| request(w));
            let receiving = receive(pieces, jobs, indices);
            let ((received, staged, done), asked) = match following {
                Some(body) => {
                    let (asked, received) = tokio::join!(remote.fetch_many(body), receiving);
                    (received, Some(asked))
                }
                None => (receiving.await, None),
            };
            // One commit at a time, in order: this batch's starts when the
            // one before it has ended.
            if let Some(b) = behind.take() {
                b.settle(&root, jobs, progress, report)?;
            }
            behind = Some(Behind {
                committing: staged.commit_behind(&root),
                done,
            });
            received?;
            next = asked.transpose()?;
        }
        Ok(true)
    }
    .await;
    // Also when the stream broke off: what was received whole is installed.
    let settled = match behind {
        Some(b) => b.settle(&root, jobs, progress, report),
        None => Ok(()),
    };
    let all = run?;
    settled?;
    Ok(all)
}

/// A batch's files received whole and checked: (job, how, what they cost),
/// in the order staged.
type Done = Vec<(usize, &'static str, DeltaStats)>;

/// A batch committing on its own thread (`StagedInstalls::commit_behind`).
struct Behind {
    committing: Committing,
    done: Done,
}

impl Behind {
    /// Waits for the commit, and notes what became of every entry: those
    /// installed with their stat, the others left for the ladder.
    fn settle(
        self,
        root: &Path,
        jobs: &mut [Job],
        progress: Option<&crate::monitor::Progress>,
        report: &mut SyncReport,
    ) -> Result<(), SyncError> {
        let installed = self
            .committing
            .wait()
            .map_err(|e| SyncError::local(root, e));
        let landed = installed.as_deref().unwrap_or_default();
        for (n, (i, what, stats)) in self.done.into_iter().enumerate() {
            let job = &mut jobs[i];
            let Some(landed) = landed.get(n) else {
                job.outcome = Some(Outcome::Ladder);
                continue;
            };
            report.full_fetch_bytes += job.file.size;
            report.literal_bytes += stats.literal_bytes;
            report.matched_bytes += stats.matched_bytes;
            match what {
                PATCHED => report.files_patched += 1,
                DELTA => report.files_delta += 1,
                _ => report.files_whole += 1,
            }
            if let Some(p) = progress {
                p.plan(job.file.size);
                p.advance(job.file.size);
                p.file_done();
            }
            report.pulled.push(Change {
                path: job.file.path.clone(),
                what: what.into(),
            });
            job.outcome = Some(Outcome::Installed(
                job.file.version,
                CachedStat::landed(landed),
            ));
        }
        installed.map(drop)
    }
}

/// The entry being received.
enum Receiving {
    /// A whole file into its staged copy, hashed as it comes.
    Whole {
        staged: Staged,
        hasher: Box<blake3::Hasher>,
        written: u64,
    },
    /// A patch or delta, held until it is whole, then applied to the base.
    Spooled {
        form: Form,
        result_size: u64,
        bytes: Vec<u8>,
    },
    /// Nothing to receive, or what came is not wanted (too much of it).
    Nothing,
}

impl Receiving {
    fn len(&self) -> u64 {
        match self {
            Receiving::Whole { written, .. } => *written,
            Receiving::Spooled { bytes, .. } => bytes.len() as u64,
            Receiving::Nothing => 0,
        }
    }
}

/// One answer being received.
struct Receiver<'j> {
    jobs: &'j mut [Job],
    indices: &'j [usize],
    /// The job of the entry open, and what it is receiving.
    open: Option<usize>,
    current: Receiving,
    staged: StagedInstalls,
    /// Entries received whole and checked.
    done: Done,
}

/// Receives one answer: stages what checks out (for the caller to
/// commit) and notes what became of the other entries; also when the
/// stream breaks off, with the error beside what was staged.
async fn receive<P: Pieces>(
    mut pieces: P,
    jobs: &mut [Job],
    indices: &[usize],
) -> (Result<(), SyncError>, StagedInstalls, Done) {
    let mut parser = StreamParser::new(indices.len());
    let mut r = Receiver {
        jobs,
        indices,
        open: None,
        current: Receiving::Nothing,
        staged: StagedInstalls::default(),
        done: Vec::new(),
    };
    let streamed: Result<(), SyncError> = async {
        // Let the connection send the next batch's request (asked for
        // beside this) before this batch's installs hold the thread: the
        // server then makes that answer while this one is written.
        tokio::task::yield_now().await;
        while let Some(piece) = pieces.next().await? {
            parser.feed(&piece, &mut |event| r.on_event(event))?;
        }
        Ok(parser.finish()?)
    }
    .await;
    (streamed, r.staged, r.done)
}

const WHOLE: &str = "fetched whole";
const PATCHED: &str = "updated by patch";
const DELTA: &str = "updated by delta";

impl From<FetchError> for SyncError {
    fn from(e: FetchError) -> SyncError {
        SyncError::Transport(TransportError::Malformed {
            what: "the fetch stream".into(),
            source: Box::new(e),
        })
    }
}

impl Receiver<'_> {
    fn on_event(&mut self, event: Event<'_>) -> Result<(), SyncError> {
        match event {
            Event::Start {
                index,
                form,
                result_size,
            } => self.start(self.indices[index], form, result_size),
            Event::Data(bytes) => self.data(bytes),
            Event::End { .. } => self.end(),
        }
    }

    fn start(&mut self, i: usize, form: Form, result_size: Option<u64>) -> Result<(), SyncError> {
        let job = &mut self.jobs[i];
        self.open = Some(i);
        self.current = match form {
            Form::Whole => Receiving::Whole {
                staged: Staged::create_in_new_folder(&job.dest)
                    .map_err(|e| SyncError::local(&job.dest, e))?,
                hasher: Box::default(),
                written: 0,
            },
            Form::Patch | Form::Delta => Receiving::Spooled {
                form,
                result_size: result_size.unwrap_or(job.file.size),
                bytes: Vec::new(),
            },
            Form::Gone => {
                job.outcome = Some(Outcome::Skipped);
                Receiving::Nothing
            }
            // No outcome yet: asked again by delta, or by the ladder.
            Form::NoPatch => Receiving::Nothing,
            // Not asked for: the ladder, then.
            Form::Signature => {
                job.outcome = Some(Outcome::Ladder);
                Receiving::Nothing
            }
        };
        Ok(())
    }

    fn data(&mut self, bytes: &[u8]) -> Result<(), SyncError> {
        match &mut self.current {
            Receiving::Whole {
                staged,
                hasher,
                written,
            } => {
                *written += bytes.len() as u64;
                hasher.update(bytes);
                staged
                    .file()
                    .write_all(bytes)
                    .map_err(|e| SyncError::local(staged.dest(), e))?;
            }
            Receiving::Spooled { bytes: spool, .. } => spool.extend_from_slice(bytes),
            Receiving::Nothing => {}
        }
        // Past what the file can need: the entry is dropped (and asked for
        // again by the ladder).
        if let Some(i) = self.open
            && self.current.len() > self.jobs[i].file.size + SPOOL_SLACK
        {
            self.current = Receiving::Nothing;
            self.jobs[i].outcome = Some(Outcome::Ladder);
        }
        Ok(())
    }

    fn end(&mut self) -> Result<(), SyncError> {
        let Some(i) = self.open.take() else {
            return Ok(());
        };
        let job = &self.jobs[i];
        let received = match std::mem::replace(&mut self.current, Receiving::Nothing) {
            Receiving::Whole {
                staged,
                hasher,
                written,
            } => (Version::from_hasher(&hasher) == job.file.version && written == job.file.size)
                .then(|| {
                    let stats = DeltaStats {
                        literal_bytes: written,
                        ..DeltaStats::default()
                    };
                    (staged, WHOLE, stats)
                }),
            Receiving::Spooled {
                form,
                result_size,
                bytes,
            } => apply(job, form, result_size, &bytes)?.map(|(staged, stats)| {
                let what = if form == Form::Patch { PATCHED } else { DELTA };
                (staged, what, stats)
            }),
            // Gone was noted at its start; a patch the server could not
            // make is asked for again by delta or by the ladder.
            Receiving::Nothing => return Ok(()),
        };
        match received {
            Some((mut staged, what, stats)) => {
                set_file_attrs(staged.file(), &job.file.entry)
                    .map_err(|e| SyncError::local(staged.path(), e))?;
                self.staged.add(staged);
                self.done.push((i, what, stats));
            }
            // Not the version: never installed, fetched again one by one.
            None => self.jobs[i].outcome = Some(Outcome::Ladder),
        }
        Ok(())
    }
}

/// Applies a patch or delta to the copy here into a staged file, if the
/// result is the version wanted; `None` when it is not (the ladder then
/// fetches it again).
fn apply(
    job: &Job,
    form: Form,
    result_size: u64,
    bytes: &[u8],
) -> Result<Option<(Staged, DeltaStats)>, SyncError> {
    let Some(base_path) = &job.base else {
        return Ok(None);
    };
    let local = |e| SyncError::local(base_path, e);
    let base = File::open(base_path).map_err(local)?;
    let base = MappedFile::map(&base).map_err(local)?;
    let mut staged =
        Staged::create_in_new_folder(&job.dest).map_err(|e| SyncError::local(&job.dest, e))?;
    let mut out = HashCount {
        inner: std::io::BufWriter::new(staged.file()),
        hasher: blake3::Hasher::new(),
        len: 0,
    };
    let want = job.file.size;
    let stats = match form {
        Form::Patch => match delta::zpatch::decode(&base, bytes, &mut out, want) {
            Ok(literal) => DeltaStats {
                literal_bytes: bytes.len() as u64,
                matched_bytes: want.saturating_sub(bytes.len() as u64),
                delta_bytes: literal,
            },
            Err(e) => {
                tracing::info!(path = %job.file.path, error = %crate::monitor::Chain(&e), "a batched patch did not apply");
                return Ok(None);
            }
        },
        _ => match delta::apply(&base, bytes, &mut out, result_size.min(want)) {
            Ok(stats) => stats,
            Err(e) => {
                tracing::info!(path = %job.file.path, error = %crate::monitor::Chain(&e), "a batched delta did not apply");
                return Ok(None);
            }
        },
    };
    out.inner
        .flush()
        .map_err(|e| SyncError::local(&job.dest, e))?;
    let (version, len) = (Version::from_hasher(&out.hasher), out.len);
    drop(out);
    if version != job.file.version || len != want || !base.intact() {
        return Ok(None);
    }
    Ok(Some((staged, stats)))
}

struct HashCount<W: Write> {
    inner: W,
    hasher: blake3::Hasher,
    len: u64,
}

impl<W: Write> Write for HashCount<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// What to do with a file when it is not batched: the ladder's `Wanted`.
pub fn wanted(file: &FileInstall) -> Wanted<'_> {
    Wanted {
        path: &file.path,
        entry: &file.entry,
        version: file.version,
        size: file.size,
    }
}

/// Whether `file` goes in a batch.
pub fn batched(file: &FileInstall) -> bool {
    file.size < MAX_BATCHED
}
