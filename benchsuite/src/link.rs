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
    /// A rate (bits a second) and a round-trip time, both made by the relay
    /// alone: no namespace, no root (`intersync bench --link`).
    Emulated {
        bits_per_sec: Option<u64>,
        rtt_ms: u64,
    },
}

/// The slow links' rate, for tc.
pub const SLOW_RATE: &str = "8mbit";

impl Link {
    pub const ALL: [Link; 3] = [Link::Loopback, Link::Slow, Link::SlowDelayed];

    pub fn name(self) -> String {
        match self {
            Link::Loopback => "loopback".into(),
            Link::Slow => "8 Mbit/s".into(),
            Link::SlowDelayed => "8 Mbit/s, 100 ms RTT".into(),
            Link::Emulated {
                bits_per_sec,
                rtt_ms,
            } => format!(
                "{}, {rtt_ms} ms RTT (emulated)",
                bits_per_sec.map_or("loopback".into(), |b| format!("{} Mbit/s", b as f64 / 1e6))
            ),
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
            Link::Emulated { .. } => "emulated",
        }
    }

    /// How long the relay holds each byte, each way.
    pub fn one_way_delay(self) -> Duration {
        match self {
            Link::SlowDelayed => Duration::from_millis(50),
            Link::Emulated { rtt_ms, .. } => Duration::from_millis(rtt_ms) / 2,
            _ => Duration::ZERO,
        }
    }

    /// The rate the relay itself keeps to, bytes a second each way.
    pub fn relay_rate(self) -> Option<u64> {
        match self {
            Link::Emulated { bits_per_sec, .. } => bits_per_sec.map(|b| b / 8),
            _ => None,
        }
    }

    /// Where the relay listens: the shaped address on slow links.
    pub fn relay_ip(self) -> std::net::Ipv4Addr {
        if self.shaped() {
            std::net::Ipv4Addr::new(127, 0, 0, 2)
        } else {
            std::net::Ipv4Addr::new(127, 0, 0, 1)
        }
    }

    /// Whether the link is made by tc in a namespace.
    pub fn shaped(self) -> bool {
        matches!(self, Link::Slow | Link::SlowDelayed)
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
