//! rsync's filter rules (rsync(1), "FILTER RULES"), written by hand: the
//! rule language of `--filter`, `--exclude`, `--include`, their `-from`
//! files, merge and per-directory merge files, `-F` and `-C`; and the
//! matching that decides, for each name in a transfer, whether it is
//! excluded on the sending side (not sent) or on the receiving side
//! (protected from deletion).
//!
//! What it trusts: nothing. Rule text comes from command lines and from
//! files inside the tree being sent; a malformed rule is a typed
//! [`FilterError`] naming the rule, never a panic. Merge files are read
//! through the caller's [`RuleSource`], so the walker decides which paths
//! may be opened.
//!
//! Semantics follow rsync 3.x: the first matching rule wins; a rule without
//! a `/` (other than a trailing one) and without `**` matches the last name
//! element; one with a `/` matches the whole path from the transfer root, or
//! its last elements when unanchored; a trailing `/` matches directories
//! only; a trailing `/***` matches a directory and everything in it.
//! Per-directory rules come before the rules they inherit, anchored ones
//! are relative to the merge file's folder, and `!` clears the list it is
//! read into.

use std::path::{Path, PathBuf};

use crate::wildmatch::{Anchor, litmatch_at, wildmatch_at};

/// A filter rule that cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    #[error("unknown filter rule: {rule}")]
    UnknownRule { rule: String },
    #[error("invalid modifier '{modifier}' in filter rule: {rule}")]
    InvalidModifier { modifier: char, rule: String },
    #[error("unexpected end of filter rule: {rule}")]
    MissingPattern { rule: String },
    #[error("'!' rule has trailing characters: {rule}")]
    ClearWithPattern { rule: String },
    #[error("specified-side merge file contains specified-side filter: {rule}")]
    SidesTwice { rule: String },
    #[error("failed to open {kind} file {path}: {reason}")]
    Open {
        kind: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("merge files nest deeper than {MAX_MERGE_DEPTH} at {path}")]
    TooDeep { path: PathBuf },
    #[error("a dir-merge rule inside a per-directory merge file is not supported: {rule}")]
    NestedDirMerge { rule: String },
}

/// How deep merge files may include each other (rsync's limit is similar).
pub const MAX_MERGE_DEPTH: usize = 16;

/// rsync's built-in `-C` list (rsync(1), `--cvs-exclude`).
pub const CVS_DEFAULT: &str = "RCS SCCS CVS CVS.adm RCSLOG cvslog.* tags TAGS .make.state .nse_depinfo \
     *~ #* .#* ,* _$* *$ *.old *.bak *.BAK *.orig *.rej .del-* *.a *.olb *.o *.obj *.so *.exe \
     *.Z *.elc *.ln core .svn/ .git/ .hg/ .bzr/";

/// Which side of a transfer asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Building the list of what to send.
    Sender,
    /// Deciding what may be deleted.
    Receiver,
}

/// Where merge files come from. The walker implements it so that it alone
/// decides which paths may be opened (and how symlinks are treated).
pub trait RuleSource {
    /// The bytes of the file, `Ok(None)` if it does not exist.
    fn read(&self, path: &Path) -> std::io::Result<Option<Vec<u8>>>;
}

/// Reads merge files from the local file system; `-` is standard input.
pub struct LocalFiles;

