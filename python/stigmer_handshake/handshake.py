"""The Python face of the handshake: caller-activity, runner and workflow-path operations."""

from __future__ import annotations

import base64
import builtins
import os
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Literal, NoReturn, TypeAlias

import temporalio.api.common.v1
from temporalio import activity
from temporalio.client import Client
from temporalio.converter import DataConverter
from temporalio.exceptions import ApplicationError

from stigmer_handshake import _core, pb
from stigmer_handshake.redaction import redact_task_tokens
from stigmer_handshake.workflow import (
    COMPLETE_EXTERNAL_ACTIVITY,
    FAIL_EXTERNAL_ACTIVITY,
    Callback,
    ExternalCompletion,
    ExternalFailure,
)

Kind: TypeAlias = Literal["agent", "workflow"]
Spec: TypeAlias = pb.AgentExecutionSpec | pb.WorkflowExecutionSpec
Status: TypeAlias = pb.AgentExecutionStatus | pb.WorkflowExecutionStatus
Resource: TypeAlias = pb.AgentExecution | pb.WorkflowExecution

DEFAULT_STORE = "sqlite:///stigmer-handshake.db"
DEFAULT_TEMPORAL = "http://127.0.0.1:7233"
API_VERSION = "agentic.stigmer.ai/v1"


def _kind_of(spec: Spec) -> Kind:
    if isinstance(spec, pb.AgentExecutionSpec):
        return "agent"
    if isinstance(spec, pb.WorkflowExecutionSpec):
        return "workflow"
    raise _core.InvalidInput(f"spec must be an AgentExecutionSpec or WorkflowExecutionSpec, not {type(spec).__name__}")


def _to_resource(record: _core.Execution) -> Resource:
    metadata = pb.ResourceMetadata(id=record.id, name=record.id)
    if record.kind == "agent":
        return pb.AgentExecution(
            api_version=API_VERSION,
            kind="AgentExecution",
            metadata=metadata,
            spec=pb.AgentExecutionSpec.FromString(record.spec),
            status=pb.AgentExecutionStatus.FromString(record.status),
        )
    return pb.WorkflowExecution(
        api_version=API_VERSION,
        kind="WorkflowExecution",
        metadata=metadata,
        spec=pb.WorkflowExecutionSpec.FromString(record.spec),
        status=pb.WorkflowExecutionStatus.FromString(record.status),
    )


def _current_activity_token() -> bytes:
    if not activity.in_activity():
        raise _core.InvalidInput(
            "defer() must be called inside a Temporal activity: it needs the activity's task token"
        )
    return activity.info().task_token


