//! The reconciler: makes sure every ended child reaches its parent, whatever crashed.
//!
//! One pass (1) fails the parent of every workflow-path execution whose child Temporal workflow closed
//! without settling (terminated, timed out, failed before its system activity), with a typed error, and
//! (2) delivers every due callback and every one whose delivery lease ran out (a crash between commit
//! and RPC, a server outage). Several reconcilers may run at once: claims are leased, settles idempotent.

use std::time::Duration;

use crate::delivery::{self, DeliveryCounts};
use crate::errors::Result;
use crate::store::Store;
use crate::temporal::{LazyTemporal, Temporal};
use crate::vocabulary::Outcome;

const BATCH: i64 = 500;

/// What one pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub deliveries: DeliveryCounts,
    /// Parents failed because their child workflow closed without settling them.
    pub children_failed: usize,
    /// Running executions marked orphaned: their runner stopped heartbeating and nobody waits any more.
    pub orphaned: usize,
    /// Expired claims this pass could not check (a token sealed with a key this process lacks, or of a
    /// namespace it does not serve): left for a process that can, and logged.
    pub skipped: usize,
    /// Ended executions deleted because they were older than the retention.
    pub pruned: u64,
}

/// One reconciliation pass; with `retention`, it also deletes one batch of executions that ended longer
/// ago than that (`Store::prune`: one short statement, never a long lock).
pub async fn reconcile_once(
    store: &Store,
    temporal: &Temporal,
    retention: Option<Duration>,
) -> Result<ReconcileReport> {
    let mut report = ReconcileReport::default();
    for (execution_id, child) in store.armed_children(BATCH).await? {
        // A child not found may not have been started yet (it starts after its execution is stored).
        let Some(state) = temporal.describe_workflow(&child, "").await? else { continue };
        let Some(closed_as) = state.closed_as else { continue };
        let outcome = child_closed(&execution_id, &child, closed_as);
        // Idempotent: if the child's own settle won the race, this is AlreadySettled and sends nothing.
        let settled = delivery::settle(store, Some(temporal), &execution_id, &outcome, None, true).await?;
        if !matches!(settled, delivery::SettleOutcome::AlreadySettled(_)) {
            report.children_failed += 1;
        }
    }
    mark_orphans(store, temporal, &mut report).await?;
    report.deliveries = delivery::deliver_due(store, temporal, BATCH).await?;
    if let Some(retention) = retention {
        report.pruned = store.prune(crate::clock::now_ms() - retention_ms(retention), BATCH).await?;
    }
    store.reclaim_space().await?;
    Ok(report)
}

/// A retention in ms (saturating: a retention beyond any date prunes nothing).
pub fn retention_ms(retention: Duration) -> i64 {
    i64::try_from(retention.as_millis()).unwrap_or(i64::MAX / 2)
}

/// The failure a parent gets when its child workflow closed (as `closed_as`, Temporal's status name)
/// without settling it: non-retryable (a retry would wait for a child that is gone), typed by how it closed.
fn child_closed(execution_id: &str, child: &str, closed_as: &str) -> Outcome {
    let failure_type = match closed_as {
        "COMPLETED" => "CHILD_ENDED_WITHOUT_SETTLING".to_owned(),
        "CANCELED" => "CHILD_CANCELLED".to_owned(),
        other => format!("CHILD_{other}"),
    };
    Outcome::Fail {
        message: format!(
            "child workflow {child:?} of execution {execution_id:?} closed as {closed_as} without settling its parent"
        ),
        failure_type,
        non_retryable: true,
        details: None,
        failure: None,
    }
}

/// Mark running executions whose runner's claim ran out (it died) and whose parent no longer waits: its
/// workflow closed, or the activity is not pending at all (its heartbeat timeout fired with no retry
/// left). A parent retrying (a newer attempt pending) still wants the child: its retry re-binds.
/// The parent is only described, never heartbeated: a heartbeat here would keep it alive for a dead runner.
async fn mark_orphans(store: &Store, temporal: &Temporal, report: &mut ReconcileReport) -> Result<()> {
    for (execution_id, token) in store.expired_claims(BATCH).await? {
        let bound = token.and_then(|token| Ok((temporal.for_token(&token)?, token)));
        let (temporal, token) = match bound {
            Ok(bound) => bound,
            Err(err) => {
                skip(report, &execution_id, &err);
                continue;
            }
        };
        let waiting = match temporal.parent_state(&token).await? {
            None => false,
            Some(state) => {
                state.closed_as.is_none() && state.pending_activities.iter().any(|(id, _)| *id == token.activity_id)
            }
        };
        // Counted once: a later pass finds it marked already (or ended meanwhile) and changes nothing.
        if !waiting && store.mark(&execution_id, |s| s.set_orphaned(true)).await? {
            report.orphaned += 1;
        }
    }
    Ok(())
}

/// Count and log an execution a pass cannot check; the pass goes on with the others.
fn skip(report: &mut ReconcileReport, execution_id: &str, err: &crate::errors::Error) {
    report.skipped += 1;
    tracing::warn!(execution = execution_id, error = %err, "reconcile skipped an execution it cannot check");
}

/// Run passes every `interval` (the first at once, for what a crash left behind) until the loop is
/// stopped or its handshake dropped (either ends `stop`'s sender).
pub async fn run(
    store: Store,
    temporal: LazyTemporal,
    retention: Option<Duration>,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        // An outage fails the pass (Temporal unreachable, or the store); the next one tries again.
        let passed = match temporal.get().await {
            Ok(temporal) => reconcile_once(&store, temporal, retention).await,
            Err(err) => Err(err),
        };
        if let Err(err) = passed {
            tracing::warn!(error = %err, "reconcile pass failed; next pass in {interval:?}");
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_closed_without_settling_fails_its_parent_for_good_typed_by_how_it_closed() {
        for (closed_as, expected) in [
            ("COMPLETED", "CHILD_ENDED_WITHOUT_SETTLING"),
            ("CANCELED", "CHILD_CANCELLED"),
            ("TERMINATED", "CHILD_TERMINATED"),
            ("TIMED_OUT", "CHILD_TIMED_OUT"),
            ("FAILED", "CHILD_FAILED"),
            ("CONTINUED_AS_NEW", "CHILD_CONTINUED_AS_NEW"),
        ] {
            let Outcome::Fail { failure_type, non_retryable, message, details, .. } =
                child_closed("workflow-1", "child-wf", closed_as)
            else {
                panic!("{closed_as}: not a failure")
            };
            assert_eq!((failure_type.as_str(), non_retryable, details), (expected, true, None), "{closed_as}");
            assert!(
                message.contains("\"child-wf\"") && message.contains("\"workflow-1\"") && message.contains(closed_as)
            );
        }
    }
}
