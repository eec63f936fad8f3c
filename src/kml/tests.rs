//! Appends, sealing, checkpoints, and the damage matrix: {truncate, flip a
//! byte, delete bytes} x {header, middle, tail} of the open and of a sealed
//! segment. Damage at the tail of the open segment is a torn append and is
//! repaired; anywhere else the journal refuses to open and says where.

use intersync_protocol::TreePath;

use super::*;

fn p(s: &str) -> TreePath {
    TreePath::new(s).unwrap()
}

fn ops(n: usize) -> Vec<Op> {
    (0..n)
        .map(|i| Op::Mkdir {
            path: p(&format!("dir{i:03}")),
            mode: 0o755,
        })
        .collect()
}

/// A journal of `n` records, sealed every ~400 bytes, appended in small batches.
fn journal(dir: &Path, n: usize) -> TreeState {
    let (mut j, mut state, _) = Journal::open(
        dir,
        JournalOptions {
            seal_bytes: 400,
            checkpoint_every: 1000,
        },
    )
    .unwrap();
    for chunk in ops(n).chunks(3) {
        j.append(NodeId(7), chunk.to_vec(), &mut state).unwrap();
    }
    state
}

fn reopen(dir: &Path) -> Result<(Journal, TreeState, Recovery), JournalError> {
    Journal::open(
        dir,
        JournalOptions {
            seal_bytes: 400,
            checkpoint_every: 1000,
        },
    )
}

#[test]
fn appends_survive_reopening_and_seal() {
    let dir = tempfile::tempdir().unwrap();
    let state = journal(dir.path(), 40);
    let (j, again, recovery) = reopen(dir.path()).unwrap();
    assert_eq!(again, state);
    assert_eq!(j.last_seq(), 40);
    assert!(recovery.truncated.is_none());
    assert!(j.segments().len() > 2, "{:?}", j.segments());
    assert!(
        j.segments()[..j.segments().len() - 1]
            .iter()
            .all(|s| s.sealed)
    );
    for pair in j.segments().windows(2) {
        assert_eq!(pair[0].last_seq + 1, pair[1].first_seq);
    }
}

#[test]
fn refused_ops_append_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, mut state, _) = reopen(dir.path()).unwrap();
    let bad = vec![
        Op::Mkdir {
            path: p("a"),
            mode: 0o755,
        },
        Op::Unlink { path: p("missing") },
    ];
    assert!(matches!(
        j.append(NodeId(1), bad, &mut state),
        Err(JournalError::Replay(_))
    ));
    assert_eq!(state.seq, 0);
    assert_eq!(j.last_seq(), 0);
    let (_, again, _) = reopen(dir.path()).unwrap();
    assert!(again.is_empty());
}

#[test]
fn checkpoint_replaces_history() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, mut state, _) = reopen(dir.path()).unwrap();
    for chunk in ops(30).chunks(3) {
        j.append(NodeId(7), chunk.to_vec(), &mut state).unwrap();
    }
    let before = j.segments().len();
    let cp = j.write_checkpoint(&state).unwrap();
    assert_eq!(cp.seq, 30);
    assert!(
        j.segments().len() < before,
        "sealed segments before the checkpoint are dropped"
    );
    j.append(NodeId(7), vec![Op::Rmdir { path: p("dir000") }], &mut state)
        .unwrap();
    drop(j);
    let (j, again, _) = reopen(dir.path()).unwrap();
    assert_eq!(again, state);
    assert_eq!(j.checkpoint(), Some(&cp));
    assert_eq!(j.last_seq(), 31);
}

#[derive(Clone, Copy, Debug)]
enum Damage {
    Truncate,
    Flip,
    Delete,
}

#[derive(Clone, Copy, Debug)]
enum Place {
    Header,
    Middle,
    Tail,
}

fn damage(path: &Path, how: Damage, place: Place) {
    let mut bytes = fs::read(path).unwrap();
    let at = match place {
        Place::Header => 5,
        Place::Middle => bytes.len() / 2,
        Place::Tail => bytes.len() - 3,
    };
    match how {
        Damage::Truncate => bytes.truncate(at),
        Damage::Flip => bytes[at] ^= 0x40,
        Damage::Delete => {
            bytes.drain(at..at + 2);
        }
    }
    fs::write(path, bytes).unwrap();
}

#[test]
fn damage_matrix() {
    for segment in ["open", "sealed"] {
        for how in [Damage::Truncate, Damage::Flip, Damage::Delete] {
            for place in [Place::Header, Place::Middle, Place::Tail] {
                let dir = tempfile::tempdir().unwrap();
                let state = journal(dir.path(), 40);
                let (j, _, _) = reopen(dir.path()).unwrap();
                let segs = j.segments().to_vec();
                drop(j);
                let target = if segment == "open" {
                    segs.last().unwrap()
                } else {
                    &segs[0]
                };
                let path = dir.path().join("kml").join(target.name());
                damage(&path, how, place);
                let case = format!("{how:?} {place:?} of the {segment} segment");
                let result = reopen(dir.path());
                let repairable = segment == "open"
                    && !matches!(
                        (how, place),
                        (Damage::Flip | Damage::Delete, Place::Header | Place::Middle)
                    );
                if repairable {
                    let (j, recovered, recovery) = result.unwrap_or_else(|e| panic!("{case}: {e}"));
                    assert!(recovery.truncated.is_some(), "{case}: repair not reported");
                    // Everything before the damaged segment survives, and the
                    // recovered state is a prefix of the journal.
                    assert!(recovered.seq >= target.first_seq - 1, "{case}");
                    assert!(recovered.seq < state.seq, "{case}");
                    assert_eq!(j.last_seq(), recovered.seq);
                    // And the journal takes appends again where it stopped.
                    let (mut j, mut s) = (j, recovered);
                    j.append(
                        NodeId(1),
                        vec![Op::Mkdir {
                            path: p("after"),
                            mode: 0o700,
                        }],
                        &mut s,
                    )
                    .unwrap();
                    drop(j);
                    assert_eq!(reopen(dir.path()).unwrap().1, s, "{case}");
                } else {
                    let err = match result {
                        Err(e) => e,
                        Ok(_) => panic!("{case}: opened a damaged journal"),
                    };
                    let msg = crate::monitor::Chain(&err).to_string();
                    assert!(msg.contains(&target.name()), "{case}: {msg}");
                    if matches!(place, Place::Middle)
                        && matches!(how, Damage::Flip | Damage::Delete)
                    {
                        assert!(msg.contains("offset"), "{case}: {msg}");
                    }
                }
            }
        }
    }
}

#[test]
fn zeros_after_a_crash_are_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let state = journal(dir.path(), 5);
    let (j, _, _) = reopen(dir.path()).unwrap();
    let path = dir
        .path()
        .join("kml")
        .join(j.segments().last().unwrap().name());
    drop(j);
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(&[0; 4096]).unwrap();
    drop(f);
    let (_, recovered, recovery) = reopen(dir.path()).unwrap();
    assert_eq!(recovered, state);
    assert_eq!(recovery.truncated.unwrap().2, 4096);
}

#[test]
fn a_missing_segment_is_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    journal(dir.path(), 40);
    let (j, _, _) = reopen(dir.path()).unwrap();
    let middle = j.segments()[1].name();
    drop(j);
    fs::remove_file(dir.path().join("kml").join(&middle)).unwrap();
    let err = reopen(dir.path()).err().expect("gap refused");
    assert!(matches!(err, JournalError::Gap { .. }), "{err}");
}
