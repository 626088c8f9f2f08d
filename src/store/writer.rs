//! The writer's batches: the SQL that runs a group of queued writes (creates, settles, delivery records)
//! in one transaction, a few statements for the whole group (see `Store::write`). The plain queries on
//! the pool are in `sql.rs`.

use std::collections::{HashMap, HashSet};

use sqlx::{ColumnIndex, Decode, Encode, Executor, IntoArguments, Row, Type};

use super::records::{ClaimedCallback, Created, NewExecution, Settled};
use super::sql::{labels_json, values, Backend, SqlStore};
use super::status::{check_spec, edit_status, started_at, timestamp};
use crate::clock::now_ms;
use crate::errors::{Error, Result};
use crate::proto::ai::stigmer::commons::v1::ExecutionError;
use crate::token::TaskToken;
use crate::vocabulary::{CallbackState, DeliveryResult, Kind, Outcome, Phase};

/// A write: in a transaction of its own, or in a batch with others (see `Store::write`).
pub enum WriteOp {
    Create(NewExecution),
    Settle(SettleJob),
    Record(ClaimedCallback, DeliveryResult),
}

impl WriteOp {
    /// A delivery record that ends the callback, and so clears its token (see `SqlStore::record_all`).
    pub(super) fn clears_token(&self) -> bool {
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

// The bounds of the queries in `sql.rs`, again: Rust does not carry an impl's where-clause over from `Backend`.
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
                self.swap_token(tx, &id, token, state, new).await?;
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
            "INSERT INTO executions (id, kind, phase, spec, status, created_ms, updated_ms, labels) VALUES {}",
            values(rows.len(), 8, 1)
        );
        let labels: Vec<Option<String>> =
            rows.iter().map(|(new, _)| (!new.labels.is_empty()).then(|| labels_json(&new.labels))).collect();
        let mut query = sqlx::query(&sql).persistent(rows.len() == 1);
        for ((new, status), labels) in rows.iter().zip(&labels) {
            query = query
                .bind(new.id.as_str())
                .bind(new.kind.as_str())
                .bind(Phase::Pending.to_proto())
                .bind(new.spec.as_slice())
                .bind(status.as_slice())
                .bind(now)
                .bind(now)
                .bind(labels.as_deref());
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
             state, created_ms, heartbeat_timeout_ms, token_key_id, scheduled_event_id, activity_context) VALUES {}",
            values(armed.len(), 13, 1)
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
                .bind(token.scheduled_event_id)
                .bind(new.activity_context.as_deref());
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
        new: &NewExecution,
    ) -> Result<()> {
        let (sealed, key_id) = self.keyring.seal(id, token.secret_bytes())?;
        sqlx::query(
            "UPDATE callbacks SET token = $1, fingerprint = $2, attempt = $3, state = $4, gone_reason = NULL, \
             settled_ms = NULL, lease_until_ms = 0, next_attempt_ms = 0, heartbeat_timeout_ms = $5, \
             token_key_id = $7, activity_context = COALESCE($8, activity_context) WHERE execution_id = $6",
        )
        .bind(sealed)
        .bind(token.fingerprint())
        .bind(i64::from(token.attempt))
        .bind(state.as_str())
        .bind(new.heartbeat_timeout_ms)
        .bind(id)
        .bind(key_id.as_deref())
        .bind(new.activity_context.as_deref())
        .execute(&mut *tx)
        .await?;
        Ok(())
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
             lease_until_ms = v.column8, failure = v.column9, due_ms = $1 FROM (VALUES {}) AS v \
             WHERE callbacks.execution_id = v.column1 AND callbacks.state = 'armed' \
             RETURNING callbacks.execution_id, callbacks.token, callbacks.token_key_id",
            values(ending.len(), 9, 2)
        );
        let mut query = sqlx::query(&sql).persistent(ending.len() == 1).bind(now);
        for (_, job, _, _) in ending {
            let payloads = job.outcome.payloads();
            let (message, failure_type, non_retryable, failure) = match &job.outcome {
                Outcome::Fail { message, failure_type, non_retryable, failure, .. } => {
                    (Some(message.as_str()), Some(failure_type.as_str()), *non_retryable, failure.as_deref())
                }
                Outcome::Complete { .. } | Outcome::Cancel { .. } => (None, None, false, None),
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
                .bind(lease_until_ms)
                .bind(failure);
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

    /// Record what delivering claimed callbacks did, in one statement. A callback that reached its end
    /// (delivered, gone) has its token cleared; a dead-lettered one keeps it (sealed as stored), so that
    /// `redeliver` can send it once an operator fixed what refused it. Only the claim that sent a token can record: if the
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
             token = CASE WHEN v.column3 AND v.column2 <> 'dead' THEN NULL ELSE token END, \
             token_key_id = CASE WHEN v.column3 AND v.column2 <> 'dead' THEN NULL ELSE token_key_id END, \
             attempts = attempts + 1, \
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
        if !news.is_empty() && !DB::NOTIFY_PENDING.is_empty() {
            // Runners waiting in `claim` in any process wake at this transaction's commit.
            sqlx::query(DB::NOTIFY_PENDING).execute(&mut *tx).await?;
        }
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
}

/// A new execution's first status: the one given (checked against its kind's spec), PENDING.
fn pending_status(new: &NewExecution) -> Result<Vec<u8>> {
    check_spec(new.kind, &new.spec)?;
    edit_status(new.kind, new.status.as_deref().unwrap_or_default(), |s| s.set_phase(Phase::Pending))
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
