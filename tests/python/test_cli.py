"""The `stigmer-handshake` command, run as a subprocess against a real dev server and store, with good and
bad arguments: each bad one gets a clear message and a non-zero exit, and changes nothing."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ActivityError, ApplicationError

import stigmer_handshake
import stigmer_handshake.cli
from stigmer_handshake import Handshake, TaskToken, pb
from stigmer_handshake.testing import task_token

from conftest import TRANSCRIPT, Env, namespace_id_of
from flows import AgentAnswer, AgentParent, AgentRequest, expected_answer

CLI = [sys.executable, "-m", "stigmer_handshake.cli"]
#: The console script `pip install` puts beside this Python.
SCRIPT = str(Path(sys.executable).parent / "stigmer-handshake")


async def cli(env: Env, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    command = [*CLI, "--store", env.store, "--temporal", env.server.url, *args]
    done = await asyncio.to_thread(
        subprocess.run, command, input=stdin, capture_output=True, text=True, timeout=60, check=False
    )
    TRANSCRIPT.extend([done.stdout, done.stderr])
    return done


def json_out(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


async def pending_parent(env: Env, prompt: str = "tides") -> tuple[AgentRequest, WorkflowHandle[Any, Any]]:
    request = AgentRequest(f"cli-{uuid.uuid4().hex[:8]}", prompt)
    handle = await env.client.start_workflow(
        AgentParent.run, request, id=f"cli-{uuid.uuid4()}", task_queue=env.task_queue
    )
    await env.wait_for_execution(request.execution_id)
    return request, handle


async def test_inspect_token_decodes_base64_hex_and_files_and_never_prints_the_token(env: Env, tmp_path: Path) -> None:
    request, handle = await pending_parent(env)
    token = (await env.hs.get(request.execution_id, include_token=True)).status.callback_token
    expected = TaskToken(token)
    raw = tmp_path / "token.bin"
    raw.write_bytes(token)
    for args, stdin in (
        ([base64.b64encode(token).decode()], None),
        ([token.hex()], None),
        (["-"], base64.urlsafe_b64encode(token).decode().rstrip("=")),
        (["--file", str(raw)], None),
    ):
        done = await cli(env, "inspect-token", *args, "--json", stdin=stdin)
        fields = json_out(done)
        assert fields["fingerprint"] == expected.fingerprint
        assert (fields["workflow_id"], fields["activity_id"], fields["attempt"]) == (
            handle.id, expected.activity_id, 1,
        )  # fmt: skip
        for form in (token.hex(), base64.b64encode(token).decode()):
            assert form[:16] not in done.stdout + done.stderr
    text = await cli(env, "inspect-token", token.hex())
    assert text.returncode == 0 and f"fingerprint         {expected.fingerprint}" in text.stdout

    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    for bad in (["not a token!"], [base64.b64encode(b"\xff" * 40).decode()], ["--file", str(empty)],
                ["--file", str(tmp_path / "missing")], []):  # fmt: skip
        done = await cli(env, "inspect-token", *bad)
        assert done.returncode == 2, (bad, done.stdout, done.stderr)
        assert "stigmer-handshake" in done.stderr or "usage:" in done.stderr


async def test_list_and_show_report_callbacks_with_ages(env: Env) -> None:
    request, _ = await pending_parent(env)
    rows = json_out(await cli(env, "list", "--json"))
    [row] = [r for r in rows if r["id"] == request.execution_id]
    assert row["callback_state"] == "armed" and row["token_fingerprint"].startswith("tok-")
    assert 0 <= row["age_seconds"] < 60
    assert [r["id"] for r in json_out(await cli(env, "list", "--state", "armed", "--json"))] == [request.execution_id]
    assert json_out(await cli(env, "list", "--state", "delivered", "--json")) == []
    found = json_out(await cli(env, "list", "--text", request.execution_id[4:], "--json"))
    assert [r["id"] for r in found] == [request.execution_id], "found by a piece of its id"
    assert json_out(await cli(env, "list", "--text", "no such text", "--json")) == []
    table = await cli(env, "list")
    assert request.execution_id in table.stdout and "1 executions, 1 armed" in table.stdout
    said = await cli(env, "--verbose", "list")
    assert said.returncode == 0 and f"opened the store {env.store}" in said.stderr, said.stderr
    secret = "postgres://app:s3cret@db:5432/agents?sslmode=require"
    assert stigmer_handshake.cli.without_password(secret) == "postgres://app:***@db:5432/agents?sslmode=require"

    shown = json_out(await cli(env, "--json", "show", request.execution_id))
    assert shown["phase"] == "PENDING" and shown["parent_activity_id"]

    missing = await cli(env, "show", "no-such-execution")
    assert missing.returncode == 3 and "no execution with id" in missing.stderr
    for bad in (["list", "--phase", "NOPE"], ["list", "--limit", "0"], ["nope"], ["show"]):
        done = await cli(env, *bad)
        assert done.returncode == 2, (bad, done.stderr)


async def test_settle_tells_the_parent_and_bad_arguments_change_nothing(env: Env) -> None:
    request, handle = await pending_parent(env)
    for bad in (
        ["settle", request.execution_id, "--result", "{not json"],
        ["settle", request.execution_id, "--result", "1", "--type", "X"],
        ["settle", request.execution_id, "--result", "1", "--cancel"],
        ["settle", request.execution_id],
        ["settle", request.execution_id, "--fail", "x", "--details", "{"],
    ):
        done = await cli(env, *bad)
        assert done.returncode == 2, (bad, done.stderr)
        assert (await env.hs.inspect(request.execution_id)).phase == "PENDING", "nothing changed"

    answer = {"answer": "TIDES", "tokens_used": 5, "sources": ["cli"]}
    done = await cli(env, "settle", request.execution_id, "--result", json.dumps(answer), "--json")
    assert json_out(done)["outcome"] == "delivered"
    assert await handle.result() == AgentAnswer(**answer)
    again = json_out(await cli(env, "settle", request.execution_id, "--fail", "late", "--json"))
    assert again["outcome"] == "already_settled"

    failing, failing_handle = await pending_parent(env, "refuse")
    done = await cli(env, "settle", failing.execution_id, "--fail", "model refused", "--type", "REFUSED",
                      "--non-retryable")  # fmt: skip
    assert done.returncode == 0 and "delivered" in done.stdout
    with pytest.raises(WorkflowFailureError) as caught:
        await failing_handle.result()
    assert isinstance(caught.value.cause, ActivityError)
    failure = caught.value.cause.cause
    assert isinstance(failure, ApplicationError)
    assert (failure.message, failure.type, failure.non_retryable) == ("model refused", "REFUSED", True)

    gone, gone_handle = await pending_parent(env, "gone")
    await gone_handle.terminate("the operator gave up")
    done = await cli(env, "settle", gone.execution_id, "--result", "1", "--json")
    assert done.returncode == 5 and json.loads(done.stdout)["reason"] == "PARENT_WORKFLOW_CLOSED"
    missing = await cli(env, "settle", "no-such-execution", "--cancel")
    assert missing.returncode == 3
    # Only a dead-lettered callback is redelivered (test_console redelivers one): this one was delivered.
    done = await cli(env, "redeliver", request.execution_id)
    assert done.returncode == 3 and "only a dead-lettered one is redelivered" in done.stderr, done.stderr


async def test_reconcile_once_and_as_a_loop_delivers_what_is_due(env: Env) -> None:
    recorder = await Handshake.connect(store=env.store, temporal=None)
    first, first_handle = await pending_parent(env, "first")
    await recorder.succeed(first.execution_id, {"answer": "A", "tokens_used": 1, "sources": []})
    report = json_out(await cli(env, "reconcile", "--json"))
    assert report["delivered"] == 1
    assert (await first_handle.result()).answer == "A"

    loop = subprocess.Popen(
        [*CLI, "--store", env.store, "--temporal", env.server.url, "reconcile", "--every", "0.2", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy(),
    )  # fmt: skip
    try:
        second, second_handle = await pending_parent(env, "second")
        await recorder.succeed(second.execution_id, {"answer": "B", "tokens_used": 1, "sources": []})
        assert (await asyncio.wait_for(second_handle.result(), timeout=30)).answer == "B"
        assert loop.poll() is None, "the loop keeps running"
    finally:
        loop.send_signal(signal.SIGTERM)  # a graceful stop: the pass finishes, exit 0
        out, _ = loop.communicate(timeout=30)
    assert loop.returncode == 0
    assert '"delivered": 1' in out
    bad = await cli(env, "reconcile", "--every", "-1")
    assert bad.returncode == 2


async def test_unreachable_store_exits_4(env: Env) -> None:
    done = await asyncio.to_thread(
        subprocess.run, [*CLI, "--store", "postgres://postgres@127.0.0.1:1/test", "list"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 4 and "StoreUnavailable" in done.stderr


@pytest.mark.timeout(200)
def test_demo_and_bench_commands(tmp_path: Path) -> None:
    demo = subprocess.run([SCRIPT, "demo", "--executions", "50", "--slots", "4"], capture_output=True, text=True,
                          timeout=180, check=False)  # fmt: skip
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert "50 agent runs, every parent activity got its typed result" in demo.stdout
    assert "activity slots       4" in demo.stdout
    figures = tmp_path / "bench.json"
    small = ["--b3-n", "5", "--b6-n", "20", "--b6-one-by-one", "5"]
    bench = subprocess.run([*CLI, "bench", "--only", "B3", "B6", *small, "--out", str(figures)],
                           capture_output=True, text=True, timeout=180, check=False)  # fmt: skip
    assert bench.returncode == 0, bench.stderr[-3000:]
    assert "B3 latency p50" in bench.stdout and "B6 HTTP settles" in bench.stdout
    results = json.loads(figures.read_text())["results"]
    assert (results["B3"]["n"], results["B6"]["n"], results["B6"]["http_per_s"] > 0) == (5, 20, True)


# Runs the CLI in a fresh interpreter and prints which temporalio modules it loaded.
LOADED_TEMPORALIO = """
import json, sys
from stigmer_handshake import cli
codes = [cli.main(argv) for argv in json.loads(sys.argv[1])]
print(json.dumps({"codes": codes, "temporalio": sorted(m for m in sys.modules if m.split(".")[0] == "temporalio")}))
"""


async def test_store_only_commands_never_load_temporalio(tmp_path: Path) -> None:
    """temporalio's imports are 0.25 s of a CLI start (measured): the commands that read or prune the store
    alone (and the package's import) never load it, so they answer in a fraction of a second."""
    store = f"sqlite:///{tmp_path / 'h.db'}"
    async with await Handshake.connect(store=store, temporal=None) as hs:
        execution_id = await hs.create(pb.AgentExecutionSpec(agent_id="a", message="m"))
    commands = [
        ["--store", store, "--json", "list", "--limit", "5"],
        ["--store", store, "--json", "list", "--state", "none", "--phase", "PENDING"],
        ["--store", store, "--json", "show", execution_id],
        ["--store", store, "--json", "prune", "--older-than", "30d"],
        ["--store", store, "inspect-token", "00"],
    ]
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", LOADED_TEMPORALIO, json.dumps(commands)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report == {"codes": [0, 0, 0, 0, 2], "temporalio": []}, done.stdout


def test_version_is_printed() -> None:
    done = subprocess.run([SCRIPT, "--version"], capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stdout.strip()) == (0, f"stigmer-handshake {stigmer_handshake.__version__}")


async def test_every_documented_exit_code_is_what_the_cli_exits_with(env: Env) -> None:
    """The module's table of exit codes, each produced by the case it names (README: "Exit codes")."""
    doc = stigmer_handshake.cli.__doc__ or ""
    told, told_handle = await pending_parent(env, "told")
    gone, gone_handle = await pending_parent(env, "gone")
    await gone_handle.terminate("the operator gave up")
    sealed = await Handshake.connect(store=env.store, temporal=None, token_keys={"k1": os.urandom(32)})
    locked = await sealed.create(pb.AgentExecutionSpec(message="sealed"), token=task_token(
        await namespace_id_of(env.client), f"wf-{uuid.uuid4()}"))  # fmt: skip
    down = ["--temporal", "http://127.0.0.1:1"]  # nothing listens there
    table: list[tuple[int, str, list[str]]] = [
        (0, "done", ["settle", told.execution_id, "--result", json.dumps(vars(expected_answer("told")))]),
        (1, "an unexpected error", ["settle", locked, "--cancel"]),  # a token sealed with a key it lacks
        (2, "bad arguments or input (nothing was changed)", ["settle", gone.execution_id, "--result", "{"]),
        (3, "no such execution", [*down, "settle", "no-such-execution", "--cancel"]),  # looked up before Temporal
        (3, "its phase does not allow it", ["redeliver", told.execution_id]),
        (4, "the store or Temporal cannot be reached", ["--store", "postgres://postgres@127.0.0.1:1/t", "list"]),
        (4, "the store or Temporal cannot be reached", [*down, "reconcile"]),
        (5, "settled, but the parent activity was not told", ["settle", gone.execution_id, "--cancel"]),
    ]
    sentence = " ".join(doc.split()).split("Exit codes: ", 1)[1].split(".", 1)[0]
    documented = {int(code): text for code, text in re.findall(r"(\d) ([^;]+)", sentence)}
    assert sorted(documented) == [0, 1, 2, 3, 4, 5] == sorted({code for code, _, _ in table})
    for code, meaning, args in table:
        assert meaning in documented[code], (code, meaning, documented[code])
        done = await cli(env, *args)
        assert done.returncode == code, (code, meaning, args, done.stdout, done.stderr[-2000:])
    assert await told_handle.result() == expected_answer("told")
