//! The handshake as one object, in plain Rust: a store, an optional Temporal connection, and every
//! operation the caller activity, the runner and the operator use. Its faces (the Python binding in
//! `py/`) only convert arguments and results; ids, checks and defaults are decided here.

use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use crate::delivery::{self, SettleOutcome};
use crate::endpoint::{Endpoint, Tls};
use crate::errors::{Error, Result};
use crate::pump::{self, Pump, PumpStats, Signals};
use crate::reconcile::{self, ReconcileReport};
use crate::secrets::{Capabilities, Grant, Keyring};
use crate::store::{self, Created, ExecutionRecord, Labels, ListFilter, NewExecution, Overview, Store};
use crate::temporal::{HeartbeatFlags, LazyTemporal, Target, Temporal};
use crate::token::TaskToken;
use crate::vocabulary::{CallbackState, Kind, Outcome, Phase};

/// Background deliveries in flight at most (far above what re-binds start at once).
const BACKGROUND_PERMITS: u32 = 1 << 16;
/// How often a waiting `claim` looks at a SQLite store for another process's creates.
const CLAIM_POLL: Duration = Duration::from_millis(50);
/// On PostgreSQL every create notifies a waiting `claim`; this slow look is for leases that ran out.
const CLAIM_RECHECK: Duration = Duration::from_secs(5);
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
    /// Stops the background reconciler, when one runs, and its task (`close` waits for it).
    reconciler: std::sync::Mutex<Option<(tokio::sync::watch::Sender<bool>, tokio::task::JoinHandle<()>)>>,
    /// One permit per background delivery in flight: `close` takes them all, so it waits for those.
    background: Arc<tokio::sync::Semaphore>,
    closed: std::sync::atomic::AtomicBool,
    /// Heartbeats the parents of the executions this process has claimed.
    pump: Arc<Pump>,
    pump_started: std::sync::OnceLock<()>,
    /// Signs and checks settle capabilities.
    capabilities: Capabilities,
    /// Where background work (pump, reconciler, deliveries at re-bind) runs: the runtime `connect` ran on.
    runtime: tokio::runtime::Handle,
    max_result_bytes: usize,
    /// See `Settings::retention`.
    retention: Option<Duration>,
}

/// How a handshake is set up: every face fills this one struct; `Settings::default()` holds the defaults.
/// No `Debug`: it holds keys.
#[derive(Clone)]
pub struct Settings {
    /// `sqlite:///path.db`, `sqlite::memory:` or `postgres://...` (see `Store::open`).
    pub store: String,
    /// The Temporal frontend; None: store only (settles are recorded as due; another process delivers them).
    pub temporal: Option<String>,
    /// TLS to Temporal (Some: TLS even for an `http://` address); None: TLS only for `https://`.
    pub temporal_tls: Option<Tls>,
    /// Sent as `authorization: Bearer <key>`; rotated with `Core::set_api_key`.
    pub temporal_api_key: Option<String>,
    /// Extra gRPC metadata on every call to Temporal.
    pub temporal_metadata: Vec<(String, String)>,
    /// The Temporal namespaces served; the first is the default (for calls by id). Never empty.
    pub namespaces: Vec<String>,
    /// The identity Temporal records for this client's calls; None: `stigmer-handshake@<pid>`.
    pub identity: Option<String>,
    /// How often claimed executions heartbeat a parent that declared no heartbeat timeout.
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
    /// Reconcile passes delete executions that ended longer ago than this (callback delivered or gone);
    /// None keeps them forever.
    pub retention: Option<Duration>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            // In the working directory (`sqlite:///name` would be the filesystem's root).
            store: "sqlite:stigmer-handshake.db".into(),
            temporal: Some("http://127.0.0.1:7233".into()),
            temporal_tls: None,
            temporal_api_key: None,
            temporal_metadata: Vec::new(),
            namespaces: vec!["default".into()],
            identity: None,
            default_heartbeat_interval: Duration::from_secs(30),
            token_keys: Vec::new(),
            capability_keys: Vec::new(),
            // Temporal's default limit on a payload (the server refuses larger blobs).
            max_result_bytes: 2 * 1024 * 1024,
            wait_for_temporal: None,
            // Longer than Temporal keeps a closed workflow's history by default (72 h for a namespace
            // `temporal operator namespace create` makes): the parent is long gone when its record goes.
            retention: Some(Duration::from_secs(30 * 24 * 3600)),
        }
    }
}

