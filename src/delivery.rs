//! Delivery of callbacks: settle (terminal status + due callback, one transaction), claim under a lease,
//! send, and record what happened.
//!
//! A callback is claimed under a lease before it is sent, so a process that dies mid-delivery leaves a
//! row that `deliver_due` picks up once the lease runs out: nothing is dropped. Temporal's completion is
//! not idempotent (a second one is NotFound), so the store is: a settled execution is never sent again.

use tokio::task::JoinSet;
use tracing::Instrument;

use crate::errors::{Error, Result};
use crate::store::{ClaimedCallback, Settled, Store};
use crate::temporal::{ActivityEnd, Target, Temporal, WorkflowState};
use crate::token::TaskToken;
use crate::vocabulary::{DeliveryResult, GoneReason, Outcome};
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

    /// The gone reason (activity_gone), and the server's or the store's words (for already_settled, the
    /// outcome recorded first), as every face shows them.
    pub fn reason_and_detail(self) -> (Option<&'static str>, Option<String>) {
        match self {
            SettleOutcome::Delivered | SettleOutcome::Recorded | SettleOutcome::NoCallback => (None, None),
            SettleOutcome::AlreadySettled(recorded) => (None, recorded),
            SettleOutcome::ActivityGone(reason, message) => (Some(reason.as_str()), Some(message)),
            SettleOutcome::Retrying(error)
            | SettleOutcome::DeadLettered(error)
            | SettleOutcome::ResultTooLarge(error) => (None, Some(error)),
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
        metrics::delivered_after((crate::clock::now_ms() - claimed.due_ms) as f64 / 1000.0);
    }
    failpoint::hit("before_record_delivery");
    store.record_delivery(&claimed, &result).await?;
    Ok(result)
}

/// Sort a failed delivery into gone (with why), retry (transient) or dead (permanent).
async fn classify(temporal: &Temporal, claimed: &ClaimedCallback, err: Error) -> DeliveryResult {
    match sort_failure(err, claimed.attempts) {
        Failure::Sorted(result) => result,
        Failure::NotFound(message) => match gone_reason(temporal, claimed).await {
            None => DeliveryResult::Delivered,
            Some(reason) => DeliveryResult::Gone(reason, message),
        },
    }
}

/// What a failed send means, as far as the error alone tells.
#[derive(Debug, PartialEq)]
enum Failure {
    /// The server no longer knows the attempt: only the parent's history tells why (`gone_reason`).
    NotFound(String),
    Sorted(DeliveryResult),
}

/// `classify` without the questions to the server: `attempts` (made before this one) sets a retry's backoff.
fn sort_failure(err: Error, attempts: i64) -> Failure {
    use tonic::Code;
    Failure::Sorted(match err {
        // NotFound: the attempt completed, timed out, was retried, or its workflow closed.
        Error::ActivityGone { message } => return Failure::NotFound(message),
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
        // Refused credentials or TLS settings are fixed by an operator; the callback waits for them.
        | Error::ConnectRefused { .. }
        // Another process may serve the token's namespace: leave it due rather than dead-letter it.
        | Error::Namespace(_)
        | Error::Store(_) => DeliveryResult::Retry { error: err.to_string(), retry_in_ms: backoff_ms(attempts) },
        other => DeliveryResult::Dead(other.to_string()),
    })
}

/// Why the server no longer knows the token's attempt, asked of the parent workflow itself; None when
/// its history shows this very outcome arrived (an earlier delivery whose record a crash lost).
async fn gone_reason(temporal: &Temporal, claimed: &ClaimedCallback) -> Option<GoneReason> {
    let token = &claimed.token;
    let Ok(temporal) = temporal.for_token(token) else { return Some(GoneReason::InvalidToken) };
    let end = temporal.parent_activity_end(token).await;
    if let Ok(end) = end {
        match by_history(end, &claimed.outcome) {
            History::Arrived => return None,
            History::Gone(reason) => return Some(reason),
            History::Silent => {}
        }
    }
    Some(match temporal.parent_state(token).await {
        Ok(state) => by_workflow(state.as_ref(), token),
        Err(_) => GoneReason::ParentTimedOut,
    })
}

/// What the parent's history says of the attempt.
#[derive(Debug, PartialEq)]
enum History {
    /// This very outcome closed it.
    Arrived,
    Gone(GoneReason),
    /// It has no closing event (or no history was found): ask the workflow.
    Silent,
}

