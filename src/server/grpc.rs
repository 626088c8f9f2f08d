//! The gRPC services: the seed's command and query controllers of both resources (as `proto/` declares
//! them), our `HandshakeService`, standard health checking and server reflection. Each method checks the
//! caller's key, converts, calls `Core` and converts back.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::auth::Scope;
use super::codes::{grpc_refusal, grpc_status};
use super::resource::Resource;
use super::shared::Shared;
use crate::errors::{Error, Result};
use crate::proto::ai::stigmer::agentic::agentexecution::v1 as agent;
use crate::proto::ai::stigmer::agentic::workflowexecution::v1 as workflow;
use crate::proto::ai::stigmer::commons::v1::ExecutionError;
use crate::proto::ai::stigmer::handshake::v1 as ours;
use crate::store::ListFilter;
use crate::vocabulary::{Outcome, Phase};

/// The request metadata a caller in any SDK sends with `create` when its activity has a heartbeat
/// timeout (the token does not carry it): the pump then heartbeats well within it.
pub const HEARTBEAT_TIMEOUT_HEADER: &str = "stigmer-heartbeat-timeout-ms";
/// The request metadata that filters `list` by label (the seed's list requests have no field for it):
/// one `key=value` per value, repeated for several.
pub const LABEL_FILTER_HEADER: &str = "stigmer-label";
/// How often `subscribe` looks at the store for a change.
const SUBSCRIBE_POLL: Duration = Duration::from_millis(100);

/// Every gRPC service, as routes to merge with the HTTP ones.
pub async fn routes(shared: &Arc<Shared>) -> Result<axum::Router> {
    let (health, health_service) = tonic_health::server::health_reporter();
    for name in SERVICE_NAMES {
        health.set_service_status(*name, tonic_health::ServingStatus::Serving).await;
    }
    // Both versions of reflection: grpcurl asks v1, then v1alpha; grpcio's client knows v1alpha only.
    let reflection =
        || tonic_reflection::server::Builder::configure().register_encoded_file_descriptor_set(DESCRIPTORS);
    let reflection_error = |e: tonic_reflection::server::Error| Error::Store(format!("reflection descriptors: {e}"));
    let (reflection_v1, reflection_v1alpha) =
        (reflection().build_v1().map_err(reflection_error)?, reflection().build_v1alpha().map_err(reflection_error)?);
    let limit = shared.core.max_result_bytes() + 64 * 1024;
    let api = Api(shared.clone());
    let routes = tonic::service::Routes::new(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            agent::agent_execution_command_controller_server::AgentExecutionCommandControllerServer::new(api.clone())
                .max_decoding_message_size(limit),
        )
        .add_service(
            agent::agent_execution_query_controller_server::AgentExecutionQueryControllerServer::new(api.clone())
                .max_decoding_message_size(limit),
        )
        .add_service(
            workflow::workflow_execution_command_controller_server::WorkflowExecutionCommandControllerServer::new(
                api.clone(),
            )
            .max_decoding_message_size(limit),
        )
        .add_service(
            workflow::workflow_execution_query_controller_server::WorkflowExecutionQueryControllerServer::new(
                api.clone(),
            )
            .max_decoding_message_size(limit),
        )
        .add_service(ours::handshake_service_server::HandshakeServiceServer::new(api).max_decoding_message_size(limit));
    Ok(routes.into_axum_router())
}

const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));
const SERVICE_NAMES: &[&str] = &[
    "ai.stigmer.agentic.agentexecution.v1.AgentExecutionCommandController",
    "ai.stigmer.agentic.agentexecution.v1.AgentExecutionQueryController",
    "ai.stigmer.agentic.workflowexecution.v1.WorkflowExecutionCommandController",
    "ai.stigmer.agentic.workflowexecution.v1.WorkflowExecutionQueryController",
    "ai.stigmer.handshake.v1.HandshakeService",
];

