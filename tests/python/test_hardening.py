"""Hardening: tokens sealed at rest (and a wrong key leaves the callback due), scoped settle capabilities,
namespaces checked before any RPC, and results over the payload limit kept in the store."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest
import pytest_asyncio
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.worker import Worker

from stigmer_handshake import CapabilityError, Handshake, NamespaceMismatch, TaskToken, TokenKeyError, pb
from stigmer_handshake.testing import DevServer, postgres_base_url, sqlite_url

from conftest import BOTH_STORES, Env, sqlite_rows
from flows import AgentParent, AgentRequest, CallerActivities, expected_answer

STORE_BACKENDS = BOTH_STORES
KEY = {"k1": bytes(range(32))}
WRONG_KEY = {"k1": bytes(32)}


@pytest_asyncio.fixture(loop_scope="session")
async def sealed(env: Env) -> AsyncIterator[tuple[Handshake, CallerActivities, str]]:
    """A worker whose handshake seals tokens with KEY."""
    hs = await Handshake.connect(store=env.store, temporal=env.server.url, token_keys=KEY)
    callers = CallerActivities(hs)
    task_queue = f"sealed-{uuid.uuid4()}"
    async with Worker(env.client, task_queue=task_queue, workflows=[AgentParent], activities=[callers.run_agent]):
        yield hs, callers, task_queue


def at_rest(store: str) -> tuple[bytes, bytes]:
    """(what the token column holds, every byte the store keeps: the SQLite files, or the PostgreSQL table)."""
    if store.startswith("sqlite://"):
        path = Path(store.removeprefix("sqlite://"))
        rows = sqlite_rows(path, "SELECT hex(token) FROM callbacks WHERE token IS NOT NULL")
        column = b"".join(bytes.fromhex(hexed) for [hexed] in rows)
        return column, b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
    schema = store.rsplit("schema=", 1)[1]
    with psycopg.connect(postgres_base_url()) as conn:
        rows = conn.execute(f'SELECT token FROM "{schema}".callbacks WHERE token IS NOT NULL').fetchall()
        table = conn.execute(f'SELECT t::text FROM "{schema}".callbacks t').fetchall()
    return b"".join(bytes(r[0]) for r in rows), "".join(r[0] for r in table).encode()


async def test_tokens_are_sealed_at_rest_and_a_wrong_key_leaves_the_callback_due(
    env: Env, sealed: tuple[Handshake, CallerActivities, str]
) -> None:
    hs, callers, task_queue = sealed
    request = AgentRequest(f"sealed-{uuid.uuid4().hex[:8]}", "sealed")
    handle = await env.client.start_workflow(AgentParent.run, request, id=f"s-{uuid.uuid4()}", task_queue=task_queue)
    await env.wait_for_execution(request.execution_id)
    [token] = callers.tokens_seen
    column, everything = at_rest(env.store)
    assert column, "the store holds the sealed token"
    for i in range(len(token) - 16):
        assert token[i : i + 16] not in column, "no 16-byte run of the token is in its column"
    # The token's ids (workflow, run, activity) are stored in columns of their own; the token is not.
    assert token not in everything and token.hex().encode() not in everything
    record = await hs.get(request.execution_id, include_token=True)
    assert record.status.callback_token == token, "the keyed handshake opens it"
    assert (await hs.inspect(request.execution_id)).token_fingerprint == TaskToken(token).fingerprint

    without_key = await Handshake.connect(store=env.store, temporal=env.server.url)
    with pytest.raises(TokenKeyError):
        await without_key.get(request.execution_id, include_token=True)
    wrong = await Handshake.connect(store=env.store, temporal=env.server.url, token_keys=WRONG_KEY)
    with pytest.raises(TokenKeyError, match="wrong key"):
        await wrong.succeed(request.execution_id, expected_answer("sealed"))
    record_after = await hs.inspect(request.execution_id)
    assert (record_after.phase, record_after.callback_state) == ("COMPLETED", "due"), "recorded, still owed"
    assert (await wrong.reconcile()).delivered == 0, "a process without the key leaves it due"
    assert (await hs.inspect(request.execution_id)).callback_state == "due"

    # The refusal put it off for a few seconds; a reconciler with the key delivers it then.
    hs.start_reconciler(0.5)
    assert await asyncio.wait_for(handle.result(), timeout=30) == expected_answer("sealed")
    hs.stop_reconciler()
    assert (await hs.inspect(request.execution_id)).callback_state == "delivered"


def test_without_a_key_the_process_says_so_once() -> None:
    script = (
        "import asyncio, logging\n"
        "from stigmer_handshake import Handshake\n"
        "async def main():\n"
        "    for _ in range(3):\n"
        "        await Handshake.connect(store='sqlite::memory:', temporal=None)\n"
        "    await Handshake.connect(store='sqlite::memory:', temporal=None, token_keys={'k': bytes(32)})\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("task tokens are stored unencrypted") == 1, done.stderr


async def test_a_capability_settles_one_execution_with_its_outcomes_until_it_expires(env: Env) -> None:
    key = os.urandom(32)
    service = await Handshake.connect(store=env.store, temporal=env.server.url, capability_keys=[key])
    request = AgentRequest(f"cap-{uuid.uuid4().hex[:8]}", "capability")
    handle = await env.client.start_workflow(
        AgentParent.run, request, id=f"c-{uuid.uuid4()}", task_queue=env.task_queue
    )
    await env.wait_for_execution(request.execution_id)
    other = await service.create(pb.AgentExecutionSpec(agent_id="a", message="other"))

    capability = service.grant(request.execution_id, ["complete"], ttl=60)
    assert request.execution_id not in capability or capability.startswith("shc1.")
    expired = service.grant(request.execution_id, ["complete"], ttl=0.001)
    await asyncio.sleep(0.01)
    forged = capability[:-4] + ("0000" if not capability.endswith("0000") else "1111")
    foreign = (await Handshake.connect(store=env.store, temporal=None, capability_keys=[os.urandom(32)])).grant(
        request.execution_id, ["complete"], ttl=60
    )
    refused = [
        service.succeed(other, None, capability=capability),  # another execution
        service.fail(request.execution_id, "no", capability=capability),  # an outcome not granted
        service.succeed(request.execution_id, None, capability=expired),
        service.succeed(request.execution_id, None, capability=forged),
        service.succeed(request.execution_id, None, capability=foreign),
        service.succeed(request.execution_id, None, capability="garbage"),
    ]
    for attempt in refused:
        with pytest.raises(CapabilityError):
            await attempt
    assert (await service.inspect(request.execution_id)).phase == "PENDING", "nothing was settled"
    assert (await service.inspect(other)).phase == "PENDING"

    settled = await service.succeed(request.execution_id, expected_answer("capability"), capability=capability)
    assert settled.outcome == "delivered"
    assert await handle.result() == expected_answer("capability")
    no_key = await Handshake.connect(store=env.store, temporal=None)
    with pytest.raises(CapabilityError):
        await no_key.succeed(other, None, capability=capability)


@pytest.mark.timeout(120)
async def test_namespaces_are_checked_before_any_rpc_and_one_handshake_serves_several(tmp_path: Path) -> None:
    # Its database stays in tmp_path, so the last test scans its histories for tokens too.
    async with DevServer(extra_namespaces=["second"], db_filename=str(tmp_path / "temporal.db")) as server:
        store = sqlite_url(tmp_path)
        hs = await Handshake.connect(store=store, temporal=server.url, namespace=["default", "second"])
        default_only = await Handshake.connect(store=store, temporal=server.url)
        results = []
        for namespace in ("default", "second"):
            client = await Client.connect(server.address, namespace=namespace)
            callers = CallerActivities(hs)
            request = AgentRequest(f"{namespace}-{uuid.uuid4().hex[:6]}", namespace)
            async with Worker(client, task_queue="ns", workflows=[AgentParent], activities=[callers.run_agent]):
                handle = await client.start_workflow(AgentParent.run, request, id=f"ns-{uuid.uuid4()}", task_queue="ns")
                while not callers.tokens_seen:
                    await asyncio.sleep(0.05)
                if namespace == "second":
                    # A handshake that serves only "default" refuses the token before any RPC.
                    with pytest.raises(NamespaceMismatch, match="does not serve"):
                        await default_only.create(pb.AgentExecutionSpec(message="x"), token=callers.tokens_seen[0])
                    with pytest.raises(NamespaceMismatch):
                        await default_only.heartbeat_activity(token=callers.tokens_seen[0])
                assert (await hs.succeed(request.execution_id, expected_answer(namespace))).outcome == "delivered"
                results.append(await handle.result())
        assert results == [expected_answer("default"), expected_answer("second")]
        with pytest.raises(Exception, match="no namespace"):
            await Handshake.connect(store=store, temporal=server.url, namespace="missing")


async def test_a_3_mb_result_is_kept_and_the_parent_gets_result_too_large(env: Env) -> None:
    request = AgentRequest(f"big-{uuid.uuid4().hex[:8]}", "big")
    handle = await env.client.start_workflow(
        AgentParent.run, request, id=f"b-{uuid.uuid4()}", task_queue=env.task_queue
    )
    await env.wait_for_execution(request.execution_id)
    big = "x" * (3 * 1024 * 1024)
    settled = await env.hs.succeed(request.execution_id, big)
    assert settled.outcome == "result_too_large"
    assert request.execution_id in (settled.detail or "")
    with pytest.raises(WorkflowFailureError) as caught:
        await handle.result()
    assert isinstance(caught.value.cause, ActivityError)
    failure = caught.value.cause.cause
    assert isinstance(failure, ApplicationError)
    assert failure.type == "RESULT_TOO_LARGE" and failure.non_retryable
    assert request.execution_id in failure.message
    assert await env.hs.result(request.execution_id) == big, "the execution still holds the full result"
    record = await env.hs.inspect(request.execution_id)
    assert (record.phase, record.callback_state, record.callback_outcome) == ("COMPLETED", "delivered", "complete")
