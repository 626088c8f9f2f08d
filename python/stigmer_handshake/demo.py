"""The main job: one parent workflow fans out many agent runs through a handful of activity slots.

    stigmer-handshake demo --executions 60 --slots 4        (or: make demo)

Everything is real and local: its own Temporal dev server, an SQLite store in a temporary folder, a
Temporal worker with only SLOTS activity slots, and an agent runner in a separate process. Each caller
activity stores its task token with the AgentExecution and frees its slot at once; the runner settles the
parents as the agents finish.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta

from google.protobuf.timestamp_pb2 import Timestamp
from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.common import RetryPolicy
from temporalio.worker import Worker

with workflow.unsafe.imports_passed_through():
    from stigmer_handshake import Handshake, pb
    from stigmer_handshake.testing import DevServer, sqlite_url


@dataclass
class Question:
    execution_id: str
    text: str


@dataclass
class Answer:
    answer: str
    tokens_used: int


class Caller:
    def __init__(self, hs: Handshake) -> None:
        self.hs = hs

    @activity.defn
    async def ask_agent(self, question: Question) -> Answer:
        spec = pb.AgentExecutionSpec(agent_id="researcher", message=question.text)
        await self.hs.defer(spec, execution_id=question.execution_id)


@workflow.defn
class FanOut:
    @workflow.run
    async def run(self, questions: list[Question]) -> list[Answer]:
        calls = [
            workflow.execute_activity_method(
                Caller.ask_agent,
                q,
                start_to_close_timeout=timedelta(minutes=10),
                retry_policy=RetryPolicy(maximum_attempts=1),
            )
            for q in questions
        ]
        return list(await asyncio.gather(*calls))


def bar(done: int, total: int, width: int = 40) -> str:
    filled = width * done // max(total, 1)
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}"


async def progress(hs: Handshake, total: int, runner: asyncio.subprocess.Process) -> None:
    """Draw a progress bar from the store until every agent run has ended (or the runner died)."""
    tty = sys.stderr.isatty()
    last = -1
    while True:
        if runner.returncode not in (None, 0):
            raise SystemExit(f"the agent runner exited with code {runner.returncode}")
        records = await hs.list(kind="agent", limit=total + 1)
        ended = sum(r.phase in ("COMPLETED", "FAILED", "CANCELLED") for r in records)
        running = sum(r.phase == "IN_PROGRESS" for r in records)
        if tty or ended != last:  # redraw in place on a terminal, one line per change in a log
            line = f"  agents {bar(ended, total)}  running {running:3d}  pending parents {total - ended:3d}"
            print(f"\r{line}" if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)
            last = ended
        if ended == total:
            if tty:
                print(file=sys.stderr)
            return
        await asyncio.sleep(0.2)


def seconds(ts: Timestamp) -> float:
    return float(ts.seconds + ts.nanos / 1e9)


async def main(executions: int, slots: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        print(f"Starting a Temporal dev server and an SQLite store in {tmp} ...", file=sys.stderr)
        async with DevServer() as server:
            client = await Client.connect(server.address)
            store = sqlite_url(tmp)
            hs = await Handshake.connect(store=store, temporal=server.url)
            runner = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "stigmer_handshake.agent_runner",
                "--store",
                store,
                "--temporal",
                server.url,
                "--count",
                str(executions),
            )
            task_queue = f"demo-{uuid.uuid4()}"
            questions = [Question(f"agent-{i:03d}", f"question {i}") for i in range(executions)]
            caller = Caller(hs)
            async with Worker(
                client, task_queue=task_queue, workflows=[FanOut], activities=[caller.ask_agent],
                max_concurrent_activities=slots,
            ):  # fmt: skip
                print(
                    f"Parent workflow fans out {executions} agent runs through {slots} activity slots:", file=sys.stderr
                )
                started = time.monotonic()
                handle = await client.start_workflow(
                    FanOut.run, questions, id=f"fan-out-{uuid.uuid4()}", task_queue=task_queue
                )
                await progress(hs, executions, runner)
                answers = await handle.result()
                wall = time.monotonic() - started
            await runner.wait()

            durations = []
            for q in questions:
                execution = await hs.get(q.execution_id, include_token=True)
                assert execution.status.callback_token == b"", "tokens are cleared once settled"
                durations.append(seconds(execution.status.completed_at) - seconds(execution.status.started_at))
            blocking = sum(durations) / slots
            assert len(answers) == executions and all(a.answer.startswith("answer to") for a in answers)

    print("\nSummary")
    print(f"  executions           {executions} agent runs, every parent activity got its typed result")
    print(f"  activity slots       {slots}")
    print(f"  wall time            {wall:.1f} s (parent workflow start to its result)")
    print(f"  agent run time       {sum(durations):.1f} s in all, {sum(durations) / executions:.2f} s each on average")
    print(
        f"  blocking the slots   at least {blocking:.1f} s: each activity would hold one of "
        f"{slots} slots while its agent runs"
    )
    print(f"  handshake advantage  {blocking / wall:.1f}x faster than blocking")
