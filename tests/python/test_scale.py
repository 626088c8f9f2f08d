"""Cost that grows with the work, not with the table: listings page by key, counts read from indexes, and a
store that retention keeps from growing forever (real stores, a real dev server for the reconciler)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stigmer_handshake import pb
from stigmer_handshake.handshake import Handshake
from stigmer_handshake.testing import DevServer, sqlite_url, task_token

from conftest import sqlite_rows

pytestmark = pytest.mark.asyncio(loop_scope="session")

CLI = [sys.executable, "-m", "stigmer_handshake.cli"]


async def settle_direct(hs: Handshake, n: int, prefix: str) -> list[str]:
    """Create and complete `n` direct executions at once (the store batches them)."""
    spec = pb.AgentExecutionSpec(agent_id="a", message="m")
    ids = await asyncio.gather(*(hs.create(spec, execution_id=f"{prefix}-{i}") for i in range(n)))
    await asyncio.gather(*(hs.succeed(i, {"n": 1}) for i in ids))
    return list(ids)


async def test_pages_walk_every_match_once_whatever_is_added_meanwhile(store_url: str) -> None:
    async with await Handshake.connect(store=store_url, temporal=None) as hs:
        ended = await settle_direct(hs, 250, "ended")
        spec = pb.AgentExecutionSpec(agent_id="a", message="m")
        # Ids sort as they were made: creates in the same millisecond are listed by id.
        waiting = [await hs.create(spec, execution_id=f"waiting-{i:02}", labels={"team": "x"}) for i in range(30)]

        seen: list[str] = []
        page = await hs.list(limit=100)
        while True:
            seen += [e.id for e in page]
            if page.next_page_token is None:
                break
            await hs.create(spec, execution_id=f"late-{len(seen)}")  # added while the walk goes on
            page = await hs.list(limit=100, page_token=page.next_page_token)
        assert len(seen) == len(set(seen)), "a page repeated an execution"
        assert set(ended + waiting) <= set(seen)
        assert set(seen[: len(ended)]) == set(ended), "oldest first (ties in the same ms by id)"

        pending = [e.id async for e in hs.iterate(phase="PENDING", labels={"team": "x"}, page_size=7)]
        assert pending == waiting  # created one by one: oldest first
        direct_ended = [e.id async for e in hs.iterate(state="none", phase="COMPLETED", page_size=64)]
        assert sorted(direct_ended) == sorted(ended) and len(direct_ended) == len(ended)
        with pytest.raises(Exception, match="page_token"):
            await hs.list(page_token="not-a-token")


async def test_undelivered_counts_what_the_reconciler_has_left(store_url: str) -> None:
    # Store only: settles are recorded as due, for another process to deliver.
    async with await Handshake.connect(store=store_url, temporal=None) as hs:
        assert await hs.undelivered() == 0
        spec = pb.AgentExecutionSpec(agent_id="a", message="m")
        for i in range(3):
            await hs.create(spec, execution_id=f"e{i}", token=task_token("ns-id", f"parent-{i}"))
            assert (await hs.succeed(f"e{i}", "done")).outcome == "recorded"
        await settle_direct(hs, 5, "direct")  # no parent: nothing to deliver
        assert await hs.undelivered() == 3


async def test_retention_keeps_a_busy_store_from_growing(temporal_server: DevServer, tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    sizes, rows = [], []
    async with await Handshake.connect(
        store=sqlite_url(tmp_path, path.name), temporal=temporal_server.url, retention=1
    ) as hs:
        for round in range(8):
            await settle_direct(hs, 500, f"r{round}")
            await asyncio.sleep(1.1)  # this round is now older than the retention
            report = await hs.reconcile()
            assert round == 0 or report.pruned == 500, report
            rows.append(sqlite_rows(path, "SELECT COUNT(*) FROM executions")[0][0])
            sizes.append(sum(p.stat().st_size for p in tmp_path.glob("busy.db*")))
    assert max(rows) <= 1000, rows  # 4,000 settled in all
    assert max(sizes[3:]) <= sizes[3] * 1.2, f"the store kept growing: {sizes}"
    assert sqlite_rows(path, "PRAGMA auto_vacuum")[0][0] == 2, "made with incremental vacuum"


async def test_cli_prune_deletes_what_ended_before_the_age_given(tmp_path: Path) -> None:
    path = tmp_path / "cli.db"
    async with await Handshake.connect(store=sqlite_url(tmp_path, path.name), temporal=None) as hs:
        await settle_direct(hs, 1_200, "old")
        await hs.create(pb.AgentExecutionSpec(agent_id="a", message="m"), execution_id="still-waiting")
    time.sleep(1.1)
    env = {**os.environ, "STIGMER_HANDSHAKE_STORE": sqlite_url(tmp_path, path.name)}
    kept = subprocess.run([*CLI, "prune", "--older-than", "1h", "--json"], capture_output=True, text=True, env=env)
    assert (kept.returncode, json.loads(kept.stdout)) == (0, {"pruned": 0}), kept.stderr
    done = subprocess.run([*CLI, "prune", "--older-than", "1s", "--json"], capture_output=True, text=True, env=env)
    assert (done.returncode, json.loads(done.stdout)) == (0, {"pruned": 1_200}), done.stderr
    assert sqlite_rows(path, "SELECT id FROM executions") == [["still-waiting"]]
    bad = subprocess.run([*CLI, "prune", "--older-than", "soon"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "not a duration" in bad.stderr
