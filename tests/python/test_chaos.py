"""Chaos: 200 agent runs while the runner is SIGKILLed and aborted at random, including between the store
commit and the RPC. Every parent must complete exactly once with its correct result."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType

from conftest import Env
from flows import AgentRequest, FanOutParent, expected_answer

PARENTS = 20
PER_PARENT = 10
MIN_KILLS = 10
HERE = Path(__file__).parent


@pytest.mark.timeout(400)
async def test_runner_crashes_lose_and_duplicate_nothing(env: Env, tmp_path: Path) -> None:
    requests = {
        f"parent-{p}": [
            AgentRequest(f"chaos-{p}-{i}-{uuid.uuid4().hex[:6]}", f"prompt {p}.{i}") for i in range(PER_PARENT)
        ]
        for p in range(PARENTS)
    }
    handles = [
        await env.client.start_workflow(FanOutParent.run, reqs, id=f"{wid}-{uuid.uuid4()}", task_queue=env.task_queue)
        for wid, reqs in requests.items()
    ]
    results = asyncio.gather(*(h.result() for h in handles))

    # Crash the runner between commit and RPC (and between RPC and its record) now and then, and
    # SIGKILL it at random moments; restart it every time.
    environment = {
        **os.environ,
        "PYTHONPATH": str(HERE),
        "STIGMER_HANDSHAKE_FAILPOINTS": "after_settle_commit=0.04,before_record_delivery=0.02",
    }
    log = tmp_path / "runner.log"
    kills = aborts = 0
    runner: subprocess.Popen[bytes] | None = None
    deadline = time.monotonic() + 300

    def keep_runner_up() -> subprocess.Popen[bytes]:
        nonlocal aborts
        if runner is not None and runner.poll() is None:
            return runner
        if runner is not None and runner.returncode == -signal.SIGABRT:
            aborts += 1
        return subprocess.Popen(
            [sys.executable, str(HERE / "chaos_runner.py"), env.store, env.server.url],
            env=environment, stdout=out, stderr=out,
        )  # fmt: skip

    with open(log, "ab") as out:
        while not results.done() and time.monotonic() < deadline:
            runner = keep_runner_up()
            await asyncio.sleep(random.uniform(0.3, 1.2))
            if kills < MIN_KILLS and runner.poll() is None:
                runner.send_signal(signal.SIGKILL)
                runner.wait()
                kills += 1
                runner = None
        assert results.done(), "parents still waiting after 300 s"
        # A runner killed after its RPC but before recording it leaves a callback "delivering"; once its lease
        # runs out, the reconciler (of the runner that is still up) finds the outcome in the parent's history.
        while time.monotonic() < deadline:
            records = await env.hs.list(kind="agent", limit=10_000)
            if {r.callback_state for r in records} == {"delivered"}:
                break
            runner = keep_runner_up()
            await asyncio.sleep(0.5)
    if runner is not None and runner.poll() is None:
        runner.kill()
        runner.wait()
    answers = results.result()

    commit_crashes = log.read_text().count("failpoint after_settle_commit fired")
    print(f"\nchaos: {PARENTS * PER_PARENT} executions, {kills} SIGKILLs, {aborts} aborts "
          f"({commit_crashes} between commit and RPC)")  # fmt: skip
    assert kills >= MIN_KILLS
    assert commit_crashes >= 1, "no crash landed between the store commit and the RPC"
    for (parent, reqs), got in zip(requests.items(), answers, strict=True):
        assert got == [expected_answer(r.prompt) for r in reqs], parent  # zero lost, zero wrong
    records = await env.hs.list(kind="agent", limit=10_000)
    assert len(records) == PARENTS * PER_PARENT, "zero duplicate children"
    assert {r.phase for r in records} == {"COMPLETED"}
    assert {r.callback_state for r in records} == {"delivered"}
    for handle in handles:  # exactly once, as the server saw it
        events = (await handle.fetch_history()).events
        assert sum(e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED for e in events) == PER_PARENT
