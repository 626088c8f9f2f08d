//! The connection to Temporal and the four calls the handshake makes on a parent activity:
//! complete, fail, report cancellation and heartbeat, addressed by task token or by id.
//!
//! Payloads arrive already encoded by the Python worker's data converter, so they are sent as they
//! are: the parent decodes them with the same converter into its declared result type.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use temporalio_client::grpc::WorkflowService;
use temporalio_client::{Client, ClientOptions, Connection};
use temporalio_common::protos::temporal::api::activity::v1::ActivityExecutionInfo;
use temporalio_common::protos::temporal::api::common::v1::{Payloads, WorkflowExecution};
use temporalio_common::protos::temporal::api::enums::v1::{
    ActivityExecutionStatus, PendingActivityState, WorkflowExecutionStatus,
};
use temporalio_common::protos::temporal::api::failure::v1::{failure::FailureInfo, ApplicationFailureInfo, Failure};
use temporalio_common::protos::temporal::api::history::v1::history_event::Attributes;
use temporalio_common::protos::temporal::api::workflowservice::v1::{
    DescribeActivityExecutionRequest, DescribeNamespaceRequest, DescribeWorkflowExecutionRequest,
    DescribeWorkflowExecutionResponse, GetWorkflowExecutionHistoryReverseRequest,
    RecordActivityTaskHeartbeatByIdRequest, RecordActivityTaskHeartbeatRequest, RespondActivityTaskCanceledByIdRequest,
    RespondActivityTaskCanceledRequest, RespondActivityTaskCompletedByIdRequest, RespondActivityTaskCompletedRequest,
    RespondActivityTaskFailedByIdRequest, RespondActivityTaskFailedRequest,
};
use tonic::IntoRequest;

use crate::endpoint::{self, Endpoint};
use crate::errors::{Error, Result};
use crate::token::TaskToken;
use crate::vocabulary::Outcome;

/// After a failed connection attempt, calls fail at once for this long instead of each trying again.
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);

/// Which activity a call is for.
#[derive(Clone, Debug)]
pub enum Target {
    Token(TaskToken),
    /// An empty `run_id` means the workflow's latest run. An empty `workflow_id` names a standalone
    /// activity (started by a client, with no workflow): `run_id` is then the activity's own run.
    Id {
        workflow_id: String,
        run_id: String,
        activity_id: String,
    },
}

/// The flags a heartbeat reply carries back to the child.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeartbeatFlags {
    pub cancel_requested: bool,
    pub paused: bool,
    pub reset: bool,
}

/// A pending activity as its workflow shows it.
pub struct PendingActivity {
    /// SCHEDULED, STARTED or CANCEL_REQUESTED.
    pub state: String,
    pub attempt: i32,
    /// The latest heartbeat's details (encoded `Payloads`).
    pub heartbeat_details: Option<Vec<u8>>,
    pub last_heartbeat_ms: Option<i64>,
    pub paused: bool,
}

/// What the handshake needs to know of a workflow: whether it still runs, and its pending activities.
#[derive(Clone, Debug)]
pub struct WorkflowState {
    /// None while running; the closing status otherwise (e.g. "TERMINATED").
    pub closed_as: Option<&'static str>,
    /// (activity id, attempt) of each pending activity.
    pub pending_activities: Vec<(String, i32)>,
}

impl WorkflowState {
    /// Whether the workflow runs and has retried the attempt `token` names (a newer attempt is pending).
    pub fn retried(&self, token: &TaskToken) -> bool {
        self.closed_as.is_none()
            && self.pending_activities.iter().any(|(id, attempt)| *id == token.activity_id && *attempt > token.attempt)
    }
}

/// How an activity ended, as its workflow's history records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActivityEnd {
    Completed,
    Failed,
    Canceled,
    TimedOut,
    /// No closing event: the activity is still open (or its workflow closed around it).
    Open,
}

