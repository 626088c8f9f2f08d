"""The handshake over the network: ``Handshake.serve`` runs gRPC (the seed's command and query services,
``ai.stigmer.handshake.v1.HandshakeService``, health, reflection), HTTP/JSON (webhooks, callback URLs,
``/metrics``) and the console (pages for people at ``/``; a callback URL opened in a browser is an approval
page) on one port, in this process, on the same core as the Python API.

    keys = ApiKey.from_file("api-keys.txt")  # lines of: <name> <scope>[,<scope>...] <secret>
    async with await hs.serve("0.0.0.0:8080", api_keys=keys, tls_cert="cert.pem", tls_key="key.pem") as server:
        url = server.callback_url(execution_id, outcomes=("complete",))  # a webhook POSTs to url + ":complete"
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeAlias, cast

from stigmer_handshake import _core

Scope: TypeAlias = Literal["create", "settle", "read", "admin"]
SettleOutcome: TypeAlias = Literal["complete", "fail", "cancel"]
ALL_OUTCOMES: tuple[SettleOutcome, ...] = ("complete", "fail", "cancel")
#: Where ``stigmer-handshake serve`` reads its API keys when no ``--api-keys-file`` is given.
API_KEYS_ENV = "STIGMER_HANDSHAKE_API_KEYS"


@dataclass(frozen=True)
class ApiKey:
    """A key callers send as ``authorization: Bearer <secret>``, with what it allows: ``create`` (store
    executions: a caller's defer), ``settle`` (progress, settle, heartbeat), ``read`` (get, list, subscribe,
    metrics), ``admin`` (all, and callback URLs). Logs name the key, never its secret."""

    name: str
    secret: str = field(repr=False)
    scopes: tuple[Scope, ...]

    @staticmethod
    def parse(text: str) -> list[ApiKey]:
        """Keys from text: one per line, ``<name> <scope>[,<scope>...] <secret>``; ``#`` starts a comment."""
        # The core checked each scope's name.
        return [
            ApiKey(name, secret, cast(tuple[Scope, ...], tuple(scopes)))
            for name, secret, scopes in _core.parse_api_keys(text)
        ]

    @staticmethod
    def from_file(path: str | os.PathLike[str]) -> list[ApiKey]:
        return ApiKey.parse(Path(path).read_text())


@dataclass(frozen=True)
class ServeSettings:
    """What ``Handshake.serve`` hands the Rust core (read there by attribute, ``src/py/server.rs``)."""

    listen: str
    api_keys: tuple[ApiKey, ...] | None = field(default=None, repr=False)
    insecure_localhost: bool = False
    tls_cert: bytes | None = field(default=None, repr=False)
    tls_key: bytes | None = field(default=None, repr=False)
    tls_client_ca: bytes | None = field(default=None, repr=False)
    public_url: str | None = None
    temporal_ui: str | None = None


class Server:
    """A running server: ``address`` (``host:port``), ``url``, ``callback_url(...)``, and ``close()``, which
    stops accepting and lets requests in flight finish. ``async with`` closes it."""

    def __init__(self, server: _core.Server, core: _core.Core) -> None:
        self._server = server
        self._core = core

    @property
    def address(self) -> str:
        return self._server.address

    @property
    def url(self) -> str:
        return self._server.url

    def callback_url(
        self, execution_id: str, outcomes: Sequence[SettleOutcome] = ALL_OUTCOMES, *, ttl: float = 3600.0
    ) -> str:
        """A URL that settles one execution for ``ttl`` seconds without an API key: POST to it with
        ``:complete`` (body: the JSON result), ``:fail`` or ``:cancel`` appended; GET shows the execution."""
        return self._core.callback_url(self.url, execution_id, list(outcomes), ttl)

    async def close(self) -> None:
        await self._server.close()

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"Server(url={self.url!r})"


def read_pem(path: str | os.PathLike[str] | None, what: str) -> bytes | None:
    """A PEM file's bytes (None: none given); a file that cannot be read is bad input, named."""
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except (OSError, ValueError) as err:
        raise _core.InvalidInput(f"{what} {os.fspath(path)!r} cannot be read: {err}") from None
