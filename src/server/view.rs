//! An execution as JSON, for webhooks, scripts and people (`GET /v1/executions/{id}`): what it is, how it
//! is going and how its callback stands. The token appears only as its fingerprint.

use prost::Message;
use serde_json::{json, Value};

use crate::proto::ai::stigmer::agentic::agentexecution::v1::{
    AgentExecutionSpec, AgentExecutionStatus, MessageType, TodoStatus, ToolCallStatus,
};
use crate::proto::ai::stigmer::agentic::workflowexecution::v1::{
    WorkflowExecutionSpec, WorkflowExecutionStatus, WorkflowTaskStatus, WorkflowTaskType,
};
use crate::proto::ai::stigmer::commons::v1::ExecutionError;
use crate::store::{progress_json, ExecutionRecord};
use crate::vocabulary::Kind;

pub fn execution_json(record: &ExecutionRecord) -> Value {
    let spec = match record.kind {
        Kind::Agent => AgentExecutionSpec::decode(record.spec.as_slice())
            .map_or(Value::Null, |s| json!({"agent_id": s.agent_id, "session_id": s.session_id, "message": s.message})),
        Kind::Workflow => WorkflowExecutionSpec::decode(record.spec.as_slice()).map_or(Value::Null, |s| {
            json!({"workflow_id": s.workflow_id, "workflow_instance_id": s.workflow_instance_id,
                   "trigger_message": s.trigger_message})
        }),
    };
    let (outcome, payloads) = match &record.ended {
        Some((outcome, payloads)) => (Value::from(outcome.as_str()), payloads.as_deref()),
        None => (Value::Null, None),
    };
    let callback = record.callback.as_ref().map_or(Value::Null, |c| {
        json!({
            "state": c.state.as_str(),
            "token_fingerprint": c.fingerprint,
            "workflow_id": c.workflow_id,
            "run_id": c.run_id,
            "activity_id": c.activity_id,
            "attempt": c.attempt,
            "delivery_attempts": c.attempts,
            "last_error": c.last_error,
            "gone_reason": c.gone_reason,
            "due_ms": c.due_ms,
            "ended_ms": c.ended_ms,
        })
    });
    json!({
        "id": record.id,
        "kind": record.kind.as_str(),
        "phase": record.phase.name(),
        "created_ms": record.created_ms,
        "updated_ms": record.updated_ms,
        "retry_of": record.retry_of,
        "labels": record.labels,
        "spec": spec,
        "progress": progress_json(record.kind, &record.status).unwrap_or(Value::Null),
        "outcome": outcome,
        // Values the default converter wrote, as JSON; others by encoding and size only.
        "values": payloads.map_or(Value::Null, |p| Value::from(crate::payload::payloads_json(p))),
        "callback": callback,
    })
}

/// Messages, tool calls and tasks shown at most (the latest), and the longest text of each.
const SHOWN: usize = 100;
const TEXT_SHOWN: usize = 4_000;

/// `execution_json` with the status as people read it (one execution's page, `?view=full`): the latest
/// messages, tool calls with their results and errors, todos or tasks, and the error.
pub fn execution_full_json(record: &ExecutionRecord) -> Value {
    let mut view = execution_json(record);
    view["status"] = status_json(record.kind, &record.status);
    view
}

fn text(s: &str) -> Value {
    Value::from(s.chars().take(TEXT_SHOWN).collect::<String>())
}

/// The enum's name without its prefix (`TOOL_CALL_STATUS_FAILED` -> `FAILED`).
fn name(full: &str, prefix: &str) -> Value {
    Value::from(full.trim_start_matches(prefix))
}

fn latest<T>(items: &[T]) -> &[T] {
    &items[items.len().saturating_sub(SHOWN)..]
}

fn error_json(error: Option<&ExecutionError>) -> Value {
    error.map_or(
        Value::Null,
        |e| json!({"message": text(&e.message), "type": e.r#type, "non_retryable": e.non_retryable}),
    )
}

fn status_json(kind: Kind, bytes: &[u8]) -> Value {
    match kind {
        Kind::Agent => AgentExecutionStatus::decode(bytes).map_or(Value::Null, |s| {
            let tool = |t: &crate::proto::ai::stigmer::agentic::agentexecution::v1::ToolCall| {
                json!({
                    "name": t.name,
                    "status": ToolCallStatus::try_from(t.status).map_or(Value::Null, |v| name(v.as_str_name(), "TOOL_CALL_STATUS_")),
                    "args": t.args.as_ref().map_or(Value::Null, crate::payload::struct_json),
                    "result": text(&t.result),
                    "error": text(&t.error),
                })
            };
            let mut todos: Vec<_> = s.todos.values().collect();
            todos.sort_by(|a, b| a.id.cmp(&b.id));
            json!({
                "messages": latest(&s.messages).iter().map(|m| json!({
                    "type": MessageType::try_from(m.r#type).map_or(Value::Null, |v| name(v.as_str_name(), "MESSAGE_TYPE_")),
                    "content": text(&m.content),
                })).collect::<Vec<_>>(),
                "tool_calls": latest(&s.tool_calls).iter().map(tool).collect::<Vec<_>>(),
                "todos": todos.iter().map(|t| json!({
                    "content": text(&t.content),
                    "status": TodoStatus::try_from(t.status).map_or(Value::Null, |v| name(v.as_str_name(), "TODO_STATUS_")),
                })).collect::<Vec<_>>(),
                "error": error_json(s.error.as_ref()),
                "cancel_requested": s.cancel_requested,
            })
        }),
        Kind::Workflow => WorkflowExecutionStatus::decode(bytes).map_or(Value::Null, |s| {
            json!({
                "tasks": latest(&s.tasks).iter().map(|t| json!({
                    "name": text(&t.task_name),
                    "type": WorkflowTaskType::try_from(t.task_type).map_or(Value::Null, |v| name(v.as_str_name(), "WORKFLOW_TASK_TYPE_")),
                    "status": WorkflowTaskStatus::try_from(t.status).map_or(Value::Null, |v| name(v.as_str_name(), "WORKFLOW_TASK_STATUS_")),
                    "error": text(&t.error),
                })).collect::<Vec<_>>(),
                "output": s.output.as_ref().map_or(Value::Null, crate::payload::struct_json),
                "error": error_json(s.error.as_ref()),
                "temporal_workflow_id": s.temporal_workflow_id,
                "cancel_requested": s.cancel_requested,
            })
        }),
    }
}
