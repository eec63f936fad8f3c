//! rsync's command line, in two stages: [`RsyncArgs`] mirrors rsync's flags
//! for clap (every flag an rsync script may pass, including the ones we
//! refuse, so that they are refused by name rather than misparsed), and
//! [`Plan::from_args`] turns it into a validated [`Plan`]. Only that
//! conversion knows that `-a` is `-rlptgoD`, that the last of `-p` and
//! `--no-p` wins, and that filter options apply in the order given.
//!
//! What it trusts: nothing; a bad command line is a [`PlanError`] whose
//! [`PlanError::exit_code`] is rsync's (1 for syntax, 4 for an option we do
//! not support, 11 for a rules file that cannot be read).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{ArgAction, ArgMatches, CommandFactory, FromArgMatches, Parser};

use crate::ExitCode;
use crate::filter::{FilterError, Filters, LocalFiles};

/// rsync's flags, as clap sees them. Booleans are counted so that their
/// positions on the command line can decide which of `-X` and `--no-X`
/// came last.
#[derive(Parser, Debug)]
#[command(
    name = "intersync",
    disable_help_flag = true,
    disable_version_flag = true,
    about = "rsync's command line: intersync [OPTIONS] SRC... DEST, each a path or an http(s):// URL"
)]
pub struct RsyncArgs {
    #[arg(short = 'v', long = "verbose", action = ArgAction::Count)]
    verbose: u8,
    #[arg(long = "no-verbose", visible_alias = "no-v", action = ArgAction::Count)]
    no_verbose: u8,
    #[arg(short = 'q', long = "quiet", action = ArgAction::Count)]
    quiet: u8,
    #[arg(short = 'a', long = "archive", action = ArgAction::Count)]
    archive: u8,
    #[arg(short = 'r', long = "recursive", action = ArgAction::Count)]
    recursive: u8,
    #[arg(long = "no-recursive", visible_alias = "no-r", action = ArgAction::Count)]
    no_recursive: u8,
    #[arg(short = 'd', long = "dirs", action = ArgAction::Count)]
    dirs: u8,
    #[arg(long = "no-dirs", visible_alias = "no-d", action = ArgAction::Count)]
    no_dirs: u8,
    #[arg(short = 'l', long = "links", action = ArgAction::Count)]
    links: u8,
    #[arg(long = "no-links", visible_alias = "no-l", action = ArgAction::Count)]
    no_links: u8,
    #[arg(short = 'p', long = "perms", action = ArgAction::Count)]
    perms: u8,
    #[arg(long = "no-perms", visible_alias = "no-p", action = ArgAction::Count)]
    no_perms: u8,
    #[arg(short = 't', long = "times", action = ArgAction::Count)]
    times: u8,
    #[arg(long = "no-times", visible_alias = "no-t", action = ArgAction::Count)]
    no_times: u8,
    #[arg(short = 'g', long = "group", action = ArgAction::Count)]
    group: u8,
    #[arg(long = "no-group", visible_alias = "no-g", action = ArgAction::Count)]
    no_group: u8,
    #[arg(short = 'o', long = "owner", action = ArgAction::Count)]
    owner: u8,
    #[arg(long = "no-owner", visible_alias = "no-o", action = ArgAction::Count)]
    no_owner: u8,
    #[arg(short = 'D', action = ArgAction::Count)]
    devices_specials: u8,
    #[arg(long = "no-D", action = ArgAction::Count)]
    no_devices_specials: u8,
    #[arg(long = "devices", action = ArgAction::Count)]
    devices: u8,
    #[arg(long = "no-devices", action = ArgAction::Count)]
    no_devices: u8,
    #[arg(long = "specials", action = ArgAction::Count)]
    specials: u8,
    #[arg(long = "no-specials", action = ArgAction::Count)]
    no_specials: u8,
    #[arg(short = 'H', long = "hard-links", action = ArgAction::Count)]
    hard_links: u8,
    #[arg(long = "no-hard-links", visible_alias = "no-H", action = ArgAction::Count)]
    no_hard_links: u8,
    #[arg(short = 'n', long = "dry-run", action = ArgAction::Count)]
    dry_run: u8,
    #[arg(short = 'h', long = "human-readable", action = ArgAction::Count)]
    human: u8,
    #[arg(long = "no-human-readable", visible_alias = "no-h", action = ArgAction::Count)]
    no_human: u8,
    #[arg(long = "help", action = ArgAction::Count)]
    help: u8,
    #[arg(short = 'z', long = "compress", action = ArgAction::Count)]
    compress: u8,
    #[arg(long = "no-compress", visible_alias = "no-z", action = ArgAction::Count)]
    no_compress: u8,
    #[arg(long = "compress-level", visible_alias = "zl")]
    compress_level: Option<String>,
    #[arg(long = "delete", action = ArgAction::Count)]
    delete: u8,
    #[arg(long = "delete-before", action = ArgAction::Count)]
    delete_before: u8,
    #[arg(long = "delete-during", visible_alias = "del", action = ArgAction::Count)]
    delete_during: u8,
    #[arg(long = "delete-after", action = ArgAction::Count)]
    delete_after: u8,
    #[arg(long = "delete-delay", action = ArgAction::Count)]
    delete_delay: u8,
    #[arg(long = "delete-excluded", action = ArgAction::Count)]
    delete_excluded: u8,
    #[arg(long = "ignore-errors", action = ArgAction::Count)]
    ignore_errors: u8,
    #[arg(long = "max-delete")]
    max_delete: Option<String>,
    #[arg(long = "exclude", allow_hyphen_values = true, action = ArgAction::Append)]
    exclude: Vec<String>,
    #[arg(long = "include", allow_hyphen_values = true, action = ArgAction::Append)]
    include: Vec<String>,
    #[arg(long = "exclude-from", action = ArgAction::Append)]
    exclude_from: Vec<PathBuf>,
    #[arg(long = "include-from", action = ArgAction::Append)]
    include_from: Vec<PathBuf>,
    #[arg(short = 'f', long = "filter", allow_hyphen_values = true, action = ArgAction::Append)]
    filter: Vec<String>,
    #[arg(short = 'F', action = ArgAction::Count)]
    rsync_filter: u8,
    #[arg(short = 'C', long = "cvs-exclude", action = ArgAction::Count)]
    cvs_exclude: u8,
    #[arg(short = '0', long = "from0", action = ArgAction::Count)]
    from0: u8,
    #[arg(short = 'i', long = "itemize-changes", action = ArgAction::Count)]
    itemize: u8,
    #[arg(long = "no-itemize-changes", visible_alias = "no-i", action = ArgAction::Count)]
    no_itemize: u8,
    #[arg(long = "stats", action = ArgAction::Count)]
    stats: u8,
    #[arg(long = "progress", action = ArgAction::Count)]
    progress: u8,
    #[arg(long = "no-progress", action = ArgAction::Count)]
    no_progress: u8,
    #[arg(short = 'P', action = ArgAction::Count)]
    partial_progress: u8,
    #[arg(long = "info", action = ArgAction::Append)]
    info: Vec<String>,
    #[arg(long = "bwlimit", value_parser = crate::bwlimit::parse)]
    bwlimit: Option<u64>,
    #[arg(long = "partial", action = ArgAction::Count)]
    partial: u8,
    #[arg(long = "no-partial", action = ArgAction::Count)]
    no_partial: u8,
    #[arg(long = "partial-dir")]
    partial_dir: Option<PathBuf>,
    #[arg(short = 'c', long = "checksum", action = ArgAction::Count)]
    checksum: u8,
    #[arg(long = "no-checksum", visible_alias = "no-c", action = ArgAction::Count)]
    no_checksum: u8,
    #[arg(long = "size-only", action = ArgAction::Count)]
    size_only: u8,
    #[arg(short = 'I', long = "ignore-times", action = ArgAction::Count)]
    ignore_times: u8,
    #[arg(long = "numeric-ids", action = ArgAction::Count)]
    numeric_ids: u8,
    #[arg(short = 'u', long = "update", action = ArgAction::Count)]
    update: u8,
    #[arg(long = "ignore-existing", action = ArgAction::Count)]
    ignore_existing: u8,
    #[arg(long = "existing", visible_alias = "ignore-non-existing", action = ArgAction::Count)]
    existing: u8,
    #[arg(long = "max-size")]
    max_size: Option<String>,
    #[arg(long = "min-size")]
    min_size: Option<String>,
    #[arg(short = 'O', long = "omit-dir-times", action = ArgAction::Count)]
    omit_dir_times: u8,
    #[arg(long = "mkpath", action = ArgAction::Count)]
    mkpath: u8,
    #[arg(short = '@', long = "modify-window", allow_hyphen_values = true)]
    modify_window: Option<i64>,
    #[arg(short = 'x', long = "one-file-system", action = ArgAction::Count)]
    one_file_system: u8,
    #[arg(long = "inplace", action = ArgAction::Count)]
    inplace: u8,
    #[arg(short = 'm', long = "prune-empty-dirs", action = ArgAction::Count)]
    prune_empty_dirs: u8,
    #[arg(short = 'W', long = "whole-file", action = ArgAction::Count)]
    whole_file: u8,
    #[arg(long = "no-whole-file", visible_alias = "no-W", action = ArgAction::Count)]
    no_whole_file: u8,
    #[arg(long = "timeout")]
    timeout: Option<u64>,
    #[arg(long = "contimeout")]
    contimeout: Option<u64>,

