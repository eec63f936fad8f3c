//! rsyncd.conf (rsyncd.conf(5)), read so that an rsync daemon's modules can
//! be served over HTTP(S) as they are configured: `[module]` sections of
//! `name = value` lines, global values before the first module as every
//! module's defaults, parameter names without regard to case or spaces,
//! `#` and `;` comments, `\` continuing a line.
//!
//! What it trusts: nothing. A module without a `path` is an error naming
//! its line; an unknown parameter is a warning naming it (as rsync warns),
//! never fatal. Host patterns, user rules and secrets files are checked
//! here so the server only asks yes or no.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::wildmatch::wildmatch;

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfError {
    #[error("{file}:{line}: module [{module}] has no path")]
    NoPath {
        file: String,
        line: usize,
        module: String,
    },
    #[error("{file}:{line}: {reason}")]
    Syntax {
        file: String,
        line: usize,
        reason: String,
    },
    #[error("{file}: {reason}")]
    Read { file: String, reason: String },
}

/// What a user may do in a module (`auth users = name:ro`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// As the module's `read only` says.
    Default,
    ReadOnly,
    ReadWrite,
    Deny,
}

/// One entry of `auth users`: a user name pattern (or `@group`, which we
/// cannot resolve and never match) and its access.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthRule {
    pub pattern: String,
    pub access: Access,
}

/// One module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module {
    pub name: String,
    /// The line of its `[name]`, for messages.
    pub line: usize,
    pub path: PathBuf,
    pub comment: String,
    pub read_only: bool,
    pub write_only: bool,
    pub list: bool,
    pub auth_users: Vec<AuthRule>,
    pub secrets_file: Option<PathBuf>,
    pub strict_modes: bool,
    /// `munge symlinks`: left at its default (yes), links a writer makes
    /// may not lead out of the module (InterSync refuses them rather than
    /// rewriting them); `no` lets them.
    pub munge_symlinks: bool,
    pub hosts_allow: Vec<String>,
    pub hosts_deny: Vec<String>,
    /// Filter rules in order: `filter` as given, `exclude` and `include`
    /// as "- " and "+ " rules, `exclude from`/`include from` files.
    pub filters: Vec<ModuleFilter>,
    pub max_connections: u32,
    pub timeout: u64,
    pub refuse_options: Vec<String>,
    pub incoming_chmod: Option<String>,
    pub outgoing_chmod: Option<String>,
}

/// A filter parameter of a module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModuleFilter {
    /// `filter = RULES` (several rules, space-separated, as rsync reads it).
    Rules(String),
    /// `exclude = PATTERNS` or `include = PATTERNS` (space-separated).
    Patterns { include: bool, patterns: String },
    /// `exclude from = FILE` or `include from = FILE`.
    From { include: bool, file: PathBuf },
}

/// A whole configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub modules: Vec<Module>,
    /// Parameters we read but do not act on, and unknown ones, by name.
    pub warnings: Vec<String>,
}