fn by_history(end: Option<ActivityEnd>, outcome: &Outcome) -> History {
    match (end, outcome) {
        (Some(ActivityEnd::Completed), Outcome::Complete { .. })
        | (Some(ActivityEnd::Failed), Outcome::Fail { .. })
        | (Some(ActivityEnd::Canceled), Outcome::Cancel { .. }) => History::Arrived,
        (Some(ActivityEnd::TimedOut), _) => History::Gone(GoneReason::ParentTimedOut),
        (Some(ActivityEnd::Completed | ActivityEnd::Failed | ActivityEnd::Canceled), _) => {
            History::Gone(GoneReason::ClosedElsewhere)
        }
        (Some(ActivityEnd::Open) | None, _) => History::Silent,
    }
}

/// Why the attempt is gone, from its workflow's state (None: the workflow is not found).
fn by_workflow(state: Option<&WorkflowState>, token: &TaskToken) -> GoneReason {
    match state {
        None => GoneReason::ParentWorkflowClosed,
        Some(state) if state.closed_as.is_some() => GoneReason::ParentWorkflowClosed,
        Some(state) if state.retried(token) => GoneReason::StaleAttempt,
        // The workflow runs and the attempt is no longer pending: its timeout ended it.
        Some(_) => GoneReason::ParentTimedOut,
    }
}

