//! The harness: run the built `intersync` and external tools, make test data.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The `intersync` binary cargo built for these tests.
pub fn intersync() -> Command {
    Command::new(env!("CARGO_BIN_EXE_intersync"))
}

/// An external tool that a test depends on. A missing tool fails the test
/// loudly: a test that cannot run is not a passing test.
pub fn tool(name: &str) -> Command {
    intersync_bench::harness::program(name).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs a command, returning its output whatever the exit status.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"))
}

/// Runs a command and fails the test unless it succeeds.
#[track_caller]
pub fn ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0; len];
    ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut out);
    out
}

/// A temporary folder with helpers to write and read files in it.
pub struct Dir {
    dir: tempfile::TempDir,
}

impl Dir {
    pub fn new() -> Dir {
        Dir {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.path(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("make the test file's folder");
        }
        std::fs::write(&path, bytes).expect("write test file");
        path
    }

    pub fn read(&self, name: &str) -> Vec<u8> {
        read(&self.path(name))
    }
}

pub fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A real `intersync serve` process on 127.0.0.1:0, killed when dropped.
pub struct Server {
    pub child: std::process::Child,
    pub url: String,
}

impl Server {
    /// Starts a server on `root` with extra arguments (on 127.0.0.1:0 unless
    /// they say `--listen`), and waits for its URL.
    pub fn start(root: &Path, args: &[&str]) -> Server {
        let mut all = vec![root.as_os_str()];
        all.extend(args.iter().map(std::ffi::OsStr::new));
        Server::serve(&all)
    }

    /// Starts `intersync serve ARGS` (on 127.0.0.1:0 unless they say
    /// `--listen`), and waits for its URL.
    pub fn serve(args: &[&std::ffi::OsStr]) -> Server {
        Server::serve_env(args, &[])
    }

    /// [`Server::serve`] with extra environment variables.
    pub fn serve_env(args: &[&std::ffi::OsStr], env: &[(&str, &str)]) -> Server {
        let mut command = intersync();
        command.envs(env.iter().copied()).arg("serve");
        Server::spawn(command, args)
    }

    /// `COMMAND ARGS` (an `intersync serve`, maybe run by another program
    /// such as `prlimit`), on 127.0.0.1:0 unless they say `--listen`;
    /// waits for its URL.
    pub fn spawn(mut command: Command, args: &[&std::ffi::OsStr]) -> Server {
        use std::io::BufRead;
        let mut child = command
            .args(if args.iter().any(|a| *a == "--listen") {
                &[][..]
            } else {
                &["--listen", "127.0.0.1:0"][..]
            })
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start intersync serve");
        let stdout = child.stdout.take().expect("piped");
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the ready line");
        let url = line
            .trim()
            .rsplit(" at ")
            .next()
            .filter(|u| u.starts_with("http"))
            .unwrap_or_else(|| panic!("server did not start: {line:?}"))
            .to_owned();
        Server { child, url }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// SIGKILL, as a crash would.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A listener on 127.0.0.1:0 for a proxy in front of `upstream` (a
/// server's URL): the listener, its URL, and the upstream's address.
pub fn listen_in_front_of(upstream: &str) -> (std::net::TcpListener, String, String) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let upstream = upstream
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    (listener, url, upstream)
}

/// The server's exit status, if it exits within `patience`.
pub fn wait_exit(
    server: &mut Server,
    patience: std::time::Duration,
) -> Option<std::process::ExitStatus> {
    let until = std::time::Instant::now() + patience;
    while std::time::Instant::now() < until {
        if let Some(status) = server.child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    None
}

/// A child process (a `watch`, say) killed however the test ends.
pub struct Kill(pub std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A server's access log (`serve --access-log`): the fields of each line,
/// `TIME PEER METHOD PATH STATUS BYTES PROTOCOL`.
pub fn access_log(path: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let fields: Vec<String> = l.split(' ').map(str::to_owned).collect();
            assert_eq!(fields.len(), 7, "odd access log line {l:?}");
            fields
        })
        .collect()
}

/// A self-signed certificate for `localhost` and `127.0.0.1`, and its key,
/// written as PEM files into `dir`: (certificate, key).
pub fn self_signed(dir: &Dir) -> (PathBuf, PathBuf) {
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    (
        dir.write("cert.pem", generated.cert.pem().as_bytes()),
        dir.write("key.pem", generated.signing_key.serialize_pem().as_bytes()),
    )
}

/// One HTTP/1.1 request over a fresh connection (TLS when `tls` is given).
pub fn http(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
    tls: Option<&rustls::RootCertStore>,
) -> Reply {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use http_body_util::{BodyExt, Full};
        let uri: hyper::Uri = url.parse().expect("url");
        let authority = uri.authority().expect("authority").clone();
        let tcp = tokio::net::TcpStream::connect(authority.as_str())
            .await
            .expect("connect");
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header("host", authority.as_str());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(bytes::Bytes::from(body))).unwrap();
        macro_rules! exchange {
            ($io:expr) => {{
                let (mut send, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new($io))
                        .await
                        .expect("handshake");
                tokio::spawn(conn);
                let resp = send.send_request(req).await.expect("request");
                let status = resp.status().as_u16();
                let headers = resp.headers().clone();
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .expect("body")
                    .to_bytes()
                    .to_vec();
                Reply {
                    status,
                    headers,
                    body,
                }
            }};
        }
        match tls {
            None => exchange!(tcp),
            Some(roots) => {
                let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
                let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                let stream = connector.connect(name, tcp).await.expect("TLS handshake");
                exchange!(stream)
            }
        }
    })
}

