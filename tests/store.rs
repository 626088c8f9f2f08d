//! The store's contract, on SQLite and on PostgreSQL alike: token kept out of reads, one-transaction
//! settle, leases, idempotency, re-binding. Each behaviour test runs once per backend; PostgreSQL's run in
//! a schema of their own, dropped afterwards (skipped with the reason when no server answers, unless
//! CI=true).

use _core::errors::Error;
use _core::proto::ai::stigmer::agentic::agentexecution::v1::{AgentExecutionSpec, AgentExecutionStatus};
use _core::proto::ai::stigmer::agentic::workflowexecution::v1::WorkflowExecutionStatus;
use _core::store::{self, Created, ListFilter, NewExecution, Settled, Store};
use _core::token::{TaskProto, TaskToken};
use _core::vocabulary::{CallbackState, DeliveryResult, GoneReason, Kind, Outcome, Phase};
use prost::Message;

mod common;
use common::pg;

fn token(activity_id: &str) -> TaskToken {
    token_attempt(activity_id, 1)
}

fn token_attempt(activity_id: &str, attempt: i32) -> TaskToken {
    let bytes = TaskProto {
        namespace_id: "ns-1".into(),
        workflow_id: "parent".into(),
        run_id: "run-1".into(),
        scheduled_event_id: 5,
        attempt,
        activity_id: activity_id.into(),
        ..Default::default()
    }
    .encode_to_vec();
    TaskToken::parse(&bytes).unwrap()
}

/// What attempt 2 of the parent activity "1" asks to create.
fn retried(id: &str) -> NewExecution {
    NewExecution {
        id: id.into(),
        kind: Kind::Agent,
        spec: spec(),
        status: None,
        token: Some(token_attempt("1", 2)),
        heartbeat_timeout_ms: None,
        labels: store::Labels::new(),
        activity_context: None,
    }
}

/// A store that has done some work: `ended` executions settled and delivered, `waiting` armed ones
/// waiting for their child, as many running (claimed), and a few direct ones.
async fn seed_history(store: &Store, ended: usize, waiting: usize) {
    // A third of them run on the workflow path.
    let parent = |i: usize| NewExecution {
        token: Some(token(&format!("p{i}"))),
        kind: if i.is_multiple_of(3) { Kind::Workflow } else { Kind::Agent },
        ..direct(&format!("e{i}"))
    };
    for chunk in (0..ended + 2 * waiting).collect::<Vec<_>>().chunks(256) {
        let mut batch = tokio::task::JoinSet::new();
        for &i in chunk {
            let (store, new) = (store.clone(), parent(i));
            batch.spawn(async move { store.create(new).await.unwrap() });
        }
        batch.join_all().await;
    }
    for i in 0..20 {
        store.create(direct(&format!("d{i}"))).await.unwrap();
    }
    for kind in [Kind::Agent, Kind::Workflow] {
        store.claim(kind, i64::try_from(ended + waiting).unwrap(), 60_000).await.unwrap();
    }
    for chunk in (0..ended).collect::<Vec<_>>().chunks(256) {
        let mut batch = tokio::task::JoinSet::new();
        for &i in chunk {
            let store = store.clone();
            batch.spawn(async move {
                store.settle(&format!("e{i}"), &Outcome::Complete { result: None }, None, 0).await.unwrap()
            });
        }
        batch.join_all().await;
    }
    loop {
        let claimed = store.claim_due(256, 60_000).await.unwrap();
        if claimed.is_empty() {
            break;
        }
        for callback in &claimed {
            store.record_delivery(callback, &DeliveryResult::Delivered).await.unwrap();
        }
    }
}

fn now_ms() -> i64 {
    _core::clock::now_ms()
}

fn spec() -> Vec<u8> {
    AgentExecutionSpec { agent_id: "a".into(), message: "hi".into(), ..Default::default() }.encode_to_vec()
}

/// Store an execution (with the token of parent activity "1", attempt 1, if asked).
async fn seed(store: &Store, id: &str, with_token: bool) {
    store
        .create(NewExecution {
            id: id.into(),
            kind: Kind::Agent,
            spec: spec(),
            status: None,
            token: with_token.then(|| token("1")),
            heartbeat_timeout_ms: None,
            labels: store::Labels::new(),
            activity_context: None,
        })
        .await
        .unwrap();
}

fn direct(id: &str) -> NewExecution {
    NewExecution {
        id: id.into(),
        kind: Kind::Agent,
        spec: spec(),
        status: None,
        token: None,
        heartbeat_timeout_ms: None,
        labels: store::Labels::new(),
        activity_context: None,
    }
}

/// Create all of `news` at once (so the writer batches them) and check each answer.
async fn create_at_once(store: &Store, news: Vec<NewExecution>, expected: Vec<Created>) {
    let tasks: Vec<_> = news
        .into_iter()
        .map(|new| {
            let store = store.clone();
            tokio::spawn(async move { store.create(new).await.unwrap() })
        })
        .collect();
    for (task, expected) in tasks.into_iter().zip(expected) {
        assert_eq!(task.await.unwrap(), expected);
    }
}

fn status_token(record: &store::ExecutionRecord) -> Vec<u8> {
    AgentExecutionStatus::decode(record.status.as_slice()).unwrap().callback_token
}

