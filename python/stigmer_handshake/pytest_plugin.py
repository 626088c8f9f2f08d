"""pytest fixtures: a session-wide real Temporal dev server, a client, and fresh store URLs (SQLite, and
PostgreSQL in a schema of its own).

Registered through the `pytest11` entry point, so installing the package is enough.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.client import Client

from stigmer_handshake.testing import DevServer, PostgresSchema, postgres_unavailable, sqlite_url


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def temporal_server() -> AsyncIterator[DevServer]:
    async with DevServer() as server:
        yield server


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def temporal_client(temporal_server: DevServer) -> Client:
    return await Client.connect(temporal_server.address, namespace=temporal_server.namespace)


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    """A new SQLite store file for one test."""
    return sqlite_url(tmp_path)


@pytest.fixture
def postgres_store_url() -> Iterator[str]:
    """A store URL in a new PostgreSQL schema, dropped after the test. Without a server the test is skipped
    with the reason, except under CI=true, where that is a failure."""
    reason = postgres_unavailable()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required under CI: {reason}")
        pytest.skip(reason)
    with PostgresSchema() as schema:
        yield schema.url
