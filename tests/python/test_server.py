"""The handshake over the network (`Handshake.serve`, `stigmer-handshake serve`), against real peers: a
Temporal dev server, a caller activity that defers over gRPC with its own token (as a Go or TypeScript
caller would), grpcio clients and an HTTP client. On both stores."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from stigmer_handshake import ApiKey, Handshake, InvalidInput, pb
from stigmer_handshake.testing import DevServer

from conftest import BOTH_STORES, namespace_id_of
from flows import SEEN_TOKENS, AgentAnswer, NetworkAgentParent, NetworkRequest, NetworkWorkflowParent, create_over_grpc
from grpc_api import AGENT, HANDSHAKE, WORKFLOW, GrpcApi, agent_pb, handshake_pb, workflow_pb
from token_scan import SEEN_SECRETS

STORE_BACKENDS = BOTH_STORES

KEYS = {
    "admin": ApiKey("ops", "admin-" + uuid.uuid4().hex, ("admin",)),
    "create": ApiKey("caller", "create-" + uuid.uuid4().hex, ("create",)),
    "runner": ApiKey("runner", "runner-" + uuid.uuid4().hex, ("settle", "read")),
    "read": ApiKey("dashboard", "read-" + uuid.uuid4().hex, ("read",)),
}
SEEN_SECRETS.extend(k.secret.encode() for k in KEYS.values())


@dataclass
class Served:
    hs: Handshake
    address: str
    url: str
    client: Client
    task_queue: str

    def grpc(self, key: str | None) -> GrpcApi:
        return GrpcApi(self.address, None if key is None else KEYS[key].secret)

    async def http(self, method: str, path: str, body: Any = None, *, key: str | None = "runner") -> tuple[int, Any]:
        """(status, JSON body) of one HTTP request; `path` is absolute or under the server's URL."""
        url = path if path.startswith("http") else self.url + path
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        request = urllib.request.Request(url, data=data, method=method)
        if key is not None:
            request.add_header("authorization", f"Bearer {KEYS[key].secret}")

        def send() -> tuple[int, Any]:
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    return response.status, json.loads(response.read() or b"null")
            except urllib.error.HTTPError as err:
                return err.code, json.loads(err.read() or b"null")

        return await asyncio.to_thread(send)

    async def start_parent(self, kind: str = "agent", prompt: str = "hello") -> tuple[str, Any]:
        """A parent whose activity defers over gRPC; returns once its child is stored."""
        execution_id = f"net-{uuid.uuid4()}"
        request = NetworkRequest(self.address, KEYS["create"].secret, execution_id, prompt, kind)
        workflow = NetworkAgentParent.run if kind == "agent" else NetworkWorkflowParent.run
        handle = await self.client.start_workflow(
            workflow, request, id=f"parent-{execution_id}", task_queue=self.task_queue
        )
        for _ in range(300):
            try:
                await self.hs.inspect(execution_id)
                return execution_id, handle
            except Exception:
                await asyncio.sleep(0.05)
        raise AssertionError("the caller never created its child")


@pytest_asyncio.fixture(loop_scope="session")
async def served(temporal_server: DevServer, temporal_client: Client, store_url: str) -> AsyncIterator[Served]:
    async with await Handshake.connect(store=store_url, temporal=temporal_server.url) as hs:
        server = await hs.serve("127.0.0.1:0", api_keys=list(KEYS.values()))
        task_queue = f"net-{uuid.uuid4()}"
        async with Worker(
            temporal_client,
            task_queue=task_queue,
            workflows=[NetworkAgentParent, NetworkWorkflowParent],
            activities=[create_over_grpc],
        ):
            yield Served(hs, server.address, server.url, temporal_client, task_queue)


def code(err: pytest.ExceptionInfo[grpc.aio.AioRpcError]) -> grpc.StatusCode:
    return err.value.code()


