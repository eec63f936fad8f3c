//! The benchmark scenarios of docs/ARCHITECTURE.md, generated deterministically from
//! fixed seeds, so every benchmark, test and demo sees the same bytes.
//!
//! The single-file scenarios S1 to S5 each take a length, and the trees
//! (S0, S6 and S7 of small random files, S8 of source-like text, S9 of a
//! million tiny files) a count of files, so CI can run small versions of
//! the full-size originals.

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Full size of the single-file scenarios.
pub const FULL_LEN: usize = 100 << 20;

/// A single-file scenario: the old version is on the client, the new one on the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileScenario {
    /// Random data, 100 scattered in-place edits of 1 B to 4 KiB.
    S1,
    /// Random data, 1 MiB of new data inserted in the middle.
    S2,
    /// Random data, 1 MiB appended.
    S3,
    /// Random data replaced by unrelated random data.
    S4,
    /// Compressible text, about 50 scattered small text edits.
    S5,
}

/// The two versions of a scenario's file.
pub struct FilePair {
    pub old: Vec<u8>,
    pub new: Vec<u8>,
    /// Bytes of new content the change introduced: the floor for any delta.
    pub changed_bytes: u64,
}

impl FileScenario {
    pub const ALL: [FileScenario; 5] = [
        FileScenario::S1,
        FileScenario::S2,
        FileScenario::S3,
        FileScenario::S4,
        FileScenario::S5,
    ];

    pub fn id(self) -> &'static str {
        match self {
            FileScenario::S1 => "S1",
            FileScenario::S2 => "S2",
            FileScenario::S3 => "S3",
            FileScenario::S4 => "S4",
            FileScenario::S5 => "S5",
        }
    }

    /// Generates the scenario with an old file of `len` bytes. Edit counts
    /// and inserted sizes shrink with `len` (relative to 100 MiB), but never
    /// below one edit of at least one byte.
    pub fn generate(self, len: usize) -> FilePair {
        let mut rng = ChaCha8Rng::seed_from_u64(0x1a7e_5e9c ^ self as u64);
        let scale = len as f64 / FULL_LEN as f64;
        let scaled = |n: usize| ((n as f64 * scale).round() as usize).max(1);
        match self {
            FileScenario::S1 => {
                let old = random_bytes(&mut rng, len);
                let mut new = old.clone();
                let mut changed = 0;
                for _ in 0..scaled(100) {
                    let edit = rng.random_range(1..=4096usize).min(len);
                    let at = rng.random_range(0..=len - edit);
                    rng.fill_bytes(&mut new[at..at + edit]);
                    changed += edit as u64;
                }
                FilePair {
                    old,
                    new,
                    changed_bytes: changed,
                }
            }
            FileScenario::S2 | FileScenario::S3 => {
                let old = random_bytes(&mut rng, len);
                let inserted = random_bytes(&mut rng, scaled(1 << 20));
                let at = if self == FileScenario::S2 {
                    len / 2
                } else {
                    len
                };
                let new = [&old[..at], &inserted, &old[at..]].concat();
                FilePair {
                    old,
                    new,
                    changed_bytes: inserted.len() as u64,
                }
            }
            FileScenario::S4 => FilePair {
                old: random_bytes(&mut rng, len),
                new: random_bytes(&mut rng, len),
                changed_bytes: len as u64,
            },
            FileScenario::S5 => {
                let old = text(&mut rng, len);
                let mut new = old.clone();
                let mut changed = 0;
                for _ in 0..scaled(50) {
                    let at = rng.random_range(0..new.len());
                    // Replace a few words' worth of text with other words.
                    let remove = rng.random_range(0..40usize).min(new.len() - at);
                    let insert_len = rng.random_range(1..40);
                    let insert = text(&mut rng, insert_len);
                    changed += insert.len() as u64;
                    new.splice(at..at + remove, insert);
                }
                FilePair {
                    old,
                    new,
                    changed_bytes: changed,
                }
            }
        }
    }
}

/// Files in the full S0 tree.
pub const FULL_TREE_FILES: usize = 10_000;

/// S0: writes `files` files of 1 to 20 KiB of random data under `root`, a
/// hundred to a folder; returns their total size.
pub fn write_tree(root: &std::path::Path, files: usize) -> std::io::Result<u64> {
    let mut rng = ChaCha8Rng::seed_from_u64(0x50);
    let mut total = 0;
    for i in 0..files {
        let dir = root.join(format!("d{:03}", i / 100));
        if i % 100 == 0 {
            std::fs::create_dir_all(&dir)?;
        }
        let len = rng.random_range(1024..=20 * 1024);
        std::fs::write(
            dir.join(format!("f{i:05}.bin")),
            random_bytes(&mut rng, len),
        )?;
        total += len as u64;
    }
    Ok(total)
}

