//! The heartbeat pump: while a runner holds an execution, heartbeat its parent activity through the
//! token, carrying the child's latest progress, and bring cancel/pause/reset back to the runner.
//!
//! Temporal does not heartbeat async-completing activities for you (temporalio/sdk-go#703). The pump
//! runs in the runner's process on purpose: if the runner dies, the heartbeats stop, the parent's
//! heartbeat timeout fires and its retry policy takes over (re-binding to the same child).
//!
//! A re-bind gives the parent a new token, in whatever process the retried caller activity runs: the pump
//! follows the store's current token (at a re-bind in this process, and whenever the server no longer
//! knows the token it beats with), and calls a parent gone only when no retry of it is pending.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

use crate::errors::{Error, Result};
use crate::store::Store;
use crate::temporal::{self, HeartbeatFlags, LazyTemporal, Target, Temporal};
use crate::token::TaskToken;

/// How often the pump looks for executions due a heartbeat.
const TICK: Duration = Duration::from_millis(50);
/// Heartbeats in flight at once, whatever the number of executions.
const CONCURRENCY: usize = 64;
/// Heartbeat at a third of the parent's heartbeat timeout: two may fail and the parent still lives.
const TIMEOUT_FRACTION: u32 = 3;
const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// After a failed heartbeat (server unreachable), try again this soon.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// How often the runner's claims on pumped executions are renewed (one statement for all of them).
const RENEW_EVERY: Duration = Duration::from_millis(500);

/// What the runner learns from the parent through the heartbeats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Signals {
    pub flags: HeartbeatFlags,
    /// The parent attempt no longer exists (timed out, closed, retried without us).
    pub gone: bool,
}

struct Entry {
    token: TaskToken,
    interval: Duration,
    next_at: Instant,
    details: Option<Vec<u8>>,
    /// The runner set details of its own: status summaries no longer replace them.
    custom_details: bool,
    signals: Signals,
    in_flight: bool,
}

/// The executions this process heartbeats, and what it heartbeats them with.
pub struct Pump {
    entries: Mutex<HashMap<String, Entry>>,
    /// Wakes runners waiting on a signal.
    changed: Notify,
    sent: AtomicU64,
    failed: AtomicU64,
    /// Where a re-bound parent's current token is read, and cancel requests recorded.
    store: Store,
    /// None: store only (nothing is tracked then).
    temporal: Option<LazyTemporal>,
    /// The interval for parents that declared no heartbeat timeout.
    default_interval: Duration,
    /// Set by `stop`: the loop ends at its next tick.
    stopped: AtomicBool,
}

/// Counters of the pump since the process started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PumpStats {
    pub tracked: usize,
    pub heartbeats_sent: u64,
    pub heartbeats_failed: u64,
}

impl Pump {
    pub fn new(store: Store, temporal: Option<LazyTemporal>, default_interval: Duration) -> Self {
        Self {
            entries: Mutex::default(),
            changed: Notify::new(),
            sent: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            store,
            temporal,
            default_interval,
            stopped: AtomicBool::new(false),
        }
    }

