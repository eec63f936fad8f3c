//! Everything InterSync does only to match rsync: its exit codes and
//! `--bwlimit` units (which every InterSync command uses, so that scripts
//! written for rsync can branch on them unchanged), its wildcard matching
//! and filter rules. Later: rsync's options, rsyncd.conf, and its itemize and
//! statistics output.

pub mod bwlimit;
pub mod exit;
pub mod filter;
pub mod wildmatch;

pub use exit::ExitCode;
