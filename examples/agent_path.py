"""The agent path, start to end: a parent workflow waits for an AI agent run without holding a worker slot.

    python examples/agent_path.py

1. The caller activity `research` stores an AgentExecution with its task token and goes pending.
2. A runner (here a task in this script; normally its own process, see stigmer_handshake/agent_runner.py)
   claims it (from then on its process heartbeats the parent), reports progress, and succeeds with the
   agent's answer.
3. The parent activity resumes with a typed `Report`; the execution is COMPLETED and holds no token.
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import Worker

with workflow.unsafe.imports_passed_through():
    from stigmer_handshake import Handshake, pb
    from stigmer_handshake.testing import DevServer, sqlite_url


@dataclass
class Report:
    summary: str
    confidence: float


class Activities:
    def __init__(self, hs: Handshake) -> None:
        self.hs = hs

    @activity.defn
    async def research(self, topic: str) -> Report:
        # Stores the execution with this activity's task token, then raises complete-async:
        # the worker slot is free at once, and the parent waits for the runner's result.
        await self.hs.defer(pb.AgentExecutionSpec(agent_id="researcher", message=topic))


@workflow.defn
class ResearchWorkflow:
    @workflow.run
    async def run(self, topic: str) -> Report:
        return await workflow.execute_activity_method(
            Activities.research, topic, start_to_close_timeout=timedelta(hours=2)
        )


async def runner(store: str, temporal: str) -> None:
    hs = await Handshake.connect(store=store, temporal=temporal)
    while not (claimed := await hs.claim("agent")):
        await asyncio.sleep(0.1)
    execution = claimed[0]
    for step in range(3):
        await asyncio.sleep(0.3)  # the agent thinks
        await hs.report_progress(execution.metadata.id, {"step": step + 1, "of": 3})
        signals = hs.parent_signals(execution.metadata.id)
        if signals is not None and signals.cancel_requested:
            await hs.cancel(execution.metadata.id)
            return
    settlement = await hs.succeed(execution.metadata.id, Report(f"all about {execution.spec.message}", 0.92))
    print(f"runner: settled {execution.metadata.id}: {settlement.outcome}")


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with DevServer() as server:
            store = sqlite_url(tmp)
            client = await Client.connect(server.address)
            hs = await Handshake.connect(store=store, temporal=server.url)
            acts = Activities(hs)
            async with Worker(client, task_queue="research", workflows=[ResearchWorkflow], activities=[acts.research]):
                agent = asyncio.create_task(runner(store, server.url))
                report = await client.execute_workflow(
                    ResearchWorkflow.run, "tides", id="research-tides", task_queue="research"
                )
                await agent
            print(f"parent workflow got: {report!r}")
            [record] = await hs.list(kind="agent")
            print(
                f"execution {record.id}: phase {record.phase}, callback {record.callback_state}, "
                f"token {record.token_fingerprint}"
            )


if __name__ == "__main__":
    asyncio.run(main())
