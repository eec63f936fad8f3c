//! Whole trees in few requests (`POST /.intersync/fetch`): a clone of many
//! small files is a handful of requests, an update of some of them too,
//! and a stream that breaks off or arrives damaged never leaves a file at
//! its name that is not whole and verified; the next sync finishes. Pushes
//! too: many files in one request (`POST /.intersync/push`), each with its
//! own precondition and result.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::thread;

use intersync_protocol::{TreePath, Version, push};

use crate::client::{sync, tree};
use crate::util::{Dir, Server, http, intersync, random_bytes, run};

/// `intersync sync --stats URL DIR`, which must succeed.
#[track_caller]
fn synced(url: &str, dir: &Path) -> (std::process::Output, u64, u64) {
    let (out, sent, received) = sync(url, dir, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out, sent, received)
}

/// `intersync sync URL DIR` that is expected to fail: no figures to read.
fn sync_broken(url: &str, dir: &Path) -> std::process::Output {
    run(intersync().arg("sync").arg(url).arg(dir))
}

/// A tree of `files` small random files in ten folders.
fn small_tree(dir: &Dir, files: usize, seed: u64) -> u64 {
    let mut total = 0;
    for i in 0..files {
        let len = 1024 + (i * 7919) % (19 * 1024);
        dir.write(
            &format!("d{}/f{i:04}.bin", i % 10),
            &random_bytes(seed + i as u64, len),
        );
        total += len as u64;
    }
    total
}

/// The files of `root` but InterSync's state.
fn files(root: &Path) -> BTreeMap<String, Vec<u8>> {
    tree(root)
        .into_iter()
        .filter(|(p, _)| !p.starts_with(".intersync"))
        .collect()
}

/// A TCP proxy in front of a server that can cut every connection once
/// the server has sent `cut` bytes in all (through every connection), or
/// flip the byte at `flip` of that count.
struct Faulty {
    url: String,
    cut: Arc<AtomicU64>,
    flip: Arc<AtomicI64>,
    sent: Arc<AtomicU64>,
}

impl Faulty {
    fn start(upstream: &str) -> Faulty {
        let (listener, url, upstream) = crate::util::listen_in_front_of(upstream);
        let (cut, flip, sent) = (
            Arc::new(AtomicU64::new(u64::MAX)),
            Arc::new(AtomicI64::new(-1)),
            Arc::new(AtomicU64::new(0)),
        );
        let shared = (cut.clone(), flip.clone(), sent.clone());
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                thread::spawn(move || {
                    let _ = std::io::copy(&mut c2, &mut s2);
                    let _ = s2.shutdown(Shutdown::Write);
                });
                let (cut, flip, sent) = (shared.0.clone(), shared.1.clone(), shared.2.clone());
                thread::spawn(move || {
                    let (mut server, mut client) = (server, client);
                    let mut buf = [0u8; 16 * 1024];
                    loop {
                        let n = match server.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let start = sent.fetch_add(n as u64, Ordering::SeqCst);
                        let limit = cut.load(Ordering::SeqCst);
                        let at = flip.load(Ordering::SeqCst);
                        if at >= 0 && (start..start + n as u64).contains(&(at as u64)) {
                            buf[(at as u64 - start) as usize] ^= 0x55;
                        }
                        if start + n as u64 > limit {
                            let keep = limit.saturating_sub(start) as usize;
                            let _ = client.write_all(&buf[..keep]);
                            break;
                        }
                        if client.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = client.shutdown(Shutdown::Both);
                    let _ = server.shutdown(Shutdown::Both);
                });
            }
        });
        Faulty {
            url,
            cut,
            flip,
            sent,
        }
    }

    fn healthy(&self) {
        self.cut.store(u64::MAX, Ordering::SeqCst);
        self.flip.store(-1, Ordering::SeqCst);
    }
}

