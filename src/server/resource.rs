//! The seed's resources on the wire (`AgentExecution`, `WorkflowExecution`) to and from what `Core`
//! takes and returns, for both kinds through one trait. A resource read from the store never carries the
//! token; one sent to `create` carries the caller's.

use prost::Message;

use crate::core::CreateRequest;
use crate::errors::{Error, Result};
use crate::proto::ai::stigmer::agentic::agentexecution::v1 as agent;
use crate::proto::ai::stigmer::agentic::workflowexecution::v1 as workflow;
use crate::proto::ai::stigmer::commons::v1::ResourceMetadata;
use crate::store::{timestamp, ExecutionRecord, Labels, ListFilter};
use crate::vocabulary::Kind;

/// The `api_version` every resource carries.
pub const API_VERSION: &str = "agentic.stigmer.ai/v1";

/// An execution resource of one kind.
pub trait Resource: Message + Default + Sized + 'static {
    const KIND: Kind;
    /// The resource's `kind` field.
    const NAME: &'static str;
    type Spec: Message + Default;
    type Status: Message + Default;

    fn parts(self) -> (Option<ResourceMetadata>, Option<Self::Spec>, Option<Self::Status>);
    fn assemble(metadata: ResourceMetadata, spec: Self::Spec, status: Self::Status) -> Self;
    /// Take the token out of a status.
    fn take_token(status: &mut Self::Status) -> Vec<u8>;

    /// The resource as stored, without the token.
    fn from_record(record: &ExecutionRecord) -> Result<Self> {
        let malformed = |what: &str, e: prost::DecodeError| Error::Store(format!("malformed stored {what}: {e}"));
        let spec = Self::Spec::decode(record.spec.as_slice()).map_err(|e| malformed("spec", e))?;
        let mut status = Self::Status::decode(record.status.as_slice()).map_err(|e| malformed("status", e))?;
        Self::take_token(&mut status);
        let metadata = ResourceMetadata {
            id: record.id.clone(),
            name: record.id.clone(),
            labels: record.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            created_at: Some(timestamp(record.created_ms)),
            updated_at: Some(timestamp(record.updated_ms)),
        };
        Ok(Self::assemble(metadata, spec, status))
    }

    /// What `create` stores for this resource: its id (`metadata.id`, or one made up), spec, status and
    /// the caller's token from `status.callback_token` (none: a direct execution).
    fn into_create(self, heartbeat_timeout_ms: Option<i64>) -> Result<CreateRequest> {
        let (metadata, spec, status) = self.parts();
        let metadata = metadata.unwrap_or_default();
        let mut status = status.unwrap_or_default();
        let token = Self::take_token(&mut status);
        Ok(CreateRequest {
            kind: Self::KIND,
            spec: spec.unwrap_or_default().encode_to_vec(),
            id: (!metadata.id.is_empty()).then_some(metadata.id),
            token: (!token.is_empty()).then_some(token),
            status: Some(status.encode_to_vec()),
            heartbeat_timeout_ms,
            labels: metadata.labels.into_iter().collect(),
            // A network caller names no data converter: its payloads are JSON, encoded without context.
            activity_context: None,
        })
    }
}

macro_rules! resource {
    ($ty:ty, $kind:expr, $name:literal, $spec:ty, $status:ty) => {
        impl Resource for $ty {
            const KIND: Kind = $kind;
            const NAME: &'static str = $name;
            type Spec = $spec;
            type Status = $status;

            fn parts(self) -> (Option<ResourceMetadata>, Option<$spec>, Option<$status>) {
                (self.metadata, self.spec, self.status)
            }
            fn assemble(metadata: ResourceMetadata, spec: $spec, status: $status) -> Self {
                Self {
                    api_version: API_VERSION.into(),
                    kind: Self::NAME.into(),
                    metadata: Some(metadata),
                    spec: Some(spec),
                    status: Some(status),
                }
            }
            fn take_token(status: &mut $status) -> Vec<u8> {
                std::mem::take(&mut status.callback_token)
            }
        }
    };
}
resource!(agent::AgentExecution, Kind::Agent, "AgentExecution", agent::AgentExecutionSpec, agent::AgentExecutionStatus);
resource!(
    workflow::WorkflowExecution,
    Kind::Workflow,
    "WorkflowExecution",
    workflow::WorkflowExecutionSpec,
    workflow::WorkflowExecutionStatus
);

/// One page of executions, oldest first, and the token of the next page (None: this is the last).
pub async fn list_page(
    core: &crate::core::Core,
    filter: &ListFilter,
    size: i32,
    token: &str,
) -> Result<(Vec<ExecutionRecord>, Option<String>)> {
    core.list_page(filter, page_size(size)?, token).await
}

/// Label filters written `key=value` (the first `=` splits), each one label an execution must have.
pub fn label_filters<'a>(filters: impl IntoIterator<Item = &'a str>) -> Result<Labels> {
    let mut labels = Labels::new();
    for filter in filters {
        let (key, value) = filter
            .split_once('=')
            .ok_or_else(|| Error::InvalidArgument(format!("a label filter is key=value, not {filter:?}")))?;
        if labels.insert(key.to_owned(), value.to_owned()).is_some_and(|other| other != value) {
            return Err(Error::InvalidArgument(format!("label {key:?} is asked with two values")));
        }
    }
    Ok(labels)
}

/// The page size asked for (0: the default), capped.
fn page_size(asked: i32) -> Result<i64> {
    const DEFAULT: i64 = 100;
    const MAX: i64 = 1000;
    match asked {
        0 => Ok(DEFAULT),
        n if n < 0 => Err(Error::InvalidArgument(format!("page_size must be positive, not {n}"))),
        n => Ok(i64::from(n).min(MAX)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sizes_and_label_filters() {
        assert_eq!(page_size(0).unwrap(), 100);
        let labels = label_filters(["run=gh-7", "expr=a=b"]).unwrap();
        assert_eq!((labels["run"].as_str(), labels["expr"].as_str()), ("gh-7", "a=b"));
        assert!(label_filters(["nokey"]).is_err() && label_filters(["a=1", "a=2"]).is_err());
        assert_eq!(page_size(5000).unwrap(), 1000);
        assert!(page_size(-1).is_err());
    }

    #[test]
    fn create_takes_the_token_out_of_the_status() {
        let resource = agent::AgentExecution {
            metadata: Some(ResourceMetadata { id: "a1".into(), ..Default::default() }),
            status: Some(agent::AgentExecutionStatus { callback_token: vec![1, 2, 3], ..Default::default() }),
            ..Default::default()
        };
        let request = resource.into_create(None).unwrap();
        assert_eq!(request.token, Some(vec![1, 2, 3]));
        assert_eq!(request.id.as_deref(), Some("a1"));
        let status = agent::AgentExecutionStatus::decode(request.status.unwrap().as_slice()).unwrap();
        assert!(status.callback_token.is_empty());
    }
}
