//! What the store takes and hands back: a new execution, a stored one with its callback, a callback
//! claimed for delivery, and what `create` and `settle` did.

use crate::errors::Error;
use crate::token::TaskToken;
use crate::vocabulary::{CallbackState, Kind, Outcome, Phase};

/// What a caller asks to create.
#[derive(Clone)]
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
    /// `metadata.labels`, checked by `check_labels`.
    pub labels: Labels,
    /// The parent activity's serialization context as the deferring worker knew it (a JSON object, made
    /// by the Python face): what a data converter is handed when it encodes for this parent.
    pub activity_context: Option<String>,
}

/// An execution's labels (`metadata.labels`): what listing filters on.
pub type Labels = std::collections::BTreeMap<String, String>;

/// Which executions `list` returns: every condition given must hold.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    pub kind: Option<Kind>,
    pub phase: Option<Phase>,
    /// The callback's state, or `"none"` for executions without a callback (checked by `Core::list`).
    pub callback_state: Option<String>,
    /// Labels the execution must all hold.
    pub labels: Labels,
    /// Text found in the id or in the spec (its message), case-sensitive.
    pub text: Option<String>,
}

/// What the console's overview shows, from one read of the store.
#[derive(Clone, Debug, Default)]
pub struct Overview {
    /// Executions by (kind, phase name, count).
    pub counts: Vec<(Kind, Phase, i64)>,
    /// Callbacks whose delivery failed and that wait to retry, or were dead-lettered: the most recent first.
    pub troubled: Vec<Troubled>,
    /// Settles (outcomes recorded) per minute: (minute since the Unix epoch, count), oldest first.
    pub settles_per_minute: Vec<(i64, i64)>,
}

/// A callback whose delivery failed: retrying (`due` with attempts) or dead-lettered.
#[derive(Clone, Debug)]
pub struct Troubled {
    pub execution_id: String,
    pub state: CallbackState,
    pub attempts: i64,
    pub last_error: Option<String>,
    /// When the next attempt is due (retrying), ms since the Unix epoch.
    pub next_attempt_ms: i64,
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
    /// When the outcome was recorded (the callback became due), and when its delivery ended (delivered,
    /// gone, dead), ms since the Unix epoch.
    pub due_ms: Option<i64>,
    pub ended_ms: Option<i64>,
    /// See `NewExecution::activity_context`.
    pub activity_context: Option<String>,
}

/// One stored execution. `status` holds the token only when it was read with `include_token`.
#[derive(Clone, Debug)]
pub struct ExecutionRecord {
    pub id: String,
    pub kind: Kind,
    pub phase: Phase,
    pub spec: Vec<u8>,
    pub status: Vec<u8>,
    /// When the execution was stored, and last written (ms since the Unix epoch).
    pub created_ms: i64,
    pub updated_ms: i64,
    /// The execution this one retries: its parent activity was retried after that one's failure reached it.
    pub retry_of: Option<String>,
    pub labels: Labels,
    /// How it ended (complete, fail, cancel) and the payloads it ended with (result or details): its
    /// callback's, or a direct execution's own. None while it runs.
    pub ended: Option<(String, Option<Vec<u8>>)>,
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
    /// When the outcome was recorded (ms since the Unix epoch): delivery latency runs from here.
    pub due_ms: i64,
}

/// What `settle` wrote.
pub enum Settled {
    /// The execution ended now. `claimed` is its callback, leased to this caller for delivery; None
    /// for a direct execution (`has_callback` false) or when no lease was asked for (left due).
    Now { claimed: Option<ClaimedCallback>, has_callback: bool, kind: Kind },
    /// It had ended before: nothing was written; the recorded outcome and callback are returned.
    Already { outcome: Option<String>, callback: Option<CallbackInfo>, kind: Kind },
    /// It ended now, but this process cannot open the stored token (sealed with a key it lacks): the
    /// callback is left due, for a process that has the key.
    Unopened { error: Error, kind: Kind },
}

/// What `create` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Created {
    New(String),
    /// A retried parent activity (same workflow run and activity id, newer attempt) was bound to its
    /// existing child: the new token replaced the old one, and no second child was made. (A retry after
    /// its child's failure was delivered is `New`: it runs a new child, whose `retry_of` names the old.)
    Rebound(String),
}
