//! presto, the journaling FUSE filesystem, mounted for real: ordinary
//! programs (`cp`, `mv`, `rm`, `sed -i`, `git`) change a server's folder
//! through the mount, each change is in the journal by the time the program
//! returns, and a working copy follows with `sync`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use intersync_protocol::kml::Op;

use crate::client::{sync, sync_ok, tree};
use crate::server::{ops, p};
use crate::util::{Dir, Server, ok, random_bytes};

/// A server whose folder is mounted through presto; stopped with SIGTERM
/// (a clean unmount), and unmounted by force if that failed.
struct Mounted {
    server: Option<Server>,
    mnt: PathBuf,
}

impl Mounted {
    fn start(dir: &Path, mnt: &Path) -> Mounted {
        Mounted::start_env(dir, mnt, &[])
    }

    fn start_env(dir: &Path, mnt: &Path, env: &[(&str, &str)]) -> Mounted {
        assert!(
            Path::new("/dev/fuse").exists(),
            "/dev/fuse is missing: presto's tests need FUSE"
        );
        fs::create_dir_all(mnt).unwrap();
        let server = Server::serve_env(
            &[
                dir.as_os_str(),
                "--allow-anonymous-writes".as_ref(),
                "--mount".as_ref(),
                mnt.as_os_str(),
            ],
            env,
        );
        assert!(is_mounted(mnt), "{} is not mounted", mnt.display());
        Mounted {
            server: Some(server),
            mnt: mnt.to_owned(),
        }
    }

    fn server(&self) -> &Server {
        self.server.as_ref().expect("running")
    }

