//! Durable executions and their callbacks.
//!
//! The store is the source of truth for the handshake: the token is stored before the caller activity
//! returns "pending", the terminal status and the due callback are written in one transaction, and
//! delivery is claimed under a lease, so a process that dies between commit and RPC leaves a row that any
//! other process (or the reconciler) delivers later. SQLite is the embedded default; the SQL lives in
//! `sqlite.rs` so that another backend only re-implements that file.

mod sqlite;
mod status;

pub use sqlite::SqliteStore;
pub use status::{edit_status, progress_json, Phase, StatusFields};

use crate::errors::{Error, Result};
use crate::token::TaskToken;

/// Which resource an execution is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Agent,
    Workflow,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Agent => "agent",
            Kind::Workflow => "workflow",
        }
    }

    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "agent" => Ok(Kind::Agent),
            "workflow" => Ok(Kind::Workflow),
            other => Err(Error::InvalidArgument(format!("kind must be \"agent\" or \"workflow\", not {other:?}"))),
        }
    }
}

/// How a child ended, as the parent activity will be told.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// `result` is an encoded `temporal.api.common.v1.Payloads`, made by the worker's data converter.
    Complete {
        result: Option<Vec<u8>>,
    },
    Fail {
        message: String,
        failure_type: String,
        non_retryable: bool,
        details: Option<Vec<u8>>,
    },
    Cancel {
        details: Option<Vec<u8>>,
    },
}

impl Outcome {
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Complete { .. } => "complete",
            Outcome::Fail { .. } => "fail",
            Outcome::Cancel { .. } => "cancel",
        }
    }

    pub fn phase(&self) -> Phase {
        match self {
            Outcome::Complete { .. } => Phase::Completed,
            Outcome::Fail { .. } => Phase::Failed,
            Outcome::Cancel { .. } => Phase::Cancelled,
        }
    }
}

/// Where a callback is in its life: armed (child running) -> due (outcome recorded) -> delivering (claimed
/// under a lease) -> delivered | gone (the parent attempt no longer exists) | dead (dead-lettered: a
/// permanent error). A transient failure takes delivering back to due, with a backoff.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallbackState {
    Armed,
    Due,
    Delivering,
    Delivered,
    Gone,
    Dead,
}

impl CallbackState {
    pub fn as_str(self) -> &'static str {
        match self {
            CallbackState::Armed => "armed",
            CallbackState::Due => "due",
            CallbackState::Delivering => "delivering",
            CallbackState::Delivered => "delivered",
            CallbackState::Gone => "gone",
            CallbackState::Dead => "dead",
        }
    }

    pub fn parse(text: &str) -> Result<Self> {
        Ok(match text {
            "armed" => CallbackState::Armed,
            "due" => CallbackState::Due,
            "delivering" => CallbackState::Delivering,
            "delivered" => CallbackState::Delivered,
            "gone" => CallbackState::Gone,
            "dead" => CallbackState::Dead,
            other => return Err(Error::Store(format!("unknown callback state {other:?} in the store"))),
        })
    }
}

/// What a caller asks to create.
pub struct NewExecution {
    pub id: String,
    pub kind: Kind,
    pub spec: Vec<u8>,
    /// Initial status (e.g. with `temporal_workflow_id`); its phase is forced to PENDING and any token in
    /// it is ignored: the token comes only from `token`.
    pub status: Option<Vec<u8>>,
    pub token: Option<TaskToken>,
    /// The parent activity's heartbeat timeout, if it has one: the pump heartbeats well within it.
    pub heartbeat_timeout_ms: Option<i64>,
}

/// Why a parent activity attempt can no longer be settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GoneReason {
    /// The attempt ended without us: its StartToClose (or ScheduleToClose) timeout fired.
    ParentTimedOut,
    /// The parent workflow is closed (completed, failed, terminated, timed out, ...).
    ParentWorkflowClosed,
    /// The activity was retried: a newer attempt (with a new token) is running.
    StaleAttempt,
    /// The server refused the token itself.
    InvalidToken,
    /// The activity was closed by someone else (a by-id call, another client) with another outcome.
    ClosedElsewhere,
}

impl GoneReason {
    pub fn as_str(self) -> &'static str {
        match self {
            GoneReason::ParentTimedOut => "PARENT_TIMED_OUT",
            GoneReason::ParentWorkflowClosed => "PARENT_WORKFLOW_CLOSED",
            GoneReason::StaleAttempt => "STALE_ATTEMPT",
            GoneReason::InvalidToken => "INVALID_TOKEN",
            GoneReason::ClosedElsewhere => "CLOSED_ELSEWHERE",
        }
    }
}

/// The callback side of an execution, without the token.
#[derive(Clone, Debug)]
pub struct CallbackInfo {
    pub state: CallbackState,
    pub fingerprint: String,
    pub workflow_id: String,
    pub run_id: String,
    pub activity_id: String,
    pub attempt: i64,
    pub outcome: Option<String>,
    /// The recorded result (complete) or details (fail, cancel): kept even when the parent is gone.
    pub payloads: Option<Vec<u8>>,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub gone_reason: Option<String>,
}

/// One stored execution. `status` holds the token only when it was read with `include_token`.
#[derive(Clone, Debug)]
pub struct ExecutionRecord {
    pub id: String,
    pub kind: Kind,
    pub phase: Phase,
    pub spec: Vec<u8>,
    pub status: Vec<u8>,
    pub callback: Option<CallbackInfo>,
}

/// A callback claimed for delivery: the token and the outcome to send with it.
#[derive(Clone)]
pub struct ClaimedCallback {
    pub execution_id: String,
    pub token: TaskToken,
    pub outcome: Outcome,
    /// Delivery attempts made before this one (drives the backoff).
    pub attempts: i64,
}

/// What `settle` wrote.
pub enum Settled {
    /// The execution ended now. `claimed` is its callback, leased to this caller for delivery; None
    /// for a direct execution (`has_callback` false) or when no lease was asked for (left due).
    Now { claimed: Option<ClaimedCallback>, has_callback: bool },
    /// It had ended before: nothing was written; the recorded outcome and callback are returned.
    Already { outcome: Option<String>, callback: Option<CallbackInfo> },
}

/// What happened when a claimed callback was sent.
#[derive(Clone, Debug, PartialEq)]
pub enum DeliveryResult {
    Delivered,
    /// The server no longer knows the activity attempt; the token is dead and is cleared.
    Gone(GoneReason, String),
    /// A transient failure: the callback goes back to due, to be tried again after `retry_in_ms`.
    Retry {
        error: String,
        retry_in_ms: i64,
    },
    /// A permanent failure: dead-lettered with the reason; the token is cleared.
    Dead(String),
}

/// What `create` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Created {
    New(String),
    /// A retried parent activity (same workflow run and activity id, newer attempt) was bound to its
    /// existing child: the new token replaced the old one, and no second child was made.
    Rebound(String),
}

/// Open a store from its URL: `sqlite:///abs/path.db`, `sqlite:relative.db` or `sqlite::memory:`.
pub async fn open(url: &str) -> Result<SqliteStore> {
    if url.starts_with("sqlite:") {
        return SqliteStore::open(url).await;
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Err(Error::InvalidArgument(
            "the PostgreSQL store is not available in this version; use sqlite:///path.db".into(),
        ));
    }
    Err(Error::InvalidArgument(format!(
        "unsupported store URL scheme in {:?}: expected sqlite:///path.db or sqlite::memory:",
        url.split(':').next().unwrap_or_default()
    )))
}

pub(crate) fn now_ms() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}
