//! `intersync serve` as a real process on 127.0.0.1:0, checked endpoint by
//! endpoint with a real HTTP client (and over TLS with a generated
//! certificate): files, ranges and conditions, the head and its long-poll,
//! KML segments, signatures, deltas, writes with preconditions, batches,
//! auth, path escapes, edits behind the server's back, and SIGKILL.

use std::fs;
use std::path::Path;
use std::time::Duration;

use intersync::delta::{Signature, SignatureOptions, apply, write_delta};
use intersync_protocol::kml::{KmlRecord, Op, SegmentReader};
use intersync_protocol::signature::SignatureFormat;
use intersync_protocol::{TreePath, Version};

use crate::util::{Dir, Server, get, http, random_bytes};

fn version_of(bytes: &[u8]) -> Version {
    Version::of(bytes)
}

fn export_with_files() -> (Dir, Vec<u8>) {
    let dir = Dir::new();
    let big = random_bytes(1, 300_000);
    fs::create_dir(dir.path("docs")).unwrap();
    fs::write(dir.path("docs/big.bin"), &big).unwrap();
    fs::write(dir.path("hello.txt"), b"hello, world\n").unwrap();
    (dir, big)
}

/// Every record the server has journaled, read through the API.
pub(crate) fn journal(server: &Server) -> Vec<KmlRecord> {
    let head: serde_json::Value =
        serde_json::from_slice(&get(&server.url(".intersync/head"), &[]).body).unwrap();
    let mut records = Vec::new();
    for seg in head["segments"].as_array().unwrap() {
        let bytes = get(
            &server.url(&format!(".intersync/kml/{}", seg["name"].as_str().unwrap())),
            &[],
        )
        .body;
        records.extend(SegmentReader::new(&bytes).unwrap().map(Result::unwrap));
    }
    records
}

pub(crate) fn ops(server: &Server) -> Vec<Op> {
    journal(server).into_iter().map(|r| r.op).collect()
}

pub(crate) fn p(s: &str) -> TreePath {
    TreePath::new(s).unwrap()
}

#[test]
fn files_ranges_and_conditions() {
    let (dir, big) = export_with_files();
    let server = Server::start(&dir.path(""), &[]);
    let url = server.url("docs/big.bin");
    let whole = get(&url, &[]);
    assert_eq!(whole.status, 200);
    assert_eq!(whole.body, big);
    let etag = version_of(&big).etag();
    assert_eq!(whole.header("etag"), etag);
    assert!(!whole.header("last-modified").is_empty());

    let head = http("HEAD", &url, &[], vec![], None);
    assert_eq!(
        (head.status, head.header("content-length")),
        (200, "300000")
    );
    assert!(head.body.is_empty());

    let one = get(&url, &[("range", "bytes=1000-1999")]);
    assert_eq!(one.status, 206);
    assert_eq!(one.header("content-range"), "bytes 1000-1999/300000");
    assert_eq!(one.body, &big[1000..2000]);

    let suffix = get(&url, &[("range", "bytes=-10")]);
    assert_eq!(suffix.body, &big[big.len() - 10..]);

    let multi = get(&url, &[("range", "bytes=0-9,100000-100009")]);
    assert_eq!(multi.status, 206);
    assert!(
        multi
            .header("content-type")
            .starts_with("multipart/byteranges; boundary=")
    );
    let text = multi.body.clone();
    assert!(contains(&text, b"Content-Range: bytes 0-9/300000"));
    assert!(contains(&text, &big[0..10]));
    assert!(contains(
        &text,
        b"Content-Range: bytes 100000-100009/300000"
    ));
    assert!(contains(&text, &big[100000..100010]));

    let unsatisfiable = get(&url, &[("range", "bytes=400000-")]);
    assert_eq!(unsatisfiable.status, 416);
    assert_eq!(unsatisfiable.header("content-range"), "bytes */300000");

    assert_eq!(get(&url, &[("if-none-match", &etag)]).status, 304);
    let stale = get(&url, &[("range", "bytes=0-9"), ("if-range", "\"b3-00\"")]);
    assert_eq!(
        (stale.status, stale.body.len()),
        (200, 300_000),
        "If-Range on a stale tag gives the whole file"
    );
    let fresh = get(&url, &[("range", "bytes=0-9"), ("if-range", &etag)]);
    assert_eq!((fresh.status, fresh.body.len()), (206, 10));

    assert_eq!(
        get(&server.url("docs"), &[]).status,
        404,
        "a folder is not a file"
    );
    assert_eq!(get(&server.url("missing"), &[]).status, 404);
}

