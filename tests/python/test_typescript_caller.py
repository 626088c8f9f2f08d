"""A caller in another language: a real Temporal TypeScript worker (examples/typescript-caller, npm's
`@temporalio/*` and `@grpc/grpc-js`) whose activity defers to `stigmer-handshake serve` over gRPC with its
own task token; a Python runner claims and settles; the TypeScript parent gets the typed result, or the
typed failure. `make test` installs and builds the worker (`make typescript-caller`)."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.client import Client

from stigmer_handshake import ApiKey, Handshake
from stigmer_handshake.testing import DevServer

from conftest import TRANSCRIPT
from flows import SEEN_TOKENS, AgentAnswer
from token_scan import SEEN_SECRETS

ROOT = Path(__file__).resolve().parents[2]
CALLER = ROOT / "examples" / "typescript-caller"
KEY = ApiKey("typescript-caller", "ts-" + uuid.uuid4().hex, ("create",))
SEEN_SECRETS.append(KEY.secret.encode())


@dataclass
class Caller:
    hs: Handshake
    client: Client
    task_queue: str


@pytest_asyncio.fixture(loop_scope="session")
async def caller(temporal_server: DevServer, temporal_client: Client, tmp_path: Path) -> AsyncIterator[Caller]:
    if not (CALLER / "lib" / "main.js").exists():
        pytest.fail("the TypeScript caller is not built: run `make typescript-caller` (make test does)")
    async with await Handshake.connect(store=f"sqlite:///{tmp_path}/ts.db", temporal=temporal_server.url) as hs:
        server = await hs.serve("127.0.0.1:0", api_keys=[KEY])
        task_queue = f"ts-{uuid.uuid4()}"
        env = {
            **os.environ,
            "TEMPORAL_ADDRESS": temporal_server.address,
            "TEMPORAL_NAMESPACE": temporal_server.namespace,
            "TASK_QUEUE": task_queue,
            "STIGMER_HANDSHAKE_ADDRESS": server.address,
            "STIGMER_HANDSHAKE_API_KEY": KEY.secret,
            "STIGMER_PROTO_DIR": str(ROOT / "proto"),
        }
        worker = await asyncio.create_subprocess_exec(
            "node", "lib/main.js", cwd=CALLER, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        assert worker.stdout is not None
        output: list[str] = []
        try:
            async with asyncio.timeout(120):
                while "worker ready" not in "".join(output):
                    line = await worker.stdout.readline()
                    if not line:
                        pytest.fail(f"the TypeScript worker exited: {''.join(output)}")
                    output.append(line.decode(errors="replace"))
            yield Caller(hs, temporal_client, task_queue)
        finally:
            worker.send_signal(signal.SIGTERM)
            rest, _ = await asyncio.wait_for(worker.communicate(), 60)
            output.append(rest.decode(errors="replace"))
            TRANSCRIPT.append("".join(output))  # the suite's last test scans it for tokens


async def test_a_typescript_parent_gets_its_childs_typed_result_and_a_typed_failure(caller: Caller) -> None:
    ids = [f"ts-child-{n}-{uuid.uuid4()}" for n in range(2)]
    parents = []
    for n, execution_id in enumerate(ids):
        request = {"executionId": execution_id, "prompt": f"question {n}"}
        parents.append(
            await caller.client.start_workflow(
                "agentParent", request, id=f"ts-parent-{execution_id}", task_queue=caller.task_queue
            )
        )
    claimed = []
    async with asyncio.timeout(60):
        while len(claimed) < 2:
            claimed += await caller.hs.claim("agent", limit=2, wait=5)
    assert sorted(e.metadata.id for e in claimed) == sorted(ids)
    for execution_id in ids:
        stored = await caller.hs.get(execution_id, include_token=True)
        SEEN_TOKENS.append(stored.status.callback_token)  # the TypeScript activity's own token
        assert stored.spec.message.startswith("question ")
    delivered = await caller.hs.succeed(ids[0], AgentAnswer("FORTY-TWO", 42, ["ts"]))
    failed = await caller.hs.fail(ids[1], "the model refused", type="MODEL_REFUSED", non_retryable=True)
    assert (delivered.outcome, failed.outcome) == ("delivered", "delivered")
    assert await parents[0].result() == {
        "ok": True,
        "answer": {"answer": "FORTY-TWO", "tokens_used": 42, "sources": ["ts"]},
    }
    assert await parents[1].result() == {
        "ok": False, "message": "the model refused", "type": "MODEL_REFUSED", "nonRetryable": True,
    }  # fmt: skip
