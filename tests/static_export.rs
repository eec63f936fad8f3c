//! `intersync export` makes a folder a complete InterSync source for a
//! plain web server; a real nginx serves it and `intersync sync` follows it
//! by the static path: the new version's signature (for large files, a
//! coarse one, then the fine one's records for what the coarse blocks
//! missed), the rolling checksum over the local copy, and only the missing
//! blocks by ranged GETs.

use std::fs;
use std::path::Path;

use std::process::Command;

use crate::client::scatter_edits;
use crate::util::{Dir, Nginx, intersync, ok, random_bytes, run};

fn export(dir: &Path) {
    ok(intersync().arg("export").arg(dir));
}

fn received(out: &std::process::Output) -> u64 {
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("Total bytes received:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no byte count in {stdout}"))
}

fn edit(path: &Path) {
    let mut data = fs::read(path).unwrap();
    for i in 0..10 {
        let at = 100_000 + i * 200_000;
        data[at..at + 50].copy_from_slice(&[i as u8; 50]);
    }
    fs::write(path, data).unwrap();
}

#[test]
fn nginx_serves_an_exported_tree_and_scattered_edits_cost_blocks() {
    let site = Dir::new();
    fs::create_dir(site.path("docs")).unwrap();
    fs::write(site.path("docs/big.bin"), random_bytes(21, 4 << 20)).unwrap();
    fs::write(site.path("readme.txt"), b"a static site").unwrap();
    export(&site.path(""));
    let nginx = Nginx::start(&site.path(""), "");
    let clients = Dir::new();
    let wc = clients.path("wc");
    ok(intersync()
        .args(["sync", "--stats"])
        .arg(&nginx.url)
        .arg(&wc));
    assert_eq!(
        fs::read(wc.join("docs/big.bin")).unwrap(),
        fs::read(site.path("docs/big.bin")).unwrap()
    );

    edit(&site.path("docs/big.bin"));
    export(&site.path(""));
    let before = nginx.requests().len();
    let out = ok(intersync()
        .args(["sync", "--stats"])
        .arg(&nginx.url)
        .arg(&wc));
    assert_eq!(
        fs::read(wc.join("docs/big.bin")).unwrap(),
        fs::read(site.path("docs/big.bin")).unwrap()
    );
    let got = received(&out);
    assert!(
        got < (4 << 20) / 10,
        "received {got} bytes for ten 50-byte edits of 4 MiB"
    );
    // Ten separate edits, ten missing runs of blocks: one multi-range GET.
    let ranged = nginx.requests()[before..]
        .iter()
        .filter(|l| l.contains("GET /docs/big.bin ") && l.contains(" 206 "))
        .count();
    assert_eq!(ranged, 1, "{:?}", &nginx.requests()[before..]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 by blocks and ranges"));
}

#[test]
fn large_files_are_synced_in_signature_levels() {
    let site = Dir::new();
    fs::write(site.path("big.bin"), random_bytes(24, 8 << 20)).unwrap();
    export(&site.path(""));
    let sigs = site.path(".intersync/sig");
    let levels = |ext: &str| {
        fs::read_dir(&sigs)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension() == Some(ext.as_ref()))
            .count()
    };
    assert_eq!((levels("coarse"), levels("fine")), (1, 1));
    let nginx = Nginx::start(&site.path(""), "");
    let clients = Dir::new();
    let (wc, old_export) = (clients.path("wc"), clients.path("old"));
    ok(intersync().arg("sync").arg(&nginx.url).arg(&wc));
    ok(Command::new("cp").arg("-a").arg(&wc).arg(&old_export));

    // 20 edits of 100 bytes. One signature would cost 90 KB (8,192 blocks
    // of 11 bytes) and a 1 KiB block or two an edit; the coarse level is
    // an eighth of that, and the fine one is read for the gaps only.
    scatter_edits(&site.path("big.bin"), 20, 100, 5);
    export(&site.path(""));
    assert_eq!(
        (levels("coarse"), levels("fine")),
        (1, 1),
        "the old levels are gone"
    );
    let before = nginx.requests().len();
    let out = ok(intersync()
        .args(["sync", "--stats"])
        .arg(&nginx.url)
        .arg(&wc));
    let want = fs::read(site.path("big.bin")).unwrap();
    assert_eq!(fs::read(wc.join("big.bin")).unwrap(), want);
    let by_levels = received(&out);
    assert!(by_levels < 40_000, "received {by_levels} bytes");
    let asked: Vec<_> = nginx.requests()[before..].to_vec();
    let count = |what: &str| asked.iter().filter(|l| l.contains(what)).count();
    assert_eq!(count(".coarse "), 1, "{asked:?}");
    assert_eq!(count(".fine "), 1, "{asked:?}");
    assert_eq!(count("GET /big.bin "), 1, "{asked:?}");

    // An export written before there were levels: one signature, as before.
    for e in fs::read_dir(&sigs).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_some() {
            fs::remove_file(path).unwrap();
        }
    }
    let out = ok(intersync()
        .args(["sync", "--stats"])
        .arg(&nginx.url)
        .arg(&old_export));
    assert_eq!(fs::read(old_export.join("big.bin")).unwrap(), want);
    let by_one = received(&out);
    // (Measured: 115,227 against 31,593.)
    assert!(
        by_one > 90_000 && by_one > 3 * by_levels,
        "{by_one} against {by_levels}"
    );
}

