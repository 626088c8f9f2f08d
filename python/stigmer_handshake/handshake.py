"""The Python face of the handshake: caller-activity, runner and workflow-path operations.

temporalio is imported where it is used (an activity, an encode or decode, a failure): a handshake that
only reads and writes the store, as the CLI's list, show and prune do, never loads it (0.25 s of imports).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import builtins
import contextlib
import html
import importlib
import json
import logging
import os
import sys
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NoReturn, TypeAlias, TypeVar, overload

from stigmer_handshake import _context, _core, pb
from stigmer_handshake._checks import check_public_methods
from stigmer_handshake._settings import ConnectSettings
from stigmer_handshake._temporal_config import FROM_ENVIRONMENT
from stigmer_handshake._temporal_config import resolve as resolve_temporal
from stigmer_handshake.metrics import MetricsServer, parse
from stigmer_handshake.redaction import redact_task_tokens
from stigmer_handshake.server import ALL_OUTCOMES, ApiKey, Server, ServeSettings, SettleOutcome, read_pem
from stigmer_handshake.workflow import (
    COMPLETE_EXTERNAL_ACTIVITY,
    FAIL_EXTERNAL_ACTIVITY,
    Callback,
    ExternalCompletion,
    ExternalFailure,
)

if TYPE_CHECKING:
    from temporalio.client import Client
    from temporalio.converter import ActivitySerializationContext, DataConverter
    from temporalio.service import TLSConfig

Kind: TypeAlias = Literal["agent", "workflow"]
Phase: TypeAlias = Literal["PENDING", "IN_PROGRESS", "COMPLETED", "FAILED", "CANCELLED"]
CallbackStateFilter: TypeAlias = Literal["armed", "due", "delivering", "delivered", "gone", "dead", "none"]
Spec: TypeAlias = pb.AgentExecutionSpec | pb.WorkflowExecutionSpec
Status: TypeAlias = pb.AgentExecutionStatus | pb.WorkflowExecutionStatus
Resource: TypeAlias = pb.AgentExecution | pb.WorkflowExecution

DEFAULT_STORE = _core.DEFAULT_STORE
DEFAULT_TEMPORAL = _core.DEFAULT_TEMPORAL
API_VERSION = "agentic.stigmer.ai/v1"


SignalKind: TypeAlias = Literal["cancel", "pause", "reset"]
T = TypeVar("T")


def _cell(text: str) -> str:
    """A table cell: one without spaces (an id, a fingerprint) never wraps mid-token; prose wraps."""
    if any(c.isspace() for c in text):
        return f"<td>{html.escape(text)}</td>"
    return f'<td style="white-space:nowrap">{html.escape(text)}</td>'


class Executions(builtins.list[_core.Execution]):
    """A page of executions that Jupyter shows as one table (tokens by fingerprint only);
    ``next_page_token`` asks ``list`` for the page after it (None: this is the last)."""

    next_page_token: str | None = None

    def _repr_html_(self) -> str:
        now = time.time()
        header = "".join(
            f"<th>{h}</th>" for h in ("id", "kind", "phase", "callback", "token", "parent", "age", "last error")
        )
        rows = []
        for e in self:
            parent = f"{e.parent_workflow_id} / {e.parent_activity_id}" if e.parent_workflow_id else ""
            cells = (e.id, e.kind, e.phase, e.callback_state or "", e.token_fingerprint or "", parent,
                     short_age(now - e.created_at), e.last_error or "")  # fmt: skip
            rows.append("<tr>" + "".join(_cell(c) for c in cells) + "</tr>")
        return (
            f'<table class="stigmer-handshake"><thead><tr>{header}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
            f"<p>{len(self)} execution{'s' if len(self) != 1 else ''}</p>"
        )


#: Temporal's default limit on one payload: larger results are kept in the store, not sent.
DEFAULT_MAX_RESULT_BYTES = _core.DEFAULT_MAX_RESULT_BYTES
#: Seconds an ended execution is kept (30 days): longer than Temporal keeps a closed workflow's history by
#: default (72 hours for a namespace ``temporal operator namespace create`` makes).
DEFAULT_RETENTION = _core.DEFAULT_RETENTION
# A child workflow's capability outlives any child: the execution bounds it (settled, it settles nothing).
_CHILD_CAPABILITY_TTL = 10 * 365 * 86400.0
_log = logging.getLogger("stigmer_handshake")
_said: set[str] = set()


def _say_once(message: str) -> None:
    """Log a start-up notice once per process. In a notebook whose logging nobody set up, it is shown as a
    quiet note instead (Python would print it to stderr: a red box on a normal run)."""
    if message in _said:
        return
    _said.add(message)
    if _in_notebook() and not _log.hasHandlers():
        shown: Any = importlib.import_module("IPython.display")  # present: this is a Jupyter kernel
        shown.display(
            shown.HTML(f'<p style="color:#5b6475;font-size:90%">stigmer-handshake: {html.escape(message)}</p>')
        )
    else:
        _log.warning(message)


def _in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (IPython with a kernel, not the terminal shell)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and getattr(shell, "kernel", None) is not None


def _capability_keys(keys: Sequence[bytes] | None) -> list[bytes]:
    """The capability keys, first the current one: from the argument, else $STIGMER_HANDSHAKE_CAPABILITY_KEYS."""
    if keys is not None:
        if isinstance(keys, (bytes, bytearray, memoryview)):  # one key where a list of them belongs
            raise _core.InvalidInput("capability_keys must be a list of keys (the first signs), not one key")
        return list(keys)
    text = os.environ.get("STIGMER_HANDSHAKE_CAPABILITY_KEYS", "")
    try:
        return [base64.b64decode(part.strip(), validate=True) for part in text.split(",") if part.strip()]
    except (binascii.Error, ValueError):
        raise _core.InvalidInput("$STIGMER_HANDSHAKE_CAPABILITY_KEYS must be base64key[,base64key...]") from None


def _token_keys(keys: Mapping[str, bytes] | None) -> list[tuple[str, bytes]]:
    """The token keys, first the current one: from the argument, else $STIGMER_HANDSHAKE_TOKEN_KEYS."""
    if keys is not None:
        return list(keys.items())
    text = os.environ.get("STIGMER_HANDSHAKE_TOKEN_KEYS", "")
    pairs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key_id, sep, encoded = item.partition("=")
        try:
            key = base64.b64decode(encoded, validate=True) if sep else b""
        except (binascii.Error, ValueError):
            key = b""
        if not key_id or not key:
            raise _core.InvalidInput("$STIGMER_HANDSHAKE_TOKEN_KEYS must be id=base64key[,id=base64key...]")
        pairs.append((key_id, key))
    return pairs


def short_age(seconds: float) -> str:
    """A short human age: 42s, 7m, 3h, 2d."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size:.0f}{unit}"
    return f"{max(seconds, 0):.0f}s"


