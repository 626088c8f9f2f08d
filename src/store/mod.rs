//! Durable executions and their callbacks.
//!
//! The store is the source of truth for the handshake: the token is stored before the caller activity
//! returns "pending", the terminal status and the due callback are written in one transaction, and
//! delivery is claimed under a lease, so a process that dies between commit and RPC leaves a row that any
//! other process (or the reconciler) delivers later. SQLite is the embedded default, PostgreSQL the
//! shared one; both run the same SQL (`sql.rs`'s queries, `writer.rs`'s batched writes), and their files
//! only open, migrate and differ where the dialects do. The store's words (kind, phase, outcome) are in
//! `vocabulary.rs`, what it takes and returns in `records.rs`.

mod postgres;
mod records;
mod sql;
mod sqlite;
mod status;
mod writer;

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::{Postgres, Sqlite};
use tokio::sync::{mpsc, oneshot, Notify};

pub use records::{
    CallbackInfo, ClaimedCallback, Created, ExecutionRecord, Labels, ListFilter, NewExecution, Overview, Settled,
    Troubled,
};
pub use sql::{Armed, SqlStore};
pub use status::{check_spec, edit_status, progress_json, temporal_workflow_id, timestamp, StatusFields};
use writer::{SettleJob, WriteOp, Written};

use crate::errors::{Error, Result};
use crate::secrets::Keyring;
use crate::token::TaskToken;
use crate::vocabulary::{DeliveryResult, Kind, Outcome, Phase};

/// The store, on whichever database its URL names. Cheap to clone (a pool inside).
#[derive(Clone)]
pub struct Store {
    db: Db,
    /// Woken when an execution ends: by this process's settles, and on PostgreSQL by any process's.
    settled: Arc<Notify>,
    /// Woken when executions are created: by this process's, and on PostgreSQL by any process's.
    pending: Arc<Notify>,
    /// Writes waiting for the writer's next transaction (see `write`).
    writes: mpsc::UnboundedSender<(WriteOp, Answer)>,
    /// This store's id and its own capability key (see migration `store_identity`).
    identity: Arc<(String, Vec<u8>)>,
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
        let (settled, pending) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let keyring = Arc::new(keyring);
        let db = if url.starts_with("sqlite:") {
            Db::Sqlite(sqlite::open(url, keyring).await?)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let store = postgres::open(url, keyring).await?;
            postgres::listen_settled(store.pool().clone(), Arc::downgrade(&settled), Arc::downgrade(&pending));
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
        Ok(Self { db, settled, pending, writes, identity })
    }

    /// Close the connections (SQLite: after checkpointing the WAL, so cleared tokens are gone from it);
    /// every later operation fails with `StoreUnavailable`.
    pub async fn close(&self) {
        match &self.db {
            Db::Sqlite(db) => {
                sqlite::forget_cleared_tokens(db.pool()).await;
                db.pool().close().await;
            }
            Db::Postgres(db) => db.pool().close().await,
        }
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

    /// Notified when executions are created. On SQLite only this process's creates notify it.
    pub fn pending(&self) -> &Notify {
        &self.pending
    }

    /// Whether `settled` and `pending` hear of other processes' writes (so waiters need not poll).
    pub fn notifies_across_processes(&self) -> bool {
        matches!(self.db, Db::Postgres(_))
    }

    pub async fn create(&self, new: NewExecution) -> Result<Created> {
        match self.write(WriteOp::Create(new)).await? {
            Written::Created(created) => {
                self.pending.notify_waiters();
                Ok(created)
            }
            _ => Err(Error::Store("the writer answered another write".into())),
        }
    }

    pub async fn get(&self, id: &str, include_token: bool) -> Result<ExecutionRecord> {
        on_db!(self, db => db.get(id, include_token).await)
    }

    pub async fn list(
        &self,
        filter: &ListFilter,
        after: Option<(i64, &str)>,
        limit: i64,
    ) -> Result<Vec<ExecutionRecord>> {
        on_db!(self, db => db.list(filter, after, limit).await)
    }

    pub async fn overview(&self, since_ms: i64, troubled_limit: i64) -> Result<Overview> {
        on_db!(self, db => db.overview(since_ms, troubled_limit).await)
    }

    pub async fn last_change(&self) -> Result<String> {
        on_db!(self, db => db.last_change().await)
    }

    pub async fn redeliver(&self, id: &str) -> Result<()> {
        on_db!(self, db => db.redeliver(id).await)
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

    pub async fn update_status(&self, id: &str, status: &[u8]) -> Result<(Kind, Phase)> {
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

    pub async fn undelivered(&self) -> Result<i64> {
        on_db!(self, db => db.undelivered().await)
    }

    /// See `SqlStore::prune`; `reclaim_space` after gives the pages freed back to the file system.
    pub async fn prune(&self, before_ms: i64, limit: i64) -> Result<u64> {
        on_db!(self, db => db.prune(before_ms, limit).await)
    }

    /// Keep SQLite's planner statistics current (`PRAGMA optimize`: cheap, and a no-op when nothing
    /// changed much) and return free pages to the file system (a store made with incremental vacuum,
    /// as every store this version creates is). PostgreSQL: nothing; its autovacuum does both.
    pub async fn reclaim_space(&self) -> Result<()> {
        if let Db::Sqlite(db) = &self.db {
            sqlx::query("PRAGMA optimize").execute(db.pool()).await?;
            sqlx::query("PRAGMA incremental_vacuum").execute(db.pool()).await?;
        }
        Ok(())
    }

    pub async fn query_plans(&self) -> Result<Vec<(String, Vec<String>)>> {
        on_db!(self, db => db.query_plans().await)
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
