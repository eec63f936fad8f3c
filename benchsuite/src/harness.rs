//! Real programs that the benchmarks and the tests start and measure
//! against, on loopback: a plain nginx serving a folder, or caching in front
//! of an origin. Each counts what crossed it in its own access log, so that
//! every tool measured through it is counted the same way.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Whether `name` is a program on the `PATH`.
pub fn installed(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
        .unwrap_or(false)
}

/// `name` as a command, or an error that says it is not installed.
pub fn program(name: &str) -> io::Result<Command> {
    if installed(name) {
        Ok(Command::new(name))
    } else {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("`{name}` is not installed (`.ci/run` installs it with apt)"),
        ))
    }
}

/// One request in nginx's access log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedRequest {
    /// The request line, e.g. `GET /a HTTP/1.1`.
    pub request: String,
    pub status: u16,
    /// `HIT`, `MISS`, ... when caching; `-` otherwise.
    pub cache: String,
    /// Request line, headers and body.
    pub received: u64,
    /// Status line, headers and body.
    pub sent: u64,
    /// nginx's serial number of the connection it came on.
    pub connection: u64,
}

/// A real nginx on 127.0.0.1, stopped when dropped.
pub struct Nginx {
    child: Child,
    pub url: String,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// nginx serving `root` read-only; `extra` goes into its `server` block
    /// (e.g. `max_ranges 0;`).
    pub fn serve(root: &Path, extra: &str) -> io::Result<Nginx> {
        Nginx::configure("", &format!("root {};\n    {extra}", root.display()))
    }

    /// nginx as a caching proxy (`proxy_cache`) in front of `origin` (a URL
    /// like `http://127.0.0.1:PORT/`). Requests for one object that arrive
    /// while it is being fetched wait for that fetch (`proxy_cache_lock`).
    pub fn cache_in_front_of(origin: &str) -> io::Result<Nginx> {
        let origin = origin.trim_end_matches('/');
        Nginx::configure(
            "proxy_cache_path {dir}/cache levels=1:2 keys_zone=intersync:10m max_size=1g use_temp_path=off;",
            &format!(
                "location / {{\n      proxy_pass {origin};\n      proxy_cache intersync;\n      \
                 proxy_cache_lock on;\n      proxy_cache_lock_timeout 60s;\n      proxy_cache_lock_age 60s;\n      \
                 proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}"
            ),
        )
    }

    /// nginx with `http_extra` in its `http` block and `server` as the body
    /// of its one `server` block; `{dir}` in either stands for nginx's own
    /// temporary folder.
    pub fn configure(http_extra: &str, server: &str) -> io::Result<Nginx> {
        let mut command = program("nginx")?;
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let d = dir.path().display().to_string();
        let conf = format!(
            "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\n\
             http {{\n  log_format counted '$connection|$request|$status|$upstream_cache_status|$request_length|$bytes_sent';\n  \
             access_log {d}/access.log counted;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  {}\n  \
             server {{\n    listen 127.0.0.1:{port};\n    {}\n  }}\n}}\n",
            http_extra.replace("{dir}", &d),
            server.replace("{dir}", &d),
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let mut child = command
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        let url = format!("http://127.0.0.1:{port}/");
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(Nginx { child, url, dir });
            }
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
                return Err(io::Error::other(format!(
                    "nginx exited with {status}: {log}"
                )));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = child.kill();
        let _ = child.wait();
        Err(io::Error::other(format!(
            "nginx did not start on port {port}"
        )))
    }

    /// nginx's process (one: `master_process off`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where it listens.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .expect("nginx's URL holds an address")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("access.log")
    }

    /// Every request so far, once the log has stopped growing: nginx logs
    /// a request just after its last byte went out, so a client can be
    /// done a moment before its last line is written.
    pub fn settled_requests(&self) -> Vec<LoggedRequest> {
        let mut seen = self.requests();
        loop {
            std::thread::sleep(Duration::from_millis(50));
            let now = self.requests();
            if now.len() == seen.len() {
                return now;
            }
            seen = now;
        }
    }

    /// Every request so far, in the order nginx finished them.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        std::fs::read_to_string(self.log_path())
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let mut f = line.rsplitn(5, '|');
                let sent = f.next()?.parse().ok()?;
                let received = f.next()?.parse().ok()?;
                let cache = f.next()?.to_owned();
                let status = f.next()?.parse().ok()?;
                let (connection, request) = f.next()?.split_once('|')?;
                let (connection, request) = (connection.parse().ok()?, request.to_owned());
                Some(LoggedRequest {
                    connection,
                    request,
                    status,
                    cache,
                    received,
                    sent,
                })
            })
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
