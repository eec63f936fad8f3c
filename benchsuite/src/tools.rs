//! Each tool, run once on a scenario: set up (unmeasured) so the client
//! holds the old tree and the server the new one, then the measured step
//! through the counting relay, then the check of the client's tree.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::proc::{self, Usage};
use super::relay::{Counted, Relay};
use super::{Figure, Options, Prepared, Tool, tree};
use crate::harness::{Nginx, program};

/// One run's figures.
pub struct Sample {
    counted: Counted,
    tool_bytes: Option<(u64, u64)>,
    requests: Option<u64>,
    client: Usage,
    server: Option<(f64, u64)>,
    correct: bool,
    note: String,
}

type Outcome<T> = Result<T, String>;

fn io<T>(r: std::io::Result<T>) -> Outcome<T> {
    r.map_err(|e| e.to_string())
}

pub async fn run_once(tool: Tool, s: &Prepared, dir: &Path, options: &Options) -> Outcome<Sample> {
    let _ = std::fs::remove_dir_all(dir);
    io(std::fs::create_dir_all(dir))?;
    let client = dir.join("client");
    let mut sample = match tool {
        Tool::Smart => smart(s, dir, &client, options, false).await?,
        Tool::SmartUnknownBase => smart(s, dir, &client, options, true).await?,
        Tool::Static => static_export(s, dir, &client, options).await?,
        Tool::FullFetch => full_fetch(s, dir, &client, options).await?,
        Tool::Rsync | Tool::RsyncZ => rsync(s, dir, &client, options, tool == Tool::RsyncZ).await?,
        Tool::Zsync => zsync(s, dir, &client, options).await?,
        Tool::Get => get(s, dir, &client, options).await?,
    };
    if sample.client.timed_out {
        let limit = options.max_step.unwrap_or_default().as_secs();
        sample.note = join(&sample.note, &format!("stopped after {limit} s"));
    }
    let want = io(tree::contents(&s.new))?;
    let got = io(tree::contents(&client))?;
    sample.correct = want == got;
    if !sample.correct {
        let missing = want.iter().filter(|w| !got.contains(w)).count();
        let extra = got.iter().filter(|g| !want.contains(g)).count();
        sample.note = join(
            &sample.note,
            &format!("WRONG TREE: {missing} missing, {extra} extra"),
        );
    }
    Ok(sample)
}

fn join(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_owned()
    } else {
        format!("{a}; {b}")
    }
}

pub fn summarize(s: &Prepared, tool: Tool, link: &str, samples: Vec<Sample>) -> Figure {
    let mut walls: Vec<f64> = samples
        .iter()
        .map(|x| x.client.wall.as_secs_f64())
        .collect();
    walls.sort_by(f64::total_cmp);
    let median = walls[walls.len() / 2];
    // Bytes are the same every run; the last run speaks for them.
    let last = samples.last().expect("at least one run");
    let cpu: Vec<f64> = samples.iter().map(|x| x.client.cpu).collect();
    Figure {
        scenario: s.id.clone(),
        tool: tool.name().into(),
        link: link.into(),
        changed_bytes: s.changed_bytes,
        full_fetch_bytes: s.full_fetch_bytes,
        up_bytes: last.counted.up,
        down_bytes: last.counted.down,
        tool_bytes: last.tool_bytes,
        requests: last.requests,
        connections: last.counted.connections,
        wall_s: median,
        walls_s: walls,
        client_cpu_s: cpu.iter().sum::<f64>() / cpu.len() as f64,
        client_peak_kib: samples.iter().map(|x| x.client.peak_kib).max().unwrap_or(0),
        server_cpu_s: last.server.map(|x| x.0),
        server_peak_kib: last.server.map(|x| x.1),
        correct: samples.iter().all(|x| x.correct),
        note: last.note.clone(),
    }
}

async fn relay(options: &Options, target: SocketAddr) -> Outcome<Relay> {
    let link = options.link;
    io(Relay::start(
        link.relay_ip(),
        target,
        link.one_way_delay(),
        link.relay_rate(),
    )
    .await)
}