#[derive(Clone)]
struct Api(Arc<Shared>);

impl Api {
    /// Check the caller's key for `scope`, then run `call` in a span naming the method and the key, and
    /// count the answer. A refusal returns before `call` runs.
    async fn handle<T, M>(
        &self,
        method: &'static str,
        scope: Scope,
        request: Request<M>,
        call: impl AsyncFnOnce(&Shared, tonic::metadata::MetadataMap, M) -> Result<T>,
    ) -> Result<Response<T>, Status> {
        let authorization = request.metadata().get("authorization").and_then(|v| v.to_str().ok());
        let key = match self.0.keys.check(authorization, scope) {
            Ok(key) => key,
            Err(refusal) => {
                let status = grpc_refusal(refusal);
                crate::metrics::request("grpc", method, code_name(status.code()));
                return Err(status);
            }
        };
        let span = tracing::info_span!("request", face = "grpc", method, key = %key);
        let (metadata, _, message) = request.into_parts();
        let answer = call(&self.0, metadata, message).instrument(span).await;
        let code = answer.as_ref().map_or_else(|e| super::codes::codes(e).0, |_| tonic::Code::Ok);
        crate::metrics::request("grpc", method, code_name(code));
        answer.map(Response::new).map_err(|e| grpc_status(&e))
    }
}

impl Api {
    /// The answer of a method this version does not implement: after the key is checked, so an
    /// unauthenticated caller learns nothing more than from any other method.
    fn unimplemented(
        &self,
        method: &'static str,
        scope: Scope,
        metadata: &tonic::metadata::MetadataMap,
        message: &str,
    ) -> Status {
        let authorization = metadata.get("authorization").and_then(|v| v.to_str().ok());
        let status = match self.0.keys.check(authorization, scope) {
            Ok(_) => Status::unimplemented(message),
            Err(refusal) => grpc_refusal(refusal),
        };
        crate::metrics::request("grpc", method, code_name(status.code()));
        status
    }
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::NotFound => "NOT_FOUND",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::Unauthenticated => "UNAUTHENTICATED",
        Code::Unavailable => "UNAVAILABLE",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::Unimplemented => "UNIMPLEMENTED",
        _ => "INTERNAL",
    }
}

async fn create<R: Resource>(shared: &Shared, metadata: tonic::metadata::MetadataMap, resource: R) -> Result<R> {
    let heartbeat_timeout_ms = match metadata.get(HEARTBEAT_TIMEOUT_HEADER) {
        None => None,
        Some(value) => {
            Some(value.to_str().ok().and_then(|v| v.parse::<i64>().ok()).filter(|ms| *ms > 0).ok_or_else(|| {
                Error::InvalidArgument(format!("{HEARTBEAT_TIMEOUT_HEADER} must be a positive number of milliseconds"))
            })?)
        }
    };
    let request = resource.into_create(heartbeat_timeout_ms)?;
    let created = shared.core.create(request).await?;
    let id = match created {
        crate::store::Created::New(id) | crate::store::Created::Rebound(id) => id,
    };
    R::from_record(&shared.core.get(&id, false).await?)
}