impl RuleSource for LocalFiles {
    fn read(&self, path: &Path) -> std::io::Result<Option<Vec<u8>>> {
        if path == Path::new("-") {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
            return Ok(Some(buf));
        }
        match std::fs::read(path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The modifiers of a rule (and the defaults a merge rule gives the rules
/// it reads).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Mods {
    include: bool,
    abs_path: bool,
    negate: bool,
    perishable: bool,
    sender: bool,
    receiver: bool,
    xattr: bool,
    // Merge rules only.
    merge: bool,
    perdir: bool,
    no_prefixes: bool,
    word_split: bool,
    no_inherit: bool,
    exclude_self: bool,
    cvs: bool,
}

impl Mods {
    /// What a rule read from a merge file inherits from the merge rule.
    fn contained(self) -> Mods {
        Mods {
            include: self.include,
            abs_path: self.abs_path,
            negate: self.negate,
            perishable: self.perishable,
            ..Mods::default()
        }
    }
}

/// One include or exclude rule, ready to match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// As given (for messages).
    text: String,
    include: bool,
    /// Without the trailing `/`; with the leading `/` if anchored.
    pattern: Vec<u8>,
    dir_only: bool,
    negate: bool,
    abs_path: bool,
    perishable: bool,
    sender: bool,
    receiver: bool,
    xattr: bool,
    wild: bool,
    wild2: bool,
    wild2_prefix: bool,
    wild3_suffix: bool,
    slash_cnt: usize,
}

impl Rule {
    fn new(text: String, pattern: &[u8], mods: Mods) -> Rule {
        let mut pattern = pattern.to_vec();
        let mut dir_only = false;
        if pattern.len() > 1 && pattern.last() == Some(&b'/') {
            pattern.pop();
            dir_only = true;
        }
        let slash_cnt = pattern.iter().filter(|&&b| b == b'/').count();
        let wild = pattern.iter().any(|b| matches!(b, b'*' | b'[' | b'?'));
        let star2 = pattern.windows(2).position(|w| w == b"**");
        let wild2 = wild && star2.is_some();
        Rule {
            text,
            include: mods.include,
            dir_only,
            negate: mods.negate,
            abs_path: mods.abs_path,
            perishable: mods.perishable,
            sender: mods.sender,
            receiver: mods.receiver,
            xattr: mods.xattr,
            wild,
            wild2,
            wild2_prefix: wild2 && star2 == Some(0),
            wild3_suffix: wild2 && pattern.ends_with(b"***"),
            slash_cnt,
            pattern,
        }
    }

    /// Whether the rule is an include (`+`).
    pub fn is_include(&self) -> bool {
        self.include
    }

    /// The rule as it was written.
    pub fn text(&self) -> &str {
        &self.text
    }

    fn applies_to(&self, side: Side) -> bool {
        match side {
            Side::Sender => self.sender || !self.receiver,
            Side::Receiver => self.receiver || !self.sender,
        }
    }

    /// rsync's `rule_matches`: `name` is relative to the transfer root,
    /// `root` the absolute path of that root (for the `/` modifier).
    fn matches(&self, name: &[u8], is_dir: bool, root: &[u8]) -> bool {
        if name.is_empty() || self.xattr {
            return false;
        }
        let mut text: Vec<u8>;
        let mut several = false;
        if self.slash_cnt == 0 && !self.wild2 {
            text = match name.iter().rposition(|&b| b == b'/') {
                Some(i) => name[i + 1..].to_vec(),
                None => name.to_vec(),
            };
        } else if self.abs_path && root.len() > 1 {
            text = root.strip_prefix(b"/").unwrap_or(root).to_vec();
            text.push(b'/');
            text.extend_from_slice(name);
            several = true;
        } else if self.wild2_prefix {
            text = vec![b'/'];
            text.extend_from_slice(name);
            several = true;
        } else {
            text = name.to_vec();
        }
        if is_dir {
            if self.wild3_suffix {
                text.push(b'/');
                several = true;
            }
        } else if self.dir_only {
            return self.negate;
        }
        let (pattern, anchored) = match self.pattern.strip_prefix(b"/") {
            Some(p) => (p, true),
            None => (&self.pattern[..], false),
        };
        let anchor = if !anchored && self.slash_cnt > 0 && !self.wild2 {
            Anchor::LastElements(self.slash_cnt + 1)
        } else if !anchored && !self.wild2_prefix && self.wild2 {
            Anchor::AnySlash
        } else {
            Anchor::Start
        };
        let hit = if self.wild {
            wildmatch_at(pattern, &text, anchor)
        } else if several {
            litmatch_at(pattern, &text, anchor)
        } else if anchored {
            text == pattern
        } else {
            text.ends_with(pattern)
                && (text.len() == pattern.len() || text[text.len() - pattern.len() - 1] == b'/')
        };
        hit != self.negate
    }
}

/// An entry of a rule list.
#[derive(Clone, Debug)]
enum Entry {
    Rule(Rule),
    /// The rules of the `n`th per-directory merge file, as they stand in
    /// the current folder.
    DirMerge(usize),
}

/// A per-directory merge rule.
#[derive(Clone, Debug)]
struct DirMerge {
    /// The file name looked for in each folder.
    name: Vec<u8>,
    mods: Mods,
}

/// How rules are being read.
#[derive(Clone, Copy)]
struct Reading<'a> {
    /// rsync's `XFLG_OLD_PREFIXES`: `--exclude`/`--include` and their
    /// `-from` files, where only "+ " and "- " prefixes are recognised.
    old_prefixes: bool,
    /// The defaults of the merge rule being read, if any.
    template: Mods,
    /// The folder a per-directory file is read in (relative to the
    /// transfer root), for anchoring; `None` for global rules.
    perdir: Option<&'a [u8]>,
    depth: usize,
}

impl Reading<'_> {
    /// `--exclude`/`--include` patterns (and their `-from` files).
    fn old_style(include: bool, depth: usize) -> Reading<'static> {
        Reading {
            old_prefixes: true,
            template: Mods {
                include,
                ..Mods::default()
            },
            perdir: None,
            depth,
        }
    }
}

