"""pytest fixtures: a session-wide real Temporal dev server, a client, and a fresh SQLite store URL.

Registered through the `pytest11` entry point, so installing the package is enough.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.client import Client

from stigmer_handshake.testing import DevServer, sqlite_url


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
