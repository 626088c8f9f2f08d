"""Liveness: the pump heartbeats pending parents while their child runs, and carries cancel, pause and
reset back to the runner. Real dev server, real store."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.converter import DataConverter
from temporalio.exceptions import ActivityError, CancelledError, TimeoutError, TimeoutType

from stigmer_handshake import Handshake, pb
from stigmer_handshake.testing import temporal_binary

from conftest import RUNNER, Env
from flows import AgentParent, AgentRequest, expected_answer


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4()}"


async def start_and_claim(
    env: Env, request: AgentRequest
) -> tuple[WorkflowHandle[Any, Any], Handshake, pb.AgentExecution]:
    """Start a parent, wait until it is pending, and claim its child with a second handshake on the same
    store (the runner's), which from then on heartbeats the parent."""
    handle = await env.client.start_workflow(AgentParent.run, request, id=new_id("parent"), task_queue=env.task_queue)
    await env.wait_for_execution(request.execution_id)
    runner = await Handshake.connect(store=env.store, temporal=env.server.url)
    [claimed] = await runner.claim("agent")
    assert isinstance(claimed, pb.AgentExecution)
    return handle, runner, claimed


@pytest.mark.timeout(90)
async def test_pumped_parent_outlives_its_heartbeat_timeout_and_shows_progress(env: Env) -> None:
    request = AgentRequest(new_id("agent"), "long", heartbeat_timeout_seconds=5)
    handle, runner, claimed = await start_and_claim(env, request)
    assert await runner.report_progress(claimed.metadata.id, {"step": 3, "of": 7})

    started = time.monotonic()
    await asyncio.sleep(32)  # more than six heartbeat timeouts
    description = await handle.describe()
    assert description.status is not None and description.status.name == "RUNNING"
    [pending] = description.raw_description.pending_activities
    [details] = await DataConverter.default.decode(pending.heartbeat_details.payloads)
    assert details == {"step": 3, "of": 7}

    await runner.succeed(claimed.metadata.id, expected_answer("long"))
    assert await handle.result() == expected_answer("long")
    print(f"\nliveness: parent with a 5 s heartbeat timeout alive {time.monotonic() - started:.1f} s while pumped")


async def test_status_progress_rides_on_heartbeats(env: Env) -> None:
    request = AgentRequest(new_id("agent"), "progress", heartbeat_timeout_seconds=1.5)
    handle, runner, claimed = await start_and_claim(env, request)
    status = pb.AgentExecutionStatus(phase=pb.ExecutionPhase.EXECUTION_PHASE_IN_PROGRESS)
    status.todos["a"].CopyFrom(pb.TodoItem(id="a", status=pb.TodoStatus.TODO_STATUS_COMPLETED))
    status.todos["b"].CopyFrom(pb.TodoItem(id="b", status=pb.TodoStatus.TODO_STATUS_PENDING))
    status.messages.add(content="reading the sources")
    await runner.update_status(claimed.metadata.id, status)
    await asyncio.sleep(1.5)  # three heartbeat intervals
    [pending] = (await handle.describe()).raw_description.pending_activities
    [details] = await DataConverter.default.decode(pending.heartbeat_details.payloads)
    assert details == {"phase": "IN_PROGRESS", "todos_done": 1, "todos_total": 2, "last_message": "reading the sources"}
    await runner.succeed(claimed.metadata.id, expected_answer("progress"))
    assert await handle.result() == expected_answer("progress")


async def test_cancelling_the_parent_stops_the_child_within_two_intervals(env: Env) -> None:
    request = AgentRequest(new_id("agent"), "cancel me", heartbeat_timeout_seconds=3)  # interval 1 s
    handle, runner, claimed = await start_and_claim(env, request)
    waiting = asyncio.create_task(runner.cancellation(claimed.metadata.id))
    await asyncio.sleep(1.5)
    assert not waiting.done()
    await handle.cancel()
    asked = time.monotonic()
    signals = await asyncio.wait_for(waiting, timeout=10)
    took = time.monotonic() - asked
    assert signals is not None and signals.cancel_requested
    assert took < 2.0, f"the runner learned of the cancellation after {took:.2f}s (interval 1 s)"
    assert (await runner.get(claimed.metadata.id)).status.cancel_requested

    settlement = await runner.cancel(claimed.metadata.id)
    assert settlement.outcome == "delivered"
    with pytest.raises(WorkflowFailureError) as caught:
        await handle.result()
    assert isinstance(caught.value.cause, CancelledError)
    assert (await env.hs.get(claimed.metadata.id)).status.phase == pb.ExecutionPhase.EXECUTION_PHASE_CANCELLED
    print(f"\nliveness: cancellation reached the runner {took:.2f} s after the parent was cancelled")


@pytest.mark.parametrize("kind", ["pause", "reset"])
async def test_pause_and_reset_reach_the_runner(env: Env, kind: str) -> None:
    request = AgentRequest(new_id("agent"), kind, heartbeat_timeout_seconds=1.5)
    handle, runner, claimed = await start_and_claim(env, request)
    waiting = asyncio.create_task(runner.wait_for_signal(claimed.metadata.id, kind))  # type: ignore[arg-type]
    done = subprocess.run(
        [temporal_binary(), "activity", kind, "--workflow-id", handle.id, "--activity-id", "1",
         "--address", env.server.address],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        waiting.cancel()
        pytest.skip(f"this server does not support `temporal activity {kind}`: {done.stderr.strip()[:200]}")
    signals = await asyncio.wait_for(waiting, timeout=15)
    assert signals is not None
    assert signals.paused if kind == "pause" else signals.reset
    await runner.succeed(claimed.metadata.id, expected_answer(kind))
    assert await handle.result() == expected_answer(kind)


async def test_killing_the_runner_lets_the_heartbeat_timeout_fire_and_marks_the_execution_orphaned(env: Env) -> None:
    request = AgentRequest(new_id("agent"), "orphan", heartbeat_timeout_seconds=2)
    handle = await env.client.start_workflow(AgentParent.run, request, id=new_id("parent"), task_queue=env.task_queue)
    await env.wait_for_execution(request.execution_id)
    holder = subprocess.Popen(
        [sys.executable, str(RUNNER), env.store, env.server.url, "hold", request.execution_id],
        stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(RUNNER.parent)},
    )  # fmt: skip
    assert holder.stdout is not None
    line = await asyncio.get_running_loop().run_in_executor(None, holder.stdout.readline)
    assert json.loads(line)["claimed"] == request.execution_id
    await asyncio.sleep(4)  # two heartbeat timeouts: the pump keeps the parent alive
    assert (await handle.describe()).status.name == "RUNNING"  # type: ignore[union-attr]

    holder.send_signal(signal.SIGKILL)
    holder.wait()
    holder.stdout.close()
    with pytest.raises(WorkflowFailureError) as caught:
        await handle.result()
    cause = caught.value.cause
    assert isinstance(cause, ActivityError) and isinstance(cause.cause, TimeoutError)
    assert cause.cause.type == TimeoutType.HEARTBEAT

    report = await env.hs.reconcile()
    assert report.orphaned == 1
    assert (await env.hs.reconcile()).orphaned == 0, "a second pass counted the same orphan again"
    execution = await env.hs.get(request.execution_id)
    assert execution.status.orphaned
    assert execution.status.phase == pb.ExecutionPhase.EXECUTION_PHASE_IN_PROGRESS
