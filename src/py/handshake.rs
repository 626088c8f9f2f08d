//! `stigmer_handshake._core.Core`: the Python face of `core::Core`. Each method takes its arguments,
//! calls the core and hands back an awaitable; nothing is decided here.

use std::sync::Arc;

use pyo3::prelude::*;

use crate::core::{parse_phase, target_from, Core, CreateRequest, Settings, SignalKind};
use crate::errors::{Error, Result};
use crate::pump::Signals;
use crate::py::args::{bytes_arg, duration, optional_bytes, patience, seconds_to_ms, ExecutionId};
use crate::py::asyncio::spawn;
use crate::py::server::{PyServeSettings, PyServer};
use crate::py::settings::ConnectSettings;
use crate::py::types::{PyExecution, PyHeartbeatReply, PyOutcome, PyReconcileReport, PySettlement};
use crate::server::ServeSettings;
use crate::store::{Created, Labels, ListFilter};
use crate::vocabulary::Kind;

/// The Rust core of a `stigmer_handshake.Handshake`. Every method returns an awaitable.
#[pyclass(name = "Core", module = "stigmer_handshake._core", frozen)]
pub struct PyCore(Arc<Core>);

impl PyCore {
    /// The shared core, if this process may use it.
    fn core(&self) -> Result<Arc<Core>> {
        self.0.check_usable()?;
        Ok(self.0.clone())
    }
}

#[pymethods]
impl PyCore {
    /// Open the store and, when `settings.temporal` is set, connect to Temporal. `settings` is a
    /// `stigmer_handshake._settings.ConnectSettings` (see `Handshake.connect` for what each field does).
    #[staticmethod]
    fn connect(py: Python<'_>, settings: ConnectSettings) -> PyResult<Bound<'_, PyAny>> {
        let settings = Settings::try_from(settings)?;
        spawn(py, async move { Ok(PyCore(Arc::new(Core::connect(settings).await?))) })
    }

    /// Stop the background work and close the store (see `core::Core::close`); later calls raise
    /// `HandshakeClosed`. Awaitable; a second close does nothing.
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let core = self.0.clone();
        spawn(py, async move { Ok(core.close().await?) })
    }

    /// Send `api_key` to Temporal from now on (None: none), without reconnecting.
    #[pyo3(signature = (api_key))]
    fn set_api_key(&self, api_key: Option<String>) -> PyResult<()> {
        Ok(self.core()?.set_api_key(api_key)?)
    }

    /// A capability that lets its holder settle `execution_id` with one of `outcomes` for `ttl` seconds.
    #[pyo3(signature = (execution_id, outcomes, ttl))]
    fn grant(&self, execution_id: ExecutionId, outcomes: Vec<String>, ttl: f64) -> PyResult<String> {
        Ok(self.core()?.grant(&execution_id, outcomes, seconds_to_ms(ttl, "ttl")?)?)
    }