@dataclass(frozen=True)
class ParentSignals:
    """What the parent activity's heartbeat replies said."""

    cancel_requested: bool
    paused: bool
    reset: bool
    parent_gone: bool


def _kind_of(spec: Spec) -> Kind:
    if isinstance(spec, pb.AgentExecutionSpec):
        return "agent"
    if isinstance(spec, pb.WorkflowExecutionSpec):
        return "workflow"
    raise _core.InvalidInput(f"spec must be an AgentExecutionSpec or WorkflowExecutionSpec, not {type(spec).__name__}")


def _of_kind(record: _core.Execution, kind: Kind | None) -> _core.Execution:
    """`record`, if it is of `kind` (None: any); an execution of the other kind is not found."""
    if kind is not None and record.kind != kind:
        raise _core.ExecutionNotFound(f"no {kind} execution with id {record.id!r} (its kind is {record.kind})")
    return record


def _to_resource(record: _core.Execution) -> Resource:
    metadata = pb.ResourceMetadata(id=record.id, name=record.id, labels=record.labels)
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
    from temporalio import activity

    if not activity.in_activity():
        raise _core.InvalidInput(
            "defer() must be called inside a Temporal activity: it needs the activity's task token"
        )
    token = activity.info().task_token
    if token == b"test":  # temporalio.testing.ActivityEnvironment's placeholder
        raise _core.TokenError(
            "the activity's task token is temporalio ActivityEnvironment's placeholder b'test', not a task token: "
            "set env.info = await stigmer_handshake.testing.activity_info(client) to run defer() under it"
        )
    return token


