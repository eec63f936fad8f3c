//! Everything InterSync does only to match rsync. For now: rsync's exit codes and `--bwlimit` units,
//! which every InterSync command uses so that scripts written for rsync can
//! branch on them unchanged. Later: rsync's options, filter rules,
//! rsyncd.conf, and its itemize and statistics output.

pub mod bwlimit;
pub mod exit;

pub use exit::ExitCode;
