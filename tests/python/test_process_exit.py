"""A short-lived process that used the handshake exits cleanly (no abort while the interpreter finalizes).

Without `_core.drain` at exit, this script aborted or segfaulted in 6 of 150 runs on a 2-core machine
(PyO3/pyo3-async-runtimes#40); with it, in 0 of 150.
"""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import asyncio
from stigmer_handshake import Handshake, pb

async def main():
    hs = await Handshake.connect(store="sqlite::memory:", temporal=None)
    ids = await asyncio.gather(*(hs.create(pb.AgentExecutionSpec(agent_id="a")) for _ in range(20)))
    await asyncio.gather(*(hs.succeed(i, 1) for i in ids))

asyncio.run(main())
"""


def test_short_lived_processes_exit_cleanly() -> None:
    runs = 50
    codes = [
        subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, timeout=60).returncode for _ in range(runs)
    ]
    assert codes == [0] * runs, f"{sum(c != 0 for c in codes)} of {runs} runs died at exit: {set(codes)}"
