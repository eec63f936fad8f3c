use std::collections::HashMap;

use super::*;

/// Merge files held in memory.
#[derive(Default)]
struct Files(HashMap<PathBuf, Vec<u8>>);

impl Files {
    fn with(mut self, path: &str, text: &str) -> Files {
        self.0.insert(PathBuf::from(path), text.as_bytes().to_vec());
        self
    }
}

impl RuleSource for Files {
    fn read(&self, path: &Path) -> std::io::Result<Option<Vec<u8>>> {
        Ok(self.0.get(path).cloned())
    }
}

fn filters(rules: &[&str]) -> Filters {
    let mut f = Filters::new(false);
    for r in rules {
        f.add_filter(r, &Files::default()).unwrap();
    }
    f.enter_root(Path::new("/src"), &Files::default()).unwrap();
    f
}

/// "x" excluded, "i" included, "." no rule matched.
fn verdict(f: &Filters, name: &str, is_dir: bool) -> char {
    match f.check(name.as_bytes(), is_dir, Side::Sender, false) {
        None => '.',
        Some(r) if r.is_include() => 'i',
        Some(_) => 'x',
    }
}

#[test]
fn name_patterns_match_the_last_element() {
    let f = filters(&["- *.o", "- core"]);
    assert_eq!(verdict(&f, "a.o", false), 'x');
    assert_eq!(verdict(&f, "src/deep/a.o", false), 'x');
    assert_eq!(verdict(&f, "a.c", false), '.');
    assert_eq!(verdict(&f, "x/core", true), 'x');
    assert_eq!(verdict(&f, "x/core2", false), '.');
}

#[test]
fn first_match_wins() {
    let f = filters(&["+ keep.o", "- *.o"]);
    assert_eq!(verdict(&f, "keep.o", false), 'i');
    assert_eq!(verdict(&f, "other.o", false), 'x');
}

#[test]
fn anchoring_and_slashes() {
    let f = filters(&["- /top", "- a/b", "- /x/**/y"]);
    assert_eq!(verdict(&f, "top", false), 'x');
    assert_eq!(verdict(&f, "sub/top", false), '.');
    assert_eq!(verdict(&f, "a/b", false), 'x');
    assert_eq!(verdict(&f, "q/a/b", false), 'x');
    assert_eq!(verdict(&f, "qa/b", false), '.');
    assert_eq!(verdict(&f, "x/1/y", false), 'x');
    assert_eq!(verdict(&f, "x/1/2/y", false), 'x');
    assert_eq!(verdict(&f, "x/y", false), '.');
    assert_eq!(verdict(&f, "z/x/1/y", false), '.');
}

#[test]
fn trailing_slash_means_directories_only() {
    let f = filters(&["- build/"]);
    assert_eq!(verdict(&f, "build", true), 'x');
    assert_eq!(verdict(&f, "build", false), '.');
    let f = filters(&["-! */"]);
    assert_eq!(verdict(&f, "file", false), 'x');
    assert_eq!(verdict(&f, "dir", true), '.');
}

#[test]
fn triple_star_matches_a_directory_and_its_contents() {
    let f = filters(&["+ /keep/***", "- *"]);
    assert_eq!(verdict(&f, "keep", true), 'i');
    assert_eq!(verdict(&f, "keep/a/b", false), 'i');
    assert_eq!(verdict(&f, "keep", false), 'x');
    assert_eq!(verdict(&f, "other", true), 'x');
}

#[test]
fn double_star_crosses_folders_unanchored() {
    let f = filters(&["- logs/**.gz"]);
    assert_eq!(verdict(&f, "logs/a/b.gz", false), 'x');
    assert_eq!(verdict(&f, "var/logs/b.gz", false), 'x');
    assert_eq!(verdict(&f, "var/logsx/b.gz", false), '.');
}

#[test]
fn long_names_modifiers_and_underscore() {
    let f = filters(&[
        "exclude,s *.tmp",
        "hide secret",
        "protect keep",
        "-_spaced name",
    ]);
    assert_eq!(verdict(&f, "a.tmp", false), 'x');
    assert_eq!(verdict(&f, "secret", false), 'x');
    // Receiver-only rules do not hide.
    assert_eq!(verdict(&f, "keep", false), '.');
    assert!(f.excluded(b"keep", false, Side::Receiver));
    assert!(!f.excluded(b"secret", false, Side::Receiver));
    assert_eq!(verdict(&f, "spaced name", false), 'x');
}

#[test]
fn clear_empties_the_list() {
    let f = filters(&["- *.o", "!", "- *.a"]);
    assert_eq!(verdict(&f, "x.o", false), '.');
    assert_eq!(verdict(&f, "x.a", false), 'x');
    let f = filters(&["- *.o", "clear"]);
    assert_eq!(verdict(&f, "x.o", false), '.');
}

