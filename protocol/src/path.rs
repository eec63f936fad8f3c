//! Paths inside a synced tree. Every path that crosses the wire or sits in
//! the KML is a [`TreePath`]: relative, `/`-separated, normalised, and
//! unable to name anything outside the tree or InterSync's own folder.

use std::fmt;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// The folder at the top of an export or working copy that holds
/// InterSync's own state. It is never synced, served or written through the API.
pub const STATE_DIR: &str = ".intersync";

/// Longest path accepted, in bytes (Linux's PATH_MAX).
pub const MAX_PATH_LEN: usize = 4096;
/// Longest path component accepted, in bytes (Linux's NAME_MAX).
pub const MAX_NAME_LEN: usize = 255;

/// Why a path was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PathError {
    #[error("empty path")]
    Empty,
    #[error("path is {len} bytes, longer than {MAX_PATH_LEN}")]
    TooLong { len: usize },
    #[error("path component of {len} bytes, longer than {MAX_NAME_LEN}")]
    NameTooLong { len: usize },
    #[error("absolute path")]
    Absolute,
    #[error("path has an empty component (`//` or a trailing `/`)")]
    EmptyComponent,
    #[error("path has a `.` or `..` component")]
    DotComponent,
    #[error("path contains a NUL byte")]
    Nul,
    #[error("path is not UTF-8")]
    NotUtf8,
    #[error("path is inside InterSync's own folder `{STATE_DIR}`")]
    StateDir,
}

/// A validated path relative to the top of a tree. The top itself is not a `TreePath`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TreePath(String);

impl TreePath {
    /// Checks a path given as text.
    ///
    /// # Security
    /// Refuses anything that could leave the tree (`..`, absolute paths) or
    /// reach InterSync's state folder, and anything not in normal form, so
    /// that two spellings never name one file. Symbolic links are the
    /// filesystem's business: whoever opens a `TreePath` must not follow a
    /// link out of the tree.
    pub fn new(path: &str) -> Result<TreePath, PathError> {
        if path.is_empty() {
            return Err(PathError::Empty);
        }
        if path.len() > MAX_PATH_LEN {
            return Err(PathError::TooLong { len: path.len() });
        }
        if path.starts_with('/') {
            return Err(PathError::Absolute);
        }
        if path.contains('\0') {
            return Err(PathError::Nul);
        }
        for (i, name) in path.split('/').enumerate() {
            match name {
                "" => return Err(PathError::EmptyComponent),
                "." | ".." => return Err(PathError::DotComponent),
                STATE_DIR if i == 0 => return Err(PathError::StateDir),
                _ if name.len() > MAX_NAME_LEN => {
                    return Err(PathError::NameTooLong { len: name.len() });
                }
                _ => {}
            }
        }
        Ok(TreePath(path.to_owned()))
    }

    /// Checks a path given as bytes (as the KML stores it). Paths are UTF-8
    /// on the wire; a file whose name is not UTF-8 cannot be synced.
    pub fn from_bytes(bytes: &[u8]) -> Result<TreePath, PathError> {
        let text = std::str::from_utf8(bytes).map_err(|_| PathError::NotUtf8)?;
        TreePath::new(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path below `root`.
    pub fn under(&self, root: &Path) -> PathBuf {
        root.join(&self.0)
    }

    /// The folder holding this path, or `None` at the top of the tree.
    pub fn parent(&self) -> Option<TreePath> {
        self.0.rfind('/').map(|i| TreePath(self.0[..i].to_owned()))
    }

    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// `self/name`, checked.
    pub fn join(&self, name: &str) -> Result<TreePath, PathError> {
        TreePath::new(&format!("{}/{name}", self.0))
    }

    /// True when `self` is `other` or inside it.
    pub fn starts_with(&self, other: &TreePath) -> bool {
        self.0 == other.0
            || (self.0.starts_with(&other.0) && self.0.as_bytes().get(other.0.len()) == Some(&b'/'))
    }
}

/// The path relative to the tree's root, as a file-system path (for
/// messages; [`TreePath::under`] gives the path on disk).
impl AsRef<Path> for TreePath {
    fn as_ref(&self) -> &Path {
        Path::new(&self.0)
    }
}

impl serde::Serialize for TreePath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for TreePath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<TreePath, D::Error> {
        let text = String::deserialize(d)?;
        TreePath::new(&text).map_err(serde::de::Error::custom)
    }
}

/// Lets ordered maps keyed by `TreePath` be searched by prefix strings.
impl std::borrow::Borrow<str> for TreePath {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TreePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TreePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_normal_paths() {
        for p in [
            "a",
            "a/b",
            "dir/file.txt",
            ".hidden",
            "a/.intersync",
            "..a",
            "a..",
            "é/ü",
        ] {
            assert_eq!(TreePath::new(p).unwrap().as_str(), p);
        }
    }

    #[test]
    fn refuses_escapes_and_odd_spellings() {
        let cases = [
            ("", PathError::Empty),
            ("/etc/passwd", PathError::Absolute),
            ("..", PathError::DotComponent),
            ("a/../../b", PathError::DotComponent),
            ("a/./b", PathError::DotComponent),
            ("a//b", PathError::EmptyComponent),
            ("a/", PathError::EmptyComponent),
            ("a\0b", PathError::Nul),
            (".intersync", PathError::StateDir),
            (".intersync/head", PathError::StateDir),
        ];
        for (p, want) in cases {
            assert_eq!(TreePath::new(p), Err(want), "{p:?}");
        }
        assert!(matches!(
            TreePath::new(&"a/".repeat(3000)),
            Err(PathError::TooLong { .. })
        ));
        assert!(matches!(
            TreePath::new(&"n".repeat(256)),
            Err(PathError::NameTooLong { len: 256 })
        ));
        assert_eq!(TreePath::from_bytes(b"\xff"), Err(PathError::NotUtf8));
    }

    #[test]
    fn relations() {
        let p = TreePath::new("a/b/c").unwrap();
        assert_eq!(p.parent().unwrap().as_str(), "a/b");
        assert_eq!(p.file_name(), "c");
        assert!(p.starts_with(&TreePath::new("a/b").unwrap()));
        assert!(!p.starts_with(&TreePath::new("a/bc").unwrap()));
        assert!(
            !TreePath::new("a/bc")
                .unwrap()
                .starts_with(&TreePath::new("a/b").unwrap())
        );
        assert_eq!(TreePath::new("a").unwrap().parent(), None);
    }
}
