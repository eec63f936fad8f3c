//! HTTP/2: the server speaks it and HTTP/1.1 on one port (cleartext by
//! prior knowledge, TLS by ALPN); a sync whose server says so speaks it
//! once two requests overlap, and HTTP/1.1 while they go one at a time;
//! and a proxy that speaks only HTTP/1.1 is spoken to in HTTP/1.1.

use std::fs;
use std::path::Path;

use crate::client::{sync_ok, tree};
use crate::util::{Dir, Nginx, Server, ok, random_bytes, tool};

/// The server's access log: (peer, request path, protocol) a line.
fn logged(log: &Path) -> Vec<(String, String, String)> {
    crate::util::access_log(log)
        .into_iter()
        .map(|f| (f[1].clone(), f[3].clone(), f[6].clone()))
        .collect()
}

/// `curl` fetching `url` as it is told, printing the HTTP version it spoke.
fn curl_version(url: &str, how: &[&str]) -> String {
    let out = ok(tool("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_version}"])
        .args(how)
        .arg(url));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_server_speaks_http2_and_http1_on_one_port() {
    let export = Dir::new();
    export.write("a.txt", b"hello");
    let server = Server::start(&export.path(""), &[]);
    assert_eq!(
        curl_version(&server.url("a.txt"), &["--http2-prior-knowledge"]),
        "2"
    );
    assert_eq!(curl_version(&server.url("a.txt"), &["--http1.1"]), "1.1");
    let head = ok(tool("curl")
        .args(["-sS", "--http2-prior-knowledge"])
        .arg(server.url(".intersync/head")));
    let head: serde_json::Value = serde_json::from_slice(&head.stdout).unwrap();
    assert_eq!(head["http2"], true, "the head says so: {head}");

    // Over TLS, ALPN chooses; a client that offers only HTTP/1.1 gets it.
    let keys = Dir::new();
    let (cert, key) = crate::util::self_signed(&keys);
    let log = keys.path("access.log");
    let tls = Server::start(
        &export.path(""),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--access-log",
            log.to_str().unwrap(),
        ],
    );
    let cacert = ["--cacert", cert.to_str().unwrap()];
    assert_eq!(
        curl_version(&tls.url("a.txt"), &[&cacert[..], &["--http2"]].concat()),
        "2"
    );
    assert_eq!(
        curl_version(&tls.url("a.txt"), &[&cacert[..], &["--http1.1"]].concat()),
        "1.1"
    );
    // Our own client offers HTTP/2 by ALPN from its first sync.
    let clients = Dir::new();
    let wc = clients.path("wc");
    ok(crate::util::intersync()
        .arg("sync")
        .arg("--cacert")
        .arg(&cert)
        .arg(&tls.url)
        .arg(&wc));
    assert_eq!(fs::read(wc.join("a.txt")).unwrap(), b"hello");
    let lines = logged(&log);
    let synced: Vec<_> = lines
        .iter()
        .filter(|l| l.1.starts_with("/.intersync/"))
        .collect();
    assert!(!synced.is_empty());
    assert!(
        synced.iter().all(|l| l.2 == "HTTP/2.0"),
        "a sync over TLS spoke HTTP/1.1: {synced:?}"
    );
}

/// An export of many small files and a few large ones, and its server
/// with an access log (in the second folder). Its 4,500 small files take
/// two batches, so a clone has two requests in flight at once.
fn export_with_a_log() -> (Dir, Dir, Server) {
    let export = Dir::new();
    for i in 0..200 {
        export.write(&format!("small/{i:03}.txt"), &random_bytes(i, 2_000));
    }
    for i in 0..4_300 {
        export.write(
            &format!("tiny/{}/{i:04}.txt", i % 43),
            &random_bytes(10_000 + i, 60),
        );
    }
    for i in 0..3 {
        export.write(&format!("big/{i}.bin"), &random_bytes(100 + i, 3 << 20));
    }
    let logs = Dir::new();
    let log = logs.path("access.log");
    let server = Server::start(&export.path(""), &["--access-log", log.to_str().unwrap()]);
    (export, logs, server)
}