async def test_a_caller_defers_over_grpc_and_a_webhook_completes_it_through_a_callback_url(served: Served) -> None:
    execution_id, parent = await served.start_parent(prompt="hello")
    async with served.grpc("admin") as api:
        reply = await api.call(HANDSHAKE, "CallbackUrl", handshake_pb.CallbackUrlRequest(execution_id=execution_id))
    assert reply.url.startswith(f"{served.url}/v1/callbacks/shc1.")
    status, view = await served.http("GET", reply.url, key=None)
    assert (status, view["id"], view["phase"], view["callback"]["state"]) == (200, execution_id, "PENDING", "armed")
    answer = {"answer": "HELLO", "tokens_used": 5, "sources": ["web"]}
    status, settled = await served.http("POST", reply.url + ":complete", answer, key=None)
    assert (status, settled["outcome"]) == (200, "delivered")
    assert await parent.result() == AgentAnswer("HELLO", 5, ["web"])
    # A repeat sends nothing and says so.
    status, again = await served.http("POST", reply.url + ":complete", {"answer": "other"}, key=None)
    assert (status, again["outcome"], again["detail"]) == (200, "already_settled", "complete")
    status, view = await served.http("GET", f"/v1/executions/{execution_id}", key="read")
    assert (view["phase"], view["callback"]["state"], view["values"]) == ("COMPLETED", "delivered", [answer])


async def test_a_failure_over_http_reaches_the_parent_with_its_type_and_retryability(served: Served) -> None:
    execution_id, parent = await served.start_parent()
    body = {"message": "card declined", "type": "PAYMENT_DECLINED", "non_retryable": True, "details": [{"code": 51}]}
    status, settled = await served.http("POST", f"/v1/executions/{execution_id}:fail", body)
    assert (status, settled["outcome"]) == (200, "delivered")
    with pytest.raises(WorkflowFailureError) as failure:
        await parent.result()
    cause = failure.value.cause.cause
    assert isinstance(cause, ApplicationError)
    assert (cause.message, cause.type, cause.non_retryable, list(cause.details)) == (
        "card declined", "PAYMENT_DECLINED", True, [{"code": 51}]
    )  # fmt: skip


async def test_workflow_executions_report_progress_and_complete_with_their_output_through_update_status(
    served: Served,
) -> None:
    execution_id, parent = await served.start_parent(kind="workflow")
    async with served.grpc("runner") as api:
        progress = workflow_pb.WorkflowExecutionStatus(
            phase=pb.ExecutionPhase.EXECUTION_PHASE_IN_PROGRESS,
            tasks=[pb.WorkflowTask(task_id="t1", status=pb.WorkflowTaskStatus.WORKFLOW_TASK_STATUS_COMPLETED)],
        )
        request = workflow_pb.UpdateStatusRequest(execution_id=execution_id, status=progress)
        updated = await api.call(f"{WORKFLOW}CommandController", "updateStatus", request)
        assert updated.status.phase == pb.ExecutionPhase.EXECUTION_PHASE_IN_PROGRESS
        assert [t.task_id for t in updated.status.tasks] == ["t1"]
        output = struct_pb2.Struct()
        output.update({"total": 6, "items": ["a", "b"]})
        done = workflow_pb.WorkflowExecutionStatus(phase=pb.ExecutionPhase.EXECUTION_PHASE_COMPLETED, output=output)
        request = workflow_pb.UpdateStatusRequest(execution_id=execution_id, status=done)
        ended = await api.call(f"{WORKFLOW}CommandController", "updateStatus", request)
        assert ended.status.phase == pb.ExecutionPhase.EXECUTION_PHASE_COMPLETED
        assert not ended.status.callback_token
        assert await parent.result() == {"total": 6, "items": ["a", "b"]}
        # An ended execution takes no more progress: FAILED_PRECONDITION, and it stays as it ended.
        request = workflow_pb.UpdateStatusRequest(execution_id=execution_id, status=progress)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await api.call(f"{WORKFLOW}CommandController", "updateStatus", request)
        assert code(refused) == grpc.StatusCode.FAILED_PRECONDITION
        got = await api.call(f"{WORKFLOW}QueryController", "get", workflow_pb.WorkflowExecutionId(value=execution_id))
        assert got.status.phase == pb.ExecutionPhase.EXECUTION_PHASE_COMPLETED