pub fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    http("GET", url, headers, Vec::new(), None)
}

/// A real nginx (the library's harness), failing the test if it cannot start.
pub struct Nginx {
    inner: intersync_bench::harness::Nginx,
    pub url: String,
}

impl Nginx {
    /// Starts nginx on `root`; `extra` goes into its `server` block (e.g. `max_ranges 0;`).
    pub fn start(root: &Path, extra: &str) -> Nginx {
        Nginx::wrap(intersync_bench::harness::Nginx::serve(root, extra))
    }

    /// Starts nginx as a caching proxy in front of `origin`.
    pub fn cache_in_front_of(origin: &str) -> Nginx {
        Nginx::wrap(intersync_bench::harness::Nginx::cache_in_front_of(origin))
    }

    fn wrap(started: std::io::Result<intersync_bench::harness::Nginx>) -> Nginx {
        let inner = started.unwrap_or_else(|e| panic!("nginx: {e}"));
        Nginx {
            url: inner.url.clone(),
            inner,
        }
    }

    /// The access log so far, a request a line: `REQUEST STATUS CACHE`.
    pub fn requests(&self) -> Vec<String> {
        self.inner
            .requests()
            .into_iter()
            .map(|r| format!("{} {} {}", r.request, r.status, r.cache))
            .collect()
    }

    /// How many connections the requests after the first `skip` came on.
    pub fn connections_since(&self, skip: usize) -> usize {
        let requests = self.inner.requests();
        let ids: std::collections::HashSet<u64> =
            requests.iter().skip(skip).map(|r| r.connection).collect();
        ids.len()
    }
}

/// A tmpfs of a given size mounted on a fresh folder (the tests run as
/// root), unmounted when dropped: a disk that fills.
pub struct Tmpfs(pub std::path::PathBuf, #[allow(dead_code)] Dir);

impl Tmpfs {
    pub fn new(size: &str) -> Tmpfs {
        let dir = Dir::new();
        let at = dir.path("");
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&at)
            .status()
            .expect("mount");
        assert!(
            mounted.success(),
            "cannot mount a tmpfs (the tests run as root)"
        );
        Tmpfs(at, dir)
    }

    /// Gives it another size (space returns).
    pub fn resize(&self, size: &str) {
        let resized = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .expect("mount");
        assert!(resized.success(), "cannot resize the tmpfs");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}
