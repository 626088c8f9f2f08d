"""B7: what each store operation costs with few and with many executions stored.

A store is seeded with `rows` ended executions (created and completed through the store's batch writer,
2,000 at a time) and 1,000 waiting ones (each with a parent's task token, armed) by a child process, and
vacuumed as a maintained PostgreSQL would be; then each operation is timed one call at a time and its
median taken.
Run at two sizes, the figures sit side by side with their ratio: an operation whose cost grows with the
table shows a ratio far above 1.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

from stigmer_handshake import Handshake, pb
from stigmer_handshake.testing import task_token

WAITING = 1_000
WAITING_IDS = tuple(f"waiting-{i}" for i in range(WAITING))
SEED_BATCH = 2_000
REPEAT = 30
SPEC = pb.AgentExecutionSpec(agent_id="bench", message="scale")

#: The CLI's own memory and time for one listing: run in a child that prints its peak RSS on stderr. The
#: peak is VmHWM, its own address space's: getrusage's ru_maxrss survives exec on Linux, so a child of a
#: big process would report its parent's peak.
CLI_WITH_RSS = (
    "import sys\n"
    "from stigmer_handshake.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "peak = [line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM:')]\n"
    "print('MAXRSS_KB', peak[0], file=sys.stderr)\n"
    "sys.exit(code)\n"
)


#: Seeds a store in a child process (see `measure`): `python -c SEED <store> <rows>`.
SEED = (
    "import asyncio, sys\n"
    "from stigmer_handshake.bench import scale\n"
    "asyncio.run(scale.seed(sys.argv[1], int(sys.argv[2]), lambda line: print(line, file=sys.stderr)))\n"
)


async def seed(store: str, rows: int, say: Callable[[str], None]) -> None:
    """`rows` ended direct executions and the armed `WAITING_IDS`."""
    async with await Handshake.connect(store=store, temporal=None, retention=None) as hs:
        started = time.monotonic()
        for first in range(0, rows, SEED_BATCH):
            ids = [f"ended-{i}" for i in range(first, min(rows, first + SEED_BATCH))]
            await asyncio.gather(*(hs.create(SPEC, execution_id=i) for i in ids))
            await asyncio.gather(*(hs.succeed(i, "done") for i in ids))
            if first % 100_000 == 0 and first:
                say(f"  seeded {first} in {time.monotonic() - started:.0f} s")
        await asyncio.gather(
            *(hs.create(SPEC, execution_id=i, token=task_token("bench-namespace", f"parent-{i}")) for i in WAITING_IDS)
        )


def vacuum(store: str) -> None:
    """On PostgreSQL, what autovacuum does by itself once a fifth of a table changed (VACUUM, ANALYZE):
    until then, each settled row's earlier version stays in the indexes, and claims and PENDING lists walk
    past a million dead entries (about 20 ms at 1M, measured where autovacuum is off). SQLite: nothing."""
    if not store.startswith(("postgres://", "postgresql://")):
        return
    import psycopg

    url = urllib.parse.urlsplit(store)
    params = urllib.parse.parse_qs(url.query)
    schema = params.pop("schema", ["public"])[0]
    base = url._replace(query=urllib.parse.urlencode(params, doseq=True)).geturl()
    with psycopg.connect(base, autocommit=True) as conn:
        for table in ("executions", "callbacks"):
            conn.execute(f'VACUUM (ANALYZE) "{schema}".{table}')


async def p50_ms(call: Callable[[], Awaitable[Any]], repeat: int = REPEAT) -> float:
    """The median of `repeat` calls one at a time, in ms (one call first, unmeasured, to warm caches)."""
    await call()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        await call()
        times.append(1000 * (time.perf_counter() - started))
    return statistics.median(times)


async def measure(store: str, temporal: str, rows: int, say: Callable[[str], None]) -> dict[str, float]:
    """Each operation's median (ms) on a store seeded with `rows` ended executions; the CLI listing's wall
    time (s) and peak memory (MB)."""
    say(f"  seeding {rows} ...")
    # In a child: what seeding leaves in a process (a million records made and dropped, its store
    # connection) is not timed with the operations. Measured: in the seeding process, a get at 1M took
    # 0.42-0.47 ms against 0.15-0.19 ms in a fresh one on the same store.
    await asyncio.to_thread(subprocess.run, [sys.executable, "-c", SEED, store, str(rows)], check=True)
    vacuum(store)
    figures: dict[str, float] = {}
    # Store only (the tokens are made up: nothing is heartbeated or delivered), except the reconcile pass.
    async with await Handshake.connect(store=store, temporal=None, retention=None) as hs:
        figures["create"] = await p50_ms(lambda: hs.create(SPEC))
        figures["get"] = await p50_ms(lambda: hs.inspect(WAITING_IDS[WAITING // 2]))
        direct = iter([await hs.create(SPEC) for _ in range(REPEAT + 1)])
        figures["store-only settle"] = await p50_ms(lambda: hs.succeed(next(direct), "done"))
        figures["burst of 64 creates"] = await p50_ms(lambda: asyncio.gather(*(hs.create(SPEC) for _ in range(64))))
        figures["metrics scrape"] = await p50_ms(hs.metrics)
        figures["list(limit=100)"] = await p50_ms(lambda: hs.list(limit=100))
        figures["list(phase=PENDING)"] = await p50_ms(lambda: hs.list(phase="PENDING"))
        figures["list(state=armed)"] = await p50_ms(lambda: hs.list(state="armed"))
        figures["undelivered count"] = await p50_ms(hs.undelivered)
        figures["claim(limit=1)"] = await p50_ms(lambda: hs.claim("agent", 1, lease=3600))
    async with await Handshake.connect(store=store, temporal=temporal, retention=None) as hs:
        figures["reconcile pass, nothing due"] = await p50_ms(hs.reconcile, repeat=10)
    started = time.monotonic()
    listing = subprocess.run(
        [sys.executable, "-c", CLI_WITH_RSS, "--store", store, "list", "--state", "armed", "--limit", "100"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    figures["CLI list --state armed (s)"] = time.monotonic() - started
    rss = [line.split()[1] for line in listing.stderr.splitlines() if line.startswith("MAXRSS_KB")]
    figures["CLI list --state armed (MB)"] = int(rss[-1]) / 1024
    return figures


async def b7(
    stores: dict[str, Callable[[], str]], temporal: str, sizes: list[int], say: Callable[[str], None]
) -> dict[str, float]:
    """Every operation at each size on each store (`stores`: name -> a fresh store's URL, one per size):
    `{"<store>|<size>|<operation>": value}`."""
    results: dict[str, float] = {"sizes": len(sizes)}
    for name, fresh in stores.items():
        for rows in sizes:
            say(f"B7 {name}: {rows} ended executions ...")
            for op, value in (await measure(fresh(), temporal, rows, say)).items():
                results[f"{name}|{rows}|{op}"] = value
    return results


def rows(results: dict[str, float], sizes: list[int]) -> list[tuple[str, ...]]:
    """The table's rows: each operation at the largest size beside the smallest, and their ratio."""
    small, large = min(sizes), max(sizes)
    table: list[tuple[str, ...]] = []
    stores = sorted({key.split("|")[0] for key in results if "|" in key})
    for store in stores:
        ops = [key.split("|")[2] for key in results if key.startswith(f"{store}|{small}|")]
        for op in ops:
            low, high = results[f"{store}|{small}|{op}"], results.get(f"{store}|{large}|{op}", float("nan"))
            unit = {"(s)": " s", "(MB)": " MB"}.get(op.split()[-1], " ms")
            target = {"(s)": "< 0.5 s", "(MB)": "< 100 MB"}.get(op.split()[-1], "<= 1.5x")
            table.append((
                f"B7 {op}", f"{store}, {large:,} vs {small:,} ended", f"{high:.2f}{unit}", f"{low:.2f}{unit}",
                f"{high / low:.2f}x" if low else "-", target,
            ))  # fmt: skip
    return table
