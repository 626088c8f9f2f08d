//! The handshake's shared vocabulary: what an execution is (kind, phase), how it ended (outcome and its
//! payloads), and where its callback is (callback states, why a parent is gone, what a delivery did).
//! Below both the store and the Temporal client, so neither depends on the other for its words.

use crate::errors::{Error, Result};
use crate::proto::ai::stigmer::commons::v1::ExecutionPhase;

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
        /// The same failure as the worker's failure converter encoded it (a `temporal.api.failure.v1.Failure`):
        /// sent to the parent as it is, so attributes it encoded stay encoded. None: the core builds an
        /// `ApplicationFailure` from the fields above.
        failure: Option<Vec<u8>>,
    },
    Cancel {
        details: Option<Vec<u8>>,
    },
}

impl Outcome {
    /// The payloads it carries: the result of a completion, the details of a failure or cancellation.
    pub fn payloads(&self) -> Option<&[u8]> {
        match self {
            Outcome::Complete { result } => result.as_deref(),
            Outcome::Fail { details, .. } | Outcome::Cancel { details } => details.as_deref(),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Complete { .. } => "complete",
            Outcome::Fail { .. } => "fail",
            Outcome::Cancel { .. } => "cancel",
        }
    }

    /// A failure's message (empty for the other outcomes).
    pub fn message(&self) -> String {
        match self {
            Outcome::Fail { message, .. } => message.clone(),
            Outcome::Complete { .. } | Outcome::Cancel { .. } => String::new(),
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

/// An execution's phase (`ai.stigmer.commons.v1.ExecutionPhase`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Unspecified,
    Pending,
    InProgress,
    Completed,
    Failed,
    Cancelled,
}

impl Phase {
    pub fn from_proto(value: i32) -> Self {
        match ExecutionPhase::try_from(value) {
            Ok(ExecutionPhase::Pending) => Phase::Pending,
            Ok(ExecutionPhase::InProgress) => Phase::InProgress,
            Ok(ExecutionPhase::Completed) => Phase::Completed,
            Ok(ExecutionPhase::Failed) => Phase::Failed,
            Ok(ExecutionPhase::Cancelled) => Phase::Cancelled,
            Ok(ExecutionPhase::Unspecified) | Err(_) => Phase::Unspecified,
        }
    }

    pub fn to_proto(self) -> i32 {
        let phase = match self {
            Phase::Unspecified => ExecutionPhase::Unspecified,
            Phase::Pending => ExecutionPhase::Pending,
            Phase::InProgress => ExecutionPhase::InProgress,
            Phase::Completed => ExecutionPhase::Completed,
            Phase::Failed => ExecutionPhase::Failed,
            Phase::Cancelled => ExecutionPhase::Cancelled,
        };
        phase as i32
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Completed | Phase::Failed | Phase::Cancelled)
    }

    pub fn name(self) -> &'static str {
        match self {
            Phase::Unspecified => "UNSPECIFIED",
            Phase::Pending => "PENDING",
            Phase::InProgress => "IN_PROGRESS",
            Phase::Completed => "COMPLETED",
            Phase::Failed => "FAILED",
            Phase::Cancelled => "CANCELLED",
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
    /// A permanent failure: dead-lettered with the reason; the token is kept for `redeliver`.
    Dead(String),
}

impl DeliveryResult {
    pub fn name(&self) -> &'static str {
        match self {
            DeliveryResult::Delivered => "delivered",
            DeliveryResult::Gone(..) => "gone",
            DeliveryResult::Retry { .. } => "retry",
            DeliveryResult::Dead(_) => "dead",
        }
    }
}
