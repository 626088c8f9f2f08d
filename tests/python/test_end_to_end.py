"""The handshake end to end: a real Temporal dev server, a real SQLite store, a runner in another process."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

from stigmer_handshake import pb

from conftest import BOTH_STORES, Env
from flows import AgentAnswer, AgentParent, AgentRequest, PipelineParent, PipelineRequest, PipelineResult, QuickParent

STORE_BACKENDS = BOTH_STORES  # every test here that uses a store runs on each


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4()}"


async def test_agent_path_delivers_typed_result_and_frees_the_slot(env: Env) -> None:
    execution_id = new_id("agent")
    handle = await env.client.start_workflow(
        AgentParent.run,
        AgentRequest(execution_id, "why is the sky blue?"),
        id=new_id("parent"),
        task_queue=env.task_queue,
    )
    await env.wait_for_execution(execution_id)

    # The one activity slot is free while the agent runs: another activity runs to completion meanwhile.
    assert await env.client.execute_workflow(QuickParent.run, 21, id=new_id("quick"), task_queue=env.task_queue) == 42
    assert (await env.hs.get(execution_id)).status.phase == pb.ExecutionPhase.EXECUTION_PHASE_PENDING

    answer = {"answer": "Rayleigh scattering", "tokens_used": 812, "sources": ["a", "b"]}
    report = await env.run_runner("succeed", execution_id, answer)
    assert report["outcome"] == "delivered"
    assert report["pid"] != os.getpid()

    result = await handle.result()
    assert result == AgentAnswer("Rayleigh scattering", 812, ["a", "b"])

    execution = await env.hs.get(execution_id, include_token=True)
    assert execution.status.phase == pb.ExecutionPhase.EXECUTION_PHASE_COMPLETED
    assert execution.status.callback_token == b""
    assert execution.status.HasField("completed_at")
    record = await env.hs.inspect(execution_id)
    assert record.callback_state == "delivered"


async def test_failure_reaches_parent_as_typed_application_error(env: Env) -> None:
    execution_id = new_id("agent")
    handle = await env.client.start_workflow(
        AgentParent.run, AgentRequest(execution_id, "divide by zero"), id=new_id("parent"), task_queue=env.task_queue
    )
    await env.wait_for_execution(execution_id)
    failure = {"message": "model refused", "type": "AGENT_REFUSED", "non_retryable": True, "details": ["policy", 7]}
    report = await env.run_runner("fail", execution_id, failure)
    assert report["outcome"] == "delivered"

    with pytest.raises(WorkflowFailureError) as caught:
        await handle.result()
    activity_error = caught.value.cause
    assert isinstance(activity_error, ActivityError)
    app_error = activity_error.cause
    assert isinstance(app_error, ApplicationError)
    assert app_error.type == "AGENT_REFUSED"
    assert app_error.message == "model refused"
    assert app_error.non_retryable is True
    assert list(app_error.details) == ["policy", 7]

    execution = await env.hs.get(execution_id, include_token=True)
    assert execution.status.phase == pb.ExecutionPhase.EXECUTION_PHASE_FAILED
    assert execution.status.error.type == "AGENT_REFUSED"
    assert execution.status.callback_token == b""


async def test_cancelling_the_parent_reaches_the_runner_and_ends_cancelled(env: Env) -> None:
    execution_id = new_id("agent")
    handle = await env.client.start_workflow(
        AgentParent.run, AgentRequest(execution_id, "long task"), id=new_id("parent"), task_queue=env.task_queue
    )
    await env.wait_for_execution(execution_id)
    runner = asyncio.create_task(env.run_runner("cancel", execution_id))
    await asyncio.sleep(1.0)  # the runner is heartbeating and sees no cancellation yet
    assert not runner.done()
    await handle.cancel()
    report = await runner
    assert report["outcome"] == "delivered"
    assert isinstance(report["heartbeats"], int) and report["heartbeats"] >= 2

    with pytest.raises(WorkflowFailureError) as caught:
        await handle.result()
    assert isinstance(caught.value.cause, CancelledError), repr(caught.value.cause)
    execution = await env.hs.get(execution_id, include_token=True)
    assert execution.status.phase == pb.ExecutionPhase.EXECUTION_PHASE_CANCELLED
    assert execution.status.callback_token == b""


async def test_workflow_path_child_workflow_settles_parent(env: Env) -> None:
    execution_id = new_id("workflow")
    result = await env.client.execute_workflow(
        PipelineParent.run,
        PipelineRequest(execution_id, [1, 2, 3, 4]),
        id=new_id("parent"),
        task_queue=env.task_queue,
    )
    assert result == PipelineResult(total=10, count=4)
    # The parent can see the result before the system activity has recorded the delivery; the child
    # workflow ends only after that activity returned.
    await env.client.get_workflow_handle(execution_id).result()
    execution = await env.hs.get(execution_id, include_token=True)
    assert isinstance(execution, pb.WorkflowExecution)
    assert execution.status.temporal_workflow_id == execution_id
    assert execution.status.phase == pb.ExecutionPhase.EXECUTION_PHASE_COMPLETED
    assert execution.status.callback_token == b""
    child = await env.client.get_workflow_handle(execution_id).describe()
    assert child.workflow_type == "ChildPipeline"


async def test_workflow_path_failing_child_fails_parent_typed(env: Env) -> None:
    execution_id = new_id("workflow")
    with pytest.raises(WorkflowFailureError) as caught:
        await env.client.execute_workflow(
            PipelineParent.run,
            PipelineRequest(execution_id, [1], fail_with="CHILD_EXPLODED"),
            id=new_id("parent"),
            task_queue=env.task_queue,
        )
    app_error = caught.value.cause.cause if isinstance(caught.value.cause, ActivityError) else None
    assert isinstance(app_error, ApplicationError)
    assert app_error.type == "CHILD_EXPLODED"
    assert app_error.non_retryable is True
    execution = await env.hs.get(execution_id)
    assert execution.status.phase == pb.ExecutionPhase.EXECUTION_PHASE_FAILED
    assert execution.status.temporal_workflow_id == execution_id


async def test_direct_execution_without_token_delivers_nothing(env: Env) -> None:
    execution_id = await env.hs.create(pb.AgentExecutionSpec(agent_id="researcher", message="direct call"))
    [claimed] = await env.hs.claim("agent")
    assert claimed.metadata.id == execution_id
    assert claimed.status.phase == pb.ExecutionPhase.EXECUTION_PHASE_IN_PROGRESS
    reply = await env.hs.heartbeat(execution_id, "progress")
    assert (reply.cancel_requested, reply.paused, reply.reset) == (False, False, False)
    settlement = await env.hs.succeed(execution_id, {"answer": 1})
    assert settlement.outcome == "no_callback"
    record = await env.hs.inspect(execution_id)
    assert record.phase == "COMPLETED"
    assert record.callback_state is None
    assert (await env.hs.wait(execution_id, timeout=1)).status.phase == pb.ExecutionPhase.EXECUTION_PHASE_COMPLETED