    /// Stop heartbeating everything, for good (the handshake is closing); runners waiting on a signal
    /// are woken and see their execution no longer pumped.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.lock().clear();
        self.changed.notify_waiters();
    }

    /// Start heartbeating `id` (idempotent: a re-claim keeps the latest details and signals).
    pub fn track(&self, id: &str, token: TaskToken, heartbeat_timeout_ms: Option<i64>) {
        let interval = interval(heartbeat_timeout_ms, self.default_interval);
        // A heartbeat timeout runs from the attempt's start: beat at once. Without one, the first beat can
        // wait an interval (a claim of hundreds then costs no burst of heartbeats).
        let first_at = Instant::now() + if heartbeat_timeout_ms.is_some() { Duration::ZERO } else { interval };
        let mut entries = self.lock();
        let entry = entries.entry(id.to_owned()).or_insert_with(|| Entry {
            token: token.clone(),
            interval,
            next_at: first_at,
            details: None,
            custom_details: false,
            signals: Signals::default(),
            in_flight: false,
        });
        entry.token = token;
        entry.interval = interval;
    }

    /// Heartbeat `id` with a re-bound attempt's token from now on, at once (its heartbeat timeout runs
    /// from its start); a no-op when `id` is not pumped here.
    pub fn rebind(&self, id: &str, token: TaskToken, heartbeat_timeout_ms: Option<i64>) {
        let changed = self.lock().get_mut(id).is_some_and(|entry| {
            entry.follow(token, interval(heartbeat_timeout_ms, self.default_interval));
            true
        });
        if changed {
            self.changed.notify_waiters();
        }
    }

    pub fn untrack(&self, id: &str) {
        self.lock().remove(id);
        self.changed.notify_waiters();
    }

    /// The details the next heartbeats carry (encoded `Payloads`). Returns false if `id` is not pumped.
    pub fn set_details(&self, id: &str, details: Vec<u8>) -> bool {
        self.lock()
            .get_mut(id)
            .map(|e| {
                e.details = Some(details);
                e.custom_details = true;
            })
            .is_some()
    }

    /// Details summarised from the latest status, used until the runner sets its own.
    pub fn set_progress_summary(&self, id: &str, details: Vec<u8>) {
        if let Some(entry) = self.lock().get_mut(id).filter(|e| !e.custom_details) {
            entry.details = Some(details);
        }
    }

    pub fn signals(&self, id: &str) -> Option<Signals> {
        self.lock().get(id).map(|e| e.signals)
    }

    pub fn stats(&self) -> PumpStats {
        PumpStats {
            tracked: self.lock().len(),
            heartbeats_sent: self.sent.load(Ordering::Relaxed),
            heartbeats_failed: self.failed.load(Ordering::Relaxed),
        }
    }

    /// Wait until `accept` holds for the signals of `id`, or it stops being pumped (None).
    pub async fn wait(&self, id: &str, accept: impl Fn(&Signals) -> bool) -> Option<Signals> {
        loop {
            let mut notified = std::pin::pin!(self.changed.notified());
            notified.as_mut().enable();
            match self.signals(id) {
                None => return None,
                Some(s) if accept(&s) => return Some(s),
                Some(_) => notified.await,
            }
        }
    }

    async fn temporal(&self) -> Result<&Temporal> {
        temporal::configured(self.temporal.as_ref())?.get().await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts/removes).
        self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// How often to heartbeat a parent with this heartbeat timeout (or none).
fn interval(heartbeat_timeout_ms: Option<i64>, default_interval: Duration) -> Duration {
    heartbeat_timeout_ms
        .and_then(|ms| u64::try_from(ms).ok())
        .map_or(default_interval, |ms| Duration::from_millis(ms) / TIMEOUT_FRACTION)
        .max(MIN_INTERVAL)
}

impl Entry {
    /// Beat with `token` (a newer attempt's) from now on, starting at once.
    fn follow(&mut self, token: TaskToken, interval: Duration) {
        self.token = token;
        self.interval = interval;
        self.next_at = Instant::now();
        self.signals.gone = false;
    }
}

/// What became of a parent whose token the server no longer knows.
enum Parent {
    /// Retried and re-bound: the store holds a newer attempt's token (and its heartbeat timeout).
    Rebound(TaskToken, Option<i64>),
    /// Its retry is pending and has not re-bound yet: keep looking.
    Retrying,
    Gone,
    /// The store or Temporal could not say now: ask again later.
    Unknown,
}

/// Ask the store for `id`'s current token, and Temporal whether a retry of the parent is pending.
async fn follow_parent(pump: &Pump, id: &str, token: &TaskToken) -> Parent {
    match pump.store.armed_callback(id).await {
        Ok(Some((current, heartbeat_timeout_ms))) if current.secret_bytes() != token.secret_bytes() => {
            Parent::Rebound(current, heartbeat_timeout_ms)
        }
        Ok(Some(_)) => {
            let described = match pump.temporal().await.and_then(|t| t.for_token(token)) {
                Ok(temporal) => temporal.parent_state(token).await,
                Err(err) => Err(err),
            };
            match described {
                Ok(Some(state)) if state.retried(token) => Parent::Retrying,
                Ok(_) => Parent::Gone,
                Err(_) => Parent::Unknown,
            }
        }
        // Settled or no longer armed (or deleted): nobody is left to heartbeat.
        Ok(None) | Err(Error::ExecutionNotFound(_)) => Parent::Gone,
        Err(_) => Parent::Unknown,
    }
}