/// The Temporal connection of a handshake, made on first use and tried again after a failure: a runner or
/// reconciler starts while Temporal is down, records its settles, and delivers them once Temporal answers.
/// Cheap to clone.
#[derive(Clone)]
pub struct LazyTemporal(Arc<LazyState>);

struct LazyState {
    endpoint: Endpoint,
    /// The API key now: `set_api_key` replaces it, for the connection made and any made later.
    api_key: std::sync::Mutex<Option<String>>,
    namespaces: Vec<String>,
    identity: String,
    max_payload_bytes: usize,
    connected: tokio::sync::OnceCell<Temporal>,
    /// When the last attempt failed, and how: in an outage callers fail fast (`RECONNECT_PAUSE`).
    last_failure: std::sync::Mutex<Option<(tokio::time::Instant, Error)>>,
}

/// The Temporal side of a handshake that may have none (store only): `InvalidArgument` then.
pub fn configured(temporal: Option<&LazyTemporal>) -> Result<&LazyTemporal> {
    temporal.ok_or_else(|| {
        Error::InvalidArgument("this handshake has no Temporal connection (connect with temporal=...)".into())
    })
}

impl LazyTemporal {
    /// Check the endpoint now; connect later (`get`).
    pub fn new(endpoint: Endpoint, namespaces: &[String], identity: &str, max_payload_bytes: usize) -> Result<Self> {
        endpoint.check()?;
        Ok(Self(Arc::new(LazyState {
            api_key: std::sync::Mutex::new(endpoint.api_key.clone()),
            endpoint,
            namespaces: namespaces.to_vec(),
            identity: identity.to_owned(),
            max_payload_bytes,
            connected: tokio::sync::OnceCell::new(),
            last_failure: std::sync::Mutex::new(None),
        })))
    }

    /// The connection if it is made already.
    pub fn connected(&self) -> Option<&Temporal> {
        self.0.connected.get()
    }

    /// Send `api_key` from now on (None: none), on the connection made and any made later; no reconnect.
    pub fn set_api_key(&self, api_key: Option<String>) -> Result<()> {
        if let Some(key) = &api_key {
            endpoint::check_api_key(key)?;
        }
        self.0.api_key.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone_from(&api_key);
        if let Some(temporal) = self.connected() {
            temporal.connection.set_api_key(api_key);
        }
        Ok(())
    }

    /// The connection, made now if it is not yet. While Temporal is unreachable this is a `Connect` error
    /// (`ConnectRefused` when it refused this client's TLS or credentials), at once when an attempt failed
    /// less than `RECONNECT_PAUSE` ago.
    pub async fn get(&self) -> Result<&Temporal> {
        if let Some(temporal) = self.0.connected.get() {
            return Ok(temporal);
        }
        let state = &self.0;
        let recent = state
            .last_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .filter(|(at, _)| at.elapsed() < RECONNECT_PAUSE)
            .map(|(_, err)| err.clone());
        if let Some(err) = recent {
            return Err(err);
        }
        let api_key = state.api_key.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let made = state
            .connected
            .get_or_try_init(|| {
                let key = api_key.clone();
                Temporal::connect(&state.endpoint, key, &state.namespaces, &state.identity, state.max_payload_bytes)
            })
            .await;
        if let Ok(temporal) = &made {
            // A key set while this connection was being made: it is the one to send.
            let now = state.api_key.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
            if now != api_key {
                temporal.connection.set_api_key(now);
            }
        }
        if let Err(err) = &made {
            *state.last_failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some((tokio::time::Instant::now(), err.clone()));
        }
        made
    }

    /// The connection, trying until `patience` has passed while Temporal is unreachable; an error that
    /// waiting cannot mend (no such namespace) comes back at once.
    pub async fn wait(&self, patience: Duration) -> Result<&Temporal> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            match self.get().await {
                Err(err) if err.is_unreachable() && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(RECONNECT_PAUSE.min(deadline - tokio::time::Instant::now())).await;
                }
                done => return done,
            }
        }
    }
}

