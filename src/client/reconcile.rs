//! What a pull does, decided before anything is done: a pure function of
//! three trees (the base, the server's tree as of the last pull; the
//! server's tree now; the disk's, a scan against the base) and the
//! working copy's placeholders, unit-tested here, carried out by
//! the pull (`client/pull.rs`).
//!
//! The rules:
//! - What only the server changed comes here; what only this side changed
//!   is left for the push. A change of attributes alone (a touch, a chmod)
//!   here does not make a conflict: the server's change wins over them.
//! - Both sides changed a path to different things: the server's version
//!   keeps the name and the local one is moved aside as
//!   `NAME.conflict-<node>-<UTC time>` (pushed later). Deleted on the
//!   server but changed here: the local version stays. Deleted here but
//!   changed on the server: the server's version is restored. Two folders
//!   are merged, never a conflict.
//! - Removals go deepest first. A file the server removed that holds a
//!   version wanted elsewhere is not removed but kept as a source to move
//!   (a rename costs no data).
//! - Folders, then files and symlinks, in tree order. With `lazy`, a file
//!   with nothing here to build it from becomes a placeholder.

use std::collections::{BTreeSet, HashMap, HashSet};

use intersync_protocol::{PathError, TreePath, Version};

use super::working_copy::Conflict;
use crate::tree::{Entry, EntryKind, TreeState};

/// What the plan is made from.
pub struct Inputs<'a> {
    /// The server's tree as of the last pull.
    pub base: &'a TreeState,
    /// The server's tree now.
    pub server: &'a TreeState,
    /// The disk's tree: a scan against the base, placeholders taken as present.
    pub local: &'a TreeState,
    /// The files of the base not fetched yet, when the plan is made.
    pub placeholders: &'a BTreeSet<TreePath>,
    /// Leave files with nothing here to build on as placeholders.
    pub lazy: bool,
    /// What a local version moved aside is named after: the node id and
    /// the UTC time (`YYYYMMDDTHHMMSSZ`).
    pub node: u64,
    pub stamp: &'a str,
}

/// What a pull does, in the order it does it.
#[derive(Debug, Default)]
pub struct Plan {
    /// What changed on the server since the base.
    pub changed_on_server: HashSet<TreePath>,
    /// Local versions moved out of the way of the server's, in order:
    /// (from, to).
    pub asides: Vec<(TreePath, TreePath)>,
    /// Every conflict, as the report says it.
    pub conflicts: Vec<Conflict>,
    /// Paths (with all below them) whose local state stays as it is.
    pub keep_local: Vec<TreePath>,
    /// What goes, deepest first.
    pub removals: Vec<Removal>,
    /// Files the server removed whose content may be wanted elsewhere, by
    /// version: moved there when it is, removed after the installs if not.
    pub moves: HashMap<Version, Vec<TreePath>>,
    /// What comes, in tree order.
    pub installs: Vec<Install>,
    /// Paths whose attributes may need the server's (content unchanged),
    /// with the server's entry, in tree order.
    pub attributes: Vec<(TreePath, Entry)>,
    /// The disk's tree once the asides and removals are done.
    pub local: TreeState,
}

impl Plan {
    /// Whether carrying it out leaves the disk and the base as they are.
    pub fn does_nothing(&self) -> bool {
        self.changed_on_server.is_empty()
            && self.asides.is_empty()
            && self.conflicts.is_empty()
            && self.removals.is_empty()
            && self.moves.is_empty()
            && self.installs.is_empty()
            && self.attributes.is_empty()
    }
}

/// One removal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// A placeholder the server no longer has as a file: nothing on disk.
    Placeholder(TreePath),
    /// A folder (empty once what goes from it went; else tried again last).
    Dir(TreePath),
    File(TreePath),
}

/// One install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Install {
    Dir { path: TreePath, mode: u32 },
    Symlink { path: TreePath, target: Vec<u8> },
    File(FileInstall),
}

