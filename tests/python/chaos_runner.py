"""An agent runner for the chaos test: it is SIGKILLed and aborted at random, and restarted.

    python tests/python/chaos_runner.py STORE_URL TEMPORAL_URL [both|runner|reconciler]

A runner claims with a short lease so a dead runner's work is taken over quickly, and answers each prompt
with `expected_answer`, or as its first word says: "flaky" fails retryably unless the execution retries
one that failed, "fatal" fails for good (type FATAL), "cancel" waits for the parent to ask and cancels,
"hold" holds the child for 5 s (the pump heartbeats its parent meanwhile) before it answers; a reconciler
runs the reconciler at start-up, then every 0.5 s. "both" (the default) is one process doing both.
"""

from __future__ import annotations

import asyncio
import random
import sys

from stigmer_handshake import Handshake, HandshakeError, pb

from flows import expected_answer


async def run(hs: Handshake, execution: pb.AgentExecution) -> None:
    """Work on one execution until it is settled: an error (Temporal down for a heartbeat, the store busy)
    is said and the work starts again, as a runner that holds a claim must (its pump keeps the claim)."""
    while True:
        try:
            await work(hs, execution)
            return
        except HandshakeError as err:
            print(f"chaos runner: {execution.metadata.id}: {type(err).__name__}; again", file=sys.stderr, flush=True)
            await asyncio.sleep(1)


async def work(hs: Handshake, execution: pb.AgentExecution) -> None:
    execution_id, prompt = execution.metadata.id, execution.spec.message
    await asyncio.sleep(random.uniform(0, 0.2))
    await hs.heartbeat(execution_id)
    how = prompt.split(" ", 1)[0]
    if how == "flaky" and (await hs.inspect(execution_id)).retry_of is None:
        await hs.fail(execution_id, f"{prompt}: try again", type="FLAKY")
    elif how == "fatal":
        await hs.fail(execution_id, f"{prompt}: cannot", type="FATAL", non_retryable=True)
    elif how == "cancel":
        await hs.cancellation(execution_id)
        await hs.cancel(execution_id, "stopped on request")
    else:
        if how == "hold":
            await asyncio.sleep(5)
        await hs.succeed(execution_id, expected_answer(prompt))


async def main(store: str, temporal: str, role: str) -> None:
    if role not in ("both", "runner", "reconciler"):
        raise SystemExit(f"unknown role {role!r}")
    hs = await Handshake.connect(store=store, temporal=temporal, reconcile_every=None if role == "runner" else 0.5)
    if role == "reconciler":
        await asyncio.Event().wait()
    running: set[asyncio.Task[None]] = set()
    while True:
        for execution in await hs.claim("agent", limit=16, lease=2.0):
            task = asyncio.create_task(run(hs, execution))
            running.add(task)
            task.add_done_callback(running.discard)
        await asyncio.sleep(0.05)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "both"))