    // Flags rsync has and we refuse (exit 4), by name.
    #[arg(short = 'R', long = "relative", action = ArgAction::Count, hide = true)]
    relative: u8,
    #[arg(long = "files-from", hide = true)]
    files_from: Option<String>,
    #[arg(long = "chmod", action = ArgAction::Append)]
    chmod: Vec<String>,
    #[arg(long = "link-dest", hide = true, action = ArgAction::Append)]
    link_dest: Vec<String>,
    #[arg(long = "compare-dest", hide = true, action = ArgAction::Append)]
    compare_dest: Vec<String>,
    #[arg(long = "copy-dest", hide = true, action = ArgAction::Append)]
    copy_dest: Vec<String>,
    #[arg(long = "append", hide = true, action = ArgAction::Count)]
    append: u8,
    #[arg(long = "append-verify", hide = true, action = ArgAction::Count)]
    append_verify: u8,
    #[arg(short = 'b', long = "backup", hide = true, action = ArgAction::Count)]
    backup: u8,
    #[arg(long = "backup-dir", hide = true)]
    backup_dir: Option<String>,
    #[arg(long = "suffix", hide = true)]
    suffix: Option<String>,
    #[arg(short = 'L', long = "copy-links", hide = true, action = ArgAction::Count)]
    copy_links: u8,
    #[arg(short = 'k', long = "copy-dirlinks", hide = true, action = ArgAction::Count)]
    copy_dirlinks: u8,
    #[arg(short = 'K', long = "keep-dirlinks", hide = true, action = ArgAction::Count)]
    keep_dirlinks: u8,
    #[arg(long = "copy-unsafe-links", hide = true, action = ArgAction::Count)]
    copy_unsafe_links: u8,
    #[arg(long = "safe-links", hide = true, action = ArgAction::Count)]
    safe_links: u8,
    #[arg(short = 'E', long = "executability", hide = true, action = ArgAction::Count)]
    executability: u8,
    #[arg(short = 'A', long = "acls", hide = true, action = ArgAction::Count)]
    acls: u8,
    #[arg(short = 'X', long = "xattrs", hide = true, action = ArgAction::Count)]
    xattrs: u8,
    #[arg(short = 'S', long = "sparse", hide = true, action = ArgAction::Count)]
    sparse: u8,
    #[arg(short = 'U', long = "atimes", hide = true, action = ArgAction::Count)]
    atimes: u8,
    #[arg(short = 'N', long = "crtimes", hide = true, action = ArgAction::Count)]
    crtimes: u8,
    #[arg(long = "remove-source-files", hide = true, action = ArgAction::Count)]
    remove_source_files: u8,
    #[arg(short = 'e', long = "rsh", hide = true)]
    rsh: Option<String>,
    #[arg(short = 'T', long = "temp-dir", hide = true)]
    temp_dir: Option<String>,
    #[arg(short = 'y', long = "fuzzy", hide = true, action = ArgAction::Count)]
    fuzzy: u8,
    #[arg(long = "delay-updates", hide = true, action = ArgAction::Count)]
    delay_updates: u8,
    #[arg(long = "list-only", hide = true, action = ArgAction::Count)]
    list_only: u8,
    #[arg(long = "out-format", hide = true)]
    out_format: Option<String>,
    #[arg(long = "log-file", hide = true)]
    log_file: Option<String>,
    #[arg(long = "password-file", hide = true)]
    password_file: Option<String>,
    #[arg(long = "force", hide = true, action = ArgAction::Count)]
    force: u8,
    #[arg(long = "super", hide = true, action = ArgAction::Count)]
    super_: u8,
    #[arg(long = "fake-super", hide = true, action = ArgAction::Count)]
    fake_super: u8,
    #[arg(long = "usermap", hide = true)]
    usermap: Option<String>,
    #[arg(long = "groupmap", hide = true)]
    groupmap: Option<String>,
    #[arg(long = "chown", hide = true)]
    chown: Option<String>,
    #[arg(short = 'B', long = "block-size", hide = true)]
    block_size: Option<String>,
    #[arg(long = "write-batch", hide = true)]
    write_batch: Option<String>,
    #[arg(long = "read-batch", hide = true)]
    read_batch: Option<String>,

