//! The store's SQL, written once for SQLite and PostgreSQL.
//!
//! Placeholders are `$N` (both drivers read them); the two places where the dialects differ (skipping rows
//! another claimer holds, and expanding a list of ids) come from [`Backend`]. Each backend's own file opens
//! the pool and runs its migrations.

use std::collections::HashMap;
use std::sync::Arc;

use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::OsRng;
use sqlx::database::HasStatementCache;
use sqlx::migrate::{Migrate, MigrateError, Migrator};
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Row, Type};

use super::records::{CallbackInfo, ClaimedCallback, ExecutionRecord, Labels, ListFilter, Overview, Troubled};
use super::status::{edit_status, edit_status_if_changed, started_at, timestamp, StatusFields};
use crate::clock::now_ms;
use crate::errors::{Error, Result};
use crate::secrets::Keyring;
use crate::token::TaskToken;
use crate::vocabulary::{CallbackState, Kind, Outcome, Phase};

const RECORD_COLUMNS: &str =
    "e.id, e.kind, e.phase, e.spec, e.status, e.created_ms, e.updated_ms, e.retry_of, e.labels, e.outcome AS e_outcome, \
     e.payloads AS e_payloads, c.state, c.fingerprint, c.workflow_id, \
     c.run_id, c.activity_id, c.attempt, c.outcome, c.payloads, c.attempts, c.last_error, c.gone_reason, c.due_ms, \
     c.settled_ms, c.token, c.token_key_id, c.activity_context";
/// Rows in one multi-row statement at most: with at most 12 bound values a row, far below SQLite's 32,766
/// and PostgreSQL's 65,535. The writer's batches are no larger (`MAX_WRITE_BATCH`).
pub(super) const ROWS_PER_STATEMENT: usize = 256;
/// After a token this process cannot open, wait this long before offering the callback again.
const KEY_RETRY_MS: i64 = 5_000;
const OUTCOME_COLUMNS: &str =
    "execution_id, token, token_key_id, outcome, payloads, failure_message, failure_type, non_retryable, failure, \
     attempts, due_ms";

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
    /// A statement, in a transaction that created executions, that tells other processes' waiting
    /// `claim`s at commit (PostgreSQL's NOTIFY). SQLite: empty; its waiters poll.
    const NOTIFY_PENDING: &'static str;
    /// Prefixes a statement to show its plan, and the column that holds the plan's lines.
    const EXPLAIN: &'static str;
    const PLAN_COLUMN: &'static str;
    /// Refreshes the planner's statistics of both tables.
    const REFRESH_STATISTICS: &'static str;
    /// Run before `query_plans` explains, in its transaction.
    const PLAN_SETTINGS: &'static [&'static str];
    /// A sub-select of the ids in a JSON array of strings bound as `param`.
    fn ids_in_json(param: &str) -> String;
    /// A condition: the labels of execution `e` hold every pair of the JSON object bound as `param`.
    fn labels_hold(param: &str) -> String;
    /// A condition: `needle` (text or bytes, like `haystack`) occurs in `haystack`.
    fn contains(haystack: &str, needle: &str) -> String;
}

/// Executions and callbacks in one SQL database.
pub struct SqlStore<DB: Database> {
    pub(super) pool: Pool<DB>,
    /// Seals tokens before they are written and opens them when read (a no-op without keys).
    pub(super) keyring: Arc<Keyring>,
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
    pub async fn get(&self, id: &str, include_token: bool) -> Result<ExecutionRecord> {
        let sql = format!(
            "SELECT {RECORD_COLUMNS} FROM executions e LEFT JOIN callbacks c ON c.execution_id = e.id WHERE e.id = $1"
        );
        let row = sqlx::query(&sql).bind(id).fetch_optional(&self.pool).await?;
        let row = row.ok_or_else(|| Error::ExecutionNotFound(id.to_owned()))?;
        Self::record_from_row(&row, include_token.then_some(self.keyring.as_ref()))
    }

