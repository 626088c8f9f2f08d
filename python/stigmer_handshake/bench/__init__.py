"""Benchmarks, each figure beside its baseline measured in the same run.

    stigmer-handshake bench --out bench-results.json        (make bench: the same, on the release build)

Starts its own Temporal dev server and SQLite store, and uses a schema of its own in PostgreSQL for B2's
third path (STIGMER_HANDSHAKE_TEST_POSTGRES, or the local server; said so when there is none). Absolute
times drift on a small machine; the ratios are the point. Prints a table and writes the same figures as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.common import RetryPolicy
from temporalio.worker import Worker

with workflow.unsafe.imports_passed_through():
    from stigmer_handshake import Handshake, pb
    from stigmer_handshake.bench import profile, scale
    from stigmer_handshake.testing import DevServer, PostgresSchema, postgres_unavailable, sqlite_url

NO_RETRY = RetryPolicy(maximum_attempts=1)


@dataclass
class Call:
    key: str
    mode: str  # "block", "handshake" or "raw"
    child_seconds: float = 0.0
    heartbeat_timeout: float = 0.0


class Callers:
    def __init__(self, hs: Handshake) -> None:
        self.hs = hs
        self.raw_tokens: dict[str, bytes] = {}

    @activity.defn
    async def call(self, call: Call) -> str:
        if call.mode == "block":  # the baseline: the activity holds its slot while the child runs
            await asyncio.sleep(call.child_seconds)
            return call.key
        if call.mode == "raw":  # the raw SDK path: keep the token in memory, complete it by hand
            self.raw_tokens[call.key] = activity.info().task_token
            activity.raise_complete_async()
        await self.hs.defer(pb.AgentExecutionSpec(agent_id="bench", message=call.key), execution_id=call.key)
        raise AssertionError("unreachable")


@workflow.defn
class FanOut:
    @workflow.run
    async def run(self, calls: list[Call]) -> list[str]:
        return list(
            await asyncio.gather(
                *(
                    workflow.execute_activity_method(
                        Callers.call,
                        c,
                        start_to_close_timeout=timedelta(hours=1),
                        heartbeat_timeout=timedelta(seconds=c.heartbeat_timeout) or None,
                        retry_policy=NO_RETRY,
                    )
                    for c in calls
                )
            )
        )


class Bench:
    def __init__(
        self, client: Client, server: DevServer, store: str, hs: Handshake, profile_dir: Path | None = None
    ) -> None:
        self.client, self.server, self.store, self.hs = client, server, store, hs
        self.callers = Callers(hs)
        # With a folder: B2's settling processes run under perf, and `profiles` holds each path's parts.
        self.profile_dir = profile_dir
        self.profiles: dict[str, dict[str, float]] = {}

    def worker(self, task_queue: str, slots: int) -> Worker:
        return Worker(
            self.client, task_queue=task_queue, workflows=[FanOut], activities=[self.callers.call],
            max_concurrent_activities=slots, max_concurrent_workflow_tasks=20,
        )  # fmt: skip

    async def fan_out(self, calls: list[Call], task_queue: str, per_parent: int = 100) -> list[Any]:
        return [
            await self.client.start_workflow(
                FanOut.run, calls[i : i + per_parent], id=f"bench-{uuid.uuid4()}", task_queue=task_queue
            )
            for i in range(0, len(calls), per_parent)
        ]

    async def wait_all_pending(self, calls: list[Call], raw: bool) -> None:
        """Wait until every call's activity has gone pending (token kept, or execution stored)."""
        keys = {c.key for c in calls}
        # The store is read in pages from the last full one: each execution about once, however many.
        found: set[str] = set()
        token: str | None = None
        while True:
            more = False
            if raw:
                done = keys <= self.callers.raw_tokens.keys()
            else:
                page = await self.hs.list(kind="agent", limit=1000, page_token=token)
                found.update(r.id for r in page if r.id in keys)
                more = page.next_page_token is not None
                token = page.next_page_token or token  # a partial last page is read again next time
                done = found == keys
            if done:
                return
            if not more:
                await asyncio.sleep(0.2)

    async def b1_slots(self, n: int, child_seconds: float, slots: int) -> dict[str, float]:
        """N children of child_seconds each behind `slots` activity slots: handshake vs blocking, and the
        raw SDK's complete-async (tokens kept in memory, no store): what Temporal itself allows here."""
        results = {}
        for mode in ("block", "raw", "handshake"):
            task_queue = f"b1-{mode}-{uuid.uuid4()}"
            calls = [Call(f"b1-{mode}-{i}-{uuid.uuid4().hex[:6]}", mode, child_seconds) for i in range(n)]
            runner = None
            if mode == "handshake":
                runner = asyncio.create_task(self.run_children(n, child_seconds))
            elif mode == "raw":
                runner = asyncio.create_task(self.run_raw_children(calls, child_seconds))
            async with self.worker(task_queue, slots):
                started = time.monotonic()
                handles = await self.fan_out(calls, task_queue)
                await asyncio.gather(*(h.result() for h in handles))
                results[mode] = time.monotonic() - started
            if runner is not None:
                await runner
        blocking = results["block"]
        return {"n": n, "slots": slots, "child_seconds": child_seconds, "blocking_s": blocking,
                "raw_s": results["raw"], "handshake_s": results["handshake"],
                "ratio": blocking / results["handshake"], "ratio_raw": blocking / results["raw"],
                "ratio_to_raw": results["raw"] / results["handshake"]}  # fmt: skip

    async def run_raw_children(self, calls: list[Call], child_seconds: float) -> None:
        """B1's raw runner: each child runs child_seconds from when its activity went pending, then its
        token (held in memory) is completed with the SDK."""
        started: dict[str, asyncio.Task[None]] = {}

        async def child(key: str) -> None:
            await asyncio.sleep(child_seconds)
            await self.client.get_async_activity_handle(task_token=self.callers.raw_tokens[key]).complete(key)

        while len(started) < len(calls):
            for call in calls:
                if call.key not in started and call.key in self.callers.raw_tokens:
                    started[call.key] = asyncio.create_task(child(call.key))
            await asyncio.sleep(0.02)
        await asyncio.gather(*started.values())

    async def run_children(self, n: int, child_seconds: float) -> None:
        """A runner: claims children as they appear, each runs child_seconds, then settles."""
        runner = await Handshake.connect(store=self.store, temporal=self.server.url)
        tasks: list[asyncio.Task[Any]] = []

        async def child(execution_id: str) -> None:
            await asyncio.sleep(child_seconds)
            await runner.succeed(execution_id, execution_id)

        while len(tasks) < n:
            claimed = await runner.claim("agent", limit=500)
            tasks += [asyncio.create_task(child(c.metadata.id)) for c in claimed]
            await asyncio.sleep(0.02)
        await asyncio.gather(*tasks)

    async def settle_all(self, calls: list[Call], path: str, concurrency: int) -> dict[str, float]:
        """Settle every pending activity from a separate process; returns its figures (wall and CPU
        seconds, latency p50 and p99 in ms).

        The raw path's tokens go to that process through a pipe, never through a file or a log."""
        by_token = path in ("raw", "direct")
        listing = "".join(f"{c.key} {self.callers.raw_tokens[c.key].hex() if by_token else ''}\n" for c in calls)
        samples = self.profile_dir / f"{path}.perf.data" if self.profile_dir else None
        done = subprocess.run(
            [*(profile.wrapper(samples) if samples else []), sys.executable, "-m", "stigmer_handshake.bench.settle",
             path, self.store, self.server.url, str(concurrency)],
            input=listing, capture_output=True, text=True, check=True,
        )  # fmt: skip
        figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        if samples:
            self.profiles[path] = profile.breakdown(samples, figures["window"], len(calls))
        return figures

    async def settle_throughput(self, path: str, n: int, concurrency: int) -> dict[str, float]:
        """N pending activities settled from one process: settles per second, CPU ms per settle, and each
        settle's latency p50 and p99 (ms)."""
        task_queue = f"b2-{path}-{uuid.uuid4()}"
        by_token = path in ("raw", "direct")
        calls = [Call(f"b2-{path}-{i}-{uuid.uuid4().hex[:6]}", "raw" if by_token else "handshake") for i in range(n)]
        async with self.worker(task_queue, 200):
            handles = await self.fan_out(calls, task_queue)
            await self.wait_all_pending(calls, raw=by_token)
            settled = await self.settle_all(calls, path, concurrency)
            await asyncio.gather(*(h.result() for h in handles))
        return {"per_s": n / settled["wall_s"], "cpu_ms": 1000 * settled["cpu_s"] / n,
                "p50_ms": settled["p50_ms"], "p99_ms": settled["p99_ms"]}  # fmt: skip

    async def b2_b4_throughput(self, n: int, concurrency: int, postgres: Bench | None) -> dict[str, float]:
        figures: dict[str, float] = {"n": n, "concurrency": concurrency}
        paths = [("raw", self), ("direct", self), ("sqlite", self)] + ([("postgres", postgres)] if postgres else [])
        for path, bench in paths:
            settled = await bench.settle_throughput(path, n, concurrency)
            figures[f"{path}_per_s"], figures[f"{path}_cpu_ms_per_settle"] = settled["per_s"], settled["cpu_ms"]
            if path != "raw":
                figures[f"ratio_{path}_to_raw"] = settled["per_s"] / figures["raw_per_s"]
                figures[f"cpu_ratio_{path}_to_raw"] = settled["cpu_ms"] / figures["raw_cpu_ms_per_settle"]
        return figures

    async def b6_http(self, n: int, concurrency: int, n_one_by_one: int) -> dict[str, float]:
        """Settles through the HTTP callback endpoint (a server in the settling process, keep-alive clients)
        beside the in-process settle (`succeed`), in the same run: throughput with `concurrency` at once, and
        each settle's latency one at a time (what the HTTP hop adds, without queueing)."""
        figures: dict[str, float] = {"n": n, "concurrency": concurrency, "n_one_by_one": n_one_by_one}
        for path in ("sqlite", "http"):
            loaded = await self.settle_throughput(path, n, concurrency)
            alone = await self.settle_throughput(path, n_one_by_one, 1)
            figures[f"{path}_per_s"] = loaded["per_s"]
            figures[f"{path}_loaded_p50_ms"], figures[f"{path}_loaded_p99_ms"] = loaded["p50_ms"], loaded["p99_ms"]
            figures[f"{path}_p50_ms"], figures[f"{path}_p99_ms"] = alone["p50_ms"], alone["p99_ms"]
        figures["ratio_http_to_inprocess"] = figures["http_per_s"] / figures["sqlite_per_s"]
        for p in ("p50", "p99", "loaded_p50", "loaded_p99"):
            figures[f"added_{p}_ms"] = figures[f"http_{p}_ms"] - figures[f"sqlite_{p}_ms"]
        return figures

    async def b3_latency(self, n: int) -> dict[str, float]:
        """From the settle call to the parent workflow's result, one parent per activity."""
        figures: dict[str, float] = {"n": n}
        for path in ("raw", "sqlite"):
            task_queue = f"b3-{path}-{uuid.uuid4()}"
            calls = [
                Call(f"b3-{path}-{i}-{uuid.uuid4().hex[:6]}", "raw" if path == "raw" else "handshake") for i in range(n)
            ]
            latencies: list[float] = []
            async with self.worker(task_queue, 50):
                handles = await self.fan_out(calls, task_queue, per_parent=1)
                await self.wait_all_pending(calls, raw=path == "raw")
                for call, handle in zip(calls, handles, strict=True):
                    started = time.perf_counter()
                    if path == "raw":
                        await self.client.get_async_activity_handle(
                            task_token=self.callers.raw_tokens[call.key]
                        ).complete(call.key)
                    else:
                        await self.hs.succeed(call.key, call.key)
                    await handle.result()
                    latencies.append(time.perf_counter() - started)
            latencies.sort()
            figures[f"{path}_p50_ms"] = 1000 * statistics.median(latencies)
            figures[f"{path}_p99_ms"] = 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
        figures["added_p50_ms"] = figures["sqlite_p50_ms"] - figures["raw_p50_ms"]
        figures["added_p99_ms"] = figures["sqlite_p99_ms"] - figures["raw_p99_ms"]
        return figures

    async def b5_scale(self, n: int, hold: float) -> dict[str, float]:
        """N pending executions held (and pumped) by one runner process: memory and CPU of that process.

        The runner starts with the first parents and claims each execution as it is stored, so it
        heartbeats every parent from its first claim (a heartbeat timeout runs from the attempt's start).
        The parents' heartbeat timeout is long enough for the server to carry the beats: at a third of it,
        N beats take at most a third of the server's ~500 heartbeats/s on these machines."""
        heartbeat_timeout = max(60.0, 3 * 3 * n / 500)
        deadline = time.monotonic() + max(600.0, n / 50) + hold  # every wait below ends by then
        task_queue = f"b5-{uuid.uuid4()}"
        calls = [
            Call(f"b5-{i}-{uuid.uuid4().hex[:6]}", "handshake", heartbeat_timeout=heartbeat_timeout) for i in range(n)
        ]
        async with self.worker(task_queue, 200):
            holder = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "stigmer_handshake.bench.hold", self.store, self.server.url, str(n), str(hold),
                str(deadline - time.monotonic()), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )  # fmt: skip
            handles = await self.fan_out(calls, task_queue, per_parent=500)
            try:
                out, err = await asyncio.wait_for(holder.communicate(), timeout=deadline - time.monotonic())
            except TimeoutError:
                holder.kill()
                raise SystemExit(f"B5: the runner holding {n} executions did not finish in time") from None
            if holder.returncode != 0:
                raise SystemExit(f"B5: the runner failed ({holder.returncode}): {err.decode(errors='replace')[-2000:]}")
            figures: dict[str, float] = json.loads(out.decode().strip().splitlines()[-1])
            for call in calls:
                await self.hs.succeed(call.key, call.key, wait_for_delivery=False)
            await asyncio.wait_for(
                asyncio.gather(*(h.result() for h in handles)), timeout=max(60.0, deadline - time.monotonic())
            )
        figures.update({"n": n, "hold_s": hold, "heartbeat_timeout_s": heartbeat_timeout})
        return figures


