"""Task tokens and bad input: typed errors from the package's hierarchy, never a panic or a hang."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import pytest

from stigmer_handshake import (
    ConnectError,
    ExecutionNotFound,
    Handshake,
    HandshakeError,
    InvalidInput,
    InvalidState,
    StoreError,
    TaskToken,
    TokenError,
    WaitTimeout,
    pb,
)
from stigmer_handshake.testing import free_port, sqlite_url

from conftest import BOTH_STORES, Env
from flows import AgentParent, AgentRequest

STORE_BACKENDS = BOTH_STORES  # every test here that uses a store runs on each


async def real_token(env: Env) -> bytes:
    execution_id = f"agent-{uuid.uuid4()}"
    await env.client.start_workflow(
        AgentParent.run,
        AgentRequest(execution_id, "token please"),
        id=f"parent-{uuid.uuid4()}",
        task_queue=env.task_queue,
    )
    await env.wait_for_execution(execution_id)
    token = (await env.hs.get(execution_id, include_token=True)).status.callback_token
    await env.hs.succeed(execution_id, {"answer": "", "tokens_used": 0, "sources": []})
    return token


async def test_real_token_decodes_and_bad_tokens_are_typed(env: Env) -> None:
    token_bytes = await real_token(env)
    token = TaskToken(token_bytes)
    assert token.workflow_id.startswith("parent-")
    assert token.activity_type == "run_agent"
    assert token.attempt == 1
    assert token.scheduled_event_id > 0
    assert token.fingerprint.startswith("tok-")
    assert token.fingerprint in repr(token)
    assert token_bytes.hex() not in repr(token) + str(token)

    bad = {
        "empty": b"",
        "garbage": b"this is not a task token",
        "truncated": token_bytes[: len(token_bytes) // 2],
        "10 MB": b"\n" * (10 * 1024 * 1024),
    }
    for name, data in bad.items():
        with pytest.raises(TokenError):
            TaskToken(data)
        with pytest.raises(TokenError):
            await env.hs.complete_activity("x", token=data)
        with pytest.raises(TokenError):
            await env.hs.heartbeat_activity(token=data)
        with pytest.raises(TokenError, match="token"):
            await env.hs._core.create("agent", b"", f"bad-{name}", data)
    with pytest.raises(InvalidInput):
        TaskToken("a string")  # type: ignore[arg-type]


async def test_dead_token_is_activity_gone(env: Env) -> None:
    token_bytes = await real_token(env)  # already settled: the server no longer knows the attempt
    from stigmer_handshake import ActivityGone

    with pytest.raises(ActivityGone):
        await env.hs.complete_activity("again", token=token_bytes)
    with pytest.raises(ActivityGone):
        await env.hs.complete_activity("by id", workflow_id="no-such-workflow", activity_id="1")
    with pytest.raises(InvalidInput):
        await env.hs.complete_activity("ambiguous", token=token_bytes, workflow_id="w", activity_id="1")


async def test_store_and_argument_errors_are_typed(tmp_path: Path) -> None:
    hs = await Handshake.connect(store=sqlite_url(tmp_path), temporal=None)
    with pytest.raises(ExecutionNotFound):
        await hs.get("missing")
    with pytest.raises(ExecutionNotFound):
        await hs.succeed("missing", 1)
    with pytest.raises(InvalidInput):
        await hs.create("not a spec")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        await hs.claim("robot")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        await hs.list(limit=0)
    execution_id = await hs.create(pb.AgentExecutionSpec(agent_id="a"), execution_id="dup")
    with pytest.raises(InvalidState):
        await hs.create(pb.AgentExecutionSpec(agent_id="a"), execution_id="dup")
    with pytest.raises(InvalidInput):
        await hs.update_status(execution_id, pb.AgentExecutionStatus(phase=pb.ExecutionPhase.EXECUTION_PHASE_COMPLETED))
    with pytest.raises(WaitTimeout):
        await hs.wait(execution_id, timeout=0.1)
    with pytest.raises(InvalidInput):
        await hs.wait(execution_id, timeout=-1)
    assert issubclass(ExecutionNotFound, StoreError) and issubclass(StoreError, HandshakeError)
    with pytest.raises(InvalidInput):
        await hs.heartbeat_activity(workflow_id="w", activity_id="1")  # store-only: no Temporal connection
    with pytest.raises(InvalidInput):
        await Handshake.connect(store="mysql://nope")
    with pytest.raises(InvalidInput):
        await Handshake.connect(store=sqlite_url(tmp_path, "other.db"), temporal="not a url")


async def test_unreachable_temporal_is_connect_error_when_connect_waits_for_it(tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ConnectError):
        await Handshake.connect(store=sqlite_url(tmp_path), temporal=down, wait_for_temporal=0.2)
    # Without waiting, connect succeeds and calls that need Temporal say it is unreachable.
    hs = await Handshake.connect(store=sqlite_url(tmp_path), temporal=down)
    with pytest.raises(ConnectError):
        await hs.heartbeat_activity(workflow_id="w", activity_id="1")


def test_raw_field_numbers_decode_into_callback_token() -> None:
    # Hand-built wire bytes: tag (field << 3 | 2), length, payload. The numbers are the contract.
    agent = bytes([10 << 3 | 2, 5]) + b"token"
    assert pb.AgentExecutionStatus.FromString(agent).callback_token == b"token"
    workflow = bytes([11 << 3 | 2, 5]) + b"token"
    assert pb.WorkflowExecutionStatus.FromString(workflow).callback_token == b"token"
    assert pb.WorkflowExecutionStatus.DESCRIPTOR.fields_by_name["callback_token"].number == 11
    assert pb.AgentExecutionStatus.DESCRIPTOR.fields_by_name["callback_token"].number == 10
    assert "callback_token" not in pb.AgentExecutionSpec.DESCRIPTOR.fields_by_name
    assert "callback_token" not in pb.WorkflowExecutionSpec.DESCRIPTOR.fields_by_name


def test_use_after_fork_is_a_typed_error(tmp_path: Path) -> None:
    hs = asyncio.run(Handshake.connect(store=sqlite_url(tmp_path), temporal=None))
    pid = os.fork()
    if pid == 0:  # the child: the handshake must refuse at once, not hang on the parent's runtime
        try:
            hs._core.get("anything")
            os._exit(1)
        except HandshakeError as err:
            os._exit(0 if "fork" in str(err) else 2)
        except BaseException:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
