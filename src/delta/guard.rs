//! Mapped files that may shrink while they are read. An exported folder is
//! live: another program may truncate a file (`> file`, log rotation, `cp`
//! over it) while a request reads it mapped, and reading a mapped page past
//! the file's new end raises SIGBUS, which kills the whole process. Every
//! mapping of [`MappedFile`](super::MappedFile) is registered here; a SIGBUS
//! inside a registered mapping puts a page of zeros where the vanished
//! page was, marks the mapping as shrunk and lets the read go on. The
//! reader then finds the mapping not [`intact`](Guard::intact) and treats
//! its work as failed; and whatever it built from the zeros fails the
//! version check every result passes before it is installed or served.
//!
//! A SIGBUS anywhere else goes to whatever handled it before (Rust's
//! runtime reports a stack overflow that way on some systems), or kills
//! the process as it would have.
//!
//! # Safety
//!
//! The handler only reads atomics, calls `mmap` (a system call, safe in a
//! signal handler on Linux) and stores atomics.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Mappings registered at once; past this, a mapping goes unguarded (its
/// reader is told, and may read the file instead).
const SLOTS: usize = 1024;

/// A slot's `start` while it is being filled in.
const CLAIMED: usize = usize::MAX;

struct Slot {
    /// The mapping's first byte (0: the slot is free).
    start: AtomicUsize,
    end: AtomicUsize,
    shrunk: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE: Slot = Slot {
    start: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
    shrunk: AtomicBool::new(false),
};

static TABLE: [Slot; SLOTS] = [FREE; SLOTS];
static PAGE: AtomicUsize = AtomicUsize::new(4096);

/// What handled SIGBUS before us.
struct Previous(libc::sigaction);

// SAFETY: a sigaction is plain data (a handler address, flags, a mask);
// it is written once, before any read.
unsafe impl Send for Previous {}
unsafe impl Sync for Previous {}

static PREVIOUS: OnceLock<Previous> = OnceLock::new();

/// A registered mapping; unregistered when dropped (before the mapping
/// itself goes, when declared before it).
#[derive(Debug)]
pub struct Guard {
    slot: Option<usize>,
}

impl Guard {
    /// Registers the mapping of `len` bytes at `start`.
    pub fn new(start: *const u8, len: usize) -> Guard {
        PREVIOUS.get_or_init(install);
        let (start, end) = (start as usize, start as usize + len);
        for (i, slot) in TABLE.iter().enumerate() {
            if slot
                .start
                .compare_exchange(0, CLAIMED, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                slot.shrunk.store(false, Ordering::Relaxed);
                slot.end.store(end, Ordering::Release);
                slot.start.store(start, Ordering::Release);
                return Guard { slot: Some(i) };
            }
        }
        Guard { slot: None }
    }

    /// Whether the mapping is guarded (a free slot was found).
    pub fn guarded(&self) -> bool {
        self.slot.is_some()
    }

    /// No page of the mapping vanished while it was read.
    pub fn intact(&self) -> bool {
        self.slot
            .is_none_or(|i| !TABLE[i].shrunk.load(Ordering::Acquire))
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            TABLE[i].start.store(0, Ordering::Release);
        }
    }
}

fn install() -> Previous {
    // SAFETY: sysconf and sigaction are called with valid arguments; the
    // handler is an `extern "C"` function of the signature SA_SIGINFO asks.
    unsafe {
        let page = libc::sysconf(libc::_SC_PAGESIZE);
        if page > 0 {
            PAGE.store(page as usize, Ordering::Relaxed);
        }
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigbus as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        libc::sigemptyset(&mut action.sa_mask);
        let mut previous: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGBUS, &action, &mut previous);
        Previous(previous)
    }
}

extern "C" fn on_sigbus(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    // SAFETY: the kernel passes a valid siginfo for a SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    for slot in &TABLE {
        let start = slot.start.load(Ordering::Acquire);
        if start == 0
            || start == CLAIMED
            || addr < start
            || addr >= slot.end.load(Ordering::Acquire)
        {
            continue;
        }
        let page_len = PAGE.load(Ordering::Relaxed);
        let page = addr & !(page_len - 1);
        // SAFETY: the page lies within a read-only mapping we own; a page
        // of zeros replaces the one the file no longer has.
        let zeros = unsafe {
            libc::mmap(
                page as *mut libc::c_void,
                page_len,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if zeros != libc::MAP_FAILED {
            slot.shrunk.store(true, Ordering::Release);
            return;
        }
    }
    // Not ours: what would have happened without us.
    let Some(Previous(previous)) = PREVIOUS.get() else {
        return;
    };
    let handler = previous.sa_sigaction;
    // SAFETY: calling the previous handler as it asked to be called, or
    // restoring the default action so that the fault, repeated, kills.
    unsafe {
        if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
            libc::signal(libc::SIGBUS, libc::SIG_DFL);
        } else if previous.sa_flags & libc::SA_SIGINFO != 0 {
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                std::mem::transmute(handler);
            f(signal, info, context);
        } else {
            let f: extern "C" fn(libc::c_int) = std::mem::transmute(handler);
            f(signal);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::super::MappedFile;

    /// A mapped file truncated under its reader: the reader sees zeros
    /// where the bytes were, and learns that the mapping shrank, instead
    /// of the process dying of SIGBUS.
    #[test]
    fn a_file_truncated_while_mapped_is_an_error_not_a_crash() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&vec![7u8; 1 << 20]).unwrap();
        let mapped = MappedFile::map(&file).unwrap();
        assert!(mapped.intact());
        assert_eq!(mapped[100], 7);
        file.set_len(0).unwrap();
        let sum: u64 = mapped.iter().map(|&b| u64::from(b)).sum();
        assert!(sum < 7 << 20, "pages past the end read as zeros");
        assert!(!mapped.intact());
        // Another mapping is not affected.
        let mut other = tempfile::tempfile().unwrap();
        other.write_all(b"still here").unwrap();
        let other = MappedFile::map(&other).unwrap();
        assert_eq!(&other[..], b"still here");
        assert!(other.intact());
    }
}
