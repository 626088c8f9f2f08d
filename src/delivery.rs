//! Delivery of callbacks: settle (terminal status + due callback, one transaction), claim under a lease,
//! send, and record what happened.
//!
//! A callback is claimed under a lease before it is sent, so a process that dies mid-delivery leaves a
//! row that `deliver_due` picks up once the lease runs out: nothing is dropped. Temporal's completion is
//! not idempotent (a second one is NotFound), so the store is: a settled execution is never sent again.

use tokio::task::JoinSet;

use crate::errors::{Error, Result};
use crate::failpoint;
use crate::store::{ClaimedCallback, DeliveryResult, GoneReason, Outcome, Settled, Store};
use crate::temporal::{ActivityEnd, Target, Temporal};

/// How long a claimed callback stays with one deliverer before another may take it: longer than one
/// RPC with the client's own retries (10 s), short enough that a crash delays delivery only briefly.
pub const DELIVERY_LEASE_MS: i64 = 20_000;
/// Backoff between delivery attempts after a transient failure: doubling from the first, capped.
const FIRST_RETRY_MS: i64 = 500;
const MAX_RETRY_MS: i64 = 10_000;
/// How many callbacks one process sends at once when it catches up.
const DELIVERY_CONCURRENCY: usize = 32;

/// What a settle did, as its caller sees it.
#[derive(Clone, Debug, PartialEq)]
pub enum SettleOutcome {
    /// The parent activity was told.
    Delivered,
    /// Recorded as due; delivery happens later (in the background, or in another process).
    Recorded,
    /// A direct execution (no token): nothing to tell.
    NoCallback,
    /// The execution had already ended; nothing was sent again. Carries the recorded outcome.
    AlreadySettled(Option<String>),
    /// The parent activity attempt no longer exists; the child's result stays in the store.
    ActivityGone(GoneReason, String),
    /// Delivery failed for now; the callback stays due and is retried with backoff.
    Retrying(String),
    /// A permanent error: the callback is dead-lettered with the reason.
    DeadLettered(String),
}

impl From<DeliveryResult> for SettleOutcome {
    fn from(result: DeliveryResult) -> Self {
        match result {
            DeliveryResult::Delivered => SettleOutcome::Delivered,
            DeliveryResult::Gone(reason, message) => SettleOutcome::ActivityGone(reason, message),
            DeliveryResult::Retry { error, .. } => SettleOutcome::Retrying(error),
            DeliveryResult::Dead(error) => SettleOutcome::DeadLettered(error),
        }
    }
}

/// End an execution with `outcome` and, with a Temporal connection, deliver its callback: at once when
/// `wait` (the caller gets the delivery's outcome), or in a background task.
pub async fn settle(
    store: &Store,
    temporal: Option<&Temporal>,
    id: &str,
    outcome: &Outcome,
    status: Option<&[u8]>,
    wait: bool,
) -> Result<SettleOutcome> {
    let lease = if temporal.is_some() { DELIVERY_LEASE_MS } else { 0 };
    let settled = store.settle(id, outcome, status, lease).await?;
    // The chaos tests crash here: committed, not yet sent. The lease runs out and the reconciler sends it.
    failpoint::hit("after_settle_commit");
    Ok(match settled {
        Settled::Already { outcome, .. } => SettleOutcome::AlreadySettled(outcome),
        Settled::Now { claimed: None, has_callback: false } => SettleOutcome::NoCallback,
        Settled::Now { claimed: None, has_callback: true } => SettleOutcome::Recorded,
        Settled::Now { claimed: Some(claimed), .. } => match temporal {
            Some(temporal) if wait => deliver(store, temporal, claimed).await?.into(),
            Some(temporal) => {
                let (store, temporal) = (store.clone(), temporal.clone());
                tokio::spawn(async move {
                    if let Err(err) = deliver(&store, &temporal, claimed).await {
                        // The callback stays claimed; its lease runs out and the reconciler retries it.
                        tracing::warn!(error = %err, "background delivery failed");
                    }
                });
                SettleOutcome::Recorded
            }
            None => SettleOutcome::Recorded,
        },
    })
}

/// Send one claimed callback and record what happened.
pub async fn deliver(store: &Store, temporal: &Temporal, claimed: ClaimedCallback) -> Result<DeliveryResult> {
    let sent = temporal.respond(&Target::Token(claimed.token.clone()), &claimed.outcome).await;
    let result = match sent {
        Ok(()) => DeliveryResult::Delivered,
        Err(err) => classify(temporal, &claimed, err).await,
    };
    tracing::debug!(
        execution = %claimed.execution_id,
        token = %claimed.token.fingerprint(),
        outcome = claimed.outcome.name(),
        result = ?result,
        "callback sent"
    );
    failpoint::hit("before_record_delivery");
    store.record_delivery(&claimed, &result).await?;
    Ok(result)
}