    /// SIGTERM, and the mount must be gone once the server exits.
    fn stop(mut self) {
        let mut server = self.server.take().expect("running");
        terminate(&mut server.child);
        assert!(!is_mounted(&self.mnt), "still mounted after SIGTERM");
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            terminate(&mut server.child);
        }
        if is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

pub(crate) fn terminate(child: &mut std::process::Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    for _ in 0..100 {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

pub(crate) fn is_mounted(path: &Path) -> bool {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_owned());
    fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(path.to_str().unwrap()))
}

fn sh(dir: &Path, script: &str) {
    ok(Command::new("sh").arg("-ec").arg(script).current_dir(dir));
}

#[test]
fn programs_writing_through_the_mount_are_journaled_live_and_reach_a_working_copy() {
    let dir = Dir::new();
    let big = random_bytes(8, 8 << 20);
    dir.write("src/big.bin", &big);
    let notes: String = (0..200).map(|i| format!("line {i}\n")).collect();
    dir.write("src/notes.txt", notes.as_bytes());
    dir.write("src/old.txt", b"to be removed\n");
    dir.write("src/sub/keep.txt", b"kept\n");
    dir.write("outside/new.txt", b"copied in\n");
    let (src, mnt, wc) = (dir.path("src"), dir.path("mnt"), dir.path("wc"));
    let mounted = Mounted::start(&src, &mnt);
    let url = mounted.server().url.clone();
    sync_ok(&url, &wc);
    let before = ops(mounted.server()).len();

    // Each program's change is journaled by the time it returns: no scan,
    // no debounce.
    let journaled = |what: &str, want: &dyn Fn(&Op) -> bool| {
        let all = ops(mounted.server());
        assert!(
            all[before..].iter().any(want),
            "{what}: not journaled when the program returned: {:#?}",
            &all[before..]
        );
    };
    ok(Command::new("cp")
        .arg(dir.path("outside/new.txt"))
        .arg(mnt.join("sub/new.txt")));
    journaled(
        "cp",
        &|op| matches!(op, Op::Write { path, .. } if *path == p("sub/new.txt")),
    );
    ok(Command::new("mv")
        .arg(mnt.join("big.bin"))
        .arg(mnt.join("sub/big-moved.bin")));
    journaled("mv", &|op| {
        *op == Op::Rename {
            from: p("big.bin"),
            to: p("sub/big-moved.bin"),
        }
    });
    ok(Command::new("rm").arg(mnt.join("old.txt")));
    journaled("rm", &|op| *op == Op::Unlink { path: p("old.txt") });
    ok(Command::new("sed")
        .args(["-i", "s/^line 3$/LINE THREE/"])
        .arg(mnt.join("notes.txt")));
    // sed writes a temporary and renames it over the file.
    journaled(
        "sed -i",
        &|op| matches!(op, Op::Rename { to, .. } if *to == p("notes.txt")),
    );

    // A small repository, two commits, and a checkout of the first.
    sh(
        &mnt,
        "git init -q repo && cd repo \
         && git config user.name t && git config user.email t@example.invalid \
         && echo one > a.txt && mkdir docs && echo readme > docs/README \
         && git add -A && git commit -qm v1 \
         && echo two > a.txt && echo bee > b.txt && chmod +x b.txt \
         && git add -A && git commit -qm v2 \
         && git checkout -q HEAD~1",
    );
    assert_eq!(fs::read(mnt.join("repo/a.txt")).unwrap(), b"one\n");
    assert!(!mnt.join("repo/b.txt").exists());

    // The big file was renamed, never rewritten.
    let after = ops(mounted.server());
    assert!(
        !after[before..].iter().any(|op| matches!(op,
            Op::Write { path, .. } | Op::Unlink { path } | Op::Create { path, .. }
                if *path == p("big.bin") || *path == p("sub/big-moved.bin"))),
        "the rename of big.bin was journaled as data: {:#?}",
        &after[before..]
    );

    // A working copy follows, and the rename moved no data.
    let (out, sent, received) = sync(&url, &wc, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        sent + received < 1 << 20,
        "the sync moved {sent} + {received} bytes for an 8 MiB rename and small edits"
    );
    assert_eq!(fs::read(wc.join("sub/big-moved.bin")).unwrap(), big);
    assert_eq!(tree(&wc), tree(&src));
    assert_eq!(tree(&mnt), tree(&src));
    assert!(
        String::from_utf8_lossy(&fs::read(wc.join("notes.txt")).unwrap()).contains("LINE THREE\n")
    );
    mounted.stop();
}

fn version_of(bytes: &[u8]) -> intersync_protocol::Version {
    intersync_protocol::Version::of(bytes)
}

/// The tree the journal describes.
fn journaled(all: &[Op]) -> intersync::tree::TreeState {
    let mut state = intersync::tree::TreeState::default();
    for (i, op) in all.iter().enumerate() {
        let rec = intersync_protocol::kml::KmlRecord {
            seq: i as u64 + 1,
            time_ns: 0,
            node: intersync_protocol::kml::NodeId(0),
            op: op.clone(),
        };
        state.apply(&rec).unwrap();
    }
    state
}

/// The version the journal last gave `path` (by a write or a rename onto it).
fn journaled_version(all: &[Op], path: &str) -> Option<intersync_protocol::Version> {
    journaled(all).get(&p(path)).and_then(|e| e.version())
}

/// Reads and writes go straight to the backing files (FUSE passthrough)
/// where the kernel offers it, as here.
#[test]
fn the_mount_passes_posix_through() {
    posix_through(&[]);
}

/// Reads and writes go through presto's own handlers (kernels without
/// passthrough): the in-order hashing of writes is on this path.
#[test]
fn the_mount_passes_posix_through_without_kernel_passthrough() {
    posix_through(&[("INTERSYNC_NO_PASSTHROUGH", "1")]);
}

fn posix_through(env: &[(&str, &str)]) {
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::os::unix::fs::MetadataExt;
    let dir = Dir::new();
    dir.write("src/root-only.txt", b"root's\n");
    dir.write("src/x.txt", b"x content\n");
    dir.write("src/y.txt", b"y content\n");
    let (src, mnt) = (dir.path("src"), dir.path("mnt"));
    let mounted = Mounted::start_env(&src, &mnt, env);

    // Permissions: the kernel checks them against what presto reports, and
    // what another user creates is theirs.
    fs::create_dir(mnt.join("shared")).unwrap();
    fs::set_permissions(
        mnt.join("shared"),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let as_nobody = |script: &str| {
        Command::new("setpriv")
            .args([
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                "sh",
                "-c",
                script,
            ])
            .current_dir(&mnt)
            .output()
            .unwrap()
    };
    assert!(!as_nobody("echo x >> root-only.txt").status.success());
    assert_eq!(fs::read(src.join("root-only.txt")).unwrap(), b"root's\n");
    assert!(as_nobody("cat root-only.txt").status.success());
    let made = as_nobody("echo mine > shared/nobody.txt");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let meta = fs::metadata(src.join("shared/nobody.txt")).unwrap();
    assert_ne!(meta.uid(), 0, "a file another user made is theirs");

    // A file unlinked while open stays usable through its descriptor.
    let mut open = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(mnt.join("doomed.txt"))
        .unwrap();
    open.write_all(b"before").unwrap();
    fs::remove_file(mnt.join("doomed.txt")).unwrap();
    open.write_all(b" after").unwrap();
    open.seek(SeekFrom::Start(0)).unwrap();
    let mut back = String::new();
    open.read_to_string(&mut back).unwrap();
    assert_eq!(back, "before after");
    drop(open);
    assert!(!src.join("doomed.txt").exists());

    // Rename over an existing file.
    fs::rename(mnt.join("x.txt"), mnt.join("y.txt")).unwrap();
    assert_eq!(fs::read(mnt.join("y.txt")).unwrap(), b"x content\n");
    assert!(!mnt.join("x.txt").exists());

    // Hard links: one inode, two names, one content.
    fs::write(mnt.join("h1"), b"linked\n").unwrap();
    fs::hard_link(mnt.join("h1"), mnt.join("h2")).unwrap();
    let (m1, m2) = (
        fs::metadata(mnt.join("h1")).unwrap(),
        fs::metadata(mnt.join("h2")).unwrap(),
    );
    assert_eq!((m1.nlink(), m1.ino()), (2, m2.ino()));
    fs::OpenOptions::new()
        .append(true)
        .open(mnt.join("h1"))
        .unwrap()
        .write_all(b"more\n")
        .unwrap();
    assert_eq!(fs::read(mnt.join("h2")).unwrap(), b"linked\nmore\n");
    // Renaming one name of a file onto another does nothing.
    fs::rename(mnt.join("h1"), mnt.join("h2")).unwrap();
    assert!(mnt.join("h1").exists() && mnt.join("h2").exists());
    // A file open by a name since unlinked (its other name lives on) is
    // journaled under the name that lives.
    fs::write(mnt.join("h3"), b"three\n").unwrap();
    let mut by_h3 = fs::OpenOptions::new()
        .append(true)
        .open(mnt.join("h3"))
        .unwrap();
    fs::hard_link(mnt.join("h3"), mnt.join("h4")).unwrap();
    fs::remove_file(mnt.join("h4")).unwrap();
    by_h3.write_all(b"more three\n").unwrap();
    drop(by_h3);
    // A folder and a file made under a umask the server's own (022) would cut.
    sh(
        &mnt,
        "umask 002 && mkdir group-dir && echo g > group-dir/file",
    );

    // Sparse writes, and a file past 4 GiB.
    let mut sparse = fs::File::create(mnt.join("sparse.bin")).unwrap();
    sparse.seek(SeekFrom::Start(1 << 20)).unwrap();
    sparse.write_all(b"!").unwrap();
    drop(sparse);
    let data = fs::read(mnt.join("sparse.bin")).unwrap();
    assert_eq!(data.len(), (1 << 20) + 1);
    assert!(data[..1 << 20].iter().all(|&b| b == 0) && data[1 << 20] == b'!');
    let far = (5u64 << 30) + 123;
    let mut large = fs::File::create(mnt.join("large.bin")).unwrap();
    large.seek(SeekFrom::Start(far)).unwrap();
    large.write_all(b"past four gigabytes").unwrap();
    drop(large);
    assert_eq!(fs::metadata(mnt.join("large.bin")).unwrap().len(), far + 19);
    let mut large = fs::File::open(mnt.join("large.bin")).unwrap();
    large.seek(SeekFrom::Start(far)).unwrap();
    let mut tail = String::new();
    large.read_to_string(&mut tail).unwrap();
    assert_eq!(tail, "past four gigabytes");
    drop(large);

    // Concurrent writers (each its own file) and readers (one shared file).
    let shared = random_bytes(3, 1 << 20);
    fs::write(mnt.join("shared.bin"), &shared).unwrap();
    let contents: Vec<Vec<u8>> = (0..4).map(|i| random_bytes(10 + i, 2 << 20)).collect();
    std::thread::scope(|s| {
        for (i, content) in contents.iter().enumerate() {
            let path = mnt.join(format!("w{i}.bin"));
            s.spawn(move || {
                let mut f = fs::File::create(path).unwrap();
                for chunk in content.chunks(64 << 10) {
                    f.write_all(chunk).unwrap();
                }
            });
        }
        for _ in 0..4 {
            let (path, shared) = (mnt.join("shared.bin"), &shared);
            s.spawn(move || {
                for _ in 0..10 {
                    assert_eq!(&fs::read(&path).unwrap(), shared);
                }
            });
        }
    });

    // The journal says what the disk has, record for record.
    let all = ops(mounted.server());
    for (i, content) in contents.iter().enumerate() {
        let name = format!("w{i}.bin");
        assert_eq!(fs::read(src.join(&name)).unwrap(), *content);
        assert_eq!(
            journaled_version(&all, &name),
            Some(version_of(content)),
            "{name}"
        );
    }
    for name in [
        "y.txt",
        "h1",
        "h2",
        "h3",
        "sparse.bin",
        "shared/nobody.txt",
        "shared.bin",
    ] {
        let on_disk = fs::read(src.join(name)).unwrap();
        assert_eq!(
            journaled_version(&all, name),
            Some(version_of(&on_disk)),
            "{name}"
        );
    }
    assert!(all.contains(&Op::Link {
        path: p("h2"),
        target: p("h1")
    }));
    assert!(all.contains(&Op::Rename {
        from: p("x.txt"),
        to: p("y.txt")
    }));
    assert!(journaled_version(&all, "large.bin").is_some());
    assert!(!all.contains(&Op::Rename {
        from: p("h1"),
        to: p("h2")
    }));
    assert!(
        !all.iter().any(|op| format!("{op:?}").contains("(deleted)")),
        "a name that no longer exists was journaled"
    );
    assert_eq!(
        fs::metadata(src.join("group-dir")).unwrap().mode() & 0o7777,
        0o775
    );
    assert_eq!(journaled(&all).get(&p("group-dir")).unwrap().mode, 0o775);
    assert_eq!(
        fs::metadata(src.join("group-dir/file")).unwrap().mode() & 0o7777,
        0o664
    );
    assert_eq!(
        journaled(&all).get(&p("group-dir/file")).unwrap().mode,
        0o664
    );
    assert!(journaled_version(&all, "doomed.txt").is_none());
    assert!(!all.iter().any(
        |op| matches!(op, Op::Create { path, .. } | Op::Write { path, .. }
            if path.as_str().starts_with(".intersync"))
    ));
    // The state folder is not reachable through the mount.
    assert!(!mnt.join(".intersync").exists());
    assert!(fs::create_dir(mnt.join(".intersync")).is_err());
    fs::remove_file(mnt.join("large.bin")).unwrap();
    mounted.stop();
}

/// `intersync mount -v URL CACHE MNT`, its output in a file.
struct ClientMount {
    child: Option<std::process::Child>,
    mnt: PathBuf,
    log: PathBuf,
}

impl ClientMount {
    fn start(url: &str, cache: &Path, mnt: &Path, extra: &[&str]) -> ClientMount {
        fs::create_dir_all(mnt).unwrap();
        let log = cache.with_extension("log");
        let child = crate::util::intersync()
            .args(["mount", "-v"])
            .args(extra)
            .arg(url)
            .arg(cache)
            .arg(mnt)
            .stdout(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut mount = ClientMount {
            child: Some(child),
            mnt: mnt.to_owned(),
            log,
        };
        let up = crate::client::eventually(30, || {
            if let Some(status) = mount.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("intersync mount exited: {status}");
            }
            mount.output().contains(" mounted at ")
        });
        assert!(up && is_mounted(mnt), "not mounted: {}", mount.output());
        mount
    }

    fn output(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM: a clean unmount and a clean exit.
    fn stop(mut self) {
        let mut child = self.child.take().unwrap();
        terminate(&mut child);
        assert!(child.wait().unwrap().success());
        assert!(!is_mounted(&self.mnt), "still mounted after SIGTERM");
    }

    /// SIGKILL, as a crash; the kernel's dead mount is then detached.
    fn crash(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        ok(Command::new("umount").arg("-l").arg(&self.mnt));
    }
}

impl Drop for ClientMount {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
        if is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

#[test]
fn a_mounted_working_copy_fetches_on_open_and_follows_by_patch() {
    use std::os::unix::fs::MetadataExt;
    let dir = Dir::new();
    let big = random_bytes(21, 4 << 20);
    dir.write("src/big.bin", &big);
    dir.write("src/docs/readme.txt", b"read me\n");
    dir.write("src/unopened.txt", b"never opened here\n");
    let moved = random_bytes(22, 2 << 20);
    dir.write("src/moved.bin", &moved);
    let src = dir.path("src");
    let server = Server::start(&src, &["--allow-anonymous-writes"]);
    let (cache, mnt) = (dir.path("cache"), dir.path("mnt"));
    let mount = ClientMount::start(&server.url, &cache, &mnt, &[]);

    // Listed with the export's size, mode and time, but not fetched yet.
    assert!(!cache.join("big.bin").exists());
    let (shown, real) = (
        fs::metadata(mnt.join("big.bin")).unwrap(),
        fs::metadata(src.join("big.bin")).unwrap(),
    );
    assert_eq!(
        (shown.len(), shown.mode() & 0o7777, shown.mtime()),
        (real.len(), real.mode() & 0o7777, real.mtime())
    );
    let names: Vec<String> = fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.contains(&"big.bin".to_owned()) && names.contains(&"unopened.txt".to_owned()));
    assert!(!names.contains(&".intersync".to_owned()));

    // Opening it fetches it: the right bytes, and now in the cache.
    assert_eq!(fs::read(mnt.join("big.bin")).unwrap(), big);
    assert_eq!(fs::read(cache.join("big.bin")).unwrap(), big);
    assert_eq!(fs::read(mnt.join("docs/readme.txt")).unwrap(), b"read me\n");

    // A scattered edit on the server reaches the mount by an exact patch
    // (the server kept the version it handed out).
    crate::client::scatter_edits(&src.join("big.bin"), 20, 100, 5);
    let edited = fs::read(src.join("big.bin")).unwrap();
    assert!(
        crate::client::eventually(30, || fs::read(mnt.join("big.bin")).unwrap() == edited),
        "the edit never reached the mount: {}",
        mount.output()
    );
    // The round's report is printed once the round is over.
    assert!(
        crate::client::eventually(30, || mount.output().contains("big.bin  updated by patch")),
        "{}",
        mount.output()
    );

    // Changes through the mount are pushed: a new file, and the deletion
    // of a file never fetched here.
    fs::write(mnt.join("docs/new.txt"), b"written through the mount\n").unwrap();
    fs::remove_file(mnt.join("unopened.txt")).unwrap();
    assert!(
        crate::client::eventually(30, || {
            fs::read(src.join("docs/new.txt")).ok().as_deref()
                == Some(&b"written through the mount\n"[..])
                && !src.join("unopened.txt").exists()
        }),
        "not pushed: {}",
        mount.output()
    );
    assert_eq!(fs::read(src.join("big.bin")).unwrap(), edited);

    // A file never opened, renamed through the mount: fetched to be
    // renamed, and pushed as a rename, not as new data.
    fs::rename(mnt.join("moved.bin"), mnt.join("docs/moved.bin")).unwrap();
    assert!(
        crate::client::eventually(30, || {
            !src.join("moved.bin").exists()
                && mount
                    .output()
                    .contains(">  docs/moved.bin  renamed from moved.bin")
        }),
        "not pushed as a rename: {}",
        mount.output()
    );
    assert_eq!(fs::read(src.join("docs/moved.bin")).unwrap(), moved);
    mount.stop();
}

#[test]
fn after_a_crash_the_cache_journal_and_the_cache_agree_again() {
    let dir = Dir::new();
    dir.write("src/kept.txt", b"kept\n");
    let src = dir.path("src");
    let server = Server::start(&src, &["--allow-anonymous-writes"]);
    let (cache, mnt) = (dir.path("cache"), dir.path("mnt"));
    let mount = ClientMount::start(&server.url, &cache, &mnt, &["--prefetch"]);
    assert!(
        crate::client::eventually(30, || cache.join("kept.txt").exists()),
        "--prefetch fetched nothing: {}",
        mount.output()
    );
    // Written through the mount, journaled, and the process dies before
    // anything is pushed.
    fs::write(mnt.join("journaled.txt"), b"as journaled\n").unwrap();
    mount.crash();
    assert!(
        !src.join("journaled.txt").exists(),
        "pushed before the crash"
    );

    // What the crash could leave: a record whose data never reached the
    // disk (same size and time, other bytes), and data whose record was
    // never written.
    let lost = cache.join("journaled.txt");
    let mtime = fs::metadata(&lost).unwrap().modified().unwrap();
    fs::write(&lost, b"on the disk\n\n").unwrap();
    fs::File::options()
        .write(true)
        .open(&lost)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    fs::write(cache.join("unrecorded.txt"), b"never journaled\n").unwrap();

    // The next start repairs the cache's journal, then pushes what the disk has.
    let mount = ClientMount::start(&server.url, &cache, &mnt, &[]);
    let mut records = Vec::new();
    let mut names: Vec<_> = fs::read_dir(cache.join(".intersync/kml"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for seg in names {
        let bytes = fs::read(seg).unwrap();
        records.extend(
            intersync_protocol::kml::SegmentReader::new(&bytes)
                .unwrap()
                .map(|r| r.unwrap().op),
        );
    }
    assert_eq!(
        journaled_version(&records, "journaled.txt"),
        Some(version_of(b"on the disk\n\n")),
        "the record without its data was not repaired: {records:#?}"
    );
    assert_eq!(
        journaled_version(&records, "unrecorded.txt"),
        Some(version_of(b"never journaled\n"))
    );
    assert!(
        crate::client::eventually(30, || {
            fs::read(src.join("journaled.txt")).ok().as_deref() == Some(&b"on the disk\n\n"[..])
                && src.join("unrecorded.txt").exists()
        }),
        "not pushed after the restart: {}",
        mount.output()
    );
    assert_eq!(tree(&mnt), tree(&src));
    mount.stop();
}