/// Progress, or a terminal phase that settles: COMPLETED completes the parent (a workflow with its
/// `status.output`, an agent with no result: agents send one through `HandshakeService.Settle`), FAILED
/// fails it with `status.error`, CANCELLED reports the cancellation.
async fn update_status<R: Resource>(
    shared: &Shared,
    id: String,
    status: Option<R::Status>,
    phase: impl Fn(&R::Status) -> i32,
    error: impl Fn(&R::Status) -> Option<ExecutionError>,
    output: impl Fn(&R::Status) -> Option<serde_json::Value>,
) -> Result<R> {
    let mut status = status.ok_or_else(|| Error::InvalidArgument("updateStatus needs a status".into()))?;
    // The status is of this service's kind: an execution of the other kind is not found here.
    get::<R>(shared, &id).await?;
    if !R::take_token(&mut status).is_empty() {
        return Err(Error::InvalidArgument(
            "a status update cannot carry callback_token: the token is given once, at create".into(),
        ));
    }
    let bytes = prost::Message::encode_to_vec(&status);
    let outcome = match Phase::from_proto(phase(&status)) {
        Phase::Completed => Some(Outcome::Complete {
            result: Some(crate::payload::json_payloads(&[output(&status).unwrap_or(serde_json::Value::Null)])),
        }),
        Phase::Failed => {
            let error = error(&status).unwrap_or_default();
            if error.message.is_empty() {
                return Err(Error::InvalidArgument("a FAILED status needs error.message".into()));
            }
            Some(Outcome::Fail {
                message: error.message,
                failure_type: error.r#type,
                non_retryable: error.non_retryable,
                details: None,
                failure: None,
            })
        }
        Phase::Cancelled => Some(Outcome::Cancel { details: None }),
        _ => None,
    };
    match outcome {
        Some(outcome) => drop(shared.core.settle(&id, outcome, Some(bytes), true, None).await?),
        None => {
            shared.core.update_status(&id, &bytes, false).await?;
        }
    }
    R::from_record(&shared.core.get(&id, false).await?)
}

async fn get<R: Resource>(shared: &Shared, id: &str) -> Result<R> {
    crate::core::check_execution_id(id)?;
    let record = shared.core.get(id, false).await?;
    if record.kind != R::KIND {
        return Err(Error::ExecutionNotFound(id.to_owned()));
    }
    R::from_record(&record)
}

async fn list<R: Resource>(
    shared: &Shared,
    metadata: &tonic::metadata::MetadataMap,
    phase: i32,
    size: i32,
    token: &str,
) -> Result<(Vec<R>, String)> {
    let phase = match phase {
        0 => None,
        1..=5 => Some(Phase::from_proto(phase)),
        other => return Err(Error::InvalidArgument(format!("phase must be 0 (any) to 5, not {other}"))),
    };
    let filters = metadata.get_all(LABEL_FILTER_HEADER).iter().map(|v| v.to_str()).collect::<Result<Vec<_>, _>>();
    let filters =
        filters.map_err(|_| Error::InvalidArgument(format!("{LABEL_FILTER_HEADER} must be key=value in ASCII")))?;
    let labels = super::resource::label_filters(filters)?;
    let filter = ListFilter { kind: Some(R::KIND), phase, labels, ..ListFilter::default() };
    let (records, next) = super::resource::list_page(&shared.core, &filter, size, token).await?;
    Ok((records.iter().map(R::from_record).collect::<Result<_>>()?, next.unwrap_or_default()))
}

type Stream<R> = tokio_stream::wrappers::ReceiverStream<Result<R, Status>>;

/// Each change of the execution (phase or status) from now on, the current state first, until it ends
/// (the terminal state is the last item) or the client goes away or the server stops.
async fn subscribe<R: Resource + Send>(shared: &Shared, id: String) -> Result<Stream<R>> {
    let first = get::<R>(shared, &id).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let core = shared.core.clone();
    let mut stopping = shared.stopping.clone();
    tokio::spawn(async move {
        let mut last = prost::Message::encode_to_vec(&first);
        if tx.send(Ok(first)).await.is_err() {
            return;
        }
        loop {
            let record = match core.get(&id, false).await {
                Ok(record) => record,
                Err(err) => {
                    let _ = tx.send(Err(grpc_status(&err))).await;
                    return;
                }
            };
            let resource = match R::from_record(&record) {
                Ok(resource) => resource,
                Err(err) => {
                    let _ = tx.send(Err(grpc_status(&err))).await;
                    return;
                }
            };
            let encoded = prost::Message::encode_to_vec(&resource);
            if encoded != last {
                last = encoded;
                if tx.send(Ok(resource)).await.is_err() {
                    return;
                }
            }
            if record.phase.is_terminal() {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(SUBSCRIBE_POLL) => {}
                () = tx.closed() => return,
                () = super::shared::stopped(&mut stopping) => return,
            }
        }
    });
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
}

