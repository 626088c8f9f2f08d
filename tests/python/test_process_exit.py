"""A process that used the handshake exits cleanly, even with the pump and the reconciler busy and futures
still running (no abort while the interpreter finalizes).

Without `_core.drain` at exit, a burst of settles aborted or segfaulted 6 of 150 runs on a 2-core machine
(PyO3/pyo3-async-runtimes#40); with it, 0 of 150. Futures that outlive drain's wait (waits timing out
around its deadline) never hand their result to the finalizing interpreter.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from temporalio.client import Client

from stigmer_handshake.testing import DevServer, sqlite_url

from conftest import namespace_id_of

HERE = Path(__file__).parent
SCRIPT = """
import asyncio, sys, uuid
sys.path.insert(0, sys.argv[4])
from stigmer_handshake.testing import task_token
from stigmer_handshake import Handshake, pb

async def main():
    temporal, store, namespace_id = sys.argv[1:4]
    hs = await Handshake.connect(store=store, temporal=temporal, reconcile_every=0.01, heartbeat_interval=0.05)
    spec = pb.AgentExecutionSpec(agent_id="a")
    tokens = [task_token(namespace_id, f"gone-{uuid.uuid4()}") for _ in range(40)]
    ids = [await hs.create(spec, token=token) for token in tokens]
    await hs.claim("agent", 20, lease=0.05)  # the pump heartbeats these parents; their claims run out
    for n, execution_id in enumerate(ids):
        asyncio.ensure_future(hs.wait(execution_id, timeout=0.95 + n * 0.003))  # around drain's deadline
        if n >= 20:
            asyncio.ensure_future(hs.succeed(execution_id, n))
    await asyncio.sleep(0.05)

asyncio.new_event_loop().run_until_complete(main())  # exits with all of that still going on
"""


@pytest.mark.timeout(240)
async def test_processes_exit_cleanly_with_the_pump_and_the_reconciler_busy(
    temporal_server: DevServer, temporal_client: Client, tmp_path: Path
) -> None:
    namespace_id = await namespace_id_of(temporal_client)
    runs, at_once = 40, asyncio.Semaphore(4)  # each run mostly waits for drain's deadline

    async def run(n: int) -> tuple[int, str]:
        argv = [SCRIPT, temporal_server.url, sqlite_url(tmp_path, f"exit-{n}.db"), namespace_id, str(HERE)]
        async with at_once:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", *argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            _, err = await asyncio.wait_for(proc.communicate(), timeout=60)
        return proc.returncode or 0, err.decode(errors="replace")[-400:]

    results = await asyncio.gather(*(run(n) for n in range(runs)))
    died = [(code, err) for code, err in results if code != 0]
    assert not died, f"{len(died)} of {runs} runs died at exit: {sorted({c for c, _ in died})}: {died[0][1]}"