/// Parameter names as rsync compares them: lower case, no spaces or
/// underscores.
fn key(name: &str) -> String {
    name.chars()
        .filter(|c| !c.is_whitespace() && *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

fn boolean(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "yes" | "true" | "1" | "on" => Some(true),
        "no" | "false" | "0" | "off" => Some(false),
        _ => None,
    }
}

/// Parameters rsync knows that mean nothing over HTTP (or that we do not
/// carry out): accepted with a warning naming them.
const IGNORED: &[&str] = &[
    "uid",
    "gid",
    "usechroot",
    "daemonchroot",
    "daemonuid",
    "daemongid",
    "numericids",
    "charset",
    "logfile",
    "syslogfacility",
    "syslogtag",
    "transferlogging",
    "logformat",
    "lockfile",
    "pidfile",
    "port",
    "address",
    "socketoptions",
    "motdfile",
    "fakesuper",
    "ignoreerrors",
    "ignorenonreadable",
    "dontcompress",
    "prexfer exec",
    "postxfer exec",
    "forwardlookup",
    "reverselookup",
    "openNoatime",
    "listen backlog",
    "earlyexec",
    "nameconverter",
    "tempdir",
];

impl Config {
    /// Reads the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfError::Read {
            file: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses rsyncd.conf text; `file` names it in messages.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfError> {
        let mut config = Config::default();
        let mut defaults = Module::defaults();
        let mut current: Option<Module> = None;
        let mut path_given = false;
        let ignored: Vec<String> = IGNORED.iter().map(|n| key(n)).collect();
        for (n, line) in logical_lines(text) {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(rest) = line.strip_prefix('[') {
                let Some(name) = rest.strip_suffix(']') else {
                    return Err(ConfError::Syntax {
                        file: file.into(),
                        line: n,
                        reason: format!("a section header without ']': {line}"),
                    });
                };
                let name = name.trim().to_string();
                if let Some(done) = current.take() {
                    config.finish(done, path_given, file)?;
                }
                path_given = false;
                if name.eq_ignore_ascii_case("global") {
                    continue;
                }
                if name.is_empty() || name.contains('/') {
                    return Err(ConfError::Syntax {
                        file: file.into(),
                        line: n,
                        reason: format!("a module name must be a single word: [{name}]"),
                    });
                }
                current = Some(Module {
                    name,
                    line: n,
                    ..defaults.clone()
                });
                continue;
            }
            let Some((name, value)) = line.split_once('=') else {
                return Err(ConfError::Syntax {
                    file: file.into(),
                    line: n,
                    reason: format!("expected 'name = value': {line}"),
                });
            };
            let (name, value) = (name.trim(), value.trim());
            let k = key(name);
            if k == "path" && current.is_some() {
                path_given = true;
            }
            let target = current.as_mut().unwrap_or(&mut defaults);
            let known = target.set(&k, value).map_err(|what| ConfError::Syntax {
                file: file.into(),
                line: n,
                reason: format!("{name}: {what}: {value}"),
            })?;
            if !known {
                config.warnings.push(if ignored.contains(&k) {
                    format!("{file}:{n}: \"{name}\" has no meaning over HTTP; ignored")
                } else {
                    format!("{file}:{n}: unknown parameter \"{name}\"; ignored")
                });
            }
        }
        if let Some(done) = current.take() {
            config.finish(done, path_given, file)?;
        }
        Ok(config)
    }

    fn finish(&mut self, m: Module, path_given: bool, file: &str) -> Result<(), ConfError> {
        if !path_given && m.path.as_os_str().is_empty() {
            return Err(ConfError::NoPath {
                file: file.into(),
                line: m.line,
                module: m.name,
            });
        }
        if !m.refuse_options.is_empty() {
            self.warnings.push(format!(
                "{file}:{}: [{}] \"refuse options\" binds rsync command lines (which say their options); `intersync sync` sends none",
                m.line, m.name
            ));
        }
        if m.outgoing_chmod.is_some() {
            self.warnings.push(format!(
                "{file}:{}: [{}] \"outgoing chmod\" is not supported yet; ignored",
                m.line, m.name
            ));
        }
        self.modules.push(m);
        Ok(())
    }

    pub fn module(&self, name: &str) -> Option<&Module> {
        self.modules.iter().find(|m| m.name == name)
    }
}

/// The lines of rsyncd.conf text, with `\` continuations joined, and the
/// number of each one's first line.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut logical: Vec<(usize, String)> = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_end_matches('\r');
        let (start, mut joined) = pending.take().unwrap_or((i + 1, String::new()));
        if let Some(body) = line.strip_suffix('\\') {
            joined.push_str(body);
            pending = Some((start, joined));
            continue;
        }
        joined.push_str(line);
        logical.push((start, joined));
    }
    logical.extend(pending);
    logical
}

fn words(value: &str) -> Vec<String> {
    value
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|w| !w.is_empty())
        .map(String::from)
        .collect()
}

