//! The few Status fields the handshake owns, for both resource kinds.

use prost::Message;

use crate::errors::{Error, Result};
use crate::proto::ai::stigmer::agentic::agentexecution::v1::AgentExecutionStatus;
use crate::proto::ai::stigmer::agentic::workflowexecution::v1::WorkflowExecutionStatus;
use crate::proto::ai::stigmer::commons::v1::ExecutionError;
use crate::vocabulary::{Kind, Phase};

/// The Status fields the handshake reads and writes, whatever the resource kind.
pub trait StatusFields {
    fn phase(&self) -> Phase;
    fn set_phase(&mut self, phase: Phase);
    fn set_token(&mut self, token: Vec<u8>);
    fn started_at(&self) -> Option<prost_types::Timestamp>;
    fn mark_started(&mut self, at: prost_types::Timestamp);
    fn mark_completed(&mut self, at: prost_types::Timestamp);
    fn set_error(&mut self, error: Option<ExecutionError>);
    fn set_cancel_requested(&mut self, requested: bool);
    fn set_orphaned(&mut self, orphaned: bool);
}

macro_rules! status_fields {
    ($ty:ty, $error_field:ident) => {
        impl StatusFields for $ty {
            fn phase(&self) -> Phase {
                Phase::from_proto(self.phase)
            }
            fn set_phase(&mut self, phase: Phase) {
                self.phase = phase.to_proto();
            }
            fn set_token(&mut self, token: Vec<u8>) {
                self.callback_token = token;
            }
            fn started_at(&self) -> Option<prost_types::Timestamp> {
                self.started_at
            }
            fn mark_started(&mut self, at: prost_types::Timestamp) {
                self.started_at.get_or_insert(at);
            }
            fn mark_completed(&mut self, at: prost_types::Timestamp) {
                self.completed_at = Some(at);
            }
            fn set_error(&mut self, error: Option<ExecutionError>) {
                self.$error_field = error;
            }
            fn set_cancel_requested(&mut self, requested: bool) {
                self.cancel_requested = requested;
            }
            fn set_orphaned(&mut self, orphaned: bool) {
                self.orphaned = orphaned;
            }
        }
    };
}
status_fields!(AgentExecutionStatus, error);
status_fields!(WorkflowExecutionStatus, error);

/// Decode a status of `kind`, let `edit` change it, and encode it again.
///
/// The token is always cleared before `edit` runs, so a stored blob never carries it; an edit that
/// needs it in the output (an opt-in read) sets it back.
pub fn edit_status(kind: Kind, bytes: &[u8], edit: impl FnOnce(&mut dyn StatusFields)) -> Result<Vec<u8>> {
    edit_encoded(kind, bytes, edit, false).map(|(_, encoded)| encoded)
}

/// `edit_status`, or None when the edit changes nothing (compared as messages, so the order a map was
/// encoded in does not count).
pub fn edit_status_if_changed(
    kind: Kind,
    bytes: &[u8],
    edit: impl FnOnce(&mut dyn StatusFields),
) -> Result<Option<Vec<u8>>> {
    edit_encoded(kind, bytes, edit, true).map(|(changed, encoded)| changed.then_some(encoded))
}

/// The edited status, encoded, and (with `compare`, else true) whether `edit` changed it; the token is
/// cleared either way.
fn edit_encoded(
    kind: Kind,
    bytes: &[u8],
    edit: impl FnOnce(&mut dyn StatusFields),
    compare: bool,
) -> Result<(bool, Vec<u8>)> {
    fn apply<S: Message + Default + PartialEq + StatusFields>(
        bytes: &[u8],
        edit: impl FnOnce(&mut dyn StatusFields),
        compare: bool,
    ) -> Result<(bool, Vec<u8>)> {
        let decode = || {
            let mut status =
                S::decode(bytes).map_err(|e| Error::InvalidArgument(format!("malformed status bytes: {e}")))?;
            status.set_token(Vec::new());
            Ok::<S, Error>(status)
        };
        let mut status = decode()?;
        edit(&mut status);
        let changed = !compare || status != decode()?;
        Ok((changed, status.encode_to_vec()))
    }
    match kind {
        Kind::Agent => apply::<AgentExecutionStatus>(bytes, edit, compare),
        Kind::Workflow => apply::<WorkflowExecutionStatus>(bytes, edit, compare),
    }
}

/// When the execution started, as recorded in a status blob.
pub fn started_at(kind: Kind, bytes: &[u8]) -> Result<Option<prost_types::Timestamp>> {
    let malformed = |e: prost::DecodeError| Error::Store(format!("malformed stored status: {e}"));
    Ok(match kind {
        Kind::Agent => AgentExecutionStatus::decode(bytes).map_err(malformed)?.started_at,
        Kind::Workflow => WorkflowExecutionStatus::decode(bytes).map_err(malformed)?.started_at,
    })
}

/// A short JSON summary of a status for heartbeat details, so `temporal workflow describe` on the parent
/// shows how the child is doing: phase, todos (agent) or tasks (workflow) done of total, last message.
pub fn progress_json(kind: Kind, bytes: &[u8]) -> Result<serde_json::Value> {
    let malformed = |e: prost::DecodeError| Error::InvalidArgument(format!("malformed status bytes: {e}"));
    Ok(match kind {
        Kind::Agent => {
            let status = AgentExecutionStatus::decode(bytes).map_err(malformed)?;
            let done = status.todos.values().filter(|t| t.status == 3).count();
            let last: String =
                status.messages.last().map(|m| m.content.chars().take(200).collect()).unwrap_or_default();
            serde_json::json!({
                "phase": Phase::from_proto(status.phase).name(),
                "todos_done": done,
                "todos_total": status.todos.len(),
                "last_message": last,
            })
        }
        Kind::Workflow => {
            let status = WorkflowExecutionStatus::decode(bytes).map_err(malformed)?;
            let done = status.tasks.iter().filter(|t| t.status == 3).count();
            serde_json::json!({
                "phase": Phase::from_proto(status.phase).name(),
                "tasks_done": done,
                "tasks_total": status.tasks.len(),
            })
        }
    })
}

/// The child workflow id recorded in a WorkflowExecution status blob.
pub fn temporal_workflow_id(bytes: &[u8]) -> Result<String> {
    let status =
        WorkflowExecutionStatus::decode(bytes).map_err(|e| Error::Store(format!("malformed stored status: {e}")))?;
    Ok(status.temporal_workflow_id)
}

/// Check that spec bytes decode as the spec of `kind` (bad input is refused before it is stored).
pub fn check_spec(kind: Kind, bytes: &[u8]) -> Result<()> {
    use crate::proto::ai::stigmer::agentic::{agentexecution, workflowexecution};
    let decoded = match kind {
        Kind::Agent => agentexecution::v1::AgentExecutionSpec::decode(bytes).map(drop),
        Kind::Workflow => workflowexecution::v1::WorkflowExecutionSpec::decode(bytes).map(drop),
    };
    decoded.map_err(|e| Error::InvalidArgument(format!("malformed {} spec bytes: {e}", kind.as_str())))
}

pub fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}
