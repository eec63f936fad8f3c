//! Differential tests: the real `rsync` and `intersync` run with the same
//! options on the same generated trees, in twin folders; the resulting
//! trees (content, kinds, modes, mtimes, symlink targets, owners, hard
//! links), the exit codes and what they print (itemize lines, names,
//! `--stats` figures) must agree.
//!
//! Output lines are compared as sorted lists: rsync's generator and
//! receiver are two processes whose lines interleave by timing, so their
//! order is not part of what rsync promises.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{Server, intersync, random_bytes, run, tool};

/// A base time for every generated mtime, so that the twins agree.
const T0: i64 = 1_600_000_000;

fn set_mtime(path: &Path, secs: i64) {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64);
    let f = std::fs::File::options()
        .write(true)
        .open(path)
        .or_else(|_| std::fs::File::open(path))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    f.set_times(std::fs::FileTimes::new().set_modified(t))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn set_link_mtime(path: &Path, secs: i64) {
    let status = Command::new("touch")
        .args(["-h", "-d"])
        .arg(format!("@{secs}"))
        .arg(path)
        .status()
        .expect("touch");
    assert!(status.success());
}

fn write(root: &Path, name: &str, bytes: &[u8], mtime: i64) {
    let p = root.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, bytes).unwrap();
    set_mtime(&p, mtime);
}

fn mkdir(root: &Path, name: &str) {
    std::fs::create_dir_all(root.join(name)).unwrap();
}

/// The source tree: files of several sizes in nested folders, names the
/// filter cases aim at, a symlink, a FIFO and a pair of hard links.
fn source(root: &Path) {
    mkdir(root, "");
    let files: &[(&str, usize)] = &[
        ("a.txt", 100),
        ("b.bin", 5000),
        ("z", 10),
        ("main.c", 300),
        ("main.o", 200),
        ("core", 50),
        ("notes.log", 40),
        ("keep.log", 30),
        ("with space.txt", 20),
        ("[x].txt", 20),
        ("Upper.TXT", 20),
        ("tmp~", 5),
        ("src/lib.c", 400),
        ("src/lib.o", 300),
        ("src/deep/er/file.c", 120),
        ("src/deep/er/file.o", 80),
        ("src/deep/other.txt", 60),
        ("build/out.bin", 700),
        ("build/sub/x.o", 90),
        ("logs/2024/jan.log", 33),
        ("logs/2024/feb.gz", 34),
        ("logs/today.log", 35),
        ("docs/readme.md", 70),
        ("docs/build/page.html", 75),
        (".git/HEAD", 23),
        ("CVS/Entries", 12),
        ("big.dat", 300_000),
    ];
    for (i, (name, len)) in files.iter().enumerate() {
        write(
            root,
            name,
            &random_bytes(i as u64 + 1, *len),
            T0 + i as i64 * 60,
        );
    }
    mkdir(root, "empty");
    mkdir(root, "only-dirs/a/b");
    std::os::unix::fs::symlink("a.txt", root.join("link")).unwrap();
    set_link_mtime(&root.join("link"), T0 + 5000);
    std::os::unix::fs::symlink("../z", root.join("src/uplink")).unwrap();
    let fifo = root.join("fifo");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    set_link_mtime(&fifo, T0 + 6000);
    std::fs::hard_link(root.join("z"), root.join("z-hard")).unwrap();
    std::fs::set_permissions(root.join("b.bin"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(root.join("src"), std::fs::Permissions::from_mode(0o750)).unwrap();
    for d in [
        "",
        "src",
        "src/deep",
        "src/deep/er",
        "build",
        "build/sub",
        "logs",
        "logs/2024",
        "docs",
        "docs/build",
        ".git",
        "CVS",
        "empty",
        "only-dirs",
        "only-dirs/a",
        "only-dirs/a/b",
    ] {
        set_mtime(&root.join(d), T0 - 1000);
    }
}

/// A destination that an older run left: most of the tree, some of it
/// changed, some gone, extras the source lacks.
fn old_copy(src: &Path, dst: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(src)
        .arg(dst)
        .status()
        .unwrap();
    assert!(status.success());
    // Changed content, same size and mtime: only -c notices.
    let b = dst.join("b.bin");
    let mut bytes = std::fs::read(&b).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&b, &bytes).unwrap();
    set_mtime(&b, T0 + 60);
    // Changed size.
    write(dst, "a.txt", b"short", T0);
    // Same content, other mtime.
    let z = std::fs::read(dst.join("main.c")).unwrap();
    write(dst, "main.c", &z, T0 + 999_999);
    // Other modes.
    std::fs::set_permissions(dst.join("z"), std::fs::Permissions::from_mode(0o666)).unwrap();
    // Gone.
    std::fs::remove_file(dst.join("docs/readme.md")).unwrap();
    std::fs::remove_dir_all(dst.join("logs/2024")).unwrap();
    // Extras.
    write(dst, "extra.txt", b"extra", T0);
    write(dst, "extra.o", b"object", T0);
    write(dst, "src/stale.c", b"stale", T0);
    write(dst, "gone-dir/inner.txt", b"inner", T0);
    write(dst, "gone-dir/inner.o", b"inner object", T0);
    write(dst, "gone-dir/deeper/x.log", b"log", T0);
    // Type conflicts: a folder where the source has a file and back.
    std::fs::remove_file(dst.join("core")).unwrap();
    write(dst, "core/inside", b"x", T0);
    std::fs::remove_dir_all(dst.join("empty")).unwrap();
    write(dst, "empty", b"not a folder", T0);
    // A symlink pointing elsewhere.
    std::fs::remove_file(dst.join("link")).unwrap();
    std::os::unix::fs::symlink("z", dst.join("link")).unwrap();
    for d in [
        "",
        "src",
        "docs",
        "logs",
        "core",
        "gone-dir",
        "gone-dir/deeper",
    ] {
        set_mtime(&dst.join(d), T0 - 5);
    }
}

/// What a tree looks like, item by item, for comparison.
fn describe(root: &Path, times: bool) -> BTreeMap<String, String> {
    describe_with(root, if times { Times::All } else { Times::None })
}

/// Which mtimes a comparison holds to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Times {
    None,
    All,
    /// Files only: an export's journal records no folder or symlink times.
    Files,
}

