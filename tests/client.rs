//! `intersync sync` against a real `intersync serve` on loopback: deltas
//! both ways, renames that move no data, conflicts, offline work, and
//! SIGKILL in the middle of a download.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use crate::util::{Dir, Kill, Server, intersync, random_bytes, run};

/// `intersync sync --stats URL DIR`, its output and the two byte totals.
pub(crate) fn sync(url: &str, dir: &Path, extra: &[&str]) -> (Output, u64, u64) {
    let out = run(intersync()
        .arg("sync")
        .arg("--stats")
        .args(extra)
        .arg(url)
        .arg(dir));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |name: &str| -> u64 {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "no {name:?} in {stdout}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })
    };
    let (sent, received) = (field("Total bytes sent:"), field("Total bytes received:"));
    (out, sent, received)
}

#[track_caller]
pub(crate) fn sync_ok(url: &str, dir: &Path) -> (u64, u64) {
    let (out, sent, received) = sync(url, dir, &[]);
    assert!(
        out.status.success(),
        "sync failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (sent, received)
}

/// Every path below `root` (but `.intersync`) with its content or link target.
pub(crate) fn tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let path = e.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if rel == ".intersync" {
                continue;
            }
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                out.insert(format!("{rel}/"), vec![]);
                walk(root, &path, out);
            } else if ft.is_symlink() {
                out.insert(
                    rel,
                    fs::read_link(&path)
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes(),
                );
            } else {
                out.insert(rel, fs::read(&path).unwrap());
            }
        }
    }
    walk(root, root, &mut out);
    out
}

pub(crate) fn scatter_edits(path: &Path, count: usize, len: usize, seed: u64) {
    let mut data = fs::read(path).unwrap();
    let noise = random_bytes(seed, count * len + 8);
    for i in 0..count {
        let at = (u64::from_le_bytes(noise[i..i + 8].try_into().unwrap())
            % (data.len() - len) as u64) as usize;
        data[at..at + len].copy_from_slice(&noise[i * len..(i + 1) * len]);
    }
    fs::write(path, data).unwrap();
}

#[test]
fn scattered_edits_and_renames_move_little() {
    let export = Dir::new();
    fs::create_dir(export.path("media")).unwrap();
    fs::write(export.path("media/big.bin"), random_bytes(1, 20 << 20)).unwrap();
    fs::write(export.path("notes.txt"), b"first notes\n").unwrap();
    let server = Server::start(&export.path(""), &["--allow-anonymous-writes"]);
    let clients = Dir::new();
    let (a, b) = (clients.path("a"), clients.path("b"));
    sync_ok(&server.url, &a);
    sync_ok(&server.url, &b);
    assert_eq!(
        tree(&a),
        tree(&export.path(""))
            .into_iter()
            .filter(|(k, _)| !k.starts_with(".intersync"))
            .collect()
    );

    scatter_edits(&a.join("media/big.bin"), 20, 100, 7);
    let (a_sent, _) = sync_ok(&server.url, &a);
    assert!(
        a_sent < (20 << 20) / 20,
        "A sent {a_sent} bytes for 20 small edits"
    );
    let (_, b_received) = sync_ok(&server.url, &b);
    assert!(
        b_received < (20 << 20) / 20,
        "B received {b_received} bytes, 5% of the file is {}",
        (20 << 20) / 20
    );
    assert_eq!(
        fs::read(b.join("media/big.bin")).unwrap(),
        fs::read(a.join("media/big.bin")).unwrap()
    );
    assert_eq!(
        fs::read(export.path("media/big.bin")).unwrap(),
        fs::read(a.join("media/big.bin")).unwrap()
    );

    fs::rename(a.join("media/big.bin"), a.join("big-renamed.bin")).unwrap();
    let (sent, received) = sync_ok(&server.url, &a);
    assert!(
        sent + received < 4096,
        "a rename cost A {sent} + {received} bytes"
    );
    let (sent, received) = sync_ok(&server.url, &b);
    assert!(
        sent + received < 4096,
        "a rename cost B {sent} + {received} bytes"
    );
    assert!(!b.join("media/big.bin").exists());
    assert_eq!(tree(&a), tree(&b));
}

