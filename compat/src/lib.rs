//! Everything InterSync does only to match rsync: its exit codes and
//! `--bwlimit` units (which every InterSync command uses, so that scripts
//! written for rsync can branch on them unchanged), its wildcard matching,
//! filter rules, its command line turned into a validated plan, and what
//! it prints (itemize lines, `--stats`), and rsyncd.conf.

pub mod bwlimit;
pub mod chmod;
pub mod exit;
pub mod filter;
#[cfg(feature = "cli")]
pub mod options;
pub mod output;
pub mod rsyncd;
pub mod wildmatch;

pub use exit::ExitCode;