fn describe_with(root: &Path, times: Times) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if std::fs::symlink_metadata(root).is_err() {
        return out;
    }
    let mut first_of_inode: BTreeMap<(u64, u64), String> = BTreeMap::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let path = if rel.as_os_str().is_empty() {
            root.to_path_buf()
        } else {
            root.join(&rel)
        };
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let ft = meta.file_type();
        let name = if rel.as_os_str().is_empty() {
            ".".to_string()
        } else {
            rel.to_string_lossy().into_owned()
        };
        let mut d = String::new();
        if ft.is_dir() {
            d.push_str("dir");
            let mut kids: Vec<_> = std::fs::read_dir(&path)
                .unwrap()
                .map(|e| rel.join(e.unwrap().file_name()))
                .collect();
            kids.sort();
            stack.extend(kids);
        } else if ft.is_symlink() {
            d.push_str(&format!(
                "link->{}",
                std::fs::read_link(&path).unwrap().display()
            ));
        } else if ft.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            d.push_str(&format!(
                "file {} {}",
                bytes.len(),
                blake3::hash(&bytes).to_hex()
            ));
            if meta.nlink() > 1 {
                let first = first_of_inode
                    .entry((meta.dev(), meta.ino()))
                    .or_insert_with(|| name.clone());
                d.push_str(&format!(" linked-with {first}"));
            }
        } else {
            d.push_str("special");
        }
        if !ft.is_symlink() {
            d.push_str(&format!(" mode {:o}", meta.mode() & 0o7777));
        }
        d.push_str(&format!(" owner {}:{}", meta.uid(), meta.gid()));
        if (times == Times::All && !ft.is_symlink()) || (times == Times::Files && ft.is_file()) {
            // Times nobody set are the time of the run, which differs
            // between the twins by a second or so.
            if (meta.mtime() - now).abs() < 600 {
                d.push_str(" mtime (now)");
            } else {
                d.push_str(&format!(" mtime {}", meta.mtime()));
            }
        }
        out.insert(name, d);
    }
    out
}

/// What differs between rsync's tree and ours, a line an item.
fn tree_diff(want: &BTreeMap<String, String>, got: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    for (k, v) in want {
        match got.get(k) {
            None => out.push_str(&format!("  only rsync: {k}: {v}\n")),
            Some(g) if g != v => {
                out.push_str(&format!("  {k}:\n    rsync     {v}\n    intersync {g}\n"))
            }
            _ => {}
        }
    }
    for (k, v) in got {
        if !want.contains_key(k) {
            out.push_str(&format!("  only intersync: {k}: {v}\n"));
        }
    }
    out
}

/// One differential case.
struct Case {
    name: &'static str,
    /// The arguments; `SRC` and `DST` are the twin folders' `src` and
    /// `dst`, written as given (so trailing slashes count).
    args: &'static [&'static str],
    /// Make the destination an older copy first.
    old: bool,
    /// Extra setup of the twins (both get it).
    setup: Option<fn(&Path)>,
    /// Compare stdout lines (sorted); otherwise only trees and exit codes.
    output: bool,
}

