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

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
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
/// A runner's claim on a pumped execution is renewed every third of its lease (one renewal may fail and
/// the claim still holds), at most this often (those due together: one statement).
const RENEW_FRACTION: u32 = 3;
const MIN_RENEW_INTERVAL: Duration = Duration::from_millis(100);

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
    /// When the next heartbeat is due (the schedule holds it too).
    next_at: Instant,
    /// How often the runner's claim is renewed (a third of its lease), and when next (as scheduled).
    renew_every: Duration,
    renew_at: Instant,
    details: Option<Vec<u8>>,
    /// The runner set details of its own: status summaries no longer replace them.
    custom_details: bool,
    signals: Signals,
    in_flight: bool,
}

/// The executions this process heartbeats, and when each is due: the next heartbeat, and the next renewal
/// of its claim. The schedules are min-heaps of (time, id) read from the earliest: a tick touches what is
/// due, never every execution tracked. A time superseded later (a heartbeat rescheduled) stays in its
/// heap until it comes up, and is dropped then.
#[derive(Default)]
struct Tracked {
    entries: HashMap<String, Entry>,
    beats: BinaryHeap<Reverse<(Instant, String)>>,
    renewals: BinaryHeap<Reverse<(Instant, String)>>,
}

impl Tracked {
    fn get(&self, id: &str) -> Option<&Entry> {
        self.entries.get(id)
    }

    fn get_mut(&mut self, id: &str) -> Option<&mut Entry> {
        self.entries.get_mut(id)
    }

    /// Heartbeat `id` at `at` (it stays scheduled for any earlier time it had, which then finds it not
    /// due and drops it).
    fn beat_at(&mut self, id: &str, at: Instant) {
        if let Some(entry) = self.entries.get_mut(id) {
            entry.next_at = at;
            self.beats.push(Reverse((at, id.to_owned())));
        }
    }

    /// The executions due a heartbeat at `now`, marked in flight.
    fn take_due_beats(&mut self, now: Instant) -> Vec<(String, TaskToken, Option<Vec<u8>>)> {
        let mut due = Vec::new();
        while let Some(Reverse((at, _))) = self.beats.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, id))) = self.beats.pop() else { break };
            if let Some(e) = self.entries.get_mut(&id) {
                if e.next_at == at && !e.in_flight && !e.signals.gone {
                    e.in_flight = true;
                    due.push((id, e.token.clone(), e.details.clone()));
                }
            }
        }
        due
    }

    /// The executions whose claim is due a renewal at `now`, rescheduled.
    fn take_due_renewals(&mut self, now: Instant) -> Vec<String> {
        let mut due = Vec::new();
        while let Some(Reverse((at, _))) = self.renewals.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, id))) = self.renewals.pop() else { break };
            if let Some(e) = self.entries.get_mut(&id).filter(|e| e.renew_at == at) {
                e.renew_at = now + e.renew_every;
                self.renewals.push(Reverse((e.renew_at, id.clone())));
                due.push(id);
            }
        }
        due
    }
}

