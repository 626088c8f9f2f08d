"""A grpcio client of `stigmer-handshake serve`, built on grpcio's generic calls and the shipped message
modules (no generated stubs): `await GrpcApi(address, key).call("agent.query", "get", request)`."""

from __future__ import annotations

from typing import Any

import grpc

from stigmer_handshake._proto.ai.stigmer.agentic.agentexecution.v1 import api_pb2 as agent_pb
from stigmer_handshake._proto.ai.stigmer.agentic.workflowexecution.v1 import api_pb2 as workflow_pb
from stigmer_handshake._proto.ai.stigmer.handshake.v1 import handshake_pb2 as handshake_pb

AGENT = "ai.stigmer.agentic.agentexecution.v1.AgentExecution"
WORKFLOW = "ai.stigmer.agentic.workflowexecution.v1.WorkflowExecution"
HANDSHAKE = "ai.stigmer.handshake.v1.HandshakeService"

#: (service, method) -> response type; the request type is what the caller passes.
RESPONSES: dict[tuple[str, str], Any] = {
    **{
        (f"{AGENT}CommandController", m): agent_pb.AgentExecution
        for m in ("create", "update", "updateStatus", "delete")
    },
    **{(f"{AGENT}QueryController", m): agent_pb.AgentExecution for m in ("get", "subscribe")},
    (f"{AGENT}QueryController", "list"): agent_pb.AgentExecutionList,
    **{
        (f"{WORKFLOW}CommandController", m): workflow_pb.WorkflowExecution
        for m in ("create", "update", "updateStatus", "delete")
    },
    **{(f"{WORKFLOW}QueryController", m): workflow_pb.WorkflowExecution for m in ("get", "subscribe")},
    (f"{WORKFLOW}QueryController", "list"): workflow_pb.WorkflowExecutionList,
    (HANDSHAKE, "Settle"): handshake_pb.SettleReply,
    (HANDSHAKE, "Heartbeat"): handshake_pb.HeartbeatReply,
    (HANDSHAKE, "CallbackUrl"): handshake_pb.CallbackUrlReply,
}


class GrpcApi:
    def __init__(self, address: str, key: str | None = None) -> None:
        self.channel = grpc.aio.insecure_channel(address)
        self.key = key

    def metadata(self, extra: tuple[tuple[str, str], ...] = ()) -> tuple[tuple[str, str], ...]:
        return ((("authorization", f"Bearer {self.key}"),) if self.key else ()) + extra

    async def call(self, service: str, method: str, request: Any, *, extra: tuple[tuple[str, str], ...] = ()) -> Any:
        response = RESPONSES[(service, method)]
        rpc = self.channel.unary_unary(
            f"/{service}/{method}",
            request_serializer=type(request).SerializeToString,
            response_deserializer=response.FromString,
        )
        return await rpc(request, metadata=self.metadata(extra), timeout=30)

    def stream(self, service: str, request: Any) -> Any:
        response = RESPONSES[(service, "subscribe")]
        rpc = self.channel.unary_stream(
            f"/{service}/subscribe",
            request_serializer=type(request).SerializeToString,
            response_deserializer=response.FromString,
        )
        return rpc(request, metadata=self.metadata(), timeout=60)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> GrpcApi:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