#[tokio::test]
async fn a_claim_larger_than_one_statement_can_bind_starts_every_execution() {
    // 2 bound values per started execution: 16,500 of them in one statement would pass SQLite's 32,766.
    let store = store::open("sqlite::memory:").await.unwrap();
    let n = 16_500;
    for first in (0..n).step_by(1_000) {
        let news: Vec<NewExecution> = (first..(first + 1_000).min(n)).map(|i| direct(&format!("e{i}"))).collect();
        let expected = news.iter().map(|new| Created::New(new.id.clone())).collect();
        create_at_once(&store, news, expected).await;
    }
    let claimed = store.claim(Kind::Agent, 20_000, 60_000).await.unwrap();
    assert_eq!(claimed.len(), n);
    assert!(claimed.iter().all(|record| record.phase == Phase::InProgress));
    assert!(store.claim(Kind::Agent, 1, 60_000).await.unwrap().is_empty(), "nothing left to claim");
}

/// Runs each test once on SQLite (in memory) and once on PostgreSQL (a fresh schema).
macro_rules! on_both_stores {
    ($(async fn $name:ident($store:ident) $body:block)*) => {
        mod sqlite {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    let $store = store::open("sqlite::memory:").await.unwrap();
                    $body
                }
            )*
        }
        mod postgres {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    pg::with_schema(|$store| async move $body).await;
                }
            )*
        }
    };
}

