"""Where a settle's client CPU goes: B2's settling processes sampled by ``perf`` (``bench --profile DIR``).

Each settling process runs under ``perf record`` (CPU-clock samples with call stacks, timestamps on
CLOCK_MONOTONIC, the clock its settle window is measured on); only the samples inside that window count.
A sample belongs to the first part of the path found walking its stack up from the leaf: the store's
statements and syncs (SQLite's C code, sqlx, and the kernel calls they make), the RPC (tonic, h2, hyper,
prost), request compression, the asyncio crossing (PyO3), tokio's scheduling, metrics and tracing; what
none of them called is the Python interpreter (argument checks, encoding, asyncio's loop), the allocator, or
the kernel (context switches, epoll).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

SAMPLE_HZ = 2000

# (part, pattern on a stack frame's symbol and object), in the order a sample is given to them.
PARTS: list[tuple[str, re.Pattern[str]]] = [
    ("store: SQLite", re.compile(r"sqlite3|libsqlite|pager|walWrite|walCheckpoint|btree|Btree|Vdbe|subjournal")),
    ("store: sqlx", re.compile(r"sqlx")),
    ("RPC: compression", re.compile(r"flate2|miniz_oxide|zlib")),
    ("RPC: protobuf", re.compile(r"prost")),
    ("RPC: tonic/h2/hyper", re.compile(r"tonic|h2::|hyper|tower|temporalio_client|temporalio_protos")),
    ("crossing: PyO3/asyncio", re.compile(r"pyo3")),
    ("tokio scheduling", re.compile(r"tokio")),
    ("metrics and tracing", re.compile(r"metrics::|prometheus|tracing")),
]
# What a sample's leaf is when no part above called it.
LEAVES: list[tuple[str, re.Pattern[str]]] = [
    ("allocator", re.compile(r"malloc|free|realloc|_int_|unlink_chunk|memset|memmove|memcpy")),
    ("Python interpreter", re.compile(r"libpython|python3|_Py|Py[A-Z]")),
    ("kernel", re.compile(r"kernel")),
]
ORDER = [part for part, _ in PARTS] + [leaf for leaf, _ in LEAVES] + ["other"]


def missing() -> str | None:
    """Why this machine cannot profile, or None."""
    if shutil.which("perf") is None:
        return "perf is not installed (Debian: linux-perf)"
    probe = subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-o", "/dev/null", "true"], capture_output=True)
    return None if probe.returncode == 0 else f"perf cannot sample here: {probe.stderr.decode().strip()}"


def wrapper(data: Path) -> list[str]:
    """The command prefix that runs a settling process under perf, writing its samples to ``data``."""
    return ["perf", "record", "-q", "-k", "CLOCK_MONOTONIC", "-e", "cpu-clock", "-F", str(SAMPLE_HZ), "-g",
            "-o", str(data), "--"]  # fmt: skip


def part_of(stack: list[str]) -> str:
    for frame in stack:
        for part, pattern in PARTS:
            if pattern.search(frame):
                return part
    leaf = stack[0] if stack else ""
    return next((name for name, pattern in LEAVES if pattern.search(leaf)), "other")


def breakdown(data: Path, window: tuple[float, float], settles: int) -> dict[str, float]:
    """CPU ms per settle (as sampled, the profiler's own cost included) of each part, and in all."""
    start, end = (f"{t:.6f}" for t in window)
    script = subprocess.run(
        ["perf", "script", "-i", str(data), "--time", f"{start},{end}", "-F", "ip,sym,dso"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    counts = dict.fromkeys(ORDER, 0)
    for block in script.split("\n\n"):
        stack = [line.strip() for line in block.splitlines() if line.strip()]
        if stack:
            counts[part_of(stack)] += 1
    per_sample_ms = 1000 / SAMPLE_HZ / settles
    figures = {part: n * per_sample_ms for part, n in counts.items()}
    figures["total"] = sum(counts.values()) * per_sample_ms
    return figures


def table(profiles: dict[str, dict[str, float]]) -> str:
    """The parts side by side, one column per settling path (ms of CPU per settle)."""
    paths = list(profiles)
    rows = [["part", *paths]]
    for part in [*ORDER, "total"]:
        if part == "total" or any(profiles[p].get(part, 0) >= 0.005 for p in paths):
            rows.append([part, *(f"{profiles[p].get(part, 0):.3f}" for p in paths)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]

    def line(row: list[str]) -> str:
        # The part's name to the left, the figures to the right.
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))

    return "\n".join([line(rows[0]), "  ".join("-" * w for w in widths), *(line(r) for r in rows[1:])])