    /// Serve this handshake over the network (gRPC and HTTP on one port) from `settings`, a
    /// `stigmer_handshake.server.ServeSettings`. Awaitable; returns a `Server`.
    fn serve<'py>(&self, py: Python<'py>, settings: PyServeSettings) -> PyResult<Bound<'py, PyAny>> {
        let (core, settings) = (self.core()?, ServeSettings::try_from(settings)?);
        spawn(py, async move { Ok(PyServer(Arc::new(crate::server::serve(core, settings).await?))) })
    }

    /// A URL under `base_url` that settles `execution_id` with one of `outcomes` for `ttl` seconds, for a
    /// webhook sender that holds no key.
    #[pyo3(signature = (base_url, execution_id, outcomes, ttl))]
    fn callback_url(
        &self,
        base_url: &str,
        execution_id: ExecutionId,
        outcomes: Vec<String>,
        ttl: f64,
    ) -> PyResult<String> {
        let core = self.core()?;
        Ok(crate::server::callback_url(&core, base_url, &execution_id, outcomes, seconds_to_ms(ttl, "ttl")?)?)
    }

    /// Store a new PENDING execution; with `token`, arm its callback (or re-bind a retried parent to
    /// its child). Returns (execution id, re-bound). `heartbeat_timeout` is the parent's, in seconds;
    /// `activity_context` its serialization context (what a data converter is handed for it).
    #[pyo3(signature = (kind, spec, execution_id=None, token=None, status=None, heartbeat_timeout=None, labels=None, activity_context=None))]
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
        labels: Option<Labels>,
        activity_context: Option<Labels>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let request = CreateRequest {
            kind: Kind::parse(kind)?,
            spec: bytes_arg(spec, "spec")?,
            id: execution_id,
            token: optional_bytes(token, "token")?,
            status: optional_bytes(status, "status")?,
            heartbeat_timeout_ms: heartbeat_timeout.map(|t| seconds_to_ms(t, "heartbeat_timeout")).transpose()?,
            labels: labels.unwrap_or_default(),
            activity_context,
        };
        let core = self.core()?;
        spawn(py, async move {
            Ok(match core.create(request).await? {
                Created::New(id) => (id, false),
                Created::Rebound(id) => (id, true),
            })
        })
    }

    /// Read one execution. The status carries `callback_token` only with `include_token=True`.
    #[pyo3(signature = (execution_id, include_token=false))]
    fn get<'py>(&self, py: Python<'py>, execution_id: ExecutionId, include_token: bool) -> PyResult<Bound<'py, PyAny>> {
        let core = self.core()?;
        spawn(py, async move {
            let record = core.get(&execution_id, include_token).await?;
            Ok(Python::attach(|py| PyExecution::from_record(py, record)))
        })
    }

    /// List executions, oldest first, optionally of one kind, phase and callback state, holding all of
    /// `labels`, with `text` in the id or spec.
    /// Returns (executions, the next page's token or None), starting after `page_token`.
    #[pyo3(signature = (kind=None, phase=None, limit=100, labels=None, state=None, text=None, page_token=None))]
    #[allow(clippy::too_many_arguments)]
    fn list<'py>(
        &self,
        py: Python<'py>,
        kind: Option<&str>,
        phase: Option<&str>,
        limit: i64,
        labels: Option<Labels>,
        state: Option<String>,
        text: Option<String>,
        page_token: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let kind = kind.map(Kind::parse).transpose()?;
        let phase = phase.map(parse_phase).transpose()?;
        if page_token.as_deref() == Some("") {
            return Err(Error::InvalidArgument("page_token is empty: the first page is page_token=None".into()).into());
        }
        let filter = ListFilter { kind, phase, callback_state: state, labels: labels.unwrap_or_default(), text };
        let core = self.core()?;
        spawn(py, async move {
            let (records, next) = core.list_page(&filter, limit, page_token.as_deref().unwrap_or_default()).await?;
            let records =
                Python::attach(|py| records.into_iter().map(|r| PyExecution::from_record(py, r)).collect::<Vec<_>>());
            Ok((records, next))
        })
    }

    /// Hand up to `limit` executions of `kind` to this runner for `lease` seconds (renewed by each
    /// heartbeat): PENDING ones, and running ones whose runner stopped renewing its lease. `wait`
    /// (seconds): when there is none, wait up to that long for one.
    #[pyo3(signature = (kind, limit=1, lease=300.0, wait=None))]
    fn claim<'py>(
        &self,
        py: Python<'py>,
        kind: &str,
        limit: i64,
        lease: f64,
        wait: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let kind = Kind::parse(kind)?;
        let lease_ms = seconds_to_ms(lease, "lease")?;
        let wait = wait.map(|w| patience(w, "wait")).transpose()?;
        let core = self.core()?;
        spawn(py, async move {
            let records = core.claim(kind, limit, lease_ms, wait).await?;
            Ok(Python::attach(|py| records.into_iter().map(|r| PyExecution::from_record(py, r)).collect::<Vec<_>>()))
        })
    }

    /// Set the progress details the pump's heartbeats carry for a claimed execution (encoded `Payloads`).
    fn report_progress(&self, execution_id: ExecutionId, details: &Bound<'_, PyAny>) -> PyResult<bool> {
        Ok(self.core()?.report_progress(&execution_id, bytes_arg(details, "details")?)?)
    }

    /// This process's metrics in the Prometheus (OpenMetrics) text format, the pending gauge read from the
    /// store now. Blocks (without the GIL) for that read: call it from a thread, not the event loop.
    fn metrics_text(&self, py: Python<'_>) -> PyResult<String> {
        let core = self.core()?;
        let text = py.detach(|| crate::runtime::get().block_on(core.metrics_text()))?;
        Ok(text)
    }

    /// Whether the Temporal connection is made (false with no Temporal, or while it has not answered yet).
    fn temporal_connected(&self) -> PyResult<bool> {
        Ok(self.core()?.temporal_connected())
    }

    /// The pump's counters: (executions tracked, heartbeats sent, heartbeats failed).
    fn pump_stats(&self) -> PyResult<(usize, u64, u64)> {
        let stats = self.core()?.pump_stats();
        Ok((stats.tracked, stats.heartbeats_sent, stats.heartbeats_failed))
    }

    /// What the heartbeats last brought back for a claimed execution: (cancel_requested, paused, reset,
    /// parent_gone), or None when this process does not pump it.
    fn signals(&self, execution_id: ExecutionId) -> PyResult<Option<(bool, bool, bool, bool)>> {
        Ok(self.core()?.signals(&execution_id).map(signal_tuple))
    }

    /// Wait until the parent of a claimed execution asks for one of `kinds` ("cancel", "pause", "reset")
    /// or is gone; returns the signals then, or None if the execution stops being pumped (it settled).
    fn wait_signal<'py>(
        &self,
        py: Python<'py>,
        execution_id: ExecutionId,
        kinds: Vec<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let kinds = kinds.iter().map(|k| SignalKind::parse(k)).collect::<Result<Vec<_>>>()?;
        let core = self.core()?;
        spawn(py, async move { Ok(core.wait_signal(&execution_id, &kinds).await.map(signal_tuple)) })
    }

    /// Replace a running execution's status (progress); terminal phases go through `settle`. With
    /// `encode_summary`, returns the progress summary (JSON text) for the caller to encode and hand to
    /// `set_progress_summary`; else the core sends it as plain JSON.
    #[pyo3(signature = (execution_id, status, encode_summary=false))]
    fn update_status<'py>(
        &self,
        py: Python<'py>,
        execution_id: ExecutionId,
        status: &Bound<'py, PyAny>,
        encode_summary: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let status = bytes_arg(status, "status")?;
        let core = self.core()?;
        spawn(py, async move {
            Ok(core.update_status(&execution_id, &status, encode_summary).await?.map(|s| s.to_string()))
        })
    }

    /// Set the progress summary (encoded `Payloads`) the heartbeats carry (see `update_status`).
    fn set_progress_summary(&self, execution_id: ExecutionId, details: &Bound<'_, PyAny>) -> PyResult<()> {
        Ok(self.core()?.set_progress_summary(&execution_id, bytes_arg(details, "details")?)?)
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

    /// Deliver a dead-lettered callback again (its outcome and token were kept).
    fn redeliver<'py>(&self, py: Python<'py>, execution_id: ExecutionId) -> PyResult<Bound<'py, PyAny>> {
        let core = self.core()?;
        spawn(py, async move {
            let settled = core.redeliver(&execution_id).await?;
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
        spawn(py, async move { Ok(PyReconcileReport::from(core.reconcile().await?)) })
    }

    /// Callbacks whose outcome is recorded but not yet told to the parent (due, or being delivered).
    fn undelivered<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let core = self.core()?;
        spawn(py, async move { Ok(core.undelivered().await?) })
    }

    /// Delete the executions that ended more than `older_than` seconds ago and whose callback is final,
    /// `batch` at a time; `progress(total)` is called after each batch. Returns how many were deleted.
    #[pyo3(signature = (older_than, batch=500, progress=None))]
    fn prune<'py>(
        &self,
        py: Python<'py>,
        older_than: f64,
        batch: i64,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let older_than = duration(older_than, "older_than")?;
        let core = self.core()?;
        spawn(py, async move {
            let report = |total: u64| {
                if let Some(progress) = &progress {
                    // A progress display that fails must not stop the pruning.
                    Python::attach(|py| drop(progress.call1(py, (total,))));
                }
            };
            Ok(core.prune(older_than, batch, report).await?)
        })
    }

    /// Run reconcile passes in the background every `interval` seconds, the first at once.
    fn start_reconciler(&self, interval: f64) -> PyResult<()> {
        Ok(self.core()?.start_reconciler(duration(interval, "interval")?)?)
    }

    /// Stop the background reconciler (no-op when none runs).
    fn stop_reconciler(&self) -> PyResult<()> {
        Ok(self.0.stop_reconciler()?)
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
        let core = self.core()?;
        spawn(py, async move { Ok(core.respond(&target, &outcome).await?) })
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
        spawn(
            py,
            async move { Ok(PyHeartbeatReply::from(core.heartbeat_activity(&target, details.as_deref()).await?)) },
        )
    }
}

fn signal_tuple(s: Signals) -> (bool, bool, bool, bool) {
    (s.flags.cancel_requested, s.flags.paused, s.flags.reset, s.gone)
}