on_both_stores! {
    async fn lists_filter_by_labels_and_page_by_key(store) {
        let labelled = |id: &str, pairs: &[(&str, &str)]| NewExecution {
            labels: pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            activity_context: None,
            ..direct(id)
        };
        let news = vec![
            labelled("a", &[("run", "gh-1"), ("team", "search")]),
            labelled("b", &[("run", "gh-2"), ("team", "search")]),
            labelled("c", &[("team", "ads"), ("weird \"key'", "v=1")]),
            direct("d"),
        ];
        for new in news {
            store.create(new).await.unwrap();
        }
        let ids = |records: Vec<store::ExecutionRecord>| records.into_iter().map(|r| r.id).collect::<Vec<_>>();
        let want = |pairs: &[(&str, &str)]| -> store::Labels {
            pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
        };
        let list = |labels: store::Labels| {
            let store = store.clone();
            async move { ids(store.list(&ListFilter { labels, ..ListFilter::default() }, None, 10).await.unwrap()) }
        };
        assert_eq!(list(want(&[("team", "search")])).await, ["a", "b"]);
        assert_eq!(list(want(&[("team", "search"), ("run", "gh-2")])).await, ["b"]);
        assert_eq!(list(want(&[("weird \"key'", "v=1")])).await, ["c"]);
        assert!(list(want(&[("team", "nobody")])).await.is_empty());
        assert_eq!(list(want(&[])).await, ["a", "b", "c", "d"]);
        assert_eq!(store.get("c", false).await.unwrap().labels, want(&[("team", "ads"), ("weird \"key'", "v=1")]));
        assert!(store.get("d", false).await.unwrap().labels.is_empty());
        // Pages by key: each page starts after the last one's (created_ms, id), whatever else changes.
        let (mut seen, mut after) = (Vec::new(), None::<(i64, String)>);
        loop {
            let page = store.list(&ListFilter::default(), after.as_ref().map(|(ms, id)| (*ms, id.as_str())), 3).await;
            let page = page.unwrap();
            let Some(end) = page.last() else { break };
            after = Some((end.created_ms, end.id.clone()));
            seen.extend(ids(page));
        }
        assert_eq!(seen, ["a", "b", "c", "d"]);
    }

    async fn token_is_returned_only_on_request_and_cleared_after_delivery(store) {
        seed(&store, "e1", true).await;
        assert!(status_token(&store.get("e1", false).await.unwrap()).is_empty());
        assert_eq!(status_token(&store.get("e1", true).await.unwrap()), token("1").secret_bytes());

        let Settled::Now { claimed: Some(claimed), .. } =
            store.settle("e1", &Outcome::Complete { result: None }, None, 60_000).await.unwrap()
        else {
            panic!("the settle should claim the armed callback");
        };
        assert_eq!(claimed.token.fingerprint(), token("1").fingerprint());
        let record = store.get("e1", true).await.unwrap();
        assert_eq!(record.phase, Phase::Completed);
        assert_eq!(record.callback.as_ref().unwrap().state, CallbackState::Delivering);

        store.record_delivery(&claimed, &DeliveryResult::Delivered).await.unwrap();
        let record = store.get("e1", true).await.unwrap();
        assert!(status_token(&record).is_empty(), "token cleared once settled");
        assert_eq!(record.callback.unwrap().state, CallbackState::Delivered);
    }

    async fn second_settle_is_already_settled_and_writes_nothing(store) {
        seed(&store, "e1", true).await;
        store.settle("e1", &Outcome::Complete { result: None }, None, 60_000).await.unwrap();
        let before = store.get("e1", false).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let again = store
            .settle(
                "e1",
                &Outcome::Fail { message: "x".into(), failure_type: String::new(), non_retryable: false, details: None, failure: None },
                None,
                60_000,
            )
            .await
            .unwrap();
        let Settled::Already { outcome, .. } = again else { panic!("second settle must not settle again") };
        assert_eq!(outcome.as_deref(), Some("complete"));
        let after = store.get("e1", false).await.unwrap();
        assert_eq!((after.phase, after.updated_ms, after.status), (Phase::Completed, before.updated_ms, before.status));
    }

    async fn the_activity_context_survives_a_rebind_and_an_encoded_failure_is_delivered_as_recorded(store) {
        let context = r#"{"namespace":"default","task_queue":"agents"}"#.to_owned();
        store.create(NewExecution { activity_context: Some(context.clone()), ..retried("e1") }).await.unwrap();
        // A later attempt that knows no context (created over the network) keeps the recorded one.
        let third = NewExecution { token: Some(token_attempt("1", 3)), ..direct("e2") };
        assert_eq!(store.create(third).await.unwrap(), Created::Rebound("e1".into()));
        assert_eq!(store.get("e1", false).await.unwrap().callback.unwrap().activity_context, Some(context));

        let failure = Outcome::Fail {
            message: "plain".into(),
            failure_type: "T".into(),
            non_retryable: true,
            details: None,
            failure: Some(b"\x0a\x0fEncoded failure".to_vec()),
        };
        store.settle("e1", &failure, None, 0).await.unwrap();
        let claimed = store.claim_due(10, 60_000).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].outcome, failure, "what the failure converter made is what is sent");
    }

    async fn every_hot_query_reads_through_an_index_not_the_whole_table(store) {
        seed_history(&store, 3_000, 200).await;
        let plans = store.query_plans().await.unwrap();
        assert!(plans.len() >= 12, "{plans:?}");
        for (name, lines) in &plans {
            let plan = lines.join("\n");
            // A table read in full: SQLite's SCAN without an index, PostgreSQL's Seq Scan.
            let full_scan = lines.iter().any(|line| {
                let line = line.trim_start_matches([' ', '-', '>']);
                line.starts_with("Seq Scan on executions")
                    || line.starts_with("Seq Scan on callbacks")
                    || ["SCAN e", "SCAN c", "SCAN executions", "SCAN callbacks"].contains(&line)
            });
            assert!(!full_scan, "{name} reads a whole table:\n{plan}");
            // An index read in full to filter it (SQLite: SCAN ... USING INDEX), where a filter could seek.
            let filtered = name != "list" && name != "list, next page";
            let index_scan = lines.iter().any(|l| l.contains("SCAN e USING") || l.contains("SCAN c USING"));
            assert!(!(filtered && index_scan), "{name} reads a whole index:\n{plan}");
            // Every execution of a kind is most of the table: only a page in order may start there.
            let by_kind = lines.iter().any(|l| l.ends_with("(kind=?)") || l.trim() == "Index Cond: (kind = 'agent'::text)");
            assert!(name.starts_with("list") || !by_kind, "{name} reads every execution of a kind:\n{plan}");
            // Sorting every match (SQLite's temporary B-tree) for a page of a listing.
            if name.starts_with("list") {
                assert!(!plan.contains("TEMP B-TREE FOR ORDER BY"), "{name} sorts every match:\n{plan}");
                assert!(!plan.contains("Sort Key"), "{name} sorts every match:\n{plan}");
            }
        }
    }

    async fn pruning_deletes_only_what_ended_and_whose_parent_was_told(store) {
        // Ended with the parent told (delivered), ended with the parent gone, ended direct: prunable.
        for id in ["told", "gone", "dead", "due"] {
            store.create(NewExecution { token: Some(token(id)), ..direct(id) }).await.unwrap();
            store.settle(id, &Outcome::Complete { result: None }, None, 0).await.unwrap();
        }
        store.create(direct("direct")).await.unwrap();
        store.settle("direct", &Outcome::Cancel { details: None }, None, 0).await.unwrap();
        for callback in store.claim_due(10, 60_000).await.unwrap() {
            let result = match callback.execution_id.as_str() {
                "told" => DeliveryResult::Delivered,
                "gone" => DeliveryResult::Gone(GoneReason::ParentTimedOut, "timed out".into()),
                "dead" => DeliveryResult::Dead("permission denied".into()),
                _ => DeliveryResult::Retry { error: "unavailable".into(), retry_in_ms: 60_000 },
            };
            store.record_delivery(&callback, &result).await.unwrap();
        }
        // Still waiting: armed (its child runs) and a direct one running.
        store.create(NewExecution { token: Some(token("armed")), ..direct("armed") }).await.unwrap();
        store.create(direct("running")).await.unwrap();

        assert_eq!(store.prune(now_ms() - 60_000, 100).await.unwrap(), 0, "nothing ended over a minute ago");
        assert_eq!(store.prune(now_ms() + 1_000, 2).await.unwrap(), 2, "a batch at most");
        assert_eq!(store.prune(now_ms() + 1_000, 100).await.unwrap(), 1);
        for kept in ["dead", "due", "armed", "running"] {
            store.get(kept, false).await.unwrap_or_else(|e| panic!("{kept} was pruned: {e}"));
        }
        for pruned in ["told", "gone", "direct"] {
            assert!(matches!(store.get(pruned, false).await, Err(Error::ExecutionNotFound(_))), "{pruned} kept");
        }
        // Its callback went with it: the parent's next attempt would make a new child.
        store.reclaim_space().await.unwrap();
        assert!(store.claim_due(10, 0).await.unwrap().iter().all(|c| c.execution_id == "due"));
    }

    async fn store_only_settle_is_due_and_claimed_once_under_a_lease(store) {
        seed(&store, "e1", true).await;
        let settled = store.settle("e1", &Outcome::Cancel { details: None }, None, 0).await.unwrap();
        assert!(matches!(settled, Settled::Now { claimed: None, has_callback: true, .. }));
        assert_eq!(store.get("e1", false).await.unwrap().callback.unwrap().state, CallbackState::Due);

        let first = store.claim_due(10, 60_000).await.unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].outcome, Outcome::Cancel { details: None });
        assert!(store.claim_due(10, 60_000).await.unwrap().is_empty(), "leased: nobody else gets it");

        let retry = DeliveryResult::Retry { error: "unavailable".into(), retry_in_ms: 0 };
        store.record_delivery(&first[0], &retry).await.unwrap();
        let record = store.get("e1", false).await.unwrap();
        let callback = record.callback.unwrap();
        assert_eq!(callback.state, CallbackState::Due);
        assert_eq!(callback.attempts, 1);
        assert_eq!(callback.last_error.as_deref(), Some("unavailable"));
        assert_eq!(store.claim_due(10, 0).await.unwrap().len(), 1, "a failed delivery is due again");
    }

    async fn expired_lease_is_claimable_again(store) {
        seed(&store, "e1", true).await;
        store.settle("e1", &Outcome::Complete { result: None }, None, 1).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        assert_eq!(store.claim_due(10, 60_000).await.unwrap().len(), 1, "a dead deliverer's lease runs out");
    }

    async fn a_dead_letter_keeps_its_token_until_redelivered_and_the_console_sees_it(store) {
        seed(&store, "e1", true).await;
        seed(&store, "e2", false).await;
        store.settle("e1", &Outcome::Complete { result: None }, None, 0).await.unwrap();
        let marker = store.last_change().await.unwrap();
        let claimed = store.claim_due(10, 60_000).await.unwrap().remove(0);
        assert_ne!(store.last_change().await.unwrap(), marker, "a claim for delivery is a change");
        store.record_delivery(&claimed, &DeliveryResult::Dead("permission denied".into())).await.unwrap();
        let record = store.get("e1", true).await.unwrap();
        assert_eq!(record.callback.as_ref().unwrap().state, CallbackState::Dead);
        assert_eq!(status_token(&record), token("1").secret_bytes(), "kept, for redeliver");

        let overview = store.overview(0, 10).await.unwrap();
        assert_eq!(overview.troubled.len(), 1);
        assert_eq!(overview.troubled[0].execution_id, "e1");
        assert_eq!(overview.troubled[0].last_error.as_deref(), Some("permission denied"));
        assert_eq!(overview.settles_per_minute.iter().map(|(_, n)| n).sum::<i64>(), 1);
        let counts: Vec<_> = overview.counts.iter().map(|(k, p, n)| (k.as_str(), p.name(), *n)).collect();
        assert_eq!(counts, [("agent", "PENDING", 1), ("agent", "COMPLETED", 1)]);

        let by_state = |state: &str| ListFilter { callback_state: Some(state.into()), ..ListFilter::default() };
        let ids = |records: Vec<store::ExecutionRecord>| records.into_iter().map(|r| r.id).collect::<Vec<_>>();
        assert_eq!(ids(store.list(&by_state("dead"), None, 10).await.unwrap()), ["e1"]);
        assert_eq!(ids(store.list(&by_state("none"), None, 10).await.unwrap()), ["e2"]);
        assert!(store.list(&by_state("armed"), None, 10).await.unwrap().is_empty());
        let text = |t: &str| ListFilter { text: Some(t.into()), ..ListFilter::default() };
        assert_eq!(ids(store.list(&text("e2"), None, 10).await.unwrap()), ["e2"], "found in the id");
        assert_eq!(ids(store.list(&text("hi"), None, 10).await.unwrap()), ["e1", "e2"], "found in the spec");
        assert!(store.list(&text("nowhere"), None, 10).await.unwrap().is_empty());

        assert!(matches!(store.redeliver("e2").await, Err(Error::InvalidState { .. })), "no callback");
        let marker = store.last_change().await.unwrap();
        store.redeliver("e1").await.unwrap();
        assert_ne!(store.last_change().await.unwrap(), marker);
        assert!(matches!(store.redeliver("e1").await, Err(Error::InvalidState { .. })), "due now, not dead");
        let again = store.claim_due(10, 60_000).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].token.fingerprint(), token("1").fingerprint());
        store.record_delivery(&again[0], &DeliveryResult::Delivered).await.unwrap();
        assert!(status_token(&store.get("e1", true).await.unwrap()).is_empty(), "cleared once delivered");
        assert!(matches!(store.redeliver("nope").await, Err(Error::ExecutionNotFound(_))));
    }

    async fn direct_execution_has_no_callback(store) {
        seed(&store, "e1", false).await;
        let settled = store.settle("e1", &Outcome::Complete { result: None }, None, 60_000).await.unwrap();
        assert!(matches!(settled, Settled::Now { claimed: None, has_callback: false, .. }));
        assert!(store.get("e1", false).await.unwrap().callback.is_none());
        assert!(store.claim_due(10, 60_000).await.unwrap().is_empty());
    }

    async fn update_status_refuses_terminal_phases_and_ended_executions(store) {
        seed(&store, "e1", true).await;
        let running = AgentExecutionStatus { phase: 2, callback_token: b"forged".to_vec(), ..Default::default() };
        store.update_status("e1", &running.encode_to_vec()).await.unwrap();
        let record = store.get("e1", true).await.unwrap();
        assert_eq!(record.phase, Phase::InProgress);
        assert_eq!(status_token(&record), token("1").secret_bytes(), "a status update cannot replace the token");

        let done = AgentExecutionStatus { phase: 3, ..Default::default() };
        assert!(matches!(store.update_status("e1", &done.encode_to_vec()).await, Err(Error::InvalidArgument(_))));
        store.settle("e1", &Outcome::Complete { result: None }, None, 0).await.unwrap();
        assert!(matches!(store.update_status("e1", &running.encode_to_vec()).await, Err(Error::InvalidState { .. })));
    }

    async fn status_updates_keep_the_recorded_start_time(store) {
        seed(&store, "e1", false).await;
        store.claim(Kind::Agent, 1, 60_000).await.unwrap();
        let started =
            AgentExecutionStatus::decode(store.get("e1", false).await.unwrap().status.as_slice()).unwrap().started_at;
        assert!(started.is_some());
        store.update_status("e1", &AgentExecutionStatus::default().encode_to_vec()).await.unwrap();
        let status = AgentExecutionStatus::decode(store.get("e1", false).await.unwrap().status.as_slice()).unwrap();
        assert_eq!(status.started_at, started);
        assert_eq!(status.phase, Phase::InProgress.to_proto(), "an unspecified phase keeps the current one");
    }

    async fn claims_never_overlap_and_unknown_ids_are_typed(store) {
        for i in 0..5 {
            store.create(direct(&format!("e{i}"))).await.unwrap();
        }
        let a = store.claim(Kind::Agent, 3, 60_000).await.unwrap();
        let b = store.claim(Kind::Agent, 3, 60_000).await.unwrap();
        assert_eq!((a.len(), b.len()), (3, 2));
        assert!(a.iter().all(|x| b.iter().all(|y| x.id != y.id)));
        assert!(store.claim(Kind::Workflow, 3, 60_000).await.unwrap().is_empty());
        assert!(matches!(store.get("nope", false).await, Err(Error::ExecutionNotFound(_))));
        assert!(matches!(store.create(direct("e0")).await, Err(Error::InvalidState { .. })));
    }

    async fn a_failing_write_in_a_burst_fails_alone(store) {
        // Writes queued together share one transaction (SQLite's writer): one that fails must neither undo
        // nor fail the others.
        seed(&store, "taken", true).await;
        let creates: Vec<_> = (0..20)
            .map(|i| {
                let store = store.clone();
                let new = if i == 7 {
                    direct("taken")
                } else {
                    NewExecution { token: Some(token(&format!("a{i}"))), ..direct(&format!("e{i}")) }
                };
                tokio::spawn(async move { store.create(new).await })
            })
            .collect();
        for (i, created) in creates.into_iter().enumerate() {
            match created.await.unwrap() {
                Ok(new) => assert_eq!(new, Created::New(format!("e{i}"))),
                Err(err) => assert!(i == 7 && matches!(err, Error::InvalidState { .. }), "e{i}: {err:?}"),
            }
        }
        let settles: Vec<_> = (0..20)
            .map(|i| {
                let store = store.clone();
                let id = if i == 7 { "unknown".to_owned() } else { format!("e{i}") };
                tokio::spawn(async move { store.settle(&id, &Outcome::Complete { result: None }, None, 60_000).await })
            })
            .collect();
        for (i, settled) in settles.into_iter().enumerate() {
            match settled.await.unwrap() {
                Ok(Settled::Now { claimed: Some(_), .. }) => assert_ne!(i, 7),
                Err(Error::ExecutionNotFound(id)) => assert_eq!((i, id.as_str()), (7, "unknown")),
                _ => panic!("settle {i}: unexpected result"),
            }
        }
        for i in (0..20).filter(|i| *i != 7) {
            assert_eq!(store.get(&format!("e{i}"), false).await.unwrap().phase, Phase::Completed);
        }
        assert_eq!(store.get("taken", false).await.unwrap().phase, Phase::Pending);
    }

    async fn a_burst_of_settles_answers_each_as_one_settle_alone_would(store) {
        // A burst is written set-based (a few statements for all): each execution must still get its own
        // outcome, payloads and state, and the odd ones out (settled twice, already ended, direct) their
        // own answers.
        let armed = |id: &str, parent: &str, attempt: i32| NewExecution {
            token: Some(token_attempt(parent, attempt)),
            ..direct(id)
        };
        let news: Vec<NewExecution> = (0..12)
            .map(|i| armed(&format!("e{i}"), &format!("b{i}"), 1))
            .chain([direct("direct"), armed("ended", "ended", 1)])
            .collect();
        let expected = news.iter().map(|new| Created::New(new.id.clone())).collect();
        create_at_once(&store, news, expected).await;
        for i in 0..12 {
            let record = store.get(&format!("e{i}"), true).await.unwrap();
            assert_eq!(record.callback.as_ref().unwrap().activity_id, format!("b{i}"));
            assert_eq!(status_token(&record), token(&format!("b{i}")).secret_bytes(), "e{i} has its own token");
        }
        // A burst with a retried parent among new ones: the retry re-binds, the others are new.
        let retry = vec![armed("e12", "b12", 1), armed("e5-retry", "b5", 2), armed("e13", "b13", 1)];
        let expected = vec![Created::New("e12".into()), Created::Rebound("e5".into()), Created::New("e13".into())];
        create_at_once(&store, retry, expected).await;
        assert_eq!(store.get("e5", false).await.unwrap().callback.unwrap().attempt, 2);
        store.settle("ended", &Outcome::Cancel { details: None }, None, 0).await.unwrap();
        let outcome = |i: usize| {
            let mine = Some(format!("payload {i}").into_bytes());
            if i.is_multiple_of(3) {
                Outcome::Fail { message: format!("m{i}"), failure_type: "T".into(), non_retryable: true, details: mine, failure: None }
            } else {
                Outcome::Complete { result: mine }
            }
        };
        // e3 is settled twice; even executions are leased to the caller, odd ones left due.
        let jobs: Vec<(String, Outcome, i64)> = (0..12)
            .chain([3])
            .map(|i| (format!("e{i}"), outcome(i), if i.is_multiple_of(2) { 60_000 } else { 0 }))
            .chain([("direct".to_owned(), outcome(1), 60_000), ("ended".to_owned(), outcome(1), 60_000)])
            .collect();
        let tasks: Vec<_> = jobs
            .iter()
            .cloned()
            .map(|(id, outcome, lease)| {
                let store = store.clone();
                tokio::spawn(async move { store.settle(&id, &outcome, None, lease).await.unwrap() })
            })
            .collect();
        let mut answers = Vec::new();
        for task in tasks {
            answers.push(task.await.unwrap());
        }
        let mut claimed = Vec::new();
        let mut e3_ended = 0;
        for ((id, outcome, lease), answer) in jobs.iter().zip(answers) {
            match (id.as_str(), answer) {
                ("direct", Settled::Now { claimed: None, has_callback: false, .. }) => {}
                ("ended", Settled::Already { outcome: Some(recorded), .. }) => assert_eq!(recorded, "cancel"),
                ("e3", Settled::Already { outcome: Some(recorded), .. }) => assert_eq!(recorded, "fail"),
                (id, Settled::Now { claimed: Some(callback), has_callback: true, .. }) if *lease > 0 => {
                    assert_eq!((callback.execution_id.as_str(), &callback.outcome), (id, outcome));
                    claimed.push(callback);
                }
                (id, Settled::Now { claimed: None, has_callback: true, .. }) if *lease == 0 => {
                    e3_ended += usize::from(id == "e3");
                }
                (id, _) => panic!("{id}: unexpected answer"),
            }
        }
        assert_eq!(e3_ended, 1, "e3 ends once; its second settle finds it ended");
        for i in 0..12_usize {
            let record = store.get(&format!("e{i}"), false).await.unwrap();
            let callback = record.callback.unwrap();
            let expected_phase = if i.is_multiple_of(3) { Phase::Failed } else { Phase::Completed };
            assert_eq!(record.phase, expected_phase, "e{i}");
            assert_eq!(callback.payloads, Some(format!("payload {i}").into_bytes()), "e{i}");
            assert_eq!(callback.outcome.as_deref(), Some(if i.is_multiple_of(3) { "fail" } else { "complete" }));
            let state = if i.is_multiple_of(2) { CallbackState::Delivering } else { CallbackState::Due };
            assert_eq!(callback.state, state, "e{i}");
        }
        // The records of a burst, too: each lands on its own callback.
        let tasks: Vec<_> = claimed
            .into_iter()
            .enumerate()
            .map(|(n, callback)| {
                let store = store.clone();
                let result = if n.is_multiple_of(2) {
                    DeliveryResult::Delivered
                } else {
                    DeliveryResult::Retry { error: format!("busy {}", callback.execution_id), retry_in_ms: 1_000 }
                };
                tokio::spawn(async move {
                    store.record_delivery(&callback, &result).await.unwrap();
                    (callback.execution_id, result)
                })
            })
            .collect();
        for task in tasks {
            let (id, result) = task.await.unwrap();
            let record = store.get(&id, true).await.unwrap();
            let callback = record.callback.clone().unwrap();
            if result == DeliveryResult::Delivered {
                assert_eq!((callback.state, callback.last_error), (CallbackState::Delivered, None), "{id}");
                assert!(status_token(&record).is_empty(), "{id}: a delivered token is cleared");
            } else {
                assert_eq!(callback.state, CallbackState::Due, "{id}");
                assert_eq!(callback.last_error, Some(format!("busy {id}")));
                assert!(!status_token(&record).is_empty(), "{id}: a token to retry with is kept");
            }
            assert_eq!(callback.attempts, 1, "{id}");
        }
    }

    async fn a_retried_parent_rebinds_to_its_child_and_the_old_token_is_dropped(store) {
        seed(&store, "e1", true).await;
        let again = retried("e2");
        assert_eq!(store.create(again).await.unwrap(), Created::Rebound("e1".into()));
        assert!(matches!(store.get("e2", false).await, Err(Error::ExecutionNotFound(_))), "no second child");
        let record = store.get("e1", true).await.unwrap();
        assert_eq!(status_token(&record), token_attempt("1", 2).secret_bytes());
        assert_eq!(record.callback.unwrap().attempt, 2);

        let stale = NewExecution {
            id: "e3".into(),
            kind: Kind::Agent,
            spec: spec(),
            status: None,
            token: Some(token("1")),
            heartbeat_timeout_ms: None,
            labels: store::Labels::new(),
            activity_context: None,
        };
        assert!(matches!(store.create(stale).await, Err(Error::InvalidState { .. })), "attempt 1 cannot take it back");
    }

    async fn a_retry_after_a_delivered_failure_gets_a_new_child_and_the_settled_row_keeps_no_token(store) {
        seed(&store, "e1", true).await;
        let failure = Outcome::Fail {
            message: "overloaded".into(),
            failure_type: "OVERLOADED".into(),
            non_retryable: false,
            details: None,
            failure: None,
        };
        let Settled::Now { claimed: Some(claimed), .. } = store.settle("e1", &failure, None, 60_000).await.unwrap()
        else {
            panic!("claimed");
        };
        store.record_delivery(&claimed, &DeliveryResult::Delivered).await.unwrap();

        // Attempt 2 asks for the same id, which is taken: its child is e1-attempt-2, linked to e1.
        assert_eq!(store.create(retried("e1")).await.unwrap(), Created::New("e1-attempt-2".into()));
        let first = store.get("e1", true).await.unwrap();
        let callback = first.callback.as_ref().unwrap();
        assert_eq!((callback.state, callback.attempt), (CallbackState::Delivered, 1), "the first keeps its record");
        assert!(status_token(&first).is_empty(), "no token in a settled row");
        let second = store.get("e1-attempt-2", true).await.unwrap();
        assert_eq!(second.retry_of.as_deref(), Some("e1"));
        assert_eq!((second.phase, second.callback.as_ref().unwrap().state), (Phase::Pending, CallbackState::Armed));
        assert_eq!(status_token(&second), token_attempt("1", 2).secret_bytes());
        assert_eq!(first.retry_of, None);

        // The same attempt deferring again is idempotent; attempt 3 re-binds to the new child.
        assert_eq!(store.create(retried("e1")).await.unwrap(), Created::Rebound("e1-attempt-2".into()));
        let third = NewExecution { token: Some(token_attempt("1", 3)), ..direct("e1") };
        assert_eq!(store.create(third).await.unwrap(), Created::Rebound("e1-attempt-2".into()));
        // A fresh id is kept as it is.
        let Settled::Now { claimed: Some(claimed), .. } =
            store.settle("e1-attempt-2", &failure, None, 60_000).await.unwrap()
        else {
            panic!("claimed");
        };
        store.record_delivery(&claimed, &DeliveryResult::Delivered).await.unwrap();
        let fourth = NewExecution { token: Some(token_attempt("1", 4)), ..direct("fresh") };
        assert_eq!(store.create(fourth).await.unwrap(), Created::New("fresh".into()));
        assert_eq!(store.get("fresh", false).await.unwrap().retry_of.as_deref(), Some("e1-attempt-2"));
    }

    async fn a_gone_outcome_is_redelivered_to_the_next_attempt(store) {
        seed(&store, "e1", true).await;
        let Settled::Now { claimed: Some(claimed), .. } =
            store.settle("e1", &Outcome::Complete { result: Some(vec![1, 2]) }, None, 60_000).await.unwrap()
        else {
            panic!("claimed");
        };
        store.record_delivery(&claimed, &DeliveryResult::Gone(GoneReason::StaleAttempt, "not found".into())).await.unwrap();
        let record = store.get("e1", true).await.unwrap();
        let callback = record.callback.as_ref().unwrap();
        assert_eq!((callback.state, callback.gone_reason.as_deref()), (CallbackState::Gone, Some("STALE_ATTEMPT")));
        assert_eq!(callback.payloads.as_deref(), Some(&[1u8, 2][..]), "the result is kept");
        assert!(status_token(&record).is_empty());

        let next = retried("x");
        assert_eq!(store.create(next).await.unwrap(), Created::Rebound("e1".into()));
        let due = store.claim_due(10, 60_000).await.unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].token.attempt, 2);
        assert_eq!(due[0].outcome, Outcome::Complete { result: Some(vec![1, 2]) });
    }

    async fn a_stale_delivery_cannot_overwrite_a_rebound_callback(store) {
        seed(&store, "e1", true).await;
        let Settled::Now { claimed: Some(old), .. } =
            store.settle("e1", &Outcome::Complete { result: None }, None, 60_000).await.unwrap()
        else {
            panic!("claimed");
        };
        let next = retried("x");
        store.create(next).await.unwrap();
        store.record_delivery(&old, &DeliveryResult::Gone(GoneReason::StaleAttempt, "old".into())).await.unwrap();
        let callback = store.get("e1", false).await.unwrap().callback.unwrap();
        assert_eq!(callback.state, CallbackState::Due, "the new attempt's delivery is still owed");
    }

    async fn a_dead_runners_claim_expires_and_is_taken_over(store) {
        seed(&store, "e1", false).await;
        assert_eq!(store.claim(Kind::Agent, 5, 1).await.unwrap().len(), 1);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let again = store.claim(Kind::Agent, 5, 60_000).await.unwrap();
        assert_eq!(again.len(), 1, "the lease ran out");
        assert_eq!(again[0].phase, Phase::InProgress);
        store.renew_claim("e1").await.unwrap();
        assert!(store.claim(Kind::Agent, 5, 60_000).await.unwrap().is_empty(), "a live lease is kept");
    }

    async fn concurrent_claimers_and_deliverers_never_share_a_row(store) {
        for i in 0..200 {
            store.create(direct(&format!("d{i}"))).await.unwrap();
        }
        for i in 0..100 {
            let mut new = direct(&format!("c{i}"));
            new.token = Some(token(&format!("a{i}")));
            store.create(new).await.unwrap();
            store.settle(&format!("c{i}"), &Outcome::Complete { result: None }, None, 0).await.unwrap();
        }
        let claimers: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move {
                    let (mut runs, mut callbacks) = (Vec::new(), Vec::new());
                    for _ in 0..10 {
                        runs.extend(store.claim(Kind::Agent, 7, 60_000).await.unwrap().into_iter().map(|r| r.id));
                        callbacks.extend(store.claim_due(4, 60_000).await.unwrap().into_iter().map(|c| c.execution_id));
                    }
                    (runs, callbacks)
                })
            })
            .collect();
        let (mut runs, mut callbacks) = (Vec::new(), Vec::new());
        for claimer in claimers {
            let (r, c) = claimer.await.unwrap();
            runs.extend(r);
            callbacks.extend(c);
        }
        let (run_count, callback_count) = (runs.len(), callbacks.len());
        runs.sort();
        runs.dedup();
        callbacks.sort();
        callbacks.dedup();
        assert_eq!((runs.len(), callbacks.len()), (run_count, callback_count), "a row went to two claimers");
        assert_eq!((run_count, callback_count), (200, 100), "every row was claimed");
    }

    async fn two_attempts_racing_to_defer_make_one_child(store) {
        let first = tokio::spawn({
            let store = store.clone();
            async move {
                let mut new = direct("r1");
                new.token = Some(token("race"));
                store.create(new).await
            }
        });
        let second = tokio::spawn({
            let store = store.clone();
            async move {
                let mut new = direct("r2");
                new.token = Some(token_attempt("race", 2));
                store.create(new).await
            }
        });
        let outcomes = [first.await.unwrap(), second.await.unwrap()];
        let made: Vec<_> = outcomes.iter().filter(|o| matches!(o, Ok(Created::New(_)))).collect();
        assert_eq!(made.len(), 1, "exactly one child: {outcomes:?}");
        let children = store.list(&ListFilter { kind: Some(Kind::Agent), ..ListFilter::default() }, None, 10).await.unwrap();
        assert_eq!(children.len(), 1);
        assert_eq!(children[0].callback.as_ref().unwrap().attempt, 2, "the newest attempt holds the callback");
    }
}