/// Edits a few small files and the middle of each large one.
fn edit(export: &Dir) {
    for i in (0..200).step_by(20) {
        export.write(
            &format!("small/{i:03}.txt"),
            &random_bytes(1_000 + i, 2_100),
        );
    }
    for i in 0..3 {
        let path = export.path(&format!("big/{i}.bin"));
        let mut bytes = fs::read(&path).unwrap();
        bytes[1 << 20..(1 << 20) + 5_000].copy_from_slice(&random_bytes(7 + i, 5_000));
        fs::write(&path, bytes).unwrap();
    }
    // The server notices by its watcher; wait until its head moves.
    std::thread::sleep(std::time::Duration::from_secs(3));
}

fn peers(lines: &[(String, String, String)]) -> std::collections::BTreeSet<&String> {
    lines.iter().map(|l| &l.0).collect()
}

#[test]
fn requests_one_at_a_time_go_by_http1_and_overlapping_ones_by_http2() {
    let (export, logs, server) = export_with_a_log();
    let log = logs.path("access.log");
    let clients = Dir::new();
    let wc = clients.path("wc");
    sync_ok(&server.url, &wc);
    assert_eq!(tree(&wc), tree(&export.path("")));
    // The clone's first requests go one after another on one HTTP/1.1
    // connection; from the first that overlaps another (the second batch,
    // asked for while the first streams), HTTP/2, on one more connection.
    let clone = logged(&log);
    let first = clone.len();
    let switch = clone
        .iter()
        .position(|l| l.2 == "HTTP/2.0")
        .unwrap_or_else(|| panic!("no request of the clone went by HTTP/2: {clone:?}"));
    let (before, after) = clone.split_at(switch);
    assert!(
        before.len() >= 2 && before.iter().all(|l| l.2 == "HTTP/1.1"),
        "{clone:?}"
    );
    assert!(
        after.iter().all(|l| l.2 == "HTTP/2.0"),
        "HTTP/1.1 after the first HTTP/2 request: {clone:?}"
    );
    assert_eq!(peers(before).len(), 1, "{before:?}");
    assert_eq!(peers(after).len(), 1, "{after:?}");
    // A working copy remembers that the server speaks HTTP/2, but a sync
    // whose requests go one at a time (here, a few edited files) does not
    // pay its preface and frames.
    edit(&export);
    sync_ok(&server.url, &wc);
    assert_eq!(tree(&wc), tree(&export.path("")));
    let second: Vec<_> = logged(&log).into_iter().skip(first).collect();
    assert!(
        second.len() >= 4,
        "the edits took several requests: {second:?}"
    );
    assert!(
        second.iter().all(|l| l.2 == "HTTP/1.1"),
        "the second sync spoke HTTP/2: {second:?}"
    );
    assert_eq!(
        peers(&second).len(),
        1,
        "more than one connection: {second:?}"
    );
    // Nor does a sync with nothing to do: its one request.
    let before = logged(&log).len();
    sync_ok(&server.url, &wc);
    let noop: Vec<_> = logged(&log).into_iter().skip(before).collect();
    assert_eq!(noop.len(), 1, "{noop:?}");
    assert_eq!(noop[0].2, "HTTP/1.1", "{noop:?}");
}

#[test]
fn a_proxy_that_speaks_only_http1_is_spoken_to_in_http1() {
    let (export, _logs, server) = export_with_a_log();
    let clients = Dir::new();
    let wc = clients.path("wc");
    // The origin's head, passed on by nginx (a reverse proxy here: nothing
    // of it is cached), offers HTTP/2; nginx speaks HTTP/1.1 only.
    let proxy = Nginx::cache_in_front_of(&server.url);
    sync_ok(&proxy.url, &wc);
    assert_eq!(tree(&wc), tree(&export.path("")));
    let through = proxy.requests();
    assert!(
        through
            .iter()
            .any(|r| r.starts_with("POST /.intersync/fetch")),
        "the sync did not go through the proxy: {through:?}"
    );
    assert!(
        through.iter().any(|r| r.starts_with("PRI * HTTP/2.0 400")),
        "HTTP/2 was not tried when two requests overlapped: {through:?}"
    );
}
