"""What `Handshake.connect` hands the Rust core: one frozen dataclass, read there by attribute
(`src/py/settings.rs`). Its defaults are the core's own (`_core.DEFAULT_*`), so they are written once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from stigmer_handshake import _core

if TYPE_CHECKING:
    from temporalio.service import TLSConfig


@dataclass(frozen=True)
class ConnectSettings:
    store: str = _core.DEFAULT_STORE
    #: None: the store only (settles are recorded as due; another process delivers them).
    temporal: str | None = _core.DEFAULT_TEMPORAL
    #: TLS to Temporal (Some: TLS, whatever the URL's scheme); a client key is a secret: never in the repr.
    tls: TLSConfig | None = field(default=None, repr=False)
    api_key: str | None = field(default=None, repr=False)
    rpc_metadata: tuple[tuple[str, str], ...] = ()
    #: The first is the default namespace.
    namespaces: tuple[str, ...] = (_core.DEFAULT_NAMESPACE,)
    #: None: ``stigmer-handshake@<pid>``.
    identity: str | None = None
    #: Seconds between heartbeats of a parent that declared no heartbeat timeout.
    heartbeat_interval: float = _core.DEFAULT_HEARTBEAT_INTERVAL
    #: (key id, 32-byte key) pairs, the first seals new tokens. Keys are secrets: never in the repr.
    token_keys: tuple[tuple[str, bytes], ...] = field(default=(), repr=False)
    #: The first signs capabilities, all verify; empty: the store's own key.
    capability_keys: tuple[bytes, ...] = field(default=(), repr=False)
    max_result_bytes: int = _core.DEFAULT_MAX_RESULT_BYTES
    #: Seconds to wait for Temporal at connect; None: connect lazily.
    wait_for_temporal: float | None = None
    #: Seconds after which the reconciler deletes an ended execution; None: never.
    retention: float | None = _core.DEFAULT_RETENTION
