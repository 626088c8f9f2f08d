"""A runner waits for work with `claim(wait=...)` instead of a poll loop: it returns as soon as an
execution is created, by any process (PostgreSQL's notification; SQLite's short poll), or `[]` when the
wait runs out. On both stores."""

from __future__ import annotations

import asyncio
import time

import pytest

from stigmer_handshake import Handshake, InvalidInput, pb

from conftest import BOTH_STORES

STORE_BACKENDS = BOTH_STORES
SPEC = pb.AgentExecutionSpec(agent_id="a", message="m")


async def test_a_waiting_claim_returns_when_another_handshake_creates(store_url: str) -> None:
    runner = await Handshake.connect(store=store_url, temporal=None)
    caller = await Handshake.connect(store=store_url, temporal=None)  # its own pool, as another process has
    waiting = asyncio.create_task(runner.claim("agent", wait=30))
    await asyncio.sleep(0.3)
    assert not waiting.done(), "nothing to claim yet: it waits"
    created_at = time.monotonic()
    execution_id = await caller.create(SPEC)
    [claimed] = await asyncio.wait_for(waiting, timeout=30)
    # Woken by the create, not by the slow recheck (5 s on PostgreSQL).
    assert time.monotonic() - created_at < 2.5
    assert claimed.metadata.id == execution_id
    assert claimed.status.phase == pb.ExecutionPhase.EXECUTION_PHASE_IN_PROGRESS
    await runner.close()
    await caller.close()


async def test_a_wait_that_runs_out_returns_nothing_and_a_bad_wait_is_refused(store_url: str) -> None:
    async with await Handshake.connect(store=store_url, temporal=None) as hs:
        started = time.monotonic()
        assert await hs.claim("agent", wait=0.3) == []
        assert time.monotonic() - started >= 0.3
        for bad in (-1.0, float("nan"), float("inf")):
            with pytest.raises(InvalidInput):
                await hs.claim("agent", wait=bad)
