"""B2/B4/B6's settling process: settle every pending activity listed on standard input, and report wall
and CPU time and each settle's latency.

    python -m stigmer_handshake.bench.settle raw|direct|sqlite|postgres|http STORE TEMPORAL_URL CONCURRENCY < LISTING

prints one JSON line.

Each path settles from a process of its own, so the CPU figure is the settling side's alone (not the
worker's workflow tasks). `direct` is this library's own completion by token, without the store
(`complete_activity`): what the handshake's path costs before its durable write. `http` serves the store
(`Handshake.serve`) and settles through its callback URLs, from CONCURRENCY keep-alive HTTP/1.1
connections: the webhook path (its CPU figure is server and clients together). The listing has one line per
activity: its key, and for `raw` and `direct` its task token in hex (a pipe, so the tokens are never
written to disk).
"""

from __future__ import annotations

import asyncio
import json
import resource
import statistics
import sys
import time
import urllib.parse
from typing import Any

from temporalio.client import Client

from stigmer_handshake import Handshake


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def post_all(base: str, jobs: list[tuple[str, bytes]], concurrency: int, latencies: list[float]) -> None:
    """POST each (path, body) over `concurrency` keep-alive connections; every answer must be `delivered`."""
    url = urllib.parse.urlsplit(base)
    queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
        while not queue.empty():
            path, body = queue.get_nowait()
            started = time.perf_counter()
            head = f"POST {path} HTTP/1.1\r\nhost: {url.netloc}\r\ncontent-length: {len(body)}\r\n\r\n"
            writer.write(head.encode() + body)
            await writer.drain()
            status = (await reader.readline()).split()[1]
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            answer = json.loads(await reader.readexactly(length))
            assert status == b"200" and answer["outcome"] == "delivered", answer
            latencies.append(time.perf_counter() - started)
        writer.close()

    await asyncio.gather(*(connection() for _ in range(concurrency)))


async def main(path: str, store: str, temporal: str, lines: list[str], concurrency: int) -> dict[str, Any]:
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
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

    elif path == "http":
        hs = await Handshake.connect(store=store, temporal=temporal)
        server = await hs.serve(insecure_localhost=True)
        # The body is the JSON of the key: the parent decodes the same result as from `succeed(key, key)`.
        jobs = [
            (urllib.parse.urlsplit(server.callback_url(k)).path + ":complete", json.dumps(k).encode()) for k in keys
        ]
        cpu, wall = cpu_s(), time.monotonic()
        await post_all(server.url, jobs, concurrency, latencies)
        return figures(len(keys), time.monotonic() - wall, cpu_s() - cpu, latencies)

    else:
        hs = await Handshake.connect(store=store, temporal=temporal)

        async def settle(key: str) -> None:
            async with gate:
                started = time.perf_counter()
                outcome = (await hs.succeed(key, key)).outcome
                assert outcome == "delivered", outcome
                latencies.append(time.perf_counter() - started)

    cpu, wall = cpu_s(), time.monotonic()
    await asyncio.gather(*(settle(k) for k in keys))
    return figures(len(keys), time.monotonic() - wall, cpu_s() - cpu, latencies)


def figures(n: int, wall_s: float, cpu: float, latencies: list[float]) -> dict[str, Any]:
    """Wall and CPU seconds, each settle's latency at p50 and p99 (ms; 0 when not measured), and when."""
    latencies.sort()
    p50 = 1000 * statistics.median(latencies) if latencies else 0.0
    p99 = 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else 0.0
    # The window on CLOCK_MONOTONIC (perf's clock under `bench --profile`): where the settles ran.
    ended = time.monotonic()
    return {"n": n, "wall_s": wall_s, "cpu_s": cpu, "p50_ms": p50, "p99_ms": p99, "window": [ended - wall_s, ended]}


if __name__ == "__main__":
    path, store, temporal, concurrency = sys.argv[1:5]
    entries = [line for line in sys.stdin.read().splitlines() if line]
    print(json.dumps(asyncio.run(main(path, store, temporal, entries, int(concurrency)))))