def table(results: dict[str, dict[str, float]], b7_sizes: list[int]) -> str:
    b1, b2, b3, b5, b6, b7 = (results.get(k, {}) for k in ("B1", "B2", "B3", "B5", "B6", "B7"))
    rows: list[tuple[str, ...]] = []
    if b1:
        rows.append(
            ("B1 slots", f"{b1['n']:.0f} children x {b1['child_seconds']:.0f} s, {b1['slots']:.0f} slots",
             f"handshake {b1['handshake_s']:.1f} s", f"blocking {b1['blocking_s']:.1f} s",
             f"{b1['ratio']:.1f}x faster", "")
        )  # fmt: skip
        rows.append(
            ("", "Temporal's own limit: raw SDK async", f"raw SDK {b1['raw_s']:.1f} s",
             f"blocking {b1['blocking_s']:.1f} s", f"{b1['ratio_raw']:.1f}x faster", "")
        )  # fmt: skip
        rows.append(
            ("", "the handshake's speed-up beside the raw SDK's", "", "",
             f"{b1['ratio_to_raw']:.2f} of raw", ">= 0.97")
        )  # fmt: skip
    if b2:
        rows.append(
            ("B2 throughput", f"{b2['n']:.0f} settles, {b2['concurrency']:.0f} at once",
             f"SQLite {b2['sqlite_per_s']:.0f}/s", f"raw SDK {b2['raw_per_s']:.0f}/s",
             f"{b2['ratio_sqlite_to_raw']:.2f} of raw", ">= 0.90")
        )  # fmt: skip
        if "postgres_per_s" in b2:
            rows.append(
                ("", "", f"PostgreSQL {b2['postgres_per_s']:.0f}/s", f"raw SDK {b2['raw_per_s']:.0f}/s",
                 f"{b2['ratio_postgres_to_raw']:.2f} of raw", ">= 0.85")
            )  # fmt: skip
    if b3:
        rows.append(
            ("B3 latency p50", f"{b3['n']:.0f} parents, settle -> parent result",
             f"{b3['sqlite_p50_ms']:.1f} ms", f"raw {b3['raw_p50_ms']:.1f} ms",
             f"{b3['added_p50_ms']:+.1f} ms", "<= +5 ms")
        )  # fmt: skip
        rows.append(
            ("B3 latency p99", "", f"{b3['sqlite_p99_ms']:.1f} ms", f"raw {b3['raw_p99_ms']:.1f} ms",
             f"{b3['added_p99_ms']:+.1f} ms", "<= +20 ms")
        )  # fmt: skip
    if b2:
        rows.append(
            ("B4 client CPU", "per settled callback",
             f"{b2['sqlite_cpu_ms_per_settle']:.2f} ms", f"raw SDK {b2['raw_cpu_ms_per_settle']:.2f} ms",
             f"{b2['cpu_ratio_sqlite_to_raw']:.2f}x raw", "<= 1.3x")
        )  # fmt: skip
        if "postgres_per_s" in b2:
            rows.append(
                ("", "", f"PostgreSQL {b2['postgres_cpu_ms_per_settle']:.2f} ms",
                 f"raw SDK {b2['raw_cpu_ms_per_settle']:.2f} ms", f"{b2['cpu_ratio_postgres_to_raw']:.2f}x raw",
                 "<= 1.1x")
            )  # fmt: skip
        rows.append(
            ("", "the same RPC from this library, no store", f"{b2['direct_cpu_ms_per_settle']:.2f} ms",
             f"raw SDK {b2['raw_cpu_ms_per_settle']:.2f} ms", f"{b2['cpu_ratio_direct_to_raw']:.2f}x raw", "<= 1.0x")
        )  # fmt: skip
    if b5:
        rows.append(
            ("B5 scale", f"{b5['n']:.0f} pending, one runner process",
             f"{b5['rss_kb_per_execution']:.1f} KB each", f"pump CPU {100 * b5['pump_cpu_fraction']:.1f}% of a core",
             f"{b5['heartbeats_per_s']:.0f} heartbeats/s", "<= 2 KB")
        )  # fmt: skip
    if b6:
        rows.append(
            ("B6 HTTP settles", f"{b6['n']:.0f} callback URLs, {b6['concurrency']:.0f} clients",
             f"HTTP {b6['http_per_s']:.0f}/s", f"in-process {b6['sqlite_per_s']:.0f}/s",
             f"{b6['ratio_http_to_inprocess']:.2f} of in-process", ">= 0.8")
        )  # fmt: skip
        rows.append(
            ("B6 latency p50", f"{b6['n_one_by_one']:.0f} settles one at a time", f"HTTP {b6['http_p50_ms']:.1f} ms",
             f"in-process {b6['sqlite_p50_ms']:.1f} ms", f"{b6['added_p50_ms']:+.1f} ms", "<= +2 ms")
        )  # fmt: skip
        rows.append(
            ("B6 latency p99", "", f"HTTP {b6['http_p99_ms']:.1f} ms", f"in-process {b6['sqlite_p99_ms']:.1f} ms",
             f"{b6['added_p99_ms']:+.1f} ms", "")
        )  # fmt: skip
        rows.append(
            ("B6 loaded p50", f"under the {b6['concurrency']:.0f} at once", f"HTTP {b6['http_loaded_p50_ms']:.1f} ms",
             f"in-process {b6['sqlite_loaded_p50_ms']:.1f} ms", f"{b6['added_loaded_p50_ms']:+.1f} ms", "")
        )  # fmt: skip
    if b7:
        rows.extend(scale.rows(b7, b7_sizes))
    widths = [max(len(str(r[i])) for r in rows) for i in range(6)]
    header = ("figure", "setting", "stigmer-handshake", "baseline", "result", "target")
    widths = [max(w, len(h)) for w, h in zip(widths, header, strict=True)]

    def line(row: tuple[str, ...]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True))

    return "\n".join([line(header), line(tuple("-" * w for w in widths)), *(line(r) for r in rows)])


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