impl Module {
    /// Sets the parameter `k` (its name lowercased, without spaces) to
    /// `value`; false for a parameter it does not know; what is wrong with
    /// a value it cannot take.
    fn set(&mut self, k: &str, value: &str) -> Result<bool, &'static str> {
        let flag = |v: &str| boolean(v).ok_or("not a boolean");
        match k {
            "path" => self.path = PathBuf::from(value),
            "comment" => self.comment = value.to_string(),
            "readonly" => self.read_only = flag(value)?,
            "writeonly" => self.write_only = flag(value)?,
            "list" => self.list = flag(value)?,
            "strictmodes" => self.strict_modes = flag(value)?,
            "mungesymlinks" => self.munge_symlinks = flag(value)?,
            "authusers" => {
                self.auth_users = words(value)
                    .into_iter()
                    .map(|w| {
                        let (pattern, access) = match w.rsplit_once(':') {
                            Some((p, "ro")) => (p.to_string(), Access::ReadOnly),
                            Some((p, "rw")) => (p.to_string(), Access::ReadWrite),
                            Some((p, "deny")) => (p.to_string(), Access::Deny),
                            _ => (w.clone(), Access::Default),
                        };
                        AuthRule { pattern, access }
                    })
                    .collect()
            }
            "secretsfile" => self.secrets_file = Some(PathBuf::from(value)),
            "hostsallow" => self.hosts_allow = words(value),
            "hostsdeny" => self.hosts_deny = words(value),
            "filter" => self.filters.push(ModuleFilter::Rules(value.to_string())),
            "exclude" | "include" => self.filters.push(ModuleFilter::Patterns {
                include: k == "include",
                patterns: value.to_string(),
            }),
            "excludefrom" | "includefrom" => self.filters.push(ModuleFilter::From {
                include: k == "includefrom",
                file: PathBuf::from(value),
            }),
            "maxconnections" => self.max_connections = value.parse().map_err(|_| "not a number")?,
            "timeout" => self.timeout = value.parse().map_err(|_| "not a number")?,
            "refuseoptions" => self.refuse_options = words(value),
            "incomingchmod" => self.incoming_chmod = Some(value.to_string()),
            "outgoingchmod" => self.outgoing_chmod = Some(value.to_string()),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// rsync's defaults: read only, listed, strict modes.
    fn defaults() -> Module {
        Module {
            name: String::new(),
            line: 0,
            path: PathBuf::new(),
            comment: String::new(),
            read_only: true,
            write_only: false,
            list: true,
            auth_users: Vec::new(),
            secrets_file: None,
            strict_modes: true,
            munge_symlinks: true,
            hosts_allow: Vec::new(),
            hosts_deny: Vec::new(),
            filters: Vec::new(),
            max_connections: 0,
            timeout: 0,
            refuse_options: Vec::new(),
            incoming_chmod: None,
            outgoing_chmod: None,
        }
    }

    /// rsync's `allow_access`: a match in `hosts allow` admits; without a
    /// deny list, an allow list admits only its matches; otherwise a match
    /// in `hosts deny` refuses.
    pub fn host_allowed(&self, addr: IpAddr) -> bool {
        let allow = &self.hosts_allow;
        let deny = &self.hosts_deny;
        if !allow.is_empty() && allow.iter().any(|p| host_matches(p, addr)) {
            return true;
        }
        if deny.is_empty() {
            return allow.is_empty();
        }
        !deny.iter().any(|p| host_matches(p, addr))
    }

    /// The access of the first `auth users` rule matching `user`; `None`
    /// when no rule names them (a failed login, as in rsync).
    pub fn user_access(&self, user: &str) -> Option<Access> {
        self.auth_users
            .iter()
            .find(|r| {
                !r.pattern.starts_with('@') && wildmatch(r.pattern.as_bytes(), user.as_bytes())
            })
            .map(|r| r.access)
    }

    /// The first option of `given` (long names, as `delete-after`) that
    /// `refuse options` refuses: patterns match by wildmatch, and refusing
    /// `delete` refuses every `delete-*`, as in rsync.
    pub fn refused_option<'a>(&self, given: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
        given.into_iter().find(|name| {
            self.refuse_options.iter().any(|p| {
                let p = p.trim_start_matches('-');
                wildmatch(p.as_bytes(), name.as_bytes())
                    || (p == "delete" && name.starts_with("delete"))
                    || (p == "archive" && *name == "a")
            })
        })
    }

