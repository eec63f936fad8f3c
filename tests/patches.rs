//! Version-aware updates against a real `intersync serve`: the server keeps
//! the versions its clients hold, so a client whose copy is the version it
//! last synced gets an exact patch from it (no signature, no blocks).
//! A base the server no longer holds, or holds corrupt, falls back to the
//! signature path and still gives the right file.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::client::{scatter_edits, sync, sync_ok, tree};
use crate::util::{Dir, Server, get, http, intersync, ok, random_bytes};

/// A server on `root` that can be restarted on the same port, so that
/// changes made in the folder meanwhile are journaled by its start-up scan.
struct Site {
    root: PathBuf,
    port: u16,
    args: Vec<String>,
    server: Option<Server>,
}

impl Site {
    fn start(root: &Path, args: &[&str]) -> Site {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut site = Site {
            root: root.to_owned(),
            port,
            args: args.iter().map(|a| a.to_string()).collect(),
            server: None,
        };
        site.restart();
        site
    }

    fn restart(&mut self) {
        if let Some(s) = self.server.take() {
            s.kill();
        }
        let listen = format!("127.0.0.1:{}", self.port);
        let mut args = vec![
            "--listen",
            &listen,
            "--no-watch",
            "--allow-anonymous-writes",
        ];
        args.extend(self.args.iter().map(String::as_str));
        self.server = Some(Server::start(&self.root, &args));
    }

    fn url(&self) -> String {
        self.server.as_ref().unwrap().url.clone()
    }

    fn versions(&self) -> PathBuf {
        self.root.join(".intersync/versions")
    }

    /// The stored versions (no patches), by name.
    fn stored(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.versions())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.len() == 64)
            .collect();
        names.sort();
        names
    }
}

fn version_of(path: &Path) -> String {
    blake3::hash(&fs::read(path).unwrap()).to_hex().to_string()
}

