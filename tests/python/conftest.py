from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client
from temporalio.worker import Worker

from stigmer_handshake import Handshake
from stigmer_handshake.testing import DevServer, sqlite_url

sys.path.insert(0, str(Path(__file__).parent))
from flows import (
    AgentParent,
    CallerActivities,
    ChildPipeline,
    FanOutParent,
    ForgedChild,
    InstantParent,
    PatientParent,
    PipelineParent,
    QuickParent,
    RetriedAgentParent,
    RetryingParent,
    SameActivityIdParent,
)

RUNNER = Path(__file__).parent / "runner.py"

# What the whole suite logged, printed and reported, for the last test's token scan
# (test_zz_token_scan.py): every log record at DEBUG, each test's captured output and failure report,
# and the output of the subprocesses tests run.
TRANSCRIPT: list[str] = []


class _SuiteLog(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        TRANSCRIPT.append(self.format(record))


def pytest_configure(config: pytest.Config) -> None:
    handler = _SuiteLog(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    config.addinivalue_line("markers", "last: run after every other test")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    TRANSCRIPT.extend([report.capstdout, report.capstderr, report.caplog, report.longreprtext])


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("last") is not None)  # stable: the rest keep their order


async def namespace_id_of(client: Client, namespace: str = "default") -> str:
    """The id the server gave a namespace (what task tokens carry)."""
    reply = await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace=namespace))
    return reply.namespace_info.id


def sqlite_rows(path: str | Path, sql: str) -> list[list[Any]]:
    """The rows of a read-only query on a SQLite store, read by another process. Never open the store
    with Python's own sqlite3 in a process where the core has it open: the two copies of SQLite do not see
    each other's locks (POSIX locks are per process), so Python's closing connection takes itself for the
    last one, checkpoints and removes the WAL under the core ("database disk image is malformed")."""
    script = (
        "import json, sqlite3, sys\n"
        "db = sqlite3.connect(f'file:{sys.argv[1]}?mode=ro', uri=True)\n"
        "print(json.dumps([list(row) for row in db.execute(sys.argv[2])]))\n"
        "db.close()\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(path), sql], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rows: list[list[Any]] = json.loads(done.stdout)
    return rows


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie has exited)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


@dataclass
class Env:
    """One test's world: a real dev server, a fresh store, a worker with ONE activity slot."""

    server: DevServer
    client: Client
    store: str
    hs: Handshake
    activities: CallerActivities
    task_queue: str

    async def run_runner(self, mode: str, execution_id: str, arg: object = None) -> dict[str, object]:
        """Settle from a separate OS process, as an agent runner would."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(RUNNER), self.store, self.server.url, mode, execution_id, json.dumps(arg),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(RUNNER.parent)},
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
        TRANSCRIPT.extend([out.decode(errors="replace"), err.decode(errors="replace")])
        assert proc.returncode == 0, err.decode()
        report: dict[str, object] = json.loads(out.decode().strip().splitlines()[-1])
        report["stdout"], report["stderr"] = out.decode(), err.decode()
        return report

    async def wait_for_execution(self, execution_id: str, timeout: float = 30) -> None:
        """Wait until the caller activity has stored the execution (the parent is pending)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if any(e.id == execution_id for e in await self.hs.list()):
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"execution {execution_id} was never stored")


# The behaviour suites run on both stores: such a module sets STORE_BACKENDS = BOTH_STORES. Everything
# else runs on SQLite, the default (or overrides the store_backend fixture).
BOTH_STORES = ["sqlite", "postgres"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    backends = getattr(metafunc.module, "STORE_BACKENDS", None)
    if backends and "store_backend" in metafunc.fixturenames:
        metafunc.parametrize("store_backend", backends)


@pytest.fixture
def store_backend() -> str:
    return "sqlite"


@pytest.fixture
def store_url(store_backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if store_backend == "postgres":
        url: str = request.getfixturevalue("postgres_store_url")
        return url
    return sqlite_url(tmp_path)


@pytest_asyncio.fixture(loop_scope="session")
async def env(temporal_server: DevServer, temporal_client: Client, store_url: str) -> AsyncIterator[Env]:
    hs = await Handshake.connect(store=store_url, temporal=temporal_server.url)
    task_queue = f"tq-{uuid.uuid4()}"
    activities = CallerActivities(hs, child_task_queue=task_queue)
    async with Worker(
        temporal_client,
        task_queue=task_queue,
        workflows=[
            AgentParent,
            QuickParent,
            PipelineParent,
            ChildPipeline,
            FanOutParent,
            PatientParent,
            RetryingParent,
            RetriedAgentParent,
            SameActivityIdParent,
            InstantParent,
            ForgedChild,
        ],
        activities=[
            activities.run_agent,
            activities.run_agent_flaky,
            activities.run_agent_instant,
            activities.run_pipeline,
            activities.quick,
            *hs.activities,
        ],
        max_concurrent_activities=1,
    ):
        yield Env(temporal_server, temporal_client, store_url, hs, activities, task_queue)


def serve_process(store: str, temporal: str, keys: Path, log: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    """`stigmer-handshake serve` on a free port with the API keys in `keys`, logging at DEBUG into `log` and
    printing into `log` + ".out" (a pipe nobody reads would fill and stall it); returns the process and its
    URL once it serves."""
    command = [sys.executable, "-m", "stigmer_handshake.cli", "--store", store, "--temporal", temporal, "serve",
               "--listen", "127.0.0.1:0", "--api-keys-file", str(keys), *args]  # fmt: skip
    env = {**os.environ, "STIGMER_HANDSHAKE_LOG": "debug"}
    printed = log.with_name(log.name + ".out")
    with log.open("w") as err, printed.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=err, text=True, env=env)
    for _ in range(1200):
        match = re.search(r"^serving\s+(http://\S+)$", printed.read_text(), re.MULTILINE)
        if match:
            return process, match.group(1)
        if process.poll() is not None:
            raise AssertionError(f"the server exited: {log.read_text()[-2000:]}{printed.read_text()}")
        time.sleep(0.05)
    raise AssertionError("the server did not start in 60 s")


def stop_server(process: subprocess.Popen[str], log: Path) -> int:
    """SIGTERM (if it still runs), its exit code; its log joins the suite's token scan."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    TRANSCRIPT.extend([log.read_text(), log.with_name(log.name + ".out").read_text()])
    return process.returncode