    /// SRC... DEST
    #[arg(required = false)]
    paths: Vec<OsString>,
}

/// When deletions happen (rsync's `--delete-WHEN`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeleteMode {
    Before,
    During,
    After,
    /// Found during the transfer, done after it.
    Delay,
}

/// What progress to show.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ProgressMode {
    #[default]
    None,
    /// `--progress`: one line per file.
    PerFile,
    /// `--info=progress2`: the whole transfer.
    Total,
}

/// One side of a transfer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A local path; `contents` when it ends in `/` (or is `.`), which
    /// for a source means "the folder's contents, not the folder".
    Local { path: PathBuf, contents: bool },
    /// An InterSync export.
    Url(String),
}

impl Location {
    fn parse(arg: &OsString) -> Result<Location, PlanError> {
        let bytes = arg.as_encoded_bytes();
        let text = String::from_utf8_lossy(bytes);
        if text.starts_with("http://") || text.starts_with("https://") {
            return Ok(Location::Url(text.into_owned()));
        }
        if text.starts_with("rsync://") || text.contains("::") {
            return Err(PlanError::Unsupported(format!(
                "{text}: rsync daemons are not supported; serve the module with `intersync serve --rsyncd-conf` and use its http(s):// URL"
            )));
        }
        // rsync reads HOST:PATH as a remote shell path unless a slash comes
        // before the colon.
        if let Some(colon) = bytes.iter().position(|&b| b == b':')
            && !bytes[..colon].contains(&b'/')
        {
            return Err(PlanError::Unsupported(format!(
                "{text}: remote shell transfers are not supported; use an http(s):// URL of an export (or ./{text} for a local path)"
            )));
        }
        let contents = bytes.ends_with(b"/") || bytes == b"." || bytes.ends_with(b"/.");
        Ok(Location::Local {
            path: PathBuf::from(arg),
            contents,
        })
    }
}

