"""A handshake's life ends with `close()` or `async with`: background work stops, the store's connections
close, and every later call raises `HandshakeClosed`."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from temporalio.client import Client

from stigmer_handshake import Handshake, HandshakeClosed, pb
from stigmer_handshake.testing import DevServer, sqlite_url, task_token

from conftest import namespace_id_of

SPEC = pb.AgentExecutionSpec(agent_id="a", message="m")


async def test_async_with_closes_and_a_closed_handshake_refuses_every_call(
    temporal_server: DevServer, tmp_path: Path
) -> None:
    store = sqlite_url(tmp_path)
    async with await Handshake.connect(store=store, temporal=temporal_server.url, reconcile_every=0.05) as hs:
        execution_id = await hs.create(SPEC)
        [claimed] = await hs.claim("agent")
        assert claimed.metadata.id == execution_id
    for call in (hs.get(execution_id), hs.list(), hs.create(SPEC), hs.claim("agent"), hs.reconcile()):
        with pytest.raises(HandshakeClosed, match="closed"):
            await call
    with pytest.raises(HandshakeClosed):
        hs.start_reconciler(1.0)
    await hs.close()  # a second close does nothing

    # The store's connections are closed and SQLite's WAL checkpointed: the file is whole on its own.
    wal = tmp_path / "handshake.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0, wal.stat().st_size
    # Nothing was lost: another handshake finds the execution its runner held.
    async with await Handshake.connect(store=store, temporal=None) as again:
        assert (await again.get(execution_id)).metadata.id == execution_id


async def test_close_stops_the_pump_and_wakes_runners_waiting_for_a_signal(
    temporal_server: DevServer, temporal_client: Client, tmp_path: Path
) -> None:
    hs = await Handshake.connect(store=sqlite_url(tmp_path), temporal=temporal_server.url)
    # A parent without a heartbeat timeout: its first heartbeat is an interval (30 s) away, so nothing but
    # close ends the wait below.
    token = task_token(await namespace_id_of(temporal_client), f"parent-{uuid.uuid4()}")
    execution_id = await hs.create(SPEC, token=token)
    await hs.claim("agent")
    assert hs._core.pump_stats()[0] == 1
    waiting = asyncio.create_task(hs.wait_for_signal(execution_id, "cancel"))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    await hs.close()
    # Woken, and told its execution is no longer pumped (the pump dropped everything it heartbeated).
    assert await asyncio.wait_for(waiting, timeout=5) is None