/// A Temporal client bound to a namespace, that also serves a few more; cheap to clone.
#[derive(Clone)]
pub struct Temporal {
    /// The one connection every namespace's client shares (its API key rotates in place).
    connection: Connection,
    client: Client,
    namespace: String,
    identity: String,
    /// Every namespace served, by namespace id (what a task token names): its name and its client.
    served: Arc<HashMap<String, (String, Client)>>,
    /// Payloads over this many bytes are never sent: the parent gets RESULT_TOO_LARGE instead.
    max_payload_bytes: usize,
}

impl Temporal {
    /// Connect to `endpoint` and resolve the id of each namespace (the first is the default, for calls by
    /// id), so tokens are checked before any RPC. TLS and credentials are checked here too: a refusal is
    /// `ConnectRefused`, naming its cause.
    pub async fn connect(
        endpoint: &Endpoint,
        api_key: Option<String>,
        namespaces: &[String],
        identity: &str,
        max_payload_bytes: usize,
    ) -> Result<Self> {
        let options = endpoint.options(identity, api_key)?;
        let Some(namespace) = namespaces.first() else {
            return Err(Error::InvalidArgument("at least one Temporal namespace is needed".into()));
        };
        if namespaces.iter().any(String::is_empty) {
            return Err(Error::InvalidArgument("a Temporal namespace must not be empty".into()));
        }
        let connection = Connection::connect(options).await.map_err(|e| match &e {
            temporalio_client::errors::ClientConnectError::SystemInfoCallError(status) => {
                endpoint::refused_call(endpoint, status)
                    .unwrap_or_else(|| endpoint::connect_error(endpoint, &e.to_string()))
            }
            _ => endpoint::connect_error(endpoint, &format!("{e}: {}", error_chain(&e))),
        })?;
        let mut served = HashMap::new();
        let mut default = None;
        for name in namespaces {
            let mut client = Client::new(connection.clone(), ClientOptions::new(name.clone()).build())
                .map_err(|e| endpoint::connect_error(endpoint, &e.to_string()))?;
            let request = DescribeNamespaceRequest { namespace: name.clone(), ..Default::default() };
            let id = match client.describe_namespace(request.into_request()).await {
                Ok(reply) => reply.into_inner().namespace_info.map(|info| info.id).unwrap_or_default(),
                Err(status) if status.code() == tonic::Code::NotFound => {
                    return Err(Error::InvalidArgument(format!("Temporal has no namespace {name:?}")));
                }
                Err(status) => return Err(endpoint::refused_call(endpoint, &status).unwrap_or_else(|| status.into())),
            };
            default.get_or_insert_with(|| client.clone());
            served.insert(id, (name.clone(), client));
        }
        Ok(Self {
            connection,
            client: default.expect("one namespace at least"),
            namespace: namespace.clone(),
            identity: identity.to_owned(),
            served: Arc::new(served),
            max_payload_bytes,
        })
    }

    /// The namespace this client works in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The id the server gave namespace `name` (what task tokens carry), if this handshake serves it.
    pub fn namespace_id(&self, name: &str) -> Option<&str> {
        self.served.iter().find(|(_, (served, _))| served == name).map(|(id, _)| id.as_str())
    }

    pub fn max_payload_bytes(&self) -> usize {
        self.max_payload_bytes
    }

    /// This client, bound to the namespace `token` belongs to; a typed error, before any RPC, when this
    /// handshake does not serve it.
    pub fn for_token(&self, token: &TaskToken) -> Result<Temporal> {
        let (name, client) = self.served.get(&token.namespace_id).ok_or_else(|| {
            let mut served: Vec<&str> = self.served.values().map(|(name, _)| name.as_str()).collect();
            served.sort_unstable();
            Error::Namespace(format!(
                "task token {} belongs to namespace id {:?}, which this handshake does not serve (it serves {})",
                token.fingerprint(),
                token.namespace_id,
                served.join(", ")
            ))
        })?;
        Ok(Temporal { client: client.clone(), namespace: name.clone(), ..self.clone() })
    }

