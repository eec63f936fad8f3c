//! Signatures, deltas and patches over files, as `rdiff` does them: inputs
//! are mapped (a 10 GiB file needs no 10 GiB of heap), outputs are installed
//! atomically, and `-` names standard input or output.

use std::fs::File;
use std::io::{self, Read, Write};
use std::ops::Deref;
use std::path::Path;

use intersync_protocol::Version;
use intersync_protocol::signature::{SignatureFormat, SignatureHeader, SignatureRef};
use memmap2::Mmap;

use super::diff::{DeltaStats, write_delta};
use super::guard::Guard;
use super::signature::{Signature, SignatureOptions};
use super::{Error, patch, zpatch};
use crate::install::PendingFile;

/// The bytes of an input file: mapped, or read whole from standard input.
pub enum MappedFile {
    /// Mapping a file of length 0 fails, so empty files are not mapped.
    Empty,
    Mapped(Guarded),
    Read(Vec<u8>),
}

/// A mapping registered with [`guard`](super::guard), unregistered before
/// it is unmapped (fields drop in order).
pub struct Guarded {
    guard: Guard,
    map: Mmap,
}

impl MappedFile {
    /// Maps `path`, or reads standard input when it is `-`.
    ///
    /// Another program may truncate the file meanwhile: the pages it lost
    /// read as zeros and [`MappedFile::intact`] turns false (see
    /// [`guard`](super::guard)); whatever is read from a mapping is
    /// verified against a version before anything is installed.
    pub fn open(path: &Path) -> Result<MappedFile, Error> {
        if path == Path::new("-") {
            let mut bytes = Vec::new();
            io::stdin()
                .lock()
                .read_to_end(&mut bytes)
                .map_err(Error::io("standard input"))?;
            return Ok(MappedFile::Read(bytes));
        }
        let file = File::open(path).map_err(Error::io(path))?;
        MappedFile::map(&file).map_err(Error::io(path))
    }

    /// Maps an open file (same contract as [`MappedFile::open`]). With
    /// every guard in use, it reads the file instead.
    pub fn map(file: &File) -> io::Result<MappedFile> {
        let len = file.metadata()?.len();
        if len == 0 {
            return Ok(MappedFile::Empty);
        }
        // SAFETY: the map is read-only and lives as long as `self`; a page
        // the file loses meanwhile is replaced by zeros, not a crash.
        let map = unsafe { Mmap::map(file) }?;
        let guard = Guard::new(map.as_ptr(), map.len());
        if !guard.guarded() {
            let mut bytes = Vec::with_capacity(len as usize);
            std::io::Read::read_to_end(&mut &*file, &mut bytes)?;
            return Ok(MappedFile::Read(bytes));
        }
        Ok(MappedFile::Mapped(Guarded { guard, map }))
    }

    /// The file did not shrink under the mapping while it was read: what
    /// was read is what the file held. Check it after use, before keeping
    /// or serving anything made from it.
    pub fn intact(&self) -> bool {
        match self {
            MappedFile::Mapped(m) => m.guard.intact(),
            _ => true,
        }
    }
}

impl Deref for MappedFile {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            MappedFile::Empty => &[],
            MappedFile::Mapped(m) => &m.map,
            MappedFile::Read(bytes) => bytes,
        }
    }
}

impl AsRef<[u8]> for MappedFile {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

/// Where a command's output goes: a file installed when complete, or standard output.
enum Sink {
    File(PendingFile),
    Stdout(io::StdoutLock<'static>),
}

impl Sink {
    fn create(path: &Path) -> Result<Sink, Error> {
        if path == Path::new("-") {
            return Ok(Sink::Stdout(io::stdout().lock()));
        }
        Ok(Sink::File(
            PendingFile::create(path).map_err(Error::io(path))?,
        ))
    }