macro_rules! resource_services {
    ($command:path, $query:path, $resource:ty, $id:ty, $update:ty, $list_request:ty, $list:ty, $name:literal,
     $output:expr) => {
        #[tonic::async_trait]
        impl $command for Api {
            async fn create(&self, request: Request<$resource>) -> Result<Response<$resource>, Status> {
                self.handle(concat!($name, "/create"), Scope::Create, request, async |s, metadata, resource| {
                    create::<$resource>(s, metadata, resource).await
                })
                .await
            }

            async fn update(&self, request: Request<$resource>) -> Result<Response<$resource>, Status> {
                Err(self.unimplemented(
                    concat!($name, "/update"),
                    Scope::Settle,
                    request.metadata(),
                    "update: a spec is immutable after create; status changes go through updateStatus",
                ))
            }

            async fn update_status(&self, request: Request<$update>) -> Result<Response<$resource>, Status> {
                self.handle(concat!($name, "/updateStatus"), Scope::Settle, request, async |s, _, r| {
                    update_status::<$resource>(
                        s,
                        r.execution_id,
                        r.status,
                        |st| st.phase,
                        |st| st.error.clone(),
                        $output,
                    )
                    .await
                })
                .await
            }

            async fn delete(&self, request: Request<$id>) -> Result<Response<$resource>, Status> {
                Err(self.unimplemented(
                    concat!($name, "/delete"),
                    Scope::Admin,
                    request.metadata(),
                    "delete: executions are not deleted by this version",
                ))
            }
        }

        #[tonic::async_trait]
        impl $query for Api {
            async fn get(&self, request: Request<$id>) -> Result<Response<$resource>, Status> {
                self.handle(concat!($name, "/get"), Scope::Read, request, async |s, _, id| {
                    get::<$resource>(s, &id.value).await
                })
                .await
            }

            async fn list(&self, request: Request<$list_request>) -> Result<Response<$list>, Status> {
                self.handle(concat!($name, "/list"), Scope::Read, request, async |s, metadata, r| {
                    let (items, next_page_token) =
                        list::<$resource>(s, &metadata, r.phase, r.page_size, &r.page_token).await?;
                    Ok(<$list>::from((items, next_page_token)))
                })
                .await
            }

            type subscribeStream = Stream<$resource>;

            async fn subscribe(&self, request: Request<$id>) -> Result<Response<Self::subscribeStream>, Status> {
                self.handle(concat!($name, "/subscribe"), Scope::Read, request, async |s, _, id| {
                    subscribe::<$resource>(s, id.value).await
                })
                .await
            }
        }

        impl From<(Vec<$resource>, String)> for $list {
            fn from((items, next_page_token): (Vec<$resource>, String)) -> Self {
                Self { items, next_page_token }
            }
        }
    };
}

resource_services!(
    agent::agent_execution_command_controller_server::AgentExecutionCommandController,
    agent::agent_execution_query_controller_server::AgentExecutionQueryController,
    agent::AgentExecution,
    agent::AgentExecutionId,
    agent::UpdateStatusRequest,
    agent::ListAgentExecutionsRequest,
    agent::AgentExecutionList,
    "ai.stigmer.agentic.agentexecution.v1",
    |_: &agent::AgentExecutionStatus| None
);
resource_services!(
    workflow::workflow_execution_command_controller_server::WorkflowExecutionCommandController,
    workflow::workflow_execution_query_controller_server::WorkflowExecutionQueryController,
    workflow::WorkflowExecution,
    workflow::WorkflowExecutionId,
    workflow::UpdateStatusRequest,
    workflow::ListWorkflowExecutionsRequest,
    workflow::WorkflowExecutionList,
    "ai.stigmer.agentic.workflowexecution.v1",
    |status: &workflow::WorkflowExecutionStatus| status.output.as_ref().map(crate::payload::struct_json)
);

