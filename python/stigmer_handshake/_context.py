"""The serialization context a data converter is handed for a parent activity.

temporalio hands converters and payload codecs an ``ActivitySerializationContext`` (namespace, workflow
id and type, activity id and type, task queue) for everything an activity sends or receives, so they can
key on it (per-workflow encryption keys). The handshake encodes for the parent activity in another
process, often much later: the context is recorded at defer (what the token lacks: the namespace's
name and the task queue) and rebuilt from the store at settle.

Each function imports temporalio where it runs: only a handshake given a converter, or running in an
activity, calls them, and temporalio is loaded there already (a store-only CLI never loads it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stigmer_handshake import _core

if TYPE_CHECKING:
    from temporalio.converter import ActivitySerializationContext, DataConverter


def uses_context(converter: DataConverter) -> bool:
    """Whether ``converter`` (or its payload converter, codec or failure converter) reads the context:
    temporalio's own returns itself from ``with_context``, and then no lookup is needed to encode."""
    from temporalio.converter import ActivitySerializationContext

    # What the converter is handed to see whether it uses a context at all (never for encoding).
    probe = ActivitySerializationContext(
        namespace="",
        activity_id=None,
        activity_type=None,
        activity_task_queue=None,
        workflow_id=None,
        workflow_type=None,
        is_local=False,
    )
    return converter.with_context(probe) is not converter


def recorded_at_defer() -> dict[str, str]:
    """What the store keeps of the running activity's context (see ``Execution.activity_context``)."""
    from temporalio import activity

    info = activity.info()
    recorded = {
        "namespace": info.namespace,
        "workflow_type": info.workflow_type,
        "activity_type": info.activity_type,
        "task_queue": info.task_queue,
    }
    return {name: value for name, value in recorded.items() if value}


def of_execution(record: _core.Execution, namespace: str) -> ActivitySerializationContext | None:
    """The context of ``record``'s parent activity; None for a direct execution (no parent). Where the
    deferring worker's record is missing (an execution created over the network), the namespace is this
    handshake's and the types and task queue are unknown."""
    from temporalio.converter import ActivitySerializationContext

    if record.parent_activity_id is None:
        return None
    recorded = record.activity_context or {}
    return ActivitySerializationContext(
        namespace=recorded.get("namespace", namespace),
        workflow_id=record.parent_workflow_id or None,  # empty for a standalone activity
        workflow_type=recorded.get("workflow_type"),
        activity_id=record.parent_activity_id,
        activity_type=recorded.get("activity_type"),
        activity_task_queue=recorded.get("task_queue"),
        is_local=False,
    )


def of_activity(
    namespace: str, token: bytes | None, workflow_id: str | None, activity_id: str | None
) -> ActivitySerializationContext | None:
    """The context of an activity named directly, by token (which carries its ids and types) or by id;
    None when the arguments name none (the core says why)."""
    from temporalio.converter import ActivitySerializationContext

    if token is not None:
        try:
            parsed = _core.TaskToken(token)
        except _core.TokenError:
            return None  # the core refuses it, with the reason
        return ActivitySerializationContext(
            namespace=namespace,
            workflow_id=parsed.workflow_id or None,
            workflow_type=parsed.workflow_type or None,
            activity_id=parsed.activity_id,
            activity_type=parsed.activity_type or None,
            activity_task_queue=None,
            is_local=False,
        )
    if activity_id is None:
        return None
    return ActivitySerializationContext(
        namespace=namespace,
        workflow_id=workflow_id,
        workflow_type=None,
        activity_id=activity_id,
        activity_type=None,
        activity_task_queue=None,
        is_local=False,
    )
