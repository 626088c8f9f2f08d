"""The plugin's `handshake` fixture: connected to the session's dev server, on a store of its own."""

from __future__ import annotations

from stigmer_handshake import Handshake, pb

SPEC = pb.AgentExecutionSpec(agent_id="a", message="m")


async def test_the_handshake_fixture_is_connected_on_a_fresh_store(handshake: Handshake) -> None:
    assert await handshake.list() == []
    execution_id = await handshake.create(SPEC)
    assert [e.id for e in await handshake.list()] == [execution_id]
    settlement = await handshake.succeed(execution_id, "done")
    assert settlement.outcome == "no_callback"


async def test_each_test_gets_its_own_store(handshake: Handshake) -> None:
    assert await handshake.list() == []
