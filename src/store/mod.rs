//! Durable executions and their callbacks.
//!
//! The store is the source of truth for the handshake: the token is stored before the caller activity
//! returns "pending", the terminal status and the due callback are written in one transaction, and
//! delivery is claimed under a lease, so a process that dies between commit and RPC leaves a row that any
//! other process (or the reconciler) delivers later. SQLite is the embedded default, PostgreSQL the
//! shared one; both run the same SQL (`sql.rs`), and their files only open, migrate and differ where the
//! dialects do.

mod postgres;
mod sql;
mod sqlite;
mod status;

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::migrate::{Migrate, MigrateError, Migrator};
use sqlx::{Database, Pool, Postgres, Sqlite};
use tokio::sync::{mpsc, oneshot, Notify};

pub use sql::{Armed, SqlStore};
pub use status::{check_spec, edit_status, progress_json, temporal_workflow_id, Phase, StatusFields};

use crate::errors::{Error, Result};
use crate::secrets::Keyring;
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
    /// When the execution was stored, and last written (ms since the Unix epoch).
    pub created_ms: i64,
    pub updated_ms: i64,
    /// The execution this one retries: its parent activity was retried after that one's failure reached it.
    pub retry_of: Option<String>,
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

/// What `create` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Created {
    New(String),
    /// A retried parent activity (same workflow run and activity id, newer attempt) was bound to its
    /// existing child: the new token replaced the old one, and no second child was made. (A retry after
    /// its child's failure was delivered is `New`: it runs a new child, whose `retry_of` names the old.)
    Rebound(String),
}

/// The store, on whichever database its URL names. Cheap to clone (a pool inside).
#[derive(Clone)]
pub struct Store {
    db: Db,
    /// Woken when an execution ends: by this process's settles, and on PostgreSQL by any process's.
    settled: Arc<Notify>,
    /// Writes waiting for the writer's next transaction (see `write`).
    writes: mpsc::UnboundedSender<(WriteOp, Answer)>,
    /// This store's id and its own capability key (see migration `store_identity`).
    identity: Arc<(String, Vec<u8>)>,
}

/// A write: in a transaction of its own, or in a batch with others (see `Store::write`).
pub enum WriteOp {
    Create(NewExecution),
    Settle(SettleJob),
    Record(ClaimedCallback, DeliveryResult),
}

impl WriteOp {
    /// A delivery record that ends the callback, and so clears its token (see `SqlStore::record_all`).
    fn clears_token(&self) -> bool {
        matches!(self, WriteOp::Record(_, result) if !matches!(result, DeliveryResult::Retry { .. }))
    }

    fn execution_id(&self) -> &str {
        match self {
            WriteOp::Create(new) => &new.id,
            WriteOp::Settle(job) => &job.id,
            WriteOp::Record(claimed, _) => &claimed.execution_id,
        }
    }
}

/// A settle's arguments (see `SqlStore::settle_all`).
pub struct SettleJob {
    pub id: String,
    pub outcome: Outcome,
    pub final_status: Option<Vec<u8>>,
    pub lease_ms: i64,
}

/// What a write did.
pub enum Written {
    Created(Created),
    Settled(Box<Settled>),
    Recorded,
}

/// Where the batched writer answers a queued write, once its transaction's commit is known.
type Answer = oneshot::Sender<Result<Written>>;

/// On SQLite, a token that a write cleared is gone from the WAL this long after, at the latest (unless
/// another process holds the WAL then: the next checkpoint forgets it). One checkpoint per interval, however
/// many settles: it costs the store a fsync of the database file.
const FORGET_WITHIN: std::time::Duration = std::time::Duration::from_millis(200);

/// At most this many writes share one transaction (no more than `sql::ROWS_PER_STATEMENT`: a batch's
/// writes of one kind are one statement).
const MAX_WRITE_BATCH: usize = sql::ROWS_PER_STATEMENT;

#[derive(Clone)]
enum Db {
    Sqlite(SqlStore<Sqlite>),
    Postgres(SqlStore<Postgres>),
}

/// Run the same call on whichever backend this store has.
macro_rules! on_db {
    ($store:expr, $db:ident => $call:expr) => {
        match &$store.db {
            Db::Sqlite($db) => $call,
            Db::Postgres($db) => $call,
        }
    };
}