/// The rules of a transfer and the per-directory rules of the folders
/// being walked.
#[derive(Clone, Debug, Default)]
pub struct Filters {
    global: Vec<Entry>,
    merges: Vec<DirMerge>,
    /// `--delete-excluded`: rules without a side are the sender's only.
    delete_excluded: bool,
    /// One level per folder entered: for each merge, (rules in effect,
    /// rules the subfolders inherit).
    levels: Vec<Vec<(Vec<Entry>, Vec<Entry>)>>,
    /// The absolute path of the transfer root.
    root: Vec<u8>,
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl Filters {
    pub fn new(delete_excluded: bool) -> Filters {
        Filters {
            delete_excluded,
            ..Filters::default()
        }
    }

    /// Whether no rule at all was given.
    pub fn is_empty(&self) -> bool {
        self.global.is_empty()
    }

    /// `--filter RULE` (`-f`).
    pub fn add_filter(&mut self, rule: &str, files: &dyn RuleSource) -> Result<(), FilterError> {
        let reading = Reading {
            old_prefixes: false,
            template: Mods::default(),
            perdir: None,
            depth: 0,
        };
        self.parse_global(rule.as_bytes(), reading, files)
    }

    /// Parses `text` into the global rules.
    fn parse_global(
        &mut self,
        text: &[u8],
        reading: Reading,
        files: &dyn RuleSource,
    ) -> Result<(), FilterError> {
        let mut list = std::mem::take(&mut self.global);
        let r = self.parse_into(&mut list, text, reading, files);
        self.global = list;
        r
    }

    /// `--exclude PATTERN` or `--include PATTERN`.
    pub fn add_pattern(
        &mut self,
        pattern: &str,
        include: bool,
        files: &dyn RuleSource,
    ) -> Result<(), FilterError> {
        self.parse_global(pattern.as_bytes(), Reading::old_style(include, 0), files)
    }

    /// `--exclude-from FILE` or `--include-from FILE`; `from0` for `-0`.
    pub fn add_pattern_file(
        &mut self,
        path: &Path,
        include: bool,
        from0: bool,
        files: &dyn RuleSource,
    ) -> Result<(), FilterError> {
        let kind = if include { "include" } else { "exclude" };
        let bytes = read_required(files, path, kind)?;
        for line in lines(&bytes, from0) {
            if line.first().is_some_and(|&b| b == b'#' || b == b';') {
                continue;
            }
            self.parse_global(line, Reading::old_style(include, 1), files)?;
        }
        Ok(())
    }

    /// Several rules or patterns in one string, split on whitespace (as
    /// rsyncd.conf's `filter`, `exclude` and `include` give them):
    /// `old_style` is `Some(include)` for `exclude`/`include` patterns.
    pub fn add_words(
        &mut self,
        text: &str,
        old_style: Option<bool>,
        files: &dyn RuleSource,
    ) -> Result<(), FilterError> {
        let reading = Reading {
            old_prefixes: old_style.is_some(),
            template: Mods {
                include: old_style.unwrap_or(false),
                word_split: true,
                ..Mods::default()
            },
            perdir: None,
            depth: 0,
        };
        self.parse_global(text.as_bytes(), reading, files)
    }

    /// `-C`: a `:C` per-directory `.cvsignore` and the `-C` list, after
    /// every other rule (as rsync adds them).
    pub fn add_cvs_exclude(&mut self, files: &dyn RuleSource) -> Result<(), FilterError> {
        self.add_filter(":C", files)?;
        self.add_filter("-C", files)
    }

    /// Parses `text` (one rule, or several in word-split mode) into `list`.
    fn parse_into(
        &mut self,
        list: &mut Vec<Entry>,
        text: &[u8],
        reading: Reading,
        files: &dyn RuleSource,
    ) -> Result<(), FilterError> {
        let mut rest = text;
        loop {
            let Some((token, after)) = token(rest, reading)? else {
                return Ok(());
            };
            rest = after;
            let Token {
                mut mods,
                pattern,
                clear,
                whole,
            } = token;
            if clear {
                list.clear();
                continue;
            }
            if self.delete_excluded && !mods.sender && !mods.receiver && !mods.merge {
                mods.sender = true;
            }
            if mods.merge {
                self.add_merge(list, pattern, whole, mods, reading, files)?;
                continue;
            }
            if mods.cvs {
                self.add_cvs_words(list, mods, reading, files)?;
                continue;
            }
            let mut pattern = pattern.to_vec();
            if let Some(dir) = reading.perdir
                && pattern.first() == Some(&b'/')
                && !dir.is_empty()
            {
                // Anchored at the merge file's folder.
                let mut anchored = vec![b'/'];
                anchored.extend_from_slice(dir);
                anchored.extend_from_slice(&pattern);
                pattern = anchored;
            }
            list.push(Entry::Rule(Rule::new(lossy(whole), &pattern, mods)));
        }
    }

    /// A merge rule: its file read now, or a dir-merge noted for every
    /// folder of the walk (and with `e`, the file itself excluded).
    fn add_merge(
        &mut self,
        list: &mut Vec<Entry>,
        pattern: &[u8],
        whole: &[u8],
        mods: Mods,
        reading: Reading,
        files: &dyn RuleSource,
    ) -> Result<(), FilterError> {
        let pattern: &[u8] = if pattern.is_empty() {
            b".cvsignore"
        } else {
            pattern
        };
        let base = match pattern.iter().rposition(|&b| b == b'/') {
            Some(i) => &pattern[i + 1..],
            None => pattern,
        };
        if mods.exclude_self {
            list.push(Entry::Rule(Rule::new(
                format!("- {}", lossy(base)),
                base,
                Mods::default(),
            )));
        }
        if mods.perdir {
            if reading.perdir.is_some() {
                return Err(FilterError::NestedDirMerge { rule: lossy(whole) });
            }
            self.merges.push(DirMerge {
                name: base.to_vec(),
                mods,
            });
            list.push(Entry::DirMerge(self.merges.len() - 1));
            return Ok(());
        }
        let mut path = PathBuf::from(std::ffi::OsStr::from_bytes_lossy(pattern));
        if let Some(dir) = reading.perdir
            && path.is_relative()
        {
            path = Path::new(std::ffi::OsStr::from_bytes_lossy(dir)).join(path);
        }
        self.merge_file(list, &path, mods, reading, files)
    }

    /// "-C": the default list, ~/.cvsignore and $CVSIGNORE.
    fn add_cvs_words(
        &mut self,
        list: &mut Vec<Entry>,
        mods: Mods,
        reading: Reading,
        files: &dyn RuleSource,
    ) -> Result<(), FilterError> {
        let words = Reading {
            old_prefixes: false,
            template: Mods {
                no_prefixes: true,
                word_split: true,
                cvs: true,
                perishable: true,
                sender: mods.sender,
                receiver: mods.receiver,
                ..Mods::default()
            },
            ..reading
        };
        self.parse_into(list, CVS_DEFAULT.as_bytes(), words, files)?;
        let plain = Reading {
            template: Mods {
                perishable: false,
                ..words.template
            },
            ..words
        };
        if let Some(home) = std::env::var_os("HOME")
            && let Ok(Some(b)) = files.read(&Path::new(&home).join(".cvsignore"))
        {
            self.parse_into(list, &b, plain, files)?;
        }
        if let Some(env) = std::env::var_os("CVSIGNORE") {
            self.parse_into(list, env.as_encoded_bytes(), plain, files)?;
        }
        Ok(())
    }

    fn merge_file(
        &mut self,
        list: &mut Vec<Entry>,
        path: &Path,
        mods: Mods,
        reading: Reading,
        files: &dyn RuleSource,
    ) -> Result<(), FilterError> {
        if reading.depth >= MAX_MERGE_DEPTH {
            return Err(FilterError::TooDeep {
                path: path.to_owned(),
            });
        }
        let bytes = read_required(files, path, "merge")?;
        let inner = Reading {
            old_prefixes: false,
            template: mods,
            perdir: reading.perdir,
            depth: reading.depth + 1,
        };
        self.parse_file_into(list, &bytes, inner, files)
    }

    fn parse_file_into(
        &mut self,
        list: &mut Vec<Entry>,
        bytes: &[u8],
        reading: Reading,
        files: &dyn RuleSource,
    ) -> Result<(), FilterError> {
        if reading.template.word_split {
            return self.parse_into(list, bytes, reading, files);
        }
        for line in lines(bytes, false) {
            if line.first().is_some_and(|&b| b == b'#' || b == b';') {
                continue;
            }
            self.parse_into(list, line, reading, files)?;
        }
        Ok(())
    }

    /// Sets the absolute path of the transfer root (for rules with the `/`
    /// modifier) and reads the root's per-directory merge files.
    pub fn enter_root(&mut self, root: &Path, files: &dyn RuleSource) -> Result<(), FilterError> {
        self.root = root.as_os_str().as_encoded_bytes().to_vec();
        self.levels.clear();
        self.enter_dir(b"", root, files)
    }

    /// Reads the per-directory merge files of a folder the walk enters:
    /// `rel` is its path from the transfer root (empty for the root),
    /// `dir` where it is on disk. Pair every call with [`Filters::leave_dir`].
    pub fn enter_dir(
        &mut self,
        rel: &[u8],
        dir: &Path,
        files: &dyn RuleSource,
    ) -> Result<(), FilterError> {
        let mut level = Vec::with_capacity(self.merges.len());
        for i in 0..self.merges.len() {
            let merge = self.merges[i].clone();
            let inherited = match self.levels.last() {
                Some(parent) => parent[i].1.clone(),
                None => Vec::new(),
            };
            let path = dir.join(std::ffi::OsStr::from_bytes_lossy(&merge.name));
            let own = match files.read(&path) {
                Ok(Some(b)) => Some(b),
                Ok(None) => None,
                Err(e) => {
                    return Err(FilterError::Open {
                        kind: "dir-merge",
                        path,
                        reason: e.to_string(),
                    });
                }
            };
            let mut effective = Vec::new();
            let mut cleared = false;
            if let Some(bytes) = own {
                let reading = Reading {
                    old_prefixes: false,
                    template: merge.mods,
                    perdir: Some(rel),
                    depth: 1,
                };
                let mut own_rules = vec![Entry::DirMerge(usize::MAX)];
                self.parse_file_into(&mut own_rules, &bytes, reading, files)?;
                // A "!" in the file cleared the marker too.
                cleared = !matches!(own_rules.first(), Some(Entry::DirMerge(usize::MAX)));
                effective.extend(
                    own_rules
                        .into_iter()
                        .filter(|e| !matches!(e, Entry::DirMerge(usize::MAX))),
                );
            }
            if !cleared {
                effective.extend(inherited);
            }
            let passed_on = if merge.mods.no_inherit {
                Vec::new()
            } else {
                effective.clone()
            };
            level.push((effective, passed_on));
        }
        self.levels.push(level);
        Ok(())
    }

    /// Forgets the per-directory rules of the folder last entered.
    pub fn leave_dir(&mut self) {
        self.levels.pop();
    }

    /// The first rule matching `name` (relative to the transfer root) for
    /// `side`; `ignore_perishable` when judging the contents of a folder
    /// that is being deleted.
    pub fn check(
        &self,
        name: &[u8],
        is_dir: bool,
        side: Side,
        ignore_perishable: bool,
    ) -> Option<&Rule> {
        self.check_list(&self.global, name, is_dir, side, ignore_perishable)
    }

    /// Whether `name` is excluded for `side`.
    pub fn excluded(&self, name: &[u8], is_dir: bool, side: Side) -> bool {
        self.check(name, is_dir, side, false)
            .is_some_and(|r| !r.include)
    }

    /// Whether `name`, inside a folder being deleted, is protected.
    pub fn protected_in_deleted_dir(&self, name: &[u8], is_dir: bool) -> bool {
        self.check(name, is_dir, Side::Receiver, true)
            .is_some_and(|r| !r.include)
    }

    fn check_list<'a>(
        &'a self,
        list: &'a [Entry],
        name: &[u8],
        is_dir: bool,
        side: Side,
        ignore_perishable: bool,
    ) -> Option<&'a Rule> {
        for entry in list {
            match entry {
                Entry::DirMerge(i) => {
                    let Some(level) = self.levels.last() else {
                        continue;
                    };
                    let Some((rules, _)) = level.get(*i) else {
                        continue;
                    };
                    if let Some(r) = self.check_list(rules, name, is_dir, side, ignore_perishable) {
                        return Some(r);
                    }
                }
                Entry::Rule(rule) => {
                    if (ignore_perishable && rule.perishable) || !rule.applies_to(side) {
                        continue;
                    }
                    if rule.matches(name, is_dir, &self.root) {
                        return Some(rule);
                    }
                }
            }
        }
        None
    }
}

