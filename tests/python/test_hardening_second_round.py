"""Hardening, second round: what an adversarial probe broke, one test per defect, on both stores where the
store is involved. Real dev server, real stores."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from temporalio.client import WorkflowFailureError
from temporalio.converter import DataConverter
from temporalio.exceptions import ActivityError, ApplicationError

from stigmer_handshake import (
    CapabilityError,
    ConnectError,
    Handshake,
    InvalidInput,
    StoreUnavailable,
    TokenKeyError,
    WaitTimeout,
    pb,
)
from stigmer_handshake.testing import free_port, sqlite_url, task_token

from conftest import BOTH_STORES, Env, namespace_id_of, sqlite_rows
from flows import (
    AgentParent,
    AgentRequest,
    ForgedChild,
    PipelineParent,
    PipelineRequest,
    PipelineResult,
    SameActivityIdParent,
    expected_answer,
)
from token_scan import find_tokens, history_bytes

STORE_BACKENDS = BOTH_STORES
KEY = {"k1": bytes(range(32))}
OTHER_KEY = {"k2": bytes(32)}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4()}"


@pytest.mark.timeout(90)
async def test_the_same_activity_id_scheduled_again_gets_a_child_of_its_own(env: Env) -> None:
    requests = [AgentRequest(new_id("first"), "first call"), AgentRequest(new_id("second"), "second call")]
    handle = await env.client.start_workflow(
        SameActivityIdParent.run, requests, id=new_id("parent"), task_queue=env.task_queue
    )
    await env.wait_for_execution(requests[0].execution_id)
    assert (await env.hs.succeed(requests[0].execution_id, expected_answer("first call"))).outcome == "delivered"
    # The workflow schedules activity "ask" again: a new call (a new scheduled event), not a retry.
    await env.wait_for_execution(requests[1].execution_id, timeout=10)
    second = await env.hs.inspect(requests[1].execution_id)
    assert (second.phase, second.callback_state, second.retry_of) == ("PENDING", "armed", None)
    assert (await env.hs.succeed(requests[1].execution_id, expected_answer("second call"))).outcome == "delivered"
    assert await handle.result() == [expected_answer("first call"), expected_answer("second call")]
    first = await env.hs.inspect(requests[0].execution_id)
    assert (first.phase, first.callback_state) == ("COMPLETED", "delivered")


async def test_a_direct_execution_keeps_its_result(env: Env) -> None:
    execution_id = await env.hs.create(pb.AgentExecutionSpec(message="no parent"))
    assert (await env.hs.succeed(execution_id, {"answer": 42})).outcome == "no_callback"
    assert await env.hs.result(execution_id) == {"answer": 42}
    record = await env.hs.inspect(execution_id)
    assert (record.phase, record.outcome, record.callback_state) == ("COMPLETED", "complete", None)
    failed = await env.hs.create(pb.AgentExecutionSpec(message="no parent either"))
    await env.hs.fail(failed, "it broke", type="BROKEN")
    assert (await env.hs.inspect(failed)).outcome == "fail"


async def test_a_runner_without_the_token_key_still_gets_its_claim(env: Env) -> None:
    sealer = await Handshake.connect(store=env.store, temporal=env.server.url, token_keys=KEY)
    token = task_token(await namespace_id_of(env.client), new_id("wf"))
    direct = await sealer.create(pb.AgentExecutionSpec(message="direct"))
    sealed = await sealer.create(pb.AgentExecutionSpec(message="sealed"), token=token)
    runner = await Handshake.connect(store=env.store, temporal=env.server.url, token_keys=OTHER_KEY)
    claimed = await runner.claim("agent", limit=10)
    assert sorted(e.metadata.id for e in claimed) == sorted([direct, sealed]), "the claim strands nothing"
    assert all(e.status.phase == pb.ExecutionPhase.EXECUTION_PHASE_IN_PROGRESS for e in claimed)
    assert runner.pump_stats()["tracked"] == 0, "a parent whose token it cannot open is not heartbeated"
    assert (await runner.succeed(direct, "done")).outcome == "no_callback"
    with pytest.raises(TokenKeyError):
        await runner.succeed(sealed, "done")  # recorded; a process with the key delivers it
    record = await sealer.inspect(sealed)
    assert (record.phase, record.callback_state) == ("COMPLETED", "due")


def test_drain_takes_any_float_without_a_panic() -> None:
    # In a process of its own: drain is for interpreter exit, after it no future hands back its result.
    script = "from stigmer_handshake import _core\nfor t in (float('nan'), float('inf'), -1.0, 0.0): _core.drain(t)"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "Panic" not in done.stderr, done.stderr  # returns (at most 10 s each)


async def test_reconcile_every_nan_or_infinity_is_a_usage_error(tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "stigmer_handshake.cli", "--store", sqlite_url(tmp_path)]
    for every in ("nan", "inf", "-inf", "0"):
        done = await asyncio.to_thread(
            subprocess.run, [*cli, "reconcile", f"--every={every}"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 2, (every, done.returncode, done.stderr)
        assert "--every must be a positive number of seconds" in done.stderr
    assert not list(tmp_path.iterdir()), "a refused command opens no store"


async def test_credentials_in_the_temporal_url_appear_in_no_error_or_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    down = f"http://user:s3cr3t-in-url@127.0.0.1:{free_port()}"
    with pytest.raises(ConnectError) as waited:
        await Handshake.connect(store=sqlite_url(tmp_path), temporal=down, wait_for_temporal=0.2)
    hs = await Handshake.connect(store=sqlite_url(tmp_path), temporal=down)
    with pytest.raises(ConnectError) as used:
        await hs.heartbeat_activity(workflow_id="w", activity_id="1")
    with pytest.raises(InvalidInput) as malformed:
        await Handshake.connect(store=sqlite_url(tmp_path), temporal="http//user:s3cr3t-in-url@127.0.0.1:1")
    shown = [str(waited.value), str(used.value), str(malformed.value), caplog.text]
    assert "127.0.0.1" in shown[0] and "***" in shown[0], shown[0]
    assert not [text for text in shown if "s3cr3t" in text], shown


async def test_a_nul_in_a_failure_is_refused_on_every_store_and_changes_nothing(env: Env) -> None:
    execution_id = await env.hs.create(pb.AgentExecutionSpec(message="nul"))
    for message, kind in (("bad\x00message", ""), ("message", "BAD\x00TYPE")):
        with pytest.raises(InvalidInput, match="NUL"):
            await env.hs.fail(execution_id, message, type=kind)
    assert (await env.hs.inspect(execution_id)).phase == "PENDING"
    assert (await env.hs.fail(execution_id, "a clean message")).outcome == "no_callback"


async def test_a_sqlite_path_with_mode_memory_in_it_keeps_wal(tmp_path: Path) -> None:
    folder = tmp_path / "mode=memory"
    folder.mkdir()
    hs = await Handshake.connect(store=sqlite_url(folder), temporal=None)
    await hs.create(pb.AgentExecutionSpec(message="durable"))
    assert sqlite_rows(folder / "handshake.db", "PRAGMA journal_mode") == [["wal"]]


async def test_a_reconcile_pass_skips_an_expired_claim_it_cannot_open_and_says_so(env: Env) -> None:
    sealer = await Handshake.connect(store=env.store, temporal=None, token_keys=KEY)
    token = task_token(await namespace_id_of(env.client), new_id("wf"))
    sealed = await sealer.create(pb.AgentExecutionSpec(message="sealed"), token=token)
    [claimed] = await sealer.claim("agent", lease=0.05)  # store-only: nobody renews the claim
    assert claimed.metadata.id == sealed
    await asyncio.sleep(0.2)
    reconciler = await Handshake.connect(store=env.store, temporal=env.server.url, token_keys=OTHER_KEY)
    for _ in range(2):
        report = await reconciler.reconcile()
        assert (report.skipped, report.orphaned) == (1, 0), report
    assert (await reconciler.inspect(sealed)).callback_state == "armed"


@pytest.mark.timeout(90)
async def test_a_failure_message_over_the_payload_limit_reaches_the_parent_as_result_too_large(env: Env) -> None:
    request = AgentRequest(new_id("big-failure"), "big failure")
    handle = await env.client.start_workflow(AgentParent.run, request, id=new_id("parent"), task_queue=env.task_queue)
    await env.wait_for_execution(request.execution_id)
    settled = await asyncio.wait_for(env.hs.fail(request.execution_id, "x" * (5 * 1024 * 1024)), timeout=30)
    assert settled.outcome == "result_too_large", settled
    with pytest.raises(WorkflowFailureError) as caught:
        await handle.result()
    assert isinstance(caught.value.cause, ActivityError)
    failure = caught.value.cause.cause
    assert isinstance(failure, ApplicationError)
    assert failure.type == "RESULT_TOO_LARGE" and failure.non_retryable, failure
    record = await env.hs.inspect(request.execution_id)
    assert (record.phase, record.callback_state) == ("FAILED", "delivered")


async def test_a_running_execution_cannot_go_back_to_pending(env: Env) -> None:
    execution_id = await env.hs.create(pb.AgentExecutionSpec(message="run once"))
    [claimed] = await env.hs.claim("agent")
    assert claimed.metadata.id == execution_id
    back = pb.AgentExecutionStatus(phase=pb.ExecutionPhase.EXECUTION_PHASE_PENDING)
    with pytest.raises(InvalidInput, match="PENDING"):
        await env.hs.update_status(execution_id, back)
    assert (await env.hs.inspect(execution_id)).phase == "IN_PROGRESS"
    assert await env.hs.claim("agent") == [], "a second runner claims nothing while the first one's lease lives"


async def test_the_cli_refuses_json_too_deep_or_too_long_with_a_json_error(tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "stigmer_handshake.cli", "--store", sqlite_url(tmp_path), "--json"]
    for value in ("[" * 50_000 + "]" * 50_000, "1" * 5000):
        done = await asyncio.to_thread(
            subprocess.run, [*cli, "settle", "some-id", "--result", value],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 2, (done.returncode, done.stderr[-500:])
        assert json.loads(done.stdout)["exit_code"] == 2
        assert "Traceback" not in done.stderr


async def test_lookalike_ids_upper_case_signatures_and_loose_postgres_urls_are_refused(tmp_path: Path) -> None:
    hs = await Handshake.connect(store=sqlite_url(tmp_path), temporal=None, capability_keys=[bytes(range(32))])
    for invisible in ("\u202e", "\u2028", "\u200b", "\ufeff", "\u2066"):
        with pytest.raises(InvalidInput, match="invisible"):
            await hs.create(pb.AgentExecutionSpec(message="m"), execution_id=f"agent{invisible}1")
    execution_id = await hs.create(pb.AgentExecutionSpec(message="m"))
    capability = hs.grant(execution_id, ["complete"])
    prefix, body, signature = capability.split(".")
    with pytest.raises(CapabilityError):
        await hs.succeed(execution_id, 1, capability=f"{prefix}.{body}.{signature.upper()}")
    assert (await hs.inspect(execution_id)).phase == "PENDING"
    for url, why in (
        ("postgres://u@127.0.0.1:1/db?sslmod=require", "unknown parameter"),
        ("postgres://u@127.0.0.1:1/db?schema=a&schema=b", "twice"),
    ):
        with pytest.raises(InvalidInput, match=why):
            await Handshake.connect(store=url, temporal=None)


async def test_lone_surrogates_and_released_views_are_typed_errors(env: Env) -> None:
    execution_id = await env.hs.create(pb.AgentExecutionSpec(message="m"))
    view = memoryview(b"x" * 40)
    view.release()
    calls = [
        env.hs.fail(execution_id, "bad \ud800 message"),
        env.hs.fail(execution_id, "ok", type="\udfff"),
        env.hs.inspect("agent-\ud800"),
        env.hs.create(pb.AgentExecutionSpec(message="m"), execution_id="e\udc00"),
        env.hs.complete_activity(1, workflow_id="w\ud800", activity_id="1"),
        env.hs.create(pb.AgentExecutionSpec(message="m"), token=view),
    ]
    for call in calls:
        with pytest.raises(InvalidInput):
            await call
    assert (await env.hs.inspect(execution_id)).phase == "PENDING"


@pytest.mark.timeout(90)
async def test_the_child_workflow_carries_a_capability_and_its_history_no_token(env: Env) -> None:
    execution_id = new_id("workflow")
    result = await env.client.execute_workflow(
        PipelineParent.run, PipelineRequest(execution_id, [2, 3]), id=new_id("parent"), task_queue=env.task_queue
    )
    assert result == PipelineResult(total=5, count=2)
    token = env.activities.tokens_seen[-1]
    history = await env.client.get_workflow_handle(execution_id).fetch_history()
    child_input = history.events[0].workflow_execution_started_event_attributes.input
    assert "capability" in child_input.payloads[0].data.decode(), "the child's callback is a capability"
    raw = history_bytes(history)
    assert token not in raw and not find_tokens(raw.decode("latin-1"), {token}), "the token is not in its history"


@pytest.mark.timeout(90)
async def test_a_callback_fabricated_from_listed_ids_settles_nothing(env: Env) -> None:
    execution_id, parent_id = new_id("workflow"), new_id("parent")
    parent = await env.client.start_workflow(
        PipelineParent.run, PipelineRequest(execution_id, [4], sleep_seconds=4), id=parent_id, task_queue=env.task_queue
    )  # fmt: skip
    await env.wait_for_execution(execution_id)
    # What `list --json` prints of the execution is enough to rebuild a token with the same ids.
    listed = await env.hs.inspect(execution_id)
    fabricated = task_token(
        await namespace_id_of(env.client), listed.parent_workflow_id, listed.parent_run_id, listed.parent_activity_id
    )

    async def forge(carried: str) -> None:
        answer = await env.client.execute_workflow(
            ForgedChild.run, args=[execution_id, carried], id=new_id("forged"), task_queue=env.task_queue
        )
        assert answer.startswith("refused"), answer
        assert (await env.hs.inspect(execution_id)).phase == "PENDING", "nothing was settled"

    await forge(base64.b64encode(fabricated).decode())
    await forge(env.hs.grant(new_id("other"), ["fail"]))  # a real capability, for another execution
    assert await parent.result() == PipelineResult(total=4, count=1), "the real child still settles it"


async def test_capability_keys_rotate_and_a_capability_is_for_its_own_store(env: Env, tmp_path: Path) -> None:
    old, new = bytes(range(32)), bytes(range(1, 33))
    before = await Handshake.connect(store=env.store, temporal=None, capability_keys=[old])
    after = await Handshake.connect(store=env.store, temporal=None, capability_keys=[new, old])
    elsewhere = await Handshake.connect(store=sqlite_url(tmp_path, "other.db"), temporal=None, capability_keys=[old])
    first, second = [await before.create(pb.AgentExecutionSpec(message="m")) for _ in range(2)]
    granted_before = before.grant(first, ["complete"])
    with pytest.raises(CapabilityError, match="another store"):
        await elsewhere.succeed(first, 1, capability=granted_before)  # same key, same id: another store
    with pytest.raises(CapabilityError, match="signature"):
        await before.succeed(second, 2, capability=after.grant(second, ["complete"]))  # the new key signs
    assert (await env.hs.inspect(second)).phase == "PENDING"
    assert (await after.succeed(first, 1, capability=granted_before)).outcome == "no_callback", "the old verifies"
    assert (await after.succeed(second, 2, capability=after.grant(second, ["complete"]))).outcome == "no_callback"
    # Without keys, each store signs with a key of its own, which every process on that store shares.
    plain = await env.hs.create(pb.AgentExecutionSpec(message="m"))
    keyless_elsewhere = await Handshake.connect(store=sqlite_url(tmp_path, "third.db"), temporal=None)
    with pytest.raises(CapabilityError, match="signature"):
        await keyless_elsewhere.succeed(plain, 1, capability=env.hs.grant(plain, ["complete"]))
    keyless_here = await Handshake.connect(store=env.store, temporal=None)
    settled = await keyless_here.succeed(plain, 3, capability=env.hs.grant(plain, ["complete"]))
    assert settled.outcome == "no_callback"


@pytest.mark.timeout(90)
async def test_while_another_process_holds_the_sqlite_lock_wait_keeps_its_timeout_and_settle_says_unavailable(
    tmp_path: Path,
) -> None:
    hs = await Handshake.connect(store=sqlite_url(tmp_path), temporal=None)
    execution_id = await hs.create(pb.AgentExecutionSpec(message="m"))
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sqlite3, sys, time\n"
         "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
         "c.execute('BEGIN EXCLUSIVE'); print('held', flush=True); time.sleep(60)", str(tmp_path / "handshake.db")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        settle = asyncio.ensure_future(hs.succeed(execution_id, 1))  # waits for the lock, holding the connection
        await asyncio.sleep(0.2)
        started = asyncio.get_running_loop().time()
        with pytest.raises(WaitTimeout):
            await hs.wait(execution_id, timeout=1)
        assert asyncio.get_running_loop().time() - started < 3, "the timeout holds while the store is locked"
        with pytest.raises(StoreUnavailable, match="locked"):
            await settle
    finally:
        holder.kill()
        holder.communicate()  # reaps it and closes its pipe
    assert (await hs.inspect(execution_id)).phase == "PENDING", "nothing was half written"
    assert (await hs.succeed(execution_id, 1)).outcome == "no_callback", "once the lock is free, settling works"


FORK_SCRIPT = """
import asyncio, os, sys
from stigmer_handshake import Handshake, HandshakeError, pb

