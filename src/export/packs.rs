//! Packs of a static export (`intersync_protocol::pack`): the current
//! versions of its small files, in path order, in files of about a target
//! size each, so that a first clone from a plain web server is a few GETs.
//!
//! Packs are immutable and named by a hash of their bytes. Each export
//! keeps the packs still worth reading (at least half of their bytes are
//! current versions), removes the others, and packs what no kept pack
//! holds: a small change adds one small pack, and a tree that changed
//! much is packed anew. A file that changed since it was journaled is left
//! out (its version would not check).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{Read, Write};
use std::path::Path;

use intersync_protocol::api::{PackList, PackRef};
use intersync_protocol::pack::{self, MAX_ENTRY_SIZE, PackEntry};
use intersync_protocol::{TreePath, Version};

use super::{ExportError, io_err};
use crate::install::PendingFile;
use crate::tree::{EntryKind, TreeState};

/// zstd's level for packs: written once, read by every clone.
const LEVEL: i32 = 9;

/// Writes the packs of `state`'s small files into `dir` (see the module
/// documentation) and their list (`api::PACK_LIST`); the packs, by name.
/// No packs when `target` is 0.
pub fn write(
    root: &Path,
    dir: &Path,
    state: &TreeState,
    target: u64,
) -> Result<Vec<PackRef>, ExportError> {
    if target == 0 {
        let _ = fs::remove_dir_all(dir);
        return Ok(Vec::new());
    }
    // The current small versions, one path each, in path order.
    let mut current: BTreeMap<&TreePath, (Version, u32)> = BTreeMap::new();
    let mut seen = HashMap::new();
    for (path, entry) in state.iter() {
        if let (Some(version), EntryKind::File { size, .. }) = (entry.version(), &entry.kind)
            && *size < u64::from(MAX_ENTRY_SIZE)
            && seen.insert(pack::prefix(&version), ()).is_none()
        {
            current.insert(path, (version, *size as u32));
        }
    }
    let wanted: HashMap<[u8; 8], u32> = current
        .values()
        .map(|(v, size)| (pack::prefix(v), *size))
        .collect();
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut packed = HashMap::new();
    let mut refs = Vec::new();
    for (name, path) in existing(dir)? {
        match kept(&path, &name, &wanted) {
            Some((pack_ref, entries)) => {
                packed.extend(entries.into_iter().map(|e| (e.prefix, ())));
                refs.push(pack_ref);
            }
            None => {
                let _ = fs::remove_file(&path);
            }
        }
    }
    let mut chunk: Vec<(&TreePath, Version, u32)> = Vec::new();
    let mut bytes = 0u64;
    for (path, (version, size)) in &current {
        if packed.contains_key(&pack::prefix(version)) {
            continue;
        }
        chunk.push((path, *version, *size));
        bytes += u64::from(*size);
        if bytes >= target {
            refs.extend(write_one(root, dir, &std::mem::take(&mut chunk))?);
            bytes = 0;
        }
    }
    // A last pack of a few files is not worth a GET of its own.
    if chunk.len() > 1 {
        refs.extend(write_one(root, dir, &chunk)?);
    }
    refs.sort_by(|a, b| a.name.cmp(&b.name));
    let list = dir.join(LIST);
    let mut out = PendingFile::create(&list).map_err(io_err(&list))?;
    out.write_all(&list_bytes(refs.clone()))
        .map_err(io_err(&list))?;
    out.install().map_err(io_err(&list))?;
    Ok(refs)
}

/// The list of `packs` as it is written and served (`api::PackList`).
pub fn list_bytes(packs: Vec<PackRef>) -> Vec<u8> {
    serde_json::to_vec(&PackList { packs }).expect("a list of packs is JSON")
}

/// The list's name in `dir`.
pub const LIST: &str = "list.json";

/// Bytes of small files in a pack, by default. Measured on S0 from nginx
/// into a tmpfs (best of five): 1 MiB 0.50 s, 2 MiB 0.46 s, 4 MiB 0.49 s,
/// 8 MiB 0.49 s (28 requests), 16 MiB 0.57 s, 32 MiB 0.60 s (fewer packs
/// than connections); 8 MiB for fewer requests at the same speed.
pub const DEFAULT_SIZE: u64 = 8 << 20;

/// The packs in `dir`, by name.
fn existing(dir: &Path) -> Result<Vec<(String, std::path::PathBuf)>, ExportError> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(io_err(dir))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".pack") {
            out.push((name, e.path()));
        } else if name != LIST {
            // A temporary left by a crash.
            let _ = fs::remove_file(e.path());
        }
    }
    Ok(out)
}

/// A pack and its entries, if at least half of its bytes are versions
/// still wanted.
fn kept(
    path: &Path,
    name: &str,
    wanted: &HashMap<[u8; 8], u32>,
) -> Option<(PackRef, Vec<PackEntry>)> {
    let mut file = fs::File::open(path).ok()?;
    let length = file.metadata().ok()?.len();
    let mut head = vec![0u8; pack::index_len(0)];
    file.read_exact(&mut head).ok()?;
    let count = u32::from_be_bytes(head[8..12].try_into().ok()?) as usize;
    let mut index = vec![0u8; pack::index_len(count.min(pack::MAX_ENTRIES as usize))];
    index[..head.len()].copy_from_slice(&head);
    file.read_exact(&mut index[head.len()..]).ok()?;
    let (entries, index_length) = pack::parse_index(&index).ok()?;
    let bytes: u64 = entries.iter().map(|e| u64::from(e.size)).sum();
    let current: u64 = entries
        .iter()
        .filter(|e| wanted.get(&e.prefix) == Some(&e.size))
        .map(|e| u64::from(e.size))
        .sum();
    (current * 2 >= bytes).then(|| {
        let pack_ref = PackRef {
            name: name.to_owned(),
            length,
            index_length: index_length as u64,
            files: entries.len() as u64,
            bytes,
        };
        (pack_ref, entries)
    })
}

/// A pack of `files` (those that still have their version), if any do.
fn write_one(
    root: &Path,
    dir: &Path,
    files: &[(&TreePath, Version, u32)],
) -> Result<Option<PackRef>, ExportError> {
    let mut entries = Vec::with_capacity(files.len());
    let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), LEVEL).map_err(io_err(dir))?;
    let mut bytes = 0u64;
    for (path, version, size) in files {
        let Ok(mut file) = crate::beneath::open_file(root, path) else {
            continue;
        };
        let mut data = Vec::with_capacity(*size as usize);
        if file.read_to_end(&mut data).is_err() || Version::of(&data) != *version {
            continue;
        }
        encoder.write_all(&data).map_err(io_err(dir))?;
        entries.push(PackEntry::of(version, *size));
        bytes += u64::from(*size);
    }
    if entries.is_empty() {
        return Ok(None);
    }
    let contents = encoder.finish().map_err(io_err(dir))?;
    let index = pack::encode_index(&entries);
    let mut hasher = blake3::Hasher::new();
    hasher.update(&index);
    hasher.update(&contents);
    let name = format!("{}.pack", &hasher.finalize().to_hex()[..32]);
    let dest = dir.join(&name);
    let mut out = PendingFile::create(&dest).map_err(io_err(&dest))?;
    out.write_all(&index)
        .and_then(|()| out.write_all(&contents))
        .map_err(io_err(&dest))?;
    out.install().map_err(io_err(&dest))?;
    Ok(Some(PackRef {
        name,
        length: (index.len() + contents.len()) as u64,
        index_length: index.len() as u64,
        files: entries.len() as u64,
        bytes,
    }))
}