impl Core {
    pub async fn connect(settings: Settings) -> Result<Self> {
        // Without keys tokens are stored as they are; the Python side says so once per process.
        let keyring = Keyring::new(settings.token_keys)?;
        Capabilities::check_keys(&settings.capability_keys)?;
        if settings.namespaces.is_empty() || settings.namespaces.iter().any(String::is_empty) {
            return Err(Error::InvalidArgument("namespaces must be one or more non-empty names".into()));
        }
        if settings.max_result_bytes == 0 {
            return Err(Error::InvalidArgument("max_result_bytes must be positive, not 0".into()));
        }
        let identity = settings.identity.unwrap_or_else(|| format!("stigmer-handshake@{}", std::process::id()));
        non_empty(&identity, "identity")?;
        let store = Store::open(&settings.store, keyring).await?;
        let capability_keys = match settings.capability_keys {
            keys if keys.is_empty() => vec![store.own_capability_key().to_vec()],
            keys => keys,
        };
        let capabilities = Capabilities::new(store.id(), capability_keys)?;
        let temporal = match settings.temporal {
            Some(target) => {
                let endpoint = Endpoint {
                    target,
                    tls: settings.temporal_tls,
                    api_key: settings.temporal_api_key,
                    metadata: settings.temporal_metadata,
                };
                let lazy = LazyTemporal::new(endpoint, &settings.namespaces, &identity, settings.max_result_bytes)?;
                match settings.wait_for_temporal {
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
        let pump = Arc::new(Pump::new(store.clone(), temporal.clone(), settings.default_heartbeat_interval));
        Ok(Self {
            store,
            temporal,
            pid: std::process::id(),
            reconciler: std::sync::Mutex::default(),
            background: Arc::new(tokio::sync::Semaphore::new(BACKGROUND_PERMITS as usize)),
            closed: std::sync::atomic::AtomicBool::new(false),
            pump,
            pump_started: std::sync::OnceLock::new(),
            capabilities,
            runtime: tokio::runtime::Handle::current(),
            max_result_bytes: settings.max_result_bytes,
            retention: settings.retention,
        })
    }

    /// A capability to settle `id` with `outcomes` for `ttl_ms`, for code that must not hold the token or
    /// the store.
    pub fn grant(&self, id: &str, outcomes: Vec<String>, ttl_ms: i64) -> Result<String> {
        check_execution_id(id)?;
        let expires_ms = crate::clock::now_ms().saturating_add(ttl_ms);
        self.capabilities.grant(&Grant { execution_id: id.to_owned(), outcomes, expires_ms })
    }

    /// The execution a capability is for, once its signature, store and expiry are checked (a callback
    /// URL names its execution only through its capability).
    pub fn capability_grant(&self, capability: &str) -> Result<Grant> {
        self.capabilities.open(capability, crate::clock::now_ms())
    }

    /// Sign `body` for `purpose` with the store's capability key, so that every server of this store
    /// accepts what one of them signed (console sessions).
    pub fn sign(&self, purpose: &str, body: &str) -> String {
        self.capabilities.sign(purpose, body)
    }

    /// Whether `signature` is `sign(purpose, body)`.
    pub fn signed(&self, purpose: &str, body: &str, signature: &str) -> bool {
        self.capabilities.signed(purpose, body, signature)
    }

    /// Refuse a settle of `id` with `outcome` that `capability` does not allow.
    fn check_capability(&self, id: &str, outcome: &Outcome, capability: &str) -> Result<()> {
        self.capabilities.verify(capability, id, outcome.name(), crate::clock::now_ms()).map(|_| ())
    }

    /// Refuse use after `close`, and after `fork`: the runtime's threads and the pool's connections did
    /// not come along, so a future spawned in the child would never run. Checked before anything is spawned.
    pub fn check_usable(&self) -> Result<()> {
        self.check_pid()?;
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(())
    }

    fn check_pid(&self) -> Result<()> {
        let current = std::process::id();
        if current == self.pid {
            Ok(())
        } else {
            Err(Error::Forked { created: self.pid, current })
        }
    }

    /// Stop the background work and close the store, once: the reconciler stops (a pass in flight
    /// finishes), the pump stops heartbeating, background deliveries finish, and the store's connections
    /// close (SQLite's WAL checkpointed first). Every later call is refused (`Closed`); a second `close`
    /// does nothing. Settles already recorded but not delivered stay due, for any process's reconciler.
    pub async fn close(&self) -> Result<()> {
        self.check_pid()?;
        if self.closed.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return Ok(());
        }
        let reconciler = self.reconciler.lock().map_err(|_| Error::Store("reconciler state poisoned".into()))?.take();
        if let Some((stop, task)) = reconciler {
            let _ = stop.send(true);
            let _ = task.await;
        }
        self.pump.stop();
        // Waits for the deliveries in flight; none starts after (they check `closed` first).
        let _drained = self.background.acquire_many(BACKGROUND_PERMITS).await;
        self.store.close().await;
        Ok(())
    }

    /// Results (and details) over this size are never sent (`Settings::max_result_bytes`).
    pub fn max_result_bytes(&self) -> usize {
        self.max_result_bytes
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Whether this handshake has a Temporal connection made (false while Temporal has not answered yet).
    pub fn temporal_connected(&self) -> bool {
        self.temporal.as_ref().is_some_and(|t| t.connected().is_some())
    }

    /// Heartbeat the parents of these executions from now on (those that have one, when Temporal is
    /// connected), looked up in one query.
    async fn pump_executions(&self, ids: &[String], lease: Duration) -> Result<()> {
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
                    self.runtime.spawn(pump::run(Arc::downgrade(&self.pump)));
                });
                self.pump.track(&id, token, heartbeat_timeout_ms, lease);
            }
        }
        Ok(())
    }

    /// Store a new PENDING execution (its id: the one asked for, or `<kind>-<uuid>`); with a token, arm its
    /// callback or re-bind a retried parent activity to its child. A re-bound child that had already ended
    /// has its outcome delivered to the new attempt at once, and one this process pumps is heartbeated with
    /// the new token from now on.
    pub async fn create(&self, request: CreateRequest) -> Result<Created> {
        let CreateRequest { kind, spec, id, token, status, heartbeat_timeout_ms, labels, activity_context } = request;
        check_labels(&labels)?;
        let token = token.map(|t| TaskToken::parse(&t)).transpose()?;
        let id = id.unwrap_or_else(|| format!("{}-{}", kind.as_str(), uuid::Uuid::new_v4()));
        check_execution_id(&id)?;
        // Deferring (with a token) starts the pending gap; settle and deliver spans name the same token
        // fingerprint at its other end. Going pending is the normal path, logged at INFO, never as an error.
        let span = if let Some(t) = &token {
            tracing::info_span!("defer", execution = %id, token = %t.fingerprint(), kind = kind.as_str())
        } else {
            tracing::info_span!("create", execution = %id, kind = kind.as_str())
        };
        let activity_context = activity_context.map(|c| serde_json::Value::from_iter(c).to_string());
        let new = NewExecution { id, kind, spec, status, token, heartbeat_timeout_ms, labels, activity_context };
        let created = self.store_new(new).instrument(span.clone()).await?;
        span.in_scope(|| {
            tracing::info!(rebound = matches!(created, Created::Rebound(_)), "stored; the parent activity is pending");
        });
        Ok(created)
    }

    async fn store_new(&self, new: NewExecution) -> Result<Created> {
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
            self.pump.rebind(id, token, heartbeat_timeout_ms);
            self.deliver_if_due(id);
        }
        Ok(created)
    }

    /// Deliver `id`'s callback in the background if its outcome is due (a re-bound child that had ended);
    /// if this fails, the callback stays due for the reconciler.
    fn deliver_if_due(&self, id: &str) {
        let Some(lazy) = self.temporal.clone() else { return };
        let Ok(permit) = self.background.clone().try_acquire_owned() else { return }; // closing: left due
        let (store, id) = (self.store.clone(), id.to_owned());
        self.runtime.spawn(async move {
            let _permit = permit;
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
        crate::temporal::configured(self.temporal.as_ref())
    }

    /// Read one execution; its status carries `callback_token` only with `include_token`.
    pub async fn get(&self, id: &str, include_token: bool) -> Result<ExecutionRecord> {
        self.store.get(id, include_token).await
    }

    /// Executions, oldest first, that pass `filter`, after `after` (the created time and id of the last
    /// execution of the page before).
    pub async fn list(
        &self,
        filter: &ListFilter,
        after: Option<(i64, &str)>,
        limit: i64,
    ) -> Result<Vec<ExecutionRecord>> {
        positive(limit, "limit")?;
        check_labels(&filter.labels)?;
        if let Some(state) = filter.callback_state.as_deref() {
            if state != "none" {
                CallbackState::parse(state).map_err(|_| {
                    Error::InvalidArgument(format!(
                        "a callback state is armed, due, delivering, delivered, gone, dead or none, not {state:?}"
                    ))
                })?;
            }
        }
        if filter.text.as_deref().is_some_and(|t| t.is_empty() || t.len() > 200) {
            return Err(Error::InvalidArgument("the text to find must be 1 to 200 bytes".into()));
        }
        self.store.list(filter, after, limit).await
    }

    /// One page of `list`, oldest first, starting after `page_token` (empty: the first page), and the
    /// token of the next page (None: this is the last).
    pub async fn list_page(
        &self,
        filter: &ListFilter,
        limit: i64,
        page_token: &str,
    ) -> Result<(Vec<ExecutionRecord>, Option<String>)> {
        let after = crate::paging::parse_page_token(page_token)?;
        let records = self.list(filter, after.as_ref().map(|(ms, id)| (*ms, id.as_str())), limit).await?;
        // A full page may have more after it; the next page says (and may be empty).
        let next = if i64::try_from(records.len()) == Ok(limit) {
            records.last().map(crate::paging::page_token)
        } else {
            None
        };
        Ok((records, next))
    }

    /// Counts by kind and phase, the callbacks whose delivery failed (retrying or dead-lettered, up to
    /// `troubled_limit`), and the settles per minute over the last hour.
    pub async fn overview(&self, troubled_limit: i64) -> Result<Overview> {
        positive(troubled_limit, "troubled_limit")?;
        self.store.overview(crate::clock::now_ms() - 3_600_000, troubled_limit).await
    }

    /// A marker that changes whenever any execution or callback is written (`Store::last_change`).
    pub async fn last_change(&self) -> Result<String> {
        self.store.last_change().await
    }

    /// Deliver a dead-lettered callback again (after an operator fixed what refused it): it is offered
    /// for delivery at once and, with Temporal reachable, delivered now; otherwise the reconciler does.
    pub async fn redeliver(&self, id: &str) -> Result<SettleOutcome> {
        check_execution_id(id)?;
        self.store.redeliver(id).await?;
        let temporal = match &self.temporal {
            None => return Ok(SettleOutcome::Recorded),
            Some(lazy) => match lazy.get().await {
                Ok(temporal) => temporal,
                Err(err) => return Ok(SettleOutcome::Retrying(err.to_string())),
            },
        };
        match self.store.claim_due_one(id, delivery::DELIVERY_LEASE_MS).await? {
            // A reconciler took it first: it delivers.
            None => Ok(SettleOutcome::Recorded),
            Some(claimed) => Ok(delivery::deliver(&self.store, temporal, claimed).await?.into()),
        }
    }

    /// Hand up to `limit` executions of `kind` to this runner for `lease_ms` (renewed by each heartbeat):
    /// PENDING ones, and running ones whose runner stopped renewing its lease. With `wait`, when there is
    /// none, wait up to that long for one: woken by creates (in this process; on PostgreSQL in any), and
    /// looking again every `CLAIM_POLL` (SQLite) or `CLAIM_RECHECK` (PostgreSQL: for expired leases).
    pub async fn claim(
        &self,
        kind: Kind,
        limit: i64,
        lease_ms: i64,
        wait: Option<Duration>,
    ) -> Result<Vec<ExecutionRecord>> {
        positive(limit, "limit")?;
        let far = || tokio::time::Instant::now() + Duration::from_secs(100 * 365 * 86_400); // a huge wait: "forever"
        let deadline = wait.map(|wait| tokio::time::Instant::now().checked_add(wait).unwrap_or_else(far));
        let records = loop {
            // Registered before the claim, so a create between the claim and the sleep is not missed.
            let mut created = std::pin::pin!(self.store.pending().notified());
            created.as_mut().enable();
            let records = self.store.claim(kind, limit, lease_ms).await?;
            let now = tokio::time::Instant::now();
            match deadline {
                Some(deadline) if records.is_empty() && now < deadline => {
                    let poll = if self.store.notifies_across_processes() { CLAIM_RECHECK } else { CLAIM_POLL };
                    tokio::select! {
                        () = created => {}
                        () = tokio::time::sleep(poll.min(deadline - now)) => {}
                    }
                }
                _ => break records,
            }
        };
        // From now on this process heartbeats their parents: its liveness is theirs.
        let lease = Duration::from_millis(u64::try_from(lease_ms).unwrap_or(0));
        self.pump_executions(&records.iter().map(|r| r.id.clone()).collect::<Vec<_>>(), lease).await?;
        Ok(records)
    }

    /// Replace a running execution's status (progress); terminal phases go through `settle`.
    ///
    /// Progress reported through the status rides on the next heartbeats (unless the runner set details
    /// of its own) as a summary, with the phase as stored (a status without one keeps the phase it had):
    /// encoded here as plain JSON, or with `encode_summary` returned for the caller's data converter to
    /// encode (`set_progress_summary`).
    pub async fn update_status(
        &self,
        id: &str,
        status: &[u8],
        encode_summary: bool,
    ) -> Result<Option<serde_json::Value>> {
        let (kind, phase) = self.store.update_status(id, status).await?;
        let mut summary = store::progress_json(kind, status)?;
        summary["phase"] = phase.name().into();
        if encode_summary {
            return Ok(Some(summary));
        }
        self.pump.set_progress_summary(id, crate::payload::json_payloads(&[summary]));
        Ok(None)
    }

    /// Set the progress summary (encoded `Payloads`) the pump's heartbeats carry until the runner sets
    /// details of its own (see `update_status`).
    pub fn set_progress_summary(&self, id: &str, details: Vec<u8>) -> Result<()> {
        crate::temporal::decode_payloads(Some(&details))?;
        self.pump.set_progress_summary(id, details);
        Ok(())
    }

    /// Set the progress details (encoded `Payloads`) the pump's heartbeats carry for a claimed execution;
    /// false when this process does not pump it.
    pub fn report_progress(&self, id: &str, details: Vec<u8>) -> Result<bool> {
        crate::temporal::decode_payloads(Some(&details))?;
        Ok(self.pump.set_details(id, details))
    }

    /// What the heartbeats last brought back for a claimed execution, or None when this process does not
    /// pump it.
    pub fn signals(&self, id: &str) -> Option<Signals> {
        self.pump.signals(id)
    }

    /// Wait until the parent of a claimed execution asks for one of `kinds` or is gone; returns the signals
    /// then, or None if the execution stops being pumped (it settled).
    pub async fn wait_signal(&self, id: &str, kinds: &[SignalKind]) -> Option<Signals> {
        let wanted = |s: &Signals| {
            s.gone
                || kinds.iter().any(|kind| match kind {
                    SignalKind::Cancel => s.flags.cancel_requested,
                    SignalKind::Pause => s.flags.paused,
                    SignalKind::Reset => s.flags.reset,
                })
        };
        self.pump.wait(id, wanted).await
    }

    /// The pump's counters.
    pub fn pump_stats(&self) -> PumpStats {
        self.pump.stats()
    }

    /// One reconcile pass: fail the parents of child workflows that closed without settling, and deliver
    /// every callback whose delivery did not finish (a crash, an outage).
    pub async fn reconcile(&self) -> Result<ReconcileReport> {
        reconcile::reconcile_once(&self.store, self.temporal().await?, self.retention).await
    }

    /// Callbacks whose outcome is recorded but not yet told to the parent (due, or being delivered).
    pub async fn undelivered(&self) -> Result<i64> {
        self.store.undelivered().await
    }

    /// Delete every execution that ended before `older_than` ago and whose callback is final (delivered
    /// or gone), in batches of `batch` (each one short statement), calling `progress` with the running
    /// total after each; then give the freed pages back (SQLite). Returns how many were deleted.
    pub async fn prune(&self, older_than: Duration, batch: i64, progress: impl Fn(u64)) -> Result<u64> {
        let before_ms = crate::clock::now_ms() - reconcile::retention_ms(older_than);
        let mut total = 0;
        loop {
            let deleted = self.store.prune(before_ms, batch.max(1)).await?;
            total += deleted;
            progress(total);
            if deleted < u64::try_from(batch.max(1)).unwrap_or(1) {
                break;
            }
        }
        self.store.reclaim_space().await?;
        Ok(total)
    }

    /// Run reconcile passes in the background every `interval` (at least 10 ms), the first at once.
    pub fn start_reconciler(&self, interval: Duration) -> Result<()> {
        let temporal = self.lazy_temporal()?.clone();
        let mut running = self.reconciler.lock().map_err(|_| Error::Store("reconciler state poisoned".into()))?;
        if running.is_some() {
            return Err(Error::InvalidArgument("a reconciler is already running for this handshake".into()));
        }
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let interval = interval.max(Duration::from_millis(10));
        let task = self.runtime.spawn(reconcile::run(self.store.clone(), temporal, self.retention, interval, stopped));
        *running = Some((stop, task));
        Ok(())
    }

    /// Stop the background reconciler (no-op when none runs); a pass in flight finishes first.
    pub fn stop_reconciler(&self) -> Result<()> {
        let running = self.reconciler.lock().map_err(|_| Error::Store("reconciler state poisoned".into()))?.take();
        if let Some((stop, _task)) = running {
            let _ = stop.send(true);
        }
        Ok(())
    }

    /// Send `api_key` to Temporal from now on (None: none), without reconnecting.
    pub fn set_api_key(&self, api_key: Option<String>) -> Result<()> {
        self.lazy_temporal()?.set_api_key(api_key)
    }

    /// Complete, fail or cancel an activity directly, by token or by id (no store involved).
    pub async fn respond(&self, target: &Target, outcome: &Outcome) -> Result<()> {
        crate::temporal::decode_payloads(outcome.payloads())?;
        self.temporal().await?.respond(target, outcome).await
    }

    /// Heartbeat an activity directly, by token or by id.
    pub async fn heartbeat_activity(&self, target: &Target, details: Option<&[u8]>) -> Result<HeartbeatFlags> {
        self.temporal().await?.heartbeat(target, details).await
    }
}

/// What `Core::create` stores: the caller's side of a new execution.
pub struct CreateRequest {
    pub kind: Kind,
    pub spec: Vec<u8>,
    /// None: `<kind>-<uuid>`.
    pub id: Option<String>,
    /// The parent activity's task token; None: a direct execution, settled by id alone.
    pub token: Option<Vec<u8>>,
    pub status: Option<Vec<u8>>,
    /// The parent's heartbeat timeout, which sets the pump's interval for it.
    pub heartbeat_timeout_ms: Option<i64>,
    /// `metadata.labels`: what listing filters on.
    pub labels: Labels,
    /// The parent activity's serialization context, name -> value (see `NewExecution::activity_context`).
    pub activity_context: Option<Labels>,
}

/// What a runner can wait for its parent to ask (`Core::wait_signal`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignalKind {
    Cancel,
    Pause,
    Reset,
}

