//! An execution as JSON, for webhooks, scripts and people (`GET /v1/executions/{id}`): what it is, how it
//! is going and how its callback stands. The token appears only as its fingerprint.

use prost::Message;
use serde_json::{json, Value};

use crate::proto::ai::stigmer::agentic::agentexecution::v1::AgentExecutionSpec;
use crate::proto::ai::stigmer::agentic::workflowexecution::v1::WorkflowExecutionSpec;
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
