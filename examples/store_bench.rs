//! The store's own cost, without Temporal: CPU and rate of N creates, then N settles with their
//! delivery records, `CONCURRENCY` at a time (what B1's defers and B2's settles ask of the store).
//!
//!     cargo run --release --example store_bench -- sqlite:///tmp/bench.db 5000 64
//!     cargo run --release --example store_bench -- 'postgres://postgres@127.0.0.1:5432/test?schema=bench' 5000 64
//!
//! Use a new database each run (the ids are per process, the rows stay).

use std::sync::Arc;
use std::time::Instant;

use _core::proto::ai::stigmer::agentic::agentexecution::v1::AgentExecutionSpec;
use _core::store::{self, NewExecution, Settled, Store};
use _core::token::{TaskProto, TaskToken};
use _core::vocabulary::{DeliveryResult, Kind, Outcome};
use prost::Message;
use tokio::sync::Semaphore;

/// This process's CPU time (user + system), in seconds, from /proc (10 ms ticks: run thousands).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let fields: Vec<f64> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    (fields[11] + fields[12]) / 100.0
}

/// Run `op(i)` for i in 0..n, `concurrency` at a time; returns (µs of CPU per op, ops per second).
async fn measure<F, Fut>(n: u32, concurrency: usize, op: F) -> (f64, f64)
where
    F: Fn(u32) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let gate = Arc::new(Semaphore::new(concurrency));
    let (cpu, wall) = (cpu_seconds(), Instant::now());
    let mut tasks = Vec::new();
    for i in 0..n {
        let (gate, work) = (gate.clone(), op(i));
        tasks.push(tokio::spawn(async move {
            let _slot = gate.acquire().await.expect("semaphore open");
            work.await;
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let n = f64::from(n);
    ((cpu_seconds() - cpu) / n * 1e6, n / wall.elapsed().as_secs_f64())
}

fn execution_id(i: u32) -> String {
    format!("bench-{}-{i}", std::process::id())
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, n, concurrency] = args.as_slice() else {
        eprintln!("usage: store_bench STORE_URL N CONCURRENCY");
        std::process::exit(2);
    };
    let (n, concurrency): (u32, usize) = (n.parse().expect("N"), concurrency.parse().expect("CONCURRENCY"));
    let store: Store = store::open(url).await.expect("open the store");
    let spec =
        AgentExecutionSpec { agent_id: "bench".into(), message: "hi".into(), ..Default::default() }.encode_to_vec();

    let (create_cpu, create_rate) = measure(n, concurrency, |i| {
        let (store, spec) = (store.clone(), spec.clone());
        async move {
            let token = TaskProto {
                namespace_id: "bench".into(),
                workflow_id: format!("parent-{}", std::process::id()),
                run_id: "run".into(),
                scheduled_event_id: 5,
                attempt: 1,
                activity_id: i.to_string(),
                ..Default::default()
            };
            let token = TaskToken::parse(&token.encode_to_vec()).expect("token");
            let new = NewExecution {
                id: execution_id(i),
                kind: Kind::Agent,
                spec,
                status: None,
                token: Some(token),
                heartbeat_timeout_ms: None,
                labels: store::Labels::new(),
                activity_context: None,
            };
            store.create(new).await.expect("create");
        }
    })
    .await;
    let (settle_cpu, settle_rate) = measure(n, concurrency, |i| {
        let store = store.clone();
        async move {
            let outcome = Outcome::Complete { result: Some(vec![b'x'; 40]) };
            let Settled::Now { claimed: Some(claimed), .. } =
                store.settle(&execution_id(i), &outcome, None, 60_000).await.expect("settle")
            else {
                panic!("execution {i} was not settled now with its callback")
            };
            store.record_delivery(&claimed, &DeliveryResult::Delivered).await.expect("record");
        }
    })
    .await;
    println!("create:            {create_cpu:6.1} µs CPU each, {create_rate:7.0}/s");
    println!("settle + record:   {settle_cpu:6.1} µs CPU each, {settle_rate:7.0}/s");
}
