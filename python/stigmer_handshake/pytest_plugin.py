"""pytest fixtures: a session-wide real Temporal dev server, a client, and fresh store URLs (SQLite, and
PostgreSQL in a schema of its own).

Registered through the `pytest11` entry point. The fixtures need the `[testing]` extra (pytest-asyncio);
without it this plugin defines nothing and imports nothing optional, so installing the package never breaks
an unrelated test suite.
"""

from __future__ import annotations

import importlib.util

if importlib.util.find_spec("pytest_asyncio") is not None:
    # Registered by being names of this module.
    from stigmer_handshake._fixtures import (
        handshake,
        postgres_store_url,
        store_url,
        temporal_client,
        temporal_server,
    )

    __all__ = ["handshake", "postgres_store_url", "store_url", "temporal_client", "temporal_server"]