/// The executions this process heartbeats, and what it heartbeats them with.
pub struct Pump {
    tracked: Mutex<Tracked>,
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
            tracked: Mutex::default(),
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
        *self.lock() = Tracked::default();
        self.changed.notify_waiters();
    }

    /// Start heartbeating `id` and renewing the runner's claim on it, whose lease is `lease` (idempotent:
    /// a re-claim keeps the latest details and signals).
    pub fn track(&self, id: &str, token: TaskToken, heartbeat_timeout_ms: Option<i64>, lease: Duration) {
        let interval = interval(heartbeat_timeout_ms, self.default_interval);
        let renew_every = (lease / RENEW_FRACTION).max(MIN_RENEW_INTERVAL);
        let now = Instant::now();
        // A heartbeat timeout runs from the attempt's start: beat at once. Without one, the first beat can
        // wait an interval (a claim of hundreds then costs no burst of heartbeats).
        let first_at = now + if heartbeat_timeout_ms.is_some() { Duration::ZERO } else { interval };
        let mut tracked = self.lock();
        let new = !tracked.entries.contains_key(id);
        let entry = tracked.entries.entry(id.to_owned()).or_insert_with(|| Entry {
            token: token.clone(),
            interval,
            next_at: first_at,
            renew_every,
            renew_at: now + renew_every,
            details: None,
            custom_details: false,
            signals: Signals::default(),
            in_flight: false,
        });
        entry.token = token;
        entry.interval = interval;
        entry.renew_every = renew_every;
        if new {
            tracked.beats.push(Reverse((first_at, id.to_owned())));
            tracked.renewals.push(Reverse((now + renew_every, id.to_owned())));
        }
        // (A re-claim keeps its schedules; a changed lease applies from the next renewal.)
    }

    /// Heartbeat `id` with a re-bound attempt's token from now on, at once (its heartbeat timeout runs
    /// from its start); a no-op when `id` is not pumped here.
    pub fn rebind(&self, id: &str, token: TaskToken, heartbeat_timeout_ms: Option<i64>) {
        let mut tracked = self.lock();
        let changed = tracked.get_mut(id).is_some_and(|entry| {
            entry.follow(token, interval(heartbeat_timeout_ms, self.default_interval));
            true
        });
        if changed {
            tracked.beat_at(id, Instant::now());
        }
        drop(tracked);
        if changed {
            self.changed.notify_waiters();
        }
    }

    pub fn untrack(&self, id: &str) {
        self.lock().entries.remove(id);
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
            tracked: self.lock().entries.len(),
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Tracked> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts/removes).
        self.tracked.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
    /// Beat with `token` (a newer attempt's) from now on (the caller schedules a beat at once).
    fn follow(&mut self, token: TaskToken, interval: Duration) {
        self.token = token;
        self.interval = interval;
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
    let renewing = Arc::new(AtomicBool::new(false));
    loop {
        tokio::time::sleep(TICK).await;
        let Some(pump) = pump.upgrade().filter(|p| !p.stopped.load(Ordering::Acquire)) else { return };
        let now = Instant::now();
        if !renewing.load(Ordering::Acquire) {
            // Pumping is the runner's sign of life: it keeps the runner's claims on what it pumps. In a task
            // of its own: a store busy with a burst of settles must not hold back the heartbeats.
            let ids = pump.lock().take_due_renewals(now);
            if !ids.is_empty() {
                renewing.store(true, Ordering::Release);
                let (pump, renewing) = (pump.clone(), renewing.clone());
                tokio::spawn(async move {
                    if let Err(err) = pump.store.renew_claims(&ids).await {
                        tracing::warn!(error = %err, "could not renew the runner's claims");
                    }
                    renewing.store(false, Ordering::Release);
                });
            }
        }
        let due = pump.lock().take_due_beats(now);
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
        let mut tracked = pump.lock();
        let Some(entry) = tracked.get_mut(id) else { return };
        entry.in_flight = false;
        let before = entry.signals;
        // When to beat next; None: not again (the parent is gone).
        let next = match &reply {
            Ok(flags) => {
                entry.signals.flags = *flags;
                Some(Instant::now() + entry.interval)
            }
            Err(Error::ActivityGone { .. }) => match parent {
                // Unless the store was re-bound again meanwhile (this process's `rebind` already moved on).
                Some(Parent::Rebound(current, heartbeat_timeout_ms))
                    if entry.token.secret_bytes() == token.secret_bytes() =>
                {
                    entry.follow(current, interval(heartbeat_timeout_ms, pump.default_interval));
                    Some(Instant::now())
                }
                Some(Parent::Retrying | Parent::Unknown) => Some(Instant::now() + RETRY_INTERVAL.min(entry.interval)),
                // Kept (not heartbeated any more) so the runner learns it; untracked when it settles.
                Some(Parent::Gone) => {
                    entry.signals.gone = true;
                    None
                }
                _ => Some(Instant::now()),
            },
            Err(err) => {
                tracing::warn!(execution = id, token = %token.fingerprint(), error = %err, "heartbeat failed; retrying");
                Some(Instant::now() + RETRY_INTERVAL.min(entry.interval))
            }
        };
        let after = entry.signals;
        if let Some(at) = next {
            tracked.beat_at(id, at);
        }
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

    fn entry(next_at: Instant, renew_every: Duration) -> Entry {
        let bytes = crate::token::tests::sample_token_bytes("1", 1);
        Entry {
            token: TaskToken::parse(&bytes).unwrap(),
            interval: Duration::from_secs(1),
            next_at,
            renew_every,
            renew_at: next_at + renew_every,
            details: None,
            custom_details: false,
            signals: Signals::default(),
            in_flight: false,
        }
    }

    #[test]
    fn a_tick_takes_only_what_is_due_and_drops_superseded_times() {
        let now = Instant::now();
        let mut tracked = Tracked::default();
        for i in 0..1_000 {
            let id = format!("e{i}");
            tracked.entries.insert(id.clone(), entry(now + Duration::from_secs(i), Duration::from_secs(100)));
            tracked.beats.push(Reverse((now + Duration::from_secs(i), id)));
        }
        let due = tracked.take_due_beats(now + Duration::from_millis(1_500));
        assert_eq!(due.iter().map(|(id, ..)| id.as_str()).collect::<Vec<_>>(), ["e0", "e1"]);
        assert_eq!(tracked.beats.len(), 998, "the others were not touched");
        // Rescheduled earlier: the old time is dropped when it comes up, the new one is taken once.
        tracked.beat_at("e5", now);
        let due = tracked.take_due_beats(now + Duration::from_millis(5_500));
        assert_eq!(due.iter().map(|(id, ..)| id.as_str()).collect::<Vec<_>>(), ["e5", "e2", "e3", "e4"]);
        assert!(tracked.take_due_beats(now + Duration::from_millis(5_500)).is_empty(), "e5's old time dropped");
        // In flight: not taken again until its beat ends and schedules the next.
        tracked.beat_at("e2", now);
        assert!(tracked.take_due_beats(now + Duration::from_secs(6)).iter().all(|(id, ..)| id != "e2"));
    }

    #[test]
    fn claims_are_renewed_at_a_third_of_their_lease_and_a_reclaim_adds_no_second_renewal() {
        let pump_lease = Duration::from_secs(300);
        let (now, every) = (Instant::now(), (pump_lease / RENEW_FRACTION).max(MIN_RENEW_INTERVAL));
        let mut tracked = Tracked::default();
        tracked.entries.insert("e".into(), entry(now, every));
        tracked.renewals.push(Reverse((now + every, "e".into())));
        assert!(tracked.take_due_renewals(now + Duration::from_secs(99)).is_empty(), "not before a third");
        assert_eq!(tracked.take_due_renewals(now + Duration::from_secs(100)), ["e"]);
        // A stale time (the execution was untracked and claimed again) renews nothing and is dropped.
        tracked.renewals.push(Reverse((now + Duration::from_secs(150), "e".into())));
        assert!(tracked.take_due_renewals(now + Duration::from_secs(160)).is_empty());
        assert_eq!(tracked.take_due_renewals(now + Duration::from_secs(200)), ["e"]);
        assert_eq!(tracked.renewals.len(), 1);
    }

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