fn read_required(
    files: &dyn RuleSource,
    path: &Path,
    kind: &'static str,
) -> Result<Vec<u8>, FilterError> {
    match files.read(path) {
        Ok(Some(b)) => Ok(b),
        Ok(None) => Err(FilterError::Open {
            kind,
            path: path.to_owned(),
            reason: "No such file or directory".into(),
        }),
        Err(e) => Err(FilterError::Open {
            kind,
            path: path.to_owned(),
            reason: e.to_string(),
        }),
    }
}

/// The lines of a rules file: split at newlines (or NULs with `-0`), a
/// trailing carriage return dropped, empty lines skipped.
fn lines(bytes: &[u8], from0: bool) -> impl Iterator<Item = &[u8]> {
    let sep = if from0 { 0 } else { b'\n' };
    bytes
        .split(move |&b| b == sep)
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.is_empty())
}

/// One parsed rule token.
struct Token<'a> {
    mods: Mods,
    pattern: &'a [u8],
    clear: bool,
    /// The token's whole text, for messages.
    whole: &'a [u8],
}

/// rsync's `parse_rule_tok`: the next rule in `s`, and what follows it.
fn token<'a>(s: &'a [u8], reading: Reading) -> Result<Option<(Token<'a>, &'a [u8])>, FilterError> {
    let template = reading.template;
    let mut s = s;
    if template.word_split {
        while s.first().is_some_and(|b| b.is_ascii_whitespace()) {
            s = &s[1..];
        }
    }
    if s.is_empty() {
        return Ok(None);
    }
    let start = s;
    let mut mods = template.contained();
    let mut clear = false;
    let mut i = 0;
    if template.no_prefixes {
        if s[0] == b'!' && template.cvs {
            clear = true;
        }
    } else if reading.old_prefixes {
        if s.starts_with(b"- ") {
            mods.include = false;
            i = 2;
        } else if s.starts_with(b"+ ") {
            mods.include = true;
            i = 2;
        } else if s[0] == b'!' {
            clear = true;
        }
    } else {
        let (ch, at) = rule_name(s);
        i = at;
        let Some(side_given) = rule_kind(ch, &mut mods, &mut clear) else {
            return Err(FilterError::UnknownRule {
                rule: lossy(cut(start, template.word_split)),
            });
        };
        if !clear {
            i = modifiers(s, i, &mut mods, side_given, template.word_split)?;
            // The single separator.
            if i < s.len() && !(template.word_split && s[i].is_ascii_whitespace() && s[i] != b' ') {
                i += 1;
            }
        }
    }
    if template.sender || template.receiver {
        if mods.sender || mods.receiver {
            return Err(FilterError::SidesTwice {
                rule: lossy(cut(start, template.word_split)),
            });
        }
        mods.sender |= template.sender;
        mods.receiver |= template.receiver;
    }
    let rest = &s[i..];
    let len = if template.word_split {
        rest.iter()
            .position(|b| b.is_ascii_whitespace())
            .unwrap_or(rest.len())
    } else {
        rest.len()
    };
    let pattern = &rest[..len];
    let after = &rest[len..];
    let whole = &start[..start.len() - after.len()];
    if clear {
        if !template.no_prefixes && !reading.old_prefixes && !pattern.is_empty() {
            return Err(FilterError::ClearWithPattern { rule: lossy(whole) });
        }
        if pattern.len() > 1 {
            // "!foo" in a CVS file or an old-style list is a pattern.
            clear = false;
        }
    } else if pattern.is_empty() && !mods.cvs {
        return Err(FilterError::MissingPattern { rule: lossy(whole) });
    }
    Ok(Some((
        Token {
            mods,
            pattern,
            clear,
            whole,
        },
        after,
    )))
}