    /// Executions in the order they were created that pass `filter`, after `after` (the created time and
    /// id of the last one a previous page ended with).
    pub async fn list(
        &self,
        filter: &ListFilter,
        after: Option<(i64, &str)>,
        limit: i64,
    ) -> Result<Vec<ExecutionRecord>> {
        let (sql, values) = list_statement::<DB>(filter, after, limit);
        let rows = bind_all(sqlx::query(&sql), &values).fetch_all(&self.pool).await?;
        rows.iter().map(|row| Self::record_from_row(row, None)).collect()
    }

    /// Counts by kind and phase, the callbacks in trouble (up to `troubled_limit`), and the settles per
    /// minute since `since_ms`.
    pub async fn overview(&self, since_ms: i64, troubled_limit: i64) -> Result<Overview> {
        let mut overview = Overview::default();
        let rows =
            sqlx::query("SELECT kind, phase, COUNT(*) AS n FROM executions GROUP BY kind, phase ORDER BY kind, phase")
                .fetch_all(&self.pool)
                .await?;
        for row in rows {
            let kind = Kind::parse(&row.try_get::<String, _>("kind")?)?;
            let phase = Phase::from_proto(row.try_get("phase")?);
            overview.counts.push((kind, phase, row.try_get("n")?));
        }
        let rows = sqlx::query(
            "SELECT execution_id, state, attempts, last_error, next_attempt_ms FROM callbacks \
             WHERE state = 'dead' OR (state IN ('due', 'delivering') AND attempts > 0) \
             ORDER BY COALESCE(settled_ms, due_ms) DESC LIMIT $1",
        )
        .bind(troubled_limit)
        .fetch_all(&self.pool)
        .await?;
        for row in rows {
            overview.troubled.push(Troubled {
                execution_id: row.try_get("execution_id")?,
                state: CallbackState::parse(&row.try_get::<String, _>("state")?)?,
                attempts: row.try_get("attempts")?,
                last_error: row.try_get("last_error")?,
                next_attempt_ms: row.try_get("next_attempt_ms")?,
            });
        }
        // A settle records the outcome: `due_ms` on a callback, the last write on a direct execution.
        let rows = sqlx::query(
            "SELECT minute, COUNT(*) AS n FROM (\
             SELECT due_ms / 60000 AS minute FROM callbacks WHERE due_ms >= $1 \
             UNION ALL SELECT e.updated_ms / 60000 AS minute FROM executions e \
             WHERE e.outcome IS NOT NULL AND e.updated_ms >= $1) settles GROUP BY minute ORDER BY minute",
        )
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        for row in rows {
            overview.settles_per_minute.push((row.try_get("minute")?, row.try_get("n")?));
        }
        Ok(overview)
    }

    /// A marker that changes whenever an execution or its callback is written: the latest write of an
    /// execution and the latest end of a delivery (both indexed), and the callbacks on their way to the
    /// parent by state (few, from the state index), so watching for change costs a few index reads.
    pub async fn last_change(&self) -> Result<String> {
        let row = sqlx::query(
            "SELECT COALESCE((SELECT MAX(updated_ms) FROM executions), 0) AS e, \
             COALESCE((SELECT MAX(settled_ms) FROM callbacks), 0) AS c",
        )
        .fetch_one(&self.pool)
        .await?;
        let mut marker = format!("{}.{}", row.try_get::<i64, _>("e")?, row.try_get::<i64, _>("c")?);
        let rows = sqlx::query(
            "SELECT state, COUNT(*) AS n FROM callbacks WHERE state IN ('due', 'delivering', 'dead') \
             GROUP BY state ORDER BY state",
        )
        .fetch_all(&self.pool)
        .await?;
        for row in rows {
            let (state, count) = (row.try_get::<String, _>("state")?, row.try_get::<i64, _>("n")?);
            marker = format!("{marker}.{state}{count}");
        }
        Ok(marker)
    }