/// Two processes' writers settling the same executions in opposite orders: their batches lock the same
/// rows in opposite orders, PostgreSQL aborts one as a deadlock, and its settles run again alone. Each
/// execution ends exactly once and no caller sees an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_batches_that_deadlock_still_settle_each_execution_once() {
    let Some(admin) = pg::admin().await else { return };
    let schema = format!("test_{}", uuid::Uuid::new_v4().simple());
    let url = format!("{}?schema={schema}", pg::base_url());
    let (first, second) = (store::open(&url).await.unwrap(), store::open(&url).await.unwrap());
    let ids: Vec<String> = (0..200).map(|i| format!("e{i}")).collect();
    for id in &ids {
        first.create(NewExecution { token: Some(token(id)), ..direct(id) }).await.unwrap();
    }
    let settle_all = |store: Store, ids: Vec<String>| {
        tokio::spawn(async move {
            let settles: Vec<_> = ids
                .into_iter()
                .map(|id| {
                    let store = store.clone();
                    tokio::spawn(
                        async move { store.settle(&id, &Outcome::Complete { result: None }, None, 60_000).await },
                    )
                })
                .collect();
            let mut results = Vec::new();
            for settle in settles {
                results.push(settle.await.unwrap());
            }
            results
        })
    };
    let forward = settle_all(first, ids.clone());
    let backward = settle_all(second, ids.iter().rev().cloned().collect());
    let results: Vec<_> = forward.await.unwrap().into_iter().chain(backward.await.unwrap()).collect();
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&admin).await.unwrap();
    let now = results.iter().filter(|r| matches!(r, Ok(Settled::Now { .. }))).count();
    let already = results.iter().filter(|r| matches!(r, Ok(Settled::Already { .. }))).count();
    let error = results.iter().find_map(|r| r.as_ref().err());
    assert!(error.is_none(), "a settle failed: {error:?}");
    assert_eq!((now, already), (200, 200));
}