#[test]
fn single_range_servers_get_one_range_a_request() {
    let site = Dir::new();
    fs::write(site.path("big.bin"), random_bytes(23, 4 << 20)).unwrap();
    export(&site.path(""));
    let nginx = Nginx::start(&site.path(""), "max_ranges 1;");
    let clients = Dir::new();
    let wc = clients.path("wc");
    ok(intersync().arg("sync").arg(&nginx.url).arg(&wc));
    edit(&site.path("big.bin"));
    export(&site.path(""));
    let before = nginx.requests().len();
    let out = ok(intersync()
        .args(["sync", "--stats"])
        .arg(&nginx.url)
        .arg(&wc));
    assert_eq!(
        fs::read(wc.join("big.bin")).unwrap(),
        fs::read(site.path("big.bin")).unwrap()
    );
    // The multi-range probe gets the whole file (200), which is not read;
    // then one range a request.
    let ranged = nginx.requests()[before..]
        .iter()
        .filter(|l| l.contains("GET /big.bin ") && l.contains(" 206 "))
        .count();
    assert_eq!(ranged, 10, "{:?}", &nginx.requests()[before..]);
    let got = received(&out);
    assert!(
        got < (4 << 20) / 4,
        "received {got}: the probe's whole-file answer was read"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 by blocks and ranges"));
}

#[test]
fn ranges_refused_fall_back_to_whole_files() {
    let site = Dir::new();
    fs::write(site.path("big.bin"), random_bytes(22, 1 << 20)).unwrap();
    export(&site.path(""));
    let nginx = Nginx::start(&site.path(""), "max_ranges 0;");
    let clients = Dir::new();
    let wc = clients.path("wc");
    ok(intersync().arg("sync").arg(&nginx.url).arg(&wc));
    edit_small(&site.path("big.bin"));
    export(&site.path(""));
    let out = run(intersync()
        .args(["sync", "--stats"])
        .arg(&nginx.url)
        .arg(&wc));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        fs::read(wc.join("big.bin")).unwrap(),
        fs::read(site.path("big.bin")).unwrap()
    );
    assert!(
        received(&out) >= 1 << 20,
        "ranges were refused, so the file came whole"
    );
}

fn edit_small(path: &Path) {
    let mut data = fs::read(path).unwrap();
    data[500_000] ^= 0xff;
    fs::write(path, data).unwrap();
}

