//! Running the measured programs: a client's exit status, wall time, CPU
//! seconds (from `wait4`'s resource usage) and peak memory (the high-water
//! marks `/proc` shows while it runs, of it and the processes it starts),
//! and a server's CPU seconds and peak memory from `/proc` while it runs.
//!
//! Not `wait4`'s `ru_maxrss`: on Linux a child's counts the memory of the
//! process it was forked from, so every client would weigh at least as much
//! as the harness itself.

use std::io;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What one client process cost.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub wall: Duration,
    /// User and system CPU seconds.
    pub cpu: f64,
    /// Peak resident memory, KiB.
    pub peak_kib: u64,
    /// Stopped at its deadline: the figures are for what it did until then.
    pub timed_out: bool,
}

impl Usage {
    /// Several processes run one after another: times add, memory peaks.
    pub fn then(self, next: Usage) -> Usage {
        Usage {
            wall: self.wall + next.wall,
            cpu: self.cpu + next.cpu,
            peak_kib: self.peak_kib.max(next.peak_kib),
            timed_out: self.timed_out || next.timed_out,
        }
    }
}

/// A finished client: its output and what it cost.
pub struct Finished {
    pub stdout: String,
    pub stderr: String,
    pub usage: Usage,
}

/// Runs `command` to the end, failing unless it exits with 0; or, at the
/// deadline, kills it and says so in its usage.
pub fn run(command: &mut Command, deadline: Option<Instant>) -> io::Result<Finished> {
    let started = Instant::now();
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("{command:?}: {e}")))?;
    let pid = child.id() as libc::pid_t;
    // Read the pipes on threads so a chatty child never blocks on them.
    let mut out = child.stdout.expect("piped");
    let mut err = child.stderr.expect("piped");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = io::Read::read_to_string(&mut out, &mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = io::Read::read_to_string(&mut err, &mut s);
        s
    });
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let mut timed_out = false;
    let mut peaks = Peaks::default();
    loop {
        peaks.sample(pid as u32);
        let past = deadline.is_some_and(|d| Instant::now() >= d);
        if past && !timed_out {
            // SAFETY: signalling our own child, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            timed_out = true;
        }
        // Look every millisecond (for the deadline and the memory peaks).
        let flags = if timed_out { 0 } else { libc::WNOHANG };
        // SAFETY: `pid` is our child, not yet reaped; both pointers are valid.
        let got = unsafe { libc::wait4(pid, &mut status, flags, &mut usage) };
        if got == pid {
            break;
        }
        if got == 0 {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    let wall = started.elapsed();
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    let exited = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    if exited != Some(0) && !timed_out {
        return Err(io::Error::other(format!(
            "{command:?} failed ({}): {}",
            exited.map_or("killed".to_owned(), |c| format!("exit {c}")),
            stderr.trim()
        )));
    }
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(Finished {
        stdout,
        stderr,
        usage: Usage {
            wall,
            cpu: seconds(usage.ru_utime) + seconds(usage.ru_stime),
            peak_kib: peaks.total_kib(),
            timed_out,
        },
    })
}

/// The high-water marks of a process and its descendants, as sampled.
#[derive(Default)]
struct Peaks {
    by_pid: std::collections::HashMap<u32, u64>,
    samples: u64,
}

impl Peaks {
    fn sample(&mut self, pid: u32) {
        self.samples += 1;
        let mut pids = vec![pid];
        // Children every 10th sample: reading /proc costs a little.
        if self.samples % 10 == 1 {
            let mut i = 0;
            while i < pids.len() && pids.len() < 64 {
                pids.extend(children(pids[i]));
                i += 1;
            }
        } else {
            pids.extend(self.by_pid.keys().copied().filter(|&p| p != pid));
        }
        for p in pids {
            if let Some(kib) = peak_kib(p) {
                let e = self.by_pid.entry(p).or_default();
                *e = (*e).max(kib);
            }
        }
    }

    /// The processes' peaks added up (they run side by side: rsync's
    /// generator and receiver, say).
    fn total_kib(&self) -> u64 {
        self.by_pid.values().sum()
    }
}

/// The children of a running process.
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// CPU seconds a running process has used so far.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) / ticks)
}

/// Peak resident memory of a running process, KiB.
pub fn peak_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small child of a big harness is small, and a big one big: the
    /// figures are the child's own.
    #[test]
    fn peaks_are_the_childs_own() {
        let ballast = vec![1u8; 256 << 20];
        let small = run(Command::new("sleep").arg("0.2"), None).unwrap();
        assert!(small.usage.peak_kib < 32 << 10, "{}", small.usage.peak_kib);
        let big = run(
            Command::new("python3").args([
                "-c",
                "import time; x = bytearray(96 << 20); time.sleep(0.3)",
            ]),
            None,
        )
        .unwrap();
        assert!(big.usage.peak_kib > 90 << 10, "{}", big.usage.peak_kib);
        assert!(big.usage.peak_kib < 200 << 10, "{}", big.usage.peak_kib);
        // Its children count too.
        let family = run(
            Command::new("sh").args([
                "-c",
                "python3 -c 'import time; x = bytearray(64 << 20); time.sleep(0.3)'; true",
            ]),
            None,
        )
        .unwrap();
        assert!(
            family.usage.peak_kib > 60 << 10,
            "{}",
            family.usage.peak_kib
        );
        drop(ballast);
    }
}
