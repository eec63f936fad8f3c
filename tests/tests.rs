//! Integration tests: the real `intersync` binary against real tools.
//! One binary with a small harness (`util`) keeps the build fast.

mod util;

mod batches;
mod bench;
mod cache;
mod client;
mod codings;
mod delta_cli;
mod faults;
mod hostile;
mod http2;
mod misbehaving;
mod patches;
mod presto;
mod rdiff;
mod rsync_compat;
mod rsync_golden;
mod rsyncd;
mod server;
mod static_export;