@check_public_methods
class Handshake:
    """Hands a Temporal activity's task token to a long-running child and settles the parent exactly once.

    Connect once per process and share the object; ``async with`` closes it at the end::

        async with await Handshake.connect(store="sqlite:///handshake.db", temporal="http://127.0.0.1:7233") as hs:
            ...

    In the caller activity, ``await hs.defer(spec)`` stores the child with the token and frees the worker
    slot. In the runner, ``claim``, ``heartbeat`` and ``succeed``/``fail``/``cancel`` finish it, and the
    parent activity resumes with the result.
    """

    def __init__(
        self,
        core: _core.Core,
        data_converter: DataConverter | None = None,
        namespace: str = "default",
        retention: float | None = DEFAULT_RETENTION,
    ) -> None:
        self._core = core
        self._retention = retention
        # None: temporalio's default, loaded at the first encode or decode (it reads no context, has no codec).
        self._converter = data_converter
        self._namespace = namespace
        # A converter that reads the serialization context needs the parent's, from the store, for each
        # encode; one that encodes payloads at all also encodes the pump's progress summaries.
        self._contextual = data_converter is not None and _context.uses_context(data_converter)
        self._encodes_summaries = self._contextual or (
            data_converter is not None and data_converter.payload_codec is not None
        )
        self._servers: builtins.list[Server] = []

    async def __aenter__(self) -> Handshake:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop this process's background work and close the store: the reconciler stops (a pass in flight
        finishes), the pump stops heartbeating, deliveries in flight finish, the store's connections close.
        Later calls raise ``HandshakeClosed``; closing again does nothing. Settles recorded but not yet
        delivered stay due, for any process's reconciler. Servers started with ``serve`` stop first."""
        for server in self._servers:
            await server.close()
        await self._core.close()

    @classmethod
    async def connect(
        cls,
        store: str = DEFAULT_STORE,
        temporal: str | Client | None = FROM_ENVIRONMENT,
        *,
        namespace: str | Sequence[str] | None = None,
        data_converter: DataConverter | None = None,
        identity: str | None = None,
        reconcile_every: float | None = None,
        retention: float | None = DEFAULT_RETENTION,
        heartbeat_interval: float = _core.DEFAULT_HEARTBEAT_INTERVAL,
        token_keys: Mapping[str, bytes] | None = None,
        capability_keys: Sequence[bytes] | None = None,
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
        wait_for_temporal: float | None = None,
        tls: bool | TLSConfig | None = None,
        api_key: str | None = None,
        rpc_metadata: Mapping[str, str] | None = None,
    ) -> Handshake:
        """Open the store and connect to Temporal.

        ``store`` is ``sqlite:///path.db`` (one machine), ``sqlite::memory:``, or
        ``postgres://user@host:5432/db?sslmode=...&schema=...`` (several machines sharing executions and
        callbacks); the schema is migrated at connect.

        ``temporal`` is a URL (``http://host:7233``; ``https://`` for TLS), a connected temporalio ``Client``
        (its target, namespace, TLS, API key, gRPC metadata and data converter are used: nothing needs saying
        twice), or, when not given, Temporal's environment configuration (``TEMPORAL_ADDRESS``,
        ``TEMPORAL_NAMESPACE``, ``TEMPORAL_API_KEY``, ``TEMPORAL_TLS*``, profiles) and else
        ``http://127.0.0.1:7233``. ``tls`` (``True`` or a ``temporalio.service.TLSConfig``: server CA,
        domain, client certificate and key), ``api_key`` (sent as ``authorization: Bearer``, rotated with
        ``update_api_key``) and ``rpc_metadata`` work as in ``Client.connect`` and win over the Client's and
        the environment's. A refused certificate, CA, domain or API key fails here, as ``ConnectError``
        naming which.
        ``temporal=None`` opens the store only: settles are recorded as due and another process
        delivers them (``reconcile``). When Temporal does not answer (an outage, a restart), connect
        still succeeds, as temporalio's ``Client.connect(lazy=True)`` does: the connection is made on first
        use, settles meanwhile are recorded and come back ``retrying``, and the reconciler delivers them
        once Temporal is back. ``wait_for_temporal`` (seconds) instead waits that long for Temporal and
        then raises ``ConnectError``; an error waiting cannot mend (no such namespace) is raised at once.
        ``data_converter`` must match the parent worker's, so the parent decodes results into its
        declared types; the default is temporalio's (JSON).
        Executions a runner claims are heartbeated by this process (the pump) at a third of the parent's
        heartbeat timeout, or every ``heartbeat_interval`` seconds when the parent declared none.
        ``reconcile_every`` (seconds) runs the reconciler in this process: at once, for whatever a crash
        left undelivered, then periodically (see ``reconcile``). Its passes (and ``reconcile``) also delete
        executions that ended more than ``retention`` seconds ago (default ``DEFAULT_RETENTION``, 30 days;
        None keeps them), a batch per pass (see ``prune``). It also keeps task tokens out of
        temporalio's own debug logs (see ``redaction``).

        Hardening: ``namespace`` may list several namespaces (the first is the default); a token of any
        other is refused before any RPC (``NamespaceMismatch``). ``token_keys`` (key id -> 32-byte key,
        the first seals new tokens; else ``$STIGMER_HANDSHAKE_TOKEN_KEYS`` as ``id=base64,...``) encrypts
        tokens at rest with AES-256-GCM. ``capability_keys`` (the first signs, all verify; else
        ``$STIGMER_HANDSHAKE_CAPABILITY_KEYS`` as ``base64,...``; else a key the store keeps) sign and check
        settle capabilities (``grant``, and the child workflows of ``defer_to_workflow``). A result over
        ``max_result_bytes`` is kept in the store and the parent gets a ``RESULT_TOO_LARGE`` failure naming the
        execution.
        """
        redact_task_tokens()
        connection = resolve_temporal(
            temporal, namespace=namespace, tls=tls, api_key=api_key, rpc_metadata=rpc_metadata
        )
        keys = _token_keys(token_keys)
        if not keys:
            _say_once("no token keys: task tokens are stored unencrypted (see Handshake.connect(token_keys=...))")
        settings = ConnectSettings(
            store=store,
            temporal=connection.target,
            tls=connection.tls,
            api_key=connection.api_key,
            rpc_metadata=connection.rpc_metadata,
            namespaces=connection.namespaces,
            identity=identity,
            heartbeat_interval=heartbeat_interval,
            token_keys=tuple(keys),
            capability_keys=tuple(_capability_keys(capability_keys)),
            max_result_bytes=max_result_bytes,
            wait_for_temporal=wait_for_temporal,
            retention=retention,
        )
        core = await _core.Core.connect(settings)
        if connection.target is not None and not core.temporal_connected():
            where = urllib.parse.urlsplit(connection.target).netloc.rpartition("@")[2]  # never credentials in a URL
            _log.warning("Temporal at %s is not reachable yet: settles are recorded and delivered once it is", where)
        if reconcile_every is not None:
            core.start_reconciler(reconcile_every)
        converter = data_converter or connection.data_converter
        return cls(core, converter, connection.namespaces[0] if connection.namespaces else "default", retention)

    # -- caller activity --------------------------------------------------------------------------

    async def defer(
        self,
        spec: Spec,
        *,
        execution_id: str | None = None,
        status: Status | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> NoReturn:
        """Store the child execution with this activity's task token, then make the activity pending.

        Call it as the last line of an ``async`` activity. Complete-async is raised only after the
        token is durably stored, so a crash before that fails the attempt normally (and it retries).
        A retried attempt of the same activity re-binds to the child the first attempt made (no second
        child); the child's result reaches whichever attempt is current when it ends. A retry that Temporal
        makes after the child's (retryable) failure reached the parent runs a new child instead: its
        ``retry_of`` names the failed one, and its id is ``execution_id`` or, when that one is taken,
        ``<execution_id>-attempt-<N>``. ``labels`` (``metadata.labels``) are what ``list`` and the server's
        listings filter on, e.g. the id another system knows the work by.
        """
        from temporalio import activity

        token = _current_activity_token()
        timeout = activity.info().heartbeat_timeout
        await self._core.create(
            _kind_of(spec),
            spec.SerializeToString(),
            execution_id,
            token,
            _serialize(status),
            None if timeout is None else timeout.total_seconds(),
            labels,
            _context.recorded_at_defer(),
        )
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
        from temporalio import activity

        token = _current_activity_token()
        execution_id = execution_id or f"workflow-{uuid.uuid4()}"
        child_id = workflow_id or execution_id
        created_id, rebound = await self._core.create(
            "workflow",
            spec.SerializeToString(),
            execution_id,
            token,
            pb.WorkflowExecutionStatus(temporal_workflow_id=child_id).SerializeToString(),
            activity_context=_context.recorded_at_defer(),
        )
        if rebound:  # a retried attempt: its child already exists, and its capability names this execution
            activity.raise_complete_async()
        if created_id != execution_id and workflow_id is None:
            # A retry after a delivered failure runs a new child under a new id (see ``defer``): so does its
            # child workflow, recorded before it starts, as for the first.
            child_id = created_id
            status = pb.WorkflowExecutionStatus(temporal_workflow_id=child_id)
            await self._core.update_status(created_id, status.SerializeToString())
        execution_id = created_id
        capability = self.grant(execution_id, ("complete", "fail"), ttl=_CHILD_CAPABILITY_TTL)
        callback = Callback(execution_id=execution_id, capability=capability)
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
        labels: Mapping[str, str] | None = None,
    ) -> str:
        """Store a PENDING execution and return its id. Without ``token`` it is a direct execution: it
        runs and ends like any other, and nothing is called back."""
        kind = _kind_of(spec)
        created_id, _rebound = await self._core.create(
            kind, spec.SerializeToString(), execution_id, token, _serialize(status), None, labels
        )
        return created_id

    # -- runner -----------------------------------------------------------------------------------

    @overload
    async def claim(
        self, kind: Literal["agent"] = "agent", limit: int = 1, *, lease: float = 300.0, wait: float | None = None
    ) -> list[pb.AgentExecution]: ...
    @overload
    async def claim(
        self, kind: Literal["workflow"], limit: int = 1, *, lease: float = 300.0, wait: float | None = None
    ) -> list[pb.WorkflowExecution]: ...
    async def claim(
        self, kind: Kind = "agent", limit: int = 1, *, lease: float = 300.0, wait: float | None = None
    ) -> list[Any]:
        """Take up to ``limit`` executions of ``kind`` (``pb.AgentExecution`` or ``pb.WorkflowExecution``)
        for this runner: PENDING ones (now IN_PROGRESS), and running ones whose runner died. The claim lasts
        ``lease`` seconds and each ``heartbeat`` renews it. With ``wait`` (seconds), when there is none, wait
        up to that long for one instead of returning ``[]`` at once: woken by new executions (at once on
        PostgreSQL, from any process; within 50 ms on SQLite)."""
        return [_to_resource(r) for r in await self._core.claim(kind, limit, lease, wait)]

    async def update_status(self, execution_id: str, status: Status) -> None:
        """Report progress. Ending goes through ``succeed``/``fail``/``cancel``, which also tell the parent."""
        summary = await self._core.update_status(execution_id, status.SerializeToString(), self._encodes_summaries)
        if summary is not None:  # this converter encodes payloads: so it does the heartbeats' summary
            encoded = await self._encode([json.loads(summary)], await self._context_of(execution_id))
            self._core.set_progress_summary(execution_id, encoded)

    async def report_progress(self, execution_id: str, *details: Any) -> bool:
        """Set the details the pump's heartbeats carry for a claimed execution (visible in the parent's
        pending activity, e.g. ``temporal workflow describe``). Without it, the heartbeats carry a summary
        of the latest status (phase, todos done/total, last message). False if this process does not
        pump the execution (not claimed here, no parent, or already settled)."""
        return self._core.report_progress(
            execution_id, await self._encode(details, await self._context_of(execution_id))
        )

    async def metrics(self) -> str:
        """This process's metrics in the Prometheus (OpenMetrics) text format (see ``metrics``)."""
        return await asyncio.to_thread(self._core.metrics_text)

    async def metrics_snapshot(self) -> dict[str, float]:
        """The same metrics as ``{"name{labels}": value}``."""
        return parse(await self.metrics())

    def serve_metrics(self, port: int = 0, host: str = "127.0.0.1") -> MetricsServer:
        """Serve ``GET /metrics`` for Prometheus from a background thread; ``.url``, ``.port``, ``.close()``."""
        return MetricsServer(self._core.metrics_text, host, port)

    def pump_stats(self) -> dict[str, int]:
        """The heartbeat pump's counters in this process: executions tracked, heartbeats sent and failed."""
        tracked, sent, failed = self._core.pump_stats()
        return {"tracked": tracked, "heartbeats_sent": sent, "heartbeats_failed": failed}

    def parent_signals(self, execution_id: str) -> ParentSignals | None:
        """What the heartbeats last brought back from the parent of a claimed execution (None if not pumped)."""
        signals = self._core.signals(execution_id)
        return None if signals is None else ParentSignals(*signals)

    async def wait_for_signal(self, execution_id: str, *kinds: SignalKind) -> ParentSignals | None:
        """Wait until the parent of a claimed execution asks for one of ``kinds`` ("cancel", "pause",
        "reset"; all three when none is given) or is gone. None if the execution stops being pumped."""
        signals = await self._core.wait_signal(execution_id, list(kinds or ("cancel", "pause", "reset")))
        return None if signals is None else ParentSignals(*signals)

    async def cancellation(self, execution_id: str) -> ParentSignals | None:
        """Wait until the parent asks the child to cancel (or is gone). Acknowledge with ``cancel``."""
        return await self.wait_for_signal(execution_id, "cancel")

    async def heartbeat(self, execution_id: str, *details: Any) -> _core.HeartbeatReply:
        """Heartbeat the parent activity now, with progress ``details``; the reply carries cancel/pause/reset.

        Executions this process claimed are heartbeated by the pump anyway; this is for an immediate
        heartbeat and answer (and renews this runner's claim)."""
        context = await self._context_of(execution_id) if details else None
        return await self._core.heartbeat(execution_id, await self._encode(details, context) if details else None)

    async def succeed(
        self,
        execution_id: str,
        result: Any = None,
        *,
        status: Status | None = None,
        wait_for_delivery: bool = True,
        capability: str | None = None,
    ) -> _core.Settlement:
        """End the execution COMPLETED and complete the parent activity with ``result``.

        Idempotent: a second settle returns ``already_settled`` and sends nothing. Returns once the
        outcome is durably recorded and, with ``wait_for_delivery``, once the parent was told (or found
        gone: ``activity_gone`` with its ``reason``; the result stays in the store).
        """
        outcome = _core.Outcome.complete(await self._encode([result], await self._context_of(execution_id)))
        return await self._core.settle(execution_id, outcome, _serialize(status), wait_for_delivery, capability)

    async def fail(
        self,
        execution_id: str,
        message: str,
        *,
        type: str = "",
        non_retryable: bool = False,
        details: Sequence[Any] = (),
        status: Status | None = None,
        wait_for_delivery: bool = True,
        capability: str | None = None,
    ) -> _core.Settlement:
        """End the execution FAILED.

        The parent sees ``ApplicationError(message, *details, type=type, non_retryable=non_retryable)``, made
        by the data converter's failure converter (so one that encodes common attributes keeps the message
        out of the parent's history). The store and the execution's status keep the message as given.
        """
        context = await self._context_of(execution_id)
        outcome = await self._failure(message, type, non_retryable, details, context)
        return await self._core.settle(execution_id, outcome, _serialize(status), wait_for_delivery, capability)

    async def cancel(
        self,
        execution_id: str,
        *details: Any,
        status: Status | None = None,
        wait_for_delivery: bool = True,
        capability: str | None = None,
    ) -> _core.Settlement:
        """End the execution CANCELLED and report the cancellation to the parent (after its cancel request)."""
        context = await self._context_of(execution_id) if details else None
        outcome = _core.Outcome.cancel(await self._encode(details, context) if details else None)
        return await self._core.settle(execution_id, outcome, _serialize(status), wait_for_delivery, capability)

    async def redeliver(self, execution_id: str) -> _core.Settlement:
        """Deliver a dead-lettered callback again, once what refused it is fixed (a revoked API key, a
        permission): its recorded outcome goes to the parent now (``delivered``), or stays due for the
        reconciler when Temporal is out of reach. ``InvalidState`` unless the callback is dead-lettered."""
        return await self._core.redeliver(execution_id)

    def grant(
        self, execution_id: str, outcomes: Sequence[str] = ("complete", "fail", "cancel"), *, ttl: float = 3600.0
    ) -> str:
        """A capability to settle one execution: hand it to code that must not hold the token or the store
        (an untrusted agent). Whoever settles for it passes ``capability=`` to ``succeed``/``fail``/
        ``cancel``; the core checks the signature, the store, the execution, the outcome and the expiry
        first (``CapabilityError``). Signed with ``capability_keys``, else with the store's own key (then
        whoever can read the store can also make capabilities: pass keys to keep the two apart)."""
        return self._core.grant(execution_id, list(outcomes), ttl)

    async def serve(
        self,
        listen: str = "127.0.0.1:0",
        *,
        api_keys: Sequence[ApiKey] | None = None,
        insecure_localhost: bool = False,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
        tls_client_ca: str | os.PathLike[str] | None = None,
        public_url: str | None = None,
        temporal_ui: str | None = None,
    ) -> Server:
        """Serve this handshake over the network on ``listen`` (``host:port``; port 0: any free one): gRPC
        and HTTP/JSON on the same port (see ``stigmer_handshake.server``), until ``Server.close()`` or
        ``close()`` here.

        Every request needs one of ``api_keys`` (``ApiKey``: name, secret, scopes), except callback URLs,
        whose path is the credential. ``insecure_localhost=True`` instead serves everyone, on a loopback
        address only. ``tls_cert`` and ``tls_key`` (PEM files) turn TLS on; ``tls_client_ca`` also demands
        client certificates signed by it. ``public_url`` is the base of callback URLs when callers reach the
        server through a proxy (default: ``http(s)://<address>``).

        The console (pages for people: what waits, one execution, settling by hand, approval pages for
        callback URLs) is served at ``/``; ``temporal_ui`` (Temporal's Web UI, e.g.
        ``http://localhost:8233``) links its parent workflows there."""
        settings = ServeSettings(
            listen=listen,
            api_keys=None if api_keys is None else tuple(api_keys),
            insecure_localhost=insecure_localhost,
            tls_cert=read_pem(tls_cert, "tls_cert"),
            tls_key=read_pem(tls_key, "tls_key"),
            tls_client_ca=read_pem(tls_client_ca, "tls_client_ca"),
            public_url=public_url,
            temporal_ui=temporal_ui,
        )
        server = Server(await self._core.serve(settings), self._core)
        self._servers.append(server)
        return server

    def callback_url(
        self,
        execution_id: str,
        outcomes: Sequence[SettleOutcome] = ALL_OUTCOMES,
        *,
        ttl: float = 3600.0,
        base_url: str | None = None,
    ) -> str:
        """A URL that settles one execution with ``outcomes`` for ``ttl`` seconds, for a webhook sender
        that holds no key (POST ``<url>:complete`` with the JSON result, ``:fail``, ``:cancel``). Under
        ``base_url``, else under the URL of the server this handshake serves."""
        if base_url is None:
            if not self._servers:
                raise _core.InvalidInput("callback_url needs base_url=..., or a server started with serve()")
            base_url = self._servers[-1].url
        return self._core.callback_url(base_url, execution_id, list(outcomes), ttl)

    # -- reads ------------------------------------------------------------------------------------

    @overload
    async def get(
        self, execution_id: str, *, kind: Literal["agent"], include_token: bool = False
    ) -> pb.AgentExecution: ...
    @overload
    async def get(
        self, execution_id: str, *, kind: Literal["workflow"], include_token: bool = False
    ) -> pb.WorkflowExecution: ...
    @overload
    async def get(self, execution_id: str, *, kind: None = None, include_token: bool = False) -> Resource: ...
    async def get(self, execution_id: str, *, kind: Kind | None = None, include_token: bool = False) -> Any:
        """The execution as its resource message (with ``kind``, typed as that kind's, and
        ``ExecutionNotFound`` for one of the other kind). ``status.callback_token`` is filled only on request."""
        return _to_resource(_of_kind(await self._core.get(execution_id, include_token), kind))

    async def inspect(self, execution_id: str) -> _core.Execution:
        """The handshake's bookkeeping for an execution: phase, callback state, token fingerprint."""
        return await self._core.get(execution_id, False)

    async def list(
        self,
        kind: Kind | None = None,
        phase: Phase | None = None,
        limit: int = 100,
        *,
        labels: Mapping[str, str] | None = None,
        state: CallbackStateFilter | None = None,
        text: str | None = None,
        page_token: str | None = None,
    ) -> Executions:
        """A page of up to ``limit`` executions, oldest first (a list; in Jupyter a table): of ``kind``, in
        ``phase``, whose callback is in ``state`` (``"none"``: executions without one), with every one of
        ``labels``, and with ``text`` in the id or the spec (case-sensitive). Its ``next_page_token``
        (None on the last page) passed as ``page_token`` gives the page after it, whatever was created or
        deleted meanwhile; ``iterate`` walks them all.

        Each page is read through an index that matches its filters (kind, phase, callback state), so
        it costs the same at a million executions as at a thousand; ``labels`` and ``text`` are checked
        on the executions read in order until the page is full."""
        records, next_page_token = await self._core.list(kind, phase, limit, labels, state, text, page_token)
        page = Executions(records)
        page.next_page_token = next_page_token
        return page

    async def iterate(
        self,
        kind: Kind | None = None,
        phase: Phase | None = None,
        *,
        labels: Mapping[str, str] | None = None,
        state: CallbackStateFilter | None = None,
        text: str | None = None,
        page_size: int = 500,
    ) -> AsyncIterator[_core.Execution]:
        """Every execution ``list`` would return with these filters, oldest first, read ``page_size`` at a
        time: memory stays that of one page however many there are."""
        token: str | None = None
        while True:
            page = await self.list(kind, phase, page_size, labels=labels, state=state, text=text, page_token=token)
            for execution in page:
                yield execution
            if page.next_page_token is None:
                return
            token = page.next_page_token

    async def undelivered(self) -> int:
        """How many settled callbacks are still to be told to their parent (due, or being delivered): what
        the reconciler has left to do (read from an index: as many rows as wait)."""
        return await self._core.undelivered()

    @overload
    async def wait(
        self, execution_id: str, timeout: float | None = None, *, kind: Literal["agent"]
    ) -> pb.AgentExecution: ...
    @overload
    async def wait(
        self, execution_id: str, timeout: float | None = None, *, kind: Literal["workflow"]
    ) -> pb.WorkflowExecution: ...
    @overload
    async def wait(self, execution_id: str, timeout: float | None = None, *, kind: None = None) -> Resource: ...
    async def wait(self, execution_id: str, timeout: float | None = None, *, kind: Kind | None = None) -> Any:
        """Wait until the execution is COMPLETED, FAILED or CANCELLED (raises ``WaitTimeout``); ``kind`` as
        for ``get``."""
        if kind is not None:
            _of_kind(await self._core.get(execution_id, False), kind)
        return _to_resource(await self._core.wait(execution_id, timeout))

    @overload
    async def result(self, execution_id: str) -> Any: ...
    @overload
    async def result(self, execution_id: str, type_hint: type[T]) -> T: ...
    async def result(self, execution_id: str, type_hint: type[Any] | None = None) -> Any:
        """The result an execution ended with, decoded by the data converter (kept even when its parent
        activity was gone, and for a direct execution). Raises ``InvalidState`` when it has not completed."""
        record = await self._core.get(execution_id, False)
        if record.outcome != "complete" or record.result is None:
            raise _core.InvalidState(f"execution {execution_id!r} has no recorded result (phase {record.phase})")
        from temporalio.api.common.v1 import Payloads

        payloads = Payloads.FromString(record.result).payloads
        converter = self._converter_for(_context.of_execution(record, self._namespace))
        try:
            [value] = await converter.decode(payloads, None if type_hint is None else [type_hint])
        except Exception as err:  # the data converter's own errors: the stored result is kept as it was
            raise _core.InvalidInput(f"the data converter cannot decode the result of {execution_id!r}: {err}") from err
        return value

    def update_api_key(self, api_key: str | None) -> None:
        """Send ``api_key`` to Temporal from now on (``None``: none), without reconnecting, as temporalio's
        ``client.api_key = ...`` does. The key is never logged."""
        self._core.set_api_key(api_key)

    # -- recovery ---------------------------------------------------------------------------------

    async def reconcile(self) -> _core.ReconcileReport:
        """One pass of the reconciler: fail the parent of every child workflow that closed without settling
        (``CHILD_TERMINATED``, ``CHILD_TIMED_OUT``, ...), deliver every callback whose delivery did not
        finish (a crash between commit and RPC, a server outage), and delete a batch of executions older
        than the retention (``pruned``). Safe to run in several processes."""
        return await self._core.reconcile()

    async def prune(self, older_than: float | None = None, *, progress: Callable[[int], object] | None = None) -> int:
        """Delete every execution that ended more than ``older_than`` seconds ago (default: this handshake's
        ``retention``, else ``DEFAULT_RETENTION``) and whose callback is final (delivered, or its parent
        gone), 500 at a time, each batch one short statement; ``progress(total)`` after each batch. Never
        one still running, one whose parent is still to be told (armed, due, delivering), nor a
        dead-lettered one (it waits for ``redeliver``). On SQLite the space goes back to the file system
        (stores made by this version; an older file needs one ``VACUUM``). Returns how many were deleted."""
        age = older_than if older_than is not None else self._retention or DEFAULT_RETENTION
        return await self._core.prune(age, 500, progress)

    def start_reconciler(self, interval: float = 5.0) -> None:
        """Run ``reconcile`` in the background every ``interval`` seconds (the first pass at once)."""
        self._core.start_reconciler(interval)

    def stop_reconciler(self) -> None:
        self._core.stop_reconciler()

    # -- direct calls on an activity, by token or by id --------------------------------------------

    # Each takes the activity as ``token=...`` or as ``workflow_id=..., activity_id=...`` (and ``run_id=``,
    # empty for the workflow's latest run); a standalone activity (no workflow) as ``activity_id=...`` alone
    # (and ``run_id=``, its own run).

    async def complete_activity(
        self,
        result: Any = None,
        *,
        token: bytes | None = None,
        workflow_id: str | None = None,
        run_id: str = "",
        activity_id: str | None = None,
    ) -> None:
        """Complete an activity directly, without the store."""
        context = self._context_of_activity(token, workflow_id, activity_id)
        outcome = _core.Outcome.complete(await self._encode([result], context))
        await self._core.respond(outcome, token=token, workflow_id=workflow_id, run_id=run_id, activity_id=activity_id)

    async def fail_activity(
        self,
        message: str,
        *,
        type: str = "",
        non_retryable: bool = False,
        details: Sequence[Any] = (),
        token: bytes | None = None,
        workflow_id: str | None = None,
        run_id: str = "",
        activity_id: str | None = None,
    ) -> None:
        context = self._context_of_activity(token, workflow_id, activity_id)
        outcome = await self._failure(message, type, non_retryable, details, context)
        await self._core.respond(outcome, token=token, workflow_id=workflow_id, run_id=run_id, activity_id=activity_id)

    async def report_activity_cancellation(
        self,
        *details: Any,
        token: bytes | None = None,
        workflow_id: str | None = None,
        run_id: str = "",
        activity_id: str | None = None,
    ) -> None:
        context = self._context_of_activity(token, workflow_id, activity_id)
        outcome = _core.Outcome.cancel(await self._encode(details, context) if details else None)
        await self._core.respond(outcome, token=token, workflow_id=workflow_id, run_id=run_id, activity_id=activity_id)

    async def heartbeat_activity(
        self,
        *details: Any,
        token: bytes | None = None,
        workflow_id: str | None = None,
        run_id: str = "",
        activity_id: str | None = None,
    ) -> _core.HeartbeatReply:
        context = self._context_of_activity(token, workflow_id, activity_id)
        encoded = await self._encode(details, context) if details else None
        return await self._core.heartbeat_activity(
            encoded, token=token, workflow_id=workflow_id, run_id=run_id, activity_id=activity_id
        )

    # -- the child-workflow path's system activities ------------------------------------------------

    @property
    def activities(self) -> builtins.list[Callable[..., Any]]:
        """The system activities a child workflow ends with; register them on the child's worker."""
        from temporalio import activity

        hs = self

        @activity.defn(name=COMPLETE_EXTERNAL_ACTIVITY)
        async def complete_external_activity(request: ExternalCompletion) -> str:
            callback = request.callback
            with _final_on_bad_input():
                return (await hs.succeed(callback.execution_id, request.result, capability=callback.capability)).outcome

        @activity.defn(name=FAIL_EXTERNAL_ACTIVITY)
        async def fail_external_activity(request: ExternalFailure) -> str:
            with _final_on_bad_input():
                settlement = await hs.fail(
                    request.callback.execution_id,
                    request.message,
                    type=request.type,
                    non_retryable=request.non_retryable,
                    capability=request.callback.capability,
                )
            return settlement.outcome

        return [complete_external_activity, fail_external_activity]

    def _converter_for(self, context: ActivitySerializationContext | None) -> DataConverter:
        from temporalio.converter import DataConverter

        converter = self._converter or DataConverter.default
        return converter if context is None else converter.with_context(context)

    async def _context_of(self, execution_id: str) -> ActivitySerializationContext | None:
        """The context of ``execution_id``'s parent activity, read from the store only when the converter
        uses one (an unknown id is left to the call that follows, which says so)."""
        if not self._contextual:
            return None
        try:
            record = await self._core.get(execution_id, False)
        except _core.ExecutionNotFound:
            return None
        return _context.of_execution(record, self._namespace)

    def _context_of_activity(
        self, token: bytes | None, workflow_id: str | None, activity_id: str | None
    ) -> ActivitySerializationContext | None:
        """The context of an activity named directly, worked out only when the converter uses one."""
        return _context.of_activity(self._namespace, token, workflow_id, activity_id) if self._contextual else None

    async def _encode(self, values: Sequence[Any], context: ActivitySerializationContext | None) -> bytes:
        try:
            payloads = await self._converter_for(context).encode(list(values))
        except Exception as err:  # the data converter's own errors (TypeError, ...): the caller's value
            raise _core.InvalidInput(f"the data converter cannot encode the value: {err}") from err
        from temporalio.api.common.v1 import Payloads

        return Payloads(payloads=payloads).SerializeToString()

    async def _failure(
        self,
        message: str,
        type: str,
        non_retryable: bool,
        details: Sequence[Any],
        context: ActivitySerializationContext | None,
    ) -> _core.Outcome:
        """A failure as the worker's failure converter makes it (sent as it is), with the plain fields the
        store records."""
        from temporalio.api.failure.v1 import Failure
        from temporalio.exceptions import ApplicationError

        encoded = await self._encode(details, context) if details else None
        error = ApplicationError(message, *details, type=type or None, non_retryable=non_retryable)
        failure = Failure()
        try:
            await self._converter_for(context).encode_failure(error, failure)
        except Exception as err:  # the failure converter's own errors
            raise _core.InvalidInput(f"the failure converter cannot encode the failure: {err}") from err
        failure.source = failure.source or "stigmer-handshake"
        return _core.Outcome.fail(message, type, non_retryable, encoded, failure.SerializeToString())


@contextlib.contextmanager
def _final_on_bad_input() -> Iterator[None]:
    """In a system activity, bad input or a refused capability fails it for good: retrying cannot help."""
    from temporalio.exceptions import ApplicationError

    try:
        yield
    except _core.InvalidInput as err:
        raise ApplicationError(str(err), type="INVALID_SETTLE", non_retryable=True) from err
    except _core.CapabilityError as err:
        raise ApplicationError(str(err), type="FOREIGN_CALLBACK", non_retryable=True) from err


def _serialize(status: Status | None) -> bytes | None:
    return None if status is None else status.SerializeToString()