class Handshake:
    """Hands a Temporal activity's task token to a long-running child and settles the parent exactly once.

    Connect once per process and share the object::

        hs = await Handshake.connect(store="sqlite:///handshake.db", temporal="http://127.0.0.1:7233")

    In the caller activity, ``await hs.defer(spec)`` stores the child with the token and frees the worker
    slot. In the runner, ``claim``, ``heartbeat`` and ``succeed``/``fail``/``cancel`` finish it, and the
    parent activity resumes with the result.
    """

    def __init__(self, core: _core.Core, data_converter: DataConverter) -> None:
        self._core = core
        self._converter = data_converter

    @classmethod
    async def connect(
        cls,
        store: str = DEFAULT_STORE,
        temporal: str | None = DEFAULT_TEMPORAL,
        *,
        namespace: str = "default",
        data_converter: DataConverter | None = None,
        identity: str | None = None,
    ) -> Handshake:
        """Open the store (``sqlite:///path.db`` or ``sqlite::memory:``) and connect to Temporal.

        ``temporal=None`` opens the store only: settles are recorded as due and another process
        delivers them (``deliver_due``). ``data_converter`` must match the parent worker's, so the
        parent decodes results into its declared types; the default is temporalio's (JSON).
        It also keeps task tokens out of temporalio's own debug logs (see ``redaction``).
        """
        redact_task_tokens()
        core = await _core.Core.connect(store, temporal, namespace, identity or f"stigmer-handshake@{os.getpid()}")
        return cls(core, data_converter or DataConverter.default)

    # -- caller activity --------------------------------------------------------------------------

    async def defer(self, spec: Spec, *, execution_id: str | None = None, status: Status | None = None) -> NoReturn:
        """Store the child execution with this activity's task token, then make the activity pending.

        Call it as the last line of an ``async`` activity. Complete-async is raised only after the
        token is durably stored, so a crash before that fails the attempt normally (and it retries).
        """
        token = _current_activity_token()
        await self.create(spec, execution_id=execution_id, status=status, token=token)
        activity.raise_complete_async()

    async def defer_to_workflow(
        self,
        workflow: str | Callable[..., Any],
        arg: Any,
        *,
        spec: pb.WorkflowExecutionSpec,
        task_queue: str,
        execution_id: str | None = None,
        workflow_id: str | None = None,
        client: Client | None = None,
        **start_options: Any,
    ) -> NoReturn:
        """Store a WorkflowExecution with the token, start the child workflow, then make the activity pending.

        The child's run method receives ``(callback: Callback, arg)`` and ends with
        ``complete_external_activity(callback, result)`` or ``fail_external_activity(callback, ...)``
        from ``stigmer_handshake.workflow``. The child's workflow id (default: the execution id) is
        recorded in ``status.temporal_workflow_id`` before it starts.
        """
        token = _current_activity_token()
        execution_id = execution_id or f"workflow-{uuid.uuid4()}"
        child_id = workflow_id or execution_id
        await self.create(
            spec,
            execution_id=execution_id,
            status=pb.WorkflowExecutionStatus(temporal_workflow_id=child_id),
            token=token,
        )
        callback = Callback(execution_id=execution_id, callback_token=base64.b64encode(token).decode())
        try:
            await (client or activity.client()).start_workflow(
                workflow, args=[callback, arg], id=child_id, task_queue=task_queue, **start_options
            )
        except Exception as err:
            # No child will ever settle this execution: end it now, so the parent is told and nothing hangs.
            await self.fail(
                execution_id, f"child workflow {child_id!r} did not start: {err}", type="CHILD_START_FAILED"
            )
            raise
        activity.raise_complete_async()

    async def create(
        self,
        spec: Spec,
        *,
        execution_id: str | None = None,
        status: Status | None = None,
        token: bytes | None = None,
    ) -> str:
        """Store a PENDING execution and return its id. Without ``token`` it is a direct execution: it
        runs and ends like any other, and nothing is called back."""
        kind = _kind_of(spec)
        return await self._core.create(
            kind,
            spec.SerializeToString(),
            execution_id,
            token,
            None if status is None else status.SerializeToString(),
        )

    # -- runner -----------------------------------------------------------------------------------

    async def claim(self, kind: Kind = "agent", limit: int = 1) -> list[Resource]:
        """Take up to ``limit`` PENDING executions (now IN_PROGRESS) for this runner to run."""
        return [_to_resource(r) for r in await self._core.claim(kind, limit)]

    async def update_status(self, execution_id: str, status: Status) -> None:
        """Report progress. Ending goes through ``succeed``/``fail``/``cancel``, which also tell the parent."""
        await self._core.update_status(execution_id, status.SerializeToString())

    async def heartbeat(self, execution_id: str, *details: Any) -> _core.HeartbeatReply:
        """Heartbeat the parent activity with progress ``details``; the reply carries cancel/pause/reset."""
        return await self._core.heartbeat(execution_id, await self._encode(details) if details else None)

    async def succeed(self, execution_id: str, result: Any = None, *, status: Status | None = None) -> _core.Settlement:
        """End the execution COMPLETED and complete the parent activity with ``result``."""
        return await self._core.settle(
            execution_id, _core.Outcome.complete(await self._encode([result])), _serialize(status)
        )

    async def fail(
        self,
        execution_id: str,
        message: str,
        *,
        type: str = "",
        non_retryable: bool = False,
        details: Sequence[Any] = (),
        status: Status | None = None,
    ) -> _core.Settlement:
        """End the execution FAILED.

        The parent sees ``ApplicationError(message, *details, type=type, non_retryable=non_retryable)``.
        """
        outcome = _core.Outcome.fail(message, type, non_retryable, await self._encode(details) if details else None)
        return await self._core.settle(execution_id, outcome, _serialize(status))

    async def cancel(self, execution_id: str, *details: Any, status: Status | None = None) -> _core.Settlement:
        """End the execution CANCELLED and report the cancellation to the parent (after its cancel request)."""
        outcome = _core.Outcome.cancel(await self._encode(details) if details else None)
        return await self._core.settle(execution_id, outcome, _serialize(status))

    # -- reads ------------------------------------------------------------------------------------

    async def get(self, execution_id: str, *, include_token: bool = False) -> Resource:
        """The execution as its resource message. ``status.callback_token`` is filled only on request."""
        return _to_resource(await self._core.get(execution_id, include_token))

    async def inspect(self, execution_id: str) -> _core.Execution:
        """The handshake's bookkeeping for an execution: phase, callback state, token fingerprint."""
        return await self._core.get(execution_id, False)

    async def list(self, kind: Kind | None = None, phase: str | None = None, limit: int = 100) -> list[_core.Execution]:
        return await self._core.list(kind, phase, limit)

    async def wait(self, execution_id: str, timeout: float | None = None) -> Resource:
        """Wait until the execution is COMPLETED, FAILED or CANCELLED (raises ``WaitTimeout``)."""
        return _to_resource(await self._core.wait(execution_id, timeout))

    async def deliver_due(self, limit: int = 1000) -> int:
        """Deliver callbacks recorded but not yet delivered (e.g. by a store-only process)."""
        return await self._core.deliver_due(limit)

    # -- direct calls on an activity, by token or by id --------------------------------------------

    async def complete_activity(self, result: Any = None, **target: Any) -> None:
        """Complete an activity directly: ``token=...`` or ``workflow_id=..., activity_id=..., run_id=...``."""
        await self._core.respond(_core.Outcome.complete(await self._encode([result])), **target)

    async def fail_activity(
        self, message: str, *, type: str = "", non_retryable: bool = False, details: Sequence[Any] = (), **target: Any
    ) -> None:
        outcome = _core.Outcome.fail(message, type, non_retryable, await self._encode(details) if details else None)
        await self._core.respond(outcome, **target)

    async def report_activity_cancellation(self, *details: Any, **target: Any) -> None:
        await self._core.respond(_core.Outcome.cancel(await self._encode(details) if details else None), **target)

    async def heartbeat_activity(self, *details: Any, **target: Any) -> _core.HeartbeatReply:
        return await self._core.heartbeat_activity(await self._encode(details) if details else None, **target)

    # -- the child-workflow path's system activities ------------------------------------------------

    @property
    def activities(self) -> builtins.list[Callable[..., Any]]:
        """The system activities a child workflow ends with; register them on the child's worker."""
        hs = self

        @activity.defn(name=COMPLETE_EXTERNAL_ACTIVITY)
        async def complete_external_activity(request: ExternalCompletion) -> str:
            await hs._check_callback(request.callback)
            return (await hs.succeed(request.callback.execution_id, request.result)).outcome

        @activity.defn(name=FAIL_EXTERNAL_ACTIVITY)
        async def fail_external_activity(request: ExternalFailure) -> str:
            await hs._check_callback(request.callback)
            settlement = await hs.fail(
                request.callback.execution_id,
                request.message,
                type=request.type,
                non_retryable=request.non_retryable,
            )
            return settlement.outcome

        return [complete_external_activity, fail_external_activity]

    async def _check_callback(self, callback: Callback) -> None:
        """Refuse a child whose token is not the execution's (a child of an older parent attempt)."""
        try:
            carried = _core.fingerprint_bytes(base64.b64decode(callback.callback_token, validate=True))
        except (ValueError, _core.HandshakeError) as err:
            raise ApplicationError(
                "the callback token is not valid base64", type="BAD_CALLBACK", non_retryable=True
            ) from err
        record = await self._core.get(callback.execution_id, False)
        if record.token_fingerprint != carried:
            raise ApplicationError(
                f"execution {callback.execution_id!r} is bound to token {record.token_fingerprint}, "
                f"not the child's {carried}",
                type="STALE_CALLBACK",
                non_retryable=True,
            )

    async def _encode(self, values: Sequence[Any]) -> bytes:
        payloads = await self._converter.encode(list(values))
        return temporalio.api.common.v1.Payloads(payloads=payloads).SerializeToString()


def _serialize(status: Status | None) -> bytes | None:
    return None if status is None else status.SerializeToString()
