//! Web servers that misbehave are handled, not trusted. A static export is
//! served by a real nginx; between it and the client sits a small proxy of
//! this harness's own that breaks one rule of HTTP on purpose (other ranges
//! than asked, fewer parts, If-Range ignored, redirects, bodies cut short).
//! Whatever it does, the working copy ends up right, or unchanged and
//! resumable, and `--stats` says which way each file came.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::{fs, thread};

use crate::util::{Dir, Nginx, intersync, ok, random_bytes, run};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    /// Every range asked for is moved one byte on before nginx sees it, so
    /// the answers are well-formed, for other ranges than asked.
    ShiftRanges,
    /// Multi-range answers lose their last part.
    FewerParts,
    /// If-Range is dropped before nginx sees it.
    IgnoreIfRange,
    /// Every request is redirected (302) to nginx itself, another origin.
    Redirect,
    /// Multi-range answers stop halfway through, then the connection closes.
    TruncateMultipart,
    /// Every answer with a body of over 4 KiB stops halfway.
    TruncateLarge,
}

/// The proxy: one request a connection, answered with `Connection: close`.
struct Proxy {
    url: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    fn start(upstream: &str, fault: Fault) -> Proxy {
        let (listener, url, upstream) = crate::util::listen_in_front_of(upstream);
        let log = Arc::new(Mutex::new(Vec::new()));
        let shared = log.clone();
        thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let upstream = upstream.clone();
                let log = shared.clone();
                thread::spawn(move || {
                    let _ = answer(conn, &upstream, fault, &log);
                });
            }
        });
        Proxy { url, log }
    }

    fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

fn answer(
    conn: TcpStream,
    upstream: &str,
    fault: Fault,
    log: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let mut parts = request_line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    let mut out = conn;
    if fault == Fault::Redirect {
        log.lock().unwrap().push(format!("{method} {target} 302"));
        return write!(
            out,
            "HTTP/1.1 302 Found\r\nLocation: http://{upstream}{target}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
    }
    let mut forward =
        format!("{method} {target} HTTP/1.1\r\nHost: {upstream}\r\nConnection: close\r\n");
    for (k, v) in &headers {
        match (k.as_str(), fault) {
            ("host" | "connection", _) | ("if-range", Fault::IgnoreIfRange) => {}
            ("range", Fault::ShiftRanges) => {
                let shifted: Vec<String> = v
                    .trim_start_matches("bytes=")
                    .split(',')
                    .map(|r| {
                        let (a, b) = r.split_once('-').unwrap();
                        let a: u64 = a.parse().unwrap_or(0);
                        match b.parse::<u64>() {
                            Ok(b) => format!("{}-{}", a + 1, b + 1),
                            Err(_) => format!("{}-", a + 1),
                        }
                    })
                    .collect();
                forward.push_str(&format!("range: bytes={}\r\n", shifted.join(",")));
            }
            _ => forward.push_str(&format!("{k}: {v}\r\n")),
        }
    }
    forward.push_str("\r\n");
    let mut up = TcpStream::connect(upstream)?;
    up.write_all(forward.as_bytes())?;
    let mut response = Vec::new();
    up.read_to_end(&mut response)?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a whole response head")
        + 4;
    let (head, body) = response.split_at(split);
    let head = String::from_utf8_lossy(head).into_owned();
    let status = head.split(' ').nth(1).unwrap_or("?").to_owned();
    let multipart = head.to_ascii_lowercase().contains("multipart/byteranges");
    log.lock().unwrap().push(format!(
        "{method} {target} {status}{}",
        if multipart { " multipart" } else { "" }
    ));
    let mut body = body.to_vec();
    let mut cut = None;
    match fault {
        Fault::FewerParts if multipart => {
            // Cut before the last part's boundary, and close the multipart.
            let boundary = head
                .split("boundary=")
                .nth(1)
                .unwrap()
                .lines()
                .next()
                .unwrap()
                .trim()
                .to_owned();
            let marker = format!("--{boundary}");
            let starts: Vec<usize> = body
                .windows(marker.len())
                .enumerate()
                .filter(|(_, w)| *w == marker.as_bytes())
                .map(|(i, _)| i)
                .collect();
            let last_part = starts[starts.len() - 2];
            body.truncate(last_part);
            body.extend_from_slice(format!("{marker}--\r\n").as_bytes());
        }
        Fault::TruncateMultipart if multipart => cut = Some(body.len() / 2),
        Fault::TruncateLarge if body.len() > 4 << 10 => cut = Some(body.len() / 2),
        _ => {}
    }
    let mut head_out = String::new();
    for line in head.trim_end().lines() {
        if line.to_ascii_lowercase().starts_with("content-length:") {
            continue;
        }
        head_out.push_str(line);
        head_out.push_str("\r\n");
    }
    head_out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    out.write_all(head_out.as_bytes())?;
    out.write_all(&body[..cut.unwrap_or(body.len())])?;
    out.flush()?;
    // Closing here, short of the announced length, is the truncation.
    Ok(())
}

fn export(dir: &Path) {
    ok(intersync().arg("export").arg(dir));
}

/// Ten scattered edits of 50 bytes.
fn edit(path: &Path) {
    let mut data = fs::read(path).unwrap();
    for i in 0..10 {
        let at = 100_000 + i * 180_000;
        data[at..at + 50].copy_from_slice(&[i as u8 + 1; 50]);
    }
    fs::write(path, data).unwrap();
}

/// A static export behind nginx and a faulty proxy, a working copy synced
/// (through nginx directly; it follows the export to the proxy's URL), and
/// an edit exported: ready for the faulty sync.
struct Setup {
    site: Dir,
    _clients: Dir,
    wc: std::path::PathBuf,
    _nginx: Nginx,
    proxy: Proxy,
}

fn setup(fault: Fault) -> Setup {
    let site = Dir::new();
    fs::write(site.path("big.bin"), random_bytes(41, 2 << 20)).unwrap();
    fs::write(site.path("small.txt"), b"small").unwrap();
    export(&site.path(""));
    let nginx = Nginx::start(&site.path(""), "");
    let clients = Dir::new();
    let wc = clients.path("wc");
    ok(intersync().arg("sync").arg(&nginx.url).arg(&wc));
    let proxy = Proxy::start(&nginx.url, fault);
    edit(&site.path("big.bin"));
    export(&site.path(""));
    Setup {
        site,
        _clients: clients,
        wc,
        _nginx: nginx,
        proxy,
    }
}

impl Setup {
    fn sync(&self) -> std::process::Output {
        run(intersync()
            .args(["sync", "--stats"])
            .arg(&self.proxy.url)
            .arg(&self.wc))
    }

    fn assert_right(&self, out: &std::process::Output) {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            fs::read(self.wc.join("big.bin")).unwrap()
                == fs::read(self.site.path("big.bin")).unwrap(),
            "the working copy's big.bin is not the export's"
        );
    }
}