#[tokio::test]
async fn postgres_errors_are_typed() {
    let Some(admin) = pg::admin().await else { return };
    let base = pg::base_url();
    for url in ["postgres://[::1", "postgresql://host:notaport/db", "postgres://u@h/db?sslmode=sometimes"] {
        assert!(matches!(store::open(url).await, Err(Error::InvalidArgument(_))), "{url}");
    }
    let bad_schema = format!("{base}?schema=Robert%27%29%3B");
    assert!(matches!(store::open(&bad_schema).await, Err(Error::InvalidArgument(_))));
    // Nothing listens on port 1.
    let unreachable = store::open("postgres://postgres@127.0.0.1:1/test").await;
    assert!(matches!(unreachable, Err(Error::StoreUnavailable(_))), "{:?}", unreachable.err());
    let stranger = store::open("postgres://no_such_role_here@127.0.0.1:5432/test").await;
    assert!(matches!(stranger, Err(Error::StoreAuth(_))), "{:?}", stranger.err());

    // TLS (rustls), when the server offers it: required works; verifying against an unknown issuer fails typed.
    let ssl: String = sqlx::query_scalar("SHOW ssl").fetch_one(&admin).await.unwrap();
    if ssl == "on" {
        let schema = format!("test_{}", uuid::Uuid::new_v4().simple());
        let tls = store::open(&format!("{base}?sslmode=require&schema={schema}")).await;
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).execute(&admin).await.unwrap();
        assert!(tls.is_ok(), "{:?}", tls.err());
        let unverified = store::open(&format!("{base}?sslmode=verify-full")).await;
        assert!(matches!(unverified, Err(Error::StoreUnavailable(_))), "{:?}", unverified.err());
    }

    // A schema migrated by a newer version: refused, not touched.
    let schema = format!("test_{}", uuid::Uuid::new_v4().simple());
    let url = format!("{base}?schema={schema}");
    drop(store::open(&url).await.unwrap());
    sqlx::query(&format!(
        "INSERT INTO {schema}._sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99990101, 'from the future', true, '\\x00', 0)"
    ))
    .execute(&admin)
    .await
    .unwrap();
    let newer = store::open(&url).await;
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&admin).await.unwrap();
    assert!(matches!(newer, Err(Error::SchemaMismatch(_))), "{:?}", newer.err());
}