impl Store {
    /// Open a store from its URL: `sqlite:///abs/path.db`, `sqlite:relative.db`, `sqlite::memory:`, or
    /// `postgres://user@host:5432/db` (see `postgres.rs` for its parameters). Migrations run at once.
    /// Tokens are sealed with `keyring` at rest (stored as they are when it has no keys).
    pub async fn open(url: &str, keyring: Keyring) -> Result<Self> {
        let settled = Arc::new(Notify::new());
        let keyring = Arc::new(keyring);
        let db = if url.starts_with("sqlite:") {
            Db::Sqlite(sqlite::open(url, keyring).await?)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let store = postgres::open(url, keyring).await?;
            postgres::listen_settled(store.pool().clone(), Arc::downgrade(&settled));
            Db::Postgres(store)
        } else {
            return Err(Error::InvalidArgument(format!(
                "unsupported store URL scheme {:?}: expected sqlite:///path.db, sqlite::memory: or postgres://...",
                url.split(':').next().unwrap_or_default()
            )));
        };
        let identity = Arc::new(match &db {
            Db::Sqlite(db) => db.identity().await?,
            Db::Postgres(db) => db.identity().await?,
        });
        let (writes, queue) = mpsc::unbounded_channel();
        tokio::spawn(write_in_batches(db.clone(), queue));
        Ok(Self { db, settled, writes, identity })
    }

    /// This store's id: capabilities name it.
    pub fn id(&self) -> &str {
        &self.identity.0
    }

    /// The key this store signs capabilities with when none is configured.
    pub fn own_capability_key(&self) -> &[u8] {
        &self.identity.1
    }

