"""A Temporal outage while callbacks are due: every callback is delivered once the server is back."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.worker import Worker

from stigmer_handshake import Handshake
from stigmer_handshake.testing import DevServer, free_port, sqlite_url

from flows import AgentAnswer, AgentParent, AgentRequest, CallerActivities, expected_answer

OUTAGE_SECONDS = 12


@pytest.mark.timeout(240)
async def test_callbacks_due_during_an_outage_are_delivered_after_it(tmp_path: Path) -> None:
    port, db = free_port(), str(tmp_path / "temporal.db")
    server = DevServer(port=port, db_filename=db)
    await server.start()
    try:
        client = await Client.connect(server.address)
        hs = await Handshake.connect(store=sqlite_url(tmp_path), temporal=server.url, reconcile_every=0.5)
        task_queue = f"outage-{uuid.uuid4()}"
        requests = [AgentRequest(f"agent-{i}-{uuid.uuid4().hex[:6]}", f"outage {i}") for i in range(5)]
        activities = CallerActivities(hs)
        async with Worker(client, task_queue=task_queue, workflows=[AgentParent], activities=[activities.run_agent]):
            handles = [
                await client.start_workflow(AgentParent.run, r, id=f"parent-{uuid.uuid4()}", task_queue=task_queue)
                for r in requests
            ]
            while len(await hs.list()) < len(requests):
                await asyncio.sleep(0.05)

        server.stop()
        down_at = time.monotonic()
        settlements = [
            await hs.succeed(r.execution_id, expected_answer(r.prompt), wait_for_delivery=False) for r in requests
        ]
        assert {s.outcome for s in settlements} == {"recorded"}
        await asyncio.sleep(OUTAGE_SECONDS)
        during = {r.callback_state for r in await hs.list()}
        assert "delivered" not in during, during

        await server.start()  # same port, same database: the parents are still waiting
        downtime = time.monotonic() - down_at
        client = await Client.connect(server.address)
        async with Worker(client, task_queue=task_queue, workflows=[AgentParent], activities=[activities.run_agent]):
            results = await asyncio.wait_for(
                asyncio.gather(*(client.get_workflow_handle(h.id, result_type=AgentAnswer).result() for h in handles)),
                timeout=120,
            )
        assert results == [expected_answer(r.prompt) for r in requests]
        records = await hs.list()
        assert {r.callback_state for r in records} == {"delivered"}
        assert all(r.delivery_attempts >= 2 for r in records), [r.delivery_attempts for r in records]
        print(f"\noutage: server down {downtime:.1f}s; {len(records)} callbacks delivered after it, "
              f"attempts {sorted(r.delivery_attempts for r in records)}")  # fmt: skip
        hs.stop_reconciler()
    finally:
        server.stop()
