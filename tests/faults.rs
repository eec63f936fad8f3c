//! The fault campaign (#18): clients and servers killed at random points
//! of pulls, batches, pushes, uploads, scans, checkpoints and segment
//! seals. After every kill: no file at a real name that is not whole (each
//! is one of the contents it was ever given), no acknowledged change lost,
//! and, at the end, a fresh clone equal to the server's tree. The delays
//! come from a fixed seed, so a failure can be replayed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::client::sync_ok;
use crate::util::{Dir, Server, http, intersync, random_bytes};

/// Kills in each of the six scenarios below: 102 in all.
const KILLS: usize = 20;

/// Delays between `lo` and `hi` milliseconds, from `seed` (xorshift).
fn delays(seed: u64, lo: u64, hi: u64) -> impl Iterator<Item = Duration> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    std::iter::repeat_with(move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        Duration::from_millis(lo + x % (hi - lo))
    })
}

/// The regular files below `root`, but InterSync's state and temporaries.
fn files(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name == ".intersync" || name.starts_with(".intersync-") {
                continue;
            }
            let path = e.path();
            let kind = e.file_type().unwrap();
            if kind.is_dir() {
                walk(root, &path, out);
            } else if kind.is_file() {
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Every file of `root` holds one of the contents its name was ever given.
#[track_caller]
fn all_whole(root: &Path, given: &BTreeMap<String, BTreeSet<Vec<u8>>>, when: &str) {
    for (name, content) in files(root) {
        let known = given.get(&name).is_some_and(|g| g.contains(&content));
        assert!(
            known,
            "{when}: {name} ({} bytes) is not a content it was given",
            content.len()
        );
    }
}

/// `intersync sync URL DIR`, started, not waited for.
fn start_sync(url: &str, dir: &Path, extra: &[&str]) -> Child {
    intersync()
        .arg("sync")
        .args(extra)
        .arg(url)
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// SIGKILLs `child` after `delay`; whether it was still running then.
fn kill_after(mut child: Child, delay: Duration) -> bool {
    std::thread::sleep(delay);
    let running = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    running
}

/// A fresh clone of `url` equals `root`'s files.
#[track_caller]
fn a_fresh_clone_equals(url: &str, root: &Path) {
    let clone = Dir::new();
    sync_ok(url, &clone.path("wc"));
    assert!(
        files(&clone.path("wc")) == files(root),
        "a fresh clone differs from the server's tree"
    );
}

/// Clients killed while pulling a large file (resumed each time from the
/// partial it kept) and while pulling a batch of many small files.
#[test]
fn clients_killed_mid_pull_install_only_whole_files() {
    let export = Dir::new();
    let big = random_bytes(1, 24 << 20);
    export.write("big.bin", &big);
    for i in 0..1500 {
        export.write(
            &format!("small/{}/f{i}", i % 15),
            &random_bytes(100 + i, 4000),
        );
    }
    let given: BTreeMap<String, BTreeSet<Vec<u8>>> = files(&export.path(""))
        .into_iter()
        .map(|(k, v)| (k, BTreeSet::from([v])))
        .collect();
    let server = Server::start(&export.path(""), &[]);
    let clients = Dir::new();
    let mut killed = 0;
    let mut copies = 0;
    // Until 34 syncs were killed while they ran (one that finished before
    // its kill does not count), and at most twice as many tries.
    for (i, delay) in delays(7, 30, 1500).take(4 * KILLS).enumerate() {
        if killed == 2 * KILLS {
            break;
        }
        let wc = clients.path(&format!("wc{copies}"));
        // The big file is paced to about 3 s, the small ones to about 2 s.
        killed += usize::from(kill_after(
            start_sync(&server.url, &wc, &["--bwlimit", "8M"]),
            delay,
        ));
        all_whole(&wc, &given, &format!("kill {i}"));
        if files(&wc).len() == given.len() {
            copies += 1;
        }
    }
    assert_eq!(
        killed,
        2 * KILLS,
        "too few syncs were still running when killed"
    );
    let last = clients.path(&format!("wc{copies}"));
    sync_ok(&server.url, &last);
    assert!(
        files(&last) == files(&export.path("")),
        "the last copy is not the server's tree"
    );
    a_fresh_clone_equals(&server.url, &export.path(""));
}

/// A client killed while it pushes a thousand new files (and saves its
/// state, a transaction of hundreds of rows): the server holds only whole
/// files, each as the client wrote it, and the next sync sends the rest;
/// nothing the client wrote is lost, and nothing is sent twice.
#[test]
fn a_client_killed_mid_push_loses_nothing() {
    let export = Dir::new();
    export.write("seed", b"seed");
    let server = Server::start(&export.path(""), &["--allow-anonymous-writes"]);
    let clients = Dir::new();
    let wc = clients.path("wc");
    sync_ok(&server.url, &wc);
    let mut given: BTreeMap<String, BTreeSet<Vec<u8>>> = BTreeMap::new();
    given
        .entry("seed".into())
        .or_default()
        .insert(b"seed".to_vec());
    let mut killed = 0;
    for (round, delay) in delays(11, 10, 700).take(2 * KILLS).enumerate() {
        if killed == KILLS {
            break;
        }
        for i in 0..500 {
            let name = format!("r{round}/f{i}");
            let body = random_bytes((round * 1000 + i) as u64, 8000);
            std::fs::create_dir_all(wc.join(format!("r{round}"))).unwrap();
            std::fs::write(wc.join(&name), &body).unwrap();
            given.entry(name).or_default().insert(body);
        }
        killed += usize::from(kill_after(start_sync(&server.url, &wc, &[]), delay));
        all_whole(&export.path(""), &given, &format!("push {round}"));
    }
    assert_eq!(
        killed, KILLS,
        "too few pushes were still running when killed"
    );
    sync_ok(&server.url, &wc);
    assert!(
        files(&export.path("")) == files(&wc),
        "the server lacks what the client wrote"
    );
    // Whatever the kills left of the state (a save cut short, a push the
    // state never heard was acknowledged), it was repaired: one more sync
    // sends nothing twice.
    let journal = || {
        crate::util::get(&format!("{}.intersync/head", server.url), &[])
            .header("etag")
            .to_owned()
    };
    let before = journal();
    sync_ok(&server.url, &wc);
    assert_eq!(journal(), before, "a sync after the kills wrote again");
    a_fresh_clone_equals(&server.url, &export.path(""));
}

/// PUTs one file after another until the server stops answering; the
/// names and bodies it acknowledged (201).
fn put_until_gone(url: String, round: usize) -> Vec<(String, Vec<u8>)> {
    let mut acknowledged = Vec::new();
    for i in 0.. {
        let name = format!("u{round}-f{i}");
        let body = random_bytes((round * 100_000 + i) as u64, 50_000 + (i * 977) % 150_000);
        let status = std::panic::catch_unwind(|| {
            http("PUT", &format!("{url}{name}"), &[], body.clone(), None).status
        });
        match status {
            Ok(201) => acknowledged.push((name, body)),
            _ => break,
        }
    }
    acknowledged
}

/// A server killed while it receives uploads, once with the default
/// journal and once sealing a segment every few records and writing a
/// checkpoint every fifty: every upload it acknowledged is there after a
/// restart, whole, and a fresh clone is the server's tree.
#[test]
fn a_server_killed_mid_upload_seal_or_checkpoint_loses_no_acknowledged_write() {
    for (seed, journal) in [
        (13, &[][..]),
        (
            17,
            &["--segment-bytes", "2048", "--checkpoint-every", "50"][..],
        ),
    ] {
        let export = Dir::new();
        export.write("seed", b"seed");
        let mut acknowledged: Vec<(String, Vec<u8>)> = Vec::new();
        for (round, delay) in delays(seed, 100, 900).take(KILLS).enumerate() {
            let mut args = vec!["--allow-anonymous-writes"];
            args.extend_from_slice(journal);
            let server = Server::start(&export.path(""), &args);
            for (name, body) in &acknowledged {
                assert_eq!(
                    &std::fs::read(export.path(name)).unwrap(),
                    body,
                    "round {round}: {name} was acknowledged and lost"
                );
            }
            let uploader = std::thread::spawn({
                let url = server.url.clone();
                move || put_until_gone(url, round)
            });
            std::thread::sleep(delay);
            server.kill();
            acknowledged.extend(uploader.join().unwrap());
        }
        assert!(acknowledged.len() > KILLS, "too few uploads to kill amid");
        let server = Server::start(&export.path(""), journal);
        for (name, body) in &acknowledged {
            assert_eq!(
                &crate::util::get(&server.url(name), &[]).body,
                body,
                "{name} lost"
            );
        }
        a_fresh_clone_equals(&server.url, &export.path(""));
    }
}

/// A server killed while it scans a folder other programs fill (its first
/// import, then the changes made while it was down): each restart picks
/// up where the journal stands, and a fresh clone is the folder.
#[test]
fn a_server_killed_mid_scan_starts_again_and_serves_the_folder() {
    let export = Dir::new();
    for i in 0..3000 {
        export.write(&format!("d{}/f{i}", i % 30), &random_bytes(i, 600));
    }
    for (round, delay) in delays(19, 20, 900).take(KILLS).enumerate() {
        for i in 0..100 {
            export.write(&format!("new{round}/f{i}"), &random_bytes(50_000 + i, 600));
        }
        let _ = std::fs::remove_file(export.path(&format!("d{round}/f{round}")));
        // Not waiting for its ready line: the first scan runs before it.
        let child = intersync()
            .arg("serve")
            .arg(export.path(""))
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        assert!(
            kill_after(child, delay),
            "round {round}: the server ended on its own"
        );
    }
    let server = Server::start(&export.path(""), &[]);
    a_fresh_clone_equals(&server.url, &export.path(""));
}

/// Flips the byte at `at` of `path` (from the end when negative).
fn flip(path: &Path, at: i64) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = if at < 0 { bytes.len() as i64 + at } else { at } as usize;
    bytes[at] ^= 0x10;
    std::fs::write(path, bytes).unwrap();
}

/// `intersync serve DIR ARGS` that must end within 20 s: its output.
fn serve_ends(dir: &Path, args: &[&str]) -> std::process::Output {
    let mut child = intersync()
        .arg("serve")
        .arg(dir)
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    panic!("the server started on a damaged journal");
}

/// A byte flipped in a sealed journal segment or a checkpoint: a running
/// server refuses to serve the file (plain or compressed), and a server
/// starting on it refuses to start; both name the file and the offset.
/// With the byte back, everything acknowledged is served.
#[test]
fn a_flipped_byte_in_the_journal_is_found_named_and_never_served() {
    let export = Dir::new();
    export.write("seed", b"seed");
    let args = [
        "--allow-anonymous-writes",
        "--segment-bytes",
        "2048",
        "--checkpoint-every",
        "50",
    ];
    let server = Server::start(&export.path(""), &args);
    for i in 0..80 {
        let reply = http(
            "PUT",
            &server.url(&format!("f{i}")),
            &[],
            random_bytes(i, 100),
            None,
        );
        assert_eq!(reply.status, 201);
    }
    let head: serde_json::Value =
        serde_json::from_slice(&crate::util::get(&server.url(".intersync/head"), &[]).body)
            .unwrap();
    let sealed = head["segments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["sealed"] == true)
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .expect("a sealed segment");
    let checkpoint = head["checkpoint"]["name"]
        .as_str()
        .expect("a checkpoint")
        .to_owned();
    let segment = export.path(&format!(".intersync/kml/{sealed}"));
    let url = server.url(&format!(".intersync/kml/{sealed}"));
    assert_eq!(crate::util::get(&url, &[]).status, 200);
    flip(&segment, -30);
    for headers in [
        &[][..],
        &[("accept-encoding", "zstd")][..],
        &[("range", "bytes=0-99")][..],
    ] {
        let reply = crate::util::get(&url, headers);
        assert_eq!(reply.status, 500, "{headers:?}: {}", reply.text());
        assert!(
            reply.text().contains("damaged") && reply.text().contains("offset"),
            "{}",
            reply.text()
        );
    }
    flip(&segment, -30);
    assert_eq!(crate::util::get(&url, &[]).status, 200);
    server.kill();
    let checkpoint = export.path(&format!(".intersync/checkpoints/{checkpoint}"));
    for (file, name) in [
        (&segment, &sealed),
        (
            &checkpoint,
            &head["checkpoint"]["name"].as_str().unwrap().to_owned(),
        ),
    ] {
        flip(file, -30);
        let out = serve_ends(&export.path(""), &args);
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{said}");
        assert!(
            said.contains(name.as_str()) && said.contains("offset"),
            "{said}"
        );
        flip(file, -30);
    }
    let server = Server::start(&export.path(""), &args);
    for i in 0..80 {
        assert_eq!(
            crate::util::get(&server.url(&format!("f{i}")), &[]).body,
            random_bytes(i, 100)
        );
    }
    a_fresh_clone_equals(&server.url, &export.path(""));
}

/// A client refuses a damaged journal however it is served (here a
/// static export behind nginx, which checks nothing): the sync fails,
/// names the offset, and installs nothing.
#[test]
fn a_client_refuses_a_damaged_journal_served_to_it() {
    let site = Dir::new();
    for i in 0..20 {
        site.write(&format!("f{i}"), &random_bytes(i, 1000));
    }
    crate::util::ok(intersync().arg("export").arg(site.path("")));
    flip(&site.path(".intersync/kml/0000000000000001.kml"), -30);
    let nginx = crate::util::Nginx::start(&site.path(""), "");
    let clients = Dir::new();
    let wc = clients.path("wc");
    let out = crate::util::run(intersync().arg("sync").arg(&nginx.url).arg(&wc));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("offset"), "{said}");
    assert!(files(&wc).is_empty(), "installed from a damaged journal");
}

/// A byte flipped in a working copy's state (a version, inside a row
/// SQLite still reads as whole): found before anything is read from it,
/// named, and the sync does nothing (a version read wrong would make a
/// file look edited, and pushed).
#[test]
fn a_flipped_byte_in_a_working_copys_state_is_found_and_never_used() {
    let export = Dir::new();
    for i in 0..10 {
        export.write(&format!("f{i}"), &random_bytes(i, 2000));
    }
    let server = Server::start(&export.path(""), &["--allow-anonymous-writes"]);
    let clients = Dir::new();
    let wc = clients.path("wc");
    sync_ok(&server.url, &wc);
    let state = wc.join(".intersync/state.db");
    assert!(
        !wc.join(".intersync/state.db-wal").exists(),
        "the last sync left its log unmerged"
    );
    let text = std::fs::read(&state).unwrap();
    let version = blake3::hash(&random_bytes(3, 2000));
    let at = text
        .windows(32)
        .position(|w| w == version.as_bytes())
        .expect("the version of f3 in the state")
        + 7;
    let mut damaged = text.clone();
    damaged[at] ^= 0x10;
    std::fs::write(&state, &damaged).unwrap();
    let before = crate::client::tree(&export.path(""));
    let out = crate::util::run(intersync().arg("sync").arg(&server.url).arg(&wc));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("damaged (the row of \"f3\" does not match its checksum)"),
        "{said}"
    );
    assert_eq!(
        std::fs::read(&state).unwrap(),
        damaged,
        "the damaged state was rewritten"
    );
    assert!(
        crate::client::tree(&export.path("")) == before,
        "the server was changed"
    );
}

/// The server's disk fills during a push: what does not fit is refused
/// with words that say so and a non-zero exit, what was there stays whole,
/// nothing half-written is left, the journal still opens, and once space
/// returns the next sync completes.
#[test]
fn a_full_disk_on_the_server_keeps_everything_whole() {
    let disk = crate::util::Tmpfs::new("6m");
    let export = disk.0.join("export");
    std::fs::create_dir_all(&export).unwrap();
    std::fs::write(export.join("a.txt"), b"first").unwrap();
    let kept = random_bytes(1, 1 << 20);
    std::fs::write(export.join("b.bin"), &kept).unwrap();
    let server = Server::start(&export, &["--allow-anonymous-writes"]);
    let clients = Dir::new();
    let wc = clients.path("wc");
    sync_ok(&server.url, &wc);
    std::fs::write(wc.join("a.txt"), b"edited").unwrap();
    std::fs::write(wc.join("c.txt"), b"new and small").unwrap();
    for i in 0..3 {
        std::fs::write(wc.join(format!("big{i}")), random_bytes(10 + i, 3 << 20)).unwrap();
    }
    let out = crate::util::run(intersync().arg("sync").arg(&server.url).arg(&wc));
    let said = String::from_utf8_lossy(&out.stderr);
    // rsync's 23: some changes were not carried out.
    assert_eq!(out.status.code(), Some(23), "{said}");
    assert!(said.contains("507: not enough space"), "{said}");
    let on_server = files(&export);
    assert_eq!(on_server["b.bin"], kept);
    for (name, content) in &on_server {
        assert_eq!(
            content,
            &std::fs::read(wc.join(name)).unwrap_or_default(),
            "{name} is not whole"
        );
    }
    let temporaries: Vec<_> = std::fs::read_dir(&export)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".intersync-"))
        .map(|e| e.file_name())
        .collect();
    assert!(temporaries.is_empty(), "left behind: {temporaries:?}");
    server.kill();
    let server = Server::start(&export, &["--allow-anonymous-writes"]);
    disk.resize("32m");
    sync_ok(&server.url, &wc);
    assert!(
        files(&export) == files(&wc),
        "the push did not complete once space returned"
    );
    a_fresh_clone_equals(&server.url, &export);
}

