"""Workflow-side helpers for the child Temporal workflow path.

A child workflow cannot call a client (determinism), so it ends the parent activity through the
package's system activities. This module imports nothing native, so it is safe inside the workflow
sandbox; still import it with ``workflow.unsafe.imports_passed_through()`` as the example shows.
temporalio is imported where a workflow uses it: the package's import does not load it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from temporalio.common import RetryPolicy

COMPLETE_EXTERNAL_ACTIVITY = "stigmer_handshake.complete_external_activity"
FAIL_EXTERNAL_ACTIVITY = "stigmer_handshake.fail_external_activity"


@dataclass(frozen=True)
class Callback:
    """What a child workflow needs to settle its parent activity: the first argument of its run method.

    ``capability`` lets its holder complete or fail this one execution of this one store, and nothing
    else (see ``Handshake.grant``). The task token never enters the child's input, so it is not in
    Temporal's history of the child; the token stays in the store, and delivery uses the current one.
    The capability is kept out of ``repr`` all the same.
    """

    execution_id: str
    capability: str = field(repr=False)


@dataclass(frozen=True)
class ExternalCompletion:
    callback: Callback
    result: Any = None


@dataclass(frozen=True)
class ExternalFailure:
    callback: Callback
    message: str
    type: str = ""
    non_retryable: bool = False


async def complete_external_activity(
    callback: Callback, result: Any = None, *, start_to_close_timeout: timedelta = timedelta(seconds=30)
) -> str:
    """Complete the parent activity with ``result``; returns the settle outcome (e.g. ``"delivered"``)."""
    from temporalio import workflow

    outcome: str = await workflow.execute_activity(
        COMPLETE_EXTERNAL_ACTIVITY,
        ExternalCompletion(callback, result),
        start_to_close_timeout=start_to_close_timeout,
        retry_policy=_system_retry(),
        result_type=str,
    )
    return outcome


async def fail_external_activity(
    callback: Callback,
    message: str,
    *,
    type: str = "",
    non_retryable: bool = False,
    start_to_close_timeout: timedelta = timedelta(seconds=30),
) -> str:
    """Fail the parent activity with an ``ApplicationError(message, type=..., non_retryable=...)``."""
    from temporalio import workflow

    outcome: str = await workflow.execute_activity(
        FAIL_EXTERNAL_ACTIVITY,
        ExternalFailure(callback, message, type, non_retryable),
        start_to_close_timeout=start_to_close_timeout,
        retry_policy=_system_retry(),
        result_type=str,
    )
    return outcome


def _system_retry() -> RetryPolicy:
    """Settling is idempotent in the store, so the system activities may retry freely."""
    from temporalio.common import RetryPolicy

    return RetryPolicy(initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=10))
