//! The handshake as one object: a store, an optional Temporal connection, and the operations the
//! caller activity and the runner use. `PyCore` exposes it to Python as awaitables.

use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView};
use tracing::Instrument;

use crate::delivery::{self, SettleOutcome};
use crate::errors::{Error, InvalidInput, Result};
use crate::pump::{self, Pump, Signals};
use crate::reconcile::{self, ReconcileReport};
use crate::runtime::{self, spawn};
use crate::secrets::{Capabilities, Grant, Keyring};
use crate::store::{self, CallbackInfo, Created, ExecutionRecord, Kind, NewExecution, Outcome, Phase, Store};
use crate::temporal::{HeartbeatFlags, LazyTemporal, Target, Temporal};
use crate::token::TaskToken;

/// Temporal's default limit on a payload (the server refuses larger blobs).
const DEFAULT_MAX_RESULT_BYTES: i64 = 2 * 1024 * 1024;
/// How often `wait` looks at a SQLite store for a settle made by another process.
const WAIT_POLL: Duration = Duration::from_millis(20);
/// On PostgreSQL every settle notifies `wait`; this slow read is only a safety net.
const WAIT_RECHECK: Duration = Duration::from_secs(5);

/// The shared state behind every clone of a handshake.
pub struct Core {
    store: Store,
    /// None: store only (settles are recorded as due; another process delivers them).
    temporal: Option<LazyTemporal>,
    pid: u32,
    /// Stops the background reconciler, when one runs.
    reconciler: std::sync::Mutex<Option<tokio::sync::watch::Sender<bool>>>,
    /// Heartbeats the parents of the executions this process has claimed.
    pump: Pump,
    pump_started: std::sync::OnceLock<()>,
    /// The heartbeat interval for parents that declared no heartbeat timeout.
    default_heartbeat_interval: Duration,
    /// Signs and checks settle capabilities.
    capabilities: Capabilities,
}

/// How a handshake is set up, besides where its store and Temporal are.
pub struct Options {
    /// The Temporal namespaces served; the first is the default (for calls by id). Never empty.
    pub namespaces: Vec<String>,
    pub identity: String,
    pub default_heartbeat_interval: Duration,
    /// Keys that seal tokens at rest, first one current; empty: stored as they are.
    pub token_keys: Vec<(String, Vec<u8>)>,
    /// Keys that sign settle capabilities, first one current; empty: the store's own key.
    pub capability_keys: Vec<Vec<u8>>,
    /// Results (and details) over this size are never sent; the parent gets RESULT_TOO_LARGE.
    pub max_result_bytes: usize,
    /// None: connect to Temporal at once if it answers, else on first use (settles are recorded meanwhile).
    /// Some: wait up to this long for Temporal at connect, then fail with `Connect`.
    pub wait_for_temporal: Option<Duration>,
}

impl Core {
    pub async fn connect(store_url: &str, temporal: Option<&str>, options: Options) -> Result<Self> {
        // Without keys tokens are stored as they are; the Python side says so once per process.
        let keyring = Keyring::new(options.token_keys)?;
        Capabilities::check_keys(&options.capability_keys)?;
        if options.namespaces.is_empty() || options.namespaces.iter().any(String::is_empty) {
            return Err(Error::InvalidArgument("namespaces must be one or more non-empty names".into()));
        }
        non_empty(&options.identity, "identity")?;
        let store = Store::open(store_url, keyring).await?;
        let capability_keys = match options.capability_keys {
            keys if keys.is_empty() => vec![store.own_capability_key().to_vec()],
            keys => keys,
        };
        let capabilities = Capabilities::new(store.id(), capability_keys)?;
        let temporal = match temporal {
            Some(target) => {
                let lazy = LazyTemporal::new(target, &options.namespaces, &options.identity, options.max_result_bytes)?;
                match options.wait_for_temporal {
                    Some(patience) => drop(lazy.wait(patience).await?),
                    // Unreachable now (an outage, a restart): start anyway, as temporalio's lazy clients do.
                    None => match lazy.get().await {
                        Err(err) if err.is_unreachable() => {
                            tracing::warn!(error = %err, "Temporal is not reachable yet; settles are recorded and delivered once it is");
                        }
                        other => drop(other?),
                    },
                }
                Some(lazy)
            }
            None => None,
        };
        let default_heartbeat_interval = options.default_heartbeat_interval;
        Ok(Self {
            store,
            temporal,
            pid: std::process::id(),
            reconciler: std::sync::Mutex::default(),
            pump: Pump::default(),
            pump_started: std::sync::OnceLock::new(),
            default_heartbeat_interval,
            capabilities,
        })
    }

