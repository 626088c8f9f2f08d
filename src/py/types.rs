//! The values the Python face returns and takes: outcomes, executions, settlements, reports, replies.

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::delivery::SettleOutcome;
use crate::errors::Error;
use crate::py::args::optional_bytes;
use crate::reconcile::ReconcileReport;
use crate::store::{CallbackInfo, ExecutionRecord};
use crate::temporal::HeartbeatFlags;
use crate::vocabulary::Outcome;

/// How an execution ended, for `settle` and `respond`.
#[pyclass(name = "Outcome", module = "stigmer_handshake._core", frozen)]
#[derive(Clone)]
pub struct PyOutcome(pub Outcome);

#[pymethods]
impl PyOutcome {
    /// Success; `result` is encoded `Payloads` bytes (the Python layer encodes with the data converter).
    #[staticmethod]
    #[pyo3(signature = (result=None))]
    fn complete(result: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        Ok(Self(Outcome::Complete { result: optional_bytes(result, "result")? }))
    }

    /// Failure, delivered as an `ApplicationFailure`: `failure` (an encoded `temporal.api.failure.v1.Failure`)
    /// is the same failure as the worker's failure converter made it, sent as it is; the other fields are
    /// what the store and the execution's status record.
    #[staticmethod]
    #[pyo3(signature = (message, r#type="", non_retryable=false, details=None, failure=None))]
    fn fail(
        message: String,
        r#type: &str,
        non_retryable: bool,
        details: Option<&Bound<'_, PyAny>>,
        failure: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        // PostgreSQL's text cannot hold NUL: refused on every store alike, before anything is written.
        if message.contains('\0') || r#type.contains('\0') {
            return Err(
                Error::InvalidArgument("a failure's message and type must not contain NUL characters".into()).into()
            );
        }
        Ok(Self(Outcome::Fail {
            message,
            failure_type: r#type.to_owned(),
            non_retryable,
            details: optional_bytes(details, "details")?,
            failure: optional_bytes(failure, "failure")?.map(checked_failure).transpose()?,
        }))
    }

    /// Cancellation, acknowledging a cancel request.
    #[staticmethod]
    #[pyo3(signature = (details=None))]
    fn cancel(details: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        Ok(Self(Outcome::Cancel { details: optional_bytes(details, "details")? }))
    }

    #[getter]
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        match &self.0 {
            Outcome::Fail { message, failure_type, non_retryable, .. } => format!(
                "Outcome.fail({}, type={}, non_retryable={})",
                py_repr(py, message),
                py_repr(py, failure_type),
                py_repr(py, *non_retryable)
            ),
            other => format!("Outcome.{}(...)", other.name()),
        }
    }
}

/// `bytes`, if they are an encoded `temporal.api.failure.v1.Failure`.
fn checked_failure(bytes: Vec<u8>) -> Result<Vec<u8>, Error> {
    use prost::Message;
    temporalio_common::protos::temporal::api::failure::v1::Failure::decode(bytes.as_slice())
        .map_err(|e| Error::InvalidArgument(format!("the failure is not an encoded Temporal Failure ({e})")))?;
    Ok(bytes)
}

/// A stored execution as the handshake sees it: resource bytes plus callback bookkeeping.
#[pyclass(name = "Execution", module = "stigmer_handshake._core", frozen, get_all)]
pub struct PyExecution {
    id: String,
    kind: &'static str,
    phase: &'static str,
    spec: Py<PyBytes>,
    status: Py<PyBytes>,
    callback_state: Option<&'static str>,
    token_fingerprint: Option<String>,
    parent_workflow_id: Option<String>,
    parent_run_id: Option<String>,
    parent_activity_id: Option<String>,
    parent_attempt: Option<i64>,
    callback_outcome: Option<String>,
    /// How it ended: complete, fail or cancel (with a callback or without); None while it runs.
    outcome: Option<String>,
    /// The recorded result (or failure/cancel details) as encoded `Payloads`, kept after delivery.
    result: Option<Py<PyBytes>>,
    delivery_attempts: i64,
    last_error: Option<String>,
    gone_reason: Option<String>,
    /// The execution this one retries (its parent activity was retried after that one's failure).
    retry_of: Option<String>,
    /// `metadata.labels`.
    labels: std::collections::BTreeMap<String, String>,
    /// The parent activity's serialization context as its worker knew it at defer (namespace, workflow
    /// and activity types, task queue); None without a parent, or when it was not recorded.
    activity_context: Option<std::collections::BTreeMap<String, String>>,
    /// When it was stored and last written, in seconds since the Unix epoch.
    created_at: f64,
    updated_at: f64,
}

