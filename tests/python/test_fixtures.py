"""Testing as temporalio users test: the plugin's `handshake` fixture (connected to the session's dev server,
on a store of its own), `defer` under temporalio's `ActivityEnvironment`, and the `worker` helper."""

from __future__ import annotations

import uuid

import pytest
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

from stigmer_handshake import Handshake, TokenError, pb
from stigmer_handshake.testing import activity_info, worker

from flows import AgentParent, AgentRequest, CallerActivities, expected_answer

SPEC = pb.AgentExecutionSpec(agent_id="a", message="m")


async def test_the_handshake_fixture_is_connected_on_a_fresh_store(handshake: Handshake) -> None:
    assert await handshake.list() == []
    execution_id = await handshake.create(SPEC)
    assert [e.id for e in await handshake.list()] == [execution_id]
    settlement = await handshake.succeed(execution_id, "done")
    assert settlement.outcome == "no_callback"


async def test_each_test_gets_its_own_store(handshake: Handshake) -> None:
    assert await handshake.list() == []


async def test_defer_runs_under_temporalios_activity_environment(handshake: Handshake, temporal_client: Client) -> None:
    async def caller(topic: str) -> None:
        await handshake.defer(pb.AgentExecutionSpec(agent_id="researcher", message=topic), execution_id="unit-1")

    env = ActivityEnvironment()
    with pytest.raises(TokenError, match="activity_info"):  # its placeholder token is named, with the fix
        await env.run(caller, "no token")
    env.info = await activity_info(temporal_client)
    with pytest.raises(BaseException) as pending:  # defer makes the activity pending: complete-async
        await env.run(caller, "sky")
    assert type(pending.value).__name__ == "_CompleteAsyncError"
    record = await handshake.inspect("unit-1")
    assert (record.callback_state, record.parent_workflow_id) == ("armed", env.info.workflow_id)


async def test_the_worker_helper_runs_a_parent_on_a_queue_of_its_own(
    handshake: Handshake, temporal_client: Client
) -> None:
    callers = CallerActivities(handshake)
    async with worker(temporal_client, handshake, workflows=[AgentParent], activities=[callers.run_agent]) as running:
        request = AgentRequest(f"helper-{uuid.uuid4().hex[:8]}", "tides")
        parent = await temporal_client.start_workflow(
            AgentParent.run, request, id=f"helper-{request.execution_id}", task_queue=running.task_queue
        )
        [execution] = await handshake.claim("agent", wait=10)
        await handshake.succeed(execution.metadata.id, expected_answer("tides"))
        assert await parent.result() == expected_answer("tides")
    assert running.task_queue.startswith("test-")
