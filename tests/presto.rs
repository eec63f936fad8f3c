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
        assert!(
            Path::new("/dev/fuse").exists(),
            "/dev/fuse is missing: presto's tests need FUSE"
        );
        fs::create_dir_all(mnt).unwrap();
        let server = Server::serve(&[
            dir.as_os_str(),
            "--allow-anonymous-writes".as_ref(),
            "--mount".as_ref(),
            mnt.as_os_str(),
        ]);
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