/// What a rule's one-character name makes of it: whether it names a side
/// (`S`, `H`, `R`, `P`); `None` for no rule at all.
fn rule_kind(ch: u8, mods: &mut Mods, clear: &mut bool) -> Option<bool> {
    match ch {
        b':' => {
            mods.merge = true;
            mods.perdir = true;
        }
        b'.' => mods.merge = true,
        b'+' | b'-' => mods.include = ch == b'+',
        b'S' | b'H' => {
            mods.include = ch == b'S';
            mods.sender = true;
            return Some(true);
        }
        b'R' | b'P' => {
            mods.include = ch == b'R';
            mods.receiver = true;
            return Some(true);
        }
        b'!' => *clear = true,
        _ => return None,
    }
    Some(false)
}

/// A rule's name, long (`exclude`, followed by a space, `_` or `,`) or
/// short (`-`, maybe followed by `,`), as its one-character form, and where
/// what follows it starts.
fn rule_name(s: &[u8]) -> (u8, usize) {
    const LONG: [(&[u8], u8); 9] = [
        (b"clear", b'!'),
        (b"dir-merge", b':'),
        (b"exclude", b'-'),
        (b"hide", b'H'),
        (b"include", b'+'),
        (b"merge", b'.'),
        (b"protect", b'P'),
        (b"risk", b'R'),
        (b"show", b'S'),
    ];
    let long = LONG.iter().find(|(name, _)| {
        s.starts_with(name) && matches!(s.get(name.len()), None | Some(b' ' | b'_' | b','))
    });
    match long {
        Some(&(name, ch)) if s.get(name.len()) == Some(&b',') => (ch, name.len() + 1),
        Some(&(name, ch)) => (ch, name.len()),
        None if s.get(1) == Some(&b',') => (s[0], 2),
        None => (s[0], 1),
    }
}