    fn finish(self, path: &Path) -> Result<(), Error> {
        match self {
            Sink::File(f) => f.install().map_err(Error::io(path)),
            Sink::Stdout(mut s) => s.flush().map_err(Error::io("standard output")),
        }
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::File(f) => f.write(buf),
            Sink::Stdout(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::File(f) => f.flush(),
            Sink::Stdout(s) => s.flush(),
        }
    }
}

/// Writes the signature of `base` to `out`; omitted lengths come from the
/// block-size policy. Returns the header used and the base's version.
pub fn signature_file(
    base: &Path,
    out: &Path,
    format: SignatureFormat,
    block_len: Option<u32>,
    strong_len: Option<u32>,
) -> Result<(SignatureHeader, Version), Error> {
    let data = MappedFile::open(base)?;
    let options = SignatureOptions::new(data.len() as u64, format, block_len, strong_len)
        .map_err(Error::Options)?;
    let (sig, version) = Signature::calculate(&data, options);
    still_whole(&data, base)?;
    let mut sink = Sink::create(out)?;
    sink.write_all(sig.as_bytes()).map_err(Error::io(out))?;
    sink.finish(out)?;
    Ok((sig.header(), version))
}

/// Writes to `out` a delta from the base that `sig` describes to `new`.
/// Accepts signatures in all four of librsync's formats.
pub fn delta_file(sig: &Path, new: &Path, out: &Path) -> Result<DeltaStats, Error> {
    let sig_bytes = MappedFile::open(sig)?;
    let sig = SignatureRef::parse(&sig_bytes)?;
    let data = MappedFile::open(new)?;
    let mut sink = Sink::create(out)?;
    let stats = write_delta(sig, &data, &mut sink).map_err(Error::io(out))?;
    still_whole(&data, new)?;
    sink.finish(out)?;
    Ok(stats)
}

/// Bounds on what a patch may produce.
#[derive(Clone, Copy, Debug, Default)]
pub struct PatchLimits {
    /// Most bytes the result may have; `None` for no limit beyond the disk's.
    pub max_output: Option<u64>,
    /// The version the result must have, or it is not installed.
    pub expect: Option<Version>,
}

/// Applies `delta` (a librsync delta, or a patch between two versions) to
/// `base` and installs the result at `out`, but only if the delta is
/// valid, stays within `limits` and gives the expected version.
pub fn patch_file(
    base: &Path,
    delta: &Path,
    out: &Path,
    limits: PatchLimits,
) -> Result<(DeltaStats, Version), Error> {
    let base_bytes = MappedFile::open(base)?;
    let delta_bytes = MappedFile::open(delta)?;
    let mut sink = Sink::create(out)?;
    if limits.expect.is_some() && matches!(sink, Sink::Stdout(_)) {
        // Bytes written to a pipe cannot be taken back after a mismatch.
        return Err(Error::io(out)(io::Error::new(
            io::ErrorKind::InvalidInput,
            "an expected version needs an output file, not standard output",
        )));
    }
    let mut hashing = HashingWriter {
        inner: &mut sink,
        hasher: blake3::Hasher::new(),
    };
    let limit = limits.max_output.unwrap_or(u64::MAX);
    let stats = match zpatch::result_len(&delta_bytes) {
        // A patch between two versions (what `/.intersync/patch/` serves).
        Some(size) => {
            if size > limit {
                return Err(Error::OutputTooLarge {
                    delta_offset: 0,
                    limit,
                });
            }
            let literal_bytes = zpatch::decode(&base_bytes, &delta_bytes, &mut hashing, size)?;
            DeltaStats {
                literal_bytes,
                matched_bytes: size - literal_bytes,
                delta_bytes: delta_bytes.len() as u64,
            }
        }
        None => patch::apply(&base_bytes, &delta_bytes, &mut hashing, limit)?,
    };
    let version = Version::from_hasher(&hashing.hasher);
    still_whole(&base_bytes, base)?;
    still_whole(&delta_bytes, delta)?;
    if let Some(expected) = limits.expect
        && expected != version
    {
        return Err(Error::WrongVersion {
            expected,
            actual: version,
        });
    }
    sink.finish(out)?;
    Ok((stats, version))
}

/// Refuses what was made from `data` when the file at `path` shrank while
/// it was read.
fn still_whole(data: &MappedFile, path: &Path) -> Result<(), Error> {
    if data.intact() {
        Ok(())
    } else {
        Err(Error::io(path)(io::Error::other(
            "the file shrank while it was read",
        )))
    }
}

/// Passes writes through while hashing them into a version.
struct HashingWriter<W: Write> {
    inner: W,
    hasher: blake3::Hasher,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The version of a file's content.
pub fn version_of(path: &Path) -> Result<Version, Error> {
    let data = MappedFile::open(path)?;
    Ok(Version::of(&data))
}