/// Sort a failed delivery into gone (with why), retry (transient) or dead (permanent).
async fn classify(temporal: &Temporal, claimed: &ClaimedCallback, err: Error) -> DeliveryResult {
    use tonic::Code;
    match err {
        // NotFound: the attempt completed, timed out, was retried, or its workflow closed.
        Error::ActivityGone { message } => match gone_reason(temporal, claimed).await {
            None => DeliveryResult::Delivered,
            Some(reason) => DeliveryResult::Gone(reason, message),
        },
        Error::Rpc { code: Code::InvalidArgument, message } if message.to_lowercase().contains("token") => {
            DeliveryResult::Gone(GoneReason::InvalidToken, message)
        }
        Error::Rpc {
            code:
                Code::Unavailable
                | Code::DeadlineExceeded
                | Code::ResourceExhausted
                | Code::Aborted
                | Code::Internal
                | Code::Unknown
                | Code::Cancelled,
            ..
        }
        | Error::Connect { .. }
        | Error::Store(_) => {
            DeliveryResult::Retry { error: err.to_string(), retry_in_ms: backoff_ms(claimed.attempts) }
        }
        other => DeliveryResult::Dead(other.to_string()),
    }
}

/// Why the server no longer knows the token's attempt, asked of the parent workflow itself; None when
/// its history shows this very outcome arrived (an earlier delivery whose record a crash lost).
async fn gone_reason(temporal: &Temporal, claimed: &ClaimedCallback) -> Option<GoneReason> {
    let token = &claimed.token;
    let end = temporal.activity_end(&token.workflow_id, &token.run_id, token.scheduled_event_id).await;
    match (end, &claimed.outcome) {
        (Ok(Some(ActivityEnd::Completed)), Outcome::Complete { .. })
        | (Ok(Some(ActivityEnd::Failed)), Outcome::Fail { .. })
        | (Ok(Some(ActivityEnd::Canceled)), Outcome::Cancel { .. }) => return None,
        (Ok(Some(ActivityEnd::TimedOut)), _) => return Some(GoneReason::ParentTimedOut),
        (Ok(Some(ActivityEnd::Completed | ActivityEnd::Failed | ActivityEnd::Canceled)), _) => {
            return Some(GoneReason::ClosedElsewhere);
        }
        _ => {}
    }
    Some(match temporal.describe_workflow(&token.workflow_id, &token.run_id).await {
        Ok(None) => GoneReason::ParentWorkflowClosed,
        Ok(Some(state)) if state.closed_as.is_some() => GoneReason::ParentWorkflowClosed,
        Ok(Some(state)) => {
            let retried = state
                .pending_activities
                .iter()
                .any(|(id, attempt)| *id == token.activity_id && *attempt > token.attempt);
            if retried {
                GoneReason::StaleAttempt
            } else {
                // The workflow runs and the attempt is no longer pending: its timeout ended it.
                GoneReason::ParentTimedOut
            }
        }
        Err(_) => GoneReason::ParentTimedOut,
    })
}

/// Exponential backoff with ±20% jitter, capped, so a fleet of deliverers does not retry in lockstep.
fn backoff_ms(attempts: i64) -> i64 {
    let exponent = u32::try_from(attempts.clamp(0, 16)).unwrap_or(16);
    let base = FIRST_RETRY_MS.saturating_mul(1 << exponent).min(MAX_RETRY_MS);
    #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
    let jitter = ((failpoint::random_unit() - 0.5) * 0.4 * base as f64) as i64;
    base + jitter
}

/// Counts of what one catch-up pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeliveryCounts {
    pub delivered: usize,
    pub gone: usize,
    pub dead: usize,
    pub retrying: usize,
}

/// Deliver every due callback (and every one whose lease expired), `DELIVERY_CONCURRENCY` at a time.
pub async fn deliver_due(store: &Store, temporal: &Temporal, limit: i64) -> Result<DeliveryCounts> {
    let mut counts = DeliveryCounts::default();
    let mut tasks = JoinSet::new();
    for claimed in store.claim_due(limit, DELIVERY_LEASE_MS).await? {
        if tasks.len() >= DELIVERY_CONCURRENCY {
            count(&mut counts, tasks.join_next().await);
        }
        let (store, temporal) = (store.clone(), temporal.clone());
        tasks.spawn(async move { deliver(&store, &temporal, claimed).await });
    }
    while let Some(joined) = tasks.join_next().await {
        count(&mut counts, Some(joined));
    }
    Ok(counts)
}

fn count(
    counts: &mut DeliveryCounts,
    joined: Option<std::result::Result<Result<DeliveryResult>, tokio::task::JoinError>>,
) {
    match joined {
        Some(Ok(Ok(DeliveryResult::Delivered))) => counts.delivered += 1,
        Some(Ok(Ok(DeliveryResult::Gone(..)))) => counts.gone += 1,
        Some(Ok(Ok(DeliveryResult::Dead(_)))) => counts.dead += 1,
        // A store error or a panicked task leaves the claim to expire: it is retried later.
        Some(Ok(Ok(DeliveryResult::Retry { .. }) | Err(_)) | Err(_)) => counts.retrying += 1,
        None => {}
    }
}
