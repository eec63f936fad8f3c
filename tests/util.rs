//! The harness: run the built `intersync` and external tools, make test data.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The `intersync` binary cargo built for these tests.
pub fn intersync() -> Command {
    Command::new(env!("CARGO_BIN_EXE_intersync"))
}

/// An external tool that a test depends on. A missing tool fails the test
/// loudly: a test that cannot run is not a passing test.
pub fn tool(name: &str) -> Command {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{name}` is not installed; `.ci/run` installs every tool the tests need"
    );
    Command::new(name)
}

/// Runs a command, returning its output whatever the exit status.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"))
}

/// Runs a command and fails the test unless it succeeds.
#[track_caller]
pub fn ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0; len];
    ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut out);
    out
}

/// A temporary folder with helpers to write and read files in it.
pub struct Dir {
    dir: tempfile::TempDir,
}

impl Dir {
    pub fn new() -> Dir {
        Dir {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, bytes).expect("write test file");
        path
    }

    pub fn read(&self, name: &str) -> Vec<u8> {
        read(&self.path(name))
    }
}

pub fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}
