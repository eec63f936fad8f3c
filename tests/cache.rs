//! Fan-out: a real nginx with `proxy_cache` in front of `intersync serve`,
//! ten working copies syncing through it with `--via-cache`, and the
//! origin's own access log showing that every immutable object (versions,
//! their signatures and signature levels, patches between two versions,
//! checkpoints, packs) crossed from the origin to the cache once.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use crate::util::{Dir, Nginx, Server, intersync, random_bytes};

const CLIENTS: usize = 10;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn serve(root: &Path, port: u16, log: &Path) -> Server {
    Server::start(
        root,
        &[
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--no-watch",
            "--checkpoint-every",
            "8",
            "--access-log",
            log.to_str().unwrap(),
        ],
    )
}

/// Every working copy syncs through the cache at once, as a fleet would.
fn sync_all(url: &str, clients: &Dir) -> Vec<String> {
    let children: Vec<_> = (0..CLIENTS)
        .map(|i| {
            intersync()
                .args(["sync", "--via-cache", "--stats"])
                .arg(url)
                .arg(clients.path(&format!("wc{i}")))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("start intersync sync")
        })
        .collect();
    children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "sync failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
        .collect()
}

fn assert_same_tree(a: &Path, b: &Path) {
    let mut names = Vec::new();
    for entry in walk(a) {
        let rel = entry.strip_prefix(a).unwrap().to_owned();
        if rel.starts_with(".intersync") {
            continue;
        }
        if entry.is_file() {
            assert_eq!(
                fs::read(&entry).unwrap(),
                fs::read(b.join(&rel)).unwrap_or_default(),
                "{} differs",
                rel.display()
            );
        }
        names.push(rel);
    }
    let others = walk(b)
        .into_iter()
        .filter(|p| !p.strip_prefix(b).unwrap().starts_with(".intersync"))
        .count();
    assert_eq!(names.len(), others, "{} has other files", b.display());
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

/// `(method, path, status)` of every request the origin logged.
fn origin_requests(log: &Path) -> Vec<(String, String, u16)> {
    crate::util::access_log(log)
        .into_iter()
        .map(|f| (f[2].clone(), f[3].clone(), f[4].parse().unwrap()))
        .collect()
}

fn immutable(path: &str) -> bool {
    [
        "/.intersync/version/",
        "/.intersync/sig/",
        "/.intersync/patch/",
        "/.intersync/checkpoints/",
    ]
    .iter()
    .any(|p| path.starts_with(p))
        || (path.starts_with("/.intersync/packs/") && path.ends_with(".pack"))
}

/// The immutable objects `requests` fetched, by path.
fn immutable_fetched(requests: &[(String, String, u16)]) -> Vec<&str> {
    requests
        .iter()
        .filter(|(_, p, s)| immutable(p) && *s < 300)
        .map(|(_, p, _)| p.as_str())
        .collect()
}

#[test]
fn ten_working_copies_through_nginx_fetch_each_immutable_object_from_the_origin_once() {
    let origin = Dir::new();
    let root = origin.path("export");
    fs::create_dir_all(root.join("docs")).unwrap();
    fs::write(root.join("big.bin"), random_bytes(31, 3 << 20)).unwrap();
    for i in 0..12 {
        fs::write(
            root.join(format!("docs/note{i}.txt")),
            format!("note {i}\n").repeat(50 + i),
        )
        .unwrap();
    }
    fs::write(root.join("docs/copy.bin"), random_bytes(31, 3 << 20)).unwrap();
    let log = origin.path("access.log");
    let port = free_port();
    let server = serve(&root, port, &log);
    let nginx = Nginx::cache_in_front_of(&server.url);
    let clients = Dir::new();

    sync_all(&nginx.url, &clients);
    for i in 0..CLIENTS {
        assert_same_tree(&root, &clients.path(&format!("wc{i}")));
    }

    // A change on the origin: scattered edits of the big file, a new file,
    // a rename and a delete; journaled by the scan when the server restarts.
    drop(server);
    let mut data = fs::read(root.join("big.bin")).unwrap();
    for k in 0..8 {
        let at = 200_000 + k * 350_000;
        data[at..at + 100].copy_from_slice(&[k as u8; 100]);
    }
    fs::write(root.join("big.bin"), &data).unwrap();
    fs::write(root.join("docs/new.txt"), random_bytes(32, 100_000)).unwrap();
    fs::rename(root.join("docs/note3.txt"), root.join("note3-moved.txt")).unwrap();
    fs::remove_file(root.join("docs/note4.txt")).unwrap();
    let before = origin_requests(&log).len();
    let _server = serve(&root, port, &log);

    let outputs = sync_all(&nginx.url, &clients);
    for (i, out) in outputs.iter().enumerate() {
        assert_same_tree(&root, &clients.path(&format!("wc{i}")));
        assert!(
            out.contains("1 patches"),
            "big.bin should be updated by a patch from the version every copy holds:\n{out}"
        );
    }

    let requests = origin_requests(&log);
    let mut fetched: HashMap<&str, usize> = HashMap::new();
    for (method, path, status) in &requests {
        assert_ne!(method, "POST", "a cacheable read path never POSTs");
        if immutable(path) && *status < 300 {
            *fetched.entry(path.as_str()).or_default() += 1;
        }
    }
    let twice: Vec<_> = fetched.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "immutable objects fetched from the origin more than once: {twice:?}"
    );
    let after = immutable_fetched(&requests[before..]);
    // One patch for big.bin (no signature, no ranges), docs/new.txt whole:
    // each once.
    let count = |kind: &str| after.iter().filter(|p| p.contains(kind)).count();
    assert_eq!(count("/patch/"), 1, "{after:?}");
    assert_eq!(count("/sig/"), 0, "{after:?}");
    assert_eq!(count("/version/"), 1, "{after:?}");
    // The head is not cacheable: every client asked the origin itself.
    let heads = requests[before..]
        .iter()
        .filter(|(_, p, _)| p.starts_with("/.intersync/head"))
        .count();
    assert!(heads >= CLIENTS, "{heads} head requests");
    let hits = nginx
        .requests()
        .iter()
        .filter(|l| l.ends_with(" HIT"))
        .count();
    assert!(
        hits >= 2 * (CLIENTS - 1),
        "the cache answered only {hits} requests"
    );

    // The origin forgets the versions it kept (a new machine, an evicted
    // store) and big.bin changes again: no patch, so the copies take the
    // signature levels, coarse whole and fine by ranges, and the missing
    // bytes by ranges, all cacheable; each object still crosses once.
    drop(_server);
    fs::remove_dir_all(root.join(".intersync/versions")).unwrap();
    // 48 edits: the coarse blocks they spoil (48 or more of 4 KiB) cost
    // more than the fine records and a round trip (100 KB), so the fine
    // level is read.
    for k in 0..48 {
        let at = 100_000 + k * 60_000;
        data[at..at + 100].copy_from_slice(&[k as u8 + 50; 100]);
    }
    fs::write(root.join("big.bin"), &data).unwrap();
    let before = origin_requests(&log).len();
    let _server = serve(&root, port, &log);
    for out in sync_all(&nginx.url, &clients) {
        assert!(out.contains("1 by blocks and ranges"), "{out}");
    }
    for i in 0..CLIENTS {
        assert_same_tree(&root, &clients.path(&format!("wc{i}")));
    }
    let requests = origin_requests(&log);
    let after = immutable_fetched(&requests[before..]);
    let count = |kind: &str| after.iter().filter(|p| p.contains(kind)).count();
    assert_eq!(count(".coarse"), 1, "{after:?}");
    assert_eq!(count(".fine"), 1, "{after:?}");
    assert_eq!(count("/version/"), 1, "{after:?}");
    assert_eq!(after.len(), 3, "{after:?}");
}