/// The modifiers after a rule's name, from `i` in `s` up to the
/// separator; where they end.
fn modifiers(
    s: &[u8],
    mut i: usize,
    mods: &mut Mods,
    side_given: bool,
    word_split: bool,
) -> Result<usize, FilterError> {
    while let Some(&m) = s.get(i) {
        if m == b' ' || m == b'_' || (word_split && m.is_ascii_whitespace()) {
            break;
        }
        let invalid = || FilterError::InvalidModifier {
            modifier: m as char,
            rule: lossy(cut(s, word_split)),
        };
        match m {
            b'-' | b'+' => {
                if !mods.merge || mods.no_prefixes {
                    return Err(invalid());
                }
                mods.no_prefixes = true;
                mods.include = m == b'+';
            }
            b'/' => mods.abs_path = true,
            b'!' => {
                if mods.merge {
                    return Err(invalid());
                }
                mods.negate = true;
            }
            b'C' => {
                if mods.no_prefixes || side_given {
                    return Err(invalid());
                }
                mods.no_prefixes = true;
                mods.word_split = true;
                mods.no_inherit = true;
                mods.cvs = true;
            }
            b'e' if mods.merge => mods.exclude_self = true,
            b'n' if mods.merge => mods.no_inherit = true,
            b'w' if mods.merge => mods.word_split = true,
            b'p' => mods.perishable = true,
            b'r' if !side_given => mods.receiver = true,
            b's' if !side_given => mods.sender = true,
            b'x' => mods.xattr = true,
            _ => return Err(invalid()),
        }
        i += 1;
    }
    Ok(i)
}

/// The first word of `s` in word-split mode (for messages).
fn cut(s: &[u8], word_split: bool) -> &[u8] {
    if !word_split {
        return s;
    }
    let end = s
        .iter()
        .position(|b| b.is_ascii_whitespace())
        .unwrap_or(s.len());
    &s[..end]
}

trait FromBytesLossy {
    fn from_bytes_lossy(b: &[u8]) -> &std::ffi::OsStr;
}

impl FromBytesLossy for std::ffi::OsStr {
    #[cfg(unix)]
    fn from_bytes_lossy(b: &[u8]) -> &std::ffi::OsStr {
        std::os::unix::ffi::OsStrExt::from_bytes(b)
    }
    #[cfg(not(unix))]
    fn from_bytes_lossy(b: &[u8]) -> &std::ffi::OsStr {
        std::ffi::OsStr::new(std::str::from_utf8(b).unwrap_or("\u{fffd}"))
    }
}

#[cfg(test)]
mod tests;