/// A validated rsync command line.
#[derive(Debug)]
pub struct Plan {
    pub sources: Vec<Location>,
    pub dest: Location,
    pub recursive: bool,
    pub dirs: bool,
    pub links: bool,
    pub perms: bool,
    pub times: bool,
    pub group: bool,
    pub owner: bool,
    pub devices: bool,
    pub specials: bool,
    pub hard_links: bool,
    pub verbose: u8,
    pub quiet: bool,
    pub itemize: u8,
    pub stats: bool,
    pub human: u8,
    pub progress: ProgressMode,
    pub dry_run: bool,
    pub compress: bool,
    pub delete: Option<DeleteMode>,
    pub delete_excluded: bool,
    pub ignore_errors: bool,
    pub max_delete: Option<u64>,
    pub filters: Filters,
    pub bwlimit: Option<u64>,
    pub partial: bool,
    pub partial_dir: Option<PathBuf>,
    pub checksum: bool,
    pub size_only: bool,
    pub ignore_times: bool,
    pub numeric_ids: bool,
    pub update: bool,
    pub ignore_existing: bool,
    pub existing: bool,
    pub max_size: Option<u64>,
    pub min_size: Option<u64>,
    pub omit_dir_times: bool,
    pub mkpath: bool,
    /// Seconds two mtimes may differ and still be the same; negative
    /// compares nanoseconds too.
    pub modify_window: i64,
    pub one_file_system: bool,
    pub inplace: bool,
    pub prune_empty_dirs: bool,
    /// `--chmod`: applied to the source's permissions as they are read.
    pub chmod: Option<crate::chmod::Chmod>,
    /// The long names of the options given (`archive`, `delete`...), for
    /// a module's `refuse options`.
    pub option_names: Vec<String>,
}

/// A command line that cannot be carried out.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{0}")]
    Syntax(String),
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Filter(#[from] FilterError),
    /// `--help` (or `-h` alone): not an error, but no transfer either.
    #[error("help requested")]
    Help(String),
}

impl PlanError {
    /// rsync's exit code for this error.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            PlanError::Syntax(_) => ExitCode::Syntax,
            PlanError::Unsupported(_) => ExitCode::Unsupported,
            PlanError::Filter(FilterError::Open { .. }) => ExitCode::FileIo,
            PlanError::Filter(_) => ExitCode::Syntax,
            PlanError::Help(_) => ExitCode::Ok,
        }
    }
}

/// The last position on the command line of any of `ids`.
fn last(m: &ArgMatches, ids: &[&str]) -> Option<usize> {
    ids.iter()
        .filter(|id| m.value_source(id) == Some(clap::parser::ValueSource::CommandLine))
        .filter_map(|id| m.indices_of(id).and_then(|i| i.max()))
        .max()
}

/// Whether the last of `on` comes after the last of `off`.
fn switch(m: &ArgMatches, on: &[&str], off: &[&str]) -> bool {
    match (last(m, on), last(m, off)) {
        (Some(a), Some(b)) => a > b,
        (Some(_), None) => true,
        _ => false,
    }
}

/// rsync's size arguments (`--max-size`): a number with an optional
/// K/M/G/T/P suffix (1024-based; `KB`, `MB`... 1000-based; `B` bytes) and
/// an optional `+1` or `-1`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (body, adjust) = if let Some(b) = t.strip_suffix("+1") {
        (b, 1i128)
    } else if let Some(b) = t.strip_suffix("-1") {
        (b, -1i128)
    } else {
        (t, 0)
    };
    let split = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let (number, suffix) = body.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid size {text:?}"))?;
    let upper = suffix.to_ascii_uppercase();
    let (letter, rest) = upper.split_at(upper.len().min(1));
    let power = match letter {
        "" | "B" => 0,
        "K" => 1,
        "M" => 2,
        "G" => 3,
        "T" => 4,
        "P" => 5,
        _ => return Err(format!("invalid size suffix in {text:?}")),
    };
    let base: f64 = match (letter, rest) {
        ("" | "B", "") => 1.0,
        (_, "" | "IB") => 1024.0,
        (_, "B") => 1000.0,
        _ => return Err(format!("invalid size suffix in {text:?}")),
    };
    let bytes = value * base.powi(power);
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("invalid size {text:?}"));
    }
    u64::try_from(((bytes as u64) as i128 + adjust).max(0))
        .map_err(|_| format!("invalid size {text:?}"))
}