    /// A capability to settle `id` with `outcomes` until `expires_ms`, for code that must not hold the
    /// token or the store.
    pub fn grant(&self, id: &str, outcomes: Vec<String>, expires_ms: i64) -> Result<String> {
        self.capabilities.grant(&Grant { execution_id: id.to_owned(), outcomes, expires_ms })
    }

    /// Refuse a settle of `id` with `outcome` that `capability` does not allow.
    fn check_capability(&self, id: &str, outcome: &Outcome, capability: &str) -> Result<()> {
        self.capabilities.verify(capability, id, outcome.name(), store::now_ms()).map(|_| ())
    }

    /// Refuse use after `fork`: the runtime's threads and the pool's connections did not come along,
    /// so a future spawned in the child would never run. Checked before anything is spawned.
    fn check_pid(&self) -> Result<()> {
        let current = std::process::id();
        if current == self.pid {
            Ok(())
        } else {
            Err(Error::Forked { created: self.pid, current })
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Whether this handshake has a Temporal connection made (false while Temporal has not answered yet).
    pub fn temporal_connected(&self) -> bool {
        self.temporal.as_ref().is_some_and(|t| t.connected().is_some())
    }

    /// The default interval of the pump, for parents without a heartbeat timeout.
    pub fn default_heartbeat_interval(&self) -> Duration {
        self.default_heartbeat_interval
    }

    pub fn pump(&self) -> &Pump {
        &self.pump
    }

    /// Heartbeat the parents of these executions from now on (those that have one, when Temporal is
    /// connected), looked up in one query.
    async fn pump_executions(self: &Arc<Self>, ids: &[String]) -> Result<()> {
        if self.temporal.is_none() || ids.is_empty() {
            return Ok(());
        }
        for (id, armed) in self.store.armed_callbacks(ids).await? {
            let armed = armed.transpose().unwrap_or_else(|err| {
                // Not this process's key: the runner still gets the execution (a claim never strands), and
                // its parent is heartbeated by no one here; its settle is delivered by a process with the key.
                tracing::warn!(execution = %id, error = %err, "cannot heartbeat the parent: its token cannot be opened");
                None
            });
            if let Some((token, heartbeat_timeout_ms)) = armed {
                self.pump_started.get_or_init(|| {
                    runtime::get().spawn(pump::run(Arc::downgrade(self)));
                });
                self.pump.track(&id, token, heartbeat_timeout_ms, self.default_heartbeat_interval);
            }
        }
        Ok(())
    }

    /// Store a new execution; with a token, arm its callback or re-bind a retried parent activity to its
    /// child. A re-bound child that had already ended has its outcome delivered to the new attempt at once,
    /// and one this process pumps is heartbeated with the new token from now on.
    pub async fn create(&self, new: NewExecution) -> Result<Created> {
        if let (Some(token), Some(lazy)) = (&new.token, &self.temporal) {
            // A token of a namespace this handshake does not serve could never be settled: refuse it now
            // (while Temporal cannot be reached, its delivery checks it).
            if let Ok(temporal) = lazy.get().await {
                temporal.for_token(token)?;
            }
        }
        let (token, heartbeat_timeout_ms) = (new.token.clone(), new.heartbeat_timeout_ms);
        let created = self.store.create(new).await?;
        if let (Created::Rebound(id), Some(token)) = (&created, token) {
            self.pump.rebind(id, token, heartbeat_timeout_ms, self.default_heartbeat_interval);
            self.deliver_if_due(id);
        }
        Ok(created)
    }

    /// Deliver `id`'s callback in the background if its outcome is due (a re-bound child that had ended);
    /// if this fails, the callback stays due for the reconciler.
    fn deliver_if_due(&self, id: &str) {
        let Some(lazy) = self.temporal.clone() else { return };
        let (store, id) = (self.store.clone(), id.to_owned());
        tokio::spawn(async move {
            let delivered = async {
                let temporal = lazy.get().await?;
                if let Some(claimed) = store.claim_due_one(&id, delivery::DELIVERY_LEASE_MS).await? {
                    delivery::deliver(&store, temporal, claimed).await?;
                }
                Ok::<(), Error>(())
            };
            if let Err(err) = delivered.await {
                tracing::warn!(execution = %id, error = %err, "could not deliver at re-bind; the reconciler will");
            }
        });
    }

    pub async fn settle(
        &self,
        id: &str,
        outcome: Outcome,
        status: Option<Vec<u8>>,
        wait: bool,
        capability: Option<&str>,
    ) -> Result<SettleOutcome> {
        if let Some(capability) = capability {
            self.check_capability(id, &outcome, capability)?;
        }
        // Payloads are checked before anything is stored: a malformed result must not end the execution.
        crate::temporal::decode_payloads(outcome.payloads())?;
        let span =
            tracing::info_span!("settle", execution = %id, outcome = outcome.name(), result = tracing::field::Empty);
        // Temporal unreachable: the outcome is recorded as due (no delivery lease), for the reconciler.
        let (temporal, unreachable) = match &self.temporal {
            None => (None, None),
            Some(lazy) => match lazy.get().await {
                Ok(temporal) => (Some(temporal), None),
                Err(err) => (None, Some(err)),
            },
        };
        let settled = delivery::settle(&self.store, temporal, id, &outcome, status.as_deref(), wait)
            .instrument(span.clone())
            .await
            .map(|settled| match (settled, unreachable) {
                (SettleOutcome::Recorded, Some(err)) => SettleOutcome::Retrying(err.to_string()),
                (settled, _) => settled,
            });
        match &settled {
            Ok(result) => span.record("result", result.name()),
            Err(err) => span.record("result", err.type_name()),
        };
        self.pump.untrack(id);
        settled
    }

    /// This process's metrics (Prometheus/OpenMetrics text), with the pending gauge read from the store now.
    pub async fn metrics_text(&self) -> Result<String> {
        let bounds: Vec<i64> = crate::metrics::PENDING_AGES.iter().map(|(_, lower)| *lower).collect();
        crate::metrics::set_pending(&self.store.pending_by_age(&bounds).await?);
        Ok(crate::metrics::text())
    }

    pub async fn heartbeat(&self, id: &str, details: Option<Vec<u8>>) -> Result<HeartbeatFlags> {
        // A heartbeat is the runner's sign of life: it keeps the runner's claim on the execution.
        self.store.renew_claim(id).await?;
        let Some((token, _)) = self.store.armed_callback(id).await? else {
            // A direct execution, or one already settled: there is no parent to heartbeat.
            return Ok(HeartbeatFlags::default());
        };
        self.temporal().await?.heartbeat(&Target::Token(token), details.as_deref()).await
    }

    pub async fn wait(&self, id: &str, timeout: Option<Duration>) -> Result<ExecutionRecord> {
        let started = tokio::time::Instant::now();
        loop {
            // Register for the wake-up before reading, so a settle between the read and the sleep is not
            // missed (a `Notified` only counts once enabled).
            let mut notified = std::pin::pin!(self.store.settled().notified());
            notified.as_mut().enable();
            // A read can queue behind a write that waits for another process's lock: it too is bounded
            // by the timeout.
            let read = self.store.get(id, false);
            let record = match timeout.map(|limit| (limit, limit.saturating_sub(started.elapsed()))) {
                Some((limit, left)) => {
                    tokio::time::timeout(left, read).await.map_err(|_| Error::WaitTimeout(limit.as_secs_f64()))??
                }
                None => read.await?,
            };
            if record.phase.is_terminal() {
                return Ok(record);
            }
            let mut pause = if self.store.notifies_across_processes() { WAIT_RECHECK } else { WAIT_POLL };
            if let Some(limit) = timeout {
                let left = limit.saturating_sub(started.elapsed());
                if left.is_zero() {
                    return Err(Error::WaitTimeout(limit.as_secs_f64()));
                }
                pause = pause.min(left);
            }
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// The Temporal connection, made now if it is not yet (`Connect` while Temporal is unreachable).
    pub async fn temporal(&self) -> Result<&Temporal> {
        self.lazy_temporal()?.get().await
    }

    fn lazy_temporal(&self) -> Result<&LazyTemporal> {
        self.temporal.as_ref().ok_or_else(|| {
            Error::InvalidArgument("this handshake has no Temporal connection (connect with temporal=...)".into())
        })
    }
}

/// Read a bytes-like argument, or raise `InvalidInput` naming it.
pub fn bytes_arg(value: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<u8>> {
    if let Ok(b) = value.cast::<PyBytes>() {
        return Ok(b.as_bytes().to_vec());
    }
    if let Ok(b) = value.cast::<PyByteArray>() {
        return Ok(b.to_vec());
    }
    if value.cast::<PyMemoryView>().is_ok() {
        let bytes = value.call_method0("tobytes")?;
        return Ok(bytes.cast::<PyBytes>()?.as_bytes().to_vec());
    }
    Err(InvalidInput::new_err(format!(
        "{what} must be bytes, not {}",
        value.get_type().name().map_or_else(|_| "?".to_owned(), |n| n.to_string())
    )))
}

fn optional_bytes(value: Option<&Bound<'_, PyAny>>, what: &str) -> PyResult<Option<Vec<u8>>> {
    value.filter(|v| !v.is_none()).map(|v| bytes_arg(v, what)).transpose()
}

fn non_empty(text: &str, what: &str) -> Result<()> {
    if text.is_empty() {
        return Err(Error::InvalidArgument(format!("{what} must not be empty")));
    }
    Ok(())
}

/// The longest execution id accepted: ids are keys, and show up in logs and tables.
const MAX_ID_LEN: usize = 256;

/// Refuse an execution id that is empty, longer than `MAX_ID_LEN` bytes or holds control characters, or
/// invisible ones that make lookalike ids in listings (bidirectional overrides, zero-width characters,
/// line and paragraph separators).
fn check_execution_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > MAX_ID_LEN || id.chars().any(|c| c.is_control() || is_invisible(c)) {
        return Err(Error::InvalidArgument(format!(
            "an execution id must be 1 to {MAX_ID_LEN} bytes without control or invisible characters (got {} bytes)",
            id.len()
        )));
    }
    Ok(())
}

/// Unicode's format characters and separators that show as nothing (or reorder the text around them).
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{AD}' | '\u{61C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
}

/// An execution id from Python, checked as it is taken (`check_execution_id`).
pub struct ExecutionId(String);

impl std::ops::Deref for ExecutionId {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'a, 'py> FromPyObject<'a, 'py> for ExecutionId {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        let id: String = obj.extract().map_err(|_| {
            // A str that is not valid Unicode text (a lone surrogate): Rust and the stores cannot hold it.
            let why = if obj.is_instance_of::<pyo3::types::PyString>() {
                "an execution id must be valid Unicode text (it holds a lone surrogate)".to_owned()
            } else {
                let type_name = obj.get_type().name().map(|n| n.to_string()).unwrap_or_default();
                format!("an execution id must be a str, not {type_name}")
            };
            PyErr::from(Error::InvalidArgument(why))
        })?;
        check_execution_id(&id)?;
        Ok(Self(id))
    }
}

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

    /// Failure, delivered as an `ApplicationFailure`.
    #[staticmethod]
    #[pyo3(signature = (message, r#type="", non_retryable=false, details=None))]
    fn fail(message: String, r#type: &str, non_retryable: bool, details: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
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

    fn __repr__(&self) -> String {
        match &self.0 {
            Outcome::Fail { message, failure_type, non_retryable, .. } => {
                format!("Outcome.fail({message:?}, type={failure_type:?}, non_retryable={non_retryable})")
            }
            other => format!("Outcome.{}(...)", other.name()),
        }
    }
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
    /// When it was stored and last written, in seconds since the Unix epoch.
    created_at: f64,
    updated_at: f64,
}

impl PyExecution {
    fn from_record(py: Python<'_>, record: ExecutionRecord) -> Self {
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
            retry_of: record.retry_of,
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
    fn __repr__(&self) -> String {
        format!(
            "Execution(id={:?}, kind={:?}, phase={:?}, callback_state={:?}, token={:?})",
            self.id, self.kind, self.phase, self.callback_state, self.token_fingerprint
        )
    }

    fn _repr_html_(&self) -> String {
        let parent = self.parent_workflow_id.as_ref().map(|w| {
            format!(
                "{w} / {} (attempt {})",
                self.parent_activity_id.as_deref().unwrap_or_default(),
                self.parent_attempt.unwrap_or_default()
            )
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
    fn new(execution_id: String, settled: SettleOutcome) -> Self {
        let outcome = settled.name();
        let (reason, detail) = match settled {
            SettleOutcome::Delivered | SettleOutcome::Recorded | SettleOutcome::NoCallback => (None, None),
            SettleOutcome::AlreadySettled(recorded) => (None, recorded),
            SettleOutcome::ActivityGone(reason, message) => (Some(reason.as_str()), Some(message)),
            SettleOutcome::Retrying(error)
            | SettleOutcome::DeadLettered(error)
            | SettleOutcome::ResultTooLarge(error) => (None, Some(error)),
        };
        Self { execution_id, outcome, reason, detail }
    }
}

#[pymethods]
impl PySettlement {
    fn __repr__(&self) -> String {
        format!(
            "Settlement(execution_id={:?}, outcome={:?}, reason={:?}, detail={:?})",
            self.execution_id, self.outcome, self.reason, self.detail
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
        }
    }
}

#[pymethods]
impl PyReconcileReport {
    fn __repr__(&self) -> String {
        format!(
            "ReconcileReport(delivered={}, gone={}, dead_lettered={}, retrying={}, children_failed={}, orphaned={}, \
             skipped={})",
            self.delivered,
            self.gone,
            self.dead_lettered,
            self.retrying,
            self.children_failed,
            self.orphaned,
            self.skipped
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
    fn __repr__(&self) -> String {
        format!(
            "HeartbeatReply(cancel_requested={}, paused={}, reset={})",
            self.cancel_requested, self.paused, self.reset
        )
    }
}

impl From<HeartbeatFlags> for PyHeartbeatReply {
    fn from(flags: HeartbeatFlags) -> Self {
        Self { cancel_requested: flags.cancel_requested, paused: flags.paused, reset: flags.reset }
    }
}

/// The Rust core of a `stigmer_handshake.Handshake`. Every method returns an awaitable.
#[pyclass(name = "Core", module = "stigmer_handshake._core", frozen)]
pub struct PyCore(Arc<Core>);

fn target_from(
    token: Option<Vec<u8>>,
    workflow_id: Option<String>,
    run_id: String,
    activity_id: Option<String>,
) -> Result<Target> {
    match (token, workflow_id, activity_id) {
        (Some(token), None, None) => Ok(Target::Token(TaskToken::parse(&token)?)),
        (None, Some(workflow_id), Some(activity_id)) => {
            non_empty(&workflow_id, "workflow_id")?;
            non_empty(&activity_id, "activity_id")?;
            Ok(Target::Id { workflow_id, run_id, activity_id })
        }
        _ => Err(Error::InvalidArgument(
            "name the activity either by token=..., or by workflow_id=... and activity_id=... (run_id optional)".into(),
        )),
    }
}

impl PyCore {
    /// The shared core, if this process may use it.
    fn core(&self) -> Result<Arc<Core>> {
        self.0.check_pid()?;
        Ok(self.0.clone())
    }
}

#[pymethods]
impl PyCore {
    /// Open the store and, when `temporal` is given, connect to Temporal.
    #[staticmethod]
    ///
    /// `heartbeat_interval` (seconds) is how often claimed executions heartbeat a parent that declared
    /// no heartbeat timeout; with one, the pump heartbeats at a third of it.
    ///
    /// `namespaces`: the first is the default; tokens of any of them can be settled. `token_keys`:
    /// (key id, 32-byte key) pairs, the first seals new tokens. `max_result_bytes`: larger results
    /// are kept in the store and the parent gets RESULT_TOO_LARGE.
    #[pyo3(signature = (
        store, temporal=None, namespaces=vec!["default".to_owned()], identity="stigmer-handshake",
        heartbeat_interval=30.0, token_keys=Vec::new(), capability_keys=Vec::new(), max_result_bytes=DEFAULT_MAX_RESULT_BYTES,
        wait_for_temporal=None,
    ))]
    #[allow(clippy::too_many_arguments)] // mirrors the Python signature
    fn connect<'py>(
        py: Python<'py>,
        store: String,
        temporal: Option<String>,
        namespaces: Vec<String>,
        identity: &str,
        heartbeat_interval: f64,
        token_keys: Vec<(String, Vec<u8>)>,
        capability_keys: Vec<Vec<u8>>,
        max_result_bytes: i64,
        wait_for_temporal: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let interval =
            Duration::from_millis(u64::try_from(seconds_to_ms(heartbeat_interval, "heartbeat_interval")?).unwrap_or(0));
        let max_result_bytes = usize::try_from(max_result_bytes).ok().filter(|n| *n > 0).ok_or_else(|| {
            Error::InvalidArgument(format!("max_result_bytes must be positive, not {max_result_bytes}"))
        })?;
        let wait_for_temporal = wait_for_temporal.map(|t| patience(t, "wait_for_temporal")).transpose()?;
        let options = Options {
            namespaces,
            identity: identity.to_owned(),
            default_heartbeat_interval: interval,
            token_keys,
            capability_keys,
            max_result_bytes,
            wait_for_temporal,
        };
        spawn(py, async move {
            let core = Core::connect(&store, temporal.as_deref(), options).await?;
            Ok(PyCore(Arc::new(core)))
        })
    }

    /// A capability that lets its holder settle `execution_id` with one of `outcomes` for `ttl` seconds.
    #[pyo3(signature = (execution_id, outcomes, ttl))]
    fn grant(&self, execution_id: ExecutionId, outcomes: Vec<String>, ttl: f64) -> PyResult<String> {
        let expires_ms = store::now_ms().saturating_add(seconds_to_ms(ttl, "ttl")?);
        Ok(self.core()?.grant(&execution_id, outcomes, expires_ms)?)
    }

    /// Store a new PENDING execution; with `token`, arm its callback (or re-bind a retried parent to
    /// its child). Returns (execution id, re-bound). `heartbeat_timeout` is the parent's, in seconds.
    #[pyo3(signature = (kind, spec, execution_id=None, token=None, status=None, heartbeat_timeout=None))]
    #[allow(clippy::too_many_arguments)] // mirrors the Python signature, one argument per field
    fn create<'py>(
        &self,
        py: Python<'py>,
        kind: &str,
        spec: &Bound<'py, PyAny>,
        execution_id: Option<String>,
        token: Option<&Bound<'py, PyAny>>,
        status: Option<&Bound<'py, PyAny>>,
        heartbeat_timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let kind = Kind::parse(kind)?;
        let heartbeat_timeout_ms = heartbeat_timeout.map(|t| seconds_to_ms(t, "heartbeat_timeout")).transpose()?;
        let spec = bytes_arg(spec, "spec")?;
        let token = optional_bytes(token, "token")?.map(|t| TaskToken::parse(&t)).transpose()?;
        let status = optional_bytes(status, "status")?;
        let id = execution_id.unwrap_or_else(|| format!("{}-{}", kind.as_str(), uuid::Uuid::new_v4()));
        check_execution_id(&id)?;
        let core = self.core()?;
        // Deferring (with a token) starts the pending gap; settle and deliver spans name the same token
        // fingerprint at its other end. Going pending is the normal path, logged at INFO, never as an error.
        let span = if let Some(t) = &token {
            tracing::info_span!("defer", execution = %id, token = %t.fingerprint(), kind = kind.as_str())
        } else {
            tracing::info_span!("create", execution = %id, kind = kind.as_str())
        };
        spawn(
            py,
            async move {
                let new = NewExecution { id, kind, spec, status, token, heartbeat_timeout_ms };
                let created = match core.create(new).await? {
                    Created::New(id) => (id, false),
                    Created::Rebound(id) => (id, true),
                };
                tracing::info!(rebound = created.1, "stored; the parent activity is pending");
                Ok(created)
            }
            .instrument(span),
        )
    }

    /// Read one execution. The status carries `callback_token` only with `include_token=True`.
    #[pyo3(signature = (execution_id, include_token=false))]
    fn get<'py>(&self, py: Python<'py>, execution_id: ExecutionId, include_token: bool) -> PyResult<Bound<'py, PyAny>> {
        let core = self.core()?;
        spawn(py, async move {
            let record = core.store.get(&execution_id, include_token).await?;
            Ok(Python::attach(|py| PyExecution::from_record(py, record)))
        })
    }

    /// List executions, oldest first, optionally of one kind and phase.
    #[pyo3(signature = (kind=None, phase=None, limit=100))]
    fn list<'py>(
        &self,
        py: Python<'py>,
        kind: Option<&str>,
        phase: Option<&str>,
        limit: i64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let kind = kind.map(Kind::parse).transpose()?;
        let phase = phase.map(parse_phase).transpose()?;
        if limit <= 0 {
            return Err(Error::InvalidArgument(format!("limit must be positive, not {limit}")).into());
        }
        let core = self.core()?;
        spawn(py, async move {
            let records = core.store.list(kind, phase, limit).await?;
            Ok(Python::attach(|py| records.into_iter().map(|r| PyExecution::from_record(py, r)).collect::<Vec<_>>()))
        })
    }

    /// Hand up to `limit` executions of `kind` to this runner for `lease` seconds (renewed by each
    /// heartbeat): PENDING ones, and running ones whose runner stopped renewing its lease.
    #[pyo3(signature = (kind, limit=1, lease=300.0))]
    fn claim<'py>(&self, py: Python<'py>, kind: &str, limit: i64, lease: f64) -> PyResult<Bound<'py, PyAny>> {
        let kind = Kind::parse(kind)?;
        if limit <= 0 {
            return Err(Error::InvalidArgument(format!("limit must be positive, not {limit}")).into());
        }
        let lease_ms = seconds_to_ms(lease, "lease")?;
        let core = self.core()?;
        spawn(py, async move {
            let records = core.store.claim(kind, limit, lease_ms).await?;
            // From now on this process heartbeats their parents: its liveness is theirs.
            core.pump_executions(&records.iter().map(|r| r.id.clone()).collect::<Vec<_>>()).await?;
            Ok(Python::attach(|py| records.into_iter().map(|r| PyExecution::from_record(py, r)).collect::<Vec<_>>()))
        })
    }

