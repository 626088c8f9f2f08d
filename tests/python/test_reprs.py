"""Reprs read as Python (quotes, None, True), and name tokens by fingerprint only."""

from __future__ import annotations

from pathlib import Path

from stigmer_handshake import Handshake, pb
from stigmer_handshake.testing import sqlite_url


async def test_reprs_read_as_python(tmp_path: Path) -> None:
    async with await Handshake.connect(store=sqlite_url(tmp_path), temporal=None) as hs:
        execution_id = await hs.create(pb.AgentExecutionSpec(agent_id="a", message="m"), execution_id="it's-1")
        record = await hs.inspect(execution_id)
        assert repr(record) == (
            f"Execution(id={execution_id!r}, kind='agent', phase='PENDING', callback_state=None, token=None)"
        )
        settlement = await hs.fail(execution_id, 'said "no"', type="REFUSED", non_retryable=True)
        assert repr(settlement) == (
            f"Settlement(execution_id={execution_id!r}, outcome='no_callback', reason=None, detail=None)"
        )
        for text in (repr(record), repr(settlement)):
            assert "Some(" not in text and "true" not in text