    /// Tell the parent activity how its child ended.
    // One arm per (outcome, target) pair keeps the six request shapes side by side.
    #[allow(clippy::too_many_lines)]
    pub async fn respond(&self, target: &Target, outcome: &Outcome) -> Result<()> {
        let bound = match target {
            Target::Token(token) => self.for_token(token)?,
            Target::Id { .. } => self.clone(),
        };
        let mut client = bound.client.clone();
        let (namespace, identity) = (bound.namespace.clone(), bound.identity.clone());
        match (outcome, target) {
            (Outcome::Complete { result }, Target::Token(token)) => {
                let request = RespondActivityTaskCompletedRequest {
                    task_token: token.secret_bytes().to_vec(),
                    result: decode_payloads(result.as_deref())?,
                    identity,
                    namespace,
                    ..Default::default()
                };
                client.respond_activity_task_completed(request.into_request()).await?;
            }
            (Outcome::Complete { result }, Target::Id { workflow_id, run_id, activity_id }) => {
                let request = RespondActivityTaskCompletedByIdRequest {
                    namespace,
                    workflow_id: workflow_id.clone(),
                    run_id: run_id.clone(),
                    activity_id: activity_id.clone(),
                    result: decode_payloads(result.as_deref())?,
                    identity,
                    ..Default::default()
                };
                client.respond_activity_task_completed_by_id(request.into_request()).await?;
            }
            (Outcome::Fail { failure: Some(encoded), .. }, target) => {
                let failure = Some(
                    Failure::decode(encoded.as_slice())
                        .map_err(|e| Error::InvalidArgument(format!("malformed failure: {e}")))?,
                );
                Self::respond_failed(&mut client, target, failure, namespace, identity).await?;
            }
            (Outcome::Fail { message, failure_type, non_retryable, details, failure: None }, target) => {
                let failure = Some(Failure {
                    message: message.clone(),
                    source: "stigmer-handshake".into(),
                    failure_info: Some(FailureInfo::ApplicationFailureInfo(ApplicationFailureInfo {
                        r#type: failure_type.clone(),
                        non_retryable: *non_retryable,
                        details: decode_payloads(details.as_deref())?,
                        ..Default::default()
                    })),
                    ..Default::default()
                });
                Self::respond_failed(&mut client, target, failure, namespace, identity).await?;
            }
            (Outcome::Cancel { details }, Target::Token(token)) => {
                let request = RespondActivityTaskCanceledRequest {
                    task_token: token.secret_bytes().to_vec(),
                    details: decode_payloads(details.as_deref())?,
                    identity,
                    namespace,
                    ..Default::default()
                };
                client.respond_activity_task_canceled(request.into_request()).await?;
            }
            (Outcome::Cancel { details }, Target::Id { workflow_id, run_id, activity_id }) => {
                let request = RespondActivityTaskCanceledByIdRequest {
                    namespace,
                    workflow_id: workflow_id.clone(),
                    run_id: run_id.clone(),
                    activity_id: activity_id.clone(),
                    details: decode_payloads(details.as_deref())?,
                    identity,
                    ..Default::default()
                };
                client.respond_activity_task_canceled_by_id(request.into_request()).await?;
            }
        }
        Ok(())
    }

    /// Fail the parent activity with `failure`.
    async fn respond_failed(
        client: &mut Client,
        target: &Target,
        failure: Option<Failure>,
        namespace: String,
        identity: String,
    ) -> Result<()> {
        match target {
            Target::Token(token) => {
                let request = RespondActivityTaskFailedRequest {
                    task_token: token.secret_bytes().to_vec(),
                    failure,
                    identity,
                    namespace,
                    ..Default::default()
                };
                client.respond_activity_task_failed(request.into_request()).await?;
            }
            Target::Id { workflow_id, run_id, activity_id } => {
                let request = RespondActivityTaskFailedByIdRequest {
                    namespace,
                    workflow_id: workflow_id.clone(),
                    run_id: run_id.clone(),
                    activity_id: activity_id.clone(),
                    failure,
                    identity,
                    ..Default::default()
                };
                client.respond_activity_task_failed_by_id(request.into_request()).await?;
            }
        }
        Ok(())
    }