impl SignalKind {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "cancel" => Ok(Self::Cancel),
            "pause" => Ok(Self::Pause),
            "reset" => Ok(Self::Reset),
            _ => Err(Error::InvalidArgument(format!("signal kinds are cancel, pause and reset, not {name:?}"))),
        }
    }
}

fn positive(n: i64, what: &str) -> Result<()> {
    if n <= 0 {
        return Err(Error::InvalidArgument(format!("{what} must be positive, not {n}")));
    }
    Ok(())
}

pub fn non_empty(text: &str, what: &str) -> Result<()> {
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
pub fn check_execution_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > MAX_ID_LEN || id.chars().any(|c| c.is_control() || is_invisible(c)) {
        return Err(Error::InvalidArgument(format!(
            "an execution id must be 1 to {MAX_ID_LEN} bytes without control or invisible characters (got {} bytes)",
            id.len()
        )));
    }
    Ok(())
}

/// Labels per execution at most, and the longest key and value: labels are for finding executions, not
/// for carrying data.
const MAX_LABELS: usize = 64;
const MAX_LABEL_KEY: usize = 128;
const MAX_LABEL_VALUE: usize = 512;

/// Refuse labels that are too many or too long, or an empty key, or keys or values with control or
/// invisible characters.
pub fn check_labels(labels: &Labels) -> Result<()> {
    if labels.len() > MAX_LABELS {
        return Err(Error::InvalidArgument(format!("at most {MAX_LABELS} labels, not {}", labels.len())));
    }
    let bad = |text: &str| text.chars().any(|c| c.is_control() || is_invisible(c));
    for (key, value) in labels {
        if key.is_empty() || key.len() > MAX_LABEL_KEY || value.len() > MAX_LABEL_VALUE || bad(key) || bad(value) {
            return Err(Error::InvalidArgument(format!(
                "a label key must be 1 to {MAX_LABEL_KEY} bytes and a value at most {MAX_LABEL_VALUE}, without \
                 control or invisible characters (key {:?})",
                key.chars().take(40).collect::<String>()
            )));
        }
    }
    Ok(())
}

