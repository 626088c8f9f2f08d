//! The Temporal task token: opaque bytes that identify one attempt of one activity.
//!
//! The token is a bearer credential (whoever holds it can settle the parent activity), so nothing here
//! prints its bytes: `Debug` and `Display` show only the decoded identity and a fingerprint.

use std::fmt;

use prost::Message;
use sha2::{Digest, Sha256};

use crate::errors::{Error, Result};

/// Largest token accepted. Real tokens are ~135 bytes; anything near this is not a token.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The fields of `temporal.server.api.token.v1.Task` that identify the activity attempt.
///
/// Newer fields (clock, started event, version, ...) are skipped by prost as unknown fields. Tests and
/// benchmarks encode their own tokens with it.
#[derive(Clone, PartialEq, Message)]
pub struct TaskProto {
    #[prost(string, tag = "1")]
    pub namespace_id: String,
    #[prost(string, tag = "2")]
    pub workflow_id: String,
    #[prost(string, tag = "3")]
    pub run_id: String,
    #[prost(int64, tag = "4")]
    pub scheduled_event_id: i64,
    #[prost(int32, tag = "5")]
    pub attempt: i32,
    #[prost(string, tag = "6")]
    pub activity_id: String,
    #[prost(string, tag = "7")]
    pub workflow_type: String,
    #[prost(string, tag = "8")]
    pub activity_type: String,
    /// Set instead of the workflow fields in the token of a standalone activity (one a client started,
    /// with no workflow): where the server keeps that activity.
    #[prost(message, optional, tag = "14")]
    pub component_ref: Option<ComponentRefProto>,
}

/// The part of a standalone activity's component reference that names it (measured on a dev server
/// 1.32: 1 namespace id, 2 activity id, 3 the activity's run id; later fields skipped).
#[derive(Clone, PartialEq, Message)]
pub struct ComponentRefProto {
    #[prost(string, tag = "1")]
    pub namespace_id: String,
    #[prost(string, tag = "2")]
    pub activity_id: String,
    #[prost(string, tag = "3")]
    pub run_id: String,
}

/// A validated task token and the identity decoded from it: of an activity a workflow scheduled, or of a
/// standalone activity (`workflow_id` empty, `run_id` the activity's own run, `scheduled_event_id` 0).
#[derive(Clone, PartialEq, Eq)]
pub struct TaskToken {
    bytes: Vec<u8>,
    pub namespace_id: String,
    pub workflow_id: String,
    /// The workflow's run, or the standalone activity's.
    pub run_id: String,
    pub scheduled_event_id: i64,
    pub attempt: i32,
    pub activity_id: String,
    pub workflow_type: String,
    pub activity_type: String,
}

impl TaskToken {
    /// Validate and decode token bytes; every failure is a typed [`Error::Token`].
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        if bytes.is_empty() {
            return Err(Error::Token("the token is empty".into()));
        }
        if bytes.len() > MAX_TOKEN_BYTES {
            return Err(Error::Token(format!(
                "the token is {} bytes, more than the {MAX_TOKEN_BYTES} a task token can be",
                bytes.len()
            )));
        }
        let task = TaskProto::decode(bytes)
            .map_err(|e| Error::Token(format!("the bytes are not a Temporal task token ({e})")))?;
        let standalone = task.workflow_id.is_empty().then_some(task.component_ref).flatten();
        let run_id = standalone.as_ref().map_or(task.run_id, |c| c.run_id.clone());
        let mut required = vec![
            ("namespace_id", task.namespace_id.is_empty()),
            ("activity_id", task.activity_id.is_empty()),
            ("run_id", run_id.is_empty()),
        ];
        if standalone.is_none() {
            required.extend([
                ("workflow_id", task.workflow_id.is_empty()),
                ("scheduled_event_id", task.scheduled_event_id <= 0),
            ]);
        }
        let missing: Vec<&str> = required.into_iter().filter_map(|(name, absent)| absent.then_some(name)).collect();
        if !missing.is_empty() {
            return Err(Error::Token(format!(
                "the token is truncated or not an activity task token (missing {})",
                missing.join(", ")
            )));
        }
        Ok(Self {
            bytes: bytes.to_vec(),
            namespace_id: task.namespace_id,
            workflow_id: task.workflow_id,
            run_id,
            scheduled_event_id: task.scheduled_event_id,
            attempt: task.attempt,
            activity_id: task.activity_id,
            workflow_type: task.workflow_type,
            activity_type: task.activity_type,
        })
    }

    /// Whether this is a standalone activity's token (started by a client, with no workflow).
    pub fn is_standalone(&self) -> bool {
        self.workflow_id.is_empty()
    }

    /// The raw bytes, for the RPC and the store only. Never log them.
    pub fn secret_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// A short, stable, non-reversible name for the token, safe for logs and errors.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.bytes)
    }
}