#[test]
fn concurrent_edits_keep_every_version() {
    let export = Dir::new();
    fs::write(export.path("shared.txt"), b"original\n").unwrap();
    fs::write(export.path("doomed.txt"), b"will be deleted on A\n").unwrap();
    let server = Server::start(&export.path(""), &["--allow-anonymous-writes"]);
    let clients = Dir::new();
    let (a, b) = (clients.path("a"), clients.path("b"));
    sync_ok(&server.url, &a);
    sync_ok(&server.url, &b);

    fs::write(a.join("shared.txt"), b"edited on A\n").unwrap();
    fs::write(b.join("shared.txt"), b"edited on B\n").unwrap();
    fs::remove_file(a.join("doomed.txt")).unwrap();
    fs::write(b.join("doomed.txt"), b"but edited on B\n").unwrap();

    sync_ok(&server.url, &a);
    let (out, _, _) = sync(&server.url, &b, &[]);
    assert_eq!(
        out.status.code(),
        Some(23),
        "conflicts are a partial result: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("conflict: shared.txt"), "{stderr}");
    assert!(stderr.contains("conflict: doomed.txt"), "{stderr}");
    sync_ok(&server.url, &a);
    sync_ok(&server.url, &b);

    let (ta, tb) = (tree(&a), tree(&b));
    assert_eq!(ta, tb, "the working copies differ");
    assert_eq!(
        ta["shared.txt"], b"edited on A\n",
        "the server's version keeps the name"
    );
    let aside: Vec<_> = ta
        .iter()
        .filter(|(k, _)| k.starts_with("shared.txt.conflict-"))
        .collect();
    assert_eq!(aside.len(), 1, "{ta:?}");
    assert_eq!(aside[0].1, b"edited on B\n");
    assert_eq!(
        ta["doomed.txt"], b"but edited on B\n",
        "the edit survives the delete"
    );
    let status = run(intersync().arg("status").arg(&b));
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("conflicts: 2"),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );
}