#[test]
fn versions_at_immutable_urls_are_never_other_bytes() {
    let (dir, big) = export_with_files();
    let server = Server::start(&dir.path(""), &["--no-watch"]);
    let url = server.url(&format!(".intersync/version/{}", version_of(&big)));
    let whole = get(&url, &[]);
    assert_eq!(whole.status, 200);
    assert_eq!(whole.body, big);
    assert_eq!(whole.header("etag"), version_of(&big).etag());
    assert_eq!(
        whole.header("cache-control"),
        "public, max-age=31536000, immutable"
    );
    let one = get(&url, &[("range", "bytes=10-19")]);
    assert_eq!((one.status, &one.body[..]), (206, &big[10..20]));
    assert_eq!(
        get(&server.url(".intersync/version/00"), &[]).status,
        400,
        "not a version"
    );
    let absent = version_of(b"no file has this");
    assert_eq!(
        get(&server.url(&format!(".intersync/version/{absent}")), &[]).status,
        404
    );

    // Rewritten in place, same size, and not journaled yet (no watcher):
    // the stat no longer vouches, the bytes do not hash to the version.
    let mut changed = big.clone();
    changed[1000] ^= 1;
    fs::write(dir.path("docs/big.bin"), &changed).unwrap();
    let stale = get(&url, &[]);
    assert_eq!(stale.status, 404, "{}", stale.text());
    assert_eq!(get(&url, &[("range", "bytes=10-19")]).status, 404);
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn head_segments_and_long_poll() {
    let (dir, _) = export_with_files();
    let server = Server::start(&dir.path(""), &["--allow-anonymous-writes"]);
    let head = get(&server.url(".intersync/head"), &[]);
    assert_eq!(head.status, 200);
    let doc: serde_json::Value = serde_json::from_slice(&head.body).unwrap();
    assert_eq!(doc["format"], 1);
    assert_eq!(
        doc["latest_seq"], 5,
        "mkdir, and create + write for each of two files"
    );
    // Every sync reads a head: it names the server in its body only, and
    // says nothing of a checkpoint when there is none.
    assert!(doc["server_id"].is_string(), "{doc}");
    assert_eq!(head.header("x-intersync-server"), "", "{:?}", head.headers);
    assert!(doc.get("checkpoint").is_none(), "{doc}");
    let tag = head.header("etag").to_owned();
    let unchanged = get(&server.url(".intersync/head"), &[("if-none-match", &tag)]);
    assert_eq!(unchanged.status, 304);
    assert_eq!(
        unchanged.header("x-intersync-server"),
        doc["server_id"].as_str().unwrap(),
        "a 304 has no body to say it"
    );

    // The open segment read from an offset, as a client tailing it does.
    let name = doc["segments"][0]["name"].as_str().unwrap().to_owned();
    let seg_url = server.url(&format!(".intersync/kml/{name}"));
    let all = get(&seg_url, &[]).body;
    let tail = get(&seg_url, &[("range", "bytes=16-")]);
    assert_eq!(tail.status, 206);
    assert_eq!(tail.body, &all[16..]);
    let (first, _) = KmlRecord::decode(&tail.body, 16).unwrap();
    assert_eq!(first.seq, 1);

    // A long-poll held open returns as soon as something changes.
    let url = server.url(".intersync/head?wait=30");
    let waiter = std::thread::spawn(move || get(&url, &[("if-none-match", &tag)]));
    std::thread::sleep(Duration::from_millis(300));
    let put = http(
        "PUT",
        &server.url("new.txt"),
        &[("if-none-match", "*")],
        b"new".to_vec(),
        None,
    );
    assert_eq!(put.status, 201, "{}", put.text());
    let woken = waiter.join().unwrap();
    assert_eq!(woken.status, 200);
    let doc: serde_json::Value = serde_json::from_slice(&woken.body).unwrap();
    assert_eq!(doc["latest_seq"], 7);
    // And one with nothing to report times out into a 304.
    let tag = woken.header("etag").to_owned();
    let idle = get(
        &server.url(".intersync/head?wait=1"),
        &[("if-none-match", &tag)],
    );
    assert_eq!(idle.status, 304);

    for bad in ["zzzz.kml", "../index.db", "0000000000000001.KML"] {
        assert_eq!(
            get(&server.url(&format!(".intersync/kml/{bad}")), &[]).status,
            404,
            "{bad}"
        );
    }
    for kept in ["index.db", "index.db-wal", "node-id"] {
        assert!(
            dir.path(&format!(".intersync/{kept}")).exists(),
            "{kept} is there to be refused"
        );
        assert_eq!(
            get(&server.url(&format!(".intersync/{kept}")), &[]).status,
            404,
            "{kept}"
        );
    }
}

#[test]
fn signature_levels_of_large_versions_are_served_with_ranges() {
    let dir = Dir::new();
    let big = random_bytes(77, 3 << 20);
    fs::write(dir.path("big.bin"), &big).unwrap();
    fs::write(dir.path("small.txt"), b"small").unwrap();
    let server = Server::start(&dir.path(""), &[]);
    let (coarse, fine, v) = intersync::delta::refine::static_levels(&big);
    let url = |name: &str| server.url(&format!(".intersync/sig/{name}"));
    let got = get(&url(&format!("{v}.coarse")), &[]);
    assert_eq!(got.status, 200);
    assert!(got.header("cache-control").contains("immutable"));
    assert_eq!(got.body, coarse.as_bytes());
    // The fine level is read by ranges: a header and some records.
    let part = get(
        &url(&format!("{v}.fine")),
        &[("range", "bytes=0-11,1200-1299")],
    );
    assert_eq!(part.status, 206);
    assert!(
        part.header("content-type")
            .starts_with("multipart/byteranges")
    );
    let whole = get(&url(&format!("{v}.fine")), &[]);
    assert_eq!(whole.body, fine.as_bytes());
    // What the server made is what `intersync export` writes.
    assert_eq!(
        fs::read(dir.path(&format!(".intersync/sig/{v}.fine"))).unwrap(),
        fine.as_bytes()
    );
    let small = version_of(b"small");
    assert_eq!(get(&url(&format!("{small}.coarse")), &[]).status, 404);
    assert_eq!(
        get(&url(&format!("{}.fine", "0".repeat(64))), &[]).status,
        404
    );
    assert_eq!(get(&url(&format!("{v}.medium")), &[]).status, 400);
    assert_eq!(get(&url("zz.coarse"), &[]).status, 400);
}

#[test]
fn signatures_and_deltas() {
    let (dir, big) = export_with_files();
    let server = Server::start(&dir.path(""), &[]);
    let v = version_of(&big);
    let sig = get(&server.url(&format!(".intersync/sig/{v}")), &[]);
    assert_eq!(sig.status, 200);
    assert!(sig.header("cache-control").contains("immutable"));
    let options = SignatureOptions::for_len(big.len() as u64, SignatureFormat::Md4Rollsum);
    assert_eq!(sig.body, Signature::calculate(&big, options).0.as_bytes());
    assert_eq!(
        get(
            &server.url(&format!(".intersync/sig/{}", "0".repeat(64))),
            &[]
        )
        .status,
        404
    );

    // A client holding an older copy asks for a delta with its signature.
    let mut old = big.clone();
    old[5000..5100].copy_from_slice(&random_bytes(9, 100));
    old.truncate(250_000);
    let (old_sig, _) = Signature::calculate(
        &old,
        SignatureOptions::for_len(old.len() as u64, SignatureFormat::Md4Rollsum),
    );
    let reply = http(
        "POST",
        &server.url(".intersync/delta/docs/big.bin"),
        &[],
        old_sig.as_bytes().to_vec(),
        None,
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("etag"), v.etag());
    assert_eq!(reply.header("x-intersync-size"), "300000");
    assert!(
        reply.body.len() < 70_000,
        "delta of {} bytes",
        reply.body.len()
    );
    let mut rebuilt = Vec::new();
    apply(&old, &reply.body, &mut rebuilt, big.len() as u64).unwrap();
    assert_eq!(rebuilt, big);

    let garbage = http(
        "POST",
        &server.url(".intersync/delta/docs/big.bin"),
        &[],
        b"not a signature".to_vec(),
        None,
    );
    assert_eq!(garbage.status, 400);
    assert!(
        garbage.text().contains("bad signature"),
        "{}",
        garbage.text()
    );
}

#[test]
fn writes_with_preconditions() {
    let (dir, big) = export_with_files();
    let server = Server::start(&dir.path(""), &["--allow-anonymous-writes"]);
    let url = server.url("docs/new.bin");
    let body = random_bytes(2, 50_000);
    let created = http("PUT", &url, &[("if-none-match", "*")], body.clone(), None);
    assert_eq!(created.status, 201, "{}", created.text());
    assert_eq!(created.header("etag"), version_of(&body).etag());
    assert_eq!(fs::read(dir.path("docs/new.bin")).unwrap(), body);
    let again = http(
        "PUT",
        &url,
        &[("if-none-match", "*")],
        b"other".to_vec(),
        None,
    );
    assert_eq!(again.status, 412);
    let stale = http(
        "PUT",
        &url,
        &[("if-match", &version_of(b"nope").etag())],
        b"other".to_vec(),
        None,
    );
    assert_eq!(stale.status, 412);
    assert_eq!(
        fs::read(dir.path("docs/new.bin")).unwrap(),
        body,
        "a failed precondition changes nothing"
    );

    // A delta against the current version, announced result and size.
    let big_url = server.url("docs/big.bin");
    let mut edited = big.clone();
    edited[100..200].copy_from_slice(&[7; 100]);
    let sig = get(
        &server.url(&format!(".intersync/sig/{}", version_of(&big))),
        &[],
    )
    .body;
    let sig = Signature::from_bytes(sig).unwrap();
    let mut delta = Vec::new();
    write_delta(sig.view(), &edited, &mut delta).unwrap();
    let size = edited.len().to_string();
    let new_v = version_of(&edited).to_string();
    let base = version_of(&big).etag();
    let delta_headers = [
        ("content-type", "application/x-librsync-delta"),
        ("if-match", base.as_str()),
        ("x-intersync-version", new_v.as_str()),
        ("x-intersync-size", size.as_str()),
    ];
    // Announcing the wrong result installs nothing.
    let mut lying = delta_headers;
    let wrong = "ab".repeat(32);
    lying[2].1 = &wrong;
    assert_eq!(
        http("PUT", &big_url, &lying, delta.clone(), None).status,
        422
    );
    assert_eq!(fs::read(dir.path("docs/big.bin")).unwrap(), big);
    // A corrupt delta is refused.
    let mut corrupt = delta.clone();
    corrupt.truncate(corrupt.len() - 1);
    let refused = http("PUT", &big_url, &delta_headers, corrupt, None);
    assert_eq!(refused.status, 400, "{}", refused.text());
    let applied = http("PUT", &big_url, &delta_headers, delta.clone(), None);
    assert_eq!(applied.status, 204, "{}", applied.text());
    assert_eq!(applied.header("etag"), version_of(&edited).etag());
    assert_eq!(fs::read(dir.path("docs/big.bin")).unwrap(), edited);
    // The same delta again: its base is gone.
    assert_eq!(
        http("PUT", &big_url, &delta_headers, delta, None).status,
        412
    );
    // No temporary file is left anywhere.
    let strays: Vec<_> = fs::read_dir(dir.path("docs"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".intersync-tmp")
        })
        .collect();
    assert!(strays.is_empty(), "{strays:?}");
    assert_eq!(
        http("PUT", &server.url("nowhere/x"), &[], b"x".to_vec(), None).status,
        409
    );

    let journaled = ops(&server);
    assert!(journaled.contains(&Op::Create {
        path: p("docs/new.bin"),
        mode: 0o644
    }));
    assert!(journaled.iter().any(|o| matches!(o, Op::Write { path, version, .. } if path == &p("docs/big.bin") && *version == version_of(&edited))));
}

