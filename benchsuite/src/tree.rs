//! Copying trees for the benchmark: every tool starts each run from its own
//! fresh copy, with modes and modification times kept (rsync's quick check
//! and zsync's seeds depend on them), InterSync's state folder left out.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use intersync_protocol::path::STATE_DIR;

/// Makes `dst` hold exactly what `src` holds: files, folders and symbolic
/// links, with modes and modification times; anything else in `dst` is
/// removed, except InterSync's state folder at its top.
pub fn mirror(src: &Path, dst: &Path) -> io::Result<()> {
    fs::create_dir_all(dst)?;
    mirror_dir(src, dst, true)
}

fn mirror_dir(src: &Path, dst: &Path, top: bool) -> io::Result<()> {
    let wanted: std::collections::HashSet<_> = fs::read_dir(src)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()?;
    for entry in fs::read_dir(dst)? {
        let entry = entry?;
        let name = entry.file_name();
        if (top && name == STATE_DIR) || wanted.contains(&name) {
            continue;
        }
        remove(&entry.path())?;
    }
    for name in wanted {
        if top && name == STATE_DIR {
            continue;
        }
        let (from, to) = (src.join(&name), dst.join(&name));
        let meta = fs::symlink_metadata(&from)?;
        let existing = fs::symlink_metadata(&to).ok();
        if meta.is_dir() {
            if existing.as_ref().is_some_and(|m| !m.is_dir()) {
                remove(&to)?;
            }
            fs::create_dir_all(&to)?;
            mirror_dir(&from, &to, false)?;
            set_mode(&to, &meta)?;
        } else if meta.file_type().is_symlink() {
            if existing.is_some() {
                remove(&to)?;
            }
            std::os::unix::fs::symlink(fs::read_link(&from)?, &to)?;
        } else {
            let same = existing.as_ref().is_some_and(|m| {
                m.is_file()
                    && m.len() == meta.len()
                    && m.modified().ok() == meta.modified().ok()
                    && fs::read(&to).ok() == fs::read(&from).ok()
            });
            if !same {
                if existing.is_some() {
                    remove(&to)?;
                }
                fs::copy(&from, &to)?;
                fs::File::options()
                    .write(true)
                    .open(&to)?
                    .set_modified(meta.modified()?)?;
            }
            set_mode(&to, &meta)?;
        }
    }
    Ok(())
}

/// Gives `to` the mode of `like`, only if it differs: a chmod moves the
/// ctime even to the same mode, and a server's restart would then see every
/// file as touched and hash it again (what a real unchanged tree never costs).
fn set_mode(to: &Path, like: &fs::Metadata) -> io::Result<()> {
    if fs::symlink_metadata(to)?.permissions() != like.permissions() {
        fs::set_permissions(to, like.permissions())?;
    }
    Ok(())
}

fn remove(path: &Path) -> io::Result<()> {
    if fs::symlink_metadata(path)?.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
}

/// Every regular file below `root` (InterSync's state folder left out), as
/// paths relative to `root`, sorted.
pub fn files(root: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    walk(root, Path::new(""), &mut |path, kind| {
        if kind.is_file() {
            out.push(path.to_owned());
        }
        Ok(())
    })?;
    out.sort();
    Ok(out)
}

/// Every file's path and BLAKE3 hash (its InterSync version), and every
/// folder and symlink, below `root` (InterSync's state folder left out),
/// sorted: what must be equal for a tool's result to be right. Read here,
/// not by the engine's scan, so the check does not rest on the code it
/// checks; and unlike a scan it counts leftover temporary files as extra.
pub fn contents(root: &Path) -> io::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    walk(root, Path::new(""), &mut |path, kind| {
        let shown = path.to_string_lossy().into_owned();
        let what = if kind.is_dir() {
            "folder".into()
        } else if kind.is_symlink() {
            fs::read_link(root.join(path))?
                .to_string_lossy()
                .into_owned()
        } else {
            let mut hasher = blake3::Hasher::new();
            hasher.update_reader(fs::File::open(root.join(path))?)?;
            hasher.finalize().to_hex().to_string()
        };
        out.push((shown, what));
        Ok(())
    })?;
    out.sort();
    Ok(out)
}

/// Visits everything below `root.join(rel)`, a folder before what it
/// holds, with its path relative to `root`; InterSync's state folder at
/// the top is left out.
fn walk(
    root: &Path,
    rel: &Path,
    visit: &mut dyn FnMut(&Path, fs::FileType) -> io::Result<()>,
) -> io::Result<()> {
    for entry in fs::read_dir(root.join(rel))? {
        let entry = entry?;
        let name = entry.file_name();
        if rel.as_os_str().is_empty() && name == STATE_DIR {
            continue;
        }
        let path = rel.join(&name);
        let kind = entry.file_type()?;
        visit(&path, kind)?;
        if kind.is_dir() {
            walk(root, &path, visit)?;
        }
    }
    Ok(())
}
