"""`stigmer-handshake serve` as a user runs it: started from the command line with a keys file, driven with
the README's curl lines as written, stopped with SIGTERM (exit 0). Its output (at DEBUG) joins the suite's
token scan."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

from temporalio.client import Client
from temporalio.worker import Worker

from stigmer_handshake import Handshake, pb
from stigmer_handshake.testing import DevServer

from conftest import serve_process, stop_server
from flows import AgentAnswer, NetworkAgentParent, NetworkRequest, create_over_grpc
from token_scan import SEEN_SECRETS

README = Path(__file__).resolve().parents[2] / "README.md"
SECRETS = {name: f"{name}-{uuid.uuid4().hex}" for name in ("caller", "runner", "admin")}
SEEN_SECRETS.extend(s.encode() for s in SECRETS.values())


def readme_curl_lines() -> list[str]:
    """The lines of the README's `sh` block of curl calls."""
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), re.DOTALL)
    [block] = [b for b in blocks if b.startswith("curl ")]
    return block.strip().splitlines()


def start_server(store: str, temporal: str, tmp: Path) -> tuple[subprocess.Popen[str], str]:
    keys = tmp / "keys.txt"
    keys.write_text(
        "# name scopes secret\n"
        f"caller create {SECRETS['caller']}\nrunner settle,read {SECRETS['runner']}\nops admin {SECRETS['admin']}\n"
    )
    return serve_process(store, temporal, keys, tmp / "serve.log")


async def test_the_readme_curl_lines_settle_a_parent_through_the_command_line_server(
    temporal_server: DevServer, temporal_client: Client, tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path}/served.db"
    process, url = await asyncio.to_thread(start_server, store, temporal_server.url, tmp_path)
    try:
        task_queue = f"cli-{uuid.uuid4()}"
        execution_id = f"cli-{uuid.uuid4()}"
        caller = NetworkRequest(
            url.removeprefix("http://"), SECRETS["caller"], execution_id, "approve?", labels={"ticket": "OPS-7"}
        )
        async with Worker(temporal_client, task_queue=task_queue, workflows=[NetworkAgentParent],
                          activities=[create_over_grpc]):  # fmt: skip
            parent = await temporal_client.start_workflow(
                NetworkAgentParent.run, caller, id=f"cli-parent-{execution_id}", task_queue=task_queue,
            )  # fmt: skip
            env = {**os.environ, "HANDSHAKE": url, "EXECUTION": execution_id,
                   "RUNNER_KEY": SECRETS["runner"], "ADMIN_KEY": SECRETS["admin"]}  # fmt: skip
            answers = []
            for line in readme_curl_lines():
                for _ in range(100):  # the first line waits until the caller has created its child
                    done = await asyncio.to_thread(
                        subprocess.run, ["bash", "-c", line], env=env, capture_output=True, text=True, timeout=60
                    )
                    assert done.returncode == 0, (line, done.stderr)
                    answer = json.loads(done.stdout)
                    if "error" not in answer or answer["error"]["code"] != "not_found":
                        break
                    await asyncio.sleep(0.1)
                assert "error" not in answer, (line, answer)
                answers.append(answer)
                if "url" in answer:
                    env["CALLBACK_URL"] = answer["url"]
            shown, listed, beat, link, settled = answers
            assert (shown["id"], shown["phase"], shown["callback"]["state"]) == (execution_id, "PENDING", "armed")
            assert [e["id"] for e in listed["executions"]] == [execution_id]
            assert beat == {"cancel_requested": False, "paused": False, "reset": False}
            assert link["url"].startswith(f"{url}/v1/callbacks/")
            assert (settled["outcome"], settled["execution_id"]) == ("delivered", execution_id)
            assert await parent.result() == AgentAnswer("approved", 0, [])
        async with await Handshake.connect(store=store, temporal=None) as hs:
            token = (await hs.get(execution_id, include_token=True)).status.callback_token
            assert not token, "cleared once settled"
    finally:
        returncode = stop_server(process, tmp_path / "serve.log")
    assert returncode == 0, "SIGTERM stops the server gracefully"


async def test_serve_refuses_what_it_cannot_serve_safely_with_exit_2(
    temporal_server: DevServer, tmp_path: Path
) -> None:
    base = [sys.executable, "-m", "stigmer_handshake.cli", "--store", f"sqlite:///{tmp_path}/x.db", "--temporal",
            temporal_server.url, "serve"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "STIGMER_HANDSHAKE_API_KEYS"}
    for args, message in [
        ([], "needs API keys"),
        (["--insecure-localhost", "--listen", "0.0.0.0:0"], "loopback"),
        (["--cert", "c.pem"], "--cert and --key go together"),
        (["--api-keys-file", str(tmp_path / "missing.txt")], "cannot be read"),
    ]:
        done = await asyncio.to_thread(
            subprocess.run, [*base, *args], capture_output=True, text=True, timeout=60, env=env
        )
        assert (done.returncode, message in done.stderr) == (2, True), (args, done.stderr)


async def test_sigterm_lets_a_request_in_flight_finish(temporal_server: DevServer, tmp_path: Path) -> None:
    """A settle whose request is half sent when SIGTERM arrives is still served; then the server exits 0."""
    store = f"sqlite:///{tmp_path}/inflight.db"
    async with await Handshake.connect(store=store, temporal=None) as hs:
        await hs.create(pb.AgentExecutionSpec(agent_id="a"), execution_id="e1")
    process, url = await asyncio.to_thread(start_server, store, temporal_server.url, tmp_path)
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    body = b'{"ok": true}'
    writer.write(
        b"POST /v1/executions/e1:complete HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
        + f"authorization: Bearer {SECRETS['runner']}\r\ncontent-length: {len(body)}\r\n\r\n".encode()
    )
    await writer.drain()
    await asyncio.sleep(0.5)
    stopping = asyncio.create_task(asyncio.to_thread(stop_server, process, tmp_path / "serve.log"))
    await asyncio.sleep(0.5)  # the server has stopped accepting; this request is in flight
    writer.write(body)
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    assert response.startswith(b"HTTP/1.1 200"), response[:200]
    assert json.loads(response.split(b"\r\n\r\n", 1)[1])["outcome"] == "no_callback"
    assert await stopping == 0