/// The number of requests `sync --stats` made.
fn requests(out: &std::process::Output) -> u64 {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("HTTP requests:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(u64::MAX)
}

#[test]
fn a_clone_and_an_update_of_many_small_files_take_a_few_requests() {
    let export = Dir::new();
    let data = small_tree(&export, 1500, 1);
    let server = Server::start(&export.path(""), &[]);
    let wc = Dir::new();
    let (out, sent, received) = synced(&server.url, &wc.path(""));
    assert_eq!(files(&wc.path("")), files(&export.path("")));
    // Head, checkpoint or journal, two batches of files.
    assert!(requests(&out) <= 6, "{} requests", requests(&out));
    assert!(
        sent + received < data + data / 50 + 64 * 1024,
        "{} bytes for {data}",
        sent + received
    );
    // A clone names each file by the first bytes of its version (9 bytes
    // an entry), not the whole of it (33).
    assert!(
        sent < 1500 * 12 + 8 * 1024,
        "{sent} bytes sent for 1,500 files"
    );

    // Edit 30 files and add 20: one more round of few requests.
    for i in (0..1500).step_by(50) {
        let name = format!("d{}/f{i:04}.bin", i % 10);
        let mut bytes = std::fs::read(export.path(&name)).unwrap();
        bytes[100] ^= 0xff;
        export.write(&name, &bytes);
    }
    small_tree(&export, 20, 900_000);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let (out, _, received) = synced(&server.url, &wc.path(""));
    assert_eq!(files(&wc.path("")), files(&export.path("")));
    assert!(requests(&out) <= 5, "{} requests", requests(&out));
    // 30 patches of one byte, 20 new files (none over 20 KiB).
    assert!(
        received < 20 * 20 * 1024 + 40_000,
        "{received} bytes received"
    );
}

#[test]
fn a_stream_cut_midway_leaves_only_whole_files_and_the_next_sync_finishes() {
    let export = Dir::new();
    let data = small_tree(&export, 600, 7);
    let server = Server::start(&export.path(""), &[]);
    let want = files(&export.path(""));
    for cut in [data / 5, data / 2, data * 9 / 10] {
        let proxy = Faulty::start(&server.url);
        proxy.cut.store(cut, Ordering::SeqCst);
        let wc = Dir::new();
        let out = sync_broken(&proxy.url, &wc.path(""));
        assert!(!out.status.success(), "a sync cut at {cut} bytes succeeded");
        let got = files(&wc.path(""));
        assert!(got.len() < want.len(), "cut at {cut}: everything arrived");
        for (path, bytes) in &got {
            assert!(!path.contains(".intersync-tmp-"), "{path} left behind");
            assert_eq!(Some(bytes), want.get(path), "{path} is not the server's");
        }
        let had = proxy.sent.load(Ordering::SeqCst);
        proxy.healthy();
        let (_, _, received) = synced(&proxy.url, &wc.path(""));
        assert_eq!(files(&wc.path("")), want);
        // Only the rest came the second time.
        assert!(
            received
                < data - got.values().map(|b| b.len() as u64).sum::<u64>() + data / 20 + 64 * 1024,
            "cut at {cut} ({had} sent): {received} bytes the second time"
        );
    }
}

#[test]
fn a_damaged_stream_never_installs_a_damaged_file() {
    let export = Dir::new();
    let data = small_tree(&export, 300, 11);
    let server = Server::start(&export.path(""), &[]);
    let want = files(&export.path(""));
    for at in [data / 3, data * 2 / 3] {
        let proxy = Faulty::start(&server.url);
        proxy.flip.store(at as i64, Ordering::SeqCst);
        let wc = Dir::new();
        let first = sync_broken(&proxy.url, &wc.path(""));
        for (path, bytes) in files(&wc.path("")) {
            assert_eq!(
                Some(&bytes),
                want.get(&path),
                "{path} was installed damaged"
            );
        }
        proxy.healthy();
        if !first.status.success() {
            synced(&proxy.url, &wc.path(""));
        }
        assert_eq!(files(&wc.path("")), want);
    }
}

#[test]
fn a_thousand_new_files_then_some_edits_go_up_in_a_few_requests() {
    let export = Dir::new();
    small_tree(&export, 50, 3);
    let server = Server::start(&export.path(""), &["--allow-anonymous-writes"]);
    let wc = Dir::new();
    synced(&server.url, &wc.path(""));
    // 1,000 new files in new folders (some nested).
    let mut data = 0;
    for i in 0..1000 {
        let text = format!("file {i}: {}\n", "some text that repeats ".repeat(i % 40));
        data += text.len() as u64;
        wc.write(
            &format!("new{}/sub{}/n{i}.txt", i % 4, i % 3),
            text.as_bytes(),
        );
    }
    let (out, sent, _) = synced(&server.url, &wc.path(""));
    assert_eq!(files(&export.path("")), files(&wc.path("")));
    // Head, the folders, the files, the journal's new records.
    assert!(requests(&out) <= 5, "{} requests", requests(&out));
    // The text went compressed.
    assert!(sent < data / 2, "{sent} bytes sent for {data} of text");
    // 20 small files edited (by a byte: each goes as a delta against the
    // server's signature, all signatures in one request), 5 deleted.
    let mut edited = 0;
    for i in 0..20 {
        let name = format!("d{}/f{i:04}.bin", i % 10);
        let mut bytes = wc.read(&name);
        bytes[7] ^= 0x55;
        edited += bytes.len() as u64;
        wc.write(&name, &bytes);
    }
    for i in 20..25 {
        std::fs::remove_file(wc.path(&format!("d{}/f{i:04}.bin", i % 10))).unwrap();
    }
    let (out, sent, _) = synced(&server.url, &wc.path(""));
    assert_eq!(files(&export.path("")), files(&wc.path("")));
    assert!(requests(&out) <= 6, "{} requests", requests(&out));
    assert!(sent < edited / 4, "{sent} bytes sent for {edited} edited");
    // Another working copy sees them all.
    let other = Dir::new();
    synced(&server.url, &other.path(""));
    assert_eq!(files(&other.path("")), files(&wc.path("")));
}

/// A push body of `entries`, compressed.
fn push_body(entries: &[(push::Entry, &[u8])]) -> Vec<u8> {
    let mut w = push::PushWriter::new(Vec::new()).unwrap();
    for (entry, data) in entries {
        w.entry(entry).unwrap();
        w.data(data).unwrap();
    }
    zstd::encode_all(&w.finish().unwrap()[..], 1).unwrap()
}

fn entry(path: &str, precondition: push::Precondition, content: &[u8]) -> push::Entry {
    push::Entry {
        path: TreePath::new(path).unwrap(),
        precondition,
        form: push::Form::Whole,
        version: Version::of(content),
        size: content.len() as u64,
        mode: Some(0o600),
        mtime_ns: None,
    }
}

#[test]
fn each_file_of_a_push_has_its_own_precondition_and_result() {
    let export = Dir::new();
    export.write("kept", b"the server's");
    export.write("edit", b"old");
    let server = Server::start(&export.path(""), &["--allow-anonymous-writes"]);
    let old = push::Precondition::Version(Version::of(b"old"));
    let mut lie = entry("lie", push::Precondition::Absent, b"announced");
    lie.size = 4;
    let entries: Vec<(push::Entry, &[u8])> = vec![
        (entry("new", push::Precondition::Absent, b"new"), b"new"),
        (entry("kept", push::Precondition::Absent, b"mine"), b"mine"),
        (entry("edit", old, b"newer"), b"newer"),
        (entry("kept2", old, b"x"), b"x"),
        (lie, b"what"),
        (entry("no/folder", push::Precondition::None, b"y"), b"y"),
        (entry("new", push::Precondition::None, b"again"), b"again"),
    ];
    let body = push_body(&entries);
    let headers = [
        ("content-type", push::MEDIA_PUSH),
        ("content-encoding", "zstd"),
    ];
    // Cut anywhere, the body changes nothing.
    for cut in [body.len() / 3, body.len() - 1] {
        let reply = http(
            "POST",
            &server.url(".intersync/push"),
            &headers,
            body[..cut].to_vec(),
            None,
        );
        assert_eq!(reply.status, 400, "{}", reply.text());
        assert!(!export.path("new").exists());
    }
    let reply = http("POST", &server.url(".intersync/push"), &headers, body, None);
    assert_eq!(reply.status, 200, "{}", reply.text());
    let answer: intersync_protocol::BatchResult = serde_json::from_slice(&reply.body).unwrap();
    let statuses: Vec<u16> = answer.results.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [201, 412, 204, 412, 422, 404, 400], "{answer:?}");
    assert_eq!(export.read("new"), b"new");
    assert_eq!(export.read("kept"), b"the server's");
    assert_eq!(export.read("edit"), b"newer");
    assert!(!export.path("lie").exists() && !export.path("kept2").exists());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(export.path("new"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // What was written is journaled: a new working copy gets it.
    let wc = Dir::new();
    synced(&server.url, &wc.path(""));
    assert_eq!(files(&wc.path("")), files(&export.path("")));
    // A read-only export refuses the whole.
    let ro = Server::start(&export.path(""), &[]);
    let body = push_body(&entries[..1]);
    let reply = http("POST", &ro.url(".intersync/push"), &headers, body, None);
    assert_eq!(reply.status, 403);
}
