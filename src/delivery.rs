//! Delivery of callbacks: settle (terminal status + due callback, one transaction), claim under a lease,
//! send, and record what happened.
//!
//! A callback is claimed under a lease before it is sent, so a process that dies mid-delivery leaves a
//! row that `deliver_due` picks up once the lease runs out: nothing is dropped. Temporal's completion is
//! not idempotent (a second one is NotFound), so the store is: a settled execution is never sent again.

use tokio::task::JoinSet;
use tracing::Instrument;

use crate::errors::{Error, Result};
use crate::store::{ClaimedCallback, DeliveryResult, GoneReason, Outcome, Settled, Store};
use crate::temporal::{ActivityEnd, Target, Temporal};
use crate::{failpoint, metrics};

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
    /// The result was over the payload limit: it is kept in the store, and the parent was told so with
    /// a RESULT_TOO_LARGE failure. Carries what the parent was told.
    ResultTooLarge(String),
}

impl SettleOutcome {
    /// The name Python and the metrics see.
    pub fn name(&self) -> &'static str {
        match self {
            SettleOutcome::Delivered => "delivered",
            SettleOutcome::Recorded => "recorded",
            SettleOutcome::NoCallback => "no_callback",
            SettleOutcome::AlreadySettled(_) => "already_settled",
            SettleOutcome::ActivityGone(..) => "activity_gone",
            SettleOutcome::Retrying(_) => "retrying",
            SettleOutcome::DeadLettered(_) => "dead_lettered",
            SettleOutcome::ResultTooLarge(_) => "result_too_large",
        }
    }
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
    let kind = match &settled {
        Settled::Already { kind, .. } | Settled::Now { kind, .. } | Settled::Unopened { kind, .. } => *kind,
    };
    let result = match settled {
        Settled::Already { outcome, .. } => SettleOutcome::AlreadySettled(outcome),
        // Recorded, but the token is sealed with a key this process lacks: a process with it delivers.
        Settled::Unopened { error, .. } => return Err(error),
        Settled::Now { claimed: None, has_callback: false, .. } => SettleOutcome::NoCallback,
        Settled::Now { claimed: None, has_callback: true, .. } => SettleOutcome::Recorded,
        Settled::Now { claimed: Some(claimed), .. } => match temporal {
            Some(temporal) if wait => {
                let too_large = sent_instead(&claimed, temporal.max_payload_bytes());
                match deliver(store, temporal, claimed).await? {
                    DeliveryResult::Delivered if too_large.is_some() => {
                        SettleOutcome::ResultTooLarge(too_large.map(|o| o.message()).unwrap_or_default())
                    }
                    other => other.into(),
                }
            }
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
    };
    metrics::settled(kind.as_str(), result.name());
    Ok(result)
}

/// Send one claimed callback and record what happened.
pub async fn deliver(store: &Store, temporal: &Temporal, claimed: ClaimedCallback) -> Result<DeliveryResult> {
    let instead = sent_instead(&claimed, temporal.max_payload_bytes());
    let span = tracing::info_span!(
        "deliver",
        execution = %claimed.execution_id,
        token = %claimed.token.fingerprint(),
        outcome = claimed.outcome.name(),
        attempt = claimed.attempts + 1,
        result = tracing::field::Empty,
    );
    let outcome = instead.as_ref().unwrap_or(&claimed.outcome);
    let sent = temporal.respond(&Target::Token(claimed.token.clone()), outcome).instrument(span.clone()).await;
    let result = match sent {
        Ok(()) => DeliveryResult::Delivered,
        Err(err) => {
            metrics::error(err.type_name());
            classify(temporal, &claimed, err).await
        }
    };
    span.record("result", result.name());
    if result == DeliveryResult::Delivered {
        #[allow(clippy::cast_precision_loss)]
        metrics::delivered_after((crate::store::now_ms() - claimed.due_ms) as f64 / 1000.0);
    }
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
        // A request over the server's message limit is refused the same way every time: not transient.
        Error::Rpc { code: Code::ResourceExhausted, message } if message.contains("larger than max") => {
            DeliveryResult::Dead(format!("the request is over Temporal's message limit: {message}"))
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
        // Another process may serve the token's namespace: leave it due rather than dead-letter it.
        | Error::Namespace(_)
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
    let Ok(temporal) = temporal.for_token(token) else { return Some(GoneReason::InvalidToken) };
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
            if state.retried(token) {
                GoneReason::StaleAttempt
            } else {
                // The workflow runs and the attempt is no longer pending: its timeout ended it.
                GoneReason::ParentTimedOut
            }
        }
        Err(_) => GoneReason::ParentTimedOut,
    })
}

/// What the parent is told instead of an outcome whose payloads (with a failure's message) are over
/// `limit` bytes (Temporal would refuse them): a non-retryable RESULT_TOO_LARGE failure naming the execution. The full outcome stays in
/// the store (`result()` reads it). None when the outcome fits.
fn sent_instead(claimed: &ClaimedCallback, limit: usize) -> Option<Outcome> {
    // Everything the request carries that grows with the child's output: a failure's message too.
    let message = match &claimed.outcome {
        Outcome::Fail { message, failure_type, .. } => message.len() + failure_type.len(),
        Outcome::Complete { .. } | Outcome::Cancel { .. } => 0,
    };
    let size = claimed.outcome.payloads().map_or(0, <[u8]>::len) + message;
    (size > limit).then(|| Outcome::Fail {
        message: format!(
            "the {} of execution {:?} is {size} bytes, over the {limit}-byte limit; it is kept in the store",
            match claimed.outcome {
                Outcome::Complete { .. } => "result",
                Outcome::Fail { .. } => "failure",
                Outcome::Cancel { .. } => "details",
            },
            claimed.execution_id
        ),
        failure_type: "RESULT_TOO_LARGE".into(),
        non_retryable: true,
        details: None,
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
