"""B2/B4's settling process: settle every pending activity listed in a file, and report wall and CPU time.

    python -m stigmer_handshake.bench.settle raw|direct|sqlite|postgres STORE TEMPORAL_URL CONCURRENCY < LISTING

prints one JSON line.

Each path settles from a process of its own, so the CPU figure is the settling side's alone (not the
worker's workflow tasks). `direct` is this library's own completion by token, without the store
(`complete_activity`): what the handshake's path costs before its durable write. The listing on standard
input has one line per activity: its key, and for `raw` and `direct` its task token in hex (a pipe, so
the tokens are never written to disk).
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time

from temporalio.client import Client

from stigmer_handshake import Handshake


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def main(path: str, store: str, temporal: str, lines: list[str], concurrency: int) -> dict[str, float]:
    gate = asyncio.Semaphore(concurrency)
    tokens = {key: bytes.fromhex(rest[0]) for key, *rest in (line.split() for line in lines) if rest}
    keys = [line.split()[0] for line in lines]
    if path == "raw":
        client = await Client.connect(temporal.removeprefix("http://"))

        async def settle(key: str) -> None:
            async with gate:
                await client.get_async_activity_handle(task_token=tokens[key]).complete(key)

    elif path == "direct":
        hs = await Handshake.connect(store=store, temporal=temporal)

        async def settle(key: str) -> None:
            async with gate:
                await hs.complete_activity(key, token=tokens[key])

    else:
        hs = await Handshake.connect(store=store, temporal=temporal)

        async def settle(key: str) -> None:
            async with gate:
                outcome = (await hs.succeed(key, key)).outcome
                assert outcome == "delivered", outcome

    cpu, wall = cpu_s(), time.monotonic()
    await asyncio.gather(*(settle(k) for k in keys))
    return {"n": len(keys), "wall_s": time.monotonic() - wall, "cpu_s": cpu_s() - cpu}


if __name__ == "__main__":
    path, store, temporal, concurrency = sys.argv[1:5]
    entries = [line for line in sys.stdin.read().splitlines() if line]
    print(json.dumps(asyncio.run(main(path, store, temporal, entries, int(concurrency)))))