impl PyExecution {
    pub fn from_record(py: Python<'_>, record: ExecutionRecord) -> Self {
        let callback: Option<CallbackInfo> = record.callback;
        let c = callback.as_ref();
        Self {
            id: record.id,
            kind: record.kind.as_str(),
            phase: record.phase.name(),
            spec: PyBytes::new(py, &record.spec).unbind(),
            status: PyBytes::new(py, &record.status).unbind(),
            callback_state: c.map(|c| c.state.as_str()),
            token_fingerprint: c.map(|c| c.fingerprint.clone()),
            parent_workflow_id: c.map(|c| c.workflow_id.clone()),
            parent_run_id: c.map(|c| c.run_id.clone()),
            parent_activity_id: c.map(|c| c.activity_id.clone()),
            parent_attempt: c.map(|c| c.attempt),
            callback_outcome: c.and_then(|c| c.outcome.clone()),
            outcome: record.ended.as_ref().map(|(outcome, _)| outcome.clone()),
            result: record.ended.as_ref().and_then(|(_, p)| p.as_deref()).map(|p| PyBytes::new(py, p).unbind()),
            delivery_attempts: c.map_or(0, |c| c.attempts),
            last_error: c.and_then(|c| c.last_error.clone()),
            gone_reason: c.and_then(|c| c.gone_reason.clone()),
            // Written by this face only (a JSON object of strings): anything else reads as not recorded.
            activity_context: c.and_then(|c| c.activity_context.as_deref()).and_then(|j| serde_json::from_str(j).ok()),
            retry_of: record.retry_of,
            labels: record.labels,
            created_at: ms_to_seconds(record.created_ms),
            updated_at: ms_to_seconds(record.updated_ms),
        }
    }
}

#[allow(clippy::cast_precision_loss)]
fn ms_to_seconds(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

#[pymethods]
impl PyExecution {
    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "Execution(id={}, kind={}, phase={}, callback_state={}, token={})",
            py_repr(py, &self.id),
            py_repr(py, self.kind),
            py_repr(py, self.phase),
            py_repr(py, self.callback_state),
            py_repr(py, &self.token_fingerprint)
        )
    }

    fn _repr_html_(&self) -> String {
        let parent = self.parent_workflow_id.as_ref().map(|w| {
            let activity = self.parent_activity_id.as_deref().unwrap_or_default();
            let attempt = self.parent_attempt.unwrap_or_default();
            if w.is_empty() {
                format!("standalone activity {activity} (attempt {attempt})")
            } else {
                format!("{w} / {activity} (attempt {attempt})")
            }
        });
        crate::html::record(
            &format!("{} execution {}", self.kind, self.id),
            &[
                ("phase", Some(self.phase.to_owned())),
                ("callback", self.callback_state.map(str::to_owned)),
                ("token", self.token_fingerprint.clone()),
                ("parent", parent),
                ("outcome", self.callback_outcome.clone()),
                ("gone because", self.gone_reason.clone()),
                ("delivery attempts", (self.delivery_attempts > 0).then(|| self.delivery_attempts.to_string())),
                ("last error", self.last_error.clone()),
            ],
        )
    }
}

