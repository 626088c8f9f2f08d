//! The operations through `Core`, as every face calls them, on SQLite and on PostgreSQL, against a real
//! Temporal dev server: create (ids, re-binding, the namespace check), claim, update_status, settle (with
//! and without a parent, with a capability), wait and reconcile. The parents are workflows the server does
//! not have, so settles find them gone, as they would a parent that timed out.

use std::sync::Arc;
use std::time::Duration;

use _core::core::{Core, CreateRequest, Settings};
use _core::errors::Error;
use _core::proto::ai::stigmer::agentic::agentexecution::v1::{AgentExecutionSpec, AgentExecutionStatus};
use _core::store::{Created, Labels, ListFilter};
use _core::token::TaskProto;
use _core::vocabulary::{Kind, Outcome, Phase};
use prost::Message;

mod common;
use common::{pg, DevServer};

fn settings(store: String, temporal: String) -> Settings {
    Settings {
        store,
        temporal: Some(temporal),
        identity: Some("core-test".into()),
        // The dev server was just started: give it time to answer.
        wait_for_temporal: Some(Duration::from_secs(60)),
        ..Settings::default()
    }
}

fn request(id: Option<&str>, token: Option<Vec<u8>>) -> CreateRequest {
    let spec = AgentExecutionSpec { agent_id: "a".into(), message: "m".into(), ..Default::default() };
    CreateRequest {
        kind: Kind::Agent,
        spec: spec.encode_to_vec(),
        id: id.map(str::to_owned),
        token,
        status: None,
        heartbeat_timeout_ms: None,
        labels: Labels::new(),
        activity_context: None,
    }
}

/// A task token of a workflow the server does not have, in namespace `namespace_id`.
fn token(namespace_id: &str, workflow_id: &str, attempt: i32) -> Vec<u8> {
    TaskProto {
        namespace_id: namespace_id.into(),
        workflow_id: workflow_id.into(),
        run_id: uuid::Uuid::new_v4().to_string(),
        scheduled_event_id: 5,
        attempt,
        activity_id: "1".into(),
        ..Default::default()
    }
    .encode_to_vec()
}

async fn operations(store_url: String, temporal: String) {
    let core = Arc::new(Core::connect(settings(store_url, temporal)).await.unwrap());
    let namespace_id = core.temporal().await.unwrap().namespace_id("default").unwrap().to_owned();

    // create: the id asked for, or one made of the kind; a retried attempt re-binds; foreign namespaces are refused.
    let direct = match core.create(request(None, None)).await.unwrap() {
        Created::New(id) => id,
        other @ Created::Rebound(_) => panic!("{other:?}"),
    };
    assert!(direct.starts_with("agent-"), "{direct}");
    let parent = format!("parent-{}", uuid::Uuid::new_v4());
    let first = token(&namespace_id, &parent, 1);
    let deferred = core.create(request(Some("deferred"), Some(first.clone()))).await.unwrap();
    assert_eq!(deferred, Created::New("deferred".into()));
    let mut retried = TaskProto::decode(first.as_slice()).unwrap();
    retried.attempt = 2;
    let rebound = core.create(request(Some("ignored"), Some(retried.encode_to_vec()))).await.unwrap();
    assert_eq!(rebound, Created::Rebound("deferred".into()), "the same call retried: its one child");
    let foreign = core.create(request(None, Some(token("not-this-namespace", &parent, 1)))).await;
    assert!(matches!(foreign, Err(Error::Namespace(_))), "{foreign:?}");
    for bad in ["", "a\u{202e}b", &"x".repeat(300)] {
        assert!(matches!(core.create(request(Some(bad), None)).await, Err(Error::InvalidArgument(_))));
    }

    // claim, then progress through update_status.
    let claimed: Vec<String> =
        core.claim(Kind::Agent, 10, 60_000, None).await.unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(claimed.len(), 2, "{claimed:?}");
    assert!(matches!(core.claim(Kind::Agent, 0, 60_000, None).await, Err(Error::InvalidArgument(_))));
    let running = AgentExecutionStatus { phase: Phase::InProgress.to_proto(), ..Default::default() };
    core.update_status(&direct, &running.encode_to_vec(), false).await.unwrap();

    // settle: a capability for another execution is refused and changes nothing; a direct execution keeps
    // its outcome; a parent the server does not have is gone.
    let capability = core.grant("deferred", vec!["complete".into()], 60_000).unwrap();
    let complete = Outcome::Complete { result: None };
    let refused = core.settle(&direct, complete.clone(), None, true, Some(&capability)).await;
    assert!(matches!(refused, Err(Error::Capability(_))), "{refused:?}");
    assert_eq!(core.get(&direct, false).await.unwrap().phase, Phase::InProgress);
    assert_eq!(core.settle(&direct, complete.clone(), None, true, None).await.unwrap().name(), "no_callback");
    let settled = core.settle("deferred", complete.clone(), None, true, Some(&capability)).await.unwrap();
    assert_eq!(settled.name(), "activity_gone", "{settled:?}");
    assert_eq!(core.settle("deferred", complete, None, true, None).await.unwrap().name(), "already_settled");

    // wait returns the ended execution; reconcile finds nothing left to do.
    let ended = core.wait("deferred", Some(Duration::from_secs(5))).await.unwrap();
    assert_eq!(ended.phase, Phase::Completed);
    let report = core.reconcile().await.unwrap();
    assert_eq!((report.children_failed, report.orphaned, report.skipped), (0, 0, 0), "{report:?}");
    let listed = core
        .list(&ListFilter { kind: Some(Kind::Agent), phase: Some(Phase::Completed), ..ListFilter::default() }, None, 10)
        .await
        .unwrap();
    assert_eq!(listed.len(), 2);
}

/// One dev server for both stores, one after the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_operations_on_sqlite_and_postgres() {
    let Some(server) = DevServer::start() else { return };
    let folder = std::env::temp_dir().join(format!("core-test-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&folder).unwrap();
    operations(format!("sqlite://{}", folder.join("handshake.db").display()), server.url.clone()).await;
    std::fs::remove_dir_all(folder).unwrap();
    let url = server.url.clone();
    pg::with_schema_url(|store_url| operations(store_url, url)).await;
}
