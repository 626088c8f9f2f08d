"""B5's runner process: claim N pending executions, hold (and pump) them, report memory and CPU.

python -m stigmer_handshake.bench.hold STORE TEMPORAL N HOLD_SECONDS DEADLINE_SECONDS   -> one JSON line

It starts with the first parents: each execution is claimed (and heartbeated) as soon as it is stored.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time

from stigmer_handshake import Handshake


def rss_kb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def main(store: str, temporal: str, n: int, hold: float, patience: float) -> dict[str, float]:
    hs = await Handshake.connect(store=store, temporal=temporal)
    await hs.list(limit=1)  # warm the pool before the baseline
    before = rss_kb()
    deadline = time.monotonic() + patience
    claimed = 0
    while claimed < n:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {claimed} of {n} executions were stored in {patience:.0f} s")
        claimed += len(await hs.claim("agent", limit=1000, wait=1.0))
    await asyncio.sleep(2)  # the first round of heartbeats
    after = rss_kb()
    cpu, started = cpu_s(), time.monotonic()
    sent_before = hs.pump_stats()["heartbeats_sent"]
    await asyncio.sleep(hold)
    held = time.monotonic() - started
    stats = hs.pump_stats()
    return {
        "rss_kb_per_execution": (after - before) / n,
        "rss_mb": after / 1024,
        "pump_cpu_fraction": (cpu_s() - cpu) / held,
        "heartbeats_per_s": (stats["heartbeats_sent"] - sent_before) / held,
        "heartbeats_failed": stats["heartbeats_failed"],
    }


if __name__ == "__main__":
    store, temporal, n, hold, patience = (
        sys.argv[1],
        sys.argv[2],
        int(sys.argv[3]),
        float(sys.argv[4]),
        float(sys.argv[5]),
    )
    print(json.dumps(asyncio.run(main(store, temporal, n, hold, patience))))