/// The unmeasured first sync, straight from the server (not over the
/// link, where a slow one could take many minutes). The measured sync then
/// goes through the link's URL: a working copy follows its export's id, so
/// the other address is taken as the same export.
fn clone(options: &Options, direct: &str, client: &Path) -> Outcome<()> {
    io(run_setup(
        Command::new(&options.intersync)
            .arg("sync")
            .arg(direct)
            .arg(client),
    ))
    .map(drop)
}

/// A setup step: no deadline.
fn run_setup(command: &mut Command) -> std::io::Result<proc::Finished> {
    proc::run(command, None)
}

/// A measured step's process, stopped at `until`.
fn measured(
    until: Option<std::time::Instant>,
    command: &mut Command,
) -> std::io::Result<proc::Finished> {
    proc::run(command, until)
}

/// When a measured step that starts now must end.
fn deadline(options: &Options) -> Option<std::time::Instant> {
    options.max_step.map(|d| std::time::Instant::now() + d)
}

fn free_port() -> Outcome<u16> {
    Ok(io(io(std::net::TcpListener::bind("127.0.0.1:0"))?.local_addr())?.port())
}

/// `intersync serve` on `root` at `port`, until dropped.
struct Serve {
    child: Child,
}

impl Serve {
    /// Starts the server; a port another process took meanwhile (the port
    /// was free when picked, and is reused across a restart) is tried again.
    fn start(options: &Options, root: &Path, port: u16) -> Outcome<Serve> {
        let errors = root.with_extension("serve.err");
        for _ in 0..20 {
            let mut child = io(Command::new(&options.intersync)
                .arg("serve")
                .arg(root)
                .args(["--listen", &format!("127.0.0.1:{port}"), "--no-watch"])
                .stdout(Stdio::piped())
                .stderr(io(std::fs::File::create(&errors))?)
                .spawn())?;
            let mut line = String::new();
            let stdout = child.stdout.take().expect("piped");
            io(std::io::BufReader::new(stdout).read_line(&mut line))?;
            if line.contains("serving") {
                return Ok(Serve { child });
            }
            let _ = child.kill();
            let _ = child.wait();
            let said = std::fs::read_to_string(&errors).unwrap_or_default();
            if !said.contains("in use") {
                return Err(format!("intersync serve did not start: {line:?} {said}"));
            }
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
        Err(format!("port {port} stayed in use"))
    }

    fn stats(&self) -> Option<(f64, u64)> {
        Some((
            proc::cpu_seconds(self.child.id())?,
            proc::peak_kib(self.child.id())?,
        ))
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// What a step cost the server: CPU seconds spent, peak memory.
fn server_delta(before: Option<(f64, u64)>, after: Option<(f64, u64)>) -> Option<(f64, u64)> {
    Some((after?.0 - before?.0, after?.1))
}

fn since(now: Counted, then: Counted) -> Counted {
    Counted {
        up: now.up - then.up,
        down: now.down - then.down,
        connections: now.connections - then.connections,
    }
}

/// What `intersync sync --stats` did and said about itself.
struct Synced {
    done: proc::Finished,
    /// Its own figures: (sent, received).
    bytes: Option<(u64, u64)>,
    requests: Option<u64>,
}

/// The measured step of both InterSync tools.
fn sync_step(options: &Options, url: &str, client: &Path) -> Outcome<Synced> {
    let done = io(measured(
        deadline(options),
        Command::new(&options.intersync)
            .args(["sync", "--stats"])
            .arg(url)
            .arg(client),
    ))?;
    let (bytes, requests) = intersync_stats(&done.stdout);
    Ok(Synced {
        done,
        bytes,
        requests,
    })
}

/// `intersync sync --stats` figures: (sent, received), requests.
fn intersync_stats(stdout: &str) -> (Option<(u64, u64)>, Option<u64>) {
    let field = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let bytes = field("Total bytes sent:").zip(field("Total bytes received:"));
    (bytes, field("HTTP requests:"))
}

/// With `forget`, the server's kept versions are emptied before the update,
/// so it cannot patch from the client's version and the signature path runs.
async fn smart(
    s: &Prepared,
    dir: &Path,
    client: &Path,
    options: &Options,
    forget: bool,
) -> Outcome<Sample> {
    let root = dir.join("server");
    io(tree::mirror(&s.old, &root))?;
    let port = free_port()?;
    let relay = relay(options, addr(port)).await?;
    let url = format!("http://{}/", relay.addr);
    let started = std::time::Instant::now();
    let server = Serve::start(options, &root, port)?;
    let first_start = started.elapsed();
    clone(options, &format!("http://127.0.0.1:{port}/"), client)?;
    // The change happens on the server while it is down; its start-up scan
    // journals it, as it would for any change made behind its back.
    drop(server);
    io(tree::mirror(&s.new, &root))?;
    if forget {
        io(std::fs::remove_dir_all(root.join(".intersync/versions")))?;
    }
    let started = std::time::Instant::now();
    let server = Serve::start(options, &root, port)?;
    let restart = started.elapsed();
    let before = (relay.counted(), server.stats());
    let Synced {
        done,
        bytes: tool_bytes,
        requests,
    } = sync_step(options, &url, client)?;
    Ok(Sample {
        counted: since(relay.counted(), before.0),
        tool_bytes,
        requests,
        client: done.usage,
        server: server_delta(before.1, server.stats()),
        correct: false,
        // The server's own start-up is part of what a very large tree costs.
        note: match s.id.starts_with("S9") {
            true => format!(
                "server first start {:.1} s, restart {:.1} s",
                first_start.as_secs_f64(),
                restart.as_secs_f64()
            ),
            false => String::new(),
        },
    })
}

fn nginx_stats(nginx: &Nginx) -> Option<(f64, u64)> {
    Some((
        proc::cpu_seconds(nginx.pid())?,
        proc::peak_kib(nginx.pid())?,
    ))
}

fn export(options: &Options, site: &Path) -> Outcome<()> {
    io(run_setup(
        Command::new(&options.intersync).arg("export").arg(site),
    ))
    .map(|_| ())
}

async fn static_export(
    s: &Prepared,
    dir: &Path,
    client: &Path,
    options: &Options,
) -> Outcome<Sample> {
    let www = dir.join("www");
    let site = www.join("site");
    io(tree::mirror(&s.old, &site))?;
    export(options, &site)?;
    let nginx = io(Nginx::serve(&www, ""))?;
    let relay = relay(options, nginx.addr()).await?;
    let url = format!("http://{}/site/", relay.addr);
    clone(options, &format!("{}site/", nginx.url), client)?;
    io(tree::mirror(&s.new, &site))?;
    export(options, &site)?;
    let before = (
        relay.counted(),
        nginx_stats(&nginx),
        nginx.settled_requests().len(),
    );
    let Synced {
        done,
        bytes: tool_bytes,
        requests,
    } = sync_step(options, &url, client)?;
    let logged = nginx.settled_requests().len() - before.2;
    let mut note = String::new();
    if requests != Some(logged as u64) {
        note = format!("nginx logged {logged} requests");
    }
    Ok(Sample {
        counted: since(relay.counted(), before.0),
        tool_bytes,
        requests,
        client: done.usage,
        server: server_delta(before.1, nginx_stats(&nginx)),
        correct: false,
        note,
    })
}

/// Files of `new` that `old` lacks or has with other bytes.
fn changed_files(old: &Path, new: &Path) -> Outcome<Vec<PathBuf>> {
    let mut out = Vec::new();
    for f in io(tree::files(new))? {
        if std::fs::read(old.join(&f)).ok() != Some(io(std::fs::read(new.join(&f)))?) {
            out.push(f);
        }
    }
    Ok(out)
}

/// Removes what `new` does not have (the tools that do not delete).
fn delete_extra(client: &Path, new: &Path) -> Outcome<usize> {
    let keep: std::collections::HashSet<_> = io(tree::files(new))?.into_iter().collect();
    let mut n = 0;
    for f in io(tree::files(client))? {
        if !keep.contains(&f) {
            io(std::fs::remove_file(client.join(&f)))?;
            n += 1;
        }
    }
    Ok(n)
}

fn url_path(p: &Path) -> String {
    p.to_string_lossy().replace(' ', "%20")
}

async fn full_fetch(s: &Prepared, dir: &Path, client: &Path, options: &Options) -> Outcome<Sample> {
    let www = dir.join("www");
    io(tree::mirror(&s.new, &www))?;
    io(tree::mirror(&s.old, client))?;
    let nginx = io(Nginx::serve(&www, ""))?;
    let relay = relay(options, nginx.addr()).await?;
    let wanted = changed_files(&s.old, &s.new)?;
    let mut config = String::new();
    for f in &wanted {
        config.push_str(&format!(
            "url = \"http://{}/{}\"\noutput = \"{}\"\n",
            relay.addr,
            url_path(f),
            client.join(f).display()
        ));
    }
    let list = dir.join("curl.conf");
    io(std::fs::write(&list, config))?;
    let before = (relay.counted(), nginx_stats(&nginx));
    let until = deadline(options);
    let usage = if wanted.is_empty() {
        Usage::default()
    } else {
        io(measured(
            until,
            io(program("curl"))?
                .args(["-s", "-S", "-f", "--create-dirs", "-K"])
                .arg(&list),
        ))?
        .usage
    };
    let counted = since(relay.counted(), before.0);
    let deleted = delete_extra(client, &s.new)?;
    Ok(Sample {
        counted,
        tool_bytes: None,
        requests: Some(wanted.len() as u64),
        client: usage,
        server: server_delta(before.1, nginx_stats(&nginx)),
        correct: false,
        note: format!("told which files changed; {deleted} deletions made by the harness"),
    })
}

async fn get(s: &Prepared, dir: &Path, client: &Path, options: &Options) -> Outcome<Sample> {
    let root = dir.join("server");
    io(tree::mirror(&s.new, &root))?;
    io(tree::mirror(&s.old, client))?;
    let port = free_port()?;
    let server = Serve::start(options, &root, port)?;
    let relay = relay(options, addr(port)).await?;
    let wanted = changed_files(&s.old, &s.new)?;
    let before = (relay.counted(), server.stats());
    let mut usage = Usage::default();
    let until = deadline(options);
    for f in &wanted {
        let out = client.join(f);
        io(std::fs::create_dir_all(out.parent().expect("has a folder")))?;
        let done = io(measured(
            until,
            Command::new(&options.intersync)
                .arg("get")
                .arg(format!("http://{}/{}", relay.addr, url_path(f)))
                .arg(&out),
        ))?;
        usage = usage.then(done.usage);
    }
    let counted = since(relay.counted(), before.0);
    let after = server.stats();
    // What `get` keeps beside each file to make the next one conditional.
    for f in &wanted {
        let name = f.file_name().expect("a file").to_string_lossy();
        let _ = std::fs::remove_file(
            client
                .join(f)
                .with_file_name(format!(".{name}.intersync-get")),
        );
    }
    let deleted = delete_extra(client, &s.new)?;
    Ok(Sample {
        counted,
        tool_bytes: None,
        requests: Some(wanted.len() as u64),
        client: usage,
        server: server_delta(before.1, after),
        correct: false,
        note: format!("told which files changed; {deleted} deletions made by the harness"),
    })
}

/// rsync's `--stats` totals: (sent, received).
fn rsync_stats(stdout: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().replace(',', "").parse::<u64>().ok())
    };
    field("Total bytes sent:").zip(field("Total bytes received:"))
}

async fn rsync(
    s: &Prepared,
    dir: &Path,
    client: &Path,
    options: &Options,
    compress: bool,
) -> Outcome<Sample> {
    let root = dir.join("server");
    io(tree::mirror(&s.new, &root))?;
    io(tree::mirror(&s.old, client))?;
    let port = free_port()?;
    let conf = dir.join("rsyncd.conf");
    io(std::fs::write(
        &conf,
        format!(
            "use chroot = no\nnumeric ids = yes\npid file = {}\n[data]\npath = {}\nread only = yes\n",
            dir.join("rsyncd.pid").display(),
            root.display()
        ),
    ))?;
    let mut daemon = io(io(program("rsync"))?
        .args(["--daemon", "--no-detach", "--address", "127.0.0.1"])
        .arg(format!("--port={port}"))
        .arg(format!("--config={}", conf.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn())?;
    let mut up = false;
    for _ in 0..200 {
        if std::net::TcpStream::connect(addr(port)).is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    if !up {
        let _ = daemon.kill();
        return Err("rsync --daemon did not start".into());
    }
    let relay = relay(options, addr(port)).await?;
    let before = relay.counted();
    let mut command = io(program("rsync"))?;
    command.args(["-a", "--delete", "--stats"]);
    if compress {
        command.arg("-z");
    }
    let until = deadline(options);
    let done = measured(
        until,
        command
            .arg(format!("rsync://{}/data/", relay.addr))
            .arg(format!("{}/", client.display())),
    );
    let _ = daemon.kill();
    let _ = daemon.wait();
    let done = io(done)?;
    Ok(Sample {
        counted: since(relay.counted(), before),
        tool_bytes: rsync_stats(&done.stdout),
        requests: None,
        client: done.usage,
        server: None,
        correct: false,
        note: "daemon forks a process per client: server not measured".into(),
    })
}

async fn zsync(s: &Prepared, dir: &Path, client: &Path, options: &Options) -> Outcome<Sample> {
    let www = dir.join("www");
    let site = www.join("site");
    io(tree::mirror(&s.new, &site))?;
    io(tree::mirror(&s.old, client))?;
    let files = io(tree::files(&s.new))?;
    // Control files depend only on the new tree: made once per scenario.
    let made = dir
        .parent()
        .unwrap_or(dir)
        .join(format!("zsync-control-{}", s.id));
    if !made.join(".complete").exists() {
        for f in &files {
            let control = made.join(f).with_extension(extension(f, "zsync"));
            io(std::fs::create_dir_all(
                control.parent().expect("has a folder"),
            ))?;
            let up = "../".repeat(f.components().count());
            io(run_setup(
                io(program("zsyncmake"))?
                    .arg("-o")
                    .arg(&control)
                    .arg("-u")
                    .arg(format!("{up}site/{}", url_path(f)))
                    .arg(site.join(f)),
            ))?;
        }
        io(std::fs::write(made.join(".complete"), b""))?;
    }
    io(tree::mirror(&made, &www.join("zsync")))?;
    let nginx = io(Nginx::serve(&www, ""))?;
    let relay = relay(options, nginx.addr()).await?;
    let before = (
        relay.counted(),
        nginx_stats(&nginx),
        nginx.settled_requests().len(),
    );
    let mut usage = Usage::default();
    let until = deadline(options);
    for f in &files {
        let out = client.join(f);
        io(std::fs::create_dir_all(out.parent().expect("has a folder")))?;
        let done = io(measured(
            until,
            io(program("zsync"))?
                .arg("-q")
                .arg("-o")
                .arg(&out)
                .arg(format!(
                    "http://{}/zsync/{}",
                    relay.addr,
                    url_path(&f.with_extension(extension(f, "zsync")))
                ))
                .current_dir(out.parent().expect("has a folder")),
        ))?;
        usage = usage.then(done.usage);
        let _ = std::fs::remove_file(out.with_extension(extension(f, "zs-old")));
    }
    let counted = since(relay.counted(), before.0);
    let requests = (nginx.settled_requests().len() - before.2) as u64;
    let deleted = delete_extra(client, &s.new)?;
    Ok(Sample {
        counted,
        tool_bytes: None,
        requests: Some(requests),
        client: usage,
        server: server_delta(before.1, nginx_stats(&nginx)),
        correct: false,
        note: format!("one zsync a file, every file; {deleted} deletions made by the harness"),
    })
}

/// `f`'s extension with `.suffix` added (`a.bin` → `bin.suffix`).
fn extension(f: &Path, suffix: &str) -> String {
    match f.extension() {
        Some(e) => format!("{}.{suffix}", e.to_string_lossy()),
        None => suffix.to_owned(),
    }
}