/// What an S6 change did.
#[derive(Debug, Default, Clone, Copy)]
pub struct TreeChange {
    pub edited: usize,
    pub added: usize,
    pub deleted: usize,
    /// Bytes of new content: the floor for any sync.
    pub changed_bytes: u64,
    /// Sizes of the edited and added files: what fetching them whole costs.
    pub full_fetch_bytes: u64,
}

/// S6: on a tree written by [`write_tree`] with `files` files, edits 1% of
/// the files in place (1 to 256 bytes each), adds 0.5% and deletes 0.5%.
pub fn change_tree(root: &std::path::Path, files: usize) -> std::io::Result<TreeChange> {
    let mut rng = ChaCha8Rng::seed_from_u64(0x56);
    let mut change = TreeChange::default();
    let path = |i: usize| {
        root.join(format!("d{:03}", i / 100))
            .join(format!("f{i:05}.bin"))
    };
    let step = |n: usize| (files / n.max(1)).max(1);
    let edits = (files / 100).max(1);
    let removals = (files / 200).max(1);
    for k in 0..edits {
        let p = path((k * step(edits) + 3) % files);
        let mut data = std::fs::read(&p)?;
        let len = rng.random_range(1..=256usize).min(data.len());
        let at = rng.random_range(0..=data.len() - len);
        rng.fill_bytes(&mut data[at..at + len]);
        std::fs::write(&p, &data)?;
        change.edited += 1;
        change.changed_bytes += len as u64;
        change.full_fetch_bytes += data.len() as u64;
    }
    for k in 0..removals {
        let victim = path((k * step(removals) + 51) % files);
        if std::fs::remove_file(&victim).is_ok() {
            change.deleted += 1;
        }
        let len = rng.random_range(1024..=20 * 1024);
        let dir = root.join(format!("d{:03}", k % files.div_ceil(100)));
        std::fs::write(
            dir.join(format!("new{k:05}.bin")),
            random_bytes(&mut rng, len),
        )?;
        change.added += 1;
        change.changed_bytes += len as u64;
        change.full_fetch_bytes += len as u64;
    }
    Ok(change)
}

/// Files in the full S8 tree.
pub const FULL_SOURCE_FILES: usize = 5_000;

/// A source file of S8: the header every file shares, then text.
fn source_file(rng: &mut impl RngCore, i: usize) -> Vec<u8> {
    let mut out = format!(
        "// Copyright the InterSync authors. Licensed under the Apache License, Version 2.0.\n\
         // This file is part of a generated source tree; module {i}.\n\n"
    )
    .into_bytes();
    let len = rng.random_range(200..=24 * 1024);
    out.extend_from_slice(&text(rng, len));
    out
}

fn source_path(root: &std::path::Path, i: usize) -> std::path::PathBuf {
    root.join(format!("src/m{:02}/p{:03}", i / 400, i / 20))
        .join(format!("f{i:05}.rs"))
}

/// S8: writes a source-like tree of `files` text files under `root`
/// (fixed seed, compressible about fourfold): a header every file shares,
/// then 200 bytes to 24 KiB of text, twenty files to a folder, folders two
/// deep; returns their total size.
pub fn write_source_tree(root: &std::path::Path, files: usize) -> std::io::Result<u64> {
    let mut rng = ChaCha8Rng::seed_from_u64(0x58);
    let mut total = 0;
    for i in 0..files {
        let path = source_path(root, i);
        if i % 20 == 0 {
            std::fs::create_dir_all(path.parent().expect("in a folder"))?;
        }
        let bytes = source_file(&mut rng, i);
        total += bytes.len() as u64;
        std::fs::write(path, bytes)?;
    }
    Ok(total)
}

/// S8's release upgrade of a tree written by [`write_source_tree`]: 5% of
/// the files edited (a few lines rewritten, some inserted), 2% added, 1%
/// removed and 0.5% renamed into another folder.
pub fn upgrade_source_tree(root: &std::path::Path, files: usize) -> std::io::Result<TreeChange> {
    let mut rng = ChaCha8Rng::seed_from_u64(0x59);
    let mut change = TreeChange::default();
    let count = |per_mille: usize| (files * per_mille / 1000).max(1);
    let pick = |k: usize, n: usize, offset: usize| (k * (files / n).max(1) + offset) % files;
    for k in 0..count(50) {
        let p = source_path(root, pick(k, count(50), 7));
        let mut data = std::fs::read(&p)?;
        for _ in 0..rng.random_range(1..=4) {
            let at = rng.random_range(0..=data.len());
            let line_len = rng.random_range(20..=400);
            let line = text(&mut rng, line_len);
            if rng.random_bool(0.5) {
                let end = (at + line.len()).min(data.len());
                data.splice(at..end, line.iter().copied());
            } else {
                data.splice(at..at, line.iter().copied());
            }
            change.changed_bytes += line.len() as u64;
        }
        std::fs::write(&p, &data)?;
        change.edited += 1;
        change.full_fetch_bytes += data.len() as u64;
    }
    for k in 0..count(10) {
        if std::fs::remove_file(source_path(root, pick(k, count(10), 13))).is_ok() {
            change.deleted += 1;
        }
    }
    for k in 0..count(5) {
        let from = source_path(root, pick(k, count(5), 17));
        let to = root.join(format!("src/moved/r{k:04}.rs"));
        std::fs::create_dir_all(to.parent().expect("in a folder"))?;
        if std::fs::rename(&from, &to).is_ok() {
            change.full_fetch_bytes += to.metadata()?.len();
        }
    }
    for k in 0..count(20) {
        let i = files + k;
        let path = source_path(root, i);
        std::fs::create_dir_all(path.parent().expect("in a folder"))?;
        let bytes = source_file(&mut rng, i);
        change.added += 1;
        change.changed_bytes += bytes.len() as u64;
        change.full_fetch_bytes += bytes.len() as u64;
        std::fs::write(path, bytes)?;
    }
    Ok(change)
}

