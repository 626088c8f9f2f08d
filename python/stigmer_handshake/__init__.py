"""stigmer-handshake: Temporal async activity completion done right.

A caller activity hands its task token to a long-running child (an agent run or a child workflow),
returns "result pending" so its worker slot is free, and the child settles the parent exactly once
when it ends. See README.md for the whole flow.
"""

import atexit

from stigmer_handshake import _core, pb
from stigmer_handshake._core import (
    ActivityGone,
    CapabilityError,
    ConnectError,
    DeliveryError,
    Execution,
    ExecutionNotFound,
    HandshakeClosed,
    HandshakeError,
    HeartbeatReply,
    InvalidInput,
    InvalidState,
    NamespaceMismatch,
    ReconcileReport,
    SchemaMismatch,
    Settlement,
    StoreAuthError,
    StoreError,
    StoreUnavailable,
    TaskToken,
    TemporalRpcError,
    TokenError,
    TokenKeyError,
    WaitTimeout,
    __version__,
)
from stigmer_handshake.handshake import Executions, Handshake, ParentSignals
from stigmer_handshake.metrics import MetricsServer
from stigmer_handshake.redaction import redact_task_tokens
from stigmer_handshake.server import ApiKey, Server
from stigmer_handshake.workflow import Callback, complete_external_activity, fail_external_activity

# Let the Rust core's last hand-offs to asyncio finish before the interpreter finalizes (see _core.drain).
atexit.register(_core.drain, 1.0)

__all__ = [
    "ActivityGone",
    "ApiKey",
    "Callback",
    "CapabilityError",
    "ConnectError",
    "DeliveryError",
    "Execution",
    "ExecutionNotFound",
    "Executions",
    "Handshake",
    "HandshakeClosed",
    "HandshakeError",
    "HeartbeatReply",
    "InvalidInput",
    "InvalidState",
    "MetricsServer",
    "NamespaceMismatch",
    "ParentSignals",
    "ReconcileReport",
    "SchemaMismatch",
    "Server",
    "Settlement",
    "StoreAuthError",
    "StoreError",
    "StoreUnavailable",
    "TaskToken",
    "TemporalRpcError",
    "TokenError",
    "TokenKeyError",
    "WaitTimeout",
    "__version__",
    "complete_external_activity",
    "fail_external_activity",
    "pb",
    "redact_task_tokens",
]
