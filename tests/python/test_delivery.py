"""Delivery that never loses or duplicates a callback: idempotent settles, races, gone parents, re-binding,
and the reconciler, against a real dev server and SQLite."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ActivityError, ApplicationError

from stigmer_handshake import ActivityGone, TaskToken, pb

from conftest import BOTH_STORES, Env
from flows import (
    AgentParent,
    AgentRequest,
    InstantParent,
    PatientParent,
    PipelineParent,
    PipelineRequest,
    RetryingParent,
    expected_answer,
)

STORE_BACKENDS = BOTH_STORES  # every test here that uses a store runs on each


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4()}"


async def completions(handle: WorkflowHandle[object, object]) -> int:
    """How many times the server recorded an activity completion in the parent's history."""
    history = await handle.fetch_history()
    return sum(e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED for e in history.events)


async def start_agent(env: Env, request: AgentRequest, workflow: object = AgentParent.run) -> WorkflowHandle:  # type: ignore[type-arg]
    handle = await env.client.start_workflow(workflow, request, id=new_id("parent"), task_queue=env.task_queue)  # type: ignore[call-overload]
    await env.wait_for_execution(request.execution_id)
    return handle


async def test_second_settle_is_already_settled_and_sends_nothing(env: Env) -> None:
    request = AgentRequest(new_id("agent"), "twice")
    handle = await start_agent(env, request)
    first = await env.hs.succeed(request.execution_id, expected_answer("twice"))
    second = await env.hs.succeed(request.execution_id, expected_answer("something else"))
    third = await env.hs.fail(request.execution_id, "too late")
    assert first.outcome == "delivered"
    assert (second.outcome, second.detail) == ("already_settled", "complete")
    assert third.outcome == "already_settled"
    assert await handle.result() == expected_answer("twice")
    assert await completions(handle) == 1
    assert (await env.hs.inspect(request.execution_id)).delivery_attempts == 1


async def test_two_processes_settling_at_once_deliver_once(env: Env) -> None:
    request = AgentRequest(new_id("agent"), "race")
    handle = await start_agent(env, request)
    answer = {"answer": "RACE", "tokens_used": 4, "sources": ["race"]}
    reports = await asyncio.gather(
        env.run_runner("succeed", request.execution_id, answer), env.run_runner("succeed", request.execution_id, answer)
    )
    assert sorted(str(r["outcome"]) for r in reports) == ["already_settled", "delivered"]
    assert reports[0]["pid"] != reports[1]["pid"]
    assert await handle.result() == expected_answer("race")
    assert await completions(handle) == 1


async def test_late_settle_after_start_to_close_timeout_is_activity_gone(env: Env) -> None:
    request = AgentRequest(new_id("agent"), "slow", start_to_close_seconds=1)
    handle = await start_agent(env, request, PatientParent.run)
    deadline = time.monotonic() + 30
    while (await handle.describe()).raw_description.pending_activities and time.monotonic() < deadline:
        await asyncio.sleep(0.2)  # wait for the server to time the attempt out
    settlement = await env.hs.succeed(request.execution_id, expected_answer("slow"))
    assert (settlement.outcome, settlement.reason) == ("activity_gone", "PARENT_TIMED_OUT")
    record = await env.hs.inspect(request.execution_id)
    assert (record.phase, record.callback_state, record.gone_reason) == ("COMPLETED", "gone", "PARENT_TIMED_OUT")
    assert await env.hs.result(request.execution_id, type(expected_answer(""))) == expected_answer("slow")
    await handle.signal(PatientParent.finish)
    assert await handle.result() == "activity failed: TimeoutError"


async def test_settle_after_parent_workflow_terminated_is_activity_gone(env: Env) -> None:
    request = AgentRequest(new_id("agent"), "orphan")
    handle = await start_agent(env, request)
    await handle.terminate("operator stopped it")
    settlement = await env.hs.succeed(request.execution_id, expected_answer("orphan"))
    assert (settlement.outcome, settlement.reason) == ("activity_gone", "PARENT_WORKFLOW_CLOSED")
    assert (await env.hs.get(request.execution_id, include_token=True)).status.callback_token == b""
    assert await env.hs.result(request.execution_id) == {"answer": "ORPHAN", "tokens_used": 6, "sources": ["orphan"]}


async def test_retried_parent_rebinds_to_its_one_child(env: Env) -> None:
    request = AgentRequest(new_id("agent"), "retry me")
    handle = await env.client.start_workflow(
        RetryingParent.run, request, id=new_id("parent"), task_queue=env.task_queue
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        record = await env.hs.inspect(request.execution_id) if await env.hs.list() else None
        if record is not None and record.parent_attempt == 2:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("attempt 2 never re-bound")
    assert [e.id for e in await env.hs.list()] == [request.execution_id], "exactly one child"
    first_token, second_token = env.activities.tokens_seen
    with pytest.raises(ActivityGone):  # the stale attempt's token cannot settle anything
        await env.hs.complete_activity("stale", token=first_token)
    report = await env.run_runner(
        "succeed", request.execution_id, {"answer": "RETRY ME", "tokens_used": 8, "sources": ["retry me"]}
    )
    assert report["outcome"] == "delivered"
    assert await handle.result() == expected_answer("retry me")
    record = await env.hs.inspect(request.execution_id)
    assert (record.parent_attempt, record.token_fingerprint) == (2, TaskToken(second_token).fingerprint)


async def test_child_finishing_before_parent_goes_pending_is_delivered_once(env: Env) -> None:
    request = AgentRequest(new_id("agent"), "instant")
    handle = await env.client.start_workflow(InstantParent.run, request, id=new_id("parent"), task_queue=env.task_queue)
    assert await handle.result() == expected_answer("instant")
    # The parent may see its result before the settle has returned in the activity (it returns once the
    # delivery is recorded): wait for that return.
    for _ in range(500):
        if env.activities.instant_settlement is not None:
            break
        await asyncio.sleep(0.01)
    assert env.activities.instant_settlement.outcome == "delivered"  # type: ignore[attr-defined]
    assert await completions(handle) == 1


async def test_terminated_child_workflow_fails_parent_within_the_reconciler_interval(env: Env) -> None:
    env.hs.start_reconciler(interval=0.5)
    try:
        execution_id = new_id("workflow")
        handle = await env.client.start_workflow(
            PipelineParent.run,
            PipelineRequest(execution_id, [1], sleep_seconds=600),
            id=new_id("parent"),
            task_queue=env.task_queue,
        )
        await env.wait_for_execution(execution_id)
        child = env.client.get_workflow_handle(execution_id)
        while True:
            try:
                await child.describe()
                break
            except Exception:
                await asyncio.sleep(0.1)
        await child.terminate("operator stopped the child")
        terminated_at = time.monotonic()
        with pytest.raises(WorkflowFailureError) as caught:
            await handle.result()
        took = time.monotonic() - terminated_at
    finally:
        env.hs.stop_reconciler()
    cause = caught.value.cause
    assert isinstance(cause, ActivityError) and isinstance(cause.cause, ApplicationError)
    assert cause.cause.type == "CHILD_TERMINATED"
    assert cause.cause.non_retryable
    assert took < 5, f"the parent learned of the terminated child after {took:.1f}s"
    print(f"\nreconciler: parent failed {took:.2f} s after its child was terminated (interval 0.5 s)")
    assert (await env.hs.get(execution_id)).status.phase == pb.ExecutionPhase.EXECUTION_PHASE_FAILED