async def main(args: argparse.Namespace) -> None:
    postgres_missing = postgres_unavailable() if args.postgres else "not asked for (--no-postgres)"
    profile_dir = Path(args.profile) if args.profile else None
    if profile_dir:
        if why := profile.missing():
            raise SystemExit(f"--profile: {why}")
        profile_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        async with DevServer() as server:
            client = await Client.connect(server.address)
            store = sqlite_url(tmp)
            bench = Bench(client, server, store, await Handshake.connect(store=store, temporal=server.url), profile_dir)
            postgres = None
            # B7's stores: a new one per size (its file, or its schema, goes with the run).
            b7_stores: dict[str, Callable[[], str]] = {
                "SQLite": lambda: sqlite_url(tmp, f"b7-{uuid.uuid4().hex[:8]}.db")
            }
            if postgres_missing is None:
                b7_stores["PostgreSQL"] = lambda: stack.enter_context(PostgresSchema()).url
            if postgres_missing is None:
                schema = stack.enter_context(PostgresSchema())
                hs = await Handshake.connect(store=schema.url, temporal=server.url)
                postgres = Bench(client, server, schema.url, hs, profile_dir)
            results: dict[str, dict[str, float]] = {}
            runs: dict[str, Callable[[], Awaitable[dict[str, float]]]] = {
                "B1": lambda: bench.b1_slots(args.b1_n, 1.0, 10),
                "B2": lambda: bench.b2_b4_throughput(args.b2_n, 64, postgres),
                "B3": lambda: bench.b3_latency(args.b3_n),
                "B5": lambda: bench.b5_scale(args.b5_n, args.b5_hold),
                "B6": lambda: bench.b6_http(args.b6_n, 64, args.b6_one_by_one),
                "B7": lambda: scale.b7(b7_stores, server.url, args.b7_rows, say),
            }
            for name, run in runs.items():
                if not args.only or name in args.only:
                    print(f"{name} ...", file=sys.stderr, flush=True)
                    results[name] = await run()
            profiles = {**bench.profiles, **(postgres.profiles if postgres else {})}
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    figures = json.dumps(
        {"machine": machine, "postgres_missing": postgres_missing, "results": results, "profiles": profiles}, indent=2
    )
    if args.out:
        Path(args.out).write_text(figures)
    if args.json:
        print(figures)
        return
    print(f"\nstigmer-handshake benchmarks ({machine})")
    if postgres_missing:
        print(f"PostgreSQL (B2 c) not measured: {postgres_missing}")
    print()
    print(table(results, args.b7_rows))
    if profiles:
        print(f"\nB4's parts: CPU ms per settle as perf sampled it (its own cost included; samples in {profile_dir})")
        print(profile.table(profiles))
    if args.out:
        print(f"\nfigures written to {args.out}")