store = sys.argv[1]
spec = pb.AgentExecutionSpec(message="m")

async def before() -> Handshake:
    hs = await Handshake.connect(store=store, temporal=None)
    await hs.create(spec)
    return hs

hs = asyncio.run(before())
child = os.fork()
if child == 0:
    async def in_child() -> None:
        try:
            await hs.create(spec)
        except HandshakeError as err:
            print("refused:", "after fork" in str(err), flush=True)
        again = await Handshake.connect(store=store, temporal=None)  # the documented remedy
        execution_id = await again.create(spec)
        print("settled:", (await again.succeed(execution_id, 1)).outcome, flush=True)
    asyncio.run(in_child())
    sys.exit(0)
_, status = os.waitpid(child, 0)
print("child exit:", os.waitstatus_to_exitcode(status), flush=True)
"""


@pytest.mark.timeout(60)
def test_after_fork_connecting_again_in_the_child_works(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", FORK_SCRIPT, sqlite_url(tmp_path)], capture_output=True, text=True, timeout=30
    )
    assert done.stdout.splitlines() == ["refused: True", "settled: no_callback", "child exit: 0"], done.stderr


async def test_a_converter_that_cannot_decode_and_a_surrogate_id_in_the_core_are_typed_errors(env: Env) -> None:
    execution_id = await env.hs.create(pb.AgentExecutionSpec(message="m"))
    await env.hs.succeed(execution_id, {"answer": 42})
    junk = Handshake(env.hs._core, DataConverter(payload_codec=object()))  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="cannot decode"):
        await junk.result(execution_id)
    assert await env.hs.result(execution_id) == {"answer": 42}, "the stored result is untouched"
    with pytest.raises(InvalidInput, match="valid Unicode") as refused:
        await env.hs._core.get("agent-\ud800", False)
    assert "not str" not in str(refused.value)