/// Files in the full S9 tree.
pub const FULL_MILLION_FILES: usize = 1_000_000;

fn million_path(root: &std::path::Path, i: usize) -> std::path::PathBuf {
    root.join(format!("d{:04}", i / 100))
        .join(format!("f{i:07}"))
}

/// S9: writes `files` files of 100 B to 4 KiB of random data under `root`,
/// a hundred to a folder (10,000 folders at full size); returns their
/// total size.
pub fn write_million_tree(root: &std::path::Path, files: usize) -> std::io::Result<u64> {
    let mut rng = ChaCha8Rng::seed_from_u64(0x59_00);
    let mut total = 0;
    for i in 0..files {
        let path = million_path(root, i);
        if i % 100 == 0 {
            std::fs::create_dir_all(path.parent().expect("in a folder"))?;
        }
        let len = rng.random_range(100..=4096);
        std::fs::write(path, random_bytes(&mut rng, len))?;
        total += len as u64;
    }
    Ok(total)
}

/// S9's edits: `edits` files spread over a tree written by
/// [`write_million_tree`], each with 1 to 64 bytes rewritten in place.
pub fn edit_million_tree(
    root: &std::path::Path,
    files: usize,
    edits: usize,
) -> std::io::Result<TreeChange> {
    let mut rng = ChaCha8Rng::seed_from_u64(0x59_01);
    let mut change = TreeChange::default();
    for k in 0..edits {
        let p = million_path(root, (k * (files / edits.max(1)).max(1) + 11) % files);
        let mut data = std::fs::read(&p)?;
        let len = rng.random_range(1..=64usize).min(data.len());
        let at = rng.random_range(0..=data.len() - len);
        rng.fill_bytes(&mut data[at..at + len]);
        std::fs::write(&p, &data)?;
        change.edited += 1;
        change.changed_bytes += len as u64;
        change.full_fetch_bytes += data.len() as u64;
    }
    Ok(change)
}

pub fn random_bytes(rng: &mut impl RngCore, len: usize) -> Vec<u8> {
    let mut out = vec![0; len];
    rng.fill_bytes(&mut out);
    out
}

/// English-like text from a small vocabulary: compresses about as well as prose.
pub fn text(rng: &mut impl RngCore, len: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "the",
        "of",
        "and",
        "to",
        "in",
        "is",
        "that",
        "file",
        "block",
        "delta",
        "server",
        "client",
        "sync",
        "tree",
        "change",
        "version",
        "journal",
        "record",
        "network",
        "laptop",
        "offline",
        "conflict",
        "signature",
        "rolling",
        "checksum",
        "transfer",
        "byte",
        "folder",
        "mirror",
        "cache",
        "request",
        "range",
        "window",
        "match",
        "literal",
        "copy",
        "patch",
        "rename",
        "delete",
        "create",
        "with",
        "from",
        "over",
        "under",
        "every",
        "never",
        "always",
    ];
    let mut out = Vec::with_capacity(len + 16);
    let mut words_in_line = 0;
    while out.len() < len {
        let word = WORDS[rng.random_range(0..WORDS.len())];
        out.extend_from_slice(word.as_bytes());
        words_in_line += 1;
        if words_in_line == 12 {
            out.push(b'\n');
            words_in_line = 0;
        } else {
            out.push(b' ');
        }
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_shaped() {
        for s in FileScenario::ALL {
            let a = s.generate(1 << 20);
            let b = s.generate(1 << 20);
            assert_eq!(a.old, b.old, "{s:?}");
            assert_eq!(a.new, b.new, "{s:?}");
            assert_eq!(a.old.len(), 1 << 20);
            assert_ne!(a.old, a.new, "{s:?}");
            assert!(a.changed_bytes > 0);
        }
        let s3 = FileScenario::S3.generate(1 << 20);
        assert_eq!(&s3.new[..1 << 20], &s3.old[..]);
        assert_eq!(s3.new.len() as u64, (1 << 20) + s3.changed_bytes);
    }
}