/// What the parent is told instead of an outcome whose payloads (with a failure's message) are over
/// `limit` bytes (Temporal would refuse them): a non-retryable RESULT_TOO_LARGE failure naming the execution. The full outcome stays in
/// the store (`result()` reads it). None when the outcome fits.
fn sent_instead(claimed: &ClaimedCallback, limit: usize) -> Option<Outcome> {
    // Everything the request carries that grows with the child's output: a failure's message too.
    let size = match &claimed.outcome {
        // An encoded failure is what is sent: it holds the message, type and details.
        Outcome::Fail { failure: Some(failure), .. } => failure.len(),
        Outcome::Fail { message, failure_type, details, .. } => {
            message.len() + failure_type.len() + details.as_ref().map_or(0, Vec::len)
        }
        Outcome::Complete { .. } | Outcome::Cancel { .. } => claimed.outcome.payloads().map_or(0, <[u8]>::len),
    };
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
        failure: None,
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

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;
    use crate::token::tests::sample_token_bytes;

    fn rpc(code: Code, message: &str) -> Error {
        Error::Rpc { code, message: message.into() }
    }

    fn sorted(err: Error) -> DeliveryResult {
        match sort_failure(err, 0) {
            Failure::Sorted(result) => result,
            Failure::NotFound(message) => panic!("asks the server ({message})"),
        }
    }

    #[test]
    fn a_not_found_asks_the_parents_history() {
        let gone = Error::ActivityGone { message: "workflow execution already completed".into() };
        assert_eq!(sort_failure(gone, 3), Failure::NotFound("workflow execution already completed".into()));
    }

    #[test]
    fn transient_failures_retry_and_permanent_ones_are_dead() {
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::ResourceExhausted,
            Code::Aborted,
            Code::Internal,
            Code::Unknown,
            Code::Cancelled,
        ] {
            assert!(matches!(sorted(rpc(code, "busy")), DeliveryResult::Retry { .. }), "{code:?}");
        }
        let connect = Error::Connect { target: "127.0.0.1:7233".into(), message: "refused".into() };
        for err in [connect, Error::Namespace("not served".into()), Error::Store("locked".into())] {
            assert!(matches!(sorted(err.clone()), DeliveryResult::Retry { .. }), "{err:?}");
        }
        for code in [Code::PermissionDenied, Code::FailedPrecondition, Code::Unimplemented, Code::InvalidArgument] {
            assert!(matches!(sorted(rpc(code, "no")), DeliveryResult::Dead(_)), "{code:?}");
        }
        assert!(matches!(sorted(Error::InvalidArgument("bad payloads".into())), DeliveryResult::Dead(_)));
    }

    #[test]
    fn a_refused_token_is_gone_and_an_oversized_request_dead() {
        let refused = sorted(rpc(Code::InvalidArgument, "Task token is malformed"));
        assert_eq!(refused, DeliveryResult::Gone(GoneReason::InvalidToken, "Task token is malformed".into()));
        let too_large = sorted(rpc(Code::ResourceExhausted, "grpc: received message larger than max (5 vs. 4)"));
        assert!(matches!(too_large, DeliveryResult::Dead(reason) if reason.contains("message limit")));
    }

    #[test]
    fn backoff_doubles_from_half_a_second_up_to_ten_with_a_fifth_of_jitter() {
        for (attempts, base) in [(-3, 500), (0, 500), (1, 1_000), (2, 2_000), (4, 8_000), (5, 10_000), (60, 10_000)] {
            for _ in 0..200 {
                let ms = backoff_ms(attempts);
                assert!((base * 4 / 5..=base * 6 / 5).contains(&ms), "attempt {attempts}: {ms} ms");
            }
        }
        let spread: std::collections::HashSet<i64> = (0..50).map(|_| backoff_ms(3)).collect();
        assert!(spread.len() > 10, "jitter spreads the retries: {spread:?}");
    }

    #[test]
    fn the_history_tells_an_arrived_outcome_from_one_closed_elsewhere() {
        let complete = Outcome::Complete { result: None };
        let fail = Outcome::Fail {
            message: "x".into(),
            failure_type: "T".into(),
            non_retryable: false,
            details: None,
            failure: None,
        };
        let cancel = Outcome::Cancel { details: None };
        assert_eq!(by_history(Some(ActivityEnd::Completed), &complete), History::Arrived);
        assert_eq!(by_history(Some(ActivityEnd::Failed), &fail), History::Arrived);
        assert_eq!(by_history(Some(ActivityEnd::Canceled), &cancel), History::Arrived);
        for (end, outcome) in
            [(ActivityEnd::Completed, &fail), (ActivityEnd::Failed, &cancel), (ActivityEnd::Canceled, &complete)]
        {
            assert_eq!(by_history(Some(end), outcome), History::Gone(GoneReason::ClosedElsewhere), "{end:?}");
        }
        assert_eq!(by_history(Some(ActivityEnd::TimedOut), &complete), History::Gone(GoneReason::ParentTimedOut));
        assert_eq!(by_history(Some(ActivityEnd::Open), &complete), History::Silent);
        assert_eq!(by_history(None, &complete), History::Silent);
    }

    #[test]
    fn the_workflow_tells_a_closed_parent_from_a_retried_or_timed_out_attempt() {
        let token = TaskToken::parse(&sample_token_bytes("1", 2)).unwrap();
        let state = |closed_as, pending: &[(&str, i32)]| WorkflowState {
            closed_as,
            pending_activities: pending.iter().map(|(id, attempt)| ((*id).to_owned(), *attempt)).collect(),
        };
        assert_eq!(by_workflow(None, &token), GoneReason::ParentWorkflowClosed);
        assert_eq!(
            by_workflow(Some(&state(Some("TERMINATED"), &[("1", 3)])), &token),
            GoneReason::ParentWorkflowClosed
        );
        assert_eq!(by_workflow(Some(&state(None, &[("1", 3)])), &token), GoneReason::StaleAttempt);
        assert_eq!(by_workflow(Some(&state(None, &[("1", 2)])), &token), GoneReason::ParentTimedOut);
        assert_eq!(by_workflow(Some(&state(None, &[("2", 9)])), &token), GoneReason::ParentTimedOut);
        assert_eq!(by_workflow(Some(&state(None, &[])), &token), GoneReason::ParentTimedOut);
    }

    #[test]
    fn an_outcome_over_the_limit_is_replaced_by_result_too_large() {
        let claimed = |outcome| ClaimedCallback {
            execution_id: "agent-1".into(),
            token: TaskToken::parse(&sample_token_bytes("1", 1)).unwrap(),
            outcome,
            attempts: 0,
            due_ms: 0,
        };
        assert_eq!(sent_instead(&claimed(Outcome::Complete { result: Some(vec![0; 100]) }), 100), None);
        let Some(Outcome::Fail { failure_type, non_retryable, message, .. }) =
            sent_instead(&claimed(Outcome::Complete { result: Some(vec![0; 101]) }), 100)
        else {
            panic!("not replaced")
        };
        assert_eq!((failure_type.as_str(), non_retryable), ("RESULT_TOO_LARGE", true));
        assert!(message.contains("\"agent-1\"") && message.contains("101 bytes"), "{message}");
        // A failure's message counts too.
        let long = Outcome::Fail {
            message: "m".repeat(90),
            failure_type: "ERR".repeat(4),
            non_retryable: false,
            details: None,
            failure: None,
        };
        assert!(sent_instead(&claimed(long), 100).is_some());
    }
}