/// A proxy that reads each request whole (bodies by `Content-Length`),
/// calls `hook` with its request line before sending it on, and sends it
/// to the server on a connection of its own, so that the hook may restart
/// the server (on the same port) between two requests of one sync.
struct Restarting {
    url: String,
}

impl Restarting {
    fn start(upstream: &str, hook: impl Fn(&str) + Send + Sync + 'static) -> Restarting {
        use std::io::{BufRead, BufReader, Read, Write};
        let (listener, url, upstream) = crate::util::listen_in_front_of(upstream);
        let hook = std::sync::Arc::new(hook);
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (hook, upstream) = (hook.clone(), upstream.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(client.try_clone().unwrap());
                    let mut client = client;
                    loop {
                        let mut head = Vec::new();
                        let mut length = 0usize;
                        loop {
                            let mut line = String::new();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            let lower = line.to_ascii_lowercase();
                            if let Some(v) = lower.strip_prefix("content-length:") {
                                length = v.trim().parse().unwrap();
                            }
                            assert!(!lower.starts_with("transfer-encoding"), "a chunked request");
                            if lower.starts_with("connection:") {
                                continue;
                            }
                            if line == "\r\n" {
                                head.extend_from_slice(b"connection: close\r\n\r\n");
                                break;
                            }
                            head.extend_from_slice(line.as_bytes());
                        }
                        let mut body = vec![0; length];
                        if reader.read_exact(&mut body).is_err() {
                            return;
                        }
                        let first = String::from_utf8_lossy(&head)
                            .lines()
                            .next()
                            .unwrap()
                            .to_owned();
                        hook(&first);
                        let Ok(mut server) = std::net::TcpStream::connect(&upstream) else {
                            return;
                        };
                        if server
                            .write_all(&head)
                            .and_then(|()| server.write_all(&body))
                            .is_err()
                        {
                            return;
                        }
                        // The server closes after its answer; the client
                        // reads it framed as it is.
                        let mut answer = Vec::new();
                        let _ = server.read_to_end(&mut answer);
                        if answer.is_empty() || client.write_all(&answer).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Restarting { url }
    }
}

/// The export's port, for a server started again on it.
fn port_of(server: &Server) -> String {
    server
        .url
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned()
}

/// A server on `root`, and a proxy in front of it that, at the first
/// request whose line starts with `wanted`, kills the server, lets
/// `change` change the folder, and starts the server again on the same
/// port before it sends the request on.
struct Restarted {
    server: std::sync::Arc<std::sync::Mutex<Server>>,
    proxy: Restarting,
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Restarted {
    fn at(
        root: &Path,
        wanted: &'static str,
        change: impl Fn(&Path) + Send + Sync + 'static,
    ) -> Restarted {
        use std::sync::atomic::Ordering;
        let args = ["--version-budget", "0"];
        let server = std::sync::Arc::new(std::sync::Mutex::new(Server::start(root, &args)));
        let port = port_of(&server.lock().unwrap());
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let url = server.lock().unwrap().url.clone();
        let proxy = Restarting::start(&url, {
            let (server, done, root) = (server.clone(), done.clone(), root.to_owned());
            move |line| {
                if line.starts_with(wanted) && !done.swap(true, Ordering::SeqCst) {
                    let mut held = server.lock().unwrap();
                    let listen = format!("127.0.0.1:{port}");
                    let _ = held.child.kill();
                    let _ = held.child.wait();
                    change(&root);
                    *held = Server::start(&root, &["--version-budget", "0", "--listen", &listen]);
                }
            }
        });
        Restarted {
            server,
            proxy,
            done,
        }
    }

    fn happened(&self) -> bool {
        self.done.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Restarted {
    /// The proxy's thread holds the server too, and lives on.
    fn drop(&mut self) {
        let mut server = self.server.lock().unwrap_or_else(|p| p.into_inner());
        let _ = server.child.kill();
        let _ = server.child.wait();
    }
}

/// Syncs `wc` through `url` until it equals `root` (two syncs at most:
/// one cut short by the restart, one to finish); every file installed
/// meanwhile is one the server had.
#[track_caller]
fn converges(url: &str, wc: &Path, root: &Path, given: &BTreeMap<String, BTreeSet<Vec<u8>>>) {
    let first = crate::util::run(intersync().arg("sync").arg(url).arg(wc));
    all_whole(wc, given, "the sync the restart cut");
    if !first.status.success() || files(wc) != files(root) {
        sync_ok(url, wc);
    }
    assert!(files(wc) == files(root), "the copy did not converge");
}

/// What `root` holds and what it held before, by name.
fn with_contents(
    mut given: BTreeMap<String, BTreeSet<Vec<u8>>>,
    root: &Path,
) -> BTreeMap<String, BTreeSet<Vec<u8>>> {
    for (name, content) in files(root) {
        given.entry(name).or_default().insert(content);
    }
    given
}

/// A server restarted, with the file changed meanwhile, between the
/// signature a client sends and the delta it reads: the delta is of
/// another version than the journal named. The client notices, installs
/// nothing it cannot verify, and converges on the server's tree.
#[test]
fn a_server_restarted_between_signature_and_delta_is_followed() {
    let export = Dir::new();
    let original = random_bytes(1, 3 << 20);
    export.write("big.bin", &original);
    let edit = |root: &Path, at: usize, byte: u8| {
        let mut data = std::fs::read(root.join("big.bin")).unwrap();
        data[at..at + 100].fill(byte);
        std::fs::write(root.join("big.bin"), data).unwrap();
    };
    let restarted = Restarted::at(&export.path(""), "POST /.intersync/refine/", move |root| {
        edit(root, 2 << 20, 2)
    });
    let clients = Dir::new();
    let wc = clients.path("wc");
    let url = restarted.server.lock().unwrap().url.clone();
    sync_ok(&url, &wc);
    let given = with_contents(BTreeMap::new(), &export.path(""));
    edit(&export.path(""), 1 << 20, 1);
    assert!(crate::client::eventually(20, || {
        crate::util::get(&format!("{url}big.bin"), &[]).body == export.read("big.bin")
    }));
    let mut given = with_contents(given, &export.path(""));
    let mut twice = export.read("big.bin");
    twice[2 << 20..(2 << 20) + 100].fill(2);
    given.get_mut("big.bin").unwrap().insert(twice);
    converges(&restarted.proxy.url, &wc, &export.path(""), &given);
    assert!(restarted.happened(), "no refine was asked for");
}

/// A server restarted between two fetch requests of one clone, with files
/// of later batches edited and removed meanwhile: the versions asked for
/// are gone, which the client takes as news, not as damage.
#[test]
fn a_server_restarted_between_two_batches_of_a_clone_is_followed() {
    let export = Dir::new();
    for i in 0..3000 {
        export.write(&format!("d{}/f{i:04}", i % 10), &random_bytes(i, 2000));
    }
    let given = with_contents(BTreeMap::new(), &export.path(""));
    let restarted = {
        let count = std::sync::atomic::AtomicUsize::new(0);
        Restarted::at(&export.path(""), "POST /.intersync/fetch", move |root| {
            for i in (1000..3000).step_by(7) {
                let name = root.join(format!("d{}/f{i:04}", i % 10));
                match count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) % 2 {
                    0 => std::fs::write(name, random_bytes(10_000 + i as u64, 1500)).unwrap(),
                    _ => std::fs::remove_file(name).unwrap(),
                }
            }
        })
    };
    let given = {
        let mut given = given;
        for i in (1000..3000u64).step_by(7) {
            given
                .entry(format!("d{}/f{i:04}", i % 10))
                .or_default()
                .insert(random_bytes(10_000 + i, 1500));
        }
        given
    };
    let clients = Dir::new();
    converges(
        &restarted.proxy.url,
        &clients.path("wc"),
        &export.path(""),
        &given,
    );
    assert!(restarted.happened(), "no fetch was asked for");
}
