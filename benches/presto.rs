//! Throughput through presto against the folder behind it: sequential write
//! and read of one large file, through `intersync serve DIR --mount MNT`
//! (the real binary, journaling every change) and straight into DIR, in the
//! same run.
//!
//!     cargo bench --bench presto [-- --size-mib 1024] [--runs 3] [--dir target/bench-presto]
//!
//! Needs root and /dev/fuse. Writes go through the page cache and end with
//! `close` (through the mount, that is when the file's version is journaled),
//! each starting with the page cache written back and dropped; reads are
//! timed cold when this machine lets us drop the page cache (the table says
//! which), else hot.

use std::fs;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHUNK: usize = 1 << 20;

struct Args {
    size_mib: usize,
    runs: usize,
    dir: PathBuf,
}

fn parse() -> Args {
    let mut a = Args {
        size_mib: 1024,
        runs: 3,
        dir: PathBuf::from("target/bench-presto"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--size-mib" => a.size_mib = value().parse().expect("--size-mib N"),
            "--runs" => a.runs = value().parse().expect("--runs N"),
            "--dir" => a.dir = PathBuf::from(value()),
            // cargo bench passes --bench.
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// Drops the page cache, if this machine allows it.
fn drop_caches() -> bool {
    let _ = Command::new("sync").status();
    fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

fn write_file(path: &Path, size: usize, chunk: &[u8]) -> Duration {
    let started = Instant::now();
    let mut f = fs::File::create(path).expect("create");
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len());
        f.write_all(&chunk[..n]).expect("write");
        left -= n;
    }
    drop(f);
    started.elapsed()
}

fn read_file(path: &Path) -> (Duration, usize) {
    let started = Instant::now();
    let mut f = fs::File::open(path).expect("open");
    let mut buf = vec![0; CHUNK];
    let mut total = 0;
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        total += n;
    }
    (started.elapsed(), total)
}

struct Mount {
    child: Child,
    mnt: PathBuf,
}

impl Mount {
    fn start(backing: &Path, mnt: &Path) -> Mount {
        let mut child = Command::new(env!("CARGO_BIN_EXE_intersync"))
            .arg("serve")
            .arg(backing)
            .arg("--mount")
            .arg(mnt)
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start intersync serve --mount");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .expect("ready line");
        assert!(line.contains("serving"), "did not start: {line:?}");
        Mount {
            child,
            mnt: mnt.to_owned(),
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mnt)
            .stderr(Stdio::null())
            .status();
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let args = parse();
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: presto cannot mount here"
    );
    let size = args.size_mib * (1 << 20);
    let _ = fs::remove_dir_all(&args.dir);
    let (backing, mnt) = (args.dir.join("backing"), args.dir.join("mnt"));
    fs::create_dir_all(&backing).unwrap();
    fs::create_dir_all(&mnt).unwrap();
    let backing = backing.canonicalize().unwrap();
    let mount = Mount::start(&backing, &mnt);

    // Incompressible data, so hashing costs what it would on real files.
    let mut chunk = vec![0u8; 16 * CHUNK];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for b in chunk.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
    }

    let mut cold = true;
    let (mut wd, mut wm, mut rd, mut rm) = (vec![], vec![], vec![], vec![]);
    for run in 0..args.runs {
        let direct = backing.join("direct.bin");
        let through = mnt.join("through.bin");
        // Each write starts with no dirty pages left by the one before (the
        // kernel would otherwise throttle whichever writer comes second),
        // and the order alternates between runs.
        let mut writes = [(&direct, &mut wd), (&through, &mut wm)];
        if run % 2 == 1 {
            writes.reverse();
        }
        for (path, times) in writes {
            cold &= drop_caches();
            times.push(write_file(path, size, &chunk));
        }
        cold &= drop_caches();
        let (t, n) = read_file(&direct);
        assert_eq!(n, size);
        rd.push(t);
        cold &= drop_caches();
        let (t, n) = read_file(&through);
        assert_eq!(n, size);
        rm.push(t);
        eprintln!("run {} of {} done", run + 1, args.runs);
        fs::remove_file(&direct).unwrap();
        fs::remove_file(&through).unwrap();
    }
    drop(mount);
    let _ = fs::remove_dir_all(&args.dir);

    let rate = |d: Duration| size as f64 / (1 << 20) as f64 / d.as_secs_f64();
    println!(
        "presto throughput, {} MiB file, median of {} run(s), reads {}\n",
        args.size_mib,
        args.runs,
        if cold {
            "cold (page cache dropped)"
        } else {
            "hot (could not drop the page cache)"
        }
    );
    println!("| sequential | folder MiB/s | through presto MiB/s | presto / folder |");
    println!("|---|---|---|---|");
    for (what, direct, through) in [("write", wd, wm), ("read", rd, rm)] {
        let (d, t) = (rate(median(direct)), rate(median(through)));
        println!("| {what} | {d:.0} | {t:.0} | {:.2} |", t / d);
    }
}