fn way(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("Files by way:"))
        .unwrap_or_else(|| panic!("no --stats in {}", String::from_utf8_lossy(&out.stdout)))
        .to_owned()
}

#[test]
fn other_ranges_than_asked_mean_a_whole_fetch() {
    let s = setup(Fault::ShiftRanges);
    let out = s.sync();
    s.assert_right(&out);
    assert!(
        way(&out).contains("0 by blocks and ranges, 1 whole"),
        "{}",
        way(&out)
    );
}

#[test]
fn fewer_parts_than_asked_mean_one_range_a_request() {
    let s = setup(Fault::FewerParts);
    let out = s.sync();
    s.assert_right(&out);
    assert!(
        way(&out).contains("1 by blocks and ranges"),
        "{}",
        way(&out)
    );
    let single = s
        .proxy
        .requests()
        .iter()
        .filter(|l| l.starts_with("GET /big.bin ") && l.ends_with(" 206"))
        .count();
    assert_eq!(single, 10, "{:?}", s.proxy.requests());
}

#[test]
fn a_body_cut_short_is_never_installed() {
    let s = setup(Fault::TruncateMultipart);
    let out = s.sync();
    s.assert_right(&out);
    assert!(
        way(&out).contains("1 by blocks and ranges"),
        "{}",
        way(&out)
    );

    // Everything large cut short: the sync fails as a socket error (10),
    // the old copy stays, and a later sync through a sound server finishes
    // from what arrived.
    let s = setup(Fault::TruncateLarge);
    let old = fs::read(s.wc.join("big.bin")).unwrap();
    let out = s.sync();
    assert_eq!(
        out.status.code(),
        Some(10),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        fs::read(s.wc.join("big.bin")).unwrap() == old,
        "the old copy was touched"
    );
    let partials: u64 = fs::read_dir(s.wc.join(".intersync/partial"))
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(partials > 0, "what arrived was not kept");
    // No signature (nor its levels), so the sound sync takes the
    // whole-file path and resumes.
    let version = blake3::hash(&fs::read(s.site.path("big.bin")).unwrap()).to_hex();
    remove_signatures(&s.site, &version);
    let sound = Proxy::start(&s._nginx.url, Fault::IgnoreIfRange);
    let out = run(intersync()
        .args(["sync", "--stats"])
        .arg(&sound.url)
        .arg(&s.wc));
    s.assert_right(&out);
    let resumed = sound
        .requests()
        .iter()
        .any(|l| l.starts_with("GET /big.bin ") && l.ends_with(" 206"));
    assert!(resumed, "{:?}", sound.requests());
}