const fn case(name: &'static str, args: &'static [&'static str]) -> Case {
    Case {
        name,
        args,
        old: false,
        setup: None,
        output: true,
    }
}

const fn on_old(name: &'static str, args: &'static [&'static str]) -> Case {
    Case {
        name,
        args,
        old: true,
        setup: None,
        output: true,
    }
}

/// Lines of stdout worth comparing: itemize and name lines, stats
/// figures, without the figures that depend on the protocol or time.
fn comparable(stdout: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(stdout);
    // rsync repeats some notes ("cannot delete non-empty directory") as
    // its recursion passes a folder twice: compare each line once.
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| {
            !(l.is_empty()
                || l.starts_with("sent ")
                || l.starts_with("total size is")
                || l.starts_with("Total bytes sent")
                || l.starts_with("Total bytes received")
                || l.starts_with("File list ")
                || l.starts_with("sending incremental file list"))
        })
        .map(str::to_string)
        .collect();
    lines.sort();
    lines.dedup();
    lines
}

struct Twin {
    _dir: tempfile::TempDir,
    base: PathBuf,
}

impl Twin {
    fn new(case: &Case) -> Twin {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().to_path_buf();
        source(&base.join("src"));
        if case.old {
            old_copy(&base.join("src"), &base.join("dst"));
        }
        if let Some(setup) = case.setup {
            setup(&base);
        }
        Twin { _dir: dir, base }
    }

    fn run(&self, mut cmd: Command, args: &[&str]) -> (i32, Vec<u8>, Vec<u8>) {
        cmd.current_dir(&self.base);
        for a in args {
            let a = a
                .replace("SRC", "src")
                .replace("DST", "dst")
                .replace("BASE", &self.base.to_string_lossy());
            cmd.arg(a);
        }
        let out = run(&mut cmd);
        (out.status.code().unwrap_or(-1), out.stdout, out.stderr)
    }
}

fn check(case: &Case) {
    let theirs = Twin::new(case);
    let ours = Twin::new(case);
    let (rc_r, out_r, err_r) = theirs.run(tool("rsync"), case.args);
    let (rc_i, out_i, err_i) = ours.run(intersync(), case.args);
    let context = || {
        format!(
            "case {} ({:?})\nrsync exit {rc_r}:\n{}{}\nintersync exit {rc_i}:\n{}{}",
            case.name,
            case.args,
            String::from_utf8_lossy(&out_r),
            String::from_utf8_lossy(&err_r),
            String::from_utf8_lossy(&out_i),
            String::from_utf8_lossy(&err_i)
        )
    };
    assert_eq!(rc_r, rc_i, "exit codes differ: {}", context());
    let times = case.args.iter().any(|a| {
        *a == "--times"
            || (a.starts_with('-') && !a.starts_with("--") && (a.contains('a') || a.contains('t')))
    }) && !case
        .args
        .iter()
        .any(|a| *a == "--no-times" || *a == "--no-t");
    for sub in ["dst", "src"] {
        let want = describe(&theirs.base.join(sub), times);
        let got = describe(&ours.base.join(sub), times);
        if want != got {
            panic!(
                "{sub} trees differ:\n{}{}",
                tree_diff(&want, &got),
                context()
            );
        }
    }
    if case.output {
        assert_eq!(
            comparable(&out_r),
            comparable(&out_i),
            "output differs: {}",
            context()
        );
    }
}

/// The cases of rsync's first group of options.
const OPTIONS: &[Case] = &[
    case("archive, contents", &["-a", "SRC/", "DST/"]),
    case("archive, folder itself", &["-a", "SRC", "DST"]),
    case("archive itemized", &["-ai", "SRC/", "DST"]),
    case("archive verbose", &["-av", "SRC/", "DST"]),
    case("archive very itemized", &["-aii", "SRC/", "DST"]),
    case("recursive only", &["-ri", "SRC/", "DST"]),
    case("recursive links", &["-rli", "SRC/", "DST"]),
    case("recursive links perms", &["-rlpi", "SRC/", "DST"]),
    case("recursive links times", &["-rlti", "SRC/", "DST"]),
    case("devices and specials", &["-rDi", "SRC/", "DST"]),
    case("archive without perms", &["-ai", "--no-p", "SRC/", "DST"]),
    case(
        "archive without times",
        &["-ai", "--no-times", "SRC/", "DST"],
    ),
    case("archive without links", &["-ai", "--no-l", "SRC/", "DST"]),
    case("archive without devices", &["-ai", "--no-D", "SRC/", "DST"]),
    case(
        "archive without owner, group",
        &["-ai", "--no-o", "--no-g", "SRC/", "DST"],
    ),
    case("dirs only", &["-di", "SRC/", "DST"]),
    case("no recursion skips folders", &["-i", "SRC/", "DST"]),
    case("quiet", &["-aq", "SRC/", "DST"]),
    case("dry run", &["-ain", "SRC/", "DST"]),
    case("stats", &["-a", "--stats", "SRC/", "DST"]),
    case("stats human", &["-ah", "--stats", "SRC/", "DST"]),
    case("compress", &["-az", "SRC/", "DST"]),
    case("bwlimit", &["-a", "--bwlimit=20M", "SRC/", "DST"]),
    case("partial", &["-a", "--partial", "SRC/", "DST"]),
    case("partial dir", &["-a", "--partial-dir=.part", "SRC/", "DST"]),
    case("progress", &["-a", "--progress", "-q", "SRC/", "DST"]),
    case(
        "info progress2",
        &["-a", "--info=progress2", "-q", "SRC/", "DST"],
    ),
    case(
        "several sources",
        &["-ai", "SRC/src", "SRC/docs/", "SRC/a.txt", "DST"],
    ),
    case("one file to a new name", &["-ai", "SRC/a.txt", "DST"]),
    case("one file into a folder", &["-ai", "SRC/a.txt", "DST/"]),
    on_old("update an old copy", &["-ai", "SRC/", "DST"]),
    on_old("update, very itemized", &["-aii", "SRC/", "DST"]),
    on_old("update verbose", &["-av", "SRC/", "DST"]),
    on_old("update dry run", &["-ain", "--delete", "SRC/", "DST"]),
    on_old("checksum", &["-aic", "SRC/", "DST"]),
    on_old("size only", &["-ai", "--size-only", "SRC/", "DST"]),
    on_old("ignore times", &["-aiI", "SRC/", "DST"]),
    on_old("no times on an old copy", &["-rlpi", "SRC/", "DST"]),
    on_old("delete", &["-ai", "--delete", "SRC/", "DST"]),
    on_old("delete before", &["-ai", "--delete-before", "SRC/", "DST"]),
    on_old("delete during", &["-ai", "--delete-during", "SRC/", "DST"]),
    on_old("del", &["-ai", "--del", "SRC/", "DST"]),
    on_old("delete after", &["-ai", "--delete-after", "SRC/", "DST"]),
    on_old("delete delay", &["-ai", "--delete-delay", "SRC/", "DST"]),
    on_old("delete verbose", &["-av", "--delete", "SRC/", "DST"]),
    on_old(
        "delete stats",
        &["-a", "--delete", "--stats", "SRC/", "DST"],
    ),
    on_old(
        "delete with excludes",
        &["-ai", "--delete", "--exclude=*.o", "SRC/", "DST"],
    ),
    on_old(
        "delete excluded",
        &["-ai", "--delete-excluded", "--exclude=*.o", "SRC/", "DST"],
    ),
    on_old(
        "delete with an excluded folder",
        &["-ai", "--delete", "--exclude=gone-dir/", "SRC/", "DST"],
    ),
    on_old(
        "delete keeps protected in gone folder",
        &["-ai", "--delete", "--exclude=*.log", "SRC/", "DST"],
    ),
    on_old(
        "delete, perishable protection",
        &["-ai", "--delete", "-f", "-p *.log", "SRC/", "DST"],
    ),
    on_old(
        "max delete",
        &["-ai", "--delete", "--max-delete=2", "SRC/", "DST"],
    ),
    on_old(
        "max delete zero",
        &["-ai", "--delete", "--max-delete=0", "SRC/", "DST"],
    ),
    on_old(
        "ignore errors",
        &["-ai", "--delete", "--ignore-errors", "SRC/", "DST"],
    ),
    on_old(
        "an I/O error stops deletions",
        &["-ai", "--delete", "SRC/nonexistent", "SRC/", "DST"],
    ),
    on_old(
        "ignore errors deletes anyway",
        &[
            "-ai",
            "--delete",
            "--ignore-errors",
            "SRC/nonexistent",
            "SRC/",
            "DST",
        ],
    ),
    on_old(
        "max delete alone",
        &[
            "-ai",
            "--delete",
            "--max-delete=1",
            "--exclude=/core",
            "--exclude=/empty",
            "SRC/",
            "DST",
        ],
    ),
    case(
        "missing source",
        &["-ai", "SRC/nonexistent", "SRC/a.txt", "DST/"],
    ),
    case("missing destination parent", &["-ai", "SRC/", "DST/x/y/"]),
    case(
        "unknown option",
        &["-ai", "--no-such-option", "SRC/", "DST"],
    ),
    case("delete without recursion", &["--delete", "SRC/", "DST"]),
    case(
        "two delete modes",
        &["-a", "--delete-before", "--delete-after", "SRC/", "DST"],
    ),
    Case {
        output: false,
        ..case("human alone prints help", &["-h"])
    },
];

/// The second group, where we carry them out.
const OPTIONS_2: &[Case] = &[
    on_old("update newer", &["-aiu", "SRC/", "DST"]),
    on_old(
        "ignore existing",
        &["-ai", "--ignore-existing", "SRC/", "DST"],
    ),
    on_old("existing only", &["-ai", "--existing", "SRC/", "DST"]),
    case("max size", &["-ai", "--max-size=100", "SRC/", "DST"]),
    case("min size", &["-ai", "--min-size=1k", "SRC/", "DST"]),
    on_old("omit dir times", &["-aiO", "SRC/", "DST"]),
    case("mkpath", &["-ai", "--mkpath", "SRC/", "DST/x/y/"]),
    case("prune empty dirs", &["-aim", "SRC/", "DST"]),
    case(
        "prune with filters",
        &[
            "-aim",
            "--include=*/",
            "--include=*.c",
            "--exclude=*",
            "SRC/",
            "DST",
        ],
    ),
    case("hard links", &["-aiH", "SRC/", "DST"]),
    on_old("inplace", &["-ai", "--inplace", "SRC/", "DST"]),
    on_old(
        "modify window",
        &["-ai", "--modify-window=2000000", "SRC/", "DST"],
    ),
    case("numeric ids", &["-ai", "--numeric-ids", "SRC/", "DST"]),
    case("one file system", &["-aix", "SRC/", "DST"]),
    case("chmod octal", &["-ai", "--chmod=D700,F600", "SRC/", "DST"]),
    case(
        "chmod symbolic",
        &["-ai", "--chmod=Dg+s,ug+w,Fo-w,+X", "SRC/", "DST"],
    ),
    case(
        "chmod twice",
        &["-ai", "--chmod=a-w", "--chmod=u+w", "SRC/", "DST"],
    ),
    case(
        "chmod without perms",
        &["-rlti", "--chmod=F600", "SRC/", "DST"],
    ),
    on_old(
        "chmod on an old copy",
        &["-ai", "--chmod=go-rwx", "SRC/", "DST"],
    ),
    case("bad chmod", &["-ai", "--chmod=u*x", "SRC/", "DST"]),
];

/// Filter rules: each case copies the tree with `-ai` and the rules.
const FILTERS: &[Case] = &[
    case("exclude a name", &["-ai", "--exclude=*.o", "SRC/", "DST"]),
    case(
        "exclude a literal name",
        &["-ai", "--exclude=core", "SRC/", "DST"],
    ),
    case("exclude anchored", &["-ai", "--exclude=/z", "SRC/", "DST"]),
    case(
        "exclude anchored in folder source",
        &["-ai", "--exclude=/src/lib.c", "SRC", "DST"],
    ),
    case(
        "exclude with a slash",
        &["-ai", "--exclude=deep/other.txt", "SRC/", "DST"],
    ),
    case(
        "exclude folders only",
        &["-ai", "--exclude=build/", "SRC/", "DST"],
    ),
    case(
        "exclude star in the middle",
        &["-ai", "--exclude=src/*/other.txt", "SRC/", "DST"],
    ),
    case(
        "exclude double star",
        &["-ai", "--exclude=logs/**.log", "SRC/", "DST"],
    ),
    case(
        "exclude anchored double star",
        &["-ai", "--exclude=/src/**/file.c", "SRC/", "DST"],
    ),
    case(
        "exclude leading double star",
        &["-ai", "--exclude=**/er", "SRC/", "DST"],
    ),
    case(
        "exclude question mark",
        &["-ai", "--exclude=?.txt", "SRC/", "DST"],
    ),
    case(
        "exclude class",
        &["-ai", "--exclude=[a-m]*.c", "SRC/", "DST"],
    ),
    case(
        "exclude posix class",
        &["-ai", "--exclude=[[:upper:]]*", "SRC/", "DST"],
    ),
    case(
        "exclude negated class",
        &["-ai", "--exclude=[!a-z]*", "SRC/", "DST"],
    ),
    case(
        "exclude escaped bracket",
        &["-ai", "--exclude=\\[x\\].txt", "SRC/", "DST"],
    ),
    case(
        "exclude with a space",
        &["-ai", "--exclude=with space.txt", "SRC/", "DST"],
    ),
    case(
        "include then exclude all",
        &[
            "-ai",
            "--include=*/",
            "--include=*.c",
            "--exclude=*",
            "SRC/",
            "DST",
        ],
    ),
    case(
        "include a folder and its contents",
        &["-ai", "--include=/src/***", "--exclude=*", "SRC/", "DST"],
    ),
    case(
        "include needs its parents",
        &["-ai", "--include=src/lib.c", "--exclude=*", "SRC/", "DST"],
    ),
    case(
        "first match wins",
        &[
            "-ai",
            "--include=keep.log",
            "--exclude=*.log",
            "SRC/",
            "DST",
        ],
    ),
    case(
        "filter short forms",
        &[
            "-ai",
            "-f",
            "+ keep.log",
            "-f",
            "- *.log",
            "-f",
            "-_*.o",
            "SRC/",
            "DST",
        ],
    ),
    case(
        "filter long forms",
        &[
            "-ai",
            "-f",
            "include keep.log",
            "-f",
            "exclude *.log",
            "SRC/",
            "DST",
        ],
    ),
    case("filter negation", &["-ai", "-f", "-! */", "SRC/", "DST"]),
    case(
        "filter negation on files",
        &["-ai", "-f", "+ */", "-f", "-! *.c", "SRC/", "DST"],
    ),
    case(
        "filter clear",
        &[
            "-ai", "-f", "- *.c", "-f", "!", "-f", "- *.o", "SRC/", "DST",
        ],
    ),
    case(
        "filter hide and show",
        &["-ai", "-f", "S keep.log", "-f", "H *.log", "SRC/", "DST"],
    ),
    case(
        "filter sender side modifier",
        &["-ai", "-f", "-s *.txt", "SRC/", "DST"],
    ),
    case(
        "filter receiver side only does not hide",
        &["-ai", "-f", "-r *.txt", "SRC/", "DST"],
    ),
    on_old(
        "protect with delete",
        &["-ai", "--delete", "-f", "P extra.*", "SRC/", "DST"],
    ),
    on_old(
        "risk with delete",
        &[
            "-ai",
            "--delete",
            "-f",
            "R extra.txt",
            "-f",
            "- extra.*",
            "SRC/",
            "DST",
        ],
    ),
    on_old(
        "sender-only exclude is deleted",
        &["-ai", "--delete", "-f", "-s *.o", "SRC/", "DST"],
    ),
    case("cvs exclude", &["-aiC", "SRC/", "DST"]),
    case(
        "cvs exclude after rules",
        &["-aiC", "--include=core", "SRC/", "DST"],
    ),
    case("cvs rule in place", &["-ai", "-f", "-C", "SRC/", "DST"]),
    case(
        "exclude from",
        &["-ai", "--exclude-from=BASE/rules.txt", "SRC/", "DST"],
    )
    .with(rules_file),
    case(
        "include from",
        &[
            "-ai",
            "--include-from=BASE/rules.txt",
            "--exclude=*.log",
            "SRC/",
            "DST",
        ],
    )
    .with(rules_file),
    case(
        "merge file",
        &["-ai", "-f", ". BASE/merge.rules", "SRC/", "DST"],
    )
    .with(merge_file),
    case(
        "merge with exclude modifier",
        &["-ai", "-f", "merge,- BASE/rules.txt", "SRC/", "DST"],
    )
    .with(rules_file),
    case("dir merge", &["-ai", "-f", ": .rules", "SRC/", "DST"]).with(dir_rules),
    case(
        "dir merge excluding itself",
        &["-ai", "-f", "dir-merge,e .rules", "SRC/", "DST"],
    )
    .with(dir_rules),
    case(
        "dir merge not inherited",
        &["-ai", "-f", ":n .rules", "SRC/", "DST"],
    )
    .with(dir_rules),
    case(
        "dir merge word split",
        &["-ai", "-f", ":w- .words", "SRC/", "DST"],
    )
    .with(dir_rules),
    case("dash F", &["-aiF", "SRC/", "DST"]).with(rsync_filter_files),
    case("dash FF", &["-aiFF", "SRC/", "DST"]).with(rsync_filter_files),
    case("cvsignore files", &["-aiC", "SRC/", "DST"]).with(cvsignore_files),
    on_old(
        "dir merge with delete",
        &["-ai", "--delete", "-f", ": .rules", "SRC/", "DST"],
    )
    .with(dir_rules_both),
    on_old("dash F with delete", &["-aiF", "--delete", "SRC/", "DST"])
        .with(rsync_filter_files_both),
    case("bad filter rule", &["-ai", "-f", "? bad", "SRC/", "DST"]),
    case(
        "missing exclude file",
        &["-ai", "--exclude-from=BASE/none", "SRC/", "DST"],
    ),
];

impl Case {
    const fn with(self, setup: fn(&Path)) -> Case {
        Case {
            setup: Some(setup),
            ..self
        }
    }
}

fn rules_file(base: &Path) {
    write(
        base,
        "rules.txt",
        b"# a comment\n; another\n\n*.o\n+ keep.log\nbuild/\n- /z\n",
        T0,
    );
}

fn merge_file(base: &Path) {
    std::fs::write(
        base.join("merge.rules"),
        "+ keep.log\n- *.log\n- src/deep/\n",
    )
    .unwrap();
}

fn dir_rules(base: &Path) {
    let src = base.join("src");
    write(&src, ".rules", b"- *.o\n- /z\n", T0);
    write(&src, "src/.rules", b"+ lib.o\n- /deep/er/\n", T0);
    write(&src, "logs/.rules", b"!\n- today.log\n", T0);
    write(&src, ".words", b"*.log  *.md\tcore", T0);
    for d in ["", "src", "logs"] {
        set_mtime(&src.join(d), T0 - 1000);
    }
}

fn dir_rules_both(base: &Path) {
    dir_rules(base);
    let dst = base.join("dst");
    write(&dst, ".rules", b"- *.o\n- /z\n", T0);
    write(&dst, "src/.rules", b"+ lib.o\n- /deep/er/\n", T0);
    set_mtime(&dst.join("src"), T0 - 5);
    set_mtime(&dst, T0 - 5);
}

fn rsync_filter_files(base: &Path) {
    let src = base.join("src");
    write(&src, ".rsync-filter", b"- *.o\n", T0);
    write(&src, "docs/.rsync-filter", b"- build/\n", T0);
    for d in ["", "docs"] {
        set_mtime(&src.join(d), T0 - 1000);
    }
}

fn rsync_filter_files_both(base: &Path) {
    rsync_filter_files(base);
    write(&base.join("dst"), ".rsync-filter", b"- *.o\n", T0);
    set_mtime(&base.join("dst"), T0 - 5);
}

fn cvsignore_files(base: &Path) {
    let src = base.join("src");
    write(&src, ".cvsignore", b"*.md big.dat\n", T0);
    write(&src, "src/.cvsignore", b"lib.c\n", T0);
    for d in ["", "src"] {
        set_mtime(&src.join(d), T0 - 1000);
    }
}

fn run_all(cases: &[Case]) {
    let mut failures = Vec::new();
    for c in cases {
        if let Err(e) = std::panic::catch_unwind(|| check(c)) {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(format!("--- {}\n{msg}", c.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from rsync:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn options_match_rsync() {
    run_all(OPTIONS);
}

#[test]
fn more_options_match_rsync() {
    run_all(OPTIONS_2);
}

#[test]
fn filter_rules_match_rsync() {
    assert!(FILTERS.len() >= 30);
    run_all(FILTERS);
}

#[test]
fn intersync_rsync_is_the_explicit_form() {
    let c = case("explicit", &["-a", "SRC/", "DST"]);
    let (theirs, ours) = (Twin::new(&c), Twin::new(&c));
    let (rc_r, _, _) = theirs.run(tool("rsync"), c.args);
    let (rc_i, _, err) = ours.run(intersync(), &["rsync", "-a", "SRC/", "DST"]);
    assert_eq!((rc_r, rc_i), (0, 0), "{}", String::from_utf8_lossy(&err));
    assert_eq!(
        describe(&theirs.base.join("dst"), true),
        describe(&ours.base.join("dst"), true)
    );
}

#[test]
fn refused_options_exit_4_by_name() {
    for opt in [
        "--copy-dest=/tmp",
        "-R",
        "--link-dest=/tmp",
        "--backup",
        "-X",
        "--info=flist2",
    ] {
        let twin = Twin::new(&case("refused", &[]));
        let (rc, _, err) = twin.run(intersync(), &["-a", opt, "SRC/", "DST"]);
        let err = String::from_utf8_lossy(&err);
        assert_eq!(rc, 4, "{opt}: {err}");
        assert!(err.contains("not supported"), "{opt}: {err}");
        assert!(!twin.base.join("dst").exists(), "{opt} copied something");
    }
}

/// An export on a real server as the source: the same tree as rsync makes
/// from the folder, with rsync's exit code (and, for a fresh copy, the
/// same itemize lines). Its journal has no FIFOs, folder or symlink
/// times: the source has no FIFO here and those times are not compared.
#[test]
fn pulls_from_a_server_match_rsync() {
    let cases: &[(&[&str], bool)] = &[
        (&["-a"], false),
        (&["-ai"], false),
        (&["-ri"], false),
        (&["-rlpi"], false),
        (&["-ai", "--exclude=*.o", "--exclude=build/"], false),
        (
            &["-ai", "--include=*/", "--include=*.c", "--exclude=*"],
            false,
        ),
        (&["-ai", "--stats"], false),
        (&["-a"], true),
        (&["-a", "--delete"], true),
        (&["-a", "--delete", "--exclude=*.o"], true),
        (&["-ac"], true),
        (&["-a", "--size-only"], true),
        (&["-rlp", "--delete"], true),
    ];
    let mut failures = Vec::new();
    for &(args, old) in cases {
        let c = Case {
            old,
            ..case("through a server", &[])
        };
        let (theirs, ours) = (Twin::new(&c), Twin::new(&c));
        for t in [&theirs, &ours] {
            std::fs::remove_file(t.base.join("src/fifo")).unwrap();
            set_mtime(&t.base.join("src"), T0 - 1000);
            if old {
                std::fs::remove_file(t.base.join("dst/fifo")).unwrap();
            }
        }
        let server = Server::start(&ours.base.join("src"), &[]);
        let mut rsync_args: Vec<&str> = args.to_vec();
        rsync_args.extend(["--exclude=/.intersync/", "SRC/", "DST"]);
        let (rc_r, out_r, err_r) = theirs.run(tool("rsync"), &rsync_args);
        let mut our_args: Vec<&str> = args.to_vec();
        our_args.extend([server.url.as_str(), "DST"]);
        let (rc_i, out_i, err_i) = ours.run(intersync(), &our_args);
        let context = format!(
            "{args:?} old={old}\nrsync exit {rc_r}:\n{}{}\nintersync exit {rc_i}:\n{}{}",
            String::from_utf8_lossy(&out_r),
            String::from_utf8_lossy(&err_r),
            String::from_utf8_lossy(&out_i),
            String::from_utf8_lossy(&err_i)
        );
        let times = if args.iter().any(|a| a.starts_with("-a")) {
            Times::Files
        } else {
            Times::None
        };
        let want = describe_with(&theirs.base.join("dst"), times);
        let got = describe_with(&ours.base.join("dst"), times);
        if rc_r != rc_i {
            failures.push(format!("exit codes differ: {context}"));
        } else if want != got {
            failures.push(format!(
                "trees differ:\n{}{context}",
                tree_diff(&want, &got)
            ));
        } else if !old
            && args.iter().any(|a| a.contains('i'))
            && comparable(&out_r) != comparable(&out_i)
        {
            failures.push(format!("output differs: {context}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
}

/// A pull from an export moves a changed file by delta: rsync's statistics
/// show the matched data, and the bytes received are a small part of it.
#[test]
fn pulls_from_a_server_move_deltas() {
    let twin = Twin::new(&case("delta", &[]));
    std::fs::remove_file(twin.base.join("src/fifo")).unwrap();
    let server = Server::start(&twin.base.join("src"), &[]);
    let (rc, _, err) = twin.run(intersync(), &["-a", &server.url, "DST"]);
    assert_eq!(rc, 0, "{}", String::from_utf8_lossy(&err));
    // One byte changes in the middle of the 300 KB file.
    let big = twin.base.join("src/big.dat");
    let mut bytes = std::fs::read(&big).unwrap();
    bytes[150_000] ^= 0x55;
    std::fs::write(&big, &bytes).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (rc, out, err) = twin.run(intersync(), &["-a", "--stats", &server.url, "DST"]);
        assert_eq!(rc, 0, "{}", String::from_utf8_lossy(&err));
        if std::fs::read(twin.base.join("dst/big.dat")).unwrap() == bytes {
            let out = String::from_utf8_lossy(&out);
            let figure = |name: &str| -> u64 {
                out.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().trim_end_matches(" bytes").replace(',', ""))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("no {name} in {out}"))
            };
            assert!(figure("Matched data:") > 250_000, "{out}");
            assert!(figure("Literal data:") < 20_000, "{out}");
            assert!(figure("Total bytes received:") < 40_000, "{out}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server never journaled the change"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

/// An export on a real server as the destination (a push): the export's
/// folder ends as rsync leaves a local destination, with rsync's exit
/// code. Folder and symlink times are not journaled, so not compared.
#[test]
fn pushes_to_a_server_match_rsync() {
    let cases: &[(&[&str], bool)] = &[
        (&["-a"], false),
        (&["-rlp"], false),
        (&["-a", "--exclude=*.o", "--exclude=build/"], false),
        (&["-a"], true),
        (&["-a", "--delete"], true),
        (&["-a", "--delete", "--exclude=*.o"], true),
        (&["-ac"], true),
        (&["-a", "--size-only"], true),
        (&["-a", "--ignore-existing"], true),
    ];
    let mut failures = Vec::new();
    for &(args, old) in cases {
        let c = Case {
            old,
            ..case("push", &[])
        };
        let (theirs, ours) = (Twin::new(&c), Twin::new(&c));
        for t in [&theirs, &ours] {
            std::fs::remove_file(t.base.join("src/fifo")).unwrap();
            set_mtime(&t.base.join("src"), T0 - 1000);
            if old {
                std::fs::remove_file(t.base.join("dst/fifo")).unwrap();
            } else {
                std::fs::create_dir(t.base.join("dst")).unwrap();
            }
        }
        let server = Server::start(&ours.base.join("dst"), &["--allow-anonymous-writes"]);
        let mut rsync_args: Vec<&str> = args.to_vec();
        rsync_args.extend(["SRC/", "DST/"]);
        let (rc_r, out_r, err_r) = theirs.run(tool("rsync"), &rsync_args);
        let mut our_args: Vec<&str> = args.to_vec();
        our_args.extend(["SRC/", server.url.as_str()]);
        let (rc_i, out_i, err_i) = ours.run(intersync(), &our_args);
        let context = format!(
            "{args:?} old={old}\nrsync exit {rc_r}:\n{}{}\nintersync exit {rc_i}:\n{}{}",
            String::from_utf8_lossy(&out_r),
            String::from_utf8_lossy(&err_r),
            String::from_utf8_lossy(&out_i),
            String::from_utf8_lossy(&err_i)
        );
        let times = if args.iter().any(|a| a.starts_with("-a")) {
            Times::Files
        } else {
            Times::None
        };
        let want = describe_with(&theirs.base.join("dst"), times);
        let mut got = describe_with(&ours.base.join("dst"), times);
        got.retain(|k, _| k != ".intersync" && !k.starts_with(".intersync/"));
        // The export's root folder is the server's; rsync set its mode.
        got.remove(".");
        let mut want = want;
        want.remove(".");
        // Hard links in an old copy are the copy's, not the source's.
        let strip = |m: &mut BTreeMap<String, String>| {
            for v in m.values_mut() {
                if let Some(i) = v.find(" linked-with") {
                    let end = v[i + 1..].find(" mode").map_or(v.len(), |j| i + 1 + j);
                    v.replace_range(i..end, "");
                }
            }
        };
        strip(&mut want);
        strip(&mut got);
        if rc_r != rc_i {
            failures.push(format!("exit codes differ: {context}"));
        } else if want != got {
            failures.push(format!(
                "trees differ:\n{}{context}",
                tree_diff(&want, &got)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
}

/// A push of a changed file sends a delta against the server's signature of
/// its version: rsync's statistics show the matched data.
#[test]
fn pushes_to_a_server_move_deltas() {
    let twin = Twin::new(&case("push delta", &[]));
    std::fs::remove_file(twin.base.join("src/fifo")).unwrap();
    std::fs::create_dir(twin.base.join("dst")).unwrap();
    let server = Server::start(&twin.base.join("dst"), &["--allow-anonymous-writes"]);
    let (rc, _, err) = twin.run(intersync(), &["-a", "SRC/", &server.url]);
    assert_eq!(rc, 0, "{}", String::from_utf8_lossy(&err));
    let big = twin.base.join("src/big.dat");
    let mut bytes = std::fs::read(&big).unwrap();
    bytes[150_000] ^= 0x55;
    std::fs::write(&big, &bytes).unwrap();
    let (rc, out, err) = twin.run(intersync(), &["-a", "--stats", "SRC/", &server.url]);
    assert_eq!(rc, 0, "{}", String::from_utf8_lossy(&err));
    assert_eq!(std::fs::read(twin.base.join("dst/big.dat")).unwrap(), bytes);
    let out = String::from_utf8_lossy(&out);
    let figure = |name: &str| -> u64 {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().trim_end_matches(" bytes").replace(',', ""))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {out}"))
    };
    assert!(figure("Matched data:") > 250_000, "{out}");
    assert!(figure("Literal data:") < 20_000, "{out}");
    assert!(figure("Total bytes sent:") < 40_000, "{out}");
}

/// A folder of the source that cannot be read (as an ordinary user) is an
/// I/O error: rsync then deletes nothing, unless --ignore-errors. Both run
/// as `nobody`, since root reads every folder.
#[test]
fn unreadable_source_folders_stop_deletions() {
    for extra in [&[][..], &["--ignore-errors"][..]] {
        let c = on_old("unreadable", &[]);
        let (theirs, ours) = (Twin::new(&c), Twin::new(&c));
        for t in [&theirs, &ours] {
            let status = Command::new("chown")
                .args(["-R", "65534:65534"])
                .arg(&t.base)
                .status()
                .unwrap();
            assert!(status.success());
            std::fs::set_permissions(
                t.base.join("src/src/deep"),
                std::fs::Permissions::from_mode(0o000),
            )
            .unwrap();
        }
        let as_nobody = |program: &Path| {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(program);
            c
        };
        let rsync = intersync_bench::harness::program("rsync").unwrap_or_else(|e| panic!("{e}"));
        let rsync_path = PathBuf::from(rsync.get_program());
        let mut args = vec!["-ai", "--delete"];
        args.extend(extra);
        args.extend(["SRC/", "DST"]);
        let (rc_r, out_r, err_r) = theirs.run(as_nobody(&rsync_path), &args);
        let (rc_i, out_i, err_i) =
            ours.run(as_nobody(Path::new(env!("CARGO_BIN_EXE_intersync"))), &args);
        let context = format!(
            "{args:?}\nrsync exit {rc_r}:\n{}{}\nintersync exit {rc_i}:\n{}{}",
            String::from_utf8_lossy(&out_r),
            String::from_utf8_lossy(&err_r),
            String::from_utf8_lossy(&out_i),
            String::from_utf8_lossy(&err_i)
        );
        assert_eq!(rc_r, 23, "{context}");
        assert_eq!(rc_r, rc_i, "{context}");
        let want = describe(&theirs.base.join("dst"), true);
        let got = describe(&ours.base.join("dst"), true);
        assert_eq!(want, got, "{context}");
        assert_eq!(comparable(&out_r), comparable(&out_i), "{context}");
    }
}