#[test]
fn batched_operations() {
    let (dir, _) = export_with_files();
    let server = Server::start(&dir.path(""), &["--allow-anonymous-writes"]);
    let hello_v = version_of(b"hello, world\n").etag();
    let batch = serde_json::json!({"ops": [
        {"op": "mkdir", "path": "music", "mode": 448},
        {"op": "rename", "from": "hello.txt", "to": "music/hello.txt", "if_match": hello_v},
        {"op": "symlink", "path": "latest", "target": "music/hello.txt"},
        {"op": "unlink", "path": "docs/big.bin", "if_match": version_of(b"stale").etag()},
        {"op": "rmdir", "path": "docs"},
        {"op": "setattr", "path": "music/hello.txt", "mode": 384, "mtime_ns": 1_000_000_000_000_000_000i64},
        {"op": "mkdir", "path": ".intersync/evil"}
    ]});
    let reply = http(
        "POST",
        &server.url(".intersync/ops"),
        &[],
        batch.to_string().into_bytes(),
        None,
    );
    // The last op has a forbidden path, which fails the whole batch's parse.
    assert_eq!(reply.status, 400, "{}", reply.text());
    let mut batch = batch;
    batch["ops"].as_array_mut().unwrap().pop();
    let reply = http(
        "POST",
        &server.url(".intersync/ops"),
        &[],
        batch.to_string().into_bytes(),
        None,
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    let result: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    let statuses: Vec<u64> = result["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [200, 200, 200, 412, 409, 200]);
    assert!(dir.path("music/hello.txt").exists());
    assert!(
        dir.path("docs/big.bin").exists(),
        "the stale unlink did nothing"
    );
    assert_eq!(
        fs::read_link(dir.path("latest")).unwrap(),
        Path::new("music/hello.txt")
    );
    let journaled = ops(&server);
    assert!(journaled.contains(&Op::Rename {
        from: p("hello.txt"),
        to: p("music/hello.txt")
    }));
    assert!(!journaled.iter().any(|o| matches!(o, Op::Unlink { .. })));
}

#[test]
fn auth_and_read_only() {
    let (dir, _) = export_with_files();
    let read_only = Server::start(&dir.path(""), &[]);
    assert_eq!(get(&read_only.url("hello.txt"), &[]).status, 200);
    assert_eq!(
        http("PUT", &read_only.url("x"), &[], b"x".to_vec(), None).status,
        403
    );
    assert_eq!(
        http(
            "POST",
            &read_only.url(".intersync/ops"),
            &[],
            b"{\"ops\":[]}".to_vec(),
            None
        )
        .status,
        403
    );
    drop(read_only);

    let tokens = Dir::new();
    let token_file = tokens.write("token", b"s3cret-token\n");
    let guarded = Server::start(
        &dir.path(""),
        &["--token-file", token_file.to_str().unwrap()],
    );
    let none = get(&guarded.url("hello.txt"), &[]);
    assert_eq!(none.status, 401);
    assert_eq!(none.header("www-authenticate"), "Bearer");
    assert_eq!(
        get(
            &guarded.url("hello.txt"),
            &[("authorization", "Bearer wrong")]
        )
        .status,
        403
    );
    assert_eq!(get(&guarded.url(".intersync/head"), &[]).status, 401);
    let ok = get(
        &guarded.url("hello.txt"),
        &[("authorization", "Bearer s3cret-token")],
    );
    assert_eq!(
        (ok.status, ok.body.as_slice()),
        (200, &b"hello, world\n"[..])
    );
    let put = http(
        "PUT",
        &guarded.url("x"),
        &[("authorization", "Bearer s3cret-token")],
        b"x".to_vec(),
        None,
    );
    assert_eq!(put.status, 201, "a token allows writes");
}

#[test]
fn paths_cannot_escape() {
    let (dir, _) = export_with_files();
    let outside = Dir::new();
    outside.write("secret", b"top secret");
    std::os::unix::fs::symlink(outside.path("secret"), dir.path("link-out")).unwrap();
    std::os::unix::fs::symlink(outside.path(""), dir.path("dir-out")).unwrap();
    let server = Server::start(&dir.path(""), &["--allow-anonymous-writes"]);
    for path in [
        "../etc/passwd",
        "%2e%2e/%2e%2e/etc/passwd",
        "docs/%2E%2E/%2E%2E/etc/passwd",
        "docs/./big.bin",
        "docs//big.bin",
        "%2fetc/passwd",
        "link-out",
        "dir-out/secret",
        ".intersync/node-id",
        "%2eintersync/node-id",
    ] {
        let reply = get(&server.url(path), &[]);
        assert!(
            (400..500).contains(&reply.status),
            "{path}: {}",
            reply.status
        );
        assert!(!contains(&reply.body, b"top secret"), "{path}");
        let put = http("PUT", &server.url(path), &[], b"pwned".to_vec(), None);
        assert!(
            (400..500).contains(&put.status),
            "PUT {path}: {}",
            put.status
        );
    }
    assert_eq!(fs::read(outside.path("secret")).unwrap(), b"top secret");
    assert!(!outside.path("pwned").exists());
}

#[test]
fn tls_with_a_generated_certificate() {
    let (dir, _) = export_with_files();
    let certs = Dir::new();
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = certs.write("cert.pem", generated.cert.pem().as_bytes());
    let key = certs.write("key.pem", generated.signing_key.serialize_pem().as_bytes());
    let server = Server::start(
        &dir.path(""),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(generated.cert.der().clone()).unwrap();
    let reply = http("GET", &server.url("hello.txt"), &[], vec![], Some(&roots));
    assert_eq!(
        (reply.status, reply.body.as_slice()),
        (200, &b"hello, world\n"[..])
    );
}

/// Polls until `check` passes or five seconds go by.
fn eventually(mut check: impl FnMut() -> bool) -> bool {
    for _ in 0..100 {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn edits_behind_the_servers_back_are_journaled() {
    let (dir, _) = export_with_files();
    let server = Server::start(&dir.path(""), &[]);
    let before = journal(&server).len();
    fs::write(dir.path("docs/notes.txt"), b"written by another program").unwrap();
    fs::rename(dir.path("docs/big.bin"), dir.path("big-moved.bin")).unwrap();
    fs::remove_file(dir.path("hello.txt")).unwrap();
    assert!(
        eventually(|| {
            let ops = ops(&server);
            ops.contains(&Op::Rename {
                from: p("docs/big.bin"),
                to: p("big-moved.bin"),
            }) && ops.contains(&Op::Unlink {
                path: p("hello.txt"),
            }) && ops
                .iter()
                .any(|o| matches!(o, Op::Write { path, .. } if path == &p("docs/notes.txt")))
        }),
        "watcher did not journal the edits: {:?}",
        &ops(&server)[before..]
    );
    // The rename was a rename, not a delete and a create of 300 KB.
    let after = &ops(&server)[before..];
    assert!(
        !after
            .iter()
            .any(|o| matches!(o, Op::Unlink { path } if path == &p("docs/big.bin"))),
        "{after:?}"
    );
    assert_eq!(get(&server.url("big-moved.bin"), &[]).status, 200);
    assert_eq!(get(&server.url("hello.txt"), &[]).status, 404);
}

#[test]
fn sigkill_loses_no_acknowledged_write() {
    let dir = Dir::new();
    fs::write(dir.path("seed"), b"seed").unwrap();
    let server = Server::start(&dir.path(""), &["--allow-anonymous-writes"]);
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let body = random_bytes(100 + i, 20_000);
        let url = server.url(&format!("f{i}"));
        assert_eq!(http("PUT", &url, &[], body.clone(), None).status, 201);
        acknowledged.push((format!("f{i}"), body));
    }
    // Kill it in the middle of receiving a large body.
    let big_url = server.url("half-written");
    let uploader = std::thread::spawn(move || {
        use std::io::Write;
        let addr = big_url
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let header = "PUT /half-written HTTP/1.1\r\nhost: x\r\ncontent-length: 50000000\r\n\r\n";
        let _ = s.write_all(header.as_bytes());
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..20 {
            if s.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    server.kill();
    let _ = uploader.join();
    assert!(
        !dir.path("half-written").exists(),
        "a half-written file at a real path"
    );

    let restarted = Server::start(&dir.path(""), &[]);
    for (name, body) in &acknowledged {
        let reply = get(&restarted.url(name), &[]);
        assert_eq!(reply.status, 200, "{name}");
        assert_eq!(&reply.body, body, "{name}");
    }
    let journaled = ops(&restarted);
    for (name, body) in &acknowledged {
        assert!(journaled.iter().any(|o| matches!(o, Op::Write { path, version, .. } if path.as_str() == name && *version == version_of(body))), "{name}");
    }
    // The temporary file the crash left is neither journaled nor kept.
    assert!(
        !journaled
            .iter()
            .any(|o| o.path().as_str().contains("intersync-tmp"))
    );
    let strays: Vec<_> = fs::read_dir(dir.path(""))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".intersync-tmp")
        })
        .collect();
    assert!(strays.is_empty(), "{strays:?}");
}

#[test]
fn checkpoints_let_new_clients_skip_history() {
    let dir = Dir::new();
    let server = Server::start(
        &dir.path(""),
        &[
            "--allow-anonymous-writes",
            "--checkpoint-every",
            "10",
            "--segment-bytes",
            "300",
        ],
    );
    for i in 0..12 {
        let put = http(
            "PUT",
            &server.url(&format!("f{i}")),
            &[],
            vec![i as u8; 10],
            None,
        );
        assert_eq!(put.status, 201);
    }
    let head: serde_json::Value =
        serde_json::from_slice(&get(&server.url(".intersync/head"), &[]).body).unwrap();
    let checkpoint = &head["checkpoint"];
    let seq = checkpoint["seq"]
        .as_u64()
        .expect("a checkpoint was written");
    assert!(seq >= 10, "{head}");
    // Sealed segments wholly before the checkpoint are gone from the head.
    let first = head["segments"][0]["first_seq"].as_u64().unwrap();
    assert!(first > 1, "{head}");
    let name = checkpoint["name"].as_str().unwrap();
    let reply = get(&server.url(&format!(".intersync/checkpoints/{name}")), &[]);
    assert_eq!(reply.status, 200);
    assert!(reply.header("cache-control").contains("immutable"));
    // Its records rebuild the tree: every file written before it.
    let files: Vec<String> = SegmentReader::new(&reply.body)
        .unwrap()
        .map(Result::unwrap)
        .filter_map(|r| match r.op {
            Op::Write { path, .. } => Some(path.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(files.len() as u64, seq / 2, "{files:?}");
    // Asked for zstd, it comes as one frame of the same bytes, with an
    // ETag of its own; a range, or `q=0`, gets the bytes as they are.
    let zstd = get(
        &server.url(&format!(".intersync/checkpoints/{name}")),
        &[("accept-encoding", "gzip, zstd")],
    );
    assert_eq!(zstd.header("content-encoding"), "zstd");
    assert_eq!(zstd.header("vary"), "accept-encoding");
    assert_ne!(zstd.header("etag"), reply.header("etag"));
    assert_eq!(zstd::decode_all(&zstd.body[..]).unwrap(), reply.body);
    assert!(
        zstd.body.len() < reply.body.len() / 2,
        "{} bytes",
        zstd.body.len()
    );
    for headers in [
        &[("accept-encoding", "zstd;q=0")][..],
        &[("accept-encoding", "zstd"), ("range", "bytes=0-")][..],
    ] {
        let plain = get(
            &server.url(&format!(".intersync/checkpoints/{name}")),
            headers,
        );
        assert_eq!(plain.header("content-encoding"), "", "{headers:?}");
        assert_eq!(plain.body, reply.body, "{headers:?}");
    }
    // A sealed segment too; the open one never (it grows).
    let segments = head["segments"].as_array().unwrap();
    for seg in segments {
        let url = server.url(&format!(".intersync/kml/{}", seg["name"].as_str().unwrap()));
        let answer = get(&url, &[("accept-encoding", "zstd")]);
        let sealed = seg["sealed"].as_bool().unwrap();
        assert_eq!(answer.header("content-encoding") == "zstd", sealed, "{seg}");
    }
    assert!(segments.iter().any(|s| s["sealed"] == true), "{head}");
}

#[test]
fn deltas_of_text_are_compressed_when_asked() {
    let dir = Dir::new();
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1);
    let text = intersync_bench::scenario::text(&mut rng, 400_000);
    fs::write(dir.path("book.txt"), &text).unwrap();
    let server = Server::start(&dir.path(""), &[]);
    // A client with nothing useful: all literal, very compressible.
    let (sig, _) = Signature::calculate(
        b"",
        SignatureOptions::for_len(0, SignatureFormat::Md4Rollsum),
    );
    let url = server.url(".intersync/delta/book.txt");
    let plain = http("POST", &url, &[], sig.as_bytes().to_vec(), None);
    assert_eq!(plain.header("content-encoding"), "");
    let packed = http(
        "POST",
        &url,
        &[("accept-encoding", "gzip, zstd")],
        sig.as_bytes().to_vec(),
        None,
    );
    assert_eq!(packed.header("content-encoding"), "zstd");
    assert!(
        packed.body.len() * 3 < plain.body.len(),
        "{} vs {}",
        packed.body.len(),
        plain.body.len()
    );
    assert_eq!(zstd::decode_all(&packed.body[..]).unwrap(), plain.body);
}

/// Reliability 3 / E6: `.intersync/` removed (an `rsync -a --delete` from
/// a tree without it) or made anew under a running server: the server
/// stops with words that say so, and never journals into what is gone.
#[test]
fn a_server_whose_journal_is_removed_stops_and_says_why() {
    for replace in [false, true] {
        let dir = Dir::new();
        fs::write(dir.path("a"), b"a").unwrap();
        let log = Dir::new();
        let mut serve = crate::util::intersync();
        serve
            .arg("serve")
            .stderr(fs::File::create(log.path("stderr")).unwrap());
        let root = dir.path("");
        let mut server = Server::spawn(
            serve,
            &[root.as_os_str(), "--allow-anonymous-writes".as_ref()],
        );
        fs::remove_dir_all(dir.path(".intersync")).unwrap();
        if replace {
            fs::create_dir(dir.path(".intersync")).unwrap();
        }
        // A write in the window before the server notices is refused.
        let put = http("PUT", &server.url("b"), &[], b"b".to_vec(), None);
        assert!(matches!(put.status, 503), "{}: {}", put.status, put.text());
        let status = crate::util::wait_exit(&mut server, std::time::Duration::from_secs(10))
            .expect("the server kept running on a journal that is gone");
        assert!(!status.success());
        let said = fs::read_to_string(log.path("stderr")).unwrap();
        let how = if replace { "made anew" } else { "removed" };
        assert!(
            said.contains(&format!("was {how} while the server ran")),
            "{said}"
        );
    }
}
