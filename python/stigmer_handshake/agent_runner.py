"""An agent runner: claims pending AgentExecutions, runs them, and settles each parent activity.

    python -m stigmer_handshake.agent_runner --store sqlite:///handshake.db --temporal http://127.0.0.1:7233

It is a separate process from the Temporal worker that deferred the work: all it shares with the worker
is the store. Each "agent" here thinks for a while, reports progress, and answers.
"""

from __future__ import annotations

import argparse
import asyncio
import random

from stigmer_handshake import Handshake, pb


async def run_agent(hs: Handshake, execution: pb.AgentExecution) -> None:
    execution_id = execution.metadata.id
    steps = 3
    status = pb.AgentExecutionStatus(phase=pb.ExecutionPhase.EXECUTION_PHASE_IN_PROGRESS)
    for step in range(steps):
        await asyncio.sleep(random.uniform(0.3, 0.8))
        status.todos[f"step-{step}"].CopyFrom(
            pb.TodoItem(
                id=f"step-{step}", content=f"think ({step + 1}/{steps})", status=pb.TodoStatus.TODO_STATUS_COMPLETED
            )
        )
        # The status update rides on the pump's next heartbeat as progress ("todos_done": step + 1, ...).
        await hs.update_status(execution_id, status)
        signals = hs.parent_signals(execution_id)
        if signals is not None and signals.cancel_requested:
            await hs.cancel(execution_id, "cancelled by the parent")
            return
    status.messages.add(type=pb.MessageType.MESSAGE_TYPE_AI, content=f"Answer to: {execution.spec.message}")
    answer = {"answer": f"answer to {execution.spec.message!r}", "tokens_used": random.randint(100, 900)}
    await hs.succeed(execution_id, answer, status=status)


async def main(store: str, temporal: str, count: int, concurrency: int) -> None:
    hs = await Handshake.connect(store=store, temporal=temporal)
    running: set[asyncio.Task[None]] = set()
    finished = 0
    while count <= 0 or finished + len(running) < count:
        room = concurrency - len(running)
        claimed = await hs.claim("agent", limit=room) if room > 0 else []
        for execution in claimed:
            assert isinstance(execution, pb.AgentExecution)
            task = asyncio.create_task(run_agent(hs, execution))
            running.add(task)
        done = {t for t in running if t.done()}
        for task in done:
            task.result()  # surface a runner bug instead of hiding it
        finished += len(done)
        running -= done
        await asyncio.sleep(0.05 if claimed else 0.1)
    await asyncio.gather(*running)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True, help="store URL shared with the worker")
    parser.add_argument("--temporal", required=True, help="Temporal URL, e.g. http://127.0.0.1:7233")
    parser.add_argument("--count", type=int, default=0, help="stop after this many executions (0: run forever)")
    parser.add_argument("--concurrency", type=int, default=100, help="agents run at once")
    args = parser.parse_args()
    asyncio.run(main(args.store, args.temporal, args.count, args.concurrency))