/// Removes the export's signature of `version` and its two levels.
fn remove_signatures(site: &Dir, version: &str) {
    for ext in ["", ".coarse", ".fine"] {
        fs::remove_file(site.path(&format!(".intersync/sig/{version}{ext}"))).unwrap();
    }
}

#[test]
fn a_stale_partial_is_caught_by_the_version() {
    // A static source's validators are not versions, so the client resumes
    // without If-Range, as if every server ignored it.
    let s = setup(Fault::IgnoreIfRange);
    // A partial download of the new version whose bytes are wrong (as if
    // the file had changed on the server while it was being fetched).
    let head: serde_json::Value =
        serde_json::from_slice(&fs::read(s.site.path(".intersync/head")).unwrap()).unwrap();
    assert!(head["static_export"].as_bool().unwrap());
    let version = blake3::hash(&fs::read(s.site.path("big.bin")).unwrap()).to_hex();
    let partial_dir = s.wc.join(".intersync/partial");
    fs::create_dir_all(&partial_dir).unwrap();
    fs::write(
        partial_dir.join(version.as_str()),
        random_bytes(42, 1 << 20),
    )
    .unwrap();
    // No block path, so the whole fetch resumes the partial.
    remove_signatures(&s.site, &version);
    let out = s.sync();
    s.assert_right(&out);
    assert!(way(&out).contains("1 whole"), "{}", way(&out));
    let tries: Vec<_> = s
        .proxy
        .requests()
        .into_iter()
        .filter(|l| l.starts_with("GET /big.bin "))
        .collect();
    assert_eq!(tries.len(), 2, "a resume, then from zero: {tries:?}");
}

#[test]
fn redirects_are_followed() {
    let s = setup(Fault::Redirect);
    let out = s.sync();
    s.assert_right(&out);
    assert!(
        way(&out).contains("1 by blocks and ranges"),
        "{}",
        way(&out)
    );
    assert!(s.proxy.requests().iter().all(|l| l.ends_with(" 302")));
}

#[test]
fn get_notices_if_range_ignored_and_starts_over() {
    let site = Dir::new();
    let old = random_bytes(43, 2 << 20);
    fs::write(site.path("file.iso"), &old).unwrap();
    // An hour old: nginx's ETag is its mtime in seconds and its size.
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    fs::File::options()
        .write(true)
        .open(site.path("file.iso"))
        .unwrap()
        .set_modified(hour_ago)
        .unwrap();
    let nginx = Nginx::start(&site.path(""), "");
    let proxy = Proxy::start(&nginx.url, Fault::IgnoreIfRange);
    let url = format!("{}file.iso", proxy.url);
    let etag = crate::util::get(&format!("{}file.iso", nginx.url), &[])
        .header("etag")
        .to_owned();
    // Half of the old release arrived before the connection dropped...
    let here = Dir::new();
    fs::write(here.path(".file.iso.intersync-partial"), &old[..1 << 20]).unwrap();
    fs::write(
        here.path(".file.iso.intersync-partial-get"),
        serde_json::json!({"url": url, "etag": etag, "last_modified": null}).to_string(),
    )
    .unwrap();
    // ...and then a new release replaced it.
    let new = random_bytes(44, 2 << 20);
    fs::write(site.path("file.iso"), &new).unwrap();
    ok(intersync().arg("get").arg(&url).arg(here.path("file.iso")));
    assert!(
        fs::read(here.path("file.iso")).unwrap() == new,
        "a mix of two releases: {:?}",
        proxy.requests()
    );
    let asked: Vec<_> = proxy.requests();
    assert_eq!(
        asked.len(),
        2,
        "a resume refused by its ETag, then the whole: {asked:?}"
    );
    assert!(
        asked[0].ends_with(" 206") && asked[1].ends_with(" 200"),
        "{asked:?}"
    );
}
