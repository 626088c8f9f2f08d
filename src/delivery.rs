//! Delivery of claimed callbacks: the RPC, then the result recorded in the store.
//!
//! A callback is claimed under a lease before it is sent, so a process that dies mid-delivery leaves a
//! row that `deliver_due` picks up once the lease runs out: nothing is dropped.

use crate::errors::{Error, Result};
use crate::store::{ClaimedCallback, DeliveryResult, SqliteStore};
use crate::temporal::{Target, Temporal};

/// How long a claimed callback stays with one deliverer before another may take it.
pub const DELIVERY_LEASE_MS: i64 = 60_000;

/// Send one claimed callback and record what happened.
pub async fn deliver(store: &SqliteStore, temporal: &Temporal, claimed: ClaimedCallback) -> Result<DeliveryResult> {
    let sent = temporal.respond(&Target::Token(claimed.token.clone()), &claimed.outcome).await;
    let result = match sent {
        Ok(()) => DeliveryResult::Delivered,
        // The server answers NotFound for an attempt that completed, timed out, was retried or whose
        // workflow closed; the token can never work again.
        Err(Error::ActivityGone { message }) => DeliveryResult::Gone(message),
        Err(Error::Rpc { code: tonic::Code::InvalidArgument, message }) => {
            DeliveryResult::Gone(format!("the server refused the token: {message}"))
        }
        Err(other) => DeliveryResult::Failed(other.to_string()),
    };
    tracing::debug!(
        execution = %claimed.execution_id,
        token = %claimed.token.fingerprint(),
        outcome = claimed.outcome.name(),
        delivered = matches!(result, DeliveryResult::Delivered),
        "callback sent"
    );
    store.record_delivery(&claimed.execution_id, &result).await?;
    Ok(result)
}

/// Deliver every due callback (and every one whose lease expired); returns how many were settled
/// (delivered or found gone). The building block of the reconciler.
pub async fn deliver_due(store: &SqliteStore, temporal: &Temporal, limit: i64) -> Result<usize> {
    let mut settled = 0;
    for claimed in store.claim_due(limit, DELIVERY_LEASE_MS).await? {
        if !matches!(deliver(store, temporal, claimed).await?, DeliveryResult::Failed(_)) {
            settled += 1;
        }
    }
    Ok(settled)
}