    /// Heartbeat the parent activity; the reply says whether it was cancelled, paused or reset.
    pub async fn heartbeat(&self, target: &Target, details: Option<&[u8]>) -> Result<HeartbeatFlags> {
        let bound = match target {
            Target::Token(token) => self.for_token(token)?,
            Target::Id { .. } => self.clone(),
        };
        let mut client = bound.client.clone();
        let details = decode_payloads(details)?;
        let (namespace, identity) = (bound.namespace.clone(), bound.identity.clone());
        let flags = match target {
            Target::Token(token) => {
                let request = RecordActivityTaskHeartbeatRequest {
                    task_token: token.secret_bytes().to_vec(),
                    details,
                    identity,
                    namespace,
                    ..Default::default()
                };
                let reply = client.record_activity_task_heartbeat(request.into_request()).await?.into_inner();
                HeartbeatFlags {
                    cancel_requested: reply.cancel_requested,
                    paused: reply.activity_paused,
                    reset: reply.activity_reset,
                }
            }
            Target::Id { workflow_id, run_id, activity_id } => {
                let request = RecordActivityTaskHeartbeatByIdRequest {
                    namespace,
                    workflow_id: workflow_id.clone(),
                    run_id: run_id.clone(),
                    activity_id: activity_id.clone(),
                    details,
                    identity,
                    ..Default::default()
                };
                let reply = client.record_activity_task_heartbeat_by_id(request.into_request()).await?.into_inner();
                HeartbeatFlags {
                    cancel_requested: reply.cancel_requested,
                    paused: reply.activity_paused,
                    reset: reply.activity_reset,
                }
            }
        };
        crate::metrics::heartbeat();
        Ok(flags)
    }
}

impl Temporal {
    /// Describe a workflow (an empty `run_id` means its latest run); None if the server does not know it.
    async fn describe(&self, workflow_id: &str, run_id: &str) -> Result<Option<DescribeWorkflowExecutionResponse>> {
        let mut client = self.client.clone();
        let request = DescribeWorkflowExecutionRequest {
            namespace: self.namespace.clone(),
            execution: Some(WorkflowExecution { workflow_id: workflow_id.to_owned(), run_id: run_id.to_owned() }),
        };
        match client.describe_workflow_execution(request.into_request()).await {
            Ok(reply) => Ok(Some(reply.into_inner())),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(status.into()),
        }
    }

    /// Whether a workflow still runs, and its pending activities; None if the server does not know it.
    pub async fn describe_workflow(&self, workflow_id: &str, run_id: &str) -> Result<Option<WorkflowState>> {
        let Some(reply) = self.describe(workflow_id, run_id).await? else { return Ok(None) };
        let status = reply.workflow_execution_info.map_or(0, |info| info.status);
        let closed_as = match WorkflowExecutionStatus::try_from(status) {
            Ok(WorkflowExecutionStatus::Completed) => Some("COMPLETED"),
            Ok(WorkflowExecutionStatus::Failed) => Some("FAILED"),
            Ok(WorkflowExecutionStatus::Canceled) => Some("CANCELED"),
            Ok(WorkflowExecutionStatus::Terminated) => Some("TERMINATED"),
            Ok(WorkflowExecutionStatus::ContinuedAsNew) => Some("CONTINUED_AS_NEW"),
            Ok(WorkflowExecutionStatus::TimedOut) => Some("TIMED_OUT"),
            // Running, or a status this client does not know yet (e.g. paused): not closed.
            _ => None,
        };
        let pending_activities = reply.pending_activities.into_iter().map(|a| (a.activity_id, a.attempt)).collect();
        Ok(Some(WorkflowState { closed_as, pending_activities }))
    }