#[test]
fn old_style_patterns_take_plus_and_minus_prefixes() {
    let mut f = Filters::new(false);
    let none = Files::default();
    f.add_pattern("+ *.keep", false, &none).unwrap();
    f.add_pattern("*.o", false, &none).unwrap();
    f.add_pattern("- x", true, &none).unwrap();
    f.enter_root(Path::new("/src"), &none).unwrap();
    assert_eq!(verdict(&f, "a.keep", false), 'i');
    assert_eq!(verdict(&f, "a.o", false), 'x');
    assert_eq!(verdict(&f, "x", false), 'x');
}

#[test]
fn exclude_from_skips_comments_and_blank_lines() {
    let files = Files::default().with("/ex", "# comment\n; also\n\n*.o\r\n+ keep\n");
    let mut f = Filters::new(false);
    f.add_pattern_file(Path::new("/ex"), false, false, &files)
        .unwrap();
    f.enter_root(Path::new("/src"), &files).unwrap();
    assert_eq!(verdict(&f, "a.o", false), 'x');
    assert_eq!(verdict(&f, "keep", false), 'i');
    assert_eq!(verdict(&f, "# comment", false), '.');
    let missing = f.add_pattern_file(Path::new("/nope"), false, false, &files);
    assert!(matches!(missing, Err(FilterError::Open { .. })));
}

#[test]
fn merge_files_are_read_in_place() {
    let files = Files::default().with("/rules", "- *.a\n+ b.o\n");
    let mut f = Filters::new(false);
    f.add_filter("- x", &files).unwrap();
    f.add_filter(". /rules", &files).unwrap();
    f.add_filter("- *.o", &files).unwrap();
    f.enter_root(Path::new("/src"), &files).unwrap();
    assert_eq!(verdict(&f, "q.a", false), 'x');
    assert_eq!(verdict(&f, "b.o", false), 'i');
    assert_eq!(verdict(&f, "c.o", false), 'x');
    let files = Files::default().with("/ex", "keep\n");
    let mut f = Filters::new(false);
    f.add_filter("merge,+ /ex", &files).unwrap();
    f.enter_root(Path::new("/src"), &files).unwrap();
    assert_eq!(verdict(&f, "keep", false), 'i');
}

#[test]
fn per_directory_rules_are_inherited_and_come_first() {
    let files = Files::default()
        .with("/src/.rules", "- *.log\n- /top-only\n")
        .with("/src/sub/.rules", "+ keep.log\n");
    let mut f = Filters::new(false);
    f.add_filter(": .rules", &files).unwrap();
    f.add_filter("- *.tmp", &files).unwrap();
    f.enter_root(Path::new("/src"), &files).unwrap();
    assert_eq!(verdict(&f, "a.log", false), 'x');
    assert_eq!(verdict(&f, "top-only", false), 'x');
    f.enter_dir(b"sub", Path::new("/src/sub"), &files).unwrap();
    assert_eq!(verdict(&f, "sub/keep.log", false), 'i');
    assert_eq!(verdict(&f, "sub/b.log", false), 'x');
    // Anchored at the root merge file's folder, not the subfolder's.
    assert_eq!(verdict(&f, "sub/top-only", false), '.');
    assert_eq!(verdict(&f, "sub/x.tmp", false), 'x');
    f.leave_dir();
    assert_eq!(verdict(&f, "keep.log", false), 'x');
}

#[test]
fn per_directory_anchors_are_the_files_folder() {
    let files = Files::default().with("/src/sub/.rules", "- /here\n");
    let mut f = Filters::new(false);
    f.add_filter("dir-merge .rules", &files).unwrap();
    f.enter_root(Path::new("/src"), &files).unwrap();
    f.enter_dir(b"sub", Path::new("/src/sub"), &files).unwrap();
    assert_eq!(verdict(&f, "sub/here", false), 'x');
    f.enter_dir(b"sub/deeper", Path::new("/src/sub/deeper"), &files)
        .unwrap();
    assert_eq!(verdict(&f, "sub/deeper/here", false), '.');
}

#[test]
fn no_inherit_and_clear_in_per_directory_files() {
    let files = Files::default()
        .with("/src/.n", "- *.x\n")
        .with("/src/.c", "- *.y\n")
        .with("/src/sub/.c", "!\n- *.z\n");
    let mut f = Filters::new(false);
    f.add_filter(":n .n", &files).unwrap();
    f.add_filter(": .c", &files).unwrap();
    f.enter_root(Path::new("/src"), &files).unwrap();
    assert_eq!(verdict(&f, "a.x", false), 'x');
    assert_eq!(verdict(&f, "a.y", false), 'x');
    f.enter_dir(b"sub", Path::new("/src/sub"), &files).unwrap();
    assert_eq!(verdict(&f, "sub/a.x", false), '.');
    assert_eq!(verdict(&f, "sub/a.y", false), '.');
    assert_eq!(verdict(&f, "sub/a.z", false), 'x');
}