/// `tok-` and the first 12 hex digits of the SHA-256 of the bytes (48 bits: enough to tell tokens apart
/// in logs, far too little to rebuild one).
pub fn fingerprint(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    format!("tok-{}", hex::encode(&digest[..6]))
}

impl fmt::Debug for TaskToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskToken")
            .field("fingerprint", &self.fingerprint())
            .field("workflow_id", &self.workflow_id)
            .field("activity_id", &self.activity_id)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for TaskToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_standalone() {
            return write!(
                f,
                "{} (standalone activity {}, attempt {})",
                self.fingerprint(),
                self.activity_id,
                self.attempt
            );
        }
        write!(
            f,
            "{} (workflow {}, activity {}, attempt {})",
            self.fingerprint(),
            self.workflow_id,
            self.activity_id,
            self.attempt
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A token shaped like the server's, for tests.
    pub(crate) fn sample_token_bytes(activity_id: &str, attempt: i32) -> Vec<u8> {
        TaskProto {
            namespace_id: "6f1c2d3e-0000-4000-8000-000000000001".into(),
            workflow_id: "parent-wf".into(),
            run_id: "0190a9b8-7c6d-7e5f-8a9b-0c1d2e3f4a5b".into(),
            scheduled_event_id: 5,
            attempt,
            activity_id: activity_id.into(),
            workflow_type: "ParentWorkflow".into(),
            activity_type: "run_agent".into(),
            component_ref: None,
        }
        .encode_to_vec()
    }

    /// A standalone activity's token, shaped like the server's (no workflow fields).
    pub(crate) fn standalone_token_bytes(activity_id: &str, attempt: i32) -> Vec<u8> {
        let namespace_id = "6f1c2d3e-0000-4000-8000-000000000001";
        TaskProto {
            namespace_id: namespace_id.into(),
            attempt,
            activity_id: activity_id.into(),
            activity_type: "run_agent".into(),
            component_ref: Some(ComponentRefProto {
                namespace_id: namespace_id.into(),
                activity_id: activity_id.into(),
                run_id: "01a2343e-0d48-7da6-9b79-992214098d5a".into(),
            }),
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn decodes_a_standalone_activity() {
        let token = TaskToken::parse(&standalone_token_bytes("sa-1", 1)).unwrap();
        assert!(token.is_standalone());
        assert_eq!(
            (token.activity_id.as_str(), token.run_id.as_str()),
            ("sa-1", "01a2343e-0d48-7da6-9b79-992214098d5a")
        );
        assert!(token.to_string().contains("standalone activity sa-1"));
        // Without its component reference, a token with no workflow is no token.
        let bare = TaskProto { component_ref: None, ..TaskProto::decode(&*standalone_token_bytes("sa-1", 1)).unwrap() };
        assert!(matches!(TaskToken::parse(&bare.encode_to_vec()), Err(Error::Token(_))));
    }

    #[test]
    fn decodes_identity() {
        let token = TaskToken::parse(&sample_token_bytes("1", 2)).unwrap();
        assert_eq!(token.workflow_id, "parent-wf");
        assert_eq!(token.activity_id, "1");
        assert_eq!(token.attempt, 2);
        assert_eq!(token.scheduled_event_id, 5);
        assert_eq!(token.activity_type, "run_agent");
    }

    #[test]
    fn rejects_bad_input() {
        let good = sample_token_bytes("1", 1);
        for bad in [
            Vec::new(),
            b"garbage".to_vec(),
            good[..good.len() / 2].to_vec(),
            vec![0x0a; MAX_TOKEN_BYTES + 1],
            vec![0xff; 64],
        ] {
            assert!(matches!(TaskToken::parse(&bad), Err(Error::Token(_))), "{bad:?}");
        }
    }

    #[test]
    fn debug_and_display_hide_the_bytes() {
        let bytes = sample_token_bytes("act-1", 1);
        let token = TaskToken::parse(&bytes).unwrap();
        let shown = format!("{token:?} {token}");
        assert!(shown.contains(&token.fingerprint()));
        assert!(!shown.contains(&hex::encode(&bytes)));
        assert!(!shown.contains(&token.run_id), "run id is not needed to tell tokens apart");
    }

    #[test]
    fn fingerprint_is_stable_and_short() {
        let a = fingerprint(b"abc");
        assert_eq!(a, fingerprint(b"abc"));
        assert_ne!(a, fingerprint(b"abd"));
        assert_eq!(a.len(), 16);
    }
}
