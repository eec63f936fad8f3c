//! The links the benchmark runs over. Loopback as it is; and a slow link: a
//! network namespace whose `lo` has `mtu 1500` (without it tbf stalls TCP on
//! lo's 64 KiB MTU) and a token bucket (`tc ... tbf rate 8mbit`), optionally
//! with a round-trip time that the relay adds (tbf adds none, and netem is
//! not available here).
//!
//! Every client reaches its server through the counting relay, so traffic
//! crosses `lo` twice: client to relay, relay to server. Only the first hop
//! is the link: the relay listens on 127.0.0.2, and an htb class with the
//! tbf under it takes only packets to or from 127.0.0.2; the relay's hop to
//! the server (127.0.0.1) is not shaped.

use std::io;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A link between client and server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Link {
    Loopback,
    /// 8 Mbit/s, no added delay.
    Slow,
    /// 8 Mbit/s and 100 ms of round-trip time.
    SlowDelayed,
}

/// The slow links' rate, for tc.
pub const SLOW_RATE: &str = "8mbit";

impl Link {
    pub const ALL: [Link; 3] = [Link::Loopback, Link::Slow, Link::SlowDelayed];

    pub fn name(self) -> &'static str {
        match self {
            Link::Loopback => "loopback",
            Link::Slow => "8 Mbit/s",
            Link::SlowDelayed => "8 Mbit/s, 100 ms RTT",
        }
    }

    pub fn parse(s: &str) -> Option<Link> {
        match s {
            "loopback" => Some(Link::Loopback),
            "slow" => Some(Link::Slow),
            "slow-delayed" => Some(Link::SlowDelayed),
            _ => None,
        }
    }

    pub fn arg(self) -> &'static str {
        match self {
            Link::Loopback => "loopback",
            Link::Slow => "slow",
            Link::SlowDelayed => "slow-delayed",
        }
    }

    /// How long the relay holds each byte, each way.
    pub fn one_way_delay(self) -> Duration {
        match self {
            Link::SlowDelayed => Duration::from_millis(50),
            _ => Duration::ZERO,
        }
    }

    /// Where the relay listens: the shaped address on slow links.
    pub fn relay_ip(self) -> std::net::Ipv4Addr {
        match self {
            Link::Loopback => std::net::Ipv4Addr::new(127, 0, 0, 1),
            _ => std::net::Ipv4Addr::new(127, 0, 0, 2),
        }
    }

    pub fn shaped(self) -> bool {
        self != Link::Loopback
    }
}

/// A network namespace with the slow link on its `lo`; removed when dropped.
pub struct Namespace {
    pub name: String,
}

fn ip(args: &[&str]) -> io::Result<()> {
    let out = crate::harness::program("ip")?
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

impl Namespace {
    /// Creates the namespace (root is needed) with the shaped `lo`.
    pub fn create() -> io::Result<Namespace> {
        let name = format!("intersync-bench-{}", std::process::id());
        ip(&["netns", "add", &name])?;
        let ns = Namespace { name };
        let tc = |args: &str| {
            let mut all = vec!["netns", "exec", &ns.name, "tc"];
            all.extend(args.split(' '));
            ip(&all)
        };
        ip(&["netns", "exec", &ns.name, "ip", "link", "set", "lo", "up"])?;
        ip(&[
            "netns", "exec", &ns.name, "ip", "link", "set", "lo", "mtu", "1500",
        ])?;
        tc("qdisc add dev lo root handle 1: htb default 20 r2q 1000")?;
        tc("class add dev lo parent 1: classid 1:10 htb rate 10gbit quantum 60000")?;
        tc("class add dev lo parent 1: classid 1:20 htb rate 10gbit quantum 60000")?;
        tc(&format!(
            "qdisc add dev lo parent 1:10 handle 10: tbf rate {SLOW_RATE} burst 32kbit latency 400ms"
        ))?;
        tc(
            "filter add dev lo parent 1: protocol ip prio 1 u32 match ip dst 127.0.0.2/32 flowid 1:10",
        )?;
        tc(
            "filter add dev lo parent 1: protocol ip prio 1 u32 match ip src 127.0.0.2/32 flowid 1:10",
        )?;
        Ok(ns)
    }

    /// `program` run inside the namespace.
    pub fn command(&self, program: &std::path::Path) -> io::Result<Command> {
        let mut c = crate::harness::program("ip")?;
        c.args(["netns", "exec", &self.name]).arg(program);
        Ok(c)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}