async def test_the_settle_service_sends_typed_values_and_heartbeats_answer(served: Served) -> None:
    execution_id, parent = await served.start_parent()
    async with served.grpc("runner") as api:
        beat = await api.call(HANDSHAKE, "Heartbeat", handshake_pb.HeartbeatRequest(execution_id=execution_id))
        assert (beat.cancel_requested, beat.paused, beat.reset) == (False, False, False)
        values = struct_pb2.ListValue()
        values.append({"answer": "X", "tokens_used": 1, "sources": []})
        request = handshake_pb.SettleRequest(
            execution_id=execution_id, complete=handshake_pb.Complete(result=handshake_pb.Values(json=values))
        )
        reply = await api.call(HANDSHAKE, "Settle", request)
        assert reply.outcome == "delivered"
        assert await parent.result() == AgentAnswer("X", 1, [])
        again = await api.call(HANDSHAKE, "Settle", request)
        assert (again.outcome, again.detail) == ("already_settled", "complete")
        for bad, expected in [
            (handshake_pb.SettleRequest(execution_id="no-such"), grpc.StatusCode.INVALID_ARGUMENT),
            (
                handshake_pb.SettleRequest(execution_id="no-such", cancel=handshake_pb.Cancel()),
                grpc.StatusCode.NOT_FOUND,
            ),
            (
                handshake_pb.SettleRequest(execution_id="", cancel=handshake_pb.Cancel()),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            (
                handshake_pb.SettleRequest(execution_id=execution_id, fail=handshake_pb.Fail(message="")),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await api.call(HANDSHAKE, "Settle", bad)
            assert code(refused) == expected, bad


async def test_nobody_gets_in_without_the_right_key_and_a_refusal_changes_nothing(served: Served) -> None:
    execution_id, parent = await served.start_parent()
    cancel = handshake_pb.SettleRequest(execution_id=execution_id, cancel=handshake_pb.Cancel())
    resource = agent_pb.AgentExecution(spec=pb.AgentExecutionSpec(agent_id="x"))
    for key, service, method, request, expected in [
        (None, HANDSHAKE, "Settle", cancel, grpc.StatusCode.UNAUTHENTICATED),
        ("read", HANDSHAKE, "Settle", cancel, grpc.StatusCode.PERMISSION_DENIED),
        ("create", HANDSHAKE, "Settle", cancel, grpc.StatusCode.PERMISSION_DENIED),
        ("runner", HANDSHAKE, "CallbackUrl", handshake_pb.CallbackUrlRequest(execution_id=execution_id),
         grpc.StatusCode.PERMISSION_DENIED),
        ("read", f"{AGENT}CommandController", "create", resource, grpc.StatusCode.PERMISSION_DENIED),
        (None, f"{AGENT}QueryController", "get", agent_pb.AgentExecutionId(value=execution_id),
         grpc.StatusCode.UNAUTHENTICATED),
        ("create", f"{AGENT}QueryController", "list", agent_pb.ListAgentExecutionsRequest(),
         grpc.StatusCode.PERMISSION_DENIED),
        (None, f"{AGENT}CommandController", "delete", agent_pb.AgentExecutionId(value=execution_id),
         grpc.StatusCode.UNAUTHENTICATED),
    ]:  # fmt: skip
        async with served.grpc(key) as api:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await api.call(service, method, request)
        assert code(refused) == expected, (key, method)
    wrong = GrpcApi(served.address, "not-a-key-0123456789")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await wrong.call(HANDSHAKE, "Settle", cancel)
    await wrong.close()
    assert code(refused) == grpc.StatusCode.UNAUTHENTICATED
    for key, method, path, expected in [
        (None, "POST", f"/v1/executions/{execution_id}:cancel", 401),
        ("read", "POST", f"/v1/executions/{execution_id}:cancel", 403),
        ("runner", "POST", f"/v1/executions/{execution_id}:callbackUrl", 403),
        (None, "GET", f"/v1/executions/{execution_id}", 401),
        (None, "GET", "/metrics", 401),
        ("create", "GET", "/v1/executions", 403),
    ]:
        status, body = await served.http(method, path, {} if method == "POST" else None, key=key)
        assert (status, body["error"]["code"]) == (expected, {401: "unauthorized", 403: "forbidden"}[expected])
    # Nothing was settled or stored by any of them: the child waits, its parent still runs.
    record = await served.hs.inspect(execution_id)
    assert (record.phase, record.callback_state) == ("PENDING", "armed")
    assert len(await served.hs.list()) == 1
    await served.hs.fail(execution_id, "done with the test")
    with pytest.raises(WorkflowFailureError):
        await parent.result()


async def test_callback_urls_that_are_forged_expired_of_another_store_or_out_of_scope_change_nothing(
    served: Served, tmp_path: Any
) -> None:
    execution_id, parent = await served.start_parent()
    complete_only = served.hs.callback_url(execution_id, ("complete",))
    forged = complete_only[:-4] + ("0000" if not complete_only.endswith("0000") else "1111")
    expired = served.hs.callback_url(execution_id, ttl=0.05)
    async with await Handshake.connect(store=f"sqlite:///{tmp_path}/other.db", temporal=None) as other:
        foreign = served.url + other.callback_url(execution_id, base_url="http://x").removeprefix("http://x")
    await asyncio.sleep(0.1)
    for url, expected in [
        (forged + ":complete", 403),
        (expired + ":complete", 403),
        (foreign + ":complete", 403),
        (complete_only + ":fail", 403),
        (served.url + "/v1/callbacks/garbage:complete", 403),
    ]:
        body = {"message": "no"} if url.endswith(":fail") else {"answer": "no"}
        status, answer = await served.http("POST", url, body, key=None)
        assert (status, answer["error"]["type"]) == (expected, "CapabilityError"), url
    status, _ = await served.http("GET", forged, key=None)
    assert status == 403
    record = await served.hs.inspect(execution_id)
    assert (record.phase, record.callback_state) == ("PENDING", "armed")
    status, settled = await served.http(
        "POST", complete_only + ":complete", {"answer": "A", "tokens_used": 0, "sources": []}, key=None
    )
    assert (status, settled["outcome"]) == (200, "delivered")
    assert await parent.result() == AgentAnswer("A", 0, [])


async def test_bad_input_gets_a_typed_answer_and_changes_nothing(served: Served) -> None:
    execution_id, parent = await served.start_parent()
    for method, path, body, expected, fragment in [
        ("POST", f"/v1/executions/{execution_id}:complete", b"{not json", 400, "not JSON"),
        ("POST", f"/v1/executions/{execution_id}:fail", {"mesage": "typo"}, 400, "unknown field"),
        ("POST", f"/v1/executions/{execution_id}:fail", {"message": 3}, 400, "message"),
        ("POST", f"/v1/executions/{execution_id}:launch", {}, 400, ":launch"),
        ("POST", f"/v1/executions/{execution_id}", {}, 400, ":complete"),
        ("POST", "/v1/executions/no-such:complete", {}, 404, "no-such"),
        ("GET", "/v1/executions/no-such", None, 404, "no-such"),
        ("GET", "/v1/executions?page_token=zz", None, 400, "page_token"),
        ("GET", "/v1/executions?phase=DONE", None, 400, "phase"),
        ("GET", "/v1/executions?colour=red", None, 400, "colour"),
        ("POST", f"/v1/executions/{execution_id}:complete", b"[" + b"1," * 1_100_000 + b"1]", 413, ""),
    ]:
        status, answer = await served.http(method, path, body)
        assert status == expected, (path, answer)
        assert fragment in answer["error"]["message"], answer
    record = await served.hs.inspect(execution_id)
    assert (record.phase, record.callback_state) == ("PENDING", "armed")
    status, settled = await served.http("POST", f"/v1/executions/{execution_id}:fail", {"message": "m"})
    assert (status, settled["outcome"]) == (200, "delivered")
    with pytest.raises(WorkflowFailureError):
        await parent.result()


async def test_lists_page_by_key_over_grpc_and_http_and_never_carry_a_token(served: Served) -> None:
    ids = []
    for _ in range(3):
        execution_id, _parent = await served.start_parent()
        ids.append(execution_id)
    for n in range(2):
        await served.hs.create(pb.WorkflowExecutionSpec(workflow_id=f"w{n}"), execution_id=f"direct-{n}-{uuid.uuid4()}")
    async with served.grpc("read") as api:
        seen, token = [], ""
        for _ in range(5):
            page = await api.call(
                f"{AGENT}QueryController", "list", agent_pb.ListAgentExecutionsRequest(page_size=2, page_token=token)
            )
            seen += [item.metadata.id for item in page.items]
            assert all(not item.status.callback_token for item in page.items)
            token = page.next_page_token
            if not token:
                break
        assert seen == ids
        workflows = await api.call(f"{WORKFLOW}QueryController", "list", workflow_pb.ListWorkflowExecutionsRequest())
        assert len(workflows.items) == 2
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await api.call(f"{AGENT}QueryController", "list", agent_pb.ListAgentExecutionsRequest(page_token="x.y"))
        assert code(refused) == grpc.StatusCode.INVALID_ARGUMENT
    async with served.grpc("runner") as runner:
        # A workflow execution is not found as an agent one, and takes no agent status.
        update = agent_pb.UpdateStatusRequest(
            execution_id=workflows.items[0].metadata.id, status=agent_pb.AgentExecutionStatus(phase=2)
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await runner.call(f"{AGENT}CommandController", "updateStatus", update)
        assert code(refused) == grpc.StatusCode.NOT_FOUND
    async with served.grpc("read") as api:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await api.call(
                f"{AGENT}QueryController", "get", agent_pb.AgentExecutionId(value=workflows.items[0].metadata.id)
            )
        assert code(refused) == grpc.StatusCode.NOT_FOUND
    status, first = await served.http("GET", "/v1/executions?kind=agent&page_size=2", key="read")
    assert status == 200
    status, second = await served.http(
        "GET", f"/v1/executions?kind=agent&page_size=2&page_token={first['next_page_token']}", key="read"
    )
    assert status == 200
    assert [e["id"] for e in first["executions"] + second["executions"]] == ids
    assert second["next_page_token"] is None
    _, pending = await served.http("GET", "/v1/executions?phase=PENDING&kind=workflow", key="read")
    assert len(pending["executions"]) == 2
    for execution_id in ids:
        await served.hs.fail(execution_id, "done with the test")


async def test_subscribe_streams_each_change_until_the_execution_ends(served: Served) -> None:
    execution_id, parent = await served.start_parent()
    async with served.grpc("runner") as api:
        stream = api.stream(f"{AGENT}QueryController", agent_pb.AgentExecutionId(value=execution_id))
        phases = []

        async def read() -> None:
            async for item in stream:
                phases.append(item.status.phase)
                assert not item.status.callback_token

        reading = asyncio.create_task(read())
        await asyncio.sleep(0.3)
        status = agent_pb.AgentExecutionStatus(
            phase=pb.ExecutionPhase.EXECUTION_PHASE_IN_PROGRESS, messages=[pb.AgentMessage(content="thinking")]
        )
        request = agent_pb.UpdateStatusRequest(execution_id=execution_id, status=status)
        await api.call(f"{AGENT}CommandController", "updateStatus", request)
        await asyncio.sleep(0.3)
        await served.hs.succeed(execution_id, AgentAnswer("done", 1, []))
        await asyncio.wait_for(reading, 10)
    p = pb.ExecutionPhase
    assert phases == [p.EXECUTION_PHASE_PENDING, p.EXECUTION_PHASE_IN_PROGRESS, p.EXECUTION_PHASE_COMPLETED]
    assert await parent.result() == AgentAnswer("done", 1, [])


async def test_health_checks_reflection_and_metrics_work_as_their_standard_clients_expect(served: Served) -> None:
    channel = grpc.aio.insecure_channel(served.address)
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", f"{AGENT}CommandController", HANDSHAKE):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
    await channel.close()

    def reflect() -> list[str]:
        sync_channel = grpc.insecure_channel(served.address)
        try:
            database = ProtoReflectionDescriptorDatabase(sync_channel)
            services = database.get_services()
            # The reflection client can describe our messages too (what grpcurl shows).
            database.FindFileContainingSymbol(f"{HANDSHAKE}")
            return list(services)
        finally:
            sync_channel.close()

    services = await asyncio.to_thread(reflect)
    assert {f"{AGENT}CommandController", f"{WORKFLOW}QueryController", HANDSHAKE} <= set(services)
    await served.http("GET", "/v1/executions/no-such", key="read")

    def scrape() -> str:
        request = urllib.request.Request(
            served.url + "/metrics", headers={"authorization": f"Bearer {KEYS['read'].secret}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return str(response.read().decode())

    text = await asyncio.to_thread(scrape)
    assert 'stigmer_handshake_requests_total{face="http",method="GET /v1/executions/{target}",code="404"}' in text
    assert 'face="grpc",method="grpc.health.v1.Health/Check"' not in text  # health is not counted as API use


async def test_serving_without_keys_is_refused_beyond_loopback_and_callback_urls_need_a_base(served: Served) -> None:
    with pytest.raises(InvalidInput, match="needs API keys"):
        await served.hs.serve("0.0.0.0:0")
    with pytest.raises(InvalidInput, match="needs API keys"):
        await served.hs.serve("127.0.0.1:0")
    with pytest.raises(InvalidInput, match="not both"):
        await served.hs.serve("127.0.0.1:0", api_keys=[KEYS["read"]], insecure_localhost=True)
    with pytest.raises(InvalidInput, match="at least 16"):
        await served.hs.serve("127.0.0.1:0", api_keys=[ApiKey("short", "abc", ("read",))])
    with pytest.raises(InvalidInput, match="scopes are"):
        ApiKey.parse("k write aaaaaaaaaaaaaaaaaaaaaaaa")
    async with await Handshake.connect(store="sqlite::memory:", temporal=None) as bare:
        with pytest.raises(InvalidInput, match="base_url"):
            bare.callback_url("x")
        with pytest.raises(InvalidInput, match="http"):
            bare.callback_url("x", base_url="ftp://host")


async def test_labels_travel_with_the_execution_and_filter_listings_on_both_faces(served: Served) -> None:
    async with served.grpc("create") as creator:
        for n, team in enumerate(["search", "search", "ads"]):
            resource = agent_pb.AgentExecution(
                metadata=pb.ResourceMetadata(id=f"lab-{n}-{uuid.uuid4()}", labels={"team": team, "run": f"gh-{n}"}),
                spec=pb.AgentExecutionSpec(agent_id="a"),
            )
            created = await creator.call(f"{AGENT}CommandController", "create", resource)
            assert dict(created.metadata.labels) == {"team": team, "run": f"gh-{n}"}
        bad = agent_pb.AgentExecution(metadata=pb.ResourceMetadata(labels={"": "x"}), spec=pb.AgentExecutionSpec())
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await creator.call(f"{AGENT}CommandController", "create", bad)
        assert code(refused) == grpc.StatusCode.INVALID_ARGUMENT
    async with served.grpc("read") as reader:
        request = agent_pb.ListAgentExecutionsRequest()
        page = await reader.call(f"{AGENT}QueryController", "list", request, extra=(("stigmer-label", "team=search"),))
        assert [dict(i.metadata.labels)["run"] for i in page.items] == ["gh-0", "gh-1"]
        both = (("stigmer-label", "team=search"), ("stigmer-label", "run=gh-1"))
        page = await reader.call(f"{AGENT}QueryController", "list", request, extra=both)
        assert [dict(i.metadata.labels)["run"] for i in page.items] == ["gh-1"]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await reader.call(f"{AGENT}QueryController", "list", request, extra=(("stigmer-label", "team"),))
        assert code(refused) == grpc.StatusCode.INVALID_ARGUMENT
    # A webhook sender finds its execution by the id it knows it by.
    status, found = await served.http("GET", "/v1/executions?label=run%3Dgh-2", key="read")
    assert (status, [e["labels"] for e in found["executions"]]) == (200, [{"team": "ads", "run": "gh-2"}])
    status, none = await served.http("GET", "/v1/executions?label=run%3Dgh-2&label=team%3Dsearch", key="read")
    assert (status, none["executions"]) == (200, [])
    assert len(await served.hs.list(labels={"team": "search"})) == 2


async def test_a_retried_caller_re_binds_over_grpc_and_unsupported_or_oversized_calls_are_refused(
    served: Served,
) -> None:
    from stigmer_handshake.testing import task_token

    namespace_id = await namespace_id_of(served.client)
    run_id, execution_id = str(uuid.uuid4()), f"rebind-{uuid.uuid4()}"
    async with served.grpc("create") as creator:
        for attempt in (1, 2):
            token = task_token(namespace_id, f"wf-{execution_id}", run_id, attempt=attempt)
            SEEN_TOKENS.append(token)
            resource = agent_pb.AgentExecution(
                metadata=pb.ResourceMetadata(id=execution_id if attempt == 1 else f"other-{execution_id}"),
                spec=pb.AgentExecutionSpec(agent_id="a"),
                status=agent_pb.AgentExecutionStatus(callback_token=token),
            )
            created = await creator.call(f"{AGENT}CommandController", "create", resource)
            # The retried attempt is bound to the child the first one made: no second child.
            assert created.metadata.id == execution_id
        record = await served.hs.inspect(execution_id)
        assert (record.parent_attempt, len(await served.hs.list())) == (2, 1)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            bad = agent_pb.AgentExecution(status=agent_pb.AgentExecutionStatus(callback_token=b"not a token"))
            await creator.call(f"{AGENT}CommandController", "create", bad)
        assert code(refused) == grpc.StatusCode.INVALID_ARGUMENT
    async with served.grpc("admin") as admin:
        for method, request in [
            ("update", agent_pb.AgentExecution(metadata=pb.ResourceMetadata(id=execution_id))),
            ("delete", agent_pb.AgentExecutionId(value=execution_id)),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await admin.call(f"{AGENT}CommandController", method, request)
            assert code(refused) == grpc.StatusCode.UNIMPLEMENTED, method
        huge = agent_pb.AgentExecution(spec=pb.AgentExecutionSpec(message="x" * 3_000_000))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await admin.call(f"{AGENT}CommandController", "create", huge)
        # tonic's answer to a message over the limit (the limit is the result limit plus 64 KiB).
        assert code(refused) == grpc.StatusCode.OUT_OF_RANGE and "too large" in str(refused.value.details())
    assert len(await served.hs.list()) == 1
