"""Retries, outages and restarts: parents with heartbeat timeouts that time out and retry, children that fail
retryably, re-binds to children that already ended, and a handshake started while Temporal is down.
Real dev server, real store, runners in processes of their own."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.worker import Worker

from stigmer_handshake import ConnectError, Handshake, pb
from stigmer_handshake.testing import DevServer, free_port, sqlite_url, task_token

from conftest import Env, alive, namespace_id_of, sqlite_rows
from flows import AgentAnswer, AgentParent, AgentRequest, CallerActivities, RetriedAgentParent, expected_answer

CLI = [sys.executable, "-m", "stigmer_handshake.cli"]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4()}"


def settled_rows_holding_a_token(store: str) -> int:
    """Callbacks that reached an end (delivered, gone) and still hold a token: there must be none. (A
    dead-lettered one keeps its token, for `redeliver`.)"""
    sql = "SELECT COUNT(*) FROM callbacks WHERE token IS NOT NULL AND state IN ('delivered', 'gone')"
    [[count]] = sqlite_rows(store.removeprefix("sqlite://"), sql)
    return int(count)


@pytest.mark.timeout(90)
async def test_the_pump_follows_a_re_bound_token_across_processes(env: Env) -> None:
    # Each attempt times out after 6 s (start to close) and must be heartbeated within 2 s; the runner holds
    # the child for 14.5 s, so attempts 1 and 2 time out and attempt 3 gets the result, kept alive by the
    # pump of a runner that claimed the child before attempts 2 and 3 re-bound it. (The server fires a
    # timeout up to a second late: attempt 3 starts 12 to 14 s in and ends 18 s in at the earliest.)
    request = AgentRequest(
        new_id("agent"), "patient", start_to_close_seconds=6, heartbeat_timeout_seconds=2, maximum_attempts=3
    )
    handle = await env.client.start_workflow(
        RetriedAgentParent.run, request, id=new_id("parent"), task_queue=env.task_queue
    )
    await env.wait_for_execution(request.execution_id)
    answer = dataclasses.asdict(expected_answer("patient"))
    report = await env.run_runner("hold_then_succeed", request.execution_id, {"seconds": 14.5, "answer": answer})
    assert report["outcome"] == "delivered", report
    assert report["parent_gone_seen"] is False, "the runner was told its parent was gone while it retried"
    assert await handle.result() == expected_answer("patient")
    record = await env.hs.inspect(request.execution_id)
    assert record.parent_attempt == 3 and record.callback_state == "delivered"


@pytest.mark.timeout(90)
async def test_a_retry_after_a_retryable_failure_runs_a_new_child_linked_to_the_first(env: Env) -> None:
    request = AgentRequest(new_id("agent"), "second time lucky", start_to_close_seconds=15, maximum_attempts=2)
    handle = await env.client.start_workflow(
        RetriedAgentParent.run, request, id=new_id("parent"), task_queue=env.task_queue
    )
    await env.wait_for_execution(request.execution_id)
    failed = await env.hs.fail(request.execution_id, "the model was overloaded", type="OVERLOADED")
    assert failed.outcome == "delivered"

    # Temporal retries the caller activity; its defer must start a second child, not re-bind to the first.
    deadline = time.monotonic() + 10
    while len(executions := await env.hs.list()) < 2:
        assert time.monotonic() < deadline, "the retried attempt made no new child"
        await asyncio.sleep(0.05)
    first, second = executions
    assert (first.id, first.phase, first.callback_state) == (request.execution_id, "FAILED", "delivered")
    assert second.retry_of == first.id and second.id == f"{first.id}-attempt-2"
    assert (second.phase, second.callback_state, second.parent_attempt) == ("PENDING", "armed", 2)
    resource = await env.hs.get(second.id)
    assert isinstance(resource, pb.AgentExecution) and resource.spec.message == "second time lucky"

    assert (await env.hs.succeed(second.id, expected_answer("second time lucky"))).outcome == "delivered"
    assert await handle.result() == expected_answer("second time lucky")
    assert settled_rows_holding_a_token(env.store) == 0


@pytest.mark.timeout(90)
async def test_a_re_bound_attempt_whose_child_already_ended_gets_the_result_at_once(env: Env) -> None:
    # Attempt 1 times out after 2 s; attempt 2 starts 4 s later. The child ends in between (its delivery finds
    # attempt 1 gone), so when attempt 2 re-binds the outcome is due: no reconciler runs here.
    request = AgentRequest(
        new_id("agent"), "in between", start_to_close_seconds=2, maximum_attempts=2, retry_interval_seconds=4
    )
    handle = await env.client.start_workflow(
        RetriedAgentParent.run, request, id=new_id("parent"), task_queue=env.task_queue
    )
    await env.wait_for_execution(request.execution_id)
    await asyncio.sleep(3)
    late = await env.hs.succeed(request.execution_id, expected_answer("in between"))
    assert late.outcome == "activity_gone", late
    started = time.monotonic()
    assert await asyncio.wait_for(handle.result(), timeout=20) == expected_answer("in between")
    took = time.monotonic() - started
    record = await env.hs.inspect(request.execution_id)
    assert (record.parent_attempt, record.callback_state) == (2, "delivered")
    assert took < 2 + 1.5, f"attempt 2 waited {took:.1f} s: its result was not delivered at re-bind"
    assert settled_rows_holding_a_token(env.store) == 0


@pytest.mark.timeout(180)
async def test_a_handshake_started_while_temporal_is_down_records_settles_and_delivers_them_later(
    tmp_path: Path,
) -> None:
    server = DevServer(port=free_port(), db_filename=str(tmp_path / "temporal.db"))
    await server.start()
    store = sqlite_url(tmp_path)
    try:
        client = await Client.connect(server.address)
        caller = await Handshake.connect(store=store, temporal=server.url)
        task_queue = f"lazy-{uuid.uuid4()}"
        request = AgentRequest(new_id("agent"), "after the outage")
        async with Worker(
            client, task_queue=task_queue, workflows=[AgentParent], activities=[CallerActivities(caller).run_agent]
        ):
            handle = await client.start_workflow(AgentParent.run, request, id=new_id("parent"), task_queue=task_queue)
            while not await caller.list():
                await asyncio.sleep(0.05)
        server.stop()

        # A runner (re)started during the outage: connect opens the store and reaches Temporal later.
        started = time.monotonic()
        with pytest.raises(ConnectError, match=r"127\.0\.0\.1"):
            await Handshake.connect(store=store, temporal=server.url, wait_for_temporal=1.0)
        assert 1.0 <= time.monotonic() - started < 15
        runner = await Handshake.connect(store=store, temporal=server.url, reconcile_every=0.5)
        settled = await runner.succeed(request.execution_id, expected_answer("after the outage"))
        assert settled.outcome == "retrying", settled
        assert (await runner.inspect(request.execution_id)).callback_state == "due"

        await server.start()  # same port, same history: the parent still waits
        client = await Client.connect(server.address)
        result = client.get_workflow_handle(handle.id, result_type=AgentAnswer).result()
        async with Worker(client, task_queue=task_queue, workflows=[AgentParent]):
            assert await asyncio.wait_for(result, timeout=60) == expected_answer("after the outage")
        assert (await runner.inspect(request.execution_id)).callback_state == "delivered"
        runner.stop_reconciler()
    finally:
        server.stop()


@pytest.mark.timeout(120)
async def test_cleared_tokens_are_not_left_readable_in_the_sqlite_files(env: Env) -> None:
    namespace_id = await namespace_id_of(env.client)
    tokens = [task_token(namespace_id, f"wf-{uuid.uuid4().hex}") for _ in range(60)]
    ids = [await env.hs.create(pb.AgentExecutionSpec(message=f"m{i}"), token=token) for i, token in enumerate(tokens)]
    settled = await asyncio.gather(*(env.hs.succeed(i, {"n": n}) for n, i in enumerate(ids)))
    assert {s.outcome for s in settled} == {"activity_gone"}
    assert settled_rows_holding_a_token(env.store) == 0
    path = Path(env.store.removeprefix("sqlite://"))
    files = [p for p in path.parent.iterdir() if p.name.startswith(path.name)]

    def readable() -> int:
        on_disk = b"".join(p.read_bytes() for p in files)
        return sum(token in on_disk for token in tokens)

    # The store checkpoints the WAL (which held earlier page images) within 200 ms of clearing tokens.
    deadline = time.monotonic() + 3
    while readable() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert (left := readable()) == 0, f"{left} of {len(tokens)} cleared tokens are still readable on disk"


async def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [*CLI, *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.timeout(180)
async def test_the_cli_reconcile_loop_outlives_an_outage_and_stops_on_sigterm(tmp_path: Path) -> None:
    server = DevServer(port=free_port(), db_filename=str(tmp_path / "temporal.db"))
    await server.start()
    store = sqlite_url(tmp_path)
    loop: subprocess.Popen[str] | None = None
    try:
        client = await Client.connect(server.address)
        caller = await Handshake.connect(store=store, temporal=server.url)
        task_queue = f"cli-outage-{uuid.uuid4()}"
        request = AgentRequest(new_id("agent"), "outlived", heartbeat_timeout_seconds=120)
        async with Worker(
            client, task_queue=task_queue, workflows=[AgentParent], activities=[CallerActivities(caller).run_agent]
        ):
            handle = await client.start_workflow(AgentParent.run, request, id=new_id("parent"), task_queue=task_queue)
            while not await caller.list():
                await asyncio.sleep(0.05)
        # A runner that claimed it and died: its claim runs out, so each pass asks Temporal about the parent.
        recorder = await Handshake.connect(store=store, temporal=None)
        await recorder.claim("agent", lease=0.1)
        server.stop()

        once = await _run_cli("--store", store, "--temporal", server.url, "reconcile", "--json")
        assert once.returncode == 4, (once.returncode, once.stdout, once.stderr)
        loop = subprocess.Popen(
            [*CLI, "--store", store, "--temporal", server.url, "reconcile", "--every", "0.5", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        await asyncio.sleep(25)  # longer than the Temporal client's own retries
        assert loop.poll() is None, f"the loop died in the outage: {loop.communicate()}"

        await server.start()
        client = await Client.connect(server.address)
        await recorder.succeed(request.execution_id, expected_answer("outlived"))
        result = client.get_workflow_handle(handle.id, result_type=AgentAnswer).result()
        async with Worker(client, task_queue=task_queue, workflows=[AgentParent]):
            assert await asyncio.wait_for(result, timeout=60) == expected_answer("outlived")
        loop.send_signal(signal.SIGTERM)
        out, err = loop.communicate(timeout=30)
        assert loop.returncode == 0, (loop.returncode, err)
        assert '"delivered": 1' in out
        assert "reconcile pass failed" in err
    finally:
        if loop is not None and loop.poll() is None:
            loop.kill()
            loop.communicate()
        server.stop()


@pytest.mark.timeout(120)
async def test_the_dev_server_dies_with_the_process_that_started_it() -> None:
    script = (
        "import asyncio, sys\n"
        "from stigmer_handshake.testing import DevServer\n"
        "async def main():\n"
        "    server = DevServer()\n"
        "    await server.start()\n"
        "    print(server.pid, flush=True)\n"
        "    await asyncio.sleep(3600)\n"
        "asyncio.run(main())\n"
    )
    for how in (signal.SIGKILL, signal.SIGTERM):
        owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        assert owner.stdout is not None
        pid = int(await asyncio.to_thread(owner.stdout.readline))
        owner.send_signal(how)
        owner.wait(timeout=30)
        owner.stdout.close()
        deadline = time.monotonic() + 20
        while alive(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                pytest.fail(f"the dev server (pid {pid}) outlived its owner stopped by {how.name}")
            await asyncio.sleep(0.1)