#[test]
fn local_changes_against_a_static_export_are_reported_not_lost() {
    let site = Dir::new();
    fs::write(site.path("a.txt"), b"a").unwrap();
    export(&site.path(""));
    let nginx = Nginx::start(&site.path(""), "");
    let clients = Dir::new();
    let wc = clients.path("wc");
    ok(intersync().arg("sync").arg(&nginx.url).arg(&wc));
    fs::write(wc.join("mine.txt"), b"mine").unwrap();
    let out = run(intersync().args(["sync", "-v"]).arg(&nginx.url).arg(&wc));
    assert_eq!(
        out.status.code(),
        Some(23),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("read only"));
    assert_eq!(fs::read(wc.join("mine.txt")).unwrap(), b"mine");
}

#[test]
fn get_is_conditional_and_resumable() {
    let site = Dir::new();
    let body = random_bytes(24, 8 << 20);
    fs::write(site.path("file.iso"), &body).unwrap();
    let nginx = Nginx::start(&site.path(""), "");
    let url = format!("{}file.iso", nginx.url);
    let here = Dir::new();
    let dest = here.path("file.iso");

    // Interrupted at about a quarter, then resumed.
    let mut child = intersync()
        .args(["get", "--bwlimit", "8M"])
        .arg(&url)
        .arg(&dest)
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let _ = child.kill();
    let _ = child.wait();
    assert!(!dest.exists(), "a partial download at the real path");
    let out = ok(intersync().args(["get", "-v"]).arg(&url).arg(&dest));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let resumed: u64 = said.trim().rsplit(' ').next().unwrap().parse().unwrap();
    assert!(resumed > 0, "{said}");
    assert_eq!(fs::read(&dest).unwrap(), body);

    // Unchanged: one conditional request, answered 304.
    let out = ok(intersync().args(["get", "-v"]).arg(&url).arg(&dest));
    assert!(String::from_utf8_lossy(&out.stdout).contains("unchanged"));
    assert!(
        nginx.requests().last().unwrap().contains(" 304 "),
        "{:?}",
        nginx.requests().last()
    );

    // Changed: fetched again.
    fs::write(site.path("file.iso"), b"a new release").unwrap();
    ok(intersync().arg("get").arg(&url).arg(&dest));
    assert_eq!(fs::read(&dest).unwrap(), b"a new release");
}

#[test]
fn a_clone_of_many_small_files_from_nginx_keeps_several_requests_in_flight() {
    let site = Dir::new();
    let mut want = Vec::new();
    for i in 0..400 {
        let name = format!("d{}/f{i:03}.bin", i % 8);
        let bytes = random_bytes(100 + i as u64, 500 + i * 13);
        site.write(&name, &bytes);
        want.push((name, bytes));
    }
    // Without packs: one GET a file.
    ok(intersync()
        .args(["export", "--pack-size", "0"])
        .arg(site.path("")));
    let nginx = Nginx::start(&site.path(""), "");
    let clients = Dir::new();
    // Eight requests at a time by default, over several connections; one
    // at a time when asked.
    for (connections, used) in [(None, 4..=8), (Some("1"), 1..=2)] {
        let wc = clients.path(&format!("wc{}", connections.unwrap_or("")));
        let before = nginx.requests().len();
        let mut sync = intersync();
        sync.args(["sync", "--stats"]);
        if let Some(n) = connections {
            sync.args(["--connections", n]);
        }
        ok(sync.arg(&nginx.url).arg(&wc));
        for (name, bytes) in &want {
            assert_eq!(&fs::read(wc.join(name)).unwrap(), bytes, "{name}");
        }
        let files = nginx.requests()[before..]
            .iter()
            .filter(|r| r.contains(".bin ") && r.contains(" 200 "))
            .count();
        assert_eq!(files, want.len(), "one GET a file");
        let n = nginx.connections_since(before);
        assert!(used.contains(&n), "{connections:?}: {n} connections");
    }
}