    /// Set the progress details the pump's heartbeats carry for a claimed execution (encoded `Payloads`).
    fn report_progress(&self, execution_id: ExecutionId, details: &Bound<'_, PyAny>) -> PyResult<bool> {
        let details = bytes_arg(details, "details")?;
        crate::temporal::decode_payloads(Some(&details))?;
        Ok(self.core()?.pump.set_details(&execution_id, details))
    }

    /// This process's metrics in the Prometheus (OpenMetrics) text format, the pending gauge read from the
    /// store now. Blocks (without the GIL) for that read: call it from a thread, not the event loop.
    fn metrics_text(&self, py: Python<'_>) -> PyResult<String> {
        let core = self.core()?;
        let text = py.detach(|| runtime::get().block_on(core.metrics_text()))?;
        Ok(text)
    }

    /// Whether the Temporal connection is made (false with no Temporal, or while it has not answered yet).
    fn temporal_connected(&self) -> PyResult<bool> {
        Ok(self.core()?.temporal_connected())
    }

    /// The pump's counters: (executions tracked, heartbeats sent, heartbeats failed).
    fn pump_stats(&self) -> PyResult<(usize, u64, u64)> {
        let stats = self.core()?.pump.stats();
        Ok((stats.tracked, stats.heartbeats_sent, stats.heartbeats_failed))
    }