    /// What the parent workflow shows of one of its pending activities (as Temporal's Web UI does): None
    /// when the workflow is unknown or the activity is not pending. An empty `workflow_id` names a
    /// standalone activity (`run_id` its own), described by itself.
    pub async fn pending_activity(
        &self,
        workflow_id: &str,
        run_id: &str,
        activity_id: &str,
    ) -> Result<Option<PendingActivity>> {
        if workflow_id.is_empty() {
            let Some(info) = self.describe_activity(activity_id, run_id).await? else { return Ok(None) };
            let running = matches!(
                ActivityExecutionStatus::try_from(info.status),
                Ok(ActivityExecutionStatus::Running | ActivityExecutionStatus::Paused)
            );
            return Ok(running.then(|| PendingActivity {
                state: PendingActivityState::try_from(info.run_state)
                    .map_or("UNKNOWN", |s| s.as_str_name().trim_start_matches("PENDING_ACTIVITY_STATE_"))
                    .to_owned(),
                attempt: info.attempt,
                heartbeat_details: info.heartbeat_details.map(|d| d.encode_to_vec()),
                last_heartbeat_ms: info.last_heartbeat_time.map(|t| t.seconds * 1000 + i64::from(t.nanos / 1_000_000)),
                paused: info.status == ActivityExecutionStatus::Paused as i32,
            }));
        }
        let Some(reply) = self.describe(workflow_id, run_id).await? else { return Ok(None) };
        Ok(reply.pending_activities.into_iter().find(|a| a.activity_id == activity_id).map(|a| PendingActivity {
            state: PendingActivityState::try_from(a.state)
                .map_or("UNKNOWN", |s| s.as_str_name().trim_start_matches("PENDING_ACTIVITY_STATE_"))
                .to_owned(),
            attempt: a.attempt,
            heartbeat_details: a.heartbeat_details.map(|d| d.encode_to_vec()),
            last_heartbeat_ms: a.last_heartbeat_time.map(|t| t.seconds * 1000 + i64::from(t.nanos / 1_000_000)),
            paused: a.paused,
        }))
    }

    /// How the activity scheduled by `scheduled_event_id` ended, read from the newest history events back
    /// to the scheduling one; None if the workflow is unknown.
    pub async fn activity_end(
        &self,
        workflow_id: &str,
        run_id: &str,
        scheduled_event_id: i64,
    ) -> Result<Option<ActivityEnd>> {
        let mut client = self.client.clone();
        let mut next_page_token = Vec::new();
        loop {
            let request = GetWorkflowExecutionHistoryReverseRequest {
                namespace: self.namespace.clone(),
                execution: Some(WorkflowExecution { workflow_id: workflow_id.to_owned(), run_id: run_id.to_owned() }),
                maximum_page_size: 500,
                next_page_token,
            };
            let reply = match client.get_workflow_execution_history_reverse(request.into_request()).await {
                Ok(reply) => reply.into_inner(),
                Err(status) if status.code() == tonic::Code::NotFound => return Ok(None),
                Err(status) => return Err(status.into()),
            };
            for event in reply.history.map(|h| h.events).unwrap_or_default() {
                if event.event_id <= scheduled_event_id {
                    return Ok(Some(ActivityEnd::Open));
                }
                let end = match event.attributes {
                    Some(Attributes::ActivityTaskCompletedEventAttributes(a))
                        if a.scheduled_event_id == scheduled_event_id =>
                    {
                        ActivityEnd::Completed
                    }
                    Some(Attributes::ActivityTaskFailedEventAttributes(a))
                        if a.scheduled_event_id == scheduled_event_id =>
                    {
                        ActivityEnd::Failed
                    }
                    Some(Attributes::ActivityTaskCanceledEventAttributes(a))
                        if a.scheduled_event_id == scheduled_event_id =>
                    {
                        ActivityEnd::Canceled
                    }
                    Some(Attributes::ActivityTaskTimedOutEventAttributes(a))
                        if a.scheduled_event_id == scheduled_event_id =>
                    {
                        ActivityEnd::TimedOut
                    }
                    _ => continue,
                };
                return Ok(Some(end));
            }
            if reply.next_page_token.is_empty() {
                return Ok(Some(ActivityEnd::Open));
            }
            next_page_token = reply.next_page_token;
        }
    }

