"""Three `stigmer-handshake serve` processes on one PostgreSQL store; one is SIGKILLed while 500 webhook
settles arrive through all three (a sender retries a refused or cut request on another server, as webhook
senders do). Every parent is settled exactly once, with its own result; no token is in any answer or in the
servers' logs (the suite's last test scans them)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.worker import Worker

from stigmer_handshake import Handshake
from stigmer_handshake.testing import DevServer

from conftest import TRANSCRIPT, serve_process, stop_server
from flows import AgentAnswer, AgentParent, AgentRequest, CallerActivities, expected_answer
from token_scan import SEEN_SECRETS

PARENTS = int(os.environ.get("CLUSTER_PARENTS", "500"))
SENDERS = 16
SECRET = f"cluster-{uuid.uuid4().hex}"
SEEN_SECRETS.append(SECRET.encode())


def post(url: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"authorization": f"Bearer {SECRET}"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answer: dict[str, object] = json.loads(response.read())
        return answer


@pytest.mark.timeout(300)
async def test_three_servers_one_killed_every_parent_settled_once_with_its_own_result(
    temporal_server: DevServer, temporal_client: Client, postgres_store_url: str, tmp_path: Path
) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text(f"webhooks settle,read {SECRET}\n")
    logs = [tmp_path / f"server-{n}.log" for n in range(3)]
    servers = [
        await asyncio.to_thread(
            serve_process, postgres_store_url, temporal_server.url, keys, log, "--reconcile-every", "1"
        )
        for log in logs
    ]
    answers: list[dict[str, object]] = []
    try:
        async with await Handshake.connect(store=postgres_store_url, temporal=temporal_server.url) as hs:
            task_queue = f"cluster-{uuid.uuid4()}"
            callers = CallerActivities(hs)
            async with Worker(temporal_client, task_queue=task_queue, workflows=[AgentParent],
                              activities=[callers.run_agent], max_concurrent_activities=64):  # fmt: skip
                requests = [AgentRequest(f"cluster-{n}-{uuid.uuid4()}", f"prompt {n}") for n in range(PARENTS)]
                parents = await asyncio.gather(*(
                    temporal_client.start_workflow(AgentParent.run, r, id=f"p-{r.execution_id}", task_queue=task_queue)
                    for r in requests
                ))  # fmt: skip
                async with asyncio.timeout(120):
                    while len(await hs.list(phase="PENDING", limit=PARENTS)) < PARENTS:
                        await asyncio.sleep(0.2)
                queue: asyncio.Queue[tuple[int, AgentRequest]] = asyncio.Queue()
                for n, request in enumerate(requests):
                    queue.put_nowait((n, request))
                killed = asyncio.Event()
                refused = 0

                async def sender() -> None:
                    nonlocal refused
                    while not queue.empty():
                        n, request = queue.get_nowait()
                        if n == PARENTS // 3 and not killed.is_set():
                            servers[2][0].send_signal(signal.SIGKILL)  # mid-stream: requests in flight are cut
                            killed.set()
                        answer = expected_answer(request.prompt)
                        body = {"answer": answer.answer, "tokens_used": answer.tokens_used, "sources": answer.sources}
                        for attempt in range(6):  # the sender's retries: the next server each time
                            _, url = servers[(n + attempt) % 3]
                            try:
                                answers.append(
                                    await asyncio.to_thread(
                                        post, f"{url}/v1/executions/{request.execution_id}:complete", body
                                    )
                                )
                                break
                            except (urllib.error.URLError, ConnectionError, TimeoutError):
                                refused += 1
                        else:
                            raise AssertionError(f"{request.execution_id} was never accepted")

                await asyncio.gather(*(sender() for _ in range(SENDERS)))
                assert killed.is_set() and refused > 0, "the kill cut some requests"
                # Settles the killed server committed but did not deliver are delivered by the others'
                # reconcilers once its delivery lease runs out.
                results = await asyncio.wait_for(asyncio.gather(*(p.result() for p in parents)), 120)
            assert results == [expected_answer(r.prompt) for r in requests], "each parent got its own result"
            assert all(isinstance(a, AgentAnswer) for a in results)
            outcomes = [a["outcome"] for a in answers]
            assert set(outcomes) <= {"delivered", "already_settled", "recorded", "retrying"}, set(outcomes)
            # A callback the killed server was delivering when it died stays `delivering` until its lease
            # runs out; a survivor's reconciler then finds the parent already told (the kill fell between the
            # RPC and its record) and closes it as gone. None is left unfinished, none was sent twice.
            async with asyncio.timeout(90):
                while True:
                    states = [(await hs.inspect(r.execution_id)).callback_state for r in requests]
                    if set(states) <= {"delivered", "gone"}:
                        break
                    await asyncio.sleep(1)
            print(f"\ncallback states: delivered {states.count('delivered')}, gone {states.count('gone')}")
            histories = [await p.fetch_history() for p in parents[:50]]
            for history in histories:
                completions = [e for e in history.events if e.HasField("activity_task_completed_event_attributes")]
                assert len(completions) == 1, "the parent activity completed once"
            print(f"\n{PARENTS} settles through 3 servers, one killed: {refused} refused or cut requests retried")
    finally:
        codes = [stop_server(process, log) for (process, _), log in zip(servers, logs, strict=True)]
        TRANSCRIPT.append(json.dumps(answers))
    assert codes[:2] == [0, 0], "the survivors stop gracefully"