/// A tree of many small files through the cache comes in packs: the first
/// copy's request for the list has the origin write them, every pack
/// crosses from the origin to the cache once however many copies clone,
/// and no copy asks the origin for the files one by one.
#[test]
fn many_small_files_through_nginx_come_in_packs_fetched_from_the_origin_once() {
    let origin = Dir::new();
    let root = origin.path("export");
    for i in 0..300 {
        let dir = root.join(format!("d{}", i % 6));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join(format!("f{i:03}.txt")),
            format!("line {i} of a small file\n").repeat(40 + i % 30),
        )
        .unwrap();
    }
    let log = origin.path("access.log");
    let server = serve(&root, free_port(), &log);
    let nginx = Nginx::cache_in_front_of(&server.url);
    let clients = Dir::new();
    sync_all(&nginx.url, &clients);
    for i in 0..CLIENTS {
        assert_same_tree(&root, &clients.path(&format!("wc{i}")));
    }
    let requests = origin_requests(&log);
    let mut packs: HashMap<&str, usize> = HashMap::new();
    for (_, path, status) in &requests {
        if path.ends_with(".pack") && *status < 300 {
            *packs.entry(path.as_str()).or_default() += 1;
        }
    }
    assert!(
        !packs.is_empty(),
        "no pack was read in {} requests",
        requests.len()
    );
    assert!(
        packs.values().all(|&n| n == 1),
        "packs fetched more than once: {packs:?}"
    );
    let one_by_one = requests
        .iter()
        .filter(|(_, p, _)| p.starts_with("/d") || p.starts_with("/.intersync/version/"))
        .count();
    assert_eq!(one_by_one, 0, "files asked of the origin one by one");
}