    /// A standalone activity as the server describes it (an empty `run_id`: its latest run); None if the
    /// server does not know it.
    async fn describe_activity(&self, activity_id: &str, run_id: &str) -> Result<Option<ActivityExecutionInfo>> {
        let mut client = self.client.clone();
        let request = DescribeActivityExecutionRequest {
            namespace: self.namespace.clone(),
            activity_id: activity_id.to_owned(),
            run_id: run_id.to_owned(),
            ..Default::default()
        };
        match client.describe_activity_execution(request.into_request()).await {
            Ok(reply) => Ok(reply.into_inner().info),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(status.into()),
        }
    }

    /// What waits on the activity `token` names: its workflow, or for a standalone activity the
    /// activity itself (as a "workflow" whose one pending activity it is while it runs). None if the
    /// server does not know it.
    pub async fn parent_state(&self, token: &TaskToken) -> Result<Option<WorkflowState>> {
        if !token.is_standalone() {
            return self.describe_workflow(&token.workflow_id, &token.run_id).await;
        }
        let Some(info) = self.describe_activity(&token.activity_id, &token.run_id).await? else { return Ok(None) };
        let closed_as = match ActivityExecutionStatus::try_from(info.status) {
            Ok(ActivityExecutionStatus::Completed) => Some("COMPLETED"),
            Ok(ActivityExecutionStatus::Failed) => Some("FAILED"),
            Ok(ActivityExecutionStatus::Canceled) => Some("CANCELED"),
            Ok(ActivityExecutionStatus::Terminated) => Some("TERMINATED"),
            Ok(ActivityExecutionStatus::TimedOut) => Some("TIMED_OUT"),
            // Running, paused, or a status this client does not know yet: it still waits.
            _ => None,
        };
        let pending_activities = if closed_as.is_none() { vec![(info.activity_id, info.attempt)] } else { Vec::new() };
        Ok(Some(WorkflowState { closed_as, pending_activities }))
    }

    /// How the attempt `token` names ended: from its workflow's history, or for a standalone activity
    /// from the activity's own status. None if the server does not know it.
    pub async fn parent_activity_end(&self, token: &TaskToken) -> Result<Option<ActivityEnd>> {
        if !token.is_standalone() {
            return self.activity_end(&token.workflow_id, &token.run_id, token.scheduled_event_id).await;
        }
        let Some(info) = self.describe_activity(&token.activity_id, &token.run_id).await? else { return Ok(None) };
        Ok(Some(match ActivityExecutionStatus::try_from(info.status) {
            // A newer attempt was made: this one's end is not recorded (`parent_state` tells it retried).
            _ if info.attempt > token.attempt => ActivityEnd::Open,
            Ok(ActivityExecutionStatus::Completed) => ActivityEnd::Completed,
            Ok(ActivityExecutionStatus::Failed) => ActivityEnd::Failed,
            Ok(ActivityExecutionStatus::Canceled) => ActivityEnd::Canceled,
            Ok(ActivityExecutionStatus::TimedOut) => ActivityEnd::TimedOut,
            _ => ActivityEnd::Open,
        }))
    }
}

/// Decode `temporal.api.common.v1.Payloads` bytes made by the Python data converter.
pub fn decode_payloads(bytes: Option<&[u8]>) -> Result<Option<Payloads>> {
    bytes
        .map(|b| Payloads::decode(b).map_err(|e| Error::InvalidArgument(format!("malformed payloads: {e}"))))
        .transpose()
}

/// Every error in `err`'s source chain, outermost first: TLS failures are named only deep in it.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut causes = Vec::new();
    let mut source = err.source();
    while let Some(cause) = source {
        causes.push(cause.to_string());
        source = cause.source();
    }
    causes.join(": ")
}