    /// What the heartbeats last brought back for a claimed execution: (cancel_requested, paused, reset,
    /// parent_gone), or None when this process does not pump it.
    fn signals(&self, execution_id: ExecutionId) -> PyResult<Option<(bool, bool, bool, bool)>> {
        Ok(self.core()?.pump.signals(&execution_id).map(signal_tuple))
    }

    /// Wait until the parent of a claimed execution asks for one of `kinds` ("cancel", "pause", "reset")
    /// or is gone; returns the signals then, or None if the execution stops being pumped (it settled).
    fn wait_signal<'py>(
        &self,
        py: Python<'py>,
        execution_id: ExecutionId,
        kinds: Vec<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        for kind in &kinds {
            if !matches!(kind.as_str(), "cancel" | "pause" | "reset") {
                return Err(
                    Error::InvalidArgument(format!("signal kinds are cancel, pause and reset, not {kind:?}")).into()
                );
            }
        }
        let core = self.core()?;
        spawn(py, async move {
            let wanted = |s: &Signals| {
                s.gone
                    || kinds.iter().any(|k| match k.as_str() {
                        "cancel" => s.flags.cancel_requested,
                        "pause" => s.flags.paused,
                        _ => s.flags.reset,
                    })
            };
            Ok(core.pump.wait(&execution_id, wanted).await.map(signal_tuple))
        })
    }

    /// Replace a running execution's status (progress); terminal phases go through `settle`.
    fn update_status<'py>(
        &self,
        py: Python<'py>,
        execution_id: ExecutionId,
        status: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let status = bytes_arg(status, "status")?;
        let core = self.core()?;
        spawn(py, async move {
            let kind = core.store.update_status(&execution_id, &status).await?;
            // Progress reported through the status rides on the next heartbeats (unless the runner set
            // details of its own).
            let summary = store::progress_json(kind, &status)?;
            core.pump.set_progress_summary(&execution_id, pump::json_details(&summary));
            Ok(())
        })
    }

    /// End the execution with `outcome` (and optionally its final status) and tell the parent.
    ///
    /// Returns once the outcome is durably recorded and, with `wait_for_delivery` (the default), once
    /// the parent was told (or found gone); without it, delivery goes on in the background.
    #[pyo3(signature = (execution_id, outcome, status=None, wait_for_delivery=true, capability=None))]
    fn settle<'py>(
        &self,
        py: Python<'py>,
        execution_id: ExecutionId,
        outcome: &PyOutcome,
        status: Option<&Bound<'py, PyAny>>,
        wait_for_delivery: bool,
        capability: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let status = optional_bytes(status, "status")?;
        let outcome = outcome.0.clone();
        let core = self.core()?;
        spawn(py, async move {
            let settled = core.settle(&execution_id, outcome, status, wait_for_delivery, capability.as_deref()).await?;
            Ok(PySettlement::new(execution_id.0, settled))
        })
    }

    /// Heartbeat the parent activity of a running execution, with encoded details.
    #[pyo3(signature = (execution_id, details=None))]
    fn heartbeat<'py>(
        &self,
        py: Python<'py>,
        execution_id: ExecutionId,
        details: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let details = optional_bytes(details, "details")?;
        let core = self.core()?;
        spawn(py, async move { Ok(PyHeartbeatReply::from(core.heartbeat(&execution_id, details).await?)) })
    }

    /// One reconcile pass: fail the parents of child workflows that closed without settling, and deliver
    /// every callback whose delivery did not finish (a crash, an outage).
    fn reconcile<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let core = self.core()?;
        spawn(py, async move {
            Ok(PyReconcileReport::from(reconcile::reconcile_once(&core.store, core.temporal().await?).await?))
        })
    }

    /// Run reconcile passes in the background every `interval` seconds, the first at once.
    fn start_reconciler(&self, interval: f64) -> PyResult<()> {
        let interval = Duration::from_millis(u64::try_from(seconds_to_ms(interval, "interval")?).unwrap_or(0).max(10));
        let core = self.core()?;
        core.lazy_temporal()?;
        let mut running = core.reconciler.lock().map_err(|_| Error::Store("reconciler state poisoned".into()))?;
        if running.is_some() {
            return Err(Error::InvalidArgument("a reconciler is already running for this handshake".into()).into());
        }
        let (stop, stopped) = tokio::sync::watch::channel(false);
        runtime::get().spawn(reconcile::run(Arc::downgrade(&core), interval, stopped));
        *running = Some(stop);
        Ok(())
    }

    /// Stop the background reconciler (no-op when none runs).
    fn stop_reconciler(&self) -> PyResult<()> {
        let stop = self.0.reconciler.lock().map_err(|_| Error::Store("reconciler state poisoned".into()))?.take();
        if let Some(stop) = stop {
            // The loop ends at its next wait; a pass in flight finishes first.
            let _ = stop.send(true);
        }
        Ok(())
    }

    /// Wait until the execution reaches a terminal phase (`timeout` in seconds, None for no limit).
    #[pyo3(signature = (execution_id, timeout=None))]
    fn wait<'py>(
        &self,
        py: Python<'py>,
        execution_id: ExecutionId,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let timeout = timeout.map(|t| patience(t, "timeout")).transpose()?;
        let core = self.core()?;
        spawn(py, async move {
            let record = core.wait(&execution_id, timeout).await?;
            Ok(Python::attach(|py| PyExecution::from_record(py, record)))
        })
    }

    /// Complete, fail or cancel an activity directly, by token or by id (no store involved).
    #[pyo3(signature = (outcome, *, token=None, workflow_id=None, run_id="", activity_id=None))]
    fn respond<'py>(
        &self,
        py: Python<'py>,
        outcome: &PyOutcome,
        token: Option<&Bound<'py, PyAny>>,
        workflow_id: Option<String>,
        run_id: &str,
        activity_id: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let target = target_from(optional_bytes(token, "token")?, workflow_id, run_id.to_owned(), activity_id)?;
        let outcome = outcome.0.clone();
        crate::temporal::decode_payloads(outcome.payloads())?;
        let core = self.core()?;
        spawn(py, async move {
            core.temporal().await?.respond(&target, &outcome).await?;
            Ok(())
        })
    }

    /// Heartbeat an activity directly, by token or by id.
    #[pyo3(signature = (details=None, *, token=None, workflow_id=None, run_id="", activity_id=None))]
    fn heartbeat_activity<'py>(
        &self,
        py: Python<'py>,
        details: Option<&Bound<'py, PyAny>>,
        token: Option<&Bound<'py, PyAny>>,
        workflow_id: Option<String>,
        run_id: &str,
        activity_id: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let target = target_from(optional_bytes(token, "token")?, workflow_id, run_id.to_owned(), activity_id)?;
        let details = optional_bytes(details, "details")?;
        let core = self.core()?;
        spawn(py, async move {
            let flags = core.temporal().await?.heartbeat(&target, details.as_deref()).await?;
            Ok(PyHeartbeatReply::from(flags))
        })
    }
}

fn signal_tuple(s: Signals) -> (bool, bool, bool, bool) {
    (s.flags.cancel_requested, s.flags.paused, s.flags.reset, s.gone)
}

fn seconds_to_ms(seconds: f64, what: &str) -> Result<i64> {
    if !seconds.is_finite() || seconds <= 0.0 || seconds > 1e9 {
        return Err(Error::InvalidArgument(format!("{what} must be a positive number of seconds, not {seconds}")));
    }
    #[allow(clippy::cast_possible_truncation)]
    Ok((seconds * 1000.0).round() as i64)
}

/// How long to wait, from seconds: zero or more, finite.
fn patience(seconds: f64, what: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| Error::InvalidArgument(format!("{what} must be a non-negative number of seconds, not {seconds}")))
}

fn parse_phase(name: &str) -> Result<Phase> {
    [Phase::Pending, Phase::InProgress, Phase::Completed, Phase::Failed, Phase::Cancelled]
        .into_iter()
        .find(|p| p.name() == name)
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "phase must be one of PENDING, IN_PROGRESS, COMPLETED, FAILED, CANCELLED, not {name:?}"
            ))
        })
}