/// `sync --stats -v`, checked to succeed; its output and bytes moved.
#[track_caller]
fn sync_stats(url: &str, dir: &Path) -> (String, u64) {
    let (out, sent, received) = sync(url, dir, &["-v"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "sync failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (stdout, sent + received)
}

fn without_state(t: std::collections::BTreeMap<String, Vec<u8>>) -> Vec<(String, Vec<u8>)> {
    t.into_iter()
        .filter(|(k, _)| !k.starts_with(".intersync"))
        .collect()
}

#[track_caller]
fn assert_same(a: &Path, b: &Path) {
    assert!(
        without_state(tree(a)) == without_state(tree(b)),
        "{} and {} differ",
        a.display(),
        b.display()
    );
}

#[test]
fn server_edits_reach_a_client_as_exact_patches() {
    let export = Dir::new();
    fs::write(export.path("big.bin"), random_bytes(41, 8 << 20)).unwrap();
    fs::write(export.path("notes.txt"), b"notes\n").unwrap();
    let mut site = Site::start(&export.path(""), &[]);
    let clients = Dir::new();
    let wc = clients.path("wc");
    sync_ok(&site.url(), &wc);
    let first = version_of(&export.path("big.bin"));
    assert!(site.stored().contains(&first), "the version served is kept");

    // 20 edits of 100 bytes. The signature path would cost its signature
    // (90 KB for 8 MiB: 8,192 blocks of 11 bytes) and a 1 KiB block or two
    // an edit (20 KiB or more).
    let old = fs::read(export.path("big.bin")).unwrap();
    scatter_edits(&export.path("big.bin"), 20, 100, 3);
    site.restart();
    let (out, moved) = sync_stats(&site.url(), &wc);
    assert!(out.contains("1 patches, 0 deltas"), "{out}");
    assert!(moved < 5_000, "{moved} bytes for 2,000 bytes of edits");
    assert_same(&export.path(""), &wc);

    // The patch is an immutable object: the same bytes every time, for
    // any cache in front to keep.
    let second = version_of(&export.path("big.bin"));
    let url = site
        .server
        .as_ref()
        .unwrap()
        .url(&format!(".intersync/patch/{first}/{second}"));
    let (a, b) = (get(&url, &[]), get(&url, &[]));
    assert_eq!(a.status, 200);
    assert_eq!(a.body, b.body);
    assert!(a.header("cache-control").contains("immutable"));
    assert_eq!(a.header("etag"), format!("\"patch-{first}-{second}\""));
    assert_eq!(a.header("content-type"), "application/x-intersync-patch");
    // `intersync patch` applies it like a delta, checking the version.
    let scratch = Dir::new();
    let (base, patch, out) = (
        scratch.write("old", &old),
        scratch.write("big.patch", &a.body),
        scratch.path("new"),
    );
    ok(intersync()
        .args(["patch", "--expect-version", &second])
        .arg(&base)
        .arg(&patch)
        .arg(&out));
    assert_eq!(
        fs::read(&out).unwrap(),
        fs::read(export.path("big.bin")).unwrap()
    );
    // And it is smaller than what the zstd tool makes for the same pair
    // (`zstd --patch-from`), which pays for each of its 64 blocks of
    // 128 KiB: our copies cost a few bytes an edit.
    let new = scratch.write("new.bin", &fs::read(export.path("big.bin")).unwrap());
    let by_zstd = scratch.path("by-zstd.zst");
    ok(Command::new("zstd")
        .args(["-q", "-3", "--long=27", "--patch-from"])
        .arg(&base)
        .arg(&new)
        .arg("-o")
        .arg(&by_zstd));
    let zstd_len = fs::metadata(&by_zstd).unwrap().len();
    assert!(
        (a.body.len() as u64) < zstd_len,
        "{} bytes against zstd's {zstd_len}",
        a.body.len()
    );
    let unknown = "0".repeat(64);
    let gone = site
        .server
        .as_ref()
        .unwrap()
        .url(&format!(".intersync/patch/{unknown}/{second}"));
    assert_eq!(get(&gone, &[]).status, 404);
    let bad = site.server.as_ref().unwrap().url(".intersync/patch/zz/11");
    assert_eq!(get(&bad, &[]).status, 400);

    // A version the client wrote is kept too: the server's next edit of
    // it is a patch from what the client pushed.
    scatter_edits(&wc.join("big.bin"), 5, 100, 4);
    sync_ok(&site.url(), &wc);
    assert!(site.stored().contains(&version_of(&wc.join("big.bin"))));
    scatter_edits(&export.path("big.bin"), 5, 100, 5);
    site.restart();
    let (out, moved) = sync_stats(&site.url(), &wc);
    assert!(out.contains("1 patches, 0 deltas"), "{out}");
    assert!(moved < 8_000, "{moved} bytes for 500 bytes of edits");
    assert_same(&export.path(""), &wc);
}

#[test]
fn a_base_evicted_under_the_budget_falls_back_to_a_delta() {
    let export = Dir::new();
    for (i, name) in ["a.bin", "b.bin", "c.bin"].iter().enumerate() {
        fs::write(export.path(name), random_bytes(42 + i as u64, 2 << 20)).unwrap();
    }
    // Room for two of the three versions: the least recently used, a.bin's,
    // is evicted by the clone itself.
    let mut site = Site::start(&export.path(""), &["--version-budget", "5000000"]);
    let wc = Dir::new().path("wc");
    sync_ok(&site.url(), &wc);
    let mut kept = vec![
        version_of(&export.path("b.bin")),
        version_of(&export.path("c.bin")),
    ];
    kept.sort();
    assert_eq!(site.stored(), kept);

    scatter_edits(&export.path("a.bin"), 10, 100, 6);
    scatter_edits(&export.path("c.bin"), 10, 100, 7);
    site.restart();
    let (out, _) = sync_stats(&site.url(), &wc);
    assert!(out.contains("1 patches, 1 deltas"), "{out}");
    assert!(out.contains("<  a.bin  updated by delta"), "{out}");
    assert!(out.contains("<  c.bin  updated by patch"), "{out}");
    assert_same(&export.path(""), &wc);
    let size: u64 = fs::read_dir(site.versions())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(size <= 5_000_000, "the store holds {size} bytes");
}

#[test]
fn corrupt_stored_versions_and_patches_are_detected_and_never_used() {
    let export = Dir::new();
    fs::write(export.path("big.bin"), random_bytes(44, 4 << 20)).unwrap();
    let mut site = Site::start(&export.path(""), &[]);
    let clients = Dir::new();
    let (a, b) = (clients.path("a"), clients.path("b"));
    sync_ok(&site.url(), &a);

    // The stored copy of the version A holds is damaged on disk.
    let stored = site.versions().join(version_of(&export.path("big.bin")));
    let mut bytes = fs::read(&stored).unwrap();
    bytes[1 << 20] ^= 0x40;
    fs::write(&stored, &bytes).unwrap();
    scatter_edits(&export.path("big.bin"), 10, 100, 8);
    site.restart();
    let (out, _) = sync_stats(&site.url(), &a);
    assert!(out.contains("0 patches, 1 deltas"), "{out}");
    assert_same(&export.path(""), &a);
    assert!(!stored.exists(), "the damaged copy is deleted");

    // Both copies hold the same version; A's update makes and keeps a
    // patch, which is then damaged: B's update must not use it.
    sync_ok(&site.url(), &b);
    let from = version_of(&export.path("big.bin"));
    scatter_edits(&export.path("big.bin"), 10, 100, 9);
    let to = version_of(&export.path("big.bin"));
    site.restart();
    let (out, _) = sync_stats(&site.url(), &a);
    assert!(out.contains("1 patches"), "{out}");
    let patch = site.versions().join(format!("{from}-{to}"));
    let mut bytes = fs::read(&patch).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    fs::write(&patch, &bytes).unwrap();
    let (out, _) = sync_stats(&site.url(), &b);
    // The damage is found, the patch made again from the intact base.
    assert!(out.contains("1 patches"), "{out}");
    assert_same(&export.path(""), &b);
    assert_ne!(
        fs::read(&patch).unwrap(),
        bytes,
        "the damaged patch was replaced"
    );
}

#[test]
fn a_base_the_server_never_saw_is_refined_in_rounds() {
    let export = Dir::new();
    fs::write(export.path("big.bin"), random_bytes(45, 8 << 20)).unwrap();
    // No kept versions: the server cannot patch, as for a migrated copy.
    let mut site = Site::start(&export.path(""), &["--version-budget", "0"]);
    let wc = Dir::new().path("wc");
    sync_ok(&site.url(), &wc);
    assert!(
        !site.versions().exists(),
        "nothing is kept without a budget"
    );

    scatter_edits(&export.path("big.bin"), 20, 100, 10);
    site.restart();
    let (out, moved) = sync_stats(&site.url(), &wc);
    assert!(out.contains("<  big.bin  updated by delta"), "{out}");
    assert_same(&export.path(""), &wc);
    // One round at the policy's 1 KiB blocks: a 90 KB signature up and a
    // block an edit down, about 112 KB. Coarse blocks (11 KB of signature),
    // a fine signature of the gaps only and the missing fine blocks by
    // ranges: well under half of that.
    assert!(
        moved < 50_000,
        "{moved} bytes for 2,000 bytes of edits\n{out}"
    );
    // head, journal, refine, and one multi-range GET (no patch asked for:
    // the head says this server keeps no versions).
    assert!(out.contains("HTTP requests: 4"), "{out}");
    let refine = site
        .server
        .as_ref()
        .unwrap()
        .url(".intersync/refine/big.bin");
    let bad = http("POST", &refine, &[], b"not a signature".to_vec(), None);
    assert_eq!(bad.status, 400, "{}", bad.text());
}

#[test]
fn local_edits_are_pushed_as_exact_patches_from_the_version_kept() {
    let export = Dir::new();
    fs::write(export.path("big.bin"), random_bytes(46, 8 << 20)).unwrap();
    fs::write(export.path("small.txt"), b"too small to keep\n").unwrap();
    let site = Site::start(&export.path(""), &[]);
    let clients = Dir::new();
    let wc = clients.path("wc");
    sync_ok(&site.url(), &wc);
    let kept = |dir: &Path| {
        fs::read_dir(dir.join(".intersync/versions"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert_eq!(
        kept(&wc),
        1,
        "big.bin's version is kept, small.txt's is not"
    );

    // 20 edits of 100 bytes: the signature path would fetch the server's
    // 90 KB signature and send a block an edit.
    scatter_edits(&wc.join("big.bin"), 20, 100, 11);
    let (out, moved) = sync_stats(&site.url(), &wc);
    assert!(out.contains(">  big.bin  updated by patch"), "{out}");
    assert!(
        moved < 5_000,
        "{moved} bytes for 2,000 bytes of edits\n{out}"
    );
    assert_eq!(
        fs::read(export.path("big.bin")).unwrap(),
        fs::read(wc.join("big.bin")).unwrap()
    );
    // The version pushed is the next base: a second edit is a patch too.
    scatter_edits(&wc.join("big.bin"), 3, 100, 12);
    let (out, _) = sync_stats(&site.url(), &wc);
    assert!(out.contains(">  big.bin  updated by patch"), "{out}");

    // Without a kept base, the signature path still works.
    let other = clients.path("other");
    let (first, _, _) = sync(&site.url(), &other, &["--version-budget", "0"]);
    assert!(first.status.success());
    assert_eq!(kept(&other), 0);
    scatter_edits(&other.join("big.bin"), 3, 100, 13);
    let (out, _, _) = sync(&site.url(), &other, &["-v", "--version-budget", "0"]);
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.contains(">  big.bin  updated by delta"), "{out}");
    assert_eq!(
        fs::read(export.path("big.bin")).unwrap(),
        fs::read(other.join("big.bin")).unwrap()
    );

    // A malformed patch is refused and nothing is written.
    let before = fs::read(export.path("big.bin")).unwrap();
    let base = version_of(&export.path("big.bin"));
    let etag = format!("\"b3-{base}\"");
    let bad = http(
        "PUT",
        &site.server.as_ref().unwrap().url("big.bin"),
        &[
            ("content-type", "application/x-intersync-patch"),
            ("if-match", &etag),
            ("x-intersync-version", &"1".repeat(64)),
            ("x-intersync-size", "8388608"),
        ],
        b"\x28\xb5\x2f\xfd not a frame".to_vec(),
        None,
    );
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert_eq!(fs::read(export.path("big.bin")).unwrap(), before);
}
