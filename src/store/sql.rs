//! The store's SQL, written once for SQLite and PostgreSQL.
//!
//! Placeholders are `$N` (both drivers read them); the two places where the dialects differ (skipping rows
//! another claimer holds, and expanding a list of ids) come from [`Backend`]. Each backend's own file opens
//! the pool and runs its migrations.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::OsRng;
use sqlx::database::HasStatementCache;
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Row, Type};

use super::status::{check_spec, edit_status, edit_status_if_changed, started_at, timestamp};
use super::{
    now_ms, CallbackInfo, CallbackState, ClaimedCallback, Created, DeliveryResult, ExecutionRecord, Kind, NewExecution,
    Outcome, Phase, SettleJob, Settled, WriteOp, Written,
};
use crate::errors::{Error, Result};
use crate::proto::ai::stigmer::commons::v1::ExecutionError;
use crate::secrets::Keyring;
use crate::token::TaskToken;

const RECORD_COLUMNS: &str =
    "e.id, e.kind, e.phase, e.spec, e.status, e.created_ms, e.updated_ms, e.retry_of, e.outcome AS e_outcome, \
     e.payloads AS e_payloads, c.state, c.fingerprint, c.workflow_id, \
     c.run_id, c.activity_id, c.attempt, c.outcome, c.payloads, c.attempts, c.last_error, c.gone_reason, c.token, c.token_key_id";
/// Rows in one multi-row statement at most: with at most 12 bound values a row, far below SQLite's 32,766
/// and PostgreSQL's 65,535. The writer's batches are no larger (`MAX_WRITE_BATCH`).
pub(super) const ROWS_PER_STATEMENT: usize = 256;
/// After a token this process cannot open, wait this long before offering the callback again.
const KEY_RETRY_MS: i64 = 5_000;
const OUTCOME_COLUMNS: &str =
    "execution_id, token, token_key_id, outcome, payloads, failure_message, failure_type, non_retryable, attempts, \
     due_ms";

/// An armed callback's token and its parent's heartbeat timeout (ms), if it has one.
pub type Armed = (TaskToken, Option<i64>);

/// What differs between the SQL dialects.
pub trait Backend: Database + HasStatementCache {
    /// Ends the sub-selects that pick rows to claim. PostgreSQL: concurrent claimers skip each other's
    /// rows instead of claiming them twice. SQLite: nothing (a writer holds the whole database).
    const SKIP_LOCKED: &'static str;
    /// Ends the settle's UPDATE of the execution: tells other processes' `wait` at commit, in the same
    /// round trip (PostgreSQL's NOTIFY). SQLite: nothing; its waiters poll.
    const NOTIFY_SETTLED: &'static str;
    /// A sub-select of the ids in a JSON array of strings bound as `param`.
    fn ids_in_json(param: &str) -> String;
}

/// Executions and callbacks in one SQL database.
pub struct SqlStore<DB: Database> {
    pool: Pool<DB>,
    /// Seals tokens before they are written and opens them when read (a no-op without keys).
    keyring: Arc<Keyring>,
}

impl<DB: Database> Clone for SqlStore<DB> {
    fn clone(&self) -> Self {
        Self { pool: self.pool.clone(), keyring: self.keyring.clone() }
    }
}

impl<DB: Database> SqlStore<DB> {
    pub fn new(pool: Pool<DB>, keyring: Arc<Keyring>) -> Self {
        Self { pool, keyring }
    }

    pub fn pool(&self) -> &Pool<DB> {
        &self.pool
    }
}

