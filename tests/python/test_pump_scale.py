"""One runner process pumps heartbeats for 2,000 pending executions without missing a heartbeat timeout."""

from __future__ import annotations

import asyncio
import resource
import time
import uuid

import pytest
from temporalio.worker import Worker

from stigmer_handshake import Handshake, pb

from conftest import Env
from flows import AgentRequest, CallerActivities, FanOutParent, expected_answer

PARENTS = 20
PER_PARENT = 100
HEARTBEAT = 10.0
HOLD = 25.0  # two and a half heartbeat timeouts


@pytest.mark.timeout(400)
async def test_one_process_pumps_two_thousand_pending_parents(env: Env) -> None:
    total = PARENTS * PER_PARENT
    requests = [
        [
            AgentRequest(f"scale-{p}-{i}-{uuid.uuid4().hex[:6]}", f"p{p}.{i}", heartbeat_timeout_seconds=HEARTBEAT)
            for i in range(PER_PARENT)
        ]
        for p in range(PARENTS)
    ]
    # A worker of its own with room to defer quickly (deferring frees each slot at once anyway).
    callers = CallerActivities(env.hs)
    task_queue = f"scale-{uuid.uuid4()}"
    async with Worker(
        env.client, task_queue=task_queue, workflows=[FanOutParent], activities=[callers.run_agent],
        max_concurrent_activities=50,
    ):  # fmt: skip
        runner = await Handshake.connect(store=env.store, temporal=env.server.url)
        cpu_before = resource.getrusage(resource.RUSAGE_SELF)

        async def claim_all() -> list[pb.AgentExecution | pb.WorkflowExecution]:
            # The runner claims while the callers defer, as a real one would: a parent's heartbeat timeout
            # runs from its start, and only claimed executions are pumped.
            claimed: list[pb.AgentExecution | pb.WorkflowExecution] = []
            while len(claimed) < total:
                batch = await runner.claim("agent", limit=500)
                claimed += batch
                if not batch:
                    await asyncio.sleep(0.2)
            return claimed

        claiming = asyncio.create_task(claim_all())
        handles = [
            await env.client.start_workflow(FanOutParent.run, reqs, id=f"scale-{uuid.uuid4()}", task_queue=task_queue)
            for reqs in requests
        ]
        claimed = await claiming
        started = time.monotonic()
        await asyncio.sleep(HOLD)
        held = time.monotonic() - started
        stats = runner.pump_stats()
        cpu_after = resource.getrusage(resource.RUSAGE_SELF)

        for description in await asyncio.gather(*(h.describe() for h in handles)):
            assert description.status is not None and description.status.name == "RUNNING"
        settled = await asyncio.gather(
            *(runner.succeed(c.metadata.id, expected_answer(c.spec.message)) for c in claimed)
        )
        assert {s.outcome for s in settled} == {"delivered"}
        results = await asyncio.gather(*(h.result() for h in handles))
    for reqs, got in zip(requests, results, strict=True):
        assert got == [expected_answer(r.prompt) for r in reqs]
    cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
    assert stats["tracked"] == total
    assert stats["heartbeats_sent"] >= total * int(held // (HEARTBEAT / 3)), stats
    print(
        f"\npump: {total} pending parents (heartbeat timeout {HEARTBEAT:.0f} s) held {held:.1f} s: "
        f"{stats['heartbeats_sent']} heartbeats ({stats['heartbeats_sent'] / held:.0f}/s), "
        f"{stats['heartbeats_failed']} failed, test-process CPU {cpu:.1f} s; none timed out"
    )