/// A file to bring in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInstall {
    pub path: TreePath,
    pub entry: Entry,
    pub version: Version,
    pub size: u64,
    /// The disk has nothing at this path (but maybe a placeholder).
    pub local_missing: bool,
    /// A local file with the same content, to copy from.
    pub copy_from: Option<TreePath>,
    /// Lazy, and nothing here to build it from when the plan was made:
    /// left as a placeholder, if that still holds when its turn comes.
    pub leave_lazy: bool,
}

/// Whether two entries describe the same thing for syncing: kind and
/// content, permissions, and the mtime of files (folder mtimes and
/// ownership are not synced).
pub fn same(a: Option<&Entry>, b: Option<&Entry>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a.kind == b.kind
                && (matches!(a.kind, EntryKind::Symlink { .. }) || a.mode == b.mode)
                && (!matches!(a.kind, EntryKind::File { .. }) || a.mtime_ns == b.mtime_ns)
        }
        _ => false,
    }
}

/// The same kind and content.
pub fn same_content(a: Option<&Entry>, b: Option<&Entry>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.kind == b.kind,
        _ => false,
    }
}

/// The plan of a pull (see the module documentation).
pub fn plan(inputs: &Inputs<'_>) -> Result<Plan, PathError> {
    let Inputs { base, server, .. } = *inputs;
    let paths = union(&[base, server, inputs.local]);
    let mut plan = Plan {
        changed_on_server: paths
            .iter()
            .filter(|p| !same(base.get(p), server.get(p)))
            .map(|p| (*p).clone())
            .collect(),
        local: inputs.local.clone(),
        ..Plan::default()
    };
    // Changed here in content or kind, as the scan found it.
    let locally_changed: HashSet<TreePath> = paths
        .iter()
        .filter(|p| !same_content(base.get(p), inputs.local.get(p)))
        .map(|p| (*p).clone())
        .collect();
    plan.resolve_conflicts(inputs, &paths, &locally_changed)?;
    plan.plan_removals(inputs, &paths, &locally_changed);
    plan.plan_installs(inputs);
    Ok(plan)
}

/// Every path of `trees`, once each, in order: a merge of their sorted
/// keys, so that nothing is cloned or sorted again.
fn union<'a>(trees: &[&'a TreeState]) -> Vec<&'a TreePath> {
    let mut iters: Vec<_> = trees
        .iter()
        .map(|t| t.iter().map(|(p, _)| p).peekable())
        .collect();
    let mut out = Vec::with_capacity(trees.iter().map(|t| t.len()).max().unwrap_or(0));
    loop {
        let Some(least) = iters.iter_mut().filter_map(|i| i.peek().copied()).min() else {
            return out;
        };
        for i in &mut iters {
            if i.peek() == Some(&least) {
                i.next();
            }
        }
        out.push(least);
    }
}

impl Plan {
    /// Whether `p` keeps its local state (it or a folder above it does).
    pub fn kept(&self, p: &TreePath) -> bool {
        self.keep_local.iter().any(|k| p.starts_with(k))
    }

    pub fn server_changed(&self, p: &TreePath) -> bool {
        self.changed_on_server.contains(p)
    }

    /// Conflicts: both sides changed, to different things.
    fn resolve_conflicts(
        &mut self,
        inputs: &Inputs<'_>,
        paths: &[&TreePath],
        locally_changed: &HashSet<TreePath>,
    ) -> Result<(), PathError> {
        let Inputs { base, server, .. } = *inputs;
        for &p in paths {
            if !self.server_changed(p)
                || !locally_changed.contains(p)
                || same_content(self.local.get(p), server.get(p))
                || self.kept(p)
            {
                continue;
            }
            match (self.local.get(p).cloned(), server.get(p)) {
                (Some(l), Some(s)) if l.is_dir() && s.is_dir() => {}
                (Some(_), Some(_)) => {
                    let aside = conflict_name(p, inputs.node, inputs.stamp)?;
                    move_in_state(&mut self.local, p, &aside);
                    self.asides.push((p.clone(), aside.clone()));
                    self.conflicts.push(Conflict {
                        path: p.clone(),
                        kept_as: Some(aside),
                        what: "changed on both sides: the server's version keeps the name".into(),
                    });
                }
                (Some(_), None) => {
                    self.keep_local.push(p.clone());
                    if base.get(p).is_some() {
                        self.conflicts.push(Conflict {
                            path: p.clone(),
                            kept_as: None,
                            what:
                                "deleted on the server but changed here: the local version is kept"
                                    .into(),
                        });
                    }
                }
                (None, Some(_)) => self.conflicts.push(Conflict {
                    path: p.clone(),
                    kept_as: None,
                    what:
                        "deleted here but changed on the server: the server's version is restored"
                            .into(),
                }),
                // Gone on both sides is the same content, skipped above.
                (None, None) => {}
            }
        }
        Ok(())
    }