/// Values on the wire as encoded `Payloads`: passed through when already encoded, JSON encoded as
/// temporalio's default converter does. None when unset.
fn payloads(values: Option<ours::Values>) -> Option<Vec<u8>> {
    use ours::values::Encoding;
    match values?.encoding? {
        Encoding::Payloads(payloads) => Some(prost::Message::encode_to_vec(&payloads)),
        Encoding::Json(list) => {
            Some(crate::payload::json_payloads(&list.values.iter().map(crate::payload::value_json).collect::<Vec<_>>()))
        }
    }
}

#[tonic::async_trait]
impl ours::handshake_service_server::HandshakeService for Api {
    async fn settle(&self, request: Request<ours::SettleRequest>) -> Result<Response<ours::SettleReply>, Status> {
        self.handle("ai.stigmer.handshake.v1.HandshakeService/Settle", Scope::Settle, request, async |s, _, r| {
            use ours::settle_request::Outcome as Wire;
            crate::core::check_execution_id(&r.execution_id)?;
            let outcome = match r.outcome {
                None => return Err(Error::InvalidArgument("name an outcome: complete, fail or cancel".into())),
                Some(Wire::Complete(c)) => Outcome::Complete {
                    result: Some(
                        payloads(c.result).unwrap_or_else(|| crate::payload::json_payloads(&[serde_json::Value::Null])),
                    ),
                },
                Some(Wire::Fail(f)) => {
                    crate::core::non_empty(&f.message, "fail.message")?;
                    Outcome::Fail {
                        message: f.message,
                        failure_type: f.r#type,
                        non_retryable: f.non_retryable,
                        details: payloads(f.details),
                        failure: None,
                    }
                }
                Some(Wire::Cancel(c)) => Outcome::Cancel { details: payloads(c.details) },
            };
            let settled = s.core.settle(&r.execution_id, outcome, None, !r.no_wait, None).await?;
            let outcome = settled.name().to_owned();
            let (reason, detail) = settled.reason_and_detail();
            Ok(ours::SettleReply {
                outcome,
                reason: reason.unwrap_or_default().to_owned(),
                detail: detail.unwrap_or_default(),
            })
        })
        .await
    }

    async fn heartbeat(
        &self,
        request: Request<ours::HeartbeatRequest>,
    ) -> Result<Response<ours::HeartbeatReply>, Status> {
        self.handle("ai.stigmer.handshake.v1.HandshakeService/Heartbeat", Scope::Settle, request, async |s, _, r| {
            crate::core::check_execution_id(&r.execution_id)?;
            let flags = s.core.heartbeat(&r.execution_id, payloads(r.details)).await?;
            Ok(ours::HeartbeatReply {
                cancel_requested: flags.cancel_requested,
                paused: flags.paused,
                reset: flags.reset,
            })
        })
        .await
    }

    async fn callback_url(
        &self,
        request: Request<ours::CallbackUrlRequest>,
    ) -> Result<Response<ours::CallbackUrlReply>, Status> {
        self.handle("ai.stigmer.handshake.v1.HandshakeService/CallbackUrl", Scope::Admin, request, async |s, _, r| {
            let ttl = if r.ttl_seconds == 0.0 { 3600.0 } else { r.ttl_seconds };
            if !ttl.is_finite() || ttl < 0.0 {
                return Err(Error::InvalidArgument(format!("ttl_seconds must be positive, not {ttl}")));
            }
            // Refuse a URL for an execution that does not exist (it could never settle anything).
            s.core.get(&r.execution_id, false).await?;
            #[allow(clippy::cast_possible_truncation)]
            let url = s.callback_url(&r.execution_id, r.outcomes, (ttl * 1000.0) as i64)?;
            Ok(ours::CallbackUrlReply { url })
        })
        .await
    }
}
