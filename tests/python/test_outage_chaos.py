"""Chaos with retries and an outage: parents with heartbeat timeouts, children that fail retryably and for
good, cancellations, runners SIGKILLed at random, and Temporal down for longer than its client's own retries
while a runner and the CLI reconciler restart. Every parent must end once, with what its last child produced;
no token may be left in the store and no process the test started may outlive it."""

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
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError
from temporalio.worker import Worker

from stigmer_handshake import Handshake
from stigmer_handshake.testing import DevServer, free_port, sqlite_url

from conftest import TRANSCRIPT, alive, sqlite_rows
from flows import AgentAnswer, AgentRequest, CallerActivities, RetriedAgentParent, expected_answer

HERE = Path(__file__).parent
CLI = [sys.executable, "-m", "stigmer_handshake.cli"]
#: How many parents of each kind: the runner answers each as its prompt's first word says (chaos_runner.py).
KINDS = {"ok": 5, "flaky": 5, "fatal": 3, "cancel": 3, "hold": 5}
OUTAGE_SECONDS = 20  # longer than the Temporal client's own retries (about 10 s)
MIN_KILLS = 4


def request_for(kind: str, n: int) -> AgentRequest:
    prompt = f"{kind} {n} {uuid.uuid4().hex[:6]}"
    # Parents that rely on the pump declare a heartbeat timeout; all retry (a new attempt re-binds). Temporal
    # does not retry an activity it was asked to cancel, so a cancelled parent's heartbeat timeout leaves a
    # killed runner's successor the time to take over (a lease of 2 s, a process start).
    heartbeat_timeout = {"hold": 3, "cancel": 15}.get(kind, 0)
    return AgentRequest(
        f"chaos-{kind}-{n}-{uuid.uuid4().hex[:6]}", prompt, start_to_close_seconds=300,
        heartbeat_timeout_seconds=heartbeat_timeout, maximum_attempts=20, retry_interval_seconds=0.5,
    )  # fmt: skip