impl<DB> SqlStore<DB>
where
    DB: Backend,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> i32: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> bool: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Vec<u8>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> &'q [u8]: Encode<'q, DB> + Type<DB>,
    // Nullable columns: sqlx implements Encode for Option per driver, not for every database.
    for<'q> Option<i32>: Encode<'q, DB>,
    for<'q> Option<i64>: Encode<'q, DB>,
    for<'q> Option<&'q str>: Encode<'q, DB>,
    for<'q> Option<&'q [u8]>: Encode<'q, DB>,
    for<'a> &'a str: ColumnIndex<DB::Row>,
{
    /// Store a new execution, or re-bind a retried parent activity to the child it already has.
    ///
    /// A token for the same workflow run and activity id as a stored callback, with a newer attempt, is
    /// the same logical call retried: its token replaces the old one (so the old attempt can never settle
    /// the child), and if the child already ended, its recorded outcome becomes due for the new attempt.
    ///
    /// Runs in the caller's transaction `tx` (see `write_alone`); so do `settle_all` and `record_all`.
    /// None when another attempt of the same parent activity stored its child first (PostgreSQL; SQLite's
    /// write lock orders them): in a new transaction, this one finds the winner's row and re-binds to it.
    async fn create(&self, tx: &mut DB::Connection, new: &NewExecution) -> Result<Option<Created>> {
        let status = pending_status(new)?;
        if let Some(token) = &new.token {
            // A write first, so the lookup and the swap happen under the row's (SQLite: the database's) lock.
            let existing = sqlx::query(
                "UPDATE callbacks SET lease_until_ms = lease_until_ms WHERE workflow_id = $1 AND run_id = $2 \
                 AND activity_id = $3 AND superseded_by IS NULL RETURNING execution_id, attempt, state, \
                 scheduled_event_id",
            )
            .bind(token.workflow_id.as_str())
            .bind(token.run_id.as_str())
            .bind(token.activity_id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = existing {
                let id: String = row.try_get("execution_id")?;
                let attempt: i64 = row.try_get("attempt")?;
                let state = CallbackState::parse(&row.try_get::<String, _>("state")?)?;
                let scheduled: Option<i64> = row.try_get("scheduled_event_id")?;
                if scheduled.is_some_and(|event| event != token.scheduled_event_id) {
                    // The workflow scheduled this activity id again (the first call ended): a new call, not a
                    // retry (a retry keeps its scheduled event), gets a child of its own.
                    return self.create_successor(tx, new, &id, status, false).await;
                }
                if i64::from(token.attempt) <= attempt {
                    // The same attempt deferring twice is idempotent; an older one is refused.
                    if i64::from(token.attempt) == attempt {
                        return Ok(Some(Created::Rebound(id)));
                    }
                    return Err(Error::InvalidState {
                        id,
                        phase: "bound to a newer attempt",
                        why: format!("attempt {} of the parent activity is stale", token.attempt),
                    });
                }
                if state == CallbackState::Delivered {
                    // The parent was told (a retryable failure) and retried: the retry runs a new child.
                    return self.create_successor(tx, new, &id, status, true).await;
                }
                let state = match state {
                    // The child ended and its delivery found the old attempt gone (or failed): deliver the
                    // recorded outcome to the new attempt.
                    CallbackState::Gone | CallbackState::Dead | CallbackState::Delivering => CallbackState::Due,
                    other => other,
                };
                self.swap_token(tx, &id, token, state, new.heartbeat_timeout_ms).await?;
                return Ok(Some(Created::Rebound(id)));
            }
        }
        Ok(self.insert_all(tx, &[(new, status)]).await?.then(|| Created::New(new.id.clone())))
    }

    /// Store a new child for a parent activity whose current callback, `previous`'s, answers no more: a
    /// `retry` after `previous`'s outcome was delivered (the new execution names it in `retry_of`), or a new
    /// call of the same activity id. `previous`'s callback is superseded (kept, no longer the parent's). The
    /// id is the one asked for or, when that one is taken (a caller that names its executions asks for the
    /// same id every time), `<id>-attempt-<N>` for a retry and `<id>-call-<scheduled event>` for a call.
    async fn create_successor(
        &self,
        tx: &mut DB::Connection,
        new: &NewExecution,
        previous: &str,
        status: Vec<u8>,
        retry: bool,
    ) -> Result<Option<Created>> {
        let id_taken = sqlx::query("SELECT id FROM executions WHERE id = $1")
            .bind(new.id.as_str())
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        let id = match (id_taken, &new.token) {
            (true, Some(token)) if retry => format!("{}-attempt-{}", new.id, token.attempt),
            (true, Some(token)) => format!("{}-call-{}", new.id, token.scheduled_event_id),
            _ => new.id.clone(),
        };
        sqlx::query("UPDATE callbacks SET superseded_by = $1 WHERE execution_id = $2")
            .bind(id.as_str())
            .bind(previous)
            .execute(&mut *tx)
            .await?;
        let successor = NewExecution { id: id.clone(), ..new.clone() };
        if !self.insert_all(tx, &[(&successor, status)]).await? {
            return Ok(None);
        }
        if retry {
            sqlx::query("UPDATE executions SET retry_of = $1 WHERE id = $2")
                .bind(previous)
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
        }
        Ok(Some(Created::New(id)))
    }

    /// Store new executions (see `create`). A burst takes three statements in all: look for parents that
    /// already have a child, insert the executions, insert their callbacks. When a parent among them
    /// already has one (a retried parent activity, rare) or an id or a parent repeats, they go one at a
    /// time through `create`. None as for `create`.
    async fn create_all(&self, tx: &mut DB::Connection, news: &[&NewExecution]) -> Result<Option<Vec<Created>>> {
        let parents: Vec<&TaskToken> = news.iter().filter_map(|new| new.token.as_ref()).collect();
        let together = news.len() > 1
            && all_distinct(news.iter().map(|new| new.id.as_str()))
            && all_distinct(
                parents.iter().map(|t| (t.workflow_id.as_str(), t.run_id.as_str(), t.activity_id.as_str())),
            )
            && !Self::any_bound(tx, &parents).await?;
        if !together {
            let mut created = Vec::with_capacity(news.len());
            for new in news {
                let Some(one) = self.create(tx, new).await? else { return Ok(None) };
                created.push(one);
            }
            return Ok(Some(created));
        }
        let rows = news.iter().map(|new| Ok((*new, pending_status(new)?))).collect::<Result<Vec<_>>>()?;
        if !self.insert_all(tx, &rows).await? {
            return Ok(None);
        }
        Ok(Some(news.iter().map(|new| Created::New(new.id.clone())).collect()))
    }

    /// Whether any of these parents already has a child, locking its callback (see `create`).
    async fn any_bound(tx: &mut DB::Connection, parents: &[&TaskToken]) -> Result<bool> {
        if parents.is_empty() {
            return Ok(false);
        }
        let sql = format!(
            "UPDATE callbacks SET lease_until_ms = lease_until_ms WHERE superseded_by IS NULL AND \
             (workflow_id, run_id, activity_id) IN (VALUES {}) RETURNING execution_id",
            values(parents.len(), 3, 1)
        );
        let mut query = sqlx::query(&sql).persistent(false);
        for token in parents {
            query = query.bind(token.workflow_id.as_str()).bind(token.run_id.as_str()).bind(token.activity_id.as_str());
        }
        Ok(!query.fetch_all(&mut *tx).await?.is_empty())
    }

    /// Insert new executions, each with its PENDING status, and the armed callbacks of those with a token.
    /// False when another attempt of one of their parents stored its child first (roll back, try again).
    async fn insert_all(&self, tx: &mut DB::Connection, rows: &[(&NewExecution, Vec<u8>)]) -> Result<bool> {
        let now = now_ms();
        let sql = format!(
            "INSERT INTO executions (id, kind, phase, spec, status, created_ms, updated_ms) VALUES {}",
            values(rows.len(), 7, 1)
        );
        let mut query = sqlx::query(&sql).persistent(rows.len() == 1);
        for (new, status) in rows {
            query = query
                .bind(new.id.as_str())
                .bind(new.kind.as_str())
                .bind(Phase::Pending.to_proto())
                .bind(new.spec.as_slice())
                .bind(status.as_slice())
                .bind(now)
                .bind(now);
        }
        let inserted = query.execute(&mut *tx).await;
        // One execution: say which id is taken. Several: the batch runs again one by one, which says it.
        if let (Err(sqlx::Error::Database(db)), [(new, _)]) = (&inserted, rows) {
            if db.is_unique_violation() {
                return Err(Error::InvalidState {
                    id: new.id.clone(),
                    phase: "already stored",
                    why: "execution ids are unique".into(),
                });
            }
        }
        inserted?;
        let armed: Vec<(&NewExecution, &TaskToken)> =
            rows.iter().filter_map(|(new, _)| new.token.as_ref().map(|token| (*new, token))).collect();
        if armed.is_empty() {
            return Ok(true);
        }
        let sealed = armed
            .iter()
            .map(|(new, token)| self.keyring.seal(&new.id, token.secret_bytes()))
            .collect::<Result<Vec<_>>>()?;
        let sql = format!(
            "INSERT INTO callbacks (execution_id, token, fingerprint, workflow_id, run_id, activity_id, attempt, \
             state, created_ms, heartbeat_timeout_ms, token_key_id, scheduled_event_id) VALUES {}",
            values(armed.len(), 12, 1)
        );
        let mut query = sqlx::query(&sql).persistent(armed.len() == 1);
        for ((new, token), (sealed, key_id)) in armed.iter().zip(&sealed) {
            query = query
                .bind(new.id.as_str())
                .bind(sealed.as_slice())
                .bind(token.fingerprint())
                .bind(token.workflow_id.as_str())
                .bind(token.run_id.as_str())
                .bind(token.activity_id.as_str())
                .bind(i64::from(token.attempt))
                .bind(CallbackState::Armed.as_str())
                .bind(now)
                .bind(new.heartbeat_timeout_ms)
                .bind(key_id.as_deref())
                .bind(token.scheduled_event_id);
        }
        let inserted = query.execute(&mut *tx).await;
        if let Err(sqlx::Error::Database(db)) = &inserted {
            if db.is_unique_violation() {
                return Ok(false);
            }
        }
        inserted?;
        Ok(true)
    }

    /// Re-bind execution `id`'s callback to a newer attempt's token.
    async fn swap_token(
        &self,
        tx: &mut DB::Connection,
        id: &str,
        token: &TaskToken,
        state: CallbackState,
        heartbeat_timeout_ms: Option<i64>,
    ) -> Result<()> {
        let (sealed, key_id) = self.keyring.seal(id, token.secret_bytes())?;
        sqlx::query(
            "UPDATE callbacks SET token = $1, fingerprint = $2, attempt = $3, state = $4, gone_reason = NULL, \
             settled_ms = NULL, lease_until_ms = 0, next_attempt_ms = 0, heartbeat_timeout_ms = $5, \
             token_key_id = $7 WHERE execution_id = $6",
        )
        .bind(sealed)
        .bind(token.fingerprint())
        .bind(i64::from(token.attempt))
        .bind(state.as_str())
        .bind(heartbeat_timeout_ms)
        .bind(id)
        .bind(key_id.as_deref())
        .execute(&mut *tx)
        .await?;
        Ok(())
    }

    pub async fn get(&self, id: &str, include_token: bool) -> Result<ExecutionRecord> {
        let sql = format!(
            "SELECT {RECORD_COLUMNS} FROM executions e LEFT JOIN callbacks c ON c.execution_id = e.id WHERE e.id = $1"
        );
        let row = sqlx::query(&sql).bind(id).fetch_optional(&self.pool).await?;
        let row = row.ok_or_else(|| Error::ExecutionNotFound(id.to_owned()))?;
        Self::record_from_row(&row, include_token.then_some(self.keyring.as_ref()))
    }

    pub async fn list(&self, kind: Option<Kind>, phase: Option<Phase>, limit: i64) -> Result<Vec<ExecutionRecord>> {
        let sql = format!(
            "SELECT {RECORD_COLUMNS} FROM executions e LEFT JOIN callbacks c ON c.execution_id = e.id \
             WHERE ($1 IS NULL OR e.kind = $1) AND ($2 IS NULL OR e.phase = $2) ORDER BY e.created_ms, e.id LIMIT $3"
        );
        let rows = sqlx::query(&sql)
            .bind(kind.map(Kind::as_str))
            .bind(phase.map(Phase::to_proto))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|row| Self::record_from_row(row, None)).collect()
    }

    /// Hand up to `limit` executions of `kind` to a runner for `lease_ms`: PENDING ones, and IN_PROGRESS
    /// ones whose runner's lease ran out (it died). Concurrent claimers never get the same execution. The
    /// runner keeps its lease by heartbeating.
    pub async fn claim(&self, kind: Kind, limit: i64, lease_ms: i64) -> Result<Vec<ExecutionRecord>> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let sql = format!(
            "UPDATE executions SET updated_ms = $1, claim_until_ms = $1 + $2, claim_lease_ms = $2 WHERE id IN \
             (SELECT id FROM executions WHERE kind = $3 AND (phase = $4 OR (phase = $5 AND claim_until_ms < $1)) \
             ORDER BY created_ms, id LIMIT $6{}) RETURNING id, phase, status",
            DB::SKIP_LOCKED
        );
        let rows = sqlx::query(&sql)
            .bind(now)
            .bind(lease_ms)
            .bind(kind.as_str())
            .bind(Phase::Pending.to_proto())
            .bind(Phase::InProgress.to_proto())
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
        // The PENDING ones start now: IN_PROGRESS, with their start time, in one statement.
        let mut ids = Vec::with_capacity(rows.len());
        let mut starting = Vec::new();
        for row in rows {
            let id: String = row.try_get("id")?;
            if Phase::from_proto(row.try_get("phase")?) == Phase::Pending {
                let status = edit_status(kind, &row.try_get::<Vec<u8>, _>("status")?, |s| {
                    s.set_phase(Phase::InProgress);
                    s.mark_started(timestamp(now));
                })?;
                starting.push((id.clone(), status));
            }
            ids.push(id);
        }
        // A claim has no upper limit; a statement has one on its bound values.
        for chunk in starting.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "UPDATE executions SET phase = $1, status = v.column2 FROM (VALUES {}) AS v WHERE executions.id = v.column1",
                values(chunk.len(), 2, 2)
            );
            let mut query = sqlx::query(&sql).persistent(chunk.len() == 1).bind(Phase::InProgress.to_proto());
            for (id, status) in chunk {
                query = query.bind(id.as_str()).bind(status.as_slice());
            }
            query.execute(&mut *tx).await?;
        }
        let claimed = Self::records(&mut tx, &ids).await?;
        tx.commit().await?;
        Ok(claimed)
    }

    /// The executions with these ids, oldest first (without tokens).
    async fn records(tx: &mut DB::Connection, ids: &[String]) -> Result<Vec<ExecutionRecord>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {RECORD_COLUMNS} FROM executions e LEFT JOIN callbacks c ON c.execution_id = e.id \
             WHERE e.id IN ({}) ORDER BY e.created_ms, e.id",
            DB::ids_in_json("$1")
        );
        let rows = sqlx::query(&sql).bind(json_ids(ids)?).fetch_all(&mut *tx).await?;
        rows.iter().map(|row| Self::record_from_row(row, None)).collect()
    }

    /// Extend a runner's leases on running executions, all in one statement.
    pub async fn renew_claims(&self, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "UPDATE executions SET claim_until_ms = $1 + claim_lease_ms WHERE phase = $2 AND id IN ({})",
            DB::ids_in_json("$3")
        );
        let ids = json_ids(ids)?;
        sqlx::query(&sql).bind(now_ms()).bind(Phase::InProgress.to_proto()).bind(ids).execute(&self.pool).await?;
        Ok(())
    }

    /// Extend a runner's lease on a running execution (by the lease it claimed with).
    pub async fn renew_claim(&self, id: &str) -> Result<()> {
        sqlx::query("UPDATE executions SET claim_until_ms = $1 + claim_lease_ms WHERE id = $2 AND phase = $3")
            .bind(now_ms())
            .bind(id)
            .bind(Phase::InProgress.to_proto())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Replace a running execution's status (progress). A terminal phase is refused: it is reached only
    /// through `settle`, which also records the callback.
    pub async fn update_status(&self, id: &str, status: &[u8]) -> Result<Kind> {
        let mut tx = self.pool.begin().await?;
        let (kind, phase, current) = Self::touch(&mut tx, id).await?;
        if phase.is_terminal() {
            return Err(Error::InvalidState {
                id: id.to_owned(),
                phase: phase.name(),
                why: "its status is final".into(),
            });
        }
        let mut new_phase = phase;
        // The runner sends its whole status; the start time the handshake recorded is kept.
        let started = started_at(kind, &current)?;
        let blob = edit_status(kind, status, |s| {
            if s.phase() == Phase::Unspecified {
                s.set_phase(phase);
            }
            if let Some(at) = started {
                s.mark_started(at);
            }
            new_phase = s.phase();
        })?;
        if new_phase.is_terminal() {
            return Err(Error::InvalidArgument(format!(
                "update_status cannot set the terminal phase {}: end an execution with succeed, fail or cancel, \
                 which also settles its callback",
                new_phase.name()
            )));
        }
        if phase == Phase::InProgress && new_phase == Phase::Pending {
            // PENDING is what `claim` hands out: a second runner would take it while this one's lease lives.
            return Err(Error::InvalidArgument(
                "update_status cannot move a running execution back to PENDING (another runner would claim it)".into(),
            ));
        }
        sqlx::query("UPDATE executions SET phase = $1, status = $2, updated_ms = $3 WHERE id = $4")
            .bind(new_phase.to_proto())
            .bind(blob)
            .bind(now_ms())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(kind)
    }

    /// End executions: terminal status and due callback, in the caller's transaction.
    ///
    /// With `lease_ms > 0` a callback is claimed for the caller to deliver at once; if the caller dies,
    /// the lease runs out and `claim_due` hands it to someone else. However many jobs there are, this is
    /// three statements (lock and read, end the executions, arm the callbacks for delivery): a burst of
    /// settles costs about what one does. A repeated execution's second job runs in a second round, which
    /// finds the first's end.
    async fn settle_all(&self, tx: &mut DB::Connection, jobs: &[&SettleJob]) -> Result<Vec<Settled>> {
        let mut settled: Vec<Option<Settled>> = jobs.iter().map(|_| None).collect();
        for round in rounds(jobs.iter().map(|job| job.id.as_str())) {
            let these: Vec<&SettleJob> = round.iter().map(|&i| jobs[i]).collect();
            for (i, one) in round.into_iter().zip(self.settle_distinct(tx, &these).await?) {
                settled[i] = Some(one);
            }
        }
        Ok(settled.into_iter().map(|s| s.expect("every job settled")).collect())
    }

    /// `settle_all` for jobs of distinct executions.
    async fn settle_distinct(&self, tx: &mut DB::Connection, jobs: &[&SettleJob]) -> Result<Vec<Settled>> {
        let now = now_ms();
        let ids: Vec<&str> = jobs.iter().map(|job| job.id.as_str()).collect();
        let mut current = Self::touch_all(tx, &ids).await?;
        let mut settled: Vec<Option<Settled>> = Vec::with_capacity(jobs.len());
        // (index, job, kind, final status) of the executions that end now.
        let mut ending = Vec::with_capacity(jobs.len());
        for (i, job) in jobs.iter().enumerate() {
            let (kind, phase, status) =
                current.remove(job.id.as_str()).ok_or_else(|| Error::ExecutionNotFound(job.id.clone()))?;
            if phase.is_terminal() {
                let callback = Self::callback(tx, &job.id).await?;
                let outcome = match &callback {
                    Some(callback) => callback.outcome.clone(),
                    None => Self::direct_outcome(tx, &job.id).await?,
                };
                settled.push(Some(Settled::Already { outcome, callback, kind }));
            } else {
                ending.push((i, *job, kind, Self::final_status(kind, &status, job, now)?));
                settled.push(None);
            }
        }
        if !ending.is_empty() {
            let mut stored = self.end_all(tx, &ending, now).await?;
            let direct: Vec<&SettleJob> =
                ending.iter().map(|(_, job, _, _)| *job).filter(|job| !stored.contains_key(job.id.as_str())).collect();
            Self::keep_direct_outcomes(tx, &direct).await?;
            for (i, job, kind, _) in &ending {
                settled[*i] = Some(self.settled_now(tx, job, *kind, stored.remove(job.id.as_str()), now).await?);
            }
        }
        Ok(settled.into_iter().map(|s| s.expect("every job settled")).collect())
    }

    /// An ending execution's terminal status: the runner's final status if it sent one (else the stored
    /// one), with the outcome's phase, the recorded start time kept, and the end time.
    fn final_status(kind: Kind, stored: &[u8], job: &SettleJob, now: i64) -> Result<Vec<u8>> {
        let started = match &job.final_status {
            Some(_) => started_at(kind, stored)?,
            None => None,
        };
        edit_status(kind, job.final_status.as_deref().unwrap_or(stored), |s| {
            s.set_phase(job.outcome.phase());
            s.mark_started(started.unwrap_or_else(|| timestamp(now)));
            s.mark_completed(timestamp(now));
            if let Outcome::Fail { message, failure_type, non_retryable, .. } = &job.outcome {
                s.set_error(Some(ExecutionError {
                    message: message.clone(),
                    r#type: failure_type.clone(),
                    non_retryable: *non_retryable,
                }));
            }
        })
    }

    /// Write the ending executions' terminal statuses and record their outcomes on their armed callbacks.
    /// Returns each armed callback's sealed token and key id, by execution id.
    async fn end_all(
        &self,
        tx: &mut DB::Connection,
        ending: &[(usize, &SettleJob, Kind, Vec<u8>)],
        now: i64,
    ) -> Result<HashMap<String, (Vec<u8>, Option<String>)>> {
        let sql = format!(
            "UPDATE executions SET phase = v.column2, status = v.column3, updated_ms = $1 FROM (VALUES {}) AS v \
             WHERE executions.id = v.column1{}",
            values(ending.len(), 3, 2),
            DB::NOTIFY_SETTLED
        );
        let mut query = sqlx::query(&sql).persistent(ending.len() == 1).bind(now);
        for (_, job, _, status) in ending {
            query = query.bind(job.id.as_str()).bind(job.outcome.phase().to_proto()).bind(status.as_slice());
        }
        query.execute(&mut *tx).await?;
        let sql = format!(
            "UPDATE callbacks SET state = v.column2, outcome = v.column3, payloads = v.column4, \
             failure_message = v.column5, failure_type = v.column6, non_retryable = v.column7, \
             lease_until_ms = v.column8, due_ms = $1 FROM (VALUES {}) AS v \
             WHERE callbacks.execution_id = v.column1 AND callbacks.state = 'armed' \
             RETURNING callbacks.execution_id, callbacks.token, callbacks.token_key_id",
            values(ending.len(), 8, 2)
        );
        let mut query = sqlx::query(&sql).persistent(ending.len() == 1).bind(now);
        for (_, job, _, _) in ending {
            let payloads = job.outcome.payloads();
            let (message, failure_type, non_retryable) = match &job.outcome {
                Outcome::Fail { message, failure_type, non_retryable, .. } => {
                    (Some(message.as_str()), Some(failure_type.as_str()), *non_retryable)
                }
                Outcome::Complete { .. } | Outcome::Cancel { .. } => (None, None, false),
            };
            let (state, lease_until_ms) = if job.lease_ms > 0 {
                (CallbackState::Delivering, now + job.lease_ms)
            } else {
                (CallbackState::Due, 0)
            };
            query = query
                .bind(job.id.as_str())
                .bind(state.as_str())
                .bind(job.outcome.name())
                .bind(payloads)
                .bind(message)
                .bind(failure_type)
                .bind(non_retryable)
                .bind(lease_until_ms);
        }
        let mut stored = HashMap::with_capacity(ending.len());
        for row in query.fetch_all(&mut *tx).await? {
            if let Some(token) = row.try_get::<Option<Vec<u8>>, _>("token")? {
                stored.insert(row.try_get("execution_id")?, (token, row.try_get("token_key_id")?));
            }
        }
        Ok(stored)
    }

    /// Record how direct executions (no callback to hold it) ended, and their results, in one statement.
    async fn keep_direct_outcomes(tx: &mut DB::Connection, jobs: &[&SettleJob]) -> Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "UPDATE executions SET outcome = v.column2, payloads = v.column3 FROM (VALUES {}) AS v \
             WHERE executions.id = v.column1",
            values(jobs.len(), 3, 1)
        );
        let mut query = sqlx::query(&sql).persistent(jobs.len() == 1);
        for job in jobs {
            query = query.bind(job.id.as_str()).bind(job.outcome.name()).bind(job.outcome.payloads());
        }
        query.execute(&mut *tx).await?;
        Ok(())
    }

    /// How a direct execution ended (see `keep_direct_outcomes`).
    async fn direct_outcome(tx: &mut DB::Connection, id: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT outcome FROM executions WHERE id = $1").bind(id).fetch_optional(&mut *tx).await?;
        Ok(row.map(|row| row.try_get("outcome")).transpose()?.flatten())
    }

    /// What ending `job` did, given its armed callback's sealed token (None: it had none).
    async fn settled_now(
        &self,
        tx: &mut DB::Connection,
        job: &SettleJob,
        kind: Kind,
        stored: Option<(Vec<u8>, Option<String>)>,
        now: i64,
    ) -> Result<Settled> {
        let has_callback = stored.is_some();
        let Some((sealed, key_id)) = stored.filter(|_| job.lease_ms > 0) else {
            return Ok(Settled::Now { claimed: None, has_callback, kind });
        };
        let token = match self.keyring.open(&job.id, &sealed, key_id.as_deref()) {
            Ok(token) => token,
            Err(error) => {
                // The outcome is recorded; the callback stays due for a process that has the key.
                sqlx::query(
                    "UPDATE callbacks SET state = 'due', lease_until_ms = 0, last_error = $1 WHERE execution_id = $2",
                )
                .bind(error.to_string())
                .bind(job.id.as_str())
                .execute(&mut *tx)
                .await?;
                return Ok(Settled::Unopened { error, kind });
            }
        };
        let claimed = ClaimedCallback {
            execution_id: job.id.clone(),
            token: TaskToken::parse(&token)?,
            outcome: job.outcome.clone(),
            attempts: 0,
            due_ms: now,
        };
        Ok(Settled::Now { claimed: Some(claimed), has_callback, kind })
    }

    /// Claim due callbacks (whose backoff has passed) and ones whose delivery lease ran out. Several
    /// reconcilers share the work: each row goes to one of them.
    pub async fn claim_due(&self, limit: i64, lease_ms: i64) -> Result<Vec<ClaimedCallback>> {
        let now = now_ms();
        let sql = format!(
            "UPDATE callbacks SET state = 'delivering', lease_until_ms = $1 WHERE execution_id IN \
             (SELECT execution_id FROM callbacks WHERE (state = 'due' AND next_attempt_ms <= $2) \
             OR (state = 'delivering' AND lease_until_ms < $2) ORDER BY due_ms LIMIT $3{}) RETURNING {OUTCOME_COLUMNS}",
            DB::SKIP_LOCKED
        );
        let rows = sqlx::query(&sql).bind(now + lease_ms).bind(now).bind(limit).fetch_all(&self.pool).await?;
        self.opened(&rows, now).await
    }

    /// Claim `id`'s callback for delivery if its outcome is due, whatever its backoff (a re-bind made it
    /// due for a new attempt, which waits for it now).
    pub async fn claim_due_one(&self, id: &str, lease_ms: i64) -> Result<Option<ClaimedCallback>> {
        let now = now_ms();
        let sql = format!(
            "UPDATE callbacks SET state = 'delivering', lease_until_ms = $1 WHERE execution_id = $2 AND state = 'due' \
             RETURNING {OUTCOME_COLUMNS}"
        );
        let rows = sqlx::query(&sql).bind(now + lease_ms).bind(id).fetch_all(&self.pool).await?;
        Ok(self.opened(&rows, now).await?.pop())
    }

    /// The callbacks in claimed rows, with their tokens opened; one this process cannot open (another key)
    /// goes back to due, for a process that can.
    async fn opened(&self, rows: &[DB::Row], now: i64) -> Result<Vec<ClaimedCallback>> {
        let mut claimed = Vec::with_capacity(rows.len());
        for row in rows {
            match Self::claimed_from_row(row, &self.keyring) {
                Ok(callback) => claimed.push(callback),
                // A token this process cannot open (another key): back to due, for one that can.
                Err(Error::TokenKey(why)) => {
                    sqlx::query(
                        "UPDATE callbacks SET state = 'due', lease_until_ms = 0, next_attempt_ms = $1, last_error = $2 \
                         WHERE execution_id = $3",
                    )
                    .bind(now + KEY_RETRY_MS)
                    .bind(why)
                    .bind(row.try_get::<String, _>("execution_id")?)
                    .execute(&self.pool)
                    .await?;
                }
                Err(other) => return Err(other),
            }
        }
        Ok(claimed)
    }

    /// Record what delivering claimed callbacks did, in one statement. A callback that reached its end
    /// (delivered, gone, dead) has its token cleared. Only the claim that sent a token can record: if the
    /// callback was re-bound to a newer attempt meanwhile, the stale result is dropped. A repeated
    /// callback's second record runs in a second round (the first one's claim wins).
    async fn record_all(tx: &mut DB::Connection, records: &[(&ClaimedCallback, &DeliveryResult)]) -> Result<()> {
        for round in rounds(records.iter().map(|(claimed, _)| claimed.execution_id.as_str())) {
            let these: Vec<(&ClaimedCallback, &DeliveryResult)> = round.iter().map(|&i| records[i]).collect();
            Self::record_distinct(tx, &these).await?;
        }
        Ok(())
    }

    /// `record_all` for callbacks of distinct executions.
    async fn record_distinct(tx: &mut DB::Connection, records: &[(&ClaimedCallback, &DeliveryResult)]) -> Result<()> {
        let now = now_ms();
        let sql = format!(
            "UPDATE callbacks SET state = v.column2, settled_ms = CASE WHEN v.column3 THEN $1 END, \
             token = CASE WHEN v.column3 THEN NULL ELSE token END, \
             token_key_id = CASE WHEN v.column3 THEN NULL ELSE token_key_id END, attempts = attempts + 1, \
             last_error = v.column4, gone_reason = v.column5, next_attempt_ms = v.column6, lease_until_ms = 0 \
             FROM (VALUES {}) AS v \
             WHERE callbacks.execution_id = v.column1 AND callbacks.state = 'delivering' \
             AND callbacks.fingerprint = v.column7",
            values(records.len(), 7, 2)
        );
        let mut query = sqlx::query(&sql).persistent(records.len() == 1).bind(now);
        for (claimed, result) in records {
            let (state, last_error, gone_reason, next_attempt_ms) = match result {
                DeliveryResult::Delivered => (CallbackState::Delivered, None, None, 0),
                DeliveryResult::Gone(reason, message) => {
                    (CallbackState::Gone, Some(message.as_str()), Some(reason.as_str()), 0)
                }
                DeliveryResult::Retry { error, retry_in_ms } => {
                    (CallbackState::Due, Some(error.as_str()), None, now + retry_in_ms)
                }
                DeliveryResult::Dead(error) => (CallbackState::Dead, Some(error.as_str()), None, 0),
            };
            query = query
                .bind(claimed.execution_id.as_str())
                .bind(state.as_str())
                .bind(state != CallbackState::Due)
                .bind(last_error)
                .bind(gone_reason)
                .bind(next_attempt_ms)
                .bind(claimed.token.fingerprint());
        }
        query.execute(&mut *tx).await?;
        Ok(())
    }

    /// Run queued writes in one transaction, so that a burst of writes costs one commit (group commit),
    /// and answer each once that commit is known. If any of them fails, the transaction is rolled back
    /// and each runs again alone: one bad write never undoes or fails the others.
    pub async fn write_batch(&self, ops: &[WriteOp]) -> Vec<Result<Written>> {
        if ops.len() > 1 {
            if let Ok(written) = self.write_together(ops).await {
                return written.into_iter().map(Ok).collect();
            }
        }
        let mut written = Vec::with_capacity(ops.len());
        for op in ops {
            written.push(self.write_alone(op).await);
        }
        written
    }

    async fn write_together(&self, ops: &[WriteOp]) -> Result<Vec<Written>> {
        let mut tx = self.pool.begin().await?;
        let ops: Vec<&WriteOp> = ops.iter().collect();
        // A lost race (None) is retried alone, in a transaction that sees the winner.
        let written =
            self.write(&mut tx, &ops).await?.ok_or_else(|| Error::Store("a concurrent writer won a race".into()))?;
        tx.commit().await?;
        Ok(written)
    }

    /// Run one write in a transaction of its own (a second one if it lost a race to another writer).
    async fn write_alone(&self, op: &WriteOp) -> Result<Written> {
        for _ in 0..2 {
            let mut tx = self.pool.begin().await?;
            if let Some(mut written) = self.write(&mut tx, &[op]).await? {
                tx.commit().await?;
                return Ok(written.remove(0));
            }
        }
        Err(Error::Store(format!("execution {:?}: another writer changed it twice meanwhile", op.execution_id())))
    }

    /// Writes in the caller's transaction, answered in their order; None when a create lost a race (roll
    /// back and try again). Creates run first, then settles, then delivery records, the order in which
    /// they can depend on each other; each kind takes a few statements in all.
    async fn write(&self, tx: &mut DB::Connection, ops: &[&WriteOp]) -> Result<Option<Vec<Written>>> {
        let mut written: Vec<Option<Written>> = ops.iter().map(|_| None).collect();
        let (mut to_create, mut to_settle, mut to_record) = (Vec::new(), Vec::new(), Vec::new());
        for (i, op) in ops.iter().enumerate() {
            match op {
                WriteOp::Create(new) => to_create.push((i, new)),
                WriteOp::Settle(job) => to_settle.push((i, job)),
                WriteOp::Record(claimed, result) => to_record.push((i, (claimed, result))),
            }
        }
        let news: Vec<&NewExecution> = to_create.iter().map(|(_, new)| *new).collect();
        let Some(created) = self.create_all(tx, &news).await? else { return Ok(None) };
        for ((i, _), one) in to_create.iter().zip(created) {
            written[*i] = Some(Written::Created(one));
        }
        let jobs: Vec<&SettleJob> = to_settle.iter().map(|(_, job)| *job).collect();
        for ((i, _), one) in to_settle.iter().zip(self.settle_all(tx, &jobs).await?) {
            written[*i] = Some(Written::Settled(Box::new(one)));
        }
        let records: Vec<(&ClaimedCallback, &DeliveryResult)> = to_record.iter().map(|(_, r)| *r).collect();
        Self::record_all(tx, &records).await?;
        for (i, _) in &to_record {
            written[*i] = Some(Written::Recorded);
        }
        Ok(Some(written.into_iter().map(|w| w.expect("every write answered")).collect()))
    }

    /// This store's identity, made by the first process to open it: (id, its own capability key).
    pub async fn identity(&self) -> Result<(String, Vec<u8>)> {
        let (mut id, mut key) = ([0u8; 16], vec![0u8; 32]);
        OsRng.fill_bytes(&mut id);
        OsRng.fill_bytes(&mut key);
        // Two processes opening a new store at once: the first insert wins, both read it back.
        sqlx::query(
            "INSERT INTO store_identity (singleton, id, capability_key) VALUES (1, $1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(hex::encode(id))
        .bind(key)
        .execute(&self.pool)
        .await?;
        let row = sqlx::query("SELECT id, capability_key FROM store_identity").fetch_one(&self.pool).await?;
        Ok((row.try_get("id")?, row.try_get("capability_key")?))
    }

    /// Running workflow-path executions with an armed callback, and their child workflow ids: the
    /// reconciler checks that each child is still running.
    pub async fn armed_children(&self, limit: i64) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT e.id, e.status FROM executions e JOIN callbacks c ON c.execution_id = e.id \
             WHERE e.kind = 'workflow' AND c.state = 'armed' ORDER BY e.created_ms LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut children = Vec::with_capacity(rows.len());
        for row in rows {
            let id: String = row.try_get("id")?;
            let status: Vec<u8> = row.try_get("status")?;
            let child = super::status::temporal_workflow_id(&status)?;
            if !child.is_empty() {
                children.push((id, child));
            }
        }
        Ok(children)
    }

    /// Change flags in a running execution's status (cancel requested, orphaned); ended ones are final.
    /// Returns whether the status changed (false: ended, or the flags were set already).
    pub async fn mark(&self, id: &str, edit: impl FnOnce(&mut dyn super::StatusFields)) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let (kind, phase, current) = Self::touch(&mut tx, id).await?;
        if phase.is_terminal() {
            return Ok(false);
        }
        let Some(blob) = edit_status_if_changed(kind, &current, edit)? else { return Ok(false) };
        sqlx::query("UPDATE executions SET status = $1, updated_ms = $2 WHERE id = $3")
            .bind(blob)
            .bind(now_ms())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Running executions whose runner's claim ran out (it stopped heartbeating) and whose callback is
    /// still armed, with their tokens: the reconciler checks whether their parent still waits.
    /// Each with its own answer: a token this process cannot open fails only its execution.
    pub async fn expired_claims(&self, limit: i64) -> Result<Vec<(String, Result<TaskToken>)>> {
        let rows = sqlx::query(
            "SELECT e.id, c.token, c.token_key_id FROM executions e JOIN callbacks c ON c.execution_id = e.id \
             WHERE e.phase = $1 AND e.claim_until_ms > 0 AND e.claim_until_ms < $2 AND c.state = 'armed' LIMIT $3",
        )
        .bind(Phase::InProgress.to_proto())
        .bind(now_ms())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut expired = Vec::with_capacity(rows.len());
        for row in rows {
            let token: Option<Vec<u8>> = row.try_get("token")?;
            if let Some(token) = token {
                let id: String = row.try_get("id")?;
                let key_id: Option<String> = row.try_get("token_key_id")?;
                let token = self.keyring.open(&id, &token, key_id.as_deref()).and_then(|t| TaskToken::parse(&t));
                expired.push((id, token));
            }
        }
        Ok(expired)
    }

    /// Callbacks whose parent still waits (armed, due or delivering), counted per age bucket (time since
    /// the caller deferred), youngest first; `lower_bounds_ms` are the buckets' lower bounds, ascending.
    pub async fn pending_by_age(&self, lower_bounds_ms: &[i64]) -> Result<Vec<i64>> {
        let now = now_ms();
        let buckets: Vec<String> = (0..lower_bounds_ms.len())
            .map(|i| {
                let upper =
                    lower_bounds_ms.get(i + 1).map_or(String::new(), |b| format!(" AND created_ms > {}", now - b));
                format!(
                    "COALESCE(SUM(CASE WHEN created_ms <= {}{upper} THEN 1 ELSE 0 END), 0) AS b{i}",
                    now - lower_bounds_ms[i]
                )
            })
            .collect();
        let sql = format!("SELECT {} FROM callbacks WHERE state IN ('armed', 'due', 'delivering')", buckets.join(", "));
        let row = sqlx::query(&sql).fetch_one(&self.pool).await?;
        (0..lower_bounds_ms.len()).map(|i| Ok(row.try_get::<i64, _>(format!("b{i}").as_str())?)).collect()
    }

    /// A running execution's armed callback, for heartbeats: its token and the parent's heartbeat timeout.
    /// None for a direct execution or once the callback is due; `ExecutionNotFound` for an unknown id.
    pub async fn armed_callback(&self, id: &str) -> Result<Option<(TaskToken, Option<i64>)>> {
        let mut found = self.armed_callbacks(&[id.to_owned()]).await?;
        found.remove(id).ok_or_else(|| Error::ExecutionNotFound(id.to_owned()))?.transpose()
    }

    /// `armed_callback` of many executions in one query, each with its own answer (a token this process
    /// cannot open fails only its execution); the ids not found are missing from the map.
    pub async fn armed_callbacks(&self, ids: &[String]) -> Result<HashMap<String, Option<Result<Armed>>>> {
        let sql = format!(
            "SELECT e.id, c.token, c.token_key_id, c.heartbeat_timeout_ms FROM executions e \
             LEFT JOIN callbacks c ON c.execution_id = e.id AND c.state = 'armed' WHERE e.id IN ({})",
            DB::ids_in_json("$1")
        );
        let rows = sqlx::query(&sql).bind(json_ids(ids)?).fetch_all(&self.pool).await?;
        let mut found = HashMap::with_capacity(rows.len());
        for row in rows {
            let id: String = row.try_get("id")?;
            let armed = match row.try_get::<Option<Vec<u8>>, _>("token")? {
                Some(sealed) => {
                    let key_id: Option<String> = row.try_get("token_key_id")?;
                    let heartbeat_timeout_ms: Option<i64> = row.try_get("heartbeat_timeout_ms")?;
                    let token = self.keyring.open(&id, &sealed, key_id.as_deref());
                    Some(token.and_then(|token| Ok((TaskToken::parse(&token)?, heartbeat_timeout_ms))))
                }
                None => None,
            };
            found.insert(id, armed);
        }
        Ok(found)
    }

    /// Take the write lock on an execution (an UPDATE first: SQLite's writers queue on its lock instead of
    /// failing to upgrade a read lock; PostgreSQL locks the row) and return its kind, phase and status.
    async fn touch(tx: &mut DB::Connection, id: &str) -> Result<(Kind, Phase, Vec<u8>)> {
        let mut found = Self::touch_all(tx, &[id]).await?;
        found.remove(id).ok_or_else(|| Error::ExecutionNotFound(id.to_owned()))
    }

    /// `touch` for many executions in one statement; the ids not found are missing from the map.
    async fn touch_all(tx: &mut DB::Connection, ids: &[&str]) -> Result<HashMap<String, (Kind, Phase, Vec<u8>)>> {
        let sql = format!(
            "UPDATE executions SET updated_ms = updated_ms WHERE id IN ({}) RETURNING id, kind, phase, status",
            DB::ids_in_json("$1")
        );
        let mut found = HashMap::with_capacity(ids.len());
        for row in sqlx::query(&sql).bind(json_ids(ids)?).fetch_all(&mut *tx).await? {
            let kind = Kind::parse(&row.try_get::<String, _>("kind")?)?;
            found.insert(row.try_get("id")?, (kind, Phase::from_proto(row.try_get("phase")?), row.try_get("status")?));
        }
        Ok(found)
    }

    /// Execution `id`'s callback, without the token.
    async fn callback(tx: &mut DB::Connection, id: &str) -> Result<Option<CallbackInfo>> {
        let row = sqlx::query(
            "SELECT state, fingerprint, workflow_id, run_id, activity_id, attempt, outcome, payloads, attempts, \
             last_error, gone_reason FROM callbacks WHERE execution_id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        Ok(row.as_ref().map(Self::callback_from_row).transpose()?.flatten())
    }

    fn callback_from_row(row: &DB::Row) -> Result<Option<CallbackInfo>> {
        let state: Option<String> = row.try_get("state")?;
        let Some(state) = state else { return Ok(None) };
        Ok(Some(CallbackInfo {
            state: CallbackState::parse(&state)?,
            fingerprint: row.try_get("fingerprint")?,
            workflow_id: row.try_get("workflow_id")?,
            run_id: row.try_get("run_id")?,
            activity_id: row.try_get("activity_id")?,
            attempt: row.try_get("attempt")?,
            outcome: row.try_get("outcome")?,
            payloads: row.try_get("payloads")?,
            attempts: row.try_get("attempts")?,
            last_error: row.try_get("last_error")?,
            gone_reason: row.try_get("gone_reason")?,
        }))
    }

    /// `keyring`: read the token too (opened with these keys) and put it in the status; None leaves it out.
    fn record_from_row(row: &DB::Row, keyring: Option<&Keyring>) -> Result<ExecutionRecord> {
        let kind = Kind::parse(&row.try_get::<String, _>("kind")?)?;
        let mut status: Vec<u8> = row.try_get("status")?;
        if let Some(keyring) = keyring {
            let token: Option<Vec<u8>> = row.try_get("token")?;
            if let Some(token) = token {
                let id: String = row.try_get("id")?;
                let token = keyring.open(&id, &token, row.try_get::<Option<String>, _>("token_key_id")?.as_deref())?;
                status = edit_status(kind, &status, |s| s.set_token(token))?;
            }
        }
        let callback = Self::callback_from_row(row)?;
        // A direct execution keeps how it ended itself (see `keep_direct_outcomes`).
        let ended = match &callback {
            Some(callback) => callback.outcome.clone().map(|outcome| (outcome, callback.payloads.clone())),
            None => match row.try_get::<Option<String>, _>("e_outcome")? {
                Some(outcome) => Some((outcome, row.try_get("e_payloads")?)),
                None => None,
            },
        };
        Ok(ExecutionRecord {
            id: row.try_get("id")?,
            kind,
            phase: Phase::from_proto(row.try_get("phase")?),
            spec: row.try_get("spec")?,
            status,
            created_ms: row.try_get("created_ms")?,
            updated_ms: row.try_get("updated_ms")?,
            retry_of: row.try_get("retry_of")?,
            ended,
            callback,
        })
    }

    fn claimed_from_row(row: &DB::Row, keyring: &Keyring) -> Result<ClaimedCallback> {
        let execution_id: String = row.try_get("execution_id")?;
        let token: Option<Vec<u8>> = row.try_get("token")?;
        let token = token.ok_or_else(|| Error::Store(format!("due callback of {execution_id:?} has no token")))?;
        let token =
            keyring.open(&execution_id, &token, row.try_get::<Option<String>, _>("token_key_id")?.as_deref())?;
        let outcome: Option<String> = row.try_get("outcome")?;
        let payloads: Option<Vec<u8>> = row.try_get("payloads")?;
        let outcome = match outcome.as_deref() {
            Some("complete") => Outcome::Complete { result: payloads },
            Some("fail") => Outcome::Fail {
                message: row.try_get::<Option<String>, _>("failure_message")?.unwrap_or_default(),
                failure_type: row.try_get::<Option<String>, _>("failure_type")?.unwrap_or_default(),
                non_retryable: row.try_get("non_retryable")?,
                details: payloads,
            },
            Some("cancel") => Outcome::Cancel { details: payloads },
            other => return Err(Error::Store(format!("due callback of {execution_id:?} has outcome {other:?}"))),
        };
        Ok(ClaimedCallback {
            execution_id,
            token: TaskToken::parse(&token)?,
            outcome,
            attempts: row.try_get("attempts")?,
            due_ms: row.try_get::<Option<i64>, _>("due_ms")?.unwrap_or_else(now_ms),
        })
    }
}