/// The result of a settle: what happened to the parent activity.
#[pyclass(name = "Settlement", module = "stigmer_handshake._core", frozen, get_all)]
pub struct PySettlement {
    execution_id: String,
    /// delivered | recorded | no_callback | already_settled | activity_gone | retrying | dead_lettered
    outcome: &'static str,
    /// For activity_gone: PARENT_TIMED_OUT, PARENT_WORKFLOW_CLOSED, STALE_ATTEMPT, INVALID_TOKEN or
    /// CLOSED_ELSEWHERE.
    reason: Option<&'static str>,
    /// The server's or the store's words; for already_settled, the outcome recorded first.
    detail: Option<String>,
}

impl PySettlement {
    pub fn new(execution_id: String, settled: SettleOutcome) -> Self {
        let outcome = settled.name();
        let (reason, detail) = settled.reason_and_detail();
        Self { execution_id, outcome, reason, detail }
    }
}

#[pymethods]
impl PySettlement {
    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "Settlement(execution_id={}, outcome={}, reason={}, detail={})",
            py_repr(py, &self.execution_id),
            py_repr(py, self.outcome),
            py_repr(py, self.reason),
            py_repr(py, &self.detail)
        )
    }

    fn _repr_html_(&self) -> String {
        crate::html::record(
            &format!("settlement of {}", self.execution_id),
            &[
                ("outcome", Some(self.outcome.to_owned())),
                ("reason", self.reason.map(str::to_owned)),
                ("detail", self.detail.clone()),
            ],
        )
    }
}

/// What a reconcile pass did.
#[pyclass(name = "ReconcileReport", module = "stigmer_handshake._core", frozen, get_all)]
pub struct PyReconcileReport {
    delivered: usize,
    gone: usize,
    dead_lettered: usize,
    retrying: usize,
    children_failed: usize,
    orphaned: usize,
    skipped: usize,
    /// Ended executions deleted (older than the retention).
    pruned: u64,
}

impl From<ReconcileReport> for PyReconcileReport {
    fn from(r: ReconcileReport) -> Self {
        Self {
            delivered: r.deliveries.delivered,
            gone: r.deliveries.gone,
            dead_lettered: r.deliveries.dead,
            retrying: r.deliveries.retrying,
            children_failed: r.children_failed,
            orphaned: r.orphaned,
            skipped: r.skipped,
            pruned: r.pruned,
        }
    }
}

#[pymethods]
impl PyReconcileReport {
    fn __repr__(&self) -> String {
        format!(
            "ReconcileReport(delivered={}, gone={}, dead_lettered={}, retrying={}, children_failed={}, orphaned={}, \
             skipped={}, pruned={})",
            self.delivered,
            self.gone,
            self.dead_lettered,
            self.retrying,
            self.children_failed,
            self.orphaned,
            self.skipped,
            self.pruned
        )
    }
}

/// What a heartbeat reply said about the parent activity.
#[pyclass(name = "HeartbeatReply", module = "stigmer_handshake._core", frozen, get_all)]
pub struct PyHeartbeatReply {
    cancel_requested: bool,
    paused: bool,
    reset: bool,
}

#[pymethods]
impl PyHeartbeatReply {
    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "HeartbeatReply(cancel_requested={}, paused={}, reset={})",
            py_repr(py, self.cancel_requested),
            py_repr(py, self.paused),
            py_repr(py, self.reset)
        )
    }
}

impl From<HeartbeatFlags> for PyHeartbeatReply {
    fn from(flags: HeartbeatFlags) -> Self {
        Self { cancel_requested: flags.cancel_requested, paused: flags.paused, reset: flags.reset }
    }
}

/// `value` as Python's `repr()` shows it (quotes, escapes, `None`, `True`), so reprs read as Python.
pub fn py_repr<'py, T: IntoPyObject<'py>>(py: Python<'py>, value: T) -> String {
    use pyo3::IntoPyObjectExt;
    value.into_bound_py_any(py).and_then(|v| v.repr()).map_or_else(|_| "?".to_owned(), |r| r.to_string())
}
