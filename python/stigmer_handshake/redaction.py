"""Keep task tokens out of the temporalio SDK's own log records.

temporalio's activity worker logs the raw task token at DEBUG ("Running activity X (token b'...')",
"Completing activity with completion: task_token: ..."). The token is a bearer credential, so
`Handshake.connect` installs this filter on that logger: bytes arguments become their fingerprint, and
protobuf arguments carrying a ``task_token`` are logged with the fingerprint in its place.
"""

from __future__ import annotations

import logging
from typing import Any

from stigmer_handshake._core import fingerprint_bytes

# The loggers that are handed task tokens as log arguments.
TOKEN_LOGGERS = ("temporalio.worker._activity",)


class TaskTokenRedactor(logging.Filter):
    """Rewrites a record's arguments so no task token reaches a handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_redact(arg) for arg in record.args)
        return True


def _redact(arg: Any) -> Any:
    if isinstance(arg, bytes | bytearray):
        return f"<task token {fingerprint_bytes(bytes(arg))}>"
    token = getattr(arg, "task_token", None)
    if isinstance(token, bytes) and token and hasattr(arg, "CopyFrom"):
        safe = type(arg)()
        safe.CopyFrom(arg)
        safe.task_token = f"<task token {fingerprint_bytes(token)}>".encode()
        return safe
    return arg


def redact_task_tokens() -> None:
    """Install the redacting filter on the SDK loggers that see tokens (idempotent)."""
    for name in TOKEN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, TaskTokenRedactor) for f in logger.filters):
            logger.addFilter(TaskTokenRedactor())
