//! `POST /.intersync/ops`: a batch of the writes that carry no content
//! (folders, deletions, renames, attributes, symbolic links), each with its
//! own precondition and its own result. One type encodes and decodes each
//! message, so that the server and both clients cannot drift apart.
//!
//! The body is JSON: `{"ops": [BatchOp, ...]}`, answered by a
//! [`BatchResult`]. A symbolic link's target is bytes, as the KML keeps it:
//! a JSON string when it is UTF-8 (every target most trees have), an array
//! of byte values when it is not, so that no target is altered on the way.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{TreePath, Version};

/// One operation of a batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum BatchOp {
    /// A folder, where nothing is.
    Mkdir {
        path: TreePath,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<u32>,
    },
    /// Removes a file or symbolic link; with `if_match`, only while the
    /// file has that version.
    Unlink {
        path: TreePath,
        #[serde(default, with = "etag", skip_serializing_if = "Option::is_none")]
        if_match: Option<Version>,
    },
    /// Removes an empty folder.
    Rmdir { path: TreePath },
    /// Moves `from` (with all it holds) to `to`; with `if_match`, only
    /// while `from` has that version; with `if_absent`, only if nothing is
    /// at `to`.
    Rename {
        from: TreePath,
        to: TreePath,
        #[serde(default, with = "etag", skip_serializing_if = "Option::is_none")]
        if_match: Option<Version>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        if_absent: bool,
    },
    /// Permission bits and a file's modification time.
    Setattr {
        path: TreePath,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mtime_ns: Option<i64>,
    },
    /// A symbolic link, where nothing is.
    Symlink {
        path: TreePath,
        #[serde(with = "link_target")]
        target: Vec<u8>,
    },
}

impl BatchOp {
    /// The path the operation changes (a rename's destination).
    pub fn path(&self) -> &TreePath {
        match self {
            BatchOp::Mkdir { path, .. }
            | BatchOp::Unlink { path, .. }
            | BatchOp::Rmdir { path }
            | BatchOp::Setattr { path, .. }
            | BatchOp::Symlink { path, .. } => path,
            BatchOp::Rename { to, .. } => to,
        }
    }

    /// Every path the operation touches.
    pub fn paths(&self) -> Vec<&TreePath> {
        match self {
            BatchOp::Rename { from, to, .. } => vec![from, to],
            other => vec![other.path()],
        }
    }
}

/// The request body.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub ops: Vec<BatchOp>,
}

/// The outcome of one operation: an HTTP status (200, or what a lone
/// request would have been refused with) and the refusal's reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpResult {
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl OpResult {
    pub fn ok() -> OpResult {
        OpResult {
            status: 200,
            reason: None,
        }
    }

    pub fn is_ok(&self) -> bool {
        self.status == 200
    }

    /// The reason, or nothing.
    pub fn reason(&self) -> &str {
        self.reason.as_deref().unwrap_or("")
    }
}

/// The answer: a result for each operation, in order, and the journal's
/// sequence number after the batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchResult {
    pub results: Vec<OpResult>,
    pub latest_seq: u64,
}

/// An optional version spelled as its ETag (`"\"b3-<hex>\""`).
mod etag {
    use super::*;

    pub fn serialize<S: Serializer>(v: &Option<Version>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_str(&v.etag()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Version>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|tag| Version::from_etag(&tag).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Link target bytes: a string when UTF-8, else an array of byte values.
mod link_target {
    use super::*;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Spelled {
        Text(String),
        Bytes(Vec<u8>),
    }

    pub fn serialize<S: Serializer>(target: &[u8], s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(target) {
            Ok(text) => s.serialize_str(text),
            Err(_) => target.serialize(s),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Ok(match Spelled::deserialize(d)? {
            Spelled::Text(text) => text.into_bytes(),
            Spelled::Bytes(bytes) => bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> TreePath {
        TreePath::new(s).unwrap()
    }

    #[test]
    fn the_wire_form_is_what_the_spec_says() {
        let v = Version([7; 32]);
        let batch = Batch {
            ops: vec![
                BatchOp::Mkdir {
                    path: p("d"),
                    mode: Some(0o750),
                },
                BatchOp::Unlink {
                    path: p("d/f"),
                    if_match: Some(v),
                },
                BatchOp::Rename {
                    from: p("a"),
                    to: p("b"),
                    if_match: None,
                    if_absent: true,
                },
                BatchOp::Symlink {
                    path: p("l"),
                    target: b"d/f".to_vec(),
                },
            ],
        };
        let text = serde_json::to_string(&batch).unwrap();
        assert_eq!(
            text,
            format!(
                r#"{{"ops":[{{"op":"mkdir","path":"d","mode":488}},{{"op":"unlink","path":"d/f","if_match":"\"b3-{v}\""}},{{"op":"rename","from":"a","to":"b","if_absent":true}},{{"op":"symlink","path":"l","target":"d/f"}}]}}"#
            )
        );
        assert_eq!(serde_json::from_str::<Batch>(&text).unwrap(), batch);
        // What older clients wrote: nulls for what is not there.
        let old: Batch = serde_json::from_str(
            r#"{"ops":[{"if_match":null,"op":"unlink","path":"x"},{"op":"setattr","path":"x","mode":null,"mtime_ns":5}]}"#,
        )
        .unwrap();
        assert_eq!(
            old.ops,
            vec![
                BatchOp::Unlink {
                    path: p("x"),
                    if_match: None
                },
                BatchOp::Setattr {
                    path: p("x"),
                    mode: None,
                    mtime_ns: Some(5)
                }
            ]
        );
    }

    #[test]
    fn link_targets_that_are_not_utf8_arrive_unaltered() {
        let op = BatchOp::Symlink {
            path: p("l"),
            target: vec![b'a', 0xff, b'/', 0xfe],
        };
        let text = serde_json::to_string(&op).unwrap();
        assert_eq!(
            text,
            r#"{"op":"symlink","path":"l","target":[97,255,47,254]}"#
        );
        assert_eq!(serde_json::from_str::<BatchOp>(&text).unwrap(), op);
    }

    #[test]
    fn malformed_batches_are_refused() {
        for bad in [
            r#"{"ops":[{"op":"mkdir","path":"../x"}]}"#,
            r#"{"ops":[{"op":"mkdir","path":"/abs"}]}"#,
            r#"{"ops":[{"op":"unlink","path":"x","if_match":"b3-nothex"}]}"#,
            r#"{"ops":[{"op":"explode","path":"x"}]}"#,
            r#"{"ops":[{"op":"symlink","path":"l","target":[256]}]}"#,
            r#"{"ops":[{"op":"symlink","path":"l"}]}"#,
            r#"{"ops":{}}"#,
        ] {
            assert!(serde_json::from_str::<Batch>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn results_round_trip() {
        let r = BatchResult {
            results: vec![
                OpResult::ok(),
                OpResult {
                    status: 412,
                    reason: Some("the file has changed".into()),
                },
            ],
            latest_seq: 9,
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(
            text,
            r#"{"results":[{"status":200},{"status":412,"reason":"the file has changed"}],"latest_seq":9}"#
        );
        assert_eq!(serde_json::from_str::<BatchResult>(&text).unwrap(), r);
        assert!(r.results[0].is_ok() && !r.results[1].is_ok());
    }
}