/// The pump's loop: runs while the pump lives (as long as its handshake).
pub async fn run(pump: Weak<Pump>) {
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    let mut renewed_at = Instant::now();
    let renewing = Arc::new(AtomicBool::new(false));
    loop {
        tokio::time::sleep(TICK).await;
        let Some(pump) = pump.upgrade().filter(|p| !p.stopped.load(Ordering::Acquire)) else { return };
        let now = Instant::now();
        if now - renewed_at >= RENEW_EVERY && !renewing.swap(true, Ordering::AcqRel) {
            // Pumping is the runner's sign of life: it keeps the runner's claims on what it pumps. In a task
            // of its own: a store busy with a burst of settles must not hold back the heartbeats.
            renewed_at = now;
            let ids: Vec<String> = pump.lock().keys().cloned().collect();
            let (pump, renewing) = (pump.clone(), renewing.clone());
            tokio::spawn(async move {
                if let Err(err) = pump.store.renew_claims(&ids).await {
                    tracing::warn!(error = %err, "could not renew the runner's claims");
                }
                renewing.store(false, Ordering::Release);
            });
        }
        let due: Vec<(String, TaskToken, Option<Vec<u8>>)> = {
            let mut entries = pump.lock();
            entries
                .iter_mut()
                .filter(|(_, e)| !e.in_flight && !e.signals.gone && e.next_at <= now)
                .map(|(id, e)| {
                    e.in_flight = true;
                    (id.clone(), e.token.clone(), e.details.clone())
                })
                .collect()
        };
        for (id, token, details) in due {
            let Ok(permit) = permits.clone().acquire_owned().await else { return };
            let pump = pump.clone();
            tokio::spawn(async move {
                let _permit = permit;
                beat(&pump, &id, &token, details.as_deref()).await;
            });
        }
    }
}

async fn beat(pump: &Pump, id: &str, token: &TaskToken, details: Option<&[u8]>) {
    let reply = match pump.temporal().await {
        Ok(temporal) => temporal.heartbeat(&Target::Token(token.clone()), details).await,
        Err(err) => Err(err),
    };
    let counter = if reply.is_ok() { &pump.sent } else { &pump.failed };
    counter.fetch_add(1, Ordering::Relaxed);
    let parent = match &reply {
        Err(Error::ActivityGone { .. }) => Some(follow_parent(pump, id, token).await),
        _ => None,
    };
    let (changed, newly_cancelled) = {
        let mut entries = pump.lock();
        let Some(entry) = entries.get_mut(id) else { return };
        entry.in_flight = false;
        let before = entry.signals;
        match &reply {
            Ok(flags) => {
                entry.signals.flags = *flags;
                entry.next_at = Instant::now() + entry.interval;
            }
            Err(Error::ActivityGone { .. }) => match parent {
                // Unless the store was re-bound again meanwhile (this process's `rebind` already moved on).
                Some(Parent::Rebound(current, heartbeat_timeout_ms))
                    if entry.token.secret_bytes() == token.secret_bytes() =>
                {
                    entry.follow(current, interval(heartbeat_timeout_ms, pump.default_interval));
                }
                Some(Parent::Retrying | Parent::Unknown) => {
                    entry.next_at = Instant::now() + RETRY_INTERVAL.min(entry.interval);
                }
                // Kept (not heartbeated any more) so the runner learns it; untracked when it settles.
                Some(Parent::Gone) => entry.signals.gone = true,
                _ => entry.next_at = Instant::now(),
            },
            Err(err) => {
                tracing::warn!(execution = id, token = %token.fingerprint(), error = %err, "heartbeat failed; retrying");
                entry.next_at = Instant::now() + RETRY_INTERVAL.min(entry.interval);
            }
        }
        let after = entry.signals;
        (after != before, after.flags.cancel_requested && !before.flags.cancel_requested)
    };
    if newly_cancelled {
        // The status records the request (before the runner hears of it), for readers in any process.
        if let Err(err) = pump.store.mark(id, |s| s.set_cancel_requested(true)).await {
            tracing::warn!(execution = id, error = %err, "could not record the cancel request");
        }
    }
    if changed {
        pump.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: Duration = Duration::from_secs(30);

    #[test]
    fn a_parent_is_heartbeated_at_a_third_of_its_heartbeat_timeout() {
        assert_eq!(interval(Some(9_000), DEFAULT), Duration::from_secs(3));
        assert_eq!(interval(Some(1_000), DEFAULT), Duration::from_nanos(333_333_333));
        assert_eq!(interval(Some(3_600_000), DEFAULT), Duration::from_secs(1_200));
    }

    #[test]
    fn without_a_heartbeat_timeout_the_default_interval_and_never_faster_than_the_floor() {
        assert_eq!(interval(None, DEFAULT), DEFAULT);
        // A negative timeout cannot come from Temporal; it is treated as none.
        assert_eq!(interval(Some(-5), DEFAULT), DEFAULT);
        assert_eq!(interval(Some(30), DEFAULT), MIN_INTERVAL);
        assert_eq!(interval(Some(0), DEFAULT), MIN_INTERVAL);
        assert_eq!(interval(None, Duration::from_millis(1)), MIN_INTERVAL);
    }
}