    /// Kind changes and removals of what the server no longer has, deepest first.
    fn plan_removals(
        &mut self,
        inputs: &Inputs<'_>,
        paths: &[&TreePath],
        locally_changed: &HashSet<TreePath>,
    ) {
        for &p in paths.iter().rev() {
            if self.kept(p) || !self.server_changed(p) {
                continue;
            }
            let (Some(l), s) = (self.local.get(p).cloned(), inputs.server.get(p)) else {
                continue;
            };
            if inputs.placeholders.contains(p) {
                // Never fetched: nothing on disk to move or remove.
                if s.is_none_or(|s| s.version().is_none()) {
                    self.removals.push(Removal::Placeholder(p.clone()));
                    self.local.remove(p);
                }
                continue;
            }
            let kind_changes = s.is_some_and(|s| {
                std::mem::discriminant(&s.kind) != std::mem::discriminant(&l.kind)
            });
            if (s.is_some() && !kind_changes) || (locally_changed.contains(p) && !l.is_dir()) {
                continue;
            }
            match &l.kind {
                // Content that may be wanted elsewhere (a rename): moved, later.
                EntryKind::File { version, .. } if !kind_changes => {
                    self.moves.entry(*version).or_default().push(p.clone());
                    continue;
                }
                EntryKind::Dir => self.removals.push(Removal::Dir(p.clone())),
                _ => self.removals.push(Removal::File(p.clone())),
            }
            self.local.remove(p);
        }
    }

    /// Folders, then files and symlinks, in tree order: what the server
    /// changed, and placeholders to fill.
    fn plan_installs(&mut self, inputs: &Inputs<'_>) {
        // The first local path of each version, as `TreeState::find_version` finds it.
        let mut by_version: HashMap<Version, &TreePath> = HashMap::new();
        for (p, e) in self.local.iter() {
            if let Some(v) = e.version() {
                by_version.entry(v).or_insert(p);
            }
        }
        let mut installs = Vec::new();
        for (p, s) in inputs.server.iter() {
            // A placeholder is fetched now unless this pull is lazy.
            let fill = !inputs.lazy && inputs.placeholders.contains(p);
            let unchanged =
                self.kept(p) || !self.server_changed(p) || same_content(self.local.get(p), Some(s));
            if unchanged && !fill {
                continue;
            }
            installs.push(match &s.kind {
                EntryKind::Dir => Install::Dir {
                    path: p.clone(),
                    mode: s.mode,
                },
                EntryKind::Symlink { target } => Install::Symlink {
                    path: p.clone(),
                    target: target.clone(),
                },
                EntryKind::File { version, size } => {
                    let local_missing = self.local.get(p).is_none();
                    let copy_from = by_version.get(version).map(|q| (*q).clone());
                    let copy_here = self.moves.contains_key(version)
                        || copy_from
                            .as_ref()
                            .is_some_and(|q| !inputs.placeholders.contains(q));
                    let nothing_here = inputs.placeholders.contains(p) || local_missing;
                    Install::File(FileInstall {
                        path: p.clone(),
                        entry: s.clone(),
                        version: *version,
                        size: *size,
                        local_missing,
                        copy_from: copy_from.filter(|q| q != p),
                        leave_lazy: inputs.lazy && nothing_here && !copy_here,
                    })
                }
            });
        }
        self.installs = installs;
        self.attributes = inputs
            .server
            .iter()
            .filter(|(p, _)| !self.kept(p) && self.server_changed(p))
            .map(|(p, e)| (p.clone(), e.clone()))
            .collect();
    }
}