/// An update of many small edited files from a static export: each is a
/// signature and its ranges (two round trips), so several are fetched at
/// once, over several connections, instead of one after another; each is
/// still rebuilt from the copy here (fewer bytes than fetching it whole).
#[test]
fn edits_of_many_small_files_from_nginx_are_fetched_several_at_once() {
    let site = Dir::new();
    for i in 0..60 {
        site.write(
            &format!("d{}/f{i:02}.bin", i % 4),
            &random_bytes(200 + i as u64, 16_000),
        );
    }
    export(&site.path(""));
    let nginx = Nginx::start(&site.path(""), "");
    let clients = Dir::new();
    let wc = clients.path("wc");
    ok(intersync().arg("sync").arg(&nginx.url).arg(&wc));
    let mut edited = 0;
    for i in 0..60 {
        let path = site.path(&format!("d{}/f{i:02}.bin", i % 4));
        let mut bytes = fs::read(&path).unwrap();
        bytes[8000..8010].fill(i as u8);
        fs::write(&path, &bytes).unwrap();
        edited += bytes.len() as u64;
    }
    export(&site.path(""));
    let before = nginx.requests().len();
    let out = ok(intersync()
        .args(["sync", "--stats"])
        .arg(&nginx.url)
        .arg(&wc));
    for i in 0..60 {
        let name = format!("d{}/f{i:02}.bin", i % 4);
        assert_eq!(
            fs::read(wc.join(&name)).unwrap(),
            fs::read(site.path(&name)).unwrap(),
            "{name}"
        );
    }
    let n = nginx.connections_since(before);
    assert!(n >= 4, "the edits came over {n} connection(s)");
    assert!(
        received(&out) < edited / 2,
        "{} bytes for {edited} edited",
        received(&out)
    );
}

/// A clone of many small files from a static export reads its packs: a
/// few GETs in all, not one a file. After a small change the pack is kept
/// (most of it is still current) and the change comes file by file; a
/// pack with a damaged byte brings nothing wrong, and what it would have
/// brought comes by other ways.
#[test]
fn a_clone_from_nginx_reads_packs_not_one_get_a_file() {
    let site = Dir::new();
    for i in 0..400 {
        let text = format!(
            "file {i}: {}\n",
            "some words that repeat ".repeat(20 + i % 40)
        );
        site.write(&format!("d{}/f{i:03}.txt", i % 8), text.as_bytes());
    }
    export(&site.path(""));
    let packs = || -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(site.path(".intersync/packs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".pack"))
            .collect();
        names.sort();
        names
    };
    let first = packs();
    assert_eq!(first.len(), 1, "{first:?}");
    let nginx = Nginx::start(&site.path(""), "");
    let clients = Dir::new();
    let wc = clients.path("wc");
    let out = ok(intersync()
        .args(["sync", "--stats"])
        .arg(&nginx.url)
        .arg(&wc));
    assert!(
        crate::client::tree(&wc) == crate::client::tree(&site.path("")),
        "the clone differs"
    );
    let requests = nginx.requests().len();
    assert!(requests <= 6, "{requests} requests: {:?}", nginx.requests());
    let text_bytes: u64 = (0..400)
        .map(|i| {
            fs::read(site.path(&format!("d{}/f{i:03}.txt", i % 8)))
                .unwrap()
                .len() as u64
        })
        .sum();
    assert!(
        received(&out) < text_bytes / 4,
        "{} bytes for {text_bytes} of text",
        received(&out)
    );

    for i in 0..5 {
        site.write(&format!("d0/new{i}.txt"), format!("new {i}").as_bytes());
    }
    export(&site.path(""));
    let after = packs();
    assert!(
        after.contains(&first[0]),
        "a small change repacked: {after:?}"
    );
    ok(intersync().arg("sync").arg(&nginx.url).arg(&wc));
    assert!(
        crate::client::tree(&wc) == crate::client::tree(&site.path("")),
        "the update differs"
    );

    let pack = site.path(&format!(".intersync/packs/{}", first[0]));
    let mut bytes = fs::read(&pack).unwrap();
    let at = bytes.len() - 100;
    bytes[at] ^= 0x40;
    fs::write(&pack, bytes).unwrap();
    let again = clients.path("again");
    ok(intersync().arg("sync").arg(&nginx.url).arg(&again));
    assert!(
        crate::client::tree(&again) == crate::client::tree(&site.path("")),
        "a damaged pack made a wrong clone"
    );
}