#[test]
fn offline_changes_wait_for_the_server() {
    let export = Dir::new();
    fs::write(export.path("a.txt"), b"a").unwrap();
    let server = Server::start(&export.path(""), &["--allow-anonymous-writes"]);
    let url = server.url.clone();
    let port = url
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    let clients = Dir::new();
    let wc = clients.path("wc");
    sync_ok(&url, &wc);
    server.kill();

    fs::write(wc.join("offline.txt"), b"written on the train").unwrap();
    fs::create_dir(wc.join("trip")).unwrap();
    fs::write(wc.join("trip/plan.txt"), b"plan").unwrap();
    let out = run(intersync().arg("sync").arg(&url).arg(&wc));
    assert_eq!(
        out.status.code(),
        Some(10),
        "unreachable is a socket error: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status =
        String::from_utf8_lossy(&run(intersync().arg("status").arg(&wc)).stdout).into_owned();
    assert!(status.contains("pending local changes: 5"), "{status}");

    let _server = Server::start(
        &export.path(""),
        &[
            "--allow-anonymous-writes",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ],
    );
    sync_ok(&url, &wc);
    assert_eq!(
        fs::read(export.path("offline.txt")).unwrap(),
        b"written on the train"
    );
    assert_eq!(fs::read(export.path("trip/plan.txt")).unwrap(), b"plan");
    let status =
        String::from_utf8_lossy(&run(intersync().arg("status").arg(&wc)).stdout).into_owned();
    assert!(status.contains("pending local changes: 0"), "{status}");
}

#[test]
fn sigkill_mid_download_resumes_and_never_installs_a_partial() {
    let export = Dir::new();
    let big = random_bytes(3, 50 << 20);
    fs::write(export.path("big.bin"), &big).unwrap();
    let server = Server::start(&export.path(""), &[]);
    let clients = Dir::new();
    let wc = clients.path("wc");
    let partial_len = || -> u64 {
        fs::read_dir(wc.join(".intersync/partial")).map_or(0, |d| {
            d.filter_map(Result::ok)
                .map(|e| e.metadata().unwrap().len())
                .sum()
        })
    };
    // Killed at several points of a download paced to about 10 MB/s: the
    // partial only grows, and nothing is ever at the real path but the
    // whole, verified file.
    let mut sizes = Vec::new();
    for (i, delay_ms) in [400u64, 650, 300, 900].into_iter().enumerate() {
        let mut child = intersync()
            .args(["sync", "--bwlimit", "10M"])
            .arg(&server.url)
            .arg(&wc)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        let at_real_path = wc.join("big.bin");
        if at_real_path.exists() {
            assert_eq!(
                fs::read(&at_real_path).unwrap(),
                big,
                "iteration {i}: a wrong file was installed"
            );
            break;
        }
        sizes.push(partial_len());
    }
    assert!(
        sizes.windows(2).all(|w| w[0] <= w[1]),
        "a run restarted from zero: {sizes:?}"
    );
    let before = partial_len();
    assert!(before > 0, "no run was killed mid-download: {sizes:?}");
    let (out, _, received) = sync(&server.url, &wc, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        received < (50 << 20) - before + (1 << 20),
        "{before} bytes were here, yet {received} were received"
    );
    assert_eq!(fs::read(wc.join("big.bin")).unwrap(), big);
    assert_eq!(partial_len(), 0, "the partial is gone once installed");
}

#[test]
fn demo_runs_with_no_arguments() {
    let out = run(intersync().arg("demo"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = |name: &str| -> Vec<String> {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("| {name}")))
            .unwrap_or_else(|| panic!("no {name} row in {stdout}"));
        line.split('|')
            .map(|c| c.trim().trim_end_matches(" bytes").to_owned())
            .filter(|c| !c.is_empty())
            .collect()
    };
    let edits = row("sync after edits");
    let (full, moved): (u64, u64) = (edits[2].parse().unwrap(), edits[3].parse().unwrap());
    assert!(moved * 20 < full, "edits moved {moved} of {full}: {stdout}");
    let noop = row("sync with nothing to do");
    assert_eq!(noop[5], "1", "a no-op sync is one request: {stdout}");
    assert!(noop[3].parse::<u64>().unwrap() < 1024, "{stdout}");
}

/// Polls until `check` passes or `secs` seconds go by.
pub(crate) fn eventually(secs: u64, mut check: impl FnMut() -> bool) -> bool {
    for _ in 0..secs * 10 {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn watch_follows_both_sides_and_survives_the_server_going_away() {
    let export = Dir::new();
    fs::write(export.path("start.txt"), b"start").unwrap();
    let server = Server::start(&export.path(""), &["--allow-anonymous-writes"]);
    let url = server.url.clone();
    let port = url
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    let clients = Dir::new();
    let wc = clients.path("wc");
    let _watcher = Kill(
        intersync()
            .arg("watch")
            .arg(&url)
            .arg(&wc)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(
        eventually(20, || wc.join("start.txt").exists()),
        "the first round never ran"
    );

    // A local edit is pushed within seconds; a server edit arrives by long-poll.
    fs::write(wc.join("local.txt"), b"from the laptop").unwrap();
    assert!(eventually(10, || fs::read(export.path("local.txt"))
        .ok()
        .as_deref()
        == Some(&b"from the laptop"[..])));
    fs::write(export.path("remote.txt"), b"from the server").unwrap();
    assert!(eventually(10, || fs::read(wc.join("remote.txt"))
        .ok()
        .as_deref()
        == Some(&b"from the server"[..])));

    // The server goes away; work goes on; it comes back; the work arrives.
    server.kill();
    fs::write(wc.join("offline-1.txt"), b"one").unwrap();
    fs::create_dir(wc.join("offline-dir")).unwrap();
    fs::write(wc.join("offline-dir/two.txt"), b"two").unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let _server = Server::start(
        &export.path(""),
        &[
            "--allow-anonymous-writes",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ],
    );
    assert!(
        eventually(40, || export.path("offline-1.txt").exists()
            && export.path("offline-dir/two.txt").exists()),
        "watch did not push the offline work"
    );
    assert_eq!(
        fs::read(export.path("offline-dir/two.txt")).unwrap(),
        b"two"
    );
}

#[test]
fn a_clone_from_a_checkpoint_reads_only_new_records_next_time() {
    let export = Dir::new();
    for i in 0..40 {
        fs::write(
            export.path(&format!("file-with-a-longish-name-{i:03}.txt")),
            format!("content {i}"),
        )
        .unwrap();
    }
    let server = Server::start(
        &export.path(""),
        &["--allow-anonymous-writes", "--checkpoint-every", "10"],
    );
    let clients = Dir::new();
    let wc = clients.path("wc");
    sync_ok(&server.url, &wc);
    let segment = fs::read_dir(export.path(".intersync/kml"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .max()
        .unwrap();
    assert!(segment > 4000, "the journal is {segment} bytes");
    // Another client's change, then a sync that must not reread the journal.
    let other = clients.path("other");
    sync_ok(&server.url, &other);
    fs::write(other.join("file-with-a-longish-name-000.txt"), b"changed").unwrap();
    sync_ok(&server.url, &other);
    let (_, received) = sync_ok(&server.url, &wc);
    assert!(
        received < 2000,
        "received {received} bytes for one small change"
    );
    assert_eq!(
        fs::read(wc.join("file-with-a-longish-name-000.txt")).unwrap(),
        b"changed"
    );
}

#[test]
fn sync_over_tls_with_a_token() {
    let export = Dir::new();
    fs::write(export.path("secret.txt"), b"for token holders").unwrap();
    let keys = Dir::new();
    let (cert, key) = crate::util::self_signed(&keys);
    let token = keys.write("token", b"open sesame\n");
    let server = Server::start(
        &export.path(""),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--token-file",
            token.to_str().unwrap(),
        ],
    );
    assert!(server.url.starts_with("https://"));
    let clients = Dir::new();
    let wc = clients.path("wc");
    // Without the CA the certificate is refused; without the token, the server refuses.
    let out = run(intersync()
        .arg("sync")
        .arg(&server.url)
        .arg(&wc)
        .arg("--token-file")
        .arg(&token));
    assert_ne!(out.status.code(), Some(0), "an unknown CA was trusted");
    let out = run(intersync()
        .arg("sync")
        .arg(&server.url)
        .arg(&wc)
        .arg("--cacert")
        .arg(&cert));
    assert_eq!(
        out.status.code(),
        Some(5),
        "a refused login is rsync's start-up error"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(intersync()
        .arg("sync")
        .arg(&server.url)
        .arg(&wc)
        .arg("--cacert")
        .arg(&cert)
        .arg("--token-file")
        .arg(&token));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        fs::read(wc.join("secret.txt")).unwrap(),
        b"for token holders"
    );
    // A token also allows pushing.
    fs::write(wc.join("reply.txt"), b"thanks").unwrap();
    let out = run(intersync()
        .arg("sync")
        .arg(&server.url)
        .arg(&wc)
        .arg("--cacert")
        .arg(&cert)
        .arg("--token-file")
        .arg(&token));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read(export.path("reply.txt")).unwrap(), b"thanks");
}

#[test]
fn server_deletes_folders_and_identical_files_for_good() {
    let export = Dir::new();
    fs::create_dir_all(export.path("d/sub")).unwrap();
    fs::create_dir(export.path("e")).unwrap();
    fs::write(export.path("d/.keep"), b"").unwrap();
    fs::write(export.path("e/.keep"), b"").unwrap();
    fs::write(export.path("d/sub/x.txt"), b"x").unwrap();
    let server = Server::start(&export.path(""), &["--allow-anonymous-writes"]);
    let clients = Dir::new();
    let wc = clients.path("wc");
    sync_ok(&server.url, &wc);
    fs::remove_dir_all(export.path("d")).unwrap();
    fs::remove_file(export.path("e/.keep")).unwrap();
    assert!(
        eventually(10, || {
            sync_ok(&server.url, &wc);
            !wc.join("d").exists() && !wc.join("e/.keep").exists()
        }),
        "the deletes never arrived: {:?}",
        tree(&wc)
    );
    sync_ok(&server.url, &wc);
    assert!(!export.path("d").exists(), "the folder was pushed back");
    assert!(
        !export.path("e/.keep").exists(),
        "the identical file was pushed back"
    );
}

#[test]
fn a_pull_only_sync_keeps_both_versions() {
    let export = Dir::new();
    fs::write(export.path("f.txt"), b"base\n").unwrap();
    let server = Server::start(&export.path(""), &["--allow-anonymous-writes"]);
    let clients = Dir::new();
    let (a, b) = (clients.path("a"), clients.path("b"));
    sync_ok(&server.url, &a);
    sync_ok(&server.url, &b);
    fs::write(a.join("f.txt"), b"from A\n").unwrap();
    fs::write(b.join("f.txt"), b"from B\n").unwrap();
    sync_ok(&server.url, &a);
    // A pull-only sync resolves the conflict locally (nothing to push yet).
    let out = run(intersync()
        .args(["sync", "--pull-only"])
        .arg(&server.url)
        .arg(&b));
    assert_eq!(
        out.status.code(),
        Some(23),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read(b.join("f.txt")).unwrap(), b"from A\n");
    let ours: Vec<_> = tree(&b)
        .into_iter()
        .filter(|(k, _)| k.starts_with("f.txt.conflict-"))
        .collect();
    assert_eq!(ours.len(), 1, "{:?}", tree(&b));
    assert_eq!(ours[0].1, b"from B\n");
    // The next full sync pushes the local version under its conflict name.
    sync_ok(&server.url, &b);
    assert_eq!(
        fs::read(export.path("f.txt")).unwrap(),
        b"from A\n",
        "A's edit was overwritten"
    );
    assert_eq!(fs::read(export.path(&ours[0].0)).unwrap(), b"from B\n");
}

/// A symbolic link whose target is not UTF-8 reaches the server, and
/// another working copy, with the same bytes: the batch carries targets as
/// bytes, never a lossy rendering of them.
#[test]
fn symlink_targets_that_are_not_utf8_are_pushed_unaltered() {
    use std::os::unix::ffi::OsStrExt;
    let export = Dir::new();
    export.write("keep.txt", b"keep");
    let server = Server::start(&export.path(""), &["--allow-anonymous-writes"]);
    let (laptop, desk) = (Dir::new(), Dir::new());
    sync_ok(&server.url, &laptop.path(""));
    let target = std::ffi::OsStr::from_bytes(b"caf\xe9/\xff-old");
    std::os::unix::fs::symlink(target, laptop.path("latin1-link")).unwrap();
    sync_ok(&server.url, &laptop.path(""));
    for dir in [export.path(""), {
        sync_ok(&server.url, &desk.path(""));
        desk.path("")
    }] {
        let got = fs::read_link(dir.join("latin1-link")).unwrap();
        assert_eq!(
            got.as_os_str().as_bytes(),
            target.as_bytes(),
            "in {}",
            dir.display()
        );
    }
}

#[test]
fn a_working_copy_follows_its_export_to_a_new_url_but_not_to_another_export() {
    let export = Dir::new();
    fs::write(export.path("a.txt"), b"a").unwrap();
    let server = Server::start(&export.path(""), &["--allow-anonymous-writes"]);
    let wc = Dir::new();
    sync_ok(&server.url, &wc.path(""));
    server.kill();
    // The same export on another port, reached by another name.
    fs::write(export.path("b.txt"), b"b").unwrap();
    let server = Server::start(&export.path(""), &["--allow-anonymous-writes"]);
    let moved = server.url.replace("127.0.0.1", "localhost");
    fs::write(wc.path("mine.txt"), b"mine").unwrap();
    let (out, _, _) = sync(&moved, &wc.path(""), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("is now reached at"), "{stderr}");
    assert_eq!(fs::read(wc.path("b.txt")).unwrap(), b"b");
    assert_eq!(fs::read(export.path("mine.txt")).unwrap(), b"mine");
    // Said once: the new URL is remembered.
    let (out, _, _) = sync(&moved, &wc.path(""), &[]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("is now reached at"));
    let status = run(intersync().arg("status").arg(wc.path("")));
    assert!(String::from_utf8_lossy(&status.stdout).contains(&moved));
    server.kill();
    // The export's state made anew: another export, refused with a hint,
    // and nothing here or there is touched.
    fs::remove_dir_all(export.path(".intersync")).unwrap();
    let server = Server::start(&export.path(""), &["--allow-anonymous-writes"]);
    fs::write(wc.path("later.txt"), b"later").unwrap();
    let before = tree(&wc.path(""));
    for extra in [&[][..], &["--push-only"][..]] {
        let out = run(intersync()
            .arg("sync")
            .args(extra)
            .arg(&server.url)
            .arg(wc.path("")));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?}: {stderr}");
        assert!(stderr.contains("made anew"), "{stderr}");
        assert!(stderr.contains("new folder"), "{stderr}");
        assert_eq!(tree(&wc.path("")), before);
        assert!(!export.path("later.txt").exists(), "{extra:?}");
    }
}

#[test]
fn an_idle_server_and_an_idle_watch_do_no_work() {
    let export = Dir::new();
    for i in 0..300 {
        export.write(
            &format!("d{}/f{i}.txt", i % 10),
            format!("file {i}").as_bytes(),
        );
    }
    let logs = Dir::new();
    let server_log = fs::File::create(logs.path("server.log")).unwrap();
    let mut serve = intersync();
    serve
        .env("INTERSYNC_LOG", "intersync=debug")
        .arg("serve")
        .stderr(server_log);
    let export_dir = export.path("");
    let server = Server::spawn(
        serve,
        &[export_dir.as_os_str(), "--allow-anonymous-writes".as_ref()],
    );
    let wc = Dir::new();
    let watch_log = fs::File::create(logs.path("watch.log")).unwrap();
    let _watcher = Kill(
        intersync()
            .env("INTERSYNC_LOG", "intersync=debug")
            .arg("watch")
            .arg(&server.url)
            .arg(wc.path(""))
            .stdout(std::process::Stdio::null())
            .stderr(watch_log)
            .spawn()
            .unwrap(),
    );
    assert!(
        eventually(30, || wc.path("d9/f299.txt").exists()),
        "the first round never ran"
    );
    // Settled: whatever the first rounds woke has run.
    std::thread::sleep(Duration::from_secs(3));
    let count = |name: &str, what: &str| {
        fs::read_to_string(logs.path(name))
            .unwrap()
            .matches(what)
            .count()
    };
    let (scans, rounds) = (
        count("server.log", "rescanning the folder"),
        count("watch.log", "a sync round"),
    );
    // Files read, from the server and in the working copy, wake nothing.
    for i in 0..300 {
        let _ = fs::read(wc.path(&format!("d{}/f{i}.txt", i % 10))).unwrap();
    }
    let other = Dir::new();
    sync_ok(&server.url, &other.path(""));
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        count("server.log", "rescanning the folder"),
        scans,
        "an idle server scanned"
    );
    assert_eq!(
        count("watch.log", "a sync round"),
        rounds,
        "an idle watch synced"
    );
    // A change still wakes both, once.
    fs::write(export.path("new.txt"), b"new").unwrap();
    assert!(eventually(10, || wc.path("new.txt").exists()));
    std::thread::sleep(Duration::from_secs(3));
    let scans_after = count("server.log", "rescanning the folder");
    assert!(
        (scans + 1..=scans + 2).contains(&scans_after),
        "{scans} then {scans_after} scans"
    );
}