/// `rows` parenthesised rows of `columns` placeholders each, numbered from `$first`: the rows of a
/// `VALUES` list (whose columns both dialects name column1, column2, ...).
fn values(rows: usize, columns: usize, first: usize) -> String {
    (0..rows)
        .map(|row| {
            let start = first + row * columns;
            let cells: Vec<String> = (start..start + columns).map(|n| format!("${n}")).collect();
            format!("({})", cells.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The indices of `ids` in rounds in which no id repeats: an id's n-th occurrence goes in round n.
fn rounds<'a>(ids: impl Iterator<Item = &'a str>) -> Vec<Vec<usize>> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    for (i, id) in ids.enumerate() {
        let n = seen.entry(id).or_insert(0);
        if rounds.len() == *n {
            rounds.push(Vec::new());
        }
        rounds[*n].push(i);
        *n += 1;
    }
    rounds
}

fn all_distinct<T: Eq + std::hash::Hash>(items: impl Iterator<Item = T>) -> bool {
    let mut seen = HashSet::new();
    items.into_iter().all(|item| seen.insert(item))
}

/// Ids as a JSON array, bound as one value (see `Backend::ids_in_json`): no limit on how many.
fn json_ids(ids: &[impl AsRef<str>]) -> Result<String> {
    let ids: Vec<&str> = ids.iter().map(AsRef::as_ref).collect();
    serde_json::to_string(&ids).map_err(|e| Error::Store(e.to_string()))
}

/// A new execution's first status: the one given (checked against its kind's spec), PENDING.
fn pending_status(new: &NewExecution) -> Result<Vec<u8>> {
    check_spec(new.kind, &new.spec)?;
    edit_status(new.kind, new.status.as_deref().unwrap_or_default(), |s| s.set_phase(Phase::Pending))
}