impl Plan {
    /// The plan for an rsync command line (`args` without the program
    /// name).
    pub fn from_args<I, T>(args: I) -> Result<Plan, PlanError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let mut command = RsyncArgs::command();
        if args.is_empty() || args == [OsString::from("-h")] {
            return Err(PlanError::Help(command.render_help().to_string()));
        }
        let m = command
            .try_get_matches_from_mut(std::iter::once(OsString::from("intersync")).chain(args))
            .map_err(|e| PlanError::Syntax(e.to_string()))?;
        let a = RsyncArgs::from_arg_matches(&m).map_err(|e| PlanError::Syntax(e.to_string()))?;
        if a.help > 0 {
            return Err(PlanError::Help(command.render_help().to_string()));
        }
        a.refuse()?;
        Plan::convert(a, &m)
    }

    fn convert(a: RsyncArgs, m: &ArgMatches) -> Result<Plan, PlanError> {
        let on = |name: &str, off: &str, archive: bool| {
            let mut ons = vec![name];
            if archive {
                ons.push("archive");
            }
            switch(m, &ons, &[off])
        };
        let (delete, delete_excluded) = a.delete_mode()?;
        let recursive = on("recursive", "no_recursive", true);
        if delete.is_some() && !recursive && a.dirs == 0 {
            return Err(PlanError::Syntax(
                "--delete does not work without --recursive (-r) or --dirs (-d).".into(),
            ));
        }
        let size = |v: &Option<String>, name: &str| -> Result<Option<u64>, PlanError> {
            v.as_deref()
                .map(|t| parse_size(t).map_err(|e| PlanError::Syntax(format!("--{name}: {e}"))))
                .transpose()
        };
        let filters = a.filters(m, delete_excluded)?;
        let (sources, dest) = a.locations()?;
        Ok(Plan {
            sources,
            dest,
            recursive,
            dirs: on("dirs", "no_dirs", false),
            links: on("links", "no_links", true),
            perms: on("perms", "no_perms", true),
            times: on("times", "no_times", true),
            group: on("group", "no_group", true),
            owner: on("owner", "no_owner", true),
            devices: switch(
                m,
                &["archive", "devices_specials", "devices"],
                &["no_devices_specials", "no_devices"],
            ),
            specials: switch(
                m,
                &["archive", "devices_specials", "specials"],
                &["no_devices_specials", "no_specials"],
            ),
            hard_links: on("hard_links", "no_hard_links", false),
            verbose: a.verbose.saturating_sub(a.no_verbose),
            quiet: a.quiet > 0,
            itemize: if a.no_itemize > 0 { 0 } else { a.itemize },
            stats: a.stats > 0,
            human: if a.no_human > 0 { 0 } else { a.human },
            progress: a.progress_mode(m)?,
            dry_run: a.dry_run > 0,
            compress: on("compress", "no_compress", false),
            delete,
            delete_excluded,
            ignore_errors: a.ignore_errors > 0,
            max_delete: a.max_delete()?,
            filters,
            bwlimit: a.bwlimit.filter(|&b| b > 0),
            partial: switch(m, &["partial", "partial_progress"], &["no_partial"])
                || a.partial_dir.is_some(),
            partial_dir: a.partial_dir.clone(),
            checksum: switch(m, &["checksum"], &["no_checksum"]),
            size_only: a.size_only > 0,
            ignore_times: a.ignore_times > 0,
            numeric_ids: a.numeric_ids > 0,
            update: a.update > 0,
            ignore_existing: a.ignore_existing > 0,
            existing: a.existing > 0,
            max_size: size(&a.max_size, "max-size")?,
            min_size: size(&a.min_size, "min-size")?,
            omit_dir_times: a.omit_dir_times > 0,
            mkpath: a.mkpath > 0,
            modify_window: a.modify_window.unwrap_or(0),
            one_file_system: a.one_file_system > 0,
            inplace: a.inplace > 0,
            prune_empty_dirs: a.prune_empty_dirs > 0,
            chmod: a.chmod()?,
            option_names: option_names(m),
        })
    }
}

/// The long (or else short) names of the options the command line gave,
/// for a module's `refuse options`.
fn option_names(m: &ArgMatches) -> Vec<String> {
    RsyncArgs::command()
        .get_arguments()
        .filter(|arg| {
            m.value_source(arg.get_id().as_str()) == Some(clap::parser::ValueSource::CommandLine)
        })
        .filter_map(|arg| {
            arg.get_long()
                .map(String::from)
                .or_else(|| arg.get_short().map(String::from))
        })
        .collect()
}