    /// Offer a dead-lettered callback for delivery again, at once (its outcome and token were kept).
    pub async fn redeliver(&self, id: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        Self::touch(&mut tx, id).await?;
        let state: Option<(String, bool)> =
            sqlx::query("SELECT state, token IS NOT NULL AS held FROM callbacks WHERE execution_id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .map(|row| Ok::<_, Error>((row.try_get("state")?, row.try_get("held")?)))
                .transpose()?;
        let refuse = |why: String| Error::InvalidState { id: id.to_owned(), phase: "not dead-lettered", why };
        match state {
            None => return Err(refuse("it has no callback (no parent waits on it)".into())),
            Some((state, _)) if state != "dead" => {
                return Err(refuse(format!("its callback is {state}: only a dead-lettered one is redelivered")))
            }
            Some((_, false)) => {
                return Err(refuse("its callback was dead-lettered by a version that cleared the token".into()))
            }
            Some(_) => {}
        }
        sqlx::query(
            "UPDATE callbacks SET state = 'due', next_attempt_ms = 0, lease_until_ms = 0 \
             WHERE execution_id = $1 AND state = 'dead'",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Hand up to `limit` executions of `kind` to a runner for `lease_ms`: PENDING ones, and IN_PROGRESS
    /// ones whose runner's lease ran out (it died). Concurrent claimers never get the same execution. The
    /// runner keeps its lease by heartbeating.
    pub async fn claim(&self, kind: Kind, limit: i64, lease_ms: i64) -> Result<Vec<ExecutionRecord>> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let sql = claim_statement::<DB>();
        let rows = sqlx::query(&sql)
            .bind(now)
            .bind(lease_ms)
            .bind(kind.as_str())
            .bind(Phase::Pending.to_proto())
            .bind(Phase::InProgress.to_proto())
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
        // The PENDING ones start now: their status says IN_PROGRESS, with their start time (an expired
        // claim's status already does, and is left as it is). Only the status changes here, a column no
        // index holds: PostgreSQL updates the row in place (HOT) and SQLite touches no index.
        let mut ids = Vec::with_capacity(rows.len());
        let mut starting = Vec::new();
        for row in rows {
            let id: String = row.try_get("id")?;
            let started = edit_status_if_changed(kind, &row.try_get::<Vec<u8>, _>("status")?, |s| {
                s.set_phase(Phase::InProgress);
                s.mark_started(timestamp(now));
            })?;
            if let Some(status) = started {
                starting.push((id.clone(), status));
            }
            ids.push(id);
        }
        // A claim has no upper limit; a statement has one on its bound values.
        for chunk in starting.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "UPDATE executions SET status = v.column2 FROM (VALUES {}) AS v WHERE executions.id = v.column1",
                values(chunk.len(), 2, 1)
            );
            let mut query = sqlx::query(&sql).persistent(chunk.len() == 1);
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
    /// through `settle`, which also records the callback. Returns its kind and the phase stored (a status
    /// without one keeps the phase it had).
    pub async fn update_status(&self, id: &str, status: &[u8]) -> Result<(Kind, Phase)> {
        let mut stored = Phase::Unspecified;
        let written = self.rewrite_status(id, |kind, phase, current| {
            if phase.is_terminal() {
                return Err(Error::InvalidState {
                    id: id.to_owned(),
                    phase: phase.name(),
                    why: "its status is final".into(),
                });
            }
            let mut new_phase = phase;
            // The runner sends its whole status; the start time the handshake recorded is kept.
            let started = started_at(kind, current)?;
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
                    "update_status cannot set the terminal phase {}: end an execution with succeed, fail or \
                     cancel, which also settles its callback",
                    new_phase.name()
                )));
            }
            if phase == Phase::InProgress && new_phase == Phase::Pending {
                // PENDING is what `claim` hands out: a second runner would take it while this one's lease lives.
                return Err(Error::InvalidArgument(
                    "update_status cannot move a running execution back to PENDING (another runner would claim it)"
                        .into(),
                ));
            }
            stored = new_phase;
            Ok(Some((new_phase, blob)))
        });
        let kind = written.await?.ok_or_else(|| Error::Store("update_status wrote nothing".into()))?;
        Ok((kind, stored))
    }

    /// Lock execution `id`, let `edit` make its new phase and status from its kind, phase and current
    /// status, and write them. Returns its kind, or None when `edit` left it as it was (nothing written).
    async fn rewrite_status(
        &self,
        id: &str,
        edit: impl FnOnce(Kind, Phase, &[u8]) -> Result<Option<(Phase, Vec<u8>)>>,
    ) -> Result<Option<Kind>> {
        let mut tx = self.pool.begin().await?;
        let (kind, phase, current) = Self::touch(&mut tx, id).await?;
        let Some((new_phase, blob)) = edit(kind, phase, &current)? else { return Ok(None) };
        sqlx::query("UPDATE executions SET phase = $1, status = $2, updated_ms = $3 WHERE id = $4")
            .bind(new_phase.to_proto())
            .bind(blob)
            .bind(now_ms())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(kind))
    }

    /// Claim due callbacks (whose backoff has passed) and ones whose delivery lease ran out. Several
    /// reconcilers share the work: each row goes to one of them.
    pub async fn claim_due(&self, limit: i64, lease_ms: i64) -> Result<Vec<ClaimedCallback>> {
        let now = now_ms();
        let sql = due_claim_statement::<DB>();
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

    /// Running workflow-path executions with an armed callback (up to `limit`, the oldest first), and
    /// their child workflow ids: the reconciler checks that each child is still running.
    pub async fn armed_children(&self, limit: i64) -> Result<Vec<(String, String)>> {
        let mut children = Vec::new();
        let mut after = (-1_i64, String::new());
        loop {
            let rows =
                sqlx::query(ARMED).bind(after.0).bind(after.1.as_str()).bind(limit).fetch_all(&self.pool).await?;
            for row in &rows {
                after = (row.try_get("created_ms")?, row.try_get("id")?);
                if row.try_get::<String, _>("kind")? != Kind::Workflow.as_str() {
                    continue;
                }
                let child = super::status::temporal_workflow_id(&row.try_get::<Vec<u8>, _>("status")?)?;
                if !child.is_empty() {
                    children.push((after.1.clone(), child));
                }
            }
            if i64::try_from(children.len()).unwrap_or(i64::MAX) >= limit
                || i64::try_from(rows.len()).unwrap_or(0) < limit
            {
                return Ok(children);
            }
        }
    }

    /// Change flags in a running execution's status (cancel requested, orphaned); ended ones are final.
    /// Returns whether the status changed (false: ended, or the flags were set already).
    pub async fn mark(&self, id: &str, edit: impl FnOnce(&mut dyn StatusFields)) -> Result<bool> {
        let written = self.rewrite_status(id, |kind, phase, current| {
            if phase.is_terminal() {
                return Ok(None);
            }
            Ok(edit_status_if_changed(kind, current, edit)?.map(|blob| (phase, blob)))
        });
        Ok(written.await?.is_some())
    }

    /// Running executions whose runner's claim ran out (it stopped heartbeating) and whose callback is
    /// still armed, with their tokens: the reconciler checks whether their parent still waits.
    /// Each with its own answer: a token this process cannot open fails only its execution.
    pub async fn expired_claims(&self, limit: i64) -> Result<Vec<(String, Result<TaskToken>)>> {
        let rows = sqlx::query(EXPIRED_CLAIMS)
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
        let sql = pending_by_age_statement(now_ms(), lower_bounds_ms);
        let row = sqlx::query(&sql).fetch_one(&self.pool).await?;
        (0..lower_bounds_ms.len()).map(|i| Ok(row.try_get::<i64, _>(format!("b{i}").as_str())?)).collect()
    }

    /// Delete up to `limit` executions that ended before `before_ms` (ms since the Unix epoch), oldest
    /// first, whose callback (if any) is final: delivered, or gone. Never one still running, nor one whose
    /// parent is still to be told (armed, due, delivering) or whose delivery waits for a person (dead).
    /// Returns how many were deleted (their callbacks go with them).
    pub async fn prune(&self, before_ms: i64, limit: i64) -> Result<u64> {
        let deleted = sqlx::query(PRUNE)
            .bind(before_ms)
            .bind(Phase::Completed.to_proto())
            .bind(Phase::Failed.to_proto())
            .bind(Phase::Cancelled.to_proto())
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(deleted.len() as u64)
    }

    /// Callbacks whose outcome is recorded but not yet told to the parent (due, or being delivered).
    pub async fn undelivered(&self) -> Result<i64> {
        Ok(sqlx::query(UNDELIVERED).fetch_one(&self.pool).await?.try_get("n")?)
    }

    /// How each hot statement is served, its statistics refreshed first: (what the statement is for, the
    /// plan's lines). What a test checks to find a statement no index serves (a whole table read, or every
    /// match sorted). PostgreSQL's planner prices by table size, so on a small store it may rightly read a
    /// table whole: there its plans are asked with sequential scans and sorts priced out
    /// (`PLAN_SETTINGS`), and one left in a plan is one no index can avoid.
    pub async fn query_plans(&self) -> Result<Vec<(String, Vec<String>)>> {
        sqlx::query(DB::REFRESH_STATISTICS).execute(&self.pool).await?;
        let mut tx = self.pool.begin().await?;
        for setting in DB::PLAN_SETTINGS {
            sqlx::query(setting).execute(&mut *tx).await?;
        }
        let now = now_ms();
        let (pending, running) = (Phase::Pending.to_proto(), Phase::InProgress.to_proto());
        let mut statements = vec![
            (
                "claim".to_owned(),
                claim_statement::<DB>(),
                vec![
                    Value::Int(now),
                    Value::Int(60_000),
                    Value::Text("agent".into()),
                    Value::Phase(pending),
                    Value::Phase(running),
                    Value::Int(1),
                ],
            ),
            (
                "claim due callbacks".to_owned(),
                due_claim_statement::<DB>(),
                vec![Value::Int(now), Value::Int(now), Value::Int(64)],
            ),
            (
                "reconciler: armed children".to_owned(),
                ARMED.to_owned(),
                vec![Value::Int(-1), Value::Text(String::new()), Value::Int(500)],
            ),
            (
                "reconciler: expired claims".to_owned(),
                EXPIRED_CLAIMS.to_owned(),
                vec![Value::Phase(running), Value::Int(now), Value::Int(500)],
            ),
            ("pending count".to_owned(), pending_by_age_statement(now, &[0, 60_000, 3_600_000]), Vec::new()),
            ("undelivered count".to_owned(), UNDELIVERED.to_owned(), Vec::new()),
            (
                "prune".to_owned(),
                PRUNE.to_owned(),
                vec![
                    Value::Int(now - 86_400_000),
                    Value::Phase(Phase::Completed.to_proto()),
                    Value::Phase(Phase::Failed.to_proto()),
                    Value::Phase(Phase::Cancelled.to_proto()),
                    Value::Int(500),
                ],
            ),
        ];
        let state = |s: &str| ListFilter { callback_state: Some(s.into()), ..ListFilter::default() };
        let lists = [
            ("list", ListFilter::default(), None),
            ("list, next page", ListFilter::default(), Some((now - 1_000, "agent-x"))),
            ("list by kind", ListFilter { kind: Some(Kind::Agent), ..ListFilter::default() }, None),
            ("list by phase", ListFilter { phase: Some(Phase::Pending), ..ListFilter::default() }, None),
            (
                "list by kind and phase",
                ListFilter { kind: Some(Kind::Agent), phase: Some(Phase::Pending), ..ListFilter::default() },
                None,
            ),
            ("list by callback state (armed)", state("armed"), None),
            ("list by callback state (delivered), next page", state("delivered"), Some((now - 1_000, "agent-x"))),
        ];
        for (name, filter, after) in lists {
            let (sql, values) = list_statement::<DB>(&filter, after, 100);
            statements.push((name.to_owned(), sql, values));
        }
        let mut plans = Vec::with_capacity(statements.len());
        for (name, sql, values) in &statements {
            let explain = format!("{}{sql}", DB::EXPLAIN);
            let rows = bind_all(sqlx::query(&explain), values).fetch_all(&mut *tx).await?;
            let lines = rows.iter().map(|row| row.try_get::<String, _>(DB::PLAN_COLUMN)).collect::<Result<_, _>>()?;
            plans.push((name.clone(), lines));
        }
        tx.rollback().await?;
        Ok(plans)
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
    pub(super) async fn touch_all(
        tx: &mut DB::Connection,
        ids: &[&str],
    ) -> Result<HashMap<String, (Kind, Phase, Vec<u8>)>> {
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
    pub(super) async fn callback(tx: &mut DB::Connection, id: &str) -> Result<Option<CallbackInfo>> {
        let row = sqlx::query(
            "SELECT state, fingerprint, workflow_id, run_id, activity_id, attempt, outcome, payloads, attempts, \
             last_error, gone_reason, due_ms, settled_ms, activity_context FROM callbacks WHERE execution_id = $1",
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
            due_ms: row.try_get("due_ms")?,
            ended_ms: row.try_get("settled_ms")?,
            activity_context: row.try_get("activity_context")?,
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
            labels: match row.try_get::<Option<String>, _>("labels")? {
                Some(text) => {
                    serde_json::from_str(&text).map_err(|e| Error::Store(format!("malformed stored labels: {e}")))?
                }
                None => Labels::new(),
            },
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
                failure: row.try_get("failure")?,
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

/// `claim`'s statement: at time $1, take for $2 ms at most $6 executions of kind $3: PENDING ones ($4)
/// and IN_PROGRESS ones ($5) whose claim ran out, oldest first. Two index reads, one per phase (an `OR`
/// of the two would read every execution of the kind); each locks what it picks on PostgreSQL, skipping
/// what another claimer holds (`FOR UPDATE` is allowed in a `WITH` query, not in a `UNION`).
pub(super) fn claim_statement<DB: Backend>() -> String {
    format!(
        "UPDATE executions SET updated_ms = $1, claim_until_ms = $1 + $2, claim_lease_ms = $2, phase = $5 WHERE id IN (\
         WITH pending AS (SELECT id, created_ms FROM executions WHERE kind = $3 AND phase = $4 \
         ORDER BY created_ms, id LIMIT $6{skip}), \
         expired AS (SELECT id, created_ms FROM executions WHERE phase = $5 AND claim_until_ms < $1 AND kind = $3 \
         ORDER BY created_ms, id LIMIT $6{skip}) \
         SELECT id FROM (SELECT id, created_ms FROM pending UNION ALL SELECT id, created_ms FROM expired) claimable \
         ORDER BY created_ms, id LIMIT $6) RETURNING id, status",
        skip = DB::SKIP_LOCKED
    )
}

/// `claim_due`'s statement: at time $2, lease for delivery until $1 at most $3 callbacks that are due
/// (their backoff passed) or whose delivery lease ran out, oldest outcome first.
pub(super) fn due_claim_statement<DB: Backend>() -> String {
    format!(
        "UPDATE callbacks SET state = 'delivering', lease_until_ms = $1 WHERE execution_id IN \
         (SELECT execution_id FROM callbacks WHERE (state = 'due' AND next_attempt_ms <= $2) \
         OR (state = 'delivering' AND lease_until_ms < $2) ORDER BY due_ms LIMIT $3{}) RETURNING {OUTCOME_COLUMNS}",
        DB::SKIP_LOCKED
    )
}

/// `pending_by_age`'s statement at time `now`.
fn pending_by_age_statement(now: i64, lower_bounds_ms: &[i64]) -> String {
    let buckets: Vec<String> = (0..lower_bounds_ms.len())
        .map(|i| {
            let upper = lower_bounds_ms.get(i + 1).map_or(String::new(), |b| format!(" AND created_ms > {}", now - b));
            format!(
                "COALESCE(SUM(CASE WHEN created_ms <= {}{upper} THEN 1 ELSE 0 END), 0) AS b{i}",
                now - lower_bounds_ms[i]
            )
        })
        .collect();
    format!("SELECT {} FROM callbacks WHERE state IN ('armed', 'due', 'delivering')", buckets.join(", "))
}

/// A page of the executions with an armed callback (as many as there is work in flight), after
/// ($1 created, $2 id), at most $3, in creation order: read through the armed callbacks, never through
/// every execution of a kind ever stored.
pub(super) const ARMED: &str = "SELECT c.created_ms, e.id, e.kind, e.status FROM callbacks c \
     JOIN executions e ON e.id = c.execution_id WHERE c.state = 'armed' AND (c.created_ms, c.execution_id) > ($1, $2) \
     ORDER BY c.created_ms, c.execution_id LIMIT $3";

/// `undelivered`'s statement (read from the state index: as many rows as are waiting).
pub(super) const UNDELIVERED: &str = "SELECT COUNT(*) AS n FROM callbacks WHERE state IN ('due', 'delivering')";

/// `prune`'s statement: executions last written before $1, in an ended phase ($2, $3, $4), whose
/// callback is absent or final, at most $5, the oldest first (read by the time they were last written).
pub(super) const PRUNE: &str = "DELETE FROM executions WHERE id IN (SELECT e.id FROM executions e \
     LEFT JOIN callbacks c ON c.execution_id = e.id WHERE e.updated_ms < $1 AND e.phase IN ($2, $3, $4) \
     AND (c.state IS NULL OR c.state IN ('delivered', 'gone')) ORDER BY e.updated_ms LIMIT $5) RETURNING id";

/// Running executions ($1: IN_PROGRESS) whose claim ran out before $2, with an armed callback (at most $3).
pub(super) const EXPIRED_CLAIMS: &str = "SELECT e.id, c.token, c.token_key_id FROM executions e \
     JOIN callbacks c ON c.execution_id = e.id \
     WHERE e.phase = $1 AND e.claim_until_ms > 0 AND e.claim_until_ms < $2 AND c.state = 'armed' LIMIT $3";

/// A value bound to a statement built at run time.
pub(super) enum Value {
    Text(String),
    Int(i64),
    /// A phase (the columns are 32-bit integers).
    Phase(i32),
    Bytes(Vec<u8>),
}

/// The conditions of a statement built at run time and the values bound to them, numbered as added: only
/// the conditions a call has go into its statement, so each shape gets a plan that fits it (a condition
/// such as `$1 IS NULL OR kind = $1` would keep any index from serving it, and PostgreSQL's generic plan
/// for it scans the table).
#[derive(Default)]
pub(super) struct Conditions {
    clauses: Vec<String>,
    pub(super) values: Vec<Value>,
}

impl Conditions {
    /// Bind `value`; returns its placeholder.
    pub(super) fn param(&mut self, value: Value) -> String {
        self.values.push(value);
        format!("${}", self.values.len())
    }

    pub(super) fn and(&mut self, clause: String) {
        self.clauses.push(clause);
    }

    /// ` WHERE a AND b`, or nothing.
    pub(super) fn where_clause(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.clauses.join(" AND "))
        }
    }
}

/// Bind `values` in order.
pub(super) fn bind_all<'q, DB>(
    mut query: sqlx::query::Query<'q, DB, <DB as Database>::Arguments<'q>>,
    values: &'q [Value],
) -> sqlx::query::Query<'q, DB, <DB as Database>::Arguments<'q>>
where
    DB: Database,
    for<'a> i64: Encode<'a, DB> + Type<DB>,
    for<'a> i32: Encode<'a, DB> + Type<DB>,
    for<'a> &'a str: Encode<'a, DB> + Type<DB>,
    for<'a> &'a [u8]: Encode<'a, DB> + Type<DB>,
{
    for value in values {
        query = match value {
            Value::Text(text) => query.bind(text.as_str()),
            Value::Int(n) => query.bind(*n),
            Value::Phase(n) => query.bind(*n),
            Value::Bytes(bytes) => query.bind(bytes.as_slice()),
        };
    }
    query
}

/// The statement `list` runs for `filter` (see `SqlStore::list`), and its values.
///
/// Executions with a callback in a given state are read through that state's index of callbacks, in
/// the callbacks' creation order (a callback is created with its execution, at the same time); the
/// others through the executions' index that matches their kind and phase. Labels and text are checked
/// on the rows read in that order until the page is full.
pub(super) fn list_statement<DB: Backend>(
    filter: &ListFilter,
    after: Option<(i64, &str)>,
    limit: i64,
) -> (String, Vec<Value>) {
    let mut c = Conditions::default();
    let by_callback = filter.callback_state.as_deref().filter(|state| *state != "none");
    let (from, created, id) = if let Some(state) = by_callback {
        let state = c.param(Value::Text(state.to_owned()));
        c.and(format!("c.state = {state}"));
        ("callbacks c JOIN executions e ON e.id = c.execution_id", "c.created_ms", "c.execution_id")
    } else {
        if filter.callback_state.is_some() {
            c.and("c.execution_id IS NULL".into());
        }
        ("executions e LEFT JOIN callbacks c ON c.execution_id = e.id", "e.created_ms", "e.id")
    };
    if let Some(kind) = filter.kind {
        let kind = c.param(Value::Text(kind.as_str().to_owned()));
        c.and(format!("e.kind = {kind}"));
    }
    if let Some(phase) = filter.phase {
        let phase = c.param(Value::Phase(phase.to_proto()));
        c.and(format!("e.phase = {phase}"));
    }
    if let Some((after_ms, after_id)) = after {
        let (after_ms, after_id) = (c.param(Value::Int(after_ms)), c.param(Value::Text(after_id.to_owned())));
        c.and(format!("({created}, {id}) > ({after_ms}, {after_id})"));
    }
    if !filter.labels.is_empty() {
        let wanted = c.param(Value::Text(labels_json(&filter.labels)));
        c.and(DB::labels_hold(&wanted));
    }
    if let Some(text) = &filter.text {
        let (in_id, in_spec) = (c.param(Value::Text(text.clone())), c.param(Value::Bytes(text.as_bytes().to_vec())));
        c.and(format!("({} OR {})", DB::contains("e.id", &in_id), DB::contains("e.spec", &in_spec)));
    }
    let limit = c.param(Value::Int(limit));
    let sql = format!("SELECT {RECORD_COLUMNS} FROM {from}{} ORDER BY {created}, {id} LIMIT {limit}", c.where_clause());
    (sql, c.values)
}

/// `rows` parenthesised rows of `columns` placeholders each, numbered from `$first`: the rows of a
/// `VALUES` list (whose columns both dialects name column1, column2, ...).
pub(super) fn values(rows: usize, columns: usize, first: usize) -> String {
    (0..rows)
        .map(|row| {
            let start = first + row * columns;
            let cells: Vec<String> = (start..start + columns).map(|n| format!("${n}")).collect();
            format!("({})", cells.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Ids as a JSON array, bound as one value (see `Backend::ids_in_json`): no limit on how many.
/// Labels as stored: a JSON object (keys in order).
pub(super) fn labels_json(labels: &Labels) -> String {
    serde_json::to_string(labels).unwrap_or_default()
}

fn json_ids(ids: &[impl AsRef<str>]) -> Result<String> {
    let ids: Vec<&str> = ids.iter().map(AsRef::as_ref).collect();
    serde_json::to_string(&ids).map_err(|e| Error::Store(e.to_string()))
}

/// Apply the migrations this version knows. A database that has one this version does not know was
/// migrated by a newer version: refuse it (its schema may mean things this code would break).
pub(super) async fn migrate<DB>(migrator: &Migrator, pool: &Pool<DB>) -> Result<()>
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