#[tokio::test]
async fn bad_urls_and_bad_specs_are_typed_errors() {
    for url in ["mysql://x", "", "not a url", "sqlite:///no/such/dir/x.db?mode=bogus"] {
        assert!(matches!(store::open(url).await, Err(Error::InvalidArgument(_))), "{url}");
    }
    let store = store::open("sqlite::memory:").await.unwrap();
    let bad = NewExecution {
        id: "e".into(),
        kind: Kind::Agent,
        spec: vec![0xff, 0xff],
        status: None,
        token: None,
        heartbeat_timeout_ms: None,
        labels: store::Labels::new(),
        activity_context: None,
    };
    assert!(matches!(store.create(bad).await, Err(Error::InvalidArgument(_))));
}

#[test]
fn callback_token_field_numbers_are_the_contract() {
    // Hand-written wire bytes: tag = (field << 3) | 2 (length-delimited).
    let agent = [&[10 << 3 | 2, 3][..], b"tok"].concat();
    assert_eq!(AgentExecutionStatus::decode(agent.as_slice()).unwrap().callback_token, b"tok");
    let workflow = [&[11 << 3 | 2, 3][..], b"tok"].concat();
    assert_eq!(WorkflowExecutionStatus::decode(workflow.as_slice()).unwrap().callback_token, b"tok");
}