/// `NAME.conflict-<node>-<stamp>` beside `path`.
pub fn conflict_name(path: &TreePath, node: u64, stamp: &str) -> Result<TreePath, PathError> {
    // Keep the whole name within NAME_MAX, cutting the original if need be.
    let stem: String = path
        .file_name()
        .chars()
        .scan(0, |len, c| {
            *len += c.len_utf8();
            (*len <= 200).then_some(c)
        })
        .collect();
    let name = format!("{stem}.conflict-{node:016x}-{stamp}");
    match path.parent() {
        Some(parent) => parent.join(&name),
        None => TreePath::new(&name),
    }
}

/// Moves `from` and everything below it to `to` in `state`.
fn move_in_state(state: &mut TreeState, from: &TreePath, to: &TreePath) {
    let moved: Vec<(TreePath, Entry)> = std::iter::once(from)
        .filter_map(|p| state.get(p).map(|e| (p.clone(), e.clone())))
        .chain(state.descendants(from).map(|(p, e)| (p.clone(), e.clone())))
        .collect();
    for (p, e) in moved {
        state.remove(&p);
        let new = if &p == from {
            to.clone()
        } else {
            to.join(&p.as_str()[from.as_str().len() + 1..])
                .expect("valid")
        };
        state.insert(new, e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> TreePath {
        TreePath::new(s).unwrap()
    }

    fn file(content: &[u8]) -> Entry {
        Entry {
            kind: EntryKind::File {
                version: Version::of(content),
                size: content.len() as u64,
            },
            mode: 0o644,
            mtime_ns: 1_000,
            uid: 0,
            gid: 0,
        }
    }

    fn dir() -> Entry {
        Entry {
            kind: EntryKind::Dir,
            mode: 0o755,
            mtime_ns: 0,
            uid: 0,
            gid: 0,
        }
    }

    fn tree(entries: &[(&str, Entry)]) -> TreeState {
        let mut t = TreeState::default();
        for (path, e) in entries {
            t.insert(p(path), e.clone());
        }
        t
    }

    fn plan_of(base: &TreeState, server: &TreeState, local: &TreeState) -> Plan {
        plan_with(base, server, local, &BTreeSet::new(), false)
    }

    fn plan_with(
        base: &TreeState,
        server: &TreeState,
        local: &TreeState,
        placeholders: &BTreeSet<TreePath>,
        lazy: bool,
    ) -> Plan {
        plan(&Inputs {
            base,
            server,
            local,
            placeholders,
            lazy,
            node: 0xab,
            stamp: "20261202T120000Z",
        })
        .unwrap()
    }

    fn installed(plan: &Plan) -> Vec<String> {
        plan.installs
            .iter()
            .map(|i| match i {
                Install::Dir { path, .. } | Install::Symlink { path, .. } => path.to_string(),
                Install::File(f) => f.path.to_string(),
            })
            .collect()
    }

    #[test]
    fn only_the_server_changed_comes_here() {
        let base = tree(&[("a", file(b"a")), ("b", file(b"b"))]);
        let server = tree(&[("a", file(b"A")), ("b", file(b"b")), ("c", file(b"c"))]);
        let plan = plan_of(&base, &server, &base);
        assert_eq!(installed(&plan), ["a", "c"]);
        assert!(plan.conflicts.is_empty() && plan.removals.is_empty());
    }

    #[test]
    fn only_this_side_changed_is_left_for_the_push() {
        let base = tree(&[("a", file(b"a")), ("b", file(b"b"))]);
        let local = tree(&[("a", file(b"edited")), ("new", file(b"n"))]);
        let plan = plan_of(&base, &base, &local);
        assert!(plan.installs.is_empty(), "{:?}", plan.installs);
        assert!(plan.removals.is_empty() && plan.moves.is_empty());
        assert!(plan.conflicts.is_empty());
    }

    #[test]
    fn both_changed_the_server_keeps_the_name_the_local_version_goes_aside() {
        let base = tree(&[("d", dir()), ("d/f", file(b"old"))]);
        let server = tree(&[("d", dir()), ("d/f", file(b"theirs"))]);
        let local = tree(&[("d", dir()), ("d/f", file(b"mine"))]);
        let plan = plan_of(&base, &server, &local);
        let aside = p("d/f.conflict-00000000000000ab-20261202T120000Z");
        assert_eq!(plan.asides, vec![(p("d/f"), aside.clone())]);
        assert_eq!(plan.conflicts.len(), 1);
        assert_eq!(plan.conflicts[0].kept_as, Some(aside.clone()));
        assert_eq!(plan.local.get(&aside), Some(&file(b"mine")));
        assert_eq!(installed(&plan), ["d/f"]);
        // Two folders are merged, never a conflict.
        assert!(!plan.conflicts.iter().any(|c| c.path == p("d")));
    }

    #[test]
    fn the_same_change_on_both_sides_is_no_conflict() {
        let base = tree(&[("f", file(b"old"))]);
        let both = tree(&[("f", file(b"new"))]);
        let plan = plan_of(&base, &both, &both);
        assert!(plan.conflicts.is_empty() && plan.installs.is_empty());
    }

    #[test]
    fn a_local_touch_or_chmod_is_no_conflict_the_server_wins() {
        let base = tree(&[("f", file(b"old"))]);
        let server = tree(&[("f", file(b"new"))]);
        let mut touched = file(b"old");
        touched.mode = 0o600;
        touched.mtime_ns = 5;
        let plan = plan_of(&base, &server, &tree(&[("f", touched)]));
        assert!(plan.conflicts.is_empty());
        assert_eq!(installed(&plan), ["f"]);
    }

    #[test]
    fn deleted_on_the_server_but_changed_here_stays() {
        let base = tree(&[("f", file(b"old"))]);
        let local = tree(&[("f", file(b"mine"))]);
        let plan = plan_of(&base, &TreeState::default(), &local);
        assert_eq!(plan.keep_local, vec![p("f")]);
        assert!(plan.removals.is_empty() && plan.moves.is_empty());
        assert_eq!(plan.conflicts.len(), 1);
        assert!(plan.conflicts[0].what.starts_with("deleted on the server"));
        // New on both sides, with another content: not a conflict the
        // report speaks of, and the local file is kept.
        let plan = plan_of(
            &TreeState::default(),
            &tree(&[("g", file(b"s"))]),
            &tree(&[("g", file(b"l"))]),
        );
        assert_eq!(plan.conflicts.len(), 1, "{:?}", plan.conflicts);
        assert!(plan.conflicts[0].kept_as.is_some());
    }

    #[test]
    fn deleted_here_but_changed_on_the_server_is_restored() {
        let base = tree(&[("f", file(b"old"))]);
        let server = tree(&[("f", file(b"new"))]);
        let plan = plan_of(&base, &server, &TreeState::default());
        assert_eq!(plan.conflicts.len(), 1);
        assert!(plan.conflicts[0].what.starts_with("deleted here"));
        assert_eq!(installed(&plan), ["f"]);
    }

    #[test]
    fn a_folder_moved_aside_takes_what_it_holds() {
        // A file here became a folder, and the server edited the file.
        let base = tree(&[("f", file(b"f"))]);
        let server = tree(&[("f", file(b"edited"))]);
        let local = tree(&[("f", dir()), ("f/mine", file(b"m"))]);
        let plan = plan_of(&base, &server, &local);
        let aside = p("f.conflict-00000000000000ab-20261202T120000Z");
        assert_eq!(plan.asides, vec![(p("f"), aside.clone())]);
        assert!(plan.local.get(&aside.join("mine").unwrap()).is_some());
        assert!(plan.local.get(&p("f/mine")).is_none());
        assert_eq!(installed(&plan), ["f"]);
        assert!(plan.removals.is_empty(), "{:?}", plan.removals);
    }

    #[test]
    fn removals_go_deepest_first_and_renamed_content_is_moved_not_removed() {
        let base = tree(&[
            ("d", dir()),
            ("d/e", dir()),
            ("d/e/f", file(b"f")),
            ("d/g", file(b"moved")),
        ]);
        let server = tree(&[("h", file(b"moved"))]);
        let plan = plan_of(&base, &server, &base);
        // Files wait as sources until the installs are done; their folders
        // go first, and again once they are empty.
        assert_eq!(
            plan.removals,
            vec![Removal::Dir(p("d/e")), Removal::Dir(p("d"))]
        );
        assert_eq!(
            plan.moves.get(&Version::of(b"moved")),
            Some(&vec![p("d/g")])
        );
        assert_eq!(plan.moves.get(&Version::of(b"f")), Some(&vec![p("d/e/f")]));
        assert!(plan.local.get(&p("d/e")).is_none());
        assert!(plan.local.get(&p("d/g")).is_some(), "kept until moved");
        assert_eq!(installed(&plan), ["h"]);
    }

    #[test]
    fn a_kind_change_removes_what_is_in_the_way() {
        let base = tree(&[("x", file(b"x"))]);
        let server = tree(&[("x", dir()), ("x/y", file(b"y"))]);
        let plan = plan_of(&base, &server, &base);
        assert_eq!(plan.removals, vec![Removal::File(p("x"))]);
        assert!(plan.moves.is_empty());
        assert_eq!(installed(&plan), ["x", "x/y"]);
    }

    #[test]
    fn content_here_elsewhere_is_copied() {
        let base = tree(&[("a", file(b"same"))]);
        let server = tree(&[("a", file(b"same")), ("b", file(b"same"))]);
        let plan = plan_of(&base, &server, &base);
        let Install::File(f) = &plan.installs[0] else {
            panic!("{:?}", plan.installs)
        };
        assert_eq!(f.copy_from, Some(p("a")));
    }

    #[test]
    fn lazy_pulls_leave_what_has_nothing_to_build_on_as_placeholders() {
        let base = tree(&[("old", file(b"old")), ("ph", file(b"ph"))]);
        let server = tree(&[
            ("copy", file(b"old")),
            ("new", file(b"new")),
            ("old", file(b"old2")),
            ("ph", file(b"ph2")),
        ]);
        let placeholders: BTreeSet<TreePath> = [p("ph")].into();
        let plan = plan_with(&base, &server, &base, &placeholders, true);
        let lazy: Vec<(String, bool)> = plan
            .installs
            .iter()
            .map(|i| match i {
                Install::File(f) => (f.path.to_string(), f.leave_lazy),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            lazy,
            [
                ("copy".into(), false),
                ("new".into(), true),
                ("old".into(), false),
                ("ph".into(), true)
            ]
        );
        // A sync that is not lazy fills placeholders, changed or not.
        let plan = plan_with(&base, &base, &base, &placeholders, false);
        assert_eq!(installed(&plan), ["ph"]);
        // A placeholder the server deleted goes without touching the disk.
        let plan = plan_with(
            &base,
            &tree(&[("old", file(b"old"))]),
            &base,
            &placeholders,
            true,
        );
        assert_eq!(plan.removals, vec![Removal::Placeholder(p("ph"))]);
    }

    #[test]
    fn conflict_names_stay_within_name_max() {
        let long = "x".repeat(250);
        let aside = conflict_name(&p(&format!("d/{long}")), 1, "20261202T120000Z").unwrap();
        assert!(
            aside.file_name().len() <= 255,
            "{}",
            aside.file_name().len()
        );
        assert!(aside.as_str().starts_with("d/xxx"));
    }
}