/// Unicode's format characters and separators that show as nothing (or reorder the text around them).
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{AD}' | '\u{61C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
}

pub fn target_from(
    token: Option<Vec<u8>>,
    workflow_id: Option<String>,
    run_id: String,
    activity_id: Option<String>,
) -> Result<Target> {
    match (token, workflow_id, activity_id) {
        (Some(token), None, None) => Ok(Target::Token(TaskToken::parse(&token)?)),
        (None, workflow_id, Some(activity_id)) => {
            // Without a workflow id, the activity is a standalone one (started by a client).
            if let Some(workflow_id) = &workflow_id {
                non_empty(workflow_id, "workflow_id")?;
            }
            non_empty(&activity_id, "activity_id")?;
            Ok(Target::Id { workflow_id: workflow_id.unwrap_or_default(), run_id, activity_id })
        }
        _ => Err(Error::InvalidArgument(
            "name the activity either by token=..., or by activity_id=... with the workflow_id=... of the workflow \
             that scheduled it (none for a standalone activity; run_id optional)"
                .into(),
        )),
    }
}

pub fn parse_phase(name: &str) -> Result<Phase> {
    [Phase::Pending, Phase::InProgress, Phase::Completed, Phase::Failed, Phase::Cancelled]
        .into_iter()
        .find(|p| p.name() == name)
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "phase must be one of PENDING, IN_PROGRESS, COMPLETED, FAILED, CANCELLED, not {name:?}"
            ))
        })
}