/// The parts of the plan that take more than a flag.
impl RsyncArgs {
    /// When to delete (at most one `--delete-WHEN`), and `--delete-excluded`.
    fn delete_mode(&self) -> Result<(Option<DeleteMode>, bool), PlanError> {
        let delete_modes = [
            (self.delete_before, DeleteMode::Before),
            (self.delete_during, DeleteMode::During),
            (self.delete_after, DeleteMode::After),
            (self.delete_delay, DeleteMode::Delay),
        ];
        let chosen: Vec<DeleteMode> = delete_modes
            .iter()
            .filter(|(n, _)| *n > 0)
            .map(|&(_, d)| d)
            .collect();
        if chosen.len() > 1 {
            return Err(PlanError::Syntax(
                "You may not combine multiple --delete-WHEN options.".into(),
            ));
        }
        let delete_excluded = self.delete_excluded > 0;
        let delete = match chosen.first() {
            Some(&d) => Some(d),
            None if self.delete > 0 || delete_excluded => Some(DeleteMode::During),
            None => None,
        };
        Ok((delete, delete_excluded))
    }

    /// `--progress`, `-P` and `--info=progressN`, the last one winning.
    fn progress_mode(&self, m: &ArgMatches) -> Result<ProgressMode, PlanError> {
        let mut progress = if switch(m, &["progress", "partial_progress"], &["no_progress"]) {
            ProgressMode::PerFile
        } else {
            ProgressMode::None
        };
        for info in &self.info {
            for flag in info.split(',') {
                match flag.to_ascii_lowercase().as_str() {
                    "progress2" => progress = ProgressMode::Total,
                    "progress" | "progress1" => progress = ProgressMode::PerFile,
                    "progress0" | "none" => progress = ProgressMode::None,
                    "" => {}
                    other => {
                        return Err(PlanError::Unsupported(format!(
                            "--info={other} is not supported (only progress0, progress1, progress2)"
                        )));
                    }
                }
            }
        }
        Ok(progress)
    }

    fn max_delete(&self) -> Result<Option<u64>, PlanError> {
        let Some(t) = &self.max_delete else {
            return Ok(None);
        };
        let n: i64 = t
            .parse()
            .map_err(|_| PlanError::Syntax(format!("--max-delete={t}: not a number")))?;
        // rsync: a negative number is "none at all".
        Ok(Some(n.max(0) as u64))
    }

    /// Every `--chmod`, in order, as one set of changes.
    fn chmod(&self) -> Result<Option<crate::chmod::Chmod>, PlanError> {
        let mut chmod = None;
        for value in &self.chmod {
            chmod
                .get_or_insert_with(crate::chmod::Chmod::default)
                .extend(value)
                .map_err(|e| PlanError::Syntax(format!("--chmod: {e}")))?;
        }
        Ok(chmod)
    }

    /// The filter rules, in command-line order: `--exclude`, `--include`,
    /// `--filter`, their `-from` files, `-F` and `-C`.
    fn filters(&self, m: &ArgMatches, delete_excluded: bool) -> Result<Filters, PlanError> {
        let mut filters = Filters::new(delete_excluded);
        let mut ordered: Vec<(usize, &str, String)> = Vec::new();
        let mut place = |id: &'static str, values: Vec<String>| {
            let idx = m.indices_of(id).map(|i| i.collect::<Vec<_>>());
            for (k, v) in values.into_iter().enumerate() {
                let at = idx.as_ref().and_then(|i| i.get(k).copied()).unwrap_or(0);
                ordered.push((at, id, v));
            }
        };
        place("exclude", self.exclude.clone());
        place("include", self.include.clone());
        place("filter", self.filter.clone());
        let lossy = |v: &Vec<PathBuf>| -> Vec<String> {
            v.iter().map(|p| p.to_string_lossy().into_owned()).collect()
        };
        place("exclude_from", lossy(&self.exclude_from));
        place("include_from", lossy(&self.include_from));
        // clap keeps where the last -F was: both rules go there.
        if let Some(at) = last(m, &["rsync_filter"]) {
            ordered.push((at, "filter", "dir-merge /.rsync-filter".into()));
            if self.rsync_filter > 1 {
                ordered.push((at, "filter", "- .rsync-filter".into()));
            }
        }
        ordered.sort_by_key(|(at, _, _)| *at);
        let files = LocalFiles;
        let from0 = self.from0 > 0;
        for (_, id, value) in ordered {
            match id {
                "exclude" => filters.add_pattern(&value, false, &files)?,
                "include" => filters.add_pattern(&value, true, &files)?,
                "filter" => filters.add_filter(&value, &files)?,
                "exclude_from" => {
                    filters.add_pattern_file(&PathBuf::from(&value), false, from0, &files)?
                }
                "include_from" => {
                    filters.add_pattern_file(&PathBuf::from(&value), true, from0, &files)?
                }
                _ => unreachable!("every filter option is listed above"),
            }
        }
        if self.cvs_exclude > 0 {
            filters.add_cvs_exclude(&files)?;
        }
        Ok(filters)
    }

    /// The sources and the destination: the last path.
    fn locations(&self) -> Result<(Vec<Location>, Location), PlanError> {
        let mut paths = self.paths.clone();
        if paths.len() < 2 {
            let one = paths.first().map(|p| p.to_string_lossy().into_owned());
            return Err(match one {
                // A mistyped subcommand is likelier than a listing.
                Some(word) if !std::path::Path::new(&word).exists() && !word.contains("://") => {
                    PlanError::Syntax(format!(
                        "unknown command '{word}', and no such file to list (intersync --help lists the commands)"
                    ))
                }
                _ => PlanError::Unsupported(
                    "listing a source (a single path, or --list-only) is not supported; give SRC... DEST".into(),
                ),
            });
        }
        let dest = Location::parse(&paths.pop().expect("two or more"))?;
        let sources = paths
            .iter()
            .map(Location::parse)
            .collect::<Result<Vec<_>, _>>()?;
        Ok((sources, dest))
    }
}