    /// Whether `user` may write, given the rule that admitted them.
    pub fn writable_by(&self, access: Access) -> bool {
        match access {
            Access::ReadWrite => true,
            Access::ReadOnly | Access::Deny => false,
            Access::Default => !self.read_only,
        }
    }
}

/// A `hosts allow`/`hosts deny` pattern against an address: an address,
/// `addr/bits`, `addr/mask`, or a wildcard pattern over the address text
/// (names are not looked up).
pub fn host_matches(pattern: &str, addr: IpAddr) -> bool {
    if let Some((net, bits)) = pattern.split_once('/') {
        let Ok(net) = net.parse::<IpAddr>() else {
            return false;
        };
        let prefix = if let Ok(b) = bits.parse::<u32>() {
            b
        } else if let Ok(IpAddr::V4(mask)) = bits.parse::<IpAddr>() {
            u32::from(mask).count_ones()
        } else {
            return false;
        };
        return match (net, addr) {
            (IpAddr::V4(n), IpAddr::V4(a)) if prefix <= 32 => {
                let m = if prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - prefix)
                };
                u32::from(n) & m == u32::from(a) & m
            }
            (IpAddr::V6(n), IpAddr::V6(a)) if prefix <= 128 => {
                let m = if prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - prefix)
                };
                u128::from(n) & m == u128::from(a) & m
            }
            _ => false,
        };
    }
    if let Ok(p) = pattern.parse::<IpAddr>() {
        return p == addr;
    }
    wildmatch(pattern.as_bytes(), addr.to_string().as_bytes())
}

