//! Process-wide metrics in the Prometheus (OpenMetrics) text format.
//!
//! Temporal's SDKs emit no latency metric for async completion (temporalio/sdk-java#2092): these say how
//! many settles ended how, how long a settle took to reach the parent, what is waiting and for how long,
//! what failed and how often the pump heartbeats. One registry per process, as a scrape expects.

use std::sync::LazyLock;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// Upper bounds (seconds) of the delivery-duration buckets: from a local commit-and-RPC to an outage.
const DELIVERY_BUCKETS: [f64; 14] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];
/// The age buckets of the pending gauge: (label, lower bound in ms), youngest first.
pub const PENDING_AGES: [(&str, i64); 5] =
    [("lt_1m", 0), ("1m_10m", 60_000), ("10m_1h", 600_000), ("1h_1d", 3_600_000), ("ge_1d", 86_400_000)];

struct Metrics {
    registry: Registry,
    settled: Family<Labels, Counter>,
    delivery_duration: Histogram,
    pending: Family<Labels, Gauge>,
    errors: Family<Labels, Counter>,
    heartbeats: Counter,
    requests: Family<Labels, Counter>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let settled = Family::<Labels, Counter>::default();
    let delivery_duration = Histogram::new(DELIVERY_BUCKETS);
    let pending = Family::<Labels, Gauge>::default();
    let errors = Family::<Labels, Counter>::default();
    let heartbeats = Counter::default();
    let requests = Family::<Labels, Counter>::default();
    let mut registry = Registry::with_prefix("stigmer_handshake");
    registry.register("settled", "Settle calls, by execution kind and settle outcome", settled.clone());
    registry.register(
        "delivery_duration_seconds",
        "From the settle (its commit) to the parent activity's acknowledged RPC",
        delivery_duration.clone(),
    );
    registry.register("pending", "Executions whose parent waits (armed callbacks), by age", pending.clone());
    registry.register("errors", "Errors raised to callers or met in the background, by type", errors.clone());
    registry.register("heartbeats", "Heartbeats sent to parent activities (pump and runner)", heartbeats.clone());
    registry.register(
        "requests",
        "Requests to `stigmer-handshake serve`, by face (grpc, http), method and answer code",
        requests.clone(),
    );
    Metrics { registry, settled, delivery_duration, pending, errors, heartbeats, requests }
});

pub fn settled(kind: &str, outcome: &str) {
    METRICS.settled.get_or_create(&vec![("kind", kind.to_owned()), ("outcome", outcome.to_owned())]).inc();
}

pub fn delivered_after(seconds: f64) {
    METRICS.delivery_duration.observe(seconds.max(0.0));
}

pub fn error(kind: &str) {
    METRICS.errors.get_or_create(&vec![("type", kind.to_owned())]).inc();
}

pub fn heartbeat() {
    METRICS.heartbeats.inc();
}

pub fn request(face: &str, method: &str, code: &str) {
    let labels = vec![("face", face.to_owned()), ("method", method.to_owned()), ("code", code.to_owned())];
    METRICS.requests.get_or_create(&labels).inc();
}

/// Replace the pending gauge with counts per age bucket (`PENDING_AGES` order).
pub fn set_pending(counts: &[i64]) {
    for ((label, _), count) in PENDING_AGES.iter().zip(counts) {
        METRICS.pending.get_or_create(&vec![("age", (*label).to_owned())]).set(*count);
    }
}

/// Every metric, in the OpenMetrics text format (what Prometheus scrapes).
pub fn text() -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &METRICS.registry);
    out
}