class Processes:
    """Every process the test starts, so none outlives it."""

    def __init__(self, log: Path, store: str, temporal: str) -> None:
        self.log, self.store, self.temporal = open(log, "ab"), store, temporal  # noqa: SIM115
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            list(args), stdout=self.log, stderr=self.log, env={**os.environ, "PYTHONPATH": str(HERE)}
        )
        self.started.append(process)
        return process

    def runner(self) -> subprocess.Popen[bytes]:
        return self.start(sys.executable, str(HERE / "chaos_runner.py"), self.store, self.temporal, "runner")

    def reconciler(self) -> subprocess.Popen[bytes]:
        return self.start(*CLI, "--store", self.store, "--temporal", self.temporal, "reconcile", "--every", "0.5")

    def close(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
            process.wait()
        self.log.close()


async def outcome_of(handle: WorkflowHandle[Any, AgentAnswer]) -> object:
    try:
        return await handle.result()
    except WorkflowFailureError as err:
        cause = err.cause
        if isinstance(cause, CancelledError):
            return "cancelled"
        if isinstance(cause, ActivityError) and isinstance(cause.cause, ApplicationError):
            return ("failed", cause.cause.type, cause.cause.non_retryable)
        if isinstance(cause, ActivityError) and isinstance(cause.cause, CancelledError):
            return "cancelled"
        return ("unexpected", repr(cause), repr(getattr(cause, "cause", None)))


@pytest.mark.timeout(240)
async def test_retries_outages_restarts_and_kills_end_every_parent_once(tmp_path: Path) -> None:
    server = DevServer(port=free_port(), db_filename=str(tmp_path / "temporal.db"))
    await server.start()
    server_pids = [server.pid]
    store = sqlite_url(tmp_path)
    processes = Processes(tmp_path / "processes.log", store, server.url)
    started = time.monotonic()
    try:
        caller = await Handshake.connect(store=store, temporal=server.url)
        task_queue = f"chaos-outage-{uuid.uuid4()}"
        requests = [request_for(kind, n) for kind, count in KINDS.items() for n in range(count)]

        def worker(client: Client) -> Worker:
            activities = CallerActivities(caller).run_agent
            return Worker(client, task_queue=task_queue, workflows=[RetriedAgentParent], activities=[activities])

        client = await Client.connect(server.address)
        runner, reconciler = processes.runner(), processes.reconciler()
        kills = 0
        async with worker(client):
            handles = [
                await client.start_workflow(RetriedAgentParent.run, r, id=f"p-{r.execution_id}", task_queue=task_queue)
                for r in requests
            ]
            # The cancels are asked for once their child runs (a pending child has no heartbeats to carry it).
            to_cancel = {
                r.execution_id: h for r, h in zip(requests, handles, strict=True) if r.prompt.startswith("cancel")
            }
            deadline = time.monotonic() + 60
            while to_cancel and time.monotonic() < deadline:
                for record in await caller.list(limit=1000):
                    if record.id in to_cancel and record.phase == "IN_PROGRESS":
                        await to_cancel.pop(record.id).cancel()
                if random.random() < 0.3 and kills < MIN_KILLS:  # SIGKILL the runner now and then; restart it
                    runner.kill()
                    runner.wait()
                    kills += 1
                    runner = processes.runner()
                await asyncio.sleep(0.5)
            assert not to_cancel, f"never claimed: {sorted(to_cancel)}"
            while kills < MIN_KILLS:
                await asyncio.sleep(random.uniform(0.5, 1.5))
                runner.kill()
                runner.wait()
                kills += 1
                runner = processes.runner()
            # The cancels end before the outage: after one, a cancelled parent's overdue heartbeat timeout
            # would fire, and Temporal retries no activity it was asked to cancel.
            cancels = {r.execution_id for r in requests if r.prompt.startswith("cancel")}
            deadline = time.monotonic() + 60
            while {r.id for r in await caller.list(phase="CANCELLED", limit=1000)} != cancels:
                assert time.monotonic() < deadline, "the runners never acknowledged the cancels"
                await asyncio.sleep(0.2)
            await asyncio.sleep(2)

        # The outage: Temporal down longer than its client retries; a runner and the reconciler restart in it.
        server.stop()
        await asyncio.sleep(OUTAGE_SECONDS / 2)
        runner.kill()
        runner.wait()
        runner = processes.runner()
        reconciler.send_signal(signal.SIGTERM)
        assert reconciler.wait(timeout=30) == 0, "the reconciler did not stop cleanly on SIGTERM"
        reconciler = processes.reconciler()
        await asyncio.sleep(OUTAGE_SECONDS / 2)
        assert runner.poll() is None and reconciler.poll() is None, "a process died in the outage"

        await server.start()
        server_pids.append(server.pid)
        client = await Client.connect(server.address)
        async with worker(client):
            fresh = [client.get_workflow_handle(h.id, result_type=AgentAnswer) for h in handles]
            waiting = [asyncio.ensure_future(outcome_of(h)) for h in fresh]
            await asyncio.wait(waiting, timeout=150)
            stuck = [r for r, w in zip(requests, waiting, strict=True) if not w.done()]
            for w in waiting:
                w.cancel()
            assert not stuck, f"parents still waiting: {[await caller.inspect(r.execution_id) for r in stuck]}"
            outcomes = [w.result() for w in waiting]
            histories = [await h.fetch_history() for h in fresh]

        reconciler.send_signal(signal.SIGTERM)
        assert reconciler.wait(timeout=30) == 0
        runner.kill()
        runner.wait()
        for request, outcome, history in zip(requests, outcomes, histories, strict=True):
            kind = request.prompt.split(" ", 1)[0]
            if kind == "fatal":
                assert outcome == ("failed", "FATAL", True), (request.prompt, outcome)
            elif kind == "cancel":
                assert outcome == "cancelled", (request.prompt, outcome)
            else:
                assert outcome == expected_answer(request.prompt), (request.prompt, outcome)
                completed = [e for e in history.events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED]
                assert len(completed) == 1, (request.prompt, "completed more than once")

        records = await caller.list(limit=1000)
        by_prompt: dict[str, list[Any]] = {}
        for record in records:
            by_prompt.setdefault((await caller.get(record.id)).spec.message, []).append(record)
        for request in requests:
            children = by_prompt[request.prompt]
            expected = 2 if request.prompt.startswith("flaky") else 1  # a failed first child, then its retry
            assert len(children) == expected, (request.prompt, [c.id for c in children])
            if expected == 2:
                first, retry = sorted(children, key=lambda c: c.retry_of is not None)
                assert retry.retry_of == first.id and first.phase == "FAILED" and retry.phase == "COMPLETED"

        def holding() -> int:
            [[count]] = sqlite_rows(
                store.removeprefix("sqlite://"), "SELECT COUNT(*) FROM callbacks WHERE token IS NOT NULL"
            )
            return int(count)

        # A delivery a kill cut short stays `delivering` until its lease (20 s) runs out, which may be after
        # every parent ended (a cancelled parent does not wait for its cancel's callback); a reconcile pass
        # then delivers it, or finds its parent gone. Seen once in CI: the kill in the outage cut a cancel's.
        deadline = time.monotonic() + 60
        while holding() and time.monotonic() < deadline:
            await caller.reconcile()
            await asyncio.sleep(1)
        assert holding() == 0, f"{holding()} callbacks still hold a token"
        records = await caller.list(limit=1000)
        states = {r.callback_state for r in records}
        assert states <= {"delivered", "gone"}, sorted(states)
        # Only a cancel's callback can end gone: a parent that waits for its child's result is told it.
        cancels = {c.id for prompt, children in by_prompt.items() if prompt.startswith("cancel") for c in children}
        assert {r.id for r in records if r.callback_state == "gone"} <= cancels
        print(f"\noutage chaos: {len(requests)} parents, {len(records)} executions, {kills} SIGKILLs, "
              f"Temporal down {OUTAGE_SECONDS} s, {time.monotonic() - started:.0f} s in all")  # fmt: skip
    finally:
        processes.close()
        server.stop()
        TRANSCRIPT.append((tmp_path / "processes.log").read_text(errors="replace"))
    assert all(p.poll() is not None for p in processes.started), "a process outlived the test"
    assert not [pid for pid in server_pids if pid is not None and alive(pid)], "a dev server outlived the test"
