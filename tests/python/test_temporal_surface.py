"""Temporal's whole surface, on a real dev server: converters that read the serialization context, failure
converters that encode attributes, and standalone activities (started by a client, with no workflow).

Our own versions of temporalio's async-completion tests (complete, fail with details, heartbeat details,
cancel, by token and by id), for workflow and standalone activities, through the store and directly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from temporalio import activity
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.client import ActivityFailureError, Client, WorkflowFailureError
from temporalio.common import RetryPolicy
from temporalio.converter import (
    ActivitySerializationContext,
    DataConverter,
    DefaultFailureConverter,
    PayloadCodec,
    SerializationContext,
    WithSerializationContext,
)
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.worker import Worker

from stigmer_handshake import pb
from stigmer_handshake._core import ActivityGone, Settlement
from stigmer_handshake.handshake import Handshake
from stigmer_handshake.testing import DevServer, sqlite_url

from flows import SEEN_TOKENS, AgentAnswer, AgentParent, AgentRequest, CallerActivities, expected_answer

pytestmark = pytest.mark.asyncio(loop_scope="session")

SECRET = b"test-only key material"


class WorkflowKeyedCodec(PayloadCodec, WithSerializationContext):
    """Encrypts each payload with a key derived from the workflow id of its serialization context (a
    keyed XOR stream: a test's stand-in for per-workflow encryption keys). It refuses to encode or
    decode without a context, as such codecs do, and a payload keyed for another workflow."""

    def __init__(self, key_id: str | None = None) -> None:
        self.key_id = key_id

    def with_context(self, context: SerializationContext) -> WorkflowKeyedCodec:
        workflow_id = getattr(context, "workflow_id", None)
        activity_id = getattr(context, "activity_id", None)
        return WorkflowKeyedCodec(workflow_id or (f"activity:{activity_id}" if activity_id else None))

    def _stream(self, length: int) -> bytes:
        assert self.key_id is not None
        out = b""
        counter = 0
        while len(out) < length:
            out += hashlib.sha256(SECRET + self.key_id.encode() + counter.to_bytes(8, "big")).digest()
            counter += 1
        return out[:length]

    def _key(self) -> str:
        if self.key_id is None:
            raise ValueError(f"Unexpected context type: {type(None)}")
        return self.key_id

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        key = self._key()
        encoded = []
        for p in payloads:
            plain = p.SerializeToString()
            data = bytes(a ^ b for a, b in zip(plain, self._stream(len(plain)), strict=True))
            encoded.append(Payload(metadata={"encoding": b"binary/keyed", "key-id": key.encode()}, data=data))
        return encoded

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        decoded = []
        for p in payloads:
            if p.metadata.get("encoding") != b"binary/keyed":
                decoded.append(p)
                continue
            if p.metadata["key-id"].decode() != self._key():
                raise ValueError(f"payload keyed for {p.metadata['key-id']!r}, not {self._key()!r}")
            plain = bytes(a ^ b for a, b in zip(p.data, self._stream(len(p.data)), strict=True))
            decoded.append(Payload.FromString(plain))
        return decoded


class EncodingFailureConverter(DefaultFailureConverter):
    """temporalio's failure converter with ``encode_common_attributes``: message and stack trace move into
    an encoded payload, so they never sit in history in the clear."""

    def __init__(self) -> None:
        super().__init__(encode_common_attributes=True)


KEYED = DataConverter(payload_codec=WorkflowKeyedCodec(), failure_converter_class=EncodingFailureConverter)


@dataclasses.dataclass
class Keyed:
    """A client, a caller's handshake and a runner's handshake (its own connection, as in another
    process) that all use ``KEYED``, and a worker of ``AgentParent`` with it."""

    client: Client
    hs: Handshake
    runner: Handshake
    task_queue: str


@pytest_asyncio.fixture(loop_scope="session")
async def keyed(temporal_server: DevServer, tmp_path: Path) -> AsyncIterator[Keyed]:
    client = await Client.connect(temporal_server.address, data_converter=KEYED)
    store = sqlite_url(tmp_path)
    task_queue = f"keyed-{uuid.uuid4()}"
    async with (
        await Handshake.connect(store=store, temporal=client) as hs,
        await Handshake.connect(store=store, temporal=client) as runner,
    ):
        activities = CallerActivities(hs)
        async with Worker(client, task_queue=task_queue, workflows=[AgentParent], activities=[activities.run_agent]):
            yield Keyed(client, hs, runner, task_queue)
            SEEN_TOKENS.extend(activities.tokens_seen)


async def wait_stored(hs: Handshake, execution_id: str) -> None:
    for _ in range(300):
        if [e for e in await hs.list() if e.id == execution_id]:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{execution_id} was never stored")


async def history_events(client: Client, workflow_id: str) -> list[Any]:
    return [event async for event in client.get_workflow_handle(workflow_id).fetch_history_events()]


def keyed_for(payload: Payload) -> str:
    assert payload.metadata["encoding"] == b"binary/keyed", payload.metadata
    return payload.metadata["key-id"].decode()


async def test_a_context_keyed_converter_encrypts_the_result_for_the_parent_workflow(keyed: Keyed) -> None:
    execution_id, workflow_id = f"keyed-{uuid.uuid4()}", f"parent-{uuid.uuid4()}"
    request = AgentRequest(execution_id, "hello context", heartbeat_timeout_seconds=3)
    handle = await keyed.client.start_workflow(AgentParent.run, request, id=workflow_id, task_queue=keyed.task_queue)
    await wait_stored(keyed.hs, execution_id)
    [claimed] = await keyed.runner.claim("agent")
    assert claimed.metadata.id == execution_id
    record = await keyed.runner.inspect(execution_id)
    assert record.activity_context == {
        "namespace": "default",
        "workflow_type": "AgentParent",
        "activity_type": "run_agent",
        "task_queue": keyed.task_queue,
    }

    # Progress: the status summary and the runner's own details ride on heartbeats, encrypted for the parent.
    status = pb.AgentExecutionStatus(phase=pb.ExecutionPhase.EXECUTION_PHASE_IN_PROGRESS)
    await keyed.runner.update_status(execution_id, status)
    [summary] = await pending_heartbeat(keyed.client, workflow_id, lambda details: "phase" in details[0])
    assert summary["phase"] == "IN_PROGRESS", summary
    await keyed.runner.heartbeat(execution_id, {"step": 3})
    assert await pending_heartbeat(keyed.client, workflow_id, lambda details: details == [{"step": 3}]) == [{"step": 3}]

    settled = await keyed.runner.succeed(execution_id, expected_answer("hello context"))
    assert settled.outcome == "delivered", settled
    assert await handle.result() == expected_answer("hello context")
    assert await keyed.runner.result(execution_id, AgentAnswer) == expected_answer("hello context")

    [completed] = [
        e for e in await history_events(keyed.client, workflow_id)
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
    ]  # fmt: skip
    [payload] = completed.activity_task_completed_event_attributes.result.payloads
    assert keyed_for(payload) == workflow_id
    assert b"HELLO CONTEXT" not in payload.data


async def pending_heartbeat(client: Client, workflow_id: str, accept: Any, timeout: float = 10) -> list[Any]:
    """The parent activity's latest heartbeat details, decoded with the workflow's context, once they
    satisfy ``accept`` (each payload checked to be keyed for the workflow first)."""
    converter = KEYED.with_context(
        ActivitySerializationContext(
            namespace="default", workflow_id=workflow_id, workflow_type=None, activity_id="1",
            activity_type=None, activity_task_queue=None, is_local=False,
        )
    )  # fmt: skip
    deadline = asyncio.get_running_loop().time() + timeout
    seen: list[Any] = []
    while asyncio.get_running_loop().time() < deadline:
        described = await client.get_workflow_handle(workflow_id).describe()
        for pending in described.raw_description.pending_activities:
            payloads = list(pending.heartbeat_details.payloads)
            if payloads:
                assert all(keyed_for(p) == workflow_id for p in payloads)
                seen = await converter.decode(payloads)
                if accept(seen):
                    return seen
        await asyncio.sleep(0.2)
    raise AssertionError(f"no heartbeat accepted within {timeout} s; last seen {seen!r}")


async def test_a_failure_converter_that_encodes_attributes_keeps_the_message_out_of_history(keyed: Keyed) -> None:
    execution_id, workflow_id = f"keyed-{uuid.uuid4()}", f"parent-{uuid.uuid4()}"
    request = AgentRequest(execution_id, "fail please")
    handle = await keyed.client.start_workflow(AgentParent.run, request, id=workflow_id, task_queue=keyed.task_queue)
    await wait_stored(keyed.hs, execution_id)
    settled = await keyed.runner.fail(
        execution_id, "the model leaked secret-7f3a", type="AGENT_FAILED", non_retryable=True, details=["detail-9c1e"]
    )
    assert settled.outcome == "delivered", settled
    with pytest.raises(WorkflowFailureError) as failed:
        await handle.result()
    cause = failed.value.cause.cause
    assert isinstance(cause, ApplicationError), failed.value.cause
    assert (cause.message, cause.type, cause.non_retryable, list(cause.details)) == (
        "the model leaked secret-7f3a", "AGENT_FAILED", True, ["detail-9c1e"]
    )  # fmt: skip

    events = await history_events(keyed.client, workflow_id)
    [failed_event] = [e for e in events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED]
    failure = failed_event.activity_task_failed_event_attributes.failure
    assert failure.message == "Encoded failure"
    assert keyed_for(failure.encoded_attributes) == workflow_id
    history = b"".join(e.SerializeToString() for e in events)
    assert b"secret-7f3a" not in history and b"detail-9c1e" not in history
    # The store keeps what the runner said, for the people who watch it.
    record = await keyed.runner.inspect(execution_id)
    assert record.phase == "FAILED"
    status = (await keyed.runner.get(execution_id, kind="agent")).status
    assert status.error.message == "the model leaked secret-7f3a"


class StandaloneCaller:
    """A caller activity a client starts on its own, with no workflow: it defers like any other."""

    def __init__(self, hs: Handshake) -> None:
        self.hs = hs
        self.tokens: dict[str, bytes] = {}

    @activity.defn
    async def standalone_agent(self, execution_id: str) -> AgentAnswer:
        self.tokens[execution_id] = activity.info().task_token
        SEEN_TOKENS.append(activity.info().task_token)
        await self.hs.defer(
            pb.AgentExecutionSpec(agent_id="researcher", message=execution_id), execution_id=execution_id
        )


@dataclasses.dataclass
class Standalone:
    client: Client
    hs: Handshake
    caller: StandaloneCaller
    task_queue: str
    store: str
    temporal_url: str

    async def start(self, execution_id: str, **options: Any) -> Any:
        options.setdefault("start_to_close_timeout", timedelta(minutes=2))
        options.setdefault("retry_policy", RetryPolicy(maximum_attempts=1))
        handle = await self.client.start_activity(
            self.caller.standalone_agent, execution_id, id=f"activity-{execution_id}", task_queue=self.task_queue,
            **options,
        )  # fmt: skip
        await wait_stored(self.hs, execution_id)
        return handle


@pytest_asyncio.fixture(loop_scope="session")
async def standalone(temporal_server: DevServer, temporal_client: Client, tmp_path: Path) -> AsyncIterator[Standalone]:
    store = sqlite_url(tmp_path)
    async with await Handshake.connect(store=store, temporal=temporal_server.url) as hs:
        caller = StandaloneCaller(hs)
        task_queue = f"standalone-{uuid.uuid4()}"
        async with Worker(temporal_client, task_queue=task_queue, activities=[caller.standalone_agent]):
            yield Standalone(temporal_client, hs, caller, task_queue, store, temporal_server.url)


async def test_a_standalone_activity_defers_and_its_child_completes_it_through_the_store(
    standalone: Standalone,
) -> None:
    execution_id = f"sa-{uuid.uuid4()}"
    handle = await standalone.start(execution_id, heartbeat_timeout=timedelta(seconds=3))
    record = await standalone.hs.inspect(execution_id)
    assert (record.parent_workflow_id, record.parent_activity_id) == ("", handle.id)
    assert record.parent_run_id == handle.run_id
    assert record.activity_context is not None and "workflow_type" not in record.activity_context

    [claimed] = await standalone.hs.claim("agent")
    assert claimed.metadata.id == execution_id
    await standalone.hs.heartbeat(execution_id, {"step": 1})
    described = await handle.describe(include_heartbeat_details=True)
    assert await described.heartbeat_details() == [{"step": 1}]
    # The pump keeps the activity alive past its 3 s heartbeat timeout.
    await asyncio.sleep(4)
    assert standalone.hs.pump_stats()["heartbeats_sent"] >= 1

    settled = await standalone.hs.succeed(execution_id, expected_answer(execution_id))
    assert settled.outcome == "delivered", settled
    assert await handle.result() == expected_answer(execution_id)
    again = await standalone.hs.succeed(execution_id, expected_answer("other"))
    assert again.outcome == "already_settled"


async def test_a_standalone_activity_fails_and_cancels_through_the_store(standalone: Standalone) -> None:
    failing, cancelled = f"sa-{uuid.uuid4()}", f"sa-{uuid.uuid4()}"
    failing_handle = await standalone.start(failing)
    settled = await standalone.hs.fail(failing, "no answer", type="AGENT_FAILED", details=["why"])
    assert settled.outcome == "delivered", settled
    with pytest.raises(ActivityFailureError) as failed:
        await failing_handle.result()
    assert isinstance(failed.value.cause, ApplicationError)
    assert (failed.value.cause.message, failed.value.cause.type, list(failed.value.cause.details)) == (
        "no answer", "AGENT_FAILED", ["why"]
    )  # fmt: skip

    cancelled_handle = await standalone.start(cancelled, heartbeat_timeout=timedelta(seconds=30))
    await standalone.hs.claim("agent")
    await cancelled_handle.cancel(reason="the user gave up")
    signals = await asyncio.wait_for(standalone.hs.cancellation(cancelled), timeout=30)
    assert signals is not None and signals.cancel_requested
    settled = await standalone.hs.cancel(cancelled, "stopped")
    assert settled.outcome == "delivered", settled
    with pytest.raises(ActivityFailureError) as failed:
        await cancelled_handle.result()
    assert isinstance(failed.value.cause, CancelledError), failed.value.cause


async def test_a_standalone_activity_is_settled_directly_by_token_and_by_id(standalone: Standalone) -> None:
    by_token, by_id = f"sa-{uuid.uuid4()}", f"sa-{uuid.uuid4()}"
    token_handle = await standalone.start(by_token)
    token = standalone.caller.tokens[by_token]
    reply = await standalone.hs.heartbeat_activity({"direct": True}, token=token)
    assert not reply.cancel_requested
    await standalone.hs.complete_activity(expected_answer(by_token), token=token)
    assert await token_handle.result() == expected_answer(by_token)
    with pytest.raises(ActivityGone):
        await standalone.hs.complete_activity(expected_answer(by_token), token=token)

    id_handle = await standalone.start(by_id)
    await standalone.hs.heartbeat_activity({"direct": "by id"}, activity_id=id_handle.id, run_id=id_handle.run_id)
    described = await id_handle.describe(include_heartbeat_details=True)
    assert await described.heartbeat_details() == [{"direct": "by id"}]
    await standalone.hs.fail_activity("refused", type="REFUSED", non_retryable=True, activity_id=id_handle.id)
    with pytest.raises(ActivityFailureError) as failed:
        await id_handle.result()
    assert isinstance(failed.value.cause, ApplicationError) and failed.value.cause.type == "REFUSED"
    with pytest.raises(ActivityGone):
        await standalone.hs.report_activity_cancellation(activity_id=id_handle.id, run_id=id_handle.run_id)


async def test_a_retried_standalone_activity_rebinds_and_the_runner_answers_the_retry(standalone: Standalone) -> None:
    execution_id = f"sa-{uuid.uuid4()}"
    retry = RetryPolicy(maximum_attempts=2, initial_interval=timedelta(milliseconds=100))
    handle = await standalone.start(execution_id, start_to_close_timeout=timedelta(seconds=2), retry_policy=retry)
    await standalone.hs.claim("agent")  # the pump beats with attempt 1's token, which dies in 2 s
    for _ in range(200):
        if (await standalone.hs.inspect(execution_id)).parent_attempt == 2:
            break
        await asyncio.sleep(0.05)
    record = await standalone.hs.inspect(execution_id)
    assert (record.parent_attempt, record.parent_run_id) == (2, handle.run_id), "the retry re-bound to its child"
    assert [e.id for e in await standalone.hs.list()].count(execution_id) == 1, "no second child"
    settled = await standalone.hs.succeed(execution_id, expected_answer(execution_id))
    assert settled.outcome == "delivered", settled
    assert await handle.result() == expected_answer(execution_id)


async def test_a_standalone_parent_that_timed_out_is_reported_gone(standalone: Standalone) -> None:
    execution_id = f"sa-{uuid.uuid4()}"
    handle = await standalone.start(execution_id, start_to_close_timeout=timedelta(seconds=2))
    with pytest.raises(ActivityFailureError):
        await handle.result()
    settled: Settlement = await standalone.hs.succeed(execution_id, expected_answer(execution_id))
    assert (settled.outcome, settled.reason) == ("activity_gone", "PARENT_TIMED_OUT"), settled
    assert await standalone.hs.result(execution_id, AgentAnswer) == expected_answer(execution_id)


async def test_a_standalone_parent_left_by_a_dead_runner_is_marked_orphaned(standalone: Standalone) -> None:
    execution_id = f"sa-{uuid.uuid4()}"
    handle = await standalone.start(execution_id, heartbeat_timeout=timedelta(seconds=2))
    async with await Handshake.connect(store=standalone.store, temporal=standalone.temporal_url) as runner:
        await runner.claim("agent", lease=1)
    # The runner is gone (closed: its pump stopped): the heartbeat timeout ends the activity.
    with pytest.raises(ActivityFailureError):
        await handle.result()
    await asyncio.sleep(1)  # the claim's lease runs out
    report = await standalone.hs.reconcile()
    assert report.orphaned == 1, report
    assert (await standalone.hs.get(execution_id, kind="agent")).status.orphaned


async def test_inspect_token_names_a_standalone_activity(standalone: Standalone, tmp_path: Path) -> None:
    execution_id = f"sa-{uuid.uuid4()}"
    handle = await standalone.start(execution_id)
    path = tmp_path / "token.bin"
    path.write_bytes(standalone.caller.tokens[execution_id])
    shown = subprocess.run(
        [sys.executable, "-m", "stigmer_handshake.cli", "inspect-token", "--file", str(path), "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    fields = json.loads(shown.stdout)
    assert (fields["activity"], fields["workflow_id"], fields["activity_id"]) == ("standalone", "", handle.id)
    assert fields["run_id"] == handle.run_id
    await standalone.hs.cancel(execution_id)