    /// Which database this is: "sqlite" or "postgres".
    pub fn backend(&self) -> &'static str {
        match self.db {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    /// Notified when an execution ends. On SQLite only this process's settles notify it; waiting for
    /// another process's settle there means reading again.
    pub fn settled(&self) -> &Notify {
        &self.settled
    }

    /// Whether `settled` hears of other processes' settles (so waiters need not poll).
    pub fn notifies_across_processes(&self) -> bool {
        matches!(self.db, Db::Postgres(_))
    }

    pub async fn create(&self, new: NewExecution) -> Result<Created> {
        match self.write(WriteOp::Create(new)).await? {
            Written::Created(created) => Ok(created),
            _ => Err(Error::Store("the writer answered another write".into())),
        }
    }

    pub async fn get(&self, id: &str, include_token: bool) -> Result<ExecutionRecord> {
        on_db!(self, db => db.get(id, include_token).await)
    }

    pub async fn list(&self, kind: Option<Kind>, phase: Option<Phase>, limit: i64) -> Result<Vec<ExecutionRecord>> {
        on_db!(self, db => db.list(kind, phase, limit).await)
    }

    pub async fn claim(&self, kind: Kind, limit: i64, lease_ms: i64) -> Result<Vec<ExecutionRecord>> {
        on_db!(self, db => db.claim(kind, limit, lease_ms).await)
    }

    pub async fn renew_claims(&self, ids: &[String]) -> Result<()> {
        on_db!(self, db => db.renew_claims(ids).await)
    }

    pub async fn renew_claim(&self, id: &str) -> Result<()> {
        on_db!(self, db => db.renew_claim(id).await)
    }

    pub async fn update_status(&self, id: &str, status: &[u8]) -> Result<Kind> {
        on_db!(self, db => db.update_status(id, status).await)
    }

    pub async fn settle(
        &self,
        id: &str,
        outcome: &Outcome,
        final_status: Option<&[u8]>,
        lease_ms: i64,
    ) -> Result<Settled> {
        let job = SettleJob {
            id: id.to_owned(),
            outcome: outcome.clone(),
            final_status: final_status.map(<[u8]>::to_vec),
            lease_ms,
        };
        let Written::Settled(settled) = self.write(WriteOp::Settle(job)).await? else {
            return Err(Error::Store("the writer answered another write".into()));
        };
        let settled = *settled;
        if matches!(settled, Settled::Now { .. } | Settled::Unopened { .. }) {
            self.settled.notify_waiters();
        }
        Ok(settled)
    }

    pub async fn claim_due(&self, limit: i64, lease_ms: i64) -> Result<Vec<ClaimedCallback>> {
        on_db!(self, db => db.claim_due(limit, lease_ms).await)
    }

    pub async fn claim_due_one(&self, id: &str, lease_ms: i64) -> Result<Option<ClaimedCallback>> {
        on_db!(self, db => db.claim_due_one(id, lease_ms).await)
    }

    /// Record what delivering a claimed callback did; returns once that is committed.
    pub async fn record_delivery(&self, claimed: &ClaimedCallback, result: &DeliveryResult) -> Result<()> {
        self.write(WriteOp::Record(claimed.clone(), result.clone())).await.map(drop)
    }

    /// Make a write and return once it is committed. Writes queued while the writer commits share its
    /// next transaction (group commit): a burst costs a few statements each and one commit, not a
    /// transaction each. (On PostgreSQL, two processes' batches locking the same executions in other
    /// orders deadlock; the server aborts one, and its writes run again alone.)
    async fn write(&self, op: WriteOp) -> Result<Written> {
        let closed = || Error::Store("the store's writer has stopped".into());
        let (answer, answered) = oneshot::channel();
        self.writes.send((op, answer)).map_err(|_| closed())?;
        answered.await.map_err(|_| closed())?
    }

    pub async fn armed_children(&self, limit: i64) -> Result<Vec<(String, String)>> {
        on_db!(self, db => db.armed_children(limit).await)
    }

    pub async fn mark(&self, id: &str, edit: impl FnOnce(&mut dyn StatusFields)) -> Result<bool> {
        on_db!(self, db => db.mark(id, edit).await)
    }

    pub async fn expired_claims(&self, limit: i64) -> Result<Vec<(String, Result<TaskToken>)>> {
        on_db!(self, db => db.expired_claims(limit).await)
    }

    pub async fn pending_by_age(&self, lower_bounds_ms: &[i64]) -> Result<Vec<i64>> {
        on_db!(self, db => db.pending_by_age(lower_bounds_ms).await)
    }

    pub async fn armed_callback(&self, id: &str) -> Result<Option<(TaskToken, Option<i64>)>> {
        on_db!(self, db => db.armed_callback(id).await)
    }

    pub async fn armed_callbacks(&self, ids: &[String]) -> Result<HashMap<String, Option<Result<Armed>>>> {
        on_db!(self, db => db.armed_callbacks(ids).await)
    }
}

/// The writer: runs whatever writes are queued in one transaction, then the next batch; it ends when
/// the last `Store` clone is dropped.
async fn write_in_batches(db: Db, mut queue: mpsc::UnboundedReceiver<(WriteOp, Answer)>) {
    // SQLite: when the WAL must be checkpointed to forget tokens that writes cleared (see `FORGET_WITHIN`).
    let mut forget_at: Option<tokio::time::Instant> = None;
    loop {
        let next = match forget_at {
            Some(at) => tokio::time::timeout_at(at, queue.recv()).await.ok(),
            None => Some(queue.recv().await),
        };
        if let (Some(at), Db::Sqlite(sqlite)) = (forget_at, &db) {
            if at <= tokio::time::Instant::now() || matches!(next, Some(None)) {
                sqlite::forget_cleared_tokens(sqlite.pool()).await;
                forget_at = None;
            }
        }
        let first = match next {
            Some(Some(first)) => first,
            Some(None) => return, // every `Store` is dropped
            None => continue,     // the checkpoint's time came with nothing queued
        };
        let mut jobs = vec![first];
        while jobs.len() < MAX_WRITE_BATCH {
            let Ok(job) = queue.try_recv() else { break };
            jobs.push(job);
        }
        let (ops, answers): (Vec<WriteOp>, Vec<Answer>) = jobs.into_iter().unzip();
        let written = match &db {
            Db::Sqlite(db) => db.write_batch(&ops).await,
            Db::Postgres(db) => db.write_batch(&ops).await,
        };
        if matches!(db, Db::Sqlite(_)) && ops.iter().any(WriteOp::clears_token) {
            forget_at.get_or_insert_with(|| tokio::time::Instant::now() + FORGET_WITHIN);
        }
        for (answer, written) in answers.into_iter().zip(written) {
            let _ = answer.send(written);
        }
    }
}

/// Open a store from its URL (see [`Store::open`]), keeping tokens as they are.
pub async fn open(url: &str) -> Result<Store> {
    Store::open(url, Keyring::default()).await
}

/// Apply the migrations this version knows. A database that has one this version does not know was
/// migrated by a newer version: refuse it (its schema may mean things this code would break).
async fn migrate<DB>(migrator: &Migrator, pool: &Pool<DB>) -> Result<()>
where
    DB: Database,
    DB::Connection: Migrate,
{
    match migrator.run(pool).await {
        Ok(()) => Ok(()),
        Err(MigrateError::VersionMissing(version)) => Err(Error::SchemaMismatch(format!(
            "the store's schema has migration {version}, which this version of stigmer-handshake does not know \
             (newest known: {}): it was migrated by a newer version; upgrade this one",
            migrator.iter().map(|m| m.version).max().unwrap_or_default()
        ))),
        Err(MigrateError::VersionMismatch(version)) => Err(Error::SchemaMismatch(format!(
            "the store's migration {version} differs from this version's: the schema was changed by hand or by \
             another build"
        ))),
        Err(MigrateError::Execute(err)) => Err(err.into()),
        Err(other) => Err(Error::SchemaMismatch(format!("schema migration failed: {other}"))),
    }
}

pub(crate) fn now_ms() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}