#[test]
fn exclude_self_and_cvs_mode_files() {
    let files = Files::default().with("/src/.cvsignore", "*.gen  tmp*\n");
    let mut f = Filters::new(false);
    f.add_filter("dir-merge,e .rsync-filter", &files).unwrap();
    f.add_filter(":C", &files).unwrap();
    f.enter_root(Path::new("/src"), &files).unwrap();
    assert_eq!(verdict(&f, ".rsync-filter", false), 'x');
    assert_eq!(verdict(&f, "x.gen", false), 'x');
    assert_eq!(verdict(&f, "tmp1", false), 'x');
    assert_eq!(verdict(&f, "gen", false), '.');
}

#[test]
fn cvs_exclude_list_is_perishable() {
    let mut f = Filters::new(false);
    f.add_filter("-C", &Files::default()).unwrap();
    f.enter_root(Path::new("/src"), &Files::default()).unwrap();
    for name in ["x.o", "core", "CVS", "a~", ".#lock", "lib.so"] {
        assert_eq!(verdict(&f, name, false), 'x', "{name}");
    }
    assert_eq!(verdict(&f, ".git", true), 'x');
    assert_eq!(verdict(&f, ".git", false), '.');
    assert_eq!(verdict(&f, "main.c", false), '.');
    assert!(!f.protected_in_deleted_dir(b"d/x.o", false));
    assert!(f.excluded(b"d/x.o", false, Side::Receiver));
}

#[test]
fn delete_excluded_makes_plain_rules_the_senders() {
    let mut f = Filters::new(true);
    f.add_filter("- *.o", &Files::default()).unwrap();
    f.add_filter("P keep", &Files::default()).unwrap();
    f.enter_root(Path::new("/src"), &Files::default()).unwrap();
    assert!(f.excluded(b"a.o", false, Side::Sender));
    assert!(!f.excluded(b"a.o", false, Side::Receiver));
    assert!(f.excluded(b"keep", false, Side::Receiver));
}

#[test]
fn absolute_path_modifier() {
    let f = filters(&["-/ /src/sub/x"]);
    assert_eq!(verdict(&f, "sub/x", false), 'x');
    assert_eq!(verdict(&f, "x", false), '.');
}

#[test]
fn malformed_rules_are_errors_not_panics() {
    let none = Files::default();
    let cases: &[(&str, &str)] = &[
        ("? foo", "UnknownRule"),
        ("-q foo", "InvalidModifier"),
        ("-e foo", "InvalidModifier"),
        (".! f", "InvalidModifier"),
        ("Hs foo", "InvalidModifier"),
        ("-", "MissingPattern"),
        ("- ", "MissingPattern"),
        ("! x", "ClearWithPattern"),
        (". /missing", "Open"),
    ];
    for (rule, want) in cases {
        let err = Filters::new(false).add_filter(rule, &none).unwrap_err();
        assert!(
            format!("{err:?}").starts_with(want),
            "{rule:?} gave {err:?}"
        );
    }
    // Every prefix of every rule, and some noise: an error or a rule.
    for text in ["exclude,s /a/**/b", "dir-merge,-ne .x", "+! [[:alpha:]]*/"] {
        for end in 0..=text.len() {
            let _ = Filters::new(false).add_filter(&text[..end], &none);
        }
    }
}

#[test]
fn merge_loops_stop_at_the_depth_limit() {
    let files = Files::default().with("/loop", ". /loop\n");
    let err = Filters::new(false)
        .add_filter(". /loop", &files)
        .unwrap_err();
    assert!(matches!(err, FilterError::TooDeep { .. }), "{err:?}");
}

#[test]
fn word_split_rules_as_rsyncd_conf_gives_them() {
    let none = Files::default();
    let mut f = Filters::new(false);
    f.add_words("- *.tmp + keep.log - *.log", None, &none)
        .unwrap();
    f.add_words("secret/  *.bak", Some(false), &none).unwrap();
    f.enter_root(Path::new("/m"), &none).unwrap();
    assert_eq!(verdict(&f, "a.tmp", false), 'x');
    assert_eq!(verdict(&f, "keep.log", false), 'i');
    assert_eq!(verdict(&f, "other.log", false), 'x');
    assert_eq!(verdict(&f, "secret", true), 'x');
    assert_eq!(verdict(&f, "x.bak", false), 'x');
    assert_eq!(verdict(&f, "plain", false), '.');
}
