"""The resource messages (generated from proto/), under short names.

from stigmer_handshake import pb
spec = pb.AgentExecutionSpec(agent_id="researcher", message="Summarise the report")
"""

from stigmer_handshake._proto.ai.stigmer.agentic.agentexecution.v1.api_pb2 import (
    AgentExecution,
    AgentExecutionSpec,
    AgentExecutionStatus,
    AgentMessage,
    ExecutionConfig,
    MessageType,
    SubAgentExecution,
    TodoItem,
    TodoStatus,
    ToolCall,
    ToolCallStatus,
)
from stigmer_handshake._proto.ai.stigmer.agentic.workflowexecution.v1.api_pb2 import (
    WorkflowExecution,
    WorkflowExecutionSpec,
    WorkflowExecutionStatus,
    WorkflowTask,
    WorkflowTaskStatus,
    WorkflowTaskType,
)
from stigmer_handshake._proto.ai.stigmer.commons.v1.types_pb2 import (
    AuditInfo,
    ExecutionError,
    ExecutionPhase,
    ExecutionValue,
    ResourceMetadata,
)

__all__ = [
    "AgentExecution",
    "AgentExecutionSpec",
    "AgentExecutionStatus",
    "AgentMessage",
    "AuditInfo",
    "ExecutionConfig",
    "ExecutionError",
    "ExecutionPhase",
    "ExecutionValue",
    "MessageType",
    "ResourceMetadata",
    "SubAgentExecution",
    "TodoItem",
    "TodoStatus",
    "ToolCall",
    "ToolCallStatus",
    "WorkflowExecution",
    "WorkflowExecutionSpec",
    "WorkflowExecutionStatus",
    "WorkflowTask",
    "WorkflowTaskStatus",
    "WorkflowTaskType",
]