/// Reads an rsync secrets file for `user`'s password. With strict modes,
/// a file others can read (or, when we run as root, one root does not
/// own) is refused, as rsync refuses it.
pub fn secret_for(path: &Path, user: &str, strict: bool) -> Result<Option<String>, String> {
    #[cfg(unix)]
    if strict {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if meta.mode() & 0o006 != 0 {
            return Err(format!(
                "secrets file must not be other-accessible (see strict modes option): {}",
                path.display()
            ));
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { geteuid() } == 0 && meta.uid() != 0 {
            return Err(format!(
                "secrets file must be owned by root when running as root (see strict modes): {}",
                path.display()
            ));
        }
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(text.lines().find_map(|l| {
        let l = l.trim_end_matches('\r');
        if l.starts_with('#') {
            return None;
        }
        let (u, p) = l.split_once(':')?;
        (u == user).then(|| p.to_string())
    }))
}

#[cfg(unix)]
unsafe extern "C" {
    fn geteuid() -> u32;
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONF: &str = "\
# global defaults
max connections = 4
timeout = 600

[public]
\tpath = /srv/public
\tcomment = Public files
\texclude = *.tmp secret/

[private]
path = /srv/private
read only = no
auth users = alice:rw, bob, @staff, carol:deny
secrets file = /etc/rsyncd.secrets
list = false

[lan]
path = /srv/lan
Hosts Allow = 10.0.0.0/8, 192.168.1.7, 127.0.0.*
hosts deny = *
uid = nobody
mystery = 1
";

    #[test]
    fn modules_with_defaults_and_warnings() {
        let c = Config::parse(CONF, "rsyncd.conf").unwrap();
        assert_eq!(c.modules.len(), 3);
        let public = c.module("public").unwrap();
        assert_eq!(public.path, PathBuf::from("/srv/public"));
        assert!(public.read_only && public.list);
        assert_eq!(public.max_connections, 4);
        assert_eq!(public.timeout, 600);
        assert_eq!(
            public.filters,
            vec![ModuleFilter::Patterns {
                include: false,
                patterns: "*.tmp secret/".into()
            }]
        );
        let private = c.module("private").unwrap();
        assert!(!private.read_only && !private.list);
        assert_eq!(private.auth_users.len(), 4);
        assert_eq!(private.user_access("alice"), Some(Access::ReadWrite));
        assert_eq!(private.user_access("bob"), Some(Access::Default));
        assert_eq!(private.user_access("carol"), Some(Access::Deny));
        assert_eq!(private.user_access("mallory"), None);
        assert!(private.writable_by(Access::Default));
        let warned = c.warnings.join("\n");
        assert!(warned.contains("\"uid\" has no meaning"), "{warned}");
        assert!(warned.contains("unknown parameter \"mystery\""), "{warned}");
    }

    #[test]
    fn hosts() {
        let c = Config::parse(CONF, "rsyncd.conf").unwrap();
        let lan = c.module("lan").unwrap();
        let mut refusing = lan.clone();
        refusing.refuse_options = vec!["delete".into(), "c*".into()];
        assert_eq!(
            refusing.refused_option(["archive", "delete-after"]),
            Some("delete-after")
        );
        assert_eq!(refusing.refused_option(["checksum"]), Some("checksum"));
        assert_eq!(refusing.refused_option(["archive", "verbose"]), None);
        for ok in ["10.1.2.3", "192.168.1.7", "127.0.0.1"] {
            assert!(lan.host_allowed(ok.parse().unwrap()), "{ok}");
        }
        for no in ["192.168.1.8", "8.8.8.8", "::1"] {
            assert!(!lan.host_allowed(no.parse().unwrap()), "{no}");
        }
        let public = c.module("public").unwrap();
        assert!(public.host_allowed("8.8.8.8".parse().unwrap()));
        assert!(host_matches(
            "10.0.0.0/255.0.0.0",
            "10.9.9.9".parse().unwrap()
        ));
        assert!(!host_matches(
            "10.0.0.0/255.0.0.0",
            "11.9.9.9".parse().unwrap()
        ));
        assert!(!host_matches("garbage/x", "10.9.9.9".parse().unwrap()));
    }

    #[test]
    fn errors_name_the_line() {
        let e = Config::parse("[a]\ncomment = x\n\n[b]\npath = /b\n", "f").unwrap_err();
        assert_eq!(
            e,
            ConfError::NoPath {
                file: "f".into(),
                line: 1,
                module: "a".into()
            }
        );
        let e = Config::parse("[a\npath = /a\n", "f").unwrap_err();
        assert!(matches!(e, ConfError::Syntax { line: 1, .. }), "{e:?}");
        let e = Config::parse("[a]\npath /a\n", "f").unwrap_err();
        assert!(matches!(e, ConfError::Syntax { line: 2, .. }), "{e:?}");
        let e = Config::parse("[a]\npath = /a\nread only = maybe\n", "f").unwrap_err();
        assert!(matches!(e, ConfError::Syntax { line: 3, .. }), "{e:?}");
        // Continuations, comments, [global].
        let c =
            Config::parse("[global]\nread only = \\\n  no\n; c\n[m]\npath = /m\n", "f").unwrap();
        assert!(!c.modules[0].read_only);
    }

    #[test]
    fn secrets_are_checked_strictly() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile_dir();
        let f = dir.join("secrets");
        std::fs::write(&f, "# users\nalice:wonderland\nbob:builder\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(secret_for(&f, "alice", true), Ok(Some("wonderland".into())));
        assert_eq!(secret_for(&f, "eve", true), Ok(None));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(secret_for(&f, "alice", true).is_err());
        assert_eq!(
            secret_for(&f, "alice", false),
            Ok(Some("wonderland".into()))
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("rsyncd-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
