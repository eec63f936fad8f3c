//! The first rung: the content is here already. A file the server removed
//! that has it is moved (a rename on the server costs no data); another
//! file that has it is copied, checked against the version as it is read.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::Path;

use intersync_protocol::{TreePath, Version};

use super::{Wanted, set_attrs};
use crate::client::{LocalError, SyncError};
use crate::delta::MappedFile;
use crate::install::PendingFile;

/// Moves or copies the content to `dest`, making its folder if need be;
/// how the report says it, or `None` when nothing here has it (or the
/// copy changed meanwhile). Nothing is touched when nothing here has it:
/// on a clone that is every file, and a folder made for each would cost
/// two system calls a file.
pub fn fetch(
    root: &Path,
    moves: &mut HashMap<Version, Vec<TreePath>>,
    copy_from: Option<&TreePath>,
    dest: &Path,
    want: &Wanted<'_>,
) -> Result<Option<String>, SyncError> {
    let has_source = moves.get(&want.version).is_some_and(|m| !m.is_empty());
    if !has_source && copy_from.is_none() {
        return Ok(None);
    }
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(|e| SyncError::local(want.path, e))?;
    }
    if let Some(src) = moves.get_mut(&want.version).and_then(Vec::pop) {
        fs::rename(src.under(root), dest).map_err(|e| SyncError::local(&src, e))?;
        set_attrs(dest, want.entry).map_err(|e| SyncError::local(want.path, e))?;
        return Ok(Some(format!("renamed from {src}")));
    }
    if let Some(src) = copy_from
        && copy_verified(&src.under(root), dest, want).is_ok()
    {
        return Ok(Some(format!("copied from {src}")));
    }
    Ok(None)
}

fn copy_verified(src: &Path, dest: &Path, want: &Wanted<'_>) -> Result<(), SyncError> {
    let data = MappedFile::open(src).map_err(|e| SyncError::local(src, e))?;
    if Version::of(&data) != want.version {
        return Err(SyncError::local(src, LocalError::ChangedWhileCopied));
    }
    let mut out = PendingFile::create(dest).map_err(|e| SyncError::local(dest, e))?;
    out.write_all(&data)
        .map_err(|e| SyncError::local(dest, e))?;
    out.install().map_err(|e| SyncError::local(dest, e))?;
    set_attrs(dest, want.entry).map_err(|e| SyncError::local(dest, e))
}