impl RsyncArgs {
    /// Options rsync has that we do not carry out: refused by name.
    fn refuse(&self) -> Result<(), PlanError> {
        let given: &[(bool, &str)] = &[
            (self.relative > 0, "--relative (-R)"),
            (self.files_from.is_some(), "--files-from"),
            (!self.link_dest.is_empty(), "--link-dest"),
            (!self.compare_dest.is_empty(), "--compare-dest"),
            (!self.copy_dest.is_empty(), "--copy-dest"),
            (self.append > 0, "--append"),
            (self.append_verify > 0, "--append-verify"),
            (self.backup > 0, "--backup (-b)"),
            (self.backup_dir.is_some(), "--backup-dir"),
            (self.suffix.is_some(), "--suffix"),
            (self.copy_links > 0, "--copy-links (-L)"),
            (self.copy_dirlinks > 0, "--copy-dirlinks (-k)"),
            (self.keep_dirlinks > 0, "--keep-dirlinks (-K)"),
            (self.copy_unsafe_links > 0, "--copy-unsafe-links"),
            (self.safe_links > 0, "--safe-links"),
            (self.executability > 0, "--executability (-E)"),
            (self.acls > 0, "--acls (-A)"),
            (self.xattrs > 0, "--xattrs (-X)"),
            (self.sparse > 0, "--sparse (-S)"),
            (self.atimes > 0, "--atimes (-U)"),
            (self.crtimes > 0, "--crtimes (-N)"),
            (self.remove_source_files > 0, "--remove-source-files"),
            (self.rsh.is_some(), "--rsh (-e)"),
            (self.temp_dir.is_some(), "--temp-dir (-T)"),
            (self.fuzzy > 0, "--fuzzy (-y)"),
            (self.delay_updates > 0, "--delay-updates"),
            (self.list_only > 0, "--list-only"),
            (self.out_format.is_some(), "--out-format"),
            (self.log_file.is_some(), "--log-file"),
            (self.password_file.is_some(), "--password-file"),
            (self.force > 0, "--force"),
            (self.super_ > 0, "--super"),
            (self.fake_super > 0, "--fake-super"),
            (self.usermap.is_some(), "--usermap"),
            (self.groupmap.is_some(), "--groupmap"),
            (self.chown.is_some(), "--chown"),
            (self.block_size.is_some(), "--block-size (-B)"),
            (self.write_batch.is_some(), "--write-batch"),
            (self.read_batch.is_some(), "--read-batch"),
            (self.compress_level.is_some(), "--compress-level"),
            (
                self.whole_file > 0 && self.no_whole_file > 0,
                "--whole-file with --no-whole-file",
            ),
        ];
        let refused: Vec<&str> = given
            .iter()
            .filter(|(on, _)| *on)
            .map(|&(_, name)| name)
            .collect();
        if refused.is_empty() {
            return Ok(());
        }
        Err(PlanError::Unsupported(format!(
            "{} {} not supported by intersync",
            refused.join(", "),
            if refused.len() == 1 { "is" } else { "are" }
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(args: &str) -> Plan {
        Plan::from_args(args.split_whitespace()).unwrap_or_else(|e| panic!("{args}: {e}"))
    }

    fn code(args: &str) -> u8 {
        Plan::from_args(args.split_whitespace())
            .map(|_| 0)
            .unwrap_or_else(|e| e.exit_code().code())
    }

    #[test]
    fn archive_and_its_negations() {
        let p = plan("-a src/ dst");
        assert!(p.recursive && p.links && p.perms && p.times && p.group && p.owner);
        assert!(p.devices && p.specials && !p.hard_links && !p.dirs);
        let p = plan("-a --no-p --no-o -D --no-specials src/ dst");
        assert!(!p.perms && !p.owner && p.group && p.devices && !p.specials);
        // The last word wins, as in rsync.
        let p = plan("--no-t -a src dst");
        assert!(p.times);
        let p = plan("-rt --no-times src dst");
        assert!(!p.times && p.recursive && !p.links);
        let p = plan("-avzh src dst");
        assert_eq!((p.verbose, p.human), (1, 1));
        assert!(p.compress);
    }

    #[test]
    fn trailing_slash_and_urls() {
        let p = plan("-r a/ b . https://h/x/ dst/");
        assert_eq!(
            p.sources[0],
            Location::Local {
                path: "a/".into(),
                contents: true
            }
        );
        assert!(matches!(
            &p.sources[1],
            Location::Local {
                contents: false,
                ..
            }
        ));
        assert!(matches!(
            &p.sources[2],
            Location::Local { contents: true, .. }
        ));
        assert_eq!(p.sources[3], Location::Url("https://h/x/".into()));
        assert_eq!(code("-r host:path dst"), 4);
        assert_eq!(code("-r rsync://host/mod/ dst"), 4);
        assert_eq!(code("-r ./has:colon dst"), 0);
    }

    #[test]
    fn delete_modes() {
        assert_eq!(plan("-r --delete a b").delete, Some(DeleteMode::During));
        assert_eq!(plan("-r --del a b").delete, Some(DeleteMode::During));
        assert_eq!(
            plan("-r --delete-after a b").delete,
            Some(DeleteMode::After)
        );
        assert_eq!(
            plan("-r --delete-excluded a b").delete,
            Some(DeleteMode::During)
        );
        assert_eq!(code("-r --delete-before --delete-after a b"), 1);
        assert_eq!(code("--delete a b"), 1);
        assert_eq!(plan("-r --max-delete=3 a b").max_delete, Some(3));
    }

    #[test]
    fn filters_apply_in_command_line_order() {
        let p = plan("-r --include=*.keep --exclude=*.o -f +_x.o --exclude *.keep a b");
        let f = &p.filters;
        let mut f = f.clone();
        f.enter_root(std::path::Path::new("/"), &LocalFiles)
            .unwrap();
        use crate::filter::Side;
        assert!(!f.excluded(b"a.keep", false, Side::Sender));
        assert!(f.excluded(b"y.o", false, Side::Sender));
        assert!(f.excluded(b"x.o", false, Side::Sender));
        let p = plan("-r -f +_x.o --exclude=*.o a b");
        let mut f = p.filters.clone();
        f.enter_root(std::path::Path::new("/"), &LocalFiles)
            .unwrap();
        assert!(!f.excluded(b"x.o", false, Side::Sender));
    }

    #[test]
    fn dash_f_twice_also_hides_the_filter_files() {
        let p = plan("-rFF a b");
        let mut f = p.filters.clone();
        f.enter_root(std::path::Path::new("/nonexistent"), &LocalFiles)
            .unwrap();
        use crate::filter::Side;
        assert!(f.excluded(b".rsync-filter", false, Side::Sender));
        let p = plan("-rF a b");
        let mut f = p.filters.clone();
        f.enter_root(std::path::Path::new("/nonexistent"), &LocalFiles)
            .unwrap();
        assert!(!f.excluded(b".rsync-filter", false, Side::Sender));
    }

    #[test]
    fn progress_forms() {
        assert_eq!(plan("--progress a b").progress, ProgressMode::PerFile);
        let p = plan("-P a b");
        assert!(p.partial && p.progress == ProgressMode::PerFile);
        assert_eq!(plan("--info=progress2 a b").progress, ProgressMode::Total);
        assert_eq!(code("--info=flist2 a b"), 4);
    }

    #[test]
    fn help_and_errors() {
        assert!(matches!(Plan::from_args(["-h"]), Err(PlanError::Help(_))));
        assert!(matches!(
            Plan::from_args(["--help"]),
            Err(PlanError::Help(_))
        ));
        assert_eq!(code("-h a b"), 0);
        assert_eq!(code("--no-such-option a b"), 1);
        assert_eq!(code("-a --chmod=u+x a b"), 0);
        assert_eq!(code("-a --chmod=u*x a b"), 1);
        assert_eq!(code("-a --copy-dest=x a b"), 4);
        assert_eq!(code("-aR a b"), 4);
        assert_eq!(code("--exclude-from=/nonexistent/file a b"), 11);
        assert_eq!(code("-f ?bad a b"), 1);
        assert_eq!(code("no-such-word"), 1);
        assert_eq!(code("/"), 4);
    }

    #[test]
    fn option_names_for_refuse_options() {
        let p = plan("-avz --delete-after --exclude=x a b");
        for name in ["archive", "verbose", "compress", "delete-after", "exclude"] {
            assert!(
                p.option_names.iter().any(|n| n == name),
                "{name}: {:?}",
                p.option_names
            );
        }
        assert!(!p.option_names.iter().any(|n| n == "checksum"));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("1k"), Ok(1024));
        assert_eq!(parse_size("1KB"), Ok(1000));
        assert_eq!(parse_size("1.5M"), Ok(1_572_864));
        assert_eq!(parse_size("2G-1"), Ok(2 * 1024 * 1024 * 1024 - 1));
        assert_eq!(parse_size("1KiB"), Ok(1024));
        assert!(parse_size("1Q").is_err());
        assert!(parse_size("x").is_err());
    }
}
